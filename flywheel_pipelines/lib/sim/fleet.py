"""Simulate a fleet: each robot-day becomes real ROS2 MCAP logs under raw/robot=<id>/date=<day>/.

Topics (what a ROS2 reaching arm would record):
  /joint_states    sensor_msgs/msg/JointState      250 Hz, measured (offset, noisy, some dropped)
  /joint_commands  sensor_msgs/msg/JointState       20 Hz, commanded joint positions (the action)
  /goal            geometry_msgs/msg/PointStamped    2 Hz, the target the operator set
  /events          std_msgs/msg/String             JSON: episode_start / episode_end (outcome) /
                                                   intervention_start / intervention_end / tag
Header stamps are the robot's clock at measurement; log times add a transport latency.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mcap_ros2.writer import Writer

from flywheel_pipelines.lib import ids
from flywheel_pipelines.lib.sim.expert import NoisyOperator
from flywheel_pipelines.lib.sim.msgdefs import MSGDEFS, stamp
from flywheel_pipelines.lib.sim.robot import (
    JOINT_NAMES,
    MAX_EPISODE_STEPS,
    SUCCESS_HOLD_STEPS,
    SUCCESS_RADIUS_M,
    TASK,
    ArmSim,
    JointSample,
    RobotProfile,
    sample_profile,
    sample_task,
    seeded_rng,
)
from flywheel_pipelines.lib.storage import Lake

EPISODES_PER_FILE = 5
OPERATORS = ("alice", "bao", "carmen")
_NS = 1_000_000_000


@dataclass(frozen=True)
class Record:
    topic: str
    datatype: str
    message: dict
    log_time: int
    publish_time: int
    sequence: int


class _Recorder:
    """Collects one session's messages with transport latency and drops applied."""

    def __init__(self, profile: RobotProfile, rng: np.random.Generator):
        self.profile, self.rng = profile, rng
        self.records: list[Record] = []
        self.seq: dict[str, int] = {}
        self.outage_until_ns = 0
        self.last_log: dict[str, int] = {}

    def publish(self, topic: str, datatype: str, message: dict, stamp_ns: int, *, droppable: bool = False) -> None:
        seq = self.seq.get(topic, 0)
        self.seq[topic] = seq + 1
        if droppable:
            if stamp_ns < self.outage_until_ns or self.rng.random() < self.profile.drop_rate:
                return
            # A burst outage starts with probability burst_drop_rate per second of messages.
            if self.rng.random() < self.profile.burst_drop_rate / 250.0:
                self.outage_until_ns = stamp_ns + int(self.rng.uniform(0.10, 0.25) * _NS)
                return
        latency = int((0.0005 + self.rng.exponential(0.0015)) * _NS)
        # One publisher's messages arrive in order (DDS keeps per-writer order), jitter or not.
        log_time = max(stamp_ns + latency, self.last_log.get(topic, 0) + 1_000)
        self.last_log[topic] = log_time
        self.records.append(Record(topic, datatype, message, log_time, stamp_ns, seq))

    def event(self, stamp_ns: int, **payload) -> None:
        self.publish("/events", "std_msgs/msg/String", {"data": json.dumps(payload, sort_keys=True)}, stamp_ns)


def _joint_state(ns: int, position, velocity, frame: str) -> dict:
    return {
        "header": {"stamp": stamp(ns), "frame_id": frame},
        "name": list(JOINT_NAMES),
        "position": [float(x) for x in position],
        "velocity": [float(x) for x in velocity],
        "effort": [],
    }


def record_episode(
    rec: _Recorder, sim: ArmSim, rng: np.random.Generator, *, t0_ns: int, episode_id: str, operator: str
) -> tuple[int, str]:
    """Run one demonstration and record it. Returns (end time ns, outcome)."""
    q0, goal = sample_task(rng)
    sim.reset(q0, goal)
    pilot = NoisyOperator(rng)
    # A lapse (the operator aims at the wrong place for a while) either gets corrected by an
    # intervention or ends as a failed episode.
    roll = rng.random()
    lapse_steps = int(rng.integers(8, 20)) if roll < 0.2 else 0
    intervene = lapse_steps > 0 and roll < 0.12
    lapse_goal = goal + rng.normal(0.0, 0.07, 2)

    def t_ns() -> int:
        return t0_ns + int(round(sim.t * _NS))

    def on_sample(s: JointSample) -> None:
        rec.publish("/joint_states", "sensor_msgs/msg/JointState",
                    _joint_state(t0_ns + int(round(s.t * _NS)), s.position, s.velocity, "base"),
                    t0_ns + int(round(s.t * _NS)), droppable=True)

    on_sample(sim.last_sample)  # joint states stream continuously: one is out at the start
    rec.event(t_ns(), event="episode_start", episode_id=episode_id, task=TASK, operator=operator)
    if rng.random() < 0.1:
        rec.event(t_ns(), event="tag", tag=str(rng.choice(["lighting:glare", "table:cluttered", "shift:night"])))
    held, outcome, in_intervention = 0, "failure", False
    for step in range(MAX_EPISODE_STEPS):
        if step % 10 == 0:
            point = {"x": float(goal[0]), "y": float(goal[1]), "z": 0.0}
            rec.publish("/goal", "geometry_msgs/msg/PointStamped",
                        {"header": {"stamp": stamp(t_ns()), "frame_id": "base"}, "point": point}, t_ns())
        obs = sim.observation()
        lapsing = step < lapse_steps and not (intervene and step >= lapse_steps // 2)
        if intervene and step == lapse_steps // 2:
            rec.event(t_ns(), event="intervention_start")
            in_intervention = True
        if in_intervention and step == lapse_steps + 5:
            rec.event(t_ns(), event="intervention_end")
            in_intervention = False
        if lapse_steps and not intervene and step >= lapse_steps:
            lapsing = True  # no one caught it: the lapse lasts the whole episode
        action = pilot.act(obs, goal=lapse_goal if lapsing else None)
        rec.publish("/joint_commands", "sensor_msgs/msg/JointState",
                    _joint_state(t_ns(), action, [], "base"), t_ns())
        sim.advance(action, on_sample)
        # The operator judges success by eye, i.e. on the true fingertip position.
        held = held + 1 if sim.fingertip_error() < SUCCESS_RADIUS_M else 0
        if held >= SUCCESS_HOLD_STEPS:
            outcome = "success"
            break
    if in_intervention:
        rec.event(t_ns(), event="intervention_end")
    rec.event(t_ns(), event="episode_end", episode_id=episode_id, outcome=outcome)
    return t_ns(), outcome


def _write_mcap(path: Path, records: list[Record], metadata: dict[str, str]) -> None:
    with open(path, "wb") as stream:
        writer = Writer(stream)
        schemas = {name: writer.register_msgdef(name, text) for name, text in MSGDEFS.items()}
        writer.add_metadata("recorder", metadata)
        for r in sorted(records, key=lambda r: (r.log_time, r.topic)):
            writer.write_message(r.topic, schemas[r.datatype], r.message, r.log_time, r.publish_time, r.sequence)
        writer.finish()


@dataclass(frozen=True)
class SimulatedDay:
    robot: str
    day: str
    keys: tuple[str, ...]
    episodes: int
    messages: int


def simulate_robot_day(
    lake: Lake, profile: RobotProfile, day: str, *, episodes: int, seed: int
) -> SimulatedDay:
    """Simulate one robot's day and upload its logs (one MCAP per session of 5 episodes)."""
    robot, day = ids.robot_id(profile.robot_id), ids.day(day)
    rng = seeded_rng("day", seed, robot, day)
    sim = ArmSim(profile, seed=int(rng.integers(2**31)))
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC) + dt.timedelta(hours=8)
    t_ns = int(start.timestamp()) * _NS + int(rng.integers(0, 3600)) * _NS
    keys, total = [], 0
    for first in range(0, episodes, EPISODES_PER_FILE):
        rec = _Recorder(profile, rng)
        session_start = t_ns
        for k in range(first, min(first + EPISODES_PER_FILE, episodes)):
            clock = dt.datetime.fromtimestamp(t_ns / _NS, dt.UTC).strftime("%H%M%S")
            episode_id = f"{robot}-{day.replace('-', '')}-{clock}-{k:03d}"
            end_ns, _ = record_episode(rec, sim, rng, t0_ns=t_ns, episode_id=episode_id,
                                       operator=str(rng.choice(OPERATORS)))
            t_ns = end_ns + int(rng.uniform(4.0, 15.0) * _NS)
        clock = dt.datetime.fromtimestamp(session_start / _NS, dt.UTC).strftime("%H%M%S")
        name = f"session-{clock}.mcap"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            _write_mcap(path, rec.records, {"robot_id": robot, "recorder": "flywheel-sim"})
            key = f"raw/robot={robot}/date={day}/{name}"
            lake.put_raw(key, path)
        keys.append(key)
        total += len(rec.records)
    return SimulatedDay(robot, day, tuple(keys), episodes, total)


def robot_ids(n: int) -> list[str]:
    return [f"r{101 + i}" for i in range(n)]


def simulate_fleet(
    lake: Lake,
    *,
    robots: int,
    days: list[str],
    episodes_per_day: int,
    seed: int = 0,
    progress: Callable[[SimulatedDay], None] | None = None,
) -> list[SimulatedDay]:
    """Simulate ``robots`` robots over ``days`` and upload their logs into the lake's raw/ prefix."""
    out = []
    for index, robot in enumerate(robot_ids(robots)):
        profile = sample_profile(robot, seed=seed, index=index)
        for day in days:
            result = simulate_robot_day(lake, profile, day, episodes=episodes_per_day, seed=seed)
            out.append(result)
            if progress:
                progress(result)
    return out


def day_range(start: str, count: int) -> list[str]:
    first = dt.date.fromisoformat(ids.day(start))
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]
