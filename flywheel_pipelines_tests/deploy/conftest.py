"""Fixtures for the production instance (deploy/dagster.yaml) against a real PostgreSQL server."""

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from flywheel_pipelines_tests.conftest import missing
from flywheel_pipelines_tests.deploy.postgres import PostgresServer, find_bin_dir, running_postgres

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """One server for the session; each test gets its own database (see `deployment`)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        missing("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin "
                "(CI installs them with tools/ensure_postgres.sh)")
    with running_postgres(bin_dir) as server:
        yield server


@dataclass(frozen=True)
class Deployment:
    """A DAGSTER_HOME holding deploy/dagster.yaml, its own database, and a lake under FLYWHEEL_HOME."""

    dagster_home: Path
    flywheel_home: Path
    env: dict[str, str]

    @property
    def lake_root(self) -> Path:
        return self.flywheel_home / "lake"


@pytest.fixture
def deployment(postgres_server, tmp_path, monkeypatch) -> Deployment:
    db = postgres_server.create_database(f"dagster_{secrets.token_hex(4)}")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    flywheel_home = tmp_path / "flywheel"
    env = {
        **postgres_server.dagster_env(db),
        "DAGSTER_HOME": str(home),
        "FLYWHEEL_HOME": str(flywheel_home),
        # deploy/dagster.yaml's S3ComputeLogManager: these tests have no S3 for it, and need none; an
        # endpoint that refuses connections makes each upload fail at once (logged, the run goes on).
        "DAGSTER_COMPUTE_LOGS_BUCKET": "flywheel-test",
        "DAGSTER_COMPUTE_LOGS_PREFIX": "dagster/compute-logs",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
        "AWS_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("FLYWHEEL_LAKE", "FLYWHEEL_MLFLOW_URI", "FLYWHEEL_MLFLOW_ARTIFACTS"):
        monkeypatch.delenv(key, raising=False)
    return Deployment(dagster_home=home, flywheel_home=flywheel_home, env=env)
