"""Tests for evaluation: Wilson intervals, the seeded simulation suite, the gate and the report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flywheel_pipelines.lib.evaluation.report import (
    GateVerdict,
    gate,
    report_markdown,
    success_plot_png,
    summarize,
    summary_dict,
)
from flywheel_pipelines.lib.evaluation.rollout import EpisodeResult, expert_policy, hold_policy, run_suite
from flywheel_pipelines.lib.evaluation.stats import wilson_interval
from flywheel_pipelines.lib.sim.robot import MAX_EPISODE_STEPS, SUCCESS_HOLD_STEPS, SUCCESS_RADIUS_M

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Z = 1.959964

# --- Wilson interval -------------------------------------------------------------------------


def _wilson_by_quadratic(k: int, n: int) -> tuple[float, float]:
    """The Wilson bounds as the roots of (p_hat - p)^2 = z^2 p (1 - p) / n (an independent form)."""
    p_hat, z2 = k / n, Z * Z
    a, b, c = 1 + z2 / n, -(2 * p_hat + z2 / n), p_hat * p_hat
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Reference values (z = 1.96): 0/10 -> upper z^2/(n+z^2); n/n mirrors it; 5/10 symmetric.
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        (1, 10, 0.0179, 0.4042),
        (27, 30, 0.7438, 0.9654),
        (0, 30, 0.0, 0.1135),
    ],
)
def test_wilson_interval_reference_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)
    ref_lo, ref_hi = _wilson_by_quadratic(k, n)
    assert lo == pytest.approx(max(0.0, ref_lo), abs=1e-12) and hi == pytest.approx(min(1.0, ref_hi), abs=1e-12)


def test_wilson_interval_closed_forms_at_the_edges():
    for n in (1, 7, 10, 30, 69, 200):
        assert wilson_interval(0, n)[1] == pytest.approx(Z * Z / (n + Z * Z), abs=1e-12)
        assert wilson_interval(n, n)[0] == pytest.approx(n / (n + Z * Z), abs=1e-12)


@pytest.mark.parametrize("n", [10, 30, 69, 100])
def test_wilson_interval_contains_the_estimate_at_0_of_n_and_n_of_n(n):
    # Exactly 0 and 1, not 1e-17 / 0.9999999999999999: the interval must contain p_hat (and the
    # report's error bars, rate - low and high - rate, must not go negative).
    assert wilson_interval(0, n)[0] == 0.0
    assert wilson_interval(n, n)[1] == 1.0


def test_wilson_interval_properties():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for n in (3, 10, 50):
        for k in range(1, n):  # the edges k = 0, n have their own test
            lo, hi = wilson_interval(k, n)
            assert 0.0 < lo < k / n < hi < 1.0
            mirror_lo, mirror_hi = wilson_interval(n - k, n)
            assert lo == pytest.approx(1 - mirror_hi, abs=1e-12) and hi == pytest.approx(1 - mirror_lo, abs=1e-12)
    # More evidence narrows the interval; a wider z widens it.
    assert np.diff(wilson_interval(50, 100)) < np.diff(wilson_interval(5, 10))
    assert np.diff(wilson_interval(5, 10, z=2.576)) > np.diff(wilson_interval(5, 10))


# --- rollouts --------------------------------------------------------------------------------

N_EVAL = 30


@pytest.fixture(scope="module")
def suite() -> dict[str, list[EpisodeResult]]:
    return {
        "expert": run_suite(expert_policy, name="expert", episodes=N_EVAL, seed=0),
        "hold_position": run_suite(hold_policy, name="hold_position", episodes=N_EVAL, seed=0),
    }


def test_run_suite_is_deterministic(suite):
    again = run_suite(expert_policy, name="expert", episodes=5, seed=0)
    assert again == suite["expert"][:5]  # episode i does not depend on how many episodes run
    other = run_suite(expert_policy, name="expert", episodes=5, seed=1)
    assert [r.final_error_m for r in other] != [r.final_error_m for r in again]


def test_expert_succeeds_and_holding_still_does_not(suite):
    expert, hold = summarize(suite["expert"]), summarize(suite["hold_position"])
    assert expert.episodes == hold.episodes == N_EVAL
    assert expert.success_rate >= 0.9
    assert hold.successes == 0 and hold.success_rate == 0.0 and hold.mean_time_to_goal_s is None
    # The trivial policy leaves the fingertip where the task put it: at least 8 cm off.
    assert all(r.final_error_m >= 0.075 for r in suite["hold_position"])
    assert all(r.steps == MAX_EPISODE_STEPS for r in suite["hold_position"])


def test_episode_results_are_consistent(suite):
    for r in suite["expert"]:
        assert (r.policy, r.seed) == ("expert", 0)
        assert r.min_error_m <= r.final_error_m
        if r.success:
            assert r.final_error_m < SUCCESS_RADIUS_M
            assert SUCCESS_HOLD_STEPS <= r.steps <= MAX_EPISODE_STEPS
            # Time to goal is the start of the final hold streak.
            assert r.time_to_goal_s == pytest.approx((r.steps - SUCCESS_HOLD_STEPS + 1) / 20)
        else:
            assert r.time_to_goal_s is None and r.steps == MAX_EPISODE_STEPS
        assert 0.8 <= r.gain_scale <= 1.25 and 0.0 <= r.latency_ms <= 40.0
    assert [r.episode for r in suite["expert"]] == list(range(N_EVAL))
    assert suite["expert"][0].to_dict()["policy"] == "expert"


def test_non_finite_action_is_an_error_not_a_score():
    with pytest.raises(ValueError, match="non-finite action at step 1 of episode 0"):
        run_suite(lambda obs: np.array([np.nan, 0.0]), name="broken", episodes=1, seed=0)


# --- summary and gate ------------------------------------------------------------------------


def _results(name: str, successes: int, n: int) -> list[EpisodeResult]:
    return [
        EpisodeResult(policy=name, episode=i, seed=0, success=i < successes, steps=10 if i < successes else 70,
                      time_to_goal_s=0.3 if i < successes else None, final_error_m=0.01 if i < successes else 0.1,
                      min_error_m=0.01, joint_limit_hits=1 if i == 0 else 0, gain_scale=1.0, latency_ms=0.0)
        for i in range(n)
    ]


def test_summarize():
    s = summarize(_results("cand", 27, 30))
    assert (s.policy, s.episodes, s.successes, s.success_rate) == ("cand", 30, 27, 0.9)
    assert (s.ci_low, s.ci_high) == wilson_interval(27, 30)
    assert s.mean_time_to_goal_s == pytest.approx(0.3) and s.joint_limit_hits == 1
    assert s.mean_final_error_m == pytest.approx((27 * 0.01 + 3 * 0.1) / 30)
    assert summary_dict(s)["successes"] == 27
    with pytest.raises(ValueError, match="no evaluation episodes"):
        summarize([])


def test_gate_passes_a_clearly_better_candidate():
    verdict = gate(summarize(_results("cand", 27, 30)), summarize(_results("hold", 0, 30)), min_success_rate=0.8)
    assert verdict.passed and verdict.min_success_rate == 0.8
    assert len(verdict.reasons) == 1 and "90.0%" in verdict.reasons[0]
    assert verdict.to_dict() == {"passed": True, "reasons": list(verdict.reasons), "min_success_rate": 0.8}


@pytest.mark.parametrize(
    ("cand", "trivial", "minimum", "fragments"),
    [
        ((20, 30), (0, 30), 0.8, ["below the required 80.0%"]),
        ((10, 30), (8, 30), 0.3, ["not clearly better than the trivial policy"]),
        ((9, 30), (8, 30), 0.5, ["below the required 50.0%", "not clearly better"]),
        ((1, 1), (0, 1), 0.5, ["not clearly better"]),  # 1/1 is not evidence
        ((24, 30), (0, 30), 0.8001, ["below the required"]),  # exactly at the edge still fails
    ],
)
def test_gate_fails(cand, trivial, minimum, fragments):
    verdict = gate(summarize(_results("cand", *cand)), summarize(_results("hold", *trivial)),
                   min_success_rate=minimum)
    assert not verdict.passed
    assert len(verdict.reasons) == len(fragments)
    for reason, fragment in zip(verdict.reasons, fragments, strict=True):
        assert fragment in reason


def test_gate_at_exactly_the_minimum_passes():
    verdict = gate(summarize(_results("cand", 24, 30)), summarize(_results("hold", 0, 30)), min_success_rate=0.8)
    assert verdict.passed


# --- report ----------------------------------------------------------------------------------


def test_report_markdown_has_the_table_and_plot():
    summaries = [summarize(_results("candidate", 27, 30)), summarize(_results("hold_position", 0, 30))]
    verdict = gate(summaries[0], summaries[1], min_success_rate=0.8)
    md = report_markdown(policy_version="abc123def456", summaries=summaries, verdict=verdict,
                         suite={"episodes": 30, "seed": 7}, plot_name="success_by_policy.png")
    lines = md.splitlines()
    assert lines[0] == "# Evaluation of policy `abc123def456`"
    assert "**Gate: PASSED**" in md and "Suite: 30 episodes, seed 7" in md
    header = "| policy | success | 95% CI | mean time to goal | mean final error | joint-limit hits |"
    i = lines.index(header)
    assert lines[i + 1] == "| --- | --- | --- | --- | --- | --- |"
    assert lines[i + 2].startswith("| candidate | 27/30 (90.0%) | 74.4% – 96.5% | 0.30 s | 1.9 cm | 1 |")
    assert lines[i + 3].startswith("| hold_position | 0/30 (0.0%) | 0.0% – 11.4% | n/a s | 10.0 cm | 1 |")
    assert "![success by policy](success_by_policy.png)" in md


def test_report_markdown_shows_a_failed_gate():
    verdict = GateVerdict(False, ("reason one", "reason two"), 0.8)
    md = report_markdown(policy_version="v", summaries=[summarize(_results("c", 1, 2))], verdict=verdict,
                         suite={"episodes": 2, "seed": 0}, plot_name="p.png")
    assert "**Gate: FAILED** — reason one; reason two" in md


def test_success_plot_is_a_png(suite):
    summaries = [summarize(suite["expert"]), summarize(suite["hold_position"])]
    png = success_plot_png(summaries, suite)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5_000
    assert png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (900, 340)


def test_success_plot_of_a_perfect_policy():
    # 10/10 is the scripted expert's usual score on a small suite; the plot must not crash on it.
    perfect, none = _results("expert", 10, 10), _results("hold_position", 0, 10)
    png = success_plot_png([summarize(perfect), summarize(none)], {"expert": perfect, "hold_position": none})
    assert png.startswith(PNG_SIGNATURE)
