"""A built instance and a `dagster-webserver` on it, for the UI tests.

The instance is a FLYWHEEL_HOME (lake, dagster_home, MLflow store) that the on-call drill filled
(``conftest.py``); the webserver runs on it with exactly that environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def instance_env(home: Path) -> dict[str, str]:
    """The environment every process on ``home`` runs with: FLYWHEEL_HOME and DAGSTER_HOME set,
    the lake and MLflow store taken from FLYWHEEL_HOME (never from the caller's environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FLYWHEEL_LAKE", "FLYWHEEL_MLFLOW_URI")}
    env.update({
        "FLYWHEEL_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "MUJOCO_GL": env.get("MUJOCO_GL", "egl"),
        "GIT_PYTHON_REFRESH": "quiet",
    })
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Webserver:
    url: str
    home: Path
    log: Path


def _webserver_command() -> list[str]:
    exe = Path(sys.executable).parent / "dagster-webserver"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dagster_webserver"]


@contextlib.contextmanager
def webserver(home: Path, log_path: Path, ready_timeout_s: float = 180) -> Iterator[Webserver]:
    """`dagster-webserver` on 127.0.0.1:<free port> over ``home``'s instance and the repository's
    workspace; yields once /server_info answers (the code location is loaded by then), and stops
    the server and its code server (one process group) on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    proc = subprocess.Popen(
        [*_webserver_command(), "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")],
        cwd=REPO, env=instance_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dagster-webserver exited with {proc.returncode} before it was ready:\n"
                                   + log_path.read_text()[-4000:])
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dagster-webserver not ready after {ready_timeout_s:.0f} s:\n"
                                   + log_path.read_text()[-4000:])
            time.sleep(0.5)
        yield Webserver(url=url, home=home, log=log_path)
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
