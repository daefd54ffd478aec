"""The lake layout is named once (lib/layout.py): its keys, its validation, and a scan of the package
source that fails on a lake path spelled anywhere else."""

import ast
import pathlib
import re

import pytest

from flywheel_pipelines.lib import ids, layout

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "flywheel_pipelines"
LAYOUT = PACKAGE / "lib" / "layout.py"

# Lake path fragments: a string constant (or an f-string part) holding one of these, at the start of
# a path (not inside another one, such as LeRobot's meta/episodes/), spells a lake path.
PATH_RE = re.compile(
    r"(?<![\w/.-])(raw|manifests|episodes|archive|fleet/robots|catalog|golden|datasets|policies|evals|promotions"
    r"|releases|lineage|quarantine|incidents|field|deployments)/"
    r"|(?<![\w])(robot|date|month)=(?!\{)")
# File names of the lake layout: a constant equal to one (or ending in /<name>) names a lake file.
FILE_NAMES = ("manifest.json", "episodes.parquet", "frames.parquet", "accounting.json", "archive.json",
              "current.json", "scenarios.json", "kpis.parquet", "metrics.json")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the Constant nodes that are docstrings (prose may describe the layout)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def lake_paths(source: str) -> list[tuple[int, str]]:
    """(line, constant) of every string constant in ``source`` that spells a lake path."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        text = node.value
        if PATH_RE.search(text) or text in FILE_NAMES or any(text.endswith("/" + name) for name in FILE_NAMES):
            found.append((node.lineno, text))
    return found


def test_the_scan_finds_a_spelled_lake_path():
    """The scan is not vacuous: each way a path used to be spelled is caught."""
    source = '''
"""raw/robot=<id>/ in a docstring is prose."""
a = f"raw/robot={robot}/date={day}/"
b = "manifest.json"
c = f"{prefix}/episodes.parquet"
d = "datasets/" + name
ok = ["a plain message", "meta/episodes/chunk_index", "--field/--no-field", "releases", "robot id"]
'''
    assert sorted(line for line, _ in lake_paths(source)) == [3, 3, 4, 5, 6]


def test_no_lake_path_is_spelled_outside_layout():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == LAYOUT:
            continue
        for line, text in lake_paths(path.read_text()):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}")
    assert not offenders, "lake paths spelled outside lib/layout.py (use layout's names):\n" + "\n".join(offenders)


# --- keys: byte-identical with the lakes that exist ------------------------------------------------------


def test_keys_are_the_ones_existing_lakes_hold():
    assert layout.raw_prefix("r101", "2026-03-02") == "raw/robot=r101/date=2026-03-02/"
    assert layout.raw_key("r101", "2026-03-02", "s.mcap") == "raw/robot=r101/date=2026-03-02/s.mcap"
    assert layout.manifest_key("r101", "2026-03-02") == "manifests/robot=r101/date=2026-03-02/manifest.json"
    assert layout.episodes_prefix("r101", "2026-03-02") == "episodes/robot=r101/date=2026-03-02"
    assert layout.episode_table_key("r1", "2026-03-02") == "episodes/robot=r1/date=2026-03-02/episodes.parquet"
    assert layout.frames_key("r1", "2026-03-02") == "episodes/robot=r1/date=2026-03-02/frames.parquet"
    assert layout.archive_key("2026-03-01") == "archive/month=2026-03/episodes.parquet"
    assert layout.archive_info_key("2026-03-01") == "archive/month=2026-03/archive.json"
    assert layout.robot_join_key("r1") == "fleet/robots/robot=r1.json"
    assert layout.CATALOG_KEY == "catalog/episodes.parquet"
    assert layout.GOLDEN_POINTER == "golden/current.json"
    assert layout.golden_prefix("abc") == "golden/abc"
    assert layout.dataset_prefix("reach", "v1") == "datasets/reach/v1"
    assert layout.policy_prefix("reach-bc", "p1") == "policies/reach-bc/p1"
    assert layout.eval_prefix("p1") == "evals/p1"
    assert layout.promotions_prefix("reach-bc") == "promotions/reach-bc"
    assert layout.release_prefix("reach-bc", "r1") == "releases/reach-bc/r1"
    assert layout.DATASET_EDGES == "lineage/edges/datasets" and layout.LINEAGE_INDEX == "lineage/index"
    assert layout.QUARANTINE_RECORDS == "quarantine/records"
    assert layout.incident_report_key("reach-bc", "r1") == "incidents/reports/reach-bc/r1.json"
    assert layout.incident_log_prefix("inc-1") == "incidents/log/inc-1"
    assert layout.field_kpis_prefix("c1") == "field/kpis/c1"
    assert layout.deployments_manifest_key("reach-bc", 7) == "deployments/reach-bc/manifests/000007.json"
    assert layout.deployments_current_key("reach-bc") == "deployments/reach-bc/current.json"
    assert layout.rollout_log_prefix("reach-bc", "ro-1") == "deployments/reach-bc/rollouts/ro-1"


def test_raw_keys_parse_to_validated_parts():
    key = "raw/robot=r101/date=2026-03-02/run_3/run_3_0.mcap"
    assert layout.parse_raw_key(key) == ("r101", "2026-03-02", "run_3/run_3_0.mcap")
    assert layout.raw_log_key(key) == "raw/robot=r101/date=2026-03-02/run_3/"
    assert layout.raw_robot_of_folder("raw/robot=r7/") == "r7"
    assert layout.parse_raw_day_folder(key) == ("r101", "2026-03-02")
    assert layout.robot_of_join_name("robot=r1.json") == "r1"
    assert layout.robot_of_join_name("robot=../x.json") is None


# --- validation: a hostile identifier never becomes a path -------------------------------------------------


HOSTILE = ["../x", "a/b", "..", "", "/abs", "x\x00y"]


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize("build, what", [
    (lambda v: layout.raw_prefix(v, "2026-03-02"), "robot id"),
    (lambda v: layout.manifest_key(v, "2026-03-02"), "robot id"),
    (lambda v: layout.episodes_prefix(v, "2026-03-02"), "robot id"),
    (lambda v: layout.robot_join_key(v), "robot id"),
    (lambda v: layout.dataset_prefix(v, "v1"), "dataset name"),
    (lambda v: layout.dataset_prefix("reach", v), "dataset version"),
    (lambda v: layout.policy_prefix(v, "p1"), "policy name"),
    (lambda v: layout.eval_prefix(v), "policy version"),
    (lambda v: layout.golden_prefix(v), "golden version"),
    (lambda v: layout.release_prefix("reach-bc", v), "release version"),
    (lambda v: layout.promotions_prefix(v), "model name"),
    (lambda v: layout.deployments_current_key(v), "model name"),
    (lambda v: layout.rollout_log_prefix("reach-bc", v), "rollout id"),
    (lambda v: layout.incident_log_prefix(v), "incident id"),
    (lambda v: layout.field_kpis_prefix(v), "catalog version"),
    (lambda v: layout.raw_key("r1", "2026-03-02", v), "file name"),
])
def test_a_hostile_identifier_is_refused_naming_it(build, what, bad):
    with pytest.raises(ids.InvalidIdentifier) as exc:
        build(bad)
    assert what in str(exc.value) and repr(bad) in str(exc.value)


@pytest.mark.parametrize("bad", ["2026-3-2", "../2026-03-02", "2026-03-02/x", "yesterday"])
def test_a_hostile_day_is_refused_naming_it(bad):
    for build in (lambda d: layout.raw_prefix("r1", d), lambda d: layout.manifest_key("r1", d),
                  lambda d: layout.episodes_prefix("r1", d), lambda d: layout.archive_key(d)):
        with pytest.raises(ids.InvalidIdentifier, match="invalid date"):
            build(bad)


@pytest.mark.parametrize("key", ["raw/robot=../date=2026-03-02/x.mcap", "raw/robot=r1/date=2026-03-02/../x.mcap",
                                 "raw/robot=r1/date=2026-03-02/a/b/c.mcap", "episodes/robot=r1/date=2026-03-02/x"])
def test_a_hostile_raw_key_is_refused_naming_it(key):
    with pytest.raises(ids.InvalidIdentifier) as exc:
        layout.parse_raw_key(key)
    assert repr(key) in str(exc.value) or "invalid" in str(exc.value)
