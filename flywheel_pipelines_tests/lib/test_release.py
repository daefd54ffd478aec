"""Tests for ONNX export and parity, release bundle checksums, and release lineage."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from flywheel_pipelines.lib.learning.policy import Policy, PolicyConfig
from flywheel_pipelines.lib.lineage import build_lineage, lineage_summary
from flywheel_pipelines.lib.release.bundle import (
    BUNDLE_FILES,
    LINEAGE,
    MODEL_CARD,
    ONNX,
    SUMS,
    model_card,
    verify_bundle,
    write_lineage,
    write_sha256sums,
)
from flywheel_pipelines.lib.release.onnx_export import (
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    export_onnx,
    onnx_parity,
    onnx_policy_fn,
)
from flywheel_pipelines_tests.lib.conftest import DAY, ROBOT, CuratedDataset

OBS_NAMES = ("shoulder.pos", "elbow.pos", "shoulder.vel", "elbow.vel", "goal.x", "goal.y")


def _policy() -> Policy:
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(("observation.state", "observation.environment_state"), OBS_NAMES,
                                 ("shoulder.target", "elbow.target"), hidden=32, layers=2, residual_indices=(0, 1)))
    policy.obs_mean.copy_(torch.linspace(-0.5, 0.5, 6))
    policy.obs_std.copy_(torch.linspace(0.5, 2.0, 6))
    policy.act_mean.copy_(torch.tensor([0.1, -0.2]))
    policy.act_std.copy_(torch.tensor([0.3, 0.05]))
    return policy.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Policy, Path]:
    policy = _policy()
    path = tmp_path_factory.mktemp("onnx") / ONNX
    export_onnx(policy, path)
    return policy, path


# --- ONNX ------------------------------------------------------------------------------------


def test_onnx_graph_has_named_io_and_a_dynamic_batch(exported):
    _, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and not in_dims[0].dim_value  # symbolic, not the example's 2
    assert in_dims[1].dim_value == 6
    assert out.type.tensor_type.shape.dim[1].dim_value == 2
    assert any(op.domain in ("", "ai.onnx") and op.version == OPSET for op in model.opset_import)


@pytest.mark.parametrize("batch", [1, 2, 7, 257])
def test_onnx_runtime_parity(exported, batch):
    policy, path = exported
    inputs = np.random.default_rng(batch).normal(0.0, 1.5, size=(batch, 6)).astype(np.float32)
    parity = onnx_parity(policy, path, inputs)
    assert parity["inputs"] == batch
    assert parity["max_abs_error"] < 1e-5 and parity["mean_abs_error"] <= parity["max_abs_error"]


def test_onnx_policy_fn_acts_like_the_torch_policy(exported):
    policy, path = exported
    act = onnx_policy_fn(path)
    obs = np.array([0.3, 1.2, 0.0, 0.1, 0.2, 0.15], np.float32)
    with torch.no_grad():
        expected = policy(torch.from_numpy(obs[None]))[0].numpy()
    out = act(obs)
    assert out.shape == (2,) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # The residual is part of the exported graph: moving the joints moves the targets with them.
    shifted = obs.copy()
    shifted[:2] += 0.5
    assert not np.allclose(act(shifted), out)


# --- SHA256SUMS ------------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path) -> Path:
    root = tmp_path / "release"
    (root / "extra").mkdir(parents=True)
    (root / ONNX).write_bytes(b"\x08\x01onnx-bytes" * 10)
    (root / MODEL_CARD).write_text("# card\n")
    for name in set(BUNDLE_FILES) - {ONNX, MODEL_CARD, LINEAGE}:
        (root / name).write_text("{}\n")
    (root / "extra" / "notes.txt").write_text("notes\n")
    write_lineage(root, {"schema": "flywheel-lineage-v1"})
    write_sha256sums(root)
    return root


def test_sha256sums_lists_every_file_and_verifies(bundle):
    text = (bundle / SUMS).read_text()
    lines = text.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == sorted([*BUNDLE_FILES, "extra/notes.txt"])
    for line in lines:
        digest, rel = line.split("  ", 1)
        assert digest == hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    assert verify_bundle(bundle).ok and verify_bundle(bundle).checked == len(BUNDLE_FILES) + 1
    assert verify_bundle(bundle).problems == ()


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not installed")
def test_sha256sums_is_sha256sum_c_compatible(bundle):
    result = subprocess.run(["sha256sum", "--check", "--strict", SUMS], cwd=bundle, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _problems(bundle: Path) -> tuple[str, ...]:
    verdict = verify_bundle(bundle)
    assert not verdict.ok
    return verdict.problems


def test_edited_byte_is_detected(bundle):
    data = bytearray((bundle / ONNX).read_bytes())
    data[5] ^= 0x01
    (bundle / ONNX).write_bytes(bytes(data))
    assert _problems(bundle) == (f"{ONNX}: checksum mismatch",)


def test_added_file_is_detected(bundle):
    (bundle / "extra" / "backdoor.py").write_text("import os\n")
    assert _problems(bundle) == (f"extra/backdoor.py: not listed in {SUMS}",)


def test_deleted_file_is_detected(bundle):
    (bundle / "extra" / "notes.txt").unlink()
    assert _problems(bundle) == ("extra/notes.txt: missing",)


def test_path_escaping_the_bundle_is_detected(bundle, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret\n")
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    with open(bundle / SUMS, "a") as handle:
        handle.write(f"{digest}  ../outside.txt\n")
    (problem,) = _problems(bundle)
    assert "'../outside.txt'" in problem and "escapes the bundle" in problem and f":{len(BUNDLE_FILES) + 2}:" in problem


def test_absolute_path_is_detected(bundle):
    with open(bundle / SUMS, "a") as handle:
        handle.write(f"{'0' * 64}  /etc/hostname\n")
    (problem,) = _problems(bundle)
    assert "'/etc/hostname'" in problem and "escapes the bundle" in problem


def test_malformed_and_missing_sums(bundle):
    with open(bundle / SUMS, "a") as handle:
        handle.write("not a checksum line\n")
    (problem,) = _problems(bundle)
    assert problem.endswith(f"{SUMS}:{len(BUNDLE_FILES) + 2}: malformed line")
    (bundle / SUMS).unlink()
    verdict = verify_bundle(bundle)
    assert not verdict.ok and verdict.checked == 0 and verdict.problems[0].endswith(f"{SUMS}: missing")


def _drop_sums_line(bundle: Path, rel: str) -> None:
    lines = (bundle / SUMS).read_text().splitlines(keepends=True)
    (bundle / SUMS).write_text("".join(line for line in lines if not line.rstrip("\n").endswith(f"  {rel}")))


def test_a_file_deleted_with_its_sums_line_is_detected(bundle):
    """Issue #16 (6): deleting policy.onnx together with its SHA256SUMS line passed as OK."""
    (bundle / ONNX).unlink()
    _drop_sums_line(bundle, ONNX)
    assert _problems(bundle) == (f"{ONNX}: required in a release bundle, not listed in {SUMS} (and missing)",)


def test_an_emptied_bundle_is_detected(bundle):
    """Issue #16 (6): everything deleted and SHA256SUMS emptied passed as OK."""
    for path in sorted(bundle.rglob("*"), reverse=True):
        if path.is_file() and path.name != SUMS:
            path.unlink()
    (bundle / SUMS).write_text("")
    problems = _problems(bundle)
    assert f"{SUMS}: lists no file" in problems
    assert {p.split(":")[0] for p in problems} >= set(BUNDLE_FILES)


def test_rewriting_sums_after_a_change_verifies_again(bundle):
    (bundle / MODEL_CARD).write_text("# card v2\n")
    assert not verify_bundle(bundle).ok
    write_sha256sums(bundle)
    assert verify_bundle(bundle).ok


# --- lineage ---------------------------------------------------------------------------------

_EVAL = {
    "gate": {"passed": True, "reasons": ["fine"], "min_success_rate": 0.8},
    "suite": {"episodes": 30, "seed": 0},
    "summaries": [
        {"policy": "candidate", "success_rate": 0.9, "ci_low": 0.74, "ci_high": 0.97, "episodes": 30},
        {"policy": "hold_position", "success_rate": 0.0, "ci_low": 0.0, "ci_high": 0.11, "episodes": 30},
    ],
}


def test_lineage_lists_exactly_the_raw_files_of_the_manifest(dataset: CuratedDataset):
    manifest = dataset.built.manifest
    lineage = build_lineage(release={"name": "reach", "version": "1"}, policy={"version": "p1"},
                            dataset_manifest=manifest, evaluation=_EVAL)
    expected = {(f["key"], f["sha256"]) for e in manifest["episodes"] for f in e["raw_files"]}
    assert {(r["key"], r["sha256"]) for r in lineage["raw_files"]} == expected
    assert [r["key"] for r in lineage["raw_files"]] == sorted(r["key"] for r in lineage["raw_files"])
    assert [(r["key"], r["sha256"]) for r in lineage["raw_files"]] == [
        (f["key"], f["sha256"]) for f in manifest["raw_files"]]
    for r in lineage["raw_files"]:
        assert (r["robot"], r["date"]) == (ROBOT, DAY)
        assert r["episodes"] == sum(any(f["key"] == r["key"] for f in e["raw_files"]) for e in manifest["episodes"])
    assert [e["episode_id"] for e in lineage["episodes"]] == [e["episode_id"] for e in manifest["episodes"]]
    assert lineage["dataset"]["version"] == dataset.built.version
    assert lineage["evaluation"] == {"gate": _EVAL["gate"], "suite": _EVAL["suite"], "success_rate": 0.9}
    assert lineage_summary(lineage) == {ROBOT: {DAY: len(manifest["episodes"])}}


def test_lineage_counts_shared_files_and_summarizes_by_robot_day():
    def episode(eid, robot, date, keys):
        return {"episode_id": eid, "episode_index": 0, "split": "train", "robot": robot, "date": date,
                "outcome": "success", "num_frames": 3, "start_ns": 0, "end_ns": 1,
                "raw_files": [{"key": k, "sha256": k[-1] * 64} for k in keys]}

    manifest = {"name": "d", "version": "v", "spec": {}, "embodiment": {}, "splits": {}, "frames": 9, "episodes": [
        episode("e1", "r2", "2026-03-02", ["raw/robot=r2/date=2026-03-02/b"]),
        episode("e2", "r1", "2026-03-01", ["raw/robot=r1/date=2026-03-01/a"]),
        episode("e3", "r2", "2026-03-02", ["raw/robot=r2/date=2026-03-02/b", "raw/robot=r2/date=2026-03-02/c"]),
    ]}
    lineage = build_lineage(release={}, policy={}, dataset_manifest=manifest, evaluation=_EVAL)
    assert [(r["key"][-1], r["episodes"], r["robot"]) for r in lineage["raw_files"]] == [
        ("a", 1, "r1"), ("b", 2, "r2"), ("c", 1, "r2")]
    assert lineage_summary(lineage) == {"r1": {"2026-03-01": 1}, "r2": {"2026-03-02": 2}}


def test_lineage_is_written_as_sorted_json(tmp_path, dataset: CuratedDataset):
    lineage = build_lineage(release={"name": "reach"}, policy={}, dataset_manifest=dataset.built.manifest,
                            evaluation=_EVAL)
    write_lineage(tmp_path, lineage)
    assert json.loads((tmp_path / LINEAGE).read_text()) == lineage


def test_model_card_names_its_sources():
    card = model_card(
        release={"name": "reach", "version": "3"},
        policy={"embodiment": "flywheel_arm2", "obs_names": list(OBS_NAMES), "action_names": ["a", "b"], "fps": 20,
                "version": "p1", "mlflow_run_id": "run9"},
        dataset={"name": "reach", "version": "d1", "tasks": ["reach_target"], "episodes": 5, "robots": ["r101"],
                 "date_from": DAY, "date_to": DAY},
        evaluation=_EVAL, parity={"opset": OPSET, "inputs": 64, "max_abs_error": 1e-7, "mean_abs_error": 1e-8},
    )
    assert card.startswith("# Model card: reach 3")
    assert "float32[batch, 6]" in card and "MLflow run `run9`" in card and f"`{LINEAGE}`" in card
    assert "| candidate | 90.0% | 74.0% – 97.0% |" in card and "Gate: passed" in card
