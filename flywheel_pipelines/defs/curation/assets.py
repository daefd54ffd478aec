"""Curated datasets: a curation spec applied to the catalog, in the LeRobot v3.0 layout."""


import json

import dagster as dg
from pydantic import Field

from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.defs.ui_metadata import lerobot_table_metadata, rounded
from flywheel_pipelines.lib import layout, lineage_index, markdown, quarantine
from flywheel_pipelines.lib.catalog import CATALOG_KEY
from flywheel_pipelines.lib.datasets.curation import CurationError, CurationSpec, build_dataset, select_episodes
from flywheel_pipelines.lib.datasets.lerobot.format import INFO_PATH
from flywheel_pipelines.lib.episodes.embodiment import DEFAULT_EMBODIMENT, load_embodiment
from flywheel_pipelines.lib.storage import staging_dir


class CurationConfig(dg.Config):
    """The curation spec (every field is part of the dataset version)."""

    name: str = Field(default="reach", description=f"Dataset name ({layout.DATASET_FORMAT}).")
    robots: list[str] = Field(default_factory=list, description="Only these robots (empty: all).")
    date_from: str | None = None
    date_to: str | None = None
    tasks: list[str] = Field(default_factory=list)
    outcomes: list[str] = Field(default_factory=lambda: ["success"])
    include_interventions: bool = False
    include_quality_issues: bool = Field(
        default=False,
        description="Keep episodes that fail the episode-quality suite (skew, gap, NaN, monotonic time, frame count); "
        "by default they are left out and counted in the manifest and card.",
    )
    include_quarantined: bool = Field(
        default=False,
        description="Keep episodes under an active quarantine (`flywheel quarantine list`); by default they are left "
        "out, and the manifest records the quarantine state honoured either way.",
    )
    include_autonomous: bool = Field(
        default=False,
        description="Keep episodes a released policy drove (field logs); by default only demonstrations "
        "(teleoperated, or logs that do not say) are curated.",
    )
    val_fraction: float = 0.2
    split_seed: int = 0
    min_frames: int = 5
    embodiment: str = DEFAULT_EMBODIMENT

    def spec(self) -> CurationSpec:
        return CurationSpec(
            name=self.name, robots=tuple(self.robots), date_from=self.date_from, date_to=self.date_to,
            tasks=tuple(self.tasks), outcomes=tuple(self.outcomes), include_interventions=self.include_interventions,
            include_quality_issues=self.include_quality_issues, include_quarantined=self.include_quarantined,
            val_fraction=self.val_fraction,
            split_seed=self.split_seed, min_frames=self.min_frames, include_autonomous=self.include_autonomous,
        )


def quality_preview(quality: dict, limit: int = 50) -> str:
    """The episodes the quality suite failed, as a Markdown table (the full list is in manifest.json)."""
    failures = quality["failures"]
    kept = "yes" if quality["include_failures"] else "no"
    text = markdown.table(["episode", "checks failed", "in dataset"],
                          [(f["episode_id"], ", ".join(f["checks"]), kept) for f in failures[:limit]])
    if len(failures) > limit:
        text += f"\n\n... and {len(failures) - limit} more (manifest.json, quality.failures)"
    return text


# Frames are read from the robot-day episode tables (episodes), selection from the catalog, and the
# quarantine log is honoured as of now (not as of the catalog's last refresh).
@dg.asset(deps=["episode_catalog", dg.AssetDep("episodes", partition_mapping=dg.AllPartitionMapping()), "quarantine_log"],
          group_name=group_of("curated_dataset"), kinds={"python", "parquet"}, owners=["team:ml"])
def curated_dataset(context: dg.AssetExecutionContext, config: CurationConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Selected episodes with a deterministic train/val split, as a LeRobot v3.0 dataset plus a
    manifest naming every episode and raw file (sha256); versioned by content hash."""
    store = lake.lake()
    try:
        spec = config.spec()
    except ValueError as exc:
        raise dg.Failure(f"invalid curation spec: {exc}") from None
    emb = load_embodiment(config.embodiment)
    selected = select_episodes(store.read_parquet(CATALOG_KEY), spec)

    def load_frames(robot: str, day: str):
        return store.read_parquet(layout.frames_key(robot, day))

    with staging_dir() as tmp:
        try:
            built = build_dataset(tmp / "ds", selected=selected, load_frames=load_frames, spec=spec, emb=emb,
                                  quarantine_records=quarantine.read_records(store))
        except CurationError as exc:
            raise dg.Failure(str(exc)) from None
        prefix = layout.dataset_prefix(spec.name, built.version)
        info = json.loads((tmp / "ds" / INFO_PATH).read_text())
        created = store.publish_dir(prefix, tmp / "ds")
    # The episode -> dataset edges, written by the asset that creates them (idempotent per version).
    lineage_index.write_dataset_edges(store, name=spec.name, version=built.version, manifest=built.manifest,
                                      at=lineage_index.now_iso())
    robots = sorted({e["robot"] for e in built.manifest["episodes"]})
    days = sorted({e["date"] for e in built.manifest["episodes"]})
    quality = built.manifest["quality"]
    context.log.info(f"dataset {spec.name}@{built.version}: {built.episodes} episodes, {quality['left_out']} left out "
                     f"by {quality['suite']} ({'new' if created else 'identical version already in the lake'})")
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(store.uri(prefix)),
            "dataset_name": spec.name,
            "dataset_version": built.version,
            "prefix": prefix,
            "episodes": built.episodes,
            "frames": built.frames,
            "train_episodes": built.splits.get("train", 0),
            "val_episodes": built.splits.get("val", 0),
            "robots": robots,
            "days": f"{days[0]} .. {days[-1]}",
            "raw_files": len(built.manifest["raw_files"]),
            "quality_suite": quality["suite"],
            "quality_failed": quality["failed"],
            "quality_left_out": quality["left_out"],
            "quality_by_check": quality["by_check"],
            "quality_failures": dg.MetadataValue.md(quality_preview(quality)),
            "quarantine_state": built.manifest["quarantine"]["hash"],
            "quarantine_records": built.manifest["quarantine"]["records"],
            "quarantined_left_out": built.manifest["quarantine"]["left_out"],
            "spec": spec.to_dict(),
            "frame_rate_hz": info["fps"],
            "duration_s": rounded(built.frames / info["fps"]) if info["fps"] else 0.0,
            **lerobot_table_metadata(info["features"], built.frames),
        },
        data_version=dg.DataVersion(built.version),
    )
