"""The scripted expert: damped-least-squares resolved-rate control toward the goal.

It works in the robot's own (sensor) frame, as a real controller would, so a robot whose encoder
is miscalibrated makes the expert miss: those demonstrations fail, honestly.
"""

from __future__ import annotations

import numpy as np

from flywheel_pipelines.lib.sim.robot import forward_kinematics, jacobian

MAX_STEP_RAD = 0.2  # per 50 ms control period: 4 rad/s
DLS_LAMBDA = 0.03


def expert_action(obs: np.ndarray, *, goal: np.ndarray | None = None) -> np.ndarray:
    """Joint-position targets for an observation [q(2), dq(2), goal(2)]."""
    q = np.asarray(obs[:2], dtype=np.float64)
    g = np.asarray(obs[4:6] if goal is None else goal, dtype=np.float64)
    err = g - forward_kinematics(q)
    jac = jacobian(q)
    dq = jac.T @ np.linalg.solve(jac @ jac.T + DLS_LAMBDA**2 * np.eye(2), err)
    norm = np.max(np.abs(dq))
    if norm > MAX_STEP_RAD:
        dq *= MAX_STEP_RAD / norm
    return (q + dq).astype(np.float32)


class NoisyOperator:
    """The expert as teleoperated: small jitter on every command and occasional lapses."""

    def __init__(self, rng: np.random.Generator, *, noise_rad: float = 0.015):
        self.rng = rng
        self.noise_rad = noise_rad

    def act(self, obs: np.ndarray, *, goal: np.ndarray | None = None) -> np.ndarray:
        action = expert_action(obs, goal=goal)
        return (action + self.rng.normal(0.0, self.noise_rad, 2)).astype(np.float32)
