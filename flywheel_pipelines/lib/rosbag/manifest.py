"""A manifest of one robot log: what it holds, whether it is intact, and what was lost if not.

:func:`inspect_log` reads every message of a log (it does not trust the file's own index or
summary) and returns a :class:`FileManifest` with a verdict:

* ``"ok"``: every message read, every check passed;
* ``"recovered"``: damage found, but messages were read; ``reason`` says what is wrong and
  ``lost_messages`` how many messages are known to be missing (``None`` when that cannot be
  counted, e.g. a truncated MCAP has no summary to compare with);
* ``"rejected"``: nothing usable (empty, not a log, no readable message).

Supported inputs, recognised by content rather than by name:

* an MCAP file: read with the tolerant, CRC-checking reader of :mod:`.reader`, and its counts
  compared with the file's summary statistics;
* a rosbag2 folder (``metadata.yaml`` plus ``.mcap`` or ``.db3`` files): MCAP storage is read
  file by file as above, sqlite3 storage through ``rosbags``; counts are compared with the
  ``metadata.yaml`` topic counts;
* a ROS 1 ``.bag`` file, read through ``rosbags`` and compared with the bag's own index counts.

For a folder, ``size`` is the total size of its regular files and ``sha256`` is the SHA-256 of a
``sha256sum``-style listing of them: one line ``"<hex sha256 of the file>  <relative path>\\n"``
per file, paths POSIX-style and sorted by code point. The same digest comes out of
``cd FOLDER && find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum |
sha256sum``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flywheel_pipelines.lib.rosbag.reader import MCAP_MAGIC, LogReadError, ReadStats, _McapScan

__all__ = ["VERDICTS", "FileManifest", "TopicStats", "inspect_log"]

VERDICTS = ("ok", "recovered", "rejected")

_ROS1_MAGIC = b"#ROSBAG V2.0"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class TopicStats:
    """Message statistics of one topic.

    Attributes:
        topic: Topic name.
        type: Message type, e.g. ``"sensor_msgs/msg/JointState"`` (ROS 1 types are given in the
            same ``pkg/msg/Name`` form, as ``rosbags`` reports them).
        encoding: Serialization: ``"cdr"`` for ROS 2, ``"ros1"`` for ROS 1 bags.
        count: Messages read.
        first_ns: Log time of the first message (ns since the epoch); 0 when ``count`` is 0.
        last_ns: Log time of the last message; 0 when ``count`` is 0.
        rate_hz: ``(count - 1) / ((last_ns - first_ns) / 1e9)``; 0.0 when that is undefined.
    """

    topic: str
    type: str
    encoding: str
    count: int
    first_ns: int
    last_ns: int
    rate_hz: float


@dataclass(frozen=True)
class FileManifest:
    """What one raw log holds and whether it can be trusted.

    Attributes:
        key: The lake key or file name the log was read as.
        sha256: Hex SHA-256 of the file (of a folder: see the module docstring).
        size: Size in bytes (of a folder: of all its files).
        verdict: ``"ok"``, ``"recovered"`` or ``"rejected"``.
        reason: For ``"recovered"`` and ``"rejected"``: the file and the problem(s) found.
        topics: Per-topic statistics, sorted by topic; declared topics without messages have
            ``count`` 0.
        message_count: Messages read.
        start_ns: Earliest log time read, or None without messages.
        end_ns: Latest log time read, or None without messages.
        lost_messages: For ``"recovered"``: messages known to be lost (the file's own counts
            minus those read), ``None`` when unknown; 0 otherwise.
    """

    key: str
    sha256: str
    size: int
    verdict: str
    reason: str | None
    topics: tuple[TopicStats, ...]
    message_count: int
    start_ns: int | None
    end_ns: int | None
    lost_messages: int | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_dict` turns it back into an equal manifest."""
        out = asdict(self)
        out["topics"] = [asdict(t) for t in self.topics]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileManifest:
        """Rebuilds a manifest from :meth:`to_dict`'s output (e.g. after a JSON round trip).

        Args:
            d: The dict.

        Returns:
            The manifest.
        """
        return cls(
            key=d["key"],
            sha256=d["sha256"],
            size=int(d["size"]),
            verdict=d["verdict"],
            reason=d.get("reason"),
            topics=tuple(
                TopicStats(
                    topic=t["topic"],
                    type=t["type"],
                    encoding=t["encoding"],
                    count=int(t["count"]),
                    first_ns=int(t["first_ns"]),
                    last_ns=int(t["last_ns"]),
                    rate_hz=float(t["rate_hz"]),
                )
                for t in d.get("topics", ())
            ),
            message_count=int(d["message_count"]),
            start_ns=d.get("start_ns"),
            end_ns=d.get("end_ns"),
            lost_messages=d.get("lost_messages", 0),
        )


def inspect_log(path: str | Path, *, key: str | None = None) -> FileManifest:
    """Reads a whole log and describes it; damaged input gives a verdict, never an exception.

    Args:
        path: An MCAP file, a ROS 1 ``.bag`` file, or a rosbag2 folder.
        key: The name to record (e.g. the lake key the file was downloaded from); also the name
            the ``reason`` uses. Defaults to the file or folder name (``reason`` then uses the
            full path, which is what a person debugging locally wants to see).

    Returns:
        The manifest. A zero-length, non-log, truncated or corrupt input is ``"rejected"`` or
        ``"recovered"`` with a ``reason`` naming the file and the problem.

    Raises:
        FileNotFoundError: ``path`` does not exist (a caller error, not bad input).
    """
    p = Path(path)
    label = key if key is not None else str(p)
    key = key if key is not None else p.name
    if p.is_dir():
        sha256, size = _hash_folder(p)
        reading = _guard(label, lambda: _read_folder(p))
        return _manifest(key, label, sha256, size, reading)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such log")
    sha256, size = _hash_file(p)
    with open(p, "rb") as fh:
        head = fh.read(16)
    if size == 0:
        reading = _Reading(fatal="empty file (0 bytes)")
    elif head.startswith(MCAP_MAGIC):
        reading = _guard(label, lambda: _read_mcap(p, label))
    elif head.startswith(_ROS1_MAGIC):
        reading = _guard(label, lambda: _read_rosbags(p, "ros1"))
    elif head.startswith(_SQLITE_MAGIC):
        reading = _Reading(
            fatal="a bare rosbag2 sqlite3 (.db3) file; inspect its folder, with metadata.yaml"
        )
    else:
        reading = _Reading(fatal=f"not a recognised log format (starts with {head!r})")
    return _manifest(key, label, sha256, size, reading)


# -- accumulating ---------------------------------------------------------------------------------


@dataclass
class _TopicAcc:
    type: str = ""
    encoding: str = ""
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0

    def add(self, log_time_ns: int) -> None:
        if self.count == 0 or log_time_ns < self.first_ns:
            self.first_ns = log_time_ns
        if self.count == 0 or log_time_ns > self.last_ns:
            self.last_ns = log_time_ns
        self.count += 1

    def merge(self, other: _TopicAcc) -> None:
        if other.count:
            if self.count == 0 or other.first_ns < self.first_ns:
                self.first_ns = other.first_ns
            if self.count == 0 or other.last_ns > self.last_ns:
                self.last_ns = other.last_ns
            self.count += other.count
        self.type = self.type or other.type
        self.encoding = self.encoding or other.encoding

    def stats(self, topic: str) -> TopicStats:
        span_s = (self.last_ns - self.first_ns) / 1e9
        rate = (self.count - 1) / span_s if self.count > 1 and span_s > 0 else 0.0
        return TopicStats(
            topic=topic,
            type=self.type,
            encoding=self.encoding,
            count=self.count,
            first_ns=self.first_ns,
            last_ns=self.last_ns,
            rate_hz=rate,
        )


@dataclass
class _Reading:
    """What reading one log (or one file of a folder) found, before it becomes a manifest."""

    topics: dict[str, _TopicAcc] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lost: int | None = 0
    fatal: str | None = None  # nothing could be read, and why

    def topic(self, name: str, type_: str, encoding: str) -> _TopicAcc:
        acc = self.topics.get(name)
        if acc is None:
            acc = self.topics[name] = _TopicAcc(type=type_, encoding=encoding)
        elif not acc.type:
            acc.type, acc.encoding = type_, encoding
        return acc

    @property
    def message_count(self) -> int:
        return sum(a.count for a in self.topics.values())

    def add_lost(self, count: int | None) -> None:
        if count is None:
            self.lost = None
        elif self.lost is not None:
            self.lost += count


def _guard(label: str, read: Callable[[], _Reading]) -> _Reading:
    """Runs a reader, turning an unforeseen exception into a rejection instead of a crash.

    The readers below already handle the damage they know of; this catches what third-party
    parsers (rosbags, sqlite3, yaml) raise on inputs nobody anticipated, so that one odd upload
    cannot fail a whole ingestion run.
    """
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return _Reading(fatal=f"unreadable ({type(exc).__name__}: {exc})")


def _manifest(key: str, label: str, sha256: str, size: int, reading: _Reading) -> FileManifest:
    topics = tuple(reading.topics[name].stats(name) for name in sorted(reading.topics))
    count = reading.message_count
    with_messages = [t for t in topics if t.count]
    start = min((t.first_ns for t in with_messages), default=None)
    end = max((t.last_ns for t in with_messages), default=None)
    problems = "; ".join(reading.problems)
    if reading.fatal is not None:
        verdict, reason = "rejected", f"{label}: {reading.fatal}"
        if problems:
            reason += f" ({problems})"
    elif count == 0:
        verdict = "rejected"
        reason = (
            f"{label}: {problems}; no message could be read"
            if problems
            else f"{label}: contains no messages"
        )
    elif reading.problems:
        verdict, reason = "recovered", f"{label}: {problems} (kept {count} messages)"
    else:
        verdict, reason = "ok", None
    return FileManifest(
        key=key,
        sha256=sha256,
        size=size,
        verdict=verdict,
        reason=reason,
        topics=topics,
        message_count=count,
        start_ns=start,
        end_ns=end,
        lost_messages=reading.lost if verdict == "recovered" else 0,
    )


# -- MCAP -----------------------------------------------------------------------------------------


def _read_mcap(path: Path, label: str) -> _Reading:
    reading = _Reading()
    stats = ReadStats(source=label)
    try:
        with _McapScan(path, label, None, stats) as scan:
            scan.index()
            for raw, channel, _schema in scan.messages():
                reading.topic(raw.topic, raw.schema_name, channel.message_encoding).add(
                    raw.log_time_ns
                )
            scan.verify_data_crc()
            # Channels that never got a message still document what the robot was set to record.
            for channel in scan.channels.values():
                schema = scan.schemas.get(channel.schema_id) if channel.schema_id else None
                reading.topic(
                    channel.topic, schema.name if schema else "", channel.message_encoding
                )
    except LogReadError as exc:
        reading.fatal = exc.problem or str(exc)
    reading.problems.extend(stats.problems)
    reading.lost = stats.lost_messages
    return reading


# -- rosbag2 folders ------------------------------------------------------------------------------


def _read_folder(folder: Path) -> _Reading:
    metadata_path = folder / "metadata.yaml"
    info: dict[str, Any] | None = None
    problems: list[str] = []
    if metadata_path.is_file():
        info, problem = _load_metadata(metadata_path)
        if problem:
            problems.append(problem)
    else:
        # rosbag2 writes metadata.yaml when recording stops, so a killed recorder leaves none.
        problems.append("no metadata.yaml (the recording was probably not stopped cleanly)")

    storage = (info or {}).get("storage_identifier") or ""
    mcap_files = _listed_files(folder, info, ".mcap", problems)
    if storage == "sqlite3" or (not mcap_files and list(folder.glob("*.db3"))):
        if info is None:
            return _Reading(
                problems=problems,
                fatal="a sqlite3 rosbag2 folder cannot be read without its metadata.yaml",
            )
        reading = _read_rosbags(folder, "rosbag2")
    elif mcap_files:
        reading = _Reading()
        for file in mcap_files:
            part = _read_mcap(file, f"{folder.name}/{file.name}")
            for name, acc in part.topics.items():
                reading.topic(name, acc.type, acc.encoding).merge(acc)
            if part.fatal is not None:
                reading.problems.append(f"{file.name}: {part.fatal}")
                reading.add_lost(None)
            reading.problems.extend(f"{file.name}: {p}" for p in part.problems)
            reading.add_lost(part.lost)
    else:
        return _Reading(problems=problems, fatal="a folder without a readable rosbag2 bag")
    reading.problems[:0] = problems
    if info is not None:
        _compare_with_metadata(reading, info)
    return reading


def _load_metadata(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
        info = document["rosbag2_bagfile_information"]
        if not isinstance(info, dict):
            raise TypeError("rosbag2_bagfile_information is not a mapping")
    except Exception as exc:  # noqa: BLE001 - yaml and key errors alike mean "unusable"
        return None, f"metadata.yaml unreadable ({type(exc).__name__}: {exc})"
    return info, None


def _listed_files(
    folder: Path, info: dict[str, Any] | None, suffix: str, problems: list[str]
) -> list[Path]:
    """The bag's storage files, in the order ``metadata.yaml`` lists them."""
    listed = (info or {}).get("relative_file_paths") or []
    files: list[Path] = []
    for relative in listed:
        candidates = (folder / relative, folder / Path(relative).name)
        # Some tools record paths relative to the folder's parent (``bag/bag_0.db3``).
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            problems.append(f"{relative}: listed in metadata.yaml but missing")
        elif found.suffix == suffix:
            files.append(found)
    if not listed:
        files = sorted(folder.glob(f"*{suffix}"))
    return files


def _compare_with_metadata(reading: _Reading, info: dict[str, Any]) -> None:
    """Checks the counts read against ``metadata.yaml``, which then decides the loss."""
    expected: dict[str, int] = {}
    for entry in info.get("topics_with_message_count") or []:
        meta = entry.get("topic_metadata") or {}
        name = meta.get("name")
        if name is None:
            continue
        reading.topic(name, meta.get("type", ""), meta.get("serialization_format", ""))
        expected[name] = expected.get(name, 0) + int(entry.get("message_count") or 0)
    if not expected:
        return
    read = {name: acc.count for name, acc in reading.topics.items()}
    missing = {t: n - read.get(t, 0) for t, n in expected.items() if n > read.get(t, 0)}
    extra = {t: n - expected.get(t, 0) for t, n in read.items() if n > expected.get(t, 0)}
    if missing:
        reading.problems.append(
            f"read {sum(read.values())} of the {sum(expected.values())} messages metadata.yaml "
            f"lists ({_describe(missing)} missing)"
        )
        reading.lost = sum(missing.values())
    elif extra:
        reading.problems.append(
            f"read more messages than metadata.yaml lists ({_describe(extra)} extra); "
            "metadata.yaml is stale"
        )
    elif reading.lost is None:
        reading.lost = 0


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{topic}: {n}" for topic, n in sorted(counts.items()))


# -- rosbags (ROS 1 bags, sqlite3 rosbag2) ---------------------------------------------------------


def _read_rosbags(path: Path, kind: str) -> _Reading:
    """Reads a ROS 1 bag or a rosbag2 folder with ``rosbags``, tolerating a mid-way failure."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    reading = _Reading()
    # Only consulted for rosbag2 bags that embed no message definitions (sqlite3 from Foxy);
    # counting never deserializes, so the exact ROS distribution does not matter.
    typestore = get_typestore(Stores.LATEST) if kind == "rosbag2" else None
    try:
        reader = AnyReader([path], default_typestore=typestore)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several unrelated types
        reading.fatal = f"rosbags cannot open it ({type(exc).__name__}: {exc})"
        return reading
    try:
        expected: dict[str, int] = {}
        by_connection: dict[int, _TopicAcc] = {}
        for connection in reader.connections:
            encoding = getattr(connection.ext, "serialization_format", None) or kind
            if kind == "ros1":
                encoding = "ros1"
            acc = reading.topic(connection.topic, connection.msgtype, encoding)
            by_connection[connection.id] = acc
            expected[connection.topic] = expected.get(connection.topic, 0) + connection.msgcount
        read = 0
        try:
            for connection, timestamp, _data in reader.messages():
                by_connection[connection.id].add(timestamp)
                read += 1
        except Exception as exc:  # noqa: BLE001 - damage surfaces as sqlite3/struct/rosbags errors
            reading.problems.append(
                f"reading stopped after {read} messages ({type(exc).__name__}: {exc})"
            )
            reading.lost = None
        if kind == "ros1":
            # rosbag2 folders are checked against metadata.yaml by the caller instead.
            _compare_counts(reading, expected, "the bag index")
    finally:
        # Closing a broken bag may fail too; that must not mask what was read.
        with contextlib.suppress(Exception):
            reader.close()
    return reading


def _compare_counts(reading: _Reading, expected: dict[str, int], source: str) -> None:
    read = {name: acc.count for name, acc in reading.topics.items()}
    missing = {t: n - read.get(t, 0) for t, n in expected.items() if n > read.get(t, 0)}
    if missing:
        reading.problems.append(
            f"read {sum(read.values())} of the {sum(expected.values())} messages {source} "
            f"lists ({_describe(missing)} missing)"
        )
        reading.lost = sum(missing.values())


# -- hashing --------------------------------------------------------------------------------------


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _folder_files(folder: Path) -> Iterable[tuple[str, Path]]:
    files = [(p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file()]
    return sorted(files)


def _hash_folder(folder: Path) -> tuple[str, int]:
    listing = hashlib.sha256()
    total = 0
    for relative, file in _folder_files(folder):
        sha256, size = _hash_file(file)
        listing.update(f"{sha256}  {relative}\n".encode())
        total += size
    return listing.hexdigest(), total
