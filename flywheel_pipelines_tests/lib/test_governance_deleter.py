"""The one audited deleter of raw bytes: tombstone first, idempotent, refuses changed content; and a
scan of the whole package that fails when any other code gains a way to delete files or objects."""

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel_pipelines.lib import faults, layout
from flywheel_pipelines.lib.governance import deleter
from flywheel_pipelines.lib.storage import LakeError, LocalLake

PACKAGE = Path(__file__).resolve().parents[2] / "flywheel_pipelines"
KEY = "raw/robot=r101/date=2026-03-02/session-1.mcap"
DELETING_CALLS = {"unlink", "remove", "rmtree", "rmdir", "removedirs", "delete_object", "delete_objects", "_delete",
                  "_remove", "truncate"}
# Every other place that deletes, and why none of them can reach a raw log. A new one fails the
# test until it is added here with its reason (or, for raw bytes, goes through deleter.py).
ALLOWED = {
    ("lib/storage.py", "_sweep_leftovers"): "hidden .<name>.<uuid>.tmp|.old siblings of a write, never a log",
    ("lib/storage.py", "_walk"): "list.remove of a symlinked folder from os.walk's list (nothing on disk)",
    ("lib/storage.py", "write_bytes"): "its own temp file; write_bytes refuses raw/",
    ("lib/storage.py", "publish_dir"): "the staged or replaced folder; publish_dir refuses raw/",
    ("lib/storage.py", "_put_immutable"): "its own temp file of a raw upload (the log itself is never replaced)",
    ("lib/storage.py", "_delete"): "S3 batch delete primitive, called by publish_dir/_republish and deleter.py",
    ("lib/storage.py", "_republish"): "a republished folder's stale generation files; publish_dir refuses raw/",
    ("lib/learning/checkpoint.py", "*"): "training checkpoints in a local run folder",
    ("drill.py", "*"): "the drill's own throwaway home",
}


def _deleting_calls(path: Path):
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.Call):
                f = child.func
                called = f.attr if isinstance(f, ast.Attribute) else (f.id if isinstance(f, ast.Name) else None)
                if called in DELETING_CALLS:
                    out.append((function, called, child.lineno))
            visit(child, name)

    visit(tree, "<module>")
    return out


def test_nothing_but_the_deleter_deletes_raw_bytes() -> None:
    found, unexplained = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for function, called, line in _deleting_calls(path):
            found += 1
            if rel == "lib/governance/deleter.py" or (rel, function) in ALLOWED or (rel, "*") in ALLOWED:
                continue
            unexplained.append(f"{rel}:{line} {function}() calls {called}()")
    assert found > 10  # the scan sees the known call sites (not vacuous)
    assert unexplained == [], "deletions outside lib/governance/deleter.py:\n" + "\n".join(unexplained)


def test_the_lake_itself_refuses_to_rewrite_raw(tmp_path) -> None:
    lake = LocalLake(tmp_path)
    with pytest.raises(LakeError, match="immutable"):
        lake.write_bytes(KEY, b"x")
    (tmp_path / "d").mkdir()
    with pytest.raises(LakeError, match="immutable"):
        lake.publish_dir("raw/robot=r101/date=2026-03-02/bag", tmp_path / "d")
    assert not hasattr(lake, "delete")


def _lake_with_log(tmp_path, data: bytes = b"mcap bytes " * 100) -> tuple[LocalLake, str]:
    lake = LocalLake(tmp_path / "lake")
    src = tmp_path / "src.mcap"
    src.write_bytes(data)
    lake.put_raw(KEY, src)
    return lake, hashlib.sha256(data).hexdigest()


def test_delete_writes_the_tombstone_then_deletes_and_is_idempotent(tmp_path) -> None:
    lake, sha = _lake_with_log(tmp_path)
    topics = [{"topic": "/cam", "type": "sensor_msgs/msg/CompressedImage"},
              {"topic": "/js", "type": "sensor_msgs/msg/JointState"}]
    t = deleter.delete_raw_log(lake, KEY, status="expired", rule="camera: 30 days (policy v1)", topics=topics,
                               expected_sha256=sha)
    assert not lake.exists(KEY)
    doc = lake.read_json(layout.tombstone_key(KEY, sha, "expired"))
    assert doc["key"] == KEY and doc["sha256"] == sha and doc["size"] == 1100 and doc["status"] == "expired"
    assert [x["class"] for x in doc["topics"]] == ["camera", "other"] and doc["rule"].startswith("camera")
    assert t.record_key == layout.tombstone_key(KEY, sha, "expired")
    again = deleter.delete_raw_log(lake, KEY, status="expired", rule="camera: 30 days (policy v1)")
    assert again.sha256 == sha and len(lake.list(layout.TOMBSTONE_PREFIX + "/")) == 1
    assert deleter.statuses(lake, [KEY, KEY + ".other"]) == {KEY: "expired"}


def test_other_bytes_than_decided_are_not_deleted(tmp_path) -> None:
    lake, _ = _lake_with_log(tmp_path)
    with pytest.raises(deleter.DeletionError, match="re-upload since; not deleted"):
        deleter.delete_raw_log(lake, KEY, status="erased", rule="erasure er-x", expected_sha256="0" * 64)
    assert lake.exists(KEY) and not lake.list(layout.TOMBSTONE_PREFIX + "/")


@pytest.mark.parametrize("key", ["raw/robot=../date=2026-03-02/x.mcap", "raw/robot=r1/date=2026-13-02/x.mcap",
                                 "datasets/reach/v1/data.parquet", "raw/robot=r1/date=2026-03-02/../../x"])
def test_hostile_or_foreign_keys_are_refused(tmp_path, key: str) -> None:
    lake, _ = _lake_with_log(tmp_path)
    with pytest.raises(deleter.DeletionError):
        deleter.delete_raw_log(lake, key, status="erased", rule="r")
    assert lake.exists(KEY)


def test_derived_deletion_refuses_raw_and_governance(tmp_path) -> None:
    lake, _ = _lake_with_log(tmp_path)
    for prefix in ("raw/robot=r101", "governance/tombstones"):
        with pytest.raises(deleter.DeletionError, match="refusing"):
            deleter.delete_derived(lake, prefix)


def test_a_kill_between_tombstone_and_delete_is_finished_by_the_next_run(tmp_path) -> None:
    assert "governance.delete.tombstoned" in faults.POINTS
    lake, sha = _lake_with_log(tmp_path)
    code = ("import sys; from flywheel_pipelines.lib.storage import LocalLake; "
            "from flywheel_pipelines.lib.governance import deleter; "
            f"deleter.delete_raw_log(LocalLake(sys.argv[1]), {KEY!r}, status='erased', rule='erasure er-1')")
    env = {**os.environ, faults.ENV: "governance.delete.tombstoned"}
    proc = subprocess.run([sys.executable, "-c", code, str(lake.root)], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert lake.exists(KEY) and lake.exists(layout.tombstone_key(KEY, sha, "erased"))  # killed between the two
    deleter.delete_raw_log(lake, KEY, status="erased", rule="erasure er-1")
    assert not lake.exists(KEY) and len(lake.list(layout.TOMBSTONE_PREFIX + "/")) == 1
