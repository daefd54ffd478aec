"""Tests for on-device PPO over batched worlds (``algo: ppo_batched``) and its vectorized reach env."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import numpy as np
import pytest
import torch

from flywheel_pipelines.lib.learning.checkpoint import CheckpointError, latest_checkpoint
from flywheel_pipelines.lib.learning.ppo_batched import Trainer
from flywheel_pipelines.lib.learning.rl import (
    RLConfig,
    config_path,
    load_rl_config,
    policy_interface,
    run_fingerprint,
    train_rl,
    training_record,
)
from flywheel_pipelines.lib.release.onnx_export import export_onnx, onnx_parity
from flywheel_pipelines.lib.sim.batched import evaluate_batched
from flywheel_pipelines.lib.sim.batched_env import BatchedReachEnv, training_robots
from flywheel_pipelines.lib.sim.gym_env import ReachEnv
from flywheel_pipelines.lib.sim.robot import RobotProfile, sample_profile, sample_task, seeded_rng
from flywheel_pipelines.lib.sim.scenario import Scenario
from flywheel_pipelines_tests.lib.test_checkpoint import wait_for_checkpoint
from flywheel_pipelines_tests.lib.test_rl import _assert_same_weights, _run_rl_subprocess, _same_history

WORLDS, STEPS = 8, 16
UPDATE = WORLDS * STEPS


def _tiny(timesteps: int, **over) -> RLConfig:
    """The shipped config shrunk to a few seconds on a shared 2-core CPU."""
    cfg = load_rl_config("ppo_batched_reach.yaml", timesteps=timesteps, device="cpu")
    hyper = {**cfg.hyperparams, "n_steps": STEPS, "batch_size": 32, "n_epochs": 2, "robots": 4, "threads": 1}
    return replace(cfg, hyperparams=hyper, **{"n_envs": WORLDS, "hidden": 32, "checkpoint_freq": 2 * UPDATE, **over})


def _write_config(path, old: str, new: str) -> str:
    """The shipped config with one edit, written to ``path``."""
    body = config_path("ppo_batched_reach.yaml").read_text()
    assert old in body
    path.write_text(body.replace(old, new))
    return str(path)


def test_shipped_config():
    cfg = load_rl_config("ppo_batched_reach.yaml")
    assert cfg.algo == "ppo_batched" and cfg.n_envs == 4096 and (cfg.hidden, cfg.layers) == (128, 2)
    assert cfg.hyperparams["sim_backend"] == "auto" and cfg.action_scale == (0.2, 0.2)
    assert cfg.policy_kwargs == {"log_std_init": -1.0}


@pytest.mark.parametrize(("old", "new", "message"), [
    ("  n_epochs: 5\n", "  n_epochs: 5\n  use_sde: true\n", "unknown ppo_batched hyperparameters \\['use_sde'\\]"),
    ("log_std_init: -1.0", "ortho_init: false", "unknown ppo_batched policy_kwargs"),
    ("sim_backend: auto", "sim_backend: isaac", "sim_backend must be auto, mujoco or warp"),
])
def test_bad_configs_are_refused_naming_the_file(tmp_path, old, new, message):
    path = _write_config(tmp_path / "bad.yaml", old, new)
    with pytest.raises(ValueError, match=message) as err:
        load_rl_config(path)
    assert "bad.yaml" in str(err.value)


# --- the vectorized env -----------------------------------------------------------------------------


def _profiles() -> list[RobotProfile]:
    """Noise-free robots with latency below and at a substep boundary, offsets, friction, masses."""
    return [RobotProfile("a", calibration_offset=(0.01, -0.02), latency_s=0.013, pos_noise=0.0, vel_noise=0.0),
            RobotProfile("b", gain_scale=0.85, damping=(0.09, 0.04), friction=(0.02, 0.01), latency_s=0.004,
                         pos_noise=0.0, vel_noise=0.0),
            RobotProfile("c", mass_scale=1.2, latency_s=0.0, pos_noise=0.0, vel_noise=0.0)]


def _tasks(n: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pairs = [sample_task(rng) for _ in range(n)]
    return np.array([q for q, _ in pairs]), np.array([g for _, g in pairs])


def test_env_steps_like_reach_env():
    """Same task as ReachEnv: with noise-free sensors, the same start, goal and actions give the same
    observations, rewards and success, robot by robot (latency, offsets, friction, masses)."""
    profiles = _profiles()
    q0, goal = _tasks(len(profiles))
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1.2, 1.2, (30, len(profiles), 2)).astype(np.float32)
    with BatchedReachEnv(profiles, len(profiles), seed=0, threads=1) as env:
        obs = [env.reset(tasks=(q0, goal)).numpy().copy()]
        rewards = []
        for a in actions:
            out = env.step(torch.from_numpy(a))
            obs.append(out["obs"].numpy().copy())
            rewards.append(out["reward"].numpy().copy())
            assert not (out["terminated"] | out["truncated"]).any()  # no reset inside the compared window
    for i, p in enumerate(profiles):
        scenario = Scenario(f"s{i}", "randomized", p, tuple(q0[i]), tuple(goal[i]), seed=0)
        ref = ReachEnv([scenario])
        ref_obs = [ref.reset(seed=0)[0]]
        ref_rewards = []
        for a in actions[:, i]:
            o, r, *_ = ref.step(a)
            ref_obs.append(o)
            ref_rewards.append(r)
        np.testing.assert_allclose(np.array(obs)[:, i], np.array(ref_obs), atol=1e-6, err_msg=p.robot_id)
        np.testing.assert_allclose(np.array(rewards)[:, i], np.array(ref_rewards), atol=1e-5, err_msg=p.robot_id)


def test_env_ends_and_restarts_episodes_in_place():
    """A world that succeeds terminates, reports its last observation and starts a fresh task; a world
    that runs out of steps is truncated, not terminated."""
    profiles = [RobotProfile("a", pos_noise=0.0, vel_noise=0.0)]
    q0 = np.array([[0.3, 1.0], [0.3, 1.0]])
    goal_near = np.array(sample_task(seeded_rng("x", 0))[1])
    from flywheel_pipelines.lib.sim.robot import forward_kinematics

    goal = np.stack([forward_kinematics(q0[0]), goal_near])  # world 0 starts on its goal
    with BatchedReachEnv(profiles, 2, seed=0, threads=1, max_steps=6) as env:
        env.reset(tasks=(q0, goal))
        hold = torch.zeros(2, 2)
        for step in range(1, 7):
            out = env.step(hold)
            if step < 5:
                assert not out["terminated"].any()
        # World 0 succeeded at step 5 (5 steps inside) and restarted; world 1 is truncated at step 6.
        assert not out["terminated"][1] and out["truncated"][1]
        assert torch.equal(out["terminal_obs"][1, 4:], torch.tensor(goal[1], dtype=torch.float32))
        assert not torch.equal(out["obs"][1, 4:], out["terminal_obs"][1, 4:])  # a new goal
        assert env.steps.tolist() == [1, 0]


def test_env_refuses_robots_it_cannot_simulate():
    with pytest.raises(ValueError, match="robot slow: .*latency"):
        BatchedReachEnv([RobotProfile("slow", latency_s=0.06)], 2, seed=0)
    with pytest.raises(ValueError, match="robot delayed: .*delay"):
        BatchedReachEnv([RobotProfile("delayed", sensor_delay_s=0.01)], 2, seed=0)


def test_warp_env_agrees_with_the_mujoco_env_on_cpu():
    """MuJoCo Warp (float32, run for real on the CPU) against threaded mujoco.rollout (float64): the
    same worlds, seeds and actions give observations within docs/simulation.md's tolerance
    (1e-4 rad, 5e-3 rad/s; the sensor noise is the same draws on both), equal episode ends."""
    pytest.importorskip("mujoco_warp")
    robots = training_robots(0, 4, draw=3) + [sample_profile("f", seed=0, faults=False)]
    rng = np.random.default_rng(2)
    actions = torch.from_numpy(rng.uniform(-1, 1, (40, 6, 2)).astype(np.float32))
    runs = {}
    for backend in ("mujoco", "warp"):
        with BatchedReachEnv(robots, 6, seed=11, backend=backend, threads=1, max_steps=25) as env:
            obs, outs = [env.reset().clone()], []
            for a in actions:
                out = env.step(a)
                obs.append(out["obs"].clone())
                outs.append({k: v.clone() for k, v in out.items()})
            runs[backend] = (torch.stack(obs), outs)
    (obs_m, out_m), (obs_w, out_w) = runs["mujoco"], runs["warp"]
    assert torch.equal(obs_m[:, :, 4:], obs_w[:, :, 4:])  # goals: same draws, same resets
    assert (obs_m[:, :, :2] - obs_w[:, :, :2]).abs().max() < 1e-4
    assert (obs_m[:, :, 2:4] - obs_w[:, :, 2:4]).abs().max() < 5e-3
    for a, b in zip(out_m, out_w, strict=True):
        assert torch.equal(a["terminated"], b["terminated"]) and torch.equal(a["truncated"], b["truncated"])
        assert (a["reward"] - b["reward"]).abs().max() < 1e-3  # -10 x error: 1e-4 m


# --- training -----------------------------------------------------------------------------------------


def _trainer(cfg: RLConfig) -> Trainer:
    return Trainer(cfg, offset=np.zeros(2), scale=np.asarray(cfg.action_scale), checkpoint_dir=None,
                   fingerprint=run_fingerprint(cfg, None), on_progress=None)


def test_policy_is_the_actors_clipped_mean():
    """The exported Policy acts as the trained actor's deterministic action through the env's mapping
    (so the SB3 PPO's artifact, ONNX export and evaluation path apply unchanged)."""
    cfg = _tiny(2 * UPDATE)
    trainer = _trainer(cfg)
    trainer.run()
    policy = trainer.policy(policy_interface())
    assert policy.config.squash == "clip" and policy.config.hidden == 32
    env = BatchedReachEnv(training_robots(0, 4, draw=9), 16, seed=4, threads=1)
    obs = env.reset()
    for _ in range(3):
        obs = env.step(torch.rand(16, 2) * 2 - 1)["obs"]
    with torch.no_grad():
        action = torch.clamp(trainer.model.actor(trainer.norm(obs)), -1, 1)
        np.testing.assert_allclose(policy(obs).numpy(), env.targets(action).numpy(), atol=1e-5)
    env.close()


@pytest.fixture(scope="module")
def reference():
    cfg = _tiny(6 * UPDATE)
    return cfg, *train_rl(cfg)


def test_trains_reports_and_is_seeded(reference, tmp_path):
    cfg, policy, history = reference
    assert [m.timesteps for m in history] == [UPDATE * i for i in range(1, 7)]
    assert {"policy_gradient_loss", "value_loss", "approx_kl", "clip_fraction", "entropy_loss"} <= set(history[-1].losses)
    assert all(m.timesteps_per_s > 0 for m in history)
    again, _ = train_rl(cfg)
    _assert_same_weights(policy, again)
    assert training_record(cfg)["trainer"] == "ppo_batched"
    export_onnx(policy, tmp_path / "policy.onnx")
    obs = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    assert onnx_parity(policy, tmp_path / "policy.onnx", obs)["max_abs_error"] < 1e-5


def test_resume_after_a_crash_is_bit_identical(reference, tmp_path):
    cfg, ref_policy, ref_history = reference

    class Crash(Exception):
        pass

    def crash(m):
        if m.timesteps >= 5 * UPDATE:
            raise Crash

    with pytest.raises(Crash):
        train_rl(cfg, checkpoint_dir=tmp_path, on_progress=crash)
    assert latest_checkpoint(tmp_path).step == 4 * UPDATE
    seen = []
    policy, history = train_rl(cfg, checkpoint_dir=tmp_path, on_progress=seen.append)
    assert seen[0].timesteps == 5 * UPDATE
    _assert_same_weights(ref_policy, policy)
    assert _same_history(history, ref_history)


def test_resume_after_sigkill_is_bit_identical(reference, tmp_path):
    cfg, ref_policy, ref_history = reference
    proc = _run_rl_subprocess(cfg, tmp_path, "plain")
    wait_for_checkpoint(proc, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and "finished" not in out, err
    killed_at = latest_checkpoint(tmp_path).step
    assert 0 < killed_at < cfg.n_timesteps
    seen = []
    policy, history = train_rl(RLConfig(**cfg.to_dict()), checkpoint_dir=tmp_path, on_progress=seen.append)
    assert seen[0].timesteps == killed_at + UPDATE, "resumed from the checkpoint, not from scratch"
    _assert_same_weights(ref_policy, policy)
    assert _same_history(history, ref_history)


def test_a_checkpoint_of_another_config_is_refused_and_bc_init_too(tmp_path):
    cfg = _tiny(UPDATE)
    train_rl(cfg, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="another config"):
        train_rl(replace(cfg, seed=1), checkpoint_dir=tmp_path)
    from flywheel_pipelines_tests.lib.test_learning import _policy

    with pytest.raises(ValueError, match="ppo_batched does not fine-tune a BC policy"):
        train_rl(cfg, bc_init=_policy())


def _held_out(n: int) -> list[Scenario]:
    """Fault-free fleet robots and tasks the trainer never draws (other robot ids and seeds)."""
    out = []
    for i in range(n):
        q0, goal = sample_task(seeded_rng("held-out", i))
        out.append(Scenario(f"held-out/{i}", "randomized", sample_profile(f"held{i}", seed=7, faults=False),
                            (float(q0[0]), float(q0[1])), (float(goal[0]), float(goal[1])), seed=i))
    return out


def _success(policy, scenarios) -> tuple[float, float]:
    def act(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return policy(torch.from_numpy(obs)).numpy()

    rows = evaluate_batched(act, scenarios, policy_name="candidate", threads=1)
    return float(np.mean([r.success for r in rows])), float(np.mean([r.return_ for r in rows]))


@pytest.mark.slow
def test_it_learns_to_reach_on_held_out_robots():
    """64 worlds on the CPU, 90k timesteps (about a minute on 2 busy cores): the deterministic
    policy succeeds on a clear share of held-out scenarios where the untrained one does not."""
    cfg = load_rl_config("ppo_batched_reach.yaml", timesteps=64 * 32 * 44, device="cpu")
    cfg = replace(cfg, n_envs=64, checkpoint_freq=10**9, hyperparams={
        **cfg.hyperparams, "n_steps": 32, "batch_size": 512, "n_epochs": 10, "robots": 64, "threads": 1})
    untrained = _trainer(cfg).policy(policy_interface())
    policy, history = train_rl(cfg)
    held_out = _held_out(64)
    base_success, base_return = _success(untrained, held_out)
    success, ret = _success(policy, held_out)
    assert success >= base_success + 0.3, (success, base_success)
    assert ret > base_return + 30, (ret, base_return)
    assert history[-1].success_rate > 0.3
