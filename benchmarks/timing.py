"""Shared timing helper for the benchmark scripts (run as `python benchmarks/<name>.py`)."""

import time


def best_of(n: int, fn):
    """The fastest of ``n`` calls of ``fn`` (seconds) and the last call's result: on a shared,
    noisy machine the minimum is the least disturbed run."""
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out
