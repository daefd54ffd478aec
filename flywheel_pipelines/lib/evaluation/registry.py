"""Production policy in the MLflow model registry: gate tags, promotion, rollback, and the log.

The production policy of a registered model is the version its ``production`` alias points to.
Moving the alias is an explicit action with a person and a reason behind it, recorded twice:

- in MLflow, as tags on the model versions involved (``flywheel.promoted_*`` on the new
  production version, ``flywheel.demoted_*`` on the one it replaced);
- in the lake, as an append-only promotion log: one JSON object per action under
  ``promotions/<model>/``, named by UTC time and a random suffix, written atomically and never
  rewritten (two people promoting at once write two objects; neither overwrites the other).

``eval_report`` tags every registered candidate version with its gate verdict
(``flywheel.gate`` = passed | failed, with the suite version and report location). Promotion
refuses a version whose gate did not pass, or passed against a production version that is no
longer production, unless forced with a reason; the force is recorded.
Rollback returns the alias to the version that was production before the current one, following
the log (promotions push, rollbacks pop), and refuses when MLflow and the log disagree about
who is production now: someone moved the alias outside flywheel, and guessing would be worse.
Withdrawing a version (a bad release found by on-call) takes it out of that history for good: a
later rollback skips it, and promoting it again needs ``force`` with a reason. It is recorded
like the other actions, and refused while the version is production (move the alias first).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from flywheel_pipelines.lib import layout
from flywheel_pipelines.lib.storage import Lake

PRODUCTION_ALIAS = "production"
# Set when a policy version is registered, in the same call: a re-run after a kill finds it.
POLICY_TAG = "flywheel.policy"
LOG_SCHEMA = "flywheel-promotion-v1"
GATE_TAG = "flywheel.gate"
WITHDRAWN_TAG = "flywheel.withdrawn"
GATE_TAGS = ("flywheel.gate", "flywheel.gate.reasons", "flywheel.gate.suite", "flywheel.gate.suite_version",
             "flywheel.gate.report", "flywheel.gate.golden_version", "flywheel.gate.production_version",
             "flywheel.policy_version")
_MAX_TAG = 4000  # MLflow caps tag values (5000 characters on most stores)


class PromotionError(RuntimeError):
    """A promotion or rollback that must not happen (gate failed, nothing to roll back to, ...)."""


def log_prefix(model: str) -> str:
    return layout.promotions_prefix(model)


def _not_found(exc: Exception) -> bool:
    # MLflow answers a missing model or version with RESOURCE_DOES_NOT_EXIST, a missing alias with
    # INVALID_PARAMETER_VALUE "... alias ... not found".
    code = getattr(exc, "error_code", "") or ""
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc))


def model_exists(client, model: str) -> bool:
    """Whether ``model`` is a registered model."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model)
    except MlflowException as exc:
        if _not_found(exc):
            return False
        raise
    return True


def _model_version(client, model: str, version: str):
    """The registered model version, or PromotionError naming what does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model, version)
    except MlflowException as exc:
        if _not_found(exc):
            raise PromotionError(f"registered model {model!r} has no version {version}") from None
        raise


def production_version(client, model: str, *, alias: str = PRODUCTION_ALIAS):
    """The model version the alias points to, or None (no such model, or no alias yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model, alias)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def record_gate(client, model: str, version: str, *, passed: bool, reasons: list[str], suite: str,
                suite_version: str, report_uri: str, golden_version: str | None, production: str | None,
                policy_version: str) -> None:
    """Tag a registered version with its evaluation verdict (what promotion checks)."""
    tags = {
        "flywheel.gate": "passed" if passed else "failed",
        "flywheel.gate.reasons": "; ".join(reasons)[:_MAX_TAG],
        "flywheel.gate.suite": suite,
        "flywheel.gate.suite_version": suite_version,
        "flywheel.gate.report": report_uri,
        "flywheel.gate.golden_version": golden_version or "",
        "flywheel.gate.production_version": production or "none",
        "flywheel.policy_version": policy_version,
    }
    for key, value in tags.items():
        client.set_model_version_tag(model, version, key, value)


@dataclass(frozen=True)
class Promotion:
    """One entry of the promotion log."""

    action: str  # "promote" | "rollback" | "withdraw"
    model: str
    alias: str
    version: str  # the version the alias points to after the action (withdraw: the version withdrawn)
    from_version: str | None  # before the action
    by: str
    at: str  # ISO 8601 UTC
    reason: str
    forced: bool
    gate: str  # the version's gate tag at the time: passed | failed | unknown
    gate_reasons: str
    report: str
    policy_version: str
    via: str  # "cli" | "dagster"
    dagster_run_id: str | None = None
    schema: str = LOG_SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)


def read_log(lake: Lake, model: str) -> list[dict]:
    """Every promotion-log entry of ``model``, oldest first."""
    keys = sorted(o.key for o in lake.list(log_prefix(model) + "/") if o.key.endswith(".json"))
    return [lake.read_json(k) for k in keys]


def production_history(entries: list[dict]) -> list[str]:
    """The stack of production versions the log implies: promotions push, rollbacks pop, and a
    withdrawal removes the version wherever it is (a rollback never returns to it)."""
    stack: list[str] = []
    withdrawn: set[str] = set()
    for e in entries:
        if e["action"] == "withdraw":
            withdrawn.add(e["version"])
            stack = [v for v in stack if v != e["version"]]
            continue
        if e["action"] == "promote":
            if not stack and e.get("from_version") and e["from_version"] not in withdrawn:
                stack.append(e["from_version"])
            stack.append(e["version"])
        elif e["action"] == "rollback" and stack:
            stack.pop()
            if not stack or stack[-1] != e["version"]:
                stack.append(e["version"])
    return stack


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _append(lake: Lake, entry: Promotion, when: dt.datetime) -> str:
    key = f"{log_prefix(entry.model)}/{when.strftime('%Y%m%dT%H%M%S%fZ')}-{entry.action}-v{entry.version}-" \
          f"{uuid.uuid4().hex[:8]}.json"
    lake.write_bytes(key, (json.dumps(entry.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return key


def _move_alias(client, lake: Lake, entry: Promotion, when: dt.datetime, version_tags: dict[str, dict[str, str]]) -> str:
    """Point the alias, tag the versions, then append the log; undo the alias if the log fails."""
    client.set_registered_model_alias(entry.model, entry.alias, entry.version)
    try:
        for version, tags in version_tags.items():
            for key, value in tags.items():
                client.set_model_version_tag(entry.model, version, key, value)
        return _append(lake, entry, when)
    except Exception:
        if entry.from_version:
            client.set_registered_model_alias(entry.model, entry.alias, entry.from_version)
        else:
            client.delete_registered_model_alias(entry.model, entry.alias)
        raise


def promote(client, lake: Lake, model: str, version: str, *, by: str, reason: str, force: bool = False,
            alias: str = PRODUCTION_ALIAS, via: str = "cli", dagster_run_id: str | None = None,
            now: Callable[[], dt.datetime] = _now) -> tuple[Promotion, str]:
    """Make ``model`` version ``version`` production. Returns (log entry, its lake key).

    Raises:
        PromotionError: no such version, already production, no reason, or its gate did not pass
            (and ``force`` is not set).
    """

    version = str(version)
    if not by.strip():
        raise PromotionError("promotion needs a person (--by / requested_by)")
    if not reason.strip():
        raise PromotionError("promotion needs a reason")
    mv = _model_version(client, model, version)
    current = production_version(client, model, alias=alias)
    if current is not None and str(current.version) == version:
        raise PromotionError(f"{model} version {version} is already {alias}")
    gate = mv.tags.get(GATE_TAG, "unknown")
    if mv.tags.get(WITHDRAWN_TAG) and not force:
        raise PromotionError(f"refusing to promote {model} version {version}: it was withdrawn "
                             f"({mv.tags[WITHDRAWN_TAG]}). Use --force with a reason to override; the override is recorded.")
    if gate != "passed" and not force:
        why = mv.tags.get("flywheel.gate.reasons") or "it was never evaluated"
        raise PromotionError(f"refusing to promote {model} version {version}: its release gate is {gate} ({why}). "
                             "Use --force with a reason to override; the override is recorded.")
    judged_against = mv.tags.get("flywheel.gate.production_version", "none")
    now_production = str(current.version) if current is not None else "none"
    stale = gate == "passed" and judged_against != now_production
    if stale and not force:
        raise PromotionError(
            f"refusing to promote {model} version {version}: its gate passed against production version "
            f"{judged_against}, but production is now {now_production}; re-run eval_report so it is compared with "
            "today's production (or --force with a reason).")
    when = now()
    entry = Promotion(
        action="promote", model=model, alias=alias, version=version,
        from_version=str(current.version) if current is not None else None, by=by.strip(),
        at=when.isoformat(timespec="seconds"), reason=reason.strip(),
        forced=bool(force and (gate != "passed" or stale or mv.tags.get(WITHDRAWN_TAG))),
        gate=f"passed against production {judged_against}" if stale else gate,
        gate_reasons=mv.tags.get("flywheel.gate.reasons", ""), report=mv.tags.get("flywheel.gate.report", ""),
        policy_version=mv.tags.get("flywheel.policy_version", ""), via=via, dagster_run_id=dagster_run_id,
    )
    tags = {version: {"flywheel.promoted_at": entry.at, "flywheel.promoted_by": entry.by,
                      "flywheel.promotion_reason": entry.reason[:_MAX_TAG],
                      "flywheel.promoted_from": entry.from_version or "none",
                      "flywheel.promotion_forced": str(entry.forced).lower()}}
    if entry.from_version:
        tags[entry.from_version] = {"flywheel.demoted_at": entry.at, "flywheel.demoted_by": entry.by,
                                    "flywheel.demoted_for": version}
    return entry, _move_alias(client, lake, entry, when, tags)


def rollback(client, lake: Lake, model: str, *, by: str, reason: str, alias: str = PRODUCTION_ALIAS,
             via: str = "cli", dagster_run_id: str | None = None,
             now: Callable[[], dt.datetime] = _now) -> tuple[Promotion, str]:
    """Return the alias to the previous production version (per the promotion log).

    Raises:
        PromotionError: no production policy, nothing earlier to return to, or MLflow's alias and
            the log disagree.
    """
    if not by.strip() or not reason.strip():
        raise PromotionError("rollback needs a person (--by / requested_by) and a reason")
    current = production_version(client, model, alias=alias)
    if current is None:
        raise PromotionError(f"{model} has no {alias} version to roll back")
    history = production_history(read_log(lake, model))
    if not history or history[-1] != str(current.version):
        raise PromotionError(
            f"{model}: the {alias} alias points to version {current.version} but the promotion log says "
            f"{history[-1] if history else 'nothing was ever promoted'}; the alias was moved outside flywheel. "
            "Promote the version you want explicitly instead.")
    if len(history) < 2:
        raise PromotionError(f"{model}: version {current.version} is the first production version; "
                             "there is nothing earlier to roll back to")
    target = history[-2]
    mv = client.get_model_version(model, target)
    when = now()
    entry = Promotion(
        action="rollback", model=model, alias=alias, version=target, from_version=str(current.version),
        by=by.strip(), at=when.isoformat(timespec="seconds"), reason=reason.strip(), forced=False,
        gate=mv.tags.get(GATE_TAG, "unknown"), gate_reasons=mv.tags.get("flywheel.gate.reasons", ""),
        report=mv.tags.get("flywheel.gate.report", ""), policy_version=mv.tags.get("flywheel.policy_version", ""),
        via=via, dagster_run_id=dagster_run_id,
    )
    tags = {target: {"flywheel.restored_at": entry.at, "flywheel.restored_by": entry.by,
                     "flywheel.restore_reason": entry.reason[:_MAX_TAG], "flywheel.restored_from": entry.from_version},
            entry.from_version: {"flywheel.rolled_back_at": entry.at, "flywheel.rolled_back_by": entry.by,
                                 "flywheel.rollback_reason": entry.reason[:_MAX_TAG]}}
    return entry, _move_alias(client, lake, entry, when, tags)


def withdraw(client, lake: Lake, model: str, version: str, *, by: str, reason: str, alias: str = PRODUCTION_ALIAS,
             via: str = "cli", dagster_run_id: str | None = None,
             now: Callable[[], dt.datetime] = _now) -> tuple[Promotion, str]:
    """Take ``model`` version ``version`` out of service for good: later rollbacks skip it, and
    promoting it again needs ``force``. Returns (log entry, its lake key).

    Raises:
        PromotionError: no such version, no person or reason, already withdrawn, or the version is
            production now (promote its replacement or roll back first).
    """

    version = str(version)
    if not by.strip() or not reason.strip():
        raise PromotionError("withdrawing a version needs a person (--by / requested_by) and a reason")
    mv = _model_version(client, model, version)
    if mv.tags.get(WITHDRAWN_TAG):
        raise PromotionError(f"{model} version {version} is already withdrawn ({mv.tags[WITHDRAWN_TAG]})")
    current = production_version(client, model, alias=alias)
    if current is not None and str(current.version) == version:
        raise PromotionError(f"{model} version {version} is {alias} now: promote its replacement or roll back first, "
                             "then withdraw it")
    when = now()
    entry = Promotion(
        action="withdraw", model=model, alias=alias, version=version,
        from_version=str(current.version) if current is not None else None, by=by.strip(),
        at=when.isoformat(timespec="seconds"), reason=reason.strip(), forced=False,
        gate=mv.tags.get(GATE_TAG, "unknown"), gate_reasons=mv.tags.get("flywheel.gate.reasons", ""),
        report=mv.tags.get("flywheel.gate.report", ""), policy_version=mv.tags.get("flywheel.policy_version", ""),
        via=via, dagster_run_id=dagster_run_id,
    )
    for key, value in {WITHDRAWN_TAG: f"{entry.at} by {entry.by}: {entry.reason}"[:_MAX_TAG],
                       "flywheel.withdrawn_by": entry.by, "flywheel.withdrawn_at": entry.at}.items():
        client.set_model_version_tag(model, version, key, value)
    try:
        return entry, _append(lake, entry, when)
    except Exception:
        client.delete_model_version_tag(model, version, WITHDRAWN_TAG)
        raise


def register_policy_version(client, name: str, *, policy_version: str, model_uri: str,
                            run_id: str) -> tuple[str, list[str]]:
    """Registers ``model_uri`` as a version of ``name`` once per policy version.

    A run killed after registering (before its asset materialized) leaves a READY version; the
    re-run finds it by its ``flywheel.policy`` tag and reuses it instead of registering
    "version 2" of the same policy; the killed run, still RUNNING in MLflow, is marked KILLED.

    Args:
        client: an ``mlflow.MlflowClient`` of the store (``MlflowStore.client``).
        name: the registered model name.
        policy_version: the content version of the policy (``save_policy``).
        model_uri: the logged model, ``models:/<model id>`` (``TrackedRun.log_onnx_model``).
        run_id: the current MLflow run.

    Returns:
        (registry version, MLflow runs marked KILLED)
    """
    from mlflow.exceptions import MlflowException

    killed = []
    for mv in client.search_model_versions(f"name='{name}'"):
        if (mv.tags or {}).get(POLICY_TAG) == policy_version and mv.status == "READY":
            if mv.run_id and mv.run_id != run_id and client.get_run(mv.run_id).info.status == "RUNNING":
                client.set_terminated(mv.run_id, status="KILLED")
                killed.append(mv.run_id)
            return str(mv.version), killed
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source, model_id = model_uri, None
    if model_uri.startswith("models:/"):
        # The logged model's own artifact location, linked by model_id: MLflow's SQL registry store
        # resolves a models:/<id> source through a default MlflowClient, i.e. the process-global
        # tracking URI (a TODO in mlflow/store/model_registry/sqlalchemy_store.py), which we never set.
        model_id = model_uri.removeprefix("models:/")
        source = client.get_logged_model(model_id).artifact_location
    # Waits until the version is READY, as mlflow.register_model does.
    mv = client.create_model_version(name, source=source, run_id=run_id, tags={POLICY_TAG: policy_version},
                                     model_id=model_id)
    return str(mv.version), killed
