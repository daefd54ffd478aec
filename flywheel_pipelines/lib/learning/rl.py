"""Reinforcement learning on the reach task: stable-baselines3 PPO and SAC through ``ReachEnv``, and
PPO over thousands of batched worlds on the device (``algo: ppo_batched``, :mod:`ppo_batched`).

The trainer produces the same artifact as behaviour cloning, a :class:`Policy`, so evaluation and
release cannot tell the two apart. That works because the SB3 actor is built to the Policy's
shape and its deterministic action maps onto ``Policy.forward`` exactly:

- the actor's mean network is ``[Linear, GELU] * layers + Linear``, the same as ``Policy.net``;
- observation normalization happens *inside* the SB3 networks (:class:`NormalizeObs`, a features
  extractor with fixed buffers), so SB3 sees the raw observation just as the Policy does, and the
  buffers are copied into ``obs_mean``/``obs_std``. Fixed rather than running statistics: running
  ones would change the function under the optimizer and need a separate (pickled, in SB3's
  VecNormalize) state; fixed ones come from the BC policy when fine-tuning, else from seeded
  random-action rollouts of the env;
- the env's action mapping ``target = obs_q + offset + scale * clip(a, -1, 1)`` is the Policy's
  residual with ``act_mean = offset``, ``act_std = scale`` and its normalized output bounded the
  way SB3 bounds the action: clipped for PPO (a Gaussian whose mean the env clips), tanh for SAC
  (a squashed Gaussian).

Hyperparameters are versioned YAML files in ``configs/`` (rl_zoo3 layout, parsed as data, never
evaluated); the file's sha256 goes into the policy's identity. Checkpoints go through
:mod:`checkpoint` (safetensors + JSON + npz, no pickle); SB3's own ``save()`` pickles and is not used.

Resume: at every checkpoint boundary, in an uninterrupted run as well as a resumed one, the envs
are re-seeded from (seed, timestep) and reset, so the boundary is an episode boundary and no
MuJoCo state has to be checkpointed. With the weights, optimizer moments, counters, replay buffer
and every RNG (Python, NumPy, torch, the action space's) restored, a resumed run on the same
device retraces the uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

from flywheel_pipelines.lib.episodes.embodiment import load_embodiment
from flywheel_pipelines.lib.learning.bc import pick_device
from flywheel_pipelines.lib.learning.checkpoint import (
    CheckpointError,
    capture_rng,
    checkpoint_lock,
    latest_checkpoint,
    restore_rng,
    save_checkpoint,
)
from flywheel_pipelines.lib.learning.policy import Policy, PolicyConfig, residual_indices
from flywheel_pipelines.lib.sim.gym_env import ReachEnv
from flywheel_pipelines.lib.sim.robot import sample_profile, sample_task
from flywheel_pipelines.lib.sim.scenario import Scenario

log = logging.getLogger(__name__)

ALGOS = ("ppo", "sac", "ppo_batched")  # ppo_batched: on-device PPO over batched worlds (ppo_batched.py)
ENV_ID = "FlywheelReach-v0"  # the rl_zoo3-style top-level key of a config file
CONFIG_DIR = "configs"
SQUASH = {"ppo": "clip", "sac": "tanh", "ppo_batched": "clip"}
SAC_REPORT_EVERY = 1000  # timesteps between progress reports (PPO reports every rollout)
# Keys of a config block that are ours, not SB3 constructor arguments.
_OWN_KEYS = ("algo", "policy", "n_timesteps", "n_envs", "policy_kwargs", "env_kwargs", "checkpoint_freq",
             "obs_norm_episodes", "bc_init_action_scale", "torch_threads")
_RESERVED = ("seed", "device", "env", "verbose", "tensorboard_log", "_init_setup_model")
_SCHEDULED = ("learning_rate", "clip_range", "clip_range_vf")


@dataclass(frozen=True)
class RLConfig:
    """One RL run: the resolved content of a config file plus the run's seed and device."""

    algo: str
    file: str  # the config's file name (package configs) or path
    sha256: str  # first 12 hex digits of the sha256 of the file's bytes
    n_timesteps: int
    n_envs: int
    hidden: int
    layers: int
    hyperparams: dict = field(default_factory=dict)  # SB3 constructor arguments, as in the file
    policy_kwargs: dict = field(default_factory=dict)  # besides net_arch/activation_fn, e.g. log_std_init
    action_scale: tuple[float, float] = (0.2, 0.2)  # rad per control period at |a| = 1 (without BC init)
    checkpoint_freq: int = 50_000  # timesteps; also where the envs are re-seeded (see module doc)
    obs_norm_episodes: int = 32
    bc_init_action_scale: float = 3.0  # with BC init, |a| = 1 is this many BC action stds
    # CPU threads for torch while training (0: torch's default). Small MLPs gain nothing from a
    # second thread and lose a lot when the cores are shared (OpenMP barriers wait for a
    # descheduled thread); part of the versioned config because it can change float reductions.
    torch_threads: int = 0
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists, a plain JSON copy


def config_path(name: str) -> Path:
    """A package config by file name (``ppo_reach.yaml``), or any path to a YAML file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and (candidate.is_absolute() or candidate.parent != Path(".")):
        return candidate
    return Path(str(resources.files("flywheel_pipelines.lib.learning").joinpath(CONFIG_DIR, name)))


def default_config_name(algo: str) -> str:
    return f"{algo}_reach.yaml"


def load_rl_config(name: str, *, timesteps: int | None = None, seed: int = 0, device: str = "auto") -> RLConfig:
    """Parse and validate a config file; ``timesteps`` overrides its ``n_timesteps``."""
    path = config_path(name)
    raw = path.read_bytes()
    data = yaml.safe_load(raw)
    if not isinstance(data, dict) or set(data) != {ENV_ID}:
        raise ValueError(f"{path}: expected one top-level block {ENV_ID!r} (rl_zoo3 layout), got {list(data or {})}")
    block = dict(data[ENV_ID])
    algo = block.get("algo")
    if algo not in ALGOS:
        raise ValueError(f"{path}: algo must be one of {ALGOS}, got {algo!r}")
    if block.get("policy", "MlpPolicy") != "MlpPolicy":
        raise ValueError(f"{path}: only MlpPolicy maps onto the policy artifact")
    if bad := sorted(set(block) & set(_RESERVED)):
        raise ValueError(f"{path}: {bad} are set by the trainer, not the config")
    pkw = dict(block.get("policy_kwargs") or {})
    arch = list(pkw.pop("net_arch", [128, 128]))
    if not arch or len(set(arch)) != 1:
        raise ValueError(f"{path}: net_arch must be equal widths ([hidden] * layers) to map onto Policy, got {arch}")
    activation = pkw.pop("activation_fn", "gelu")
    if str(activation).lower() != "gelu":
        raise ValueError(f"{path}: activation_fn must be gelu (the Policy's), got {activation!r}")
    env_kwargs = dict(block.get("env_kwargs") or {})
    if bad := sorted(set(env_kwargs) - {"action_scale"}):
        raise ValueError(f"{path}: unknown env_kwargs {bad}")
    hyper = {k: v for k, v in block.items() if k not in _OWN_KEYS}
    if algo == "ppo_batched":
        from flywheel_pipelines.lib.learning import ppo_batched

        ppo_batched.validate(path, hyper, pkw)
    for key in _SCHEDULED:
        if isinstance(hyper.get(key), str):
            _schedule(hyper[key])  # validates "lin_<float>"
    n_timesteps = int(timesteps if timesteps else block["n_timesteps"])
    return RLConfig(
        algo=algo, file=name, sha256=hashlib.sha256(raw).hexdigest()[:12], n_timesteps=n_timesteps,
        n_envs=int(block.get("n_envs", 1)), hidden=int(arch[0]), layers=len(arch), hyperparams=hyper,
        policy_kwargs=pkw, action_scale=tuple(float(x) for x in env_kwargs.get("action_scale", (0.2, 0.2))),
        checkpoint_freq=int(block.get("checkpoint_freq", 50_000)),
        obs_norm_episodes=int(block.get("obs_norm_episodes", 32)),
        bc_init_action_scale=float(block.get("bc_init_action_scale", 3.0)),
        torch_threads=int(block.get("torch_threads", 0)), seed=seed, device=device,
    )


def _schedule(value: Any) -> Any:
    """rl_zoo3's ``lin_<x>``: linear decay from x to 0 over training; anything else as is."""
    if isinstance(value, str):
        if not value.startswith("lin_"):
            raise ValueError(f"unknown schedule {value!r} (only lin_<float>)")
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


# --- the policy interface and the environment ---------------------------------------------------


@dataclass(frozen=True)
class Interface:
    """What the policy reads and writes: the same features and names a BC policy of the pipeline has."""

    obs_features: tuple[str, ...]
    obs_names: tuple[str, ...]
    action_names: tuple[str, ...]


def policy_interface(embodiment: str = "flywheel_arm2") -> Interface:
    """The observation/action names of the embodiment, in the order ``ReachEnv`` observes them."""
    emb = load_embodiment(embodiment)
    obs = [f for f in emb.features if f.key.startswith("observation.")]
    interface = Interface(tuple(f.key for f in obs), tuple(n for f in obs for n in f.names),
                          tuple(emb.feature("action").names))
    # ReachEnv's observation is ArmSim.observation(): [q(2), dq(2), goal(2)].
    expected = ("shoulder.pos", "elbow.pos", "shoulder.vel", "elbow.vel", "goal.x", "goal.y")
    if interface.obs_names != expected or residual_indices(interface.obs_names, interface.action_names) != (0, 1):
        raise ValueError(f"embodiment {embodiment} does not match ReachEnv's observation {expected}")
    return interface


def training_scenarios(seed: int) -> Callable[[np.random.Generator], Scenario]:
    """A scenario factory for training: a fresh fault-free robot and task per episode.

    Drawn from the env's own generator, so ``reset(seed=...)`` makes the stream reproducible; robot
    ids are ``train<k>``, so training robots are not the evaluation's.
    """

    def draw(rng: np.random.Generator) -> Scenario:
        k = int(rng.integers(1 << 31))
        q0, goal = sample_task(rng)
        return Scenario(scenario_id=f"train/{k}", group="randomized",
                        profile=sample_profile(f"train{k}", seed=seed, faults=False),
                        q0=(float(q0[0]), float(q0[1])), goal=(float(goal[0]), float(goal[1])),
                        seed=int(rng.integers(1 << 31)))

    return draw


def make_env(config: RLConfig, offset, scale) -> ReachEnv:
    return ReachEnv(training_scenarios(config.seed), action_offset=tuple(offset), action_scale=tuple(scale))


def _make_vec_env(config: RLConfig, offset, scale) -> DummyVecEnv:
    # DummyVecEnv: the env steps in tens of microseconds; subprocesses would cost more than they save
    # on a few cores (and the seeding/reset protocol below is the same either way).
    return DummyVecEnv([lambda: Monitor(make_env(config, offset, scale)) for _ in range(config.n_envs)])


def rollout_obs_stats(config: RLConfig, offset, scale) -> tuple[np.ndarray, np.ndarray]:
    """Observation mean/std from seeded uniform-random-action episodes (the fixed normalization)."""
    env = make_env(config, offset, scale)
    rng = np.random.default_rng([config.seed, 0x0B5])
    rows = []
    obs, _ = env.reset(seed=int(rng.integers(1 << 31)))
    for _ in range(config.obs_norm_episodes):
        done = False
        while not done:
            rows.append(obs)
            obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
            done = terminated or truncated
        obs, _ = env.reset()
    data = np.asarray(rows, dtype=np.float64)
    return data.mean(0).astype(np.float32), np.maximum(data.std(0), 1e-3).astype(np.float32)


# --- SB3 model <-> Policy -------------------------------------------------------------------------


class NormalizeObs(BaseFeaturesExtractor):
    """(obs - mean) / std with fixed buffers: the Policy's input normalization, inside SB3."""

    def __init__(self, observation_space, obs_mean: list[float], obs_std: list[float]):
        super().__init__(observation_space, features_dim=len(obs_mean))
        self.register_buffer("obs_mean", torch.tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.tensor(obs_std, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std


def build_model(config: RLConfig, env, obs_mean, obs_std) -> PPO | SAC:
    """A seeded SB3 PPO or SAC whose actor has the Policy's shape."""
    policy_kwargs = {
        "net_arch": [config.hidden] * config.layers, "activation_fn": nn.GELU,
        "features_extractor_class": NormalizeObs,
        "features_extractor_kwargs": {"obs_mean": [float(x) for x in obs_mean], "obs_std": [float(x) for x in obs_std]},
        **config.policy_kwargs,
    }
    hyper = {k: _schedule(v) if k in _SCHEDULED else v for k, v in config.hyperparams.items()}
    cls = PPO if config.algo == "ppo" else SAC
    model = cls("MlpPolicy", env, policy_kwargs=policy_kwargs, seed=config.seed,
                device=pick_device(config.device), verbose=0, **hyper)
    model.set_logger(Logger(folder=None, output_formats=[]))  # metrics go to on_progress, nothing to disk
    return model


def _actor_linears(model, algo: str) -> list[nn.Linear]:
    if algo == "ppo":
        hidden = [m for m in model.policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
        return [*hidden, model.policy.action_net]
    return [*(m for m in model.actor.latent_pi if isinstance(m, nn.Linear)), model.actor.mu]


def to_policy(model, config: RLConfig, interface: Interface, offset, scale) -> Policy:
    """The SB3 actor's deterministic action as a :class:`Policy` (absolute joint targets)."""
    extractor = model.policy.features_extractor if config.algo == "ppo" else model.actor.features_extractor
    policy = Policy(PolicyConfig(
        obs_features=interface.obs_features, obs_names=interface.obs_names, action_names=interface.action_names,
        hidden=config.hidden, layers=config.layers, residual_indices=(0, 1), squash=SQUASH[config.algo],
    ))
    with torch.no_grad():
        for dst, src in zip([m for m in policy.net if isinstance(m, nn.Linear)], _actor_linears(model, config.algo),
                            strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        policy.obs_mean.copy_(extractor.obs_mean)
        policy.obs_std.copy_(extractor.obs_std)
        policy.act_mean.copy_(torch.as_tensor(np.asarray(offset), dtype=torch.float32))
        policy.act_std.copy_(torch.as_tensor(np.asarray(scale), dtype=torch.float32))
    return policy.eval()


def bc_action_mapping(bc: Policy, config: RLConfig) -> tuple[np.ndarray, np.ndarray]:
    """Env action offset/scale for fine-tuning ``bc``: centred on its mean, |a| = 1 at k of its stds."""
    mean, std = (t.detach().cpu().numpy().astype(np.float64) for t in (bc.act_mean, bc.act_std))
    return mean, std * config.bc_init_action_scale


def init_from_bc(model, config: RLConfig, bc: Policy) -> None:
    """Copy the BC network into the actor, the output layer divided by k (see bc_action_mapping).

    Then clip(net/k) * k * std + mean = the BC action wherever |net| <= k, so PPO's deterministic
    action at step 0 equals the BC policy's. SAC squashes with tanh: it acts k * tanh(net / k)
    instead of net, the same to within |net|^3 / (3 k^2) standard deviations.
    """
    k = config.bc_init_action_scale
    linears = _actor_linears(model, config.algo)
    src = [m for m in bc.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, (dst, s) in enumerate(zip(linears, src, strict=True)):
            last = i == len(src) - 1
            dst.weight.copy_(s.weight / k if last else s.weight)
            dst.bias.copy_(s.bias / k if last else s.bias)


# --- training ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RLMetrics:
    """One progress report: a PPO rollout+update, or SAC_REPORT_EVERY SAC timesteps."""

    iteration: int
    timesteps: int
    episodes: int  # episodes finished since the previous report
    ep_return_mean: float
    ep_length_mean: float
    success_rate: float
    timesteps_per_s: float
    losses: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def boundary_seed(seed: int, timestep: int) -> int:
    return int(np.random.SeedSequence([seed, timestep]).generate_state(1)[0])


def run_fingerprint(config: RLConfig, bc: Policy | None) -> str:
    """What a checkpoint must have been trained with to be resumed by this run."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    if bc is not None:
        for key, value in sorted(bc.state_dict().items()):
            digest.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_rl(
    config: RLConfig,
    *,
    bc_init: Policy | None = None,
    checkpoint_dir: Path | None = None,
    on_progress: Callable[[RLMetrics], None] | None = None,
) -> tuple[Policy, list[RLMetrics]]:
    """Train PPO or SAC on the reach task; returns the policy artifact and every progress report.

    ``bc_init`` fine-tunes a behaviour-cloning policy (its architecture, observation normalization
    and action scale replace the config's). With ``checkpoint_dir``, the newest checkpoint there is
    resumed and a new one is written every ``config.checkpoint_freq`` timesteps and at the end;
    ``on_progress`` sees only the reports of this call, the returned history has all of them.
    """
    threads = torch.get_num_threads()
    try:
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        with checkpoint_lock(checkpoint_dir):
            return _train(config, bc_init, checkpoint_dir, on_progress)
    finally:
        torch.set_num_threads(threads)


def resolve_config(config: RLConfig, bc: Policy | None) -> RLConfig:
    """The config a run actually uses: with BC init, the BC network's width and depth."""
    if bc is None:
        return config
    return replace(config, hidden=bc.config.hidden, layers=bc.config.layers)


def training_record(config: RLConfig, *, bc_init: dict | None = None) -> dict:
    """How an RL policy was trained, for its config.json and its identity (hence its version):
    the resolved config with its file name and sha256, and the BC run it was initialised from."""
    return {"trainer": config.algo, "rl": config.to_dict(), "bc_init": bc_init}


def _train(config, bc, checkpoint_dir, on_progress):
    interface = policy_interface()
    if bc is not None:
        got = Interface(bc.config.obs_features, bc.config.obs_names, bc.config.action_names)
        if got != interface or bc.config.residual_indices != (0, 1) or bc.config.squash:
            raise ValueError(f"bc_init policy's interface {got} does not match the env's {interface}")
    config = resolve_config(config, bc)
    offset, scale = bc_action_mapping(bc, config) if bc is not None else (np.zeros(2), np.asarray(config.action_scale))
    fingerprint = run_fingerprint(config, bc)
    if config.algo == "ppo_batched":
        if bc is not None:
            raise ValueError("ppo_batched does not fine-tune a BC policy (bc_init); use ppo or sac for that")
        from flywheel_pipelines.lib.learning.ppo_batched import train_ppo_batched

        policy, history = train_ppo_batched(config, interface=interface, offset=offset, scale=scale,
                                            checkpoint_dir=checkpoint_dir, fingerprint=fingerprint,
                                            on_progress=on_progress)
        return policy.cpu(), [RLMetrics(**h) for h in history]
    ckpt = latest_checkpoint(checkpoint_dir)
    if ckpt is not None and ckpt.state.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{ckpt.path} is from another config or BC policy: use another checkpoint_dir")
    if ckpt is not None:
        obs_mean, obs_std = np.asarray(ckpt.state["obs_mean"]), np.asarray(ckpt.state["obs_std"])
    elif bc is not None:
        obs_mean, obs_std = bc.obs_mean.detach().cpu().numpy(), bc.obs_std.detach().cpu().numpy()
    else:
        obs_mean, obs_std = rollout_obs_stats(config, offset, scale)
    env = _make_vec_env(config, offset, scale)
    try:
        model = build_model(config, env, obs_mean, obs_std)
        if ckpt is not None:
            _restore(model, config.algo, ckpt.state)
            log.info("%s resumes at timestep %d/%d from %s", config.algo, model.num_timesteps, config.n_timesteps, ckpt.path)
        elif bc is not None:
            init_from_bc(model, config, bc)
        driver = _Driver(config=config, checkpoint_dir=checkpoint_dir, on_progress=on_progress,
                         extra={"fingerprint": fingerprint, "obs_mean": [float(x) for x in obs_mean],
                                "obs_std": [float(x) for x in obs_std]},
                         restored=ckpt.state["driver"] if ckpt is not None else None)
        remaining = config.n_timesteps - model.num_timesteps
        if remaining > 0:
            model.learn(total_timesteps=remaining, callback=driver, reset_num_timesteps=False, log_interval=None)
        policy = to_policy(model, config, interface, offset, scale)
        return policy.cpu(), [RLMetrics(**h) for h in driver.history]
    finally:
        env.close()


def _optimizers(model, algo: str) -> dict[str, torch.optim.Optimizer]:
    if algo == "ppo":
        return {"policy": model.policy.optimizer}
    opts = {"actor": model.actor.optimizer, "critic": model.critic.optimizer}
    if model.ent_coef_optimizer is not None:
        opts["ent_coef"] = model.ent_coef_optimizer
    return opts


def _model_state(model, algo: str) -> dict:
    state = {
        "num_timesteps": model.num_timesteps, "n_updates": model._n_updates, "episode_num": model._episode_num,
        "policy": model.policy.state_dict(),
        "optimizers": {k: opt.state_dict() for k, opt in _optimizers(model, algo).items()},
        "rng": capture_rng(), "action_space_rng": model.action_space.np_random.bit_generator.state,
    }
    if algo == "sac":
        if model.log_ent_coef is not None:
            state["log_ent_coef"] = model.log_ent_coef
        buf = model.replay_buffer
        n = buf.buffer_size if buf.full else buf.pos
        state["replay"] = {"pos": buf.pos, "full": buf.full, **{
            k: getattr(buf, k)[:n] for k in ("observations", "next_observations", "actions", "rewards", "dones",
                                              "timeouts")}}
    return state


def _restore(model, algo: str, state: dict) -> None:
    model.num_timesteps = state["num_timesteps"]
    model._n_updates = state["n_updates"]
    model._episode_num = state["episode_num"]
    model.policy.load_state_dict(state["policy"])
    for key, opt in _optimizers(model, algo).items():
        opt.load_state_dict(state["optimizers"][key])
    if algo == "sac":
        if "log_ent_coef" in state:
            with torch.no_grad():
                model.log_ent_coef.copy_(state["log_ent_coef"])
        buf, saved = model.replay_buffer, state["replay"]
        for key in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
            getattr(buf, key)[: len(saved[key])] = saved[key]
        buf.pos, buf.full = saved["pos"], saved["full"]
    restore_rng(state["rng"])
    model.action_space.np_random.bit_generator.state = state["action_space_rng"]


class _Driver(BaseCallback):
    """Reports progress, writes checkpoints and re-seeds the envs at checkpoint boundaries.

    Runs at the start of every rollout, i.e. after the previous update (``_on_rollout_start``)
    and at the end of training; SB3 reads ``_last_obs`` only after that hook.
    """

    def __init__(self, *, config: RLConfig, checkpoint_dir, on_progress, extra: dict, restored: dict | None):
        super().__init__(verbose=0)
        self.config = config
        self.checkpoint_dir = checkpoint_dir
        self.on_progress = on_progress
        self.extra = extra
        self.report_every = (config.hyperparams.get("n_steps", 2048) * config.n_envs if config.algo == "ppo"
                             else SAC_REPORT_EVERY)
        r = restored or {"history": [], "last_report": 0, "episodes": [], "next_boundary": 0}
        self.history: list[dict] = list(r["history"])
        self.last_report: int = r["last_report"]
        self.episodes: list[list] = [list(e) for e in r["episodes"]]  # [return, length, success] since last report
        self.next_boundary: int = r["next_boundary"]
        self.resumed_at: int | None = r.get("saved_at")
        self.clock = (time.perf_counter(), None)

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
            if done and "episode" in info:
                self.episodes.append([float(info["episode"]["r"]), int(info["episode"]["l"]),
                                      bool(info.get("is_success", False))])
        return True

    def _on_rollout_start(self) -> None:
        t = self.model.num_timesteps
        if self.clock[1] is None:
            self.clock = (time.perf_counter(), t)
        if t >= self.last_report + self.report_every:
            self._report(t)
        if t >= self.next_boundary:
            if t != self.resumed_at and t > 0:
                self._save(t)
            self.next_boundary = (t // self.config.checkpoint_freq + 1) * self.config.checkpoint_freq
            env = self.model.get_env()
            env.seed(boundary_seed(self.config.seed, t))
            self.model._last_obs = env.reset()
            self.model._last_episode_starts = np.ones(env.num_envs, dtype=bool)

    def _on_training_end(self) -> None:
        t = self.model.num_timesteps
        if t > self.last_report:
            self._report(t)
        if t != self.resumed_at:
            self._save(t)

    def _report(self, t: int) -> None:
        eps = np.asarray(self.episodes, dtype=np.float64).reshape(-1, 3)
        start_time, start_t = self.clock
        now = time.perf_counter()
        losses = {k.split("/", 1)[1]: float(v) for k, v in self.model.logger.name_to_value.items()
                  if k.startswith("train/")}
        metrics = RLMetrics(
            iteration=len(self.history) + 1, timesteps=t, episodes=len(eps),
            ep_return_mean=float(eps[:, 0].mean()) if len(eps) else float("nan"),
            ep_length_mean=float(eps[:, 1].mean()) if len(eps) else float("nan"),
            success_rate=float(eps[:, 2].mean()) if len(eps) else float("nan"),
            timesteps_per_s=(t - start_t) / max(now - start_time, 1e-9), losses=losses,
        )
        self.history.append(metrics.to_dict())
        self.last_report, self.episodes, self.clock = t, [], (now, t)
        if self.on_progress is not None:
            self.on_progress(metrics)

    def _save(self, t: int) -> None:
        if self.checkpoint_dir is None:
            return
        driver = {"history": self.history, "last_report": self.last_report, "episodes": self.episodes,
                  "next_boundary": t, "saved_at": t}
        save_checkpoint(self.checkpoint_dir, t, {
            **self.extra, "algo": self.config.algo, "config": self.config.to_dict(),
            **_model_state(self.model, self.config.algo), "driver": driver,
        })
