"""Requests to rebuild a dataset without content that was deleted (erased or expired pixels).

A request is one append-only JSON record under ``governance/rebuilds/`` naming the dataset version
to replace and the curation spec it was built with (from its manifest). The
``governance_rebuild_sensor`` turns each into one ``curated_dataset`` run with that spec (run key =
the request id, so a retried tick launches it once); the episodes the deletion removed are no
longer in the catalog, so the new version leaves them out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable

from flywheel_pipelines.lib import layout
from flywheel_pipelines.lib.storage import Lake

REQUEST_SCHEMA = "flywheel-rebuild-request-v1"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def request_id(name: str, version: str, cause: str) -> str:
    """Deterministic: the same dataset rebuilt for the same cause is one request, however often asked."""
    return "rb-" + hashlib.sha256(f"{name}/{version}\0{cause}".encode()).hexdigest()[:12]


def read_requests(lake: Lake) -> list[tuple[str, dict]]:
    """(key, request) of every rebuild request, oldest first."""
    keys = sorted(o.key for o in lake.list(layout.REBUILD_PREFIX + "/") if o.key.endswith(".json"))
    return [(k, lake.read_json(k)) for k in keys]


def request_rebuild(lake: Lake, *, name: str, version: str, spec: dict, cause: str, why: str,
                    now: Callable[[], dt.datetime] = _now) -> tuple[dict, str, bool]:
    """Record that dataset ``name/version`` must be rebuilt; returns (request, key, newly written)."""
    rid = request_id(name, version, cause)
    for key, existing in read_requests(lake):
        if existing["id"] == rid:
            return existing, key, False
    when = now()
    request = {"schema": REQUEST_SCHEMA, "id": rid, "dataset": {"name": name, "version": version},
               "spec": spec, "cause": cause, "why": why, "at": when.isoformat(timespec="seconds")}
    key = layout.rebuild_key(rid, when)
    lake.write_json(key, request)
    return request, key, True
