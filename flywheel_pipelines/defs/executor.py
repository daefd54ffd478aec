"""The executor of every job, chosen once by the deployment: ``FLYWHEEL_EXECUTOR``.

- unset / ``multiprocess`` (local default: ``dagster dev``, the demo, the compose stack): each step
  in a subprocess of the run worker.
- ``k8s`` (the image under the Helm chart): dagster-k8s's ``k8s_job_executor``, each asset step in a
  Kubernetes Job of its own, sized by the asset's ``dagster-k8s/config`` op tags (defs/k8s.py). Its
  image, namespace, instance ConfigMap and Secrets are inherited from the K8sRunLauncher and the
  user-code deployment, so nothing else is configured here.

Any other value is an error at load time rather than a silent fallback.
"""

import os

import dagster as dg

EXECUTOR_ENV = "FLYWHEEL_EXECUTOR"
EXECUTORS = ("multiprocess", "k8s")


def executor_from_env(environ=None) -> dg.ExecutorDefinition:
    environ = os.environ if environ is None else environ
    choice = (environ.get(EXECUTOR_ENV) or "multiprocess").strip().lower()
    if choice == "multiprocess":
        return dg.multiprocess_executor
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"{EXECUTOR_ENV}={choice!r}: expected one of {', '.join(EXECUTORS)}")


@dg.definitions
def executor() -> dg.Definitions:
    return dg.Definitions(executor=executor_from_env())
