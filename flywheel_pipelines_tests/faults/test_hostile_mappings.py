"""Issue #16 (3): embodiment mappings are validated with bounded cost, and against the log before
any partition is replaced, with an error naming the feature, topic and field.

Before the fix a YAML anchor bomb in rule:/clock: hung the parser past 1.5 GB (the error message
repr'd the expanded value), other keys gave bare AttributeError/ArrowTypeError tracebacks, and
names: shorter than fields: silently dropped a field.
"""

import time

import pytest

from flywheel_pipelines.defs.episodes.assets import episodes_prefix
from flywheel_pipelines.lib.episodes.embodiment import MappingError, load_embodiment, parse_embodiment
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.defs.test_ingest_accounting import DAY, failure_text, materialize, write_json_log

ARM2 = load_embodiment("flywheel_arm2").source_text
BOMB = "\n".join(["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                 + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)])


@pytest.mark.parametrize("where", ["rule", "clock", "name", "fields"])
def test_an_anchor_bomb_is_refused_at_once(where):
    text = {"rule": ARM2.replace("rule: nearest", "rule: *a9"), "clock": ARM2.replace("clock: header ", "clock: *a9 "),
            "name": ARM2.replace("name: flywheel_arm2", "name: *a9"),
            "fields": ARM2.replace("fields: [position]", "fields: *a9")}[where]
    assert text != ARM2
    started = time.monotonic()
    with pytest.raises(MappingError, match="aliases") as info:
        parse_embodiment(BOMB + "\n" + text, source="bomb.yaml")
    assert time.monotonic() - started < 1.0 and len(str(info.value)) < 300


def test_a_huge_mapping_is_refused():
    with pytest.raises(MappingError, match="at most"):
        parse_embodiment(ARM2 + "#" * 300_000, source="big.yaml")


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("topic: /goal", "topic: [/goal]", "'topic' must be str"),
    ("fields: [point.x, point.y]", "fields: 3", "'fields' must be list"),
    ("fields: [point.x, point.y]", "fields: [point.x, 7]", "'fields' must be a non-empty list of names"),
    ("names: [goal.x, goal.y]", "names: {a: b}", "'names' must be list"),
    ("max_skew_ms: 1000 ", "max_skew_ms: soon ", "'max_skew_ms' must be int or float"),
    ("max_gap_ms: 60", "max_gap_ms: [60]", "'max_gap_ms' must be int or float"),
    ("version: 1", "version: " + "9" * 5000 + ".5", "'version' must be int"),
    ("names: [goal.x, goal.y]", "names: [goal.x]", "2 fields (point.x, point.y) but only 1 names"),
    ("names: [shoulder.pos, elbow.pos, shoulder.vel, elbow.vel]", "names: [shoulder.pos, elbow.pos, shoulder.vel]",
     "2 fields x 2 joint_names need 4 names, got 3"),
    ("names: [goal.x, goal.y]", "names: [goal.x, goal.x]", "lists a name twice"),
])
def test_wrongly_typed_or_mismatched_keys_are_mapping_errors_naming_the_key(old, new, problem):
    assert old in ARM2
    with pytest.raises(MappingError) as info:
        parse_embodiment(ARM2.replace(old, new, 1), source="bad.yaml")
    assert problem in str(info.value) and str(info.value).startswith("bad.yaml: ")
    assert len(str(info.value)) < 400  # a long value is never quoted whole


def _published(lake: LocalLake, robot: str) -> dict[str, bytes]:
    folder = lake.root / episodes_prefix(robot, DAY)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("topic: /arm/command", "topic: /arm/cmd", "mapped topic /arm/cmd has no message in any file"),
    ("gripper.width]", "gripper.widht]", "field gripper.widht does not exist"),
    # 6 positions + the gripper: 7 values, 6 names. The names cover every field, so only the log tells.
    (", gripper.width]", "]",
     "'action' (topic /arm/command): fields position, gripper.width give 7 (position: 6 + gripper.width: 1)"),
])
def test_a_mapping_that_does_not_fit_the_log_fails_and_leaves_the_partition_as_it_was(tmp_path, old, new, problem):
    lake = LocalLake(tmp_path / "lake")
    day_dir = lake.root / f"raw/robot=js3/date={DAY}"
    day_dir.mkdir(parents=True)
    write_json_log(day_dir / "arm.mcap")
    assert materialize(lake, "js3", "json_arm6").success
    before = _published(lake, "js3")
    text = load_embodiment("json_arm6").source_text
    if problem.startswith("'action'"):
        text = text.replace("names: [j0.target, j1.target, j2.target, j3.target, j4.target, j5.target, gripper.width]",
                            "names: [j0.target, j1.target, j2.target, j3.target, j4.target, j5.target]")
    else:
        assert old in text
        text = text.replace(old, new)
    mapping = tmp_path / "bad.yaml"
    mapping.write_text(text)
    result = materialize(lake, "js3", str(mapping))
    assert not result.success
    assert problem in failure_text(result)
    assert _published(lake, "js3") == before
