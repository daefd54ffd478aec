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
"""

from typing import Any

K8S_CONFIG_TAG = "dagster-k8s/config"

GPU_RESOURCE = "nvidia.com/gpu"
# Set on GPU nodes by NVIDIA GPU feature discovery (part of the NVIDIA GPU operator).
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def k8s_config(container_resources: dict[str, Any], **pod_spec_config: Any) -> dict[str, Any]:
    """One ``dagster-k8s/config`` tag value: container resources plus optional pod spec fields."""
    config: dict[str, Any] = {"container_config": {"resources": container_resources}}
    if pod_spec_config:
        config["pod_spec_config"] = pod_spec_config
    return config


INGEST_K8S = k8s_config({
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"cpu": "2", "memory": "4Gi"},
})

TRAINING_K8S = k8s_config(
    {
        "requests": {"cpu": "4", "memory": "16Gi", GPU_RESOURCE: "1"},
        "limits": {"memory": "16Gi", GPU_RESOURCE: "1"},
    },
    node_selector=GPU_NODE_SELECTOR,
    tolerations=[GPU_TOLERATION],
)

EVALUATION_K8S = k8s_config({
    "requests": {"cpu": "8", "memory": "8Gi"},
    "limits": {"cpu": "8", "memory": "8Gi"},
})

# The op_tags of each asset kind (``op_tags=INGEST_TAGS`` on the decorator).
INGEST_TAGS = {K8S_CONFIG_TAG: INGEST_K8S}
TRAINING_TAGS = {K8S_CONFIG_TAG: TRAINING_K8S}
EVALUATION_TAGS = {K8S_CONFIG_TAG: EVALUATION_K8S}
