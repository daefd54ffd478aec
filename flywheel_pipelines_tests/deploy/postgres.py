"""A throwaway PostgreSQL server for the production-instance tests.

initdb into a fresh folder, a server on a free 127.0.0.1 port (unix socket in the same folder),
password authentication, stopped and deleted at the end. PostgreSQL refuses to run as root, so
as root (CI) the server runs as the `postgres` user (or `nobody`) through runuser.
"""

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2

# Characters a generated password has: the URL built from DAGSTER_PG_PASSWORD must quote them.
PASSWORD = "fly@wheel:p%ss #" + secrets.token_hex(4)
USER = "flywheel"


def find_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, else the newest /usr/lib/postgresql/<v>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def _server_user() -> str | None:
    """Who runs the server: ourselves, or as root a system user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def create_database(self, name: str) -> str:
        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def dagster_env(self, db_name: str) -> dict[str, str]:
        """The environment deploy/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": db_name,
        }


@contextlib.contextmanager
def running_postgres(bin_dir: Path) -> Iterator[PostgresServer]:
    run_as = _server_user()
    base = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    data, log = base / "data", base / "server.log"
    pwfile = base / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        info = pwd.getpwnam(run_as)
        for path in (base, pwfile):
            os.chown(path, info.pw_uid, info.pw_gid)

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(bin_dir / args[0]), *args[1:]]
        if run_as:
            cmd = ["runuser", "-u", run_as, "--", *cmd]
        return subprocess.run(cmd, cwd=base, capture_output=True, text=True, check=check, timeout=120)

    started = False
    try:
        pg("initdb", "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
           "-E", "UTF8", "--locale=C", "--no-sync")
        for _attempt in range(3):
            port = _free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {base} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            result = pg("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts, "start", check=False)
            if result.returncode == 0:
                started = True
                break
        if not started:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr}\n{tail}")
        yield PostgresServer(host="127.0.0.1", port=port, user=USER, password=PASSWORD)
    finally:
        if started:
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)
