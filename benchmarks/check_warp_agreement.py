"""Agreement of the MuJoCo Warp backend with the CPU evaluator on many scenarios, on any device.

The tests hold Warp on the CPU to the tolerance in docs/simulation.md on a few dozen scenarios;
this runs the same comparison at scale (and on a GPU, where the tests cannot run): per-substep
joint positions and velocities, and per-scenario outcome (success, steps, joint-limit hits,
force events), for the scripted expert and for a seeded random MLP policy.

Usage: python benchmarks/check_warp_agreement.py [--episodes 512] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from flywheel_pipelines.lib.evaluation.policies import ACTION_NAMES, OBS_NAMES, scripted_expert
from flywheel_pipelines.lib.learning.policy import Policy, PolicyConfig
from flywheel_pipelines.lib.sim.batched import evaluate_batched
from flywheel_pipelines.lib.sim.robot import sample_profile, sample_task, seeded_rng
from flywheel_pipelines.lib.sim.scenario import Scenario
from flywheel_pipelines.lib.sim.warp_backend import resolve_device


def scenarios(n: int) -> list[Scenario]:
    out = []
    for i in range(n):
        q0, goal = sample_task(seeded_rng("agreement", i))
        profile = sample_profile(f"agree{i % 64}", seed=1, index=i % 64, faults=True)
        out.append(Scenario(f"agree/{i:05d}", "randomized", profile, (float(q0[0]), float(q0[1])),
                            (float(goal[0]), float(goal[1])), seed=i))
    return out


def recorder(store: dict):
    def on_period(idx, step, qpos, qvel):
        for row, i in enumerate(idx):
            store[(int(i), step)] = (qpos[row].copy(), qvel[row].copy())
    return on_period


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=512)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    suite = scenarios(args.episodes)
    torch.manual_seed(0)
    mlp = Policy(PolicyConfig(obs_features=("observation.state", "observation.goal"), obs_names=OBS_NAMES,
                              action_names=ACTION_NAMES, hidden=128, layers=2, residual_indices=(0, 1))).eval()
    mlp.act_std.fill_(0.05)

    def mlp_policy(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return mlp(torch.from_numpy(obs)).numpy()

    print(f"{len(suite)} scenarios on 64 fleet-sampled robots (faults included); Warp on {device}")
    for name, policy in (("scripted expert", scripted_expert), ("random MLP", mlp_policy)):
        cpu_states, warp_states = {}, {}
        t0 = time.perf_counter()
        cpu = evaluate_batched(policy, suite, policy_name=name, on_period=recorder(cpu_states))
        t_cpu = time.perf_counter() - t0
        t0 = time.perf_counter()
        warp = evaluate_batched(policy, suite, policy_name=name, backend="warp", device=device,
                                on_period=recorder(warp_states))
        t_warp = time.perf_counter() - t0
        common = cpu_states.keys() & warp_states.keys()
        dq = max(np.abs(cpu_states[k][0] - warp_states[k][0]).max() for k in common)
        dv = max(np.abs(cpu_states[k][1] - warp_states[k][1]).max() for k in common)
        key = lambda r: (r.success, r.steps, r.joint_limit_hits, r.force_events)  # noqa: E731
        same = sum(key(a) == key(b) for a, b in zip(cpu, warp, strict=True))
        differ = [(a.scenario_id, key(a), key(b)) for a, b in zip(cpu, warp, strict=True) if key(a) != key(b)]
        print(f"  {name:16s} outcome equal {same}/{len(suite)}; success CPU {np.mean([r.success for r in cpu]):.3f} "
              f"Warp {np.mean([r.success for r in warp]):.3f}; max |dq| {dq:.2e} rad, max |dqdot| {dv:.2e} rad/s "
              f"over {len(common):,} common periods; CPU {t_cpu:.1f} s, Warp {t_warp:.1f} s (incl. setup)")
        for row in differ[:5]:
            print(f"    differs: {row[0]} CPU (success, steps, limit hits, force events) {row[1]} Warp {row[2]}")


if __name__ == "__main__":
    main()
