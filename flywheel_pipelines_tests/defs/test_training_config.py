"""The Dagster training config and the library's BCConfig are one definition: the launchpad shows the
library's names, types, defaults and descriptions, and an unconfigured run trains exactly as
``BCConfig()`` would (same fingerprint, same policy version)."""

import dataclasses

import pytest

from flywheel_pipelines.defs.training.assets import TrainConfig
from flywheel_pipelines.lib.learning.config import BCConfig


def test_every_bc_field_is_a_config_field_with_the_same_default():
    fields = TrainConfig.model_fields
    for f in dataclasses.fields(BCConfig):
        assert f.name in fields, f"TrainConfig lacks BCConfig.{f.name}"
        assert fields[f.name].default == f.default, f.name
    assert fields["amp"].description == dataclasses.fields(BCConfig)[-1].metadata["description"]


def test_default_config_trains_as_the_library_default():
    assert TrainConfig().bc() == BCConfig()
    assert TrainConfig().rl() is None  # trainer bc: no RL config


def test_config_values_reach_the_library():
    config = TrainConfig(epochs=3, lr=0.01, amp="bf16", device="cpu")
    assert config.bc() == BCConfig(epochs=3, lr=0.01, amp="bf16", device="cpu")


def test_rl_takes_seed_and_device_from_the_shared_fields():
    rl = TrainConfig(trainer="ppo", seed=7, device="cpu", timesteps=1234).rl()
    assert (rl.algo, rl.seed, rl.device, rl.n_timesteps) == ("ppo", 7, "cpu", 1234)


def test_a_wrong_type_is_refused_naming_the_field():
    with pytest.raises(Exception, match="epochs"):
        TrainConfig(epochs="many")
