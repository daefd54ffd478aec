"""MlflowStore: runs, logged ONNX models and registry versions through a client bound to one store,
on real MLflow (SQLite stores), with no process-global mlflow state touched."""

import mlflow
import pytest
from onnx import TensorProto, helper

from flywheel_pipelines.defs.resources import MlflowResource
from flywheel_pipelines.lib.evaluation import registry
from flywheel_pipelines.lib.tracking import MlflowStore


def _onnx_identity():
    graph = helper.make_graph([helper.make_node("Identity", ["observation"], ["action"])], "policy",
                              [helper.make_tensor_value_info("observation", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _store(tmp_path, name: str) -> MlflowStore:
    return MlflowStore.open(f"sqlite:///{tmp_path / name / 'mlflow.db'}", "flywheel",
                            artifact_location=str(tmp_path / name / "artifacts"))


def test_two_stores_in_one_process_keep_to_their_own_and_leave_mlflow_globals_alone(tmp_path):
    before = mlflow.get_tracking_uri()
    a, b = _store(tmp_path, "a"), _store(tmp_path, "b")
    with a.run(run_name="in-a") as run_a:
        run_a.log_params({"epochs": 3, "lr": 0.01})
        with b.run(run_name="in-b") as run_b:
            run_b.log_metrics({"loss": 0.5}, step=2)
        run_a.log_metrics({"loss": 0.25}, step=1)
        run_a.set_tags({"dagster.run_id": "r1"})
    assert mlflow.get_tracking_uri() == before and mlflow.active_run() is None
    got_a, got_b = a.client.get_run(run_a.run_id), b.client.get_run(run_b.run_id)
    assert got_a.data.params == {"epochs": "3", "lr": "0.01"} and got_a.data.tags["dagster.run_id"] == "r1"
    assert got_a.data.metrics == {"loss": 0.25} and got_b.data.metrics == {"loss": 0.5}
    assert [m.step for m in b.client.get_metric_history(run_b.run_id, "loss")] == [2]
    assert got_a.info.status == got_b.info.status == "FINISHED"
    assert [r.info.run_id for r in a.client.search_runs([a.experiment_id])] == [run_a.run_id]
    assert _store(tmp_path, "a").experiment_id == a.experiment_id  # reopened, not created again


def test_a_failing_run_ends_failed_and_a_reopened_run_finished(tmp_path):
    store = _store(tmp_path, "s")
    with pytest.raises(RuntimeError, match="boom"), store.run(run_name="fails") as run:
        raise RuntimeError("boom")
    assert store.client.get_run(run.run_id).info.status == "FAILED"
    with store.run(run_id=run.run_id) as again:
        again.set_tag("eval.gate", "passed")
    got = store.client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.tags["eval.gate"] == "passed"


def test_logged_onnx_model_registers_once_and_loads_back(tmp_path):
    store = _store(tmp_path, "s")
    model = _onnx_identity()
    with store.run(run_name="train") as run:
        uri = run.log_onnx_model(model, name="onnx")
        version, killed = registry.register_policy_version(store.client, "reach-bc", policy_version="p-1",
                                                           model_uri=uri, run_id=run.run_id)
        again, _ = registry.register_policy_version(store.client, "reach-bc", policy_version="p-1",
                                                    model_uri=uri, run_id=run.run_id)
    assert uri.startswith("models:/") and (version, again, killed) == ("1", "1", [])
    mv = store.client.get_model_version("reach-bc", "1")
    assert mv.status == "READY" and mv.run_id == run.run_id and mv.tags[registry.POLICY_TAG] == "p-1"
    assert mv.source == store.client.get_logged_model(uri.removeprefix("models:/")).artifact_location
    assert store.client.get_logged_model(uri.removeprefix("models:/")).source_run_id == run.run_id
    assert store.load_registered_onnx("reach-bc", "1") == model.SerializeToString()


def test_the_resource_yields_a_typed_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}"
    store = MlflowResource(tracking_uri=uri, artifact_location=str(tmp_path / "r" / "artifacts"),
                           experiment="exp").store()
    assert isinstance(store, MlflowStore) and store.tracking_uri == uri
    assert store.client.get_experiment(store.experiment_id).name == "exp"
