"""The policies an evaluation runs, all with the batched interface: (N, 6) float32 -> (N, 2).

Observations are ``[q(2), dq(2), goal(2)]`` as the robot reports them; actions are absolute joint
targets in the sensor frame. Candidates and the production policy run as ONNX through ONNX
Runtime, exactly what a release ships.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from flywheel_pipelines.lib.sim.expert import DLS_LAMBDA, MAX_STEP_RAD
from flywheel_pipelines.lib.sim.robot import LINK_LENGTHS

BatchPolicy = Callable[[np.ndarray], np.ndarray]
# The observation layout the simulator produces; a policy that expects another order is refused.
OBS_NAMES = ("shoulder.pos", "elbow.pos", "shoulder.vel", "elbow.vel", "goal.x", "goal.y")
ACTION_NAMES = ("shoulder.target", "elbow.target")


def scripted_expert(obs: np.ndarray) -> np.ndarray:
    """The scripted expert without operator noise (the upper baseline), vectorized: the same
    damped-least-squares step as ``lib/sim/expert.expert_action``, row by row."""
    obs = np.asarray(obs, dtype=np.float64)
    q, goal = obs[:, :2], obs[:, 4:6]
    l1, l2 = LINK_LENGTHS
    a, b = q[:, 0], q[:, 0] + q[:, 1]
    tip = np.stack([l1 * np.cos(a) + l2 * np.cos(b), l1 * np.sin(a) + l2 * np.sin(b)], axis=1)
    jac = np.empty((len(q), 2, 2))
    jac[:, 0, 0], jac[:, 0, 1] = -l1 * np.sin(a) - l2 * np.sin(b), -l2 * np.sin(b)
    jac[:, 1, 0], jac[:, 1, 1] = l1 * np.cos(a) + l2 * np.cos(b), l2 * np.cos(b)
    jjt = jac @ jac.transpose(0, 2, 1) + DLS_LAMBDA**2 * np.eye(2)
    dq = (jac.transpose(0, 2, 1) @ np.linalg.solve(jjt, (goal - tip)[:, :, None]))[:, :, 0]
    norm = np.max(np.abs(dq), axis=1, keepdims=True)
    dq = np.where(norm > MAX_STEP_RAD, dq * (MAX_STEP_RAD / np.maximum(norm, 1e-12)), dq)
    return (q + dq).astype(np.float32)


def hold_position(obs: np.ndarray) -> np.ndarray:
    """The trivial baseline: command the current position (does nothing)."""
    return np.asarray(obs, dtype=np.float32)[:, :2].copy()


BASELINES: dict[str, BatchPolicy] = {"scripted_expert": scripted_expert, "hold_position": hold_position}


def onnx_providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime providers for ``device``: CUDA first where asked for and this onnxruntime
    build has it (the ``onnxruntime-gpu`` wheel), the CPU always as the fallback."""
    import onnxruntime as ort

    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxPolicy:
    """An exported policy served by ONNX Runtime, one batched call per control step.

    On the CPU (the default) with one intra-op thread: the simulator uses the cores, and a fixed
    thread count keeps the arithmetic (and so the report) the same from run to run. With
    ``device="cuda"`` it runs on onnxruntime's CUDA provider where the build has one, else on
    the CPU (``self.providers`` says which).
    """

    def __init__(self, model: bytes | str | Path, *, device: str = "cpu"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, sess_options=options, providers=onnx_providers(device))
        self.providers = self.session.get_providers()
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: np.ascontiguousarray(obs, dtype=np.float32)})[0]


class TorchPolicy:
    """A :class:`~flywheel_pipelines.lib.learning.policy.Policy` run by PyTorch on ``device``
    (the GPU beside MuJoCo Warp): one host-to-device copy of the observations and one back per
    control step, no gradient."""

    def __init__(self, policy, *, device: str = "cpu"):
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.policy = policy.to(self.device).eval()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32)).to(self.device, non_blocking=True)
            return self.policy(x).cpu().numpy()


def check_interface(obs_names, action_names, *, what: str) -> None:
    """Refuse a policy whose inputs or outputs are not the simulator's, instead of scoring garbage."""
    if tuple(obs_names) != OBS_NAMES or tuple(action_names) != ACTION_NAMES:
        raise ValueError(f"{what}: expects observations {list(obs_names)} -> actions {list(action_names)}, "
                         f"but the simulator gives {list(OBS_NAMES)} and takes {list(ACTION_NAMES)}")
