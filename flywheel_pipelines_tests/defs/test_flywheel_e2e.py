"""The whole graph on a tiny fleet, through the same path as `make demo` and the CLI."""

import json
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from flywheel_pipelines.cli import main
from flywheel_pipelines.lib.evaluation.stats import wilson_interval
from flywheel_pipelines.lib.release.bundle import verify_bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Run the demo once for the module: 2 robots x 1 day x 20 episodes."""
    home = tmp_path_factory.mktemp("flywheel")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLYWHEEL_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster_home"))
        from flywheel_pipelines.demo import run_demo

        result = run_demo(robots=2, days=1, episodes_per_day=20, seed=0, start_date="2026-11-01", log=lambda m: None)
        yield home, result


def test_bundle_exists_and_its_checksums_verify(demo):
    _, result = demo
    bundle = Path(result.metadata["release_bundle"]["uri"])
    check = verify_bundle(bundle)
    assert check.ok, check.problems
    assert {"policy.onnx", "MODEL_CARD.md", "lineage.json", "SHA256SUMS", "parity.json"} <= {p.name for p in bundle.iterdir()}


def test_onnx_parity_within_1e_4(demo):
    _, result = demo
    parity = json.loads((Path(result.metadata["release_bundle"]["uri"]) / "parity.json").read_text())
    assert parity["inputs"] > 0
    assert parity["max_abs_error"] <= 1e-4


def test_lineage_names_exactly_the_raw_files_the_dataset_used(demo):
    _, result = demo
    lineage = json.loads((Path(result.metadata["release_bundle"]["uri"]) / "lineage.json").read_text())
    manifest = json.loads((Path(result.metadata["curated_dataset"]["uri"]) / "manifest.json").read_text())
    used = {(f["key"], f["sha256"]) for e in manifest["episodes"] for f in e["raw_files"]}
    assert {(f["key"], f["sha256"]) for f in lineage["raw_files"]} == used
    assert lineage["dataset"]["version"] == result.metadata["curated_dataset"]["dataset_version"]
    assert lineage["policy"]["mlflow_run_id"] == result.metadata["policy_candidate"]["mlflow_run_id"]
    # The raw bytes behind the release are still in the lake and still hash the same.
    import hashlib

    lake = Path(result.lake_root)
    for f in lineage["raw_files"]:
        assert hashlib.sha256((lake / f["key"]).read_bytes()).hexdigest() == f["sha256"]


def test_trained_policy_clearly_beats_the_trivial_policy(demo):
    home, result = demo
    ev = result.metadata["eval_report"]
    summary = json.loads((Path(ev["uri"]) / "summary.json").read_text())
    cand, _, trivial = summary["summaries"]
    assert cand["policy"] == "candidate" and trivial["policy"] == "hold_position"
    assert cand["ci_low"] > trivial["ci_high"]
    assert cand["ci_low"] > wilson_interval(trivial["successes"], trivial["episodes"])[1]


def test_mlflow_run_and_registry_hold_the_candidate(demo):
    home, result = demo
    import mlflow

    pol = result.metadata["policy_candidate"]
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    run = mlflow.get_run(pol["mlflow_run_id"])
    assert run.data.params["dataset_version"] == result.metadata["curated_dataset"]["dataset_version"]
    assert run.data.tags["dagster.run_id"]
    assert run.data.tags["code.source_hash"]
    assert "val_loss" in run.data.metrics and "eval.candidate.success_rate" in run.data.metrics
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == 150
    version = mlflow.MlflowClient().get_model_version(pol["registered_model"], pol["registered_version"])
    assert version.run_id == run.info.run_id


def test_cli_lineage_verify_and_search_on_the_demo(demo):
    home, result = demo
    bundle = result.metadata["release_bundle"]["uri"]
    runner = CliRunner()
    out = runner.invoke(main, ["verify", bundle])
    assert out.exit_code == 0 and "OK" in out.output
    out = runner.invoke(main, ["lineage", bundle])
    assert out.exit_code == 0, out.output
    assert "robot r101" in out.output and "raw/robot=r101/date=2026-11-01/" in out.output
    out = runner.invoke(main, ["episodes", "search", "--robot", "r102", "--outcome", "success", "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert rows and all(r["robot"] == "r102" and r["outcome"] == "success" for r in rows)


def test_tampered_bundle_fails_verification(demo, tmp_path):
    import shutil

    _, result = demo
    copy = tmp_path / "bundle"
    shutil.copytree(result.metadata["release_bundle"]["uri"], copy)
    with open(copy / "policy.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    out = CliRunner().invoke(main, ["verify", str(copy)])
    assert out.exit_code == 1 and "policy.onnx: checksum mismatch" in out.output


def test_release_refuses_a_candidate_that_failed_the_gate(demo):
    home, result = demo
    from flywheel_pipelines.definitions import defs

    d = defs()
    instance = dg.DagsterInstance.from_config(str(home / "dagster_home"))
    job = d.resolve_job_def("nightly_retrain")
    strict = {"ops": {"eval_report": {"config": {"episodes": 20, "min_success_rate": 1.01}}}}
    run = job.execute_in_process(instance=instance, run_config=strict, raise_on_error=False,
                                 asset_selection=[dg.AssetKey("eval_report"), dg.AssetKey("release_bundle")])
    gate = [e for e in run.get_asset_check_evaluations() if e.check_name == "eval_gate"]
    assert gate and not gate[0].passed
    # The blocking check stops the release step in the same run...
    assert not any(m.asset_key == dg.AssetKey("release_bundle") for m in run.get_asset_materialization_events()
                   for m in [m.event_specific_data.materialization])
    # ...and the release asset run on its own refuses as well.
    alone = job.execute_in_process(instance=instance, raise_on_error=False,
                                   asset_selection=[dg.AssetKey("release_bundle")])
    assert not alone.success
    failure = next(e for e in alone.all_events if e.is_step_failure)
    assert "failed the evaluation gate" in str(failure.event_specific_data.error.message)


def test_rerunning_the_nightly_job_reproduces_dataset_and_policy_versions(demo):
    home, result = demo
    from flywheel_pipelines.definitions import defs
    from flywheel_pipelines.demo import QUIET

    instance = dg.DagsterInstance.from_config(str(home / "dagster_home"))
    again = defs().resolve_job_def("nightly_retrain").execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False,
        asset_selection=[dg.AssetKey(k) for k in ("episode_catalog", "curated_dataset", "policy_candidate")])
    assert again.success
    meta = {m.asset_key.to_user_string(): m.metadata for m in again.get_asset_materialization_events()
            for m in [m.event_specific_data.materialization]}
    assert meta["curated_dataset"]["dataset_version"].value == result.metadata["curated_dataset"]["dataset_version"]
    assert meta["policy_candidate"]["policy_version"].value == result.metadata["policy_candidate"]["policy_version"]
    assert meta["policy_candidate"]["mlflow_run_id"].value != result.metadata["policy_candidate"]["mlflow_run_id"]
