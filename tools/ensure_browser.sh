#!/usr/bin/env bash
# Make sure a headless Chromium is installed at /usr/bin/chromium: the UI tests
# (flywheel_pipelines_tests/ui/) drive it with Playwright through `executable_path`, because
# Playwright's own browser download cannot be fetched here (never run `playwright install`).
# Does nothing when /usr/bin/chromium already starts; otherwise installs the Debian package
# `chromium` (and a font, for legible screenshots) when apt-get can run (as root, as in CI).
# Override the path with FLYWHEEL_CHROMIUM.
set -euo pipefail

CHROMIUM="${FLYWHEEL_CHROMIUM:-/usr/bin/chromium}"

works() {
    [ -x "$CHROMIUM" ] && "$CHROMIUM" --headless --no-sandbox --version >/dev/null 2>&1
}

if works; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_browser: $CHROMIUM not found and no apt-get to install it;" \
         "install Chromium (or set FLYWHEEL_CHROMIUM) and run again" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_browser: $CHROMIUM not found; as root run:" \
         "apt-get update && apt-get install -y chromium" >&2
    exit 1
fi
echo "ensure_browser: installing Chromium (apt-get install chromium)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
works || { echo "ensure_browser: chromium installed but $CHROMIUM --version still fails" >&2; exit 1; }
