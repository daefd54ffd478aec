"""Code-location load time beside its floor: ``import dagster`` in a fresh interpreter.

Each figure is the best of ``--repeat`` fresh interpreters (the process start is excluded: both
sides time from inside the interpreter). Loading the definitions imports dagster too, so the
ratio says how much our own modules add on top. Target: under 3 s on 2 cores. The machines are
shared and noisy: compare the two rows of one run, not runs.

Usage: python benchmarks/bench_load.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

PEER = "import time; t = time.perf_counter(); import dagster; print(time.perf_counter() - t)"
OURS = ("import time; t = time.perf_counter(); import flywheel_pipelines.definitions as d; d.defs(); "
        "print(time.perf_counter() - t)")


def best_of(code: str, repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``code`` (which prints its own seconds) in fresh interpreters."""
    times = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    peer = best_of(PEER, args.repeat)
    ours = best_of(OURS, args.repeat)
    print(f"import dagster (peer):              {peer:6.2f} s")
    print(f"load flywheel_pipelines.definitions: {ours:6.2f} s")
    print(f"ratio:                               {ours / peer:6.2f}x")


if __name__ == "__main__":
    main()
