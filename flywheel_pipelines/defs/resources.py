"""Every resource of the code location, configured from the environment.

Nothing here names a bucket, host or secret: unset fields fall back to the embedded default
under FLYWHEEL_HOME (see lib/settings.py), and production sets the environment variables.
"""


import contextlib
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from flywheel_pipelines.lib import settings
from flywheel_pipelines.lib.storage import Lake, open_lake


class LakeResource(dg.ConfigurableResource):
    """The lake: raw logs and every derived artifact."""

    root: str | None = Field(
        default=None, description="Lake root (folder or s3://bucket/prefix). Default: $FLYWHEEL_LAKE or <home>/lake."
    )

    def lake(self) -> Lake:
        return open_lake(self.root or settings.default_lake_root())


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and model registry."""

    tracking_uri: str | None = Field(default=None, description="Default: $FLYWHEEL_MLFLOW_URI or a SQLite store.")
    artifact_location: str | None = Field(default=None, description="Artifact root for new experiments.")
    experiment: str = Field(default="flywheel", description="Experiment that runs are logged to.")

    @contextlib.contextmanager
    def session(self) -> Iterator[object]:
        """Point the mlflow client at this store and experiment; yields the mlflow module."""
        import mlflow

        uri = self.tracking_uri or settings.default_mlflow_uri()
        if uri.startswith("sqlite:///"):
            from pathlib import Path

            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        if mlflow.get_experiment_by_name(self.experiment) is None:
            location = self.artifact_location or settings.default_mlflow_artifacts()
            if "://" not in location:
                from pathlib import Path

                location = Path(location).resolve().as_uri()
            mlflow.create_experiment(self.experiment, artifact_location=location)
        mlflow.set_experiment(self.experiment)
        yield mlflow


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"lake": LakeResource(), "mlflow": MlflowResource()})
