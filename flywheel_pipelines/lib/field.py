"""Field KPIs: how each policy version behaves on the fleet, from the episode catalog alone.

Per arm (a release ``<name>/<version>``, or ``teleoperated`` / ``unknown`` for episodes no
release drove) x robot x day:

- ``autonomous_episodes``: episodes a release drove (with or without interventions);
- ``unassisted_successes`` and ``success_rate``: episodes that ended in success with no
  intervention, over the arm's episodes, with a 95% Wilson interval;
- ``autonomy_hours``: the time the policy was in control: each autonomous episode's duration
  (``episode_start`` to ``episode_end``) minus the time under intervention;
- ``interventions_per_hour`` (of autonomy) and ``mtbi_s``, the mean time between interventions
  (autonomy seconds / interventions; empty without interventions).

For teleoperated episodes the same success rate is computed (success without a correction), so
a first release can be compared with the operators it replaces; autonomy figures are zero.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import pyarrow as pa

from flywheel_pipelines.lib import layout
from flywheel_pipelines.lib.episodes.control import AUTONOMOUS_MODES, TELEOPERATED, UNKNOWN
from flywheel_pipelines.lib.evaluation.stats import wilson_interval
from flywheel_pipelines.lib.rollout import sequential

FIELD_PREFIX = layout.FIELD
KPIS_FILE = layout.FIELD_KPIS
SUMMARY_FILE = layout.FIELD_SUMMARY


def kpis_prefix(version: str) -> str:
    return layout.field_kpis_prefix(version)


KPI_SCHEMA = pa.schema([
    ("arm", pa.string()), ("robot", pa.string()), ("date", pa.string()), ("episodes", pa.int64()),
    ("autonomous_episodes", pa.int64()), ("unassisted_successes", pa.int64()), ("success_rate", pa.float64()),
    ("success_low", pa.float64()), ("success_high", pa.float64()), ("interventions", pa.int64()),
    ("autonomy_hours", pa.float64()), ("interventions_per_hour", pa.float64()), ("mtbi_s", pa.float64()),
])


def arm_of(row: dict) -> str:
    """The arm an episode belongs to: its release, or how it was driven when no release did."""
    mode = row.get("control_mode") or UNKNOWN
    if mode in AUTONOMOUS_MODES and row.get("policy_version"):
        return f"{row.get('policy_name') or 'unknown'}/{row['policy_version']}"
    return TELEOPERATED if mode == TELEOPERATED else UNKNOWN


def unassisted_success(row: dict) -> bool:
    return row["outcome"] == "success" and not (row.get("intervention_count") or row.get("intervention"))


def figures(rows: list[dict]) -> dict:
    n = len(rows)
    auto = [r for r in rows if (r.get("control_mode") or UNKNOWN) in AUTONOMOUS_MODES]
    ok = sum(unassisted_success(r) for r in rows)
    lo, hi = wilson_interval(ok, n)
    interventions = sum(int(r.get("intervention_count") or 0) for r in auto)
    seconds = sum(max(0.0, float(r["duration_s"]) - float(r.get("intervention_s") or 0.0)) for r in auto)
    hours = seconds / 3600.0
    return {"episodes": n, "autonomous_episodes": len(auto), "unassisted_successes": ok,
            "success_rate": ok / n if n else math.nan, "success_low": lo, "success_high": hi,
            "interventions": interventions, "autonomy_hours": hours,
            "interventions_per_hour": interventions / hours if hours > 0 else None,
            "mtbi_s": seconds / interventions if interventions else None}


def compute(rows: Iterable[dict]) -> pa.Table:
    """The KPI table: one row per arm x robot x day (catalog rows in, quarantined ones included:
    a quarantine is about training data, the field happened)."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(arm_of(r), r["robot"], r["date"])].append(r)
    out = [{"arm": a, "robot": robot, "date": d, **figures(g)} for (a, robot, d), g in sorted(groups.items())]
    return pa.Table.from_pylist(out, schema=KPI_SCHEMA)


def arm_summary(rows: Iterable[dict]) -> dict[str, dict]:
    """Per arm, over all its robots and days (the same figures)."""
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_arm[arm_of(r)].append(r)
    return {a: {**figures(g), "robots": len({r["robot"] for r in g}), "days": sorted({r["date"] for r in g})}
            for a, g in sorted(by_arm.items())}


def clusters(rows: Iterable[dict]) -> list[tuple[int, int]]:
    """(episodes, unassisted successes) per robot: the sequential test's clusters."""
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        c = per[r["robot"]]
        c[0] += 1
        c[1] += int(unassisted_success(r))
    return [tuple(v) for _, v in sorted(per.items())]


def compare_with(rows: list[dict], arm: str, baseline: str,
                 config: sequential.TestConfig = sequential.DEFAULT_TEST) -> dict:
    """``arm`` against ``baseline`` on the days both ran (the robots that ran each, those days)."""
    mine = [r for r in rows if arm_of(r) == arm]
    theirs = [r for r in rows if arm_of(r) == baseline]
    days = sorted({r["date"] for r in mine} & {r["date"] for r in theirs})
    mine = [r for r in mine if r["date"] in days]
    theirs = [r for r in theirs if r["date"] in days]
    evidence = sequential.compare(sequential.arm(clusters(mine)), sequential.arm(clusters(theirs)), config)
    shared_robots = sorted({r["robot"] for r in mine} & {r["robot"] for r in theirs})
    return {"arm": arm, "baseline": baseline, "days": days, "shared_robots": shared_robots,
            "evidence": evidence.to_dict(), "regressed": evidence.regressed}


def production_arm(client, model: str) -> str:
    """The arm of the model's MLflow ``production`` version (``teleoperated`` when there is none:
    before a first release the operators are the fleet's production)."""
    from flywheel_pipelines.lib.evaluation import registry

    mv = registry.production_version(client, model) if client is not None else None
    version = mv.tags.get("flywheel.policy_version") if mv is not None else None
    return f"{model}/{version}" if version else TELEOPERATED


def report(rows: list[dict], *, production: str, config: sequential.TestConfig = sequential.DEFAULT_TEST) -> dict:
    """Everything the field_kpis asset publishes: per-arm figures, and each other arm against
    production on the days both ran (an arm that never overlapped production has no comparison)."""
    arms = arm_summary(rows)
    comparisons = []
    for a in arms:
        if a in (production, UNKNOWN) or (a == TELEOPERATED and production != TELEOPERATED):
            continue
        c = compare_with(rows, a, production, config)
        if c["days"]:
            comparisons.append(c)
    return {"production": production, "arms": arms, "comparisons": comparisons, "test": config.to_dict(),
            "regressed": sorted(c["arm"] for c in comparisons if c["regressed"])}
