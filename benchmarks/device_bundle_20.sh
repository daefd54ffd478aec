#!/bin/bash
# Builds .gpu20/ (git-ignored): the packages benchmarks/device_check_20.sh installs on a device
# machine whose image lacks them. The H200 image has PyTorch, NumPy, PyYAML, safetensors, rich,
# cloudpickle, absl-py and etils, but no MuJoCo, MuJoCo Warp, Warp, stable-baselines3 or gymnasium
# (/work/.library/device/KINDS.md; the 2026-12-04 session carried them the same way), and the
# machine cannot reach a registry. Its python3 is 3.12: cp312 wheels, --no-deps.
#
# Warp's CUDA-enabled library (warp/bin/warp.so, 285 MB; xz: ~80 MB) does not fit one call's
# 64 MiB carry together with the wheels, so the bundle is two parts, each under 56 MiB:
#   .gpu20/p1: the wheels, warp's Python files, the first 40 MB of warp.so.xz, its sha256
#   .gpu20/p2: the rest of warp.so.xz
# Run the device check twice in a row (the machine stays warm ~30 s between calls):
#   run(carry=[".gpu20/p1"], command="bash benchmarks/device_check_20.sh")   -> stages part 1, exit 10
#   run(carry=[".gpu20/p2"], command="bash benchmarks/device_check_20.sh")   -> installs, measures
# On a machine that already has the packages, one call with no carry does it all.
#
# Usage (here, in the checkout the device calls send): bash benchmarks/device_bundle_20.sh
#   VENV: the venv whose warp-lang is bundled (default /work/main/.venv: warp-lang 1.19.0)
#   WARP_SO_XZ: an already compressed warp.so.xz of that venv (xz takes ~15 min on 2 busy cores)
set -euo pipefail
VENV=${VENV:-/work/main/.venv}
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
OUTD=.gpu20
rm -rf "$OUTD" && mkdir -p "$OUTD/p1/whl" "$OUTD/p2"
"$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$OUTD/p1/whl" \
  mujoco==4.0.0 mujoco-core==4.0.0 mujoco-warp==4.0.0 stable-baselines3==2.9.2 gymnasium==1.4.0 \
  farama-notifications==0.0.4 importlib-resources==7.1.0
tar -C "$SITE" --exclude='warp/bin/*' --exclude='__pycache__' --exclude='warp/tests' --exclude='warp/examples' \
  -cJf "$OUTD/p1/warp_py.tar.xz" warp warp_lang-1.19.0.dist-info
xzfile=${WARP_SO_XZ:-}
if [ -z "$xzfile" ]; then
  xzfile=$(mktemp) && xz -T0 -6 -c "$SITE/warp/bin/warp.so" > "$xzfile"
fi
xz -dc "$xzfile" | cmp - "$SITE/warp/bin/warp.so"   # the compressed file is this venv's warp.so
sha256sum < "$xzfile" | cut -d' ' -f1 > "$OUTD/p1/warp.so.xz.sha256"
head -c 40000000 "$xzfile" > "$OUTD/p1/warp.so.xz.00"
tail -c +40000001 "$xzfile" > "$OUTD/p2/warp.so.xz.01"
du -sh "$OUTD"/p1 "$OUTD"/p2
