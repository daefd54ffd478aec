"""Episodes: decoded, time-aligned, segmented, standardized frames of one robot-day."""


import contextlib

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from flywheel_pipelines.defs.ingest.assets import log_manifest, manifest_key
from flywheel_pipelines.defs.partitions import ROBOT_DAY, robot_day
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import markdown
from flywheel_pipelines.lib.episodes.embodiment import DEFAULT_EMBODIMENT, load_embodiment
from flywheel_pipelines.lib.episodes.standardize import SourceFile, standardize
from flywheel_pipelines.lib.storage import staging_dir

OWNERS = ["team:robot-data"]
FRAMES = "frames.parquet"
EPISODE_TABLE = "episodes.parquet"
CHECKS = {
    "monotonic_time": "Header stamps of every mapped stream never go backwards.",
    "no_nan": "No NaN in any standardized feature.",
    "sync_skew": "Every aligned sample lies within the mapping's skew tolerance and no stream has a gap "
    "above its gap tolerance (WARN: such episodes are kept but curated out).",
}


def episodes_prefix(robot: str, day: str) -> str:
    return f"episodes/robot={robot}/date={day}"


class EpisodesConfig(dg.Config):
    embodiment: str = Field(default=DEFAULT_EMBODIMENT, description="Embodiment mapping name or YAML path.")


@dg.asset(
    deps=[log_manifest],
    partitions_def=ROBOT_DAY,
    group_name="episodes",
    kinds={"python", "parquet"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec(name, asset="episodes", description=d) for name, d in CHECKS.items()],
)
def episodes(context: dg.AssetExecutionContext, config: EpisodesConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Standardized frames (int64 ns clock, one row per frame) and an episode table with
    outcome, tags, source files and quality figures, for one robot-day."""
    robot, day = robot_day(context)
    store = lake.lake()
    emb = load_embodiment(config.embodiment)
    manifest = store.read_json(manifest_key(robot, day))
    usable = [f for f in manifest["files"] if f["verdict"] != "rejected"]
    if not usable:
        raise dg.Failure(f"robot {robot} on {day}: every raw file was rejected by log_manifest")
    with contextlib.ExitStack() as stack:
        files = [SourceFile(f["key"], stack.enter_context(store.local_path(f["key"])), f["sha256"]) for f in usable]
        result = standardize(files, emb, robot=robot, day=day)
    table = result.episodes
    with staging_dir() as tmp:
        pq.write_table(result.frames, tmp / FRAMES, compression="zstd")
        pq.write_table(table, tmp / EPISODE_TABLE, compression="zstd")
        store.publish_dir(episodes_prefix(robot, day), tmp, replace=True)

    issues = table.column("quality_issues").to_pylist()
    ids = table.column("episode_id").to_pylist()

    def failing(issue: str) -> list[str]:
        return [i for i, iss in zip(ids, issues, strict=True) if issue in iss]

    skew_bad = sorted(set(failing("sync_skew")) | set(failing("gap")))
    checks = [
        dg.AssetCheckResult(check_name="monotonic_time", passed=not failing("non_monotonic"),
                            metadata={"episodes_failing": failing("non_monotonic")}),
        dg.AssetCheckResult(check_name="no_nan", passed=not failing("nan"),
                            metadata={"episodes_failing": failing("nan")}),
        dg.AssetCheckResult(check_name="sync_skew", passed=not skew_bad, severity=dg.AssetCheckSeverity.WARN,
                            metadata={"episodes_failing": skew_bad,
                                      "max_skew_ms": float(pc.max(table["max_skew_ms"]).as_py() or 0.0),
                                      "max_gap_ms": float(pc.max(table["max_gap_ms"]).as_py() or 0.0),
                                      "tolerance_skew_ms": emb.max_skew_ms, "tolerance_gap_ms": emb.max_gap_ms}),
    ]
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
            "episodes_table": dg.MetadataValue.md(preview),
        },
        check_results=checks,
    )
