"""Erasure on request: delete a raw log (or a robot's days) and every artifact holding its content.

:func:`blast_radius` finds, from the lake and the reverse lineage (``lineage_index.query``), the
raw logs, the episode rows derived from them (robot-day tables, month archives, the catalog), the
dataset versions holding those episodes, and the policies and releases trained on those datasets.
:func:`erase` then, each step idempotent so a killed run is finished by running it again:

1. records the request (``requested``: selector, reason, person, ids/hashes/counts only);
2. deletes the raw bytes through :func:`deleter.delete_raw_log` (status ``erased``);
3. rewrites each affected robot-day folder (episode table and frames), month archive and the
   catalog without the erased episodes, atomically, and republishes the golden scenario set
   without the scenarios derived from them (deleting the golden versions that held them);
4. requests a rebuild of every affected dataset with its own spec, then deletes the old version;
5. marks, without deleting, the policies and releases trained on them (they stay usable and are
   listed in the record; lineage shows them ``erased`` from the tombstones);
6. records ``completed`` with the counts.

The audit record never holds erased content: keys, sha256s, episode ids, dataset and model
references and counts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from flywheel_pipelines.lib import faults, fleet, ids, layout, lineage_index
from flywheel_pipelines.lib.catalog import CATALOG_KEY
from flywheel_pipelines.lib.governance import deleter, rebuilds
from flywheel_pipelines.lib.storage import Lake, staging_dir

ENTRY_SCHEMA = "flywheel-erasure-v1"
MAX_TEXT = 2000


class ErasureError(ValueError):
    """An erasure request that must not run (bad selector, no reason, nothing to erase)."""


@dataclass
class BlastRadius:
    """Everything an erasure touches (ids, hashes and counts: safe to print and to record)."""

    selector: dict
    raw_logs: list[dict] = field(default_factory=list)  # key, sha256, size, present
    episodes: list[dict] = field(default_factory=list)  # episode_id, robot, date
    datasets: list[dict] = field(default_factory=list)  # name, version, present
    policies: list[dict] = field(default_factory=list)  # name, version, registered model/version
    releases: list[dict] = field(default_factory=list)  # name, version
    archives: list[str] = field(default_factory=list)   # month archive keys holding erased rows
    golden: list[dict] = field(default_factory=list)    # golden set versions with scenarios derived from them
    warnings: list[str] = field(default_factory=list)

    @property
    def erasure_id(self) -> str:
        return erasure_id(self.selector)

    def counts(self) -> dict:
        return {"raw_logs": len(self.raw_logs), "raw_bytes": sum(r["size"] or 0 for r in self.raw_logs),
                "episodes": len(self.episodes), "robot_days": len({(e["robot"], e["date"]) for e in self.episodes}),
                "datasets": len(self.datasets), "policies": len(self.policies), "releases": len(self.releases),
                "archives": len(self.archives),
                "golden_scenarios": len({s for g in self.golden for s in g["scenarios"]})}

    def to_json(self) -> dict:
        return {"erasure_id": self.erasure_id, **asdict(self), "counts": self.counts()}


def erasure_id(selector: dict) -> str:
    """Deterministic per selector: re-running an erasure (after a kill) resumes the same record."""
    return "er-" + hashlib.sha256(json.dumps(selector, sort_keys=True).encode()).hexdigest()[:12]


def _selector(raw: str | None, robot: str | None, date_from: str | None, date_to: str | None) -> dict:
    try:
        if (raw is None) == (robot is None):
            raise ErasureError("give exactly one of --raw KEY or --robot ID --from DAY --to DAY")
        if raw is not None:
            if date_from or date_to:
                raise ErasureError("--from/--to go with --robot")
            ids.parse_raw_key(raw.rstrip("/"))
            return {"raw": ids.raw_log_key(raw) if not raw.endswith("/") else raw}
        if not date_from or not date_to:
            raise ErasureError("--robot needs --from and --to (an erasure names the days it covers)")
        ids.robot_id(robot)
        ids.day(date_from)
        ids.day(date_to)
        if date_from > date_to:
            raise ErasureError(f"inverted day range: --from {date_from} is after --to {date_to}")
        return {"robot": robot, "from": date_from, "to": date_to}
    except ids.InvalidIdentifier as exc:
        raise ErasureError(str(exc)) from None


def _covers(selector: dict, key: str) -> bool:
    if "raw" in selector:
        want = selector["raw"]
        return key == want or (want.endswith("/") and key.startswith(want))
    robot, day, _ = ids.parse_raw_key(key.rstrip("/"))
    return robot == selector["robot"] and selector["from"] <= day <= selector["to"]


def _raw_logs(lake: Lake, selector: dict) -> list[dict]:
    """The selected raw logs in the lake, plus those already erased (a re-run finishes their rows)."""
    robot = selector.get("robot") or ids.parse_raw_key(selector["raw"].rstrip("/"))[0]
    found: dict[str, dict] = {}
    for o in lake.list(layout.raw_robot_prefix(robot)):
        try:
            key = ids.raw_log_key(o.key)
        except ids.InvalidIdentifier:
            continue
        if _covers(selector, key):
            entry = found.setdefault(key, {"key": key, "sha256": None, "size": 0, "present": True})
            entry["size"] += o.size
    for key, t in deleter.tombstoned(lake, [robot], covers=lambda k: _covers(selector, k)).items():
        if _covers(selector, key) and key not in found:
            found[key] = {"key": key, "sha256": t["sha256"], "size": t["size"], "present": False}
    for day in sorted({ids.parse_raw_key(k.rstrip("/"))[1] for k in found}):
        mkey = layout.manifest_key(robot, day)
        if lake.exists(mkey):
            for f in lake.read_json(mkey).get("files", []):
                if f["key"] in found and found[f["key"]]["present"]:
                    found[f["key"]]["sha256"] = f["sha256"]
    return [found[k] for k in sorted(found)]


def _erased_rows(table: pa.Table, keys: set[str]) -> pa.Array:
    """A boolean mask of the rows of an episode table derived from any of ``keys``."""
    folders = tuple(k for k in keys if k.endswith("/"))
    hits = [any(s in keys or (folders and s.startswith(folders)) for s in (sources or []))
            for sources in table["source_keys"].to_pylist()]
    return pa.array(hits, pa.bool_())


def _episode_rows(lake: Lake, raw_logs: list[dict]) -> tuple[list[dict], list[str]]:
    keys = {r["key"] for r in raw_logs}
    days = sorted({ids.parse_raw_key(k.rstrip("/"))[:2] for k in keys})
    episodes: dict[str, dict] = {}
    archives = []
    for robot, day in days:
        key = f"{layout.episodes_prefix(robot, day)}/{layout.EPISODE_TABLE}"
        if lake.exists(key):
            table = lake.read_parquet(key)
            for row in table.filter(_erased_rows(table, keys)).select(["episode_id", "robot", "date"]).to_pylist():
                episodes[row["episode_id"]] = row
    if lake.exists(CATALOG_KEY):  # a run killed after the robot-day rewrite left catalog rows behind
        table = lake.read_parquet(CATALOG_KEY)
        # Only the robot-days in question are looked at row by row (the catalog is the whole fleet).
        robots = pa.array(sorted({r for r, _ in days}), pa.string())
        dates = pa.array(sorted({d for _, d in days}), pa.string())
        table = table.filter(pc.and_(pc.is_in(table["robot"], value_set=robots), pc.is_in(table["date"], value_set=dates)))
        for row in table.filter(_erased_rows(table, keys)).select(["episode_id", "robot", "date"]).to_pylist():
            episodes.setdefault(row["episode_id"], row)
    for month in sorted({d[:7] + "-01" for _, d in days}):
        key = fleet.archive_key(month)
        if lake.exists(key):
            table = lake.read_parquet(key)
            rows = table.filter(_erased_rows(table, keys)).select(["episode_id", "robot", "date"]).to_pylist()
            if rows:
                archives.append(key)
                for row in rows:
                    episodes[row["episode_id"]] = row
    return sorted(episodes.values(), key=lambda e: (e["robot"], e["date"], e["episode_id"])), archives


def _golden(lake: Lake, keys: set[str]) -> list[dict]:
    """Golden set versions holding scenarios derived from the raw logs (goal, start, fitted dynamics)."""
    out = []
    for o in sorted(lake.list(layout.GOLDEN + "/"), key=lambda o: o.key):
        if not o.key.endswith("/" + layout.GOLDEN_FILE):
            continue
        hits = [e["scenario"]["scenario_id"] for e in lake.read_json(o.key)["scenarios"]
                if {f["key"] for f in e["scenario"].get("source", {}).get("raw_files", [])} & keys]
        if hits:
            out.append({"prefix": o.key.rsplit("/", 1)[0], "scenarios": hits})
    return out


def _downstream(lake: Lake, selector: dict, radius: BlastRadius) -> None:
    try:
        if "raw" in selector:
            result = lineage_index.query(lake, raw=selector["raw"])
        else:
            result = lineage_index.query(lake, robot=selector["robot"], date_from=selector["from"],
                                         date_to=selector["to"])
    except lineage_index.LineageError as exc:
        radius.warnings.append(f"reverse lineage: {exc}")
        return
    radius.warnings += [f"reverse lineage: {w}" for w in result.warnings]
    seen: set[tuple[str, str, str]] = set()
    for n in lineage_index.walk(result.downstream):
        if (n.kind, n.name, n.version) in seen:
            continue
        seen.add((n.kind, n.name, n.version))
        if n.kind == "dataset":
            radius.datasets.append({"name": n.name, "version": n.version, "matched_episodes":
                                    n.detail.get("matched_episodes"),
                                    "present": lake.exists(layout.dataset_manifest_key(n.name, n.version))})
        elif n.kind == "policy":
            radius.policies.append({"name": n.name, "version": n.version,
                                    "registered_model": n.detail.get("registered_model"),
                                    "registered_version": n.detail.get("registered_version")})
        elif n.kind == "release":
            radius.releases.append({"name": n.name, "version": n.version, "prefix": n.detail.get("prefix")})


def blast_radius(lake: Lake, *, raw: str | None = None, robot: str | None = None, date_from: str | None = None,
                 date_to: str | None = None) -> BlastRadius:
    """What an erasure of ``raw`` (a log key) or ``robot`` over [date_from, date_to] would touch.

    Raises:
        ErasureError: a bad selector, or nothing at all to erase (no raw log, no tombstone).
    """
    selector = _selector(raw, robot, date_from, date_to)
    radius = BlastRadius(selector)
    radius.raw_logs = _raw_logs(lake, selector)
    if not radius.raw_logs:
        what = selector.get("raw") or f"robot {selector['robot']} {selector['from']} .. {selector['to']}"
        raise ErasureError(f"nothing to erase: no raw log of {what} in the lake, and none erased before")
    radius.episodes, radius.archives = _episode_rows(lake, radius.raw_logs)
    radius.golden = _golden(lake, {r["key"] for r in radius.raw_logs})
    _downstream(lake, selector, radius)
    return radius


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ErasureError(f"an erasure needs {what}")
    if len(value) > MAX_TEXT:
        raise ErasureError(f"{what} is longer than {MAX_TEXT} characters")
    return value.strip()


def _record(lake: Lake, eid: str, step: str, body: dict, now: Callable[[], dt.datetime]) -> str:
    when = now()
    key = layout.erasure_entry_key(eid, step, when)
    lake.write_json(key, {"schema": ENTRY_SCHEMA, "erasure": eid, "step": step,
                          "at": when.isoformat(timespec="seconds"), **body})
    return key


def read_record(lake: Lake, eid: str) -> list[dict]:
    """Every entry of one erasure's audit trail, oldest first."""
    prefix = layout.erasure_prefix(eid) + "/"
    return [lake.read_json(k) for k in sorted(o.key for o in lake.list(prefix) if o.key.endswith(".json"))]


def list_erasures(lake: Lake) -> list[str]:
    return sorted({o.key[len(layout.ERASURE_PREFIX) + 1:].split("/", 1)[0] for o in lake.list(layout.ERASURE_PREFIX + "/")})


def _without(table: pa.Table, keys: set[str]) -> tuple[pa.Table, set[str]]:
    mask = _erased_rows(table, keys)
    gone = set(table.filter(mask)["episode_id"].to_pylist())
    return table.filter(pc.invert(mask)), gone


def _rewrite_robot_day(lake: Lake, robot: str, day: str, keys: set[str]) -> int:
    """Republish one robot-day folder without the erased episodes (episode table and frames) in one
    atomic folder swap. Returns the episodes removed (0 once done: a re-run changes nothing)."""
    prefix = layout.episodes_prefix(robot, day)
    if not lake.exists(f"{prefix}/{layout.EPISODE_TABLE}"):
        return 0
    table, gone = _without(lake.read_parquet(f"{prefix}/{layout.EPISODE_TABLE}"), keys)
    if not gone:
        return 0
    import pyarrow.parquet as pq

    with staging_dir() as tmp, lake.local_dir(prefix) as current:
        out = tmp / "day"
        out.mkdir()
        for src in current.iterdir():
            if src.is_file() and src.name not in (layout.EPISODE_TABLE, layout.FRAMES):
                (out / src.name).write_bytes(src.read_bytes())
        pq.write_table(table, out / layout.EPISODE_TABLE, compression="zstd")
        frames_path = current / layout.FRAMES
        if frames_path.exists():
            frames = pq.read_table(frames_path)
            keep = pc.invert(pc.is_in(frames["episode_id"], value_set=pa.array(sorted(gone), pa.string())))
            pq.write_table(frames.filter(keep), out / layout.FRAMES, compression="zstd")
        lake.publish_dir(prefix, out, replace=True)
    return len(gone)


def _rewrite_table(lake: Lake, key: str, episode_ids: set[str]) -> int:
    if not lake.exists(key) or not episode_ids:
        return 0
    table = lake.read_parquet(key)
    mask = pc.is_in(table["episode_id"], value_set=pa.array(sorted(episode_ids), pa.string()))
    n = pc.sum(mask).as_py() or 0
    if n:
        lake.write_parquet(key, table.filter(pc.invert(mask)))
    return n


def _rewrite_golden(lake: Lake, radius: BlastRadius, keys: set[str]) -> list[str]:
    """Publish the current golden set without the scenarios derived from the erased logs, point
    golden/current.json at it, then delete every golden version that held them. The scenarios
    are gone, not retired: a retired scenario keeps its content."""
    from flywheel_pipelines.lib.evaluation import golden as gold

    if not radius.golden:
        return []
    removed: list[str] = []
    if lake.exists(layout.GOLDEN_POINTER):
        current = lake.read_json(layout.GOLDEN_POINTER)["prefix"]
        entries = gold.read_document(lake.read_json(f"{current}/{layout.GOLDEN_FILE}"))
        kept = [e for e in entries if not {f["key"] for f in e["scenario"].get("source", {}).get("raw_files", [])} & keys]
        removed = sorted(e["scenario"]["scenario_id"] for e in entries if e not in kept)
        if removed:
            doc = gold.golden_document(kept)
            prefix = layout.golden_prefix(doc["version"])
            with staging_dir() as tmp:
                (tmp / layout.GOLDEN_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
                lake.publish_dir(prefix, tmp)
            lake.write_json(layout.GOLDEN_POINTER, {"version": doc["version"], "prefix": prefix})
    for g in radius.golden:
        deleter.delete_derived(lake, g["prefix"])
    return removed or sorted({s for g in radius.golden for s in g["scenarios"]})


def erase(lake: Lake, radius: BlastRadius, *, reason: str, by: str,
          now: Callable[[], dt.datetime] = _now) -> dict:
    """Carry out an erasure planned by :func:`blast_radius`; returns the ``completed`` entry.

    Raises:
        ErasureError: no reason or person.
        deleter.DeletionError: a raw log changed since it was planned (nothing of it deleted).
    """
    reason, by = _text(reason, "a reason (--reason)"), _text(by, "a person (--by)")
    eid = radius.erasure_id
    _record(lake, eid, "requested", {"selector": radius.selector, "reason": reason, "by": by,
                                     "blast_radius": radius.to_json()}, now)
    tombstones = [deleter.delete_raw_log(lake, r["key"], status="erased", rule=f"erasure {eid}",
                                         expected_sha256=r["sha256"] if r["present"] else None, now=now)
                  for r in radius.raw_logs]
    faults.point("governance.erase.raw_deleted")
    keys = {r["key"] for r in radius.raw_logs}
    episode_ids = {e["episode_id"] for e in radius.episodes}
    removed = sum(_rewrite_robot_day(lake, robot, day, keys)
                  for robot, day in sorted({(e["robot"], e["date"]) for e in radius.episodes}))
    archive_rows = sum(_rewrite_table(lake, key, episode_ids) for key in radius.archives)
    catalog_rows = _rewrite_table(lake, CATALOG_KEY, episode_ids)
    golden_removed = _rewrite_golden(lake, radius, keys)
    faults.point("governance.erase.rows_rewritten")
    requests, deleted_files = [], 0
    for d in radius.datasets:
        prefix = layout.dataset_prefix(d["name"], d["version"])
        if lake.exists(f"{prefix}/{layout.MANIFEST}"):
            spec = lake.read_json(f"{prefix}/{layout.MANIFEST}")["spec"]
            request, _, _ = rebuilds.request_rebuild(lake, name=d["name"], version=d["version"], spec=spec,
                                                     cause=f"erasure:{eid}", why=f"held erased episodes ({eid})",
                                                     now=now)
            requests.append(request["id"])
            deleted_files += deleter.delete_derived(lake, prefix)
        else:  # deleted by a run that was killed after it: the request is in the lake already
            requests.append(rebuilds.request_id(d["name"], d["version"], f"erasure:{eid}"))
    body = {"reason": reason, "by": by,
            "deleted": {"raw_logs": [{"key": t.key, "sha256": t.sha256, "size": t.size} for t in tombstones],
                        "episode_rows": removed, "archive_rows": archive_rows, "catalog_rows": catalog_rows,
                        "dataset_versions": [f"{d['name']}/{d['version']}" for d in radius.datasets],
                        "golden_scenarios": golden_removed,
                        "golden_sets": [g["prefix"] for g in radius.golden],
                        "dataset_files": deleted_files},
            "marked": {"policies": [f"{p['name']}/{p['version']}" for p in radius.policies],
                       "releases": [f"{r['name']}/{r['version']}" for r in radius.releases]},
            "rebuild_requests": requests, "counts": radius.counts()}
    _record(lake, eid, "completed", body, now)
    return {"erasure": eid, **body}


def render(radius: BlastRadius, *, limit: int = 20) -> str:
    """The blast radius as people read it before saying yes (ids, hashes and counts only)."""
    c = radius.counts()
    sel = radius.selector
    what = sel.get("raw") or f"robot {sel['robot']} from {sel['from']} to {sel['to']}"
    lines = [f"erasure {radius.erasure_id} of {what}",
             f"  raw logs: {c['raw_logs']} ({c['raw_bytes']} bytes) - deleted (a tombstone each)"]
    lines += [f"    {r['key']}  sha256 {(r['sha256'] or '?')[:16]}  {r['size']} bytes"
              + ("" if r["present"] else "  [already erased]") for r in radius.raw_logs[:limit]]
    lines.append(f"  episode rows: {c['episodes']} on {c['robot_days']} robot-days - removed from the robot-day "
                 f"tables, {c['archives']} month archives and the catalog")
    lines += [f"    {e['episode_id']}" for e in radius.episodes[:limit]]
    if len(radius.episodes) > limit:
        lines.append(f"    ... and {len(radius.episodes) - limit} more (--json lists all)")
    lines.append(f"  golden scenarios: {c['golden_scenarios']} in {len(radius.golden)} golden sets - removed "
                 "(the current set republished without them, the sets holding them deleted)")
    lines += [f"    {s}" for g in radius.golden for s in g["scenarios"][:limit]]
    lines.append(f"  dataset versions: {c['datasets']} - deleted, each rebuilt without them from its own spec")
    lines += [f"    {layout.dataset_prefix(d['name'], d['version'])} ({d['matched_episodes']} of its episodes)"
              + ("" if d["present"] else "  [already deleted]") for d in radius.datasets]
    lines.append(f"  policies: {c['policies']} - marked (kept): trained on erased data")
    lines += [f"    policy {p['name']}/{p['version']}"
              + (f" (registered {p['registered_model']} v{p['registered_version']})" if p.get("registered_model") else "")
              for p in radius.policies]
    lines.append(f"  releases: {c['releases']} - marked (kept)")
    lines += [f"    release {r['name']}/{r['version']}" for r in radius.releases]
    lines += [f"  warning: {w}" for w in radius.warnings]
    return "\n".join(lines)


def deleted_by(lake: Lake, dataset: str) -> str | None:
    """The erasure that deleted dataset version ``name/version``, or None."""
    for eid in list_erasures(lake):
        for entry in read_record(lake, eid):
            if entry["step"] == "completed" and dataset in entry["deleted"]["dataset_versions"]:
                return eid
    return None
