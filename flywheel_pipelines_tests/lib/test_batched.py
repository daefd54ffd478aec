"""The batched evaluator against the single-robot reference (ArmSim), and what it promises besides."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest

from flywheel_pipelines.lib.sim.batched import evaluate_batched, evaluate_reference, jerk_rms, per_row
from flywheel_pipelines.lib.sim.expert import expert_action
from flywheel_pipelines.lib.sim.robot import CONTROL_HZ, RobotProfile, sample_profile, sample_task, seeded_rng
from flywheel_pipelines.lib.sim.scenario import FORCE_LIMIT_NM, EpisodeResult, Scenario

EXACT = ("policy", "scenario_id", "group", "seed", "success", "steps", "joint_limit_hits", "force_events",
         "gain_scale", "latency_ms", "mass_scale")


def make_scenarios(n: int, *, seed: int = 0, max_steps: int = 40, **profile) -> list[Scenario]:
    """``n`` fleet-sampled robots (friction, damping, gains, latency, noise), overridden by ``profile``."""
    out = []
    for i in range(n):
        q0, goal = sample_task(seeded_rng("test_batched", seed, i))
        p = replace(sample_profile(f"r{i}", seed=seed, faults=False), **profile)
        out.append(Scenario(f"test/{i:03d}", "randomized", p, (float(q0[0]), float(q0[1])),
                            (float(goal[0]), float(goal[1])), seed=1000 * seed + i, max_steps=max_steps))
    return out


def assert_same(reference: list[EpisodeResult], batched: list[EpisodeResult], *, tol: float = 1e-9) -> None:
    assert len(reference) == len(batched)
    for r, b in zip(reference, batched, strict=True):
        rd, bd = r.to_dict(), b.to_dict()
        assert {k: rd[k] for k in EXACT} == {k: bd[k] for k in EXACT}
        assert (rd["time_to_goal_s"] is None) == (bd["time_to_goal_s"] is None)
        for key in ("return_", "final_error_m", "min_error_m", "jerk_rms", "time_to_goal_s"):
            if rd[key] is not None:
                assert bd[key] == pytest.approx(rd[key], rel=tol, abs=tol), (r.scenario_id, key)


# Every ArmSim feature, alone and together: the batched physics and sensors must reproduce it.
CASES = {
    "noise_free": dict(pos_noise=0.0, vel_noise=0.0, latency_s=0.013),
    "noise_free_no_friction": dict(pos_noise=0.0, vel_noise=0.0, friction=(0.0, 0.0)),
    "noisy_latency": dict(latency_s=0.031, pos_noise=0.002, vel_noise=0.03),
    "latency_over_two_periods": dict(latency_s=0.117),
    "sensor_delay": dict(sensor_delay_s=0.011),
    "sensor_delay_over_a_period": dict(sensor_delay_s=0.072, latency_s=0.02),
    "heavy_links": dict(mass_scale=1.6, gain_scale=0.8),
    "miscalibrated": dict(calibration_offset=(0.03, -0.08)),
    "everything": dict(latency_s=0.06, sensor_delay_s=0.009, mass_scale=0.7, calibration_offset=(-0.02, 0.05)),
}


@pytest.mark.parametrize("profile", CASES.values(), ids=CASES.keys())
def test_batched_equals_the_armsim_reference(profile):
    scenarios = make_scenarios(4, **profile)
    reference = evaluate_reference(expert_action, scenarios, "expert")
    batched = evaluate_batched(per_row(expert_action), scenarios, policy_name="expert", threads=2)
    assert_same(reference, batched)


def test_the_policy_sees_the_same_observations():
    """Noise draws, calibration offset, latency and sensor delay all show up in what the policy sees."""
    scenarios = make_scenarios(3, latency_s=0.07, sensor_delay_s=0.013, calibration_offset=(0.01, -0.02))
    seen: dict[str, dict[tuple, list]] = {"reference": defaultdict(list), "batched": defaultdict(list)}

    def recording(where):
        def policy(obs):
            obs = np.atleast_2d(obs)
            for row in obs:
                seen[where][tuple(row[4:6])].append(row.copy())  # the goal tells the scenarios apart
            targets = np.stack([expert_action(o) for o in obs])
            return targets[0] if where == "reference" else targets
        return policy

    evaluate_reference(recording("reference"), scenarios, "expert")
    evaluate_batched(recording("batched"), scenarios, policy_name="expert", threads=2)
    assert seen["reference"].keys() == seen["batched"].keys()
    for goal, ref in seen["reference"].items():
        np.testing.assert_allclose(np.stack(seen["batched"][goal]), np.stack(ref), atol=1e-6, rtol=0)


def test_results_do_not_depend_on_threads_or_batch_split():
    scenarios = make_scenarios(7, max_steps=20)
    policy = per_row(expert_action)
    one = evaluate_batched(policy, scenarios, policy_name="expert", threads=1)
    assert evaluate_batched(policy, scenarios, policy_name="expert", threads=2, batch_size=3) == one
    assert evaluate_batched(policy, scenarios, policy_name="expert", threads=3, batch_size=1) == one
    assert evaluate_batched(policy, scenarios[::-1], policy_name="expert", threads=2) == one[::-1]
    assert evaluate_batched(policy, scenarios, policy_name="expert", threads=1) == one  # deterministic


def test_finished_episodes_stop_and_leave_the_batch():
    budgets = [3, 5, 8]
    scenarios = [replace(s, max_steps=m) for s, m in zip(make_scenarios(3), budgets, strict=True)]
    batch_sizes = []

    def hold(obs):
        batch_sizes.append(len(obs))
        return obs[:, :2]

    results = evaluate_batched(hold, scenarios, policy_name="hold", threads=2)
    assert [r.steps for r in results] == budgets
    assert batch_sizes == [3, 3, 3, 2, 2, 1, 1, 1]
    assert not any(r.success for r in results)


def test_success_ends_the_episode_early():
    scenarios = make_scenarios(4, max_steps=70)
    results = evaluate_batched(per_row(expert_action), scenarios, policy_name="expert", threads=2)
    for r in results:
        if r.success:
            assert r.steps < 70
            assert r.time_to_goal_s is not None and 0 < r.time_to_goal_s <= (r.steps - 4) / CONTROL_HZ
            assert r.final_error_m < 0.025
    assert sum(r.success for r in results) >= 3


def test_safety_events_are_counted_the_same_way():
    """A policy that slams into the joint limits: big torques and limit hits, in both evaluators."""
    scenarios = make_scenarios(3, max_steps=12, latency_s=0.06)

    def slam(obs):
        obs = np.atleast_2d(obs)
        return np.where(obs[:, :1] > 0, [2.99, 2.69], [-2.99, -2.69]) if len(obs) else np.zeros((0, 2))

    reference = evaluate_reference(lambda o: slam(o)[0], scenarios, "slam")
    batched = evaluate_batched(slam, scenarios, policy_name="slam", threads=2)
    assert_same(reference, batched)
    assert all(r.force_events > 0 for r in batched)
    assert any(r.joint_limit_hits > 0 for r in batched)


def test_peak_torque_matches_at_every_threshold(monkeypatch):
    """Force events count substep torques, which the batched evaluator recomputes from the state
    before each substep: the counts must agree with ArmSim's at any limit."""
    import flywheel_pipelines.lib.sim.batched as batched

    scenarios = make_scenarios(3, max_steps=15, latency_s=0.03)

    def jumpy(obs):  # 0.6 rad steps: torques from about 0.5 to 4 N m
        obs = np.atleast_2d(obs)
        return obs[:, :2] + np.where(obs[:, :2] > 0.5, -0.6, 0.6)

    for limit in np.linspace(0.3, 4.0, 25):
        monkeypatch.setattr(batched, "FORCE_LIMIT_NM", float(limit))
        reference = evaluate_reference(lambda o: jumpy(o)[0], scenarios, "jumpy")
        fast = evaluate_batched(jumpy, scenarios, policy_name="jumpy", threads=2)
        assert [r.force_events for r in fast] == [r.force_events for r in reference], limit


def test_the_expert_stays_under_the_force_limit_on_nominal_robots():
    nominal = [replace(s, profile=RobotProfile(robot_id=s.scenario_id)) for s in make_scenarios(6, max_steps=70)]
    results = evaluate_batched(per_row(expert_action), nominal, policy_name="expert", threads=2)
    assert sum(r.force_events for r in results) == 0, FORCE_LIMIT_NM


def test_a_non_finite_action_is_an_error_not_a_score():
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_batched(lambda obs: np.full((len(obs), 2), np.nan), make_scenarios(2), policy_name="broken", threads=1)


def test_jerk_rms_is_the_third_derivative():
    t = np.arange(10) / CONTROL_HZ
    q = np.stack([t**3, 2 * t**3], axis=1)  # third derivatives 6 and 12
    assert jerk_rms(q) == pytest.approx(np.sqrt((36 + 144) / 2))
    assert jerk_rms(q[:3]) == 0.0


def test_a_shared_thread_pool_gives_the_same_results():
    import mujoco.rollout

    scenarios = make_scenarios(4, max_steps=10)
    policy = per_row(expert_action)
    alone = evaluate_batched(policy, scenarios, policy_name="expert", threads=2)
    with mujoco.rollout.Rollout(nthread=2) as pool:
        first = evaluate_batched(policy, scenarios, policy_name="expert", pool=pool)
        second = evaluate_batched(policy, scenarios, policy_name="expert", pool=pool)
    assert first == second == alone
