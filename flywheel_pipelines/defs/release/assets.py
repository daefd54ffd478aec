"""Release bundles: ONNX + parity proof + model card + lineage + checksums, only past the gate."""


import datetime as dt
import json
import shutil

import dagster as dg

from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.resources import LakeResource, MlflowResource
from flywheel_pipelines.defs.ui_metadata import round_floats, rounded
from flywheel_pipelines.defs.upstream import upstream_metadata
from flywheel_pipelines.lib import layout, lineage_index
from flywheel_pipelines.lib.evaluation import registry, report
from flywheel_pipelines.lib.evaluation.report import REPORT_MD
from flywheel_pipelines.lib.lineage import build_lineage, lineage_summary
from flywheel_pipelines.lib.release.bundle import (
    MODEL_CARD,
    ONNX,
    model_card,
    verify_bundle,
    write_lineage,
    write_sha256sums,
)
from flywheel_pipelines.lib.storage import staging_dir

PARITY_TOLERANCE = 1e-4


def gate_refusal(summary: dict, *, candidate: str, golden_version: str | None,
                 production_now: str | None) -> str | None:
    """Why this evaluation may not release the candidate, or None. The gate must have passed, for
    this candidate, against today's golden set and today's production policy."""
    if summary["policy_version"] != candidate:
        return (f"eval_report evaluated policy {summary['policy_version']} but the latest candidate is {candidate}: "
                "re-materialize eval_report first")
    if not summary["gate"]["passed"]:
        return f"policy {candidate} failed the evaluation gate: " + "; ".join(summary["gate"]["reasons"])
    evaluated_golden = (summary.get("golden") or {}).get("version")
    if golden_version and evaluated_golden != golden_version:
        return (f"policy {candidate} was evaluated against golden set {evaluated_golden}, but the golden set is now "
                f"{golden_version} (new field failures): re-materialize eval_report")
    compared = (summary.get("production") or {}).get("registered_version")
    if compared != production_now:
        return (f"policy {candidate} was compared with production version {compared or 'none'}, but production is "
                f"now {production_now or 'none'}: re-materialize eval_report")
    return None


# Every asset the body reads: the evaluation summary and report, the policy files, the dataset (its
# validation split for the parity proof, its manifest for lineage.json) and the golden set's version.
@dg.asset(deps=["eval_report", "policy_candidate", "curated_dataset", "golden_scenarios"],
          group_name=group_of("release_bundle"), kinds={"onnx"},
          owners=["team:ml"])
def release_bundle(context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """The deployable bundle. Refuses a candidate whose evaluation gate did not pass, or whose
    evaluation is stale (other golden set, other production policy), even when run on its own:
    blocking checks only stop downstream steps of the same run."""
    # torch and onnx load where the step runs, not with the code location.
    from flywheel_pipelines.lib.learning.bc import load_training_data
    from flywheel_pipelines.lib.learning.policy import CONFIG, load_policy
    from flywheel_pipelines.lib.release.onnx_export import OPSET, onnx_parity

    store = lake.lake()
    ev = upstream_metadata(context, "eval_report")
    pol = upstream_metadata(context, "policy_candidate")
    ds = upstream_metadata(context, "curated_dataset")
    try:
        summary = report.read_summary(store, ev["prefix"], ev.get("summary_sha256"))
    except report.SummaryChanged as exc:
        raise dg.Failure(str(exc)) from None
    golden_now = upstream_metadata(context, "golden_scenarios")["golden_version"]
    production_now = None
    if pol.get("registered_model"):
        mlf = mlflow.store()
        mv = registry.production_version(mlf.client, pol["registered_model"],
                                         alias=summary["suite"]["production_alias"])
        production_now = str(mv.version) if mv is not None else None
    refusal = gate_refusal(summary, candidate=pol["policy_version"], golden_version=golden_now,
                           production_now=production_now)
    if refusal:
        raise dg.Failure(f"no release: {refusal}")
    name, version = pol["policy_name"], pol["policy_version"]
    with store.local_dir(pol["prefix"]) as policy_dir, store.local_dir(ds["prefix"]) as dataset_dir:
        policy, policy_cfg = load_policy(policy_dir)
        data = load_training_data(dataset_dir)
        dataset_manifest = json.loads((dataset_dir / layout.MANIFEST).read_text())
        # Held-out inputs: the validation split the policy never trained on.
        held_out = data.val_obs if len(data.val_obs) else data.train_obs
        with staging_dir() as tmp:
            bundle = tmp / "bundle"
            bundle.mkdir()
            shutil.copyfile(policy_dir / layout.POLICY_ONNX, bundle / ONNX)
            shutil.copyfile(policy_dir / CONFIG, bundle / "policy_config.json")
            parity = {**onnx_parity(policy, bundle / ONNX, held_out), "opset": OPSET, "tolerance": PARITY_TOLERANCE}
            if parity["max_abs_error"] > PARITY_TOLERANCE:
                raise dg.Failure(f"ONNX parity failed: max abs error {parity['max_abs_error']:.2e} > {PARITY_TOLERANCE}")
            (bundle / "parity.json").write_text(json.dumps(parity, indent=2, sort_keys=True) + "\n")
            (bundle / "evaluation.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
            (bundle / "EVALUATION.md").write_bytes(store.read_bytes(f"{ev['prefix']}/{REPORT_MD}"))
            release = {"name": name, "version": version, "dagster_run_id": context.run.run_id,
                       "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            policy_info = {"name": name, "version": version, "uri": store.uri(pol["prefix"]),
                           "mlflow_run_id": pol["mlflow_run_id"], "registered_model": pol["registered_model"],
                           "registered_version": pol["registered_version"], "code": policy_cfg["code"],
                           "training": policy_cfg["training"], "embodiment": policy_cfg["embodiment"]["name"],
                           "obs_names": policy_cfg["policy"]["obs_names"],
                           "action_names": policy_cfg["policy"]["action_names"], "fps": policy_cfg["fps"]}
            lineage = build_lineage(release=release, policy=policy_info, dataset_manifest=dataset_manifest,
                                    evaluation=summary)
            write_lineage(bundle, lineage)
            episodes = dataset_manifest["episodes"]
            dataset_info = {"name": ds["dataset_name"], "version": ds["dataset_version"], "episodes": len(episodes),
                            "robots": sorted({e["robot"] for e in episodes}),
                            "tasks": sorted({e["task"] for e in episodes}),
                            "date_from": min(e["date"] for e in episodes), "date_to": max(e["date"] for e in episodes)}
            (bundle / MODEL_CARD).write_text(model_card(release=release, policy=policy_info, dataset=dataset_info,
                                                        evaluation=summary, parity=parity))
            write_sha256sums(bundle)
            check = verify_bundle(bundle)
            if not check.ok:
                raise dg.Failure(f"bundle failed its own verification: {check.problems}")
            prefix = layout.release_prefix(name, version)
            size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
            created = store.publish_dir(prefix, bundle)
    lineage_index.write_release_edge(
        store, name=name, version=version, policy_name=name, policy_version=version,
        dataset_name=ds["dataset_name"], dataset_version=ds["dataset_version"], eval_prefix=ev["prefix"],
        prefix=prefix, at=release["created_at"])
    if not created:
        context.log.info(f"release {name} {version} already exists at {store.uri(prefix)}; kept as is")
    return dg.MaterializeResult(
        metadata=round_floats({
            "uri": dg.MetadataValue.path(store.uri(prefix)),
            "prefix": prefix,
            "release": f"{name} {version}",
            "onnx_max_abs_error": parity["max_abs_error"],
            "parity_inputs": parity["inputs"],
            "dataset_version": ds["dataset_version"],
            "mlflow_run_id": pol["mlflow_run_id"],
            "mlflow_run": mlflow.run_link(pol["mlflow_run_id"], pol.get("mlflow_experiment_id")),
            "raw_files": len(lineage["raw_files"]),
            "robots_days": lineage_summary(lineage),
            "suite_version": summary["suite"]["version"],
            "compared_with_production": production_now or "none (first release)",
            "files": check.checked,
            "bundle_mb": rounded(size / 1e6, 3),
        }),
        data_version=dg.DataVersion(version),
    )
