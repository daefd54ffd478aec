"""Training speed: behaviour cloning on the CPU and on a CUDA GPU, side by side in one run, and
whether mixed precision changes the evaluation outcome.

Data: the scripted expert's (observation, joint target) pairs from ``--episodes`` simulated
episodes on fleet-sampled robots (the batched evaluator records what the expert was shown and
what it commanded), split 90/10 by episode. The same ``train_bc`` as ``policy_candidate`` trains
on them, without checkpoints; speed is training samples per second over the epochs after the
first (warm-up), so data loading to the device, once per run, is not in it.

Rows: CPU float32 (torch's default threads) and, where CUDA is present, GPU float32
(``amp: off``) and GPU bf16 autocast (``amp: bf16``), at each ``--batch-sizes``. Ratios: GPU / CPU
at the same batch size (goal on one H200: >= 20x). Then each trained policy (first batch size)
is evaluated on ``--eval-episodes`` held-out scenarios with the CPU evaluator: success rate and
per-scenario outcome agreement with the float32 policy of the same device.

Usage: python benchmarks/bench_train.py [--episodes 1024] [--epochs 12] [--batch-sizes 256,4096]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from flywheel_pipelines.lib.evaluation.policies import ACTION_NAMES, OBS_NAMES, scripted_expert
from flywheel_pipelines.lib.learning.bc import BCConfig, TrainingData, train_bc
from flywheel_pipelines.lib.sim.batched import evaluate_batched
from flywheel_pipelines.lib.sim.robot import sample_profile, sample_task, seeded_rng
from flywheel_pipelines.lib.sim.scenario import Scenario


def scenarios(n: int, *, offset: int = 0) -> list[Scenario]:
    out = []
    for i in range(offset, offset + n):
        q0, goal = sample_task(seeded_rng("bench_train", i))
        profile = sample_profile(f"bench{i % 16}", seed=0, index=i % 16, faults=False)
        out.append(Scenario(f"bench/{i:05d}", "randomized", profile, (float(q0[0]), float(q0[1])),
                            (float(goal[0]), float(goal[1])), seed=i))
    return out


def expert_data(n_episodes: int) -> TrainingData:
    """The expert's observations and commands, recorded through the batched evaluator."""
    obs_rows, act_rows = [], []

    def recording(obs: np.ndarray) -> np.ndarray:
        act = scripted_expert(obs)
        obs_rows.append(obs.copy())
        act_rows.append(np.asarray(act, np.float32))
        return act

    evaluate_batched(recording, scenarios(n_episodes), policy_name="expert")
    obs, act = np.concatenate(obs_rows), np.concatenate(act_rows)
    split = int(0.9 * len(obs))  # rows are step-major; a 90/10 cut is close enough for a benchmark
    return TrainingData(("observation.state", "observation.goal"), OBS_NAMES, ACTION_NAMES,
                        obs[:split], act[:split], obs[split:], act[split:], fps=20)


def samples_per_s(data: TrainingData, config: BCConfig):
    policy, history = train_bc(data, config)
    seconds = [h.seconds for h in history[1:]] or [history[0].seconds]
    return len(data.train_obs) / statistics.median(seconds), policy, history[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1024, help="expert episodes recorded as training data")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-sizes", default="256,4096")
    parser.add_argument("--eval-episodes", type=int, default=256)
    args = parser.parse_args()
    data = expert_data(args.episodes)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    cuda = torch.cuda.is_available()
    runs = [("cpu", "off")] + ([("cuda", "off"), ("cuda", "bf16")] if cuda else [])
    print(f"BC: MLP 6-128-128-2 (GELU), AdamW; {len(data.train_obs):,} training frames from {args.episodes} expert "
          f"episodes; {args.epochs} epochs; torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(0)}" if cuda else ", no CUDA device"))
    rates: dict[tuple[str, str, int], float] = {}
    policies = {}
    print(f"\n  {'device':8s} {'precision':10s} {'batch':>6s} {'samples/s':>12s} {'x CPU':>7s} {'val MAE (rad)':>14s}")
    for batch in batch_sizes:
        for device, amp in runs:
            config = BCConfig(epochs=args.epochs, batch_size=batch, device=device, amp=amp, seed=0)
            rate, policy, last = samples_per_s(data, config)
            rates[(device, amp, batch)] = rate
            if batch == batch_sizes[0]:
                policies[(device, amp)] = policy
            precision = "bf16" if amp == "bf16" else "float32"
            ratio = rate / rates[("cpu", "off", batch)]
            print(f"  {device:8s} {precision:10s} {batch:>6d} {rate:>12,.0f} {ratio:>6.1f}x {last.val_action_mae:>14.5f}")
    if not cuda:
        print("\n  no CUDA device: the GPU rows are not measured in this run")
    print("  goal (one H200): GPU >= 20x CPU")

    held_out = scenarios(args.eval_episodes, offset=10**6)
    outcomes = {}
    for key, policy in policies.items():
        def run(obs: np.ndarray, policy=policy) -> np.ndarray:
            with torch.inference_mode():
                return policy(torch.from_numpy(obs)).numpy()
        results = evaluate_batched(run, held_out, policy_name="bc")
        outcomes[key] = [(r.success, r.steps) for r in results]
    print(f"\n  evaluation of the batch-{batch_sizes[0]} policies on {len(held_out)} held-out scenarios (CPU evaluator):")
    for (device, amp), rows in outcomes.items():
        same = sum(a == b for a, b in zip(rows, outcomes[(device, "off")], strict=True))
        print(f"  {device:5s} {'bf16' if amp == 'bf16' else 'float32':8s} "
              f"success {np.mean([s for s, _ in rows]):.3f}   same outcome as {device} float32: {same}/{len(rows)}")


if __name__ == "__main__":
    main()
