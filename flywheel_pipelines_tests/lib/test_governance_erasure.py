"""Erasure end to end on a real lake through `flywheel erase`: dry run (nothing changes), delete,
rebuild, audit; a re-run changes nothing; a run killed between steps is finished by the next one."""

import json
import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from flywheel_pipelines.cli import main
from flywheel_pipelines.lib import faults, layout, lineage_index
from flywheel_pipelines.lib.catalog import CATALOG_KEY
from flywheel_pipelines.lib.datasets.curation import CurationSpec, build_dataset, select_episodes
from flywheel_pipelines.lib.episodes.embodiment import load_embodiment
from flywheel_pipelines.lib.governance import deleter, erasure, rebuilds
from flywheel_pipelines_tests.lib import governance_lake

DAYS = ["2026-02-02", "2026-02-03"]


def _snapshot(lake) -> dict:
    return {o.key: (o.size, o.mtime_ns) for o in lake.list("")}


def _erase(*args: str) -> dict | str:
    result = CliRunner().invoke(main, ["erase", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def _episode_ids(lake, robot: str, day: str) -> set[str]:
    return set(lake.read_parquet(f"{layout.episodes_prefix(robot, day)}/{layout.EPISODE_TABLE}")["episode_id"].to_pylist())


def test_erase_a_raw_log_end_to_end(tmp_path) -> None:
    g = governance_lake.build(tmp_path / "lake", DAYS, robots=2, episodes=6)
    lake, root = g.lake, str(g.lake.root)
    key = sorted(o.key for o in lake.list(f"raw/robot=r101/date={DAYS[0]}/"))[0]
    raw_bytes = lake.read_bytes(key)
    reach = g.datasets["reach"]
    day_episodes = _episode_ids(lake, "r101", DAYS[0])

    # Dry run: the full blast radius, and the lake byte for byte as it was.
    before = _snapshot(lake)
    text = _erase("--raw", key, "--reason", "data subject request 17", "--by", "dpo", "--dry-run", "--lake", root)
    assert key in text and f"datasets/reach/{reach}" in text and "policy reach-bc/p1" in text
    assert "release reach-bc/p1" in text and "(dry run: nothing changed)" in text
    radius = _erase("--raw", key, "--reason", "r", "--by", "dpo", "--dry-run", "--json", "--lake", root)
    assert radius["counts"]["raw_logs"] == 1 and radius["counts"]["episodes"] == 5
    gone = {e["episode_id"] for e in radius["episodes"]}
    assert gone and gone < day_episodes  # that log's episodes, not the day's other session
    assert _snapshot(lake) == before
    frames = lake.read_parquet(f"{layout.episodes_prefix('r101', DAYS[0])}/{layout.FRAMES}")
    mine = frames.filter(pc.is_in(frames["episode_id"], value_set=pa.array(sorted(gone))))
    values = [repr(v) for row in mine["observation.state"].to_pylist()[:20] for v in row]
    assert len(values) == 80

    done = _erase("--raw", key, "--reason", "data subject request 17", "--by", "dpo", "--json", "--lake", root)
    eid = done["erasure"]
    # Raw bytes gone behind an "erased" tombstone; every episode row and frame of them gone.
    assert not lake.exists(key)
    assert deleter.statuses(lake, [key]) == {key: "erased"}
    assert not gone & _episode_ids(lake, "r101", DAYS[0])
    frames_after = lake.read_parquet(f"{layout.episodes_prefix('r101', DAYS[0])}/{layout.FRAMES}")
    assert not gone & set(frames_after["episode_id"].to_pylist()) and frames_after.num_rows > 0
    assert not gone & set(lake.read_parquet(CATALOG_KEY)["episode_id"].to_pylist())
    assert done["deleted"]["episode_rows"] == len(gone) == done["deleted"]["catalog_rows"]
    # The dataset version holding them is deleted and its rebuild requested with its own spec.
    assert not lake.list(layout.dataset_prefix("reach", reach) + "/")
    ((_, request),) = rebuilds.read_requests(lake)
    assert request["dataset"] == {"name": "reach", "version": reach} and request["spec"]["val_fraction"] == 0.3
    assert done["rebuild_requests"] == [request["id"]]
    # Policies and releases are marked, not deleted; lineage shows them.
    assert done["marked"] == {"policies": ["reach-bc/p1"], "releases": ["reach-bc/p1"]}
    res = lineage_index.query(lake, release="reach-bc/p1")
    assert res.upstream[0].detail["source_status"] == "erased"
    assert "[ERASED SOURCE]" in lineage_index.render_tree(res)
    assert [f.status for f in lineage_index.query(lake, raw=key).raw_files] == ["erased"]

    # The rebuild (what the sensor's curated_dataset run does) gives a new version without them.
    spec = CurationSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in request["spec"].items()})
    built = build_dataset(tmp_path / "rebuilt", selected=select_episodes(lake.read_parquet(CATALOG_KEY), spec),
                          load_frames=lambda r, d: lake.read_parquet(f"{layout.episodes_prefix(r, d)}/{layout.FRAMES}"),
                          spec=spec, emb=load_embodiment())
    assert built.version != reach and built.episodes > 0
    assert not gone & {e["episode_id"] for e in built.manifest["episodes"]}

    # The audit trail: requested + completed, ids/hashes/counts, never the erased content.
    steps = erasure.read_record(lake, eid)
    assert [s["step"] for s in steps] == ["requested", "completed"]
    assert steps[0]["by"] == "dpo" and steps[0]["reason"] == "data subject request 17"
    audit = json.dumps(steps)
    assert done["deleted"]["raw_logs"][0]["sha256"] in audit
    for start in range(0, len(raw_bytes) - 32, len(raw_bytes) // 20):
        chunk = raw_bytes[start:start + 32]
        assert chunk.hex() not in audit and repr(chunk)[2:-1] not in audit
    assert not [v for v in values if v in audit]

    # Running it again changes nothing and says so in a second pair of entries.
    after = _snapshot(lake)
    again = _erase("--raw", key, "--reason", "data subject request 17", "--by", "dpo", "--json", "--lake", root)
    assert again["deleted"]["episode_rows"] == 0 and again["rebuild_requests"] == [request["id"]]
    changed = {k for k in set(after) | set(_snapshot(lake)) if after.get(k) != _snapshot(lake).get(k)}
    assert changed and all(k.startswith(layout.erasure_prefix(eid)) for k in changed)


@pytest.mark.parametrize(("args", "problem"), [
    (["--robot", "r101", "--from", "2026-02-02"], "--robot needs --from and --to"),
    (["--robot", "../r1", "--from", "2026-02-02", "--to", "2026-02-03"], "invalid robot id"),
    (["--robot", "r101", "--from", "2026-02-03", "--to", "2026-02-02"], "inverted day range"),
    (["--raw", "raw/robot=r101/date=2026-02-02/../x.mcap"], "not a raw log key|invalid"),
    (["--raw", "raw/robot=r101/date=2026-02-02/none.mcap"], "nothing to erase"),
    ([], "exactly one of"),
])
def test_bad_requests_are_refused_before_anything_changes(tmp_path, args, problem) -> None:
    result = CliRunner().invoke(main, ["erase", *args, "--reason", "r", "--by", "x", "--lake", str(tmp_path)])
    assert result.exit_code != 0 and re.search(problem, result.output), result.output


def test_a_killed_erasure_is_finished_by_running_it_again(tmp_path) -> None:
    assert {"governance.erase.raw_deleted", "governance.erase.rows_rewritten"} <= set(faults.POINTS)
    g = governance_lake.build(tmp_path / "lake", DAYS[:1], robots=1, episodes=6)
    lake, root = g.lake, str(g.lake.root)
    args = ["erase", "--robot", "r101", "--from", DAYS[0], "--to", DAYS[0], "--reason", "robot decommissioned",
            "--by", "dpo", "--lake", root]
    env = {**os.environ, faults.ENV: "governance.erase.raw_deleted"}
    proc = subprocess.run([sys.executable, "-m", "flywheel_pipelines.cli", *args], env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-3000:]
    # Killed after the raw bytes went, before the rows: the catalog still lists them.
    assert not lake.list("raw/") and lake.read_parquet(CATALOG_KEY).num_rows == 6
    out = _erase(*args[1:], "--json")
    assert out["deleted"]["catalog_rows"] == 6 and out["deleted"]["raw_logs"]  # from the tombstones
    assert lake.read_parquet(CATALOG_KEY).num_rows == 0
    assert not lake.list(layout.dataset_prefix("reach", g.datasets["reach"]) + "/")
    assert len(rebuilds.read_requests(lake)) == 1
    steps = [s["step"] for s in erasure.read_record(lake, out["erasure"])]
    assert steps == ["requested", "requested", "completed"]
