"""The Kubernetes deployment, checked offline: no cluster, no helm, no network here.

- every manifest in deploy/k8s validates against the Kubernetes 1.30 schemas (kubernetes-validate);
- the Helm values validate against the Dagster chart's values schema (/work/shared/k8s), its
  Kubernetes `$ref`s resolved to the schemas kubernetes-validate bundles;
- the step Jobs dagster-k8s builds from our assets' op tags (its own construction code, with the
  K8sRunLauncher's settings standing in for a cluster) request what defs/k8s.py says, and validate;
- FLYWHEEL_EXECUTOR picks the executor of every job.
"""

import copy
import json
import os
import types
from pathlib import Path

import dagster as dg
import jsonschema
import kubernetes_validate
import pytest
import referencing
import referencing.jsonschema
import yaml

from flywheel_pipelines_tests.conftest import missing

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "deploy" / "k8s"
VALUES = K8S_DIR / "values.yaml"
CHART = Path(os.environ.get("FLYWHEEL_DAGSTER_CHART_SCHEMAS", REPO.parent / "shared" / "k8s" / "dagster-chart"))
K8S_VERSION = "1.30.0"
K8S_REF_BASE = "https://kubernetesjsonschema.dev/v1.18.0/_definitions.json"

NOT_MANIFESTS = {"values.yaml", "kustomization.yaml"}


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name not in NOT_MANIFESTS)


def load_values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def user_deployment(values: dict) -> dict:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


# ---------------------------------------------------------------- manifests


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    assert {"mlflow.yaml", "pool-limits-job.yaml"} <= set(kustomization["resources"])


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_against_kubernetes_schemas(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_validate_catches_a_broken_manifest():
    doc = next(d for d in yaml.safe_load_all((K8S_DIR / "mlflow.yaml").read_text()) if d["kind"] == "Deployment")
    broken = copy.deepcopy(doc)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "five thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    typo = copy.deepcopy(doc)
    typo["spec"]["template"]["spec"]["containers"][0]["envFrom "] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def all_containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def test_manifests_take_secrets_from_kubernetes_secrets():
    """No literal password/URI/key in a manifest: such variables come from secretKeyRef."""
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            for container in all_containers(doc or {}):
                for env in container.get("env", []):
                    if any(word in env["name"] for word in ("PASSWORD", "SECRET", "BACKEND_STORE_URI", "ACCESS_KEY")):
                        assert "secretKeyRef" in env.get("valueFrom", {}), f"{path.name}: {env['name']}"
                    assert "s3://" not in str(env.get("value", "")), f"{path.name}: a bucket in {env['name']}"
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
            pod = (doc or {}).get("spec", {}).get("template", {}).get("spec")
            if pod:
                assert pod["securityContext"]["runAsNonRoot"] is True


def test_mlflow_server_runs_from_our_image_with_backend_and_artifacts_from_a_secret():
    docs = {d["kind"]: d for d in yaml.safe_load_all((K8S_DIR / "mlflow.yaml").read_text())}
    assert set(docs) == {"ServiceAccount", "Deployment", "Service"}
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mlflow", "server"]
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("MLFLOW_BACKEND_STORE_URI", "backend-store-uri"),
                      ("MLFLOW_ARTIFACTS_DESTINATION", "artifacts-destination")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-server", "key": key}
    assert env["MLFLOW_SERVE_ARTIFACTS"]["value"] == "true"
    service = docs["Service"]
    assert service["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    # The values point the pipeline at this Service.
    udep_env = {e["name"]: e["value"] for e in user_deployment(load_values())["env"]}
    assert udep_env["FLYWHEEL_MLFLOW_URI"] == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert container["image"].split(":")[0] in {i["name"] for i in kustomization["images"]}


def test_pool_limits_job_uses_the_charts_instance_and_secret():
    (job,) = yaml.safe_load_all((K8S_DIR / "pool-limits-job.yaml").read_text())
    values = load_values()
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["python", "deploy/apply_pool_limits.py"]
    assert (REPO / "deploy" / "apply_pool_limits.py").is_file()
    env = {e["name"]: e for e in container["env"]}
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == values["global"]["postgresqlSecretName"]
    assert spec["serviceAccountName"] == values["global"]["serviceAccountName"]
    import importlib.util

    spec_mod = importlib.util.spec_from_file_location("apply_pool_limits", REPO / "deploy" / "apply_pool_limits.py")
    module = importlib.util.module_from_spec(spec_mod)
    spec_mod.loader.exec_module(module)
    assert {module.env_var(p) for p in module.POOLS} <= set(env)
    assert module.limits_from_env({k: v["value"] for k, v in env.items() if "value" in v}) == {"training": 1, "ingest": 4,
                                                                                             "evaluation": 1, "archive": 1}


# ---------------------------------------------------------------- Helm values vs the chart's schema


def k8s_definitions_resource() -> referencing.Resource:
    """kubernetes-validate's bundled definitions, served at the URI the chart schema refers to.

    The chart's refs look like `<base>#/definitions/io.k8s.api.core.v1.X`; the bundled file keeps them
    under `$defs` (and refers to them as `#/$defs/...` internally), so both names are served.
    """
    path = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local" / "_definitions.json"
    bundled = json.loads(path.read_text())
    contents = {"definitions": bundled["$defs"], "$defs": bundled["$defs"]}
    return referencing.Resource(contents=contents, specification=referencing.jsonschema.DRAFT202012)


def strip_required(schema):
    """Helm validates the chart's defaults merged with ours: keys we leave to the defaults are not missing."""
    if isinstance(schema, dict):
        return {k: strip_required(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [strip_required(v) for v in schema]
    return schema


def chart_validator(schema_path: Path) -> jsonschema.protocols.Validator:
    if not schema_path.is_file():
        missing(f"Dagster chart values schema not found at {schema_path}")
    schema = strip_required(json.loads(schema_path.read_text()))
    registry = referencing.Registry().with_resource(K8S_REF_BASE, k8s_definitions_resource())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema, registry=registry)


def validation_errors(validator: jsonschema.protocols.Validator, instance) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def test_helm_values_validate_against_the_chart_schema():
    validator = chart_validator(CHART / "values.schema.json")
    values = load_values()
    assert not validation_errors(validator, values)
    sub = chart_validator(CHART / "charts" / "dagster-user-deployments" / "values.schema.json")
    assert not validation_errors(sub, {"deployments": values["dagster-user-deployments"]["deployments"]})


@pytest.mark.parametrize("break_it", [
    pytest.param(lambda v: v["runLauncher"].update(type="K8sLauncher"), id="unknown-launcher"),
    pytest.param(lambda v: v["dagsterDaemon"].update(runRetrys={}), id="misspelt-key"),
    # Only the resolved Kubernetes ResourceRequirements schema knows `requests` must be a map.
    pytest.param(lambda v: v["dagsterWebserver"]["resources"].update(requests=["1"]), id="k8s-ref-resources"),
    pytest.param(lambda v: user_deployment(v)["envSecrets"][0].update(optional="yes"), id="k8s-ref-secret-env-source"),
])
def test_chart_schema_check_can_fail(break_it):
    validator = chart_validator(CHART / "values.schema.json")
    values = load_values()
    break_it(values)
    assert validation_errors(validator, values)


def test_helm_values_deploy_what_we_mean():
    values = load_values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    pg = values["postgresql"]
    assert pg["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in pg, "the password comes from the Secret global.postgresqlSecretName"
    assert pg["postgresqlScheme"] == "postgresql+psycopg2"
    deployment = user_deployment(values)
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["FLYWHEEL_EXECUTOR"] == "k8s"
    assert deployment["codeServerArgs"] == ["-m", "flywheel_pipelines.definitions"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] and daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert daemon["runRetries"] == {"enabled": True, "maxRetries": 2, "retryOnAssetOrOpFailure": False}
    assert values["additionalInstanceConfig"]["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}
    text = json.dumps(values)  # the values themselves (comments may show placeholders)
    assert "s3://" not in text and "amazonaws.com" not in text
    for key in ("password:", "secretKey", "secret_access_key", "AWS_SECRET"):
        assert key not in text, key


# ---------------------------------------------------------------- step Jobs dagster-k8s builds from the op tags


def values_overrides() -> dict:
    """The FLYWHEEL_K8S_STEPS the Helm values give every pod, parsed as the code location does."""
    from flywheel_pipelines.defs import k8s

    env = {e["name"]: e["value"] for e in user_deployment(load_values())["env"]}
    return k8s.parse_overrides(env[k8s.STEPS_ENV])


ASSET_KIND = {"log_manifest": "ingest", "episodes": "ingest", "episode_archive": "ingest",
              "policy_candidate": "training", "eval_report": "evaluation"}


def step_job(asset_name: str, *, deployed: bool = False) -> dict:
    """The step Job the k8s_job_executor would create for this asset, built by dagster-k8s's own code
    (K8sStepHandler._get_container_context + launch_step) with no cluster: the K8sRunLauncher is a
    stand-in carrying what the Helm chart configures, and nothing is sent anywhere.

    ``deployed``: with the tags a pod of the Helm deployment computes (its FLYWHEEL_K8S_STEPS);
    otherwise with the asset's tags as loaded here (the code's defaults)."""
    import kubernetes
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job, get_k8s_job_name, get_user_defined_k8s_config

    from flywheel_pipelines.definitions import defs

    values = load_values()
    deployment = user_deployment(values)
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    launcher = types.SimpleNamespace(  # what the chart renders into the K8sRunLauncher config
        job_image=None, dagster_home="/opt/dagster/dagster_home", instance_config_map="dagster-instance",
        postgres_password_secret=values["global"]["postgresqlSecretName"],
    )
    run_context = K8sContainerContext(
        env_config_maps=[c["name"] for c in deployment["envConfigMaps"]],
        env_secrets=[s["name"] for s in deployment["envSecrets"]],
        env_vars=[f"{e['name']}={e['value']}" for e in deployment["env"]],
        service_account_name=values["global"]["serviceAccountName"],
        namespace="flywheel",
    )
    op_tags = defs().resolve_assets_def(asset_name).op.tags
    if deployed:
        from flywheel_pipelines.defs import k8s

        # Op tags hold JSON strings once on an op, as Dagster stores them.
        op_tags = {**op_tags, k8s.K8S_CONFIG_TAG: json.dumps(k8s.step_k8s_config(ASSET_KIND[asset_name], values_overrides()))}
    context = run_context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags)))
    job_config = context.get_k8s_job_config(image, launcher)
    run_id = "0123456789abcdef0123456789abcdef"
    name = f"dagster-step-{get_k8s_job_name(run_id, asset_name)}"
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_step"],
        job_name=name,
        pod_name=name,
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": "nightly_retrain", "dagster/op": asset_name, "dagster/run-id": run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": "nightly_retrain"},
                  {"name": "DAGSTER_RUN_STEP_KEY", "value": asset_name}],
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def test_training_step_job_requests_a_gpu_node_built_by_dagster_k8s_without_a_cluster():
    from flywheel_pipelines.defs import k8s

    job = step_job("policy_candidate")
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    values = load_values()
    image = user_deployment(values)["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    assert container["args"] == ["dagster", "api", "execute_step"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"] == "16Gi"
    assert pod["nodeSelector"] == k8s.GPU_NODE_SELECTOR
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == values["global"]["serviceAccountName"]
    # The deployment's configuration reaches the step pod: the executor choice, the lake ConfigMap,
    # the optional S3 Secret, and the instance's PostgreSQL password from its Secret.
    env = {e["name"]: e for e in container["env"]}
    assert env["FLYWHEEL_EXECUTOR"]["value"] == "k8s"
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == values["global"]["postgresqlSecretName"]
    sources = [s.get("configMapRef", s.get("secretRef"))["name"] for s in container["envFrom"]]
    assert sources == ["flywheel-config", "flywheel-s3"]


@pytest.mark.parametrize(("asset", "requests", "limits"), [
    ("log_manifest", {"cpu": "1", "memory": "2Gi"}, {"cpu": "2", "memory": "4Gi"}),
    ("episodes", {"cpu": "1", "memory": "2Gi"}, {"cpu": "2", "memory": "4Gi"}),
    ("eval_report", {"cpu": "8", "memory": "8Gi"}, {"cpu": "8", "memory": "8Gi"}),
])
def test_cpu_step_jobs_are_sized_and_stay_off_gpu_nodes_without_a_cluster(asset, requests, limits):
    job = step_job(asset)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {"requests": requests, "limits": limits}
    assert "nodeSelector" not in pod and "tolerations" not in pod


@pytest.mark.parametrize(("asset", "cpu", "memory"), [("policy_candidate", "4", "16Gi"), ("eval_report", "4", "8Gi")])
def test_deployed_training_and_evaluation_request_a_gpu_from_the_helm_values(asset, cpu, memory):
    job = step_job(asset, deployed=True)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    res = container["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    assert res["requests"]["cpu"] == cpu and res["requests"]["memory"] == res["limits"]["memory"] == memory
    assert "cpu" not in res["limits"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # The pod carries the same FLYWHEEL_K8S_STEPS, so the step process builds the same tags.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["FLYWHEEL_K8S_STEPS"]) == values_overrides()


def test_deployed_ingest_stays_on_cpu_nodes():
    pod = step_job("episodes", deployed=True)["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]


def test_step_overrides_per_kind():
    from flywheel_pipelines.defs import k8s

    cpu_eval = k8s.step_k8s_config("evaluation", {"evaluation": {"gpu": 0}})
    assert cpu_eval == k8s.step_k8s_config("evaluation") and "pod_spec_config" not in cpu_eval
    two = k8s.step_k8s_config("training", {"training": {"gpu": 2, "gpu_resource": "amd.com/gpu",
                                                        "node_selector": {"pool": "mi300"}, "tolerations": []}})
    assert two["container_config"]["resources"]["limits"]["amd.com/gpu"] == "2"
    assert two["pod_spec_config"] == {"node_selector": {"pool": "mi300"}, "tolerations": []}
    for bad, match in (('{"trainig": {}}', "unknown asset kind"), ('{"training": {"gpus": 1}}', "unknown keys"),
                       ("[1]", "object of asset kinds"), ("{", "not JSON"), ('{"training": {"gpu": -1}}', "gpu must")):
        with pytest.raises(ValueError, match=match):
            k8s.parse_overrides(bad)
    assert k8s.parse_overrides("") == k8s.parse_overrides(None) == {}


def test_only_the_named_assets_carry_k8s_tags():
    from flywheel_pipelines.definitions import defs
    from flywheel_pipelines.defs.k8s import K8S_CONFIG_TAG

    d = defs()
    tagged = {key.to_user_string() for key in d.resolve_asset_graph().get_all_asset_keys()
              if d.resolve_assets_def(key).is_executable and K8S_CONFIG_TAG in d.resolve_assets_def(key).op.tags}
    assert tagged == {"log_manifest", "episodes", "episode_archive", "policy_candidate", "eval_report"}


# ---------------------------------------------------------------- the executor, chosen by FLYWHEEL_EXECUTOR


@pytest.mark.parametrize(("value", "expected"), [(None, "multiprocess"), ("multiprocess", "multiprocess"), ("k8s", "k8s")])
def test_flywheel_executor_picks_the_executor_of_every_job(monkeypatch, value, expected):
    from dagster_k8s import k8s_job_executor

    from flywheel_pipelines.definitions import defs

    if value is None:
        monkeypatch.delenv("FLYWHEEL_EXECUTOR", raising=False)
    else:
        monkeypatch.setenv("FLYWHEEL_EXECUTOR", value)
    d = defs()
    want = k8s_job_executor if expected == "k8s" else dg.multiprocess_executor
    assert d.executor is want
    for name in ("ingest_robot_day", "nightly_retrain"):
        assert d.resolve_job_def(name).executor_def is want, name
    assert d.resolve_implicit_global_asset_job_def().executor_def is want


def test_an_unknown_executor_is_refused(monkeypatch):
    from flywheel_pipelines.definitions import defs

    monkeypatch.setenv("FLYWHEEL_EXECUTOR", "celery")
    with pytest.raises(Exception) as caught:
        defs()
    messages, exc = [], caught.value
    while exc is not None:  # load_from_defs_folder wraps the error with the folder tree
        messages.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("FLYWHEEL_EXECUTOR='celery': expected one of multiprocess, k8s" in m for m in messages), messages
