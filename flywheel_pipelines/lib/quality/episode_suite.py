"""The episode-quality suite: an embodiment mapping's tolerances as a Great Expectations 1.x
expectation suite, validated over an episode table (one robot-day's, or the catalog's).

The suite is built from the mapping alone (global and per-feature skew tolerance, gap tolerance),
so it is versioned with it: its name carries the mapping's name, version and content hash, and
the suite's own rule version. Each expectation belongs to one of the episode checks (``CHECKS``);
the answer is a plain :class:`SuiteResult` (no GX objects) with, per expectation, its verdict,
the worst value observed against its bound, and the ids of the episodes that fail it.

GX runs in an in-memory (ephemeral) context with analytics, progress bars and data docs off, so
it writes nothing to the working directory and sends nothing anywhere. It takes seconds to
import, so it is imported inside :func:`validate_episodes`, never at module import.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from flywheel_pipelines.lib import markdown
from flywheel_pipelines.lib.episodes.embodiment import Embodiment

if TYPE_CHECKING:
    import pandas as pd

SUITE_VERSION = 1  # bump when the rules in suite_rules change: the suite name changes with it
MIN_FRAMES = 2  # one transition; standardize calls shorter episodes "too_short"

CHECKS = {
    "monotonic_time": "Header stamps of every mapped stream never go backwards and every episode ends after it starts.",
    "no_nan": "No NaN in any standardized feature of an episode.",
    "sync_skew": "Every aligned sample of every mapped stream (features, cameras) lies within the mapping's skew "
    "tolerance (the stream's own max_skew_ms where the mapping gives one).",
    "gap_tolerance": "No stream under the mapping's global skew tolerance has a gap above the mapping's max_gap_ms.",
    "frame_count": f"Every episode has at least {MIN_FRAMES} frames.",
}

# The check each issue recorded by standardize (episode table column quality_issues) belongs to.
ISSUE_CHECKS = {
    "non_monotonic": "monotonic_time",
    "nan": "no_nan",
    "sync_skew": "sync_skew",
    "gap": "gap_tolerance",
    "too_short": "frame_count",
}

REQUIRED_COLUMNS = ("episode_id", "num_frames", "nan_count", "start_ns", "end_ns", "stream_quality")

# GX keeps a process-wide "current context"; one validation at a time keeps two threads
# (an in-process executor, a test runner) from swapping each other's context mid-run.
_GX_LOCK = threading.Lock()


class QualityError(ValueError):
    """An episode table the suite cannot validate, or a suite that could not run (names the problem)."""


def skew_column(feature: str) -> str:
    return f"skew_ms[{feature}]"


def gap_column(feature: str) -> str:
    return f"gap_ms[{feature}]"


def non_monotonic_column(feature: str) -> str:
    return f"non_monotonic[{feature}]"


@dataclass(frozen=True)
class Rule:
    """One expectation of the suite as plain data: which check it serves and what it bounds.

    ``expectation`` is the class name in ``great_expectations.expectations``; ``kwargs`` are its
    arguments (column, bounds).
    """

    check: str
    expectation: str
    kwargs: tuple[tuple[str, object], ...]
    description: str
    bound: str

    @property
    def column(self) -> str:
        args = dict(self.kwargs)
        if "column" in args:
            return str(args["column"])
        return f"{args['column_A']} >= {args['column_B']}"

    @property
    def rule_id(self) -> str:
        return f"{self.check}/{self.expectation}/{self.column}"


def _between(check: str, column: str, description: str, *, low: float | None = None, high: float | None = None,
             unit: str = "") -> Rule:
    kwargs: dict[str, object] = {"column": column}
    if low is not None:
        kwargs["min_value"] = low
    if high is not None:
        kwargs["max_value"] = high
    if low is not None and high is not None and low == high:
        bound = f"= {low:g}{unit}"
    elif high is not None:
        bound = f"<= {high:g}{unit}"
    else:
        bound = f">= {low:g}{unit}"
    return Rule(check, "ExpectColumnValuesToBeBetween", tuple(kwargs.items()), description, bound)


def _not_null(check: str, column: str, what: str) -> Rule:
    return Rule(check, "ExpectColumnValuesToNotBeNull", (("column", column),), f"{what} is recorded (not null/NaN)",
                "not null")


def streams(emb: Embodiment) -> list:
    """Every aligned stream of the mapping: its features, then its camera streams (``images``).

    Both carry key, topic, rule and an optional own ``max_skew_ms``, and standardize records the
    same figures for both in ``stream_quality``. (``getattr``: camera streams are new to the mapping.)
    """
    return [*emb.features, *getattr(emb, "images", ())]


def suite_rules(emb: Embodiment) -> list[Rule]:
    """The expectations the mapping asks of every episode, in report order.

    The gap tolerance applies to the streams under the global skew tolerance, as in
    ``standardize``: a feature with its own ``max_skew_ms`` is a slow stream by declaration
    (the goal, republished at 2 Hz), and its skew bound already limits how stale it may get.
    A missing per-stream figure fails the check it feeds: the episode cannot be shown to be
    within tolerance.
    """
    rules: list[Rule] = []
    for f in streams(emb):
        tol = f.max_skew_ms if f.max_skew_ms is not None else emb.max_skew_ms
        whose = "the feature's own" if f.max_skew_ms is not None else "the mapping's"
        col = skew_column(f.key)
        rules.append(_not_null("sync_skew", col, f"{f.key} skew ({f.topic})"))
        rules.append(_between("sync_skew", col, f"{f.key} ({f.topic}, rule {f.rule}) is aligned within "
                              f"{whose} skew tolerance", low=0.0, high=tol, unit=" ms"))
    for f in streams(emb):
        if f.max_skew_ms is not None:
            continue
        col = gap_column(f.key)
        rules.append(_not_null("gap_tolerance", col, f"{f.key} largest gap ({f.topic})"))
        rules.append(_between("gap_tolerance", col, f"{f.topic} has no gap above the mapping's gap tolerance",
                              low=0.0, high=emb.max_gap_ms, unit=" ms"))
    for f in streams(emb):
        col = non_monotonic_column(f.key)
        rules.append(_not_null("monotonic_time", col, f"{f.key} backwards-stamp count ({f.topic})"))
        rules.append(_between("monotonic_time", col, f"{f.topic} header stamps never go backwards", low=0, high=0))
    rules.append(Rule("monotonic_time", "ExpectColumnPairValuesAToBeGreaterThanB",
                      (("column_A", "end_ns"), ("column_B", "start_ns"), ("or_equal", True)),
                      "an episode ends at or after its start", "end >= start"))
    rules.append(_not_null("no_nan", "nan_count", "the NaN count"))
    rules.append(_between("no_nan", "nan_count", "no NaN in any standardized feature", low=0, high=0))
    rules.append(_not_null("frame_count", "num_frames", "the frame count"))
    rules.append(_between("frame_count", "num_frames", f"at least {MIN_FRAMES} frames", low=MIN_FRAMES))
    return rules


def suite_name(emb: Embodiment) -> str:
    """The suite's name: its rule version and the mapping's name, version and content hash."""
    return f"episode_quality.v{SUITE_VERSION}.{emb.name}.v{emb.version}.{emb.content_hash}"


def episode_frame(episodes: pa.Table, emb: Embodiment) -> pd.DataFrame:
    """The episode table flattened for the suite: one row per episode, per-stream figures
    (``skew_ms[<feature>]``, ``gap_ms[<feature>]``, ``non_monotonic[<feature>]``) as columns.

    A ``stream_quality`` that is not a JSON object, or lacks a feature, leaves that episode's
    figures missing (NaN), which fails the not-null expectation of the check they feed.

    Raises:
        QualityError: the table lacks a column the suite needs.
    """
    import numpy as np

    missing = [c for c in REQUIRED_COLUMNS if c not in episodes.column_names]
    if missing:
        raise QualityError(f"episode table lacks column(s) {missing} needed by suite {suite_name(emb)}")
    frame = episodes.select([c for c in REQUIRED_COLUMNS if c != "stream_quality"]).to_pandas()
    mapped = streams(emb)
    figures = {col: np.full(episodes.num_rows, np.nan) for f in mapped
               for col in (skew_column(f.key), gap_column(f.key), non_monotonic_column(f.key))}
    for i, text in enumerate(episodes.column("stream_quality").to_pylist()):
        try:
            recorded = json.loads(text) if text else {}
        except (TypeError, json.JSONDecodeError):
            recorded = {}
        if not isinstance(recorded, dict):
            continue
        for f in mapped:
            q = recorded.get(f.key)
            if not isinstance(q, dict):
                continue
            for col, name in ((skew_column(f.key), "max_skew_ms"), (gap_column(f.key), "max_gap_ms"),
                              (non_monotonic_column(f.key), "non_monotonic")):
                value = q.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    figures[col][i] = float(value)
    for col, values in figures.items():
        frame[col] = values
    return frame


@dataclass(frozen=True)
class ExpectationResult:
    """The verdict of one expectation over the table."""

    check: str
    expectation: str  # GX expectation type, e.g. expect_column_values_to_be_between
    column: str
    description: str
    bound: str
    success: bool
    unexpected_count: int
    failing_episodes: tuple[str, ...]
    worst: float | None  # the value furthest toward the bound (max for an upper bound, min for a lower)
    tolerance: float | None  # that bound (the mapping's tolerance for skew and gap)


@dataclass(frozen=True)
class SuiteResult:
    """What the suite said about an episode table."""

    suite: str
    episode_ids: tuple[str, ...]
    results: tuple[ExpectationResult, ...]
    seconds: float  # time spent in GX (context, suite, validation), import excluded

    @property
    def passed(self) -> bool:
        return all(r.success for r in self.results)

    def for_check(self, check: str) -> tuple[ExpectationResult, ...]:
        if check not in CHECKS:
            raise KeyError(f"no check named {check!r} (one of {sorted(CHECKS)})")
        return tuple(r for r in self.results if r.check == check)

    def check_passed(self, check: str) -> bool:
        return all(r.success for r in self.for_check(check))

    def failing_episodes(self, check: str | None = None) -> list[str]:
        """Sorted ids of the episodes failing ``check`` (any check when None)."""
        results = self.results if check is None else self.for_check(check)
        return sorted({e for r in results for e in r.failing_episodes})

    def failures_by_episode(self) -> dict[str, list[str]]:
        """Episode id -> the sorted names of the checks it fails (failing episodes only)."""
        out: dict[str, set[str]] = {}
        for r in self.results:
            for e in r.failing_episodes:
                out.setdefault(e, set()).add(r.check)
        return {e: sorted(checks) for e, checks in sorted(out.items())}

    def worst(self, check: str) -> float | None:
        """The largest worst-value among ``check``'s bounded expectations (None when none is finite)."""
        values = [r.worst for r in self.for_check(check) if r.worst is not None]
        return max(values) if values else None

    def markdown(self, check: str | None = None, *, max_ids: int = 5) -> str:
        """The expectation results as a compact Markdown table (one check's, or all)."""
        results = self.results if check is None else self.for_check(check)
        rows = []
        for r in results:
            ids = ", ".join(r.failing_episodes[:max_ids])
            if len(r.failing_episodes) > max_ids:
                ids += f", ... (+{len(r.failing_episodes) - max_ids})"
            row = (r.expectation.removeprefix("expect_"), f"`{r.column}`", r.bound,
                   "" if r.worst is None else f"{r.worst:g}", "pass" if r.success else "FAIL", r.unexpected_count, ids)
            rows.append(row if check else (r.check, *row))
        header = ["expectation", "column", "bound", "worst", "result", "failing", "episodes"]
        return markdown.table(header if check else ["check", *header], rows)

    def observed(self, check: str) -> dict[str, dict[str, float | None]]:
        """Column -> worst observed value and its tolerance, for ``check``'s bounded expectations."""
        return {r.column: {"worst": r.worst, "tolerance": r.tolerance} for r in self.for_check(check)
                if r.tolerance is not None}


def _raised(exception_info) -> str | None:
    """The message of an exception GX caught while evaluating an expectation, if any."""
    if not isinstance(exception_info, dict):
        return None
    if exception_info.get("raised_exception"):
        return str(exception_info.get("exception_message"))
    for value in exception_info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _worst(frame: pd.DataFrame, rule: Rule) -> float | None:
    args = dict(rule.kwargs)
    if rule.expectation != "ExpectColumnValuesToBeBetween" or frame.empty:
        return None
    values = frame[args["column"]].astype("float64")
    value = values.max() if "max_value" in args else values.min()
    return None if value is None or math.isnan(value) else float(value)


def _tolerance(rule: Rule) -> float | None:
    args = dict(rule.kwargs)
    value = args.get("max_value", args.get("min_value"))
    return None if value is None else float(value)


def _run_gx(frame: pd.DataFrame, rules: list[Rule], name: str, meta: dict) -> dict[str, tuple[bool, int, list[str]]]:
    """Run the suite in a fresh ephemeral GX context: rule id -> (success, unexpected count, failing ids)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    batch = (context.data_sources.add_pandas("episode_tables")
             .add_dataframe_asset("episodes")
             .add_batch_definition_whole_dataframe("episode_table"))
    expectations = [
        getattr(gx.expectations, r.expectation)(**dict(r.kwargs), description=r.description,
                                                meta={"rule": r.rule_id, "check": r.check})
        for r in rules
    ]
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations, meta=meta))
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=f"{name}.episodes", data=batch,
                                                                            suite=suite))
    result = validation.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["episode_id"]},
    )
    out: dict[str, tuple[bool, int, list[str]]] = {}
    for res in result.results:
        rule_id = res.expectation_config.meta["rule"]
        error = _raised(res.exception_info)
        if error is not None:
            raise QualityError(f"suite {name}: expectation {rule_id} could not be evaluated: {error}")
        details = res.result or {}
        ids = [str(row["episode_id"]) for row in details.get("unexpected_index_list") or []]
        out[rule_id] = (bool(res.success), int(details.get("unexpected_count") or 0), ids)
    return out


def validate_episodes(episodes: pa.Table, emb: Embodiment) -> SuiteResult:
    """Validate an episode table (standardize's schema) against the mapping's quality suite.

    Args:
        episodes: one row per episode, with at least ``REQUIRED_COLUMNS``.
        emb: the mapping whose tolerances the suite enforces.

    Returns:
        A :class:`SuiteResult`; ``failing_episodes(check)`` names the episodes over tolerance.

    Raises:
        QualityError: the table lacks a needed column, or GX could not evaluate an expectation.
    """
    name = suite_name(emb)
    rules = suite_rules(emb)
    frame = episode_frame(episodes, emb)
    meta = {"embodiment": emb.name, "embodiment_version": emb.version, "embodiment_hash": emb.content_hash,
            "suite_version": SUITE_VERSION}
    import great_expectations  # noqa: F401  (seconds on first use: kept out of the timing below)

    with _GX_LOCK:
        start = time.perf_counter()
        raw = _run_gx(frame, rules, name, meta)
        seconds = time.perf_counter() - start
    results = []
    for rule in rules:
        if rule.rule_id not in raw:
            raise QualityError(f"suite {name}: GX returned no result for expectation {rule.rule_id}")
        success, count, ids = raw[rule.rule_id]
        results.append(ExpectationResult(
            check=rule.check, expectation=_snake(rule.expectation), column=rule.column, description=rule.description,
            bound=rule.bound, success=success, unexpected_count=count, failing_episodes=tuple(sorted(set(ids))),
            worst=_worst(frame, rule), tolerance=_tolerance(rule),
        ))
    return SuiteResult(name, tuple(str(i) for i in frame["episode_id"]), tuple(results), seconds)


def _snake(class_name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in class_name).lstrip("_")
