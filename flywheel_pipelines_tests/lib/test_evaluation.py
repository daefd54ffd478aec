"""Tests for evaluation: intervals, paired comparison, the gate, the report and its determinism."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flywheel_pipelines.lib.evaluation import report
from flywheel_pipelines.lib.evaluation.compare import (
    CANDIDATE,
    PRODUCTION,
    compare,
    compare_paired,
    golden_outcomes,
    summarize,
)
from flywheel_pipelines.lib.evaluation.evaluate import run_evaluation
from flywheel_pipelines.lib.evaluation.policies import OnnxPolicy, check_interface, hold_position, scripted_expert
from flywheel_pipelines.lib.evaluation.stats import (
    newcombe_paired_interval,
    paired_bootstrap,
    paired_table,
    wilson_interval,
)
from flywheel_pipelines.lib.evaluation.suite import parse_suite
from flywheel_pipelines.lib.sim.expert import expert_action
from flywheel_pipelines.lib.sim.robot import RobotProfile
from flywheel_pipelines.lib.sim.scenario import EpisodeResult, Scenario

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



# --- paired intervals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        # Newcombe (1998), paired data, method 10: example (a) 36/12/2/0 -> 0.0569 to 0.3404.
        ((36, 12, 2, 0), (0.2, 0.0569, 0.3404)),
        # Fagerland, Lydersen & Laake, "Statistical analysis of contingency tables", ch. 8 (Bentur et
        # al. 2009, airway hyper-responsiveness): Newcombe square-and-add -0.507 to -0.026.
        ((1, 1, 7, 12), (-0.2857, -0.5069, -0.0256)),
    ],
)
def test_newcombe_paired_interval_reference_values(table, expected):
    diff, low, high = newcombe_paired_interval(*table)
    assert (diff, low, high) == pytest.approx(expected, abs=1e-4)


def test_newcombe_paired_interval_properties():
    # Identical outcomes: the difference is 0 and the interval is symmetric around it.
    diff, low, high = newcombe_paired_interval(30, 0, 0, 0)
    assert diff == 0 and low == pytest.approx(-high) and high > 0
    # Swapping the policies mirrors the interval.
    d1, l1, h1 = newcombe_paired_interval(20, 7, 2, 11)
    d2, l2, h2 = newcombe_paired_interval(20, 2, 7, 11)
    assert (d1, l1, h1) == pytest.approx((-d2, -h2, -l2))
    # Pairing: the same marginal rates with concordant pairs give a narrower interval than with
    # discordant ones.
    concordant = newcombe_paired_interval(40, 5, 0, 15)
    discordant = newcombe_paired_interval(25, 20, 15, 0)
    assert concordant[0] == discordant[0] == pytest.approx(5 / 60)
    assert concordant[2] - concordant[1] < discordant[2] - discordant[1]
    for table in [(0, 0, 0, 10), (10, 0, 0, 0), (0, 10, 0, 0), (0, 0, 10, 0), (3, 4, 5, 6)]:
        d, lo, hi = newcombe_paired_interval(*table)
        assert -1.0 <= lo <= d <= hi <= 1.0
    assert newcombe_paired_interval(0, 0, 0, 0) == (0.0, -1.0, 1.0)
    assert paired_table([True, True, False, False], [True, False, True, False]) == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="different lengths"):
        paired_table([True], [])


def test_paired_bootstrap_is_deterministic_and_covers_the_mean():
    diffs = np.random.default_rng(3).normal(0.5, 1.0, 80)
    a = paired_bootstrap(diffs, resamples=2000, seed=0)
    assert a == paired_bootstrap(diffs, resamples=2000, seed=0)  # same seed, same interval
    assert a != paired_bootstrap(diffs, resamples=2000, seed=1)
    mean, low, high = a
    assert mean == pytest.approx(diffs.mean()) and low < mean < high
    # About mean +- 1.96 sd / sqrt(n).
    assert high - low == pytest.approx(2 * 1.96 * diffs.std() / np.sqrt(80), rel=0.15)
    assert paired_bootstrap([], resamples=10, seed=0) is None
    assert paired_bootstrap([2.0], resamples=10, seed=0) == (2.0, 2.0, 2.0)


# --- summaries, comparison and gate on constructed results ------------------------------------


def _r(policy: str, sid: str, group: str, success: bool, *, ret: float = -10.0, limit: int = 0,
       force: int = 0) -> EpisodeResult:
    return EpisodeResult(policy=policy, scenario_id=sid, group=group, seed=0, success=success,
                         steps=20 if success else 70, time_to_goal_s=0.8 if success else None, return_=ret,
                         final_error_m=0.01 if success else 0.1, min_error_m=0.01, jerk_rms=10.0,
                         joint_limit_hits=limit, force_events=force, gain_scale=1.0, latency_ms=0.0, mass_scale=1.0)


def _results(policy: str, outcomes: dict[str, list[bool]], **kw) -> list[EpisodeResult]:
    return [_r(policy, f"{g}/{i:04d}", g, ok, **kw) for g, oks in outcomes.items() for i, ok in enumerate(oks)]


GATE_SUITE = """
name: test
seed: 1
groups:
  nominal: {episodes: 20}
  randomized: {episodes: 20}
  golden: {}
gate:
  min_success_rate: {nominal: 0.8, randomized: 0.5}
  beat_baseline: hold_position
  max_safety_event_rate: 0.2
  max_success_drop: 0.05
  block_safety_regressions: true
  block_golden_regressions: true
"""


def _outcomes(nominal: int, randomized: int, golden: list[bool]) -> dict[str, list[bool]]:
    return {"nominal": [i < nominal for i in range(20)], "randomized": [i < randomized for i in range(20)],
            "golden": golden}


def _compare(cand: dict, prod: dict | None, **kw):
    suite = parse_suite(GATE_SUITE, source="test.yaml")
    results = {CANDIDATE: _results(CANDIDATE, cand, **kw)}
    if prod is not None:
        results[PRODUCTION] = _results(PRODUCTION, prod)
    results["hold_position"] = _results("hold_position", {g: [False] * len(v) for g, v in cand.items()})
    sources = {f"golden/{i:04d}": {"episode_id": f"e{i}", "robot": "r101", "date": "2026-11-01", "outcome": "failure",
                                   "intervention": False} for i in range(len(cand["golden"]))}
    return compare(results, suite, golden_sources=sources, production_label="production (v1)")


def test_summarize_counts_success_return_and_safety():
    rs = [_r("c", "nominal/0", "nominal", True, ret=-5.0, limit=2), _r("c", "nominal/1", "nominal", False, ret=-15.0),
          _r("c", "nominal/2", "nominal", True, ret=-10.0, force=1)]
    s = summarize(rs, group="nominal", z=1.959964)
    assert (s.episodes, s.successes, s.mean_return, s.mean_time_to_goal_s) == (3, 2, -10.0, 0.8)
    assert (s.ci_low, s.ci_high) == wilson_interval(2, 3)
    assert (s.joint_limit_hits, s.force_events, s.safety_episodes) == (2, 1, 2)
    assert s.safety_event_rate == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no evaluation episodes"):
        summarize([], group="golden", z=1.96)


def test_first_release_is_gated_on_absolute_criteria_and_says_so():
    c = _compare(_outcomes(19, 15, [True, False]), None)
    assert c.paired is None and c.verdict.passed
    names = [x.name for x in c.verdict.criteria]
    assert names == ["min_success_rate[nominal]", "min_success_rate[randomized]", "beats[hold_position]",
                     "max_safety_event_rate", "production"]
    assert "no production policy yet (first release)" in c.verdict.criteria[-1].detail
    assert [g.status for g in c.golden] == ["passes", "fails"]  # reported, not gated, without production


@pytest.mark.parametrize(
    ("cand", "failed"),
    [
        (_outcomes(15, 15, [True]), ["min_success_rate[nominal]"]),
        (_outcomes(19, 9, [True]), ["min_success_rate[randomized]"]),
        (_outcomes(2, 1, [False]), ["min_success_rate[nominal]", "min_success_rate[randomized]",
                                    "beats[hold_position]"]),
    ],
)
def test_absolute_criteria_fail_with_their_reason(cand, failed):
    c = _compare(cand, None)
    assert not c.verdict.passed
    assert [x.name for x in c.verdict.criteria if not x.passed] == failed
    assert all(r.split(":")[0] in failed for r in c.verdict.reasons)


def test_too_many_safety_events_fail_the_gate():
    c = _compare(_outcomes(20, 20, []), None, limit=1)
    assert not c.verdict.passed
    (bad,) = [x for x in c.verdict.criteria if not x.passed]
    assert bad.name == "max_safety_event_rate" and "40/40 = 100.0%" in bad.detail


def test_a_golden_regression_blocks_even_when_everything_else_is_better():
    # Better everywhere except one golden scenario production solves and the candidate fails.
    prod = _outcomes(17, 14, [True, True, False])
    cand = _outcomes(20, 19, [True, False, True])
    c = _compare(cand, prod)
    assert not c.verdict.passed
    assert [x.name for x in c.verdict.criteria if not x.passed] == ["golden_regressions"]
    assert c.verdict.reasons == ("golden_regressions: 1 golden scenario(s) that production (v1) solves now fail: "
                                 "golden/0001",)
    assert [g.status for g in c.golden] == ["passes", "regression", "fixed"]
    assert c.golden[1].episode_id == "e1" and c.golden[1].production and not c.golden[1].candidate


def test_a_clear_drop_against_production_fails_and_a_small_one_does_not():
    prod = _outcomes(20, 20, [True])
    # 6 of 20 randomized scenarios lost: a 30-point drop, beyond max_success_drop and significant.
    c = _compare(_outcomes(20, 14, [True]), prod)
    failed = {x.name: x for x in c.verdict.criteria if not x.passed}
    assert set(failed) == {"not_worse[randomized]"}
    detail = failed["not_worse[randomized]"].detail
    assert "-30.0% success" in detail and "a significant drop" in detail and "a drop larger than 5%" in detail
    assert c.paired["randomized"].production_only == 6 and c.paired["randomized"].candidate_only == 0
    # 2 of 20 lost: not significant at n = 20 (McNemar would agree), but a 10-point drop is too much.
    c = _compare(_outcomes(20, 18, [True]), prod)
    (bad,) = [x for x in c.verdict.criteria if not x.passed]
    assert bad.detail.endswith(": a drop larger than 5%") and "significant" not in bad.detail
    # One scenario lost of 20 is within the margin and not significant.
    ok = _compare(_outcomes(20, 19, [True]), prod)
    assert ok.verdict.passed, ok.verdict.reasons


def test_paired_comparison_needs_the_same_scenarios():
    a = _results(CANDIDATE, {"nominal": [True, False]})
    b = _results(PRODUCTION, {"nominal": [True, False]})
    assert compare_paired(a, b, group="nominal", z=1.96, resamples=100, seed=0, confidence=0.95).both == 1
    with pytest.raises(ValueError, match="different scenarios"):
        compare_paired(a, b[::-1], group="nominal", z=1.96, resamples=100, seed=0, confidence=0.95)
    suite = parse_suite(GATE_SUITE, source="t")
    with pytest.raises(ValueError, match="not paired"):
        compare({CANDIDATE: a, "hold_position": b[:1]}, suite, golden_sources={})


def test_golden_outcome_statuses():
    c = [_r(CANDIDATE, f"golden/{i}", "golden", ok) for i, ok in enumerate([True, False, True, False])]
    p = [_r(PRODUCTION, f"golden/{i}", "golden", ok) for i, ok in enumerate([True, True, False, False])]
    statuses = [g.status for g in golden_outcomes(c, p, {})]
    assert statuses == ["passes", "regression", "fixed", "still failing"]


# --- policies --------------------------------------------------------------------------------


def test_vectorized_expert_matches_the_scripted_expert_and_hold_holds():
    rng = np.random.default_rng(0)
    obs = (rng.normal(size=(200, 6)) * [1, 1, 1, 1, 0.2, 0.2]).astype(np.float32)
    assert np.array_equal(scripted_expert(obs), np.stack([expert_action(o) for o in obs]))
    assert np.array_equal(hold_position(obs), obs[:, :2])


def _linear_onnx(weights: np.ndarray) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["observation", "W"], ["action"])], "linear",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights.astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_onnx_policy_runs_a_batch():
    w = np.zeros((6, 2), np.float32)
    w[0, 0] = w[1, 1] = 1.0  # hold position, as an ONNX graph
    policy = OnnxPolicy(_linear_onnx(w))
    obs = np.random.default_rng(1).normal(size=(7, 6)).astype(np.float32)
    assert np.array_equal(policy(obs), obs[:, :2])


def test_a_policy_with_another_interface_is_refused():
    check_interface(("shoulder.pos", "elbow.pos", "shoulder.vel", "elbow.vel", "goal.x", "goal.y"),
                    ("shoulder.target", "elbow.target"), what="p")
    with pytest.raises(ValueError, match="expects observations"):
        check_interface(("goal.x", "goal.y", "shoulder.pos", "elbow.pos", "shoulder.vel", "elbow.vel"),
                        ("shoulder.target", "elbow.target"), what="p")


# --- a whole evaluation, and its report --------------------------------------------------------

RUN_SUITE = GATE_SUITE.replace("nominal: {episodes: 20}", "nominal: {episodes: 4}").replace(
    "randomized: {episodes: 20}", "randomized:\n    episodes: 6\n    ranges: {gain_scale: [0.8, 1.2], "
    "latency_s: [0.0, 0.03], pos_noise: [0.001, 0.003]}")
GOLDEN = [
    Scenario("golden/r101-e1", "golden", RobotProfile("r101", gain_scale=0.9, latency_s=0.02), (0.3, 1.2),
             (0.25, 0.05), seed=11, source={"episode_id": "r101-e1", "robot": "r101", "date": "2026-11-01",
                                            "outcome": "failure", "intervention": False}),
    Scenario("golden/r102-e2", "golden", RobotProfile("r102", pos_noise=0.003), (-0.5, 0.8), (0.15, -0.1),
             seed=12, source={"episode_id": "r102-e2", "robot": "r102", "date": "2026-11-02", "outcome": "success",
                              "intervention": True}),
]
IDENTITY = {"policy_name": "reach-bc", "policy_version": "abc123", "registered_model": "reach-bc",
            "registered_version": "2", "golden": {"version": "g1", "active": 2},
            "production": {"alias": "production", "registered_model": "reach-bc", "registered_version": "1",
                           "policy_version": "old"}}


def _evaluate(candidate=scripted_expert, production=scripted_expert, identity=IDENTITY, golden=GOLDEN):
    suite = parse_suite(RUN_SUITE, source="run.yaml")
    return run_evaluation(candidate, suite=suite, golden=golden, identity=identity, production=production,
                          production_label="production (v1)", threads=1)


@pytest.fixture(scope="module")
def evaluation():
    return _evaluate()


def test_every_policy_runs_the_same_scenarios(evaluation):
    ids = [s.scenario_id for s in evaluation.scenarios]
    assert ids[:4] == [f"nominal/{i:04d}" for i in range(4)] and ids[-2:] == ["golden/r101-e1", "golden/r102-e2"]
    assert set(evaluation.results) == {CANDIDATE, PRODUCTION, "scripted_expert", "hold_position"}
    for rs in evaluation.results.values():
        assert [r.scenario_id for r in rs] == ids
    table = evaluation.results_table()
    assert table.num_rows == 4 * len(ids) and "return_" in table.column_names


def test_the_expert_against_itself_passes_and_the_report_says_why(evaluation):
    doc = json.loads(evaluation.files[report.SUMMARY])
    assert doc["gate"]["passed"], doc["gate"]["reasons"]
    assert doc["comparison"]["nominal"]["success_diff"]["estimate"] == 0.0
    assert doc["summaries"][0]["policy"] == CANDIDATE and doc["seed"] == 1
    assert doc["scenario_counts"] == {"nominal": 4, "randomized": 6, "golden": 2}
    md = evaluation.files[report.REPORT_MD].decode()
    assert md.startswith("# Evaluation of `reach-bc` policy `abc123` (registered version 2)")
    assert "**Gate: PASSED**" in md and "Compared with **production**: registered model `reach-bc` version 1" in md
    assert "## Candidate - production, paired on the same scenarios" in md
    assert "| golden/r101-e1 | r101 | 2026-11-01 | failure |" in md
    assert "| golden/r102-e2 | r102 | 2026-11-02 | intervention |" in md
    assert f"![success by group]({report.SUCCESS_PLOT})" in md and "Newcombe" in md
    page = evaluation.files[report.REPORT_HTML].decode()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 2
    assert '<div class="verdict pass">' in page


def test_a_candidate_that_fails_what_production_solves_is_blocked_with_the_scenarios_named():
    ev = _evaluate(candidate=hold_position)
    doc = json.loads(ev.files[report.SUMMARY])
    assert not doc["gate"]["passed"]
    reasons = "\n".join(doc["gate"]["reasons"])
    assert "golden/r101-e1" in reasons and "golden/r102-e2" in reasons
    assert "golden_regressions: 2 golden scenario(s) that production (v1) solves now fail" in reasons
    md = ev.files[report.REPORT_MD].decode()
    assert "**Gate: FAILED** — the candidate must not be released:" in md
    assert "| golden/r101-e1 | r101 | 2026-11-01 | failure | pass | fail | regression |" in md


def test_without_production_the_report_says_first_release(evaluation):
    ident = {**IDENTITY, "production": None}
    ev = _evaluate(production=None, identity=ident)
    doc = json.loads(ev.files[report.SUMMARY])
    assert doc["comparison"] is None and doc["policies"] == [CANDIDATE, "scripted_expert", "hold_position"]
    md = ev.files[report.REPORT_MD].decode()
    assert "**No production policy yet**" in md and "first release, gated on absolute criteria only" in md
    # The candidate's own results do not depend on whether production ran beside it.
    assert ev.results[CANDIDATE] == evaluation.results[CANDIDATE]


def test_an_empty_golden_set_is_reported_as_such():
    ev = _evaluate(golden=[], identity={**IDENTITY, "golden": {"version": "g0", "active": 0}})
    doc = json.loads(ev.files[report.SUMMARY])
    assert doc["groups"] == ["nominal", "randomized", "all"] and doc["golden_scenarios"] == []
    assert doc["gate"]["passed"]
    assert "none of 0 golden scenarios" in " ".join(doc["gate"]["reasons"])
    assert "## Golden regression scenarios" not in ev.files[report.REPORT_MD].decode()


def test_the_plots_inline_as_small_pngs_for_the_ui(evaluation):
    import base64
    import io
    import re

    from PIL import Image

    md = report.plots_markdown(evaluation.files)
    images = re.findall(r"!\[([^\]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert [title for title, _ in images] == ["success by group", "return distributions"]
    for (_, data), name in zip(images, (report.SUCCESS_PLOT, report.RETURN_PLOT), strict=True):
        png, original = base64.b64decode(data), evaluation.files[name]
        with Image.open(io.BytesIO(png)) as small, Image.open(io.BytesIO(original)) as full:
            assert small.mode == "P" and small.size == full.size  # a palette, not a smaller picture
        assert len(png) < len(original) / 2, f"{name}: {len(png)} bytes inline vs {len(original)}"
    assert len(md.encode()) < 40_000
    assert report.plots_markdown(evaluation.files) == md  # deterministic, like the report
    assert report.plots_markdown({}) == ""


def test_a_plot_wider_than_the_ui_is_scaled_to_fit():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (2000, 500), (43, 108, 176, 255)).save(buf, format="PNG")
    with Image.open(io.BytesIO(report.compact_png(buf.getvalue()))) as small:
        assert small.size == (report.UI_PLOT_MAX_WIDTH, 240)


def _png_chunks(png: bytes) -> list[bytes]:
    chunks, i = [], 8
    while i < len(png):
        length = int.from_bytes(png[i:i + 4], "big")
        chunks.append(png[i + 4:i + 8])
        i += 12 + length
    return chunks


def test_the_report_is_byte_identical_for_the_same_inputs(evaluation):
    again = _evaluate()
    assert again.files.keys() == evaluation.files.keys()
    for name, data in evaluation.files.items():
        assert again.files[name] == data, f"{name} differs between two identical evaluations"
    for name in (report.SUCCESS_PLOT, report.RETURN_PLOT):
        png = evaluation.files[name]
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        # No text chunks (software version, creation time): only what is drawn.
        assert not {b"tEXt", b"iTXt", b"zTXt", b"tIME"} & set(_png_chunks(png))


def test_the_report_is_byte_identical_in_a_fresh_interpreter(evaluation, tmp_path):
    import hashlib
    import os
    import subprocess
    import sys

    script = (
        "import hashlib, json, sys\n"
        "from flywheel_pipelines_tests.lib.test_evaluation import _evaluate\n"
        "ev = _evaluate()\n"
        "json.dump({k: hashlib.sha256(v).hexdigest() for k, v in ev.files.items()}, sys.stdout)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "MPLCONFIGDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                         check=True)
    theirs = json.loads(out.stdout)
    assert theirs == {k: hashlib.sha256(v).hexdigest() for k, v in evaluation.files.items()}
