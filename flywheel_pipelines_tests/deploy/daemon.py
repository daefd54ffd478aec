"""`dagster-daemon run` as production starts it (deploy/start_daemon.sh), as a subprocess of a test."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
START_DAEMON = REPO / "deploy" / "start_daemon.sh"
WORKSPACE = REPO / "workspace.yaml"


class Daemon:
    """One daemon session: started in its own process group so that stopping it also stops the
    code server and run workers it spawned; its output goes to a log shown when a wait fails."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(START_DAEMON), "-w", str(WORKSPACE), "--log-level", "info"],
                cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the group (the daemon shuts its threads and code server down), then SIGKILL what is left.

        The daemon is waited for without being reaped, so its pid still names its group when the
        leftovers are killed (a reaped pid could be reused).
        """
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not _exited(proc) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def tail(self, lines: int = 60) -> str:
        """The end of the daemon's log, each repeated message (a warning per code load) once."""
        if not self.log.exists():
            return ""
        seen, kept = set(), []
        for line in self.log.read_text(errors="replace").splitlines():
            message = line.split(" - ", 1)[-1]
            if message not in seen:
                seen.add(message)
                kept.append(line)
        return "\n".join(kept[-lines:])

    def wait_for(self, what: str, probe: Callable[[], T], timeout: float, interval: float = 0.5) -> T:
        """Poll `probe` until it returns something truthy; fail with the daemon's log otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if self.proc is not None and _exited(self.proc):
                raise AssertionError(f"daemon exited waiting for {what}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n--- daemon log ---\n{self.tail()}")
            time.sleep(interval)


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the process has exited, without reaping it."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
