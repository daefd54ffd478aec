"""Evaluation: the candidate in the MuJoCo simulator against two baselines, and the release gate."""


import json

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from flywheel_pipelines.defs.k8s import EVALUATION_TAGS
from flywheel_pipelines.defs.resources import LakeResource, MlflowResource
from flywheel_pipelines.defs.training.assets import POLICY_ONNX, policy_candidate
from flywheel_pipelines.defs.upstream import upstream_metadata
from flywheel_pipelines.lib.evaluation.report import gate, report_markdown, success_plot_png, summarize, summary_dict
from flywheel_pipelines.lib.evaluation.rollout import expert_policy, hold_policy, run_suite
from flywheel_pipelines.lib.release.onnx_export import onnx_policy_fn
from flywheel_pipelines.lib.storage import staging_dir

SUMMARY = "summary.json"
REPORT = "report.md"
PLOT = "success.png"
RESULTS = "episodes.parquet"


class EvalConfig(dg.Config):
    """The evaluation suite and the gate."""

    episodes: int = Field(default=100, description="Seeded episodes per policy.")
    seed: int = Field(default=20261122, description="Suite seed: same seed, same robots and tasks.")
    min_success_rate: float = Field(default=0.6, description="The gate: minimum candidate success rate.")


def eval_prefix(policy_version: str) -> str:
    return f"evals/{policy_version}"


@dg.asset(deps=[policy_candidate], group_name="evaluation", kinds={"mujoco", "onnx"}, owners=["team:ml"],
          pool="evaluation", op_tags=EVALUATION_TAGS)
def eval_report(context: dg.AssetExecutionContext, config: EvalConfig, lake: LakeResource,
                mlflow: MlflowResource) -> dg.MaterializeResult:
    """The candidate (as exported ONNX) over N seeded episodes with randomized per-robot physics,
    next to the scripted expert and a do-nothing policy; success with 95% Wilson intervals."""
    store = lake.lake()
    pol = upstream_metadata(context, "policy_candidate")
    version = pol["policy_version"]
    with store.local_dir(pol["prefix"]) as policy_dir:
        candidate = onnx_policy_fn(policy_dir / POLICY_ONNX)
        runs = {
            "candidate": run_suite(candidate, name="candidate", episodes=config.episodes, seed=config.seed),
            "scripted_expert": run_suite(expert_policy, name="scripted_expert", episodes=config.episodes,
                                         seed=config.seed),
            "hold_position": run_suite(hold_policy, name="hold_position", episodes=config.episodes, seed=config.seed),
        }
    summaries = [summarize(r) for r in runs.values()]
    verdict = gate(summaries[0], summaries[2], min_success_rate=config.min_success_rate)
    suite = {"episodes": config.episodes, "seed": config.seed}
    markdown = report_markdown(policy_version=version, summaries=summaries, verdict=verdict, suite=suite,
                               plot_name=PLOT)
    summary = {"policy_version": version, "policy_prefix": pol["prefix"], "suite": suite,
               "summaries": [summary_dict(s) for s in summaries], "gate": verdict.to_dict(),
               "mlflow_run_id": pol["mlflow_run_id"]}
    prefix = eval_prefix(version)
    with staging_dir() as tmp:
        (tmp / REPORT).write_text(markdown)
        (tmp / PLOT).write_bytes(success_plot_png(summaries, runs))
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        rows = [r.to_dict() for results in runs.values() for r in results]
        pq.write_table(pa.Table.from_pylist(rows), tmp / RESULTS)
        store.publish_dir(prefix, tmp, replace=True)
        with mlflow.session() as mlf, mlf.start_run(run_id=pol["mlflow_run_id"]):
            for s in summaries:
                mlf.log_metrics({f"eval.{s.policy}.success_rate": s.success_rate,
                                 f"eval.{s.policy}.ci_low": s.ci_low, f"eval.{s.policy}.ci_high": s.ci_high})
            mlf.set_tag("eval.gate", "passed" if verdict.passed else "failed")
            mlf.log_artifacts(str(tmp), artifact_path="eval")
    cand, expert, trivial = summaries
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(store.uri(prefix)),
            "prefix": prefix,
            "policy_version": version,
            "success_rate": cand.success_rate,
            "success_ci": f"{cand.ci_low:.3f}-{cand.ci_high:.3f}",
            "expert_success_rate": expert.success_rate,
            "trivial_success_rate": trivial.success_rate,
            "gate_passed": verdict.passed,
            "gate_reasons": list(verdict.reasons),
            "report": dg.MetadataValue.md(markdown.replace(f"![success by policy]({PLOT})",
                                                           f"Plot: `{store.uri(prefix + '/' + PLOT)}`")),
        }
    )


def read_gate(store, prefix: str) -> dict:
    return store.read_json(f"{prefix}/{SUMMARY}")


@dg.asset_check(asset=eval_report, blocking=True, description="The candidate passed the release gate.")
def eval_gate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    meta = upstream_metadata(context, "eval_report")
    summary = read_gate(lake.lake(), meta["prefix"])
    return dg.AssetCheckResult(
        passed=bool(summary["gate"]["passed"]),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"policy_version": summary["policy_version"], "reasons": summary["gate"]["reasons"],
                  "success_rate": summary["summaries"][0]["success_rate"]},
    )
