"""The on-call drill: find, contain and undo a bad policy, starting from its release alone.

Set-up (what production would have lived through): a simulated fleet in which one robot's elbow
encoder reads a constant 0.3 rad off on its last days (50 times the fleet's calibration spread,
twice the fingertip's success radius), logged as if nothing were wrong. A nightly retrain on
every day gives release B, trained on the bad days too; it passes the simulator's gate (there is
no production policy to compare with yet: only the absolute criteria apply) and is promoted.

Why not a good release A first, then B? Tried: with A in production the gate refuses B (two
golden scenarios from the faulty robot that A solves fail under B), so the bad release never
ships. The simulator's gate is a proxy; the drill is about the one that got through.

The drill then starts from B's version string only and, as an on-call engineer would:

1. ranks B's training robot-days by how far their data deviates (the incident report asset) and
   opens an incident naming the outliers as the cause;
2. quarantines the outlier robot-days (the quarantine_add job, as in the UI);
3. retrains and re-evaluates (the nightly_retrain job: the catalog marks, curation leaves the
   quarantined days out, the gate compares the candidate with production B on the same seeds);
4. promotes the new release C, then rolls B back for good: withdraws it, so no later rollback
   returns to it and promoting it again needs a forced, recorded override;
5. closes the incident with links to the bad release, its cause, the quarantine, the withdrawal
   and the replacement.

Every run goes through the Dagster instance in the drill's own FLYWHEEL_HOME, so the UI opened on
it (`make dev` with that DAGSTER_HOME) shows the whole story.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flywheel_pipelines.lib import layout

DRILL_USER = "oncall-drill"
# The fleet seed. With seed 0 the replacement release fails one golden scenario that the bad release
# solves (r102's, unrelated to the fault), and the gate blocks it by its own rule ("any golden
# regression blocks"); the drill then stops with that reason. Seed 1 exercises the whole path.
DRILL_SEED = 1
MODEL = "reach-bc"


class DrillError(RuntimeError):
    """The drill could not complete a step (the message says which and why)."""


@dataclass
class DrillResult:
    home: str
    lake: str
    dagster_home: str
    faulty_robot: str
    fault_days: list[str]
    bad_release: str  # name/version of B
    new_release: str  # name/version of C
    incident_id: str
    ranking: list[dict]  # the incident report's rows, best first (robot, date, score, share, outlier)
    found: list[tuple[str, str]]  # the robot-days the drill quarantined
    quarantine_ids: list[str]
    old_dataset: str
    new_dataset: str
    old_dataset_robot_days: list[tuple[str, str]]
    new_dataset_robot_days: list[tuple[str, str]]
    probe_raw_key: str
    probe_releases: list[str]  # releases reverse lineage from probe_raw_key names
    production_version: str  # MLflow production alias at the end
    production_policy: str
    registered: dict[str, str]  # release name/version -> registered model version
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(self.timings.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "total_s": round(self.total_s, 1)}


def _isolate(home: Path) -> dict[str, str | None]:
    """Point every default (lake, Dagster home, MLflow) into ``home``; returns the old values."""
    keys = ("FLYWHEEL_HOME", "DAGSTER_HOME", "FLYWHEEL_LAKE", "FLYWHEEL_MLFLOW_URI", "FLYWHEEL_MLFLOW_ARTIFACTS")
    old = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ.pop(k, None)
    os.environ["FLYWHEEL_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")
    return old


def _restore(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _contiguous(days: list[str]) -> list[tuple[str, str]]:
    """Sorted days -> inclusive (first, last) runs of consecutive days."""
    runs: list[tuple[str, str]] = []
    for d in sorted(days):
        if runs and dt.date.fromisoformat(d) - dt.date.fromisoformat(runs[-1][1]) == dt.timedelta(days=1):
            runs[-1] = (runs[-1][0], d)
        else:
            runs.append((d, d))
    return runs


def run_drill(*, home: Path, robots: int = 4, days: int = 4, fault_days: int = 2, episodes_per_day: int = 10,
              faulty_robot: str = "r103", offset_rad: float = 0.3, seed: int = DRILL_SEED, fresh: bool = True,
              log: Callable[[str], None] = print) -> DrillResult:
    """Set up a bad release, then find, contain and undo it from its version alone.

    Args:
        home: the drill's own FLYWHEEL_HOME (lake, Dagster instance, MLflow store); emptied first
            when ``fresh``.
        robots, days, episodes_per_day, seed: the simulated fleet.
        fault_days: the last ``fault_days`` days carry the encoder fault on ``faulty_robot``.
    """
    home = Path(home).resolve()
    if fresh and home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    old_env = _isolate(home)
    try:
        return _drill(home, robots=robots, days=days, fault_days=fault_days, episodes_per_day=episodes_per_day,
                      faulty_robot=faulty_robot, offset_rad=offset_rad, seed=seed, log=log)
    finally:
        _restore(old_env)


def _drill(home: Path, *, robots: int, days: int, fault_days: int, episodes_per_day: int, faulty_robot: str,
           offset_rad: float, seed: int, log: Callable[[str], None]) -> DrillResult:
    import dagster as dg
    import mlflow

    from flywheel_pipelines.definitions import defs as load_defs
    from flywheel_pipelines.defs.partitions import ROBOTS, robot_day_key
    from flywheel_pipelines.defs.resources import open_configured_lake
    from flywheel_pipelines.demo import QUIET, prepare_dagster_home
    from flywheel_pipelines.lib import incident, incident_log, lineage_index, quarantine, settings
    from flywheel_pipelines.lib.evaluation import registry
    from flywheel_pipelines.lib.sim.fleet import EncoderFault, day_range, simulate_fleet
    from flywheel_pipelines.progress import heartbeat

    if not 1 <= fault_days < days:
        raise DrillError(f"fault_days must be between 1 and days - 1 (got {fault_days} of {days})")
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 2)
        clock[0] = now
        log(f"  ({timings[name]:.1f} s)")

    dagster_home = prepare_dagster_home()
    lake_root = settings.default_lake_root()
    store = open_configured_lake(lake_root)
    uri = settings.default_mlflow_uri()
    Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)

    first = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)).isoformat()
    day_list = day_range(first, days)
    bad_days = day_list[-fault_days:]

    # --- set-up -------------------------------------------------------------------------------
    log(f"set-up: {robots} robots x {days} days x {episodes_per_day} episodes; {faulty_robot}'s elbow encoder reads "
        f"{offset_rad:g} rad off on {', '.join(bad_days)}")
    fault = EncoderFault(days=tuple(bad_days), offset_rad=offset_rad)
    sim = simulate_fleet(store, robots=robots, days=day_list, episodes_per_day=episodes_per_day, seed=seed,
                         encoder_faults={faulty_robot: fault}, builtin_faults=False,
                         progress=lambda d: log(f"  simulated robot {d.robot} day {d.day}: {d.messages} messages"))
    defs = load_defs()
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(ROBOTS.name, sorted({d.robot for d in sim}))
    ingest = defs.resolve_job_def("ingest_robot_day")
    for i, d in enumerate(sim, 1):
        log(f"  [{i}/{len(sim)}] ingest robot {d.robot} day {d.day}")
        with heartbeat(log, f"ingest {d.robot} {d.day}", instance=instance, job_name="ingest_robot_day"):
            ingest.execute_in_process(partition_key=robot_day_key(d.robot, d.day), instance=instance, run_config=QUIET)
    log(f"  ingested {len(sim)} robot-days")
    lap("setup_ingest")

    def retrain(label: str, curation: dict | None = None) -> dict[str, dict]:
        run_config = {**QUIET}
        if curation:
            run_config["ops"] = {"curated_dataset": {"config": curation}}
        with heartbeat(log, f"{label}: nightly_retrain", instance=instance, job_name="nightly_retrain"):
            result = defs.resolve_job_def("nightly_retrain").execute_in_process(
                instance=instance, run_config=run_config, raise_on_error=False)
        meta = {}
        for key in ("curated_dataset", "policy_candidate", "eval_report", "release_bundle"):
            event = instance.get_latest_materialization_event(dg.AssetKey(key))
            if event is not None and event.run_id == result.run_id:
                meta[key] = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        if "release_bundle" not in meta:
            reasons = meta.get("eval_report", {}).get("gate_reasons", [])
            failures = [str(e.message) for e in result.all_events if e.is_step_failure]
            raise DrillError(f"{label}: no release ({'; '.join(failures) or 'unknown'}; gate: {reasons})")
        rel = meta["release_bundle"]["release"].replace(" ", "/")
        log(f"  {label}: release {rel} (dataset {meta['curated_dataset']['dataset_version']}, "
            f"{meta['curated_dataset']['episodes']} episodes, success {meta['eval_report']['success_rate']:.1%}, "
            f"gate passed)")
        return meta

    log("set-up: nightly retrain on every day (the bad days too) -> release B, promoted")
    b = retrain("B")
    registry.promote(client, store, MODEL, b["policy_candidate"]["registered_version"], by="drill-setup",
                     reason="nightly release B")
    bad_release = b["release_bundle"]["release"].replace(" ", "/")
    lap("setup_release_b")

    # --- the drill: from B's version only -------------------------------------------------------
    log(f"drill: on-call gets 'release {bad_release} misbehaves on the fleet'")
    log("drill 1/4: incident report (ranks B's training robot-days by how far their data deviates)")
    defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[dg.AssetKey("incident_report")], instance=instance,
        run_config={**QUIET, "ops": {"incident_report": {"config": {"release": bad_release}}}})
    name, version = bad_release.split("/")
    report = store.read_json(incident.report_key(name, version))
    rows = report["rows"]
    ranking = [{"robot": r["robot"], "date": r["date"], "score": r["score"], "outlier": r["outlier"],
                "share": r["share_of_training_frames"],
                "top": r["top_features"][0]["feature"] if r["top_features"] else ""} for r in rows]
    outliers = [(r["robot"], r["date"]) for r in rows if r["outlier"]]
    if not outliers:
        raise DrillError(f"the incident report of {bad_release} flags no robot-day (top: {ranking[:3]})")
    for r in ranking[:max(3, len(outliers) + 1)]:
        log(f"    {r['robot']} {r['date']}  score {r['score']:.1f}{' OUTLIER' if r['outlier'] else ''}  "
            f"{r['share']:.1%} of training frames  ({r['top']})")
    incident_id, _ = incident_log.open_incident(
        store, release={"name": name, "version": version, "registered_version": b["policy_candidate"]["registered_version"]},
        summary=f"release {bad_release} misbehaves on the fleet",
        cause=[r for r in ranking if r["outlier"]], by=DRILL_USER)
    log(f"  opened incident {incident_id}")
    lap("drill_incident_report")

    log("drill 2/4: quarantine the outlier robot-days (quarantine_add job)")
    job = defs.resolve_job_def("quarantine_add")
    by_robot: dict[str, list[str]] = {}
    for robot, day in outliers:
        by_robot.setdefault(robot, []).append(day)
    for robot, robot_days in sorted(by_robot.items()):
        for lo, hi in _contiguous(robot_days):
            job.execute_in_process(instance=instance, run_config={**QUIET, "ops": {"record_quarantine": {"config": {
                "robot": robot, "date_from": lo, "date_to": hi, "incident": incident_id, "requested_by": DRILL_USER,
                "reason": f"{incident_id}: training data of {robot} {lo}..{hi} deviates from the fleet "
                          f"(incident report of {bad_release})"}}}})
    active = [r for r in quarantine.active(quarantine.read_records(store)) if r.incident == incident_id]
    for r in active:
        log(f"  {r.id}: {r.scope.describe()}")
    incident_log.append(store, incident_id, "quarantined", by=DRILL_USER, quarantines=[r.id for r in active],
                        robot_days=[list(x) for x in outliers])
    lap("drill_quarantine")

    log("drill 3/4: retrain and re-evaluate without them (nightly_retrain; the gate compares with production B)")
    c = retrain("C")
    new_release = c["release_bundle"]["release"].replace(" ", "/")
    lap("drill_retrain")

    log(f"drill 4/4: promote {new_release}, roll {bad_release} back for good (withdraw), close the incident")
    promoted, _ = registry.promote(client, store, MODEL, c["policy_candidate"]["registered_version"], by=DRILL_USER,
                                   reason=f"{incident_id}: replaces {bad_release}, trained without the quarantined data")
    incident_log.append(store, incident_id, "replaced", by=DRILL_USER, release=new_release,
                        registered_version=promoted.version, evaluation=c["eval_report"]["prefix"],
                        success_rate=c["eval_report"]["success_rate"])
    withdrawn, key = registry.withdraw(client, store, MODEL, b["policy_candidate"]["registered_version"],
                                       by=DRILL_USER, reason=f"{incident_id}: trained on robot-days with deviating data")
    incident_log.append(store, incident_id, "rolled_back", by=DRILL_USER, model=MODEL, version=withdrawn.version,
                        release=bad_release, how="withdrawn", promotion_log=key)
    log(f"  {MODEL}: production v{promoted.from_version} -> v{promoted.version}; v{withdrawn.version} withdrawn")
    incident_log.append(store, incident_id, "resolved", by=DRILL_USER,
                        summary=f"{new_release} replaces {bad_release} (withdrawn); {', '.join(r.id for r in active)} "
                                "keep its bad data out")
    production = registry.production_version(client, MODEL)
    lap("drill_promote")

    # What the drill proves (the test asserts these; the CLI prints them).
    def robot_days(meta: dict) -> list[tuple[str, str]]:
        manifest = store.read_json(f"{meta['prefix']}/{layout.MANIFEST}")
        return sorted({(e["robot"], e["date"]) for e in manifest["episodes"]})

    probe_robot, probe_day = outliers[0]
    probe = next(k for d in sim if (d.robot, d.day) == (probe_robot, probe_day) for k in d.keys)
    result = lineage_index.query(store, raw=probe)
    releases = sorted({f"{n.name}/{n.version}" for n in lineage_index.walk(result.downstream) if n.kind == "release"})
    return DrillResult(
        home=str(home), lake=lake_root, dagster_home=str(dagster_home), faulty_robot=faulty_robot,
        fault_days=bad_days, bad_release=bad_release, new_release=new_release, incident_id=incident_id,
        ranking=ranking, found=outliers,
        quarantine_ids=[r.id for r in active],
        old_dataset=f"{b['curated_dataset']['dataset_name']}/{b['curated_dataset']['dataset_version']}",
        new_dataset=f"{c['curated_dataset']['dataset_name']}/{c['curated_dataset']['dataset_version']}",
        old_dataset_robot_days=robot_days(b["curated_dataset"]), new_dataset_robot_days=robot_days(c["curated_dataset"]),
        probe_raw_key=probe, probe_releases=releases,
        production_version=str(production.version) if production is not None else "",
        production_policy=production.tags.get("flywheel.policy_version", "") if production is not None else "",
        registered={f"{m['release_bundle']['release'].replace(' ', '/')}": m["policy_candidate"]["registered_version"]
                    for m in (b, c)},
        timings=timings,
    )


def ui_command(r: DrillResult) -> str:
    """The command that opens the UI on the drill's instance, runnable as printed from any folder:
    both homes (the lake and MLflow store follow FLYWHEEL_HOME), this environment's dagster, the
    repository's workspace."""
    dagster = Path(sys.executable).with_name("dagster")
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"  # absent from a wheel install
    target = f"-w {workspace}" if workspace.is_file() else "-m flywheel_pipelines.definitions"
    return f"FLYWHEEL_HOME={r.home} DAGSTER_HOME={r.dagster_home} {dagster} dev {target}"


def summary_lines(r: DrillResult) -> list[str]:
    """What the drill found and did, as the CLI prints it."""
    q = set(r.found)
    old_hit = sorted(q & set(r.old_dataset_robot_days))
    new_hit = sorted(q & set(r.new_dataset_robot_days))
    return [
        f"injected: {r.faulty_robot} elbow encoder offset on {', '.join(r.fault_days)}",
        f"found:    {', '.join(f'{a} {b}' for a, b in r.found)} (ranked first in the incident report of {r.bad_release})",
        f"incident: {r.incident_id} ({layout.incident_log_prefix(r.incident_id)}/ in the lake)",
        f"production: {r.bad_release} -> {r.new_release}; {r.bad_release} withdrawn (no rollback returns to it)",
        f"quarantine: {', '.join(r.quarantine_ids)}",
        f"datasets: old {r.old_dataset} holds {len(old_hit)}/{len(q)} quarantined robot-days, "
        f"new {r.new_dataset} holds {len(new_hit)}",
        f"lineage:  {r.probe_raw_key} -> releases {', '.join(r.probe_releases) or 'none'}",
        f"MLflow:   {MODEL} production is version {r.production_version} (policy {r.production_policy})",
        f"UI:       {ui_command(r)}",
        "timings:  " + ", ".join(f"{k} {v:.0f} s" for k, v in r.timings.items()),
        f"drill finished in {r.total_s:.0f} s",
    ]


def result_json(r: DrillResult) -> str:
    return json.dumps(r.to_dict(), indent=2, sort_keys=True, default=list)
