"""One MLflow store (tracking + model registry), addressed explicitly.

mlflow's fluent API (``set_tracking_uri``, ``set_experiment``, ``start_run``, ``log_model``) keeps
the store, the experiment and the active run in process-global state, so two stores (or two
threads) in one process would log into each other. Everything here goes through an
``MlflowClient`` bound to one URI and carries the experiment and run ids explicitly; nothing sets
mlflow's globals. mlflow itself is imported when a store is opened, not with this module.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlflow


@dataclass(frozen=True)
class MlflowStore:
    """A tracking + registry store and the experiment that runs are logged to."""

    tracking_uri: str
    experiment_id: str
    client: mlflow.MlflowClient

    @classmethod
    def open(cls, tracking_uri: str, experiment: str, *, artifact_location: str) -> MlflowStore:
        """The store at ``tracking_uri`` (also its registry), creating ``experiment`` (artifacts under
        ``artifact_location``: a URI or a local folder) when it does not exist yet."""
        import mlflow

        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return cls(tracking_uri, found.experiment_id, client)
        if "://" not in artifact_location:
            artifact_location = Path(artifact_location).resolve().as_uri()
        return cls(tracking_uri, client.create_experiment(experiment, artifact_location=artifact_location), client)

    @contextlib.contextmanager
    def run(self, *, run_name: str | None = None, run_id: str | None = None) -> Iterator[TrackedRun]:
        """A new run in the experiment (or the existing ``run_id``, reopened), ended FINISHED on
        success and FAILED on an exception, as ``mlflow.start_run`` ends its runs. A killed process
        leaves it RUNNING, which a re-run detects (``checkpoint.close_interrupted_runs``)."""
        if run_id is None:
            from mlflow.tracking.context.registry import resolve_tags

            # The context tags start_run would set (user, source, git commit).
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=resolve_tags())
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        try:
            yield TrackedRun(self, run_id)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def load_registered_onnx(self, name: str, version: str) -> bytes:
        """The ONNX bytes of registered model ``name`` version ``version`` (as ``log_onnx_model`` logged it)."""
        import mlflow.artifacts
        import mlflow.onnx

        uri = self.client.get_model_version_download_uri(name, version)
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=self.tracking_uri)
            return mlflow.onnx.load_model(local).SerializeToString()


@dataclass(frozen=True)
class TrackedRun:
    """One open run of a store: what ``policy_candidate`` and ``eval_report`` log into it."""

    store: MlflowStore
    run_id: str

    @property
    def experiment_id(self) -> str:
        return self.store.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.store.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.store.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def set_tag(self, key: str, value: Any) -> None:
        self.store.client.set_tag(self.run_id, key, str(value))

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.store.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step or 0)
                                                          for k, v in metrics.items()])

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.store.client.log_artifact(self.run_id, path, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self.store.client.log_artifacts(self.run_id, local_dir, artifact_path)

    def log_onnx_model(self, onnx_model, *, name: str) -> str:
        """Log ``onnx_model`` as an MLflow logged model of this run (what ``mlflow.onnx.log_model``
        does, through the client: no pickle, no global state); returns its ``models:/<id>`` URI."""
        import mlflow.onnx
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        client = self.store.client
        model = client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / name
                mlflow.onnx.save_model(onnx_model, str(local))
                client.log_model_artifacts(model.model_id, str(local))
            client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=0)])
        except BaseException:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return f"models:/{model.model_id}"
