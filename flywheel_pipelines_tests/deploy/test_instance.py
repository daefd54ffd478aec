"""deploy/dagster.yaml loads as the production instance: PostgreSQL storage from the environment,
the run queue, run-granularity pools with limits from the environment, retries and monitoring."""

import importlib.util
import os
import subprocess
import sys

import dagster as dg
import psycopg2
import pytest
from dagster._core.instance.config import PoolGranularity
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from flywheel_pipelines_tests.deploy.conftest import DEPLOY

APPLY_POOL_LIMITS = DEPLOY / "apply_pool_limits.py"


def load_apply_pool_limits():
    spec = importlib.util.spec_from_file_location("apply_pool_limits", APPLY_POOL_LIMITS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_pool_limits(deployment, **limits: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **deployment.env, **{f"FLYWHEEL_POOL_LIMIT_{k.upper()}": v for k, v in limits.items()}}
    return subprocess.run([sys.executable, str(APPLY_POOL_LIMITS)], env=env, capture_output=True, text=True, timeout=120)


def pool_limits(instance: dg.DagsterInstance) -> dict[str, int]:
    return {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}


def test_instance_stores_runs_events_and_schedules_in_postgres(deployment):
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        run_id = instance.create_run_for_job(dg.GraphDefinition("noop").to_job()).run_id
    # The rows are in the database named by DAGSTER_PG_DB, reached with the env's password.
    env = deployment.env
    conn = psycopg2.connect(host=env["DAGSTER_PG_HOST"], port=env["DAGSTER_PG_PORT"], user=env["DAGSTER_PG_USER"],
                            password=env["DAGSTER_PG_PASSWORD"], dbname=env["DAGSTER_PG_DB"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT run_id FROM runs")
            assert [r[0] for r in cur.fetchall()] == [run_id]
            cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_name IN ('event_logs', 'jobs')")
            assert cur.fetchone()[0] == 2
    finally:
        conn.close()


def test_instance_settings_for_production(deployment):
    with dg.DagsterInstance.get() as instance:
        assert instance.telemetry_enabled is False
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        # Only crashes of the run worker are retried; an asset that raised is a real failure.
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_resume_run_attempts == 0
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.pool_granularity == PoolGranularity.RUN
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.run_queue_config.max_concurrent_runs == 20


def test_a_missing_connection_variable_fails_loudly(deployment, monkeypatch):
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    with pytest.raises(Exception, match="DAGSTER_PG_PASSWORD"):
        dg.DagsterInstance.get()


def test_pool_limits_come_from_the_environment(deployment):
    result = apply_pool_limits(deployment, training="2", ingest="3")
    assert result.returncode == 0, result.stderr
    with dg.DagsterInstance.get() as instance:
        assert pool_limits(instance) == {"training": 2, "ingest": 3, "evaluation": 1, "archive": 1}
        # Every daemon start re-applies them: the environment wins over an edit in the UI.
        instance.event_log_storage.set_concurrency_slots("training", 5)
        assert apply_pool_limits(deployment, training="1").returncode == 0
        assert pool_limits(instance)["training"] == 1
        # A bad value stops the daemon's start (set -e) and changes no pool, not even the valid ones.
        bad = apply_pool_limits(deployment, training="0", ingest="four")
        assert bad.returncode != 0 and "FLYWHEEL_POOL_LIMIT_INGEST" in bad.stderr
        assert pool_limits(instance) == {"training": 1, "ingest": 4, "evaluation": 1, "archive": 1}


def test_every_pool_in_the_code_has_a_deployed_limit():
    from flywheel_pipelines.definitions import defs

    graph = defs().resolve_asset_graph()
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys() if graph.get(key).pools}
    assert pools["policy_candidate"] == {"training"}
    assert pools["log_manifest"] == {"ingest"}
    assert pools["eval_report"] == {"evaluation"}
    assert pools["episode_archive"] == {"archive"}
    declared = set().union(*pools.values())
    module = load_apply_pool_limits()
    assert declared == set(module.POOLS) | set(module.FIXED)


@pytest.mark.parametrize("value", ["-1", "1.5", "many"])
def test_pool_limit_values_are_checked(value):
    with pytest.raises(ValueError, match="FLYWHEEL_POOL_LIMIT_TRAINING"):
        load_apply_pool_limits().limits_from_env({"FLYWHEEL_POOL_LIMIT_TRAINING": value})


def test_compute_logs_go_to_s3_configured_from_the_environment(deployment, monkeypatch):
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    monkeypatch.setenv("DAGSTER_COMPUTE_LOGS_BUCKET", "team-bucket")
    monkeypatch.setenv("DAGSTER_COMPUTE_LOGS_PREFIX", "dagster/compute-logs")
    with dg.DagsterInstance.get() as instance:
        manager = instance.compute_log_manager
        assert isinstance(manager, S3ComputeLogManager)
        assert manager.inst_data.config_dict["bucket"] == {"env": "DAGSTER_COMPUTE_LOGS_BUCKET"}
        assert manager._s3_bucket == "team-bucket" and manager._s3_prefix == "dagster/compute-logs"
        assert manager._s3_session.meta.endpoint_url == deployment.env["AWS_ENDPOINT_URL_S3"]
    # The manager is built when first used (the first step of a run): an unset bucket fails there.
    monkeypatch.delenv("DAGSTER_COMPUTE_LOGS_BUCKET")
    with dg.DagsterInstance.get() as instance, pytest.raises(Exception, match="DAGSTER_COMPUTE_LOGS_BUCKET"):
        instance.compute_log_manager  # noqa: B018
