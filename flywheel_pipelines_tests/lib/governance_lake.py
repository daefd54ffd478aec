"""A small real flywheel lake for the governance tests, built with the library calls the assets make.

Simulated robot-days (real MCAP files) -> manifests -> standardized robot-day folders -> catalog ->
a curated LeRobot dataset with its lineage edges -> a policy and a release edge on it -> the lineage
index. Optionally a real 7-joint-arm log with a 30 Hz camera topic (benchmarks/arm7_log.py) and its
own dataset. No training: the policy and release are lineage records, which is all governance reads.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from flywheel_pipelines.lib import layout, lineage_index
from flywheel_pipelines.lib.catalog import CATALOG_KEY, build_catalog
from flywheel_pipelines.lib.datasets.curation import CurationSpec, build_dataset, select_episodes
from flywheel_pipelines.lib.episodes.embodiment import Embodiment, load_embodiment, parse_embodiment
from flywheel_pipelines.lib.episodes.standardize import SourceFile, standardize
from flywheel_pipelines.lib.ingest.manifest import write_manifest
from flywheel_pipelines.lib.sim.fleet import simulate_fleet
from flywheel_pipelines.lib.storage import LocalLake, staging_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from arm7_log import EMBODIMENT as ARM7  # noqa: E402
from arm7_log import write_arm7_log  # noqa: E402

CAMERA_ROBOT = "r301"


@dataclass(frozen=True)
class GovernedLake:
    lake: LocalLake
    days: tuple[str, ...]
    datasets: dict[str, str]  # name -> version
    camera_key: str | None


def ingest_day(lake: LocalLake, robot: str, day: str, emb: Embodiment) -> pa.Table:
    """What log_manifest + episodes do for one robot-day; returns the episode table."""
    manifest = write_manifest(lake, robot, day)
    files = [SourceFile(f["key"], lake.path(f["key"]), f["sha256"]) for f in manifest["files"]]
    result = standardize(files, emb, robot=robot, day=day)
    prefix = layout.episodes_prefix(robot, day)
    lake.write_parquet(f"{prefix}/{layout.EPISODE_TABLE}", result.episodes)
    lake.write_parquet(f"{prefix}/{layout.FRAMES}", result.frames)
    return result.episodes


def publish_dataset(lake: LocalLake, catalog: pa.Table, spec: CurationSpec, emb: Embodiment) -> str:
    """What curated_dataset does: build, publish, write the episode -> dataset edges."""
    def load(robot: str, day: str) -> pa.Table:
        return lake.read_parquet(f"{layout.episodes_prefix(robot, day)}/{layout.FRAMES}")

    with staging_dir() as tmp:
        built = build_dataset(tmp / "ds", selected=select_episodes(catalog, spec), load_frames=load, spec=spec, emb=emb)
        lake.publish_dir(layout.dataset_prefix(spec.name, built.version), tmp / "ds")
    lineage_index.write_dataset_edges(lake, name=spec.name, version=built.version, manifest=built.manifest,
                                      at=lineage_index.now_iso())
    return built.version


def build(root: Path, days: list[str], *, robots: int = 2, episodes: int = 6, camera_day: str | None = None,
          camera_yaml: Path | None = None) -> GovernedLake:
    lake = LocalLake(root)
    emb = load_embodiment()
    tables = [ingest_day(lake, d.robot, d.day, emb)
              for d in simulate_fleet(lake, robots=robots, days=days, episodes_per_day=episodes, seed=0)]
    lake.write_parquet(CATALOG_KEY, build_catalog(tables))
    catalog = lake.read_parquet(CATALOG_KEY)
    datasets = {"reach": publish_dataset(lake, catalog, CurationSpec(name="reach", val_fraction=0.3), emb)}
    lineage_index.write_policy_edge(lake, name="reach-bc", version="p1", dataset_name="reach",
                                    dataset_version=datasets["reach"], mlflow_run_id="run1", registered_model="reach-bc",
                                    registered_version="1", at=lineage_index.now_iso())
    lineage_index.write_release_edge(lake, name="reach-bc", version="p1", policy_name="reach-bc", policy_version="p1",
                                     dataset_name="reach", dataset_version=datasets["reach"], eval_prefix="evals/p1",
                                     prefix="releases/reach-bc/p1", at=lineage_index.now_iso())
    camera_key = None
    if camera_day is not None:
        log = root.parent / "arm7.mcap"
        write_arm7_log(log, minutes=0.7)
        camera_key = f"raw/robot={CAMERA_ROBOT}/date={camera_day}/arm7.mcap"
        lake.put_raw(camera_key, log)
        arm7 = parse_embodiment(ARM7, source="arm7")
        tables.append(ingest_day(lake, CAMERA_ROBOT, camera_day, arm7))
        lake.write_parquet(CATALOG_KEY, build_catalog(tables))
        spec = CurationSpec(name="arm7", robots=(CAMERA_ROBOT,), outcomes=(), val_fraction=0.0, min_frames=1,
                            include_quality_issues=True)
        datasets["arm7"] = publish_dataset(lake, lake.read_parquet(CATALOG_KEY), spec, arm7)
    lineage_index.build_index(lake)
    return GovernedLake(lake, tuple(days), datasets, camera_key)
