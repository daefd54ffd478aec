"""The daily code-location reload (deploy/k8s/reload-code-location.yaml, flywheel_pipelines/lib/reload.py).

- the CronJob validates against the Kubernetes 1.30 schemas and runs the reload module, which exists,
  pointed at the chart's webserver Service and at the location name the chart gives our deployment;
- against real processes, laid out as the Helm chart lays them out: the code server the chart starts
  for `codeServerArgs` (`dagster code-server start ...`), a `dagster-webserver` whose workspace names
  it by gRPC host and port, and the reload module run as the CronJob runs it: the location is
  reloaded (a new code server id: the definitions were imported again) and the webserver shows the
  hot window's first day; an unknown location name exits non-zero with the webserver's answer; a
  location served by `dagster api grpc` (which acknowledges a reload without re-importing) fails too.
"""

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from flywheel_pipelines.lib import fleet, reload
from flywheel_pipelines_tests.deploy.test_k8s import K8S_DIR, K8S_VERSION, load_values, user_deployment

REPO = Path(__file__).resolve().parents[2]
MANIFEST = K8S_DIR / "reload-code-location.yaml"
VENV_BIN = Path(sys.executable).parent
# The Helm release, "dagster" (pool-limits-job.yaml's ConfigMap dagster-instance is <release>-instance;
# docs/deploy.md installs it under that name).
RELEASE = "dagster"
STARTUP_S = 180


def cronjob() -> dict:
    (doc,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return doc


def container_of(job: dict) -> dict:
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


# ---------------------------------------------------------------- the manifest


def test_cronjob_validates_and_is_listed():
    job = cronjob()
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert MANIFEST.name in kustomization["resources"]
    assert container_of(job)["image"].split(":")[0] in {i["name"] for i in kustomization["images"]}


def test_cronjob_runs_daily_after_midnight_utc_one_at_a_time():
    spec = cronjob()["spec"]
    minute, hour, *every_day = spec["schedule"].split()
    assert every_day == ["*", "*", "*"] and hour == "0" and int(minute) < 30
    assert spec["timeZone"] == "Etc/UTC"
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert 1 <= job["backoffLimit"] <= 6
    pod = job["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    container = container_of(cronjob())
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


def test_cronjob_runs_the_reload_module_against_the_charts_webserver_and_location():
    container = container_of(cronjob())
    python, flag, module = container["command"]
    assert (python, flag, module) == ("python", "-m", "flywheel_pipelines.lib.reload")
    import importlib

    assert importlib.import_module(module) is reload and callable(reload.main)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert {reload.HOST_ENV, reload.PORT_ENV, reload.LOCATION_ENV} <= set(env)
    values = load_values()
    # The location is named in the chart's workspace (dagsterWebserver.workspace: the user deployment's
    # Service and port, under the name every other workspace gives it). The webserver Service is
    # <release>-<dagsterWebserver.nameOverride>, "dagster-webserver" by default (the chart's helpers:
    # dagster.webserver.fullname), on dagsterWebserver.service.port (default 80).
    (server,) = values["dagsterWebserver"]["workspace"]["servers"]
    assert (server["host"], server["port"]) == (user_deployment(values)["name"], user_deployment(values)["port"])
    assert env[reload.LOCATION_ENV] == server["name"] == "flywheel_pipelines"
    name = values["dagsterWebserver"].get("nameOverride", "dagster-webserver")
    assert env[reload.HOST_ENV] == f"{RELEASE}-{name}" == "dagster-dagster-webserver"
    port = values.get("dagsterWebserver", {}).get("service", {}).get("port", 80)
    assert int(env[reload.PORT_ENV]) == port
    # The chart runs the location with `dagster code-server start` (codeServerArgs), which can reload.
    deployment = user_deployment(values)
    assert deployment.get("codeServerArgs") and not deployment.get("dagsterApiGrpcArgs")


@pytest.mark.parametrize(("environ", "message"), [
    ({}, "DAGSTER_WEBSERVER_HOST and FLYWHEEL_CODE_LOCATION not set"),
    ({"DAGSTER_WEBSERVER_HOST": "dagster-webserver"}, "FLYWHEEL_CODE_LOCATION not set"),
    ({"DAGSTER_WEBSERVER_HOST": "h", "FLYWHEEL_CODE_LOCATION": "l", "DAGSTER_WEBSERVER_PORT": "eighty"},
     "DAGSTER_WEBSERVER_PORT='eighty'"),
    ({"DAGSTER_WEBSERVER_HOST": "h", "FLYWHEEL_CODE_LOCATION": "l", "DAGSTER_WEBSERVER_PORT": "0"},
     "DAGSTER_WEBSERVER_PORT='0'"),
])
def test_an_incomplete_environment_exits_2(capsys, environ, message):
    assert reload.main(environ) == 2
    assert message in capsys.readouterr().err


def test_the_port_defaults_to_80():
    target = reload.Target.from_env({"DAGSTER_WEBSERVER_HOST": "dagster-webserver", "FLYWHEEL_CODE_LOCATION": "x"})
    assert (target.host, target.port, target.location) == ("dagster-webserver", 80, "x")


def test_an_unreachable_webserver_exits_1(capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {"DAGSTER_WEBSERVER_HOST": "127.0.0.1", "DAGSTER_WEBSERVER_PORT": str(port), "FLYWHEEL_CODE_LOCATION": "x"}
    assert reload.main(environ) == 1
    err = capsys.readouterr().err
    assert f"through the Dagster webserver at http://127.0.0.1:{port}" in err and "query" not in err


# ---------------------------------------------------------------- against a real webserver and code servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A server in its own process group (the code server's own code process dies with it), logged to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name, self.log = name, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def alive(self) -> bool:
        """Whether the server is still running, without reaping it."""
        return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} ---\n{self.log.read_text(errors='replace')[-chars:]}" if self.log.exists() else ""

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the group, then SIGKILL what is left of it; the server is reaped only after that, so
        its pid still names its group (as daemon.Daemon.stop)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@dataclass
class Stack:
    env: dict[str, str]
    webserver_port: int
    processes: list[Process]

    def target(self, location: str) -> reload.Target:
        return reload.Target("127.0.0.1", self.webserver_port, location)

    def environ(self, location: str) -> dict[str, str]:
        return {**self.env, reload.HOST_ENV: "127.0.0.1", reload.PORT_ENV: str(self.webserver_port),
                reload.LOCATION_ENV: location}

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes)


# The location's name in the chart's workspace (values.yaml: dagsterWebserver.workspace.servers).
CODE_SERVER = load_values()["dagsterWebserver"]["workspace"]["servers"][0]["name"]
API_GRPC = "flywheel-pipelines-api-grpc"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """The chart's layout: code servers started as its deployment template starts them, and a webserver
    whose workspace names them by host and port, each location under its name in the workspace."""
    tmp = tmp_path_factory.mktemp("reload")
    (tmp / "dagster_home").mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(tmp / "dagster_home"), "FLYWHEEL_HOME": str(tmp / "flywheel"),
           "DAGSTER_DISABLE_TELEMETRY": "1", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key in ("FLYWHEEL_LAKE", "FLYWHEEL_MLFLOW_URI", "FLYWHEEL_MLFLOW_ARTIFACTS"):
        env.pop(key, None)
    # Create and migrate the instance's SQLite databases once, before three processes open them: servers
    # that all find a fresh DAGSTER_HOME run the same alembic migration at once and can leave two heads.
    subprocess.run([str(VENV_BIN / "python"), "-c", "import dagster; dagster.DagsterInstance.get().dispose()"],
                   env=env, check=True, timeout=120)
    args = user_deployment(load_values())["codeServerArgs"]
    ports = {CODE_SERVER: free_port(), API_GRPC: free_port()}
    # deployment-user.yaml: codeServerArgs -> `dagster code-server start`, dagsterApiGrpcArgs -> `dagster api grpc`.
    commands = {CODE_SERVER: ["code-server", "start"], API_GRPC: ["api", "grpc"]}
    workspace = tmp / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [
        {"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": name}} for name, port in ports.items()
    ]}))
    processes = [
        Process(name, [str(VENV_BIN / "dagster"), *commands[name], "-h", "127.0.0.1", "-p", str(port), *args], env,
                tmp / f"{name}.log")
        for name, port in ports.items()
    ]
    webserver_port = free_port()
    processes.append(Process("webserver", [str(VENV_BIN / "dagster-webserver"), "-w", str(workspace),
                                           "-h", "127.0.0.1", "-p", str(webserver_port)], env, tmp / "webserver.log"))
    stack = Stack(env=env, webserver_port=webserver_port, processes=processes)
    try:
        deadline = time.monotonic() + STARTUP_S
        while not all(reload.server_id(stack.target(name), timeout=5) for name in ports):
            dead = [p.name for p in processes if not p.alive()]
            assert not dead, f"{dead} exited\n{stack.logs()}"
            assert time.monotonic() < deadline, f"locations not loaded after {STARTUP_S} s\n{stack.logs()}"
            time.sleep(1)
        yield stack
    finally:
        for process in reversed(processes):
            process.stop()


def run_module(environ: dict[str, str]) -> subprocess.CompletedProcess:
    """The CronJob's command, from the project's virtualenv."""
    return subprocess.run([sys.executable, "-m", "flywheel_pipelines.lib.reload"], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=reload.TIMEOUT_S + 60)


@pytest.mark.slow
def test_reload_reimports_the_code_location_and_shows_the_hot_window(stack):
    """~35 s on 2 cores: two code servers and the webserver start, then one reload imports the code again."""
    target = stack.target(CODE_SERVER)
    days = [dt.datetime.now(dt.UTC).date()]
    before = reload.server_id(target)
    done = run_module(stack.environ(CODE_SERVER))
    days.append(dt.datetime.now(dt.UTC).date())
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{stack.logs()}"
    after = reload.server_id(target)
    assert before and after and after != before, "the code server did not load the definitions again"
    assert f"server id {before} -> {after}" in done.stdout
    # The window the reloaded location computed, as the webserver now shows it.
    expected = {fleet.hot_window_start(day, fleet.hot_days(), floor=fleet.fleet_start()).isoformat() for day in days}
    start = reload.hot_window_start(target)
    assert start in expected
    assert f"now starts on {start}" in done.stdout
    # Reloading again works too (the function, in this process).
    again = reload.reload_location(target)
    assert again.previous_server_id == after and again.server_id not in (None, after)
    assert again.hot_window_start == start or again.hot_window_start in expected


@pytest.mark.slow
def test_reloading_an_unknown_location_exits_1_with_the_webservers_answer(stack):
    done = run_module(stack.environ("no-such-location"))
    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
    assert "RepositoryLocationNotFound" in done.stderr and "no-such-location" in done.stderr, done.stderr
    assert done.stderr.startswith("reload: FAILED:")
    with pytest.raises(reload.ReloadError, match="RepositoryLocationNotFound"):
        reload.reload_location(stack.target("no-such-location"))


@pytest.mark.slow
def test_a_reload_that_imports_nothing_fails(stack):
    """`dagster api grpc` acknowledges the reload and keeps serving the definitions it loaded at start."""
    target = stack.target(API_GRPC)
    before = reload.server_id(target)
    with pytest.raises(reload.ReloadError, match="dagster code-server start") as caught:
        reload.reload_location(target)
    assert f"kept server id {before}" in str(caught.value)
    assert reload.server_id(target) == before
