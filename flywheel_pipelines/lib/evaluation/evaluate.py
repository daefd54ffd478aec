"""One evaluation, end to end: scenarios -> every policy on the same scenarios -> comparison -> report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

from flywheel_pipelines.lib.evaluation.compare import CANDIDATE, PRODUCTION, Comparison, compare
from flywheel_pipelines.lib.evaluation.policies import BASELINES, BatchPolicy
from flywheel_pipelines.lib.evaluation.report import render
from flywheel_pipelines.lib.evaluation.suite import Suite, suite_scenarios
from flywheel_pipelines.lib.sim.scenario import EpisodeResult, Scenario


@dataclass(frozen=True)
class Evaluation:
    scenarios: list[Scenario]
    results: dict[str, list[EpisodeResult]]  # policy -> one result per scenario, in scenario order
    comparison: Comparison
    files: dict[str, bytes]  # the report: summary.json, report.md, report.html, PNGs

    def results_table(self) -> pa.Table:
        """Every episode of every policy (episodes.parquet)."""
        return pa.Table.from_pylist([r.to_dict() for rs in self.results.values() for r in rs])


def run_policies(policies: Mapping[str, BatchPolicy], scenarios: Sequence[Scenario], *,
                 threads: int | None = None, backend: str = "mujoco",
                 device: str = "auto") -> dict[str, list[EpisodeResult]]:
    """Each policy on every scenario through the batched evaluator: on the CPU (``mujoco``, one
    MuJoCo thread pool) or on MuJoCo Warp (``warp``; ``auto`` picks it when CUDA is present)."""
    import mujoco.rollout

    from flywheel_pipelines.lib.sim.batched import available_cores, evaluate_batched, resolve_backend

    backend = resolve_backend(backend)
    if backend == "warp":
        return {name: evaluate_batched(policy, scenarios, policy_name=name, backend="warp", device=device)
                for name, policy in policies.items()}
    threads = available_cores() if threads is None else threads
    out = {}
    with mujoco.rollout.Rollout(nthread=threads if threads > 1 else 0) as pool:
        for name, policy in policies.items():
            out[name] = evaluate_batched(policy, scenarios, policy_name=name, pool=pool)
    return out


def run_evaluation(candidate: BatchPolicy, *, suite: Suite, golden: Sequence[Scenario], identity: Mapping,
                   production: BatchPolicy | None = None, production_label: str | None = None,
                   seed: int | None = None, threads: int | None = None, backend: str = "mujoco",
                   device: str = "auto") -> Evaluation:
    """Evaluate ``candidate`` (and production, and the suite's baselines) on the suite's scenarios.

    ``identity`` is written into the summary as is (policy name and version, suite, golden set,
    production); the seed and scenario counts are added here. ``backend``/``device`` choose the
    simulator (:func:`run_policies`); the summary's schema does not depend on them.
    """
    scenarios = suite_scenarios(suite, golden, seed=seed)
    policies: dict[str, BatchPolicy] = {CANDIDATE: candidate}
    if production is not None:
        policies[PRODUCTION] = production
    policies.update({name: BASELINES[name] for name in suite.baselines})
    results = run_policies(policies, scenarios, threads=threads, backend=backend, device=device)
    sources = {s.scenario_id: s.source for s in scenarios}
    comparison = compare(results, suite, golden_sources=sources, production_label=production_label)
    counts: dict[str, int] = {}
    for s in scenarios:
        counts[s.group] = counts.get(s.group, 0) + 1
    full_identity = {**identity, "suite": suite.to_dict(), "seed": suite.seed if seed is None else seed,
                     "scenario_counts": counts}
    return Evaluation(scenarios, results, comparison, render(comparison, results, identity=full_identity))
