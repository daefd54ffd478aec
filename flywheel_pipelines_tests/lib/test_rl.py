"""Tests for the RL trainer: configs, the SB3 actor as a Policy, BC init, checkpoint/resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flywheel_pipelines.lib.learning.bc import BCConfig, train_bc
from flywheel_pipelines.lib.learning.checkpoint import CheckpointError, latest_checkpoint
from flywheel_pipelines.lib.learning.policy import Policy, PolicyConfig, load_policy, save_policy
from flywheel_pipelines.lib.learning.rl import (
    RLConfig,
    bc_action_mapping,
    build_model,
    config_path,
    init_from_bc,
    load_rl_config,
    make_env,
    policy_interface,
    rollout_obs_stats,
    to_policy,
    train_rl,
    training_record,
    training_scenarios,
)
from flywheel_pipelines.lib.release.onnx_export import export_onnx, onnx_parity
from flywheel_pipelines_tests.lib.test_checkpoint import (
    KILL_MID_WRITE,
    REPO,
    assert_loads_without_pickle,
    wait_for_checkpoint,
)
from flywheel_pipelines_tests.lib.test_learning import ACT_NAMES, OBS_NAMES, _policy, _synthetic

PPO_ROLLOUT = 4 * 64  # n_envs * n_steps of the tiny PPO below


def _tiny(algo: str, timesteps: int, **over) -> RLConfig:
    """A config from the shipped file, shrunk to run in a second or two on a shared 2-core CPU."""
    cfg = load_rl_config(f"{algo}_reach.yaml", timesteps=timesteps, device="cpu")
    small = ({"n_steps": 64, "batch_size": 64, "n_epochs": 2} if algo == "ppo"
             else {"learning_starts": 100, "batch_size": 64, "buffer_size": 5000})
    fields = {"hidden": 32, "obs_norm_episodes": 2, "checkpoint_freq": 512, "n_envs": 4 if algo == "ppo" else 1}
    return replace(cfg, hyperparams={**cfg.hyperparams, **small}, **{**fields, **over})


def _sample_obs(cfg: RLConfig, n: int = 64, seed: int = 3) -> np.ndarray:
    """Observations the env really produces (random actions), for comparing policies on."""
    env = make_env(cfg, np.zeros(2), np.asarray(cfg.action_scale))
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    rows = []
    while len(rows) < n:
        rows.append(obs)
        obs, _, term, trunc, _ = env.step(rng.uniform(-1, 1, 2))
        if term or trunc:
            obs, _ = env.reset()
    return np.asarray(rows, dtype=np.float32)


def _same_history(a, b) -> bool:
    def key(m):
        d = m.to_dict()
        d.pop("timesteps_per_s")
        return json.dumps(d, sort_keys=True)  # NaN == NaN as text

    return [key(m) for m in a] == [key(m) for m in b]


def _assert_same_weights(a: Policy, b: Policy) -> None:
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k


# --- configuration files ---------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_shipped_configs(algo):
    name = f"{algo}_reach.yaml"
    cfg = load_rl_config(name, seed=7, device="cpu")
    assert cfg.algo == algo and cfg.file == name and cfg.seed == 7 and cfg.device == "cpu"
    assert cfg.sha256 == hashlib.sha256(config_path(name).read_bytes()).hexdigest()[:12]
    assert (cfg.hidden, cfg.layers) == (128, 2) and cfg.n_timesteps > 10_000
    assert "learning_rate" in cfg.hyperparams and "n_timesteps" not in cfg.hyperparams
    assert load_rl_config(name, timesteps=123).n_timesteps == 123
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("net_arch: [128, 128]", "net_arch: [128, 64]"), "equal widths"),
        (lambda t: t.replace("activation_fn: gelu", "activation_fn: relu"), "gelu"),
        (lambda t: t.replace("algo: ppo", "algo: a2c"), "algo"),
        (lambda t: t.replace("FlywheelReach-v0:", "Pendulum-v1:"), "top-level"),
        (lambda t: t.replace("  policy: MlpPolicy", "  seed: 3"), "set by the trainer"),
        (lambda t: t.replace("  env_kwargs:", "  env_kwargs:\n    goal: 1"), "env_kwargs"),
        (lambda t: t.replace("learning_rate: 3.0e-4", "learning_rate: exp_3e-4"), "schedule"),
    ],
)
def test_invalid_configs_are_refused(tmp_path, edit, message):
    path = tmp_path / "bad.yaml"
    path.write_text(edit(config_path("ppo_reach.yaml").read_text()))
    with pytest.raises(ValueError, match=message):
        load_rl_config(str(path))


def test_linear_schedule(tmp_path):
    path = tmp_path / "lin.yaml"
    path.write_text(config_path("ppo_reach.yaml").read_text().replace("learning_rate: 3.0e-4", "learning_rate: lin_1.0e-3"))
    cfg = replace(load_rl_config(str(path), device="cpu"), hidden=8, n_envs=1)
    model = build_model(cfg, _vec(cfg), np.zeros(6), np.ones(6))
    assert model.lr_schedule(1.0) == pytest.approx(1e-3) and model.lr_schedule(0.5) == pytest.approx(5e-4)


def _vec(cfg):
    from stable_baselines3.common.vec_env import DummyVecEnv

    return DummyVecEnv([lambda: make_env(cfg, np.zeros(2), np.asarray(cfg.action_scale))])


def test_the_config_hash_changes_the_policy_version(tmp_path):
    original = config_path("ppo_reach.yaml").read_text()
    (tmp_path / "a.yaml").write_text(original)
    (tmp_path / "b.yaml").write_text(original.replace("n_epochs: 10", "n_epochs: 11"))
    (tmp_path / "c.yaml").write_text(original + "# a comment is a new config version too\n")
    configs = {k: load_rl_config(str(tmp_path / f"{k}.yaml")) for k in "abc"}
    assert len({c.sha256 for c in configs.values()}) == 3
    policy = _policy()
    identity = {"dataset": {"name": "d", "version": "v1"}}
    versions = {k: save_policy(policy, tmp_path / k, identity={**identity, "training": training_record(c)})
                for k, c in configs.items()}
    assert len(set(versions.values())) == 3
    again = save_policy(policy, tmp_path / "a2", identity={**identity, "training": training_record(configs["a"])})
    assert again == versions["a"]


# --- the bounded policy output ---------------------------------------------------------------------


def test_squash_is_off_by_default_and_left_out_of_the_config():
    config = _policy().config
    assert config.squash == "" and "squash" not in config.to_dict()
    assert PolicyConfig.from_dict(config.to_dict()) == config
    bounded = replace(config, squash="clip")
    assert bounded.to_dict()["squash"] == "clip" and PolicyConfig.from_dict(bounded.to_dict()) == bounded
    with pytest.raises(ValueError, match="squash"):
        replace(config, squash="sigmoid")


def _saturating(squash: str) -> Policy:
    policy = _policy()
    bounded = Policy(replace(policy.config, squash=squash))
    bounded.load_state_dict(policy.state_dict())
    with torch.no_grad():
        bounded.net[-1].weight.mul_(20.0)  # outputs well beyond [-1, 1]
    return bounded.eval()


@pytest.mark.parametrize("squash", ["clip", "tanh"])
def test_squash_bounds_the_normalized_output_and_survives_onnx(tmp_path, squash):
    policy = _saturating(squash)
    unbounded = Policy(replace(policy.config, squash=""))
    unbounded.load_state_dict(policy.state_dict())
    obs = torch.randn(256, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = unbounded.normalized_output(obs)
        out = policy.normalized_output(obs)
        expected = raw.clamp(-1, 1) if squash == "clip" else torch.tanh(raw)
        assert torch.equal(out, expected) and out.abs().max() <= 1.0
        assert (raw.abs() > 1).float().mean() > 0.3  # the bound is really exercised
        np.testing.assert_allclose(policy(obs), out * policy.act_std + policy.act_mean + obs[:, :2], atol=1e-6)
    save_policy(policy, tmp_path)
    loaded, _ = load_policy(tmp_path)
    assert loaded.config.squash == squash
    export_onnx(loaded, tmp_path / "policy.onnx")
    parity = onnx_parity(loaded, tmp_path / "policy.onnx", obs.numpy())
    assert parity["max_abs_error"] < 1e-5


# --- the SB3 actor is the policy -----------------------------------------------------------------------


def test_rl_policies_have_the_bc_interface():
    interface = policy_interface()
    # The same names test_learning checks on a dataset built by the pipeline.
    assert interface.obs_names == OBS_NAMES and interface.action_names == ACT_NAMES
    assert interface.obs_features == ("observation.state", "observation.environment_state")


def test_training_scenarios_are_seeded_and_fault_free():
    draw = training_scenarios(seed=5)
    a = [draw(g) for g in [np.random.default_rng(1)] * 3]
    b = [draw(g) for g in [np.random.default_rng(1)] * 3]
    assert a == b and len({s.scenario_id for s in a}) == 3
    assert all(s.profile.faults == () and s.profile.robot_id.startswith("train") for s in a)


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_sb3_deterministic_action_through_the_env_equals_the_policy(tmp_path, algo):
    cfg = _tiny(algo, 512)
    offset, scale = np.array([0.01, -0.02]), np.asarray(cfg.action_scale)
    obs_mean, obs_std = rollout_obs_stats(cfg, offset, scale)
    model = build_model(cfg, _vec(cfg), obs_mean, obs_std)
    model.learn(512)  # weights that are not the initialization
    policy = to_policy(model, cfg, policy_interface(), offset, scale)
    assert policy.config.squash == {"ppo": "clip", "sac": "tanh"}[algo]
    env = make_env(cfg, offset, scale)
    obs, _ = env.reset(seed=11)
    for _ in range(40):
        action, _ = model.predict(obs, deterministic=True)
        with torch.no_grad():
            ours = policy(torch.from_numpy(obs)[None])[0].numpy()
        np.testing.assert_allclose(ours, env.target_for(action), atol=1e-5)
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            obs, _ = env.reset()
    export_onnx(policy, tmp_path / "policy.onnx")
    assert onnx_parity(policy, tmp_path / "policy.onnx", _sample_obs(cfg))["max_abs_error"] < 1e-5


# --- fine-tuning a BC policy -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bc_policy() -> Policy:
    policy, _ = train_bc(_synthetic(n=512), BCConfig(epochs=5, batch_size=64, hidden=32, layers=2, device="cpu"))
    return policy


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_bc_init_acts_like_the_bc_policy_at_step_0(bc_policy, algo):
    cfg = replace(_tiny(algo, 512), hidden=bc_policy.config.hidden, layers=bc_policy.config.layers)
    offset, scale = bc_action_mapping(bc_policy, cfg)
    model = build_model(cfg, _vec(cfg), bc_policy.obs_mean.numpy(), bc_policy.obs_std.numpy())
    init_from_bc(model, cfg, bc_policy)
    policy = to_policy(model, cfg, policy_interface(), offset, scale)
    # Roll the env with the RL model's deterministic actions; record what each commands.
    env = make_env(cfg, offset, scale)
    o, _ = env.reset(seed=5)
    rows, targets = [], []
    for _ in range(64):
        action, _ = model.predict(o, deterministic=True)
        rows.append(o)
        targets.append(env.target_for(action))
        o, _, term, trunc, _ = env.step(action)
        if term or trunc:
            o, _ = env.reset()
    obs = torch.from_numpy(np.asarray(rows))
    k = cfg.bc_init_action_scale
    with torch.no_grad():
        net = bc_policy.normalized_output(obs)
        bc_out, rl_out = bc_policy(obs).numpy(), policy(obs).numpy()
    assert net.abs().max() < k, "sample observations inside the action range"
    obs = obs.numpy()
    if algo == "ppo":
        np.testing.assert_allclose(rl_out, bc_out, atol=1e-6)
        np.testing.assert_allclose(np.asarray(targets), bc_out, atol=2e-6)
    else:  # tanh: k * tanh(net / k) instead of net
        expected = obs[:, :2] + bc_policy.act_mean.numpy() + bc_policy.act_std.numpy() * (k * np.tanh(net.numpy() / k))
        np.testing.assert_allclose(rl_out, expected, atol=1e-6)
        np.testing.assert_allclose(np.asarray(targets), expected, atol=2e-6)
        assert np.abs(rl_out - bc_out).max() < (bc_policy.act_std.max() * net.abs().max() ** 3 / (3 * k**2)).item() + 1e-6


def test_train_rl_from_bc(bc_policy):
    cfg = _tiny("ppo", 2 * PPO_ROLLOUT, hidden=8, layers=3)  # the BC network's shape wins
    policy, history = train_rl(cfg, bc_init=bc_policy)
    assert (policy.config.hidden, policy.config.layers) == (32, 2) and len(history) == 2
    assert torch.equal(policy.obs_mean, bc_policy.obs_mean) and torch.equal(policy.act_mean, bc_policy.act_mean)
    assert torch.allclose(policy.act_std, bc_policy.act_std * cfg.bc_init_action_scale)
    mismatched = Policy(replace(bc_policy.config, obs_names=tuple(reversed(OBS_NAMES))))
    with pytest.raises(ValueError, match="interface"):
        train_rl(cfg, bc_init=mismatched)


# --- training, checkpoints and resume --------------------------------------------------------------------


class _Crash(Exception):
    pass


@pytest.fixture(scope="module")
def ppo_reference():
    cfg = _tiny("ppo", 8 * PPO_ROLLOUT)
    return cfg, *train_rl(cfg)


def test_ppo_trains_and_reports(ppo_reference, tmp_path):
    cfg, policy, history = ppo_reference
    assert [m.timesteps for m in history] == [PPO_ROLLOUT * i for i in range(1, 9)]
    assert [m.iteration for m in history] == list(range(1, 9))
    assert {"value_loss", "policy_gradient_loss", "approx_kl"} <= set(history[-1].losses)
    assert sum(m.episodes for m in history) > 0 and all(m.timesteps_per_s > 0 for m in history)
    assert policy.config.squash == "clip" and not policy.training
    again, _ = train_rl(cfg)
    _assert_same_weights(policy, again)  # seeded


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, ppo_reference, algo):
    if algo == "ppo":
        cfg, reference, ref_history = ppo_reference
        crash_at = 5 * PPO_ROLLOUT
    else:
        cfg = _tiny("sac", 1200, checkpoint_freq=300)
        reference, ref_history = train_rl(cfg)
        crash_at = 1200  # SAC reports every 1000 steps; its checkpoints are at 300, 600, 900
    def crash(m):
        if m.timesteps >= crash_at:
            raise _Crash

    with pytest.raises(_Crash):
        train_rl(cfg, checkpoint_dir=tmp_path / "run", on_progress=crash)
    resumed_from = latest_checkpoint(tmp_path / "run").step
    assert 0 < resumed_from < cfg.n_timesteps
    seen = []
    policy, history = train_rl(cfg, checkpoint_dir=tmp_path / "run", on_progress=seen.append)
    assert seen[0].timesteps > resumed_from and len(history) == len(ref_history)
    _assert_same_weights(reference, policy)
    assert _same_history(history, ref_history)


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    cfg = _tiny("ppo", PPO_ROLLOUT)
    train_rl(cfg, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="another config"):
        train_rl(replace(cfg, seed=1), checkpoint_dir=tmp_path)


_RL_SCRIPT = KILL_MID_WRITE + """
from flywheel_pipelines.lib.learning.rl import RLConfig, train_rl
config, ckpt_dir = RLConfig(**json.loads(sys.argv[1])), sys.argv[2]
train_rl(config, checkpoint_dir=ckpt_dir, on_progress=lambda m: time.sleep(0.3 if mode == "plain" else 0))
print("finished")
"""


def _run_rl_subprocess(cfg: RLConfig, ckpt_dir: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _RL_SCRIPT, json.dumps(cfg.to_dict()), str(ckpt_dir), mode],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ppo_resumes_after_sigkill(tmp_path, ppo_reference):
    cfg, reference, ref_history = ppo_reference
    proc = _run_rl_subprocess(cfg, tmp_path, "plain")
    wait_for_checkpoint(proc, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and "finished" not in out, err
    killed_at = latest_checkpoint(tmp_path).step
    assert 0 < killed_at < cfg.n_timesteps
    seen = []
    policy, history = train_rl(RLConfig(**cfg.to_dict()), checkpoint_dir=tmp_path, on_progress=seen.append)
    assert seen[0].timesteps == killed_at + PPO_ROLLOUT, "resumed from the checkpoint, not from scratch"
    assert seen[-1].timesteps == cfg.n_timesteps
    _assert_same_weights(reference, policy)
    assert _same_history(history, ref_history)


def test_sac_kill_during_a_checkpoint_write_is_ignored(tmp_path, monkeypatch):
    cfg = _tiny("sac", 900, checkpoint_freq=300)
    proc = _run_rl_subprocess(cfg, tmp_path, "kill_mid_write")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    assert [p.name[:22] for p in tmp_path.glob(".tmp-*")] == [".tmp-step-000000000600"]
    assert latest_checkpoint(tmp_path).step == 300
    seen = []
    policy, _ = train_rl(cfg, checkpoint_dir=tmp_path, on_progress=seen.append)
    assert not list(tmp_path.glob(".tmp-*"))
    reference, _ = train_rl(cfg)
    _assert_same_weights(reference, policy)
    # Nothing in an RL checkpoint (with its replay buffer) or the policy artifact needs pickle.
    final = latest_checkpoint(tmp_path)
    assert final.step == 900 and final.state["replay"]["observations"].shape == (900, 1, 6)
    save_policy(policy, tmp_path / "artifact")
    export_onnx(policy, tmp_path / "artifact" / "policy.onnx")
    assert_loads_without_pickle(final.path, monkeypatch)
    assert_loads_without_pickle(tmp_path / "artifact", monkeypatch)
