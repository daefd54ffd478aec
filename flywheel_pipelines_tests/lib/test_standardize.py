"""Tests for embodiment mappings, episode segmentation, stream alignment and standardization."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from mcap_ros2.reader import read_ros2_messages

from flywheel_pipelines.lib.episodes.embodiment import MappingError, load_embodiment, parse_embodiment
from flywheel_pipelines.lib.episodes.standardize import (
    EPISODE_SCHEMA,
    Event,
    Standardized,
    Stream,
    _sample,
    align_episode,
    empty_frames,
    extract_streams,
    segment,
    standardize,
)
from flywheel_pipelines.lib.sim.fleet import simulate_robot_day
from flywheel_pipelines.lib.sim.robot import sample_profile
from flywheel_pipelines.lib.storage import LocalLake, sha256_file
from flywheel_pipelines_tests.lib.conftest import DAY, EPISODES, ROBOT, SimDay, source_files

T0 = 1_793_000_000_000_000_000  # epoch ns (2026-10): float64 cannot tell T0 from T0 + 1
MS = 1_000_000

# --- embodiment mapping ----------------------------------------------------------------------

_GOOD = """\
name: testarm
version: 2
fps: 10
clock: log_time
events: {topic: /ev}
features:
  observation.state: {topic: /js, fields: [position], names: [a.pos, b.pos], joint_names: [a, b]}
  action: {topic: /cmd, fields: [position], names: [a.target, b.target], rule: linear, max_skew_ms: 5}
tolerance: {max_skew_ms: 20, max_gap_ms: 60}
"""


def test_shipped_mapping_parses():
    emb = load_embodiment()
    assert (emb.name, emb.version, emb.robot_type, emb.fps, emb.clock) == ("flywheel_arm2", 1, "flywheel_arm2", 20,
                                                                           "header")
    assert (emb.default_task, emb.frame_anchor, emb.events_topic) == ("reach_target", "action", "/events")
    assert [(f.key, f.topic, f.rule, f.dim) for f in emb.features] == [
        ("observation.state", "/joint_states", "hold", 4),
        ("observation.environment_state", "/goal", "hold", 2),
        ("action", "/joint_commands", "nearest", 2),
    ]
    state = emb.feature("observation.state")
    assert state.fields == ("position", "velocity") and state.joint_names == ("shoulder", "elbow")
    assert state.names == ("shoulder.pos", "elbow.pos", "shoulder.vel", "elbow.vel")
    assert emb.feature("observation.environment_state").fields == ("point.x", "point.y")
    assert emb.skew_tolerance_ns(state) == 20 * MS
    assert emb.skew_tolerance_ns(emb.feature("observation.environment_state")) == 1000 * MS
    assert (emb.max_skew_ms, emb.max_gap_ms) == (20.0, 60.0)
    assert len(emb.content_hash) == 12 and emb.content_hash == load_embodiment("flywheel_arm2").content_hash
    with pytest.raises(KeyError):
        emb.feature("observation.image")


def test_mapping_from_a_yaml_path(tmp_path):
    path = tmp_path / "testarm.yaml"
    path.write_text(_GOOD)
    emb = load_embodiment(str(path))
    assert (emb.name, emb.version, emb.fps, emb.clock, emb.default_task) == ("testarm", 2, 10, "log_time", "default")
    assert emb.feature("action").rule == "linear" and emb.feature("observation.state").rule == "hold"
    assert emb.skew_tolerance_ns(emb.feature("action")) == 5 * MS
    assert emb.content_hash != load_embodiment().content_hash


def test_unknown_mapping_name():
    with pytest.raises(MappingError, match="no embodiment mapping named 'nope'"):
        load_embodiment("nope")


def test_bad_mapping_file_error_names_the_path(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(_GOOD.replace("fps: 10", "fps: 0"))
    with pytest.raises(MappingError, match=f"^{path}: fps must be positive"):
        load_embodiment(str(path))


def test_a_mapping_without_events_makes_each_recording_one_episode():
    assert parse_embodiment(_GOOD.replace("events: {topic: /ev}", "")).events_topic is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (_GOOD.replace("rule: linear", "rule: cubic"), "unknown rule 'cubic'"),
        (_GOOD.replace("clock: log_time", "clock: wall"), "clock must be one of"),
        (_GOOD.replace("fps: 10", "fps: 0"), "fps must be positive"),
        (_GOOD.replace("fps: 10", "fps: ten"), "'fps' must be int, got 'ten'"),
        (_GOOD.replace("  action:", "  observation.goal:"), "needs an 'action' feature"),
        (_GOOD.replace("tolerance: {max_skew_ms: 20, max_gap_ms: 60}", ""), "missing 'tolerance'"),
        (_GOOD.replace("events: {topic: /ev}", "events: {format: json}"), "events: missing 'topic'"),
        (_GOOD.replace("name: testarm", ""), "missing 'name'"),
        (_GOOD.replace(", names: [a.pos, b.pos]", ""), "missing 'names'"),
        ("", "a mapping is a YAML mapping"),
        ("- just\n- a list\n", "a mapping is a YAML mapping"),
        ("name: [unclosed\n", "invalid YAML"),
        # Wrongly shaped sections must be MappingErrors too, not AttributeErrors.
        (_GOOD.replace("  action: {topic: /cmd,", "  action: 3\n  x: {topic: /cmd,"), "must be a name with a mapping"),
        ("name: x\nfeatures: [action]\n", "'features' must be dict"),
    ],
    ids=["rule", "clock", "fps0", "fps-text", "no-action", "no-tolerance", "events-no-topic", "no-name", "no-names",
         "empty", "list", "yaml-syntax", "feature-not-mapping", "features-list"],
)
def test_bad_mapping_raises_mapping_error_naming_the_source(text, problem):
    with pytest.raises(MappingError) as info:
        parse_embodiment(text, source="maps/bad.yaml")
    assert str(info.value).startswith("maps/bad.yaml: ")
    assert problem in str(info.value)


# --- segmentation ----------------------------------------------------------------------------


def _ev(dt_ns: int, event: str, **payload) -> Event:
    return Event(T0 + dt_ns, {"event": event, **payload})


def test_segment_start_end_with_intervention_and_tag():
    events = [
        _ev(0, "episode_start", episode_id="e1", task="stack", operator="alice"),
        _ev(1, "tag", tag="lighting:glare"),
        _ev(2, "intervention_start"),
        _ev(3, "intervention_end"),
        _ev(4, "episode_end", episode_id="e1", outcome="success"),
        _ev(10, "episode_start", episode_id="e2"),
        _ev(11, "tag", tag=""),  # empty tags are ignored
        _ev(12, "episode_end", episode_id="e2", outcome="failure"),
    ]
    spans = segment(events, default_task="reach", id_prefix="r1-20260302")
    assert [(s.episode_id, s.start_ns - T0, s.end_ns - T0, s.task, s.outcome, s.operator) for s in spans] == [
        ("e1", 0, 4, "stack", "success", "alice"),
        ("e2", 10, 12, "reach", "failure", None),
    ]
    assert spans[0].tags == ["lighting:glare"] and spans[1].tags == []
    assert spans[0].interventions == [(T0 + 2, T0 + 3)] and spans[1].interventions == []
    assert all(isinstance(s.start_ns, int) for s in spans)


def test_segment_truncated_episode_is_kept_with_unknown_outcome():
    events = [
        _ev(0, "episode_start", episode_id="e1"),
        _ev(5, "episode_end", episode_id="e1", outcome="success"),
        _ev(10, "episode_start", episode_id="e2"),
        _ev(17, "tag", tag="shift:night"),
    ]
    spans = segment(events, default_task="reach", id_prefix="p")
    assert [s.episode_id for s in spans] == ["e1", "e2"]
    last = spans[1]
    assert (last.outcome, last.start_ns, last.end_ns) == ("unknown", T0 + 10, T0 + 17)
    assert last.tags == ["shift:night", "truncated"]


def test_segment_truncated_inside_an_intervention_closes_it():
    spans = segment([_ev(0, "episode_start"), _ev(3, "intervention_start")], default_task="reach", id_prefix="p")
    assert len(spans) == 1
    assert (spans[0].episode_id, spans[0].outcome, spans[0].tags) == ("p-000", "unknown", ["truncated"])
    assert spans[0].interventions == [(T0 + 3, T0 + 3)]


def test_segment_start_while_open_aborts_the_first():
    events = [
        _ev(0, "episode_start", episode_id="e1"),
        _ev(2, "intervention_start"),
        _ev(6, "episode_start", episode_id="e2"),
        _ev(9, "episode_end", episode_id="e2", outcome="success"),
    ]
    spans = segment(events, default_task="reach", id_prefix="p")
    assert [(s.episode_id, s.end_ns - T0, s.outcome, s.tags) for s in spans] == [
        ("e1", 6, "unknown", ["aborted"]),
        ("e2", 9, "success", []),
    ]
    assert spans[0].interventions == [(T0 + 2, T0 + 6)] and spans[1].interventions == []


def test_segment_ignores_events_outside_episodes_and_generates_ids():
    events = [
        _ev(0, "tag", tag="x"),
        _ev(1, "episode_end", outcome="success"),
        _ev(2, "episode_start"),
        _ev(3, "intervention_end"),  # no open intervention: ignored
        _ev(4, "episode_end"),  # no outcome
        _ev(5, "episode_start"),
        _ev(6, "episode_end", outcome="failure"),
        _ev(7, "intervention_start"),
        _ev(8, "not json at all"),
    ]
    spans = segment(events, default_task="reach", id_prefix="r1-20260302")
    assert [(s.episode_id, s.start_ns - T0, s.outcome, s.interventions) for s in spans] == [
        ("r1-20260302-000", 2, "unknown", []),
        ("r1-20260302-001", 5, "failure", []),
    ]
    assert segment([], default_task="reach", id_prefix="p") == []


# --- alignment rules -------------------------------------------------------------------------

# Samples at +0, +10 ms, +30 ms; frames before, on and between them.
_STREAM = Stream("/x", np.array([T0, T0 + 10 * MS, T0 + 30 * MS], np.int64), np.array([[1.0], [2.0], [4.0]]))
_GRID = T0 + np.array([-5, 0, 4, 6, 20, 30, 40], np.int64) * MS


def test_sample_hold():
    vals, skew, ok = _sample(_STREAM, _GRID, "hold")
    assert ok.tolist() == [False, True, True, True, True, True, True]
    assert vals[ok, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 4.0, 4.0]
    assert skew.dtype == np.int64
    assert (skew[ok] // MS).tolist() == [0, 4, 6, 10, 0, 10] and skew[0] == 0


def test_sample_nearest():
    vals, skew, ok = _sample(_STREAM, _GRID, "nearest")
    assert ok.all()
    # A tie (20 ms is 10 ms from both neighbours) goes to the earlier sample.
    assert vals[:, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    assert skew.dtype == np.int64 and (skew // MS).tolist() == [5, 0, 4, 4, 10, 0, 10]


def test_sample_linear():
    vals, skew, ok = _sample(_STREAM, _GRID, "linear")
    assert ok.all()
    # Outside the samples the edge value is held.
    np.testing.assert_allclose(vals[:, 0], [1.0, 1.0, 1.4, 1.6, 3.0, 4.0, 4.0], rtol=0, atol=1e-12)
    assert (skew // MS).tolist() == [5, 0, 4, 4, 10, 0, 10]


def test_sample_keeps_nanosecond_precision_at_epoch_scale():
    # One nanosecond apart: lost entirely if any step went through float64 seconds or ns.
    stream = Stream("/x", np.array([T0, T0 + 3], np.int64), np.array([[0.0, 10.0], [3.0, 40.0]]))
    grid = np.array([T0, T0 + 1, T0 + 2, T0 + 3], np.int64)
    vals, skew, ok = _sample(stream, grid, "linear")
    np.testing.assert_allclose(vals, [[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 40.0]], rtol=0, atol=1e-12)
    assert skew.tolist() == [0, 1, 1, 0]
    vals, skew, _ = _sample(stream, grid, "nearest")
    assert vals[:, 0].tolist() == [0.0, 0.0, 3.0, 3.0] and skew.tolist() == [0, 1, 1, 0]
    vals, skew, _ = _sample(stream, grid, "hold")
    assert vals[:, 0].tolist() == [0.0, 0.0, 0.0, 3.0] and skew.tolist() == [0, 1, 2, 0]
    assert float(T0 + 1) == float(T0)  # the premise: float64 would have collapsed these


def test_sample_empty_stream_is_invalid_everywhere():
    empty = Stream("/x", np.zeros(0, np.int64), np.zeros((0, 2)))
    for rule in ("hold", "nearest", "linear"):
        vals, skew, ok = _sample(empty, _GRID, rule)
        assert vals.shape == (len(_GRID), 2) and np.isnan(vals).all()
        assert not ok.any() and (skew == 0).all()


# --- standardize a simulated robot-day -------------------------------------------------------


def _frames_of(std: Standardized, episode_id: str) -> pa.Table:
    return std.frames.filter(pa.compute.equal(std.frames["episode_id"], episode_id))


def _events(sim_day: SimDay) -> list[tuple[int, dict]]:
    return [(m.publish_time_ns, json.loads(m.ros_msg.data)) for p in sim_day.paths
            for m in read_ros2_messages(str(p), topics=["/events"])]


def test_frames_schema(standardized: Standardized, emb):
    assert standardized.frames.schema.equals(empty_frames(emb).schema)
    assert standardized.frames.schema.field("timestamp_ns").type == pa.int64()
    assert standardized.episodes.schema == EPISODE_SCHEMA
    assert standardized.undecodable == 0


def test_frames_are_on_a_50ms_int64_grid_per_episode(standardized: Standardized):
    episodes = standardized.episodes.to_pylist()
    assert len(episodes) == EPISODES
    for ep in episodes:
        frames = _frames_of(standardized, ep["episode_id"])
        ts = frames["timestamp_ns"].to_numpy()
        assert ts.dtype == np.int64
        assert len(ts) == ep["num_frames"] >= 10
        assert set(np.diff(ts).tolist()) == {50_000_000}
        assert ep["start_ns"] <= ts[0] and ts[-1] <= ep["end_ns"]
        assert frames["frame_index"].to_pylist() == list(range(len(ts)))
    assert standardized.frames.num_rows == sum(e["num_frames"] for e in episodes)


def test_episode_ids_are_unique_and_follow_the_robot_day(standardized: Standardized):
    ids = standardized.episodes["episode_id"].to_pylist()
    # <robot>-<YYYYMMDD>-<HHMMSS start>-<index>: unique even when a day is simulated twice.
    assert len(set(ids)) == EPISODES
    assert [re.fullmatch(rf"{ROBOT}-20260302-\d{{6}}-{k:03d}", e) is not None
            for k, e in enumerate(ids)] == [True] * EPISODES
    assert set(standardized.frames["episode_id"].to_pylist()) == set(ids)


def test_episodes_agree_with_the_events_topic(standardized: Standardized, sim_day: SimDay):
    starts, ends, interventions = {}, {}, set()
    current = None
    for t, ev in _events(sim_day):
        if ev["event"] == "episode_start":
            current = ev["episode_id"]
            starts[current] = (t, ev["operator"])
        elif ev["event"] == "episode_end":
            ends[ev["episode_id"]] = (t, ev["outcome"])
        elif ev["event"] == "intervention_start":
            interventions.add(current)
    for ep in standardized.episodes.to_pylist():
        eid = ep["episode_id"]
        assert (ep["start_ns"], ep["operator"]) == starts[eid]
        assert (ep["end_ns"], ep["outcome"]) == ends[eid]
        assert ep["intervention"] == (eid in interventions)
        assert (ep["robot"], ep["date"], ep["task"]) == (ROBOT, DAY, "reach_target")
        assert ep["duration_s"] == pytest.approx((ep["end_ns"] - ep["start_ns"]) / 1e9)
        assert (ep["embodiment"], ep["embodiment_version"]) == ("flywheel_arm2", 1)
    # The fixture day has one intervention; its frames are flagged inside the intervention only.
    assert interventions
    for eid in interventions:
        flags = _frames_of(standardized, eid)["intervention"].to_pylist()
        assert 0 < sum(flags) < len(flags)
    others = standardized.frames.filter(pa.compute.invert(pa.compute.is_in(
        standardized.frames["episode_id"], pa.array(sorted(interventions)))))
    assert not any(others["intervention"].to_pylist())


def test_source_keys_and_hashes(standardized: Standardized, sim_day: SimDay):
    keys = sim_day.day.keys
    for k, ep in enumerate(standardized.episodes.to_pylist()):
        # Five episodes per session file: each episode comes from exactly its own file.
        assert ep["source_keys"] == [keys[k // 5]]
        assert ep["source_sha256"] == [sha256_file(sim_day.lake.path(keys[k // 5]))]


def test_clean_robot_frames_have_no_nan_and_pass_quality(standardized: Standardized, emb):
    for feature in emb.features:
        col = standardized.frames[feature.key].combine_chunks()
        assert col.type.list_size == feature.dim
        values = col.flatten().to_numpy()
        assert np.isfinite(values).all(), feature.key
    for ep in standardized.episodes.to_pylist():
        assert ep["quality_ok"] and ep["quality_issues"] == [] and ep["nan_count"] == 0, ep["episode_id"]
        assert ep["max_skew_ms"] <= 20 and ep["max_gap_ms"] <= 60
        assert 240 <= ep["state_rate_hz"] <= 255
        streams = json.loads(ep["stream_quality"])
        assert set(streams) == {f.key for f in emb.features}
        assert streams["action"]["rate_hz"] == pytest.approx(20.0)
        assert streams["observation.state"]["non_monotonic"] == 0


def test_frame_values_come_from_the_logged_streams(standardized: Standardized, sim_day: SimDay):
    # The goal feature equals the /goal point the episode published, and actions are commands.
    goals = {}
    for m in read_ros2_messages(str(sim_day.paths[0]), topics=["/goal"]):
        t = m.ros_msg.header.stamp.sec * 1_000_000_000 + m.ros_msg.header.stamp.nanosec
        goals[t] = (m.ros_msg.point.x, m.ros_msg.point.y)
    first = standardized.episodes.to_pylist()[0]
    frames = _frames_of(standardized, first["episode_id"])
    goal = frames["observation.environment_state"].to_pylist()[0]
    in_episode = {v for t, v in goals.items() if first["start_ns"] <= t <= first["end_ns"]}
    assert len(in_episode) == 1
    np.testing.assert_allclose(goal, next(iter(in_episode)), rtol=1e-6)
    commands = {}
    for m in read_ros2_messages(str(sim_day.paths[0]), topics=["/joint_commands"]):
        t = m.ros_msg.header.stamp.sec * 1_000_000_000 + m.ros_msg.header.stamp.nanosec
        commands[t] = list(m.ros_msg.position)
    for t, action in zip(frames["timestamp_ns"].to_pylist(), frames["action"].to_pylist(), strict=True):
        np.testing.assert_allclose(action, commands[t], rtol=1e-6)  # frames sit on command stamps


def test_standardize_is_deterministic(standardized: Standardized, sim_day: SimDay, emb):
    again = standardize(source_files(sim_day.lake, sim_day.day.keys), emb, robot=ROBOT, day=DAY)
    assert again.frames.equals(standardized.frames)
    assert again.episodes.equals(standardized.episodes)


def test_standardize_with_no_files_gives_empty_tables(emb):
    out = standardize([], emb, robot=ROBOT, day=DAY)
    assert out.frames.num_rows == 0 and out.episodes.num_rows == 0
    assert out.frames.schema.field("action").type == pa.list_(pa.float32(), 2)


def test_burst_drops_are_flagged(tmp_path, emb):
    lake = LocalLake(tmp_path)
    profile = replace(sample_profile("r102", seed=0, index=0), burst_drop_rate=3.0)
    day = simulate_robot_day(lake, profile, DAY, episodes=4, seed=0)
    out = standardize(source_files(lake, day.keys), emb, robot="r102", day=DAY)
    episodes = out.episodes.to_pylist()
    flagged = [e for e in episodes if {"gap", "sync_skew"} & set(e["quality_issues"])]
    assert flagged, [e["quality_issues"] for e in episodes]
    for e in flagged:
        assert not e["quality_ok"]
        assert e["max_gap_ms"] >= 100 or e["max_skew_ms"] > 20  # outages last 100-250 ms
    for e in episodes:
        ts = _frames_of(out, e["episode_id"])["timestamp_ns"].to_numpy()
        assert set(np.diff(ts).tolist()) == {50_000_000}


def test_reused_episode_ids_are_kept_and_made_unique():
    """A robot whose counter restarted after a reboot logs the same id twice: both survive."""
    events = [
        Event(1, {"event": "episode_start", "episode_id": "e-1"}),
        Event(2, {"event": "episode_end", "outcome": "success"}),
        Event(3, {"event": "episode_start", "episode_id": "e-1"}),
        Event(4, {"event": "episode_end", "outcome": "failure"}),
    ]
    spans = segment(events, default_task="t", id_prefix="p")
    assert [(s.episode_id, s.outcome) for s in spans] == [("e-1", "success"), ("e-1~2", "failure")]
    assert "duplicate_id" in spans[1].tags


def test_a_backwards_stamp_fails_only_the_episode_it_falls_in(sim_day: SimDay, emb):
    files = source_files(sim_day.lake, sim_day.day.keys)
    extracted = extract_streams(files, emb)
    spans = segment(extracted.events, default_task=emb.default_task, id_prefix="x")
    victim = spans[1]
    state = extracted.streams["/joint_states"]
    # One sample inside the second episode stepped back in time (a clock jump on the robot).
    state.backwards = np.array([victim.start_ns + (victim.end_ns - victim.start_ns) // 2])
    flagged = []
    for span in spans[:4]:
        _frames, quality = align_episode(span, extracted.streams, emb)
        if "non_monotonic" in quality["issues"]:
            flagged.append(span.episode_id)
    assert flagged == [victim.episode_id]
