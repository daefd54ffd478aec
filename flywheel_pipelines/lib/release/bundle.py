"""Release bundles: the files a robot team deploys, with checksums and a lineage manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flywheel_pipelines.lib import markdown
from flywheel_pipelines.lib.storage import sha256_file

SUMS = "SHA256SUMS"
LINEAGE = "lineage.json"
MODEL_CARD = "MODEL_CARD.md"
ONNX = "policy.onnx"


def write_sha256sums(bundle_dir: Path) -> str:
    """Write SHA256SUMS (``sha256sum -c`` format) over every other file; returns its text."""
    lines = []
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file() and p.name != SUMS):
        digest = sha256_file(path)
        lines.append(f"{digest}  {path.relative_to(bundle_dir).as_posix()}")
    text = "\n".join(lines) + "\n"
    (bundle_dir / SUMS).write_text(text)
    return text


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    problems: tuple[str, ...]


def verify_bundle(bundle_dir: Path) -> Verification:
    """Check every file against SHA256SUMS and that no unlisted file was added."""
    bundle_dir = Path(bundle_dir)
    sums = bundle_dir / SUMS
    if not sums.is_file():
        return Verification(False, 0, (f"{sums}: missing",))
    problems, listed = [], set()
    for lineno, line in enumerate(sums.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            digest, rel = line.split("  ", 1)
        except ValueError:
            problems.append(f"{sums}:{lineno}: malformed line")
            continue
        listed.add(rel)
        path = bundle_dir / rel
        if ".." in Path(rel).parts or not path.resolve().is_relative_to(bundle_dir.resolve()):
            problems.append(f"{sums}:{lineno}: path {rel!r} escapes the bundle")
        elif not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: checksum mismatch")
    for path in bundle_dir.rglob("*"):
        rel = path.relative_to(bundle_dir).as_posix()
        if path.is_file() and path.name != SUMS and rel not in listed:
            problems.append(f"{rel}: not listed in {SUMS}")
    return Verification(not problems, len(listed), tuple(problems))


def model_card(*, release: dict, policy: dict, dataset: dict, evaluation: dict, parity: dict) -> str:
    """The human-readable summary that ships with a release."""
    cand = evaluation["summaries"][0]
    rows = markdown.table(
        ["policy", "success", "95% CI"],
        [(s["policy"], f"{s['success_rate']:.1%}", f"{s['ci_low']:.1%} – {s['ci_high']:.1%}")
         for s in evaluation["summaries"]],
    )
    return f"""# Model card: {release['name']} {release['version']}

## What it is
A behaviour-cloning policy for `{policy['embodiment']}` (task: {', '.join(dataset['tasks'])}).
Input `observation` float32[batch, {len(policy['obs_names'])}]: {', '.join(policy['obs_names'])}.
Output `action` float32[batch, {len(policy['action_names'])}]: {', '.join(policy['action_names'])}.
Control rate: {policy['fps']} Hz. Runtime: ONNX (opset {parity['opset']}), file `{ONNX}`.

## Where it came from
- policy version `{policy['version']}`, MLflow run `{policy.get('mlflow_run_id')}`, registered model
  `{policy.get('registered_model')}` version {policy.get('registered_version')}
- dataset `{dataset['name']}` version `{dataset['version']}`: {dataset['episodes']} episodes from
  {len(dataset['robots'])} robots ({', '.join(dataset['robots'])}), {dataset['date_from']} .. {dataset['date_to']}
- full lineage down to raw files and their sha256: `{LINEAGE}`

## How well it works (simulation, {cand['episodes']} episodes, randomized physics)
{rows}

Gate: {'passed' if evaluation['gate']['passed'] else 'FAILED'} — {'; '.join(evaluation['gate']['reasons'])}

## Export parity
ONNX Runtime vs PyTorch on {parity['inputs']} held-out observations: max abs error
{parity['max_abs_error']:.2e} (mean {parity['mean_abs_error']:.2e}).

## Limits
Evaluated in simulation only; not validated on hardware. Trained on successful, intervention-free
episodes that passed the synchronization checks.
"""


def write_lineage(bundle_dir: Path, lineage: dict) -> None:
    (bundle_dir / LINEAGE).write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
