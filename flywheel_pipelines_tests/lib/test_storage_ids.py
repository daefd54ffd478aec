"""Tests for the lake (atomic writes, immutable raw/, folder publishing) and identifier validation."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pytest

from flywheel_pipelines.lib import ids
from flywheel_pipelines.lib.ids import InvalidIdentifier
from flywheel_pipelines.lib.storage import LakeError, LocalLake, open_lake, raw_fingerprint, sha256_file, staging_dir

RAW_KEY = "raw/robot=r101/date=2026-03-02/session-080000.mcap"


@pytest.fixture
def lake(tmp_path) -> LocalLake:
    return LocalLake(tmp_path / "lake")


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _local(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- writes ----------------------------------------------------------------------------------


def test_write_and_read_round_trip_leaves_no_temp_files(lake):
    lake.write_bytes("catalog/episodes.bin", b"one")
    lake.write_bytes("catalog/episodes.bin", b"two")  # derived artifacts may be replaced
    lake.write_json("a/b/c.json", {"z": 1, "a": [1, 2]})
    lake.write_parquet("a/t.parquet", pa.table({"x": [1, 2, 3]}))
    assert lake.read_bytes("catalog/episodes.bin") == b"two"
    assert lake.read_json("a/b/c.json") == {"z": 1, "a": [1, 2]}
    assert lake.read_bytes("a/b/c.json") == b'{\n  "a": [\n    1,\n    2\n  ],\n  "z": 1\n}\n'
    assert lake.read_parquet("a/t.parquet")["x"].to_pylist() == [1, 2, 3]
    assert _all_files(lake.root) == ["a", "a/b", "a/b/c.json", "a/t.parquet", "catalog", "catalog/episodes.bin"]
    assert lake.exists("a/t.parquet") and not lake.exists("a/missing")


def test_failed_write_leaves_the_old_bytes_and_no_temp_file(lake):
    lake.write_bytes("d/x.bin", b"old")
    with pytest.raises(TypeError):
        lake.write_bytes("d/x.bin", "not bytes")  # type: ignore[arg-type]
    assert lake.read_bytes("d/x.bin") == b"old"
    assert _all_files(lake.root) == ["d", "d/x.bin"]


def test_read_missing_raises_lake_error(lake):
    with pytest.raises(LakeError, match="does not exist"):
        lake.read_bytes("nope.bin")
    with pytest.raises(LakeError, match="does not exist"):
        with lake.local_path("nope.bin"):
            pass
    with pytest.raises(LakeError, match="does not exist"):
        with lake.local_dir("nope"):
            pass


def test_local_dir_of_a_missing_prefix_says_it_does_not_exist(lake):
    # Prefixes are passed with a trailing slash everywhere ("datasets/reach/abc/"); the error for a
    # missing one must say so, not call the prefix an invalid key.
    with pytest.raises(LakeError, match="does not exist"):
        with lake.local_dir("nope/"):
            pass


def test_uri_and_local_path(lake):
    lake.write_bytes("x/y.bin", b"1")
    assert lake.uri("x/y.bin") == f"{lake.root}/x/y.bin"
    with lake.local_path("x/y.bin") as path:
        assert path.read_bytes() == b"1"
    with lake.local_dir("x/") as folder:
        assert sorted(p.name for p in folder.iterdir()) == ["y.bin"]


# --- raw/ is immutable -----------------------------------------------------------------------


@pytest.mark.parametrize("key", [RAW_KEY, "raw/anything.bin"])
def test_write_bytes_refuses_raw(lake, key):
    with pytest.raises(LakeError, match="raw logs are immutable"):
        lake.write_bytes(key, b"x")
    assert not lake.root.exists() or _all_files(lake.root) == []


def test_put_raw_is_idempotent_for_identical_bytes(lake, tmp_path):
    src = _local(tmp_path, "a.mcap", b"log bytes")
    assert lake.put_raw(RAW_KEY, src) is True
    mtime = lake.path(RAW_KEY).stat().st_mtime_ns
    assert lake.put_raw(RAW_KEY, _local(tmp_path, "copy.mcap", b"log bytes")) is False
    assert lake.path(RAW_KEY).stat().st_mtime_ns == mtime
    assert lake.read_bytes(RAW_KEY) == b"log bytes"
    assert _all_files(lake.root / "raw/robot=r101/date=2026-03-02") == ["session-080000.mcap"]


def test_put_raw_refuses_different_bytes(lake, tmp_path):
    lake.put_raw(RAW_KEY, _local(tmp_path, "a.mcap", b"log bytes"))
    with pytest.raises(LakeError, match="already exists with different content"):
        lake.put_raw(RAW_KEY, _local(tmp_path, "b.mcap", b"other bytes"))
    assert lake.read_bytes(RAW_KEY) == b"log bytes"


def test_put_raw_only_under_raw(lake, tmp_path):
    with pytest.raises(LakeError, match="raw logs live under raw/"):
        lake.put_raw("episodes/x.mcap", _local(tmp_path, "a.mcap", b"x"))


def test_publish_dir_refuses_to_replace_raw_logs(lake, tmp_path):
    lake.put_raw(RAW_KEY, _local(tmp_path, "a.mcap", b"log bytes"))
    replacement = tmp_path / "replacement"
    replacement.mkdir()
    (replacement / "session-080000.mcap").write_bytes(b"forged")
    with pytest.raises(LakeError):
        lake.publish_dir("raw/robot=r101/date=2026-03-02", replacement, replace=True)
    assert lake.read_bytes(RAW_KEY) == b"log bytes"


# --- publish_dir -----------------------------------------------------------------------------


def _folder(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    root = tmp_path / name
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_publish_dir_is_atomic_and_idempotent(lake, tmp_path):
    v1 = _folder(tmp_path, "v1", {"manifest.json": b"{}", "data/file-000.parquet": b"p1", "meta/info.json": b"i"})
    assert lake.publish_dir("datasets/reach/abc/", v1) is True
    assert _all_files(lake.root / "datasets") == [
        "reach", "reach/abc", "reach/abc/data", "reach/abc/data/file-000.parquet", "reach/abc/manifest.json",
        "reach/abc/meta", "reach/abc/meta/info.json"]
    # Same version again: a no-op that keeps the published bytes.
    v1b = _folder(tmp_path, "v1b", {"manifest.json": b"changed"})
    assert lake.publish_dir("datasets/reach/abc", v1b) is False
    assert lake.read_bytes("datasets/reach/abc/manifest.json") == b"{}"
    assert lake.exists("datasets/reach/abc/data/file-000.parquet")
    assert v1.exists()  # the source folder is copied, not moved


def test_publish_dir_replace_swaps_the_whole_folder(lake, tmp_path):
    lake.publish_dir("policies/current", _folder(tmp_path, "a", {"model.safetensors": b"A", "old.txt": b"o"}))
    new = _folder(tmp_path, "b", {"model.safetensors": b"B", "config.json": b"{}"})
    assert lake.publish_dir("policies/current", new, replace=True) is True
    assert [o.key for o in lake.list("policies/")] == ["policies/current/config.json",
                                                       "policies/current/model.safetensors"]
    assert lake.read_bytes("policies/current/model.safetensors") == b"B"
    # Nothing of the staging or the swapped-out version is left beside it.
    assert sorted(os.listdir(lake.root / "policies")) == ["current"]


# --- list ------------------------------------------------------------------------------------


def test_list_never_shows_hidden_temp_files(lake):
    lake.write_bytes("episodes/robot=r1/date=2026-03-02/frames.parquet", b"f")
    base = lake.root / "episodes/robot=r1/date=2026-03-02"
    (base / ".frames.parquet.0123.tmp").write_bytes(b"half")
    (base / "_tmp_upload").write_bytes(b"half")
    (lake.root / "episodes/.robot=r2.abcd.tmp").mkdir()
    (lake.root / "episodes/.robot=r2.abcd.tmp/frames.parquet").write_bytes(b"staged")
    (lake.root / "episodes/_tmpdir").mkdir()
    (lake.root / "episodes/_tmpdir/x").write_bytes(b"staged")
    listed = lake.list("episodes/")
    assert [o.key for o in listed] == ["episodes/robot=r1/date=2026-03-02/frames.parquet"]
    assert listed[0].size == 1 and listed[0].mtime_ns > 0
    assert [o.key for o in lake.list("")] == [o.key for o in listed]
    assert lake.list("nothing/") == []


def test_list_is_sorted(lake):
    for key in ["b/2", "a/1", "b/1", "a/z/0"]:
        lake.write_bytes(key, b"x")
    assert [o.key for o in lake.list("")] == ["a/1", "a/z/0", "b/1", "b/2"]


# --- keys ------------------------------------------------------------------------------------

BAD_KEYS = ["../x", "/abs", "a//b", "a/../b", "./a", "a/.", "", "a/"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_raise_lake_error(lake, tmp_path, key):
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    with pytest.raises(LakeError, match="invalid lake key"):
        lake.write_bytes(key, b"x")
    with pytest.raises(LakeError, match="invalid lake key"):
        lake.read_bytes(key)
    with pytest.raises(LakeError, match="invalid lake key"):
        lake.exists(key)
    with pytest.raises(LakeError, match="invalid lake key"):
        lake.uri(key)
    with pytest.raises(LakeError, match="invalid lake key"):
        lake.put_raw("raw/" + key, src)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("prefix", ["../", "/tmp"])
def test_list_refuses_prefixes_outside_the_lake(lake, prefix):
    # Every other method validates its key; list() must not walk (or leak names from) outside the root.
    lake.write_bytes("inside.bin", b"x")
    (lake.root.parent / "outside.bin").write_bytes(b"secret")
    with pytest.raises(LakeError):
        lake.list(prefix)


def test_open_lake(tmp_path):
    assert isinstance(open_lake(str(tmp_path)), LocalLake)
    assert open_lake(str(tmp_path)).root == tmp_path.resolve()
    with pytest.raises(LakeError, match="s3:// lakes are not supported"):
        open_lake("s3://bucket/prefix")


# --- hashing helpers -------------------------------------------------------------------------


def test_sha256_file_streams_in_chunks(tmp_path):
    data = os.urandom(3000)
    path = _local(tmp_path, "f", data)
    assert sha256_file(path, chunk=7) == sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_raw_fingerprint():
    files = [("raw/robot=r1/date=2026-03-02/b.mcap", "2" * 64), ("raw/robot=r1/date=2026-03-02/a.mcap", "1" * 64)]
    fp = raw_fingerprint(files)
    assert len(fp) == 16 and fp == raw_fingerprint(list(reversed(files)))
    assert raw_fingerprint(files[:1]) != fp
    assert raw_fingerprint([(files[0][0], "3" * 64), files[1]]) != fp
    # Only the file name counts: the same bytes re-uploaded under another prefix are the same day.
    assert raw_fingerprint([("elsewhere/" + k.rsplit("/", 1)[1], s) for k, s in files]) == fp


def test_staging_dir_is_removed_afterwards():
    with staging_dir() as tmp:
        (tmp / "x").write_text("1")
        kept = tmp
    assert not kept.exists()


# --- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["r101", "a", "robot_7-b", "0", "a" * 63])
def test_robot_id_accepts(value):
    assert ids.robot_id(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "R101", "-r1", "_r1", "r 1", "r/1", "../r1", "..", "r1.", "a" * 64, "r1\n", "r1\x00", 101, None],
)
def test_robot_id_rejects(value):
    with pytest.raises(InvalidIdentifier):
        ids.robot_id(value)


@pytest.mark.parametrize("value", ["2026-03-02", "2028-02-29", "1999-12-31"])
def test_day_accepts(value):
    assert ids.day(value) == value


@pytest.mark.parametrize(
    "value", ["", "2026-3-2", "20260302", "2026-02-30", "2027-02-29", "2026-03-02T00:00", "../2026-03-02",
              "2026-03-02\n", " 2026-03-02", None, 20260302],
)
def test_day_rejects(value):
    with pytest.raises(InvalidIdentifier):
        ids.day(value)


@pytest.mark.parametrize("value", ["session-080000.mcap", "reach", "v1.2_final", "A", "x" * 128])
def test_name_accepts(value):
    assert ids.name(value) == value


@pytest.mark.parametrize(
    "value", ["", ".", "..", ".hidden", "a/b", "a\\b", "a..b", "../x", "-x", "x" * 129, "a b", "x.mcap\n", None],
)
def test_name_rejects(value):
    with pytest.raises(InvalidIdentifier, match="invalid dataset name"):
        ids.name(value, what="dataset name")


def test_parse_raw_key_accepts():
    assert ids.parse_raw_key(RAW_KEY) == ("r101", "2026-03-02", "session-080000.mcap")


def test_a_file_in_a_rosbag2_folder_belongs_to_the_folder_log():
    key = "raw/robot=r101/date=2026-03-02/run_3/run_3_0.mcap"
    assert ids.parse_raw_key(key) == ("r101", "2026-03-02", "run_3/run_3_0.mcap")
    assert ids.raw_log_key(key) == "raw/robot=r101/date=2026-03-02/run_3/"
    assert ids.raw_log_key(RAW_KEY) == RAW_KEY


@pytest.mark.parametrize(
    "key",
    [
        "raw/robot=../date=2026-03-02/x.mcap",
        "raw/robot=r1/date=../x.mcap",
        "raw/robot=r1/date=2026-03-02/../x.mcap",
        "raw/robot=r1/date=2026-03-02/..",
        "raw/robot=r1/date=2026-03-02/.x.mcap.tmp",
        "raw/robot=r1/date=2026-03-02/a/b/c.mcap",
        "raw/robot=r1/date=2026-03-02/bag/../x.mcap",
        "raw/robot=r1/date=2026-03-02/bag/",
        "raw/robot=r1/date=2026-03-02/",
        "raw/robot=r1/../robot=r2/date=2026-03-02/x.mcap",
        "/raw/robot=r1/date=2026-03-02/x.mcap",
        "raw//robot=r1/date=2026-03-02/x.mcap",
        "raw/robot=R1/date=2026-03-02/x.mcap",
        "raw/robot=r1/date=2026-13-02/x.mcap",
        "raw/robot=r1/day=2026-03-02/x.mcap",
        "episodes/robot=r1/date=2026-03-02/x.mcap",
        "raw/robot=r1\n/date=2026-03-02/x.mcap",
        "raw/robot=r1/date=2026-03-02/x.mcap\n",
    ],
)
def test_parse_raw_key_rejects(key):
    with pytest.raises(InvalidIdentifier):
        ids.parse_raw_key(key)
