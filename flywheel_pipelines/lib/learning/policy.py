"""The policy artifact every trainer produces: an MLP with its normalization baked in.

Stored as ``model.safetensors`` (weights and normalization buffers, no pickle) plus
``config.json`` (architecture and feature names), so it can be loaded from an untrusted
location and exported to ONNX without the training code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
SQUASHES = ("", "clip", "tanh")


@dataclass(frozen=True)
class PolicyConfig:
    """Architecture and interface of a policy (what goes in, what comes out)."""

    obs_features: tuple[str, ...]  # feature keys concatenated into the input, in order
    obs_names: tuple[str, ...]
    action_names: tuple[str, ...]
    hidden: int = 128
    layers: int = 2
    # Action dims predicted as a residual on these observation dims (joint targets relative to
    # the measured joint positions); empty means absolute actions.
    residual_indices: tuple[int, ...] = ()
    # Bound on the network's normalized output before it is scaled: "" (none; behaviour cloning),
    # "clip" to [-1, 1] (what an RL env does to a Gaussian policy's mean, e.g. PPO) or "tanh"
    # (a squashed Gaussian, e.g. SAC). Left out of to_dict() when empty, so the config.json and
    # the version of every policy trained before the option existed stay the same.
    squash: str = ""

    def __post_init__(self):
        if self.squash not in SQUASHES:
            raise ValueError(f"squash must be one of {SQUASHES}, got {self.squash!r}")

    @property
    def obs_dim(self) -> int:
        return len(self.obs_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if not d["squash"]:
            del d["squash"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PolicyConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()})


def residual_indices(obs_names: tuple[str, ...], action_names: tuple[str, ...]) -> tuple[int, ...]:
    """Match action ``<joint>.target`` to observation ``<joint>.pos`` (all or nothing)."""
    out = []
    for name in action_names:
        joint = name.split(".")[0]
        match = [i for i, o in enumerate(obs_names) if o == f"{joint}.pos"]
        if not match:
            return ()
        out.append(match[0])
    return tuple(out)


class Policy(nn.Module):
    """obs (B, obs_dim) float32 -> action (B, action_dim) float32."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        dims = [config.obs_dim] + [config.hidden] * config.layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.GELU()]
        blocks.append(nn.Linear(dims[-1], config.action_dim))
        self.net = nn.Sequential(*blocks)
        self.register_buffer("obs_mean", torch.zeros(config.obs_dim))
        self.register_buffer("obs_std", torch.ones(config.obs_dim))
        self.register_buffer("act_mean", torch.zeros(config.action_dim))
        self.register_buffer("act_std", torch.ones(config.action_dim))
        self.register_buffer("residual", torch.tensor(list(config.residual_indices), dtype=torch.long))

    def normalized_output(self, obs: torch.Tensor) -> torch.Tensor:
        """The network's output in normalized action units (bounded when the config says so)."""
        out = self.net((obs - self.obs_mean) / self.obs_std)
        if self.config.squash == "clip":
            out = out.clamp(-1.0, 1.0)
        elif self.config.squash == "tanh":
            out = torch.tanh(out)
        return out

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.normalized_output(obs) * self.act_std + self.act_mean
        if self.config.residual_indices:
            out = out + obs.index_select(1, self.residual)
        return out

    def target(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """What the network regresses: the normalized (residual) action."""
        if self.config.residual_indices:
            action = action - obs.index_select(1, self.residual)
        return (action - self.act_mean) / self.act_std


def save_policy(policy: Policy, out_dir: Path, *, extra: dict | None = None, identity: dict | None = None) -> str:
    """Write weights + config; returns the policy's version.

    The version hashes the weights, the interface and ``identity`` (what it was trained from
    and how), not bookkeeping in ``extra`` such as the MLflow run id, so retraining the same
    data with the same seed yields the same version.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(tensors, str(out_dir / WEIGHTS), metadata={"format": "flywheel-policy-v1"})
    config = {"policy": policy.config.to_dict(), **(extra or {})}
    (out_dir / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    digest = hashlib.sha256((out_dir / WEIGHTS).read_bytes())
    digest.update(json.dumps({"policy": policy.config.to_dict(), "identity": identity or {}}, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def load_policy(policy_dir: Path) -> tuple[Policy, dict]:
    """Load a policy without unpickling anything. Returns (policy in eval mode, config.json)."""
    config = json.loads((policy_dir / CONFIG).read_text())
    policy = Policy(PolicyConfig.from_dict(config["policy"]))
    policy.load_state_dict(load_file(str(policy_dir / WEIGHTS)))
    return policy.eval(), config
