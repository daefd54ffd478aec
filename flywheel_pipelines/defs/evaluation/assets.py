"""Evaluation: the golden regression set, the candidate against production on one scenario suite,
and the release gate as a blocking check."""


import collections
import hashlib
import json

import dagster as dg
from pydantic import Field

from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.k8s import EVALUATION_TAGS
from flywheel_pipelines.defs.resources import LakeResource, MlflowResource
from flywheel_pipelines.defs.ui_metadata import round_floats
from flywheel_pipelines.defs.upstream import upstream_metadata
from flywheel_pipelines.lib import layout, lineage_index, markdown
from flywheel_pipelines.lib.catalog import CATALOG_KEY, catalog_hash
from flywheel_pipelines.lib.evaluation import registry, report
from flywheel_pipelines.lib.evaluation.compare import ALL, CANDIDATE
from flywheel_pipelines.lib.evaluation.report import (
    REPORT_HTML,
    REPORT_MD,
    RESULTS,
    RETURN_PLOT,
    SUCCESS_PLOT,
    SUMMARY,
    plots_markdown,
)
from flywheel_pipelines.lib.evaluation.suite import DEFAULT_SUITE, SuiteError, load_suite
from flywheel_pipelines.lib.storage import staging_dir
from flywheel_pipelines.lib.tracking import MlflowStore

GOLDEN_FILE = layout.GOLDEN_FILE
GOLDEN_POINTER = layout.GOLDEN_POINTER  # the newest golden set: {"version", "prefix"}
OWNERS = ["team:ml"]


class GoldenConfig(dg.Config):
    """Retirement is the only way a golden scenario leaves the evaluation; it is recorded in the set."""

    retire: list[str] = Field(default_factory=list, description=f"Golden scenario ids to retire ({layout.GOLDEN}/<episode id>).")
    retire_reason: str = Field(default="", description="Why (required with retire); stored with each retired scenario.")
    retired_by: str = Field(default="", description="Who retires them (required with retire).")


def read_golden(store, prefix: str) -> list[dict]:
    from flywheel_pipelines.lib.evaluation import golden as gold  # mujoco: loads where a step runs

    return gold.read_document(store.read_json(f"{prefix}/{GOLDEN_FILE}"))


def _previous_golden(store) -> list[dict]:
    if not store.exists(GOLDEN_POINTER):
        return []
    return read_golden(store, store.read_json(GOLDEN_POINTER)["prefix"])


# Rebuilt by the nightly job (before evaluation) and on demand. Not on declarative automation: the
# catalog's automation deliberately requests nothing downstream (test_automation.py).
# Field failures come from the catalog; their frames (to fit each robot's parameters) from the
# robot-day episode tables.
@dg.asset(deps=["episode_catalog", dg.AssetDep("episodes", partition_mapping=dg.AllPartitionMapping())],
          group_name=group_of("golden_scenarios"), kinds={"mujoco", "python"}, owners=OWNERS)
def golden_scenarios(context: dg.AssetExecutionContext, config: GoldenConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Field failures and interventions from the catalog as simulator scenarios: start, goal and the
    robot as its logs show it, with provenance down to the raw file. The set only grows; a
    scenario leaves only by an explicit, recorded retirement."""
    from flywheel_pipelines.lib.evaluation import golden as gold  # mujoco: loads where the step runs

    store = lake.lake()
    catalog = store.read_parquet(CATALOG_KEY)
    catalog_version = catalog_hash(catalog)
    previous = _previous_golden(store)
    known = {e["scenario"]["scenario_id"] for e in previous}
    todo = [r for r in gold.candidates(catalog) if gold.scenario_id(r["episode_id"]) not in known]
    by_day = collections.defaultdict(list)
    for row in todo:
        by_day[(row["robot"], row["date"])].append(row)
    new, skipped = [], []
    for (robot, day), rows in sorted(by_day.items()):
        frames_key = layout.frames_key(robot, day)
        frames = store.read_parquet(frames_key)
        for row in rows:
            try:
                new.append(gold.derive(row, gold.episode_log(frames, row["episode_id"]),
                                       catalog_version=catalog_version, frames_key=frames_key))
            except gold.GoldenError as exc:
                skipped.append(f"{row['episode_id']}: {exc}")
                context.log.warning(f"golden scenario from {row['episode_id']} skipped: {exc}")
    if config.retire and not (config.retire_reason.strip() and config.retired_by.strip()):
        raise dg.Failure("retiring golden scenarios needs retire_reason and retired_by")
    try:
        entries = gold.merge(previous, new, retire=dict.fromkeys(config.retire, config.retire_reason),
                             retired_by=f"{config.retired_by.strip()} (Dagster run {context.run.run_id})")
    except gold.GoldenError as exc:
        raise dg.Failure(str(exc)) from None
    doc = gold.golden_document(entries)
    prefix = layout.golden_prefix(doc["version"])
    with staging_dir() as tmp:
        (tmp / GOLDEN_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        store.publish_dir(prefix, tmp)  # content-addressed: an identical set is already there
    store.write_json(GOLDEN_POINTER, {"version": doc["version"], "prefix": prefix})
    rows = []
    for e in new:
        s, ev = e["scenario"], e["evidence"]
        dyn = ev["dynamics"]
        rows.append((s["scenario_id"], s["source"]["robot"], s["source"]["date"], s["source"]["outcome"]
                     + (" + intervention" if s["source"]["intervention"] else ""),
                     f"{s['profile']['gain_scale']:.2f}", f"{s['profile']['latency_s'] * 1000:.0f} ms",
                     f"{s['profile']['pos_noise'] * 1000:.1f} mrad", f"{s['profile']['drop_rate']:.1%}",
                     f"{dyn['rms_rad'] * 1000:.1f} mrad" + ("" if dyn["used"] else " (not used)")))
    added = markdown.table(["scenario", "robot", "day", "in the field", "gain", "latency", "pos noise", "drops",
                            "fit RMS"], rows[:50])
    if len(rows) > 50:
        added += f"\n\n... and {len(rows) - 50} more ({GOLDEN_FILE})"
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(store.uri(prefix)),
            "prefix": prefix,
            "golden_version": doc["version"],
            "active": doc["active"],
            "retired": doc["retired"],
            "added": len(new),
            "retired_now": list(config.retire),
            "skipped": skipped,
            "catalog_version": catalog_version,
            "added_scenarios": dg.MetadataValue.md(added if rows else "no new failures or interventions"),
        },
        data_version=dg.DataVersion(doc["version"]),
    )


class EvalConfig(dg.Config):
    """Which suite judges the candidate (the gate lives in the suite file, so it is versioned)."""

    suite: str = Field(default=DEFAULT_SUITE, description="A suite shipped in the package (by name) or a YAML path.")
    seed: int | None = Field(default=None, description="Override the suite's seed (default: the suite's own).")
    sim_backend: str = Field(default="auto", description="mujoco (CPU, float64) | warp (MuJoCo Warp, float32) | auto "
                             "(warp when a CUDA device is present); docs/simulation.md gives the agreement tolerance.")
    sim_device: str = Field(default="auto", description="The warp backend's device: cpu | cuda:<i> | auto.")


def _production(mlf: MlflowStore, model: str, alias: str):
    """(identity, ONNX bytes) of the production policy, or (None, None) when there is none yet."""
    client = mlf.client
    mv = registry.production_version(client, model, alias=alias)
    if mv is None:
        return None, None
    onnx_bytes = mlf.load_registered_onnx(model, str(mv.version))
    policy_version = mv.tags.get("flywheel.policy_version")
    if not policy_version and mv.run_id:
        policy_version = client.get_run(mv.run_id).data.tags.get("policy.version")
    identity = {"alias": alias, "registered_model": model, "registered_version": str(mv.version),
                "policy_version": policy_version or "", "mlflow_run_id": mv.run_id or ""}
    return identity, onnx_bytes


def _metrics(summary: dict) -> dict[str, float]:
    out = {"eval.gate_passed": float(summary["gate"]["passed"])}
    for group, rows in summary["by_group"].items():
        for s in rows:
            key = f"eval.{group}.{s['policy']}"
            out.update({f"{key}.success_rate": s["success_rate"], f"{key}.ci_low": s["ci_low"],
                        f"{key}.ci_high": s["ci_high"], f"{key}.mean_return": s["mean_return"],
                        f"{key}.safety_event_rate": s["safety_event_rate"], f"{key}.mean_jerk_rms": s["mean_jerk_rms"]})
            if s["mean_time_to_goal_s"] is not None:
                out[f"{key}.mean_time_to_goal_s"] = s["mean_time_to_goal_s"]
    for group, c in (summary["comparison"] or {}).items():
        out.update({f"eval.{group}.vs_production.success_diff": c["success_diff"]["estimate"],
                    f"eval.{group}.vs_production.success_diff_low": c["success_diff"]["low"],
                    f"eval.{group}.vs_production.success_diff_high": c["success_diff"]["high"]})
    # The metric names the first report format used, kept for dashboards.
    for s in summary["summaries"]:
        out.update({f"eval.{s['policy']}.success_rate": s["success_rate"], f"eval.{s['policy']}.ci_low": s["ci_low"],
                    f"eval.{s['policy']}.ci_high": s["ci_high"]})
    return out


@dg.asset(deps=["policy_candidate", golden_scenarios], group_name=group_of("eval_report"),
          kinds={"mujoco", "onnx"}, owners=OWNERS, pool="evaluation", op_tags=EVALUATION_TAGS)
def eval_report(context: dg.AssetExecutionContext, config: EvalConfig, lake: LakeResource,
                mlflow: MlflowResource) -> dg.MaterializeResult:
    """The candidate (as exported ONNX) beside the production policy and the baselines on the same
    seeded scenarios (nominal, domain-randomized, golden): Wilson intervals, paired differences,
    safety, and the release gate's verdict with its reasons (Markdown/HTML report, MLflow)."""
    # Heavy modules (mujoco, onnxruntime, torch, pyarrow) load where the step runs, not with the code location.
    import pyarrow.parquet as pq

    from flywheel_pipelines.lib.evaluation import golden as gold
    from flywheel_pipelines.lib.evaluation.evaluate import run_evaluation
    from flywheel_pipelines.lib.evaluation.policies import OnnxPolicy, check_interface
    from flywheel_pipelines.lib.learning.policy import CONFIG
    from flywheel_pipelines.lib.sim.batched import resolve_backend
    from flywheel_pipelines.lib.sim.warp_backend import resolve_device

    try:
        suite = load_suite(config.suite)
    except SuiteError as exc:
        raise dg.Failure(f"evaluation suite: {exc}") from None
    store = lake.lake()
    pol = upstream_metadata(context, "policy_candidate")
    gm = upstream_metadata(context, "golden_scenarios")
    golden = gold.active_scenarios(read_golden(store, gm["prefix"]))
    version, model = pol["policy_version"], pol["registered_model"]
    with store.local_dir(pol["prefix"]) as policy_dir:
        policy_cfg = json.loads((policy_dir / CONFIG).read_text())["policy"]
        try:
            check_interface(policy_cfg["obs_names"], policy_cfg["action_names"], what=f"policy {version}")
        except ValueError as exc:
            raise dg.Failure(str(exc)) from None
        try:
            backend = resolve_backend(config.sim_backend)
        except ValueError as exc:
            raise dg.Failure(str(exc)) from None
        device = resolve_device(config.sim_device) if backend == "warp" else "cpu"
        candidate = OnnxPolicy((policy_dir / layout.POLICY_ONNX).read_bytes(), device=device)
    context.log.info(f"simulation backend {backend} on {device}; candidate on {candidate.providers[0]}")
    prefix = layout.eval_prefix(version)
    mlf = mlflow.store()
    production_id, production_onnx = _production(mlf, model, suite.production_alias) if model else (None, None)
    if production_id is not None and production_id["registered_version"] == pol["registered_version"]:
        context.log.info(f"{model} version {pol['registered_version']} is itself production: compared with itself")
    identity = {
        "policy_name": pol["policy_name"], "policy_version": version, "policy_prefix": pol["prefix"],
        "mlflow_run_id": pol["mlflow_run_id"], "registered_model": model,
        "registered_version": pol["registered_version"],
        "golden": {"version": gm["golden_version"], "prefix": gm["prefix"], "active": len(golden)},
        "production": production_id,
    }
    label = (f"production (v{production_id['registered_version']})" if production_id else None)
    ev = run_evaluation(candidate, suite=suite, golden=golden, identity=identity, seed=config.seed,
                        production=OnnxPolicy(production_onnx, device=device) if production_onnx else None,
                        production_label=label, backend=backend, device=device)
    summary = json.loads(ev.files[SUMMARY])
    with staging_dir() as tmp:
        for name, data in ev.files.items():
            (tmp / name).write_bytes(data)
        pq.write_table(ev.results_table(), tmp / RESULTS)
        store.publish_dir(prefix, tmp, replace=True)
        with mlf.run(run_id=pol["mlflow_run_id"]) as run:
            run.log_metrics(_metrics(summary))
            run.set_tags({"eval.gate": "passed" if summary["gate"]["passed"] else "failed",
                          "eval.suite": suite.name, "eval.suite_version": suite.version,
                          "eval.golden_version": gm["golden_version"],
                          "eval.sim_backend": f"{backend}:{device}",
                          "eval.production_version": production_id["registered_version"] if production_id else "none",
                          "eval.report": store.uri(f"{prefix}/{REPORT_HTML}")})
            run.log_artifacts(str(tmp), artifact_path="eval")
    if model and pol["registered_version"]:
        registry.record_gate(
            mlf.client, model, pol["registered_version"], passed=summary["gate"]["passed"],
            reasons=summary["gate"]["reasons"], suite=suite.name, suite_version=suite.version,
            report_uri=store.uri(f"{prefix}/{REPORT_HTML}"), golden_version=gm["golden_version"],
            production=production_id["registered_version"] if production_id else None, policy_version=version)
    # The policy -> evaluation edge; the id is the summary's hash, so each distinct evaluation of a
    # policy (new golden set, new production policy) is its own record.
    lineage_index.write_eval_edge(
        store, policy_name=pol["policy_name"], policy_version=version,
        eval_id=hashlib.sha256(ev.files[SUMMARY]).hexdigest()[:12], gate_passed=summary["gate"]["passed"],
        at=lineage_index.now_iso(), prefix=prefix)
    cand = summary["summaries"][0]
    by = {g: {s["policy"]: s for s in rows} for g, rows in summary["by_group"].items()}
    # The UI cannot show images from the lake: in the report the plots become their locations, and
    # `plots` carries them inlined (compact PNGs as data: URIs, ~30 KB).
    ui_md = ev.files[REPORT_MD].decode()
    for plot, title in ((SUCCESS_PLOT, "success by group"), (RETURN_PLOT, "return distributions")):
        ui_md = ui_md.replace(f"![{title}]({plot})", f"Plot ({title}): `{store.uri(f'{prefix}/{plot}')}` (see `plots`)")
    return dg.MaterializeResult(
        metadata=round_floats({
            "uri": dg.MetadataValue.path(store.uri(prefix)),
            "prefix": prefix,
            "report_html": dg.MetadataValue.path(store.uri(f"{prefix}/{REPORT_HTML}")),
            "policy_version": version,
            "registered_version": pol["registered_version"],
            "suite": suite.name,
            "suite_version": suite.version,
            "seed": summary["seed"],
            "sim_backend": f"{backend}:{device}",
            "golden_version": gm["golden_version"],
            "golden_active": len(golden),
            "production_version": production_id["registered_version"] if production_id else "none (first release)",
            "success_rate": cand["success_rate"],
            "success_ci": f"{cand['ci_low']:.3f}-{cand['ci_high']:.3f}",
            **{f"success_rate_{g}": by[g][CANDIDATE]["success_rate"] for g in summary["groups"] if g != ALL},
            "production_success_rate": by[ALL]["production"]["success_rate"] if production_id else None,
            "expert_success_rate": by[ALL].get("scripted_expert", {}).get("success_rate"),
            "trivial_success_rate": by[ALL].get("hold_position", {}).get("success_rate"),
            "golden_regressions": [g["scenario_id"] for g in summary["golden_scenarios"] if g["status"] == "regression"],
            "gate_passed": summary["gate"]["passed"],
            "gate_reasons": summary["gate"]["reasons"],
            "summary_sha256": hashlib.sha256(ev.files[SUMMARY]).hexdigest(),
            "mlflow_run_id": pol["mlflow_run_id"],
            "mlflow_run": mlflow.run_link(pol["mlflow_run_id"], pol.get("mlflow_experiment_id")),
            "report": dg.MetadataValue.md(ui_md),
            "plots": dg.MetadataValue.md(plots_markdown(ev.files)),
        })
    )


def read_gate(store, prefix: str) -> dict:
    return store.read_json(f"{prefix}/{SUMMARY}")


def read_summary(store, meta: dict) -> dict:
    """The evaluation summary eval_report recorded (its metadata ``meta``), checked against the hash it recorded.

    Raises:
        dagster.Failure: the summary in the lake is not the one that materialization wrote.
    """
    try:
        return report.read_summary(store, meta["prefix"], meta.get("summary_sha256"))
    except report.SummaryChanged as exc:
        raise dg.Failure(str(exc)) from None


@dg.asset_check(asset=eval_report, blocking=True,
                description="The release gate: absolute criteria, and not worse than production (no golden regression).")
def eval_gate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    meta = upstream_metadata(context, "eval_report")
    summary = read_summary(lake.lake(), meta)
    gate = summary["gate"]
    failed = [c for c in gate["criteria"] if not c["passed"]]
    criteria = markdown.table(["criterion", "kind", "result", "detail"],
                              [(c["name"], c["kind"], "PASS" if c["passed"] else "FAIL", c["detail"])
                               for c in gate["criteria"]])
    production = summary.get("production")
    return dg.AssetCheckResult(
        passed=bool(gate["passed"]),
        severity=dg.AssetCheckSeverity.ERROR,
        description=("; ".join(f"{c['name']}: {c['detail']}" for c in failed) if failed
                     else "every gate criterion passed")[:1000],
        metadata={
            "policy_version": summary["policy_version"],
            "registered_version": summary.get("registered_version") or "",
            "suite_version": summary["suite"]["version"],
            "production_version": production["registered_version"] if production else "none (first release)",
            "reasons": gate["reasons"],
            "failed_criteria": [c["name"] for c in failed],
            "criteria": dg.MetadataValue.md(criteria),
            "success_rate": summary["summaries"][0]["success_rate"],
            "report": dg.MetadataValue.path(lake.lake().uri(f"{meta['prefix']}/{REPORT_HTML}")),
        },
    )
