"""A heartbeat for the demo and the drill: a job executed in process says nothing until it ends
(their Dagster logs are quiet on purpose), and training plus evaluation take minutes. Every few
seconds a line says how long it has run and which steps are running, read from the instance
the job writes its events to.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

HEARTBEAT_S = 8.0  # a person should never wait 10 s without a line


def running_steps(instance, job_name: str) -> list[str]:
    """The steps of ``job_name``'s newest started run that began and have not ended yet."""
    import dagster as dg

    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.STARTED]),
                             limit=1)
    if not runs:
        return []
    kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
             dg.DagsterEventType.STEP_SKIPPED}
    started, ended = [], set()
    for record in instance.get_records_for_run(runs[0].run_id, of_type=kinds).records:
        entry = record.event_log_entry
        if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
            started.append(entry.step_key)
        else:
            ended.add(entry.step_key)
    return [s for s in started if s not in ended]


@contextlib.contextmanager
def heartbeat(log: Callable[[str], None], label: str, *, instance=None, job_name: str | None = None,
              every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """While the block runs, log ``  ... <label>: <steps> running (<n> s)`` every ``every_s``
    seconds; the steps only with ``instance`` and ``job_name``. Reading them is best effort: a
    failed read prints the time alone and never disturbs the run."""
    stop = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not stop.wait(every_s):
            steps: list[str] = []
            if instance is not None and job_name:
                with contextlib.suppress(Exception):
                    steps = running_steps(instance, job_name)
            doing = f"{', '.join(steps)} running, " if steps else ""
            log(f"  ... {label}: {doing}{time.monotonic() - start:.0f} s")

    thread = threading.Thread(target=beat, name=f"heartbeat {label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
