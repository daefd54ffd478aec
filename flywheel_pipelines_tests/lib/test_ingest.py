"""lib/ingest without Dagster: manifest, episodes, cold-day re-ingest and compaction, and the local
upload planner, over a real local lake and real simulated MCAP logs."""

from __future__ import annotations

import datetime as dt
import os
import shutil

import pyarrow.parquet as pq
import pytest

from flywheel_pipelines.lib import fleet, ids, layout
from flywheel_pipelines.lib.episodes.embodiment import load_embodiment
from flywheel_pipelines.lib.ingest import IngestError
from flywheel_pipelines.lib.ingest.archive import compact_month, complete_before, hot_entries, parse_robot_day, reingest_robot_day
from flywheel_pipelines.lib.ingest.episodes import ingest_episodes
from flywheel_pipelines.lib.ingest.manifest import ingest_manifest, write_manifest
from flywheel_pipelines.lib.ingest.uploads import SHA_TAG, Window, plan_local
from flywheel_pipelines.lib.sim.fleet import simulate_robot_day
from flywheel_pipelines.lib.sim.robot import sample_profile
from flywheel_pipelines.lib.storage import LocalLake

DAY = "2026-03-02"
MONTH = "2026-03-01"
WINDOW = Window(first_day="2025-01-01", today=dt.date(2026, 3, 10))


@pytest.fixture
def lake(tmp_path) -> LocalLake:
    return LocalLake(tmp_path / "lake")


def upload(lake, robot: str, day: str = DAY, *, episodes: int = 2, seed: int = 0):
    return simulate_robot_day(lake, sample_profile(robot, seed=seed, index=1), day, episodes=episodes, seed=seed)


def never_ingested(robot_days):
    return {}


# --- manifest -------------------------------------------------------------------------------------------


def test_manifest_lists_every_log_with_a_verdict_and_the_sensor_fingerprint(lake):
    sim = upload(lake, "r1")
    (lake.path(layout.raw_prefix("r1", DAY).rstrip("/")) / "broken.mcap").write_bytes(b"not an mcap file")
    manifest = write_manifest(lake, "r1", DAY)
    assert lake.read_json(layout.manifest_key("r1", DAY)) == manifest
    verdicts = {f["key"]: f["verdict"] for f in manifest["files"]}
    assert verdicts[layout.raw_key("r1", DAY, "broken.mcap")] == "rejected"
    assert all(verdicts[k] == "ok" for k in sim.keys)
    # The fingerprint is the one the upload planner derives from the same files.
    plan = plan_local(lake, {}, known_robots=set(), already_ingested=never_ingested, window=WINDOW)
    assert [(r.robot, r.day, r.fingerprint) for r in plan.runs] == [("r1", DAY, manifest["raw_fingerprint"])]


def test_no_raw_logs_is_an_error_naming_the_folder_and_writes_nothing(lake):
    with pytest.raises(IngestError, match=r"no raw logs under .*raw/robot=r9/date=2026-03-02/"):
        write_manifest(lake, "r9", DAY)
    assert not lake.exists(layout.manifest_key("r9", DAY))


def test_ingest_manifest_records_the_earliest_join_day(lake):
    upload(lake, "r1", DAY)
    upload(lake, "r1", "2026-02-20")
    ingest_manifest(lake, "r1", DAY)
    assert fleet.joined_robots(lake) == {"r1": DAY}
    ingest_manifest(lake, "r1", "2026-02-20")  # a late upload of an earlier day moves it back
    ingest_manifest(lake, "r1", DAY)
    assert fleet.joined_robots(lake) == {"r1": "2026-02-20"}


# --- episodes -------------------------------------------------------------------------------------------


def test_ingest_episodes_publishes_frames_episodes_and_accounting(lake):
    upload(lake, "r1", episodes=3)
    write_manifest(lake, "r1", DAY)
    result, verdict = ingest_episodes(lake, "r1", DAY, load_embodiment())
    table = pq.read_table(lake.path(layout.episode_table_key("r1", DAY)))
    assert table.num_rows == result.episodes.num_rows == 3 == len(verdict.episode_ids)
    assert pq.read_table(lake.path(layout.frames_key("r1", DAY))).num_rows == result.frames.num_rows > 0
    accounting = lake.read_json(f"{layout.episodes_prefix('r1', DAY)}/{layout.ACCOUNTING}")
    assert accounting["totals"]["read"] == sum(r["read"] for r in result.accounting) > 0


def test_a_day_whose_files_are_all_rejected_fails_naming_them_and_publishes_nothing(lake):
    folder = lake.path(layout.raw_prefix("r1", DAY).rstrip("/"))
    folder.mkdir(parents=True)
    (folder / "junk.mcap").write_bytes(b"not an mcap file")
    write_manifest(lake, "r1", DAY)
    with pytest.raises(IngestError, match="every raw file was rejected") as exc:
        ingest_episodes(lake, "r1", DAY, load_embodiment())
    assert "junk.mcap" in str(exc.value)
    assert not lake.exists(layout.episode_table_key("r1", DAY))


# --- cold days ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry, message", [("r1-2026-03-02", "expected 'robot/YYYY-MM-DD'"),
                                            ("../x/2026-03-02", "invalid robot id"),
                                            ("r1/2026-04-02", "not in the month 2026-03")])
def test_a_bad_reingest_entry_is_refused_naming_it(entry, message):
    with pytest.raises(ids.InvalidIdentifier, match=message):
        parse_robot_day(entry, MONTH)


def test_hot_entries_and_the_archive_extent():
    assert parse_robot_day("r1/2026-03-02", MONTH) == ("r1", DAY)
    assert hot_entries([("r1", "2026-03-01"), ("r2", "2026-03-20")], "2026-03-16") == ["r2/2026-03-20"]
    assert complete_before(MONTH, "2026-03-16") == "2026-03-16"
    assert complete_before("2026-02-01", "2026-03-16") == "2026-03-01"


def test_reingest_is_idempotent_and_compaction_replaces_only_the_changed_robot_day(lake, tmp_path):
    emb, warnings = load_embodiment(), []
    upload(lake, "r1", episodes=2)
    upload(lake, "r2", "2026-03-03", episodes=2, seed=1)
    assert reingest_robot_day(lake, "r1", DAY, emb, warnings.append) == "2 episodes"
    assert reingest_robot_day(lake, "r2", "2026-03-03", emb, warnings.append) == "2 episodes"
    assert reingest_robot_day(lake, "r1", DAY, emb, warnings.append) == "up to date"  # a re-run after a kill
    full = compact_month(lake, MONTH, "2026-04-01")
    assert (full["mode"], full["robot_days"], full["episodes"]) == ("full", 2, 4)
    # A late upload to r1's day: ingested again, and only its rows replaced in the archive.
    extra = tmp_path / "late.mcap"
    shutil.copyfile(lake.path(upload(lake, "r3", DAY, episodes=1, seed=2).keys[0]), extra)
    lake.put_raw(layout.raw_key("r1", DAY, "zz-late.mcap"), extra)
    assert reingest_robot_day(lake, "r1", DAY, emb, warnings.append) == "3 episodes"
    again = compact_month(lake, MONTH, "2026-04-01", changed=[("r1", DAY)])
    assert (again["mode"], again["episodes"]) == ("incremental", 5)
    assert lake.read_json(layout.archive_info_key(MONTH))["content_hash"] == again["content_hash"]
    assert fleet.joined_robots(lake) == {"r1": DAY, "r2": "2026-03-03"}  # r3 was never ingested
    assert warnings == []


# --- the local upload planner ------------------------------------------------------------------------------


def test_the_local_planner_plans_changed_robot_days_once(lake, tmp_path):
    sim = upload(lake, "r1")
    plan = plan_local(lake, {}, known_robots=set(), already_ingested=never_ingested, window=WINDOW)
    [run] = plan.runs
    assert (run.robot, run.day, run.fingerprint_tag, plan.new_robots) == ("r1", DAY, SHA_TAG, ["r1"])
    assert run.run_key == f"r1|{DAY}|{run.fingerprint}"
    # Ingested with this fingerprint: the same bytes again (touched) plan nothing ...
    for key in sim.keys:
        os.utime(lake.path(key))
    ingested = {("r1", DAY): run.fingerprint}
    assert plan_local(lake, {}, known_robots={"r1"}, already_ingested=lambda rds: ingested, window=WINDOW).runs == []
    # ... past the watermark nothing is even looked at ...
    asked = []
    quiet = plan_local(lake, {"watermark_ns": plan.cursor["watermark_ns"] + 10_000_000_000}, known_robots={"r1"},
                       already_ingested=lambda rds: asked.append(rds) or {}, window=WINDOW)
    assert quiet.runs == [] and asked == []
    # ... and a changed day plans one new run.
    extra = tmp_path / "late.mcap"
    shutil.copyfile(lake.path(sim.keys[0]), extra)
    lake.put_raw(layout.raw_key("r1", DAY, "late.mcap"), extra)
    [changed] = plan_local(lake, plan.cursor, known_robots={"r1"}, already_ingested=lambda rds: ingested,
                           window=WINDOW).runs
    assert (changed.robot, changed.day) == ("r1", DAY) and changed.fingerprint != run.fingerprint


def test_the_local_planner_skips_days_without_a_partition_and_bad_keys_naming_them(lake):
    upload(lake, "r1", "2024-12-30", episodes=1)  # before the fleet's first day
    upload(lake, "r2", "2026-03-12", episodes=1)  # after today
    bad = lake.root / "raw" / "robot=UPPER" / f"date={DAY}"
    bad.mkdir(parents=True)
    (bad / "x.mcap").write_bytes(b"junk")
    plan = plan_local(lake, {}, known_robots=set(), already_ingested=never_ingested, window=WINDOW)
    assert plan.runs == []
    text = "\n".join(plan.warnings)
    assert "before the fleet's first day 2025-01-01" in text and "in the future" in text
    assert "invalid robot id 'UPPER'" in text


def test_window_says_why_a_day_has_no_partition():
    assert WINDOW.outside("2026-03-10") is None
    assert "before the fleet's first day" in WINDOW.outside("2024-12-31")
    assert "in the future (today is 2026-03-10 UTC)" in WINDOW.outside("2026-03-11")
