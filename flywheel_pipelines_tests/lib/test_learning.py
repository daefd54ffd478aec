"""Tests for the policy artifact (safetensors, no pickle) and behaviour cloning."""

from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from flywheel_pipelines.lib.datasets.curation import CurationSpec, build_dataset, select_episodes, split_episodes
from flywheel_pipelines.lib.datasets.lerobot.reader import read_lerobot_v3
from flywheel_pipelines.lib.learning.bc import BCConfig, TrainingData, load_training_data, pick_device, train_bc
from flywheel_pipelines.lib.learning.policy import (
    CONFIG,
    WEIGHTS,
    Policy,
    PolicyConfig,
    load_policy,
    residual_indices,
    save_policy,
)
from flywheel_pipelines_tests.lib.conftest import CuratedDataset

OBS_NAMES = ("shoulder.pos", "elbow.pos", "shoulder.vel", "elbow.vel", "goal.x", "goal.y")
ACT_NAMES = ("shoulder.target", "elbow.target")


def _policy(seed: int = 0, hidden: int = 16) -> Policy:
    torch.manual_seed(seed)
    policy = Policy(PolicyConfig(("observation.state", "observation.environment_state"), OBS_NAMES, ACT_NAMES,
                                 hidden=hidden, layers=2, residual_indices=(0, 1)))
    # Non-trivial normalization so a lost buffer would show in the outputs.
    policy.obs_mean.copy_(torch.linspace(-0.5, 0.5, 6))
    policy.obs_std.copy_(torch.linspace(0.5, 2.0, 6))
    policy.act_mean.copy_(torch.tensor([0.1, -0.2]))
    policy.act_std.copy_(torch.tensor([0.3, 0.05]))
    return policy.eval()


# --- policy artifact -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obs", "act", "expected"),
    [
        (OBS_NAMES, ACT_NAMES, (0, 1)),
        (OBS_NAMES, ("elbow.target", "shoulder.target"), (1, 0)),
        (("elbow.vel", "elbow.pos", "shoulder.pos"), ACT_NAMES, (2, 1)),
        (OBS_NAMES, ("shoulder.target", "gripper.target"), ()),  # all or nothing
        (("goal.x",), ACT_NAMES, ()),
        (OBS_NAMES, (), ()),
    ],
)
def test_residual_indices(obs, act, expected):
    assert residual_indices(obs, act) == expected


def test_forward_adds_the_residual_and_target_inverts_it():
    policy = _policy()
    obs = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = policy(obs)
        net = policy.normalized_output(obs)
        np.testing.assert_allclose(out, net * policy.act_std + policy.act_mean + obs[:, :2], atol=1e-6)
        np.testing.assert_allclose(policy.target(obs, out), net, atol=1e-5)
    assert out.shape == (5, 2) and out.dtype == torch.float32


def test_config_round_trip():
    config = _policy().config
    assert PolicyConfig.from_dict(json.loads(json.dumps({**config.to_dict(), "unknown": 1}))) == config
    assert (config.obs_dim, config.action_dim) == (6, 2)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    policy = _policy()
    version = save_policy(policy, tmp_path / "p", extra={"fps": 20})
    assert len(version) == 12
    loaded, config = load_policy(tmp_path / "p")
    assert config["fps"] == 20 and config["policy"] == policy.config.to_dict()
    assert loaded.config == policy.config and not loaded.training
    obs = torch.randn(9, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(obs), policy(obs))
    for key, value in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # The version is a content hash: the same policy saves to the same version.
    assert save_policy(policy, tmp_path / "q", extra={"fps": 20}) == version
    assert save_policy(_policy(seed=1), tmp_path / "r", extra={"fps": 20}) != version


def test_weights_are_safetensors_not_pickle(tmp_path):
    save_policy(_policy(), tmp_path)
    data = (tmp_path / WEIGHTS).read_bytes()
    assert not data.startswith((b"PK", b"\x80"))  # neither torch's zip nor a raw pickle
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    assert header["__metadata__"] == {"format": "flywheel-policy-v1"}
    assert header["net.0.weight"] == {"dtype": "F32", "shape": [16, 6],
                                      "data_offsets": header["net.0.weight"]["data_offsets"]}
    assert {"obs_mean", "obs_std", "act_mean", "act_std", "residual"} <= set(header)
    assert header["residual"]["dtype"] == "I64"
    assert json.loads((tmp_path / CONFIG).read_text())["policy"]["obs_names"] == list(OBS_NAMES)


def test_loading_never_calls_torch_load(tmp_path, monkeypatch):
    save_policy(_policy(), tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("load_policy must not unpickle (torch.load was called)")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)
    loaded, _ = load_policy(tmp_path)
    assert torch.equal(loaded.obs_std, _policy().obs_std)


# --- behaviour cloning -----------------------------------------------------------------------


def _synthetic(n: int = 512, seed: int = 0) -> TrainingData:
    """Actions that a residual MLP can learn: a step toward a goal-dependent offset."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 6)).astype(np.float32)
    act = (obs[:, :2] + 0.2 * np.tanh(obs[:, 4:6] - obs[:, :2])).astype(np.float32)
    split = int(n * 0.8)
    return TrainingData(("observation.state", "observation.environment_state"), OBS_NAMES, ACT_NAMES,
                        obs[:split], act[:split], obs[split:], act[split:], fps=20)


_FAST = BCConfig(epochs=15, batch_size=64, lr=3e-3, hidden=32, layers=2, seed=0, device="cpu")


@pytest.fixture(scope="module")
def trained():
    return train_bc(_synthetic(), _FAST)


def test_training_is_deterministic_for_a_seed(trained):
    policy, history = trained
    again, history2 = train_bc(_synthetic(), _FAST)
    for key, value in policy.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert [h.train_loss for h in history] == [h.train_loss for h in history2]
    other, _ = train_bc(_synthetic(), BCConfig(**{**_FAST.to_dict(), "seed": 1}))
    assert not torch.equal(other.net[0].weight, policy.net[0].weight)


def test_training_loss_drops(trained):
    policy, history = trained
    assert [h.epoch for h in history] == list(range(_FAST.epochs))
    assert history[-1].train_loss < 0.2 * history[0].train_loss
    assert history[-1].val_loss < 0.3 * history[0].val_loss
    assert np.isfinite(history[-1].val_action_mae) and history[-1].val_action_mae < 0.05
    assert policy.config.residual_indices == (0, 1) and policy.config.hidden == 32
    assert not policy.training and policy.obs_mean.device.type == "cpu"


def test_training_reports_each_epoch_and_handles_no_val():
    data = _synthetic(n=64)
    no_val = TrainingData(data.obs_features, data.obs_names, data.action_names, data.train_obs, data.train_act,
                          data.val_obs[:0], data.val_act[:0], data.fps)
    seen = []
    _, history = train_bc(no_val, BCConfig(epochs=2, batch_size=32, hidden=8, device="cpu"), on_epoch=seen.append)
    assert seen == history and len(history) == 2
    assert np.isnan(history[0].val_loss) and np.isnan(history[0].val_action_mae)


def test_training_without_train_frames_raises():
    data = _synthetic(n=10)
    empty = TrainingData(data.obs_features, data.obs_names, data.action_names, data.train_obs[:0],
                         data.train_act[:0], data.val_obs, data.val_act, data.fps)
    with pytest.raises(ValueError, match="no training frames"):
        train_bc(empty, _FAST)


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


# --- training data from a curated dataset ----------------------------------------------------


def test_load_training_data_on_a_built_dataset(dataset: CuratedDataset, standardized):
    data = load_training_data(dataset.root)
    assert data.obs_features == ("observation.state", "observation.environment_state")
    assert data.obs_names == OBS_NAMES and data.action_names == ACT_NAMES and data.fps == 20
    manifest = dataset.built.manifest
    by_split = {s: [e for e in manifest["episodes"] if e["split"] == s] for s in ("train", "val")}
    assert data.train_obs.shape == (sum(e["num_frames"] for e in by_split["train"]), 6)
    assert data.val_obs.shape == (sum(e["num_frames"] for e in by_split["val"]), 6)
    assert data.train_act.shape == (len(data.train_obs), 2) and data.train_obs.dtype == np.float32
    # Rows are the standardized frames, train episodes first, in manifest order.
    frames = standardized.frames
    expected = np.concatenate([
        np.concatenate([
            np.asarray(frames.filter(pc.equal(frames["episode_id"], e["episode_id"]))[key].to_pylist(), np.float32)
            for key in ("observation.state", "observation.environment_state")
        ], axis=1)
        for e in sorted(by_split["train"], key=lambda e: e["episode_index"])
    ])
    np.testing.assert_array_equal(data.train_obs, expected)
    policy, history = train_bc(data, BCConfig(epochs=2, batch_size=64, hidden=8, device="cpu"))
    assert np.isfinite(history[-1].val_loss) and policy.config.obs_names == OBS_NAMES


def test_split_never_leaves_a_selection_without_training_data():
    """A single selected episode, or ids that all hash to val, still give a train episode."""
    for ids in (["r101-20260302-007"], ["r101-20260302-007", "r101-20260302-012"]):
        sides = split_episodes(ids, val_fraction=0.2, seed=0)
        assert "train" in sides.values(), sides
    assert sorted(split_episodes(["a", "b"], val_fraction=0.5, seed=0).values()) == ["train", "val"]


def test_val_only_dataset_does_not_train_on_its_val_frames(tmp_path, catalog, standardized, emb):
    """A dataset written with only a val split must not hand its val frames to training:
    the absent train split is empty, not "every frame" (which would leak val into train)."""
    from flywheel_pipelines.lib.datasets.lerobot.format import FeatureSpec
    from flywheel_pipelines.lib.datasets.lerobot.writer import write_lerobot_v3

    spec = CurationSpec()
    selected = select_episodes(catalog, spec)
    build_dataset(tmp_path / "ds", selected=selected, load_frames=lambda r, d: standardized.frames, spec=spec, emb=emb)
    info, frames, _ = read_lerobot_v3(tmp_path / "ds")
    frames = frames.filter(pc.equal(frames["episode_index"], 0)).drop_columns(["index"])
    features = {k: FeatureSpec(v["dtype"], tuple(v["shape"]), v["names"]) for k, v in info["features"].items()
                if k.startswith(("observation.", "action"))}
    write_lerobot_v3(tmp_path / "val_only", frames=frames, features=features, fps=info["fps"],
                     robot_type=info["robot_type"], tasks=["reach_target"], splits={"val": [0]})
    data = load_training_data(tmp_path / "val_only")
    assert len(data.val_obs) == frames.num_rows
    assert len(data.train_obs) == 0, "val frames leaked into the train split"


def test_policy_version_ignores_bookkeeping_but_not_identity(tmp_path):
    policy = _policy()
    v1 = save_policy(policy, tmp_path / "a", extra={"mlflow_run_id": "run-1"}, identity={"dataset": "d1"})
    v2 = save_policy(policy, tmp_path / "b", extra={"mlflow_run_id": "run-2"}, identity={"dataset": "d1"})
    v3 = save_policy(policy, tmp_path / "c", extra={"mlflow_run_id": "run-1"}, identity={"dataset": "d2"})
    assert v1 == v2
    assert v3 != v1


# --- the GPU data path and mixed precision ------------------------------------------------------


def test_amp_auto_is_off_on_the_cpu_and_keeps_the_config_fingerprint():
    from flywheel_pipelines.lib.learning.bc import autocast_dtype

    assert "amp" not in BCConfig().to_dict()  # earlier configs, checkpoints folders and versions unchanged
    assert BCConfig(amp="bf16").to_dict()["amp"] == "bf16"
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("off", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="amp must be"):
        autocast_dtype("fp8", torch.device("cpu"))


def test_amp_auto_stays_float32_on_cuda_mocked_device():
    """No GPU in CI: only the choice is tested here (a torch.device('cuda') needs no GPU to exist).
    auto is float32 on CUDA too: on an H200, bf16 changed 13/256 evaluation outcomes (docs/training.md)."""
    from flywheel_pipelines.lib.learning.bc import autocast_dtype

    assert autocast_dtype("auto", torch.device("cuda")) is None
    assert autocast_dtype("bf16", torch.device("cuda")) is torch.bfloat16


def test_bf16_training_keeps_the_checkpoint_format_and_the_accuracy(tmp_path):
    """Mixed precision changes the arithmetic of the forward pass only: the policy, its
    checkpoint and the saved artifact are float32 with the same keys, and it learns as well."""
    from safetensors.torch import load_file

    fp32, h32 = train_bc(_synthetic(), _FAST, checkpoint_dir=tmp_path / "fp32", checkpoint_every=15)
    bf16, h16 = train_bc(_synthetic(), BCConfig(**{**_FAST.to_dict(), "amp": "bf16"}),
                         checkpoint_dir=tmp_path / "bf16", checkpoint_every=15)
    a = load_file(next((tmp_path / "fp32").glob("step-*/tensors.safetensors")))
    b = load_file(next((tmp_path / "bf16").glob("step-*/tensors.safetensors")))
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype for k in a)
    assert all(v.dtype == torch.float32 for v in bf16.state_dict().values() if v.is_floating_point())
    assert h16[-1].val_action_mae < 1.5 * h32[-1].val_action_mae + 1e-3
