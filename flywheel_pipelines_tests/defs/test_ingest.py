"""Ingest assets and the upload sensor against a real local lake and real simulated MCAP logs."""

import json
import os
import shutil

import dagster as dg
import pytest

from flywheel_pipelines.defs.episodes.assets import episodes
from flywheel_pipelines.defs.ingest.assets import log_manifest, raw_fleet_logs
from flywheel_pipelines.defs.ingest.sensors import raw_log_sensor
from flywheel_pipelines.defs.partitions import ROBOTS, robot_day_key
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib.sim.fleet import simulate_robot_day
from flywheel_pipelines.lib.sim.robot import sample_profile
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.conftest import days_ago

DAY = days_ago(1)


@pytest.fixture
def lake(tmp_path) -> LocalLake:
    return LocalLake(tmp_path / "lake")


def upload(lake: LocalLake, robot: str, *, episodes: int = 3, seed: int = 0, index: int = 0):
    return simulate_robot_day(lake, sample_profile(robot, seed=seed, index=index), DAY, episodes=episodes, seed=seed)


def ingest(instance, lake, robot: str, assets=(log_manifest, episodes)):
    """Materialize one robot-day partition of the ingest assets against the real local lake."""
    instance.add_dynamic_partitions(ROBOTS.name, [robot])
    result = dg.materialize([raw_fleet_logs, log_manifest, episodes], selection=list(assets), instance=instance,
                            resources={"lake": LakeResource(root=str(lake.root))},
                            partition_key=robot_day_key(robot, DAY))
    assert result.success
    return result


def tick(instance, lake, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": LakeResource(root=str(lake.root))})
    return raw_log_sensor(context)


def test_new_upload_registers_robot_and_requests_its_partition(lake):
    upload(lake, "r201")
    with dg.instance_for_test() as instance:
        result = tick(instance, lake)
        assert [r.partition_key for r in result.run_requests] == [robot_day_key("r201", DAY)]
        assert result.dynamic_partitions_requests[0].partition_keys == ["r201"]
        assert json.loads(result.cursor)["watermark_ns"] > 0


def test_same_file_again_requests_nothing(lake):
    upload(lake, "r201")
    with dg.instance_for_test() as instance:
        first = tick(instance, lake)
        instance.add_dynamic_partitions(ROBOTS.name, ["r201"])
        # Next tick, nothing new: past the grace window nothing is re-read.
        obj = lake.list("raw/")[0]
        later = json.dumps({"watermark_ns": obj.mtime_ns + 10_000_000_000})
        assert tick(instance, lake, later).run_requests == []
        # The same bytes uploaded again (new mtime): same run key, so Dagster launches nothing new...
        again = tick(instance, lake, first.cursor)
        assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]


def test_reupload_of_ingested_content_requests_nothing_but_a_changed_day_does(lake, tmp_path):
    day = upload(lake, "r201")
    with dg.instance_for_test() as instance:
        ingest(instance, lake, "r201", assets=(log_manifest,))
        # Touch every file: a re-upload of identical bytes.
        for key in day.keys:
            os.utime(lake.path(key))
        assert tick(instance, lake).run_requests == []
        # A late upload for the same day changes the content: one new run for that partition.
        other = tmp_path / "late.mcap"
        shutil.copyfile(lake.path(day.keys[0]), other)
        lake.put_raw(f"raw/robot=r201/date={DAY}/late-session.mcap", other)
        requests = tick(instance, lake).run_requests
        assert [r.partition_key for r in requests] == [robot_day_key("r201", DAY)]


def test_bad_keys_are_skipped_not_fatal(lake, tmp_path):
    upload(lake, "r201")
    bad = lake.root / "raw" / f"robot=../date={DAY}"
    bad.mkdir(parents=True)
    (bad / "x.mcap").write_bytes(b"junk")
    (lake.root / "raw" / "robot=UPPER" / f"date={DAY}").mkdir(parents=True)
    (lake.root / "raw" / "robot=UPPER" / f"date={DAY}" / "y.mcap").write_bytes(b"junk")
    with dg.instance_for_test() as instance:
        result = tick(instance, lake)
        assert [r.partition_key for r in result.run_requests] == [robot_day_key("r201", DAY)]


def test_log_manifest_and_episodes_materialize_with_checks(lake):
    upload(lake, "r201", episodes=4)
    (lake.root / "raw" / "robot=r201" / f"date={DAY}" / "broken.mcap").write_bytes(b"not an mcap file")
    with dg.instance_for_test() as instance:
        result = ingest(instance, lake, "r201")
        manifest = lake.read_json(f"manifests/robot=r201/date={DAY}/manifest.json")
        verdicts = {f["key"].rsplit("/", 1)[-1]: f["verdict"] for f in manifest["files"]}
        assert verdicts["broken.mcap"] == "rejected"
        assert list(verdicts.values()).count("ok") == 1
        meta = result.asset_materializations_for_node("log_manifest")[0].metadata
        assert meta["rejected"].value == 1
        assert meta["rejected_files"].value == [f"raw/robot=r201/date={DAY}/broken.mcap"]
        assert "| broken.mcap | rejected |" in meta["files_table"].value
        ep_meta = result.asset_materializations_for_node("episodes")[0].metadata
        assert ep_meta["episodes"].value == 4
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {"monotonic_time": True, "no_nan": True, "sync_skew": True, "gap_tolerance": True,
                          "frame_count": True, "every_message_accounted": True}
        assert lake.exists(f"episodes/robot=r201/date={DAY}/frames.parquet")
        # The raw files are untouched, the broken one included.
        assert (lake.root / "raw" / "robot=r201" / f"date={DAY}" / "broken.mcap").read_bytes() == b"not an mcap file"


def test_flaky_network_fails_the_episodes_checks_without_blocking(lake):
    from dataclasses import replace

    profile = replace(sample_profile("r202", seed=0), burst_drop_rate=4.0)
    simulate_robot_day(lake, profile, DAY, episodes=4, seed=3)
    with dg.instance_for_test() as instance:
        result = ingest(instance, lake, "r202")
        evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
        episodes_table = lake.read_parquet(f"episodes/robot=r202/date={DAY}/episodes.parquet").to_pylist()
        flagged = sorted(e["episode_id"] for e in episodes_table if not e["quality_ok"])
        assert flagged
        over = {"sync_skew": ("max_skew_ms", "tolerance_skew_ms"), "gap_tolerance": ("max_gap_ms", "tolerance_gap_ms")}
        failing = set()
        for name, (column, tolerance) in over.items():
            check = evals[name]
            limit = check.metadata[tolerance].value
            expected = sorted(e["episode_id"] for e in episodes_table if e[column] > limit)
            assert check.metadata["episodes_failing"].value == expected
            assert check.passed == (not expected) and check.severity == dg.AssetCheckSeverity.ERROR and not check.blocking
            assert check.metadata["gx_suite"].value.startswith("episode_quality.")
            if expected:
                assert "FAIL" in check.metadata["expectations"].value
            failing.update(expected)
        # The outages this profile simulates break the tolerances, and those are the flagged episodes.
        assert sorted(failing) == flagged
        assert not evals["gap_tolerance"].passed
        assert evals["no_nan"].passed and evals["frame_count"].passed


def test_ingested_fingerprints_are_looked_up_in_batches_newest_first(lake, monkeypatch):
    import flywheel_pipelines.defs.ingest.sensors as sensors

    monkeypatch.setattr(sensors, "INGESTED_BATCH", 2)  # 5 robot-days: three paged queries
    robots = [f"r{i}" for i in range(5)]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ROBOTS.name, robots)
        for robot, fingerprints in [("r0", ["a0"]), ("r1", ["old", "b1"]), ("r3", ["d3"]), ("r4", ["x", "y", "e4"])]:
            for fp in fingerprints:
                instance.report_runless_asset_event(dg.AssetMaterialization(
                    "log_manifest", partition=robot_day_key(robot, DAY), metadata={"raw_fingerprint": fp}))
        calls = []
        real = instance.fetch_materializations
        monkeypatch.setattr(instance, "fetch_materializations", lambda *a, **k: calls.append(1) or real(*a, **k))
        found = sensors._ingested_fingerprint(instance, lake)([(r, DAY) for r in robots])
    assert found == {("r0", DAY): "a0", ("r1", DAY): "b1", ("r3", DAY): "d3", ("r4", DAY): "e4"}
    assert len(calls) == 3
