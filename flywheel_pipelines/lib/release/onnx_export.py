"""ONNX export of a policy and the ONNX Runtime parity proof against PyTorch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from flywheel_pipelines.lib.learning.policy import Policy

INPUT_NAME = "observation"
OUTPUT_NAME = "action"
OPSET = 18


def export_onnx(policy: Policy, path: Path) -> None:
    """Export with the dynamo exporter (the supported path in torch 2.x) and a dynamic batch."""
    example = torch.zeros(2, policy.config.obs_dim)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            policy.eval(), (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},), opset_version=OPSET, verbose=False, report=False,
        )
    program.save(str(path))


def onnx_parity(policy: Policy, onnx_path: Path, inputs: np.ndarray) -> dict:
    """Run both runtimes on ``inputs`` (N, obs_dim); returns max/mean abs error and N."""
    import onnxruntime as ort

    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]
    with torch.no_grad():
        torch_out = policy.eval()(torch.from_numpy(inputs)).numpy()
    diff = np.abs(onnx_out - torch_out)
    return {"max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()), "inputs": len(inputs)}


def onnx_policy_fn(onnx_path: Path):
    """A numpy policy callable served by ONNX Runtime (what a robot would run)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def act(obs: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(obs, np.float32).reshape(1, -1)})[0][0]

    return act
