"""`flywheel quarantine`, `flywheel incident` and `flywheel policy withdraw` as a person types them."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from flywheel_pipelines.cli import main
from flywheel_pipelines.lib.catalog import CATALOG_KEY
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.lib.conftest import catalog, emb, sim_day, standardized  # noqa: F401 (fixtures)


@pytest.fixture
def lake(tmp_path, request):
    """A lake whose catalog holds one real simulated robot-day (r101 on DAY)."""
    store = LocalLake(tmp_path / "lake")
    store.write_parquet(CATALOG_KEY, request.getfixturevalue("catalog"))
    return store


def _run(*args):
    return CliRunner().invoke(main, list(args))


def test_quarantine_add_list_lift(lake):
    root = str(lake.root)
    out = _run("quarantine", "add", "--robot", "r101", "--from", "2026-03-01", "--reason", "encoder off", "--by", "maya",
               "--json", "--lake", root)
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    assert record["scope"] == {"kind": "robot", "robot": "r101", "date_from": "2026-03-01"}
    listed = _run("quarantine", "list", "--json", "--lake", root)
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [record["id"]]
    lifted = _run("quarantine", "lift", record["id"], "--reason", "recalibrated", "--by", "maya", "--lake", root)
    assert lifted.exit_code == 0 and f"lifted {record['id']}" in lifted.output
    assert _run("quarantine", "list", "--lake", root).output.startswith("0 active quarantines")
    history = _run("quarantine", "list", "--all", "--lake", root).output
    assert "2 records" in history and "recalibrated" in history


@pytest.mark.parametrize(("args", "message"), [
    (["--robot", "r999"], "unknown robot 'r999'"),
    (["--robot", "r101", "--from", "2026-03-05", "--to", "2026-03-01"], "inverted day range"),
    (["--robot", "../x"], "invalid robot id"),
    (["--episode", "nope"], "unknown episode"),
    (["--robot", "r101", "--episode", "x"], "exactly one"),
])
def test_quarantine_add_refuses_bad_input_and_writes_nothing(lake, args, message):
    out = _run("quarantine", "add", *args, "--reason", "x", "--by", "maya", "--lake", str(lake.root))
    assert out.exit_code == 1 and message in out.output
    assert lake.list("quarantine/") == []


def test_an_empty_reason_is_refused(lake):
    out = _run("quarantine", "add", "--robot", "r101", "--reason", " ", "--by", "maya", "--lake", str(lake.root))
    assert out.exit_code == 1 and "needs a reason" in out.output
    assert lake.list("quarantine/") == []


def test_the_executable_keeps_the_exit_status(lake):
    """A refused command exits 1 from the real executable, every time (pyarrow's shutdown used to
    turn some of them into 134)."""
    env = {**os.environ, "FLYWHEEL_LAKE": str(lake.root)}
    codes = {subprocess.run([sys.executable, "-c", "from flywheel_pipelines.cli import entry; entry()", "quarantine",
                             "add", "--robot", "r101", "--from", "2026-03-05", "--to", "2026-03-01", "--reason", "x"],
                            env=env, capture_output=True).returncode for _ in range(8)}
    assert codes == {1}


def test_incident_needs_a_release(lake):
    out = _run("incident", "reach-bc/nope", "--lake", str(lake.root))
    assert out.exit_code == 1 and "no release bundle at" in out.output
    out = _run("incident", "../nowhere", "--lake", str(lake.root))
    assert out.exit_code == 1 and "invalid release name '..'" in out.output
    out = _run("incident", str(lake.root.parent), "--lake", str(lake.root))  # a folder outside the lake
    assert out.exit_code == 1 and "not inside the lake" in out.output
