"""Issue #16 lesser finding: a kill after MLflow registration left an extra READY model version
("version 2" in the next report) and a RUNNING MLflow run. Registration is idempotent per policy
version; real MLflow (SQLite store), real kill -9 at the named point ``mlflow.registered``."""

import os
import subprocess
import sys

import mlflow

from flywheel_pipelines.lib import faults
from flywheel_pipelines.lib.evaluation import registry

TRAIN = """
import sys
from flywheel_pipelines.lib import faults
from flywheel_pipelines.lib.evaluation import registry
from flywheel_pipelines.lib.tracking import MlflowStore
store = MlflowStore.open(sys.argv[1], "flywheel", artifact_location="artifacts")
from onnx import TensorProto, helper
graph = helper.make_graph([helper.make_node("Identity", ["observation"], ["action"])], "policy",
                          [helper.make_tensor_value_info("observation", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 2])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
with store.run() as run:
    uri = run.log_onnx_model(model, name="onnx")  # as policy_candidate logs it
    version, _ = registry.register_policy_version(store.client, "reach-bc", policy_version=sys.argv[2],
                                                  model_uri=uri, run_id=run.run_id)
    print(version, run.run_id)
    faults.point("mlflow.registered")
"""


def _train(uri: str, policy_version: str, kill: bool) -> subprocess.CompletedProcess:
    # Only this test's store: no MLFLOW_* setting (experiment id, tracking URI) another test left behind.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"PYTHONPATH": os.pathsep.join(sys.path), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    env.pop(faults.ENV, None)
    if kill:
        env[faults.ENV] = "mlflow.registered"
    return subprocess.run([sys.executable, "-c", TRAIN, uri, policy_version], env=env, capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(uri.removeprefix("sqlite:///")))


def test_a_rerun_after_a_kill_reuses_the_registered_version_and_closes_the_killed_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed = _train(uri, "p-abc", kill=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    first_version, killed_run = killed.stdout.split()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_run(killed_run).info.status == "RUNNING"  # what a kill -9 leaves
    rerun = _train(uri, "p-abc", kill=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    version, _ = rerun.stdout.split()
    assert version == first_version == "1"
    versions = client.search_model_versions("name='reach-bc'")
    assert [(str(v.version), v.tags.get(registry.POLICY_TAG)) for v in versions] == [("1", "p-abc")]
    assert client.get_run(killed_run).info.status == "KILLED"
    # another policy version is a new registry version
    other = _train(uri, "p-def", kill=False)
    assert other.stdout.split()[0] == "2"
