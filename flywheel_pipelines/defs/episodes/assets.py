"""Episodes: decoded, time-aligned, segmented, standardized frames of one robot-day."""


import dagster as dg
import pyarrow.compute as pc
from pydantic import Field

from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.k8s import INGEST_TAGS
from flywheel_pipelines.defs.partitions import ROBOT_DAY, robot_day
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.defs.ui_metadata import accounting_metadata, ingest_failure, table_metadata
from flywheel_pipelines.lib import markdown
from flywheel_pipelines.lib.episodes.embodiment import DEFAULT_EMBODIMENT, MappingError, load_embodiment
from flywheel_pipelines.lib.ingest import IngestError
from flywheel_pipelines.lib.ingest.episodes import accounting_totals, ingest_episodes
from flywheel_pipelines.lib.layout import episodes_prefix
from flywheel_pipelines.lib.quality import CHECKS, SuiteResult

OWNERS = ["team:robot-data"]
ACCOUNTED = "every_message_accounted"
ACCOUNTED_DESCRIPTION = (
    "Every message of every mapped topic is decoded and placed: in an episode, outside every episode, or "
    "dropped by a named rule; it fails, naming each file, topic, encoding and reason, when some are undecodable. "
    "ERROR, not blocking: the day's decodable messages are still published (a day that gives no frame at all "
    "fails its materialization instead).")
# Severity, chosen on purpose: an episode over the mapping's tolerance fails its check as an ERROR,
# but no check is blocking. A check judges a whole robot-day, and one flaky episode must not hold
# the day's clean episodes back from the catalog; the failing ids are in the check's metadata, and
# curation leaves those episodes out of datasets unless its config asks for them.
CHECK_SEVERITY = dg.AssetCheckSeverity.ERROR
CHECK_NOTE = " ERROR for any failing episode, not blocking: curation leaves failing episodes out."


class EpisodesConfig(dg.Config):
    embodiment: str = Field(default=DEFAULT_EMBODIMENT, description="Embodiment mapping name or YAML path.")


@dg.asset(
    deps=["log_manifest", "raw_fleet_logs"],  # the manifest says which files are usable; frames come from the raw bytes
    partitions_def=ROBOT_DAY,
    group_name=group_of("episodes"),
    kinds={"python", "parquet"},
    owners=OWNERS,
    pool="ingest",  # re-runs and backfills of episodes count against the ingest limit too
    op_tags=INGEST_TAGS,
    check_specs=[*(dg.AssetCheckSpec(name, asset="episodes", description=d + CHECK_NOTE, blocking=False)
                   for name, d in CHECKS.items()),
                 dg.AssetCheckSpec(ACCOUNTED, asset="episodes", description=ACCOUNTED_DESCRIPTION, blocking=False)],
)
def episodes(context: dg.AssetExecutionContext, config: EpisodesConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Standardized frames (int64 ns clock, one row per frame) and an episode table with
    outcome, tags, source files and quality figures, for one robot-day."""
    robot, day = robot_day(context)
    store = lake.lake()
    try:
        emb = load_embodiment(config.embodiment)
    except MappingError as exc:
        raise dg.Failure(str(exc)) from None
    try:
        result, verdict = ingest_episodes(store, robot, day, emb)
    except IngestError as exc:
        raise ingest_failure(exc) from None
    table = result.episodes

    observed = {"sync_skew": {"max_skew_ms": float(pc.max(table["max_skew_ms"]).as_py() or 0.0),
                              "tolerance_skew_ms": emb.max_skew_ms},
                "gap_tolerance": {"max_gap_ms": float(pc.max(table["max_gap_ms"]).as_py() or 0.0),
                                  "tolerance_gap_ms": emb.max_gap_ms}}
    # A check's page lists every partition's result: each one says which robot-day it judged.
    where = {"robot": robot, "date": day, "partition": str(context.partition_key)}
    checks = [check_result(verdict, name, observed.get(name, {}), partition=where) for name in CHECKS]
    checks.append(accounted_check(result.accounting, partition=where))
    outcomes = table.column("outcome").to_pylist()
    preview = markdown.table(
        ["episode", "outcome", "frames", "max skew ms", "max gap ms", "issues"],
        [(r["episode_id"], r["outcome"], r["num_frames"], f"{r['max_skew_ms']:.1f}", f"{r['max_gap_ms']:.1f}",
          ", ".join(r["quality_issues"])) for r in table.to_pylist()],
    )
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(store.uri(episodes_prefix(robot, day))),
            "episodes": table.num_rows,
            "frames": result.frames.num_rows,
            "successes": outcomes.count("success"),
            "failures": outcomes.count("failure"),
            "quality_ok": int(sum(table.column("quality_ok").to_pylist())),
            "undecodable_messages": result.undecodable,
            **accounting_metadata(result.accounting),
            "embodiment": f"{emb.name} v{emb.version} ({emb.content_hash})",
            "gx_suite": verdict.suite,
            "quality_failing_episodes": verdict.failing_episodes(),
            "episodes_table": dg.MetadataValue.md(preview),
            **table_metadata(table.schema, table.num_rows, partition=True),
        },
        check_results=checks,
    )


def accounted_check(accounting: list[dict], *, partition: dict | None = None) -> dg.AssetCheckResult:
    """Fails when mapped messages were undecodable (or, which cannot happen, are not all placed).
    ``partition`` (robot, date, partition key) leads the metadata."""
    lost = [r for r in accounting if r["undecodable"]]
    unplaced = [r for r in accounting if r["read"] != r["undecodable"] + r["events"] + r["in_episodes"]
                + r["outside_episodes"] + sum(r["dropped"].values())]
    problems = [f"{r['file']}: {r['topic']} ({r['encoding']}): {r['undecodable']} of {r['read']} undecodable: {r['reason']}"
                for r in lost] + [f"{r['file']}: {r['topic']}: messages not placed" for r in unplaced]
    totals = accounting_totals(accounting)
    return dg.AssetCheckResult(
        check_name=ACCOUNTED,
        passed=not problems,
        severity=CHECK_SEVERITY,
        description="; ".join(problems) if problems else f"all {totals['read']} mapped messages decoded and placed",
        metadata={**(partition or {}), **{f"messages_{k}": v for k, v in totals.items()}, "problems": problems},
    )


def check_result(verdict: SuiteResult, check: str, figures: dict, *, partition: dict | None = None
                 ) -> dg.AssetCheckResult:
    """One episode check from the GX suite's verdict: the robot-day it judged (``partition``: robot, date,
    partition key), failing ids, worst value vs tolerance, the expectations."""
    failing = verdict.failing_episodes(check)
    total = len(verdict.episode_ids)
    return dg.AssetCheckResult(
        check_name=check,
        passed=not failing,
        severity=CHECK_SEVERITY,
        description=f"{len(failing)} of {total} episodes fail" if failing else f"all {total} episodes pass",
        metadata={
            **(partition or {}),
            "episodes_failing": failing,
            "failing_count": len(failing),
            "episodes_checked": total,
            **figures,
            "observed_vs_tolerance": verdict.observed(check),
            "gx_suite": verdict.suite,
            "expectations": dg.MetadataValue.md(verdict.markdown(check)),
        },
    )
