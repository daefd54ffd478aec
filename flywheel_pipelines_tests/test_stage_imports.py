"""Stages under defs/ are independent: a stage refers to another stage's assets by AssetKey, and
shares only the wiring modules (defs/*.py: partitions, resources, upstream, automation, ...) and lib/."""

import ast
import pathlib

import pytest

DEFS = pathlib.Path(__file__).resolve().parents[1] / "flywheel_pipelines" / "defs"
PACKAGE = "flywheel_pipelines.defs"
STAGES = sorted(p.name for p in DEFS.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def imported_stages(source: str) -> list[tuple[int, str]]:
    """(line, stage) of every import of a stage package (``flywheel_pipelines.defs.<stage>...``) in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[:2] == PACKAGE.split(".") and len(parts) > 2 and parts[2] in STAGES:
                found.append((node.lineno, parts[2]))
                break
    return found


def test_the_scan_sees_a_cross_stage_import():
    source = ("from flywheel_pipelines.defs.episodes.assets import episodes\n"
              "import flywheel_pipelines.defs.training.assets\n"
              "from flywheel_pipelines.defs import catalog\n"
              "from flywheel_pipelines.defs.partitions import ROBOT_DAY\n"
              "from flywheel_pipelines.defs import resources\n")
    assert imported_stages(source) == [(1, "episodes"), (2, "training"), (3, "catalog")]


def test_there_are_stages_to_check():
    assert {"ingest", "episodes", "archive", "catalog", "curation", "training", "evaluation", "release"} <= set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage(stage):
    offenders = [f"defs/{stage}/{path.name}:{line}: imports defs/{other}"
                 for path in sorted((DEFS / stage).glob("*.py"))
                 for line, other in imported_stages(path.read_text()) if other != stage]
    assert not offenders, "refer to other stages' assets by AssetKey and move shared code to lib/:\n" + "\n".join(offenders)


def test_shared_wiring_imports_no_stage():
    offenders = [f"defs/{path.name}:{line}: imports defs/{other}"
                 for path in sorted(DEFS.glob("*.py")) for line, other in imported_stages(path.read_text())]
    assert not offenders, "\n".join(offenders)
