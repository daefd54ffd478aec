"""The incident log: what an on-call engineer found and did about a bad release, append-only.

An incident is a folder ``incidents/log/<incident-id>/`` of JSON entries named by UTC time and
action, each written once and never rewritten: ``opened`` (the release, the suspected cause with
the incident report's top robot-days), then any of ``quarantined`` (quarantine record ids),
``rolled_back`` (the promotion-log entry), ``replaced`` (the replacement release and its
evaluation), ``note``, and ``resolved``. :func:`read_incident` folds them into one view.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable

from flywheel_pipelines.lib import layout
from flywheel_pipelines.lib.storage import Lake

INCIDENT_LOG_PREFIX = layout.INCIDENT_LOG
ENTRY_SCHEMA = "flywheel-incident-v1"
ACTIONS = ("opened", "quarantined", "rolled_back", "replaced", "note", "resolved")


class IncidentLogError(ValueError):
    """An entry that must not be written (unknown incident, bad action, no person)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def incident_prefix(incident_id: str) -> str:
    if not isinstance(incident_id, str) or not incident_id.startswith("inc-"):
        raise IncidentLogError(f"invalid incident id {incident_id!r}")
    return layout.incident_log_prefix(incident_id)


def _write(lake: Lake, incident_id: str, action: str, by: str, body: dict, when: dt.datetime) -> str:
    if action not in ACTIONS:
        raise IncidentLogError(f"unknown incident action {action!r} (one of {', '.join(ACTIONS)})")
    if not isinstance(by, str) or not by.strip():
        raise IncidentLogError("an incident entry needs a person")
    entry = {"schema": ENTRY_SCHEMA, "incident": incident_id, "action": action, "by": by.strip(),
             "at": when.isoformat(timespec="seconds"), **body}
    key = f"{incident_prefix(incident_id)}/{when.strftime('%Y%m%dT%H%M%S%fZ')}-{action}-{uuid.uuid4().hex[:6]}.json"
    lake.write_bytes(key, (json.dumps(entry, indent=2, sort_keys=True) + "\n").encode())
    return key


def open_incident(lake: Lake, *, release: dict, summary: str, cause: list[dict], by: str,
                  now: Callable[[], dt.datetime] = _now) -> tuple[str, str]:
    """Open an incident about ``release`` ({name, version, ...}); returns (incident id, entry key).

    ``cause`` is what the evidence points at, e.g. the incident report's top robot-days with their
    scores and share of the training frames.
    """
    if not summary or not summary.strip():
        raise IncidentLogError("an incident needs a summary")
    when = now()
    incident_id = f"inc-{when.strftime('%Y%m%d')}-{uuid.uuid4().hex[:8]}"
    key = _write(lake, incident_id, "opened", by, {"release": release, "summary": summary.strip(), "cause": cause},
                 when)
    return incident_id, key


def append(lake: Lake, incident_id: str, action: str, *, by: str, now: Callable[[], dt.datetime] = _now,
           **body) -> str:
    """Append one entry to an open incident; returns its key."""
    if not read_entries(lake, incident_id):
        raise IncidentLogError(f"no incident {incident_id!r}")
    return _write(lake, incident_id, action, by, body, now())


def read_entries(lake: Lake, incident_id: str) -> list[dict]:
    """Every entry of one incident, oldest first."""
    prefix = incident_prefix(incident_id) + "/"
    return [lake.read_json(k) for k in sorted(o.key for o in lake.list(prefix) if o.key.endswith(".json"))]


def read_incident(lake: Lake, incident_id: str) -> dict:
    """One view of an incident: the opening entry plus every later action, by kind."""
    entries = read_entries(lake, incident_id)
    if not entries or entries[0]["action"] != "opened":
        raise IncidentLogError(f"no incident {incident_id!r}")
    view = {"incident": incident_id, "opened": entries[0], "entries": entries,
            "status": "resolved" if any(e["action"] == "resolved" for e in entries) else "open"}
    for action in ACTIONS[1:]:
        view[action] = [e for e in entries if e["action"] == action]
    return view


def list_incidents(lake: Lake) -> list[str]:
    """Incident ids, oldest first."""
    found = {o.key[len(INCIDENT_LOG_PREFIX) + 1:].split("/", 1)[0] for o in lake.list(INCIDENT_LOG_PREFIX + "/")}
    return sorted(found)
