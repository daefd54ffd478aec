"""Shared fixtures: every test gets its own FLYWHEEL_HOME, lake and Dagster home."""

import datetime as dt
import os
from pathlib import Path

import pytest

REAL_LOGS = Path(__file__).resolve().parents[2] / "shared" / "real-logs"


def days_ago(n: int) -> str:
    """The UTC day ``n`` days before today: robot x day partitions exist only for the hot window
    (the last FLYWHEEL_HOT_DAYS days), so tests that ingest use recent days, not fixed dates."""
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=n)).isoformat()


@pytest.fixture(autouse=True, scope="session")
def _quiet_env():
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    yield


@pytest.fixture
def flywheel_home(tmp_path, monkeypatch) -> Path:
    """An isolated embedded default: lake, Dagster home and MLflow store under tmp_path."""
    home = tmp_path / "flywheel"
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    monkeypatch.delenv("FLYWHEEL_LAKE", raising=False)
    monkeypatch.delenv("FLYWHEEL_MLFLOW_URI", raising=False)
    (home / "dagster_home").mkdir(parents=True)
    return home


def missing(message: str):
    """Something a test needs is not here: a failure in CI (which must have everything), a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_real_logs() -> Path:
    """The shared real logs; in CI their absence is a failure, on a laptop a skip."""
    if not REAL_LOGS.is_dir():
        missing(f"real logs not present at {REAL_LOGS} (../shared/real-logs beside the repository)")
    return REAL_LOGS
