"""The demo's and drill's heartbeat: a long in-process job is never silent, and says what runs."""

import time

import dagster as dg

from flywheel_pipelines.progress import heartbeat


@dg.op
def slow_step() -> int:
    time.sleep(1.5)
    return 1


@dg.job
def slow_job():
    slow_step()


def test_a_running_job_is_reported_with_its_step_until_it_ends():
    lines: list[str] = []
    with dg.DagsterInstance.ephemeral() as instance:
        with heartbeat(lines.append, "slow job", instance=instance, job_name="slow_job", every_s=0.2):
            assert slow_job.execute_in_process(instance=instance).success
        after = len(lines)
        time.sleep(0.5)
    assert any("... slow job: slow_step running, " in line for line in lines), lines
    assert len(lines) == after  # it stops with the block


def test_without_an_instance_it_reports_the_time_alone():
    lines: list[str] = []
    with heartbeat(lines.append, "waiting", every_s=0.1):
        time.sleep(0.35)
    assert lines and all(line.startswith("  ... waiting: ") and line.endswith(" s") for line in lines)
