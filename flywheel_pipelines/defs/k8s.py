"""Per-step Kubernetes settings: the `dagster-k8s/config` op tags of the heavy assets.

With the k8s_job_executor (FLYWHEEL_EXECUTOR=k8s, see executor.py) every asset step runs in a pod
of its own, and dagster-k8s reads these tags from the *op* (``op_tags=`` on ``@dg.asset``) when it
builds the step's Job. Job- or run-level tags do not reach step pods, so the tags live on the
assets. Shapes follow dagster-k8s's ``USER_DEFINED_K8S_JOB_CONFIG_SCHEMA``: snake_case Kubernetes
fields under ``container_config`` (the step container) and ``pod_spec_config`` (the pod).

Sizing (one step of each kind; change here, the test in flywheel_pipelines_tests/deploy/test_k8s.py
builds the resulting Jobs and validates them against the Kubernetes schemas):

- ingest (log_manifest, episodes): 1 CPU requested, 2 allowed; 2 GiB requested, 4 GiB limit. The
  standardize pass is memory-bound and keeps only the wanted columns: a 2 GB, 45-minute log peaks
  at 0.74 GB RSS (docs/architecture.md), so 4 GiB covers a day of several such logs plus Parquet
  buffers. Many robot-days run side by side (ingest pool, default 4 runs), so requests stay small.
- training (policy_candidate): one NVIDIA GPU (``nvidia.com/gpu`` is an extended resource: it goes
  in limits, and Kubernetes sets the request equal), 4 CPUs for data loading, 16 GiB. The pod is
  pinned to GPU nodes by the label NVIDIA's GPU feature discovery puts on them and tolerates the
  usual ``nvidia.com/gpu:NoSchedule`` taint of GPU node pools (EKS/GKE/AKS GPU pools taint so
  that CPU work stays off them). A cluster that labels its GPU nodes otherwise changes GPU_NODE_SELECTOR.
- evaluation (eval_report): 8 CPUs, 8 GiB, no GPU: MuJoCo physics and ONNX Runtime inference are
  CPU work, and the CPU limit equals the request so ONNX Runtime's thread pool is not throttled.
  With a GPU (the Helm values give it one) the evaluator's ``auto`` backend runs MuJoCo Warp on it.

These are the defaults. A deployment changes them per asset kind without a code change through
``FLYWHEEL_K8S_STEPS``, a JSON object set in the Helm values (deploy/k8s/values.yaml) on the user
deployment, whose env reaches the code server, run and step pods alike, so every process builds
the same tags::

    {"evaluation": {"gpu": 1, "cpu": "4", "memory": "8Gi",
                    "node_selector": {...}, "tolerations": [...]}}

Keys per kind (``ingest``, ``training``, ``evaluation``): ``cpu`` (request), ``cpu_limit`` (""
for none), ``memory`` (request and limit), ``gpu`` (count; 0 for none), ``gpu_resource``,
``node_selector`` and ``tolerations`` (default: GPU_NODE_SELECTOR and GPU_TOLERATION when
``gpu`` > 0, none otherwise). Anything else is refused when the code location loads.
"""


import json
import os
from typing import Any

K8S_CONFIG_TAG = "dagster-k8s/config"
STEPS_ENV = "FLYWHEEL_K8S_STEPS"

GPU_RESOURCE = "nvidia.com/gpu"
# Set on GPU nodes by NVIDIA GPU feature discovery (part of the NVIDIA GPU operator).
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

# The sizing above, per asset kind.
DEFAULT_STEPS: dict[str, dict[str, Any]] = {
    "ingest": {"cpu": "1", "cpu_limit": "2", "memory": "2Gi", "memory_request": "2Gi", "memory_limit": "4Gi"},
    "training": {"cpu": "4", "cpu_limit": "", "memory": "16Gi", "gpu": 1},
    "evaluation": {"cpu": "8", "cpu_limit": "8", "memory": "8Gi", "gpu": 0},
}
_KEYS = {"cpu", "cpu_limit", "memory", "memory_request", "memory_limit", "gpu", "gpu_resource", "node_selector",
         "tolerations"}


def k8s_config(container_resources: dict[str, Any], **pod_spec_config: Any) -> dict[str, Any]:
    """One ``dagster-k8s/config`` tag value: container resources plus optional pod spec fields."""
    config: dict[str, Any] = {"container_config": {"resources": container_resources}}
    if pod_spec_config:
        config["pod_spec_config"] = pod_spec_config
    return config


def parse_overrides(text: str | None) -> dict[str, dict[str, Any]]:
    """``FLYWHEEL_K8S_STEPS``'s value, checked: kind -> settings (empty when unset)."""
    if not text or not text.strip():
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{STEPS_ENV} is not JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"{STEPS_ENV} must be an object of asset kinds")
    for kind, settings in overrides.items():
        if kind not in DEFAULT_STEPS:
            raise ValueError(f"{STEPS_ENV}: unknown asset kind {kind!r}; expected one of {sorted(DEFAULT_STEPS)}")
        unknown = set(settings) - _KEYS if isinstance(settings, dict) else {"<not an object>"}
        if unknown:
            raise ValueError(f"{STEPS_ENV}[{kind!r}]: unknown keys {sorted(unknown)}; expected some of {sorted(_KEYS)}")
        if int(settings.get("gpu", 0)) < 0:
            raise ValueError(f"{STEPS_ENV}[{kind!r}]: gpu must be >= 0")
    return overrides


def step_k8s_config(kind: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``dagster-k8s/config`` of one asset kind: the defaults with ``overrides[kind]`` applied."""
    s = {**DEFAULT_STEPS[kind], **(overrides or {}).get(kind, {})}
    gpu, resource = int(s.get("gpu", 0)), s.get("gpu_resource", GPU_RESOURCE)
    requests = {"cpu": str(s["cpu"]), "memory": str(s.get("memory_request", s["memory"]))}
    limits = {"memory": str(s.get("memory_limit", s["memory"]))}
    if s.get("cpu_limit"):
        limits = {"cpu": str(s["cpu_limit"]), **limits}
    pod: dict[str, Any] = {}
    if gpu:
        # An extended resource: it must be in limits, and Kubernetes sets the request equal.
        requests[resource] = limits[resource] = str(gpu)
        pod = {"node_selector": s.get("node_selector", GPU_NODE_SELECTOR),
               "tolerations": s.get("tolerations", [GPU_TOLERATION])}
    else:
        pod = {k: s[k] for k in ("node_selector", "tolerations") if s.get(k)}
    return k8s_config({"requests": requests, "limits": limits}, **pod)


def step_tags(kind: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The op_tags of an asset kind (``op_tags=step_tags("training")`` on the decorator)."""
    return {K8S_CONFIG_TAG: step_k8s_config(kind, overrides)}


# Read once, when the code location loads: every pod of a deployment has the same env.
_OVERRIDES = parse_overrides(os.environ.get(STEPS_ENV))
INGEST_K8S = step_k8s_config("ingest", _OVERRIDES)
TRAINING_K8S = step_k8s_config("training", _OVERRIDES)
EVALUATION_K8S = step_k8s_config("evaluation", _OVERRIDES)

# The op_tags of each asset kind (``op_tags=INGEST_TAGS`` on the decorator).
INGEST_TAGS = {K8S_CONFIG_TAG: INGEST_K8S}
TRAINING_TAGS = {K8S_CONFIG_TAG: TRAINING_K8S}
EVALUATION_TAGS = {K8S_CONFIG_TAG: EVALUATION_K8S}
