"""Field KPIs per policy version x robot x day, from the episode catalog."""

import json
import math

import dagster as dg
from pydantic import Field

from flywheel_pipelines.defs.automation import FOLLOW_UPSTREAM
from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.resources import LakeResource, MlflowResource
from flywheel_pipelines.defs.ui_metadata import table_metadata
from flywheel_pipelines.lib import field, ids, markdown
from flywheel_pipelines.lib.catalog import CATALOG_KEY, catalog_hash

REGRESSION_CHECK = "no_field_regression"


class FieldKpisConfig(dg.Config):
    model: str = Field(default="reach-bc", description="The registered model whose production version is the baseline.")


def _pct(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _num(x, fmt="{:.1f}") -> str:
    return "" if x is None else fmt.format(x)


@dg.asset(
    deps=["episode_catalog"],
    group_name=group_of("field_kpis"),
    kinds={"python", "parquet"},
    owners=["team:ml"],
    automation_condition=FOLLOW_UPSTREAM,
    check_specs=[dg.AssetCheckSpec(REGRESSION_CHECK, asset="field_kpis",
                                   description="No release's unassisted success rate is significantly below "
                                               "production's on the days both ran (always-valid test, "
                                               "docs/fleet-rollout.md).")],
)
def field_kpis(context: dg.AssetExecutionContext, config: FieldKpisConfig, lake: LakeResource,
               mlflow: MlflowResource) -> dg.MaterializeResult:
    """How each policy version does on the fleet (success, interventions per hour of autonomy, time
    between interventions) per robot and day, and against the production version where they overlap."""
    model = ids.name(config.model, what="model name")
    store = lake.lake()
    catalog = store.read_parquet(CATALOG_KEY)
    rows = catalog.to_pylist()
    mlf = mlflow.store()
    production = field.production_arm(mlf.client, model)
    kpis = field.compute(rows)
    summary = field.report(rows, production=production)
    version = catalog_hash(catalog)
    prefix = field.kpis_prefix(version)
    store.write_parquet(f"{prefix}/{field.KPIS_FILE}", kpis)
    store.write_json(f"{prefix}/{field.SUMMARY_FILE}", {**summary, "catalog_version": version})
    arms = summary["arms"]
    arm_table = markdown.table(
        ["arm", "robots", "days", "episodes", "autonomous", "unassisted success (95% Wilson)", "interventions",
         "autonomy h", "interventions / h", "MTBI s"],
        [(a, s["robots"], len(s["days"]), s["episodes"], s["autonomous_episodes"],
          f"{_pct(s['success_rate'])} ({_pct(s['success_low'])}-{_pct(s['success_high'])})", s["interventions"],
          _num(s["autonomy_hours"], "{:.3f}"), _num(s["interventions_per_hour"]), _num(s["mtbi_s"]))
         for a, s in arms.items()])
    comparison_table = markdown.table(
        ["arm", "vs", "days", "difference", "always-valid 95% bounds", "regressed"],
        [(c["arm"], c["baseline"], len(c["days"]), f"{c['evidence']['delta']:+.3f}",
          f"{c['evidence']['lower_advance']:+.3f} .. {c['evidence']['upper_rollback']:+.3f}",
          "YES" if c["regressed"] else "no") for c in summary["comparisons"]]) if summary["comparisons"] else \
        "no release overlapped production yet"
    per_day = markdown.table(
        ["arm", "robot", "date", "episodes", "success", "interventions / h"],
        [(r["arm"], r["robot"], r["date"], r["episodes"], _pct(r["success_rate"]), _num(r["interventions_per_hour"]))
         for r in kpis.to_pylist()[-60:]])
    autonomous = [r for r in rows if (r.get("control_mode") or "") in field.AUTONOMOUS_MODES]
    fleet = field.figures(autonomous) if autonomous else None
    numeric = {f"success_rate/{a}": float(s["success_rate"]) for a, s in arms.items() if s["episodes"]}
    numeric.update({f"interventions_per_hour/{a}": float(s["interventions_per_hour"])
                    for a, s in arms.items() if s["interventions_per_hour"] is not None})
    regressed = summary["regressed"]
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(store.uri(prefix)),
            "catalog_version": version,
            "production": production,
            "arms": len(arms),
            "autonomous_episodes": len(autonomous),
            "fleet_autonomous_success_rate": float(fleet["success_rate"]) if fleet else 0.0,
            "fleet_autonomy_hours": float(fleet["autonomy_hours"]) if fleet else 0.0,
            "fleet_interventions_per_hour": float(fleet["interventions_per_hour"] or 0.0) if fleet else 0.0,
            "production_success_rate": float(arms[production]["success_rate"]) if production in arms else 0.0,
            **numeric,
            "by_arm": dg.MetadataValue.md(arm_table),
            "vs_production": dg.MetadataValue.md(comparison_table),
            "by_robot_day": dg.MetadataValue.md(per_day),
            **table_metadata(kpis.schema, kpis.num_rows),
        },
        check_results=[dg.AssetCheckResult(
            check_name=REGRESSION_CHECK, passed=not regressed, severity=dg.AssetCheckSeverity.ERROR,
            description=(f"significantly worse than production {production}: {', '.join(regressed)}" if regressed
                         else f"no release below production {production}"),
            metadata={"comparisons": dg.MetadataValue.json(json.loads(json.dumps(summary["comparisons"])))},
        )],
        data_version=dg.DataVersion(version),
    )
