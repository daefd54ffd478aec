"""Promotion and rollback of the production policy on a real MLflow registry (SQLite) and a real lake."""

from __future__ import annotations

import datetime as dt
import json

import mlflow
import pytest

from flywheel_pipelines.lib.evaluation import registry
from flywheel_pipelines.lib.storage import LocalLake

MODEL = "reach-bc"


@pytest.fixture
def client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    c.create_registered_model(MODEL)
    for _ in range(4):
        c.create_model_version(MODEL, source=str(tmp_path / "artifacts"))
    return c


@pytest.fixture
def lake(tmp_path):
    return LocalLake(tmp_path / "lake")


def _gate(client, version: str, passed: bool, production: str | None = None) -> None:
    """What eval_report records: the verdict, and which production version it was judged against."""
    registry.record_gate(client, MODEL, version, passed=passed,
                         reasons=["golden_regressions: golden/r103-x fails"] if not passed else ["all good"],
                         suite="reach-default", suite_version="s1", report_uri=f"/lake/evals/p{version}/report.html",
                         golden_version="g1", production=production, policy_version=f"p{version}")


def _prod(client) -> str | None:
    mv = registry.production_version(client, MODEL)
    return None if mv is None else str(mv.version)  # an int from the SQLite store


def _clock(start: str = "2026-11-22T16:30:00"):
    t = [dt.datetime.fromisoformat(start).replace(tzinfo=dt.UTC)]

    def now() -> dt.datetime:
        t[0] += dt.timedelta(minutes=1)
        return t[0]

    return now


def test_promotion_needs_a_passed_gate(client, lake):
    _gate(client, "1", passed=False)
    with pytest.raises(registry.PromotionError, match="its release gate is failed \\(golden_regressions"):
        registry.promote(client, lake, MODEL, "1", by="maya", reason="looks fine")
    with pytest.raises(registry.PromotionError, match="its release gate is unknown \\(it was never evaluated\\)"):
        registry.promote(client, lake, MODEL, "2", by="maya", reason="looks fine")
    assert _prod(client) is None
    assert registry.read_log(lake, MODEL) == []  # a refusal changes nothing


def test_promotion_moves_the_alias_and_records_who_when_why_and_from_where(client, lake):
    _gate(client, "1", passed=True)
    _gate(client, "2", passed=True, production="1")
    now = _clock()
    first, key1 = registry.promote(client, lake, MODEL, "1", by="maya", reason="first release", now=now)
    second, key2 = registry.promote(client, lake, MODEL, "2", by="bao", reason="better on golden set", now=now,
                                    via="dagster", dagster_run_id="run-7")
    assert _prod(client) == "2"
    assert (first.from_version, second.from_version) == (None, "1")
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["flywheel.promoted_by"] == "bao" and tags["flywheel.promotion_reason"] == "better on golden set"
    assert tags["flywheel.promoted_from"] == "1" and tags["flywheel.promoted_at"] == "2026-11-22T16:32:00+00:00"
    assert tags["flywheel.promotion_forced"] == "false"
    assert client.get_model_version(MODEL, "1").tags["flywheel.demoted_for"] == "2"
    log = registry.read_log(lake, MODEL)
    assert [e["version"] for e in log] == ["1", "2"]
    assert log[1] == {**second.to_dict()} and log[1]["dagster_run_id"] == "run-7" and log[1]["via"] == "dagster"
    assert log[1]["gate"] == "passed" and log[1]["report"] == "/lake/evals/p2/report.html"
    assert log[1]["policy_version"] == "p2"
    assert key1 < key2 and key2.startswith(f"promotions/{MODEL}/20261122T163200")
    assert json.loads(lake.read_bytes(key2)) == second.to_dict()


def test_forced_promotion_is_recorded_as_forced(client, lake):
    _gate(client, "3", passed=False)
    entry, _ = registry.promote(client, lake, MODEL, "3", by="maya", reason="hotfix, sim gate flaky", force=True)
    assert entry.forced and entry.gate == "failed" and "golden_regressions" in entry.gate_reasons
    assert client.get_model_version(MODEL, "3").tags["flywheel.promotion_forced"] == "true"
    assert registry.read_log(lake, MODEL)[0]["forced"] is True


def test_a_gate_passed_against_another_production_is_stale(client, lake):
    _gate(client, "1", passed=True)
    _gate(client, "2", passed=True)  # judged when there was no production yet
    registry.promote(client, lake, MODEL, "1", by="maya", reason="first release")
    with pytest.raises(registry.PromotionError, match="passed against production version none, but production is "
                                                      "now 1; re-run eval_report"):
        registry.promote(client, lake, MODEL, "2", by="maya", reason="r")
    entry, _ = registry.promote(client, lake, MODEL, "2", by="maya", reason="hotfix", force=True)
    assert entry.forced and entry.gate == "passed against production none"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": "9"}, "has no version 9"),
        ({"reason": " "}, "needs a reason"),
        ({"by": ""}, "needs a person"),
    ],
)
def test_promotion_refuses_nonsense(client, lake, kwargs, message):
    _gate(client, "1", passed=True)
    args = {"version": "1", "by": "maya", "reason": "r", **kwargs}
    with pytest.raises(registry.PromotionError, match=message):
        registry.promote(client, lake, MODEL, args.pop("version"), **args)


def test_promoting_the_current_production_again_is_refused(client, lake):
    _gate(client, "1", passed=True)
    registry.promote(client, lake, MODEL, "1", by="maya", reason="r")
    with pytest.raises(registry.PromotionError, match="already production"):
        registry.promote(client, lake, MODEL, "1", by="maya", reason="r")
    assert len(registry.read_log(lake, MODEL)) == 1


def test_rollback_returns_to_the_previous_production_and_stops_at_the_first(client, lake):
    now = _clock()
    for v in "123":
        _gate(client, v, passed=True, production=_prod(client))
        registry.promote(client, lake, MODEL, v, by="maya", reason=f"release {v}", now=now)
    entry, _ = registry.rollback(client, lake, MODEL, by="oncall", reason="v3 oscillates on r104", now=now)
    assert (entry.action, entry.from_version, entry.version) == ("rollback", "3", "2")
    assert _prod(client) == "2"
    assert client.get_model_version(MODEL, "3").tags["flywheel.rollback_reason"] == "v3 oscillates on r104"
    assert client.get_model_version(MODEL, "2").tags["flywheel.restored_from"] == "3"
    # A second rollback goes further back (it does not undo the first one)...
    registry.rollback(client, lake, MODEL, by="oncall", reason="v2 too", now=now)
    assert _prod(client) == "1"
    # ...and the first production version has nothing before it.
    with pytest.raises(registry.PromotionError, match="first production version"):
        registry.rollback(client, lake, MODEL, by="oncall", reason="again", now=now)
    log = registry.read_log(lake, MODEL)
    assert [(e["action"], e.get("from_version"), e["version"]) for e in log] == [
        ("promote", None, "1"), ("promote", "1", "2"), ("promote", "2", "3"), ("rollback", "3", "2"),
        ("rollback", "2", "1")]
    assert registry.production_history(log) == ["1"]


def test_rollback_refuses_when_the_alias_was_moved_outside_flywheel(client, lake):
    for v in "12":
        _gate(client, v, passed=True, production=_prod(client))
        registry.promote(client, lake, MODEL, v, by="maya", reason="r")
    client.set_registered_model_alias(MODEL, "production", "4")  # someone clicked in the MLflow UI
    with pytest.raises(registry.PromotionError, match="points to version 4 but the promotion log says 2"):
        registry.rollback(client, lake, MODEL, by="oncall", reason="r")
    assert _prod(client) == "4"


def test_rollback_without_production_is_refused(client, lake):
    with pytest.raises(registry.PromotionError, match="has no production version"):
        registry.rollback(client, lake, MODEL, by="oncall", reason="r")


def test_a_failed_log_write_undoes_the_alias(client, lake, monkeypatch):
    _gate(client, "1", passed=True)
    _gate(client, "2", passed=True, production="1")
    registry.promote(client, lake, MODEL, "1", by="maya", reason="r")

    def broken(key, data):
        raise OSError("disk full")

    monkeypatch.setattr(lake, "write_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        registry.promote(client, lake, MODEL, "2", by="maya", reason="r")
    assert _prod(client) == "1"


def test_log_entries_never_overwrite_each_other(client, lake):
    _gate(client, "1", passed=True)
    _gate(client, "2", passed=True, production="1")
    frozen = _clock()
    t = frozen()
    # Two promotions stamped with the same instant still land as two objects.
    registry.promote(client, lake, MODEL, "1", by="a", reason="r", now=lambda: t)
    registry.promote(client, lake, MODEL, "2", by="b", reason="r", now=lambda: t)
    assert len(lake.list(f"promotions/{MODEL}/")) == 2


def test_production_history_follows_pushes_and_pops():
    log = [{"action": "promote", "version": "5", "from_version": "4"}, {"action": "promote", "version": "6"},
           {"action": "rollback", "version": "5"}, {"action": "promote", "version": "7"}]
    assert registry.production_history(log) == ["4", "5", "7"]
    assert registry.production_history([]) == []


def test_a_withdrawn_version_is_never_rolled_back_to_and_needs_force_to_return(client, lake):
    now = _clock()
    _gate(client, "1", passed=True)
    registry.promote(client, lake, MODEL, "1", by="maya", reason="first", now=now)
    _gate(client, "2", passed=True, production="1")
    registry.promote(client, lake, MODEL, "2", by="maya", reason="nightly", now=now)
    _gate(client, "3", passed=True, production="2")
    with pytest.raises(registry.PromotionError, match="is production now"):
        registry.withdraw(client, lake, MODEL, "2", by="oncall", reason="inc-1: bad data", now=now)
    registry.promote(client, lake, MODEL, "3", by="oncall", reason="inc-1: replacement", now=now)
    entry, key = registry.withdraw(client, lake, MODEL, "2", by="oncall", reason="inc-1: bad data", now=now)
    assert (entry.action, entry.version, entry.from_version) == ("withdraw", "2", "3")
    assert json.loads(lake.read_bytes(key))["action"] == "withdraw"
    assert client.get_model_version(MODEL, "2").tags[registry.WITHDRAWN_TAG].endswith("by oncall: inc-1: bad data")
    assert _prod(client) == "3", "withdrawing does not move the alias"
    assert registry.production_history(registry.read_log(lake, MODEL)) == ["1", "3"]
    with pytest.raises(registry.PromotionError, match="already withdrawn"):
        registry.withdraw(client, lake, MODEL, "2", by="oncall", reason="again", now=now)
    # A rollback from 3 returns to 1, skipping the withdrawn 2.
    back, _ = registry.rollback(client, lake, MODEL, by="oncall", reason="3 misbehaves too", now=now)
    assert (back.from_version, back.version) == ("3", "1")
    assert _prod(client) == "1"
    with pytest.raises(registry.PromotionError, match="was withdrawn"):
        registry.promote(client, lake, MODEL, "2", by="maya", reason="try again", now=now)
    forced, _ = registry.promote(client, lake, MODEL, "2", by="maya", reason="fixed upstream", force=True, now=now)
    assert forced.forced and _prod(client) == "2"
    with pytest.raises(registry.PromotionError, match="needs a person"):
        registry.withdraw(client, lake, MODEL, "1", by=" ", reason="x", now=now)
    with pytest.raises(registry.PromotionError, match="has no version 9"):
        registry.withdraw(client, lake, MODEL, "9", by="a", reason="x", now=now)
