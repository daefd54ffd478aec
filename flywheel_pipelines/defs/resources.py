"""Every resource of the code location, configured from the environment.

Nothing here names a bucket, host or secret: unset fields fall back to the embedded default
under FLYWHEEL_HOME (see lib/settings.py), and production sets the environment variables.
"""


import os

import dagster as dg
from dagster_aws.s3 import S3Resource
from dagster_aws.s3.resources import ResourceWithS3Configuration
from pydantic import Field

from flywheel_pipelines.lib import settings
from flywheel_pipelines.lib.storage import Lake, open_lake
from flywheel_pipelines.lib.tracking import MlflowStore

# LakeResource field <- environment variable, bound as dg.EnvVar when the deployment sets it (the
# value then never appears in the UI). Unset fields fall back to boto3's own chain: AWS_* variables,
# ~/.aws, an instance or pod role.
LAKE_S3_ENV = {
    "endpoint_url": "FLYWHEEL_S3_ENDPOINT_URL",
    "region_name": "FLYWHEEL_S3_REGION",
    "profile_name": "FLYWHEEL_S3_PROFILE",
    "aws_access_key_id": "FLYWHEEL_S3_ACCESS_KEY_ID",
    "aws_secret_access_key": "FLYWHEEL_S3_SECRET_ACCESS_KEY",
    "aws_session_token": "FLYWHEEL_S3_SESSION_TOKEN",
}


class LakeResource(ResourceWithS3Configuration):
    """The lake: raw logs and every derived artifact, in a local folder (the default) or an S3 bucket.

    ``root`` chooses: a folder, or ``s3://bucket/prefix``. For S3 the other fields are dagster-aws's
    S3 configuration (the same as ``S3Resource``: endpoint_url for SeaweedFS/MinIO, region_name,
    credentials or a profile), and the client is the one ``S3Resource`` builds from them.
    """

    root: str | None = Field(
        default=None, description="Lake root (folder or s3://bucket/prefix). Default: $FLYWHEEL_LAKE or <home>/lake."
    )

    def lake(self) -> Lake:
        root = self.root or settings.default_lake_root()
        if root.startswith("s3://"):
            return open_lake(root, s3_client=self.s3_client())
        return open_lake(root)

    def s3_client(self):
        """A boto3 S3 client from this resource's dagster-aws configuration."""
        return S3Resource(**{name: getattr(self, name) for name in ResourceWithS3Configuration.model_fields}).get_client()


def open_configured_lake(root: str | None = None) -> Lake:
    """The lake at ``root`` (default $FLYWHEEL_LAKE) outside a Dagster run (the CLI, the demo), with
    the same S3 settings a deployment gives the resource, read from the environment now."""
    values = {name: os.environ[var] for name, var in LAKE_S3_ENV.items() if os.environ.get(var)}
    return LakeResource(root=root, **values).lake()


def lake_resource_from_env() -> LakeResource:
    """The lake as the deployment configures it: its S3 settings bound to whichever of LAKE_S3_ENV are set.

    An unset dg.EnvVar is an error when the resource starts, so only the variables present are bound
    and a local-folder lake needs none of them.
    """
    return LakeResource(**{name: dg.EnvVar(var) for name, var in LAKE_S3_ENV.items() if os.environ.get(var)})


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and model registry."""

    tracking_uri: str | None = Field(default=None, description="Default: $FLYWHEEL_MLFLOW_URI or a SQLite store.")
    artifact_location: str | None = Field(default=None, description="Artifact root for new experiments.")
    experiment: str = Field(default="flywheel", description="Experiment that runs are logged to.")
    ui_url: str | None = Field(
        default=None, description="The MLflow UI's base URL (https://mlflow.example.com), for run links in the "
                                  "asset metadata. Default: $FLYWHEEL_MLFLOW_UI_URL; unset, runs show as plain ids.")

    def run_link(self, run_id: str, experiment_id: str | None = None) -> dg.MetadataValue:
        """The run as a link into the MLflow UI when its URL is configured, else its id as text."""
        base = (self.ui_url or os.environ.get("FLYWHEEL_MLFLOW_UI_URL") or "").rstrip("/")
        if not base or not run_id:
            return dg.MetadataValue.text(run_id)
        # The UI's run page lives under its experiment; /#/runs/<id> redirects there when it is not known.
        path = f"experiments/{experiment_id}/runs/{run_id}" if experiment_id else f"runs/{run_id}"
        return dg.MetadataValue.url(f"{base}/#/{path}")

    def store(self) -> MlflowStore:
        """This store (tracking and registry at one URI) and its experiment, created on first use.
        A typed handle around an ``mlflow.MlflowClient``: nothing sets mlflow's process-global
        tracking URI or experiment, so each resource logs where it is configured to."""
        return MlflowStore.open(self.tracking_uri or settings.default_mlflow_uri(), self.experiment,
                                artifact_location=self.artifact_location or settings.default_mlflow_artifacts())


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"lake": lake_resource_from_env(), "mlflow": MlflowResource()})
