"""Named crash points for fault-injection tests: ``FLYWHEEL_KILL_AT=<point>[,<point>...]`` makes
the process kill itself with SIGKILL when it reaches one of them (as a kill -9 from outside would,
at exactly the worst moment). Unset, a point costs one environment lookup.

The points sit between the steps of every atomic write: see ``POINTS`` and docs/reliability.md.
"""

from __future__ import annotations

import os
import signal

ENV = "FLYWHEEL_KILL_AT"

POINTS = (
    "local.write_bytes.before_rename",    # temp file written and synced, not yet renamed into place
    "local.put_raw.before_rename",        # raw upload copied aside, not yet in place
    "local.publish_dir.staged",           # folder assembled aside, the old one still in place
    "local.publish_dir.swapped",          # new folder in place, the old one not yet removed
    "s3.publish_dir.pending",             # pending marker written, no file uploaded
    "s3.publish_dir.uploaded",            # every file uploaded, folder manifest not written
    "s3.publish_dir.published",           # folder manifest written, pending marker not removed
    "mlflow.registered",                  # model version registered, policy folder not published
    "governance.delete.tombstoned",       # tombstone written, raw bytes not yet deleted
    "governance.erase.raw_deleted",       # erasure: raw bytes deleted, derived rows not yet rewritten
    "governance.erase.rows_rewritten",    # erasure: rows rewritten, datasets not yet deleted / rebuilt
)


def point(name: str) -> None:
    """Dies here (SIGKILL) when ``FLYWHEEL_KILL_AT`` names this point."""
    wanted = os.environ.get(ENV)
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
