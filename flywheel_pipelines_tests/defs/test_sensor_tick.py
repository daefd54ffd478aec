"""The upload sensor's tick contract: it lists and stats, and nothing more. No lake write (the runs it
starts record the join days), and no file read once a robot-day's files are what its last
log_manifest hashed (a restarted sensor or a lost cursor costs a listing, not a re-hash of the lake)."""

import builtins
import datetime as dt
import io
import os

import dagster as dg
import pytest

import flywheel_pipelines.defs.ingest.sensors as sensors
from flywheel_pipelines.defs.episodes.assets import episodes
from flywheel_pipelines.defs.ingest.assets import log_manifest, raw_fleet_logs
from flywheel_pipelines.defs.ingest.sensors import raw_log_sensor
from flywheel_pipelines.defs.partitions import HOT_START, ROBOTS, robot_day_key
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import fleet
from flywheel_pipelines.lib.sim.fleet import simulate_robot_day
from flywheel_pipelines.lib.sim.robot import sample_profile
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.conftest import days_ago

DAY = days_ago(1)
COLD_DAY = (HOT_START - dt.timedelta(days=3)).isoformat()


@pytest.fixture
def lake(tmp_path) -> LocalLake:
    return LocalLake(tmp_path / "lake")


def tree(lake: LocalLake) -> dict[str, tuple]:
    """Every entry under the lake root (hidden ones and links too) with what a write would change."""
    out = {}
    for folder, dirs, files in os.walk(lake.root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            out[os.path.relpath(path, lake.root)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def tick(instance, lake, cursor=None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"lake": LakeResource(root=str(lake.root))}) as context:
        return raw_log_sensor(context)


def test_a_tick_writes_nothing_to_the_lake(lake, tmp_path):
    simulate_robot_day(lake, sample_profile("r401", seed=0, index=1), DAY, episodes=1, seed=0)
    simulate_robot_day(lake, sample_profile("r402", seed=1, index=2), COLD_DAY, episodes=1, seed=1)
    (lake.root / "raw" / "robot=r401" / f"date={DAY}" / "link.mcap").symlink_to(tmp_path)  # refused, named
    before = tree(lake)
    with dg.instance_for_test() as instance:
        first = tick(instance, lake)
        assert sorted(r.tags["flywheel/robot"] for r in first.run_requests) == ["r401", "r402"]
        assert sorted(first.dynamic_partitions_requests[0].partition_keys) == ["r401", "r402"]
        tick(instance, lake, first.cursor)
    assert tree(lake) == before
    assert fleet.joined_robots(lake) == {}


def test_a_tick_over_ingested_days_opens_no_file(lake, monkeypatch):
    sim = simulate_robot_day(lake, sample_profile("r403", seed=0, index=1), DAY, episodes=1, seed=0)
    with dg.instance_for_test() as instance:
        first = tick(instance, lake)
        instance.add_dynamic_partitions(ROBOTS.name, ["r403"])
        assert dg.materialize([raw_fleet_logs, log_manifest, episodes], selection=[log_manifest], instance=instance,
                              resources={"lake": LakeResource(root=str(lake.root))},
                              partition_key=robot_day_key("r403", DAY)).success
        assert fleet.joined_robots(lake) == {"r403": DAY}  # recorded by the run, not the tick

        opened = []
        real_open = builtins.open

        def spy(file, *args, **kwargs):
            if str(file).startswith(str(lake.root)):
                opened.append(str(file))
            return real_open(file, *args, **kwargs)

        def no_hash(path):
            raise AssertionError(f"the tick hashed {path}")

        monkeypatch.setattr(builtins, "open", spy)
        monkeypatch.setattr(io, "open", spy)  # pathlib's read_bytes/read_text open through io.open
        monkeypatch.setattr(sensors, "sha256_file", no_hash)
        # A lost cursor looks at every file again, and a second tick within the grace window at the
        # same ones: both find the listing log_manifest recorded and read nothing.
        assert tick(instance, lake).run_requests == []
        assert tick(instance, lake, first.cursor).run_requests == []
        assert opened == []
        # A touched file (same bytes) has a new stat: the tick hashes that day and still requests nothing.
        monkeypatch.undo()
        os.utime(lake.path(sim.keys[0]))
        hashed = []
        real_hash = sensors.sha256_file
        monkeypatch.setattr(sensors, "sha256_file", lambda path: hashed.append(path) or real_hash(path))
        assert tick(instance, lake).run_requests == []
        assert len(hashed) == len(sim.keys)
