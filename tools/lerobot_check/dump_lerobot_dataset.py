"""Load a LeRobot v3.0 dataset with lerobot's own ``LeRobotDataset``, offline, and dump what it sees.

Runs under the separate environment ``.venv-lerobot`` (``make lerobot-env``, pinned in
``requirements.txt`` beside this file), never under the project's: lerobot 0.4.4 does not install
beside the project's torch pin. ``flywheel_pipelines_tests/lib/test_lerobot_official.py`` runs it
on datasets the pipeline wrote and compares the dump with those files value for value; this
script only loads and records, it judges nothing.

    python dump_lerobot_dataset.py ROOT OUT [--repo-id ID] [--chunk KEY=N] [--episode E]

Writes into the folder OUT:

* ``frames.npz``: per feature, ``ds[i][feature]`` for every ``i`` in order, stacked as lerobot
  returns them (tensor dtype and per-frame shape kept: ``torch.tensor`` of the row's Python
  values, so float features come out float32 and integer ones int64 whatever info.json says).
* ``chunk.npz`` (with ``--chunk KEY=N``): ``KEY`` and ``KEY_is_pad`` of every frame of a dataset
  loaded with ``delta_timestamps={KEY: [0, 1/fps, ..., (N-1)/fps]}``, as a policy's action
  chunks are loaded.
* ``episode.npz`` (with ``--episode E``): every feature of a dataset loaded with ``episodes=[E]``.
* ``meta.json``: lerobot's view of the metadata (version, info, fps, counts, features, each
  item's shape and dtype, every frame's task string, tasks.parquet and the episodes table as
  loaded), and the statistics that lerobot's ``compute_episode_stats`` / ``aggregate_stats``
  give for the loaded rows, fed the way ``LeRobotDataset.save_episode`` feeds them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

# The index columns lerobot's save_episode fills itself (they are never given per frame).
_SAVE_EPISODE_COLUMNS = ("index", "episode_index", "task_index")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="dataset root (the folder holding meta/ and data/)")
    parser.add_argument("out", type=Path, help="folder to write frames.npz and meta.json into")
    parser.add_argument("--repo-id", default="flywheel/dataset", help="repo id given to LeRobotDataset (never fetched)")
    parser.add_argument("--chunk", metavar="KEY=N", help="also load KEY as chunks of N frames via delta_timestamps")
    parser.add_argument("--episode", type=int, help="also load this one episode alone (episodes=[E])")
    return parser.parse_args(argv)


def _jsonable(value: Any) -> Any:
    """numpy / torch values and tuples as plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _stack_items(dataset, keys: list[str]) -> tuple[dict, list[str], dict, dict]:
    """Every frame of ``dataset`` through ``__getitem__``: arrays per key, task strings, shapes, dtypes."""
    import numpy as np

    columns: dict[str, list] = {key: [] for key in keys}
    tasks: list[str] = []
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    for i in range(len(dataset)):
        item = dataset[i]
        for key in keys:
            value = item[key]
            shape = list(value.shape)
            if shapes.setdefault(key, shape) != shape:
                raise SystemExit(f"frame {i}: {key} has shape {shape}, frame 0 had {shapes[key]}")
            dtypes.setdefault(key, str(value.dtype))
            columns[key].append(value.numpy())
        tasks.append(item["task"])
    return {key: np.stack(values) for key, values in columns.items()}, tasks, shapes, dtypes


def _lerobot_stats(dataset) -> tuple[list[dict], dict]:
    """Per-episode and dataset statistics from lerobot's own compute_stats, as save_episode computes them.

    ``LeRobotDataset.add_frame`` takes each non-default feature as a ``shape``-shaped array of the
    feature's dtype and the timestamp as given (a Python float), ``save_episode`` stacks them, fills
    ``index``, ``episode_index`` and ``task_index`` as int64 arrays, calls ``compute_episode_stats``
    and folds the result in with ``aggregate_stats([stats, episode_stats])``. The input here is the
    Arrow table lerobot loaded, not ``__getitem__``'s tensors, which narrow float64 to float32.
    """
    import numpy as np
    from lerobot.datasets.compute_stats import aggregate_stats, compute_episode_stats

    features = dataset.features
    table = dataset.hf_dataset.with_format("arrow")[:]
    columns = {key: np.array(table.column(key).to_pylist(), dtype=ft["dtype"]) for key, ft in features.items()}
    episodes = dataset.meta.episodes
    per_episode = []
    dataset_stats = None
    for start, stop in zip(episodes["dataset_from_index"], episodes["dataset_to_index"], strict=True):
        data = {}
        for key, ft in features.items():
            values = columns[key][start:stop]
            if key == "timestamp":
                data[key] = values.astype(np.float64)
            elif key in _SAVE_EPISODE_COLUMNS or key == "frame_index":
                data[key] = values.astype(np.int64)
            else:
                data[key] = values.reshape(-1, *ft["shape"])
        episode_stats = compute_episode_stats(data, features)
        per_episode.append(episode_stats)
        dataset_stats = episode_stats if dataset_stats is None else aggregate_stats([dataset_stats, episode_stats])
    return per_episode, dataset_stats


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    # Offline, with a private Hugging Face home (token, hub cache, the Arrow cache that
    # datasets.Dataset.from_parquet fills) removed afterwards: nothing is fetched, and nothing of
    # the user's is read or written. Set before lerobot and huggingface_hub read them at import.
    with tempfile.TemporaryDirectory(prefix="lerobot-check-hf-") as hf_home:
        os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": hf_home})
        os.environ.pop("HF_LEROBOT_HOME", None)
        _dump(args)
    return 0


def _dump(args: argparse.Namespace) -> None:
    import lerobot
    import numpy as np
    from lerobot.datasets.lerobot_dataset import CODEBASE_VERSION, LeRobotDataset

    args.out.mkdir(parents=True, exist_ok=True)
    dataset = LeRobotDataset(args.repo_id, root=args.root)
    keys = list(dataset.features)
    frames, frame_tasks, shapes, dtypes = _stack_items(dataset, keys)
    np.savez(args.out / "frames.npz", **frames)

    per_episode_stats, stats = _lerobot_stats(dataset)
    tasks = dataset.meta.tasks
    meta = {
        "lerobot_version": lerobot.__version__,
        "codebase_version": CODEBASE_VERSION,
        "info": dataset.meta.info,
        "fps": dataset.fps,
        "num_episodes": dataset.num_episodes,
        "num_frames": dataset.num_frames,
        "len": len(dataset),
        "features": dataset.features,
        "item_shapes": shapes,
        "item_dtypes": dtypes,
        "frame_tasks": frame_tasks,
        # tasks.parquet as lerobot's load_tasks gives it: a frame indexed by the task string.
        "tasks": {"task": list(tasks.index), "task_index": tasks["task_index"].tolist()},
        "episodes": dataset.meta.episodes.to_dict(),
        "stats": stats,
        "episode_stats": per_episode_stats,
    }

    if args.chunk:
        key, _, size = args.chunk.partition("=")
        offsets = [k / dataset.fps for k in range(int(size))]
        chunked = LeRobotDataset(args.repo_id, root=args.root, delta_timestamps={key: offsets})
        chunk_frames, _, _, _ = _stack_items(chunked, [key, f"{key}_is_pad"])
        np.savez(args.out / "chunk.npz", **chunk_frames)
        meta["chunk"] = {"key": key, "offsets_s": offsets}

    if args.episode is not None:
        one = LeRobotDataset(args.repo_id, root=args.root, episodes=[args.episode])
        episode_frames, episode_tasks, _, _ = _stack_items(one, keys)
        np.savez(args.out / "episode.npz", **episode_frames)
        meta["episode"] = {
            "episode_index": args.episode,
            "num_episodes": one.num_episodes,
            "num_frames": one.num_frames,
            "len": len(one),
            "frame_tasks": episode_tasks,
        }

    (args.out / "meta.json").write_text(json.dumps(_jsonable(meta), indent=1))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
