"""Episodes: decoded, time-aligned, segmented, standardized frames of one robot-day."""


import contextlib

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from flywheel_pipelines.defs.ingest.assets import log_manifest, manifest_key, open_log, raw_fleet_logs
from flywheel_pipelines.defs.k8s import INGEST_TAGS
from flywheel_pipelines.defs.partitions import ROBOT_DAY, robot_day
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import markdown
from flywheel_pipelines.lib.episodes.embodiment import DEFAULT_EMBODIMENT, Embodiment, load_embodiment
from flywheel_pipelines.lib.episodes.standardize import SourceFile, standardize
from flywheel_pipelines.lib.quality import CHECKS, QualityError, SuiteResult, validate_episodes
from flywheel_pipelines.lib.storage import Lake, staging_dir

OWNERS = ["team:robot-data"]
FRAMES = "frames.parquet"
EPISODE_TABLE = "episodes.parquet"
# Severity, chosen on purpose: an episode over the mapping's tolerance fails its check as an ERROR,
# but no check is blocking. A check judges a whole robot-day, and one flaky episode must not hold
# the day's clean episodes back from the catalog; the failing ids are in the check's metadata, and
# curation leaves those episodes out of datasets unless its config asks for them.
CHECK_SEVERITY = dg.AssetCheckSeverity.ERROR
CHECK_NOTE = " ERROR for any failing episode, not blocking: curation leaves failing episodes out."


def episodes_prefix(robot: str, day: str) -> str:
    return f"episodes/robot={robot}/date={day}"


class EpisodesConfig(dg.Config):
    embodiment: str = Field(default=DEFAULT_EMBODIMENT, description="Embodiment mapping name or YAML path.")


def ingest_episodes(store: Lake, robot: str, day: str, emb: Embodiment):
    """Standardize, validate and publish one robot-day from its stored manifest; returns
    (standardize result, GX verdict). Shared by ``episodes`` (hot days) and ``episode_archive``."""
    manifest = store.read_json(manifest_key(robot, day))
    usable = [f for f in manifest["files"] if f["verdict"] != "rejected"]
    if not usable:
        raise dg.Failure(f"robot {robot} on {day}: every raw file was rejected by log_manifest")
    with contextlib.ExitStack() as stack:
        files = [SourceFile(f["key"], stack.enter_context(open_log(store, f["key"])), f["sha256"]) for f in usable]
        result = standardize(files, emb, robot=robot, day=day)
    # Validated before publishing: a suite that cannot run must not leave an unrecorded table behind.
    try:
        verdict = validate_episodes(result.episodes, emb)
    except QualityError as exc:
        raise dg.Failure(f"{episodes_prefix(robot, day)}/{EPISODE_TABLE}: {exc}") from None
    with staging_dir() as tmp:
        pq.write_table(result.frames, tmp / FRAMES, compression="zstd")
        pq.write_table(result.episodes, tmp / EPISODE_TABLE, compression="zstd")
        store.publish_dir(episodes_prefix(robot, day), tmp, replace=True)
    return result, verdict


@dg.asset(
    deps=[log_manifest, raw_fleet_logs],  # the manifest says which files are usable; frames come from the raw bytes
    partitions_def=ROBOT_DAY,
    group_name="episodes",
    kinds={"python", "parquet"},
    owners=OWNERS,
    pool="ingest",  # re-runs and backfills of episodes count against the ingest limit too
    op_tags=INGEST_TAGS,
    check_specs=[dg.AssetCheckSpec(name, asset="episodes", description=d + CHECK_NOTE, blocking=False)
                 for name, d in CHECKS.items()],
)
def episodes(context: dg.AssetExecutionContext, config: EpisodesConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Standardized frames (int64 ns clock, one row per frame) and an episode table with
    outcome, tags, source files and quality figures, for one robot-day."""
    robot, day = robot_day(context)
    store = lake.lake()
    emb = load_embodiment(config.embodiment)
    result, verdict = ingest_episodes(store, robot, day, emb)
    table = result.episodes

    observed = {"sync_skew": {"max_skew_ms": float(pc.max(table["max_skew_ms"]).as_py() or 0.0),
                              "tolerance_skew_ms": emb.max_skew_ms},
                "gap_tolerance": {"max_gap_ms": float(pc.max(table["max_gap_ms"]).as_py() or 0.0),
                                  "tolerance_gap_ms": emb.max_gap_ms}}
    checks = [check_result(verdict, name, observed.get(name, {})) for name in CHECKS]
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
            "embodiment": f"{emb.name} v{emb.version} ({emb.content_hash})",
            "gx_suite": verdict.suite,
            "quality_failing_episodes": verdict.failing_episodes(),
            "episodes_table": dg.MetadataValue.md(preview),
        },
        check_results=checks,
    )


def check_result(verdict: SuiteResult, check: str, figures: dict) -> dg.AssetCheckResult:
    """One episode check from the GX suite's verdict: failing ids, worst value vs tolerance, the expectations."""
    failing = verdict.failing_episodes(check)
    total = len(verdict.episode_ids)
    return dg.AssetCheckResult(
        check_name=check,
        passed=not failing,
        severity=CHECK_SEVERITY,
        description=f"{len(failing)} of {total} episodes fail" if failing else f"all {total} episodes pass",
        metadata={
            "episodes_failing": failing,
            "failing_count": len(failing),
            "episodes_checked": total,
            **figures,
            "observed_vs_tolerance": verdict.observed(check),
            "gx_suite": verdict.suite,
            "expectations": dg.MetadataValue.md(verdict.markdown(check)),
        },
    )
