"""Writing a LeRobot v3.0 dataset: frames, features, tasks and splits in, the files of the layout out.

The files, their schemas and their row groups are those ``LeRobotDataset.create`` /
``add_frame`` / ``save_episode`` / ``finalize`` of lerobot 0.4.4 write (see :mod:`.format` for
the sources matched and the deliberate differences); writes are byte-for-byte reproducible, so a
dataset's content hash is its version. Validation of an existing dataset is :mod:`.reader`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel_pipelines.lib.datasets.lerobot.format import (
    _EPISODES_PER_ROW_GROUP,
    _INFO_KEYS,
    _NUMERIC_DTYPES,
    _PARQUET_OPTIONS,
    _TASKS_INDEX_COLUMN,
    CODEBASE_VERSION,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_DATA_PATH,
    DEFAULT_EPISODES_PATH,
    DEFAULT_FEATURES,
    DEFAULT_TASKS_PATH,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    INFO_PATH,
    STATS_PATH,
    FeatureSpec,
    _arrow_type,
    _hf_feature,
)
from flywheel_pipelines.lib.datasets.lerobot.stats import _aggregate_stats, _episode_stats, _flatten, _serialize_stats

__all__ = ["write_lerobot_v3"]


def write_lerobot_v3(
    root: Path,
    *,
    frames: pa.Table,
    features: dict[str, FeatureSpec],
    fps: int,
    robot_type: str,
    tasks: list[str],
    splits: dict[str, list[int]],
    extra_info: dict | None = None,
    chunks_size: int = DEFAULT_CHUNK_SIZE,
    data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
) -> dict:
    """Write a LeRobot v3.0 dataset into ``root``.

    Args:
        root: Dataset directory; must not exist or be empty.
        frames: One row per frame: a column per non-default feature plus ``episode_index``,
            ``frame_index``, ``timestamp`` and ``task_index``. Episodes are ``0..E-1``, rows grouped
            by episode in order and by ``frame_index`` (``0..L-1``) within an episode. An ``index``
            column may be given only if it already is ``0..N-1``; it is added otherwise.
        features: The non-default features, in the order they should appear in info.json. The
            default features may be repeated here only with their default spec.
        fps: Frames per second.
        robot_type: Robot type recorded in info.json.
        tasks: Task strings; ``task_index`` indexes this list and must be unique.
        splits: Split name to episode indices, each a contiguous, non-overlapping range; written as
            ``"start:end"`` (end exclusive).
        extra_info: Extra top-level info.json keys (must not shadow lerobot's keys).
        chunks_size: Files per ``chunk-XXX`` directory (lerobot's ``chunks_size``).
        data_files_size_in_mb: Size at which a data file is closed and the next one started.

    Returns:
        The dict written to ``meta/info.json``.

    Raises:
        TypeError: If ``frames`` is not a ``pyarrow.Table`` or a feature is not a FeatureSpec.
        ValueError: If the inputs do not describe a valid dataset or ``root`` is not empty.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root}: dataset root must not exist or be empty")
    if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
        raise ValueError(f"fps must be a positive int, got {fps!r}")
    if (
        isinstance(chunks_size, bool)
        or not isinstance(chunks_size, int)
        or chunks_size <= 0
    ):
        raise ValueError(f"chunks_size must be a positive int, got {chunks_size!r}")
    if not data_files_size_in_mb > 0:
        raise ValueError(
            f"data_files_size_in_mb must be positive, got {data_files_size_in_mb!r}"
        )
    _check_tasks(tasks)
    all_features = _merge_features(features)

    table = _frames_to_data_table(frames, all_features, num_tasks=len(tasks))
    episode_bounds = _episode_bounds(table)
    num_episodes = len(episode_bounds)
    split_strings = _splits_to_strings(splits, num_episodes)

    info: dict[str, Any] = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": num_episodes,
        "total_frames": table.num_rows,
        "total_tasks": len(tasks),
        "chunks_size": chunks_size,
        "data_files_size_in_mb": data_files_size_in_mb,
        "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        "fps": fps,
        "splits": split_strings,
        "data_path": DEFAULT_DATA_PATH,
        "video_path": None,
        "features": {name: spec.to_info() for name, spec in all_features.items()},
    }
    if extra_info:
        clash = sorted(set(extra_info) & set(_INFO_KEYS))
        if clash:
            raise ValueError(
                f"extra_info must not override lerobot info.json keys: {clash}"
            )
        info.update(extra_info)
    try:
        info_text = json.dumps(info, indent=4, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"info.json is not serialisable: {exc}") from exc

    limit_bytes = data_files_size_in_mb * 1024**2
    episode_tables = [
        table.slice(start, stop - start) for start, stop in episode_bounds
    ]
    data_locations = _assign_files(
        [t.nbytes for t in episode_tables],
        limit_bytes=limit_bytes,
        chunks_size=chunks_size,
    )

    columns = _feature_arrays(table, all_features)
    episode_tasks = _episode_tasks(table, episode_bounds, tasks)
    episode_stats = [
        _episode_stats({name: arr[start:stop] for name, arr in columns.items()})
        for start, stop in episode_bounds
    ]
    dataset_stats = episode_stats[0]
    for ep_stats in episode_stats[1:]:
        dataset_stats = _aggregate_stats([dataset_stats, ep_stats])

    episode_rows = []
    for ep_index, (start, stop) in enumerate(episode_bounds):
        chunk_index, file_index = data_locations[ep_index]
        row: dict[str, Any] = {
            "episode_index": ep_index,
            "tasks": episode_tasks[ep_index],
            "length": stop - start,
            "data/chunk_index": chunk_index,
            "data/file_index": file_index,
            "dataset_from_index": start,
            "dataset_to_index": stop,
        }
        for key, value in _flatten({"stats": episode_stats[ep_index]}).items():
            row[key] = value.tolist()
        episode_rows.append(row)
    row_bytes = [pa.Table.from_pylist([row]).nbytes for row in episode_rows]
    meta_locations = _assign_files(
        row_bytes, limit_bytes=limit_bytes, chunks_size=chunks_size
    )
    for row, (chunk_index, file_index) in zip(
        episode_rows, meta_locations, strict=True
    ):
        row["meta/episodes/chunk_index"] = chunk_index
        row["meta/episodes/file_index"] = file_index

    root.mkdir(parents=True, exist_ok=True)
    _write_data_files(root, episode_tables, data_locations)
    _write_episode_files(root, episode_rows, meta_locations)
    _write_tasks(root, tasks)
    _write_text(root / INFO_PATH, info_text)
    stats_json = {
        name: dataset_stats[name] for name in all_features if name in dataset_stats
    }
    _write_text(
        root / STATS_PATH,
        json.dumps(_serialize_stats(stats_json), indent=4, ensure_ascii=False),
    )
    return json.loads(info_text)


def _check_tasks(tasks: list[str]) -> None:
    if not tasks:
        raise ValueError("tasks must not be empty")
    for task in tasks:
        if not isinstance(task, str) or not task:
            raise ValueError(f"tasks must be non-empty strings, got {task!r}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks are not unique: {tasks}")


def _merge_features(features: dict[str, FeatureSpec]) -> dict[str, FeatureSpec]:
    """User features first, then the default ones, as ``LeRobotDatasetMetadata.create`` orders them."""
    merged: dict[str, FeatureSpec] = {}
    for name, spec in features.items():
        if not isinstance(spec, FeatureSpec):
            raise TypeError(
                f"feature {name!r}: expected a FeatureSpec, got {type(spec).__name__}"
            )
        if "/" in name or not name:
            # lerobot flattens stats with "/" as the separator, so such a name cannot round-trip.
            raise ValueError(
                f"feature name {name!r} must be non-empty and must not contain '/'"
            )
        if name in DEFAULT_FEATURES:
            if _normalised(spec) != _normalised(DEFAULT_FEATURES[name]):
                raise ValueError(
                    f"feature {name!r} is a default feature; its spec must be the default"
                )
            continue
        if spec.dtype not in _NUMERIC_DTYPES:
            raise ValueError(
                f"feature {name!r}: dtype {spec.dtype!r} is not supported "
                f"(expected one of {sorted(_NUMERIC_DTYPES)})"
            )
        shape = tuple(spec.shape)
        if len(shape) != 1 or not isinstance(shape[0], int) or shape[0] < 1:
            raise ValueError(
                f"feature {name!r}: shape {spec.shape!r} must be (n,) with n >= 1"
            )
        if spec.names is not None and len(spec.names) != shape[0]:
            raise ValueError(
                f"feature {name!r}: {len(spec.names)} names for shape {shape}"
            )
        merged[name] = FeatureSpec(
            spec.dtype, shape, list(spec.names) if spec.names else spec.names
        )
    merged.update(DEFAULT_FEATURES)
    return merged


def _normalised(spec: FeatureSpec) -> tuple:
    return (
        spec.dtype,
        tuple(spec.shape),
        None if spec.names is None else tuple(spec.names),
    )


def _frames_to_data_table(
    frames: pa.Table, features: dict[str, FeatureSpec], *, num_tasks: int
) -> pa.Table:
    if not isinstance(frames, pa.Table):
        raise TypeError(f"frames must be a pyarrow.Table, got {type(frames).__name__}")
    if frames.num_rows == 0:
        raise ValueError("frames is empty: a dataset needs at least one episode")
    given = set(frames.column_names)
    required = set(features) - {"index"}
    missing = sorted(required - given)
    if missing:
        raise ValueError(f"frames is missing columns {missing}")
    extra = sorted(given - set(features))
    if extra:
        raise ValueError(f"frames has columns that are not features: {extra}")

    arrays = []
    fields = []
    for name, spec in features.items():
        target = _arrow_type(spec)
        if name == "index":
            column = pa.chunked_array(
                [pa.array(np.arange(frames.num_rows, dtype=np.int64))]
            )
            if "index" in given:
                given_index = _cast_column(name, frames.column("index"), target)
                if not given_index.equals(column):
                    raise ValueError(
                        "frames column 'index' must be the global frame index 0..N-1"
                    )
        else:
            column = _cast_column(name, frames.column(name), target)
        nulls = column.null_count
        if pa.types.is_fixed_size_list(target):
            nulls += pc.list_flatten(column).null_count
        if nulls:
            raise ValueError(f"frames column {name!r} has {nulls} null values")
        arrays.append(column)
        fields.append(pa.field(name, target))
    hf_metadata = {
        "info": {
            "features": {name: _hf_feature(spec) for name, spec in features.items()}
        }
    }
    schema = pa.schema(fields, metadata={"huggingface": json.dumps(hf_metadata)})
    table = pa.Table.from_arrays(arrays, schema=schema).combine_chunks()

    for name, spec in features.items():
        if spec.dtype.startswith("float"):
            values = _values(table.column(name))
            if values.size and not np.all(np.isfinite(values)):
                raise ValueError(f"frames column {name!r} has NaN or infinite values")
    task_index = table.column("task_index").to_numpy()
    if task_index.min() < 0 or task_index.max() >= num_tasks:
        raise ValueError(f"task_index must lie in [0, {num_tasks}) to index tasks")
    return table


def _cast_column(
    name: str, column: pa.ChunkedArray, target: pa.DataType
) -> pa.ChunkedArray:
    ctype = column.type
    if not pa.types.is_fixed_size_list(target) and (
        pa.types.is_list(ctype)
        or pa.types.is_large_list(ctype)
        or pa.types.is_fixed_size_list(ctype)
    ):
        # A shape-(1,) feature given as one-element lists is stored as a scalar, like lerobot does.
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if lengths.size and not np.all(lengths == 1):
            raise ValueError(
                f"frames column {name!r}: expected scalars or 1-element lists"
            )
        column = pc.list_flatten(column)
    if pa.types.is_fixed_size_list(target) and (
        pa.types.is_list(ctype) or pa.types.is_large_list(ctype)
    ):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if lengths.size and not np.all(lengths == target.list_size):
            raise ValueError(
                f"frames column {name!r}: every row must hold {target.list_size} values"
            )
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ValueError(
            f"frames column {name!r} of type {ctype} cannot be cast to {target}: {exc}"
        ) from exc


def _values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Column as numpy: 1-D for scalars, 2-D ``(rows, n)`` for fixed-size lists."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(column), column.type.list_size)
    return column.to_numpy(zero_copy_only=False)


def _episode_bounds(table: pa.Table) -> list[tuple[int, int]]:
    episode_index = table.column("episode_index").to_numpy()
    frame_index = table.column("frame_index").to_numpy()
    if episode_index[0] != 0:
        raise ValueError("episode_index must start at 0")
    steps = np.diff(episode_index)
    if np.any((steps != 0) & (steps != 1)):
        raise ValueError(
            "episode_index must be contiguous 0..E-1 with rows grouped by episode in order"
        )
    starts = np.concatenate([[0], np.flatnonzero(steps) + 1])
    stops = np.concatenate([starts[1:], [len(episode_index)]])
    bounds = [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]
    for ep, (start, stop) in enumerate(bounds):
        if not np.array_equal(frame_index[start:stop], np.arange(stop - start)):
            raise ValueError(
                f"episode {ep}: frame_index must be 0..{stop - start - 1} in row order"
            )
    return bounds


def _splits_to_strings(
    splits: dict[str, list[int]], num_episodes: int
) -> dict[str, str]:
    if not splits:
        raise ValueError("splits must name at least one split")
    result: dict[str, str] = {}
    taken: list[tuple[int, int, str]] = []
    for name, episodes in splits.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"split names must be non-empty strings, got {name!r}")
        indices = sorted(int(e) for e in episodes)
        if not indices:
            raise ValueError(f"split {name!r} is empty")
        start, end = indices[0], indices[-1] + 1
        if indices != list(range(start, end)):
            raise ValueError(
                f"split {name!r} is not a contiguous range of episode indices: {list(episodes)}"
            )
        if start < 0 or end > num_episodes:
            raise ValueError(
                f"split {name!r} ({start}:{end}) is outside episodes 0:{num_episodes}"
            )
        for other_start, other_end, other in taken:
            if start < other_end and other_start < end:
                raise ValueError(f"splits {other!r} and {name!r} overlap")
        taken.append((start, end, name))
        result[name] = f"{start}:{end}"
    return result


def _update_chunk_file_indices(
    chunk_index: int, file_index: int, chunks_size: int
) -> tuple[int, int]:
    if file_index == chunks_size - 1:
        return chunk_index + 1, 0
    return chunk_index, file_index + 1


def _assign_files(
    sizes: Sequence[int], *, limit_bytes: float, chunks_size: int
) -> list[tuple[int, int]]:
    """(chunk_index, file_index) per episode: a file is closed before the episode that would fill it."""
    chunk_index, file_index = 0, 0
    current = 0
    locations = []
    for size in sizes:
        if current > 0 and current + size >= limit_bytes:
            chunk_index, file_index = _update_chunk_file_indices(
                chunk_index, file_index, chunks_size
            )
            current = 0
        locations.append((chunk_index, file_index))
        current += size
    return locations


def _feature_arrays(
    table: pa.Table, features: dict[str, FeatureSpec]
) -> dict[str, np.ndarray]:
    arrays = {}
    for name in features:
        values = _values(table.column(name))
        if name == "timestamp":
            # lerobot's episode buffer holds timestamps as Python floats, so its stats are float64.
            values = values.astype(np.float64)
        arrays[name] = values
    return arrays


def _episode_tasks(
    table: pa.Table, bounds: list[tuple[int, int]], tasks: list[str]
) -> list[list[str]]:
    task_index = table.column("task_index").to_numpy()
    result = []
    for start, stop in bounds:
        # lerobot stores list(set(...)) here; first-appearance order keeps the bytes reproducible.
        _, first = np.unique(task_index[start:stop], return_index=True)
        result.append([tasks[int(task_index[start + i])] for i in sorted(first)])
    return result


def _write_data_files(
    root: Path, episode_tables: list[pa.Table], locations: list[tuple[int, int]]
) -> None:
    groups: dict[tuple[int, int], list[pa.Table]] = {}
    for location, ep_table in zip(locations, episode_tables, strict=True):
        groups.setdefault(location, []).append(ep_table)
    for (chunk_index, file_index), tables in groups.items():
        path = root / DEFAULT_DATA_PATH.format(
            chunk_index=chunk_index, file_index=file_index
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(
            path, schema=tables[0].schema, **_PARQUET_OPTIONS
        ) as writer:
            for ep_table in tables:
                # One write per episode, so one row group per episode as in lerobot.
                writer.write_table(ep_table)


def _write_episode_files(
    root: Path, rows: list[dict[str, Any]], locations: list[tuple[int, int]]
) -> None:
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for location, row in zip(locations, rows, strict=True):
        groups.setdefault(location, []).append(row)
    for (chunk_index, file_index), file_rows in groups.items():
        path = root / DEFAULT_EPISODES_PATH.format(
            chunk_index=chunk_index, file_index=file_index
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = None
        try:
            for start in range(0, len(file_rows), _EPISODES_PER_ROW_GROUP):
                batch = file_rows[start : start + _EPISODES_PER_ROW_GROUP]
                # pa.Table.from_pydict infers the same types lerobot's _flush_metadata_buffer gets.
                table = pa.Table.from_pydict(
                    {key: [row[key] for row in batch] for key in batch[0]}
                )
                if writer is None:
                    writer = pq.ParquetWriter(
                        path, schema=table.schema, **_PARQUET_OPTIONS
                    )
                writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()


def _write_tasks(root: Path, tasks: list[str]) -> None:
    pandas_metadata = {
        "index_columns": [_TASKS_INDEX_COLUMN],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": _TASKS_INDEX_COLUMN,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
    }
    schema = pa.schema(
        [
            pa.field("task_index", pa.int64()),
            pa.field(_TASKS_INDEX_COLUMN, pa.string()),
        ],
        metadata={"pandas": json.dumps(pandas_metadata)},
    )
    table = pa.Table.from_arrays(
        [pa.array(range(len(tasks)), pa.int64()), pa.array(tasks, pa.string())],
        schema=schema,
    )
    path = root / DEFAULT_TASKS_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **_PARQUET_OPTIONS)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
