"""What the UI shows of a materialization: checks that name their robot-day, Dagster's table keys
(row count, column schema), rounded figures with units, and MLflow runs as links."""

import math

import dagster as dg
import pyarrow as pa
import pytest

from flywheel_pipelines.defs.catalog.assets import episode_catalog
from flywheel_pipelines.defs.curation.assets import curated_dataset
from flywheel_pipelines.defs.episodes.assets import episodes
from flywheel_pipelines.defs.ingest.assets import log_manifest, raw_fleet_logs
from flywheel_pipelines.defs.oncall.quarantine import quarantine_log
from flywheel_pipelines.defs.resources import LakeResource, MlflowResource
from flywheel_pipelines.defs.ui_metadata import lerobot_table_metadata, round_floats, rounded, table_metadata
from flywheel_pipelines.lib.episodes.standardize import EPISODE_SCHEMA
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.defs.test_ingest import DAY, ingest, upload


@pytest.mark.parametrize(("value", "expected"), [
    (0.8333333333, 0.8333), (12345.678, 12350.0), (2.3456789e-07, 2.346e-07), (0.0, 0.0), (3.0, 3.0)])
def test_rounded_keeps_significant_digits(value, expected):
    assert rounded(value) == expected


def test_round_floats_leaves_everything_but_floats_alone():
    link = dg.MetadataValue.url("http://x/#/runs/1")
    out = round_floats({"loss": 0.123456789, "nan": float("nan"), "n": 7, "s": "0.123456789", "link": link,
                        "by": {"a": 1.0 / 3, "b": 2}})
    assert out["loss"] == 0.1235 and math.isnan(out["nan"]) and out["n"] == 7 and out["s"] == "0.123456789"
    assert out["link"] is link and out["by"] == {"a": 0.3333, "b": 2}


def test_table_metadata_uses_dagsters_keys():
    meta = table_metadata(pa.schema([("a", pa.int64()), ("b", pa.list_(pa.string()))]), 3, partition=True)
    assert meta["dagster/row_count"].value == 3 and meta["dagster/partition_row_count"].value == 3
    schema = meta["dagster/column_schema"].value
    assert [(c.name, c.type) for c in schema.columns] == [("a", "int64"), ("b", "list<item: string>")]
    meta = lerobot_table_metadata({"observation.state": {"dtype": "float32", "shape": [2], "names": ["j0", "j1"]},
                                   "index": {"dtype": "int64", "shape": [1], "names": None}}, 10)
    cols = meta["dagster/column_schema"].value.columns
    assert [(c.name, c.type, c.description) for c in cols] == [
        ("observation.state", "float32[2]", "j0, j1"), ("index", "int64[1]", None)]


def test_an_mlflow_run_is_a_link_only_when_the_ui_url_is_known(monkeypatch):
    monkeypatch.delenv("FLYWHEEL_MLFLOW_UI_URL", raising=False)
    plain = MlflowResource().run_link("abc", "7")
    assert isinstance(plain, dg.TextMetadataValue) and plain.value == "abc"
    link = MlflowResource(ui_url="https://mlflow.example.com/").run_link("abc", "7")
    assert isinstance(link, dg.UrlMetadataValue) and link.value == "https://mlflow.example.com/#/experiments/7/runs/abc"
    monkeypatch.setenv("FLYWHEEL_MLFLOW_UI_URL", "http://mlflow:5000")
    assert MlflowResource().run_link("abc").value == "http://mlflow:5000/#/runs/abc"


def test_episodes_checks_carry_their_robot_day_and_the_table_its_schema(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    upload(lake, "r201", episodes=3)
    with dg.instance_for_test() as instance:
        result = ingest(instance, lake, "r201")
        evaluations = result.get_asset_check_evaluations()
        assert {e.check_name for e in evaluations} >= {"sync_skew", "gap_tolerance", "every_message_accounted"}
        for e in evaluations:
            meta = {k: v.value for k, v in e.metadata.items()}
            assert (meta["robot"], meta["date"], meta["partition"]) == ("r201", DAY, f"{DAY}|r201"), e.check_name
        [mat] = result.asset_materializations_for_node("episodes")
        assert mat.metadata["dagster/row_count"].value == mat.metadata["episodes"].value == 3
        assert mat.metadata["dagster/partition_row_count"].value == 3
        columns = mat.metadata["dagster/column_schema"].value.columns
        assert [c.name for c in columns] == EPISODE_SCHEMA.names

        # The catalog and a curated dataset: table keys, rounded figures with their units in the key.
        assets = [raw_fleet_logs, log_manifest, episodes, quarantine_log, episode_catalog, curated_dataset]
        result = dg.materialize(assets, selection=[episode_catalog, curated_dataset], instance=instance,
                                resources={"lake": LakeResource(root=str(lake.root))},
                                run_config={"ops": {"curated_dataset": {"config": {"outcomes": ["success", "failure"],
                                                                                   "include_quality_issues": True}}}})
        assert result.success
    catalog = result.asset_materializations_for_node("episode_catalog")[0].metadata
    assert catalog["dagster/row_count"].value == catalog["episodes"].value == 3
    assert [c.name for c in catalog["dagster/column_schema"].value.columns][:3] == ["episode_id", "robot", "date"]
    hours = catalog["duration_h"].value
    assert hours > 0 and hours == rounded(hours)
    dataset = result.asset_materializations_for_node("curated_dataset")[0].metadata
    assert dataset["dagster/row_count"].value == dataset["frames"].value > 0
    names = [c.name for c in dataset["dagster/column_schema"].value.columns]
    assert {"observation.state", "action", "timestamp", "episode_index"} <= set(names)
    assert dataset["frame_rate_hz"].value > 0
    assert dataset["duration_s"].value == rounded(dataset["frames"].value / dataset["frame_rate_hz"].value)
