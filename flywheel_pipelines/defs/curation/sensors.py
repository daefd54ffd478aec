"""The rebuild sensor: each rebuild request (governance/rebuilds/, written by erasure and retention)
becomes one curated_dataset run. It lives with curation because it only starts curation runs."""

import dagster as dg

from flywheel_pipelines.defs.curation.assets import CurationConfig, curated_dataset
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib.governance import rebuilds


def rebuild_run_request(request: dict) -> dg.RunRequest:
    """A curated_dataset run with the replaced version's own spec; run key = the request id, so a
    retried tick or a second sensor launches it once."""
    config = {k: v for k, v in request["spec"].items() if k in CurationConfig.model_fields}
    return dg.RunRequest(run_key=request["id"], asset_selection=[curated_dataset.key],
                         run_config={"ops": {"curated_dataset": {"config": config}}},
                         tags={"flywheel/rebuild": request["id"],
                               "flywheel/replaces": f"{request['dataset']['name']}/{request['dataset']['version']}"})


@dg.sensor(target=dg.AssetSelection.assets(curated_dataset), minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING, name="governance_rebuild_sensor")
def governance_rebuild_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    """Rebuild datasets that held erased content or expired pixels, without it. The cursor is the
    last request key handled (keys sort by time)."""
    requests = [(k, r) for k, r in rebuilds.read_requests(lake.lake()) if k > (context.cursor or "")]
    if not requests:
        return dg.SkipReason("no new rebuild request")
    return dg.SensorResult(run_requests=[rebuild_run_request(r) for _, r in requests], cursor=requests[-1][0])
