#!/usr/bin/env bash
# Copy the UI tests' screenshots into docs/img/ui/, the ones README and docs/ui.md show.
#
# The UI tests (flywheel_pipelines_tests/ui/, slow: they run the on-call drill first, ~3-9 min)
# save them under $FLYWHEEL_TEST_ARTIFACTS/ui (default .test-artifacts/ui). Run them, then this:
#   .venv/bin/python -m pytest -m slow flywheel_pipelines_tests/ui
#   tools/refresh_ui_screenshots.sh
# Each PNG is stored as a 256-colour palette image (UI screenshots have few colours: same look,
# about a third of the bytes) and must stay under 300 KB. A missing screenshot fails the script:
# a test that stopped taking one should not leave an old picture in the docs.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SRC="${FLYWHEEL_TEST_ARTIFACTS:-$REPO/.test-artifacts}/ui"
DEST="$REPO/docs/img/ui"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
MAX_BYTES=300000
# The on-call screenshots (docs/img/oncall/) come from the same tests; docs/oncall.md explains them.
SHOTS=(global-lineage eval_report-metadata eval_report-plots episodes-check episode_catalog-columns)

missing=0
for name in "${SHOTS[@]}"; do
    if [ ! -f "$SRC/$name.png" ]; then
        echo "refresh_ui_screenshots: $SRC/$name.png missing (run the UI tests first)" >&2
        missing=1
    fi
done
[ "$missing" -eq 0 ] || exit 1

mkdir -p "$DEST"
for name in "${SHOTS[@]}"; do
    "$PYTHON" - "$SRC/$name.png" "$DEST/$name.png" "$MAX_BYTES" <<'PY'
import os
import sys

from PIL import Image

src, dest, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
tmp = dest + ".tmp"
with Image.open(src) as img:
    img.convert("RGB").quantize(colors=256).save(tmp, format="PNG", optimize=True)
size = os.path.getsize(tmp)
if size > limit:
    os.remove(tmp)
    sys.exit(f"refresh_ui_screenshots: {src} is {size} bytes as a palette PNG (limit {limit}); crop the screenshot")
os.replace(tmp, dest)  # atomic: the docs never hold half a picture
print(f"{dest}: {size // 1000} KB")
PY
done
