"""Shared fixtures for the lib tests: one real simulated robot-day, standardized and curated once.

Simulating, standardizing and curating take well under a second each for a handful of episodes,
but every test file wants the same artifacts, so they are built once per session and treated as
read-only by the tests (a test that needs to mutate something builds its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from flywheel_pipelines.lib.catalog import build_catalog
from flywheel_pipelines.lib.datasets.curation import BuiltDataset, CurationSpec, build_dataset, select_episodes
from flywheel_pipelines.lib.episodes.embodiment import Embodiment, load_embodiment
from flywheel_pipelines.lib.episodes.standardize import SourceFile, Standardized, standardize
from flywheel_pipelines.lib.sim.fleet import SimulatedDay, simulate_fleet
from flywheel_pipelines.lib.storage import LocalLake, sha256_file

ROBOT = "r101"  # index 0 of the fleet: a clean robot (no faults)
DAY = "2026-03-02"
EPISODES = 6  # two MCAP sessions: 5 episodes + 1
SEED = 0


@dataclass(frozen=True)
class SimDay:
    lake: LocalLake
    day: SimulatedDay

    @property
    def paths(self) -> list[Path]:
        return [self.lake.path(k) for k in self.day.keys]


@dataclass(frozen=True)
class CuratedDataset:
    root: Path
    built: BuiltDataset
    spec: CurationSpec


def source_files(lake: LocalLake, keys) -> list[SourceFile]:
    return [SourceFile(k, lake.path(k), sha256_file(lake.path(k))) for k in keys]


def curate(out_dir: Path, frames: pa.Table, catalog: pa.Table, spec: CurationSpec, emb: Embodiment) -> BuiltDataset:
    """Build a dataset from one robot-day's frames (the shape of the Dagster asset's call)."""
    return build_dataset(
        out_dir, selected=select_episodes(catalog, spec), load_frames=lambda robot, day: frames, spec=spec, emb=emb
    )


@pytest.fixture(scope="session")
def emb() -> Embodiment:
    return load_embodiment()


@pytest.fixture(scope="session")
def sim_day(tmp_path_factory) -> SimDay:
    lake = LocalLake(tmp_path_factory.mktemp("lake"))
    (day,) = simulate_fleet(lake, robots=1, days=[DAY], episodes_per_day=EPISODES, seed=SEED)
    return SimDay(lake, day)


@pytest.fixture(scope="session")
def standardized(sim_day: SimDay, emb: Embodiment) -> Standardized:
    return standardize(source_files(sim_day.lake, sim_day.day.keys), emb, robot=ROBOT, day=DAY)


@pytest.fixture(scope="session")
def catalog(standardized: Standardized) -> pa.Table:
    return build_catalog([standardized.episodes])


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, standardized: Standardized, catalog: pa.Table, emb: Embodiment) -> CuratedDataset:
    spec = CurationSpec(name="reach", val_fraction=0.3)
    root = tmp_path_factory.mktemp("dataset") / "reach"
    return CuratedDataset(root, curate(root, standardized.frames, catalog, spec, emb), spec)
