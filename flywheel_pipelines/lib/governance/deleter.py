"""The one code path in the project that deletes raw bytes, and the tombstone it leaves.

Raw logs are immutable everywhere else (``Lake.write_bytes``/``publish_dir`` refuse ``raw/``).
Retention and erasure call :func:`delete_raw_log`, which first writes a tombstone (key, sha256,
size, topics, when, why: ids and hashes, never content) and only then deletes the bytes. A run
killed between the two leaves a tombstone over bytes still present; the next call with the same
log finishes the deletion (the tombstone is not rewritten), so a re-run is always safe.
``flywheel_pipelines_tests/lib/test_governance_deleter.py`` fails if any other module deletes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from flywheel_pipelines.lib import faults, ids, layout
from flywheel_pipelines.lib.governance.policy import classify
from flywheel_pipelines.lib.storage import FOLDER_MANIFEST, RAW_PREFIX, Lake, LocalLake, S3Lake

TOMBSTONE_SCHEMA = "flywheel-tombstone-v1"
STATUSES = layout.TOMBSTONE_STATUSES


class DeletionError(RuntimeError):
    """A deletion that must not happen (bad key, content changed, unknown lake type)."""


@dataclass(frozen=True)
class Tombstone:
    key: str
    sha256: str
    size: int
    status: str  # expired (retention) | erased (erasure request)
    rule: str  # "camera: 30 days (policy v2)" | "erasure er-..."
    deleted_at: str
    topics: tuple[dict, ...]
    record_key: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _objects(lake: Lake, key: str) -> list:
    """The objects of one raw log: the file, or every file of a rosbag2 folder (key ending in /)."""
    if key.endswith("/"):
        return lake.list(key)
    return [o for o in lake.list(key.rsplit("/", 1)[0] + "/") if o.key == key]


def _content_sha256(lake: Lake, key: str, objects: list) -> str:
    """sha256 of a file log, or for a folder the fingerprint of its (name, sha256) pairs."""
    def one(k: str) -> str:
        digest = hashlib.sha256()
        with lake.local_path(k) as path, open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()
    if not key.endswith("/"):
        return one(key)
    # The manifest's folder hash (lib/rosbag/manifest.py): sha256 of a sorted sha256sum listing.
    listing = "".join(f"{one(o.key)}  {rel}\n" for rel, o in sorted((o.key[len(key):], o) for o in objects))
    return hashlib.sha256(listing.encode()).hexdigest()


def _remove(lake: Lake, keys: list[str]) -> None:
    if isinstance(lake, LocalLake):
        for k in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lake.path(k))
    elif isinstance(lake, S3Lake):
        lake._delete(keys)  # noqa: SLF001 - the lake's batched DeleteObjects, behind this audited path
    else:
        raise DeletionError(f"cannot delete from a {type(lake).__name__}")


def read_tombstones(lake: Lake, robot: str) -> list[dict]:
    """Every tombstone of one robot's raw logs."""
    prefix = layout.tombstone_robot_prefix(robot)
    return [lake.read_json(o.key) for o in sorted(lake.list(prefix), key=lambda o: o.key) if o.key.endswith(".json")]


def all_statuses(lake: Lake) -> dict[str, str]:
    """{raw log key: expired | erased} of every tombstone, from one listing (names carry both).
    A rosbag2 folder's log is given twice, with and without its trailing /."""
    out: dict[str, str] = {}
    for o in lake.list(layout.TOMBSTONE_PREFIX + "/"):
        parsed = layout.parse_tombstone_key(o.key)
        if parsed is not None:
            key, status = parsed
            for k in (key, key + "/"):
                out[k] = "erased" if "erased" in (status, out.get(k)) else status
    return out


def statuses(lake: Lake, raw_keys) -> dict[str, str]:
    """{raw key: expired | erased} for the keys given that have a tombstone."""
    wanted = set(raw_keys)
    return {k: s for k, s in all_statuses(lake).items() if k in wanted} if wanted else {}


def tombstoned(lake: Lake, robots, *, covers: Callable[[str], bool] = lambda key: True) -> dict[str, dict]:
    """{raw key: its tombstone} for the robots given, reading only the tombstones whose log
    ``covers`` accepts (their names say which log they are)."""
    out: dict[str, dict] = {}
    for robot in sorted(set(robots)):
        for o in sorted(lake.list(layout.tombstone_robot_prefix(robot)), key=lambda o: o.key):
            parsed = layout.parse_tombstone_key(o.key)
            if parsed is not None and (covers(parsed[0]) or covers(parsed[0] + "/")):
                t = lake.read_json(o.key)
                out[t["key"]] = t
    return out


def delete_raw_log(lake: Lake, key: str, *, status: str, rule: str, topics: list[dict] | None = None,
                   expected_sha256: str | None = None, now: Callable[[], dt.datetime] = _now) -> Tombstone:
    """Delete one raw log (file or rosbag2 folder) behind a tombstone. Idempotent.

    Args:
        key: the raw log key (``raw/robot=<id>/date=<day>/<file>`` or ``.../<bag>/``), validated.
        status: ``expired`` (retention) or ``erased`` (an erasure request).
        rule: why, as people read it (the policy rule or the erasure id).
        topics: the log's topics from its manifest ({topic, type}); each gets its class.
        expected_sha256: the content the caller decided on (from the manifest); other bytes at the
            key (a re-upload since) are refused, not deleted.

    Raises:
        DeletionError: an invalid key or status, changed content, or a log neither in the lake
            nor tombstoned.
    """
    if status not in STATUSES:
        raise DeletionError(f"unknown deletion status {status!r} (one of {', '.join(STATUSES)})")
    try:
        ids.parse_raw_key(key.rstrip("/"))
    except ids.InvalidIdentifier as exc:
        raise DeletionError(str(exc)) from None
    if key.endswith("/") and ids.raw_log_key(key + "x") != key:
        raise DeletionError(f"not a raw log folder key {key!r}")
    objects = _objects(lake, key)
    robot = ids.parse_raw_key(key.rstrip("/"))[0]
    if not objects:
        done = tombstoned(lake, [robot], covers=lambda k: k == key)
        if key in done:
            return _tombstone(done[key], "")
        raise DeletionError(f"raw log {key} is not in the lake and has no tombstone")
    sha = _content_sha256(lake, key, objects)
    if expected_sha256 is not None and sha != expected_sha256:
        raise DeletionError(f"raw log {key} holds other bytes (sha256 {sha[:16]}) than the ones decided on "
                            f"({expected_sha256[:16]}): a re-upload since; not deleted")
    record_key = layout.tombstone_key(key, sha, status)
    existing = [k for k in (layout.tombstone_key(key, sha, s) for s in STATUSES) if lake.exists(k)]
    if existing:  # a killed run's tombstone (or retention's, before an erasure): never rewritten
        record_key = existing[0]
        doc = lake.read_json(record_key)
    else:
        doc = {"schema": TOMBSTONE_SCHEMA, "key": key, "sha256": sha, "size": sum(o.size for o in objects),
               "files": len(objects), "status": status, "rule": rule,
               "deleted_at": now().isoformat(timespec="seconds"),
               "topics": [{"topic": t["topic"], "type": t.get("type"), "class": classify(t.get("type") or "")}
                          for t in (topics or [])]}
        lake.write_json(record_key, doc)
    faults.point("governance.delete.tombstoned")
    _remove(lake, [o.key for o in objects])
    return _tombstone(doc, record_key)


def _tombstone(doc: dict, record_key: str) -> Tombstone:
    return Tombstone(doc["key"], doc["sha256"], doc["size"], doc["status"], doc["rule"], doc["deleted_at"],
                     tuple(doc.get("topics") or ()), record_key or layout.tombstone_key(doc["key"], doc["sha256"], doc["status"]))


def delete_derived(lake: Lake, prefix: str) -> int:
    """Delete a derived artifact folder (a dataset version holding erased content); never raw/.
    Returns the number of files removed."""
    prefix = prefix.rstrip("/") + "/"
    if prefix.startswith(RAW_PREFIX) or prefix.startswith(layout.GOVERNANCE_PREFIX + "/"):
        raise DeletionError(f"refusing to delete {prefix!r}: raw logs and governance records go through their own paths")
    keys = [o.key for o in lake.list(prefix)]
    if isinstance(lake, LocalLake):
        target = lake.path(prefix.rstrip("/"))
        if target.is_symlink():
            raise DeletionError(f"{lake.uri(prefix)}: a symbolic link; not deleted")
        shutil.rmtree(target, ignore_errors=True)
    elif isinstance(lake, S3Lake):
        # Every object under the prefix, hidden ones too (the folder manifest, a republished
        # folder's generation copies); the manifest first, so readers see the folder absent at once.
        stored = [o.key for o in lake._iter_all(prefix)]  # noqa: SLF001 - hidden objects are content too
        manifest = [k for k in stored if k.endswith("/" + FOLDER_MANIFEST)]
        _remove(lake, manifest)
        _remove(lake, [k for k in stored if k not in manifest])
    else:
        raise DeletionError(f"cannot delete from a {type(lake).__name__}")
    return len(keys)
