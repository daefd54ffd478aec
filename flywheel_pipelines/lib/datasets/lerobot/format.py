"""The LeRobotDataset v3.0 on-disk contract: path templates, info.json keys, feature specs.

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

The writer (:mod:`.writer`), the reader and validator (:mod:`.reader`) and the statistics
(:mod:`.stats`) all follow this contract; it is its own module because it is what lerobot's loader
relies on, changed only together with a ``CODEBASE_VERSION``, while the code on either side of it
may change freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

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
]

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
