"""The on-call drill end to end (`flywheel drill`): from a bad release's version alone, find the robot-days,
quarantine them, retrain, promote the replacement, withdraw the bad release, record the incident."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flywheel_pipelines.cli import main
from flywheel_pipelines.lib import incident_log, lineage_index, quarantine
from flywheel_pipelines.lib.evaluation import registry
from flywheel_pipelines.lib.storage import LocalLake

pytestmark = pytest.mark.slow


def _robot_days(lake: LocalLake, dataset: str) -> set[tuple[str, str]]:
    manifest = lake.read_json(f"datasets/{dataset}/manifest.json")
    return {(e["robot"], e["date"]) for e in manifest["episodes"]}


def test_the_faulty_robot_days_rank_first_and_alone(drilled):
    r = drilled.result
    faulty = {(r["faulty_robot"], d) for d in r["fault_days"]}
    ranking = r["ranking"]
    top = {(row["robot"], row["date"]) for row in ranking[:len(faulty)]}
    assert top == faulty, ranking[:4]
    assert {(row["robot"], row["date"]) for row in ranking if row["outlier"]} == faulty
    assert {tuple(x) for x in r["found"]} == faulty
    # A clear margin: the weakest faulty day scores far above the strongest healthy one.
    assert min(row["score"] for row in ranking[:len(faulty)]) > 4 * max(row["score"] for row in ranking[len(faulty):])
    assert sum(row["share"] for row in ranking) == pytest.approx(1.0, abs=1e-3)


def test_quarantined_days_are_in_the_old_dataset_and_not_in_the_new(drilled):
    lake = LocalLake(drilled.lake)
    r = drilled.result
    found = {tuple(x) for x in r["found"]}
    assert found <= _robot_days(lake, r["old_dataset"])
    assert not found & _robot_days(lake, r["new_dataset"])
    new = lake.read_json(f"datasets/{r['new_dataset']}/manifest.json")["quarantine"]
    assert new["records"] == r["quarantine_ids"] and new["left_out"] > 0 and not new["include_quarantined"]
    # The old dataset was built before the quarantine existed, and says so.
    assert lake.read_json(f"datasets/{r['old_dataset']}/manifest.json")["quarantine"]["records"] == []
    # The catalog marks exactly the quarantined robot-days' episodes.
    catalog = pq.read_table(drilled.lake / "catalog" / "episodes.parquet").to_pylist()
    marked = {(e["robot"], e["date"]) for e in catalog if e["quarantined"]}
    assert marked == found
    records = quarantine.active(quarantine.read_records(lake))
    assert [q.id for q in records] == r["quarantine_ids"]
    assert all(q.incident == r["incident_id"] and q.by == "oncall-drill" for q in records)


def test_reverse_lineage_from_a_bad_raw_file_names_the_bad_release_only(drilled):
    r = drilled.result
    assert r["probe_releases"] == [r["bad_release"]]
    result = CliRunner().invoke(main, ["lineage", "--raw", r["probe_raw_key"], "--json", "--lake", str(drilled.lake)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)

    def releases(nodes):
        for n in nodes:
            if n["kind"] == "release":
                yield f"{n['name']}/{n['version']}"
            yield from releases(n.get("children", []))

    assert sorted(releases(doc["downstream"])) == [r["bad_release"]]
    # Nothing downstream of the bad bytes holds the production alias any more.
    assert "[PRODUCTION]" not in CliRunner().invoke(
        main, ["lineage", "--raw", r["probe_raw_key"], "--lake", str(drilled.lake)]).output
    # ... while a healthy robot's lineage reaches both releases.
    healthy = LocalLake(drilled.lake)
    both = lineage_index.query(healthy, robot="r101")
    releases = {f"{n.name}/{n.version}" for n in lineage_index.walk(both.downstream) if n.kind == "release"}
    assert releases == {r["bad_release"], r["new_release"]}


def test_production_ends_on_the_new_release_and_the_bad_one_is_withdrawn(drilled):
    r = drilled.result
    uri = f"sqlite:///{drilled.home / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    production = registry.production_version(client, "reach-bc")
    assert str(production.version) == r["registered"][r["new_release"]] == r["production_version"]
    assert production.tags["flywheel.policy_version"] == r["new_release"].split("/")[1]
    bad = client.get_model_version("reach-bc", r["registered"][r["bad_release"]])
    assert r["incident_id"] in bad.tags[registry.WITHDRAWN_TAG]
    log = registry.read_log(LocalLake(drilled.lake), "reach-bc")
    assert [e["action"] for e in log] == ["promote", "promote", "withdraw"]
    # No rollback can return to the bad release.
    assert registry.production_history(log) == [r["registered"][r["new_release"]]]


def test_the_incident_links_release_cause_quarantine_withdrawal_and_replacement(drilled):
    r = drilled.result
    view = incident_log.read_incident(LocalLake(drilled.lake), r["incident_id"])
    assert view["status"] == "resolved"
    assert f"{view['opened']['release']['name']}/{view['opened']['release']['version']}" == r["bad_release"]
    assert {(c["robot"], c["date"]) for c in view["opened"]["cause"]} == {tuple(x) for x in r["found"]}
    assert view["quarantined"][0]["quarantines"] == r["quarantine_ids"]
    assert view["replaced"][0]["release"] == r["new_release"]
    assert view["rolled_back"][0]["release"] == r["bad_release"]
    assert view["rolled_back"][0]["how"] == "withdrawn"
    assert incident_log.list_incidents(LocalLake(drilled.lake)) == [r["incident_id"]]


def test_the_incident_report_asset_lists_the_robot_days_in_its_metadata(drilled):
    import dagster as dg

    with dg.DagsterInstance.from_config(str(drilled.home / "dagster_home")) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("incident_report"))
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    r = drilled.result
    assert meta["release"] == r["bad_release"].replace("/", " ")
    for robot, day in r["found"]:
        assert f"| {robot} | {day} |" in meta["ranking"]
    assert set(meta["outliers"]) == {f"{a}/{b}" for a, b in r["found"]}


def test_flywheel_incident_prints_the_same_ranking(drilled):
    r = drilled.result
    out = CliRunner().invoke(main, ["incident", r["bad_release"], "--json", "--lake", str(drilled.lake)])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)["rows"]
    assert [(x["robot"], x["date"]) for x in rows[:len(r["found"])]] == [tuple(x) for x in r["found"]]
    text = CliRunner().invoke(main, ["incident", r["bad_release"], "--lake", str(drilled.lake)]).output
    robot, day = r["found"][0]
    assert f"flywheel quarantine add --robot {robot} --from {day} --to {day}" in text


def test_withdraw_refuses_a_withdrawn_version_and_the_production_one(drilled):
    r = drilled.result
    common = ["--by", "maya", "--lake", str(drilled.lake),
              "--mlflow-uri", f"sqlite:///{drilled.home / 'mlflow' / 'mlflow.db'}"]
    bad = r["registered"][r["bad_release"]]
    out = CliRunner().invoke(main, ["policy", "withdraw", "reach-bc", bad, "--reason", "again", *common])
    assert out.exit_code == 1 and "already withdrawn" in out.output
    out = CliRunner().invoke(main, ["policy", "withdraw", "reach-bc", r["production_version"], "--reason", "x", *common])
    assert out.exit_code == 1 and "is production now" in out.output


def test_the_printed_ui_command_runs_as_printed(drilled):
    """The drill's last lines tell on-call how to open the UI; copied as is it must find this
    environment's dagster, the workspace and both homes (the lake follows FLYWHEEL_HOME)."""
    import dataclasses
    import os
    import shlex

    from flywheel_pipelines.drill import DrillResult, ui_command

    fields = {f.name for f in dataclasses.fields(DrillResult)}
    result = DrillResult(**{k: v for k, v in drilled.result.items() if k in fields})
    *env, dagster, dev, flag, workspace = shlex.split(ui_command(result))
    env = dict(e.split("=", 1) for e in env)
    assert env == {"FLYWHEEL_HOME": str(drilled.home), "DAGSTER_HOME": str(drilled.home / "dagster_home")}
    assert os.access(dagster, os.X_OK) and dev == "dev" and flag == "-w" and Path(workspace).is_file()
