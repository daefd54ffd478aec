"""The graph in the UI is the true lineage: every asset declares every asset whose output it reads.

Each asset is materialized on its own over a copy of the drilled instance (every asset there has
data), with the lake's read calls recorded. A read of a key under another asset's prefix that the
asset does not declare fails the test, naming the asset, the key and the owner; so does a read
under a prefix nobody owns (a new artifact kind must be given an owner here).
"""

from __future__ import annotations

import contextlib
import shutil

import dagster as dg
import pytest

from flywheel_pipelines.lib.storage import LocalLake

pytestmark = pytest.mark.slow

# Lake prefix -> the assets that write it (any of them may be declared by a reader).
OWNERS: dict[str, tuple[str, ...]] = {
    "raw/": ("raw_fleet_logs",),
    "manifests/": ("log_manifest", "episode_archive"),
    "episodes/": ("episodes", "episode_archive"),
    "archive/": ("episode_archive",),
    "fleet/robots/": ("log_manifest", "episode_archive"),  # join days, recorded by the runs that ingest
    "catalog/": ("episode_catalog",),
    "golden/": ("golden_scenarios",),
    "datasets/": ("curated_dataset",),
    "policies/": ("policy_candidate",),
    "evals/": ("eval_report",),
    "releases/": ("release_bundle",),
    "quarantine/": ("quarantine_log",),
    "lineage/edges/datasets/": ("curated_dataset",),
    "lineage/edges/policies/": ("policy_candidate",),
    "lineage/edges/evals/": ("eval_report",),
    "lineage/edges/releases/": ("release_bundle",),
    "lineage/index/": ("lineage_index",),
    "incidents/reports/": ("incident_report",),
    "field/": ("field_kpis",),
    "governance/policy/": ("retention_policy",),
    "governance/": ("retention_sweep",),
}


def owners(key: str) -> tuple[str, ...] | None:
    best = max((p for p in OWNERS if key.startswith(p) or key == p.rstrip("/")), key=len, default=None)
    return OWNERS[best] if best else None


@pytest.fixture
def recorded_reads(monkeypatch):
    reads: list[str] = []

    def record(name):
        original = getattr(LocalLake, name)

        def wrapper(self, key, *args, **kwargs):
            reads.append(key)
            return original(self, key, *args, **kwargs)

        monkeypatch.setattr(LocalLake, name, wrapper)

    for name in ("list", "exists", "read_bytes"):
        record(name)
    for name in ("local_path", "local_dir"):
        original_cm = getattr(LocalLake, name)

        def make(original_cm):
            @contextlib.contextmanager
            def wrapper(self, key, *args, **kwargs):
                reads.append(key)
                with original_cm(self, key, *args, **kwargs) as value:
                    yield value
            return wrapper

        monkeypatch.setattr(LocalLake, name, make(original_cm))
    return reads


def test_no_asset_reads_an_asset_it_does_not_declare(drilled, tmp_path, monkeypatch, recorded_reads):
    home = tmp_path / "home"
    shutil.copytree(drilled.home, home, symlinks=True)
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    for var in ("FLYWHEEL_LAKE", "FLYWHEEL_MLFLOW_URI", "FLYWHEEL_MLFLOW_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)

    from flywheel_pipelines.definitions import defs as load_defs
    from flywheel_pipelines.defs.partitions import robot_day_key
    from flywheel_pipelines.lib import fleet

    defs = load_defs()
    graph = defs.resolve_asset_graph()
    job = defs.resolve_implicit_global_asset_job_def()
    r = drilled.result
    robot, day = r["found"][0]
    partitions = {"log_manifest": robot_day_key(robot, day), "episodes": robot_day_key(robot, day),
                  "episode_archive": fleet.month_key(day)}
    configs = {"incident_report": {"release": r["bad_release"]}}
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    checked, problems = [], []
    with dg.DagsterInstance.get() as instance:
        for key in graph.toposorted_asset_keys:
            node = graph.get(key)
            if not node.is_materializable:
                continue
            name = key.to_user_string()
            recorded_reads.clear()
            run_config = dict(quiet)
            if name in configs:
                run_config["ops"] = {name: {"config": configs[name]}}
            job.get_subset(asset_selection={key}).execute_in_process(
                instance=instance, partition_key=partitions.get(name), run_config=run_config, raise_on_error=True)
            allowed = {name} | {p.to_user_string() for p in node.parent_keys}
            for read in sorted(set(recorded_reads)):
                who = owners(read)
                if who is None:
                    problems.append(f"{name} reads {read!r}, a prefix no asset owns (add it to OWNERS)")
                elif not set(who) & allowed:
                    problems.append(f"{name} reads {read!r} (written by {' / '.join(who)}) without declaring it")
            checked.append((name, len(set(recorded_reads))))
    assert not problems, "\n".join(problems)
    # Every materializable asset ran and read something: the recorder is not vacuous.
    names = {n for n, _ in checked}
    assert {"log_manifest", "episodes", "episode_archive", "episode_catalog", "curated_dataset", "policy_candidate",
            "eval_report", "release_bundle", "lineage_index", "incident_report", "field_kpis"} <= names
    assert all(n > 0 for _, n in checked), checked


def test_the_recorder_catches_an_undeclared_read(tmp_path, recorded_reads):
    """The check above is not vacuous: a read of the catalog from an asset that declares only
    log_manifest is reported."""
    lake = LocalLake(tmp_path)
    lake.write_json("catalog/episodes.json", {})
    recorded_reads.clear()
    lake.read_json("catalog/episodes.json")
    assert recorded_reads == ["catalog/episodes.json"]
    assert owners(recorded_reads[0]) == ("episode_catalog",)
    assert not set(owners(recorded_reads[0])) & {"episodes", "log_manifest"}
    assert owners("lineage/edges/datasets/reach/v1.parquet") == ("curated_dataset",)
    assert owners("scratch/x") is None
