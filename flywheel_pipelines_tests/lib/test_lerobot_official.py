"""lerobot's own ``LeRobotDataset`` (0.4.4, format v3.0) loads the datasets we write, offline, value for value.

lerobot does not install beside the project's torch pin, so it lives in its own environment
(``.venv-lerobot``, built by ``make lerobot-env``, which ``make test`` runs first; pinned in
``tools/lerobot_check/requirements.txt``). ``tools/lerobot_check/dump_lerobot_dataset.py`` loads a
dataset there with ``LeRobotDataset(repo_id, root=...)`` and dumps every frame as lerobot returns
it; these tests compare the dump with the files we wrote. Two datasets: the curated dataset the
pipeline builds from a simulated robot-day, and one written directly with the writer's less common
cases (several tasks, a task change inside an episode, scalar, float64 and int32 features, data and
episode files rolled over across chunks).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel_pipelines.lib.datasets.lerobot.format import DEFAULT_EPISODES_PATH, INFO_PATH, STAT_KEYS, STATS_PATH, FeatureSpec
from flywheel_pipelines.lib.datasets.lerobot.reader import load_tasks
from flywheel_pipelines.lib.datasets.lerobot.writer import write_lerobot_v3
from flywheel_pipelines_tests.conftest import missing
from flywheel_pipelines_tests.lib.conftest import CuratedDataset

REPO = Path(__file__).resolve().parents[2]
LEROBOT_PYTHON = REPO / ".venv-lerobot" / "bin" / "python"
DUMP_SCRIPT = REPO / "tools" / "lerobot_check" / "dump_lerobot_dataset.py"
CHUNK = 8  # frames per action chunk, as an ACT-style policy loads them through delta_timestamps


def _lerobot_python() -> Path:
    """The lerobot environment's interpreter; in CI its absence is a failure, elsewhere a skip."""
    if not LEROBOT_PYTHON.is_file():
        missing(f"lerobot environment missing ({LEROBOT_PYTHON}); `make lerobot-env` builds it (`make test` does too)")
    return LEROBOT_PYTHON


@dataclass(frozen=True)
class LeRobotView:
    """What lerobot made of a dataset, beside what we wrote into it."""

    root: Path
    meta: dict  # meta.json of the dump
    frames: dict[str, np.ndarray]  # feature -> every frame, as LeRobotDataset.__getitem__ returns it
    chunk: dict[str, np.ndarray]  # action chunks and their padding flags
    episode: dict[str, np.ndarray]  # every frame of the dataset loaded with episodes=[last]
    expected: pa.Table  # the frames we wrote: feature columns, one row per frame in index order
    tasks: list[str]  # our tasks, by task_index


def load_with_lerobot(root: Path, out: Path, expected: pa.Table, tasks: list[str], *, last_episode: int) -> LeRobotView:
    """Run the dump script on ``root`` in the lerobot environment and read back what it wrote into ``out``."""
    python = _lerobot_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    command = [str(python), str(DUMP_SCRIPT), str(root), str(out), "--chunk", f"action={CHUNK}", "--episode", str(last_episode)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    if result.returncode != 0:
        pytest.fail(f"lerobot's LeRobotDataset could not load {root}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")

    def npz(name: str) -> dict[str, np.ndarray]:
        with np.load(out / name) as data:
            return {key: data[key] for key in data.files}

    meta = json.loads((out / "meta.json").read_text())
    return LeRobotView(root, meta, npz("frames.npz"), npz("chunk.npz"), npz("episode.npz"), expected, tasks)


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A column as numpy: ``(rows,)`` for a scalar feature, ``(rows, n)`` for a fixed-size list."""
    column = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
    return column.to_numpy(zero_copy_only=False)


def _tensor_dtype(dtype: str) -> np.dtype:
    """The dtype of lerobot's tensor for a feature of ``dtype``.

    ``hf_transform_to_torch`` calls ``torch.tensor`` on the row's Python values, so every float
    feature comes out float32 and every integer one int64, whatever info.json says (the same for
    datasets lerobot writes itself). The pipeline's features are float32 and int64 throughout.
    """
    return np.dtype("float32") if np.dtype(dtype).kind == "f" else np.dtype("int64")


def _episode_ranges(table: pa.Table) -> list[tuple[int, int]]:
    episode_index = _column(table, "episode_index")
    starts = np.flatnonzero(np.diff(episode_index, prepend=-1))
    stops = np.append(starts[1:], len(episode_index))
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


# --- the two datasets ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def curated(tmp_path_factory, dataset: CuratedDataset) -> LeRobotView:
    """The dataset the pipeline curates from a simulated robot-day, as lerobot loads it."""
    # A copy, so that whatever lerobot does to its root cannot touch the session's shared dataset.
    root = tmp_path_factory.mktemp("lerobot-curated") / "reach"
    shutil.copytree(dataset.root, root)
    # Our frames are what our data files hold, read with pyarrow alone.
    expected = pa.concat_tables(pq.read_table(path) for path in sorted(root.glob("data/*/*.parquet")))
    info = json.loads((root / INFO_PATH).read_text())
    return load_with_lerobot(
        root, tmp_path_factory.mktemp("lerobot-curated-dump"), expected, load_tasks(root),
        last_episode=info["total_episodes"] - 1,
    )


WRITER_FPS = 10
WRITER_LENGTHS = (6, 9, 4, 7, 5)
WRITER_TASKS = ["reach the red target", "reach the blue target", "hold position"]
WRITER_FEATURES = {
    "observation.state": FeatureSpec("float32", (4,), ["shoulder.pos", "elbow.pos", "shoulder.vel", "elbow.vel"]),
    "observation.effort": FeatureSpec("float64", (3,), None),
    "observation.contacts": FeatureSpec("int32", (1,), None),
    "action": FeatureSpec("float32", (2,), ["shoulder.target", "elbow.target"]),
    "next.reward": FeatureSpec("float32", (1,), None),
}


def _writer_frames() -> pa.Table:
    rng = np.random.default_rng(7)
    n = sum(WRITER_LENGTHS)
    episode_index = np.concatenate([np.full(length, ep, np.int64) for ep, length in enumerate(WRITER_LENGTHS)])
    frame_index = np.concatenate([np.arange(length, dtype=np.int64) for length in WRITER_LENGTHS])
    task_index = np.zeros(n, np.int64)
    task_index[episode_index == 1] = 1
    # Episode 2 changes task half-way, so one episode lists two tasks; episode 3 is "hold position".
    task_index[(episode_index == 2) & (frame_index >= 2)] = 1
    task_index[episode_index == 3] = 2

    def vectors(width: int, dtype) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * width).astype(dtype)), width)

    return pa.table({
        "observation.state": vectors(4, np.float32),
        "observation.effort": vectors(3, np.float64),
        "observation.contacts": pa.array(rng.integers(-3, 40, size=n).astype(np.int32)),
        "action": vectors(2, np.float32),
        "next.reward": pa.array(rng.uniform(0.0, 1.0, size=n).astype(np.float32)),
        "episode_index": pa.array(episode_index),
        "frame_index": pa.array(frame_index),
        "timestamp": pa.array((frame_index / WRITER_FPS).astype(np.float32)),
        "task_index": pa.array(task_index),
    })


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> LeRobotView:
    """The writer's less common cases, with every data and episodes file rolled over (2 files a chunk)."""
    root = tmp_path_factory.mktemp("lerobot-writer") / "edge"
    frames = _writer_frames()
    write_lerobot_v3(
        root, frames=frames, features=WRITER_FEATURES, fps=WRITER_FPS, robot_type="flywheel_arm2", tasks=WRITER_TASKS,
        splits={"train": [0, 1, 2], "val": [3, 4]}, data_files_size_in_mb=1e-6, chunks_size=2,
    )
    expected = frames.append_column("index", pa.array(np.arange(frames.num_rows, dtype=np.int64)))
    return load_with_lerobot(
        root, tmp_path_factory.mktemp("lerobot-writer-dump"), expected, WRITER_TASKS, last_episode=len(WRITER_LENGTHS) - 1
    )


@pytest.fixture(params=["curated", "written"])
def view(request) -> LeRobotView:
    return request.getfixturevalue(request.param)


# --- what lerobot reports --------------------------------------------------------------------


def test_lerobot_reads_our_info_and_counts(view: LeRobotView):
    info = json.loads((view.root / INFO_PATH).read_text())
    meta = view.meta
    assert meta["lerobot_version"] == "0.4.4"
    assert meta["codebase_version"] == info["codebase_version"] == "v3.0"
    assert meta["info"] == info
    assert meta["fps"] == info["fps"]
    episodes = _episode_ranges(view.expected)
    assert meta["num_episodes"] == info["total_episodes"] == len(episodes)
    assert meta["num_frames"] == meta["len"] == info["total_frames"] == view.expected.num_rows


def test_lerobot_reports_our_features_shapes_and_dtypes(view: LeRobotView):
    info = json.loads((view.root / INFO_PATH).read_text())
    assert view.meta["features"] == info["features"]
    assert list(view.frames) == list(info["features"])
    for name, ft in info["features"].items():
        assert view.meta["item_dtypes"][name] == f"torch.{_tensor_dtype(ft['dtype'])}", name
        assert view.frames[name].dtype == _tensor_dtype(ft["dtype"]), name
        # lerobot hands a shape-(1,) feature out as a 0-d tensor and an (n,) feature as (n,).
        assert view.meta["item_shapes"][name] == ([] if ft["shape"] == [1] else ft["shape"]), name


def test_the_pipelines_features_come_out_in_their_own_dtype(curated: LeRobotView):
    """No feature of a curated dataset is narrowed on the way into a policy."""
    info = json.loads((curated.root / INFO_PATH).read_text())
    assert {name: str(values.dtype) for name, values in curated.frames.items()} == {
        name: ft["dtype"] for name, ft in info["features"].items()
    }


def test_every_frame_matches_ours_value_for_value(view: LeRobotView):
    assert set(view.frames) == set(view.expected.column_names)
    for name, values in view.frames.items():
        expected = _column(view.expected, name)
        # Bit for bit, in the same frame order (float64 and int32 features as lerobot's tensors hold them).
        np.testing.assert_array_equal(values, expected.astype(_tensor_dtype(expected.dtype)), err_msg=name, strict=True)
    assert view.frames["index"].tolist() == list(range(view.expected.num_rows))
    for start, stop in _episode_ranges(view.expected):
        assert view.frames["frame_index"][start:stop].tolist() == list(range(stop - start))


def test_every_frame_carries_its_task_string(view: LeRobotView):
    task_index = _column(view.expected, "task_index")
    assert view.meta["frame_tasks"] == [view.tasks[i] for i in task_index]
    assert view.meta["tasks"] == {"task": view.tasks, "task_index": list(range(len(view.tasks)))}


def test_lerobot_episode_table_matches_our_frames(view: LeRobotView):
    episodes = view.meta["episodes"]
    ranges = _episode_ranges(view.expected)
    task_index = _column(view.expected, "task_index")
    assert episodes["episode_index"] == list(range(len(ranges)))
    assert list(zip(episodes["dataset_from_index"], episodes["dataset_to_index"], strict=True)) == ranges
    assert episodes["length"] == [stop - start for start, stop in ranges]
    for ep, (start, stop) in enumerate(ranges):
        assert sorted(episodes["tasks"][ep]) == sorted({view.tasks[i] for i in task_index[start:stop]}), ep


def test_action_chunks_stop_at_the_episode_end(view: LeRobotView):
    """delta_timestamps reads the next frames of the same episode and pads past its end."""
    action = _column(view.expected, "action")
    want_chunks, want_pad = [], []
    for start, stop in _episode_ranges(view.expected):
        for i in range(start, stop):
            rows = [min(i + k, stop - 1) for k in range(CHUNK)]
            want_chunks.append(action[rows])
            want_pad.append([i + k >= stop for k in range(CHUNK)])
    np.testing.assert_array_equal(view.chunk["action"], np.stack(want_chunks), strict=True)
    np.testing.assert_array_equal(view.chunk["action_is_pad"], np.array(want_pad), strict=True)


def test_one_episode_loads_alone(view: LeRobotView):
    start, stop = _episode_ranges(view.expected)[-1]
    assert view.meta["episode"]["num_episodes"] == 1
    assert view.meta["episode"]["len"] == view.meta["episode"]["num_frames"] == stop - start
    for name, values in view.episode.items():
        expected = _column(view.expected, name)[start:stop]
        np.testing.assert_array_equal(values, expected.astype(_tensor_dtype(expected.dtype)), err_msg=name, strict=True)


def test_our_stats_are_lerobots_compute_stats(view: LeRobotView):
    """stats.json and the per-episode stats columns equal what lerobot's compute_stats gives for the frames."""
    ours = json.loads((view.root / STATS_PATH).read_text())
    theirs = view.meta["stats"]
    assert set(ours) == set(theirs) == set(view.meta["features"])
    for name, ft in theirs.items():
        assert list(ours[name]) == list(STAT_KEYS), name
        for key in STAT_KEYS:
            np.testing.assert_allclose(ours[name][key], ft[key], rtol=1e-9, atol=0, err_msg=f"{name} {key}")

    rows = []
    for path in sorted(view.root.glob("meta/episodes/*/*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    assert [r["episode_index"] for r in rows] == list(range(len(view.meta["episode_stats"])))
    for row, episode_stats in zip(rows, view.meta["episode_stats"], strict=True):
        for name, ft in episode_stats.items():
            for key in STAT_KEYS:
                np.testing.assert_allclose(
                    row[f"stats/{name}/{key}"], ft[key], rtol=1e-9, atol=0,
                    err_msg=f"episode {row['episode_index']} {name} {key}",
                )


def test_the_written_dataset_spans_files_and_chunks(written: LeRobotView):
    """The rolled-over layout is what lerobot read: each episode from its own file, chunks of two."""
    assert sorted(p.relative_to(written.root).as_posix() for p in written.root.glob("data/*/*.parquet")) == [
        "data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet", "data/chunk-001/file-000.parquet",
        "data/chunk-001/file-001.parquet", "data/chunk-002/file-000.parquet",
    ]
    episodes = written.meta["episodes"]
    assert episodes["data/chunk_index"] == [0, 0, 1, 1, 2]
    assert episodes["data/file_index"] == [0, 1, 0, 1, 0]
    assert len(list(written.root.glob("meta/episodes/*/*.parquet"))) == len(WRITER_LENGTHS)
    assert (written.root / DEFAULT_EPISODES_PATH.format(chunk_index=2, file_index=0)).is_file()
