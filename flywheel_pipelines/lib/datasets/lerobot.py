"""Writer and reader for the LeRobotDataset v3.0 on-disk layout (no Dagster, no ``lerobot`` import).

The layout, file schemas and statistics match what ``lerobot`` 0.4.4 (the PyPI wheel
``lerobot-0.4.4-py3-none-any.whl``, ``CODEBASE_VERSION = "v3.0"``) writes through
``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` / ``finalize``. Sources matched:

* ``lerobot/datasets/utils.py``: the path templates (``DEFAULT_DATA_PATH``, ``DEFAULT_EPISODES_PATH``,
  ``DEFAULT_TASKS_PATH``, ``INFO_PATH``, ``STATS_PATH``), ``DEFAULT_FEATURES``, ``DEFAULT_CHUNK_SIZE``,
  ``DEFAULT_DATA_FILE_SIZE_IN_MB``, ``DEFAULT_VIDEO_FILE_SIZE_IN_MB``, ``create_empty_dataset_info``
  (info.json keys and their order), ``write_json`` (``indent=4, ensure_ascii=False``),
  ``serialize_dict`` / ``flatten_dict`` (``stats/<feature>/<stat>`` columns),
  ``get_hf_features_from_features`` (parquet column types), ``update_chunk_file_indices``,
  ``write_tasks`` / ``load_tasks`` (tasks.parquet is a pandas frame indexed by the task string).
* ``lerobot/datasets/compute_stats.py``: ``get_feature_stats`` through ``RunningQuantileStats``
  (min, max, mean, std, count and the histogram quantiles q01, q10, q50, q90, q99 per episode) and
  ``aggregate_stats`` (count-weighted mean, parallel variance, count-weighted quantiles) for
  ``meta/stats.json``.
* ``lerobot/datasets/lerobot_dataset.py``: ``LeRobotDatasetMetadata.save_episode`` /
  ``_save_episode_metadata`` / ``_flush_metadata_buffer`` (episodes parquet columns and order,
  10-episode row groups, snappy + dictionary encoding), ``LeRobotDataset.save_episode`` /
  ``_save_episode_data`` (one row group per episode, ``index`` = global frame index, episodes never
  split across files), and ``info["splits"]`` as ``"start:end"`` strings.

Deliberate differences, all invisible to lerobot's loader:

* ``stats.json`` lists features in info.json order; lerobot iterates a ``set`` there, so its order
  varies from run to run.
* Data files carry the ``huggingface`` schema metadata of a freshly built ``datasets.Dataset``
  (``{"info": {"features": ...}}``) without the random ``fingerprint`` that ``datasets.map`` adds,
  so that writes are byte-for-byte reproducible.
* ``tasks.parquet`` is written with pyarrow directly (pandas is not a dependency here); its
  ``pandas`` schema metadata lets ``pandas.read_parquet`` rebuild the task-string index exactly as
  ``load_tasks`` expects, but omits the informational ``pandas_version`` key.
* The file roll-over uses the in-memory (uncompressed) Arrow size of each episode rather than the
  size of the half-written parquet file that lerobot measures; whole episodes stay in one file.
* ``timestamp`` statistics are computed on the stored float32 values widened to float64; lerobot
  computes them on the float64 ``frame_index / fps`` values before they are narrowed on write.
* Only numeric features of shape ``(1,)`` or ``(n,)`` are supported (no image, video or string
  features, no multi-dimensional arrays), so ``video_path`` is ``null`` in info.json.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CODEBASE_VERSION = "v3.0"

DEFAULT_CHUNK_SIZE = 1000  # Max number of files per chunk directory.
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
EPISODES_DIR = "meta/episodes"
DATA_DIR = "data"
VIDEO_DIR = "videos"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DEFAULT_TASKS_PATH = "meta/tasks.parquet"
DEFAULT_EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_DATA_PATH = DATA_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_VIDEO_PATH = VIDEO_DIR + "/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"

DEFAULT_QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(q * 100):02d}" for q in DEFAULT_QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)
_NUM_QUANTILE_BINS = 5000
# lerobot flushes buffered episode metadata every `metadata_buffer_size` (10) episodes, and each
# flush becomes one row group.
_EPISODES_PER_ROW_GROUP = 10

_NUMERIC_DTYPES = {
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
}

# The writer's settings and lerobot's ParquetWriter settings; fixed so output is reproducible.
_PARQUET_OPTIONS = {"compression": "snappy", "use_dictionary": True}

_INFO_KEYS = (
    "codebase_version",
    "robot_type",
    "total_episodes",
    "total_frames",
    "total_tasks",
    "chunks_size",
    "data_files_size_in_mb",
    "video_files_size_in_mb",
    "fps",
    "splits",
    "data_path",
    "video_path",
    "features",
)

_EPISODE_REQUIRED_COLUMNS = (
    "episode_index",
    "tasks",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
    "meta/episodes/chunk_index",
    "meta/episodes/file_index",
)

_TASKS_INDEX_COLUMN = "__index_level_0__"


class LeRobotFormatError(ValueError):
    """A dataset on disk that is not a valid LeRobot v3.0 layout; the message names the file."""


@dataclass(frozen=True)
class FeatureSpec:
    """One entry of info.json's ``features``.

    Attributes:
        dtype: Numpy dtype name of the values, e.g. ``"float32"`` or ``"int64"``.
        shape: ``(1,)`` for a scalar column, ``(n,)`` for a fixed-size vector column.
        names: Optional names of the ``n`` components (lerobot stores them for motors/joints).
    """

    dtype: str
    shape: tuple[int, ...]
    names: list[str] | None = None

    def to_info(self) -> dict[str, Any]:
        """Return the feature as info.json writes it."""
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "names": list(self.names) if self.names is not None else None,
        }


DEFAULT_FEATURES: dict[str, FeatureSpec] = {
    "timestamp": FeatureSpec("float32", (1,), None),
    "frame_index": FeatureSpec("int64", (1,), None),
    "episode_index": FeatureSpec("int64", (1,), None),
    "index": FeatureSpec("int64", (1,), None),
    "task_index": FeatureSpec("int64", (1,), None),
}


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


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


def _arrow_type(spec: FeatureSpec) -> pa.DataType:
    """The Arrow type ``get_hf_features_from_features`` gives: a scalar or a fixed-size list."""
    value_type = _NUMERIC_DTYPES[spec.dtype]
    if tuple(spec.shape) == (1,):
        return value_type
    return pa.list_(value_type, spec.shape[0])


def _hf_feature(spec: FeatureSpec) -> dict[str, Any]:
    """``datasets.Features.to_dict()`` of ``Value`` / ``List(length=n)`` (datasets 4.x)."""
    value = {"dtype": spec.dtype, "_type": "Value"}
    if tuple(spec.shape) == (1,):
        return value
    return {"feature": value, "length": spec.shape[0], "_type": "List"}


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


# --------------------------------------------------------------------------------------------
# Statistics (a port of lerobot 0.4.4 compute_stats.py for numeric features)
# --------------------------------------------------------------------------------------------


def _episode_stats(
    episode_data: dict[str, np.ndarray],
) -> dict[str, dict[str, np.ndarray]]:
    """``compute_episode_stats`` for numeric features: reduce over frames (axis 0)."""
    return {
        name: _feature_stats(data, keepdims=data.ndim == 1)
        for name, data in episode_data.items()
    }


def _feature_stats(array: np.ndarray, *, keepdims: bool) -> dict[str, np.ndarray]:
    """``get_feature_stats(array, axis=0, keepdims)``."""
    reshaped = array.reshape(-1, 1) if array.ndim == 1 else array
    sample_count = array.shape[0]
    if reshaped.shape[0] < 2:
        # _compute_basic_stats: too few samples for a histogram, quantiles fall back to the mean.
        stats = {
            "min": np.min(reshaped, axis=0),
            "max": np.max(reshaped, axis=0),
            "mean": np.mean(reshaped, axis=0),
            "std": np.std(reshaped, axis=0),
            "count": np.array([sample_count]),
        }
        for key in QUANTILE_KEYS:
            stats[key] = stats["mean"].copy()
    else:
        stats = _running_quantile_stats(reshaped)
        stats["count"] = np.array([sample_count])
    if keepdims and len(array.shape) == 1:
        # _reshape_for_vector_stats keeps a 1-D input's stats as shape (1,).
        stats = {k: v if k == "count" else v.reshape(1) for k, v in stats.items()}
    return stats


def _running_quantile_stats(batch: np.ndarray) -> dict[str, np.ndarray]:
    """``RunningQuantileStats().update(batch).get_statistics()`` for a single batch.

    The operations and their dtypes follow lerobot's so the float rounding is the same: float32
    data gives float32 min/max/mean/std, and histogram quantiles in float64.
    """
    num_elements, vector_length = batch.shape
    mean = np.mean(batch, axis=0)
    mean_of_squares = np.mean(batch**2, axis=0)
    minimum = np.min(batch, axis=0)
    maximum = np.max(batch, axis=0)
    bin_edges = [
        np.linspace(minimum[i] - 1e-10, maximum[i] + 1e-10, _NUM_QUANTILE_BINS + 1)
        for i in range(vector_length)
    ]
    count = num_elements
    mean += (np.mean(batch, axis=0) - mean) * (num_elements / count)
    mean_of_squares += (np.mean(batch**2, axis=0) - mean_of_squares) * (
        num_elements / count
    )
    histograms = [
        np.zeros(_NUM_QUANTILE_BINS) + np.histogram(batch[:, i], bins=bin_edges[i])[0]
        for i in range(vector_length)
    ]
    variance = mean_of_squares - mean**2
    stats = {
        "min": minimum.copy(),
        "max": maximum.copy(),
        "mean": mean.copy(),
        "std": np.sqrt(np.maximum(0, variance)),
        "count": np.array([count]),
    }
    for q, key in zip(DEFAULT_QUANTILES, QUANTILE_KEYS, strict=True):
        target = q * count
        stats[key] = np.array(
            [
                _single_quantile(h, e, target)
                for h, e in zip(histograms, bin_edges, strict=True)
            ]
        )
    return stats


def _single_quantile(hist: np.ndarray, edges: np.ndarray, target_count: float) -> float:
    cumsum = np.cumsum(hist)
    idx = np.searchsorted(cumsum, target_count)
    if idx == 0:
        return edges[0]
    if idx >= len(cumsum):
        return edges[-1]
    count_before = cumsum[idx - 1]
    count_in_bin = cumsum[idx] - count_before
    if count_in_bin == 0:
        return edges[idx]
    fraction = (target_count - count_before) / count_in_bin
    return edges[idx] + fraction * (edges[idx + 1] - edges[idx])


def _aggregate_stats(
    stats_list: list[dict[str, dict[str, np.ndarray]]],
) -> dict[str, dict[str, np.ndarray]]:
    """``aggregate_stats``, keeping the first stats' feature order instead of a set's."""
    keys: list[str] = []
    for stats in stats_list:
        keys.extend(k for k in stats if k not in keys)
    return {
        key: _aggregate_feature_stats([s[key] for s in stats_list if key in s])
        for key in keys
    }


def _aggregate_feature_stats(
    stats_ft_list: list[dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    means = np.stack([s["mean"] for s in stats_ft_list])
    variances = np.stack([s["std"] ** 2 for s in stats_ft_list])
    counts = np.stack([s["count"] for s in stats_ft_list])
    total_count = counts.sum(axis=0)
    while counts.ndim < means.ndim:
        counts = np.expand_dims(counts, axis=-1)
    total_mean = (means * counts).sum(axis=0) / total_count
    delta_means = means - total_mean
    total_variance = ((variances + delta_means**2) * counts).sum(axis=0) / total_count
    aggregated = {
        "min": np.min(np.stack([s["min"] for s in stats_ft_list]), axis=0),
        "max": np.max(np.stack([s["max"] for s in stats_ft_list]), axis=0),
        "mean": total_mean,
        "std": np.sqrt(total_variance),
        "count": total_count,
    }
    quantile_keys = [
        k for k in stats_ft_list[0] if k.startswith("q") and k[1:].isdigit()
    ]
    for key in quantile_keys:
        if all(key in s for s in stats_ft_list):
            values = np.stack([s[key] for s in stats_ft_list])
            aggregated[key] = (values * counts).sum(axis=0) / total_count
    return aggregated


def _flatten(d: dict, parent_key: str = "", sep: str = "/") -> dict:
    items: dict = {}
    for key, value in d.items():
        new_key = f"{parent_key}{sep}{key}" if parent_key else key
        if isinstance(value, dict):
            items.update(_flatten(value, new_key, sep))
        else:
            items[new_key] = value
    return items


def _serialize_stats(
    stats: dict[str, dict[str, np.ndarray]],
) -> dict[str, dict[str, Any]]:
    return {
        name: {key: value.tolist() for key, value in ft.items()}
        for name, ft in stats.items()
    }


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


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


__all__ = [
    "CHUNK_FILE_PATTERN",
    "CODEBASE_VERSION",
    "DATA_DIR",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_DATA_FILE_SIZE_IN_MB",
    "DEFAULT_DATA_PATH",
    "DEFAULT_EPISODES_PATH",
    "DEFAULT_FEATURES",
    "DEFAULT_QUANTILES",
    "DEFAULT_TASKS_PATH",
    "DEFAULT_VIDEO_FILE_SIZE_IN_MB",
    "DEFAULT_VIDEO_PATH",
    "EPISODES_DIR",
    "INFO_PATH",
    "QUANTILE_KEYS",
    "STATS_PATH",
    "STAT_KEYS",
    "VIDEO_DIR",
    "FeatureSpec",
    "LeRobotFormatError",
    "load_stats",
    "load_tasks",
    "read_lerobot_v3",
    "write_lerobot_v3",
]
