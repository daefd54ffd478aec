"""Governance through Dagster on the drilled flywheel lake: the erase job (dry run by default, then
for real), the rebuild sensor and the curated_dataset run it launches, and the retention sweep."""

from __future__ import annotations

import datetime as dt
import shutil

import dagster as dg
import pytest
from click.testing import CliRunner

from flywheel_pipelines.cli import main
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import layout, lineage_index
from flywheel_pipelines.lib.catalog import CATALOG_KEY
from flywheel_pipelines.lib.governance import deleter, erasure, policy, rebuilds
from flywheel_pipelines.lib.storage import LocalLake

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@pytest.fixture
def home(drilled, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(drilled.home, home, symlinks=True)
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    for var in ("FLYWHEEL_LAKE", "FLYWHEEL_MLFLOW_URI", "FLYWHEEL_MLFLOW_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    return home


def _erase_config(key: str, **extra) -> dict:
    return {**QUIET, "ops": {"erase_data": {"config": {"raw": key, "reason": "subject request 4", "requested_by": "dpo",
                                                       **extra}}}}


def test_camera_pixels_reach_no_asset_metadata(tmp_path) -> None:
    """log_manifest and episodes of a real camera log, with the camera allowlisted and not: no
    image payload in any metadata value, any check's metadata or the lake outside raw/."""
    from flywheel_pipelines.defs.episodes.assets import EpisodesConfig, episodes
    from flywheel_pipelines.defs.ingest.assets import log_manifest, raw_fleet_logs
    from flywheel_pipelines.defs.partitions import ROBOTS, robot_day_key
    from flywheel_pipelines_tests.conftest import days_ago
    from flywheel_pipelines_tests.lib import test_governance_camera as cam

    day = days_ago(1)
    log = tmp_path / "arm7.mcap"
    cam.write_arm7_log(log, minutes=0.7)
    samples = cam.payload_samples(log)
    for mapping, text in (("allowlisted", cam.EMBODIMENT), ("not_listed", cam.WITHOUT_IMAGES)):
        lake = LocalLake(tmp_path / mapping)
        lake.put_raw(f"raw/robot=r201/date={day}/arm7.mcap", log)
        (tmp_path / f"{mapping}.yaml").write_text(text)
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(ROBOTS.name, ["r201"])
            result = dg.materialize(
                [raw_fleet_logs, log_manifest, episodes], selection=[log_manifest, episodes], instance=instance,
                resources={"lake": LakeResource(root=str(lake.root))}, partition_key=robot_day_key("r201", day),
                run_config=dg.RunConfig({"episodes": EpisodesConfig(embodiment=str(tmp_path / f"{mapping}.yaml"))}))
        assert result.success
        shown = [str(v.value) for m in result.get_asset_materialization_events()
                 for v in m.materialization.metadata.values()]
        shown += [str(v.value) for c in result.get_asset_check_evaluations() for v in c.metadata.values()]
        assert len(shown) > 20 and cam.leaks("\n".join(shown), samples) == []
        for o in lake.list(""):
            if not o.key.startswith("raw/") and not o.key.endswith(".parquet"):
                assert cam.leaks(lake.read_bytes(o.key), samples) == [], o.key


@pytest.mark.slow
def test_erase_job_rebuild_sensor_and_retention(home, drilled) -> None:
    from flywheel_pipelines.definitions import defs as load_defs

    defs = load_defs()
    lake = LocalLake(home / "lake")
    robot, day = drilled.result["found"][0]
    key = sorted(o.key for o in lake.list(f"raw/robot={robot}/date={day}/"))[0]
    radius = erasure.blast_radius(lake, raw=key)
    assert radius.datasets and radius.policies and radius.releases
    gone = {e["episode_id"] for e in radius.episodes}
    before = {o.key for o in lake.list("")}
    with dg.DagsterInstance.get() as instance:
        job = defs.resolve_job_def("erase")
        assert job.execute_in_process(instance=instance, run_config=_erase_config(key)).success
        assert {o.key for o in lake.list("")} == before  # dry run by default
        assert job.execute_in_process(instance=instance, run_config=_erase_config(key, dry_run=False)).success
        assert not lake.exists(key) and deleter.statuses(lake, [key]) == {key: "erased"}
        assert not gone & set(lake.read_parquet(CATALOG_KEY)["episode_id"].to_pylist())
        # Golden scenarios derived from the log are gone (not retired): the current set lacks them,
        # and every golden version that held them is deleted.
        current = lake.read_json(layout.GOLDEN_POINTER)["prefix"]
        scenarios = lake.read_json(f"{current}/{layout.GOLDEN_FILE}")["scenarios"]
        assert scenarios and not [e for e in scenarios
                                  if key in {f["key"] for f in e["scenario"]["source"]["raw_files"]}]
        assert all(not lake.list(g["prefix"] + "/") for g in radius.golden)
        (eid,) = erasure.list_erasures(lake)
        assert [s["step"] for s in erasure.read_record(lake, eid)] == ["requested", "completed"]
        # The marked release: lineage and `flywheel incident` say its training data was erased.
        release = radius.releases[0]
        res = lineage_index.query(lake, release=f"{release['name']}/{release['version']}")
        assert res.upstream[0].detail["source_status"] == "erased"
        out = CliRunner().invoke(main, ["incident", f"{release['name']}/{release['version']}", "--lake", str(lake.root)])
        assert out.exit_code != 0 and f"deleted by erasure {eid}" in out.output

        # The sensor launches one curated_dataset run per deleted dataset version, with its spec.
        sensor = defs.resolve_sensor_def("governance_rebuild_sensor")
        resources = {"lake": LakeResource()}
        result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
        requests = result.run_requests
        assert sorted(r.run_key for r in requests) == sorted(r["id"] for _, r in rebuilds.read_requests(lake))
        assert len(requests) == len(radius.datasets)
        again = sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=resources))
        assert isinstance(again, dg.SkipReason)
        request = requests[0]
        run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            asset_selection=[dg.AssetKey("curated_dataset")], instance=instance,
            run_config={**QUIET, **request.run_config}, tags=request.tags)
        assert run.success
        meta = instance.get_latest_materialization_event(dg.AssetKey("curated_dataset")).asset_materialization.metadata
        version = meta["dataset_version"].value
        assert version not in {d["version"] for d in radius.datasets}
        manifest = lake.read_json(f"{layout.dataset_prefix('reach', version)}/manifest.json")
        assert manifest["episodes"] and not gone & {e["episode_id"] for e in manifest["episodes"]}

        # Retention: keep plain logs 2 days; the drill's older days expire behind tombstones.
        policy.set_policy(lake, "schema: flywheel-governance-policy-v1\nretention_days: {camera: 1, audio: 1, "
                          "other: 2}\n", source="test", by="dpo", reason="test")
        sweep = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            asset_selection=[dg.AssetKey("retention_sweep")], instance=instance, run_config=QUIET)
        assert sweep.success
        meta = instance.get_latest_materialization_event(dg.AssetKey("retention_sweep")).asset_materialization.metadata
        cutoff = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=2)).isoformat()
        old = [o.key for o in lake.list("raw/") if o.key.split("date=")[1][:10] < cutoff]
        assert meta["expired"].value > 0 and old == [] and meta["policy_version"].value == 1
        expired_key = next(iter(t["key"] for t in deleter.read_tombstones(lake, "r101") if t["status"] == "expired"))
        assert [f.status for f in lineage_index.query(lake, raw=expired_key).raw_files] == ["expired"]
