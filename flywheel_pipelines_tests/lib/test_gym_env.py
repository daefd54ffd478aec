"""ReachEnv: a well-formed gymnasium env whose episodes are the reference simulator's."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from flywheel_pipelines.lib.sim.batched import evaluate_reference
from flywheel_pipelines.lib.sim.expert import expert_action
from flywheel_pipelines.lib.sim.gym_env import AbsoluteTargetAgent, ReachEnv, normalize_target
from flywheel_pipelines.lib.sim.robot import RobotProfile, sample_task, seeded_rng
from flywheel_pipelines.lib.sim.scenario import Scenario, step_reward


def nominal(n: int, *, max_steps: int = 70) -> list[Scenario]:
    out = []
    for i in range(n):
        q0, goal = sample_task(seeded_rng("test_gym_env", i))
        out.append(Scenario(f"nominal/{i:04d}", "nominal", RobotProfile(robot_id=f"nominal/{i:04d}"),
                            (float(q0[0]), float(q0[1])), (float(goal[0]), float(goal[1])), seed=i, max_steps=max_steps))
    return out


def run_episode(env: ReachEnv, agent: AbsoluteTargetAgent) -> tuple[int, float, dict]:
    obs, _ = env.reset()
    total, steps = 0.0, 0
    while True:
        action, _ = agent.predict(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        total, steps = total + reward, steps + 1
        if terminated or truncated:
            return steps, total, info


@pytest.mark.parametrize("source", ["list", "factory"])
def test_gymnasium_env_checker_passes(source):
    scenarios = nominal(3, max_steps=10)
    env = ReachEnv(scenarios if source == "list" else lambda rng: scenarios[int(rng.integers(len(scenarios)))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unbounded observation box is honest, not a mistake
        check_env(env, skip_render_check=True)


def test_the_expert_through_the_normalized_action_matches_the_reference():
    scenarios = nominal(6)
    reference = evaluate_reference(expert_action, scenarios, "expert")
    env, agent = ReachEnv(scenarios), AbsoluteTargetAgent(expert_action)
    for ref in reference:
        steps, total, info = run_episode(env, agent)
        assert info["scenario_id"] == ref.scenario_id
        assert (info["success"], steps) == (ref.success, ref.steps)
        assert total == pytest.approx(ref.return_, abs=1e-5)
        assert info["error_m"] == pytest.approx(ref.final_error_m, abs=1e-6)
    assert sum(r.success for r in reference) >= 5


def test_stable_baselines3_evaluate_policy_runs_our_policies():
    from stable_baselines3.common.evaluation import evaluate_policy

    scenarios = nominal(4)
    reference = evaluate_reference(expert_action, scenarios, "expert")
    rewards, lengths = evaluate_policy(AbsoluteTargetAgent(expert_action), ReachEnv(scenarios), n_eval_episodes=4,
                                       return_episode_rewards=True, warn=False)
    assert sorted(lengths) == sorted(r.steps for r in reference)
    np.testing.assert_allclose(sorted(rewards), sorted(r.return_ for r in reference), atol=1e-4)


def test_action_mapping_round_trips():
    env = ReachEnv(nominal(1), action_offset=(0.01, -0.02), action_scale=(0.3, 0.1))
    obs, _ = env.reset(seed=0)
    action = np.array([0.5, -0.25], dtype=np.float32)
    target = env.target_for(action)
    np.testing.assert_allclose(target, obs[:2] + [0.01, -0.02] + [0.15, -0.025], atol=1e-7)
    back = normalize_target(obs, target, action_offset=(0.01, -0.02), action_scale=(0.3, 0.1))
    np.testing.assert_allclose(back, action, atol=1e-6)
    np.testing.assert_array_equal(env.target_for([9.0, -9.0]), env.target_for([1.0, -1.0]))  # clipped
    far = normalize_target(obs, obs[:2] + 5.0)
    np.testing.assert_array_equal(far, [1.0, 1.0])


def test_scenarios_cycle_in_order_and_seeding_restarts_them():
    scenarios = nominal(3, max_steps=2)
    env = ReachEnv(scenarios)
    ids = [env.reset()[1]["scenario_id"] for _ in range(4)]
    assert ids == [s.scenario_id for s in scenarios] + [scenarios[0].scenario_id]
    assert env.reset(seed=7)[1]["scenario_id"] == scenarios[0].scenario_id
    # A scenario's sensor noise comes from its own seed: the same scenario, the same first observation.
    first = env.reset(seed=1)[0]
    np.testing.assert_array_equal(ReachEnv(scenarios[:1]).reset()[0], first)


def test_step_reports_reward_events_and_truncation():
    scenario = replace(nominal(1)[0], max_steps=3)
    env = ReachEnv([scenario])
    env.reset()
    for step in range(1, 4):
        _, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))  # hold still
        assert reward == pytest.approx(step_reward(info["error_m"], info["error_m"] < 0.025))
        assert not terminated and truncated == (step == 3)
        assert set(info) >= {"success", "error_m", "joint_limit_hit", "force_event", "scenario_id"}
        assert not info["force_event"] and not info["joint_limit_hit"]


def test_a_non_finite_action_is_refused():
    env = ReachEnv(nominal(1))
    env.reset()
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([np.nan, 0.0], dtype=np.float32))
