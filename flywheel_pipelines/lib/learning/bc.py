"""Behaviour cloning: regress the logged actions from the logged observations."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from flywheel_pipelines.lib.learning.checkpoint import (
    CheckpointError,
    capture_rng,
    checkpoint_lock,
    latest_checkpoint,
    restore_rng,
    save_checkpoint,
)
from flywheel_pipelines.lib.learning.config import BCConfig
from flywheel_pipelines.lib.learning.policy import Policy, PolicyConfig, residual_indices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """Observations and actions of a dataset's train and val splits."""

    obs_features: tuple[str, ...]
    obs_names: tuple[str, ...]
    action_names: tuple[str, ...]
    train_obs: np.ndarray
    train_act: np.ndarray
    val_obs: np.ndarray
    val_act: np.ndarray
    fps: int


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    val_loss: float
    val_action_mae: float
    seconds: float


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


AMP_MODES = ("auto", "bf16", "off")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device`` (None: full float32). ``auto`` is float32 on
    every device: measured, bf16 did not keep the evaluation outcome (see ``BCConfig.amp``)."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    return torch.bfloat16 if amp == "bf16" else None


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A whole float32 array onto ``device`` in one copy (pinned host memory for CUDA, so the copy
    is a single DMA); batches are then gathered on the device, with no per-sample Python loop."""
    tensor = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def run_fingerprint(data: TrainingData, config: BCConfig) -> str:
    """What a checkpoint must have been trained on and with to be resumed by this run."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    digest.update(json.dumps([data.obs_names, data.action_names]).encode())
    for array in (data.train_obs, data.train_act, data.val_obs, data.val_act):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def train_bc(
    data: TrainingData,
    config: BCConfig,
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 10,
) -> tuple[Policy, list[EpochMetrics]]:
    """Train a policy on ``data``; seeded, so the same data and config give the same weights.

    With ``checkpoint_dir``, the full training state (weights, AdamW moments, LR schedule, RNG
    states, history) is checkpointed every ``checkpoint_every`` epochs and after the last one, and
    a run finds and resumes the newest checkpoint there: on one device the resumed run ends with
    bit-identical weights to an uninterrupted one. ``on_epoch`` is called for the epochs this call
    trains (not for those restored from a checkpoint); the returned history has every epoch.
    """
    if len(data.train_obs) == 0:
        raise ValueError("no training frames: the dataset's train split is empty")
    with checkpoint_lock(checkpoint_dir):
        return _train_bc(data, config, on_epoch=on_epoch, checkpoint_dir=checkpoint_dir,
                         checkpoint_every=max(1, checkpoint_every))


def _train_bc(data, config, *, on_epoch, checkpoint_dir, checkpoint_every) -> tuple[Policy, list[EpochMetrics]]:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = pick_device(config.device)
    pconf = PolicyConfig(
        obs_features=data.obs_features, obs_names=data.obs_names, action_names=data.action_names,
        hidden=config.hidden, layers=config.layers,
        residual_indices=residual_indices(data.obs_names, data.action_names),
    )
    policy = Policy(pconf)
    obs = torch.as_tensor(data.train_obs, dtype=torch.float32)
    act = torch.as_tensor(data.train_act, dtype=torch.float32)
    policy.obs_mean.copy_(obs.mean(0))
    policy.obs_std.copy_(obs.std(0).clamp_min(1e-6))
    raw_target = act - obs[:, list(pconf.residual_indices)] if pconf.residual_indices else act
    policy.act_mean.copy_(raw_target.mean(0))
    policy.act_std.copy_(raw_target.std(0).clamp_min(1e-6))
    policy.to(device)
    amp_dtype = autocast_dtype(config.amp, device)
    obs, act = to_device(data.train_obs, device), to_device(data.train_act, device)
    target = policy.target(obs, act)
    vobs, vact = to_device(data.val_obs, device), to_device(data.val_act, device)
    opt = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.epochs))
    history: list[EpochMetrics] = []
    first_epoch = 0
    fingerprint = run_fingerprint(data, config) if checkpoint_dir is not None else ""
    ckpt = latest_checkpoint(checkpoint_dir)
    if ckpt is not None:
        state = ckpt.state
        if state.get("fingerprint") != fingerprint:
            raise CheckpointError(f"{ckpt.path} is from another dataset or config (fingerprint "
                                  f"{state.get('fingerprint')} != {fingerprint}): use another checkpoint_dir")
        policy.load_state_dict(state["policy"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["numpy_generator"]
        restore_rng(state["rng"])
        history = [EpochMetrics(**h) for h in state["history"]]
        first_epoch = state["epoch"]
        log.info("behaviour cloning resumes at epoch %d/%d from %s", first_epoch, config.epochs, ckpt.path)
    n = len(obs)
    for epoch in range(first_epoch, config.epochs):
        t0 = time.perf_counter()
        policy.train()
        order = torch.as_tensor(rng.permutation(n), device=device)
        # Summed on the device in float64 (what float(loss) * len did on the host, bit for bit),
        # so a GPU epoch synchronizes once, not once per batch.
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = policy.normalized_output(obs[idx])
            loss = torch.nn.functional.mse_loss(out.float(), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().double() * len(idx)
        total = float(total)
        sched.step()
        policy.eval()
        with torch.no_grad():
            if len(vobs):
                val_loss = float(torch.nn.functional.mse_loss(policy.normalized_output(vobs), policy.target(vobs, vact)))
                mae = float((policy(vobs) - vact).abs().mean())
            else:
                val_loss, mae = float("nan"), float("nan")
        metrics = EpochMetrics(epoch, total / n, val_loss, mae, time.perf_counter() - t0)
        history.append(metrics)
        if on_epoch:
            on_epoch(metrics)
        done = epoch + 1
        if checkpoint_dir is not None and (done % checkpoint_every == 0 or done == config.epochs):
            save_checkpoint(checkpoint_dir, done, {
                "fingerprint": fingerprint, "epoch": done, "policy": policy.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "numpy_generator": rng.bit_generator.state, "rng": capture_rng(),
                "history": [asdict(h) for h in history], "config": config.to_dict(),
            })
    return policy.cpu().eval(), history


def load_training_data(dataset_root, *, action_key: str = "action") -> TrainingData:
    """Observations (every observation.* feature, in info.json order) and actions by split."""
    from flywheel_pipelines.lib.datasets.curation import fixed_list_to_numpy
    from flywheel_pipelines.lib.datasets.lerobot.reader import read_lerobot_v3

    info, frames, _ = read_lerobot_v3(dataset_root)
    features = info["features"]
    obs_keys = tuple(k for k in features if k.startswith("observation.") and features[k]["dtype"] == "float32")
    obs = np.concatenate([fixed_list_to_numpy(frames[k]) for k in obs_keys], axis=1)
    act = fixed_list_to_numpy(frames[action_key])
    names = tuple(n for k in obs_keys for n in features[k]["names"])
    episode = frames["episode_index"].to_numpy()
    masks = {}
    for split, spec in info.get("splits", {}).items():
        lo, hi = (int(x) for x in spec.split(":"))
        masks[split] = (episode >= lo) & (episode < hi)
    if not masks:
        masks["train"] = np.ones(len(episode), bool)  # a dataset without splits is all training data
    train = masks.get("train", np.zeros(len(episode), bool))
    val = masks.get("val", np.zeros(len(episode), bool))
    return TrainingData(obs_keys, names, tuple(features[action_key]["names"]),
                        obs[train], act[train], obs[val], act[val], int(info["fps"]))
