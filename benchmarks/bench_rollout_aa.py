"""False rollbacks of the rollout's sequential test: 200 seeded A/A rollouts (and its power).

    .venv/bin/python benchmarks/bench_rollout_aa.py            # 200 A/A + power runs (~2 min on 2 cores)
    .venv/bin/python benchmarks/bench_rollout_aa.py --sims 50  # quicker

Each simulated rollout runs the real decision code (lib/rollout/plan.py: start, stratified
cohorts, evaluate after every day, advance / hold / roll back, manifests and the append-only log
in a temporary lake) on a fleet of 20 robots whose episodes are drawn per robot-day: Poisson(20)
episodes, each an unassisted success with the robot's own probability. Robots differ (hardware,
site, operator): robot r succeeds with p_r ~ N(0.93, sd) clipped to [0.5, 0.995], sd = 0.04 by
default, so a canary of two robots is never exactly the fleet's average. The canary runs the
candidate, the rest the control release; under A/A the candidate changes nothing (p_r on both).
Stages canary 10% (min 60 episodes) -> 50% (min 120) -> 100%, margin 5 points, alpha 0.05,
at most 21 days per rollout.

The physics is not simulated here (200 rollouts x thousands of MuJoCo episodes would take hours
on 2 cores): the robots' outcomes are drawn, and the bundles named by the manifests are never run
(their policy.onnx is a placeholder no robot loads). The field test
(flywheel_pipelines_tests/defs/test_rollout_field.py) runs the same decisions on simulated robots.

Also reported, per day, the share of A/A rollouts a naive test would have rolled back by then: a
one-sided 95% z-test (upper bound delta + 1.645 se < 0) repeated after every day, the
fixed-sample test that repeated looks break. Output: JSON (stdout and --out) and a PNG (--plot).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel_pipelines.lib.rollout import deployments, plan, sequential  # noqa: E402
from flywheel_pipelines.lib.sim.fleet import day_range  # noqa: E402
from flywheel_pipelines.lib.storage import LocalLake  # noqa: E402

MODEL, CONTROL, CANDIDATE = "reach-bc", "reach-bc/control0", "reach-bc/candidate1"
ROBOTS, MAX_DAYS, EPISODES = 20, 21, 20
STAGES = (plan.Stage("canary", 0.1, 60), plan.Stage("half", 0.5, 120), plan.Stage("full", 1.0))
TEST = sequential.TestConfig()


def _bundle(store: LocalLake, ref: str) -> None:
    payload = f"benchmark placeholder for {ref}: no robot runs it".encode()
    prefix = deployments.bundle_prefix(ref)
    store.write_bytes(f"{prefix}/policy.onnx", payload)
    store.write_bytes(f"{prefix}/SHA256SUMS", f"{hashlib.sha256(payload).hexdigest()}  policy.onnx\n".encode())


def _rows(rng, robot: str, day: str, p: float, release: str | None, n0: int) -> list[dict]:
    n = int(rng.poisson(EPISODES))
    ok = rng.random(n) < p
    name, _, version = (release or "").partition("/")
    return [{"episode_id": f"{robot}-{day}-{n0 + i}", "robot": robot, "date": day, "outcome": "success" if s else "failure",
             "control_mode": "autonomous" if release else "teleoperated", "policy_name": name or None,
             "policy_version": version or None, "intervention_count": 0 if s else 1, "duration_s": 3.0,
             "intervention_s": 0.0 if s else 1.0} for i, s in enumerate(ok)]


def one_rollout(seed: int, *, effect: float, sd: float, root: Path) -> dict:
    rng = np.random.default_rng(seed)
    store = LocalLake(root / f"e{effect}-s{seed}")
    for ref in (CONTROL, CANDIDATE):
        _bundle(store, ref)
    robots = [f"r{101 + i}" for i in range(ROBOTS)]
    p = dict(zip(robots, np.clip(rng.normal(0.93, sd, ROBOTS), 0.5, 0.995), strict=True))
    days = day_range("2026-01-01", MAX_DAYS + 8)
    rows: list[dict] = []
    for d in days[:7]:  # a week of history on the control release: the strata come from it
        for r in robots:
            rows += _rows(rng, r, d, p[r], CONTROL, len(rows))
    deployments.publish(store, deployments.build(
        model=MODEL, sequence=1, assignments={r: CONTROL for r in robots},
        releases={CONTROL: deployments.release_entry(store, CONTROL)}, rollout_id=None, stage=None,
        action="baseline", reason="benchmark", by="bench"))
    s = plan.start(store, model=MODEL, release=CANDIDATE, catalog_rows=rows, robots=robots, by="bench",
                   reason="A/A" if effect == 0 else f"effect {effect}", effective_from=days[7], stages=STAGES, test=TEST)
    naive_day = None
    for k, d in enumerate(days[7:7 + MAX_DAYS]):
        cohort = set(s.cohort) if s.status != plan.COMPLETED else set(robots)
        for r in robots:
            on_candidate = r in cohort
            rows += _rows(rng, r, d, min(1.0, max(0.0, p[r] + (effect if on_candidate else 0.0))),
                          CANDIDATE if on_candidate else CONTROL, len(rows))
        out = plan.evaluate(store, MODEL, rows, catalog_version=f"{seed}-{d}", next_day=days[7 + k + 1])
        e = out.evaluation["evidence"] if out.evaluation else None
        if naive_day is None and e and e["std_err"] and e["delta"] + 1.645 * e["std_err"] < 0:
            naive_day = k + 1
        s = out.state
        if s.status in plan.FINAL:
            break
    first = next((e for e in s.evaluations if e["decision"] in ("advance", "rollback")), None)
    return {"seed": seed, "status": s.status, "stage": s.stage_name, "days": len(s.evaluations),
            "first_decision": first["decision"] if first else None,
            "canary_episodes_to_first_decision": first["evidence"]["canary_n"] if first else None,
            "rolled_back_day": len(s.evaluations) if s.status == plan.ROLLED_BACK else None,
            "naive_rollback_day": naive_day}


def summarize(runs: list[dict]) -> dict:
    n = len(runs)
    eps = [r["canary_episodes_to_first_decision"] for r in runs if r["canary_episodes_to_first_decision"]]
    rb = sum(r["status"] == plan.ROLLED_BACK for r in runs)
    from flywheel_pipelines.lib.evaluation.stats import wilson_interval

    lo, hi = wilson_interval(rb, n)
    return {"rollouts": n, "rolled_back": rb, "rollback_rate": rb / n, "rollback_rate_95ci": [lo, hi],
            "completed": sum(r["status"] == plan.COMPLETED for r in runs),
            "still_running_after_max_days": sum(r["status"] == plan.RUNNING for r in runs),
            "median_canary_episodes_to_first_decision": statistics.median(eps) if eps else None,
            "naive_daily_ztest_rollback_rate": sum(r["naive_rollback_day"] is not None for r in runs) / n,
            "rollback_by_day": [sum(1 for r in runs if r["rolled_back_day"] and r["rolled_back_day"] <= d) / n
                                for d in range(1, MAX_DAYS + 1)],
            "naive_by_day": [sum(1 for r in runs if r["naive_rollback_day"] and r["naive_rollback_day"] <= d) / n
                             for d in range(1, MAX_DAYS + 1)]}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    days = np.arange(1, MAX_DAYS + 1)
    aa = results["aa"]
    ax.step(days, aa["rollback_by_day"], where="post", label="always-valid test (the rollout's)")
    ax.step(days, aa["naive_by_day"], where="post", linestyle="--", label="naive 95% z-test after every day")
    ax.axhline(TEST.alpha_rollback, color="grey", linewidth=0.8, label=f"alpha = {TEST.alpha_rollback}")
    ax.set_xlabel("days since the canary started (one look per day)")
    ax.set_ylabel("share of A/A rollouts rolled back")
    ax.set_title(f"{aa['rollouts']} seeded A/A rollouts, 20 robots, robot sd {results['config']['robot_sd']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sims", type=int, default=200)
    parser.add_argument("--sd", type=float, default=0.04, help="robot-to-robot spread of the success rate")
    parser.add_argument("--power-sims", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    results = {"config": {"robots": ROBOTS, "episodes_per_robot_day": EPISODES, "max_days": MAX_DAYS,
                          "robot_sd": args.sd, "stages": [s.__dict__ for s in STAGES], "test": TEST.to_dict()}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results["aa"] = summarize([one_rollout(s, effect=0.0, sd=args.sd, root=root) for s in range(args.sims)])
        results["power"] = {}
        for effect in (-0.3, -0.1):
            runs = [one_rollout(10_000 + s, effect=effect, sd=args.sd, root=root) for s in range(args.power_sims)]
            summary = summarize(runs)
            summary["rolled_back_in_canary"] = sum(r["status"] == plan.ROLLED_BACK and r["stage"] == "canary"
                                                   for r in runs)
            results["power"][str(effect)] = summary
    results["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
