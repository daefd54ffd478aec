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
# Every file a release bundle holds (besides SHA256SUMS): verify requires each of them, so a bundle
# whose file was deleted together with its checksum line does not pass.
BUNDLE_FILES = (ONNX, "policy_config.json", "parity.json", "evaluation.json", "EVALUATION.md", MODEL_CARD, LINEAGE)


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


def verify_bundle(bundle_dir: Path, *, required: tuple[str, ...] = BUNDLE_FILES) -> Verification:
    """Check every file against SHA256SUMS, that no unlisted file was added, and that the bundle
    holds every ``required`` file, listed: a SHA256SUMS with lines removed is incomplete."""
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
    if not listed:
        problems.append(f"{SUMS}: lists no file")
    for rel in required:
        if rel not in listed:
            problems.append(f"{rel}: required in a release bundle, not listed in {SUMS}"
                            + ("" if (bundle_dir / rel).is_file() else " (and missing)"))
    return Verification(not problems, len(listed), tuple(problems))


def _evaluation_section(evaluation: dict) -> str:
    """The model card's evaluation: suite and version, success by group next to production, the
    paired difference, golden scenarios, and the gate's reasons."""
    suite = evaluation["suite"]
    groups = evaluation.get("groups") or []
    by_group = evaluation.get("by_group") or {}
    policies = evaluation.get("policies") or [s["policy"] for s in evaluation["summaries"]]
    if by_group:
        by = {g: {s["policy"]: s for s in by_group[g]} for g in groups}
        rows = markdown.table(
            ["scenario group", *policies],
            [(g, *(f"{by[g][p]['success_rate']:.1%} ({by[g][p]['ci_low']:.1%} – {by[g][p]['ci_high']:.1%})"
                   for p in policies)) for g in groups])
    else:  # an evaluation summary of the first format: one row per policy
        rows = markdown.table(["policy", "success", "95% CI"],
                              [(s["policy"], f"{s['success_rate']:.1%}", f"{s['ci_low']:.1%} – {s['ci_high']:.1%}")
                               for s in evaluation["summaries"]])
    production = evaluation.get("production")
    if production:
        versus = (f"Compared with the production policy: `{production['registered_model']}` version "
                  f"{production['registered_version']} (policy `{production.get('policy_version') or '?'}`), "
                  "paired on the same scenarios and seeds.")
        comparison = evaluation.get("comparison") or {}
        if comparison:
            versus += "\n\n" + markdown.table(
                ["scenario group", "scenarios", "won / lost", "success difference (95% CI, Newcombe paired)"],
                [(g, c["scenarios"], f"{c['candidate_only']} / {c['production_only']}",
                  f"{c['success_diff']['estimate']:+.1%} ({c['success_diff']['low']:+.1%} to {c['success_diff']['high']:+.1%})")
                 for g, c in comparison.items()])
    else:
        versus = "No production policy existed at evaluation time (first release): gated on absolute criteria only."
    golden = evaluation.get("golden_scenarios") or []
    status = {}
    for g in golden:
        status[g["status"]] = status.get(g["status"], 0) + 1
    golden_line = (f"Golden regression set `{(evaluation.get('golden') or {}).get('version', '?')}`: {len(golden)} "
                   "scenarios from field failures and interventions (" + ", ".join(f"{n} {k}" for k, n in
                                                                                  sorted(status.items())) + ")."
                   if golden else "No golden regression scenarios yet.")
    counts = evaluation.get("scenario_counts") or {}
    return f"""## How well it works (simulation)
Suite `{suite.get('name', '?')}` version `{suite.get('version', '?')}`, seed {evaluation.get('seed', suite.get('seed'))}:
{', '.join(f"{n} {g}" for g, n in counts.items()) or '?'} scenarios; 95% Wilson intervals.

{rows}

{versus}

{golden_line}

Gate: {'passed' if evaluation['gate']['passed'] else 'FAILED'} — {'; '.join(evaluation['gate']['reasons'])}

Full report: `EVALUATION.md` (and `evaluation.json`).
"""


def model_card(*, release: dict, policy: dict, dataset: dict, evaluation: dict, parity: dict) -> str:
    """The human-readable summary that ships with a release."""
    return f"""# Model card: {release['name']} {release['version']}

## What it is
A `{policy['embodiment']}` policy (task: {', '.join(dataset['tasks'])}).
Input `observation` float32[batch, {len(policy['obs_names'])}]: {', '.join(policy['obs_names'])}.
Output `action` float32[batch, {len(policy['action_names'])}]: {', '.join(policy['action_names'])}.
Control rate: {policy['fps']} Hz. Runtime: ONNX (opset {parity['opset']}), file `{ONNX}`.

## Where it came from
- policy version `{policy['version']}`, MLflow run `{policy.get('mlflow_run_id')}`, registered model
  `{policy.get('registered_model')}` version {policy.get('registered_version')}
- dataset `{dataset['name']}` version `{dataset['version']}`: {dataset['episodes']} episodes from
  {len(dataset['robots'])} robots ({', '.join(dataset['robots'])}), {dataset['date_from']} .. {dataset['date_to']}
- full lineage down to raw files and their sha256: `{LINEAGE}`

{_evaluation_section(evaluation)}
## Export parity
ONNX Runtime vs PyTorch on {parity['inputs']} held-out observations: max abs error
{parity['max_abs_error']:.2e} (mean {parity['mean_abs_error']:.2e}).

## Limits
Evaluated in simulation only; not validated on hardware. Golden scenarios reproduce what the logs
show of a failure (start, goal, fitted dynamics, sensor noise), not what they cannot (encoder
calibration offsets, the controller's sensor delay).
"""


def write_lineage(bundle_dir: Path, lineage: dict) -> None:
    (bundle_dir / LINEAGE).write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
