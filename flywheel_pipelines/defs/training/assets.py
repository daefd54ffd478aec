"""Policy candidates: a behaviour-cloning or RL (PPO/SAC) policy, one artifact format, in MLflow.

torch, stable-baselines3, mujoco and onnx are imported inside the step, not at module level:
every process that loads the code location (webserver, daemon, each run worker and
step pod, including ones that only ingest logs) would otherwise pay for them.
"""

import dataclasses
import hashlib
import json
import math
import typing
from pathlib import Path

import dagster as dg
import pydantic
from pydantic import Field

from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.k8s import TRAINING_TAGS
from flywheel_pipelines.defs.resources import LakeResource, MlflowResource
from flywheel_pipelines.defs.ui_metadata import round_floats
from flywheel_pipelines.defs.upstream import upstream_metadata
from flywheel_pipelines.lib import faults, ids, layout, lineage_index
from flywheel_pipelines.lib.evaluation import registry
from flywheel_pipelines.lib.learning.config import BCConfig
from flywheel_pipelines.lib.settings import flywheel_home
from flywheel_pipelines.lib.storage import staging_dir
from flywheel_pipelines.lib.versioning import code_version

if typing.TYPE_CHECKING:
    from flywheel_pipelines.lib.learning.rl import RLConfig

POLICY_ONNX = layout.POLICY_ONNX
METRICS = layout.METRICS
TRAINERS = ("bc", "ppo", "sac", "ppo_batched")


class _TrainerChoice(dg.Config):
    """Which trainer, where its policy goes, and the knobs that are not BC hyperparameters."""

    policy_name: str = Field(default="reach-bc", description=f"{layout.POLICY_FORMAT} and the registry name.")
    trainer: str = Field(default="bc", description="bc | ppo | sac | ppo_batched")
    rl_config: str = Field(default="", description="ppo/sac/ppo_batched: config file in lib/learning/configs, or a path to one "
                                                   "(default <trainer>_reach.yaml).")
    bc_init: bool = Field(default=False, description="ppo/sac: start from a BC policy trained on the curated dataset.")
    timesteps: int = Field(default=0, description="ppo/sac: overrides the config's n_timesteps when > 0.")
    checkpoint_every: int = Field(default=10, description="BC: epochs between checkpoints (RL: the config's "
                                                          "checkpoint_freq).")

    def bc(self) -> BCConfig:
        return BCConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BCConfig)})

    def rl(self) -> "RLConfig | None":
        if self.trainer == "bc":
            return None
        from flywheel_pipelines.lib.learning.rl import default_config_name, load_rl_config

        # seed and device are BC fields shared with RL; the rest of an RL run is its versioned YAML.
        return load_rl_config(self.rl_config or default_config_name(self.trainer),
                              timesteps=self.timesteps or None,
                              seed=getattr(self, "seed"), device=getattr(self, "device"))  # noqa: B009


def _bc_fields() -> dict[str, typing.Any]:
    """``BCConfig``'s fields as pydantic fields: its names, types, defaults and descriptions, so the
    two cannot drift apart (the RL hyperparameters live in versioned YAML files, not here)."""
    hints = typing.get_type_hints(BCConfig)
    return {f.name: (hints[f.name], Field(default=f.default, description=f.metadata.get("description")))
            for f in dataclasses.fields(BCConfig)}


TrainConfig = pydantic.create_model(
    "TrainConfig", __base__=_TrainerChoice, __module__=__name__,
    __doc__="""Which trainer and its hyperparameters; the same values go to MLflow params.

    ``bc`` (the default) uses the BC fields (``lib/learning/config.BCConfig``'s, defined there
    once); ``ppo``/``sac`` read a versioned YAML from ``lib/learning/configs`` and, with ``bc_init``,
    fine-tune a BC policy trained first (same step); ``ppo_batched`` is PPO over thousands of
    batched worlds on the device (MuJoCo Warp on a GPU).
    """,
    **_bc_fields())


def checkpoint_root(name: str, dataset_version: str, bc: BCConfig | None, rl: "RLConfig | None") -> Path:
    """Where a run's checkpoints live until its policy is published: a stable local folder keyed by
    the dataset and everything that shapes training, so re-running a killed run resumes it."""
    key = json.dumps({"bc": bc.to_dict() if bc else None, "rl": rl.to_dict() if rl else None}, sort_keys=True)
    return flywheel_home() / "checkpoints" / name / f"{dataset_version}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _flat_params(prefix: str, d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_params(f"{prefix}{k}.", v))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def _finite(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}


@dg.asset(deps=["curated_dataset"], group_name=group_of("policy_candidate"), kinds={"pytorch", "mlflow"}, owners=["team:ml"],
          pool="training",
          op_tags=TRAINING_TAGS)
def policy_candidate(context: dg.AssetExecutionContext, config: TrainConfig, lake: LakeResource,
                     mlflow: MlflowResource) -> dg.MaterializeResult:
    """A seeded PyTorch policy (safetensors + ONNX) from behaviour cloning or PPO/SAC, logged to
    MLflow with its dataset, config and code version and registered in the MLflow model registry.
    A killed run resumes from its checkpoints when re-run with the same dataset and config."""
    # Heavy modules (torch, stable-baselines3, mujoco, onnx) load here, when the step runs.
    import onnx

    from flywheel_pipelines.lib.learning.bc import load_training_data, pick_device, train_bc
    from flywheel_pipelines.lib.learning.checkpoint import clear_checkpoints, close_interrupted_runs, latest_step
    from flywheel_pipelines.lib.learning.policy import save_policy
    from flywheel_pipelines.lib.learning.rl import config_path, resolve_config, train_rl, training_record
    from flywheel_pipelines.lib.release.onnx_export import export_onnx

    name = ids.name(config.policy_name, what="policy name")
    if config.trainer not in TRAINERS:
        raise dg.Failure(f"trainer must be one of {TRAINERS}, got {config.trainer!r}")
    if config.trainer == "ppo_batched" and config.bc_init:
        raise dg.Failure("bc_init: ppo_batched does not fine-tune a BC policy; use trainer ppo or sac for that")
    store = lake.lake()
    ds = upstream_metadata(context, "curated_dataset")
    with store.local_dir(ds["prefix"]) as root:
        data = load_training_data(root)
        dataset_manifest = json.loads((root / layout.MANIFEST).read_text())
    rl = config.rl()
    bc = config.bc() if rl is None or config.bc_init else None
    code = code_version()
    device = pick_device(config.device)
    ckpt_root = checkpoint_root(name, ds["dataset_version"], bc, rl)
    resumed = {part: step for part in ("bc", "rl") if (step := latest_step(ckpt_root / part)) is not None}
    if resumed:
        context.log.info(f"resuming from checkpoints in {ckpt_root}: {resumed}")
    mlf = mlflow.store()
    with staging_dir() as tmp:
        with mlf.run(run_name=f"{name}-{ds['dataset_version']}") as run:
            params = {"trainer": config.trainer, "dataset_name": ds["dataset_name"],
                      "dataset_version": ds["dataset_version"], "train_frames": len(data.train_obs),
                      "val_frames": len(data.val_obs), "device": str(device)}
            if bc is not None:
                params.update(bc.to_dict() if rl is None else _flat_params("bc.", bc.to_dict()))
            if rl is not None:
                params.update({"rl_config": rl.file, "rl_config_sha256": rl.sha256, "bc_init": config.bc_init,
                               **_flat_params("rl.", rl.to_dict())})
                run.log_artifact(str(config_path(rl.file)), artifact_path="config")
            run.log_params(params)
            run.set_tags({"dagster.run_id": context.run.run_id, "code.source_hash": code["source_hash"],
                          "code.git_commit": code["git_commit"] or "unknown",
                          "code.package_version": code["package_version"], "flywheel.asset": "policy_candidate",
                          "flywheel.checkpoints": f"{name}/{ckpt_root.name}",
                          **{f"resumed_from.{k}": str(v) for k, v in resumed.items()}})
            if resumed:
                for old in close_interrupted_runs(mlf.client, run.experiment_id, f"{name}/{ckpt_root.name}",
                                                  current=run.run_id):
                    context.log.info(f"MLflow run {old} was killed mid-training; marked KILLED, resumed in "
                                     f"{run.run_id}")
            bc_prefix = "" if rl is None else "bc."
            logged: set[tuple[str, int]] = set()

            def on_epoch(m):
                run.log_metrics(_finite({f"{bc_prefix}train_loss": m.train_loss, f"{bc_prefix}val_loss": m.val_loss,
                                         f"{bc_prefix}val_action_mae": m.val_action_mae}), step=m.epoch)
                logged.add(("bc", m.epoch))

            def on_progress(m):
                run.log_metrics(_finite({"ep_return_mean": m.ep_return_mean, "success_rate": m.success_rate,
                                         "ep_length_mean": m.ep_length_mean, "timesteps_per_s": m.timesteps_per_s,
                                         **{f"train.{k}": v for k, v in m.losses.items()}}), step=m.timesteps)
                logged.add(("rl", m.timesteps))

            bc_policy = bc_history = None
            if bc is not None:
                bc_policy, bc_history = train_bc(data, bc, on_epoch=on_epoch, checkpoint_dir=ckpt_root / "bc",
                                                 checkpoint_every=config.checkpoint_every)
                for m in bc_history:  # epochs restored from a checkpoint: their metrics go to this run too
                    if ("bc", m.epoch) not in logged:
                        on_epoch(m)
            if rl is None:
                policy, history, training = bc_policy, bc_history, bc.to_dict()
            else:
                init = bc_policy if config.bc_init else None
                policy, history = train_rl(rl, bc_init=init, checkpoint_dir=ckpt_root / "rl", on_progress=on_progress)
                for m in history:
                    if ("rl", m.timesteps) not in logged:
                        on_progress(m)
                training = training_record(resolve_config(rl, init), bc_init=bc.to_dict() if init else None)
            out = tmp / "policy"
            extra = {"dataset": {"name": ds["dataset_name"], "version": ds["dataset_version"]},
                     "embodiment": dataset_manifest["embodiment"], "fps": data.fps,
                     "training": training, "code": code, "mlflow_run_id": run.run_id}
            version = save_policy(policy, out, extra=extra,
                                  identity={"dataset": extra["dataset"], "training": extra["training"]})
            export_onnx(policy, out / POLICY_ONNX)
            (out / METRICS).write_text(json.dumps([m.__dict__ for m in history], indent=2) + "\n")
            run.set_tag("policy.version", version)
            run.log_artifacts(str(out), artifact_path="policy")
            model_uri = run.log_onnx_model(onnx.load(str(out / POLICY_ONNX)), name="onnx")
            registered_version, killed = registry.register_policy_version(
                mlf.client, name, policy_version=version, model_uri=model_uri, run_id=run.run_id)
            for old in killed:
                context.log.info(f"MLflow run {old} registered {name} version {registered_version} and was killed; "
                                 "marked KILLED, its registration reused")
            faults.point("mlflow.registered")
            prefix = layout.policy_prefix(name, version)
            store.publish_dir(prefix, out)
    lineage_index.write_policy_edge(
        store, name=name, version=version, dataset_name=ds["dataset_name"], dataset_version=ds["dataset_version"],
        mlflow_run_id=run.run_id, registered_model=name,
        registered_version=str(registered_version) if registered_version is not None else None,
        at=lineage_index.now_iso())
    clear_checkpoints(ckpt_root)  # published: nothing left to resume
    last = history[-1]
    if rl is None:
        scores = {"final_train_loss": last.train_loss, "final_val_loss": last.val_loss,
                  "val_action_mae": last.val_action_mae}
    else:
        scores = {"rl_config": rl.file, "rl_config_sha256": rl.sha256, "bc_init": config.bc_init,
                  "timesteps": last.timesteps, "final_ep_return_mean": last.ep_return_mean,
                  "final_success_rate": last.success_rate}
    return dg.MaterializeResult(
        metadata=round_floats({
            "uri": dg.MetadataValue.path(store.uri(prefix)),
            "prefix": prefix,
            "policy_name": name,
            "policy_version": version,
            "dataset_version": ds["dataset_version"],
            "mlflow_run_id": run.run_id,
            "mlflow_experiment_id": run.experiment_id,
            "mlflow_run": mlflow.run_link(run.run_id, run.experiment_id),
            "registered_model": name,
            "registered_version": str(registered_version) if registered_version is not None else "",
            "trainer": config.trainer,
            **scores,
            "train_frames": len(data.train_obs),
            "device": str(device),
            "code_source_hash": code["source_hash"],
        }),
        data_version=dg.DataVersion(version),
    )

