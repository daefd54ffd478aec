"""PPO over thousands of parallel worlds, on the device: ``algo: ppo_batched``.

stable-baselines3's PPO steps a VecEnv whose interface is host numpy: every control step copies
observations to the host, the actions back, and runs Python per env. With MuJoCo Warp stepping
thousands of worlds in one CUDA-graph launch, that copy-and-loop would be the whole cost (the
batched evaluator's host bookkeeping already caps it, docs/simulation.md). So this trainer keeps
everything on the policy's device: :class:`~flywheel_pipelines.lib.sim.batched_env.BatchedReachEnv`
computes observations, rewards and resets with torch ops, and the rollout buffer, GAE and the
minibatch updates are torch tensors there. On the CPU the same code runs over threaded
``mujoco.rollout`` (what the tests exercise).

The algorithm is SB3's PPO (clipped surrogate, GAE with truncation bootstrapping, unclipped value
loss, entropy bonus, per-minibatch advantage normalization, gradient clipping, Adam) with a
state-independent log-std, separate actor and critic MLPs of the Policy's shape and orthogonal
initialization. One difference: observations are normalized by running statistics (updated from
every control step's batch of observations, stored normalized, as SB3's VecNormalize does),
because with thousands of worlds per step they settle within a few steps; the final statistics
become the Policy's ``obs_mean``/``obs_std``. The actor's mean, clipped, is then exactly
``Policy.normalized_output`` (``squash: clip``), so the artifact, its ONNX export and the
evaluation gate are the SB3 PPO's.

Resume: checkpoints (``lib/learning/checkpoint.py`` format) hold the weights, Adam's moments, the
normalizer, the action and minibatch generators, the counters and the history. The env is
rebuilt from ``(seed, timestep)`` with fresh robots at every checkpoint boundary, in an
uninterrupted run as well, so a boundary is an episode boundary and no simulator state is saved:
a resumed run on the same device and thread count retraces the uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flywheel_pipelines.lib.learning.bc import pick_device
from flywheel_pipelines.lib.learning.checkpoint import (
    CheckpointError,
    capture_rng,
    latest_checkpoint,
    restore_rng,
    save_checkpoint,
)
from flywheel_pipelines.lib.learning.policy import Policy, PolicyConfig

log = logging.getLogger(__name__)

ALGO = "ppo_batched"
# Hyperparameters a ppo_batched config may set (beside the shared keys of load_rl_config).
HYPERPARAMS = {
    "n_steps": 32, "batch_size": 8192, "n_epochs": 5, "learning_rate": 1e-3, "gamma": 0.98, "gae_lambda": 0.95,
    "clip_range": 0.2, "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5,
    "sim_backend": "auto",  # auto (warp on a CUDA device, mujoco on the CPU) | mujoco | warp
    "robots": 256,  # distinct fleet-sampled robots per env build, shared round-robin by the worlds
    "threads": 0,  # mujoco stepping threads (0: all cores)
}
POLICY_KWARGS = ("log_std_init",)


@dataclass(frozen=True)
class Hyper:
    n_steps: int
    batch_size: int
    n_epochs: int
    learning_rate: float | str
    gamma: float
    gae_lambda: float
    clip_range: float
    ent_coef: float
    vf_coef: float
    max_grad_norm: float
    sim_backend: str
    robots: int
    threads: int

    @classmethod
    def of(cls, config) -> Hyper:
        return cls(**{**HYPERPARAMS, **config.hyperparams})


def validate(path, hyperparams: dict, policy_kwargs: dict) -> None:
    """Refuse what this trainer would silently ignore (called by ``load_rl_config``)."""
    if bad := sorted(set(hyperparams) - set(HYPERPARAMS)):
        raise ValueError(f"{path}: unknown ppo_batched hyperparameters {bad}; known: {sorted(HYPERPARAMS)}")
    if bad := sorted(set(policy_kwargs) - set(POLICY_KWARGS)):
        raise ValueError(f"{path}: unknown ppo_batched policy_kwargs {bad}; known: {list(POLICY_KWARGS)}")
    backend = hyperparams.get("sim_backend", "auto")
    if backend not in ("auto", "mujoco", "warp"):
        raise ValueError(f"{path}: sim_backend must be auto, mujoco or warp, got {backend!r}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: MuJoCo Warp beside a GPU policy (physics and policy on one device), ``mujoco`` on the CPU."""
    if backend == "auto":
        return "warp" if device.type == "cuda" else "mujoco"
    if backend == "mujoco" and device.type != "cpu":
        raise ValueError("sim_backend 'mujoco' steps on the CPU: it needs device 'cpu' (or use 'warp')")
    return backend


# --- networks -------------------------------------------------------------------------------------


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> nn.Sequential:
    """``[Linear, GELU] * layers + Linear``: ``Policy.net``'s shape."""
    blocks: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    return nn.Sequential(*blocks, nn.Linear(width, outputs))


def _orthogonal(net: nn.Sequential, last_gain: float) -> None:
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        nn.init.orthogonal_(layer.weight, gain=last_gain if i == len(linears) - 1 else math.sqrt(2))
        nn.init.zeros_(layer.bias)


class ActorCritic(nn.Module):
    """Gaussian actor (mean MLP + state-independent log std) and a separate value MLP (SB3's PPO layout)."""

    def __init__(self, hidden: int, layers: int, log_std_init: float):
        super().__init__()
        self.actor = mlp(6, hidden, layers, 2)
        self.critic = mlp(6, hidden, layers, 1)
        self.log_std = nn.Parameter(torch.full((2,), float(log_std_init)))
        _orthogonal(self.actor, 0.01)
        _orthogonal(self.critic, 1.0)

    def value(self, obs_n: torch.Tensor) -> torch.Tensor:
        return self.critic(obs_n).squeeze(-1)

    def distribution(self, obs_n: torch.Tensor) -> torch.distributions.Normal:
        mean = self.actor(obs_n)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))


class RunningNorm:
    """Running mean/variance of observations (batched Welford, float64), applied in float32 as the Policy does."""

    def __init__(self, device: torch.device):
        self.mean = torch.zeros(6, dtype=torch.float64, device=device)
        self.var = torch.ones(6, dtype=torch.float64, device=device)
        self.count = torch.tensor(1e-4, dtype=torch.float64, device=device)

    def update(self, obs: torch.Tensor) -> None:
        x = obs.to(torch.float64)
        n = x.shape[0]
        mean, var = x.mean(0), x.var(0, unbiased=False)
        delta, total = mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (mean, std): what the exported Policy divides by (std floored at 1e-3, as the SB3 path)."""
        return self.mean.to(torch.float32), self.var.sqrt().clamp(min=1e-3).to(torch.float32)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        mean, std = self.stats()
        return (obs - mean) / std

    def state(self) -> dict:
        return {"mean": self.mean.cpu(), "var": self.var.cpu(), "count": self.count.cpu()}

    def load(self, state: dict) -> None:
        device = self.mean.device
        self.mean, self.var, self.count = (state[k].to(device) for k in ("mean", "var", "count"))


# --- training ---------------------------------------------------------------------------------------


def _lr(value: float | str, progress_remaining: float) -> float:
    if isinstance(value, str):  # rl_zoo3's lin_<x>, validated by load_rl_config
        return float(value[4:]) * progress_remaining
    return float(value)


class _Rollout:
    """One rollout's tensors, (n_steps, n_worlds, ...), on the device."""

    def __init__(self, n_steps: int, n: int, device: torch.device):
        def z(*shape):
            return torch.zeros((n_steps, n, *shape), dtype=torch.float32, device=device)

        self.obs, self.actions = z(6), z(2)
        self.logp, self.values, self.rewards, self.dones = z(), z(), z(), z()


class _EpisodeStats:
    """Finished episodes' sums on the device, read once per report (no per-step host sync)."""

    def __init__(self, n: int, device: torch.device):
        self.ret = torch.zeros(n, dtype=torch.float64, device=device)
        self.length = torch.zeros(n, dtype=torch.float64, device=device)
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # episodes, return, length, successes

    def add(self, out: dict) -> None:
        self.ret += out["reward"].to(torch.float64)
        self.length += 1
        done = (out["terminated"] | out["truncated"]).to(torch.float64)
        self.sums += torch.stack([done.sum(), (self.ret * done).sum(), (self.length * done).sum(),
                                  (out["terminated"].to(torch.float64)).sum()])
        self.ret *= 1 - done
        self.length *= 1 - done

    def take(self) -> tuple[int, float, float, float]:
        episodes, ret, length, success = self.sums.tolist()
        self.sums.zero_()
        if not episodes:
            return 0, float("nan"), float("nan"), float("nan")
        return int(episodes), ret / episodes, length / episodes, success / episodes


class Trainer:
    """The PPO loop; ``train_ppo_batched`` is the entry point."""

    def __init__(self, config, *, offset, scale, checkpoint_dir: Path | None, fingerprint: str,
                 on_progress: Callable | None):
        from flywheel_pipelines.lib.learning.rl import RLMetrics

        self.metrics_type = RLMetrics
        self.config, self.h = config, Hyper.of(config)
        self.device = pick_device(config.device)
        self.backend = resolve_backend(self.h.sim_backend, self.device)
        self.offset, self.scale = np.asarray(offset, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        self.checkpoint_dir, self.fingerprint, self.on_progress = checkpoint_dir, fingerprint, on_progress
        self.n = int(config.n_envs)
        self.per_update = self.n * self.h.n_steps
        if self.h.batch_size > self.per_update or self.per_update % self.h.batch_size:
            raise ValueError(f"batch_size {self.h.batch_size} must divide n_envs * n_steps = {self.per_update}")
        torch.manual_seed(config.seed)
        self.model = ActorCritic(config.hidden, config.layers,
                                 float(config.policy_kwargs.get("log_std_init", 0.0))).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=_lr(self.h.learning_rate, 1.0), eps=1e-5,
                                          **({"fused": True} if self.device.type == "cuda" else {}))
        self.norm = RunningNorm(self.device)
        self.action_gen = torch.Generator(device=self.device)
        self.action_gen.manual_seed(config.seed + 1)
        self.perm_gen = torch.Generator(device=self.device)
        self.perm_gen.manual_seed(config.seed + 2)
        self.timesteps, self.updates, self.history = 0, 0, []
        self.env = None
        self.buffer = _Rollout(self.h.n_steps, self.n, self.device)
        self.episodes = _EpisodeStats(self.n, self.device)

    # --- env ---------------------------------------------------------------------------------------

    def _build_env(self) -> None:
        """A new env, with new robots, seeded from (seed, timestep): the checkpoint boundary."""
        from flywheel_pipelines.lib.learning.rl import boundary_seed
        from flywheel_pipelines.lib.sim.batched_env import BatchedReachEnv, training_robots

        if self.env is not None:
            self.env.close()
        draw = boundary_seed(self.config.seed, self.timesteps)
        robots = training_robots(self.config.seed, min(self.h.robots, self.n), draw=draw)
        self.env = BatchedReachEnv(robots, self.n, seed=draw, device=self.device, backend=self.backend,
                                   action_offset=tuple(self.offset), action_scale=tuple(self.scale),
                                   threads=self.h.threads or None)
        self.obs = self.env.reset()
        self.episodes = _EpisodeStats(self.n, self.device)

    # --- one update ----------------------------------------------------------------------------------

    @torch.no_grad()
    def _collect(self) -> torch.Tensor:
        """Fill the buffer; returns the advantages (GAE) and leaves the returns in ``self.returns``."""
        b, h, env = self.buffer, self.h, self.env
        for t in range(h.n_steps):
            self.norm.update(self.obs)
            obs_n = self.norm(self.obs)
            dist = self.model.distribution(obs_n)
            noise = torch.randn(dist.mean.shape, generator=self.action_gen, device=self.device)
            action = dist.mean + dist.stddev * noise
            b.obs[t], b.actions[t] = obs_n, action
            b.logp[t], b.values[t] = dist.log_prob(action).sum(-1), self.model.value(obs_n)
            out = env.step(action)
            self.episodes.add(out)
            reward = out["reward"]
            # A truncated episode did not end: bootstrap it with the value of its last observation (as SB3).
            bootstrap = self.model.value(self.norm(out["terminal_obs"]))
            reward = reward + h.gamma * bootstrap * out["truncated"].to(torch.float32)
            b.rewards[t], b.dones[t] = reward, (out["terminated"] | out["truncated"]).to(torch.float32)
            self.obs = out["obs"]
        last_value = self.model.value(self.norm(self.obs))
        advantages = torch.zeros_like(b.rewards)
        gae = torch.zeros(self.n, device=self.device)
        for t in reversed(range(h.n_steps)):
            next_value = last_value if t == h.n_steps - 1 else b.values[t + 1]
            alive = 1.0 - b.dones[t]
            delta = b.rewards[t] + h.gamma * next_value * alive - b.values[t]
            gae = delta + h.gamma * h.gae_lambda * alive * gae
            advantages[t] = gae
        self.returns = advantages + b.values
        return advantages

    def _update(self, advantages: torch.Tensor) -> dict[str, float]:
        b, h = self.buffer, self.h
        obs, actions = b.obs.reshape(-1, 6), b.actions.reshape(-1, 2)
        old_logp, adv, returns = b.logp.reshape(-1), advantages.reshape(-1), self.returns.reshape(-1)
        lr = _lr(h.learning_rate, 1.0 - self.timesteps / max(self.config.n_timesteps, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums = torch.zeros(5, device=self.device)
        count = 0
        for _ in range(h.n_epochs):
            perm = torch.randperm(self.per_update, generator=self.perm_gen, device=self.device)
            for start in range(0, self.per_update, h.batch_size):
                idx = perm[start:start + h.batch_size]
                dist = self.model.distribution(obs[idx])
                logp = dist.log_prob(actions[idx]).sum(-1)
                a = adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                ratio = torch.exp(logp - old_logp[idx])
                pg_loss = -torch.min(a * ratio, a * torch.clamp(ratio, 1 - h.clip_range, 1 + h.clip_range)).mean()
                value_loss = ((self.model.value(obs[idx]) - returns[idx]) ** 2).mean()
                entropy = dist.entropy().sum(-1).mean()
                loss = pg_loss + h.vf_coef * value_loss - h.ent_coef * entropy
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), h.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    log_ratio = logp - old_logp[idx]
                    kl = ((ratio - 1) - log_ratio).mean()
                    clipped = ((ratio - 1).abs() > h.clip_range).float().mean()
                    sums += torch.stack([pg_loss.detach(), value_loss.detach(), entropy.detach(), kl, clipped])
                count += 1
        pg, value, entropy, kl, clip = (sums / count).tolist()  # the update's one host sync for the losses
        return {"policy_gradient_loss": pg, "value_loss": value, "entropy_loss": -entropy, "approx_kl": kl,
                "clip_fraction": clip, "std": float(self.model.log_std.detach().exp().mean()), "learning_rate": lr}

    # --- checkpoints ------------------------------------------------------------------------------

    def _state(self) -> dict:
        return {"fingerprint": self.fingerprint, "algo": ALGO, "config": self.config.to_dict(),
                "timesteps": self.timesteps, "updates": self.updates, "history": self.history,
                "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
                "optimizer": _on_cpu(self.optimizer.state_dict()), "norm": self.norm.state(),
                "action_gen": self.action_gen.get_state(), "perm_gen": self.perm_gen.get_state(),
                "rng": capture_rng()}

    def _restore(self, state: dict) -> None:
        self.timesteps, self.updates, self.history = state["timesteps"], state["updates"], list(state["history"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.norm.load(state["norm"])
        self.action_gen.set_state(state["action_gen"])
        self.perm_gen.set_state(state["perm_gen"])
        restore_rng(state["rng"])

    def _save(self) -> None:
        if self.checkpoint_dir is not None:
            save_checkpoint(self.checkpoint_dir, self.timesteps, self._state())

    # --- the loop ---------------------------------------------------------------------------------

    def run(self) -> list[dict]:
        ckpt = latest_checkpoint(self.checkpoint_dir)
        if ckpt is not None:
            if ckpt.state.get("fingerprint") != self.fingerprint:
                raise CheckpointError(f"{ckpt.path} is from another config: use another checkpoint_dir")
            self._restore(ckpt.state)
            log.info("%s resumes at timestep %d/%d from %s", ALGO, self.timesteps, self.config.n_timesteps, ckpt.path)
        freq = max(int(self.config.checkpoint_freq), 1)
        next_boundary = self.timesteps  # a start or a resume is a boundary: build the env there
        saved_at = self.timesteps if ckpt is not None else None
        log.info("%s: %d worlds, %s physics, policy on %s", ALGO, self.n, self.backend, self.device)
        try:
            while self.timesteps < self.config.n_timesteps:
                if self.timesteps >= next_boundary:
                    if self.timesteps != saved_at and self.timesteps > 0:
                        self._save()
                    self._build_env()
                    next_boundary = (self.timesteps // freq + 1) * freq
                started = time.perf_counter()
                advantages = self._collect()
                losses = self._update(advantages)
                self.timesteps += self.per_update
                self.updates += 1
                self._report(losses, time.perf_counter() - started)
            if self.timesteps != saved_at:
                self._save()
        finally:
            if self.env is not None:
                self.env.close()
        return self.history

    def _report(self, losses: dict, seconds: float) -> None:
        episodes, ret, length, success = self.episodes.take()
        metrics = self.metrics_type(iteration=self.updates, timesteps=self.timesteps, episodes=episodes,
                                    ep_return_mean=ret, ep_length_mean=length, success_rate=success,
                                    timesteps_per_s=self.per_update / max(seconds, 1e-9), losses=losses)
        self.history.append(metrics.to_dict())
        if self.on_progress is not None:
            self.on_progress(metrics)

    def policy(self, interface) -> Policy:
        """The actor's clipped mean as a :class:`Policy` (absolute joint targets), on the CPU."""
        policy = Policy(PolicyConfig(
            obs_features=interface.obs_features, obs_names=interface.obs_names, action_names=interface.action_names,
            hidden=self.config.hidden, layers=self.config.layers, residual_indices=(0, 1), squash="clip",
        ))
        mean, std = self.norm.stats()
        with torch.no_grad():
            for dst, src in zip([m for m in policy.net if isinstance(m, nn.Linear)],
                                [m for m in self.model.actor if isinstance(m, nn.Linear)], strict=True):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
            policy.obs_mean.copy_(mean)
            policy.obs_std.copy_(std)
            policy.act_mean.copy_(torch.as_tensor(self.offset, dtype=torch.float32))
            policy.act_std.copy_(torch.as_tensor(self.scale, dtype=torch.float32))
        return policy.eval()


def _on_cpu(tree):
    """A state tree with its tensors on the CPU (checkpoints are written from there)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _on_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_on_cpu(v) for v in tree)
    return tree


def train_ppo_batched(config, *, interface, offset, scale, checkpoint_dir: Path | None, fingerprint: str,
                      on_progress: Callable | None = None) -> tuple[Policy, list[dict]]:
    """Train; returns the Policy (on the CPU) and every report as a dict (``RLMetrics`` fields)."""
    trainer = Trainer(config, offset=offset, scale=scale, checkpoint_dir=checkpoint_dir, fingerprint=fingerprint,
                      on_progress=on_progress)
    history = trainer.run()
    return trainer.policy(interface), history
