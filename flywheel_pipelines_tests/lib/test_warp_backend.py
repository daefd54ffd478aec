"""The MuJoCo Warp backend, run for real on the CPU, against the CPU MuJoCo evaluator.

Warp computes in float32 and the CPU path in float64, so the promise is agreement within a
stated tolerance (docs/simulation.md), not equality: every per-substep joint state within
STATE_TOL, and every scenario's outcome (success, steps, safety-event counts) the same.
The first run compiles Warp's CPU kernels (~40 s on 2 cores, cached in ~/.cache/warp after).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from flywheel_pipelines.lib.evaluation.policies import scripted_expert
from flywheel_pipelines.lib.sim import batched
from flywheel_pipelines.lib.sim.batched import evaluate_batched, resolve_backend
from flywheel_pipelines_tests.lib.test_batched import CASES, make_scenarios

pytest.importorskip("mujoco_warp")

# Observed on these scenarios: |dq| <= 3.3e-6 rad, |dqdot| <= 2e-4 rad/s over 3.5 s episodes.
QPOS_TOL = 1e-4  # rad
QVEL_TOL = 5e-3  # rad/s
OUTCOME = ("scenario_id", "seed", "success", "steps", "joint_limit_hits", "force_events", "gain_scale",
           "latency_ms", "mass_scale")


def _recorder(store: dict):
    def on_period(idx, step, qpos, qvel):
        for row, i in enumerate(idx):
            store[(int(i), step)] = (qpos[row].copy(), qvel[row].copy())
    return on_period


def _agreement(policy, scenarios):
    cpu_states, warp_states = {}, {}
    cpu = evaluate_batched(policy, scenarios, policy_name="p", threads=2, on_period=_recorder(cpu_states))
    warp = evaluate_batched(policy, scenarios, policy_name="p", backend="warp", device="cpu",
                            on_period=_recorder(warp_states))
    assert cpu_states.keys() == warp_states.keys()  # the same episodes ran the same number of periods
    dq = max(np.abs(cpu_states[k][0] - warp_states[k][0]).max() for k in cpu_states)
    dv = max(np.abs(cpu_states[k][1] - warp_states[k][1]).max() for k in cpu_states)
    assert dq <= QPOS_TOL and dv <= QVEL_TOL, (dq, dv)
    for c, w in zip(cpu, warp, strict=True):
        cd, wd = c.to_dict(), w.to_dict()
        assert {k: cd[k] for k in OUTCOME} == {k: wd[k] for k in OUTCOME}
        assert wd["return_"] == pytest.approx(cd["return_"], rel=1e-4, abs=1e-4)
        assert wd["final_error_m"] == pytest.approx(cd["final_error_m"], abs=1e-5)
        assert wd["jerk_rms"] == pytest.approx(cd["jerk_rms"], rel=1e-3)
        assert (wd["time_to_goal_s"] is None) == (cd["time_to_goal_s"] is None)
    return cpu, warp


def test_warp_on_cpu_agrees_with_the_cpu_evaluator_per_step_and_per_scenario():
    """Every ArmSim feature (latency over several periods, sensor delay, friction, masses,
    calibration), one distinct robot per world: per-robot model fields are batched right."""
    scenarios = []
    for j, profile in enumerate(CASES.values()):
        scenarios += make_scenarios(2, seed=j, max_steps=30, **profile)
    scenarios = [replace(s, scenario_id=f"{s.scenario_id}/{i}") for i, s in enumerate(scenarios)]
    cpu, _ = _agreement(scripted_expert, scenarios)
    assert 0 < sum(r.success for r in cpu) < len(cpu)  # both outcomes are exercised


def test_warp_agrees_on_safety_events():
    """Joint-limit hits and excessive-torque events, from a policy slamming into the limits."""
    def slam(obs):
        return np.where(obs[:, :1] > 0, [2.99, 2.69], [-2.99, -2.69])

    cpu, _ = _agreement(slam, make_scenarios(3, max_steps=12, latency_s=0.06))
    assert all(r.force_events > 0 for r in cpu) and any(r.joint_limit_hits > 0 for r in cpu)


def test_warp_results_do_not_depend_on_the_batch():
    scenarios = make_scenarios(5, max_steps=15)
    whole = evaluate_batched(scripted_expert, scenarios, policy_name="p", backend="warp", device="cpu")
    split = evaluate_batched(scripted_expert, scenarios, policy_name="p", backend="warp", device="cpu", batch_size=2)
    assert whole == split


def test_backend_choice():
    assert resolve_backend("mujoco") == "mujoco" and resolve_backend("warp") == "warp"
    with pytest.raises(ValueError, match="unknown simulation backend"):
        resolve_backend("physx")


def test_auto_backend_is_mujoco_without_a_gpu():
    from flywheel_pipelines.lib.sim.warp_backend import cuda_available

    assert resolve_backend("auto") == ("warp" if cuda_available() else "mujoco")


def test_auto_backend_picks_warp_when_cuda_is_present_mocked_gpu(monkeypatch):
    """No GPU in CI: the CUDA probe is mocked; the choice logic is what is tested."""
    import flywheel_pipelines.lib.sim.warp_backend as wb

    monkeypatch.setattr(wb, "cuda_available", lambda: True)
    assert resolve_backend("auto") == "warp"
    monkeypatch.setattr(wb, "cuda_available", lambda: False)
    assert resolve_backend("auto") == "mujoco"
    assert batched.BACKENDS == ("mujoco", "warp", "auto")


def test_run_policies_on_warp_scores_like_the_cpu():
    from flywheel_pipelines.lib.evaluation.evaluate import run_policies
    from flywheel_pipelines.lib.evaluation.policies import hold_position

    scenarios = make_scenarios(4, max_steps=25)
    policies = {"expert": scripted_expert, "hold": hold_position}
    cpu = run_policies(policies, scenarios, threads=2)
    warp = run_policies(policies, scenarios, backend="warp", device="cpu")
    for name in policies:
        assert [(r.success, r.steps) for r in warp[name]] == [(r.success, r.steps) for r in cpu[name]]


def test_torch_and_onnx_policies_on_a_device_match_the_cpu_policy(tmp_path):
    """The device-side policy wrappers: TorchPolicy on the CPU here (on CUDA in the GPU benchmark),
    and OnnxPolicy asked for CUDA falls back to the CPU provider when onnxruntime has none."""
    import torch

    from flywheel_pipelines.lib.evaluation.policies import ACTION_NAMES, OBS_NAMES, OnnxPolicy, TorchPolicy
    from flywheel_pipelines.lib.learning.policy import Policy, PolicyConfig
    from flywheel_pipelines.lib.release.onnx_export import export_onnx

    torch.manual_seed(0)
    policy = Policy(PolicyConfig(obs_features=("observation.state",), obs_names=OBS_NAMES, action_names=ACTION_NAMES,
                                 hidden=16, layers=2, residual_indices=(0, 1))).eval()
    obs = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    expected = policy(torch.from_numpy(obs)).detach().numpy()
    np.testing.assert_allclose(TorchPolicy(policy, device="cpu")(obs), expected, rtol=1e-6, atol=1e-6)
    export_onnx(policy, tmp_path / "p.onnx")
    onnx = OnnxPolicy(tmp_path / "p.onnx", device="cuda")
    assert onnx.providers[-1] == "CPUExecutionProvider"
    np.testing.assert_allclose(onnx(obs), expected, rtol=1e-5, atol=1e-5)
