"""Staged rollouts from the UI: start one, evaluate (what the sensor launches), and a person's
pause / resume / advance / abort. Ops, not assets, like promote_policy: each acts on the
deployments of the fleet, recorded append-only under deployments/<model>/ in the lake."""

import dagster as dg
from pydantic import Field

from flywheel_pipelines.defs.resources import LakeResource, MlflowResource
from flywheel_pipelines.lib import layout
from flywheel_pipelines.lib.rollout import plan, service


def _state_metadata(context, s: plan.State, lake: LakeResource) -> None:
    context.add_output_metadata({
        "rollout_id": s.rollout_id, "model": s.model, "release": s.release, "control": s.control or "teleoperated",
        "status": s.status, "stage": s.stage_name, "cohort": ", ".join(s.cohort),
        "log": dg.MetadataValue.path(lake.lake().uri(plan.log_prefix(s.model, s.rollout_id))),
    })


class RolloutStartConfig(dg.Config):
    """A staged rollout of one release (all of it recorded in the rollout's log)."""

    model: str = Field(default="reach-bc", description=f"The registered model ({layout.DEPLOYMENTS}/<model>/).")
    release: str = Field(description=f"<name>/<version> of a bundle under {layout.RELEASES}/.")
    stages: str = Field(default="canary:0.1:60,half:0.5:120,full:1.0",
                        description="name:fraction[:min episodes[:min autonomous hours]], comma-separated, ending at 1.0.")
    margin: float = Field(default=0.05, description="Non-inferiority margin on the unassisted success rate.")
    effective_from: str = Field(default="", description="First day whose field logs count (default: the day after the "
                                                        "newest logs).")
    requested_by: str = Field(description="Who asks for it.")
    reason: str = Field(description="Why.")


@dg.op(out=dg.Out(dg.Nothing), description="Plan a staged rollout and publish its canary deployments manifest.")
def start_rollout(context: dg.OpExecutionContext, config: RolloutStartConfig, lake: LakeResource,
                  mlflow: MlflowResource) -> None:
    mlf = mlflow.store()
    try:
        s = service.start(lake.lake(), mlf.client, model=config.model, release=config.release,
                          by=config.requested_by, reason=config.reason, stages=plan.parse_stages(config.stages),
                          margin=config.margin, effective_from=config.effective_from or None)
    except (plan.RolloutError, ValueError) as exc:
        raise dg.Failure(str(exc)) from None
    context.log.info(f"rollout {s.rollout_id}: {s.release} on {s.cohort} (control {s.control or 'teleoperated'})")
    _state_metadata(context, s, lake)


class RolloutEvaluateConfig(dg.Config):
    effective_from: str = Field(default="", description="First day a new assignment counts for (default: the day "
                                                        "after the newest logs).")


@dg.op(out=dg.Out(dg.Nothing), description="Decide every active rollout on the catalog: advance, hold or roll back.")
def evaluate_rollouts(context: dg.OpExecutionContext, config: RolloutEvaluateConfig, lake: LakeResource,
                      mlflow: MlflowResource) -> None:
    mlf = mlflow.store()
    outcomes = service.evaluate_all(lake.lake(), mlf.client, dagster_run_id=context.run_id,
                                    effective_from=config.effective_from or None)
    for o in outcomes:
        context.log.info(f"{o.state.rollout_id}: {o.decision} ({o.reason}); now {o.state.status} at {o.state.stage_name}")
    context.add_output_metadata({
        "rollouts": len(outcomes),
        "decisions": dg.MetadataValue.json({o.state.rollout_id: {"decision": o.decision, "reason": o.reason,
                                                                 "status": o.state.status, "stage": o.state.stage_name}
                                            for o in outcomes}),
    })


class RolloutControlConfig(dg.Config):
    model: str = Field(default="reach-bc")
    action: str = Field(description="pause | resume | advance | abort")
    requested_by: str = Field(description="Who asks for it.")
    reason: str = Field(description="Why (recorded).")
    effective_from: str = Field(default="", description="advance: first day the next stage counts for.")


@dg.op(out=dg.Out(dg.Nothing), description="A person pauses, resumes, advances or aborts the active rollout.")
def control_rollout(context: dg.OpExecutionContext, config: RolloutControlConfig, lake: LakeResource,
                    mlflow: MlflowResource) -> None:
    mlf = mlflow.store()
    try:
        s = service.act(lake.lake(), mlf.client, model=config.model, action=config.action,
                        by=config.requested_by, reason=config.reason, via="dagster", dagster_run_id=context.run_id,
                        effective_from=config.effective_from or None)
    except (plan.RolloutError, ValueError) as exc:
        raise dg.Failure(str(exc)) from None
    _state_metadata(context, s, lake)


@dg.job(description="Start a staged rollout of a release (canary first). Same as `flywheel rollout start`.")
def rollout_start():
    start_rollout()


@dg.job(description="Evaluate active rollouts on the field logs (launched by rollout_sensor after field_kpis). "
                    "Same as `flywheel rollout evaluate`.")
def rollout_evaluate():
    evaluate_rollouts()


@dg.job(description="Pause, resume, advance or abort the active rollout. Same as `flywheel rollout pause|...`.")
def rollout_control():
    control_rollout()
