"""Tests for the LeRobot v3.0 writer/reader, on real parquet files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel_pipelines.lib.datasets.lerobot.format import (
    DEFAULT_DATA_PATH,
    DEFAULT_EPISODES_PATH,
    DEFAULT_TASKS_PATH,
    INFO_PATH,
    QUANTILE_KEYS,
    STAT_KEYS,
    STATS_PATH,
    FeatureSpec,
    LeRobotFormatError,
)
from flywheel_pipelines.lib.datasets.lerobot.reader import load_stats, load_tasks, read_lerobot_v3
from flywheel_pipelines.lib.datasets.lerobot.writer import write_lerobot_v3

LENGTHS = (5, 7, 4)
FPS = 10
TASKS = ["pick up the cube", "place the cube in the bin"]
FEATURES = {
    "observation.state": FeatureSpec("float32", (3,), ["shoulder", "elbow", "gripper"]),
    "action": FeatureSpec("float32", (2,), None),
    "observation.environment_state": FeatureSpec("float32", (4,), None),
}
SPLITS = {"train": [0, 1], "val": [2]}
DEFAULT_NAMES = ["timestamp", "frame_index", "episode_index", "index", "task_index"]


def _vectors(rng: np.random.Generator, n: int, width: int) -> pa.FixedSizeListArray:
    values = rng.normal(size=(n, width)).astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width)


def _frames(lengths: tuple[int, ...] = LENGTHS, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    episode_index = np.concatenate(
        [np.full(length, ep) for ep, length in enumerate(lengths)]
    )
    frame_index = np.concatenate([np.arange(length) for length in lengths])
    # Episode 2 switches task mid-way so an episode can list two tasks.
    task_index = np.where(episode_index == 1, 1, 0)
    task_index[sum(lengths[:2]) + 2 :] = 1
    return pa.table(
        {
            "observation.state": _vectors(rng, n, 3),
            "action": _vectors(rng, n, 2),
            "observation.environment_state": _vectors(rng, n, 4),
            "episode_index": pa.array(episode_index, pa.int64()),
            "frame_index": pa.array(frame_index, pa.int64()),
            "timestamp": pa.array((frame_index / FPS).astype(np.float32)),
            "task_index": pa.array(task_index, pa.int64()),
        }
    )


def _write(root: Path, frames: pa.Table | None = None, **overrides) -> dict:
    kwargs = {
        "frames": _frames() if frames is None else frames,
        "features": FEATURES,
        "fps": FPS,
        "robot_type": "so100",
        "tasks": TASKS,
        "splits": SPLITS,
    }
    kwargs.update(overrides)
    return write_lerobot_v3(root, **kwargs)


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        return array.flatten().to_numpy().reshape(len(array), array.type.list_size)
    return array.to_numpy().reshape(-1, 1)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    _write(root)
    return root


def test_layout_has_every_file(dataset: Path) -> None:
    expected = {
        INFO_PATH,
        STATS_PATH,
        DEFAULT_TASKS_PATH,
        DEFAULT_DATA_PATH.format(chunk_index=0, file_index=0),
        DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0),
    }
    written = {
        p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()
    }
    assert written == expected
    assert (
        DEFAULT_DATA_PATH.format(chunk_index=0, file_index=0)
        == "data/chunk-000/file-000.parquet"
    )


def test_info_json(dataset: Path) -> None:
    info = json.loads((dataset / INFO_PATH).read_text())
    assert list(info) == [
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
    ]
    assert info["codebase_version"] == "v3.0"
    assert info["robot_type"] == "so100"
    assert info["total_episodes"] == 3
    assert info["total_frames"] == sum(LENGTHS)
    assert info["total_tasks"] == 2
    assert info["chunks_size"] == 1000
    assert info["data_files_size_in_mb"] == 100
    assert info["fps"] == FPS
    assert info["splits"] == {"train": "0:2", "val": "2:3"}
    assert (
        info["data_path"]
        == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    )
    assert info["video_path"] is None
    assert list(info["features"]) == [*FEATURES, *DEFAULT_NAMES]
    assert info["features"]["observation.state"] == {
        "dtype": "float32",
        "shape": [3],
        "names": ["shoulder", "elbow", "gripper"],
    }
    assert info["features"]["action"] == {
        "dtype": "float32",
        "shape": [2],
        "names": None,
    }
    assert info["features"]["timestamp"] == {
        "dtype": "float32",
        "shape": [1],
        "names": None,
    }
    for name in DEFAULT_NAMES[1:]:
        assert info["features"][name] == {"dtype": "int64", "shape": [1], "names": None}
    # lerobot's write_json: indent=4, no trailing newline.
    assert (dataset / INFO_PATH).read_text() == json.dumps(
        info, indent=4, ensure_ascii=False
    )


def test_extra_info_is_merged_but_cannot_shadow(tmp_path: Path) -> None:
    info = _write(tmp_path / "a", extra_info={"flywheel": {"source": "sim"}})
    assert info["flywheel"] == {"source": "sim"}
    assert json.loads((tmp_path / "a" / INFO_PATH).read_text())["flywheel"] == {
        "source": "sim"
    }
    with pytest.raises(ValueError, match="fps"):
        _write(tmp_path / "b", extra_info={"fps": 30})


def test_stats_json_matches_numpy(dataset: Path) -> None:
    frames = _frames()
    stats = json.loads((dataset / STATS_PATH).read_text())
    assert list(stats) == [*FEATURES, *DEFAULT_NAMES]
    frames = frames.append_column(
        "index", pa.array(np.arange(frames.num_rows), pa.int64())
    )
    for name in stats:
        data = _matrix(frames.column(name)).astype(np.float64)
        ft = stats[name]
        assert list(ft) == list(STAT_KEYS)
        np.testing.assert_allclose(ft["min"], data.min(axis=0), rtol=1e-6)
        np.testing.assert_allclose(ft["max"], data.max(axis=0), rtol=1e-6)
        np.testing.assert_allclose(ft["mean"], data.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ft["std"], data.std(axis=0), rtol=1e-5, atol=1e-6)
        assert ft["count"] == [frames.num_rows]
        quantiles = np.array([ft[key] for key in QUANTILE_KEYS])
        assert np.all(np.diff(quantiles, axis=0) >= 0)
        assert np.all(quantiles >= data.min(axis=0) - 1e-6)
        assert np.all(quantiles <= data.max(axis=0) + 1e-6)
    # Integer features keep integer min/max, as lerobot's tolist() of int64 arrays does.
    assert stats["frame_index"]["min"] == [0]
    assert stats["frame_index"]["max"] == [max(LENGTHS) - 1]
    assert stats["episode_index"]["max"] == [2]
    loaded = load_stats(dataset)
    assert loaded["action"]["mean"].shape == (2,)
    assert loaded["timestamp"]["mean"].shape == (1,)


def test_episodes_parquet(dataset: Path) -> None:
    episodes = pq.read_table(
        dataset / DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0)
    )
    assert episodes.column_names[:7] == [
        "episode_index",
        "tasks",
        "length",
        "data/chunk_index",
        "data/file_index",
        "dataset_from_index",
        "dataset_to_index",
    ]
    assert episodes.column_names[-2:] == [
        "meta/episodes/chunk_index",
        "meta/episodes/file_index",
    ]
    stats_columns = [
        f"stats/{f}/{s}" for f in [*FEATURES, *DEFAULT_NAMES] for s in STAT_KEYS
    ]
    assert episodes.column_names[7:-2] == stats_columns

    rows = episodes.to_pylist()
    assert [r["episode_index"] for r in rows] == [0, 1, 2]
    assert [r["length"] for r in rows] == list(LENGTHS)
    assert [r["tasks"] for r in rows] == [[TASKS[0]], [TASKS[1]], TASKS]
    starts = [r["dataset_from_index"] for r in rows]
    stops = [r["dataset_to_index"] for r in rows]
    assert starts[0] == 0 and stops[-1] == sum(LENGTHS)
    assert starts[1:] == stops[:-1]
    assert all(r["data/chunk_index"] == 0 and r["data/file_index"] == 0 for r in rows)

    frames = _frames()
    for row, start, stop in zip(rows, starts, stops, strict=True):
        state = _matrix(frames.column("observation.state"))[start:stop]
        np.testing.assert_allclose(
            row["stats/observation.state/min"], state.min(axis=0)
        )
        np.testing.assert_allclose(
            row["stats/observation.state/max"], state.max(axis=0)
        )
        np.testing.assert_allclose(
            row["stats/observation.state/mean"], state.mean(axis=0), rtol=1e-5
        )
        np.testing.assert_allclose(
            row["stats/observation.state/std"], state.std(axis=0), rtol=1e-4, atol=1e-6
        )
        assert row["stats/observation.state/count"] == [stop - start]
        assert row["stats/index/min"] == [start]
        assert row["stats/index/max"] == [stop - 1]


def test_tasks_parquet_maps_task_to_index(dataset: Path) -> None:
    table = pq.read_table(dataset / DEFAULT_TASKS_PATH)
    pandas_meta = json.loads(table.schema.metadata[b"pandas"])
    index_column = pandas_meta["index_columns"][0]
    mapping = dict(
        zip(
            table.column(index_column).to_pylist(),
            table.column("task_index").to_pylist(),
            strict=True,
        )
    )
    assert mapping == {TASKS[0]: 0, TASKS[1]: 1}
    assert load_tasks(dataset) == TASKS


def test_tasks_parquet_reads_as_lerobot_load_tasks_expects(dataset: Path) -> None:
    pd = pytest.importorskip("pandas")
    tasks = pd.read_parquet(dataset / DEFAULT_TASKS_PATH)
    assert list(tasks.columns) == ["task_index"]
    assert list(tasks.index) == TASKS
    # LeRobotDatasetMetadata.get_task_index does exactly this lookup.
    assert int(tasks.loc[TASKS[1]].task_index) == 1


def test_data_file_schema_matches_lerobot(dataset: Path) -> None:
    path = dataset / DEFAULT_DATA_PATH.format(chunk_index=0, file_index=0)
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    assert schema.names == [*FEATURES, *DEFAULT_NAMES]
    state_type = schema.field("observation.state").type
    assert pa.types.is_fixed_size_list(state_type)
    assert state_type.list_size == 3 and state_type.value_type == pa.float32()
    assert schema.field("timestamp").type == pa.float32()
    assert schema.field("index").type == pa.int64()
    hf = json.loads(schema.metadata[b"huggingface"])
    assert hf["info"]["features"]["observation.state"] == {
        "feature": {"dtype": "float32", "_type": "Value"},
        "length": 3,
        "_type": "List",
    }
    assert hf["info"]["features"]["timestamp"] == {"dtype": "float32", "_type": "Value"}
    # One row group per episode, as lerobot's per-episode ParquetWriter.write_table calls make.
    assert parquet.metadata.num_row_groups == len(LENGTHS)
    assert parquet.metadata.row_group(0).column(0).compression == "SNAPPY"


def test_round_trip(dataset: Path) -> None:
    info, frames, episodes = read_lerobot_v3(dataset)
    assert info == json.loads((dataset / INFO_PATH).read_text())
    original = _frames()
    assert frames.num_rows == original.num_rows
    for name in original.column_names:
        assert frames.column(name).to_pylist() == original.column(name).to_pylist(), (
            name
        )
    assert frames.column("index").to_pylist() == list(range(original.num_rows))
    assert episodes.num_rows == len(LENGTHS)
    assert episodes.column("length").to_pylist() == list(LENGTHS)


def test_round_trip_through_reader_output(dataset: Path, tmp_path: Path) -> None:
    info, frames, _ = read_lerobot_v3(dataset)
    again = tmp_path / "again"
    features = {
        name: FeatureSpec(ft["dtype"], tuple(ft["shape"]), ft["names"])
        for name, ft in info["features"].items()
        if name not in DEFAULT_NAMES
    }
    _write(again, frames=frames, features=features)
    for path in sorted(p for p in dataset.rglob("*") if p.is_file()):
        assert path.read_bytes() == (again / path.relative_to(dataset)).read_bytes(), (
            path
        )


def test_writes_are_deterministic(tmp_path: Path) -> None:
    _write(tmp_path / "a")
    _write(tmp_path / "b")
    files_a = sorted(
        p.relative_to(tmp_path / "a")
        for p in (tmp_path / "a").rglob("*")
        if p.is_file()
    )
    files_b = sorted(
        p.relative_to(tmp_path / "b")
        for p in (tmp_path / "b").rglob("*")
        if p.is_file()
    )
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (
            tmp_path / "b" / rel
        ).read_bytes(), rel


def test_files_roll_over_by_size_and_chunk(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    # A limit below one episode's size puts each episode in its own file; 2 files per chunk.
    _write(root, data_files_size_in_mb=1e-6, chunks_size=2)
    data_files = sorted(
        p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet")
    )
    assert data_files == [
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        "data/chunk-001/file-000.parquet",
    ]
    info, frames, episodes = read_lerobot_v3(root)
    assert episodes.column("data/chunk_index").to_pylist() == [0, 0, 1]
    assert episodes.column("data/file_index").to_pylist() == [0, 1, 0]
    assert (
        frames.column("observation.state").to_pylist()
        == _frames().column("observation.state").to_pylist()
    )
    assert info["chunks_size"] == 2


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ({"train": [0, 2]}, "not a contiguous range"),
        ({"train": [0, 1], "val": [1, 2]}, "overlap"),
        ({"train": [0, 1, 2, 3]}, "outside episodes"),
        ({"train": []}, "empty"),
        ({}, "at least one split"),
    ],
)
def test_bad_splits_raise(tmp_path: Path, splits: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _write(tmp_path / "ds", splits=splits)


def test_unsorted_contiguous_split_is_accepted(tmp_path: Path) -> None:
    info = _write(tmp_path / "ds", splits={"train": [1, 0], "val": [2]})
    assert info["splits"] == {"train": "0:2", "val": "2:3"}


def test_bad_frames_raise(tmp_path: Path) -> None:
    frames = _frames()
    with pytest.raises(ValueError, match="task_index"):
        bad = frames.set_column(
            frames.schema.get_field_index("task_index"),
            "task_index",
            pa.array(np.full(frames.num_rows, 5), pa.int64()),
        )
        _write(tmp_path / "a", frames=bad)
    with pytest.raises(ValueError, match="episode_index"):
        episodes = frames.column("episode_index").to_numpy().copy()
        episodes[episodes == 2] = 3
        bad = frames.set_column(
            frames.schema.get_field_index("episode_index"),
            "episode_index",
            pa.array(episodes),
        )
        _write(tmp_path / "b", frames=bad)
    with pytest.raises(ValueError, match="missing columns"):
        _write(tmp_path / "c", frames=frames.drop_columns(["action"]))
    with pytest.raises(ValueError, match="frame_index"):
        index = frames.column("frame_index").to_numpy()[::-1].copy()
        bad = frames.set_column(
            frames.schema.get_field_index("frame_index"), "frame_index", pa.array(index)
        )
        _write(tmp_path / "d", frames=bad)


def test_root_must_be_empty(dataset: Path) -> None:
    with pytest.raises(ValueError, match="must not exist or be empty"):
        _write(dataset)


@pytest.mark.parametrize(
    "relative",
    [
        INFO_PATH,
        STATS_PATH,
        DEFAULT_TASKS_PATH,
        DEFAULT_DATA_PATH.format(chunk_index=0, file_index=0),
    ],
)
def test_missing_file_is_named(dataset: Path, relative: str) -> None:
    (dataset / relative).unlink()
    with pytest.raises(LeRobotFormatError, match=relative.split("/")[-1]) as err:
        read_lerobot_v3(dataset)
    assert isinstance(err.value, ValueError)
    assert str(dataset / relative) in str(err.value)


def test_missing_episodes_file_is_named(dataset: Path) -> None:
    (dataset / DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0)).unlink()
    with pytest.raises(ValueError, match="meta/episodes"):
        read_lerobot_v3(dataset)


def test_inconsistent_info_is_reported(dataset: Path) -> None:
    info = json.loads((dataset / INFO_PATH).read_text())
    info["total_frames"] += 1
    (dataset / INFO_PATH).write_text(json.dumps(info, indent=4))
    with pytest.raises(ValueError, match="total_frames"):
        read_lerobot_v3(dataset)


def test_wrong_codebase_version_is_reported(dataset: Path) -> None:
    info = json.loads((dataset / INFO_PATH).read_text())
    info["codebase_version"] = "v2.1"
    (dataset / INFO_PATH).write_text(json.dumps(info, indent=4))
    with pytest.raises(ValueError, match="info.json: codebase_version"):
        read_lerobot_v3(dataset)


def test_scalar_feature_and_null_values(tmp_path: Path) -> None:
    frames = _frames()
    reward = np.linspace(0.0, 1.0, frames.num_rows, dtype=np.float32)
    features = {**FEATURES, "next.reward": FeatureSpec("float32", (1,), None)}
    info = _write(
        tmp_path / "a",
        frames=frames.append_column("next.reward", pa.array(reward)),
        features=features,
    )
    assert info["features"]["next.reward"] == {
        "dtype": "float32",
        "shape": [1],
        "names": None,
    }
    _, read_frames, _ = read_lerobot_v3(tmp_path / "a")
    assert read_frames.schema.field("next.reward").type == pa.float32()
    np.testing.assert_array_equal(read_frames.column("next.reward").to_numpy(), reward)
    stats = load_stats(tmp_path / "a")["next.reward"]
    assert stats["min"].shape == (1,)
    np.testing.assert_allclose(stats["max"], [1.0])

    with_null = pa.FixedSizeListArray.from_arrays(
        pa.array([None] + [0.0] * (frames.num_rows * 2 - 1), pa.float32()), 2
    )
    bad = frames.set_column(
        frames.schema.get_field_index("action"), "action", with_null
    )
    with pytest.raises(ValueError, match="null"):
        _write(tmp_path / "b", frames=bad)
