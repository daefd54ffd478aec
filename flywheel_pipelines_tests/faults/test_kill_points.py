"""kill -9 at every named atomic write point of the local lake (FLYWHEEL_KILL_AT, lib/faults.py):
readers see the old artifact or the new one, whole, never none and never a part; what the killed
writer left aside is never listed and is swept by the next write of the same artifact.

Issue #16 lesser findings: a kill between the two renames of a replacing publish left the
partition absent (a catalog refresh in that window read 5 of 6 robot-days); .old/.tmp leftovers
were never cleaned.
"""

import os
import subprocess
import sys
import time

import pytest

from flywheel_pipelines.lib import faults
from flywheel_pipelines.lib.storage import LocalLake

WRITE = """
import sys
from pathlib import Path
from flywheel_pipelines.lib.storage import LocalLake
lake, what, version = LocalLake(sys.argv[1]), sys.argv[2], sys.argv[3]
if what == "publish":
    src = Path(sys.argv[1]).parent / f"src-{version}"
    src.mkdir(exist_ok=True)
    for i in range(6):
        (src / f"part-{i}.txt").write_text(f"{version} {i}\\n")
    lake.publish_dir("episodes/robot=r1/date=2026-01-01", src, replace=True)
elif what == "write":
    lake.write_bytes("catalog/episodes.json", f"{version}\\n".encode())
elif what == "raw":
    src = Path(sys.argv[1]).parent / "upload.mcap"
    src.write_bytes(b"raw bytes\\n")
    lake.put_raw("raw/robot=r1/date=2026-01-01/a.mcap", src)
"""


def _run(root, what: str, version: str, kill_at: str | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(faults.ENV, None)
    if kill_at:
        env[faults.ENV] = kill_at
    return subprocess.run([sys.executable, "-c", WRITE, str(root), what, version], env=env, timeout=60).returncode


def _folder(lake: LocalLake) -> dict[str, str]:
    folder = lake.path("episodes/robot=r1/date=2026-01-01")
    return {p.name: p.read_text() for p in sorted(folder.iterdir())} if folder.exists() else {}


def _age_leftovers(lake: LocalLake) -> list[str]:
    hidden = [p for p in lake.root.rglob(".*") if ".tmp" in p.name or ".old" in p.name]
    old = time.time() - 7200
    for p in hidden:
        os.utime(p, (old, old), follow_symlinks=False)
    return [p.name for p in hidden]


@pytest.mark.parametrize("point", ["local.publish_dir.staged", "local.publish_dir.swapped"])
def test_a_replacing_publish_killed_anywhere_leaves_the_old_or_the_new_folder_whole(tmp_path, point):
    lake = LocalLake(tmp_path / "lake")
    assert _run(lake.root, "publish", "v1") == 0
    v1 = _folder(lake)
    assert len(v1) == 6
    assert _run(lake.root, "publish", "v2", kill_at=point) == -9
    seen = _folder(lake)
    assert seen in (v1, {k: v.replace("v1", "v2") for k, v in v1.items()})  # never absent, never mixed
    assert [o.key for o in lake.list("episodes/")] == [f"episodes/robot=r1/date=2026-01-01/part-{i}.txt" for i in range(6)]
    leftovers = _age_leftovers(lake)
    assert leftovers  # the killed writer's staging (or the swapped-out old folder)
    assert _run(lake.root, "publish", "v3") == 0
    assert _folder(lake) == {k: v.replace("v1", "v3") for k, v in v1.items()}
    assert not [p for p in lake.root.rglob(".*")], "leftovers were not swept"


def test_a_write_killed_before_its_rename_leaves_the_old_bytes_and_is_swept(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    assert _run(lake.root, "write", "v1") == 0
    assert _run(lake.root, "write", "v2", kill_at="local.write_bytes.before_rename") == -9
    assert lake.read_bytes("catalog/episodes.json") == b"v1\n"
    assert [o.key for o in lake.list("catalog/")] == ["catalog/episodes.json"]
    assert _age_leftovers(lake)
    assert _run(lake.root, "write", "v3") == 0
    assert lake.read_bytes("catalog/episodes.json") == b"v3\n" and not list(lake.root.rglob(".*"))


def test_a_raw_upload_killed_before_its_rename_is_absent_then_lands_once(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    assert _run(lake.root, "raw", "v1", kill_at="local.put_raw.before_rename") == -9
    assert lake.list("raw/") == []
    _age_leftovers(lake)
    assert _run(lake.root, "raw", "v1") == 0
    assert [o.key for o in lake.list("raw/")] == ["raw/robot=r1/date=2026-01-01/a.mcap"]
    assert not list(lake.root.rglob(".*"))


def test_a_young_temp_file_of_a_live_writer_is_not_swept(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    lake.write_bytes("catalog/episodes.json", b"v1\n")
    live = lake.path("catalog") / f".episodes.json.{'a' * 32}.tmp"
    live.write_bytes(b"being written")
    lake.write_bytes("catalog/episodes.json", b"v2\n")
    assert live.exists()


def test_a_named_point_kills_only_when_named():
    assert len(set(faults.POINTS)) == len(faults.POINTS)
    code = "from flywheel_pipelines.lib import faults; faults.point('a'); faults.point('b')"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code], env={**env, faults.ENV: "c"}).returncode == 0
    assert subprocess.run([sys.executable, "-c", code], env={**env, faults.ENV: "c,b"}).returncode == -9
