"""Staged rollouts: a plan, its append-only log, and the decision after each batch of field logs.

A rollout takes one release of a registered model from the control release (what the fleet runs
now: the newest deployments manifest; nothing, i.e. teleoperation, before a first release) to the
whole fleet in stages, e.g. canary 10% -> 50% -> 100%. Each stage changes the assignment by
publishing a new deployments manifest (lib/rollout/deployments.py).

Cohorts are chosen when the rollout is planned, deterministically and stratified: every robot is
put in a stratum by its recent field record (its unassisted success rate over the last
``STRATA_DAYS`` days before the plan, in terciles of the fleet; ``new`` below
``STRATA_MIN_EPISODES`` episodes), ordered inside its stratum by SHA-256 of
``<release>|<robot>``, and each stage takes the first robots of each stratum in proportion
(largest remainders, at least one robot). Stages are nested, so a robot never leaves the
candidate while the rollout advances; the same release and fleet always give the same cohorts,
and another release gets other canaries.

The log: one JSON object per event under ``deployments/<model>/rollouts/<rollout id>/``
(``plan``, ``stage``, ``evaluation``, ``pause``, ``resume``, ``rollback``, ``abort``,
``complete``), never rewritten. The rollout's state is a fold over its log.

Evaluation (:func:`evaluate`): the candidate's episodes since the rollout began against the
control arm's episodes on the same days from robots outside the cohort (lib/rollout/sequential.py).
The test is cumulative over the stages, one always-valid sequence, so looking after every day and
at every stage keeps the false-rollback rate at ``alpha_rollback`` overall. A stage advances when
non-inferiority is shown and the candidate's episodes *in this stage* meet its minimum exposure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from flywheel_pipelines.lib import ids, layout
from flywheel_pipelines.lib.episodes.control import TELEOPERATED
from flywheel_pipelines.lib.field import arm_of, clusters, unassisted_success
from flywheel_pipelines.lib.rollout import deployments, sequential
from flywheel_pipelines.lib.storage import Lake

SCHEMA = "flywheel-rollout-v1"
STRATA_DAYS = 14
STRATA_MIN_EPISODES = 10
RUNNING, PAUSED, COMPLETED, ROLLED_BACK, ABORTED = "running", "paused", "completed", "rolled_back", "aborted"
FINAL = (COMPLETED, ROLLED_BACK, ABORTED)


class RolloutError(RuntimeError):
    """A rollout action that must not happen (another rollout running, a finished rollout, ...)."""


@dataclass(frozen=True)
class Stage:
    name: str
    fraction: float
    min_episodes: int = 0
    min_autonomous_hours: float = 0.0

    def __post_init__(self):
        ids.name(self.name, what="stage name")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"stage {self.name}: fraction must be in (0, 1], got {self.fraction}")


DEFAULT_STAGES = (Stage("canary", 0.1, 60, 0.0), Stage("half", 0.5, 120, 0.0), Stage("full", 1.0))


def parse_stages(text: str) -> tuple[Stage, ...]:
    """``canary:0.1:60,half:0.5:120,full:1.0`` (name:fraction[:min episodes[:min autonomous hours]])."""
    stages = []
    for part in text.split(","):
        bits = part.strip().split(":")
        if not 2 <= len(bits) <= 4:
            raise ValueError(f"stage {part!r}: expected name:fraction[:min_episodes[:min_hours]]")
        stages.append(Stage(bits[0], float(bits[1]), int(bits[2]) if len(bits) > 2 else 0,
                            float(bits[3]) if len(bits) > 3 else 0.0))
    return check_stages(tuple(stages))


def check_stages(stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
    fractions = [s.fraction for s in stages]
    if not stages or fractions != sorted(set(fractions)) or fractions[-1] != 1.0:
        raise ValueError(f"stages must grow strictly and end at 1.0 (the whole fleet), got {fractions}")
    return stages


# --- cohorts ----------------------------------------------------------------------------------

def strata(rows: list[dict], robots: list[str], *, before: str) -> dict[str, str]:
    """robot -> stratum (``low``/``mid``/``high`` tercile of recent unassisted success, or ``new``)."""
    start = (dt.date.fromisoformat(before) - dt.timedelta(days=STRATA_DAYS)).isoformat()
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        if start <= r["date"] < before:
            per[r["robot"]][0] += 1
            per[r["robot"]][1] += int(unassisted_success(r))
    rated = sorted((per[r][1] / per[r][0], r) for r in robots if per[r][0] >= STRATA_MIN_EPISODES)
    out = {r: "new" for r in robots}
    for i, (_, robot) in enumerate(rated):
        out[robot] = ("low", "mid", "high")[min(2, 3 * i // len(rated))]
    return out


def _rank(release: str, robot: str) -> str:
    return hashlib.sha256(f"{release}|{robot}".encode()).hexdigest()


def cohorts(robot_strata: dict[str, str], stages: tuple[Stage, ...], *, release: str) -> dict[str, list[str]]:
    """stage name -> the robots running the candidate in that stage (nested, deterministic)."""
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for robot, s in robot_strata.items():
        by_stratum[s].append(robot)
    for s in by_stratum:
        by_stratum[s].sort(key=lambda r: _rank(release, r))
    total = len(robot_strata)
    taken = {s: 0 for s in by_stratum}
    out = {}
    for stage in stages:
        want = max(1, round(stage.fraction * total)) if stage.fraction < 1.0 else total
        quota = {s: stage.fraction * len(rs) for s, rs in by_stratum.items()}
        alloc = {s: max(taken[s], int(q)) for s, q in quota.items()}
        # Largest remainders first, ties by stratum name: deterministic.
        for s in sorted(by_stratum, key=lambda s: (-(quota[s] - int(quota[s])), s)):
            if sum(alloc.values()) >= want:
                break
            if alloc[s] < len(by_stratum[s]):
                alloc[s] += 1
        taken = alloc
        out[stage.name] = sorted(r for s, rs in by_stratum.items() for r in rs[:alloc[s]])
    return out


# --- the log ----------------------------------------------------------------------------------

def rollouts_prefix(model: str) -> str:
    return layout.rollouts_prefix(model)


def log_prefix(model: str, rollout_id: str) -> str:
    return layout.rollout_log_prefix(model, rollout_id)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def append(store: Lake, model: str, rollout_id: str, action: str, *, at: dt.datetime | None = None, **body) -> dict:
    when = at or _now()
    entry = {"schema": SCHEMA, "rollout_id": rollout_id, "model": model, "action": action,
             "at": when.isoformat(timespec="microseconds"), **body}
    key = f"{log_prefix(model, rollout_id)}/{when.strftime('%Y%m%dT%H%M%S%fZ')}-{action}-{uuid.uuid4().hex[:8]}.json"
    store.write_bytes(key, (json.dumps(entry, indent=2, sort_keys=True, default=str) + "\n").encode())
    return {**entry, "key": key}


def read_log(store: Lake, model: str, rollout_id: str) -> list[dict]:
    keys = sorted(o.key for o in store.list(log_prefix(model, rollout_id) + "/") if o.key.endswith(".json"))
    return [{**store.read_json(k), "key": k} for k in keys]


def rollout_ids(store: Lake, model: str) -> list[str]:
    prefix = rollouts_prefix(model) + "/"
    return sorted({o.key[len(prefix):].split("/", 1)[0] for o in store.list(prefix)})


@dataclass
class State:
    """What a rollout's log says now."""

    rollout_id: str
    model: str
    release: str
    control: str | None  # release ref, or None: teleoperated
    plan: dict
    status: str = RUNNING
    stage: int = 0
    stage_since: str = ""  # first day of field logs that count for the current stage
    started: str = ""
    evaluations: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(Stage(**s) for s in self.plan["stages"])

    @property
    def stage_name(self) -> str:
        return self.stages[self.stage].name

    @property
    def cohort(self) -> list[str]:
        return self.plan["cohorts"][self.stage_name]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("events")
        d["stage_name"], d["cohort"] = self.stage_name, self.cohort
        return d


def state(entries: list[dict]) -> State:
    if not entries or entries[0]["action"] != "plan":
        raise RolloutError("a rollout log starts with its plan")
    p = entries[0]
    s = State(p["rollout_id"], p["model"], p["release"], p["control"], p, stage=0, stage_since=p["effective_from"],
              started=p["effective_from"])
    for e in entries:
        s.events.append(e)
        a = e["action"]
        if a == "stage":
            s.stage, s.stage_since = e["stage"], e["effective_from"]
        elif a == "evaluation":
            s.evaluations.append(e)
        elif a == "pause":
            s.status = PAUSED
        elif a == "resume":
            s.status = RUNNING
        elif a == "complete":
            s.status, s.stage = COMPLETED, len(s.stages) - 1
        elif a == "rollback":
            s.status = ROLLED_BACK
        elif a == "abort":
            s.status = ABORTED
    return s


def load(store: Lake, model: str, rollout_id: str) -> State:
    return state(read_log(store, model, rollout_id))


def active(store: Lake, model: str) -> State | None:
    """The model's unfinished rollout (at most one), or None."""
    for rid in reversed(rollout_ids(store, model)):
        s = load(store, model, rid)
        if s.status not in FINAL:
            return s
    return None


# --- actions ----------------------------------------------------------------------------------

def _assign(base: dict[str, str | None], robots: list[str], release: str | None) -> dict[str, str | None]:
    return {**base, **{r: release for r in robots}}


def _publish(store: Lake, s: State, assignments: dict[str, str | None], *, action: str, reason: str, by: str,
             stage: str | None) -> dict:
    previous = deployments.latest(store, s.model)
    releases = dict(previous["releases"]) if previous else {}
    for ref in {s.release, s.control} - {None}:
        releases.setdefault(ref, deployments.release_entry(store, ref))
    manifest = deployments.build(model=s.model, sequence=(previous["sequence"] + 1) if previous else 1,
                                 assignments=assignments, releases=releases, rollout_id=s.rollout_id, stage=stage,
                                 action=action, reason=reason, by=by)
    key = deployments.publish(store, manifest)
    return {"manifest": key, "sequence": manifest["sequence"], "manifest_sha256": manifest["sha256"]}


def start(store: Lake, *, model: str, release: str, catalog_rows: list[dict], robots: list[str], by: str,
          reason: str, effective_from: str, stages: tuple[Stage, ...] = DEFAULT_STAGES,
          test: sequential.TestConfig = sequential.DEFAULT_TEST, registered_version: str | None = None,
          at: dt.datetime | None = None) -> State:
    """Plan a rollout of ``release`` and publish its first stage's deployments manifest.

    ``effective_from``: the first day whose field logs count (robots pick the manifest up then).
    """
    model = ids.name(model, what="model name")
    deployments.split_ref(release)
    ids.day(effective_from)
    if not by.strip() or not reason.strip():
        raise RolloutError("a rollout needs a person (--by) and a reason")
    stages = check_stages(tuple(stages))
    if (running := active(store, model)) is not None:
        raise RolloutError(f"{model}: rollout {running.rollout_id} of {running.release} is {running.status}; "
                           "finish, roll back or abort it first")
    deployments.release_entry(store, release)  # the bundle must exist
    fleet = sorted({ids.robot_id(r) for r in robots})
    if not fleet:
        raise RolloutError("no robots to roll out to (the catalog has none)")
    previous = deployments.latest(store, model)
    base = {r: (previous["assignments"].get(r) if previous else None) for r in fleet}
    if any(v == release for v in base.values()):
        raise RolloutError(f"{release} already runs on {sorted(r for r, v in base.items() if v == release)}")
    controls = sorted({v for v in base.values() if v is not None})
    if len(controls) > 1:
        raise RolloutError(f"{model}: the fleet runs several releases ({controls}); a rollout needs one control")
    control = controls[0] if controls else None
    robot_strata = strata(catalog_rows, fleet, before=effective_from)
    plan_cohorts = cohorts(robot_strata, stages, release=release)
    when = at or _now()
    # Time first, so that the model's rollouts sort in the order they started.
    rollout_id = f"{when.strftime('%Y%m%dT%H%M%SZ')}-{deployments.split_ref(release)[1][:12]}-{uuid.uuid4().hex[:6]}"
    entry = append(store, model, rollout_id, "plan", at=when, release=release, control=control,
                   registered_version=registered_version, stages=[asdict(x) for x in stages], test=test.to_dict(),
                   strata=robot_strata, cohorts=plan_cohorts, base=base, effective_from=effective_from, by=by,
                   reason=reason)
    s = state([entry])
    published = _publish(store, s, _assign(base, plan_cohorts[stages[0].name], release), action="stage",
                         reason=f"{rollout_id}: stage {stages[0].name} ({len(plan_cohorts[stages[0].name])} robots)",
                         by=by, stage=stages[0].name)
    append(store, model, rollout_id, "stage", stage=0, name=stages[0].name, effective_from=effective_from, by=by,
           reason="plan", robots=plan_cohorts[stages[0].name], **published)
    return load(store, model, rollout_id)


def evidence(s: State, catalog_rows: list[dict]) -> tuple[sequential.Evidence, dict]:
    """The cumulative comparison and the current stage's exposure."""
    version = deployments.split_ref(s.release)[1]
    control_arm = s.control if s.control else TELEOPERATED
    since = [r for r in catalog_rows if r["date"] >= s.started]
    canary = [r for r in since if r.get("policy_version") == version and arm_of(r) == s.release]
    days = {r["date"] for r in canary}
    candidate_robots = set(s.cohort)
    control = [r for r in since if r["date"] in days and r["robot"] not in candidate_robots and arm_of(r) == control_arm]
    config = sequential.TestConfig(**s.plan["test"])
    ev = sequential.compare(sequential.arm(clusters(canary)), sequential.arm(clusters(control)), config)
    in_stage = [r for r in canary if r["date"] >= s.stage_since]
    hours = sum(max(0.0, r["duration_s"] - (r.get("intervention_s") or 0.0)) for r in in_stage) / 3600
    stage = s.stages[s.stage]
    exposure = {"stage_episodes": len(in_stage), "stage_autonomy_hours": hours, "min_episodes": stage.min_episodes,
                "min_autonomous_hours": stage.min_autonomous_hours,
                "met": len(in_stage) >= stage.min_episodes and hours >= stage.min_autonomous_hours,
                "control_arm": control_arm, "days": sorted(days)}
    return ev, exposure


@dataclass(frozen=True)
class Outcome:
    decision: str  # advance | hold | rollback | complete | skipped
    reason: str
    state: State
    evaluation: dict | None = None


def evaluate(store: Lake, model: str, catalog_rows: list[dict], *, catalog_version: str, next_day: str,
             by: str = "rollout-evaluator", registry_client=None, via: str = "dagster",
             dagster_run_id: str | None = None) -> Outcome | None:
    """Decide the active rollout of ``model`` on the catalog's field logs and act on it.

    ``next_day``: the first day a new manifest takes effect. Returns None without an active rollout.
    A paused rollout is evaluated for regressions only (a pause never stops an automatic rollback).
    An evaluation of a catalog version already evaluated at this stage is skipped (same evidence).
    """
    s = active(store, model)
    if s is None:
        return None
    if any(e.get("catalog_version") == catalog_version and e.get("stage") == s.stage for e in s.evaluations):
        return Outcome("skipped", f"catalog {catalog_version} already evaluated at stage {s.stage_name}", s)
    ev, exposure = evidence(s, catalog_rows)
    decision, why = sequential.decide(ev, exposure_met=exposure["met"])
    if s.status == PAUSED and decision == sequential.ADVANCE:
        decision, why = sequential.HOLD, f"paused: {why}"
    record = append(store, model, s.rollout_id, "evaluation", stage=s.stage, stage_name=s.stage_name,
                    decision=decision, reason=why, evidence=ev.to_dict(), exposure=exposure,
                    catalog_version=catalog_version, by=by, dagster_run_id=dagster_run_id)
    if decision == sequential.ROLLBACK:
        roll_back(store, s, by=by, reason=f"automatic: {why}", automatic=True, registry_client=registry_client,
                  via=via, dagster_run_id=dagster_run_id)
    elif decision == sequential.ADVANCE:
        advance(store, s, by=by, reason=f"automatic: {why}", effective_from=next_day, registry_client=registry_client,
                via=via, dagster_run_id=dagster_run_id)
    s = load(store, model, s.rollout_id)
    return Outcome("complete" if s.status == COMPLETED else decision, why, s, record)


def advance(store: Lake, s: State, *, by: str, reason: str, effective_from: str, registry_client=None,
            via: str = "cli", dagster_run_id: str | None = None) -> State:
    """Move to the next stage (the last one completes the rollout and moves the MLflow alias)."""
    if s.status in FINAL:
        raise RolloutError(f"rollout {s.rollout_id} is {s.status}")
    nxt = s.stage + 1
    stage = s.stages[nxt]
    published = _publish(store, s, _assign(s.plan["base"], s.plan["cohorts"][stage.name], s.release),
                         action="complete" if stage.fraction >= 1.0 else "stage",
                         reason=f"{s.rollout_id}: stage {stage.name}: {reason}", by=by, stage=stage.name)
    append(store, s.model, s.rollout_id, "stage", stage=nxt, name=stage.name, effective_from=ids.day(effective_from),
           by=by, reason=reason, robots=s.plan["cohorts"][stage.name], **published)
    if stage.fraction >= 1.0:
        alias = _promote(store, s, by=by, reason=reason, client=registry_client, via=via, dagster_run_id=dagster_run_id)
        append(store, s.model, s.rollout_id, "complete", by=by, reason=reason, alias=alias, **published)
    return load(store, s.model, s.rollout_id)


def _promote(store: Lake, s: State, *, by, reason, client, via, dagster_run_id) -> dict:
    version = s.plan.get("registered_version")
    if client is None or not version:
        return {"moved": False, "why": "no registered model version or no registry given"}
    from flywheel_pipelines.lib.evaluation import registry

    try:
        entry, key = registry.promote(client, store, s.model, version, by=by, via=via, dagster_run_id=dagster_run_id,
                                      reason=f"rollout {s.rollout_id} reached the whole fleet: {reason}")
    except registry.PromotionError as exc:
        return {"moved": False, "why": str(exc)}
    return {"moved": True, "from_version": entry.from_version, "version": entry.version, "promotion_log": key}


def roll_back(store: Lake, s: State, *, by: str, reason: str, automatic: bool = False, registry_client=None,
              via: str = "cli", dagster_run_id: str | None = None, action: str = "rollback") -> State:
    """Every robot back to its assignment before the rollout; the MLflow alias too if it had moved."""
    if s.status in FINAL and not (action == "rollback" and s.status == COMPLETED):
        raise RolloutError(f"rollout {s.rollout_id} is {s.status}")
    published = _publish(store, s, dict(s.plan["base"]), action=action, reason=f"{s.rollout_id}: {reason}", by=by,
                         stage=None)
    alias = {"moved": False, "why": "the production alias never pointed at the release"}
    version = s.plan.get("registered_version")
    if registry_client is not None and version:
        from flywheel_pipelines.lib.evaluation import registry

        current = registry.production_version(registry_client, s.model)
        if current is not None and str(current.version) == str(version):
            try:
                entry, key = registry.rollback(registry_client, store, s.model, by=by, via=via,
                                               dagster_run_id=dagster_run_id, reason=f"rollout {s.rollout_id}: {reason}")
                alias = {"moved": True, "from_version": entry.from_version, "version": entry.version,
                         "promotion_log": key}
            except registry.PromotionError as exc:
                alias = {"moved": False, "why": str(exc)}
    append(store, s.model, s.rollout_id, action, by=by, reason=reason, automatic=automatic, alias=alias,
           stage=s.stage, stage_name=s.stage_name, **published)
    return load(store, s.model, s.rollout_id)


def pause(store: Lake, s: State, *, by: str, reason: str) -> State:
    if s.status != RUNNING:
        raise RolloutError(f"rollout {s.rollout_id} is {s.status}, not running")
    append(store, s.model, s.rollout_id, "pause", by=by, reason=reason)
    return load(store, s.model, s.rollout_id)


def resume(store: Lake, s: State, *, by: str, reason: str) -> State:
    if s.status != PAUSED:
        raise RolloutError(f"rollout {s.rollout_id} is {s.status}, not paused")
    append(store, s.model, s.rollout_id, "resume", by=by, reason=reason)
    return load(store, s.model, s.rollout_id)


def canary_episodes_to_decision(s: State) -> int | None:
    """How many candidate episodes the first automatic decision (advance or rollback) used."""
    for e in s.evaluations:
        if e["decision"] in (sequential.ADVANCE, sequential.ROLLBACK):
            return e["evidence"]["canary_n"]
    return None
