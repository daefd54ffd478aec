"""Ingest throughput: our standardize (decode + align + Parquet) beside mcap-ros2-support's decode.

Both run in one process on the same simulated robot-day, so the ratio is meaningful on a noisy,
shared machine. Usage: python benchmarks/bench_ingest.py [--episodes 200]
"""

import argparse
import io
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from mcap_ros2.reader import read_ros2_messages

from flywheel_pipelines.lib.episodes.embodiment import load_embodiment
from flywheel_pipelines.lib.episodes.standardize import SourceFile, standardize
from flywheel_pipelines.lib.sim.fleet import simulate_robot_day
from flywheel_pipelines.lib.sim.robot import sample_profile
from flywheel_pipelines.lib.storage import LocalLake, sha256_file


def best_of(n: int, fn):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lake = LocalLake(tmp)
        day = simulate_robot_day(lake, sample_profile("r101", seed=0), "2026-11-01", episodes=args.episodes, seed=0)
        files = [SourceFile(k, lake.path(k), sha256_file(lake.path(k))) for k in day.keys]
        size = sum(Path(f.path).stat().st_size for f in files)
        emb = load_embodiment()

        def peer() -> int:
            return sum(1 for f in files for _ in read_ros2_messages(str(f.path)))

        def ours() -> int:
            result = standardize(files, emb, robot="r101", day="2026-11-01")
            for table in (result.frames, result.episodes):
                pq.write_table(table, io.BytesIO(), compression="zstd")
            return result.frames.num_rows

        t_peer, messages = best_of(args.repeat, peer)
        t_ours, frames = best_of(args.repeat, ours)
    print(f"log: {len(files)} MCAP files, {size / 1e6:.1f} MB, {messages} messages, {frames} frames")
    print(f"mcap-ros2-support read_ros2_messages (decode only): {messages / t_peer:,.0f} msg/s ({t_peer:.2f} s)")
    print(f"flywheel standardize (decode + align + Parquet):    {messages / t_ours:,.0f} msg/s ({t_ours:.2f} s)")
    print(f"ratio ours / peer: {t_peer / t_ours:.2f}x")


if __name__ == "__main__":
    main()
