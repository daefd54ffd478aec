"""The sequential test a staged rollout runs after every batch of field logs.

What is compared: the *unassisted success rate* (an episode the policy finished successfully with
no intervention) of the canary cohort against the control cohort (robots that kept the control
release, or teleoperation before a first release) over the same days. The difference is
``delta = p_canary - p_control``.

The test: an always-valid confidence sequence for ``delta`` from the normal-mixture sequential
probability ratio test (mSPRT; Robbins 1970, Johari, Pekelis & Walsh, "Always valid inference",
Operations Research 2022). For an estimate ``d`` with variance ``V`` and a normal mixing
distribution N(0, tau^2) over the effect, the mixture likelihood ratio against ``delta = theta``

    L = sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta)^2 / (2 V (V + tau^2)))

is (asymptotically) a nonnegative martingale under ``delta = theta``; by Ville's inequality the
chance it *ever* exceeds 1/alpha is at most alpha, however often it is looked at. Inverting it
gives the radius ``r`` below: ``delta`` lies in ``d +- r`` at every look, simultaneously, with
probability >= 1 - alpha. A rollout looks after every upload day and stops as soon as it can, so
a fixed-sample test (a z-test per day) would inflate its false-alarm rate with every look; this
one does not. The decisions:

- **roll back** when the upper bound is below 0 (the canary is significantly worse). False
  rollbacks of a release as good as control are bounded by ``alpha_rollback`` over the whole
  rollout, measured in ``benchmarks/bench_rollout_aa.py``;
- **advance** when the lower bound is above ``-margin`` (non-inferiority: at most ``margin``
  worse, with confidence ``1 - alpha_advance``) and the stage's minimum exposure is met;
- **hold** otherwise: evidence is short.

The variance: per cohort, the larger of a cluster-robust variance over robots (episodes of one
robot share its hardware, site and operator: they are not independent) and the binomial variance
(one pseudo-success and one pseudo-failure, Agresti-Caffo, so 0/n and n/n do not give zero
variance) plus the robot-to-robot variance of success rates, estimated from the control arm's
many robots, weighted by the canary's robots' shares. A canary of two robots cannot estimate
how much robots differ from each other; the fleet can.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

ADVANCE, HOLD, ROLLBACK = "advance", "hold", "rollback"


@dataclass(frozen=True)
class TestConfig:
    """The test's knobs; every value is recorded with each decision."""

    alpha_rollback: float = 0.05
    alpha_advance: float = 0.05
    margin: float = 0.05  # non-inferiority margin on the success rate (5 points)
    tau: float = 0.10  # mixing standard deviation: the effect size the test is tuned to find fastest

    def __post_init__(self):
        for name in ("alpha_rollback", "alpha_advance"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in (0, 0.5), got {getattr(self, name)}")
        if not 0.0 <= self.margin < 1.0 or self.tau <= 0:
            raise ValueError(f"margin must be in [0, 1) and tau > 0 (got {self.margin}, {self.tau})")

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_TEST = TestConfig()


@dataclass(frozen=True)
class Arm:
    """One cohort's evidence: per robot-day cluster, (episodes, unassisted successes)."""

    clusters: tuple[tuple[int, int], ...]

    @property
    def n(self) -> int:
        return sum(c[0] for c in self.clusters)

    @property
    def successes(self) -> int:
        return sum(c[1] for c in self.clusters)

    @property
    def rate(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    def binomial_variance(self) -> float:
        n, s = self.n, self.successes
        if n == 0:
            return float("inf")
        p_ac = (s + 1) / (n + 2)
        return p_ac * (1 - p_ac) / (n + 2)

    def variance(self, *, between: float = 0.0) -> float:
        """Variance of the arm's success rate (see the module docstring). ``between``: the
        robot-to-robot variance of success rates, estimated elsewhere (from the control arm's
        many robots), for an arm of few robots whose own spread says little."""
        n, s = self.n, self.successes
        if n == 0:
            return float("inf")
        binomial = self.binomial_variance()
        floor = binomial + between * sum(c[0] ** 2 for c in self.clusters) / (n * n)
        k = len(self.clusters)
        if k < 2:
            return floor
        p = s / n
        resid = sum((ci_s - p * ci_n) ** 2 for ci_n, ci_s in self.clusters)
        return max(floor, k / (k - 1) * resid / (n * n))

    def between_variance(self) -> float:
        """Robot-to-robot variance of the success rate (method of moments: the spread of the
        robots' rates minus what their binomial noise explains; 0 with fewer than 3 robots)."""
        rated = [(ci_n, ci_s / ci_n) for ci_n, ci_s in self.clusters if ci_n > 0]
        if len(rated) < 3:
            return 0.0
        p = self.successes / self.n
        spread = sum((r - p) ** 2 for _, r in rated) / (len(rated) - 1)
        noise = sum(p * (1 - p) / ci_n for ci_n, _ in rated) / len(rated)
        return max(0.0, spread - noise)


def arm(clusters: Sequence[tuple[int, int]]) -> Arm:
    return Arm(tuple((int(n), int(s)) for n, s in clusters if n > 0))


def radius(variance: float, *, tau: float, alpha: float) -> float:
    """Half-width of the always-valid (1 - alpha) confidence sequence at this variance."""
    if not math.isfinite(variance):
        return float("inf")
    v, t2 = max(variance, 1e-12), tau * tau
    return math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))


@dataclass(frozen=True)
class Evidence:
    """The comparison at one look, and what it decides about regressions and non-inferiority."""

    canary_n: int
    canary_successes: int
    control_n: int
    control_successes: int
    delta: float  # canary rate - control rate (nan without data on both sides)
    std_err: float
    lower_advance: float  # lower bound of the (1 - alpha_advance) sequence
    upper_rollback: float  # upper bound of the (1 - alpha_rollback) sequence
    regressed: bool  # upper_rollback < 0
    non_inferior: bool  # lower_advance > -margin

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def compare(canary: Arm, control: Arm, config: TestConfig = DEFAULT_TEST) -> Evidence:
    """The always-valid comparison of two cohorts' unassisted success rates."""
    if canary.n == 0 or control.n == 0:
        nan = float("nan")
        return Evidence(canary.n, canary.successes, control.n, control.successes, nan, nan,
                        -math.inf, math.inf, False, False)
    delta = canary.rate - control.rate
    # The canary is a few robots: its own spread cannot show how much robots differ, the
    # control's many robots can.
    var = canary.variance(between=control.between_variance()) + control.variance()
    # A difference of two rates lies in [-1, 1]; the normal sequence does not know it.
    lower = max(-1.0, delta - radius(var, tau=config.tau, alpha=config.alpha_advance))
    upper = min(1.0, delta + radius(var, tau=config.tau, alpha=config.alpha_rollback))
    return Evidence(canary.n, canary.successes, control.n, control.successes, delta, math.sqrt(var),
                    lower, upper, upper < 0.0, lower > -config.margin)


def decide(evidence: Evidence, *, exposure_met: bool) -> tuple[str, str]:
    """(advance | hold | rollback, why). A regression rolls back at any look; advancing also
    needs the stage's minimum exposure."""
    e = evidence
    if e.canary_n == 0 or e.control_n == 0:
        side = "canary" if e.canary_n == 0 else "control"
        return HOLD, f"no {side} episodes yet"
    said = (f"canary {e.canary_successes}/{e.canary_n} vs control {e.control_successes}/{e.control_n}, "
            f"difference {e.delta:+.3f}")
    if e.regressed:
        return ROLLBACK, f"{said}: the canary is significantly worse (upper bound {e.upper_rollback:+.3f} < 0)"
    if e.non_inferior and exposure_met:
        return ADVANCE, f"{said}: non-inferior (lower bound {e.lower_advance:+.3f} above the margin)"
    if e.non_inferior:
        return HOLD, f"{said}: non-inferior so far, but the stage's minimum exposure is not met"
    return HOLD, f"{said}: evidence is short (bounds {e.lower_advance:+.3f} .. {e.upper_rollback:+.3f})"
