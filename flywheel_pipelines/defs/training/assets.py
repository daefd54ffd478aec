"""Policy candidates: a behaviour-cloning policy trained on the curated dataset, in MLflow."""


import json

import dagster as dg
import onnx
from pydantic import Field

from flywheel_pipelines.defs.curation.assets import curated_dataset
from flywheel_pipelines.defs.k8s import TRAINING_TAGS
from flywheel_pipelines.defs.resources import LakeResource, MlflowResource
from flywheel_pipelines.defs.upstream import upstream_metadata
from flywheel_pipelines.lib import ids
from flywheel_pipelines.lib.learning.bc import BCConfig, load_training_data, pick_device, train_bc
from flywheel_pipelines.lib.learning.policy import save_policy
from flywheel_pipelines.lib.release.onnx_export import export_onnx
from flywheel_pipelines.lib.storage import staging_dir
from flywheel_pipelines.lib.versioning import code_version

POLICY_ONNX = "policy.onnx"
METRICS = "metrics.json"


class TrainConfig(dg.Config):
    """Behaviour-cloning hyperparameters; the same values go to MLflow params."""

    policy_name: str = Field(default="reach-bc", description="policies/<name>/<version>/ and the registry name.")
    epochs: int = 150
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-5
    hidden: int = 128
    layers: int = 2
    seed: int = 0
    device: str = Field(default="auto", description="auto | cpu | cuda")

    def bc(self) -> BCConfig:
        return BCConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                        hidden=self.hidden, layers=self.layers, seed=self.seed, device=self.device)


def policy_prefix(name: str, version: str) -> str:
    return f"policies/{name}/{version}"


@dg.asset(deps=[curated_dataset], group_name="training", kinds={"pytorch", "mlflow"}, owners=["team:ml"], pool="training",
          op_tags=TRAINING_TAGS)
def policy_candidate(context: dg.AssetExecutionContext, config: TrainConfig, lake: LakeResource,
                     mlflow: MlflowResource) -> dg.MaterializeResult:
    """A seeded PyTorch behaviour-cloning policy (safetensors + ONNX), logged to MLflow with its
    dataset and code version and registered in the MLflow model registry."""
    name = ids.name(config.policy_name, what="policy name")
    store = lake.lake()
    ds = upstream_metadata(context, "curated_dataset")
    with store.local_dir(ds["prefix"]) as root:
        data = load_training_data(root)
        dataset_manifest = json.loads((root / "manifest.json").read_text())
    bc = config.bc()
    code = code_version()
    device = pick_device(bc.device)
    with mlflow.session() as mlf, staging_dir() as tmp:
        with mlf.start_run(run_name=f"{name}-{ds['dataset_version']}") as run:
            mlf.log_params({**bc.to_dict(), "dataset_name": ds["dataset_name"],
                            "dataset_version": ds["dataset_version"], "train_frames": len(data.train_obs),
                            "val_frames": len(data.val_obs), "device": str(device)})
            mlf.set_tags({"dagster.run_id": context.run.run_id, "code.source_hash": code["source_hash"],
                          "code.git_commit": code["git_commit"] or "unknown",
                          "code.package_version": code["package_version"], "flywheel.asset": "policy_candidate"})

            def on_epoch(m):
                mlf.log_metrics({"train_loss": m.train_loss, "val_loss": m.val_loss,
                                 "val_action_mae": m.val_action_mae}, step=m.epoch)

            policy, history = train_bc(data, bc, on_epoch=on_epoch)
            out = tmp / "policy"
            extra = {"dataset": {"name": ds["dataset_name"], "version": ds["dataset_version"]},
                     "embodiment": dataset_manifest["embodiment"], "fps": data.fps,
                     "training": bc.to_dict(), "code": code, "mlflow_run_id": run.info.run_id}
            version = save_policy(policy, out, extra=extra,
                                  identity={"dataset": extra["dataset"], "training": extra["training"]})
            export_onnx(policy, out / POLICY_ONNX)
            (out / METRICS).write_text(json.dumps([m.__dict__ for m in history], indent=2) + "\n")
            mlf.set_tag("policy.version", version)
            mlf.log_artifacts(str(out), artifact_path="policy")
            info = mlf.onnx.log_model(onnx.load(str(out / POLICY_ONNX)), name="onnx", registered_model_name=name)
            registered_version = getattr(info, "registered_model_version", None)
            prefix = policy_prefix(name, version)
            store.publish_dir(prefix, out)
    last = history[-1]
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(store.uri(prefix)),
            "prefix": prefix,
            "policy_name": name,
            "policy_version": version,
            "dataset_version": ds["dataset_version"],
            "mlflow_run_id": run.info.run_id,
            "registered_model": name,
            "registered_version": str(registered_version) if registered_version is not None else "",
            "final_train_loss": last.train_loss,
            "final_val_loss": last.val_loss,
            "val_action_mae": last.val_action_mae,
            "train_frames": len(data.train_obs),
            "device": str(device),
            "code_source_hash": code["source_hash"],
        },
        data_version=dg.DataVersion(version),
    )

