"""Robots that run a release: the deployments manifest, the bundle's ONNX through ONNX Runtime,
the operator taking over, and what the logs and the episode table then say. Also the `flywheel
rollout`, `fleet simulate --deployment` and `field kpis` commands.

The release here is a real bundle of an *untrained* policy (exported with the project's own ONNX
export): it barely moves the arm, so the operator takes over in every episode, which is what
these tests need to see. Trained releases are in defs/test_rollout_field.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from mcap.reader import make_reader

from flywheel_pipelines.cli import main
from flywheel_pipelines.lib.catalog import CATALOG_KEY, build_catalog
from flywheel_pipelines.lib.episodes.control import MCAP_METADATA
from flywheel_pipelines.lib.episodes.embodiment import load_embodiment
from flywheel_pipelines.lib.episodes.standardize import EPISODE_SCHEMA, SourceFile, standardize
from flywheel_pipelines.lib.evaluation.policies import ACTION_NAMES, OBS_NAMES
from flywheel_pipelines.lib.learning.policy import Policy, PolicyConfig, residual_indices
from flywheel_pipelines.lib.release.bundle import write_sha256sums
from flywheel_pipelines.lib.release.onnx_export import export_onnx
from flywheel_pipelines.lib.rollout import deployments
from flywheel_pipelines.lib.sim.field import load_fleet_releases
from flywheel_pipelines.lib.sim.fleet import simulate_fleet
from flywheel_pipelines.lib.storage import LocalLake, sha256_file

REF = "reach-bc/untrained0001"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = PolicyConfig(obs_features=("observation.state", "observation.goal"), obs_names=OBS_NAMES,
                          action_names=ACTION_NAMES, hidden=8, layers=1,
                          residual_indices=residual_indices(OBS_NAMES, ACTION_NAMES))
    policy = Policy(config)
    policy.act_std.fill_(0.01)  # holds (almost) still: the operator will take over
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    out.mkdir()
    export_onnx(policy, out / "policy.onnx")
    (out / "policy_config.json").write_text(json.dumps({"policy": config.to_dict()}))
    write_sha256sums(out)
    return out


@pytest.fixture
def lake(tmp_path, bundle_dir) -> LocalLake:
    store = LocalLake(tmp_path / "lake")
    store.publish_dir(deployments.bundle_prefix(REF), bundle_dir)
    return store


def _manifest(store, assignments):
    releases = {REF: deployments.release_entry(store, REF)}
    return deployments.build(model="reach-bc", sequence=1, assignments=assignments, releases=releases,
                             rollout_id=None, stage=None, action="test", reason="test", by="test")


def test_a_robot_runs_its_release_and_its_logs_say_so(lake):
    manifest = _manifest(lake, {"r101": REF})
    days = simulate_fleet(lake, robots=2, days=["2026-11-01"], episodes_per_day=3, seed=0, builtin_faults=False,
                          releases=load_fleet_releases(lake, manifest))
    emb = load_embodiment()
    tables = {}
    for d in days:
        files = [SourceFile(k, lake.path(k), sha256_file(lake.path(k))) for k in d.keys]
        tables[d.robot] = standardize(files, emb, robot=d.robot, day=d.day).episodes.to_pylist()
        with open(lake.path(d.keys[0]), "rb") as f:
            records = {m.name: m.metadata for m in make_reader(f).iter_metadata()}
        if d.robot == "r101":
            assert records[MCAP_METADATA]["policy_version"] == "untrained0001"
            assert records[MCAP_METADATA]["onnx_sha256"] == manifest["releases"][REF]["onnx_sha256"]
        else:
            assert MCAP_METADATA not in records
    entry = manifest["releases"][REF]
    for row in tables["r101"]:
        assert (row["policy_name"], row["policy_version"], row["policy_onnx_sha256"]) == (
            "reach-bc", "untrained0001", entry["onnx_sha256"])
        # A policy that does not move strays: the operator takes over after 0.5 s, every episode.
        assert row["control_mode"] == "autonomous_with_interventions" and row["intervention_count"] == 1
        assert 0 < row["intervention_s"] < row["duration_s"]
    for row in tables["r102"]:  # not in the manifest: teleoperated, as every log before releases ran
        assert (row["control_mode"], row["policy_version"]) == ("teleoperated", None)

    # Curation keeps demonstrations: episodes a release drove only when asked for.
    import pyarrow as pa

    from flywheel_pipelines.lib.datasets.curation import CurationSpec, select_episodes

    catalog = build_catalog([pa.Table.from_pylist(t, schema=EPISODE_SCHEMA) for t in tables.values()])
    spec = CurationSpec(outcomes=("success", "failure"), include_interventions=True)
    assert set(select_episodes(catalog, spec)["robot"].to_pylist()) == {"r102"}
    assert "include_autonomous" not in spec.to_dict()  # every earlier dataset version stays the same
    wider = CurationSpec(outcomes=("success", "failure"), include_interventions=True, include_autonomous=True)
    assert set(select_episodes(catalog, wider)["robot"].to_pylist()) == {"r101", "r102"}


def test_a_robot_refuses_a_model_file_that_is_not_the_manifests(lake):
    manifest = _manifest(lake, {"r101": REF})
    prefix = deployments.bundle_prefix(REF)
    lake.write_bytes(f"{prefix}/policy.onnx", lake.read_bytes(f"{prefix}/policy.onnx") + b"\0")
    with pytest.raises(deployments.ManifestError, match="refusing to run it"):
        load_fleet_releases(lake, manifest)


def test_rollout_commands(lake, tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_USER", "ana")
    emb = load_embodiment()
    tables = []
    for d in simulate_fleet(lake, robots=3, days=["2026-11-01"], episodes_per_day=2, seed=0, builtin_faults=False):
        files = [SourceFile(k, lake.path(k), sha256_file(lake.path(k))) for k in d.keys]
        tables.append(standardize(files, emb, robot=d.robot, day=d.day).episodes)
    lake.write_parquet(CATALOG_KEY, build_catalog(tables))
    common = ["--lake", str(lake.root), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    run = CliRunner().invoke

    out = run(main, ["rollout", "start", REF, "--reason", "cli test", "--stages", "canary:0.34:2,full:1.0", *common])
    assert out.exit_code == 0, out.output
    assert "running, stage canary (1 robots" in out.output
    current = lake.read_json(deployments.current_key("reach-bc"))
    (canary,) = current["assignments"]
    # The simulated fleet reads the manifest from the lake: the canary runs the release.
    out = run(main, ["fleet", "simulate", "--robots", "3", "--days", "1", "--episodes", "2", "--start-date",
                     "2026-11-02", "--deployment", deployments.current_key("reach-bc"), "--lake", str(lake.root)])
    assert out.exit_code == 0, out.output
    assert f"{canary} runs {REF}" in out.output
    local = tmp_path / "manifest.json"
    shutil.copyfile(lake.path(deployments.current_key("reach-bc")), local)
    local.write_text(local.read_text().replace(canary, "r999"))  # tampered: its checksum no longer holds
    out = run(main, ["fleet", "simulate", "--deployment", str(local), "--lake", str(lake.root)])
    assert out.exit_code == 2 and "checksum mismatch" in out.output

    for action in ("pause", "resume", "abort"):
        out = run(main, ["rollout", action, "--reason", f"cli {action}", *common])
        assert out.exit_code == 0, out.output
    out = run(main, ["rollout", "pause", "--reason", "nothing to pause", *common])
    assert out.exit_code == 1 and "no active rollout" in out.output
    out = run(main, ["rollout", "status", "--json", "--lake", str(lake.root)])
    (state,) = json.loads(out.output)
    assert state["status"] == "aborted" and state["release"] == REF
    assert lake.read_json(deployments.current_key("reach-bc"))["assignments"] == {}

    out = run(main, ["field", "kpis", "--json", *common])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["production"] == "teleoperated"
