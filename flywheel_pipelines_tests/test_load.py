"""Loading the code location stays light: every process that loads it (webserver, daemon, each run
worker and Kubernetes step pod, including ones that only ingest logs) pays for what it imports, so
torch, stable-baselines3, mujoco, onnx, ONNX Runtime, MLflow and gymnasium load where a step runs.

The load time is printed, not asserted (2 shared cores are too noisy for a wall-clock bound);
``benchmarks/bench_load.py`` measures it beside ``import dagster``.
"""

import json
import os
import subprocess
import sys

HEAVY = ("torch", "stable_baselines3", "mujoco", "onnx", "onnxruntime", "mlflow", "gymnasium")

# Loads the definitions the way `dagster dev` does (the @dg.definitions function runs and imports
# every module under defs/), then reports which heavy modules were imported.
PROBE = f"""
import json, sys, time
start = time.perf_counter()
import flywheel_pipelines.definitions as location
defs = location.defs()
seconds = time.perf_counter() - start
assert defs.resolve_asset_graph().get_all_asset_keys()
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"seconds": seconds, "heavy": heavy}}))
"""


def load_in_fresh_interpreter() -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=os.environ.copy(),
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_definitions_load_without_heavy_modules():
    result = load_in_fresh_interpreter()
    print(f"definitions loaded in {result['seconds']:.2f} s")
    assert result["heavy"] == [], (
        f"loading flywheel_pipelines.definitions imported {result['heavy']}: import them inside the step "
        "that uses them (python -X importtime shows which module pulled them in)")
