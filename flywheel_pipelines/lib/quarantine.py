"""Quarantine: keep bad data out of datasets without touching the raw logs.

A quarantine record covers a robot over a day range, one raw log, or one episode. Records are
append-only: one JSON object per action under ``quarantine/records/``, named by UTC time and a
random suffix, written atomically and never rewritten. Lifting a quarantine is a new record that
names the one it lifts; the active set is every ``add`` no ``lift`` names.

The catalog marks quarantined episodes (:func:`mark`); curation leaves them out unless its spec
opts in, and records the quarantine state it honoured (:func:`state`) in the dataset manifest, so
a dataset's version changes when the quarantine does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from flywheel_pipelines.lib import ids, layout
from flywheel_pipelines.lib.storage import Lake

QUARANTINE_PREFIX = layout.QUARANTINE_RECORDS
RECORD_SCHEMA = "flywheel-quarantine-v1"
MAX_REASON = 2000
_EPISODE_ID_MAX = 200


class QuarantineError(ValueError):
    """A quarantine request that must not be recorded (unknown target, bad range, no reason, ...)."""


@dataclass(frozen=True)
class Scope:
    """What a record covers: exactly one of robot (+ optional day range), raw log key, episode id."""

    kind: str  # "robot" | "raw" | "episode"
    robot: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    raw_key: str | None = None
    episode_id: str | None = None

    def describe(self) -> str:
        if self.kind == "robot":
            if self.date_from or self.date_to:
                return f"robot {self.robot} {self.date_from or '...'} .. {self.date_to or '...'}"
            return f"robot {self.robot} (all days)"
        if self.kind == "raw":
            return f"raw log {self.raw_key}"
        return f"episode {self.episode_id}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _episode_id(value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _EPISODE_ID_MAX or any(
            c in value for c in "/\\\0\n\r") or value.startswith("."):
        raise QuarantineError(f"invalid episode id {value!r}")
    return value


def make_scope(*, robot: str | None = None, date_from: str | None = None, date_to: str | None = None,
               raw: str | None = None, episode: str | None = None) -> Scope:
    """A validated scope. Identifiers are checked before anything becomes a path or a record.

    Raises:
        QuarantineError: not exactly one target, an invalid id or date, an inverted range, or a
            day range without a robot.
    """
    given = [k for k, v in (("robot", robot), ("raw", raw), ("episode", episode)) if v is not None]
    if len(given) != 1:
        raise QuarantineError("give exactly one of --robot, --raw, --episode")
    if (date_from or date_to) and robot is None:
        raise QuarantineError("--from/--to go with --robot")
    try:
        if robot is not None:
            ids.robot_id(robot)
            for d in (date_from, date_to):
                if d is not None:
                    ids.day(d)
            if date_from and date_to and date_from > date_to:
                raise QuarantineError(f"inverted day range: --from {date_from} is after --to {date_to}")
            return Scope("robot", robot=robot, date_from=date_from, date_to=date_to)
        if raw is not None:
            ids.parse_raw_key(raw.rstrip("/"))  # a rosbag2 folder is named with a trailing /
            return Scope("raw", raw_key=raw)
    except ids.InvalidIdentifier as exc:
        raise QuarantineError(str(exc)) from None
    return Scope("episode", episode_id=_episode_id(episode))


@dataclass(frozen=True)
class Record:
    """One entry of the quarantine log."""

    id: str
    action: str  # "add" | "lift"
    scope: Scope | None  # None for a lift
    lifts: str | None  # the id of the record a lift ends
    reason: str
    by: str
    at: str  # ISO 8601 UTC
    incident: str | None = None
    schema: str = RECORD_SCHEMA

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scope"] = None if self.scope is None else {k: v for k, v in asdict(self.scope).items() if v is not None}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        scope = None if d.get("scope") is None else Scope(**d["scope"])
        return cls(id=d["id"], action=d["action"], scope=scope, lifts=d.get("lifts"), reason=d["reason"],
                   by=d["by"], at=d["at"], incident=d.get("incident"), schema=d.get("schema", RECORD_SCHEMA))


def _text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise QuarantineError(f"a quarantine needs {what}")
    value = value.strip()
    if len(value) > MAX_REASON:
        raise QuarantineError(f"{what} is longer than {MAX_REASON} characters")
    return value


def read_records(lake: Lake) -> list[Record]:
    """Every record, oldest first."""
    keys = sorted(o.key for o in lake.list(QUARANTINE_PREFIX + "/") if o.key.endswith(".json"))
    return [Record.from_dict(lake.read_json(k)) for k in keys]


def active(records: Iterable[Record]) -> list[Record]:
    """The ``add`` records no ``lift`` has ended, oldest first."""
    records = list(records)
    lifted = {r.lifts for r in records if r.action == "lift"}
    return [r for r in records if r.action == "add" and r.id not in lifted]


def _append(lake: Lake, record: Record, when: dt.datetime) -> str:
    key = f"{QUARANTINE_PREFIX}/{when.strftime('%Y%m%dT%H%M%S%fZ')}-{record.action}-{record.id}.json"
    if lake.exists(key):  # the id is random: this would be a bug, and records are never rewritten
        raise QuarantineError(f"{key} exists already")
    lake.write_bytes(key, (json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return key


def add(lake: Lake, scope: Scope, *, reason: str, by: str, known: Callable[[Scope], str | None],
        incident: str | None = None, now: Callable[[], dt.datetime] = _now) -> tuple[Record, str]:
    """Record a quarantine. ``known(scope)`` returns why the target does not exist, or None.

    Raises:
        QuarantineError: empty reason or person, an unknown target, or the same scope already active.
    """
    reason, by = _text(reason, "a reason (--reason)"), _text(by, "a person (--by)")
    problem = known(scope)
    if problem:
        raise QuarantineError(problem)
    for r in active(read_records(lake)):
        if r.scope == scope:
            raise QuarantineError(f"{scope.describe()} is already quarantined by {r.id} ({r.reason})")
    when = now()
    record = Record(id=f"q-{when.strftime('%Y%m%d')}-{uuid.uuid4().hex[:8]}", action="add", scope=scope, lifts=None,
                    reason=reason, by=by, at=when.isoformat(timespec="seconds"), incident=incident)
    return record, _append(lake, record, when)


def lift(lake: Lake, record_id: str, *, reason: str, by: str,
         now: Callable[[], dt.datetime] = _now) -> tuple[Record, str]:
    """End an active quarantine with a new record.

    Raises:
        QuarantineError: no active quarantine with that id, or an empty reason or person.
    """
    reason, by = _text(reason, "a reason (--reason)"), _text(by, "a person (--by)")
    if not isinstance(record_id, str) or not record_id.startswith("q-") or len(record_id) > 40:
        raise QuarantineError(f"invalid quarantine id {record_id!r}")
    current = {r.id: r for r in active(read_records(lake))}
    if record_id not in current:
        raise QuarantineError(f"no active quarantine {record_id!r} (see `flywheel quarantine list`)")
    when = now()
    record = Record(id=f"q-{when.strftime('%Y%m%d')}-{uuid.uuid4().hex[:8]}", action="lift", scope=None,
                    lifts=record_id, reason=reason, by=by, at=when.isoformat(timespec="seconds"))
    return record, _append(lake, record, when)


def state(records: Iterable[Record]) -> dict:
    """The quarantine state a dataset honoured: the active record ids and a hash of them."""
    ids_ = sorted(r.id for r in active(records))
    return {"records": ids_, "hash": hashlib.sha256("\n".join(ids_).encode()).hexdigest()[:16]}


def matches(scope: Scope, *, robot: str, date: str, episode_id: str, source_keys: Iterable[str]) -> bool:
    """Whether an episode falls under ``scope``."""
    if scope.kind == "robot":
        return (robot == scope.robot and (scope.date_from is None or date >= scope.date_from)
                and (scope.date_to is None or date <= scope.date_to))
    if scope.kind == "raw":
        key = scope.raw_key
        return any(k == key or (key.endswith("/") and k.startswith(key)) for k in source_keys)
    return episode_id == scope.episode_id


def episode_quarantines(table: pa.Table, records: Iterable[Record]) -> list[list[str]]:
    """For each row of an episode table, the ids of the active quarantines covering it."""
    act = active(records)
    out: list[list[str]] = [[] for _ in range(table.num_rows)]
    if not act or not table.num_rows:
        return out
    robots = np.asarray(table["robot"].to_pylist(), dtype=object)
    dates = np.asarray(table["date"].to_pylist(), dtype=object)
    episode_ids = table["episode_id"].to_pylist()
    sources = table["source_keys"].to_pylist()
    for r in act:
        s = r.scope
        if s.kind == "robot":
            hit = robots == s.robot
            if s.date_from:
                hit &= dates >= s.date_from
            if s.date_to:
                hit &= dates <= s.date_to
            rows = np.flatnonzero(hit)
        else:
            rows = [i for i in range(table.num_rows)
                    if matches(s, robot=robots[i], date=dates[i], episode_id=episode_ids[i], source_keys=sources[i])]
        for i in rows:
            out[i].append(r.id)
    return out


def mark(table: pa.Table, records: Iterable[Record]) -> pa.Table:
    """The episode table with ``quarantined`` and ``quarantine_ids`` columns (replacing old marks)."""
    for col in ("quarantined", "quarantine_ids"):
        if col in table.column_names:
            table = table.drop_columns([col])
    hits = episode_quarantines(table, records)
    table = table.append_column("quarantined", pa.array([bool(h) for h in hits], pa.bool_()))
    return table.append_column("quarantine_ids", pa.array(hits, pa.list_(pa.string())))


def known_target(lake: Lake, catalog: pa.Table | None) -> Callable[[Scope], str | None]:
    """A ``known`` callback for :func:`add`: the robot, raw log or episode must exist.

    A robot counts when the catalog has its episodes or the lake has raw logs of it; a raw key
    when the lake holds it; an episode when the catalog lists it. A day range may reach into
    the future (keep a robot out until it is recalibrated).
    """
    def check(scope: Scope) -> str | None:
        if scope.kind == "robot":
            in_catalog = catalog is not None and scope.robot in set(catalog["robot"].to_pylist())
            if in_catalog or lake.list(layout.raw_robot_prefix(scope.robot)):
                return None
            return f"unknown robot {scope.robot!r}: no episodes in the catalog and no raw logs in the lake"
        if scope.kind == "raw":
            key = scope.raw_key
            if (lake.list(key) if key.endswith("/") else lake.exists(key)):
                return None
            return f"unknown raw log {key!r}: not in the lake"
        if catalog is not None and scope.episode_id in set(catalog["episode_id"].to_pylist()):
            return None
        return f"unknown episode {scope.episode_id!r}: not in the episode catalog"

    return check
