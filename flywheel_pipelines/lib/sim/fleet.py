"""Simulate a fleet: each robot-day becomes real ROS2 MCAP logs under raw/robot=<id>/date=<day>/.

Topics (what a ROS2 reaching arm would record):
  /joint_states    sensor_msgs/msg/JointState      250 Hz, measured (offset, noisy, some dropped)
  /joint_commands  sensor_msgs/msg/JointState       20 Hz, commanded joint positions (the action)
  /goal            geometry_msgs/msg/PointStamped    2 Hz, the target the operator set
  /events          std_msgs/msg/String             JSON: episode_start / episode_end (outcome) /
                                                   intervention_start / intervention_end / tag
Header stamps are the robot's clock at measurement; log times add a transport latency.

An on-call drill can inject an :class:`EncoderFault` on chosen robot-days (``simulate_fleet``'s
``encoder_faults``) and switch off the built-in random faults (``builtin_faults=False``).
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from mcap_ros2.writer import Writer

from flywheel_pipelines.lib import ids, layout
from flywheel_pipelines.lib.sim.expert import NoisyOperator
from flywheel_pipelines.lib.sim.field import RobotRelease, mcap_metadata, record_autonomous_episode
from flywheel_pipelines.lib.sim.msgdefs import MSGDEFS, goal_point, stamp
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


# The drill's default fault. It has to stand out from everything legitimate in the data: the
# fleet's encoder calibration spread is N(0, 6 mrad), operator jitter 15 mrad, position noise at
# most 3 mrad, and the expert never commands more than MAX_STEP_RAD = 0.2 rad away from the
# measured position in one period; the built-in miscalibrated elbow is 0.15 rad. 0.3 rad is 50x
# the calibration spread and beyond any commanded step, and on the elbow it moves the fingertip by
# 0.18 m x 0.3 = 5.4 cm, twice the 2.5 cm success radius: a policy that learns it misses every reach.
DRILL_OFFSET_RAD = 0.3


@dataclass(frozen=True)
class EncoderFault:
    """A constant offset on one joint's encoder on chosen days (e.g. a bad re-zeroing after service).

    By default only the *logged* position is wrong (``affects_control=False``): the joint servo and
    the operator use the arm as it really is, so the demonstrations succeed and reach the curated
    dataset with observations that disagree with their actions by ``offset_rad``. That is the
    fault that poisons training data. With ``affects_control=True`` the offset joins the robot's
    calibration offset (sensor frame, as ``RobotProfile.calibration_offset``): the expert then
    misses by the offset and those episodes fail honestly (curation leaves them out by default).
    """

    days: tuple[str, ...]
    joint: str = "elbow"
    offset_rad: float = DRILL_OFFSET_RAD
    affects_control: bool = False

    def __post_init__(self):
        if self.joint not in JOINT_NAMES:
            raise ValueError(f"encoder fault on unknown joint {self.joint!r}; joints are {JOINT_NAMES}")
        object.__setattr__(self, "days", tuple(ids.day(d) for d in self.days))

    def offset_on(self, day: str) -> np.ndarray | None:
        """The per-joint position offset on ``day``, or None when the encoder is healthy that day."""
        if ids.day(day) not in self.days:
            return None
        offset = np.zeros(len(JOINT_NAMES))
        offset[JOINT_NAMES.index(self.joint)] = self.offset_rad
        return offset

    def to_dict(self) -> dict:
        return {"days": list(self.days), "joint": self.joint, "offset_rad": self.offset_rad,
                "affects_control": self.affects_control}


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
    rec: _Recorder, sim: ArmSim, rng: np.random.Generator, *, t0_ns: int, episode_id: str, operator: str,
    logged_position_offset: np.ndarray | None = None,
) -> tuple[int, str]:
    """Run one demonstration and record it. Returns (end time ns, outcome).

    ``logged_position_offset`` is added to the published /joint_states positions only (a logging-side
    encoder fault): the simulation and the operator do not see it.
    """
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
        position = s.position if logged_position_offset is None else s.position + logged_position_offset
        rec.publish("/joint_states", "sensor_msgs/msg/JointState",
                    _joint_state(t0_ns + int(round(s.t * _NS)), position, s.velocity, "base"),
                    t0_ns + int(round(s.t * _NS)), droppable=True)

    on_sample(sim.last_sample)  # joint states stream continuously: one is out at the start
    rec.event(t_ns(), event="episode_start", episode_id=episode_id, task=TASK, operator=operator)
    if rng.random() < 0.1:
        rec.event(t_ns(), event="tag", tag=str(rng.choice(["lighting:glare", "table:cluttered", "shift:night"])))
    held, outcome, in_intervention = 0, "failure", False
    for step in range(MAX_EPISODE_STEPS):
        if step % 10 == 0:
            rec.publish("/goal", "geometry_msgs/msg/PointStamped", goal_point(t_ns(), goal), t_ns())
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


def _write_mcap(path: Path, records: list[Record], metadata: dict[str, str],
                extra_metadata: Mapping[str, dict[str, str]] | None = None) -> None:
    with open(path, "wb") as stream:
        writer = Writer(stream)
        schemas = {name: writer.register_msgdef(name, text) for name, text in MSGDEFS.items()}
        writer.add_metadata("recorder", metadata)
        for name, record in (extra_metadata or {}).items():
            writer.add_metadata(name, record)
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
    lake: Lake, profile: RobotProfile, day: str, *, episodes: int, seed: int,
    encoder_fault: EncoderFault | None = None, release: RobotRelease | None = None,
) -> SimulatedDay:
    """Simulate one robot's day and upload its logs (one MCAP per session of 5 episodes).

    With ``release`` the robot runs that release's policy and the operator only takes over when it
    strays (lib/sim/field.py); without, the operator teleoperates every episode.

    ``encoder_fault`` applies only if ``day`` is one of its days; the random streams are the same
    with or without it, so a faulty day differs from its healthy twin by the fault alone.
    """
    robot, day = ids.robot_id(profile.robot_id), ids.day(day)
    offset = encoder_fault.offset_on(day) if encoder_fault is not None else None
    logged_offset = None
    if offset is not None and encoder_fault.affects_control:
        profile = replace(profile, calibration_offset=tuple(float(x) for x in np.add(profile.calibration_offset, offset)))
    elif offset is not None:
        logged_offset = offset
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
            operator = str(rng.choice(OPERATORS))
            if release is not None:
                end_ns, _ = record_autonomous_episode(rec, sim, rng, t0_ns=t_ns, episode_id=episode_id,
                                                      operator=operator, release=release, joint_state=_joint_state)
            else:
                end_ns, _ = record_episode(rec, sim, rng, t0_ns=t_ns, episode_id=episode_id, operator=operator,
                                           logged_position_offset=logged_offset)
            t_ns = end_ns + int(rng.uniform(4.0, 15.0) * _NS)
        clock = dt.datetime.fromtimestamp(session_start / _NS, dt.UTC).strftime("%H%M%S")
        name = f"session-{clock}.mcap"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            _write_mcap(path, rec.records, {"robot_id": robot, "recorder": "flywheel-sim"}, mcap_metadata(release))
            key = layout.raw_key(robot, day, name)
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
    encoder_faults: Mapping[str, EncoderFault] | None = None,
    builtin_faults: bool = True,
    releases: Mapping[str, RobotRelease] | None = None,
) -> list[SimulatedDay]:
    """Simulate ``robots`` robots over ``days`` and upload their logs into the lake's raw/ prefix.

    Args:
        encoder_faults: robot id -> an :class:`EncoderFault` on some of its days (an on-call drill).
        builtin_faults: False gives every robot a healthy profile (no miscalibrated elbows, no
            flaky networks), so that only the injected faults are in the data.
    """
    fleet = robot_ids(robots)
    unknown = sorted(set(encoder_faults or {}) - set(fleet))
    if unknown:
        raise ValueError(f"encoder faults for robots not in the fleet: {unknown} (fleet: {fleet[0]}..{fleet[-1]})")
    out = []
    for index, robot in enumerate(fleet):
        profile = sample_profile(robot, seed=seed, index=index, faults=builtin_faults)
        fault = (encoder_faults or {}).get(robot)
        for day in days:
            result = simulate_robot_day(lake, profile, day, episodes=episodes_per_day, seed=seed, encoder_fault=fault,
                                        release=(releases or {}).get(robot))
            out.append(result)
            if progress:
                progress(result)
    return out


def day_range(start: str, count: int) -> list[str]:
    first = dt.date.fromisoformat(ids.day(start))
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]
