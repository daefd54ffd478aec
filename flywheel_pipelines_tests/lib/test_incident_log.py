"""The incident log: append-only entries, one view per incident, bad input refused."""

from __future__ import annotations

import pytest

from flywheel_pipelines.lib import incident_log as log
from flywheel_pipelines.lib.storage import LocalLake


def test_an_incident_is_opened_appended_to_and_read_back(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    inc, key = log.open_incident(lake, release={"name": "reach-bc", "version": "abc"}, summary="oscillates",
                                 cause=[{"robot": "r103", "date": "2026-03-02", "score": 30.0}], by="maya")
    first = lake.read_bytes(key)
    log.append(lake, inc, "quarantined", by="maya", quarantines=["q-1"])
    log.append(lake, inc, "resolved", by="maya", summary="replaced")
    assert lake.read_bytes(key) == first, "entries are never rewritten"
    view = log.read_incident(lake, inc)
    assert view["status"] == "resolved"
    assert view["opened"]["cause"][0]["robot"] == "r103"
    assert view["quarantined"][0]["quarantines"] == ["q-1"]
    assert [e["action"] for e in view["entries"]] == ["opened", "quarantined", "resolved"]
    assert log.list_incidents(lake) == [inc]


@pytest.mark.parametrize(("call", "message"), [
    (lambda lake: log.append(lake, "inc-none", "note", by="a"), "no incident"),
    (lambda lake: log.read_incident(lake, "../../etc"), "invalid incident id"),
    (lambda lake: log.read_incident(lake, "inc-../x"), "invalid incident id"),
    (lambda lake: log.open_incident(lake, release={}, summary=" ", cause=[], by="a"), "needs a summary"),
    (lambda lake: log.open_incident(lake, release={}, summary="x", cause=[], by=""), "needs a person"),
])
def test_bad_entries_are_refused_and_write_nothing(tmp_path, call, message):
    lake = LocalLake(tmp_path / "lake")
    with pytest.raises((log.IncidentLogError, ValueError), match=message):
        call(lake)
    assert lake.list("incidents/") == []


def test_an_unknown_action_is_refused(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    inc, _ = log.open_incident(lake, release={}, summary="x", cause=[], by="a")
    with pytest.raises(log.IncidentLogError, match="unknown incident action"):
        log.append(lake, inc, "deleted", by="a")
    assert len(log.read_entries(lake, inc)) == 1
