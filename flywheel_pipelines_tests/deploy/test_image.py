"""The user-code image and the local compose stack, checked without a Docker engine.

No Docker here: the Dockerfile is parsed by hand and checked for what the image must be (multi-stage,
pinned, non-root, no build tools at runtime, the code-server command); the command itself is run
from the project's virtualenv (the image installs the same pinned packages) and queried over gRPC
the way the webserver and daemon query the user-code container; compose.yaml is parsed with PyYAML.
"""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
VENV_BIN = Path(sys.executable).parent

CODE_SERVER_CMD = ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "flywheel_pipelines.definitions"]
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "clang", "cmake", "cargo", "rustc", "python3-dev", "libc6-dev")


# ---------------------------------------------------------------- a small Dockerfile parser


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form of CMD/ENTRYPOINT/RUN, or None for the shell form."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
            return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Joins `\\` continuations, drops comments and blank lines."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append((start, buf + stripped))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        assert re.fullmatch(r"[A-Z]+", keyword), f"line {number}: not an instruction: {line!r}"
        assert keyword in {"FROM", "ARG", "RUN", "COPY", "ADD", "ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "EXPOSE",
                           "LABEL", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "VOLUME", "ONBUILD"}, f"line {number}: {keyword}"
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            assert len(parts) in (1, 3), f"line {number}: FROM {args}"
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"line {number}: only ARG may precede the first FROM"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return global_args, stages


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def stage_args(stage: Stage) -> dict[str, str]:
    out = {}
    for inst in stage.all("ARG"):
        key, _, default = inst.args.partition("=")
        out[key] = default
    return out


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_parser_rejects_a_broken_dockerfile():
    with pytest.raises(AssertionError):
        parse_dockerfile("FROM python:3.11.11-slim\nRUN echo \\\n")
    with pytest.raises(AssertionError):
        parse_dockerfile("RUN echo before FROM\nFROM python:3.11.11-slim\n")


def test_dockerfile_is_multi_stage_with_pinned_bases(dockerfile):
    global_args, stages = dockerfile
    assert [s.name for s in stages] == ["builder", "runtime"]
    for stage in stages:
        base = substitute(stage.base, global_args)
        image, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), f"{stage.name}: base {base!r} is not pinned"
    # The wheels are built in the builder and installed, offline, in the runtime stage.
    builder, runtime = stages
    assert any("pip wheel" in r.args for r in builder.all("RUN"))
    installs = [r.args for r in runtime.all("RUN") if "pip install" in r.args]
    assert installs and all("--no-index" in r and "from=builder" in r for r in installs), installs


def test_final_stage_is_non_root_without_build_tools(dockerfile):
    _, stages = dockerfile
    runtime = stages[-1]
    users = runtime.all("USER")
    assert users, "the runtime stage never leaves root"
    last_user = users[-1].args.split(":")[0]
    assert last_user not in ("root", "0"), last_user
    # USER comes after every RUN: nothing after it runs as root.
    assert users[-1].line > max(r.line for r in runtime.all("RUN"))
    for run in runtime.all("RUN"):
        assert "apt-get install" not in run.args and "apk add" not in run.args, f"line {run.line}: installs OS packages"
        for tool in BUILD_TOOLS:
            assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", run.args), f"line {run.line}: {tool}"
    # Nothing is copied out of the builder but through the wheel mount.
    assert not [c for c in runtime.all("COPY") if "--from=builder" in c.args]


def test_torch_variant_and_versions_are_pinned(dockerfile):
    global_args, stages = dockerfile
    builder = stages[0]
    args = stage_args(builder)
    assert args["TORCH_VARIANT"] == "cpu"
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(p for p in pins if p.startswith("torch=="))
    assert args["TORCH_VERSION"] == torch_pin.removeprefix("torch=="), "the image's torch differs from pyproject.toml"
    run = " ".join(r.args for r in builder.all("RUN"))
    for variant in ("cpu", "cu126"):
        url = substitute("https://download.pytorch.org/whl/${TORCH_VARIANT}", {"TORCH_VARIANT": variant})
        assert substitute(run, {**args, "TORCH_VARIANT": variant}).count(url) == 1
    assert "torch==${TORCH_VERSION}+${TORCH_VARIANT}" in run
    # The build tools themselves are pinned too (pip, setuptools, wheel, apt packages).
    for tool in ("pip==", "setuptools==", "wheel==", "build-essential="):
        assert tool in run, tool


def test_image_command_is_the_code_server_and_deploy_is_copied(dockerfile):
    _, stages = dockerfile
    runtime = stages[-1]
    cmds = runtime.all("CMD")
    assert cmds and cmds[-1].exec_form() == CODE_SERVER_CMD
    # No ENTRYPOINT: the Helm chart and dagster-k8s start run/step pods with their own argument lists.
    assert not runtime.all("ENTRYPOINT")
    copies = [c.args.split() for c in runtime.all("COPY")]
    assert any(parts[-2:] == ["deploy", "./deploy"] for parts in copies), copies
    workdir = runtime.all("WORKDIR")[-1].args
    assert workdir == "/opt/dagster/app"  # so deploy/start_daemon.sh resolves from the working directory
    assert os.access(REPO / "deploy" / "start_daemon.sh", os.X_OK)


def test_dockerignore_keeps_state_and_secrets_out_but_not_the_sources():
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    for needed_out in (".git", ".venv", ".flywheel", "docker/.env", "flywheel_pipelines_tests"):
        assert needed_out in patterns, needed_out
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    sources = [part for stage in stages for c in stage.all("COPY") for part in c.args.split()[:-1] if not part.startswith("--")]
    for src in sources:
        assert (REPO / src).exists(), src
        assert src not in patterns and src.rstrip("/") not in patterns, f"{src} is copied but ignored"


# ---------------------------------------------------------------- the image's command serves the code location


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_query(tmp_path: Path, env_overrides: dict[str, str]):
    from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteRepositoryOrigin
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster._grpc.client import DagsterGrpcClient
    from dagster._grpc.types import ListRepositoriesResponse
    from dagster._serdes import deserialize_value

    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"), "FLYWHEEL_HOME": str(tmp_path / "flywheel"),
           **env_overrides}
    (tmp_path / "dagster_home").mkdir()
    for key in ("FLYWHEEL_LAKE", "FLYWHEEL_MLFLOW_URI"):
        env.pop(key, None)
    # The image's CMD with the host and port of this test.
    cmd = [str(VENV_BIN / "dagster"), *CODE_SERVER_CMD[1:]]
    cmd[cmd.index("-h") + 1], cmd[cmd.index("-p") + 1] = "127.0.0.1", str(port)
    log = tmp_path / "code-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = DagsterGrpcClient(port=port, host="127.0.0.1")
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"code server exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            try:
                assert client.ping("flywheel")["echo"] == "flywheel"
                listed = deserialize_value(client.list_repositories(), ListRepositoriesResponse)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        origin = GrpcServerCodeLocationOrigin(host="127.0.0.1", port=port, location_name="flywheel_pipelines")
        names = [sym.repository_name for sym in listed.repository_symbols]
        snaps = {name: deserialize_value(client.external_repository(RemoteRepositoryOrigin(origin, name)), RepositorySnap)
                 for name in names}
        return names, snaps
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.parametrize("executor", ["", "k8s"])
def test_image_command_serves_the_code_location_over_grpc(tmp_path, executor):
    """`dagster code-server start -m flywheel_pipelines.definitions` answers ping, lists the repository and
    serves its asset graph, jobs, sensors and schedule; also as the Helm values run it (FLYWHEEL_EXECUTOR=k8s).
    About 6 s each (a fresh interpreter imports the code location), so not marked slow."""
    names, snaps = serve_and_query(tmp_path, {"FLYWHEEL_EXECUTOR": executor})
    assert names == ["__repository__"]
    snap = snaps["__repository__"]
    assets = {node.asset_key.to_user_string() for node in snap.asset_nodes}
    assert {"log_manifest", "episodes", "policy_candidate", "eval_report", "release_bundle"} <= assets
    jobs = {j.name for j in (snap.job_refs or [])} | {j.name for j in (snap.job_datas or [])}
    assert {"ingest_robot_day", "nightly_retrain"} <= jobs
    assert "raw_log_sensor" in {s.name for s in snap.sensors}
    assert "nightly_retrain_schedule" in {s.name for s in snap.schedules}


# ---------------------------------------------------------------- docker/compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service_argv(service: dict) -> list[str]:
    entry = service.get("entrypoint") or []
    command = service.get("command") or []
    entry = shlex.split(entry) if isinstance(entry, str) else list(entry)
    command = shlex.split(command) if isinstance(command, str) else list(command)
    return entry + command


def test_compose_services_and_their_commands(compose, dockerfile):
    services = compose["services"]
    assert set(services) == {"postgres", "seaweedfs", "lake-init", "mlflow", "user-code", "webserver", "daemon"}
    ours = {name for name, s in services.items() if "flywheel-pipelines" in s["image"]}
    assert ours == {"lake-init", "mlflow", "user-code", "webserver", "daemon"}
    assert services["user-code"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert (DOCKER / services["user-code"]["build"]["context"] / "pyproject.toml").is_file()
    expected = {
        "postgres": "postgres", "seaweedfs": "weed", "lake-init": "python", "mlflow": "mlflow",
        "user-code": "dagster", "webserver": "dagster-webserver", "daemon": "deploy/start_daemon.sh",
    }
    workdir = dockerfile[1][-1].all("WORKDIR")[-1].args
    for name, service in services.items():
        argv = service_argv(service)
        assert argv, f"{name} has no command"
        assert argv[0] == expected[name], f"{name}: {argv[0]}"
        if name in ours:
            if "/" in argv[0]:  # a project script, copied into the image's working directory
                assert workdir == "/opt/dagster/app" and os.access(REPO / argv[0], os.X_OK), argv[0]
            else:  # an executable the image's pip install provides, as the virtualenv's does
                assert (VENV_BIN / argv[0]).is_file(), f"{argv[0]} is not installed by the project"
        else:
            image, _, tag = service["image"].partition(":")
            assert tag and tag != "latest", f"{name}: {service['image']} is not pinned"
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["seaweedfs"]["image"].startswith("chrislusf/seaweedfs:")
    assert service_argv(services["seaweedfs"])[1] == "mini"
    assert service_argv(services["user-code"]) == CODE_SERVER_CMD
    # The python script lake-init runs is mounted from docker/.
    assert (DOCKER / "create_bucket.py").is_file()


def test_compose_mounts_and_workspace_point_at_real_files(compose):
    services = compose["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source}"
    workspace = yaml.safe_load((DOCKER / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    grpc = entry["grpc_server"]
    assert grpc["host"] in services
    argv = service_argv(services[grpc["host"]])
    assert int(argv[argv.index("-p") + 1]) == grpc["port"]
    # The stack's instance is deploy/dagster.yaml as-is: no run_launcher, so the DefaultRunLauncher.
    instance = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert "run_launcher" not in instance and "postgres" in instance["storage"]
    for name in ("webserver", "daemon", "user-code"):
        mounts = services[name]["volumes"]
        assert "../deploy/dagster.yaml:/opt/dagster/dagster_home/dagster.yaml:ro" in mounts
        assert services[name]["environment"]["DAGSTER_HOME"] == "/opt/dagster/dagster_home"


def compose_env_vars(compose: dict) -> set[str]:
    """Every variable the stack sets in a container or interpolates from docker/.env."""
    names = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    for service in compose["services"].values():
        env = service.get("environment") or {}
        names |= set(env) if isinstance(env, dict) else {e.split("=")[0] for e in env}
    return names


def test_every_compose_env_var_is_documented(compose):
    names = compose_env_vars(compose)
    assert {"DAGSTER_PG_PASSWORD", "FLYWHEEL_LAKE", "FLYWHEEL_MLFLOW_URI", "FLYWHEEL_S3_ENDPOINT_URL"} <= names
    doc = DEPLOY_DOC.read_text()
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"not described in docs/deploy.md: {missing}"
    example = (DOCKER / "env.example").read_text()
    interpolated = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    assert not sorted(n for n in interpolated if f"{n}=" not in example), "env.example misses a variable"


def test_compose_holds_no_secret_values(compose):
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}", str(value)), f"{name}: {key} is set literally"
    example = (DOCKER / "env.example").read_text()
    for line in example.splitlines():
        if re.match(r"\w*(PASSWORD|SECRET|ACCESS_KEY)\w*=", line):
            assert line.endswith("="), f"env.example carries a value: {line}"
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


def test_cuda_variant_selects_the_cuda_wheels(dockerfile):
    """TORCH_VARIANT != cpu: onnxruntime-gpu replaces onnxruntime (same pinned version), and the
    warp-lang wheel is the pinned one unless WARP_WHEEL names another build (e.g. +cu12)."""
    _, (builder, runtime) = dockerfile
    pins = dict(p.split("==") for p in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                if "==" in p)
    args = stage_args(builder)
    assert args["ONNXRUNTIME_VERSION"] == pins["onnxruntime"] == stage_args(runtime)["ONNXRUNTIME_VERSION"]
    assert args["WARP_WHEEL"] == f"warp-lang=={pins['warp-lang']}"
    build = " ".join(r.args for r in builder.all("RUN"))
    assert '"${WARP_WHEEL}"' in build and '"onnxruntime-gpu==${ONNXRUNTIME_VERSION}"' in build
    install = " ".join(r.args for r in runtime.all("RUN") if "pip install" in r.args)
    assert 'if [ "${TORCH_VARIANT}" != cpu ]' in install
    assert install.index("pip uninstall -y onnxruntime") < install.index('"onnxruntime-gpu==${ONNXRUNTIME_VERSION}"')
