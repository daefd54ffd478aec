"""Tests for the simulated fleet: robot physics, the scripted expert and the MCAP logs it writes."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import replace

import mujoco
import numpy as np
import pytest
from mcap_ros2.reader import read_ros2_messages

from flywheel_pipelines.lib.sim.expert import MAX_STEP_RAD, expert_action
from flywheel_pipelines.lib.sim.fleet import (
    EPISODES_PER_FILE,
    day_range,
    robot_ids,
    simulate_fleet,
    simulate_robot_day,
)
from flywheel_pipelines.lib.sim.robot import (
    JOINT_NAMES,
    LINK_LENGTHS,
    MAX_EPISODE_STEPS,
    SUCCESS_HOLD_STEPS,
    SUCCESS_RADIUS_M,
    ArmSim,
    forward_kinematics,
    jacobian,
    sample_profile,
    sample_task,
)
from flywheel_pipelines.lib.storage import LakeError, LocalLake
from flywheel_pipelines_tests.lib.conftest import DAY, EPISODES, ROBOT, SimDay

_NS = 1_000_000_000

# --- profiles --------------------------------------------------------------------------------


def test_profile_is_deterministic_per_seed_and_robot():
    assert sample_profile("r101", seed=7, index=3) == sample_profile("r101", seed=7, index=3)
    a, b = sample_profile("r101", seed=7), sample_profile("r102", seed=7)
    assert a.robot_id == "r101" and b.robot_id == "r102"
    assert a.gain_scale != b.gain_scale
    assert a.calibration_offset != b.calibration_offset
    assert sample_profile("r101", seed=8).gain_scale != a.gain_scale


def test_profile_values_lie_in_their_documented_ranges():
    for robot in robot_ids(20):
        p = sample_profile(robot, seed=0, faults=False)
        assert 0.8 <= p.gain_scale <= 1.25
        assert 0.0 <= p.latency_s <= 0.04
        assert all(0.03 <= d <= 0.12 for d in p.damping)
        assert 0.0 <= p.drop_rate <= 0.02
        assert p.burst_drop_rate == 0.0 and p.faults == ()


@pytest.mark.parametrize(
    ("index", "faults"),
    [
        (0, ()),
        (1, ("flaky_network",)),
        (2, ("miscalibrated_elbow",)),
        (3, ()),
        (5, ("flaky_network",)),
        (7, ("miscalibrated_elbow",)),
        (17, ("miscalibrated_elbow", "flaky_network")),
    ],
)
def test_faulty_robots_carry_their_faults(index, faults):
    p = sample_profile("r200", seed=0, index=index)
    assert p.faults == faults
    assert (p.calibration_offset[1] == 0.15) == ("miscalibrated_elbow" in faults)
    assert p.burst_drop_rate == (0.15 if "flaky_network" in faults else 0.0)


def test_faults_can_be_switched_off():
    p = sample_profile("r200", seed=0, index=17, faults=False)
    assert p.faults == () and p.burst_drop_rate == 0.0 and p.calibration_offset[1] != 0.15


def test_profile_to_dict_is_json_ready():
    d = sample_profile("r101", seed=0, index=2).to_dict()
    assert d["robot_id"] == "r101" and d["faults"] == ["miscalibrated_elbow"]
    assert isinstance(d["calibration_offset"], list)
    json.dumps(d)


# --- kinematics ------------------------------------------------------------------------------

_QS = [np.array(q) for q in [(0.0, 0.0), (0.3, 1.2), (-1.1, 2.0), (2.5, -0.7), (np.pi / 2, np.pi / 2)]]


def test_forward_kinematics_known_poses():
    l1, l2 = LINK_LENGTHS
    np.testing.assert_allclose(forward_kinematics(np.array([0.0, 0.0])), [l1 + l2, 0.0], atol=1e-15)
    np.testing.assert_allclose(forward_kinematics(np.array([np.pi / 2, 0.0])), [0.0, l1 + l2], atol=1e-15)
    np.testing.assert_allclose(forward_kinematics(np.array([0.0, np.pi / 2])), [l1, l2], atol=1e-15)
    batch = forward_kinematics(np.stack(_QS))
    assert batch.shape == (len(_QS), 2)
    np.testing.assert_allclose(batch, [forward_kinematics(q) for q in _QS])


@pytest.mark.parametrize("q", _QS, ids=lambda q: f"q={q[0]:.2f},{q[1]:.2f}")
def test_jacobian_matches_finite_differences(q):
    eps = 1e-6
    numeric = np.stack(
        [(forward_kinematics(q + eps * e) - forward_kinematics(q - eps * e)) / (2 * eps) for e in np.eye(2)], axis=1
    )
    np.testing.assert_allclose(jacobian(q), numeric, atol=1e-8)


@pytest.mark.parametrize("q", _QS, ids=lambda q: f"q={q[0]:.2f},{q[1]:.2f}")
def test_forward_kinematics_matches_mujoco_fingertip_site(q):
    sim = ArmSim(sample_profile("r101", seed=0, faults=False), seed=0)
    sim.reset(q, np.array([0.2, 0.1]))
    site = mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_SITE, "fingertip")
    np.testing.assert_allclose(sim.data.site_xpos[site, :2], forward_kinematics(q), atol=1e-12)
    assert sim.fingertip_error() == pytest.approx(np.linalg.norm(forward_kinematics(q) - [0.2, 0.1]), abs=1e-12)


def test_sample_task_goal_is_reachable_and_away_from_start():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q0, goal = sample_task(rng)
        assert np.linalg.norm(goal - forward_kinematics(q0)) >= 0.08
        assert 0.14 <= np.linalg.norm(goal) <= 0.33 < sum(LINK_LENGTHS)


# --- expert ----------------------------------------------------------------------------------


def test_expert_step_is_bounded_and_moves_toward_goal():
    q = np.array([0.3, 1.2])
    goal = forward_kinematics(q) + np.array([0.05, -0.04])
    obs = np.concatenate([q, [0.0, 0.0], goal]).astype(np.float32)
    action = expert_action(obs)
    assert action.dtype == np.float32
    assert np.max(np.abs(action - q)) <= MAX_STEP_RAD + 1e-6
    assert np.linalg.norm(forward_kinematics(action) - goal) < np.linalg.norm(forward_kinematics(q) - goal)


def _expert_episode(profile, seed: int) -> bool:
    rng = np.random.default_rng(seed)
    sim = ArmSim(profile, seed=seed)
    sim.reset(*sample_task(rng))
    held = 0
    for _ in range(MAX_EPISODE_STEPS):
        sim.advance(expert_action(sim.observation()))
        held = held + 1 if sim.fingertip_error() < SUCCESS_RADIUS_M else 0
        if held >= SUCCESS_HOLD_STEPS:
            return True
    return False


def test_scripted_expert_reaches_the_goal_for_most_seeds():
    wins = [_expert_episode(sample_profile(f"r{100 + s}", seed=0, faults=False), s) for s in range(10)]
    assert sum(wins) >= 8, wins


def test_miscalibrated_elbow_makes_the_expert_miss_more_often():
    clean = sample_profile("r300", seed=0, index=0)
    bad = replace(clean, calibration_offset=(clean.calibration_offset[0], 0.15), faults=("miscalibrated_elbow",))
    clean_wins = sum(_expert_episode(clean, s) for s in range(10))
    bad_wins = sum(_expert_episode(bad, s) for s in range(10))
    assert bad_wins < clean_wins


# --- fleet logs ------------------------------------------------------------------------------


def _read(path, topic=None):
    return list(read_ros2_messages(str(path), topics=[topic] if topic else None))


def _header_ns(msg) -> int:
    return msg.ros_msg.header.stamp.sec * _NS + msg.ros_msg.header.stamp.nanosec


def test_fleet_writes_mcap_under_raw_robot_date(sim_day: SimDay):
    day = sim_day.day
    assert (day.robot, day.day, day.episodes) == (ROBOT, DAY, EPISODES)
    # 6 episodes -> one session of 5 and one of 1.
    assert len(day.keys) == -(-EPISODES // EPISODES_PER_FILE) == 2
    for key in day.keys:
        assert key.startswith(f"raw/robot={ROBOT}/date={DAY}/session-") and key.endswith(".mcap")
        assert sim_day.lake.read_bytes(key)[:8] == b"\x89MCAP0\r\n"
    assert [o.key for o in sim_day.lake.list("raw/")] == sorted(day.keys)
    assert day.messages == sum(len(_read(p)) for p in sim_day.paths)


def test_logs_have_the_documented_topics_and_types(sim_day: SimDay):
    types = {}
    for path in sim_day.paths:
        for m in _read(path):
            types.setdefault(m.channel.topic, set()).add(m.schema.name)
    assert types == {
        "/joint_states": {"sensor_msgs/msg/JointState"},
        "/joint_commands": {"sensor_msgs/msg/JointState"},
        "/goal": {"geometry_msgs/msg/PointStamped"},
        "/events": {"std_msgs/msg/String"},
    }


def _episodes_from_events(paths) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in paths:
        current = None
        for m in _read(path, "/events"):
            ev = json.loads(m.ros_msg.data)
            if ev["event"] == "episode_start":
                current = ev["episode_id"]
                out[current] = {"start": m.publish_time_ns, "task": ev["task"], "operator": ev["operator"]}
            elif ev["event"] == "episode_end":
                assert ev["episode_id"] == current
                out[current].update(end=m.publish_time_ns, outcome=ev["outcome"])
    return out


def test_events_delimit_every_episode(sim_day: SimDay):
    episodes = _episodes_from_events(sim_day.paths)
    # <robot>-<YYYYMMDD>-<HHMMSS start>-<index>: unique even when a day is simulated twice.
    assert len(set(list(episodes))) == EPISODES
    assert [re.fullmatch(rf"{ROBOT}-20260302-\d{{6}}-{k:03d}", e) is not None
            for k, e in enumerate(list(episodes))] == [True] * EPISODES
    for ep in episodes.values():
        assert ep["outcome"] in ("success", "failure")
        assert ep["task"] == "reach_target" and ep["operator"] in ("alice", "bao", "carmen")
        assert ep["end"] > ep["start"]
        assert ep["end"] - ep["start"] <= (MAX_EPISODE_STEPS + 1) * _NS // 20


def test_topic_rates(sim_day: SimDay):
    path = sim_day.paths[0]
    episodes = _episodes_from_events([path])
    first = next(iter(episodes.values()))
    span_s = (first["end"] - first["start"]) / _NS

    def count(topic):
        return sum(first["start"] <= _header_ns(m) <= first["end"] for m in _read(path, topic))

    # 250 Hz joint states, minus the robot's 0-2% random drops.
    assert 0.95 * 250 * span_s <= count("/joint_states") <= 250 * span_s + 2
    commands = [_header_ns(m) for m in _read(path, "/joint_commands") if first["start"] <= _header_ns(m) <= first["end"]]
    assert set(np.diff(commands)) == {50_000_000}  # exactly 20 Hz on the robot clock
    goals = [_header_ns(m) for m in _read(path, "/goal") if first["start"] <= _header_ns(m) <= first["end"]]
    assert len(goals) >= 2 and set(np.diff(goals)) == {500_000_000}  # every 10th control step: 2 Hz


def test_joint_states_name_joints_and_carry_positions_and_velocities(sim_day: SimDay):
    states = _read(sim_day.paths[0], "/joint_states")[:20]
    for m in states:
        assert list(m.ros_msg.name) == list(JOINT_NAMES)
        assert len(m.ros_msg.position) == 2 and len(m.ros_msg.velocity) == 2
        assert m.ros_msg.header.frame_id == "base"
    commands = _read(sim_day.paths[0], "/joint_commands")[:5]
    assert all(len(m.ros_msg.position) == 2 and len(m.ros_msg.velocity) == 0 for m in commands)


def test_header_stamps_differ_from_log_times_and_log_times_are_monotonic(sim_day: SimDay):
    for path in sim_day.paths:
        last_log: dict[str, int] = defaultdict(int)
        for m in _read(path):
            topic = m.channel.topic
            assert m.log_time_ns > last_log[topic], topic
            last_log[topic] = m.log_time_ns
            stamp = _header_ns(m) if topic != "/events" else m.publish_time_ns
            assert stamp == m.publish_time_ns
            # Transport latency: at least 0.5 ms, and nothing arrives before it was stamped.
            assert m.log_time_ns - stamp >= 500_000, topic


def test_log_times_and_sequences_per_topic(sim_day: SimDay):
    seqs: dict[str, list[int]] = defaultdict(list)
    for m in _read(sim_day.paths[0]):
        seqs[m.channel.topic].append(m.sequence_count)
    # Non-droppable topics have gap-free sequences; joint states skip the dropped ones.
    for topic in ("/joint_commands", "/goal", "/events"):
        assert seqs[topic] == list(range(len(seqs[topic]))), topic
    js = seqs["/joint_states"]
    assert js == sorted(js) and len(set(js)) == len(js)


def test_same_seed_gives_byte_identical_files(tmp_path, sim_day: SimDay):
    lake = LocalLake(tmp_path)
    (again,) = simulate_fleet(lake, robots=1, days=[DAY], episodes_per_day=EPISODES, seed=0)
    assert again == sim_day.day
    for key in again.keys:
        assert lake.read_bytes(key) == sim_day.lake.read_bytes(key)


def test_different_seed_gives_different_logs(tmp_path, sim_day: SimDay):
    lake = LocalLake(tmp_path)
    (other,) = simulate_fleet(lake, robots=1, days=[DAY], episodes_per_day=EPISODES, seed=1)
    assert [lake.read_bytes(k) for k in other.keys] != [sim_day.lake.read_bytes(k) for k in sim_day.day.keys]


def test_resimulating_the_same_day_is_a_no_op(tmp_path):
    lake = LocalLake(tmp_path)
    profile = sample_profile(ROBOT, seed=0, index=0)
    first = simulate_robot_day(lake, profile, DAY, episodes=3, seed=0)
    before = lake.list("raw/")
    second = simulate_robot_day(lake, profile, DAY, episodes=3, seed=0)
    assert second == first
    assert lake.list("raw/") == before  # same keys, sizes and mtimes: nothing was rewritten


# Seed 634 gives r101 on DAY the same session start second (hence the same file name) as seed 0,
# with different content: the lake must refuse to overwrite the raw log.
_COLLIDING_SEED = 634


def test_different_seed_for_an_existing_key_raises(tmp_path):
    profile = sample_profile(ROBOT, seed=0, index=0)
    probe = simulate_robot_day(LocalLake(tmp_path / "probe"), profile, DAY, episodes=1, seed=_COLLIDING_SEED)
    lake = LocalLake(tmp_path / "lake")
    first = simulate_robot_day(lake, profile, DAY, episodes=1, seed=0)
    assert probe.keys == first.keys  # precondition: the two seeds name their session alike
    original = lake.read_bytes(first.keys[0])
    with pytest.raises(LakeError, match="already exists with different content"):
        simulate_robot_day(lake, profile, DAY, episodes=1, seed=_COLLIDING_SEED)
    assert lake.read_bytes(first.keys[0]) == original


def test_changed_robot_for_same_seed_and_key_raises(tmp_path):
    lake = LocalLake(tmp_path)
    profile = sample_profile(ROBOT, seed=0, index=0)
    first = simulate_robot_day(lake, profile, DAY, episodes=1, seed=0)
    with pytest.raises(LakeError, match=re.escape(first.keys[0])):
        simulate_robot_day(lake, replace(profile, gain_scale=0.9), DAY, episodes=1, seed=0)


def test_simulate_fleet_covers_every_robot_day_and_reports_progress(tmp_path):
    seen = []
    out = simulate_fleet(LocalLake(tmp_path), robots=2, days=["2026-03-02"], episodes_per_day=1, seed=3,
                         progress=seen.append)
    assert [(d.robot, d.day, d.episodes) for d in out] == [("r101", "2026-03-02", 1), ("r102", "2026-03-02", 1)]
    assert seen == out
    counts = Counter(k.split("/")[1] for d in out for k in d.keys)
    assert counts == {"robot=r101": 1, "robot=r102": 1}


def test_simulate_robot_day_rejects_bad_identifiers(tmp_path):
    from flywheel_pipelines.lib.ids import InvalidIdentifier

    profile = sample_profile(ROBOT, seed=0)
    with pytest.raises(InvalidIdentifier):
        simulate_robot_day(LocalLake(tmp_path), replace(profile, robot_id="../r1"), DAY, episodes=1, seed=0)
    with pytest.raises(InvalidIdentifier):
        simulate_robot_day(LocalLake(tmp_path), profile, "2026-3-2", episodes=1, seed=0)
    assert not (tmp_path / "raw").exists()


def test_fleet_helpers():
    assert robot_ids(3) == ["r101", "r102", "r103"]
    assert day_range("2026-02-27", 3) == ["2026-02-27", "2026-02-28", "2026-03-01"]
    assert day_range("2028-02-28", 2) == ["2028-02-28", "2028-02-29"]
