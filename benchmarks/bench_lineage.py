"""Lineage index at fleet scale: 1,000 robots x 3 years (~1.1M episodes), 300 datasets, policies,
evaluations and releases; every query kind timed beside a naive peer that has no index.

What is synthetic and what is real:

- the episode catalog is written directly as Parquet with only the five columns the index reads
  (episode_id, robot, date, source_keys, source_sha256; one episode and one raw file per robot-day,
  random sha256s), at CATALOG_KEY;
- everything after it is the real code: 300 dataset edge files through ``write_dataset_edges`` (each
  a random set of robot x day-range blocks, thousands of episodes), 300 policy, evaluation and
  release edges through their writers, promotion logs through ``registry._append`` (what promote
  and rollback write), ``build_index`` over all of it, and ``query`` for each selector.

The naive peer answers the same question without the index: it reads the whole catalog (the same
five columns) and every dataset edge file, filters in memory, and reads the policy / evaluation /
release JSON records one by one. Both answers are checked to name the same datasets and releases.

Goal: every query under 1 s. The lake lives in /dev/shm when it exists (as bench_fleet does): less
fsync noise, the same CPU work; reads are from the page cache either way. These machines are
shared and noisy: compare rows of one run, not runs.

Usage: python benchmarks/bench_lineage.py [--robots 1000] [--days 1095] [--datasets 300] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from timing import best_of  # benchmarks/timing.py (the script's own folder is on sys.path)

from flywheel_pipelines.lib import lineage_index as li
from flywheel_pipelines.lib.catalog import CATALOG_KEY
from flywheel_pipelines.lib.evaluation import registry
from flywheel_pipelines.lib.storage import LocalLake

START = dt.date(2023, 1, 2)
MODELS = ("reach-bc", "grasp-bc", "push-bc")
AT = "2026-03-01T00:00:00+00:00"


def _strings(parts: list) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def write_catalog(lake: LocalLake, robots: int, days: int) -> pa.Table:
    n = robots * days
    robot_names = pa.array([f"r{i:04d}" for i in range(robots)])
    day_names = [(START + dt.timedelta(days=d)).isoformat() for d in range(days)]
    robot = robot_names.take(pa.array(np.repeat(np.arange(robots), days)))
    date = pa.array(day_names).take(pa.array(np.tile(np.arange(days), robots)))
    compact = pa.array([d.replace("-", "") for d in day_names]).take(pa.array(np.tile(np.arange(days), robots)))
    episode_id = _strings([robot, "-", compact, "-000"])
    key = _strings(["raw/robot=", robot, "/date=", date, "/log.mcap"])
    hexes = os.urandom(32 * n).hex().encode()
    sha = pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 64 * (n + 1), 64, dtype=np.int32)),
                                      pa.py_buffer(hexes))
    one = pa.array(np.arange(n + 1, dtype=np.int32))
    table = pa.table({"episode_id": episode_id, "robot": robot, "date": date,
                      "source_keys": pa.ListArray.from_arrays(one, key),
                      "source_sha256": pa.ListArray.from_arrays(one, sha)})
    lake.write_parquet(CATALOG_KEY, table)
    return table


def write_edges(lake: LocalLake, catalog: pa.Table, *, robots: int, days: int, datasets: int, seed: int = 0) -> dict:
    """Datasets of random robot x day-range blocks; one policy, evaluation and release per dataset."""
    rng = np.random.default_rng(seed)
    cols = {c: catalog[c].to_numpy(zero_copy_only=False) for c in ("episode_id", "robot", "date")}
    keys = pc.list_flatten(catalog["source_keys"]).to_numpy(zero_copy_only=False)
    shas = pc.list_flatten(catalog["source_sha256"]).to_numpy(zero_copy_only=False)
    refs, members = [], 0
    for i in range(datasets):
        model = MODELS[i % len(MODELS)]
        span = min(days - 1, int(rng.integers(30, 120)))
        rows = []
        for r in rng.choice(robots, size=min(robots, int(rng.integers(20, 80))), replace=False):
            start = int(rng.integers(0, days - span))
            rows.append(np.arange(r * days + start, r * days + start + span))
        picked = np.concatenate(rows)
        manifest = {"episodes": [
            {"episode_id": cols["episode_id"][j], "robot": cols["robot"][j], "date": cols["date"][j], "split": "train",
             "raw_files": [{"key": keys[j], "sha256": shas[j]}]} for j in picked]}
        name, version = model.removesuffix("-bc"), f"d{i:05d}"
        li.write_dataset_edges(lake, name=name, version=version, manifest=manifest, at=AT)
        members += len(picked)
        pversion = f"p{i:05d}"
        li.write_policy_edge(lake, name=model, version=pversion, dataset_name=name, dataset_version=version,
                             mlflow_run_id=f"run{i:05d}", registered_model=model,
                             registered_version=str(i // len(MODELS) + 1), at=AT)
        li.write_eval_edge(lake, policy_name=model, policy_version=pversion, eval_id="suite-v7", gate_passed=True,
                           at=AT, prefix=f"evals/{pversion}")
        li.write_release_edge(lake, name=model, version=pversion, policy_name=model, policy_version=pversion,
                              dataset_name=name, dataset_version=version, eval_prefix=f"evals/{pversion}",
                              prefix=f"releases/{model}/{pversion}", at=AT)
        refs.append((name, version, model, pversion, picked))
    # A few promotions and a rollback per model: the newest entry is production.
    per_model = datasets // len(MODELS)
    for m, model in enumerate(MODELS):
        for step, (action, version) in enumerate([("promote", per_model - 3), ("promote", per_model - 1),
                                                  ("rollback", per_model - 3)]):
            entry = registry.Promotion(action=action, model=model, alias=registry.PRODUCTION_ALIAS,
                                       version=str(version), from_version=None, by="bench", at=AT, reason="bench",
                                       forced=False, gate="passed", gate_reasons="", report="", policy_version="",
                                       via="cli")
            registry._append(lake, entry, dt.datetime(2026, 3, 1, m, step, tzinfo=dt.UTC))
    return {"refs": refs, "members": members}


def naive(lake: LocalLake, *, raw=None, robot=None, date_from=None, date_to=None, episode=None, dataset=None,
          policy=None) -> tuple[set, set]:
    """No index: scan the catalog and every edge record. Returns (datasets, releases) downstream."""
    edges = li._edge_files(lake)
    policies = [lake.read_json(k) for k in sorted(edges["policies"])]
    for k in sorted(edges["evals"]):
        lake.read_json(k)
    releases = [lake.read_json(k) for k in sorted(edges["releases"])]
    if dataset or policy:
        if policy:
            p = next(p for p in policies if f"{p['name']}/{p['version']}" == policy)
            dataset = f"{p['dataset_name']}/{p['dataset_version']}"
        name, version = dataset.split("/")
        lake.read_parquet(li.dataset_edge_key(name, version))
        hit = {dataset}
    else:
        cat = pq.read_table(lake.path(CATALOG_KEY), columns=["episode_id", "robot", "date", "source_keys",
                                                             "source_sha256"])
        if raw is not None:
            col = "source_keys" if raw.startswith("raw/") else "source_sha256"
            flat = pc.list_flatten(cat[col])
            parents = pc.list_parent_indices(cat[col]).filter(pc.equal(flat, raw))
            cat = cat.take(parents)
        elif robot is not None:
            mask = pc.and_(pc.equal(cat["robot"], robot), pc.and_(pc.greater_equal(cat["date"], date_from),
                                                                  pc.less_equal(cat["date"], date_to)))
            cat = cat.filter(mask)
        else:
            cat = cat.filter(pc.equal(cat["episode_id"], episode))
        wanted = cat["episode_id"].combine_chunks()
        hit = set()
        for key in sorted(edges["datasets"]):
            t = pq.read_table(lake.path(key), columns=["episode_id"])
            if pc.any(pc.is_in(t["episode_id"], value_set=wanted)).as_py():
                meta = li._file_meta(pq.read_schema(lake.path(key)))
                hit.add(f"{meta['name']}/{meta['version']}")
    pols = {(p["name"], p["version"]) for p in policies if f"{p['dataset_name']}/{p['dataset_version']}" in hit}
    if policy:
        pols = {tuple(policy.split("/"))}
    return hit, {f"{r['name']}/{r['version']}" for r in releases if (r["policy_name"], r["policy_version"]) in pols}


def ours(lake: LocalLake, **selector) -> tuple[set, set]:
    result = li.query(lake, **selector)
    nodes = list(li._walk(result.upstream + result.downstream))
    datasets = {f"{n.name}/{n.version}" for n in nodes if n.kind == "dataset"}
    return datasets, {f"{n.name}/{n.version}" for n in nodes if n.kind == "release"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robots", type=int, default=1000)
    parser.add_argument("--days", type=int, default=1095)
    parser.add_argument("--datasets", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5, help="rounds; each row reports its best")
    parser.add_argument("--naive-repeat", type=int, default=2)
    args = parser.parse_args()
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="bench-lineage-", dir=base) as tmp:
        lake = LocalLake(Path(tmp) / "lake")
        t0 = time.perf_counter()
        catalog = write_catalog(lake, args.robots, args.days)
        t_cat = time.perf_counter() - t0
        t0 = time.perf_counter()
        made = write_edges(lake, catalog, robots=args.robots, days=args.days, datasets=args.datasets)
        t_edges = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = li.build_index(lake)
        t_index = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in lake.path(li.INDEX_PREFIX).iterdir())
        print(f"synthetic lake: {catalog.num_rows:,} episodes ({args.robots} robots x {args.days} days), "
              f"{args.datasets} datasets ({made['members']:,} memberships), {args.datasets} policies / "
              f"evaluations / releases, {len(MODELS)} production aliases")
        print(f"  catalog written in {t_cat:.1f} s, edge records in {t_edges:.1f} s; build_index {t_index:.1f} s "
              f"-> {size / 1e6:.0f} MB in {li.INDEX_PREFIX}/ ({summary['rows']})")

        name, version, model, pversion, picked = made["refs"][len(made["refs"]) // 2]
        j = int(picked[len(picked) // 2])
        row = catalog.slice(j, 1).to_pylist()[0]
        year_to = (START + dt.timedelta(days=min(args.days - 1, 364))).isoformat()
        cases = [
            ("--raw KEY", {"raw": row["source_keys"][0]}),
            ("--raw SHA256", {"raw": row["source_sha256"][0]}),
            ("--robot (1 year)", {"robot": row["robot"], "date_from": START.isoformat(), "date_to": year_to}),
            ("--robot (all days)", {"robot": row["robot"], "date_from": START.isoformat(), "date_to": "2099-01-01"}),
            ("--episode", {"episode": row["episode_id"]}),
            ("--dataset", {"dataset": f"{name}/{version}"}),
            ("--policy", {"policy": f"{model}/{pversion}"}),
        ]
        print(f"\n{'query':<20} {'indexed s':>10} {'naive s':>9} {'ratio':>7}  {'< 1 s':<5} answer")
        failures = []
        for label, selector in cases:
            t_ours, got = best_of(args.repeat, lambda s=selector: ours(lake, **s))
            t_naive, want = best_of(args.naive_repeat, lambda s=selector: naive(lake, **s))
            if got != want:
                failures.append(f"{label}: indexed {got} != naive {want}")
            ok = t_ours < 1.0
            if not ok:
                failures.append(f"{label}: {t_ours:.3f} s")
            print(f"{label:<20} {t_ours:>10.3f} {t_naive:>9.2f} {t_naive / t_ours:>6.0f}x  {'yes' if ok else 'NO':<5} "
                  f"{len(got[0])} datasets, {len(got[1])} releases")
        # The whole command, as on-call runs it: a fresh interpreter (imports included).
        cmd = [str(Path(sys.executable).parent / "flywheel"), "lineage", "--raw", row["source_keys"][0],
               "--lake", str(lake.root)]
        t_cli, out = best_of(2, lambda: subprocess.run(cmd, capture_output=True, text=True, check=True))
        took = [line for line in out.stdout.splitlines() if "query took" in line]
        print(f"\nflywheel lineage --raw KEY, whole command in a fresh interpreter: {t_cli:.2f} s "
              f"({took[0].strip() if took else '?'})")
        if failures:
            print("FAILED: " + "; ".join(failures))
            sys.exit(1)
        print("every query under 1 s, and the same datasets and releases as the naive peer")


if __name__ == "__main__":
    main()
