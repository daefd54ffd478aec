"""Tests for the episode-quality suite (Great Expectations 1.x, run for real in an ephemeral context)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from flywheel_pipelines.lib.episodes.embodiment import Embodiment, parse_embodiment
from flywheel_pipelines.lib.episodes.standardize import Standardized, standardize
from flywheel_pipelines.lib.quality import CHECKS, QualityError, suite_name, suite_rules, validate_episodes
from flywheel_pipelines.lib.sim.fleet import simulate_robot_day
from flywheel_pipelines.lib.sim.robot import sample_profile
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.lib.conftest import source_files

STATE, GOAL, ACTION = "observation.state", "observation.environment_state", "action"


def with_figures(table: pa.Table, episode_id: str, *, stream: dict[str, dict] | None = None,
                 stream_quality: str | None = None, **columns) -> pa.Table:
    """``table`` with one episode's per-stream figures and/or columns replaced."""
    rows = table.to_pylist()
    (row,) = [r for r in rows if r["episode_id"] == episode_id]
    if stream:
        streams = json.loads(row["stream_quality"])
        for key, figures in stream.items():
            streams.setdefault(key, {}).update(figures)
        row["stream_quality"] = json.dumps(streams, sort_keys=True)
    if stream_quality is not None:
        row["stream_quality"] = stream_quality
    row.update(columns)
    return pa.Table.from_pylist(rows, schema=table.schema)


@pytest.fixture(scope="module")
def table(standardized: Standardized) -> pa.Table:
    return standardized.episodes


@pytest.fixture(scope="module")
def ids(table: pa.Table) -> list[str]:
    return table["episode_id"].to_pylist()


def test_clean_day_passes_every_check(table, emb: Embodiment):
    assert all(table["quality_ok"].to_pylist()), "the fixture robot is the fleet's clean one"
    result = validate_episodes(table, emb)
    assert result.passed and result.failing_episodes() == []
    assert {r.check for r in result.results} == set(CHECKS)
    assert all(result.check_passed(check) for check in CHECKS)
    assert result.episode_ids == tuple(table["episode_id"].to_pylist())
    # The skew of the state stream is measured, not defaulted.
    assert 0 < result.observed("sync_skew")[f"skew_ms[{STATE}]"]["worst"] <= emb.max_skew_ms


def test_one_episode_over_skew_and_one_over_gap_fail_exactly_those(table, ids, emb):
    skewed, gappy, at_limit = ids[0], ids[1], ids[2]
    bad = with_figures(table, skewed, stream={STATE: {"max_skew_ms": emb.max_skew_ms + 0.5}})
    bad = with_figures(bad, gappy, stream={ACTION: {"max_gap_ms": emb.max_gap_ms + 1.0}})
    # Exactly at the tolerance is within it (standardize flags only what exceeds it).
    bad = with_figures(bad, at_limit, stream={STATE: {"max_skew_ms": emb.max_skew_ms, "max_gap_ms": emb.max_gap_ms}})
    result = validate_episodes(bad, emb)
    assert not result.passed
    assert result.failing_episodes("sync_skew") == [skewed]
    assert result.failing_episodes("gap_tolerance") == [gappy]
    assert result.failing_episodes() == sorted([skewed, gappy])
    assert result.failures_by_episode() == {skewed: ["sync_skew"], gappy: ["gap_tolerance"]}
    for check in ("monotonic_time", "no_nan", "frame_count"):
        assert result.check_passed(check), check
    assert result.observed("sync_skew")[f"skew_ms[{STATE}]"] == {"worst": emb.max_skew_ms + 0.5,
                                                                "tolerance": emb.max_skew_ms}
    assert result.observed("gap_tolerance")[f"gap_ms[{ACTION}]"] == {"worst": emb.max_gap_ms + 1.0,
                                                                    "tolerance": emb.max_gap_ms}
    failed = [r for r in result.for_check("sync_skew") if not r.success]
    assert [(r.expectation, r.column, r.unexpected_count, r.failing_episodes) for r in failed] == [
        ("expect_column_values_to_be_between", f"skew_ms[{STATE}]", 1, (skewed,))]
    table_md = result.markdown("sync_skew")
    assert f"| column_values_to_be_between | `skew_ms[{STATE}]` | <= 20 ms | 20.5 | FAIL | 1 | {skewed} |" in table_md
    assert gappy not in table_md


def test_the_features_own_skew_tolerance_is_honoured(table, ids, emb):
    goal = emb.feature(GOAL)
    assert goal.max_skew_ms == 1000 and emb.max_skew_ms == 20
    # The goal (2 Hz, its own 1000 ms tolerance) may lag far beyond the global 20 ms, and its gaps
    # are not held to the global gap tolerance...
    slow = with_figures(table, ids[0], stream={GOAL: {"max_skew_ms": 999.0, "max_gap_ms": 999.0}})
    assert validate_episodes(slow, emb).passed
    # ...but not beyond its own.
    late = with_figures(table, ids[0], stream={GOAL: {"max_skew_ms": 1000.5}})
    assert validate_episodes(late, emb).failing_episodes("sync_skew") == [ids[0]]
    # The same table under a mapping that tightens the goal's tolerance fails where the worst goal
    # skew of the day exceeds it, and the suite is another version.
    tight = parse_embodiment(emb.source_text.replace("max_skew_ms: 1000", "max_skew_ms: 100"), source="tight.yaml")
    assert tight.feature(GOAL).max_skew_ms == 100
    measured = {e: json.loads(q)[GOAL]["max_skew_ms"] for e, q in
                zip(ids, table["stream_quality"].to_pylist(), strict=True)}
    result = validate_episodes(table, tight)
    assert result.failing_episodes("sync_skew") == sorted(e for e, s in measured.items() if s > 100)
    assert result.failing_episodes("sync_skew"), "the simulated goal lags up to 500 ms"
    assert suite_name(tight) != suite_name(emb)


def test_a_feature_given_its_own_tolerance_leaves_the_global_ones(table, ids, emb):
    loose_state = parse_embodiment(emb.source_text.replace(
        "    rule: hold             # latest sample at or before the frame time",
        "    rule: hold\n    max_skew_ms: 50"), source="loose.yaml")
    assert loose_state.feature(STATE).max_skew_ms == 50
    t = with_figures(table, ids[0], stream={STATE: {"max_skew_ms": 35.0, "max_gap_ms": 90.0}})
    assert validate_episodes(t, emb).failures_by_episode() == {ids[0]: ["gap_tolerance", "sync_skew"]}
    # Under its own 50 ms skew tolerance the state stream passes, and (as in standardize) its gaps
    # are no longer held to the global gap tolerance.
    assert validate_episodes(t, loose_state).passed
    assert all(f"[{STATE}]" not in r.column for r in suite_rules(loose_state) if r.check == "gap_tolerance")


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ({"nan_count": 3}, "no_nan"),
        ({"num_frames": 1}, "frame_count"),
        ({"stream": {ACTION: {"non_monotonic": 2}}}, "monotonic_time"),
        ({"end_ns": 0}, "monotonic_time"),  # ends before it starts
    ],
)
def test_other_checks_fail_the_offending_episode(table, ids, emb, change, check):
    bad = with_figures(table, ids[3], **change)
    result = validate_episodes(bad, emb)
    assert result.failures_by_episode() == {ids[3]: [check]}


@pytest.mark.parametrize("stream_quality", ["{}", "not json", json.dumps([1, 2])])
def test_missing_stream_figures_fail_rather_than_pass(table, ids, emb, stream_quality):
    result = validate_episodes(with_figures(table, ids[0], stream_quality=stream_quality), emb)
    assert result.failures_by_episode() == {ids[0]: ["gap_tolerance", "monotonic_time", "sync_skew"]}
    nulls = [r for r in result.results if not r.success]
    assert all(r.expectation == "expect_column_values_to_not_be_null" for r in nulls)


def test_a_table_without_a_needed_column_is_an_error(table, emb):
    with pytest.raises(QualityError, match=r"lacks column\(s\) \['stream_quality'\].*episode_quality"):
        validate_episodes(table.drop_columns(["stream_quality"]), emb)


def test_suite_is_versioned_with_the_mapping(emb):
    name = suite_name(emb)
    assert emb.name in name and f"v{emb.version}" in name and emb.content_hash in name
    edited = parse_embodiment(emb.source_text.replace("max_gap_ms: 60", "max_gap_ms: 70"), source="edit.yaml")
    assert suite_name(edited) != name
    assert {r.bound for r in suite_rules(edited) if r.check == "gap_tolerance"} == {"not null", "<= 70 ms"}


def test_verdict_matches_standardize_on_a_flaky_robot(tmp_path, emb):
    """Real logs with network dropouts: the suite fails exactly the episodes standardize flagged."""
    lake = LocalLake(tmp_path / "lake")
    profile = replace(sample_profile("r202", seed=0), burst_drop_rate=4.0)
    day = simulate_robot_day(lake, profile, "2026-11-02", episodes=4, seed=3)
    episodes = standardize(source_files(lake, day.keys), emb, robot="r202", day="2026-11-02").episodes
    flagged = sorted(e["episode_id"] for e in episodes.to_pylist() if not e["quality_ok"])
    assert flagged, "burst drops should push some episode over tolerance"
    result = validate_episodes(episodes, emb)
    assert result.failing_episodes() == flagged
    assert result.failing_episodes("sync_skew") == sorted(
        e["episode_id"] for e in episodes.to_pylist() if "sync_skew" in e["quality_issues"])
    assert result.failing_episodes("gap_tolerance") == sorted(
        e["episode_id"] for e in episodes.to_pylist() if "gap" in e["quality_issues"])


def test_validation_writes_nothing_to_the_working_directory(tmp_path, monkeypatch, table, emb):
    monkeypatch.chdir(tmp_path)
    assert validate_episodes(table, emb).passed
    assert list(tmp_path.iterdir()) == []


def test_empty_table_passes(table, emb):
    result = validate_episodes(table.slice(0, 0), emb)
    assert result.passed and result.episode_ids == ()


def test_loading_definitions_does_not_import_great_expectations():
    code = ("import sys, flywheel_pipelines.definitions, flywheel_pipelines.lib.quality; "
            "print('great_expectations' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    assert out.stdout.strip() == "False"


def test_camera_streams_are_held_to_their_own_tolerance(table, ids, emb):
    cam = parse_embodiment(emb.source_text + "images:\n  wrist: {topic: /wrist/image, rule: nearest, max_skew_ms: 40}\n",
                           source="cam.yaml")
    # A day standardized without the camera has no figures for it: no episode can be shown to be in sync.
    assert validate_episodes(table, cam).failing_episodes("sync_skew") == sorted(ids)
    with_camera = table
    for episode_id in ids:
        skew = 41.0 if episode_id == ids[1] else 39.0
        with_camera = with_figures(with_camera, episode_id,
                                   stream={"wrist": {"max_skew_ms": skew, "max_gap_ms": 400.0, "non_monotonic": 0}})
    # Over its own 40 ms (not the global 20 ms) fails; its gaps are not held to the global gap tolerance.
    assert validate_episodes(with_camera, cam).failures_by_episode() == {ids[1]: ["sync_skew"]}
