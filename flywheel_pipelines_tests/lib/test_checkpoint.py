"""Tests for atomic, pickle-free checkpoints and behaviour cloning's checkpoint/resume."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flywheel_pipelines.lib.learning import checkpoint as ckpt_mod
from flywheel_pipelines.lib.learning.bc import BCConfig, train_bc
from flywheel_pipelines.lib.learning.checkpoint import (
    ARRAYS,
    STATE,
    TENSORS,
    CheckpointError,
    capture_rng,
    checkpoint_lock,
    latest_checkpoint,
    pack,
    restore_rng,
    save_checkpoint,
    unpack,
)
from flywheel_pipelines_tests.lib.test_learning import _synthetic

REPO = Path(__file__).resolve().parents[2]


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# --- the state tree ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tree",
    [
        {"a": 1, "b": 2.5, "c": "x", "d": None, "e": True},
        {"t": torch.arange(6, dtype=torch.float32).reshape(2, 3), "scalar": torch.tensor(3.0)},
        {"u8": torch.zeros(5, dtype=torch.uint8), "i64": torch.tensor([1, -2], dtype=torch.long)},
        {"arr": np.arange(4, dtype=np.int32), "nested": {"arr": np.ones((2, 2), np.float32)}},
        {"tuple": (1, (2, 3), [4, 5]), "int_keys": {0: {"step": torch.tensor(1.0)}, 1: {}}},
        {"$odd": 1, "big": 2**100, "list": [torch.ones(1), torch.ones(1)]},
        [1, {"x": (torch.zeros(0),)}],
    ],
)
def test_pack_unpack_round_trip(tree, tmp_path):
    skeleton, tensors, arrays = pack(tree)
    json.dumps(skeleton)  # the skeleton is plain JSON
    assert _equal(unpack(skeleton, tensors, arrays), tree)
    save_checkpoint(tmp_path, 1, tree)
    assert _equal(latest_checkpoint(tmp_path).state, tree)


def test_shared_tensors_are_saved_separately(tmp_path):
    w = torch.randn(3)
    save_checkpoint(tmp_path, 1, {"a": w, "b": w, "view": w[1:]})
    state = latest_checkpoint(tmp_path).state
    assert torch.equal(state["a"], w) and torch.equal(state["b"], w) and torch.equal(state["view"], w[1:])


@pytest.mark.parametrize("bad", [object(), {"f": lambda: 1}, np.array([{}], dtype=object), {"s": {1, 2}}])
def test_pack_refuses_what_would_need_pickle(bad):
    with pytest.raises(TypeError, match="pickle"):
        pack(bad)


def test_optimizer_and_scheduler_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    for _ in range(2):
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        sched.step()
    save_checkpoint(tmp_path, 2, {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()})
    state = latest_checkpoint(tmp_path).state
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=5)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert _equal(opt2.state_dict(), opt.state_dict()) and sched2.state_dict() == sched.state_dict()


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path, 1, {"rng": capture_rng()})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(latest_checkpoint(tmp_path).state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


# --- atomic writes -------------------------------------------------------------------------------


def test_keeps_the_newest_and_loads_the_latest(tmp_path):
    for step in (3, 10, 7):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000000007", "step-000000000010"]
    latest = latest_checkpoint(tmp_path)
    assert latest.step == 10 and latest.state == {"step": 10}
    save_checkpoint(tmp_path, 10, {"step": "again"})  # re-writing a step replaces it
    assert latest_checkpoint(tmp_path).state == {"step": "again"}


def test_empty_or_missing_folder_has_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path / "nope") is None
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(None) is None


def test_half_written_checkpoints_are_ignored(tmp_path):
    save_checkpoint(tmp_path, 5, {"w": torch.ones(2)})
    # A writer killed before its rename: a hidden folder with everything but the commit.
    tmp = tmp_path / ".tmp-step-000000000009-deadbeef"
    tmp.mkdir()
    (tmp / STATE).write_text('{"format": "flywheel-checkpoint-v1", "step": 9, "st')
    # A committed folder damaged afterwards (truncated tensors): skipped, never trusted.
    save_checkpoint(tmp_path, 8, {"w": torch.ones(2)}, keep=5)
    data = (tmp_path / "step-000000000008" / TENSORS).read_bytes()
    (tmp_path / "step-000000000008" / TENSORS).write_bytes(data[: len(data) // 2])
    latest = latest_checkpoint(tmp_path)
    assert latest.step == 5 and torch.equal(latest.state["w"], torch.ones(2))
    save_checkpoint(tmp_path, 6, {"w": torch.zeros(2)}, keep=5)
    assert not tmp.exists(), "the next writer removes a killed writer's leftovers"


def test_a_crash_before_the_rename_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"v": 1})

    def crash(src, dst):
        raise OSError("killed")

    monkeypatch.setattr(ckpt_mod.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(tmp_path, 2, {"v": 2})
    assert latest_checkpoint(tmp_path).state == {"v": 1}


def test_checkpoint_files_load_without_pickle(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 4, {"t": torch.randn(3), "a": np.arange(3), "rng": capture_rng(), "n": 1})
    folder = tmp_path / "step-000000000004"
    assert sorted(p.name for p in folder.iterdir()) == sorted([ARRAYS, STATE, TENSORS])
    assert_loads_without_pickle(folder, monkeypatch)


def assert_loads_without_pickle(folder: Path, monkeypatch) -> None:
    """Every file under ``folder`` opens with safetensors, json, np.load(allow_pickle=False) or onnx."""
    import onnx
    from safetensors.torch import load_file

    def forbidden(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    for target, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(target, name, forbidden)
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != ckpt_mod.LOCK]
    assert files
    for path in files:
        data = path.read_bytes()
        assert not data.startswith(b"\x80"), f"{path} is a raw pickle"
        if path.suffix == ".safetensors":
            assert load_file(str(path))
        elif path.suffix == ".json":
            json.loads(data)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                assert all(npz[k].dtype != object for k in npz.files)
        elif path.suffix == ".onnx":
            onnx.load(str(path))
        else:
            raise AssertionError(f"unexpected file {path}")
    monkeypatch.undo()


def test_one_writer_per_folder(tmp_path):
    with checkpoint_lock(tmp_path):
        with pytest.raises(CheckpointError, match="another training run"):
            with checkpoint_lock(tmp_path):
                pass
    with checkpoint_lock(tmp_path):  # released
        pass


# --- behaviour cloning: checkpoint and resume -----------------------------------------------------

_BC = BCConfig(epochs=6, batch_size=64, lr=3e-3, hidden=16, layers=2, seed=0, device="cpu")


class _Crash(Exception):
    pass


def _assert_same_weights(a, b):
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


def test_bc_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    reference, ref_history = train_bc(_synthetic(n=256), _BC)

    def crash_after_epoch_3(m):
        if m.epoch == 3:
            raise _Crash

    with pytest.raises(_Crash):
        train_bc(_synthetic(n=256), _BC, on_epoch=crash_after_epoch_3, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert latest_checkpoint(tmp_path).step == 2
    seen = []
    policy, history = train_bc(_synthetic(n=256), _BC, on_epoch=seen.append, checkpoint_dir=tmp_path,
                               checkpoint_every=2)
    assert [m.epoch for m in seen] == [2, 3, 4, 5], "resumed after epoch 2, not from scratch"
    _assert_same_weights(reference, policy)
    assert [h.train_loss for h in history] == [h.train_loss for h in ref_history]
    assert [h.val_loss for h in history] == [h.val_loss for h in ref_history]
    # The last checkpoint is the finished run: resuming it trains nothing and gives the same policy.
    assert latest_checkpoint(tmp_path).step == _BC.epochs
    seen.clear()
    again, _ = train_bc(_synthetic(n=256), _BC, on_epoch=seen.append, checkpoint_dir=tmp_path)
    assert seen == []
    _assert_same_weights(reference, again)


def test_bc_refuses_a_checkpoint_of_another_run(tmp_path):
    train_bc(_synthetic(n=128), dataclasses.replace(_BC, epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="another dataset or config"):
        train_bc(_synthetic(n=128), dataclasses.replace(_BC, epochs=1, lr=1e-3), checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="another dataset or config"):
        train_bc(_synthetic(n=128, seed=1), dataclasses.replace(_BC, epochs=1), checkpoint_dir=tmp_path)


# A training script run in a subprocess (argv: config JSON, checkpoint dir, mode): with mode
# "kill_mid_write" it SIGKILLs itself inside the second checkpoint write, after its files, before the rename.
KILL_MID_WRITE = """
import json, os, signal, sys, time
from flywheel_pipelines.lib.learning import checkpoint
mode = sys.argv[3]
if mode == "kill_mid_write":
    real, calls = os.replace, []
    def replace(src, dst):
        if "step-" in str(dst):
            calls.append(dst)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
    checkpoint.os.replace = replace
"""

_BC_SCRIPT = KILL_MID_WRITE + """
from flywheel_pipelines.lib.learning.bc import BCConfig, train_bc
from flywheel_pipelines_tests.lib.test_learning import _synthetic
config, ckpt_dir = BCConfig(**json.loads(sys.argv[1])), sys.argv[2]
train_bc(_synthetic(n=256), config, on_epoch=lambda m: time.sleep(0.15), checkpoint_dir=ckpt_dir, checkpoint_every=2)
print("finished")
"""


def _run_bc_subprocess(config: BCConfig, ckpt_dir: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _BC_SCRIPT, json.dumps(config.to_dict()), str(ckpt_dir), mode],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, ckpt_dir: Path, *, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.name.startswith("step-") for p in ckpt_dir.glob("step-*")):
        if proc.poll() is not None:
            raise AssertionError(f"training ended before its first checkpoint: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint written in time")
        time.sleep(0.02)


def test_bc_resumes_after_sigkill(tmp_path):
    config = dataclasses.replace(_BC, epochs=30)
    proc = _run_bc_subprocess(config, tmp_path, "plain")
    wait_for_checkpoint(proc, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and "finished" not in out, err
    killed_at = latest_checkpoint(tmp_path).step
    assert 0 < killed_at < config.epochs
    seen = []
    policy, history = train_bc(_synthetic(n=256), config, on_epoch=seen.append, checkpoint_dir=tmp_path,
                               checkpoint_every=2)
    assert seen[0].epoch == killed_at and len(history) == config.epochs
    reference, _ = train_bc(_synthetic(n=256), config)
    _assert_same_weights(reference, policy)


def test_bc_kill_during_a_checkpoint_write_is_ignored(tmp_path):
    config = dataclasses.replace(_BC, epochs=8)
    proc = _run_bc_subprocess(config, tmp_path, "kill_mid_write")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    leftovers = [p.name for p in tmp_path.glob(".tmp-*")]
    assert leftovers and leftovers[0].startswith(".tmp-step-000000000004"), leftovers
    assert latest_checkpoint(tmp_path).step == 2
    seen = []
    policy, _ = train_bc(_synthetic(n=256), config, on_epoch=seen.append, checkpoint_dir=tmp_path,
                         checkpoint_every=2)
    assert seen[0].epoch == 2
    assert not list(tmp_path.glob(".tmp-*"))
    reference, _ = train_bc(_synthetic(n=256), config)
    _assert_same_weights(reference, policy)


def test_the_mlflow_runs_of_a_killed_training_are_closed_when_it_resumes(tmp_path):
    import mlflow

    from flywheel_pipelines.lib.learning.checkpoint import close_interrupted_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("train")
    killed = client.create_run(exp, tags={"flywheel.checkpoints": "reach-bc/ds1-abc"}).info.run_id  # never ended
    other = client.create_run(exp, tags={"flywheel.checkpoints": "reach-bc/ds2-def"}).info.run_id  # other training
    done = client.create_run(exp, tags={"flywheel.checkpoints": "reach-bc/ds1-abc"}).info.run_id
    client.set_terminated(done, status="FINISHED")
    current = client.create_run(exp, tags={"flywheel.checkpoints": "reach-bc/ds1-abc"}).info.run_id

    assert close_interrupted_runs(client, exp, "reach-bc/ds1-abc", current=current) == [killed]
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(killed).data.tags["flywheel.resumed_by"] == current
    assert client.get_run(current).data.tags["flywheel.resumes_runs"] == killed
    assert client.get_run(current).info.status == "RUNNING"
    assert client.get_run(other).info.status == "RUNNING" and client.get_run(done).info.status == "FINISHED"
    assert close_interrupted_runs(client, exp, "reach-bc/ds1-abc", current=current) == []
