"""Quarantine: append-only records, validation that writes nothing, catalog marks, curation honouring it."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from flywheel_pipelines.lib import quarantine as q
from flywheel_pipelines.lib.catalog import CATALOG_KEY
from flywheel_pipelines.lib.datasets.curation import CurationError, CurationSpec, build_dataset, select_episodes
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.lib.conftest import DAY, ROBOT


@pytest.fixture
def lake(tmp_path, catalog) -> LocalLake:
    store = LocalLake(tmp_path / "lake")
    store.write_parquet(CATALOG_KEY, catalog)
    return store


def _known(store: LocalLake):
    return q.known_target(store, store.read_parquet(CATALOG_KEY))


def _files(store: LocalLake) -> dict[str, bytes]:
    return {o.key: store.read_bytes(o.key) for o in store.list(q.QUARANTINE_PREFIX + "/")}


def test_add_list_lift_is_append_only(lake):
    first, key1 = q.add(lake, q.make_scope(robot=ROBOT, date_from=DAY, date_to=DAY), reason="elbow encoder off",
                        by="alice", known=_known(lake), incident="inc-1")
    before = _files(lake)
    assert list(before) == [key1]
    record = json.loads(before[key1])
    assert record["scope"] == {"kind": "robot", "robot": ROBOT, "date_from": DAY, "date_to": DAY}
    assert (record["by"], record["reason"], record["incident"], record["action"]) == (
        "alice", "elbow encoder off", "inc-1", "add")
    assert [r.id for r in q.active(q.read_records(lake))] == [first.id]

    lifted, key2 = q.lift(lake, first.id, reason="recalibrated", by="bob")
    after = _files(lake)
    assert after[key1] == before[key1], "a lift never rewrites the record it ends"
    assert set(after) == {key1, key2}
    assert lifted.lifts == first.id
    assert q.active(q.read_records(lake)) == []
    with pytest.raises(q.QuarantineError, match="no active quarantine"):
        q.lift(lake, first.id, reason="again", by="bob")
    # The same scope can be quarantined again after a lift; while active it cannot be doubled.
    again, _ = q.add(lake, q.make_scope(robot=ROBOT, date_from=DAY, date_to=DAY), reason="still off", by="carol",
                     known=_known(lake))
    with pytest.raises(q.QuarantineError, match="already quarantined"):
        q.add(lake, q.make_scope(robot=ROBOT, date_from=DAY, date_to=DAY), reason="x", by="carol", known=_known(lake))
    assert [r.id for r in q.active(q.read_records(lake))] == [again.id]
    assert len(q.read_records(lake)) == 3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"robot": "r999"}, "unknown robot 'r999'"),
    ({"robot": ROBOT, "date_from": "2026-03-05", "date_to": "2026-03-01"}, "inverted day range"),
    ({"robot": ROBOT, "date_from": "2026-13-45"}, "invalid date"),
    ({"robot": "../../etc"}, "invalid robot id"),
    ({"robot": "R101"}, "invalid robot id"),
    ({"raw": "raw/robot=r101/date=2026-03-02/../../x.mcap"}, "invalid file name|not a raw log key"),
    ({"raw": "/etc/passwd"}, "not a raw log key"),
    ({"raw": f"raw/robot={ROBOT}/date={DAY}/missing.mcap"}, "unknown raw log"),
    ({"episode": "../x"}, "invalid episode id"),
    ({"episode": "nope-1"}, "unknown episode"),
    ({"robot": ROBOT, "episode": "x"}, "exactly one"),
    ({}, "exactly one"),
    ({"date_from": DAY, "episode": "x"}, "go with --robot"),
])
def test_bad_requests_are_refused_and_write_nothing(lake, kwargs, message):
    with pytest.raises(q.QuarantineError, match=message):
        q.add(lake, q.make_scope(**kwargs), reason="because", by="alice", known=_known(lake))
    assert _files(lake) == {}


@pytest.mark.parametrize(("reason", "by"), [("", "alice"), ("   ", "alice"), ("ok", ""), ("x" * 5000, "alice")])
def test_a_quarantine_needs_a_reason_and_a_person(lake, reason, by):
    with pytest.raises(q.QuarantineError):
        q.add(lake, q.make_scope(robot=ROBOT), reason=reason, by=by, known=_known(lake))
    assert _files(lake) == {}


def test_catalog_marks_each_scope_kind(catalog, sim_day):
    episodes = catalog["episode_id"].to_pylist()
    raw_key = catalog["source_keys"].to_pylist()[0][0]
    now = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)

    def rec(i, scope):
        return q.Record(id=f"q-{i}", action="add", scope=scope, lifts=None, reason="r", by="b",
                        at=now.isoformat())

    by_raw = [e for e, keys in zip(episodes, catalog["source_keys"].to_pylist(), strict=True) if raw_key in keys]
    assert 0 < len(by_raw) < len(episodes)
    cases = [
        ([rec(1, q.make_scope(robot=ROBOT))], set(episodes)),
        ([rec(1, q.make_scope(robot=ROBOT, date_from="2026-03-03"))], set()),
        ([rec(1, q.make_scope(robot=ROBOT, date_to=DAY))], set(episodes)),
        ([rec(1, q.make_scope(robot="r102"))], set()),
        ([rec(1, q.make_scope(raw=raw_key))], set(by_raw)),
        ([rec(1, q.make_scope(episode=episodes[1]))], {episodes[1]}),
        ([rec(1, q.make_scope(episode=episodes[1])),
          q.Record(id="q-2", action="lift", scope=None, lifts="q-1", reason="r", by="b", at=now.isoformat())], set()),
    ]
    for records, expected in cases:
        marked = q.mark(catalog, records)
        got = {e for e, flag in zip(marked["episode_id"].to_pylist(), marked["quarantined"].to_pylist(), strict=True)
               if flag}
        assert got == expected, records
        assert marked.num_rows == catalog.num_rows
    # Marking a marked table replaces the old marks.
    twice = q.mark(q.mark(catalog, cases[0][0]), [])
    assert not any(twice["quarantined"].to_pylist())


def _build(tmp_path, name, standardized, catalog, emb, records, **spec_kwargs):
    spec = CurationSpec(name="reach", val_fraction=0.3, **spec_kwargs)
    return build_dataset(tmp_path / name, selected=select_episodes(catalog, spec),
                         load_frames=lambda robot, day: standardized.frames, spec=spec, emb=emb,
                         quarantine_records=records)


def test_curation_leaves_quarantined_episodes_out_and_records_the_state(tmp_path, standardized, catalog, emb):
    clean = _build(tmp_path, "clean", standardized, catalog, emb, [])
    ids = [e["episode_id"] for e in clean.manifest["episodes"]]
    assert len(ids) >= 3
    assert clean.manifest["quarantine"]["records"] == [] and clean.manifest["quarantine"]["left_out"] == 0

    held = q.Record(id="q-20260310-aaaa", action="add", scope=q.make_scope(episode=ids[0]), lifts=None,
                    reason="glare", by="alice", at="2026-03-10T00:00:00+00:00")
    out = _build(tmp_path, "out", standardized, catalog, emb, [held])
    assert ids[0] not in [e["episode_id"] for e in out.manifest["episodes"]]
    assert out.manifest["quarantine"]["left_out"] == 1
    assert out.manifest["quarantine"]["records"] == [held.id]
    assert out.manifest["quarantine"]["episodes"] == [{"episode_id": ids[0], "quarantines": [held.id]}]
    assert out.version != clean.version
    assert "1 quarantined episodes left out" in (tmp_path / "out" / "README.md").read_text()

    # Opting in keeps the episode, marks it, and is still a different version from the clean build:
    # the manifest records the quarantine state it honoured.
    kept = _build(tmp_path, "kept", standardized, catalog, emb, [held], include_quarantined=True)
    assert [e["episode_id"] for e in kept.manifest["episodes"]] == [e["episode_id"] for e in clean.manifest["episodes"]]
    assert next(e for e in kept.manifest["episodes"] if e["episode_id"] == ids[0])["quarantines"] == [held.id]
    assert kept.version not in (clean.version, out.version)

    # A quarantine that covers none of the selected episodes still changes the version (the state
    # honoured changed), and a lifted one restores the clean state exactly.
    other = q.Record(id="q-20260310-bbbb", action="add", scope=q.make_scope(robot="r777"), lifts=None,
                     reason="x", by="a", at="2026-03-10T00:00:00+00:00")
    unrelated = _build(tmp_path, "unrelated", standardized, catalog, emb, [other])
    assert unrelated.manifest["quarantine"]["matched"] == 0
    assert unrelated.version != clean.version
    lift = q.Record(id="q-20260310-cccc", action="lift", scope=None, lifts=other.id, reason="ok", by="a",
                    at="2026-03-10T00:00:00+00:00")
    assert _build(tmp_path, "lifted", standardized, catalog, emb, [other, lift]).version == clean.version


def test_curation_refuses_when_everything_is_quarantined(tmp_path, standardized, catalog, emb):
    all_of_it = q.Record(id="q-1", action="add", scope=q.make_scope(robot=ROBOT), lifts=None, reason="r", by="b",
                         at="2026-03-10T00:00:00+00:00")
    with pytest.raises(CurationError, match="every selected episode is quarantined"):
        _build(tmp_path, "none", standardized, catalog, emb, [all_of_it])


def test_state_hash_depends_only_on_active_ids():
    a = q.Record(id="q-a", action="add", scope=q.make_scope(robot="r1"), lifts=None, reason="r", by="b", at="t")
    b = q.Record(id="q-b", action="add", scope=q.make_scope(robot="r2"), lifts=None, reason="r", by="b", at="t")
    assert q.state([a, b]) == q.state([b, a])
    assert q.state([a])["hash"] != q.state([a, b])["hash"]
    assert q.state([])["records"] == []
    assert isinstance(pa.array(q.state([a])["records"]), pa.Array)
