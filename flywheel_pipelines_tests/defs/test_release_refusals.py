"""release_bundle refuses on its own: each reason an evaluation may not release a candidate."""

import pytest

from flywheel_pipelines.defs.release.assets import gate_refusal


def summary(**over) -> dict:
    base = {"policy_version": "p2", "gate": {"passed": True, "reasons": []}, "golden": {"version": "g1"},
            "production": {"registered_version": "1"}}
    return {**base, **over}


@pytest.mark.parametrize(("evaluation", "golden_now", "production_now", "message"), [
    (summary(policy_version="p1"), "g1", "1", "evaluated policy p1 but the latest candidate is p2"),
    (summary(gate={"passed": False, "reasons": ["golden/3 regressed"]}), "g1", "1",
     "failed the evaluation gate: golden/3 regressed"),
    (summary(), "g2", "1", "golden set is now g2 (new field failures)"),
    (summary(), "g1", "2", "compared with production version 1, but production is now 2"),
    (summary(production={"registered_version": None}), "g1", "1", "production version none, but production is now 1"),
])
def test_a_stale_or_failed_evaluation_is_refused_with_the_reason(evaluation, golden_now, production_now, message):
    refusal = gate_refusal(evaluation, candidate="p2", golden_version=golden_now, production_now=production_now)
    assert refusal is not None and message in refusal


def test_a_passed_current_evaluation_is_released():
    assert gate_refusal(summary(), candidate="p2", golden_version="g1", production_now="1") is None
    first = summary(production={"registered_version": None})
    assert gate_refusal(first, candidate="p2", golden_version="g1", production_now=None) is None
