"""The reach task as a gymnasium environment, one :class:`Scenario` per episode, stepped by ``ArmSim``.

The action is a normalized residual joint target, which is what RL libraries expect (a symmetric
box in [-1, 1]); our exported policies and the scripted expert instead output absolute joint
targets in the sensor frame. :class:`AbsoluteTargetAgent` maps the latter onto the former so
stable-baselines3's ``evaluate_policy`` can run them. Nothing is registered with gymnasium.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np

from flywheel_pipelines.lib.sim.robot import SUCCESS_HOLD_STEPS, ArmSim
from flywheel_pipelines.lib.sim.scenario import FORCE_LIMIT_NM, JOINT_LIMIT_MARGIN_RAD, Scenario, is_inside, step_reward

ScenarioSource = Sequence[Scenario] | Callable[[np.random.Generator], Scenario]
TargetPolicy = Callable[[np.ndarray], np.ndarray]  # obs (6,) -> absolute joint targets (2,), sensor frame

DEFAULT_ACTION_OFFSET = (0.0, 0.0)
DEFAULT_ACTION_SCALE = (0.2, 0.2)  # rad per control period at |a| = 1: the scripted expert's step bound
_SIM_CACHE = 32  # robots whose simulator a ReachEnv keeps


class ReachEnv(gym.Env):
    """Reach a goal with the planar arm; one episode is one :class:`Scenario`.

    Observation: ``ArmSim.observation()``, [q(2), dq(2) as the sensor reports them, goal(2)].
    Action: a in [-1, 1]^2; the commanded joint target is
    ``obs_q + action_offset + action_scale * clip(a, -1, 1)`` (sensor frame).
    Reward: :func:`step_reward` of the true fingertip error. The episode terminates on success
    (SUCCESS_HOLD_STEPS control steps in a row inside the radius) and is truncated at the
    scenario's ``max_steps``.

    Scenarios come from a list, taken in order and cycled, or from a factory called with the
    env's ``np_random``. ``reset(seed=...)`` restarts that sequence (the list from its first
    scenario), so seeding makes the episode stream reproducible; a scenario's sensor noise comes
    from its own ``seed`` either way.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        scenarios: ScenarioSource,
        *,
        action_offset: Sequence[float] = DEFAULT_ACTION_OFFSET,
        action_scale: Sequence[float] = DEFAULT_ACTION_SCALE,
    ):
        if callable(scenarios):
            self._factory: Callable[[np.random.Generator], Scenario] | None = scenarios
            self._scenarios: tuple[Scenario, ...] = ()
        else:
            self._factory = None
            self._scenarios = tuple(scenarios)
            if not self._scenarios:
                raise ValueError("ReachEnv needs at least one scenario")
        self.action_offset = np.asarray(action_offset, dtype=np.float64).reshape(2)
        self.action_scale = np.asarray(action_scale, dtype=np.float64).reshape(2)
        if np.any(self.action_scale <= 0):
            raise ValueError(f"action_scale must be positive, got {action_scale}")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(6,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._next = 0
        self._sim: ArmSim | None = None
        self._sims: dict[str, ArmSim] = {}
        self.scenario: Scenario | None = None
        self._obs = np.zeros(6, dtype=np.float32)
        self._steps = 0
        self._held = 0

    def _next_scenario(self) -> Scenario:
        if self._factory is not None:
            return self._factory(self.np_random)
        scenario = self._scenarios[self._next % len(self._scenarios)]
        self._next += 1
        return scenario

    def _sim_for(self, scenario: Scenario) -> ArmSim:
        """An ``ArmSim`` for the scenario's robot, reused across episodes: building the MuJoCo model
        costs about a millisecond, a sizeable part of a short episode."""
        # robot_id and faults are labels: robots that differ only in them simulate alike. (The
        # repr, because a profile read from a file may hold lists, which do not hash.)
        key = repr(replace(scenario.profile, robot_id="", faults=()))
        sim = self._sims.pop(key, None)
        if sim is None:
            sim = ArmSim(scenario.profile, seed=scenario.seed)
        else:
            sim.profile, sim.rng = scenario.profile, np.random.default_rng(scenario.seed)
        self._sims[key] = sim  # most recently used last
        while len(self._sims) > _SIM_CACHE:
            self._sims.pop(next(iter(self._sims)))
        return sim

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._next = 0
        scenario = self._next_scenario()
        self._sim = self._sim_for(scenario)
        self._sim.reset(np.asarray(scenario.q0, dtype=np.float64), np.asarray(scenario.goal, dtype=np.float64))
        self.scenario = scenario
        self._steps, self._held = 0, 0
        self._obs = self._sim.observation()
        return self._obs.copy(), {"scenario_id": scenario.scenario_id}

    def target_for(self, action: np.ndarray) -> np.ndarray:
        """The absolute joint target (sensor frame) that ``action`` commands from the current observation."""
        a = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"non-finite action {a}")
        a = np.clip(a, -1.0, 1.0)
        return self._obs[:2].astype(np.float64) + self.action_offset + self.action_scale * a

    def step(self, action: np.ndarray):
        if self._sim is None or self.scenario is None:
            raise RuntimeError("call reset() before step()")
        sim = self._sim
        sim.advance(self.target_for(action))
        self._steps += 1
        error = sim.fingertip_error()
        inside = bool(is_inside(error))
        self._held = self._held + 1 if inside else 0
        success = self._held >= SUCCESS_HOLD_STEPS
        self._obs = sim.observation()
        info = {
            "success": success,
            "is_success": success,  # the key stable-baselines3's callbacks read
            "error_m": error,
            "joint_limit_hit": sim.joint_limit_margin() < JOINT_LIMIT_MARGIN_RAD,
            "force_event": sim.peak_actuator_force() > FORCE_LIMIT_NM,
            "scenario_id": self.scenario.scenario_id,
        }
        truncated = not success and self._steps >= self.scenario.max_steps
        return self._obs.copy(), float(step_reward(error, inside)), success, truncated, info


def normalize_target(
    obs: np.ndarray,
    target: np.ndarray,
    *,
    action_offset: Sequence[float] = DEFAULT_ACTION_OFFSET,
    action_scale: Sequence[float] = DEFAULT_ACTION_SCALE,
) -> np.ndarray:
    """The inverse of ``ReachEnv``'s action mapping, for one (..., 6) or a batch of observations.

    Targets farther than ``action_scale`` from ``obs_q + action_offset`` cannot be commanded and
    are clipped to the edge of the action box.
    """
    obs = np.asarray(obs, dtype=np.float32)
    q = obs[..., :2].astype(np.float64)
    a = (np.asarray(target, dtype=np.float64) - q - np.asarray(action_offset)) / np.asarray(action_scale)
    return np.clip(a, -1.0, 1.0).astype(np.float32)


class AbsoluteTargetAgent:
    """An absolute-target policy (obs -> joint targets) behind stable-baselines3's ``predict`` API.

    ``policy`` takes one observation (6,) and returns targets (2,), like the scripted expert and
    ``onnx_policy_fn``; with ``batched=True`` it takes (N, 6) and returns (N, 2) in one call.
    Use the same ``action_offset``/``action_scale`` as the env.
    """

    def __init__(
        self,
        policy: TargetPolicy,
        *,
        batched: bool = False,
        action_offset: Sequence[float] = DEFAULT_ACTION_OFFSET,
        action_scale: Sequence[float] = DEFAULT_ACTION_SCALE,
    ):
        self.policy = policy
        self.batched = batched
        self.action_offset = tuple(action_offset)
        self.action_scale = tuple(action_scale)

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        batch = obs.reshape(-1, 6)
        if self.batched:
            targets = np.asarray(self.policy(batch), dtype=np.float64).reshape(-1, 2)
        else:
            targets = np.stack([np.asarray(self.policy(o), dtype=np.float64).reshape(2) for o in batch])
        actions = normalize_target(batch, targets, action_offset=self.action_offset, action_scale=self.action_scale)
        return (actions[0] if single else actions), state
