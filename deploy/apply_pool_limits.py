"""Set the instance's concurrency pool limits from the environment.

Dagster keeps per-pool limits in the instance database (dagster.yaml only holds a default for
pools without one), so the deployment writes them here, on every daemon start
(deploy/start_daemon.sh). The environment is the source of truth: a limit changed in the UI lasts
until the next daemon start.

    FLYWHEEL_POOL_LIMIT_TRAINING     training runs at once   (policy_candidate;  default 1)
    FLYWHEEL_POOL_LIMIT_INGEST       ingest runs at once     (log_manifest, ...; default 4)
    FLYWHEEL_POOL_LIMIT_EVALUATION   evaluation runs at once (eval_report;       default 1)

    archive                          always 1: runs of one month's episode_archive must not overlap

0 pauses a pool: its runs stay queued. Run with DAGSTER_HOME (and the DAGSTER_PG_* variables) set.
"""

import os
import sys
from collections.abc import Mapping

# Pool -> default limit. The pool names are the `pool=` of the assets (a test keeps them in step).
POOLS = {"training": 1, "ingest": 4, "evaluation": 1}
# Pools whose limit is part of correctness, not tuning: not read from the environment.
FIXED = {"archive": 1}


def env_var(pool: str) -> str:
    return f"FLYWHEEL_POOL_LIMIT_{pool.upper()}"


def limits_from_env(environ: Mapping[str, str]) -> dict[str, int]:
    """Each pool's limit: its FLYWHEEL_POOL_LIMIT_<POOL> if set, else the default; a bad value raises."""
    limits = {}
    for pool, default in POOLS.items():
        raw = environ.get(env_var(pool), "").strip()
        if not raw:
            limits[pool] = default
            continue
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"{env_var(pool)}={raw!r}: expected a whole number >= 0")
        limits[pool] = value
    return {**limits, **FIXED}


def main() -> int:
    try:
        limits = limits_from_env(os.environ)
    except ValueError as exc:
        print(f"apply_pool_limits: {exc}", file=sys.stderr)
        return 2
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        for pool, limit in limits.items():
            instance.event_log_storage.set_concurrency_slots(pool, limit)
            print(f"pool {pool}: limit {limit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
