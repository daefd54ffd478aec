"""The retention policy file: classes by message type, validation with clear errors, append-only versions."""

import pytest
import yaml

from flywheel_pipelines.lib import layout
from flywheel_pipelines.lib.governance import policy
from flywheel_pipelines.lib.storage import LocalLake

GOOD = "schema: flywheel-governance-policy-v1\nretention_days: {camera: 30, audio: 7, other: null}\n"


@pytest.mark.parametrize(("message_type", "expected"), [
    ("sensor_msgs/msg/Image", "camera"), ("sensor_msgs/CompressedImage", "camera"),
    ("sensor_msgs/msg/CameraInfo", "camera"), ("foxglove.CompressedVideo", "camera"),
    ("audio_common_msgs/msg/AudioData", "audio"), ("audio_common_msgs/AudioDataStamped", "audio"),
    ("sensor_msgs/msg/JointState", "other"), ("sensor_msgs/msg/Imu", "other"), ("", "other"),
])
def test_classify_by_message_type(message_type: str, expected: str) -> None:
    assert policy.classify(message_type) == expected


@pytest.mark.parametrize(("text", "problem"), [
    ("a: [", "not valid YAML"),
    ("schema: other\nretention_days: {camera: 1, audio: 1, other: 1}", "schema must be"),
    ("schema: flywheel-governance-policy-v1\nretention_days: {camera: 30, audio: 7}", "has no other"),
    ("schema: flywheel-governance-policy-v1\nretention_days: {camera: 30, audio: 7, other: null, lidar: 3}",
     "unknown topic class lidar"),
    ("schema: flywheel-governance-policy-v1\nretention_days: {camera: 0, audio: 7, other: null}", "retention_days.camera"),
    ("schema: flywheel-governance-policy-v1\nretention_days: {camera: '30', audio: 7, other: null}", "whole number"),
    ("schema: flywheel-governance-policy-v1\nretention_days: {camera: true, audio: 7, other: null}", "whole number"),
])
def test_invalid_policies_are_refused_naming_the_file(tmp_path, text: str, problem: str) -> None:
    lake = LocalLake(tmp_path)
    with pytest.raises(policy.PolicyError, match=problem) as exc:
        policy.set_policy(lake, text, source="ops/retention.yaml", by="ana", reason="x")
    assert "ops/retention.yaml" in str(exc.value)
    assert policy.current(lake) is None and not lake.list(layout.POLICY_PREFIX + "/")


def test_versions_are_append_only_and_the_newest_is_in_force(tmp_path) -> None:
    lake = LocalLake(tmp_path)
    assert policy.current(lake) is None
    p1, k1 = policy.set_policy(lake, GOOD, source="a.yaml", by="ana", reason="privacy review")
    first = lake.read_bytes(k1)
    with pytest.raises(policy.PolicyError, match="same retention as v1"):
        policy.set_policy(lake, GOOD, source="a.yaml", by="ana", reason="again")
    p2, k2 = policy.set_policy(lake, GOOD.replace("camera: 30", "camera: 14"), source="b.yaml", by="ben", reason="DPO")
    assert (p1.version, p2.version) == (1, 2) and k2 == layout.policy_key(2)
    assert lake.read_bytes(k1) == first  # v1 untouched
    assert [p.retention_days["camera"] for p in policy.history(lake)] == [30, 14]
    now = policy.current(lake)
    assert now.version == 2 and now.set_by == "ben" and now.reason == "DPO"
    assert yaml.safe_load(lake.read_bytes(k2))["retention_days"] == {"camera": 14, "audio": 7, "other": None}
    # The shortest period of the classes a log holds decides; "other: null" keeps plain logs forever.
    assert now.keep_days(["other", "camera"]) == (14, "camera")
    assert now.keep_days(["other"]) == (None, None)
    with pytest.raises(policy.PolicyError, match="--by and --reason"):
        policy.set_policy(lake, GOOD, source="c.yaml", by=" ", reason="r")


def test_a_tampered_version_in_the_lake_is_reported_with_its_location(tmp_path) -> None:
    lake = LocalLake(tmp_path)
    policy.set_policy(lake, GOOD, source="a.yaml", by="ana", reason="r")
    lake.write_bytes(layout.policy_key(2), b"schema: flywheel-governance-policy-v1\nretention_days: {camera: -1}\n")
    with pytest.raises(policy.PolicyError, match=r"governance/policy/v2.yaml"):
        policy.current(lake)


def test_cli_policy_set_show_and_retention_plan(tmp_path) -> None:
    from click.testing import CliRunner

    from flywheel_pipelines.cli import main
    from flywheel_pipelines.lib.sim.fleet import simulate_fleet

    lake = LocalLake(tmp_path / "lake")
    simulate_fleet(lake, robots=1, days=["2026-01-05"], episodes_per_day=2, seed=0)
    run = CliRunner().invoke
    root = ["--lake", str(lake.root)]
    assert "no retention policy set" in run(main, ["governance", "policy", "show", *root]).output
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("audio: 7, ", ""))
    out = run(main, ["governance", "policy", "set", "--file", str(bad), "--reason", "r", "--by", "ana", *root])
    assert out.exit_code != 0 and str(bad) in out.output and "has no audio" in out.output
    good = tmp_path / "good.yaml"
    good.write_text(GOOD.replace("other: null", "other: 30"))
    out = run(main, ["governance", "policy", "set", "--file", str(good), "--reason", "privacy review", "--by", "ana",
                     *root])
    assert out.exit_code == 0 and "v1 in force" in out.output
    shown = run(main, ["governance", "policy", "show", "--json", *root]).output
    assert '"other": 30' in shown and '"set_by": "ana"' in shown
    # No manifest yet: nothing is classified, so nothing expires (and the CLI says why).
    plan = run(main, ["governance", "retention", "--today", "2026-03-01", *root]).output
    assert "0 raw logs expired" in plan and "1 not described by a manifest yet (kept)" in plan
    from flywheel_pipelines.lib.ingest.manifest import write_manifest

    write_manifest(lake, "r101", "2026-01-05")
    plan = run(main, ["governance", "retention", "--today", "2026-03-01", *root]).output
    assert "1 raw logs expired" in plan and "other: 30 days (policy v1)" in plan
    assert lake.list("raw/")  # the plan deletes nothing
