"""What one evaluation or training episode is, independent of how it is simulated.

A :class:`Scenario` fixes everything that decides an episode's outcome apart from the policy:
the robot's physics and sensors (a :class:`RobotProfile`), the start configuration, the goal,
the noise seed and the step budget. The single-environment simulator (``ArmSim``, used by the
fleet simulator and the gymnasium environment) and the batched evaluator
(``lib/sim/batched.py``) both take scenarios and share :func:`apply_profile`, :func:`step_reward`
and the safety thresholds below, so a scenario means the same thing in training, evaluation and
the benchmarks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from flywheel_pipelines.lib.sim.robot import MAX_EPISODE_STEPS, SUCCESS_RADIUS_M, RobotProfile, apply_profile

__all__ = ["Scenario", "apply_profile", "step_reward", "is_inside", "JOINT_LIMIT_MARGIN_RAD", "FORCE_LIMIT_NM"]

# Safety events, counted once per control step in which they occur.
JOINT_LIMIT_MARGIN_RAD = 0.02  # closer than this to a joint limit is a joint-limit hit
FORCE_LIMIT_NM = 2.5  # |actuator torque| above this on any joint is an excessive-force event


@dataclass(frozen=True)
class Scenario:
    """One seeded episode: physics + sensors, start, goal, noise seed, step budget."""

    scenario_id: str  # stable and unique within a suite, e.g. "nominal/0007", "golden/<episode_id>"
    group: str  # "nominal" | "randomized" | "golden" (what the report groups by)
    profile: RobotProfile
    q0: tuple[float, float]
    goal: tuple[float, float]
    seed: int  # sensor noise
    max_steps: int = MAX_EPISODE_STEPS
    source: dict = field(default_factory=dict)  # provenance: e.g. episode id, robot, day, raw files

    def to_dict(self) -> dict:
        d = asdict(self)
        d["profile"] = self.profile.to_dict()
        d["q0"], d["goal"] = list(self.q0), list(self.goal)
        return d


def step_reward(error_m: float | np.ndarray, inside: bool | np.ndarray) -> float | np.ndarray:
    """The per-control-step reward (training and the reported return use the same one):
    minus the fingertip distance in decimetres, plus 1 for each step inside the success radius."""
    return -10.0 * np.asarray(error_m) + np.asarray(inside, dtype=np.float64)


def is_inside(error_m: float | np.ndarray) -> bool | np.ndarray:
    return np.asarray(error_m) < SUCCESS_RADIUS_M


@dataclass(frozen=True)
class EpisodeResult:
    """The outcome of one policy on one scenario (one row of an evaluation's episodes table)."""

    policy: str  # the name the evaluation gives the policy: "candidate", "production", "scripted_expert", ...
    scenario_id: str
    group: str
    seed: int
    success: bool  # fingertip within SUCCESS_RADIUS_M for SUCCESS_HOLD_STEPS consecutive control steps
    steps: int  # control steps taken (the episode ends at success or at the scenario's max_steps)
    time_to_goal_s: float | None  # start of the successful hold, None unless success
    return_: float  # sum of step_reward over the steps taken
    final_error_m: float
    min_error_m: float
    jerk_rms: float  # RMS third derivative of the true joint angles over the control steps, rad/s^3
    joint_limit_hits: int  # control steps ending closer than JOINT_LIMIT_MARGIN_RAD to a limit
    force_events: int  # control steps with |actuator torque| > FORCE_LIMIT_NM on any joint
    gain_scale: float
    latency_ms: float
    mass_scale: float

    def to_dict(self) -> dict:
        return asdict(self)
