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
from flywheel_pipelines.lib.storage import Encryption, Lake, LakeError, open_lake
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
    "sse": "FLYWHEEL_S3_SSE",
    "sse_kms_key_id": "FLYWHEEL_S3_SSE_KMS_KEY_ID",
}
# Not a secret, and a bool (dg.EnvVar binds strings only): read when the definitions load.
ALLOW_HTTP_ENV = "FLYWHEEL_S3_ALLOW_HTTP"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


def env_flag(name: str) -> bool:
    """A yes/no environment variable; anything but the usual spellings is an error naming it."""
    value = os.environ.get(name, "").strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"{name}={os.environ[name]!r}: expected true/false (1/0, yes/no, on/off)")
    return value in _TRUE


class LakeResource(ResourceWithS3Configuration):
    """The lake: raw logs and every derived artifact, in a local folder (the default) or an S3 bucket.

    ``root`` chooses: a folder, or ``s3://bucket/prefix``. For S3 the other fields are dagster-aws's
    S3 configuration (the same as ``S3Resource``: endpoint_url for SeaweedFS/MinIO, region_name,
    credentials or a profile), and the client is the one ``S3Resource`` builds from them.
    """

    root: str | None = Field(
        default=None, description="Lake root (folder or s3://bucket/prefix). Default: $FLYWHEEL_LAKE or <home>/lake."
    )
    sse: str | None = Field(
        default=None, description="Server-side encryption of every write to an S3 lake: AES256 (SSE-S3) or aws:kms "
                                  "(SSE-KMS). Unset: the bucket's default. From FLYWHEEL_S3_SSE.")
    sse_kms_key_id: str | None = Field(
        default=None, description="KMS key id, ARN or alias for sse=aws:kms (unset: the account's aws/s3 key). "
                                  "From FLYWHEEL_S3_SSE_KMS_KEY_ID.")
    allow_http: bool = Field(
        default=False, description="Accept a plain-http S3 endpoint (refused otherwise): only for a test server on "
                                   "127.0.0.1 or a trusted network. From FLYWHEEL_S3_ALLOW_HTTP.")

    def lake(self) -> Lake:
        root = self.root or settings.default_lake_root()
        if root.startswith("s3://"):
            return open_lake(root, s3_client=self.s3_client(), allow_http=self.allow_http,
                             encryption=self.encryption())
        return open_lake(root)

    def encryption(self) -> Encryption | None:
        """The configured server-side encryption (validated: a typo fails when the lake opens)."""
        if not self.sse:
            if self.sse_kms_key_id:
                raise LakeError("FLYWHEEL_S3_SSE_KMS_KEY_ID is set but FLYWHEEL_S3_SSE is not: set it to aws:kms")
            return None
        return Encryption(self.sse, self.sse_kms_key_id or None)

    def s3_client(self):
        """A boto3 S3 client from this resource's dagster-aws configuration."""
        return S3Resource(**{name: getattr(self, name) for name in ResourceWithS3Configuration.model_fields}).get_client()


def open_configured_lake(root: str | None = None) -> Lake:
    """The lake at ``root`` (default $FLYWHEEL_LAKE) outside a Dagster run (the CLI, the demo), with
    the same S3 settings a deployment gives the resource, read from the environment now."""
    values = {name: os.environ[var] for name, var in LAKE_S3_ENV.items() if os.environ.get(var)}
    return LakeResource(root=root, allow_http=env_flag(ALLOW_HTTP_ENV), **values).lake()


def lake_resource_from_env() -> LakeResource:
    """The lake as the deployment configures it: its S3 settings bound to whichever of LAKE_S3_ENV are set.

    An unset dg.EnvVar is an error when the resource starts, so only the variables present are bound
    and a local-folder lake needs none of them.
    """
    return LakeResource(allow_http=env_flag(ALLOW_HTTP_ENV),
                        **{name: dg.EnvVar(var) for name, var in LAKE_S3_ENV.items() if os.environ.get(var)})


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
