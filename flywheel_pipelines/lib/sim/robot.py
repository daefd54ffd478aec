"""The simulated robot: a MuJoCo planar arm whose physics and sensors differ robot to robot.

Only the simulator and the evaluator use this module. Nothing that processes logs may import it:
the pipeline sees the robots only through the ROS2 logs they write.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import mujoco

MJCF = "arm2.xml"
JOINT_NAMES = ("shoulder", "elbow")
LINK_LENGTHS = (0.2, 0.18)
CONTROL_HZ = 20
JOINT_STATE_HZ = 250
SUCCESS_RADIUS_M = 0.025
SUCCESS_HOLD_STEPS = 5  # 0.25 s inside the radius at 20 Hz
MAX_EPISODE_STEPS = 70  # 3.5 s
TASK = "reach_target"

_NOMINAL_KP = (6.0, 4.0)
_NOMINAL_KV = (0.45, 0.3)


@dataclass(frozen=True)
class RobotProfile:
    """Everything that makes one robot of the fleet differ from another."""

    robot_id: str
    calibration_offset: tuple[float, float] = (0.0, 0.0)  # rad, added to reported positions
    damping: tuple[float, float] = (0.05, 0.05)
    friction: tuple[float, float] = (0.0, 0.0)  # joint frictionloss, N m
    gain_scale: float = 1.0  # actuator stiffness relative to nominal
    latency_s: float = 0.0  # command -> actuator delay
    pos_noise: float = 0.001  # rad, std of reported positions
    vel_noise: float = 0.01  # rad/s, std of reported velocities
    drop_rate: float = 0.0  # fraction of /joint_states messages lost in transport
    burst_drop_rate: float = 0.0  # chance per second of a 100-250 ms transport outage
    mass_scale: float = 1.0  # link masses and inertias relative to the MJCF
    sensor_delay_s: float = 0.0  # the controller sees joint samples this old
    faults: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def seeded_rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_profile(robot_id: str, *, seed: int, index: int = 0, faults: bool = True) -> RobotProfile:
    """A deterministic per-robot profile; with ``faults`` some robots carry real-world faults.

    Every fifth robot (index 2, 7, ...) has a miscalibrated elbow encoder, and one in four has a
    flaky network that drops bursts of messages.
    """
    rng = seeded_rng("profile", seed, robot_id)
    profile = RobotProfile(
        robot_id=robot_id,
        calibration_offset=tuple(float(x) for x in rng.normal(0.0, 0.006, 2)),
        damping=tuple(float(x) for x in rng.uniform(0.03, 0.12, 2)),
        friction=tuple(float(x) for x in rng.uniform(0.0, 0.03, 2)),
        gain_scale=float(rng.uniform(0.8, 1.25)),
        latency_s=float(rng.uniform(0.0, 0.04)),
        pos_noise=float(rng.uniform(0.0005, 0.003)),
        vel_noise=float(rng.uniform(0.005, 0.03)),
        drop_rate=float(rng.uniform(0.0, 0.02)),
    )
    if faults:
        extra = []
        if index % 5 == 2:
            profile = replace(profile, calibration_offset=(profile.calibration_offset[0], 0.15))
            extra.append("miscalibrated_elbow")
        if index % 4 == 1:
            profile = replace(profile, burst_drop_rate=0.15)
            extra.append("flaky_network")
        profile = replace(profile, faults=tuple(extra))
    return profile


def forward_kinematics(q: np.ndarray) -> np.ndarray:
    """Fingertip (x, y) for joint angles ``q`` (..., 2)."""
    l1, l2 = LINK_LENGTHS
    q = np.asarray(q, dtype=np.float64)
    a, b = q[..., 0], q[..., 0] + q[..., 1]
    return np.stack([l1 * np.cos(a) + l2 * np.cos(b), l1 * np.sin(a) + l2 * np.sin(b)], axis=-1)


def jacobian(q: np.ndarray) -> np.ndarray:
    """d(fingertip)/dq, shape (2, 2)."""
    l1, l2 = LINK_LENGTHS
    a, b = q[0], q[0] + q[1]
    return np.array(
        [[-l1 * np.sin(a) - l2 * np.sin(b), -l2 * np.sin(b)], [l1 * np.cos(a) + l2 * np.cos(b), l2 * np.cos(b)]]
    )


def sample_task(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A start configuration and a reachable goal at least 8 cm from the start fingertip."""
    while True:
        q0 = np.array([rng.uniform(-1.4, 1.4), rng.uniform(0.4, 2.2)])
        radius, angle = rng.uniform(0.14, 0.33), rng.uniform(-1.4, 1.4)
        goal = np.array([radius * np.cos(angle), radius * np.sin(angle)])
        if np.linalg.norm(goal - forward_kinematics(q0)) >= 0.08:
            return q0, goal


@dataclass(frozen=True)
class JointSample:
    """One /joint_states measurement as the robot reports it (sensor frame, with noise)."""

    t: float  # robot clock, seconds since episode start
    position: np.ndarray
    velocity: np.ndarray


def apply_profile(model: mujoco.MjModel, profile: RobotProfile) -> None:
    """Set a robot's actuator gains, damping, friction and link masses on ``model`` in place.

    The model must be a fresh copy of the package's ``arm2.xml``: masses are scaled from the
    values in that file, not from whatever the model holds now.
    """
    import mujoco  # here, not at module level: evaluation suites and configs import this module cheaply
    for i in range(2):
        kp, kv = _NOMINAL_KP[i] * profile.gain_scale, _NOMINAL_KV[i] * np.sqrt(profile.gain_scale)
        model.actuator_gainprm[i, 0] = kp
        model.actuator_biasprm[i, 1:3] = (-kp, -kv)
        model.dof_damping[i] = profile.damping[i]
        model.dof_frictionloss[i] = profile.friction[i]
    if profile.mass_scale != 1.0:
        for name in ("upper_arm", "forearm"):
            body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
            model.body_mass[body] *= profile.mass_scale
            model.body_inertia[body] *= profile.mass_scale
        mujoco.mj_setConst(model, mujoco.MjData(model))


class ArmSim:
    """One robot's physics: MuJoCo stepping, actuator latency and noisy, offset sensors."""

    def __init__(self, profile: RobotProfile, *, seed: int):
        import mujoco

        xml = resources.files("flywheel_pipelines.lib.sim").joinpath("assets", MJCF).read_text()
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self.profile = profile
        self.rng = np.random.default_rng(seed)
        apply_profile(self.model, profile)
        m = self.model
        self.substeps = round(1.0 / (CONTROL_HZ * m.opt.timestep))
        self.sensor_every = round(1.0 / (JOINT_STATE_HZ * m.opt.timestep))
        self.goal = np.zeros(2)
        self.t = 0.0
        self._pending: deque[tuple[float, np.ndarray]] = deque()
        self._last = JointSample(0.0, np.zeros(2), np.zeros(2))
        self._step = 0
        # Samples the controller has not seen yet because of the sensor delay.
        self._delayed: deque[JointSample] = deque()
        self._seen = self._last
        # Actuator torques of every substep of the last control period (for force-limit events).
        self._forces = np.zeros((self.substeps, m.nu))
        self._actuator_force = self.data.actuator_force  # a view: cheaper than the attribute per substep

    def reset(self, q0: np.ndarray, goal: np.ndarray) -> None:
        import mujoco

        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = q0
        self.data.ctrl[:] = q0
        self.data.mocap_pos[0, :2] = goal
        mujoco.mj_forward(self.model, self.data)
        self.goal = np.asarray(goal, dtype=np.float64)
        self.t, self._step = 0.0, 0
        self._pending.clear()
        self._last = self._measure()
        self._delayed.clear()
        self._seen = self._last
        self._forces[:] = 0.0

    def _measure(self) -> JointSample:
        p = self.profile
        pos = self.data.qpos[:2] + np.asarray(p.calibration_offset) + self.rng.normal(0, p.pos_noise, 2)
        vel = self.data.qvel[:2] + self.rng.normal(0, p.vel_noise, 2)
        return JointSample(self.t, pos.copy(), vel.copy())

    @property
    def last_sample(self) -> JointSample:
        return self._last

    def observation(self) -> np.ndarray:
        """What the controller sees now: [q(2), dq(2)] from the newest joint sample at least
        ``sensor_delay_s`` old (the latest one without a delay), and the goal."""
        s = self._seen
        return np.concatenate([s.position, s.velocity, self.goal]).astype(np.float32)

    def advance(self, target: np.ndarray, on_sample: Callable[[JointSample], None] | None = None) -> None:
        """Command joint targets (sensor frame) and simulate one control period."""
        import mujoco
        # The actuator tracks the true angle, the command was made in the (offset) sensor frame.
        true_target = np.asarray(target, dtype=np.float64) - np.asarray(self.profile.calibration_offset)
        self._pending.append((self.t + self.profile.latency_s, true_target))
        dt = self.model.opt.timestep
        for i in range(self.substeps):
            while self._pending and self._pending[0][0] <= self.t + 1e-9:
                self.data.ctrl[:] = self._pending.popleft()[1]
            mujoco.mj_step(self.model, self.data)
            self._forces[i] = self._actuator_force
            self._step += 1
            self.t = self._step * dt
            if self._step % self.sensor_every == 0:
                self._last = self._measure()
                self._delayed.append(self._last)
                if on_sample is not None:
                    on_sample(self._last)
        while self._delayed and self._delayed[0].t <= self.t - self.profile.sensor_delay_s + 1e-9:
            self._seen = self._delayed.popleft()

    def fingertip_error(self) -> float:
        """True distance from fingertip to goal (ground truth: evaluation only)."""
        # From qpos, not data.site_xpos: after mj_step the kinematics are those of the state
        # before the last substep, 2 ms stale.
        return float(np.linalg.norm(forward_kinematics(self.data.qpos[:2]) - self.goal))

    def peak_actuator_force(self) -> float:
        """Largest |actuator torque| on any joint over the substeps of the last control period."""
        return float(np.max(np.abs(self._forces)))

    def joint_limit_margin(self) -> float:
        lo, hi = self.model.jnt_range[:, 0], self.model.jnt_range[:, 1]
        q = self.data.qpos[:2]
        return float(np.min(np.minimum(q - lo, hi - q)))
