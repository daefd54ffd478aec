"""Fleet scale: the hot robot x day window against the full 3-year grid, at 10 / 100 / 1,000 robots.

    .venv/bin/python benchmarks/bench_fleet.py --quick      # 10 and 100 robots (a few minutes)
    .venv/bin/python benchmarks/bench_fleet.py              # 10, 100 and 1,000 robots (~10 minutes)

Two configurations of the same code location, each in its own subprocess (the partitions are
computed when the code location loads), with the fleet starting 3 years (1095 days) ago
(FLYWHEEL_FLEET_START):

- hot window: the default FLYWHEEL_HOT_DAYS (28 days, from a Monday: ~30 date partitions);
- full grid: FLYWHEEL_HOT_DAYS=1095, every day of the 3 years a robot x day partition.

Measured, with real Dagster code paths and a temporary SQLite instance:

(a) definitions load: a fresh interpreter importing flywheel_pipelines.definitions, building the
    Definitions, the repository, its asset graph and jobs (wall time of the subprocess, and in-process).
(b) partition keys: enumerating ROBOT_DAY with N robots registered (dynamic partitions).
(c) sensor tick: raw_log_sensor.evaluate_tick over a local lake where each of the N registered
    robots uploaded one small file today (plan_runs hashes files and looks up the last manifest of
    each robot-day; Dagster then resolves and validates the N run requests' partition keys).
(d) backfill: lib/backfill.launch_day_backfill of yesterday across the fleet (N partitions)
    through Dagster's GraphQL API (our code location loaded in process); Dagster validates the keys
    against the job's partitions.
(e) partition status: log_manifest materialization events for every robot x day of the grid,
    stored through the instance's event log storage (store_event_batch); then the
    instance's get_materialized_partitions and the UI's assetPartitionStatuses GraphQL query (first:
    the asset status cache is built; second: cached). SQLite stores ~100 events/s on 2 cores,
    so storing is capped at --event-budget-s per cell: when the whole grid does not fit, the query
    columns say "not run (storing all N events would take ~X min)", and the stored count is shown.

The instance and lake live in /dev/shm when it exists (less fsync noise; the CPU cost is the same).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

YEARS_DAYS = 1095
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None
ROOT = Path(__file__).resolve().parents[1]

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


def _materialization(robot: str, day: str):
    import dagster as dg
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    # What instance.report_runless_asset_event builds, stored in batches.
    asset_event = dg.AssetMaterialization("log_manifest", partition=dg.MultiPartitionKey({"robot": robot, "date": day}))
    event = DagsterEvent(event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                         event_specific_data=StepMaterializationData(asset_event), job_name=RUNLESS_JOB_NAME)
    return EventLogEntry(error_info=None, level="debug", user_message="", run_id=RUNLESS_RUN_ID,
                         timestamp=time.time(), dagster_event=event)


def worker_fleet(n: int, event_budget_s: float) -> dict:
    """(b) to (e) for N robots in this process's configuration."""
    out: dict = {}
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
        home.mkdir()
        with dg.instance_for_test(temp_dir=str(home)) as instance:
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

            # (d) a one-day backfill across the fleet through the GraphQL API.
            t = time.perf_counter()
            with backfill.in_process_execute(instance) as execute:
                out["location_load_s"] = time.perf_counter() - t
                day = (today - dt.timedelta(days=1)).isoformat()
                day_robots = backfill.day_robots(lake, day, instance.get_dynamic_partitions(ROBOTS.name))
                t = time.perf_counter()
                backfill_id = backfill.launch_day_backfill(execute, day, day_robots)
                out["backfill_s"] = time.perf_counter() - t
                out["backfill_partitions"] = len(instance.get_backfill(backfill_id).partition_names)

                # (e) materializations of log_manifest for every robot x day, newest days first.
                total = n * len(days)
                out["events_total"] = total
                stored, t0 = 0, time.perf_counter()
                storage = instance.event_log_storage
                for day_key in reversed(days):
                    storage.store_event_batch([_materialization(r, day_key) for r in robots])
                    stored += n
                    elapsed = time.perf_counter() - t0
                    if stored < total and elapsed + elapsed / stored * n > event_budget_s:
                        break
                out["events_stored"] = stored
                out["store_s"] = time.perf_counter() - t0
                out["store_ms_per_event"] = out["store_s"] / stored * 1000
                if stored < total:
                    out["store_all_min"] = total * out["store_s"] / stored / 60
                else:
                    t = time.perf_counter()
                    materialized = instance.get_materialized_partitions(dg.AssetKey("log_manifest"))
                    out["materialized_s"] = time.perf_counter() - t
                    out["materialized"] = len(materialized)
                    for attempt in ("status_first_s", "status_cached_s"):
                        t = time.perf_counter()
                        result = execute(STATUS_QUERY, {"assetKey": {"path": ["log_manifest"]}})
                        out[attempt] = time.perf_counter() - t
                    statuses = result["assetNodeOrError"]["assetPartitionStatuses"]
                    out["status_materialized"] = sum(
                        len(r["secondaryDim"].get("materializedPartitions", [])) *
                        (days.index(r["primaryDimEndKey"]) - days.index(r["primaryDimStartKey"]) + 1)
                        for r in statuses["ranges"])
    return out


# --- driver ---------------------------------------------------------------------------------------


def _run_worker(mode: str, args: list[str], timeout: float) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *args], env=_env(mode), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"worker {mode} {args} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _ratio(hot, full) -> str:
    if isinstance(hot, (int, float)) and isinstance(full, (int, float)) and hot:
        return f"{full / hot:.1f}x"
    return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 robots only")
    parser.add_argument("--robots", type=int, nargs="*", help="fleet sizes (default 10 100 1000)")
    parser.add_argument("--event-budget-s", type=float, default=60.0,
                        help="seconds per cell for storing materialization events (default 60)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the raw results here")
    parser.add_argument("--worker", choices=["load", "fleet"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "load":
        print(json.dumps(worker_load()))
        return
    if args.worker == "fleet":
        print(json.dumps(worker_fleet(args.n, args.event_budget_s)))
        return

    sizes = args.robots or ([10, 100] if args.quick else [10, 100, 1000])
    started = time.perf_counter()
    results: dict = {"load": {}, "fleet": {}}
    print(f"fleet start {_env('full')['FLYWHEEL_FLEET_START']} ({YEARS_DAYS} days ago), today {_today()} UTC; "
          f"sizes {sizes}; event budget {args.event_budget_s:.0f} s per cell", flush=True)
    for mode in ("hot", "full"):
        results["load"][mode] = _run_worker(mode, ["--worker", "load"], timeout=300)
        print(f"  (a) {mode}: {results['load'][mode]}", flush=True)
    for n in sizes:
        for mode in ("hot", "full"):
            r = _run_worker(mode, ["--worker", "fleet", "--n", str(n), "--event-budget-s", str(args.event_budget_s)],
                            timeout=1200)
            results["fleet"][(n, mode)] = r
            print(f"  {n} robots, {mode}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})}",
                  flush=True)

    rows: list[tuple[str, str, str, str, str]] = []
    la, lf = results["load"]["hot"], results["load"]["full"]
    rows.append(("any", "(a) definitions load, subprocess wall", _fmt_s(la["wall_s"]), _fmt_s(lf["wall_s"]),
                 _ratio(la["wall_s"], lf["wall_s"])))
    rows.append(("any", "(a)   build Definitions + asset graph", _fmt_s(la["build_s"]), _fmt_s(lf["build_s"]),
                 _ratio(la["build_s"], lf["build_s"])))
    for n in sizes:
        h, f = results["fleet"][(n, "hot")], results["fleet"][(n, "full")]
        rows.append((str(n), "(b) robot x day partition keys", f"{h['keys']:,}", f"{f['keys']:,}", _ratio(h["keys"], f["keys"])))
        rows.append((str(n), "(b)   enumeration time", _fmt_s(h["keys_s"]), _fmt_s(f["keys_s"]),
                     _ratio(h["keys_s"], f["keys_s"])))
        rows.append((str(n), f"(c) sensor tick ({h['tick_requests']}/{f['tick_requests']} run requests)",
                     _fmt_s(h["tick_s"]), _fmt_s(f["tick_s"]), _ratio(h["tick_s"], f["tick_s"])))
        rows.append((str(n), "(d) code location load (in-process GraphQL)", _fmt_s(h["location_load_s"]),
                     _fmt_s(f["location_load_s"]), _ratio(h["location_load_s"], f["location_load_s"])))
        rows.append((str(n), f"(d) launch 1-day backfill ({h['backfill_partitions']}/{f['backfill_partitions']} partitions)",
                     _fmt_s(h["backfill_s"]), _fmt_s(f["backfill_s"]), _ratio(h["backfill_s"], f["backfill_s"])))
        rows.append((str(n), "(e) materialization events stored / grid",
                     f"{h['events_stored']:,}/{h['events_total']:,}", f"{f['events_stored']:,}/{f['events_total']:,}",
                     _ratio(h["events_total"], f["events_total"])))
        rows.append((str(n), "(e)   store time (ms/event)", f"{_fmt_s(h['store_s'])} ({h['store_ms_per_event']:.1f})",
                     f"{_fmt_s(f['store_s'])} ({f['store_ms_per_event']:.1f})", "-"))

        def cell(r: dict, key: str) -> str:
            if key in r:
                return _fmt_s(r[key])
            return f"not run (storing all would take ~{r['store_all_min']:.0f} min)"

        for key, label in (("materialized_s", "(e) instance.get_materialized_partitions"),
                           ("status_first_s", "(e) GraphQL assetPartitionStatuses, first"),
                           ("status_cached_s", "(e) GraphQL assetPartitionStatuses, cached")):
            rows.append((str(n), label, cell(h, key), cell(f, key), _ratio(h.get(key), f.get(key))))

    widths = [max(len(r[i]) for r in rows + [("robots", "metric", "hot window", "full grid", "ratio")]) for i in range(5)]
    print()
    print(f"hot window: {results['fleet'][(sizes[0], 'hot')]['days']} days from "
          f"{results['fleet'][(sizes[0], 'hot')]['hot_start']}; full grid: "
          f"{results['fleet'][(sizes[0], 'full')]['days']} days from {results['fleet'][(sizes[0], 'full')]['hot_start']}")
    header = ("robots", "metric", "hot window", "full grid", "ratio")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"load": results["load"], "fleet": {f"{n}/{m}": r for (n, m), r in results["fleet"].items()}}, indent=2))


if __name__ == "__main__":
    main()
