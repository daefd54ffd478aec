"""Retention end to end on a real lake: camera logs expire by the policy, plain logs stay; each
expired log leaves a tombstone, and lineage shows it and everything built on it as expired."""

import datetime as dt

import pytest

from flywheel_pipelines.lib import layout, lineage_index
from flywheel_pipelines.lib.governance import deleter, policy, rebuilds, retention
from flywheel_pipelines_tests.lib import governance_lake

OLD, RECENT = "2026-01-05", "2026-02-20"
TODAY = dt.date(2026, 3, 1)
CAMERA_30 = "schema: flywheel-governance-policy-v1\nretention_days: {camera: 30, audio: 30, other: null}\n"


@pytest.fixture(scope="module")
def governed(tmp_path_factory) -> governance_lake.GovernedLake:
    root = tmp_path_factory.mktemp("governed")
    return governance_lake.build(root / "lake", [OLD, RECENT], robots=1, episodes=6, camera_day=OLD)


def test_without_a_policy_nothing_expires(governed) -> None:
    plan = retention.plan(governed.lake, None, today=TODAY)
    assert plan.expired == () and plan.policy_version is None


def test_a_camera_log_expires_behind_a_tombstone_and_lineage_marks_it(governed) -> None:
    lake = governed.lake
    raw_before = {o.key for o in lake.list("raw/")}
    policy.set_policy(lake, CAMERA_30, source="retention.yaml", by="dpo", reason="camera feeds: 30 days")
    plan = retention.plan(lake, policy.current(lake), today=TODAY)
    # Only the camera log: the simulated logs of the same day hold no camera topic ("other": forever).
    assert [e.key for e in plan.expired] == [governed.camera_key]
    assert plan.expired[0].rule == "camera: 30 days (policy v1)" and plan.unclassified == ()

    result = retention.sweep(lake, policy.current(lake), today=TODAY)
    assert result.errors == [] and [t.key for t in result.tombstones] == [governed.camera_key]
    assert {o.key for o in lake.list("raw/")} == raw_before - {governed.camera_key}
    (stone,) = deleter.read_tombstones(lake, governance_lake.CAMERA_ROBOT)
    assert stone["status"] == "expired" and stone["rule"] == "camera: 30 days (policy v1)"
    assert stone["sha256"] == plan.expired[0].sha256 and stone["size"] == plan.expired[0].size > 1_000_000
    assert {t["topic"]: t["class"] for t in stone["topics"]}["/wrist_camera/image_raw/compressed"] == "camera"
    # The arm7 dataset has the image stamps only (no pixel features): flagged none, nothing to rebuild.
    assert result.flagged_datasets == [] and rebuilds.read_requests(lake) == []
    assert not retention.embeds_pixels(lake, "arm7", governed.datasets["arm7"])

    # Lineage: the raw file and the dataset built on it are marked; the other dataset is not.
    res = lineage_index.query(lake, raw=governed.camera_key)
    assert [f.status for f in res.raw_files] == ["expired"]
    (ds,) = res.downstream
    assert (ds.name, ds.detail["source_status"]) == ("arm7", "expired")
    text = lineage_index.render_tree(res)
    assert "[EXPIRED]" in text and "dataset arm7/" in text and "[EXPIRED SOURCE]" in text
    assert lineage_index.to_json(res)["raw_files"][0]["status"] == "expired"
    other = lineage_index.query(lake, dataset=f"reach/{governed.datasets['reach']}")
    assert all("source_status" not in n.detail for n in other.upstream)

    # A second sweep finds nothing more to do; a tighter policy expires the plain old logs too.
    assert retention.sweep(lake, policy.current(lake), today=TODAY).tombstones == []
    policy.set_policy(lake, CAMERA_30.replace("other: null", "other: 30"), source="r2.yaml", by="dpo", reason="all")
    second = retention.sweep(lake, policy.current(lake), today=TODAY)
    old_logs = sorted(k for k in raw_before if f"date={OLD}" in k and k != governed.camera_key)
    assert sorted(t.key for t in second.tombstones) == old_logs
    assert all(f"date={RECENT}" in o.key for o in lake.list("raw/"))
    # Policy, episodes and datasets of the plain logs are kept: retention deletes raw bytes only.
    res = lineage_index.query(lake, dataset=f"reach/{governed.datasets['reach']}")
    assert res.upstream[0].detail["source_status"] == "expired"
    assert lake.exists(f"{layout.dataset_prefix('reach', governed.datasets['reach'])}/manifest.json")
