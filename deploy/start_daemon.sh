#!/usr/bin/env bash
# The daemon's entrypoint: apply the pool limits from the environment, then run the daemon
# (schedules, sensors, run queue, run monitoring and retries). Arguments go to `dagster-daemon run`,
# e.g. `deploy/start_daemon.sh -w workspace.yaml`. Needs DAGSTER_HOME and the DAGSTER_PG_* variables.
set -euo pipefail
python "$(dirname "$0")/apply_pool_limits.py"
exec dagster-daemon run "$@"
