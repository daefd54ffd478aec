"""Atomic, pickle-free training checkpoints, shared by the BC and RL trainers.

A checkpoint is any nested state (dicts, lists, tuples, numbers, strings, tensors, numpy arrays)
written as three files in one folder::

    <dir>/step-000000012288/
        state.json            # the tree: counters, hyperparameters, RNG states, tensor/array references
        tensors.safetensors   # every torch tensor (weights, optimizer moments, torch RNG state)
        arrays.npz            # every numpy array (e.g. a replay buffer), read with allow_pickle=False

Nothing needs pickle to load. A checkpoint is assembled in a hidden sibling (``.tmp-step-...``),
every file is fsynced, and the folder is renamed into place: the rename is the commit, so a run
killed at any moment leaves either the previous checkpoints or a hidden folder the reader ignores
(and the next writer removes). One writer per folder is enforced with ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT = "flywheel-checkpoint-v1"
STATE = "state.json"
TENSORS = "tensors.safetensors"
ARRAYS = "arrays.npz"
LOCK = ".lock"
_STEP_DIR = re.compile(r"^step-(\d{12})$")
_TMP_PREFIX = ".tmp-"

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be used (held by another writer, or from another run)."""


@dataclass(frozen=True)
class Checkpoint:
    """One committed checkpoint: its step and the state tree as it was saved."""

    step: int
    path: Path
    state: Any


# --- packing a state tree into JSON + tensors + arrays -----------------------------------------


def pack(tree: Any) -> tuple[Any, dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Split ``tree`` into a JSON-able skeleton, its tensors and its numpy arrays.

    Tensors and arrays are replaced by ``{"$tensor": key}`` / ``{"$array": key}``; tuples and dicts
    whose keys are not plain strings (an optimizer's integer parameter ids) are tagged so that
    :func:`unpack` gives back the same types.
    """
    tensors: dict[str, torch.Tensor] = {}
    arrays: dict[str, np.ndarray] = {}

    def key_for(path: str, taken: dict) -> str:
        key = path or "root"
        while key in taken:  # only for pathological trees ({1: a, "1": b})
            key += "+"
        return key

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            key = key_for(path, tensors)
            # clone: safetensors refuses tensors that share storage (e.g. a shared features extractor)
            tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
            return {"$tensor": key}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                raise TypeError(f"{path}: object arrays would need pickle")
            key = key_for(path, arrays)
            arrays[key] = obj
            return {"$array": key}
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in obj):
                return {k: walk(v, f"{path}/{k}" if path else k) for k, v in obj.items()}
            return {"$dict": [[walk(k, f"{path}/$k"), walk(v, f"{path}/{k}")] for k, v in obj.items()]}
        if isinstance(obj, tuple):
            return {"$tuple": [walk(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise TypeError(f"{path}: cannot checkpoint a {type(obj).__name__} without pickle")

    return walk(tree, ""), tensors, arrays


def unpack(skeleton: Any, tensors: dict[str, torch.Tensor], arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of :func:`pack`."""

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            if set(obj) == {"$tensor"}:
                return tensors[obj["$tensor"]]
            if set(obj) == {"$array"}:
                return arrays[obj["$array"]]
            if set(obj) == {"$tuple"}:
                return tuple(walk(v) for v in obj["$tuple"])
            if set(obj) == {"$dict"}:
                return {walk(k): walk(v) for k, v in obj["$dict"]}
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return walk(skeleton)


# --- RNG state -----------------------------------------------------------------------------------


def capture_rng() -> dict:
    """The global RNG states a trainer draws from: Python, NumPy's legacy global, torch CPU (+CUDA)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": keys, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Put back what :func:`capture_rng` captured."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# --- writing and reading -------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_dir_name(step: int) -> str:
    return f"step-{step:012d}"


def save_checkpoint(directory: Path, step: int, state: Any, *, keep: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically; keep the newest ``keep`` checkpoints.

    Returns the committed folder. Leftover hidden folders of a writer that was killed are removed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    skeleton, tensors, arrays = pack(state)
    final = directory / step_dir_name(step)
    tmp = directory / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    save_file(tensors, str(tmp / TENSORS), metadata={"format": FORMAT})
    if arrays:
        with open(tmp / ARRAYS, "wb") as handle:
            np.savez(handle, **arrays)
    with open(tmp / STATE, "w") as handle:
        json.dump({"format": FORMAT, "step": step, "state": skeleton}, handle)
    for name in (TENSORS, ARRAYS, STATE):
        if (tmp / name).exists():
            _fsync_path(tmp / name)
    _fsync_path(tmp)
    if final.exists():  # the same step written again (a resumed run re-saving its last checkpoint)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_path(directory)
    for old in _committed(directory)[keep:]:
        shutil.rmtree(old[1], ignore_errors=True)
    return final


def _committed(directory: Path) -> list[tuple[int, Path]]:
    """Committed checkpoint folders, newest first (hidden temp folders never match)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read one checkpoint folder with safetensors, json and ``np.load(allow_pickle=False)`` only."""
    meta = json.loads((path / STATE).read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    tensors = load_file(str(path / TENSORS))
    arrays: dict[str, np.ndarray] = {}
    if (path / ARRAYS).exists():
        with np.load(path / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    return Checkpoint(int(meta["step"]), path, unpack(meta["state"], tensors, arrays))


def latest_checkpoint(directory: Path | None) -> Checkpoint | None:
    """The newest checkpoint that loads; an unreadable one is skipped with a warning (never trusted)."""
    if directory is None:
        return None
    for step, path in _committed(Path(directory)):
        try:
            return load_checkpoint(path)
        except Exception as exc:  # a damaged checkpoint of any kind is skipped, never trusted
            log.warning("skipping unreadable checkpoint %s (step %d): %s", path, step, exc)
    return None


def latest_step(directory: Path | None) -> int | None:
    """The step of the newest committed checkpoint, without loading it."""
    found = _committed(Path(directory)) if directory is not None else []
    return found[0][0] if found else None


def clear_checkpoints(directory: Path) -> None:
    """Remove a run's checkpoint folder (after its artifact is safely published)."""
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def checkpoint_lock(directory: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` for one training run (released by the kernel on a kill)."""
    if directory is None:
        yield
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(f"another training run holds {directory}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def close_interrupted_runs(client, experiment_id: str, checkpoints: str, *, current: str) -> list[str]:
    """Mark KILLED the MLflow runs of a training that was killed and is being resumed now.

    A killed process never ends its MLflow run, which then shows RUNNING forever. The runs that
    trained into the same checkpoint folder (tag ``flywheel.checkpoints``) and are still RUNNING
    when a new run resumes from that folder are those; each is ended as KILLED and tagged with
    the run that resumed it. Returns their ids.
    """
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`flywheel.checkpoints` = '{checkpoints}' and attributes.status = 'RUNNING'",
    )
    closed = []
    for run in runs:
        if run.info.run_id == current:
            continue
        client.set_tag(run.info.run_id, "flywheel.resumed_by", current)
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    if closed:
        client.set_tag(current, "flywheel.resumes_runs", ",".join(closed))
    return closed
