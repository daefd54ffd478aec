"""Shared fixtures: every test gets its own FLYWHEEL_HOME, lake and Dagster home."""

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REAL_LOGS = Path(__file__).resolve().parents[2] / "shared" / "real-logs"
DRILL_MLFLOW_UI = "http://127.0.0.1:5000"


def days_ago(n: int) -> str:
    """The UTC day ``n`` days before today: robot x day partitions exist only for the hot window
    (the last FLYWHEEL_HOT_DAYS days), so tests that ingest use recent days, not fixed dates."""
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=n)).isoformat()


@pytest.fixture(autouse=True, scope="session")
def _quiet_env(tmp_path_factory):
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # `make test` exports the checkout's FLYWHEEL_HOME and DAGSTER_HOME (.flywheel/, which a clean
    # clone does not have yet): the suite never reads or writes the developer's own state, so a test
    # that does not set up a home of its own gets a session-wide throwaway one.
    home = tmp_path_factory.mktemp("session_flywheel_home")
    (home / "dagster_home").mkdir()
    os.environ["FLYWHEEL_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")
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


@dataclass(frozen=True)
class Drilled:
    """A FLYWHEEL_HOME the on-call drill ran in, and what the drill reported."""

    home: Path
    result: dict

    @property
    def lake(self) -> Path:
        return self.home / "lake"


@pytest.fixture(scope="session")
def drilled(tmp_path_factory) -> Drilled:
    """The on-call drill, run once per session the way a person runs it (`flywheel drill`, in a
    subprocess with its own FLYWHEEL_HOME); the drill test and the UI tests both look at it.
    ``FLYWHEEL_DRILL_HOME=<folder>`` reuses a drill run there before (quicker while writing tests)."""
    reuse = os.environ.get("FLYWHEEL_DRILL_HOME")
    home = Path(reuse) if reuse else tmp_path_factory.mktemp("drill") / "home"
    out = home.parent / f"{home.name}-drill.json"
    if not (reuse and out.is_file()):
        env = {k: v for k, v in os.environ.items()
               if k not in ("FLYWHEEL_LAKE", "FLYWHEEL_MLFLOW_URI", "FLYWHEEL_MLFLOW_ARTIFACTS", "DAGSTER_HOME")}
        env.update({"FLYWHEEL_HOME": str(home.parent), "DAGSTER_DISABLE_TELEMETRY": "1", "GIT_PYTHON_REFRESH": "quiet",
                    "MUJOCO_GL": env.get("MUJOCO_GL", "egl"),
                    # Where `mlflow ui` serves by default: MLflow runs show as links (the UI tests check it).
                    "FLYWHEEL_MLFLOW_UI_URL": env.get("FLYWHEEL_MLFLOW_UI_URL", DRILL_MLFLOW_UI)})
        log = home.parent / f"{home.name}-drill.log"
        with log.open("w") as f:
            proc = subprocess.run([sys.executable, "-m", "flywheel_pipelines.cli", "drill", "--home", str(home),
                                   "--json-out", str(out)], stdout=f, stderr=subprocess.STDOUT, timeout=900,
                                  cwd=Path(__file__).resolve().parents[1], env=env)
        text = log.read_text()
        print(text[-3000:])  # the drill's own account, with its time, in the test log
        assert proc.returncode == 0, f"flywheel drill failed (exit {proc.returncode}):\n{text[-6000:]}"
    return Drilled(home, json.loads(out.read_text()))
