"""The embedded instance's run launcher: Dagster's default one, plus a health check of its run
workers, so that run monitoring marks a run whose worker died (kill -9, OOM) as failed.

Dagster's ``DefaultRunLauncher`` starts each run worker as a process of the code server on this
host, but does not support ``check_run_worker_health``: a run whose worker was killed stays
STARTED forever, and ``~in_progress()`` then holds the catalog's automation back for good. The
worker's pid is in the run's event log ("Started process for run (pid: N)"), and the worker runs
on this host, so its health is whether that process still lives. Production (Kubernetes) uses
the K8sRunLauncher, which has its own check; this one lives in the repo-root ``dagster.yaml``.
"""

from __future__ import annotations

import os

import dagster as dg

# Dagster exports no public name for a run launcher's health-check result (checked on 1.13.27):
# CheckRunHealthResult and WorkerStatus come from the launcher module itself (allowlisted in
# flywheel_pipelines_tests/test_public_api.py).
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

# A live process that started this long after the run reported its pid is another process that
# reuses the pid.
_PID_REUSE_SLACK_S = 5.0


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, time reported) of the run's worker process, from the run's engine events."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=50).records
    for record in records:
        entry = record.event_log_entry
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        pid = getattr(data, "metadata", {}).get("pid") if data is not None else None
        if pid is not None and str(pid.value).isdigit():
            return int(pid.value), entry.timestamp
    return None


def _process_start_time(pid: int) -> float | None:
    """Epoch seconds at which the process started (Linux /proc), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, reported_at: float) -> bool:
    """Whether the process ``pid`` reported at ``reported_at`` still runs (not a zombie, not a
    later process that reuses the pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else: cannot be our worker's reuse, cannot tell more
    if _process_state(pid) in {"Z", "X"}:
        return False
    started = _process_start_time(pid)
    return started is None or started <= reported_at + _PID_REUSE_SLACK_S


class LocalRunLauncher(dg.DefaultRunLauncher):
    """``DefaultRunLauncher`` with a run worker health check (the worker's pid on this host)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        found = worker_pid(self._instance, run.run_id)
        if found is None:
            # Not reported yet, or executed in-process (no launcher, no pid): nothing here can tell.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker pid reported")
        pid, reported_at = found
        if process_alive(pid, reported_at):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid} alive")
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker (pid {pid}) is no longer running on this host")
