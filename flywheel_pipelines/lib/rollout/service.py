"""Rollout actions as the CLI and the Dagster jobs do them: read the catalog, find the registered
model version, call lib/rollout/plan.py. One place, so both paths act the same."""

from __future__ import annotations

import datetime as dt

from flywheel_pipelines.lib import ids, layout
from flywheel_pipelines.lib.catalog import CATALOG_KEY, catalog_hash
from flywheel_pipelines.lib.rollout import deployments, plan, sequential
from flywheel_pipelines.lib.storage import Lake

ACTIONS = ("pause", "resume", "advance", "abort")


def catalog(store: Lake) -> tuple[list[dict], str]:
    """The catalog's rows and content version (empty without a catalog)."""
    if not store.exists(CATALOG_KEY):
        return [], "none"
    table = store.read_parquet(CATALOG_KEY)
    return table.to_pylist(), catalog_hash(table)


def next_day(rows: list[dict]) -> str:
    """The first day a new assignment counts for: the day after the newest field logs (today's
    logs were mostly recorded under the old assignment), or tomorrow without logs."""
    latest = max((r["date"] for r in rows), default=None)
    base = dt.date.fromisoformat(latest) if latest else dt.datetime.now(dt.UTC).date()
    return (base + dt.timedelta(days=1)).isoformat()


def registered_version(client, model: str, policy_version: str) -> str | None:
    """The MLflow model version whose ``flywheel.policy_version`` tag is ``policy_version``."""
    if client is None:
        return None
    found = [mv for mv in client.search_model_versions(f"name='{ids.name(model, what='model name')}'")
             if mv.tags.get("flywheel.policy_version") == policy_version]
    return str(max(int(mv.version) for mv in found)) if found else None


def models(store: Lake) -> list[str]:
    """Models with a deployments folder."""
    prefix = layout.DEPLOYMENTS + "/"
    return sorted({o.key[len(prefix):].split("/", 1)[0] for o in store.list(prefix)})


def start(store: Lake, client, *, model: str, release: str, by: str, reason: str,
          stages: tuple[plan.Stage, ...] = plan.DEFAULT_STAGES, margin: float | None = None,
          effective_from: str | None = None) -> plan.State:
    rows, _ = catalog(store)
    _, version = deployments.split_ref(release)
    test = sequential.TestConfig(margin=margin) if margin is not None else sequential.TestConfig()
    return plan.start(store, model=model, release=release, catalog_rows=rows,
                      robots=sorted({r["robot"] for r in rows}), by=by, reason=reason,
                      effective_from=ids.day(effective_from) if effective_from else next_day(rows), stages=stages,
                      test=test, registered_version=registered_version(client, model, version))


def evaluate_all(store: Lake, client, *, by: str = "rollout-evaluator", via: str = "dagster",
                 dagster_run_id: str | None = None, effective_from: str | None = None) -> list[plan.Outcome]:
    """Evaluate every model's active rollout on the current catalog."""
    rows, version = catalog(store)
    day = ids.day(effective_from) if effective_from else next_day(rows)
    out = []
    for model in models(store):
        outcome = plan.evaluate(store, model, rows, catalog_version=version, next_day=day, by=by,
                                registry_client=client, via=via, dagster_run_id=dagster_run_id)
        if outcome is not None:
            out.append(outcome)
    return out


def act(store: Lake, client, *, model: str, action: str, by: str, reason: str, effective_from: str | None = None,
        via: str = "cli", dagster_run_id: str | None = None) -> plan.State:
    """A person's pause / resume / advance / abort of the model's active rollout."""
    if action not in ACTIONS:
        raise plan.RolloutError(f"action must be one of {ACTIONS}, got {action!r}")
    if not by.strip() or not reason.strip():
        raise plan.RolloutError(f"{action} needs a person (--by) and a reason")
    s = plan.active(store, ids.name(model, what="model name"))
    if s is None:
        raise plan.RolloutError(f"{model} has no active rollout")
    if action == "pause":
        return plan.pause(store, s, by=by, reason=reason)
    if action == "resume":
        return plan.resume(store, s, by=by, reason=reason)
    if action == "advance":
        rows, _ = catalog(store)
        return plan.advance(store, s, by=by, reason=f"manual: {reason}",
                            effective_from=ids.day(effective_from) if effective_from else next_day(rows),
                            registry_client=client, via=via, dagster_run_id=dagster_run_id)
    return plan.roll_back(store, s, by=by, reason=f"aborted: {reason}", registry_client=client, via=via,
                          dagster_run_id=dagster_run_id, action="abort")
