#!/bin/bash
# Issue 20 device check (one NVIDIA H200 + 16 cores, <= 6 minutes): on-device PPO over 4,096
# MuJoCo Warp worlds (ppo_batched_reach.yaml) vs SB3 PPO (ppo_reach.yaml, the current config) to
# the SB3 PPO's held-out success rate, wall times and their ratio (goal: <= 1/10); before that,
# the batched env on Warp/CUDA against the CPU MuJoCo env (tolerance of docs/simulation.md), which
# also proves the zero-copy torch <-> Warp stream path. Outputs under $OUT:
#   env.txt        machine, driver, package versions
#   agree.txt      Warp-on-CUDA env vs CPU env, 4,096 worlds x 80 steps
#   sb3.txt/.json  SB3 PPO's run (background, CPU, 1 torch thread), held-out success per checkpoint
#   batched.txt/.json  ppo_batched on CUDA, held-out success every 4 updates
#   compare.txt    side by side, time to SB3's success rate, the ratio
#
# Packages: the H200 image lacks MuJoCo, MuJoCo Warp, Warp, stable-baselines3 and gymnasium and
# cannot reach a registry. Build the bundle here first (benchmarks/device_bundle_20.sh -> .gpu20/,
# git-ignored, two parts because Warp's library alone is ~80 MB compressed), then call twice in a row:
#   run(carry=[".gpu20/p1"], command="bash benchmarks/device_check_20.sh", timeout_s=60)   # stages part 1: exit 10
#   run(carry=[".gpu20/p2"], command="bash benchmarks/device_check_20.sh", timeout_s=420)  # installs and measures
# (the machine stays warm ~30 s after a call; /tmp survives between calls on a warm machine).
# Where the packages are installed already, one call with no carry runs everything.
#
# Time budget (H200 machine, whose single core ran SB3 at half this dev box's speed on 2026-12-04):
# install ~20 s; SB3 PPO capped at 290 s (its JSON is rewritten after every evaluation, so a run cut
# by the cap still compares at the timesteps it reached, and says so); in parallel, Warp kernel
# compilation (~60-90 s on first use, not counted) + agreement ~10 s (cap 150 s) + ppo_batched
# (cap 150 s; its JSON too is rewritten after every evaluation): at most ~330 s in all.
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-/tmp/out20}
mkdir -p "$OUT"
STASH=/tmp/flywheel20-bundle
SITE=/tmp/flywheel20-site

have_packages() {
  "$PY" -c "import mujoco, mujoco_warp, warp, stable_baselines3, gymnasium" 2>/dev/null
}

if ! have_packages && [ -d "$SITE" ]; then
  export PYTHONPATH="$SITE"
fi
if ! have_packages; then
  mkdir -p "$STASH"
  for part in .gpu20/p1 .gpu20/p2; do
    [ -d "$part" ] && cp -r "$part"/. "$STASH"/
  done
  if [ ! -f "$STASH/warp.so.xz.00" ] || [ ! -f "$STASH/warp.so.xz.01" ]; then
    echo "bundle staged in $STASH: $(ls "$STASH" | tr '\n' ' ')"
    echo "incomplete: call again at once carrying the other part (.gpu20/p1 / .gpu20/p2)"
    exit 10
  fi
  if [ "$(cat "$STASH"/warp.so.xz.0* | sha256sum | cut -d' ' -f1)" != "$(cat "$STASH/warp.so.xz.sha256")" ]; then
    echo "warp.so.xz parts do not match their sha256: rebuild the bundle"; exit 3
  fi
  rm -rf "$SITE" && mkdir -p "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$STASH"/whl/*.whl || exit 3
  tar -C "$SITE" -xJf "$STASH/warp_py.tar.xz" && mkdir -p "$SITE/warp/bin" || exit 3
  cat "$STASH"/warp.so.xz.0* | xz -dc -T0 > "$SITE/warp/bin/warp.so" || exit 3
  export PYTHONPATH="$SITE"
  have_packages || { echo "packages still missing after the install"; exit 3; }
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1; echo "cores $(nproc)"
  "$PY" -c "import sys, torch, mujoco, warp, mujoco_warp, stable_baselines3 as sb3
print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.is_available(), 'mujoco', mujoco.__version__,
      'warp', warp.config.version, 'sb3', sb3.__version__)"; git log -1 --format='commit %H %s' 2>/dev/null; } 2>&1 | tee "$OUT/env.txt"

# SMALL=1: a dry run of this script on a CPU-only machine (tiny sizes, Warp on the CPU).
if [ -n "${SMALL:-}" ]; then
  DEV=cpu; WORLDS=64; EPIS=16; SB3=(--sb3-timesteps 4096)
  BATCHED=(--worlds 64 --batched-timesteps 8192 --batched-overrides n_steps=32,batch_size=512,n_epochs=2)
else
  DEV=cuda; WORLDS=4096; EPIS=256; SB3=(); BATCHED=()
fi

# SB3 PPO on the CPU in the background (one torch thread, as its config says).
timeout 290 "$PY" benchmarks/bench_rl.py --which sb3 "${SB3[@]}" --eval-episodes $EPIS --eval-threads 4 \
  --json "$OUT/sb3.json" > "$OUT/sb3.txt" 2>&1 &
sb3=$!

timeout 150 "$PY" benchmarks/bench_rl.py --which agree --worlds $WORLDS --device $DEV 2>&1 | tee "$OUT/agree.txt"
timeout 150 "$PY" benchmarks/bench_rl.py --which batched "${BATCHED[@]}" --device $DEV --eval-every 4 \
  --eval-episodes $EPIS --eval-threads 4 --json "$OUT/batched.json" 2>&1 | tee "$OUT/batched.txt"

wait "$sb3"
echo "sb3 exit $? (124: stopped by its 290 s cap)" | tee -a "$OUT/sb3.txt"
tail -n 20 "$OUT/sb3.txt"
"$PY" benchmarks/bench_rl.py --compare "$OUT/sb3.json" "$OUT/batched.json" 2>&1 | tee "$OUT/compare.txt"
echo "device_check_20 done $(date -u)"
