"""Issue #16 (1): a run whose worker was killed with -9 must not block automation forever.

The instance is the repo-root dagster.yaml as `make dev` installs it; the run worker is a real
process killed with SIGKILL; the monitoring pass is Dagster's own (the daemon's run monitoring);
the catalog's automation is evaluated before and after.
"""

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.execution.api import create_execution_plan
from dagster._daemon.monitoring.run_monitoring import monitor_started_run

from flywheel_pipelines.definitions import defs as load_defs
from flywheel_pipelines.defs.partitions import ROBOTS, robot_day_key
from flywheel_pipelines.run_launcher import LocalRunLauncher, process_alive
from flywheel_pipelines_tests.conftest import days_ago

REPO = Path(__file__).resolve().parents[2]
CATALOG = dg.AssetKey("episode_catalog")


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _start_catalog_run(instance, defs, worker_pid: int) -> dg.DagsterRun:
    """A catalog run as the code server starts one: created, its worker's pid reported, STARTED."""
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={CATALOG})
    run = instance.create_run_for_job(job_def=job, execution_plan=create_execution_plan(job), asset_selection={CATALOG})
    instance.report_engine_event(f"Started process for run (pid: {worker_pid}).", run, EngineEventData.in_process(worker_pid))
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=run.job_name),
                                  run.run_id)
    return instance.get_run_by_id(run.run_id)


def _requested(result) -> dict[str, int]:
    return {r.key.to_user_string(): r.true_subset.size for r in result.results if r.true_subset.size}


def test_the_embedded_instance_monitors_runs(instance):
    assert isinstance(instance.run_launcher, LocalRunLauncher)
    assert instance.run_monitoring_enabled and instance.run_launcher.supports_check_run_worker_health


def test_a_killed_run_is_marked_failed_and_the_catalog_automation_fires_again(instance):
    defs = load_defs()
    log = logging.getLogger(__name__)
    instance.add_dynamic_partitions(ROBOTS.name, ["r001"])
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    worker = subprocess.Popen(["sleep", "600"])
    try:
        run = _start_catalog_run(instance, defs, worker.pid)
        instance.report_runless_asset_event(dg.AssetMaterialization("episodes", partition=robot_day_key("r001", days_ago(1))))
        blocked = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert blocked.total_requested == 0  # one refresh at a time: the catalog run is in progress

        monitor_started_run(instance, None, instance.get_run_record_by_id(run.run_id), log)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # alive: left alone

        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        monitor_started_run(instance, None, instance.get_run_record_by_id(run.run_id), log)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        failure = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_FAILURE).records[0]
        assert f"pid {worker.pid}" in failure.event_log_entry.dagster_event.message

        again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=blocked.cursor)
        assert _requested(again).get("episode_catalog") == 1
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_a_zombie_or_a_reused_pid_is_not_a_live_worker():
    worker = subprocess.Popen(["true"])
    time.sleep(0.3)  # exited, not reaped: a zombie
    assert not process_alive(worker.pid, time.time())
    worker.wait()
    me = os.getpid()
    assert process_alive(me, time.time())
    assert not process_alive(me, time.time() - 10 ** 7)  # this pid was reported long before this process started


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_real_daemon_marks_a_run_whose_worker_got_kill_9_failed(tmp_path):
    """The issue's repro end to end: the repo-root dagster.yaml, a real dagster-daemon, a run
    launched through the queue and the code server, its worker killed with -9."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(f"load_from:\n  - python_file:\n      relative_path: {Path(__file__).parent / 'sleepy_defs.py'}\n"
                         "      location_name: sleepy\n")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": os.pathsep.join(sys.path)}
    with dg.DagsterInstance.from_config(str(home)):
        pass  # the SQLite storage is created here, not by the daemon and the launcher at once
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        launched = subprocess.run([str(bin_dir / "dagster"), "job", "launch", "-w", str(workspace), "-j", "sleepy_job"],
                                  env=env, capture_output=True, text=True, timeout=120)
        assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-2000:]
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 240
            while worker is None and time.monotonic() < deadline:
                for run in instance.get_runs():
                    if run.status == dg.DagsterRunStatus.STARTED:
                        from flywheel_pipelines.run_launcher import worker_pid

                        found = worker_pid(instance, run.run_id)
                        worker = (run.run_id, found[0]) if found else None
                time.sleep(1)
            assert worker is not None, (tmp_path / "daemon.log").read_text()[-3000:]
            run_id, pid = worker
            # kill -9 the worker and the code server that started it (as when `dagster dev` or the
            # machine's OOM killer takes both): nobody is left to report the run's end. (A worker
            # killed alone is reported by its live code server, with or without monitoring.)
            with open(f"/proc/{pid}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            os.kill(parent, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 120
            while instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED and time.monotonic() < deadline:
                time.sleep(1)
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE, \
                (tmp_path / "daemon.log").read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(10)
        log.close()
