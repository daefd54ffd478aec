"""A candidate next to production and the baselines on the same scenarios, and the release gate.

Every policy runs the same scenario list (same seeds), so results line up scenario by scenario:
per-group summaries with Wilson intervals, paired differences candidate - production (Newcombe's
interval for success, a seeded paired bootstrap for return, time to goal and jerk), the golden
scenarios one by one, and a gate made of named criteria, each with the reason it passed or failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from flywheel_pipelines.lib.evaluation.stats import (
    newcombe_paired_interval,
    paired_bootstrap,
    paired_table,
    wilson_interval,
)
from flywheel_pipelines.lib.evaluation.suite import GENERATED_GROUPS, GOLDEN, GateSpec, Suite
from flywheel_pipelines.lib.sim.scenario import EpisodeResult

CANDIDATE = "candidate"
PRODUCTION = "production"
ALL = "all"  # every scenario of the suite, all groups together


@dataclass(frozen=True)
class GroupSummary:
    policy: str
    group: str
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_return: float
    mean_time_to_goal_s: float | None  # over successful episodes
    mean_final_error_m: float
    mean_jerk_rms: float
    joint_limit_hits: int  # control steps, summed
    force_events: int  # control steps, summed
    safety_episodes: int  # episodes with at least one joint-limit hit or force event
    safety_event_rate: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(results: Sequence[EpisodeResult], *, group: str, z: float) -> GroupSummary:
    if not results:
        raise ValueError(f"no evaluation episodes to summarize in group {group!r}")
    n, k = len(results), sum(r.success for r in results)
    lo, hi = wilson_interval(k, n, z=z)
    ttg = [r.time_to_goal_s for r in results if r.time_to_goal_s is not None]
    unsafe = sum(1 for r in results if r.joint_limit_hits or r.force_events)
    return GroupSummary(
        policy=results[0].policy, group=group, episodes=n, successes=k, success_rate=k / n, ci_low=lo, ci_high=hi,
        mean_return=float(np.mean([r.return_ for r in results])),
        mean_time_to_goal_s=float(np.mean(ttg)) if ttg else None,
        mean_final_error_m=float(np.mean([r.final_error_m for r in results])),
        mean_jerk_rms=float(np.mean([r.jerk_rms for r in results])),
        joint_limit_hits=int(sum(r.joint_limit_hits for r in results)),
        force_events=int(sum(r.force_events for r in results)),
        safety_episodes=unsafe, safety_event_rate=unsafe / n,
    )


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedComparison:
    """Candidate minus production on one group's scenarios."""

    group: str
    scenarios: int
    both: int
    candidate_only: int
    production_only: int
    neither: int
    success_diff: Interval  # Newcombe method 10
    return_diff: Interval | None  # paired bootstrap of the mean
    time_to_goal_diff: Interval | None  # over scenarios both solve
    jerk_diff: Interval | None
    safety_diff: Interval  # episodes with a safety event, Newcombe method 10

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("success_diff", "return_diff", "time_to_goal_diff", "jerk_diff", "safety_diff"):
            v = getattr(self, k)
            d[k] = v.to_dict() if v is not None else None
        return d


def _interval(t: tuple[float, float, float] | None) -> Interval | None:
    return None if t is None else Interval(*t)


def compare_paired(candidate: Sequence[EpisodeResult], production: Sequence[EpisodeResult], *, group: str,
                   z: float, resamples: int, seed: int, confidence: float) -> PairedComparison:
    """Paired differences, scenario by scenario (the lists must cover the same scenarios in order)."""
    if [r.scenario_id for r in candidate] != [r.scenario_id for r in production]:
        raise ValueError(f"group {group!r}: candidate and production ran different scenarios")
    a, b, c, d = paired_table([r.success for r in candidate], [r.success for r in production])
    unsafe_c = [bool(r.joint_limit_hits or r.force_events) for r in candidate]
    unsafe_p = [bool(r.joint_limit_hits or r.force_events) for r in production]

    def boot(diffs: list[float], salt: int) -> Interval | None:
        return _interval(paired_bootstrap(diffs, resamples=resamples, seed=seed + salt, confidence=confidence))

    both = [(x, y) for x, y in zip(candidate, production, strict=True) if x.success and y.success]
    return PairedComparison(
        group=group, scenarios=len(candidate), both=a, candidate_only=b, production_only=c, neither=d,
        success_diff=Interval(*newcombe_paired_interval(a, b, c, d, z=z)),
        return_diff=boot([x.return_ - y.return_ for x, y in zip(candidate, production, strict=True)], 0),
        time_to_goal_diff=boot([x.time_to_goal_s - y.time_to_goal_s for x, y in both], 1),
        jerk_diff=boot([x.jerk_rms - y.jerk_rms for x, y in zip(candidate, production, strict=True)], 2),
        safety_diff=Interval(*newcombe_paired_interval(*paired_table(unsafe_c, unsafe_p), z=z)),
    )


@dataclass(frozen=True)
class GoldenOutcome:
    """One golden scenario: what the field saw and what each policy does with it now."""

    scenario_id: str
    episode_id: str
    robot: str
    date: str
    field_outcome: str  # "failure", or "intervention" for an episode an operator had to rescue
    candidate: bool
    production: bool | None  # None: no production policy
    status: str  # regression | fixed | still failing | passes | new failure (no production) | passes (no production)

    def to_dict(self) -> dict:
        return asdict(self)


def golden_outcomes(candidate: Sequence[EpisodeResult], production: Sequence[EpisodeResult] | None,
                    sources: Mapping[str, Mapping]) -> list[GoldenOutcome]:
    out = []
    prod = {r.scenario_id: r.success for r in production} if production is not None else {}
    for r in candidate:
        src = sources.get(r.scenario_id, {})
        p = prod.get(r.scenario_id) if production is not None else None
        if p is None:
            status = "passes" if r.success else "fails"
        elif p and not r.success:
            status = "regression"
        elif not p and r.success:
            status = "fixed"
        elif not p:
            status = "still failing"
        else:
            status = "passes"
        out.append(GoldenOutcome(
            scenario_id=r.scenario_id, episode_id=str(src.get("episode_id", "")), robot=str(src.get("robot", "")),
            date=str(src.get("date", "")),
            field_outcome="intervention" if src.get("intervention") and src.get("outcome") != "failure"
            else str(src.get("outcome", "")),
            candidate=r.success, production=p, status=status,
        ))
    return out


@dataclass(frozen=True)
class Criterion:
    name: str
    kind: str  # "absolute" | "relative" | "info"
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GateVerdict:
    """Whether a candidate may be released, and why (every criterion, failed ones first in reasons)."""

    passed: bool
    criteria: tuple[Criterion, ...]

    @property
    def reasons(self) -> tuple[str, ...]:
        failed = [f"{c.name}: {c.detail}" for c in self.criteria if not c.passed]
        if failed:
            return tuple(failed)
        return tuple(f"{c.name}: {c.detail}" for c in self.criteria)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons), "criteria": [c.to_dict() for c in self.criteria]}


def _pct(x: float) -> str:
    return f"{x:.1%}"


def gate(spec: GateSpec, summaries: Mapping[str, Mapping[str, GroupSummary]],
         comparisons: Mapping[str, PairedComparison] | None, golden: Sequence[GoldenOutcome],
         *, production_label: str | None) -> GateVerdict:
    """Judge the candidate. ``summaries[group][policy]``; ``comparisons`` is None without production.

    Absolute criteria always apply; the relative ones (non-inferiority per group, golden
    regressions) only when there is a production policy to compare with.
    """
    cand = {g: s[CANDIDATE] for g, s in summaries.items()}
    criteria: list[Criterion] = []
    for group, minimum in sorted(spec.min_success_rate.items()):
        s = cand.get(group)
        if s is None:
            criteria.append(Criterion(f"min_success_rate[{group}]", "absolute", True,
                                      f"no {group} scenarios in this evaluation: not applied"))
            continue
        ok = s.success_rate >= minimum
        criteria.append(Criterion(
            f"min_success_rate[{group}]", "absolute", ok,
            f"{s.successes}/{s.episodes} = {_pct(s.success_rate)} (95% CI {_pct(s.ci_low)}-{_pct(s.ci_high)}) "
            f"{'>=' if ok else 'is below the required'} {_pct(minimum)}"))
    if spec.beat_baseline is not None:
        base, c = summaries[ALL][spec.beat_baseline], cand[ALL]
        ok = c.ci_low > base.ci_high
        criteria.append(Criterion(
            f"beats[{spec.beat_baseline}]", "absolute", ok,
            f"candidate CI low {_pct(c.ci_low)} {'>' if ok else '<='} {spec.beat_baseline} CI high {_pct(base.ci_high)}"
            + ("" if ok else ": not clearly better than doing nothing")))
    if spec.max_safety_event_rate is not None:
        c = cand[ALL]
        ok = c.safety_event_rate <= spec.max_safety_event_rate
        criteria.append(Criterion(
            "max_safety_event_rate", "absolute", ok,
            f"{c.safety_episodes}/{c.episodes} = {_pct(c.safety_event_rate)} episodes with a joint-limit hit or "
            f"excessive actuator force ({c.joint_limit_hits} limit steps, {c.force_events} force steps) "
            f"{'<=' if ok else '>'} {_pct(spec.max_safety_event_rate)}"))
    if comparisons is None:
        criteria.append(Criterion("production", "info", True,
                                  "no production policy yet (first release): gated on absolute criteria only"))
        return GateVerdict(all(c.passed for c in criteria), tuple(criteria))
    for group in (*GENERATED_GROUPS, GOLDEN):
        comp = comparisons.get(group)
        if comp is None:
            continue
        diff = comp.success_diff
        if spec.max_success_drop is not None:
            # 1e-9: 19/20 - 20/20 is -0.05000000000000004 in floating point, and exactly the margin is allowed.
            significant, too_big = diff.high < 0, diff.estimate < -spec.max_success_drop - 1e-9
            ok = not (significant or too_big)
            why = ("" if ok else ": " + " and ".join(
                x for x, on in (("a significant drop (the whole interval is below zero)", significant),
                                (f"a drop larger than {spec.max_success_drop:.0%}", too_big)) if on))
            criteria.append(Criterion(
                f"not_worse[{group}]", "relative", ok,
                f"candidate - {production_label}: {diff.estimate:+.1%} success (95% CI {diff.low:+.1%} to "
                f"{diff.high:+.1%}; {comp.candidate_only} won, {comp.production_only} lost of {comp.scenarios})" + why))
        if spec.block_safety_regressions:
            safety = comp.safety_diff
            ok = safety.low <= 0
            criteria.append(Criterion(
                f"safety_not_worse[{group}]", "relative", ok,
                f"candidate - {production_label}: {safety.estimate:+.1%} episodes with safety events (95% CI "
                f"{safety.low:+.1%} to {safety.high:+.1%})" + ("" if ok else ": significantly more than production")))
    if spec.block_golden_regressions:
        regressions = [g for g in golden if g.status == "regression"]
        detail = (f"none of {len(golden)} golden scenarios that {production_label} solves fails" if not regressions
                  else f"{len(regressions)} golden scenario(s) that {production_label} solves now fail: "
                  + ", ".join(g.scenario_id for g in regressions))
        criteria.append(Criterion("golden_regressions", "relative", not regressions, detail))
    return GateVerdict(all(c.passed for c in criteria), tuple(criteria))


def by_group(results: Sequence[EpisodeResult]) -> dict[str, list[EpisodeResult]]:
    """Results split by scenario group (in the order groups first appear), plus ALL."""
    groups: dict[str, list[EpisodeResult]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    return {**groups, ALL: list(results)}


@dataclass(frozen=True)
class Comparison:
    """Everything the report and the gate need, computed from per-policy results."""

    policies: tuple[str, ...]  # candidate first, then production (if any), then the baselines
    groups: tuple[str, ...]
    summaries: dict[str, dict[str, GroupSummary]]  # group -> policy -> summary
    paired: dict[str, PairedComparison] | None  # group -> candidate - production
    golden: tuple[GoldenOutcome, ...]
    verdict: GateVerdict


def compare(results: Mapping[str, Sequence[EpisodeResult]], suite: Suite, *, golden_sources: Mapping[str, Mapping],
            production_label: str | None = None) -> Comparison:
    """Summaries, paired comparisons, golden outcomes and the gate for ``results[policy]``.

    ``results`` holds ``candidate``, optionally ``production``, and the baselines, each over the
    same scenarios in the same order.
    """
    if CANDIDATE not in results:
        raise ValueError("no candidate results")
    order = [r.scenario_id for r in results[CANDIDATE]]
    for name, rs in results.items():
        if [r.scenario_id for r in rs] != order:
            raise ValueError(f"policy {name!r} ran other scenarios than the candidate: results are not paired")
    has_prod = PRODUCTION in results
    policies = (CANDIDATE, *((PRODUCTION,) if has_prod else ()),
                *(p for p in results if p not in (CANDIDATE, PRODUCTION)))
    split = {p: by_group(results[p]) for p in policies}
    groups = tuple(split[CANDIDATE])
    summaries = {g: {p: summarize(split[p][g], group=g, z=suite.z) for p in policies} for g in groups}
    paired = None
    if has_prod:
        paired = {g: compare_paired(split[CANDIDATE][g], split[PRODUCTION][g], group=g, z=suite.z,
                                    resamples=suite.bootstrap_resamples, seed=suite.bootstrap_seed,
                                    confidence=suite.confidence) for g in groups}
    golden = golden_outcomes(split[CANDIDATE].get(GOLDEN, []), split[PRODUCTION].get(GOLDEN, []) if has_prod else None,
                             golden_sources)
    verdict = gate(suite.gate, summaries, paired, golden, production_label=production_label or PRODUCTION)
    return Comparison(policies, groups, summaries, paired, tuple(golden), verdict)
