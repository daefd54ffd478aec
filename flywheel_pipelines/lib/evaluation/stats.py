"""Small, exact statistics for evaluation reports.

- One proportion: the Wilson score interval.
- Candidate minus production on the *same* scenarios (paired binary outcomes): Newcombe's hybrid
  score interval for a difference of paired proportions (method 10 of Newcombe, Statistics in
  Medicine 17:2635-2650, 1998). It is built from the two Wilson intervals and the correlation of
  the pairs, needs no random numbers, stays inside [-1, 1] and behaves at 0/n and n/n, where
  good policies live. Pairing matters: two policies that fail the same hard scenarios differ far
  less than two independent samples with the same rates would suggest, and the interval says so.
- Paired differences of a continuous metric (return, time to goal, jerk): a percentile bootstrap
  of the mean difference, resampling scenarios (pairs) with a fixed seed, so the same results
  always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959964


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0/n and n/n, which
    is exactly where small evaluation suites live.
    """
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def paired_table(first: Sequence[bool], second: Sequence[bool]) -> tuple[int, int, int, int]:
    """(both succeed, only first, only second, neither) over paired outcomes."""
    if len(first) != len(second):
        raise ValueError(f"paired outcomes of different lengths: {len(first)} and {len(second)}")
    a = sum(1 for x, y in zip(first, second, strict=True) if x and y)
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if not x and y)
    return a, b, c, len(first) - a - b - c


def newcombe_paired_interval(a: int, b: int, c: int, d: int, *, z: float = Z95) -> tuple[float, float, float]:
    """Difference p1 - p2 of paired proportions and its interval (Newcombe 1998, method 10).

    ``a``: both succeed, ``b``: only the first, ``c``: only the second, ``d``: neither;
    p1 = (a + b) / n, p2 = (a + c) / n. Returns (difference, low, high).
    """
    n = a + b + c + d
    if n == 0:
        return 0.0, -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z=z)
    l2, u2 = wilson_interval(a + c, n, z=z)
    # The correlation of the pairs, shrunk as Newcombe prescribes: a positive ad - bc loses n/2
    # (and not below 0), a negative one is used as is; 0 when a margin is empty.
    product = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / math.sqrt(product) if product > 0 else 0.0
    diff = p1 - p2
    low = diff - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    high = diff + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return diff, max(-1.0, low), min(1.0, high)


def paired_bootstrap(diffs: Sequence[float], *, resamples: int, seed: int,
                     confidence: float = 0.95) -> tuple[float, float, float] | None:
    """Mean of paired differences and its percentile bootstrap interval (None without data).

    The same differences, resamples and seed always give the same interval.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return None
    mean = float(d.mean())
    if d.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return mean, float(low), float(high)
