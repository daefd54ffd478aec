"""A small field loop for the rollout tests: teleoperated days, two releases trained on them
with the library's own curation, training, ONNX export and bundle writer, then days on which the
robots run what the deployments manifest says and the rollout decides.

The releases skip the simulator's evaluation gate on purpose: the bad one stands for a release
the gate let through (docs/oncall.md shows how one does), which is what a staged rollout exists
to catch. Everything else is real: MuJoCo robots, MCAP logs, standardize, ONNX Runtime.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from flywheel_pipelines.lib.catalog import CATALOG_KEY, build_catalog, catalog_hash
from flywheel_pipelines.lib.datasets.curation import CurationSpec, build_dataset, select_episodes
from flywheel_pipelines.lib.episodes.embodiment import load_embodiment
from flywheel_pipelines.lib.episodes.standardize import SourceFile, standardize
from flywheel_pipelines.lib.learning.bc import BCConfig, load_training_data, train_bc
from flywheel_pipelines.lib.learning.policy import CONFIG, save_policy
from flywheel_pipelines.lib.release.bundle import ONNX, write_sha256sums
from flywheel_pipelines.lib.release.onnx_export import export_onnx
from flywheel_pipelines.lib.rollout import deployments
from flywheel_pipelines.lib.sim.field import load_fleet_releases
from flywheel_pipelines.lib.sim.fleet import EncoderFault, simulate_fleet
from flywheel_pipelines.lib.storage import LocalLake, sha256_file

MODEL = "reach-bc"
BC = BCConfig(epochs=60, batch_size=256, lr=3e-3, hidden=64, layers=2, seed=0, device="cpu")


class FieldLoop:
    """A lake with a simulated fleet in it, standardized and catalogued by the library."""

    def __init__(self, root: Path, *, robots: int, episodes_per_day: int, seed: int = 0):
        self.lake = LocalLake(root)
        self.robots, self.episodes_per_day, self.seed = robots, episodes_per_day, seed
        self.emb = load_embodiment()
        self.tables: dict[tuple[str, str], object] = {}
        self.frames: dict[tuple[str, str], object] = {}

    def simulate(self, days: list[str], *, manifest: dict | None = None, encoder_faults=None) -> None:
        releases = load_fleet_releases(self.lake, manifest) if manifest else None
        for d in simulate_fleet(self.lake, robots=self.robots, days=days, episodes_per_day=self.episodes_per_day,
                                seed=self.seed, builtin_faults=False, releases=releases,
                                encoder_faults=encoder_faults):
            files = [SourceFile(k, self.lake.path(k), sha256_file(self.lake.path(k))) for k in d.keys]
            st = standardize(files, self.emb, robot=d.robot, day=d.day)
            self.tables[(d.robot, d.day)], self.frames[(d.robot, d.day)] = st.episodes, st.frames
        catalog = build_catalog(self.tables.values())
        self.lake.write_parquet(CATALOG_KEY, catalog)
        self.catalog = catalog

    @property
    def rows(self) -> list[dict]:
        return self.catalog.to_pylist()

    @property
    def catalog_version(self) -> str:
        return catalog_hash(self.catalog)

    def train_release(self, spec: CurationSpec, work: Path) -> str:
        """Curate -> BC -> ONNX -> bundle under releases/<model>/<version>/; returns its ref."""
        out = work / spec.name
        shutil.rmtree(out, ignore_errors=True)
        built = build_dataset(out / "ds", selected=select_episodes(self.catalog, spec),
                              load_frames=lambda robot, day: self.frames[(robot, day)], spec=spec, emb=self.emb)
        policy, _ = train_bc(load_training_data(out / "ds"), BC)
        version = save_policy(policy, out / "policy", extra={"dataset": built.version},
                              identity={"dataset": built.version, "training": BC.to_dict()})
        bundle = out / "bundle"
        bundle.mkdir()
        export_onnx(policy, bundle / ONNX)
        shutil.copyfile(out / "policy" / CONFIG, bundle / "policy_config.json")
        write_sha256sums(bundle)
        self.lake.publish_dir(deployments.bundle_prefix(f"{MODEL}/{version}"), bundle)
        return f"{MODEL}/{version}"


def faulty_encoder(robot: str, days: list[str]) -> dict[str, EncoderFault]:
    """The bad release's data: an elbow encoder logging 0.3 rad off (the operator drives fine)."""
    return {robot: EncoderFault(days=tuple(days))}
