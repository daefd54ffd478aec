"""The whole graph on a tiny fleet, through the same path as `make demo` and the CLI."""

import hashlib
import json
import re
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flywheel_pipelines.cli import main
from flywheel_pipelines.lib.evaluation.stats import wilson_interval
from flywheel_pipelines.lib.release.bundle import verify_bundle
from flywheel_pipelines_tests.conftest import days_ago

START = days_ago(2)  # two days: START and the day after
MLFLOW_UI = "http://mlflow.test:5000"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Run the demo once for the module: 2 robots x 2 days x 20 episodes (one day trains a candidate
    too weak for the shipped suite's gate, which is the gate doing its job)."""
    home = tmp_path_factory.mktemp("flywheel")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLYWHEEL_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster_home"))
        mp.setenv("FLYWHEEL_MLFLOW_UI_URL", MLFLOW_UI)
        from flywheel_pipelines.demo import run_demo

        result = run_demo(robots=2, days=2, episodes_per_day=20, seed=0, start_date=START, log=lambda m: None)
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
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(pol["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset_version"] == result.metadata["curated_dataset"]["dataset_version"]
    assert run.data.tags["dagster.run_id"]
    assert run.data.tags["code.source_hash"]
    assert "val_loss" in run.data.metrics and "eval.candidate.success_rate" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == 150
    version = client.get_model_version(pol["registered_model"], pol["registered_version"])
    assert version.run_id == run.info.run_id


def test_cli_lineage_verify_and_search_on_the_demo(demo):
    home, result = demo
    bundle = result.metadata["release_bundle"]["uri"]
    runner = CliRunner()
    out = runner.invoke(main, ["verify", bundle])
    assert out.exit_code == 0 and "OK" in out.output
    out = runner.invoke(main, ["lineage", bundle])
    assert out.exit_code == 0, out.output
    assert "robot r101" in out.output and f"raw/robot=r101/date={START}/" in out.output
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


def _suite(path: Path, *, episodes: int = 12, gate: str) -> str:
    """A small evaluation suite (YAML, versioned by its bytes) with the given gate section."""
    path.write_text(f"""name: e2e
seed: 5
groups:
  nominal: {{episodes: {episodes}}}
  randomized:
    episodes: {episodes}
    ranges: {{gain_scale: [0.8, 1.25], latency_s: [0.0, 0.04], pos_noise: [0.0005, 0.003]}}
  golden: {{}}
gate:
{gate}
""")
    return str(path)


def _instance(home):
    return dg.DagsterInstance.from_config(str(home / "dagster_home"))


def _run(home, job: str, *, assets=None, config=None):
    from flywheel_pipelines.definitions import defs
    from flywheel_pipelines.demo import QUIET

    run_config = {**QUIET, **(config or {})}
    kwargs = {"asset_selection": [dg.AssetKey(a) for a in assets]} if assets else {}
    return defs().resolve_job_def(job).execute_in_process(instance=_instance(home), run_config=run_config,
                                                          raise_on_error=False, **kwargs)


def _materialized(run) -> dict:
    return {e.event_specific_data.materialization.asset_key.to_user_string():
            {k: v.value for k, v in e.event_specific_data.materialization.metadata.items()}
            for e in run.get_asset_materialization_events()}


def _failure(run) -> str:
    return str(next(e for e in run.all_events if e.is_step_failure).event_specific_data.error.message)


def _registry(home):
    import mlflow

    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_golden_scenarios_are_the_catalogs_failures_with_provenance(demo):
    home, result = demo
    meta = result.metadata["golden_scenarios"]
    catalog = pq.read_table(Path(result.lake_root) / "catalog" / "episodes.parquet").to_pylist()
    field = {r["episode_id"]: r for r in catalog if r["outcome"] == "failure" or r["intervention"]}
    assert field, "the demo fleet produced no failures or interventions"
    doc = json.loads((Path(meta["uri"]) / "scenarios.json").read_text())
    assert doc["version"] == meta["golden_version"] and meta["active"] == len(field) == doc["active"]
    lake = Path(result.lake_root)
    for entry in doc["scenarios"]:
        src = entry["scenario"]["source"]
        row = field[src["episode_id"]]
        assert entry["scenario"]["scenario_id"] == f"golden/{row['episode_id']}"
        assert (src["robot"], src["date"]) == (row["robot"], row["date"])
        for f in src["raw_files"]:  # down to the raw bytes
            assert hashlib.sha256((lake / f["key"]).read_bytes()).hexdigest() == f["sha256"]
        assert entry["evidence"]["dynamics"]["frames"] > 3
    # Rebuilding from the same catalog changes nothing: the set is stable, not re-derived.
    again = _run(home, "nightly_retrain", assets=["golden_scenarios"])
    assert again.success
    assert _materialized(again)["golden_scenarios"]["golden_version"] == meta["golden_version"]
    assert _materialized(again)["golden_scenarios"]["added"] == 0


def test_the_report_is_in_the_dagster_ui_and_in_mlflow(demo):
    home, result = demo
    ev = result.metadata["eval_report"]
    assert ev["gate_passed"] and ev["production_version"] == "none (first release)"
    assert "**Gate: PASSED**" in ev["report"] and "**No production policy yet**" in ev["report"]
    assert f"Plot (success by group): `{ev['uri']}/success_by_group.png`" in ev["report"]
    assert ev["golden_active"] == result.metadata["golden_scenarios"]["active"]
    record = _instance(home).event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("eval_report"), "eval_gate")])
    evaluation = next(iter(record.values())).event.dagster_event.event_specific_data
    assert evaluation.passed
    assert any("first release" in r for r in evaluation.metadata["reasons"].value)
    assert "min_success_rate[nominal]" in evaluation.metadata["criteria"].value
    client = _registry(home)
    pol = result.metadata["policy_candidate"]
    artifacts = {a.path for a in client.list_artifacts(pol["mlflow_run_id"], "eval")}
    assert {"eval/report.html", "eval/report.md", "eval/summary.json", "eval/success_by_group.png",
            "eval/returns.png"} <= artifacts
    run = client.get_run(pol["mlflow_run_id"])
    assert run.data.tags["eval.gate"] == "passed" and run.data.tags["eval.suite_version"] == ev["suite_version"]
    assert "eval.randomized.candidate.success_rate" in run.data.metrics
    tags = client.get_model_version(pol["registered_model"], pol["registered_version"]).tags
    assert tags["flywheel.gate"] == "passed" and tags["flywheel.gate.suite_version"] == ev["suite_version"]
    card = (Path(result.metadata["release_bundle"]["uri"]) / "MODEL_CARD.md").read_text()
    assert f"Suite `reach-default` version `{ev['suite_version']}`" in card
    assert "No production policy existed at evaluation time (first release)" in card


def test_re_evaluating_the_same_candidate_gives_a_byte_identical_report(demo):
    home, result = demo
    ev = result.metadata["eval_report"]
    before = {p.name: p.read_bytes() for p in Path(ev["uri"]).iterdir() if p.name != "episodes.parquet"}
    again = _run(home, "nightly_retrain", assets=["eval_report"])
    assert again.success
    after = {p.name: p.read_bytes() for p in Path(ev["uri"]).iterdir() if p.name != "episodes.parquet"}
    assert before.keys() == after.keys() >= {"summary.json", "report.md", "report.html", "success_by_group.png"}
    for name in before:
        assert before[name] == after[name], f"{name} changed between two evaluations of the same candidate"


def test_release_refuses_a_candidate_that_failed_the_gate(demo, tmp_path):
    home, _ = demo
    # Demand that the candidate clearly beat the scripted expert it imitates: it cannot.
    strict = _suite(tmp_path / "strict.yaml", gate="  beat_baseline: scripted_expert")
    run = _run(home, "nightly_retrain", assets=["eval_report", "release_bundle"],
               config={"ops": {"eval_report": {"config": {"suite": strict}}}})
    gate = [e for e in run.get_asset_check_evaluations() if e.check_name == "eval_gate"]
    assert gate and not gate[0].passed
    assert [r.split(":")[0] for r in gate[0].metadata["reasons"].value] == ["beats[scripted_expert]"]
    # The blocking check stops the release step in the same run...
    assert "release_bundle" not in _materialized(run)
    # ...and the release asset run on its own refuses as well.
    alone = _run(home, "nightly_retrain", assets=["release_bundle"])
    assert not alone.success
    assert "failed the evaluation gate: beats[scripted_expert]: candidate CI low" in _failure(alone)


def test_promotion_a_golden_regression_and_rollback(demo, tmp_path):
    """The production loop: promote through the job, a weaker candidate regresses on a golden
    scenario production solves and is refused release and promotion, force and roll back."""
    home, result = demo
    client = _registry(home)
    model = result.metadata["policy_candidate"]["registered_model"]
    # The current candidate, judged by the default suite again (the test above left a failed verdict).
    good = _run(home, "nightly_retrain", assets=["eval_report"])
    assert good.success
    good_version = _materialized(good)["eval_report"]["registered_version"]

    promote = {"ops": {"promote_policy_version": {"config": {
        "policy_name": model, "version": good_version, "reason": "first release", "requested_by": "maya"}}}}
    run = _run(home, "promote_policy", config=promote)
    assert run.success, _failure(run)
    assert str(client.get_model_version_by_alias(model, "production").version) == good_version
    # That evaluation compared with no production; production has changed since, so it is stale.
    stale = _run(home, "nightly_retrain", assets=["release_bundle"])
    assert not stale.success
    assert f"compared with production version none, but production is now {good_version}" in _failure(stale)

    # A weaker candidate (two epochs) judged only on golden regressions: every other criterion is off.
    golden_only = _suite(tmp_path / "golden_only.yaml",
                         gate="  block_safety_regressions: false\n  block_golden_regressions: true")
    weak = _run(home, "nightly_retrain", assets=["policy_candidate", "eval_report", "release_bundle"],
                config={"ops": {"policy_candidate": {"config": {"epochs": 2}},
                                "eval_report": {"config": {"suite": golden_only}}}})
    meta = _materialized(weak)
    weak_version = meta["policy_candidate"]["registered_version"]
    assert meta["eval_report"]["production_version"] == good_version
    summary = json.loads((Path(meta["eval_report"]["uri"]) / "summary.json").read_text())
    regressions = [g for g in summary["golden_scenarios"] if g["status"] == "regression"]
    assert regressions and all(g["production"] and not g["candidate"] for g in regressions)
    assert [c["name"] for c in summary["gate"]["criteria"] if not c["passed"]] == ["golden_regressions"]
    gate = next(e for e in weak.get_asset_check_evaluations() if e.check_name == "eval_gate")
    assert not gate.passed and regressions[0]["scenario_id"] in " ".join(gate.metadata["reasons"].value)
    assert "release_bundle" not in meta
    alone = _run(home, "nightly_retrain", assets=["release_bundle"])
    assert not alone.success and "golden_regressions" in _failure(alone)

    # Promotion refuses the weak version; forcing it is possible and recorded; rollback undoes it.
    lake = ["--lake", result.lake_root]
    out = CliRunner().invoke(main, ["policy", "promote", model, weak_version, "--reason", "looks ok", *lake])
    assert out.exit_code == 1 and "its release gate is failed (golden_regressions" in out.output
    out = CliRunner().invoke(main, ["policy", "promote", model, weak_version, "--reason", "demo of force",
                                    "--force", "--by", "maya", *lake])
    assert out.exit_code == 0 and "FORCED past a failed gate" in out.output
    rollback = {"ops": {"rollback_policy_version": {"config": {
        "policy_name": model, "reason": "golden regression", "requested_by": "oncall"}}}}
    run = _run(home, "rollback_policy", config=rollback)
    assert run.success, _failure(run)
    assert str(client.get_model_version_by_alias(model, "production").version) == good_version
    out = CliRunner().invoke(main, ["policy", "status", model, "--json", *lake])
    log = json.loads(out.output)["log"]
    assert [(e["action"], e["version"], e["via"], e["forced"], e["by"]) for e in log] == [
        ("promote", good_version, "dagster", False, "maya"), ("promote", weak_version, "cli", True, "maya"),
        ("rollback", good_version, "dagster", False, "oncall")]
    assert log[2]["from_version"] == weak_version and log[2]["dagster_run_id"] == run.run_id
    # The same promotion again is refused through the job as well.
    again = _run(home, "promote_policy", config=promote)
    assert not again.success and "already production" in _failure(again)


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


def test_the_main_assets_metadata_reads_well_in_the_ui(demo):
    _, result = demo
    pol, ev, rel = (result.metadata[k] for k in ("policy_candidate", "eval_report", "release_bundle"))
    run_url = f"{MLFLOW_UI}/#/experiments/{pol['mlflow_experiment_id']}/runs/{pol['mlflow_run_id']}"
    assert pol["mlflow_run"] == ev["mlflow_run"] == rel["mlflow_run"] == run_url
    floats = {f"{name}.{k}": v for name, meta in (("policy_candidate", pol), ("eval_report", ev), ("release_bundle", rel))
              for k, v in meta.items() if isinstance(v, float)}
    assert {"policy_candidate.final_train_loss", "eval_report.success_rate", "release_bundle.bundle_mb"} <= set(floats)
    assert all(v != v or v == float(f"{v:.4g}") for v in floats.values()), floats  # 4 significant digits (NaN aside)
    assert 0 < rel["bundle_mb"] < 100


def test_ppo_batched_candidate_through_the_asset(demo, tmp_path):
    """``trainer: ppo_batched`` is selectable in the asset's config like the SB3 trainers: a policy
    artifact with its ONNX export, an MLflow run with the config's params, the file as an artifact
    and per-update metrics, a registered version; ``bc_init`` is refused with a reason."""
    from flywheel_pipelines.lib.learning.rl import config_path

    home, _ = demo
    body = config_path("ppo_batched_reach.yaml").read_text()
    for key, value in (("n_timesteps", "256"), ("n_envs", "8"), ("n_steps", "16"), ("batch_size", "64"),
                       ("net_arch", "[32, 32]"), ("robots", "4"), ("threads", "1"), ("checkpoint_freq", "128")):
        body, count = re.subn(rf"^(\s+{key}:) [^#\n]*", rf"\g<1> {value}  ", body, flags=re.M)
        assert count == 1, key
    (tmp_path / "tiny_batched.yaml").write_text(body)
    train = {"trainer": "ppo_batched", "rl_config": str(tmp_path / "tiny_batched.yaml"),
             "policy_name": "reach-ppo-batched", "device": "cpu"}
    run = _run(home, "nightly_retrain", assets=["policy_candidate"],
               config={"ops": {"policy_candidate": {"config": train}}})
    assert run.success
    pol = _materialized(run)["policy_candidate"]
    assert pol["trainer"] == "ppo_batched" and pol["timesteps"] == 256
    folder = Path(pol["uri"])
    assert (folder / "policy.onnx").is_file()
    assert json.loads((folder / "config.json").read_text())["training"]["trainer"] == "ppo_batched"
    client = _registry(home)
    mlrun = client.get_run(pol["mlflow_run_id"])
    assert mlrun.data.params["trainer"] == "ppo_batched" and mlrun.data.params["rl.algo"] == "ppo_batched"
    assert mlrun.data.params["rl.hyperparams.sim_backend"] == "auto"
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "train.value_loss")] == [128, 256]
    assert {a.path for a in client.list_artifacts(mlrun.info.run_id, "config")} == {"config/tiny_batched.yaml"}
    assert client.get_model_version("reach-ppo-batched", pol["registered_version"]).run_id == mlrun.info.run_id

    refused = _run(home, "nightly_retrain", assets=["policy_candidate"],
                   config={"ops": {"policy_candidate": {"config": {**train, "bc_init": True}}}})
    assert not refused.success and "ppo_batched does not fine-tune a BC policy" in _failure(refused)
