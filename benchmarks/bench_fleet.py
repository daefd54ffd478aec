"""Fleet scale: the hot robot x day window against the full 3-year grid, at 10 / 100 / 1,000 robots.

    .venv/bin/python benchmarks/bench_fleet.py --quick      # 10 and 100 robots (a few minutes)
    .venv/bin/python benchmarks/bench_fleet.py              # 10, 100 and 1,000 robots (~8 minutes on 2 cores)

Two configurations of the same code location, each in its own subprocess (the partitions are
computed when the code location loads), with the fleet starting 3 years (1095 days) ago
(FLYWHEEL_FLEET_START):

- hot window: the default FLYWHEEL_HOT_DAYS (28 days, from a Monday: ~30 date partitions);
- full grid: FLYWHEEL_HOT_DAYS=1095, every day of the 3 years a robot x day partition.

The instance is the production one by default (--store postgres): deploy/dagster.yaml, whose
storage is dagster-postgres, against a throwaway PostgreSQL server (initdb + pg_ctl in a temporary
folder, as the deploy tests start it: flywheel_pipelines_tests/deploy/postgres.py), one database per
cell. --store sqlite uses a temporary SQLite instance (dg.instance_for_test) instead.

Measured, with real Dagster code paths:

(a) definitions load: a fresh interpreter importing flywheel_pipelines.definitions, building the
    Definitions, the repository, its asset graph and jobs (wall time of the subprocess, and in-process).
(b) partition keys: enumerating ROBOT_DAY with N robots registered (dynamic partitions).
(c) sensor tick: raw_log_sensor.evaluate_tick over a local lake where each of the N registered
    robots uploaded one small file today (plan_runs hashes files and looks up the last manifest of
    each robot-day; Dagster then resolves and validates the N run requests' partition keys).
(d) backfill: lib/backfill.launch_day_backfill of yesterday across the fleet (N partitions)
    through Dagster's GraphQL API (a dagster-webserver on the instance, started for it: its start,
    which loads the code location, is timed too); Dagster validates the keys against the job's partitions.
(e) partition status: a log_manifest materialization event for every robot x day of the grid
    (newest days first), stored with the event log storage's store_event_batch in batches of
    --batch-size (PostgreSQL: one multi-row INSERT per batch) by --writers processes at once (the
    event objects are built in the writers too: the rate is end to end); then the instance's
    get_materialized_partitions and the UI's assetPartitionStatuses GraphQL query (first: the asset
    status cache is built; second: cached). A cell whose storing would not fit --event-budget-s
    (projected from the rate measured over its first ~10 s, and re-checked after every batch) stops
    storing, and its query columns say "not run (would take ~X min at measured Y events/s)": a query
    time is only ever measured over the complete grid, never extrapolated.

The lake and a SQLite instance live in /dev/shm when it exists (less fsync noise; the CPU cost is
the same); the PostgreSQL server runs with fsync=off (postgres.py). The server shares the 2 cores
with the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

YEARS_DAYS = 1095
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None
ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_INSTANCE = ROOT / "deploy" / "dagster.yaml"

STATUS_QUERY = """
query Statuses($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      assetPartitionStatuses {
        __typename
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges { primaryDimStartKey primaryDimEndKey
                   secondaryDim { ... on DefaultPartitionStatuses { materializedPartitions } } }
        }
      }
    }
  }
}
"""


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _env(mode: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DAGSTER_DISABLE_TELEMETRY"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    env["FLYWHEEL_FLEET_START"] = (_today() - dt.timedelta(days=YEARS_DAYS)).isoformat()
    env.pop("FLYWHEEL_HOT_DAYS", None)
    if mode == "full":
        env["FLYWHEEL_HOT_DAYS"] = str(YEARS_DAYS)
    return env


# --- workers (run in a subprocess with the mode's environment) ------------------------------------


def worker_load() -> dict:
    """(a): import the code location, build Definitions, the repository and the asset graph."""
    t0 = time.perf_counter()
    from flywheel_pipelines.definitions import defs as load_defs

    t1 = time.perf_counter()
    defs = load_defs()
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    jobs = [job.name for job in repo.get_all_jobs()]
    t2 = time.perf_counter()
    return {"import_s": t1 - t0, "build_s": t2 - t1, "assets": len(graph.get_all_asset_keys()), "jobs": len(jobs)}


@functools.cache
def _event_classes():
    import dagster as dg
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    return dg, DagsterEvent, DagsterEventType, StepMaterializationData, EventLogEntry, RUNLESS_JOB_NAME, RUNLESS_RUN_ID


def _materialization(robot: str, day: str):
    dg, DagsterEvent, DagsterEventType, StepMaterializationData, EventLogEntry, job_name, run_id = _event_classes()  # noqa: N806
    # What instance.report_runless_asset_event builds, stored in batches.
    asset_event = dg.AssetMaterialization("log_manifest", partition=dg.MultiPartitionKey({"robot": robot, "date": day}))
    event = DagsterEvent(event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                         event_specific_data=StepMaterializationData(asset_event), job_name=job_name)
    return EventLogEntry(error_info=None, level="debug", user_message="", run_id=run_id,
                         timestamp=time.time(), dagster_event=event)


# --- (e) writers ----------------------------------------------------------------------------------

_WRITER_INSTANCE = None


def _writer_init(home: str) -> None:
    """A writer process: its own instance (and connection pool) from the cell's dagster.yaml."""
    global _WRITER_INSTANCE
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    import warnings

    warnings.filterwarnings("ignore")
    import dagster as dg

    _WRITER_INSTANCE = dg.DagsterInstance.from_config(home)


def _writer_ready() -> int:
    time.sleep(0.5)  # hold this process so that every writer starts and opens its instance
    return os.getpid()


def _store_batch(pairs: list[tuple[str, str]], storage=None) -> tuple[int, float, float]:
    """Build and store one batch of (robot, day) materializations: (events, start, end) wall clock."""
    start = time.time()
    storage = storage or _WRITER_INSTANCE.event_log_storage
    storage.store_event_batch([_materialization(robot, day) for robot, day in pairs])
    return len(pairs), start, time.time()


def _store_grid(instance, home: str | None, robots: list[str], days: list[str], *, batch_size: int, writers: int,
                budget_s: float) -> dict:
    """Store a log_manifest materialization for every robot x day (newest days first) unless the
    projected time exceeds ``budget_s``; the rate is measured from the first batch's start."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    total = len(robots) * len(days)
    pairs = ((robot, day) for day in reversed(days) for robot in robots)
    batches = iter(lambda: [p for _, p in zip(range(batch_size), pairs, strict=False)], [])
    stored, first_start, last_end, stopped = 0, None, None, False

    def over_budget() -> bool:
        elapsed = last_end - first_start
        if stored >= total or elapsed < min(10.0, budget_s / 10):
            return False
        return elapsed + (total - stored) * elapsed / stored > budget_s

    def account(result: tuple[int, float, float]) -> None:
        nonlocal stored, first_start, last_end
        count, start, end = result
        stored += count
        first_start = start if first_start is None else min(first_start, start)
        last_end = end if last_end is None else max(last_end, end)

    if writers <= 1:
        for batch in batches:
            account(_store_batch(batch, instance.event_log_storage))
            if over_budget():
                stopped = True
                break
    else:
        with ProcessPoolExecutor(writers, mp_context=get_context("spawn"), initializer=_writer_init,
                                 initargs=(home,)) as pool:
            for ready in [pool.submit(_writer_ready) for _ in range(writers)]:
                ready.result()
            pending = set()
            for batch in batches:
                while len(pending) >= 2 * writers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        account(future.result())
                    stopped = stopped or over_budget()
                if stopped:
                    break
                pending.add(pool.submit(_store_batch, batch))
            for future in pending:
                account(future.result())
    span = last_end - first_start
    out = {"events_total": total, "events_stored": stored, "store_s": span, "events_per_s": stored / span,
           "writers": writers, "batch_size": batch_size}
    if stored < total:
        out["store_all_min"] = total / out["events_per_s"] / 60
    return out


@contextlib.contextmanager
def _instance(store: str, home: Path) -> Iterator:
    """The cell's instance: the production dagster.yaml (PostgreSQL, DAGSTER_PG_* from the driver) or
    a temporary SQLite one."""
    import dagster as dg

    home.mkdir()
    if store == "sqlite":
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            yield instance
        return
    shutil.copyfile(PRODUCTION_INSTANCE, home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def worker_fleet(n: int, *, store: str, event_budget_s: float, batch_size: int, writers: int) -> dict:
    """(b) to (e) for N robots in this process's configuration."""
    out: dict = {"store": store}
    with tempfile.TemporaryDirectory(dir=SCRATCH, prefix="bench_fleet_") as tmp:
        lake_root = Path(tmp) / "lake"
        os.environ["FLYWHEEL_LAKE"] = str(lake_root)
        import dagster as dg

        from flywheel_pipelines.definitions import defs as load_defs
        from flywheel_pipelines.defs.ingest.sensors import SENSOR_NAME
        from flywheel_pipelines.defs.partitions import DAILY, HOT_DAYS, HOT_START, ROBOT_DAY, ROBOTS
        from flywheel_pipelines.defs.resources import LakeResource
        from flywheel_pipelines.lib import backfill, fleet
        from flywheel_pipelines.lib.storage import open_lake

        defs = load_defs()
        today = _today()
        robots = [f"r{i:04d}" for i in range(n)]
        out.update(hot_days=HOT_DAYS, hot_start=HOT_START.isoformat())
        home = Path(tmp) / "dagster_home"
        with _instance(store, home) as instance:
            out["event_log_storage"] = type(instance.event_log_storage).__name__
            instance.add_dynamic_partitions(ROBOTS.name, robots)

            # (b) partition keys of the robot x day grid.
            t = time.perf_counter()
            with dg.partition_loading_context(dynamic_partitions_store=instance):
                keys = ROBOT_DAY.get_partition_keys()
            out["keys_s"] = time.perf_counter() - t
            out["keys"] = len(keys)
            days = DAILY.get_partition_keys()
            out["days"] = len(days)
            del keys

            # (c) one sensor tick: every robot uploaded one small file today; joins spread over the years.
            lake = open_lake(str(lake_root))
            start = fleet.fleet_start()
            upload = Path(tmp) / "upload.mcap"
            for i, robot in enumerate(robots):
                upload.write_bytes(f"{robot} {i}".encode() * 8)
                lake.put_raw(f"raw/robot={robot}/date={today.isoformat()}/session_0001.mcap", upload)
                fleet.record_join(lake, robot, (start + dt.timedelta(days=i * (YEARS_DAYS - 1) // max(n, 1))).isoformat())
            sensor = defs.get_sensor_def(SENSOR_NAME)
            # As the code server builds it: from an instance ref (dynamic partitions then load from it).
            context = dg.build_sensor_context(instance_ref=instance.get_ref(), definitions=defs,
                                              resources={"lake": LakeResource(root=str(lake_root))})
            t = time.perf_counter()
            data = sensor.evaluate_tick(context)
            out["tick_s"] = time.perf_counter() - t
            out["tick_requests"] = len(data.run_requests or [])

            # (d) a one-day backfill across the fleet through the GraphQL API of a dagster-webserver on
            # this instance (public API only; it loads the code location as a deployment does).
            if str(ROOT) not in sys.path:
                sys.path.insert(0, str(ROOT))  # flywheel_pipelines_tests is not installed, only checked out
            from flywheel_pipelines_tests.ui.server import webserver

            t = time.perf_counter()
            with webserver(Path(tmp), Path(tmp) / "webserver.log") as server:
                execute = backfill.http_execute(server.url)
                out["location_load_s"] = time.perf_counter() - t
                day = (today - dt.timedelta(days=1)).isoformat()
                day_robots = backfill.day_robots(lake, day, instance.get_dynamic_partitions(ROBOTS.name))
                t = time.perf_counter()
                backfill_id = backfill.launch_day_backfill(execute, day, day_robots, hot_start=HOT_START)
                out["backfill_s"] = time.perf_counter() - t
                out["backfill_partitions"] = len(instance.get_backfill(backfill_id).partition_names)

                # (e) materializations of log_manifest for every robot x day, newest days first.
                out.update(_store_grid(instance, None if store == "sqlite" else str(home), robots, days,
                                       batch_size=batch_size, writers=1 if store == "sqlite" else writers,
                                       budget_s=event_budget_s))
                if out["events_stored"] == out["events_total"]:
                    t = time.perf_counter()
                    materialized = instance.get_materialized_partitions(dg.AssetKey("log_manifest"))
                    out["materialized_s"] = time.perf_counter() - t
                    out["materialized"] = len(materialized)
                    del materialized
                    for attempt in ("status_first_s", "status_cached_s"):
                        t = time.perf_counter()
                        result = execute(STATUS_QUERY, {"assetKey": {"path": ["log_manifest"]}})
                        out[attempt] = time.perf_counter() - t
                    statuses = result["assetNodeOrError"]["assetPartitionStatuses"]
                    index = {d: i for i, d in enumerate(days)}
                    out["status_materialized"] = sum(
                        len(r["secondaryDim"].get("materializedPartitions", [])) *
                        (index[r["primaryDimEndKey"]] - index[r["primaryDimStartKey"]] + 1)
                        for r in statuses["ranges"])
    return out


# --- driver ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _postgres() -> Iterator:
    """A throwaway PostgreSQL server, started as the deploy tests start theirs."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # flywheel_pipelines_tests is not installed, only checked out
    from flywheel_pipelines_tests.deploy.postgres import find_bin_dir, running_postgres

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under "
                         "/usr/lib/postgresql/*/bin: run tools/ensure_postgres.sh, or use --store sqlite")
    version = subprocess.run([str(bin_dir / "pg_ctl"), "--version"], capture_output=True, text=True).stdout.strip()
    with running_postgres(bin_dir) as server:
        yield server, version


def _run_worker(mode: str, args: list[str], timeout: float, extra_env: dict[str, str] | None = None) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *args], env={**_env(mode), **(extra_env or {})}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"worker {mode} {args} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def _shown_s(value: float) -> float:
    """``value`` (seconds) rounded as ``_fmt_s`` shows it."""
    if value < 0.01:
        return round(value * 1000, 1) / 1000
    if value < 1:
        return round(value * 1000) / 1000
    return round(value, 2)


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.01:
        return f"{value * 1000:.1f} ms"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _ratio(hot, full, *, seconds: bool = True) -> str:
    """full / hot, from the values as the cells show them (seconds rounded as ``_fmt_s`` does)."""
    if not (isinstance(hot, (int, float)) and isinstance(full, (int, float))):
        return "-"
    if seconds:
        hot, full = _shown_s(hot), _shown_s(full)
    return f"{full / hot:.1f}x" if hot else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 robots only")
    parser.add_argument("--robots", type=int, nargs="*", help="fleet sizes (default 10 100 1000)")
    parser.add_argument("--modes", nargs="*", choices=["hot", "full"], default=["hot", "full"],
                        help="configurations to run (default both)")
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres",
                        help="instance storage: 'postgres' (default): deploy/dagster.yaml (dagster-postgres) on a "
                             "throwaway PostgreSQL server; 'sqlite': a temporary SQLite instance")
    parser.add_argument("--event-budget-s", type=float, default=300.0,
                        help="seconds per cell for storing materialization events (default 300); a cell whose "
                             "whole grid would take longer is not queried")
    parser.add_argument("--batch-size", type=int, default=2000, help="events per store_event_batch (default 2000)")
    parser.add_argument("--writers", type=int, default=2,
                        help="processes storing batches at once (default 2; SQLite: always 1)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the raw results here")
    parser.add_argument("--worker", choices=["load", "fleet"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "load":
        print(json.dumps(worker_load()))
        return
    if args.worker == "fleet":
        print(json.dumps(worker_fleet(args.n, store=args.store, event_budget_s=args.event_budget_s,
                                      batch_size=args.batch_size, writers=args.writers)))
        return

    with contextlib.ExitStack() as stack:
        server, pg_version = stack.enter_context(_postgres()) if args.store == "postgres" else (None, None)
        _bench(args, server, pg_version)


def _bench(args, server, pg_version: str | None) -> None:
    sizes = args.robots or ([10, 100] if args.quick else [10, 100, 1000])
    modes = args.modes
    writers = 1 if args.store == "sqlite" else args.writers
    store_line = (f"PostgreSQL ({pg_version}, fsync=off; deploy/dagster.yaml, dagster-postgres "
                  f"PostgresEventLogStorage)" if server else "SQLite (dg.instance_for_test, SqliteEventLogStorage)")
    started = time.perf_counter()
    results: dict = {"load": {}, "fleet": {}}
    print(f"fleet start {_env('full')['FLYWHEEL_FLEET_START']} ({YEARS_DAYS} days ago), today {_today()} UTC; "
          f"sizes {sizes}", flush=True)
    print(f"instance storage (b)-(e): {store_line}; (e) batches of {args.batch_size} events, {writers} writer "
          f"process(es), storing budget {args.event_budget_s:.0f} s per cell", flush=True)
    for mode in modes:
        results["load"][mode] = _run_worker(mode, ["--worker", "load"], timeout=300)
        print(f"  (a) {mode}: {results['load'][mode]}", flush=True)
    for n in sizes:
        for mode in modes:
            extra = server.dagster_env(server.create_database(f"bench_{n}_{mode}")) if server else {}
            worker_args = ["--worker", "fleet", "--n", str(n), "--store", args.store, "--event-budget-s",
                           str(args.event_budget_s), "--batch-size", str(args.batch_size), "--writers", str(writers)]
            r = _run_worker(mode, worker_args, timeout=args.event_budget_s + 1200, extra_env=extra)
            results["fleet"][(n, mode)] = r
            print(f"  {n} robots, {mode}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})}",
                  flush=True)

    empty: dict = {}
    rows: list[tuple[str, str, str, str, str]] = []
    la, lf = results["load"].get("hot", empty), results["load"].get("full", empty)
    rows.append(("any", "(a) definitions load, subprocess wall", _fmt_s(la.get("wall_s")), _fmt_s(lf.get("wall_s")),
                 _ratio(la.get("wall_s"), lf.get("wall_s"))))
    rows.append(("any", "(a)   build Definitions + asset graph", _fmt_s(la.get("build_s")), _fmt_s(lf.get("build_s")),
                 _ratio(la.get("build_s"), lf.get("build_s"))))

    def count(r: dict, key: str) -> str:
        return f"{r[key]:,}" if key in r else "-"

    def cell(r: dict, key: str) -> str:
        if not r:
            return "-"
        if key in r:
            return _fmt_s(r[key])
        minutes = r['store_all_min']
        return f"not run (would take ~{minutes:.{0 if minutes >= 10 else 1}f} min at measured {r['events_per_s']:,.0f} events/s)"

    for n in sizes:
        h, f = results["fleet"].get((n, "hot"), empty), results["fleet"].get((n, "full"), empty)
        both = [r for r in (h, f) if r]
        requests = "/".join(str(r["tick_requests"]) for r in both)
        partitions = "/".join(str(r["backfill_partitions"]) for r in both)
        rows.append((str(n), "(b) robot x day partition keys", count(h, "keys"), count(f, "keys"),
                     _ratio(h.get("keys"), f.get("keys"), seconds=False)))
        rows.append((str(n), "(b)   enumeration time", _fmt_s(h.get("keys_s")), _fmt_s(f.get("keys_s")),
                     _ratio(h.get("keys_s"), f.get("keys_s"))))
        rows.append((str(n), f"(c) sensor tick ({requests} run requests)",
                     _fmt_s(h.get("tick_s")), _fmt_s(f.get("tick_s")), _ratio(h.get("tick_s"), f.get("tick_s"))))
        rows.append((str(n), "(d) webserver start (loads the code location)", _fmt_s(h.get("location_load_s")),
                     _fmt_s(f.get("location_load_s")), _ratio(h.get("location_load_s"), f.get("location_load_s"))))
        rows.append((str(n), f"(d) launch 1-day backfill ({partitions} partitions)",
                     _fmt_s(h.get("backfill_s")), _fmt_s(f.get("backfill_s")),
                     _ratio(h.get("backfill_s"), f.get("backfill_s"))))
        rows.append((str(n), "(e) materialization events stored / grid",
                     f"{h['events_stored']:,}/{h['events_total']:,}" if h else "-",
                     f"{f['events_stored']:,}/{f['events_total']:,}" if f else "-",
                     _ratio(h.get("events_total"), f.get("events_total"), seconds=False)))
        rows.append((str(n), "(e)   store time (events/s)",
                     f"{_fmt_s(h['store_s'])} ({h['events_per_s']:,.0f})" if h else "-",
                     f"{_fmt_s(f['store_s'])} ({f['events_per_s']:,.0f})" if f else "-", "-"))
        for key, label in (("materialized_s", "(e) instance.get_materialized_partitions"),
                           ("status_first_s", "(e) GraphQL assetPartitionStatuses, first"),
                           ("status_cached_s", "(e) GraphQL assetPartitionStatuses, cached")):
            rows.append((str(n), label, cell(h, key), cell(f, key), _ratio(h.get(key), f.get(key))))

    header = ("robots", "metric", "hot window", "full grid", "ratio")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(5)]
    print()
    windows = [f"{name}: {results['fleet'][(sizes[0], mode)]['days']} days from "
               f"{results['fleet'][(sizes[0], mode)]['hot_start']}"
               for mode, name in (("hot", "hot window"), ("full", "full grid")) if (sizes[0], mode) in results["fleet"]]
    print("; ".join(windows))
    print(f"instance storage: {store_line}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"store": args.store, "storage": store_line, "load": results["load"],
             "fleet": {f"{n}/{m}": r for (n, m), r in results["fleet"].items()}}, indent=2))


if __name__ == "__main__":
    main()
