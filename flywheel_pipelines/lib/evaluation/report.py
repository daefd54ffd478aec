"""The evaluation report: success with Wilson intervals against baselines, a gate, plots."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from flywheel_pipelines.lib import markdown
from flywheel_pipelines.lib.evaluation.rollout import EpisodeResult
from flywheel_pipelines.lib.evaluation.stats import wilson_interval


@dataclass(frozen=True)
class PolicySummary:
    policy: str
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_time_to_goal_s: float | None
    mean_final_error_m: float
    joint_limit_hits: int


@dataclass(frozen=True)
class GateVerdict:
    """Whether a candidate may be released, and why."""

    passed: bool
    reasons: tuple[str, ...]
    min_success_rate: float

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons), "min_success_rate": self.min_success_rate}


def summarize(results: Sequence[EpisodeResult]) -> PolicySummary:
    if not results:
        raise ValueError("no evaluation episodes to summarize")
    n, k = len(results), sum(r.success for r in results)
    lo, hi = wilson_interval(k, n)
    ttg = [r.time_to_goal_s for r in results if r.time_to_goal_s is not None]
    return PolicySummary(
        policy=results[0].policy, episodes=n, successes=k, success_rate=k / n, ci_low=lo, ci_high=hi,
        mean_time_to_goal_s=float(np.mean(ttg)) if ttg else None,
        mean_final_error_m=float(np.mean([r.final_error_m for r in results])),
        joint_limit_hits=int(sum(r.joint_limit_hits for r in results)),
    )


def gate(candidate: PolicySummary, trivial: PolicySummary, *, min_success_rate: float) -> GateVerdict:
    """The release gate: the candidate must reach ``min_success_rate`` and beat the trivial
    policy with non-overlapping 95% intervals."""
    reasons = []
    if candidate.success_rate < min_success_rate:
        reasons.append(f"success rate {candidate.success_rate:.1%} is below the required {min_success_rate:.1%}")
    if candidate.ci_low <= trivial.ci_high:
        reasons.append(
            f"not clearly better than the trivial policy: candidate CI low {candidate.ci_low:.1%} <= "
            f"trivial CI high {trivial.ci_high:.1%}"
        )
    if not reasons:
        reasons.append(
            f"success {candidate.success_rate:.1%} (95% CI {candidate.ci_low:.1%}-{candidate.ci_high:.1%}) "
            f">= {min_success_rate:.1%} and above the trivial policy"
        )
        return GateVerdict(True, tuple(reasons), min_success_rate)
    return GateVerdict(False, tuple(reasons), min_success_rate)


def success_plot_png(summaries: Sequence[PolicySummary], results: dict[str, Sequence[EpisodeResult]]) -> bytes:
    """Success rate with 95% Wilson intervals per policy, and final-error distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    names = [s.policy for s in summaries]
    rates = np.array([s.success_rate for s in summaries])
    err = np.array([[s.success_rate - s.ci_low for s in summaries], [s.ci_high - s.success_rate for s in summaries]])
    colors = ["#2b6cb0" if i == 0 else "#a0aec0" for i in range(len(names))]
    ax1.bar(names, rates, yerr=err, capsize=6, color=colors)
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("success rate (95% Wilson CI)")
    ax1.set_title("Success by policy")
    for name in names:
        ax2.hist([r.final_error_m * 100 for r in results[name]], bins=20, alpha=0.55, label=name)
    ax2.set_xlabel("final fingertip error (cm)")
    ax2.set_ylabel("episodes")
    ax2.set_title("Final error distribution")
    ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def report_markdown(
    *, policy_version: str, summaries: Sequence[PolicySummary], verdict: GateVerdict, suite: dict,
    plot_name: str,
) -> str:
    lines = [
        f"# Evaluation of policy `{policy_version}`",
        "",
        f"**Gate: {'PASSED' if verdict.passed else 'FAILED'}** — " + "; ".join(verdict.reasons),
        "",
        f"Suite: {suite['episodes']} episodes, seed {suite['seed']}, per-robot physics randomized "
        "(friction, damping, actuator gain and latency, sensor noise).",
        "",
        markdown.table(
            ["policy", "success", "95% CI", "mean time to goal", "mean final error", "joint-limit hits"],
            [(s.policy, f"{s.successes}/{s.episodes} ({s.success_rate:.1%})", f"{s.ci_low:.1%} – {s.ci_high:.1%}",
              f"{_fmt(s.mean_time_to_goal_s, '.2f')} s", f"{s.mean_final_error_m * 100:.1f} cm", s.joint_limit_hits)
             for s in summaries],
        ),
        "",
        f"![success by policy]({plot_name})",
        "",
    ]
    return "\n".join(lines)


def summary_dict(summary: PolicySummary) -> dict:
    return asdict(summary)
