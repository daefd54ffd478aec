"""The names the deployment's pieces use for each other agree, offline: the Helm release and the
chart's webserver Service (docs, reload CronJob), the code location (pyproject, workspaces, Helm
values, CronJob, `fleet backfill`), the ingress + oauth2-proxy example (validated with our values
against the chart's schema), and docs that are in order and name no path of one machine."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from flywheel_pipelines.lib import backfill, reload
from flywheel_pipelines_tests.deploy.test_k8s import (
    CHART,
    K8S_DIR,
    chart_validator,
    load_values,
    user_deployment,
    validation_errors,
)

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "deploy.md"
EXAMPLES = K8S_DIR / "examples"
# The chart's helpers: dagster.webserver.fullname is <release>-<dagsterWebserver.nameOverride>, and
# the chart's values default nameOverride to "dagster-webserver".
CHART_WEBSERVER_NAME = "dagster-webserver"


def docs_release() -> str:
    (release,) = set(re.findall(r"helm upgrade --install (\S+) dagster/dagster", DOCS.read_text()))
    return release


def webserver_service() -> str:
    values = load_values()
    return f"{docs_release()}-{values['dagsterWebserver'].get('nameOverride', CHART_WEBSERVER_NAME)}"


def cronjob_env() -> dict[str, str]:
    (job,) = yaml.safe_load_all((K8S_DIR / "reload-code-location.yaml").read_text())
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def test_the_readme_links_the_deploy_guide():
    assert "](docs/deploy.md)" in (REPO / "README.md").read_text()


def test_docs_and_the_reload_cronjob_name_the_charts_webserver_service():
    service = webserver_service()
    assert service == "dagster-dagster-webserver"
    env = cronjob_env()
    assert env[reload.HOST_ENV] == service
    assert int(env[reload.PORT_ENV]) == load_values()["dagsterWebserver"].get("service", {}).get("port", 80)
    named = set(re.findall(r"\b[\w-]+-webserver\b", DOCS.read_text()))
    assert named == {service}, named
    assert f"svc/{service} " in DOCS.read_text()
    deploy_readme = (REPO / "deploy" / "README.md").read_text()
    assert f"| `{service}`: the chart's webserver Service" in deploy_readme


def test_one_code_location_name_everywhere():
    name = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dg"]["project"]["code_location_name"]
    workspaces = [yaml.safe_load((REPO / p).read_text()) for p in ("workspace.yaml", "docker/workspace.yaml")]
    assert {next(iter(w["load_from"][0].values()))["location_name"] for w in workspaces} == {name}
    (server,) = load_values()["dagsterWebserver"]["workspace"]["servers"]
    assert server["name"] == name
    # The chart's workspace reaches the user deployment through its Service, named after it.
    assert (server["host"], server["port"]) == (user_deployment(load_values())["name"], user_deployment(load_values())["port"])
    assert cronjob_env()[reload.LOCATION_ENV] == name
    assert backfill.default_location({}) == name


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_the_ingress_example_validates_with_our_values_and_points_at_oauth2_proxy():
    ingress = yaml.safe_load((EXAMPLES / "ingress-oauth2-proxy.values.yaml").read_text())
    merged = _merge(load_values(), ingress)
    assert not validation_errors(chart_validator(CHART / "values.schema.json"), merged)
    proxy = yaml.safe_load((EXAMPLES / "oauth2-proxy.values.yaml").read_text())
    host = ingress["ingress"]["dagsterWebserver"]["host"]
    assert proxy["ingress"]["hosts"] == [host] and proxy["ingress"]["path"] == "/oauth2"
    assert proxy["ingress"]["tls"][0]["secretName"] == ingress["ingress"]["dagsterWebserver"]["tls"]["secretName"]
    annotations = ingress["ingress"]["annotations"]
    (release,) = set(re.findall(r"helm upgrade --install (\S+) oauth2-proxy/oauth2-proxy", DOCS.read_text()))
    assert annotations["nginx.ingress.kubernetes.io/auth-url"].startswith(f"http://{release}.flywheel.svc")
    assert annotations["nginx.ingress.kubernetes.io/auth-signin"].startswith("https://$host/oauth2/start")
    assert "client-secret" not in (EXAMPLES / "oauth2-proxy.values.yaml").read_text().split("never from")[1]


def test_the_deploy_guide_runs_its_steps_in_order():
    text = DOCS.read_text()
    headings = [int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.M)]
    assert headings == list(range(1, len(headings) + 1))
    # The databases and secrets before the chart; the chart before the manifests that mount its
    # instance ConfigMap; a service account annotated only once it exists.
    order = ["create the `dagster` and `mlflow` databases", "create secret generic dagster-postgresql-secret",
             "helm upgrade --install dagster", "apply -k deploy/k8s", "annotate serviceaccount mlflow"]
    positions = [text.index(step) for step in order]
    assert positions == sorted(positions), order


@pytest.mark.parametrize("path", [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
                                  *sorted(p for p in (REPO / "deploy").rglob("*") if p.is_file())],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_no_path_of_one_machine_in_docs_or_deploy_files(path):
    text = path.read_text(errors="replace")
    assert not re.search(r"(?<![\w.])/(work|home|Users|tmp/bash_jobs)/", text), path


def test_compute_logs_use_the_same_manager_and_variables_in_the_chart_and_deploy_dagster_yaml():
    instance = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())["compute_logs"]
    chart = load_values()["computeLogManager"]
    assert instance["class"] == chart["type"] == "S3ComputeLogManager"
    s3 = chart["config"]["s3ComputeLogManager"]
    assert s3["bucket"] == instance["config"]["bucket"] and s3["prefix"] == instance["config"]["prefix"]
    # Every Dagster pod reads the bucket from flywheel-config, which docs/deploy.md creates with it.
    values = load_values()
    for pods in (values["dagsterWebserver"], values["dagsterDaemon"], user_deployment(values)):
        assert {"name": "flywheel-config"} in pods["envConfigMaps"]
    create = DOCS.read_text().split("create configmap flywheel-config", 1)[1].split("\n#", 1)[0]
    assert f"--from-literal={s3['bucket']['env']}=" in create and f"--from-literal={s3['prefix']['env']}=" in create
