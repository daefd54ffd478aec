"""Closed-loop evaluation in the MuJoCo simulator with per-robot physics randomized."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from flywheel_pipelines.lib.sim.expert import expert_action
from flywheel_pipelines.lib.sim.robot import (
    CONTROL_HZ,
    MAX_EPISODE_STEPS,
    SUCCESS_HOLD_STEPS,
    SUCCESS_RADIUS_M,
    ArmSim,
    sample_profile,
    sample_task,
    seeded_rng,
)

PolicyFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EpisodeResult:
    policy: str
    episode: int
    seed: int
    success: bool
    steps: int
    time_to_goal_s: float | None
    final_error_m: float
    min_error_m: float
    joint_limit_hits: int
    gain_scale: float
    latency_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def expert_policy(obs: np.ndarray) -> np.ndarray:
    """The scripted expert without operator noise (the upper baseline)."""
    return expert_action(obs)


def hold_policy(obs: np.ndarray) -> np.ndarray:
    """The trivial baseline: command the current position (does nothing)."""
    return np.asarray(obs[:2], dtype=np.float32)


def run_suite(policy: PolicyFn, *, name: str, episodes: int, seed: int) -> list[EpisodeResult]:
    """Run ``episodes`` seeded episodes; episode i always gets the same robot physics and task.

    The physics of each episode is a freshly sampled robot profile (friction, damping, gain,
    latency, sensor noise), so the score measures robustness across the fleet, not one robot.
    """
    results = []
    for i in range(episodes):
        rng = seeded_rng("eval", seed, i)
        profile = sample_profile(f"eval{i}", seed=seed, faults=False)
        sim = ArmSim(profile, seed=int(rng.integers(2**31)))
        q0, goal = sample_task(rng)
        sim.reset(q0, goal)
        held, success, time_to_goal, limit_hits = 0, False, None, 0
        errors = []
        step = 0
        for step in range(1, MAX_EPISODE_STEPS + 1):
            action = np.asarray(policy(sim.observation()), dtype=np.float64).reshape(-1)[:2]
            if not np.all(np.isfinite(action)):
                raise ValueError(f"policy {name!r} returned a non-finite action at step {step} of episode {i}")
            sim.advance(action)
            err = sim.fingertip_error()
            errors.append(err)
            limit_hits += int(sim.joint_limit_margin() < 0.02)
            held = held + 1 if err < SUCCESS_RADIUS_M else 0
            if held == 1 and time_to_goal is None:
                time_to_goal = step / CONTROL_HZ
            if held == 0:
                time_to_goal = None
            if held >= SUCCESS_HOLD_STEPS:
                success = True
                break
        results.append(EpisodeResult(
            policy=name, episode=i, seed=seed, success=success, steps=step,
            time_to_goal_s=time_to_goal if success else None, final_error_m=errors[-1],
            min_error_m=float(min(errors)), joint_limit_hits=limit_hits,
            gain_scale=profile.gain_scale, latency_ms=profile.latency_s * 1000,
        ))
    return results
