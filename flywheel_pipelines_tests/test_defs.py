"""The code location loads, and its asset graph matches the reviewed snapshot.

An accidental change to keys, deps, partitions, checks or automation shows up as a diff here.
Regenerate after an intended change with: UPDATE_SNAPSHOTS=1 pytest flywheel_pipelines_tests/test_defs.py
"""

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from flywheel_pipelines.definitions import defs

SNAPSHOT = Path(__file__).parent / "fixtures" / "asset_graph.json"


def graph_snapshot(d: dg.Definitions) -> dict:
    graph = d.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        part = node.partitions_def
        if isinstance(part, dg.MultiPartitionsDefinition):
            part_desc = {dim.name: type(dim.partitions_def).__name__ for dim in part.partitions_defs}
        else:
            part_desc = type(part).__name__ if part else None
        assets[key.to_user_string()] = {
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "partitions": part_desc,
            "group": node.group_name,
            "automation": node.automation_condition.get_label() if node.automation_condition else None,
            "checks": sorted(c.name for c in node.check_keys),
            "materializable": node.is_materializable,
        }
    return {
        "assets": assets,
        "blocking_checks": sorted(
            c.to_user_string() for c in graph.asset_check_keys if graph.get_check_spec(c).blocking
        ),
        "sensors": sorted(s.name for s in d.sensors),
        "schedules": {s.name: s.cron_schedule for s in d.schedules},
        "jobs": sorted(j.name for j in d.jobs if not j.name.startswith("__")),
        "resources": sorted(d.resources),
    }


def test_definitions_load_and_match_snapshot():
    d = defs()
    snap = graph_snapshot(d)
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    assert snap == json.loads(SNAPSHOT.read_text())


def test_every_asset_is_documented_and_owned():
    graph = defs().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, f"{key.to_user_string()} has no description"
        assert node.owners, f"{key.to_user_string()} has no owner"
        assert node.kinds, f"{key.to_user_string()} has no kinds"


def test_the_groups_are_the_flywheels_stages_from_one_table():
    """Every asset is in the group defs/groups.py gives it, every group there holds an asset, and
    they are few enough to read as the loop's stages on the global lineage page."""
    from flywheel_pipelines.defs.groups import GROUPS, group_of

    graph = defs().resolve_asset_graph()
    by_group: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        by_group.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    assert by_group == {group: set(assets) for group, assets in GROUPS.items()}
    assert len(GROUPS) <= 5 and sorted(GROUPS) == list(GROUPS), "the UI sorts groups by name: keep the loop's order"
    with pytest.raises(KeyError, match="'new_asset' has no group: add it to GROUPS"):
        group_of("new_asset")


def test_robot_day_partitions_are_robot_by_date():
    from flywheel_pipelines.defs.partitions import ROBOT_DAY

    names = sorted(d.name for d in ROBOT_DAY.partitions_defs)
    assert names == ["date", "robot"]
    robots = next(d for d in ROBOT_DAY.partitions_defs if d.name == "robot").partitions_def
    assert isinstance(robots, dg.DynamicPartitionsDefinition) and robots.name == "robots"
