"""Reading and validating a LeRobot v3.0 dataset, with errors that name the offending file.

:func:`read_lerobot_v3` checks what lerobot's loader relies on (info.json, tasks.parquet, the
episodes files and their frame ranges, every data file and its column types) before returning
the tables; training, the incident report and the tests read datasets only through it. It is
apart from the writer because it must hold for any v3.0 dataset, also one lerobot wrote (pandas'
index columns, files rolled over by size), not only for the ones :mod:`.writer` produces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel_pipelines.lib.datasets.lerobot.format import (
    _EPISODE_REQUIRED_COLUMNS,
    _INFO_KEYS,
    _NUMERIC_DTYPES,
    _TASKS_INDEX_COLUMN,
    DATA_DIR,
    DEFAULT_EPISODES_PATH,
    DEFAULT_FEATURES,
    DEFAULT_TASKS_PATH,
    EPISODES_DIR,
    INFO_PATH,
    STATS_PATH,
    FeatureSpec,
    LeRobotFormatError,
    _arrow_type,
)

__all__ = ["load_stats", "load_tasks", "read_lerobot_v3"]


def read_lerobot_v3(root: Path) -> tuple[dict, pa.Table, pa.Table]:
    """Read and validate a LeRobot v3.0 dataset.

    Checks what lerobot's loader relies on: info.json's keys and version, tasks.parquet, the
    episodes files and their frame ranges, every data file the episodes point to, the parquet
    column types of the non-video features, the global ``index`` and per-episode
    ``frame_index``, and that stats.json exists and is JSON.

    Args:
        root: Dataset directory.

    Returns:
        ``(info, frames, episodes)``: info.json's dict, every data file's rows in global ``index``
        order, and every episodes file's rows (``stats/...`` columns included) in episode order.

    Raises:
        LeRobotFormatError: A ``ValueError`` naming the offending file and the problem.
    """
    root = Path(root)
    if not root.is_dir():
        raise LeRobotFormatError(f"{root}: dataset root is not a directory")
    info = _read_info(root)
    tasks = _read_tasks_table(root)
    if tasks.num_rows != info["total_tasks"]:
        raise LeRobotFormatError(
            f"{root / DEFAULT_TASKS_PATH}: {tasks.num_rows} tasks but info.json total_tasks is "
            f"{info['total_tasks']}"
        )
    # lerobot treats stats.json as optional, but every 0.4.4 write path produces it and training
    # cannot normalise without it, so its absence means a truncated copy.
    _load_json(root / STATS_PATH)

    episodes = _read_episodes(root, info)
    frames = _read_frames(root, info, episodes, num_tasks=tasks.num_rows)
    return info, frames, episodes


def load_tasks(root: Path) -> list[str]:
    """Task strings of a v3.0 dataset, ordered by ``task_index``.

    Raises:
        ValueError: If tasks.parquet is missing or malformed.
    """
    table = _read_tasks_table(Path(root))
    order = np.argsort(table.column("task_index").to_numpy())
    return [table.column("task").to_pylist()[i] for i in order]


def load_stats(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """``meta/stats.json`` with every statistic as a numpy array (as lerobot's ``load_stats``).

    Raises:
        ValueError: If stats.json is missing or malformed.
    """
    path = Path(root) / STATS_PATH
    stats = _load_json(path)
    if not isinstance(stats, dict) or not all(
        isinstance(v, dict) for v in stats.values()
    ):
        raise LeRobotFormatError(f"{path}: expected an object of feature -> statistics")
    return {name: {k: np.array(v) for k, v in ft.items()} for name, ft in stats.items()}


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeRobotFormatError(f"{path}: not valid JSON: {exc}") from exc


def _read_parquet(path: Path) -> pa.Table:
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: file is missing")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise LeRobotFormatError(f"{path}: not a readable parquet file: {exc}") from exc


def _read_info(root: Path) -> dict:
    path = root / INFO_PATH
    info = _load_json(path)
    if not isinstance(info, dict):
        raise LeRobotFormatError(f"{path}: expected a JSON object")
    missing = [key for key in _INFO_KEYS if key not in info]
    if missing:
        raise LeRobotFormatError(f"{path}: missing keys {missing}")
    version = info["codebase_version"]
    if not isinstance(version, str) or not version.startswith("v3."):
        raise LeRobotFormatError(f"{path}: codebase_version {version!r} is not v3.x")
    for key in ("total_episodes", "total_frames", "total_tasks", "chunks_size", "fps"):
        value = info[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LeRobotFormatError(
                f"{path}: {key} must be a non-negative int, got {value!r}"
            )
    features = info["features"]
    if not isinstance(features, dict):
        raise LeRobotFormatError(f"{path}: features must be an object")
    for name, ft in features.items():
        if not isinstance(ft, dict) or not {"dtype", "shape", "names"} <= set(ft):
            raise LeRobotFormatError(
                f"{path}: feature {name!r} needs dtype, shape and names"
            )
        if not isinstance(ft["shape"], list) or not all(
            isinstance(d, int) for d in ft["shape"]
        ):
            raise LeRobotFormatError(
                f"{path}: feature {name!r} has an invalid shape {ft['shape']!r}"
            )
    for name, spec in DEFAULT_FEATURES.items():
        ft = features.get(name)
        if ft is None or ft["dtype"] != spec.dtype or tuple(ft["shape"]) != spec.shape:
            raise LeRobotFormatError(
                f"{path}: default feature {name!r} is missing or not {spec.to_info()}"
            )
    splits = info["splits"]
    if not isinstance(splits, dict):
        raise LeRobotFormatError(f"{path}: splits must be an object")
    for name, value in splits.items():
        _, end = _parse_split(path, name, value)
        if end > info["total_episodes"]:
            raise LeRobotFormatError(
                f"{path}: split {name!r} {value!r} exceeds total_episodes"
            )
    if not isinstance(info["data_path"], str):
        raise LeRobotFormatError(f"{path}: data_path must be a string")
    return info


def _parse_split(path: Path, name: str, value: Any) -> tuple[int, int]:
    try:
        start_text, end_text = value.split(":")
        start, end = int(start_text), int(end_text)
    except (AttributeError, ValueError):
        raise LeRobotFormatError(
            f"{path}: split {name!r} must be 'start:end', got {value!r}"
        ) from None
    if not 0 <= start < end:
        raise LeRobotFormatError(
            f"{path}: split {name!r} {value!r} is not a non-empty range"
        )
    return start, end


def _read_tasks_table(root: Path) -> pa.Table:
    """tasks.parquet as columns ``task`` and ``task_index``, whichever way pandas stored the index."""
    path = root / DEFAULT_TASKS_PATH
    table = _read_parquet(path)
    task_column = None
    metadata = table.schema.metadata or {}
    if b"pandas" in metadata:
        try:
            index_columns = json.loads(metadata[b"pandas"])["index_columns"]
        except (ValueError, KeyError, TypeError):
            index_columns = []
        names = [c for c in index_columns if isinstance(c, str)]
        if len(names) == 1 and names[0] in table.column_names:
            task_column = names[0]
    if task_column is None:
        for candidate in (_TASKS_INDEX_COLUMN, "task"):
            if candidate in table.column_names:
                task_column = candidate
                break
    if task_column is None or "task_index" not in table.column_names:
        raise LeRobotFormatError(
            f"{path}: expected a task string index and a task_index column"
        )
    task = table.column(task_column)
    task_index = table.column("task_index")
    if not (pa.types.is_string(task.type) or pa.types.is_large_string(task.type)):
        raise LeRobotFormatError(f"{path}: task strings have type {task.type}")
    if (
        not pa.types.is_integer(task_index.type)
        or task_index.null_count
        or task.null_count
    ):
        raise LeRobotFormatError(f"{path}: task_index must be non-null integers")
    if sorted(task_index.to_pylist()) != list(range(table.num_rows)):
        raise LeRobotFormatError(
            f"{path}: task_index must be a permutation of 0..{table.num_rows - 1}"
        )
    if len(set(task.to_pylist())) != table.num_rows:
        raise LeRobotFormatError(f"{path}: task strings are not unique")
    return pa.table(
        {"task": task.cast(pa.string()), "task_index": task_index.cast(pa.int64())}
    )


def _read_episodes(root: Path, info: dict) -> pa.Table:
    episodes_dir = root / EPISODES_DIR
    paths = sorted(episodes_dir.glob("*/*.parquet"))
    if not paths:
        raise LeRobotFormatError(
            f"{episodes_dir}: no episodes parquet files (expected {DEFAULT_EPISODES_PATH})"
        )
    tables = []
    for path in paths:
        table = _read_parquet(path)
        missing = [c for c in _EPISODE_REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise LeRobotFormatError(f"{path}: missing columns {missing}")
        tables.append(table)
    try:
        episodes = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        raise LeRobotFormatError(
            f"{episodes_dir}: episodes files have incompatible schemas: {exc}"
        ) from exc
    where = f"{episodes_dir}"
    for column in _EPISODE_REQUIRED_COLUMNS:
        if column != "tasks" and episodes.column(column).null_count:
            raise LeRobotFormatError(f"{where}: column {column!r} has nulls")
    episode_index = episodes.column("episode_index").to_numpy()
    if not np.array_equal(episode_index, np.arange(info["total_episodes"])):
        raise LeRobotFormatError(
            f"{where}: episode_index must be 0..{info['total_episodes'] - 1} (info.json total_episodes)"
        )
    start = episodes.column("dataset_from_index").to_numpy()
    stop = episodes.column("dataset_to_index").to_numpy()
    length = episodes.column("length").to_numpy()
    if len(start) and (start[0] != 0 or np.any(start[1:] != stop[:-1])):
        raise LeRobotFormatError(
            f"{where}: dataset_from_index/dataset_to_index do not tile the frames"
        )
    if np.any(stop - start != length) or np.any(length <= 0):
        raise LeRobotFormatError(
            f"{where}: length must equal dataset_to_index - dataset_from_index and be > 0"
        )
    total = int(stop[-1]) if len(stop) else 0
    if total != info["total_frames"]:
        raise LeRobotFormatError(
            f"{where}: episodes cover {total} frames, info.json total_frames is {info['total_frames']}"
        )
    for path, table in zip(paths, tables, strict=True):
        chunk_index, file_index = _chunk_file_of(path)
        if (
            chunk_index is None
            or not np.all(
                table.column("meta/episodes/chunk_index").to_numpy() == chunk_index
            )
            or not np.all(
                table.column("meta/episodes/file_index").to_numpy() == file_index
            )
        ):
            raise LeRobotFormatError(
                f"{path}: meta/episodes/chunk_index and file_index do not name this file"
            )
    return episodes


def _chunk_file_of(path: Path) -> tuple[int | None, int | None]:
    chunk, file = path.parent.name, path.stem
    if not (chunk.startswith("chunk-") and file.startswith("file-")):
        return None, None
    try:
        return int(chunk[len("chunk-") :]), int(file[len("file-") :])
    except ValueError:
        return None, None


def _read_frames(
    root: Path, info: dict, episodes: pa.Table, *, num_tasks: int
) -> pa.Table:
    data_path = info["data_path"]
    chunk_col = episodes.column("data/chunk_index").to_numpy()
    file_col = episodes.column("data/file_index").to_numpy()
    episode_paths: list[Path] = []
    for chunk_index, file_index in zip(chunk_col, file_col, strict=True):
        try:
            path = root / data_path.format(
                chunk_index=int(chunk_index), file_index=int(file_index)
            )
        except (KeyError, IndexError, ValueError) as exc:
            raise LeRobotFormatError(
                f"{root / INFO_PATH}: data_path {data_path!r} cannot be formatted: {exc}"
            ) from exc
        episode_paths.append(path)
    referenced = list(dict.fromkeys(episode_paths))
    for path in referenced:
        if not path.is_file():
            raise LeRobotFormatError(
                f"{path}: data file is missing (referenced by {EPISODES_DIR})"
            )
    # lerobot loads every parquet file under data/, sorted, whether an episode names it or not.
    paths = sorted((root / DATA_DIR).glob("*/*.parquet"))
    unreferenced = [p for p in paths if p not in referenced]
    if unreferenced:
        raise LeRobotFormatError(
            f"{unreferenced[0]}: data file is not referenced by any episode"
        )

    expected_types = {
        name: _arrow_type(FeatureSpec(ft["dtype"], tuple(ft["shape"]), ft["names"]))
        for name, ft in info["features"].items()
        if ft["dtype"] in _NUMERIC_DTYPES and len(ft["shape"]) == 1
    }
    non_video = [
        name for name, ft in info["features"].items() if ft["dtype"] != "video"
    ]
    tables = []
    for path in paths:
        table = _read_parquet(path)
        missing = [name for name in non_video if name not in table.column_names]
        if missing:
            raise LeRobotFormatError(f"{path}: missing feature columns {missing}")
        for name, expected in expected_types.items():
            if not _same_type(table.column(name).type, expected):
                raise LeRobotFormatError(
                    f"{path}: column {name!r} has type {table.column(name).type}, "
                    f"info.json says {expected}"
                )
            if table.column(name).null_count:
                raise LeRobotFormatError(f"{path}: column {name!r} has nulls")
        # Each file must hold exactly the episodes whose data/chunk_index, data/file_index name it.
        named = {ep for ep, p in enumerate(episode_paths) if p == path}
        held = set(np.unique(table.column("episode_index").to_numpy()).tolist())
        if held != named:
            raise LeRobotFormatError(
                f"{path}: holds episodes {sorted(held)} but {EPISODES_DIR} places {sorted(named)} here"
            )
        tables.append(table)
    try:
        frames = pa.concat_tables(tables)
    except pa.ArrowException as exc:
        raise LeRobotFormatError(
            f"{root / DATA_DIR}: data files have different schemas: {exc}"
        ) from exc

    where = root / DATA_DIR
    if frames.num_rows != info["total_frames"]:
        raise LeRobotFormatError(
            f"{where}: {frames.num_rows} frames but info.json total_frames is {info['total_frames']}"
        )
    if not np.array_equal(
        frames.column("index").to_numpy(), np.arange(frames.num_rows)
    ):
        raise LeRobotFormatError(
            f"{where}: index is not the global frame index 0..N-1 in file order"
        )
    episode_index = frames.column("episode_index").to_numpy()
    frame_index = frames.column("frame_index").to_numpy()
    starts = episodes.column("dataset_from_index").to_numpy()
    stops = episodes.column("dataset_to_index").to_numpy()
    for ep, (start, stop) in enumerate(zip(starts, stops, strict=True)):
        path = root / data_path.format(
            chunk_index=int(chunk_col[ep]), file_index=int(file_col[ep])
        )
        if np.any(episode_index[start:stop] != ep):
            raise LeRobotFormatError(
                f"{path}: rows {start}:{stop} do not all belong to episode {ep}"
            )
        if not np.array_equal(frame_index[start:stop], np.arange(stop - start)):
            raise LeRobotFormatError(
                f"{path}: episode {ep} frame_index is not 0..{stop - start - 1}"
            )
    task_index = frames.column("task_index").to_numpy()
    if task_index.size and (task_index.min() < 0 or task_index.max() >= num_tasks):
        raise LeRobotFormatError(
            f"{where}: task_index outside the {num_tasks} tasks of {DEFAULT_TASKS_PATH}"
        )
    return frames


def _same_type(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Type equality that ignores the list item's field name and nullability."""
    if pa.types.is_fixed_size_list(expected):
        return (
            pa.types.is_fixed_size_list(actual)
            and actual.list_size == expected.list_size
            and actual.value_type == expected.value_type
        )
    return actual == expected
