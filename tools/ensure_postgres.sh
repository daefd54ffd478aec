#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries (initdb, pg_ctl) are installed: the production-instance
# tests (flywheel_pipelines_tests/deploy/) start a throwaway server with them, and in CI a missing
# server fails those tests. Installs the Debian package when they are missing and apt-get can run
# (as root, as in CI); it starts no server and creates no database for the tests itself.
set -euo pipefail

have_server() {
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if have_server; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_postgres: PostgreSQL server binaries not found and no apt-get to install them;" \
         "install the PostgreSQL server (initdb, pg_ctl) and run again" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_postgres: PostgreSQL server binaries not found; as root run:" \
         "apt-get update && apt-get install -y postgresql" >&2
    exit 1
fi
echo "ensure_postgres: installing the PostgreSQL server (apt-get install postgresql)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
have_server || { echo "ensure_postgres: postgresql installed but initdb still not found" >&2; exit 1; }
