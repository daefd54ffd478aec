"""RL wall time: stable-baselines3 PPO (``ppo_reach.yaml``) vs on-device PPO over batched worlds
(``ppo_batched_reach.yaml``), side by side, to the SB3 PPO's success rate.

Both trainers are evaluated on the same held-out scenarios (fault-free fleet robots and tasks
neither trains on) with the CPU batched evaluator and the deterministic exported Policy, which
is what the evaluation gate sees; evaluation time is not counted in the wall times.

- SB3 PPO trains its config's ``n_timesteps`` in one ``train_rl`` call with a checkpoint folder;
  each checkpoint (every ``checkpoint_freq`` = 32,768 timesteps) is evaluated with the clock
  paused, and the final policy too. Writing the checkpoints counts against SB3 (~10 ms each).
- ``ppo_batched`` is evaluated every ``--eval-every`` updates and stops at the first evaluation
  that reaches the target (with ``--which both``) or after ``--batched-timesteps``. With the warp
  backend, Warp's one-time kernel compilation (cached in ~/.cache/warp) is done before the clock
  starts and printed separately; building each env (model upload, CUDA graph capture) is counted.

Target: SB3's final held-out success rate. Time to target: the training wall time until the
first evaluation at or above it, for each trainer. Goal on one H200: ppo_batched <= 1/10 of SB3.

Usage (CPU, here): python benchmarks/bench_rl.py --worlds 64 --batched-overrides n_steps=32,batch_size=512,n_epochs=10 \
    --sb3-timesteps 98304 --batched-timesteps 131072 --eval-episodes 64
Device: benchmarks/device_check_20.sh (SB3 and ppo_batched in two processes, then --compare).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch

from flywheel_pipelines.lib.learning.checkpoint import latest_checkpoint, latest_step
from flywheel_pipelines.lib.learning.policy import Policy, PolicyConfig
from flywheel_pipelines.lib.learning.rl import load_rl_config, policy_interface, run_fingerprint, train_rl
from flywheel_pipelines.lib.sim.batched import evaluate_batched
from flywheel_pipelines.lib.sim.robot import sample_profile, sample_task, seeded_rng
from flywheel_pipelines.lib.sim.scenario import Scenario

INTERFACE = policy_interface()


def held_out(n: int) -> list[Scenario]:
    """Fault-free fleet robots and tasks that neither trainer draws (other robot ids and seeds)."""
    out = []
    for i in range(n):
        q0, goal = sample_task(seeded_rng("bench-rl-held-out", i))
        out.append(Scenario(f"held-out/{i}", "randomized", sample_profile(f"held{i}", seed=7, faults=False),
                            (float(q0[0]), float(q0[1])), (float(goal[0]), float(goal[1])), seed=i))
    return out


EVAL_THREADS = [None]  # CPU evaluator threads (--eval-threads)
RUNS: dict[str, dict] = {}  # what --json holds, rewritten after every evaluation
JSON_PATH = [""]


def save() -> None:
    """Write every run's curve so far: a run stopped by a time limit still leaves its points."""
    if JSON_PATH[0]:
        Path(JSON_PATH[0]).write_text(json.dumps(RUNS, indent=1) + "\n")


def success_rate(policy, scenarios: list[Scenario]) -> float:
    policy = policy.cpu().eval()

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return policy(torch.from_numpy(obs)).numpy()

    return float(np.mean([r.success for r in evaluate_batched(act, scenarios, policy_name="candidate", threads=EVAL_THREADS[0])]))


def sb3_checkpoint_policy(state: dict, cfg) -> Policy:
    """The deterministic Policy of an SB3 PPO checkpoint (what ``to_policy`` gives at that step)."""
    sd = state["policy"]
    policy = Policy(PolicyConfig(
        obs_features=INTERFACE.obs_features, obs_names=INTERFACE.obs_names, action_names=INTERFACE.action_names,
        hidden=cfg.hidden, layers=cfg.layers, residual_indices=(0, 1), squash="clip"))
    hidden = sorted({k.rsplit(".", 1)[0] for k in sd if k.startswith("mlp_extractor.policy_net.")},
                    key=lambda name: int(name.rsplit(".", 1)[1]))
    with torch.no_grad():
        for dst, src in zip([m for m in policy.net if isinstance(m, torch.nn.Linear)], [*hidden, "action_net"],
                            strict=True):
            dst.weight.copy_(sd[f"{src}.weight"])
            dst.bias.copy_(sd[f"{src}.bias"])
        policy.obs_mean.copy_(sd["features_extractor.obs_mean"])
        policy.obs_std.copy_(sd["features_extractor.obs_std"])
        policy.act_std.copy_(torch.tensor(cfg.action_scale, dtype=torch.float32))
    return policy.eval()


def run_sb3(args, scenarios) -> dict:
    """One uninterrupted SB3 PPO run; each checkpoint (every ``checkpoint_freq`` timesteps) is
    evaluated while the clock is paused, at the next progress report after it is written."""
    cfg = load_rl_config("ppo_reach.yaml", timesteps=args.sb3_timesteps or None, device="cpu")
    curve, walls, clock = [], {}, {"paused": 0.0}
    RUNS["sb3"] = {"trainer": "sb3 ppo", "config": cfg.file, "n_envs": cfg.n_envs, "device": "cpu",
                   "n_timesteps": cfg.n_timesteps, "curve": curve}
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def evaluate(policy, timesteps: int, train_success: float) -> None:
            curve.append({"timesteps": timesteps, "wall_s": walls[timesteps], "success": success_rate(policy, scenarios),
                          "train_success": train_success})
            print(f"  sb3     {timesteps:>9,d} timesteps {walls[timesteps]:7.1f} s  held-out success "
                  f"{curve[-1]['success']:.3f}", flush=True)
            save()

        def on_progress(m) -> None:
            paused = time.perf_counter()
            walls[m.timesteps] = paused - clock["start"] - clock["paused"]
            step = latest_step(folder)
            if step and step < m.timesteps and step not in {p["timesteps"] for p in curve}:
                evaluate(sb3_checkpoint_policy(latest_checkpoint(folder).state, cfg), step, float("nan"))
            clock["paused"] += time.perf_counter() - paused

        clock["start"] = time.perf_counter()
        policy, history = train_rl(cfg, checkpoint_dir=folder, on_progress=on_progress)
        evaluate(policy, history[-1].timesteps, history[-1].success_rate)
    return RUNS["sb3"]


def run_batched(args, scenarios, target: float | None) -> dict:
    from flywheel_pipelines.lib.learning.ppo_batched import Trainer, resolve_backend

    cfg = load_rl_config("ppo_batched_reach.yaml", timesteps=args.batched_timesteps or None, device=args.device)
    hyper = dict(cfg.hyperparams)
    for item in filter(None, args.batched_overrides.split(",")):
        key, value = item.split("=")
        hyper[key] = type(hyper.get(key, 0.0))(value) if not isinstance(hyper.get(key), str) else value
    cfg = replace(cfg, n_envs=args.worlds or cfg.n_envs, hyperparams=hyper, checkpoint_freq=10**12)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    backend = resolve_backend(hyper.get("sim_backend", "auto"), device)
    compile_s = 0.0
    if backend == "warp":  # one-time kernel compilation, outside the clock
        from flywheel_pipelines.lib.sim.batched_env import BatchedReachEnv, training_robots

        start = time.perf_counter()
        with BatchedReachEnv(training_robots(0, 2, draw=0), 4, seed=0, device=device, backend="warp") as env:
            env.reset()
            env.step(torch.zeros(4, 2, device=device))
        compile_s = time.perf_counter() - start
        print(f"  warp kernels ready in {compile_s:.1f} s (first use compiles; cached after)", flush=True)
    trainer = Trainer(cfg, offset=np.zeros(2), scale=np.asarray(cfg.action_scale), checkpoint_dir=None,
                      fingerprint=run_fingerprint(cfg, None), on_progress=None)
    curve, clock = [], {"paused": 0.0}
    RUNS["batched"] = {"trainer": "ppo_batched", "config": cfg.file, "n_envs": cfg.n_envs, "device": str(device),
                       "backend": backend, "warp_compile_s": compile_s, "hyperparams": hyper,
                       "n_timesteps": cfg.n_timesteps, "curve": curve}
    class Reached(Exception):
        pass

    def on_progress(m) -> None:
        if m.iteration % args.eval_every and m.timesteps < cfg.n_timesteps:
            return
        if device.type == "cuda":
            torch.cuda.synchronize()
        paused = time.perf_counter()
        wall = paused - clock["start"] - clock["paused"]
        rate = success_rate(trainer.policy(INTERFACE), scenarios)
        curve.append({"timesteps": m.timesteps, "wall_s": wall, "success": rate, "train_success": m.success_rate,
                      "timesteps_per_s": m.timesteps_per_s})
        print(f"  batched {m.timesteps:>9,d} timesteps {wall:7.1f} s  held-out success {rate:.3f}  "
              f"({m.timesteps_per_s:,.0f} timesteps/s in the last update)", flush=True)
        save()
        clock["paused"] += time.perf_counter() - paused
        if target is not None and rate >= target:
            raise Reached

    trainer.on_progress = on_progress
    clock["start"] = time.perf_counter()
    with contextlib.suppress(Reached):
        trainer.run()
    return RUNS["batched"]


def agreement(args) -> None:
    """The batched env stepped by MuJoCo Warp on ``--device`` and by CPU MuJoCo: the same robots
    (sensor noise off, since the two devices' generators differ), tasks and random actions. Prints
    the largest observation differences up to each world's first episode end (docs/simulation.md:
    1e-4 rad, 5e-3 rad/s) and whether those ends agree. Checks the zero-copy torch/Warp path too."""
    from dataclasses import replace as dc_replace

    from flywheel_pipelines.lib.sim.batched_env import BatchedReachEnv, training_robots

    worlds, steps = args.worlds or 1024, 80
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    robots = [dc_replace(r, pos_noise=0.0, vel_noise=0.0) for r in training_robots(0, 64, draw=1)]
    rng = np.random.default_rng(0)
    tasks = [sample_task(rng) for _ in range(worlds)]
    q0, goal = np.array([q for q, _ in tasks]), np.array([g for _, g in tasks])
    actions = torch.from_numpy(rng.uniform(-1, 1, (steps, worlds, 2)).astype(np.float32))
    runs = {}
    for backend, dev in (("mujoco", torch.device("cpu")), ("warp", device)):
        start = time.perf_counter()
        with BatchedReachEnv(robots, worlds, seed=3, backend=backend, device=dev, max_steps=10**6) as env:
            obs, ends = [env.reset(tasks=(q0, goal)).cpu().clone()], []
            for a in actions:
                out = env.step(a.to(dev))
                obs.append(out["terminal_obs"].cpu().clone())
                ends.append(out["terminated"].cpu().clone())
        runs[backend] = (torch.stack(obs).double(), torch.stack(ends))
        print(f"  {backend:6s} on {dev}: {worlds} worlds x {steps} steps in {time.perf_counter() - start:.1f} s "
              "(warp: includes setup and any kernel compilation)", flush=True)
    (om, em), (ow, ew) = runs["mujoco"], runs["warp"]
    # Compare each world up to (and including) its first success on the CPU path.
    before = torch.cat([torch.zeros(1, worlds, dtype=torch.bool), em.cumsum(0)[:-1] > 0])
    live = torch.cat([torch.ones(1, worlds, dtype=torch.bool), ~before])[:, :, None]
    dq = ((om[:, :, :2] - ow[:, :, :2]).abs() * live).max().item()
    dv = ((om[:, :, 2:4] - ow[:, :, 2:4]).abs() * live).max().item()
    same_ends = torch.equal(em & ~before, ew & ~before)
    print(f"  max |obs q| diff {dq:.2e} rad (tolerance 1e-4), max |obs dq| diff {dv:.2e} rad/s (5e-3); "
          f"first successes equal: {same_ends} ({int((em & ~before).sum())} worlds succeeded)")
    print("  AGREE" if dq < 1e-4 and dv < 5e-3 and same_ends else "  DISAGREE")


def time_to(curve: list[dict], target: float) -> float | None:
    return next((p["wall_s"] for p in curve if p["success"] >= target), None)


def compare(sb3: dict, batched: dict) -> None:
    if not sb3["curve"] or not batched["curve"]:
        print(f"  nothing to compare: {len(sb3['curve'])} SB3 and {len(batched['curve'])} ppo_batched evaluations")
        return
    if sb3["curve"][-1]["timesteps"] < sb3["n_timesteps"]:
        print(f"  NOTE: SB3 PPO stopped (time limit) at {sb3['curve'][-1]['timesteps']:,} of {sb3['n_timesteps']:,} "
              "timesteps: the target is its success rate there")
    target = sb3["curve"][-1]["success"]
    a, b = time_to(sb3["curve"], target), time_to(batched["curve"], target)
    print(f"\n  {'trainer':12s} {'worlds':>7s} {'device':>7s} {'timesteps':>10s} {'wall s':>8s} {'success':>8s}")
    for run in (sb3, batched):
        last = run["curve"][-1]
        print(f"  {run['trainer']:12s} {run['n_envs']:>7d} {run['device']:>7s} {last['timesteps']:>10,d} "
              f"{last['wall_s']:>8.1f} {last['success']:>8.3f}")
    print(f"\n  target: SB3 PPO's final held-out success rate {target:.3f}")
    if batched.get("warp_compile_s"):
        print(f"  not counted: Warp's one-time kernel compilation, {batched['warp_compile_s']:.1f} s")
    print(f"  time to target: SB3 PPO {a:.1f} s" + (f", ppo_batched {b:.1f} s" if b is not None else
                                                     ", ppo_batched: not reached"))
    if b is not None:
        print(f"  ratio ppo_batched / SB3 = {b / a:.3f} ({a / b:.1f}x faster; goal on one H200: <= 0.10)")
    print(f"\n  time to a held-out success rate:\n  {'success':>9s} {'SB3 s':>8s} {'batched s':>10s} {'ratio':>7s}")
    for threshold in (0.5, 0.8, 0.9, target):
        ta, tb = time_to(sb3["curve"], threshold), time_to(batched["curve"], threshold)
        cells = [f"{t:.1f}" if t is not None else "-" for t in (ta, tb)]
        ratio = f"{tb / ta:.3f}" if ta and tb is not None else "-"
        print(f"  {threshold:>9.3f} {cells[0]:>8s} {cells[1]:>10s} {ratio:>7s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=("both", "sb3", "batched", "agree"), default="both",
                        help="agree: the batched env on Warp (--device) vs the CPU MuJoCo env, same actions")
    parser.add_argument("--worlds", type=int, default=0, help="ppo_batched worlds (default: the config's n_envs)")
    parser.add_argument("--device", default="auto", help="ppo_batched policy device: auto | cpu | cuda")
    parser.add_argument("--batched-overrides", default="", help="hyperparameters, e.g. n_steps=32,batch_size=512")
    parser.add_argument("--sb3-timesteps", type=int, default=0, help="default: the config's n_timesteps")
    parser.add_argument("--batched-timesteps", type=int, default=0, help="budget (default: the config's)")
    parser.add_argument("--target", type=float, default=None, help="stop ppo_batched at this held-out success")
    parser.add_argument("--eval-every", type=int, default=1, help="ppo_batched updates between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=256)
    parser.add_argument("--eval-threads", type=int, default=0, help="CPU evaluator threads (default: all cores)")
    parser.add_argument("--json", default="", help="write this run's curve(s) here")
    parser.add_argument("--compare", nargs=2, metavar=("SB3_JSON", "BATCHED_JSON"))
    args = parser.parse_args()
    if args.compare:
        sb3, batched = (json.loads(Path(p).read_text()) for p in args.compare)
        compare(sb3["sb3"], batched["batched"])
        return
    if args.which == "agree":
        agreement(args)
        return
    EVAL_THREADS[0] = args.eval_threads or None
    JSON_PATH[0] = args.json
    scenarios = held_out(args.eval_episodes)
    print(f"RL: {len(scenarios)} held-out scenarios; torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no CUDA device"), flush=True)
    runs = {}
    if args.which in ("both", "sb3"):
        runs["sb3"] = run_sb3(args, scenarios)
    if args.which in ("both", "batched"):
        target = runs["sb3"]["curve"][-1]["success"] if "sb3" in runs else args.target
        runs["batched"] = run_batched(args, scenarios, target)
    save()
    if len(runs) == 2:
        compare(runs["sb3"], runs["batched"])


if __name__ == "__main__":
    main()
