"""Simulation speed for evaluation: the batched evaluator beside its peers in the same run.

One MLP policy (``lib.learning.policy.Policy`` with seeded random weights, exported to ONNX and
served by ONNX Runtime) and one set of scenarios (fleet-sampled robot profiles: gains, friction,
latency, noise), three ways:

(a) stable-baselines3 ``evaluate_policy`` on a single ``ReachEnv`` (ArmSim underneath);
(b) ``evaluate_batched``: every episode in one batch, one ONNX Runtime call per control step,
    MuJoCo's threaded rollout on all cores;
(c) bare ``mujoco.rollout`` of the same models, no policy, all cores: the physics ceiling;
(d) ``evaluate_batched(backend="warp", device="cpu")``: MuJoCo Warp on the CPU, ONNX policy
    (what the tests run; Warp's CPU kernels run one thread);
(e) on a CUDA machine only: ``evaluate_batched(backend="warp")`` on the GPU with the policy in
    the loop (torch on the same GPU) at 1k/8k/32k worlds (``--gpu-worlds``), and the bare Warp
    physics at the same sizes (one CUDA graph per control period, no policy, no bookkeeping).

Goals: (b)/(a) >= 10x, (b)/(c) >= 40%; on one H200 with 16 cores, (e) >= 50x (a) and >= 10x (b).
Speeds are physics steps (2 ms of simulated time each, 25 per control step) per second of wall time,
counted the same way for every row. These machines are shared and noisy: compare rows of one run, not runs.

Usage: python benchmarks/bench_sim.py [--episodes 1024] [--sb3-episodes 64] [--repeat 2] [--quick]
       [--warp-cpu-episodes 32] [--gpu-worlds 1024,8192,32768]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mujoco
import mujoco.rollout
import numpy as np
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from timing import best_of  # benchmarks/timing.py (the script's own folder is on sys.path)

from flywheel_pipelines.lib.learning.policy import Policy, PolicyConfig
from flywheel_pipelines.lib.release.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from flywheel_pipelines.lib.sim.batched import ScenarioModels, available_cores, evaluate_batched
from flywheel_pipelines.lib.sim.gym_env import AbsoluteTargetAgent, ReachEnv
from flywheel_pipelines.lib.sim.robot import CONTROL_HZ, sample_profile, sample_task, seeded_rng
from flywheel_pipelines.lib.sim.scenario import Scenario

OBS_NAMES = ("shoulder.pos", "elbow.pos", "shoulder.vel", "elbow.vel", "goal.x", "goal.y")
ACTION_NAMES = ("shoulder.target", "elbow.target")
ROBOTS = 16  # distinct robot profiles (physics, latency, noise) in the suite


def scenarios(n: int) -> list[Scenario]:
    out = []
    for i in range(n):
        rng = seeded_rng("bench_sim", i)
        q0, goal = sample_task(rng)
        profile = sample_profile(f"bench{i % ROBOTS}", seed=0, index=i % ROBOTS, faults=False)
        out.append(Scenario(f"bench/{i:05d}", "randomized", profile, (float(q0[0]), float(q0[1])),
                            (float(goal[0]), float(goal[1])), seed=i))
    return out


def random_policy(path: Path) -> Policy:
    """A 2x128 GELU MLP with seeded random weights, residual on the joint positions."""
    torch.manual_seed(0)
    config = PolicyConfig(obs_features=("observation.state", "observation.goal"), obs_names=OBS_NAMES,
                          action_names=ACTION_NAMES, hidden=128, layers=2, residual_indices=(0, 1))
    policy = Policy(config).eval()
    policy.act_std.fill_(0.05)  # small residual steps, so the arm moves about as a real policy would
    export_onnx(policy, path)
    return policy


def onnx_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread that does not spin: MuJoCo's threads need the cores between the policy calls.
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1024, help="episodes for the batched and bare rows")
    parser.add_argument("--sb3-episodes", type=int, default=64, help="episodes for the single-env SB3 row")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each row reports its best")
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--quick", action="store_true", help="256 batched / 16 SB3 episodes, one repeat")
    parser.add_argument("--warp-cpu-episodes", type=int, default=32, help="(d): episodes on Warp's CPU device (0: skip)")
    parser.add_argument("--gpu-worlds", default="1024,8192,32768", help="(e): world counts on a CUDA GPU ('': skip)")
    parser.add_argument("--gpu-device", default="cuda:0", help="(e)'s device ('cpu' only to dry-run the rows)")
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.sb3_episodes, args.repeat = 256, 16, 1
    threads = args.threads or available_cores()
    suite = scenarios(args.episodes)
    substeps = 25

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "policy.onnx"
        torch_policy = random_policy(onnx_path)
        session = onnx_session(onnx_path)

        def onnx_batch(obs: np.ndarray) -> np.ndarray:
            return session.run([OUTPUT_NAME], {INPUT_NAME: obs})[0]

        def onnx_single(obs: np.ndarray) -> np.ndarray:
            return onnx_batch(np.asarray(obs, np.float32).reshape(1, -1))[0]

        torch.set_num_threads(1)

        def torch_batch(obs: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return torch_policy(torch.from_numpy(obs)).numpy()

        # (a) SB3 on one env: the episodes are the first sb3_episodes scenarios of the suite.
        def sb3() -> int:
            env = ReachEnv(suite[:args.sb3_episodes])
            _, lengths = evaluate_policy(AbsoluteTargetAgent(onnx_single), env, n_eval_episodes=args.sb3_episodes,
                                         deterministic=True, return_episode_rewards=True, warn=False)
            return int(np.sum(lengths)) * substeps

        # (b) batched, the whole suite.
        def batched(policy, keep: list | None = None) -> int:
            results = evaluate_batched(policy, suite, policy_name="bench", threads=threads, batch_size=len(suite))
            if keep is not None:
                keep.extend(results)
            return sum(r.steps for r in results) * substeps

        # A first batched run records what the policy commanded, for (c).
        commands: list[np.ndarray] = []
        recorded: list = []

        def recording(obs: np.ndarray) -> np.ndarray:
            out = onnx_batch(obs)
            commands.append(out.astype(np.float64))
            return out

        batched(recording, recorded)
        lengths = np.array([r.steps for r in recorded])

        # (c) bare rollout of the same models replaying those commands open loop (episodes that
        # ended early hold their last command), every episode the full horizon, in one call.
        horizon = int(lengths.max())
        targets = np.empty((len(suite), horizon, 2))
        for k, out in enumerate(commands):
            targets[lengths > k, k] = out  # the rows of step k are the episodes still running, in order
            targets[lengths <= k, k] = targets[lengths <= k, k - 1]
        targets -= np.array([s.profile.calibration_offset for s in suite])[:, None]
        control = np.ascontiguousarray(np.repeat(targets, substeps, axis=1))
        models = ScenarioModels()
        model_list = [models.get(s.profile) for s in suite]
        datas = [mujoco.MjData(models.base) for _ in range(threads)]
        nstate = mujoco.mj_stateSize(models.base, mujoco.mjtState.mjSTATE_FULLPHYSICS)
        state0 = np.zeros((len(suite), nstate))
        state0[:, 1:3] = [s.q0 for s in suite]
        nstep = horizon * substeps
        states = np.empty((len(suite), nstep, nstate))

        def bare_once(pool) -> int:
            pool.rollout(model_list, datas, state0, control, state=states)
            return len(suite) * nstep

        def bare_per_period(pool) -> int:
            state, out = state0.copy(), np.empty((len(suite), substeps, nstate))
            for k in range(horizon):
                pool.rollout(model_list, datas, state, np.ascontiguousarray(control[:, k * substeps:(k + 1) * substeps]),
                             state=out, nstep=substeps, skip_checks=True)
                state = np.ascontiguousarray(out[:, -1])
            return len(suite) * nstep

        # Rounds of a, b, c one after the other, best of each: load from other processes then
        # touches every row alike. The variants run in the first round only.
        best: dict[str, tuple[float, int]] = {}

        def timed(name: str, fn) -> None:
            t, n = best_of(1, fn)
            if name not in best or t < best[name][0]:
                best[name] = (t, n)

        with mujoco.rollout.Rollout(nthread=threads if threads > 1 else 0) as pool:
            for round_ in range(args.repeat):
                timed("sb3", sb3)
                timed("onnx", lambda: batched(onnx_batch))
                timed("bare", lambda: bare_once(pool))
                if round_ == 0:
                    timed("torch", lambda: batched(torch_batch))
                    timed("bare25", lambda: bare_per_period(pool))

        extra = warp_rows(args, suite, onnx_batch, torch_policy)

    (t_sb3, n_sb3), (t_onnx, n_onnx), (t_torch, n_torch) = best["sb3"], best["onnx"], best["torch"]
    (t_bare, n_bare), (t_bare25, n_bare25) = best["bare"], best["bare25"]
    sb3_rate, onnx_rate, torch_rate = n_sb3 / t_sb3, n_onnx / t_onnx, n_torch / t_torch
    bare_rate, bare25_rate = n_bare / t_bare, n_bare25 / t_bare25
    print(f"planar 2-joint arm, {1000 // CONTROL_HZ} ms control period = {substeps} physics steps of 2 ms; "
          f"speeds in physics steps per second; {threads} threads ({available_cores()} cores usable)")
    print(f"policy: MLP 6-128-128-2 (GELU), seeded random weights; {len(suite)} scenarios on {ROBOTS} fleet-sampled robots\n")
    rows = [
        (f"(a) SB3 evaluate_policy, 1 ReachEnv, ONNX Runtime ({args.sb3_episodes} episodes)", sb3_rate, n_sb3, t_sb3),
        (f"(b) evaluate_batched, ONNX Runtime, {threads} threads", onnx_rate, n_onnx, t_onnx),
        (f"    evaluate_batched, torch, {threads} threads", torch_rate, n_torch, t_torch),
        (f"(c) bare mujoco.rollout, (b)'s commands replayed, {threads} threads, one call", bare_rate, n_bare, t_bare),
        ("    the same, one rollout call per control period", bare25_rate, n_bare25, t_bare25),
    ]
    print(f"  {'':70s} {'steps/s':>12s} {'steps':>11s} {'seconds':>8s}")
    for name, rate, n, t in rows:
        print(f"  {name:70s} {rate:>12,.0f} {n:>11,} {t:>8.2f}")
    print(f"\n  (b)/(a): {onnx_rate / sb3_rate:5.1f}x   (goal >= 10x)")
    print(f"  (b)/(c): {onnx_rate / bare_rate:5.0%}    (goal >= 40%)")
    print(f"  (c)/(a): {bare_rate / sb3_rate:5.1f}x   (the most any policy-in-the-loop evaluator could reach here)")
    if extra:
        print(f"\n  MuJoCo Warp, side by side (x = this row / (a) SB3, (b) batched CPU, (c) bare rollout, {threads} threads)")
        print(f"  {'':62s} {'steps/s':>12s} {'seconds':>8s} {'/(a)':>7s} {'/(b)':>7s} {'/(c)':>7s}")
        for name, rate, _, t in extra:
            print(f"  {name:62s} {rate:>12,.0f} {t:>8.2f} {rate / sb3_rate:>6.1f}x {rate / onnx_rate:>6.2f}x "
                  f"{rate / bare_rate:>6.2f}x")
        print("  goals (H200 + 16 cores): GPU evaluation with the policy >= 50x (a) and >= 10x (b)")


def warp_rows(args, suite: list[Scenario], onnx_batch, torch_policy) -> list[tuple[str, float, int, float]]:
    """(d) Warp on the CPU and (e) Warp on a CUDA GPU, when mujoco_warp is installed."""
    import time

    try:
        from flywheel_pipelines.lib.sim.warp_backend import WarpStepper, cuda_available
    except ImportError:
        print("mujoco_warp is not installed: no Warp rows")
        return []
    rows = []
    substeps = 25
    if args.warp_cpu_episodes:
        part = suite[:args.warp_cpu_episodes]
        evaluate_batched(onnx_batch, part[:2], policy_name="warm", backend="warp", device="cpu")  # kernel cache
        t0 = time.perf_counter()
        results = evaluate_batched(onnx_batch, part, policy_name="bench", backend="warp", device="cpu")
        t = time.perf_counter() - t0
        n = sum(r.steps for r in results) * substeps
        rows.append((f"(d) Warp on CPU, ONNX Runtime ({len(part)} episodes)", n / t, n, t))
    dev = args.gpu_device
    if args.gpu_worlds and (cuda_available() or dev == "cpu"):
        from flywheel_pipelines.lib.evaluation.policies import TorchPolicy

        gpu_policy = TorchPolicy(torch_policy, device="cuda" if dev.startswith("cuda") else "cpu")
        evaluate_batched(gpu_policy, suite[:8], policy_name="warm", backend="warp", device=dev)  # compile
        for worlds in (int(w) for w in args.gpu_worlds.split(",")):
            many = scenarios(worlds)
            t0 = time.perf_counter()
            results = evaluate_batched(gpu_policy, many, policy_name="bench", backend="warp", device=dev)
            t = time.perf_counter() - t0
            n = sum(r.steps for r in results) * substeps
            rows.append((f"(e) Warp on {dev}, torch policy on it, {worlds:,} worlds", n / t, n, t))
            # The physics alone on the same worlds: CUDA-graph periods, constant control.
            models = ScenarioModels()
            stepper = WarpStepper([models.get(s.profile) for s in many], np.array([s.q0 for s in many]),
                                  substeps=substeps, device=dev)
            control = np.repeat(np.array([s.q0 for s in many])[:, None], substeps, axis=1)
            active = np.arange(worlds)
            stepper.step(active, control)
            periods = 70
            t0 = time.perf_counter()
            for _ in range(periods):
                stepper.step(active, control)
            t = time.perf_counter() - t0
            n = worlds * periods * substeps
            rows.append((f"    bare Warp physics on {dev}, {worlds:,} worlds", n / t, n, t))
    elif args.gpu_worlds:
        print("no CUDA device visible to Warp: the GPU rows (e) are not measured in this run")
    return rows


if __name__ == "__main__":
    main()
