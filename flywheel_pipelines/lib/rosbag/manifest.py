"""A manifest of one robot log: what it holds, whether it is intact, and what was lost if not.

:func:`inspect_log` reads every message of a log (it does not trust the file's own index or
summary) and returns a :class:`FileManifest` with a verdict:

* ``"ok"``: every message read, every check passed;
* ``"recovered"``: damage found, but messages were read; ``reason`` says what is wrong,
  ``lost_messages`` how many messages are known to be missing (``None`` when that cannot be
  counted, e.g. a truncated MCAP has no summary to compare with) and ``lost_ranges`` the log-time
  intervals the lost messages fall in, where those are known;
* ``"empty"``: a valid log that holds no messages (not damage, and not data either);
* ``"rejected"``: damaged beyond use (a zero-length file, not a log, no readable message).

``lost_messages`` is always the number the ``reason`` states (for ``"rejected"`` too).

:func:`read_log` is the walk over a log's messages that both this manifest and standardization
(:func:`.columnar.read_columns`) use, so what the manifest counts per topic is what ingest reads.

Damage never raises: whatever can still be read is counted, and the raw input is only ever
opened for reading (a sqlite3 file is opened ``immutable``; one with a write-ahead log is read
from a temporary copy, so that the log is applied without touching the original).

Supported inputs, recognised by content rather than by name:

* an MCAP file: read with the tolerant, CRC-checking reader of :mod:`.reader`, and its counts
  compared with the file's summary statistics;
* a rosbag2 folder (``metadata.yaml`` plus ``.mcap`` or ``.db3`` files): each storage file is
  read on its own (MCAP as above, sqlite3 with SQL, or page by page when SQLite reports the file
  malformed), and the counts are compared with the ``metadata.yaml`` topic counts. A file that
  ``metadata.yaml`` lists but that is absent makes the bag ``"recovered"`` if the other parts
  read, with the gap between its neighbours as the lost range. A folder without
  ``metadata.yaml`` (rosbag2 writes it when recording stops, so a killed recorder leaves none) is
  read from the storage files found and is ``"recovered"``, never ``"ok"``: ``ok`` means every
  check passed, and the bag-level checks (which parts exist, how many messages each topic has)
  cannot be made without it; ``ros2 bag`` itself refuses such a folder until it is reindexed;
* a rosbag2 sqlite3 file on its own: read as a part of a folder without ``metadata.yaml``;
* a ROS 1 ``.bag`` file, read through ``rosbags`` and compared with the bag's own index counts;
  a bag ``rosbags`` cannot open (its index is written last, so a killed recorder leaves none) is
  walked record by record instead, chunks decompressed as far as their data goes.

Each topic records whether ingest can decode its channel (``decodable``, and why not), judged
from its encodings and schema (:func:`.columnar.decoder_problem`); a topic that cannot be decoded
counts all its messages ``undecodable``. With ``decode=True`` every message is also decoded in
full (CDR, ROS 1, JSON, protobuf; see :mod:`.structured`) and each topic counts the payloads that
fail. Either way an undecodable topic is not damage: it does not change the verdict.

For a folder, ``size`` is the total size of its regular files and ``sha256`` is the SHA-256 of a
``sha256sum``-style listing of them: one line ``"<hex sha256 of the file>  <relative path>\\n"``
per file, paths POSIX-style and sorted by code point. The same digest comes out of
``cd FOLDER && find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum |
sha256sum``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import mmap
import re
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from flywheel_pipelines.lib.rosbag.columnar import ChannelInfo, ColumnSink, decoder_problem, scan_mcap
from flywheel_pipelines.lib.rosbag.mcap_format import MCAP_MAGIC
from flywheel_pipelines.lib.rosbag.report import LogReadError, _hex_hint, _merge_ranges

__all__ = ["DAY_VERDICTS", "DUPLICATE", "VERDICTS", "FileManifest", "TopicStats", "inspect_log", "mark_duplicates", "read_log"]

# ok: every message read, every check passed; recovered: damaged, but messages were read;
# empty: a valid log without messages; rejected: damaged beyond use (nothing could be read).
VERDICTS = ("ok", "recovered", "empty", "rejected")
# A robot-day's manifest adds one: a log whose bytes another log of the day already holds (a
# retried upload under a second name). It is recorded, and read once, through the other.
DUPLICATE = "duplicate"
DAY_VERDICTS = (*VERDICTS, DUPLICATE)

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
        undecodable: Messages of ``count`` known not to decode (see the module docstring for
            when this is checked); 0 when all decode or when it was not checked.
        decode_error: Why, for the first of them; ``None`` when ``undecodable`` is 0.
        schema_encoding: The schema's encoding (``ros2msg``, ``ros1msg``, ``jsonschema``,
            ``protobuf``; ``""`` when none is stored).
        decodable: Whether ingest has a decoder for the topic's encodings and schema (judged
            from the channel, without decoding: ``decode_error`` counts payloads that fail).
        decodable_reason: Why not, when ``decodable`` is false.
    """

    topic: str
    type: str
    encoding: str
    count: int
    first_ns: int
    last_ns: int
    rate_hz: float
    undecodable: int = 0
    decode_error: str | None = None
    schema_encoding: str = ""
    decodable: bool = True
    decodable_reason: str | None = None


@dataclass(frozen=True)
class FileManifest:
    """What one raw log holds and whether it can be trusted.

    Attributes:
        key: The lake key or file name the log was read as.
        sha256: Hex SHA-256 of the file (of a folder: see the module docstring).
        size: Size in bytes (of a folder: of all its files).
        verdict: ``"ok"``, ``"recovered"``, ``"empty"`` (a valid log without messages) or
            ``"rejected"`` (damaged beyond use).
        reason: For ``"recovered"``, ``"empty"`` and ``"rejected"``: the file and what was found.
        topics: Per-topic statistics, sorted by topic; declared topics without messages have
            ``count`` 0.
        message_count: Messages read.
        start_ns: Earliest log time read, or None without messages.
        end_ns: Latest log time read, or None without messages.
        lost_messages: Messages known to be lost (the file's own counts minus those read; the
            number the reason states), ``None`` when unknown; 0 for ``"ok"`` and ``"empty"``.
        lost_ranges: For ``"recovered"`` and ``"rejected"``: sorted, disjoint log-time intervals
            ``(first_ns, last_ns)`` that contain the lost messages, where those are known (a
            skipped chunk's range, the rest of a cut chunk, the gap around an unreadable stretch
            or a missing part); empty otherwise.
        parts: For a folder: ``(relative path, sha256)`` of each file in it, the listing its
            ``sha256`` hashes; empty for a single file.
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
    lost_ranges: tuple[tuple[int, int], ...] = ()
    parts: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_dict` turns it back into an equal manifest."""
        out = asdict(self)
        out["topics"] = [asdict(t) for t in self.topics]
        out["lost_ranges"] = [list(r) for r in self.lost_ranges]
        out["parts"] = [list(p) for p in self.parts]
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
                    undecodable=int(t.get("undecodable", 0)),
                    decode_error=t.get("decode_error"),
                    schema_encoding=t.get("schema_encoding", ""),
                    decodable=bool(t.get("decodable", True)),
                    decodable_reason=t.get("decodable_reason"),
                )
                for t in d.get("topics", ())
            ),
            message_count=int(d["message_count"]),
            start_ns=d.get("start_ns"),
            end_ns=d.get("end_ns"),
            lost_messages=d.get("lost_messages", 0),
            # Manifests written before lost ranges were recorded have none.
            lost_ranges=tuple((int(a), int(b)) for a, b in d.get("lost_ranges", ())),
            parts=tuple((str(r), str(h)) for r, h in d.get("parts", ())),
        )


def mark_duplicates(files: list[dict], *, previous: list[dict] | None = None) -> list[dict]:
    """Marks, among one robot-day's manifest entries, each log whose sha256 an earlier one has:
    verdict ``duplicate``, ``duplicate_of`` the log that is read. The one read is the log a
    previous manifest of the day already read (so a retry upload never moves episodes to another
    source), else the first by key. Returns new entries, in the same order."""
    kept_before = {f["sha256"]: f["key"] for f in previous or [] if f.get("verdict") != DUPLICATE}
    keys = {f["key"] for f in files}
    canonical: dict[str, str] = {}
    for f in sorted(files, key=lambda f: f["key"]):
        if f["verdict"] in ("ok", "recovered", "empty"):
            before = kept_before.get(f["sha256"])
            canonical.setdefault(f["sha256"], before if before in keys else f["key"])
    out = []
    for f in files:
        first = canonical.get(f["sha256"])
        if first is not None and first != f["key"] and f["verdict"] != "rejected":
            f = {**f, "verdict": DUPLICATE, "duplicate_of": first,
                 "reason": f"{f['key']}: the same bytes as {first} (sha256 {f['sha256'][:12]}...); read once, through {first}"}
        out.append(f)
    return out


def inspect_log(path: str | Path, *, key: str | None = None, decode: bool = False) -> FileManifest:
    """Reads a whole log and describes it; damaged input gives a verdict, never an exception.

    Args:
        path: An MCAP file, a ROS 1 ``.bag`` file, a rosbag2 folder or a bare ``.db3`` file.
        key: The name to record (e.g. the lake key the file was downloaded from); also the name
            the ``reason`` uses. Defaults to the file or folder name (``reason`` then uses the
            full path, which is what a person debugging locally wants to see).
        decode: Also decode every message in full and count, per topic, those that do not
            decode (several times slower; see the module docstring).

    Returns:
        The manifest. A zero-length, non-log, truncated or corrupt input is ``"rejected"`` or
        ``"recovered"`` with a ``reason`` naming the file and the problem; a valid log without
        messages is ``"empty"``.

    Raises:
        FileNotFoundError: ``path`` does not exist (a caller error, not bad input).
    """
    p = Path(path)
    label = key if key is not None else str(p)
    key = key if key is not None else p.name
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such log")
    if p.is_dir():
        sha256, size, parts = _hash_folder(p)
    else:
        (sha256, size), parts = _hash_file(p), ()
    sink = _DecodeSink() if decode else None
    reading = read_log(p, label, sink=sink, verify=True)
    if sink is not None:
        sink.apply(reading)
    return replace(_manifest(key, label, sha256, size, reading), parts=parts)


def read_log(
    path: Path,
    label: str,
    *,
    topics: frozenset[str] | None = None,
    sink: ColumnSink | _DecodeSink | None = None,
    batch_bytes: int | None = None,
    verify: bool = False,
) -> _Reading:
    """The one walk over a log's messages, whatever its storage: manifests and ingest both use it.

    Every message read is counted per topic in the result; those of the wanted ``topics``
    (None: all) are handed to ``sink`` as batches of payloads. The storage is recognised by
    content: an MCAP file, a ROS 1 bag, a rosbag2 sqlite3 file, or a rosbag2 folder (its parts
    as metadata.yaml lists them, each recognised by content). Damage never raises: it is in the
    result's problems, lost counts and ranges, and ``fatal`` says why nothing could be read.

    Args:
        path: The log.
        label: The name problems are worded with (a lake key, a path).
        topics: Only these topics are read (and counted); None: all.
        sink: Receives the wanted messages (``add(info, buf, starts, lengths, log_time, publish_time)``).
        batch_bytes: The MCAP batch size (see :mod:`.columnar`).
        verify: Also check an MCAP file's data section CRC (one more read of the file).
    """
    options = {"topics": topics, "sink": sink, "batch_bytes": batch_bytes or _BATCH_BYTES}
    if path.is_dir():
        return _guard(label, lambda: _read_folder(path, label, verify=verify, **options))
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        return _Reading(fatal=f"cannot open: {exc.strerror or exc}")
    if size == 0:
        return _Reading(fatal="empty file (0 bytes)")
    if head.startswith(MCAP_MAGIC):
        return _guard(label, lambda: _read_mcap(path, label, verify=verify, **options))
    if head.startswith(_ROS1_MAGIC):
        return _guard(label, lambda: _read_ros1(path, topics=topics, sink=sink))
    if head.startswith(_SQLITE_MAGIC):
        reading = _guard(label, lambda: _read_db3(path, topics=topics, sink=sink))
        # Like a folder without metadata.yaml: readable, but nothing to check its counts against.
        reading.problems.insert(0, "a bare rosbag2 sqlite3 file: no metadata.yaml to check it against")
        return reading
    return _Reading(fatal=f"not a recognised log format (no known magic bytes at its start{_hex_hint(head)})")


_BATCH_BYTES = 32 * 2**20
NO_MESSAGE = "no message could be read"


def describe_fatal(reading: _Reading) -> str:
    """Why nothing could be read, with every problem found, as one text (without the file name)."""
    problems = "; ".join(reading.problems)
    if reading.fatal == NO_MESSAGE:
        return f"{problems}; {NO_MESSAGE}" if problems else NO_MESSAGE
    return f"{reading.fatal} ({problems})" if problems else str(reading.fatal)


class _DecodeSink:
    """``inspect_log(decode=True)``: decodes every message in full, counting failures per topic."""

    def __init__(self) -> None:
        self.decoders: dict[object, Any] = {}
        self.failures: dict[str, tuple[int, str]] = {}

    @staticmethod
    def wants(topic: str) -> bool:
        return True

    def add(self, info: ChannelInfo, buf, starts, lengths, log_time, publish_time) -> None:
        from flywheel_pipelines.lib.rosbag.structured import message_decoder

        decoder = self.decoders.get(info.key)
        if decoder is None:
            decoder = self.decoders[info.key] = message_decoder(info)
        if isinstance(decoder, str):
            self._fail(info.topic, len(starts), decoder)
            return
        view = memoryview(buf)
        for a, n in zip(starts.tolist(), lengths.tolist(), strict=True):
            try:
                decoder(view[a : a + n])
            except Exception as exc:  # noqa: BLE001 - a payload that does not match its schema
                self._fail(info.topic, 1, f"{type(exc).__name__}: {exc}")

    def _fail(self, topic: str, count: int, why: str) -> None:
        n, first = self.failures.get(topic, (0, why))
        self.failures[topic] = (n + count, first)

    def apply(self, reading: _Reading) -> None:
        for topic, (count, why) in self.failures.items():
            reading.topics[topic].add_undecodable(count, why)


# -- accumulating ---------------------------------------------------------------------------------


@dataclass
class _TopicAcc:
    type: str = ""
    encoding: str = ""
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    undecodable: int = 0
    decode_error: str | None = None

    def add(self, log_time_ns: int) -> None:
        if self.count == 0 or log_time_ns < self.first_ns:
            self.first_ns = log_time_ns
        if self.count == 0 or log_time_ns > self.last_ns:
            self.last_ns = log_time_ns
        self.count += 1

    def add_span(self, count: int, first_ns: int, last_ns: int) -> None:
        """Adds ``count`` messages whose log times run from ``first_ns`` to ``last_ns``."""
        self.merge(_TopicAcc(count=count, first_ns=first_ns, last_ns=last_ns))

    def add_times(self, times: np.ndarray) -> None:
        """Adds messages with these log times."""
        if len(times):
            self.add_span(len(times), int(times.min()), int(times.max()))

    def add_undecodable(self, count: int, why: str) -> None:
        if count:
            self.undecodable += count
            self.decode_error = self.decode_error or why

    def merge(self, other: _TopicAcc) -> None:
        if other.count:
            if self.count == 0 or other.first_ns < self.first_ns:
                self.first_ns = other.first_ns
            if self.count == 0 or other.last_ns > self.last_ns:
                self.last_ns = other.last_ns
            self.count += other.count
        self.type = self.type or other.type
        self.encoding = self.encoding or other.encoding
        if other.undecodable:
            self.add_undecodable(other.undecodable, other.decode_error or "")

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
            undecodable=self.undecodable,
            decode_error=self.decode_error if self.undecodable else None,
        )


@dataclass
class _Reading:
    """What reading one log (or one file of a folder) found, before it becomes a manifest."""

    topics: dict[str, _TopicAcc] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lost: int | None = 0
    lost_ranges: list[tuple[int, int]] = field(default_factory=list)
    fatal: str | None = None  # nothing could be read, and why
    skipped_bytes: int = 0
    channels: dict[str, ChannelInfo] = field(default_factory=dict)  # topic -> its first channel

    def channel(self, info: ChannelInfo) -> _TopicAcc:
        """The topic's counts; the channel's encodings and schema are kept (the first per topic)."""
        self.channels.setdefault(info.topic, info)
        return self.topic(info.topic, info.type, info.message_encoding)

    def merge(self, other: _Reading) -> None:
        """Adds another part's topics (counts and channels)."""
        for topic, acc in other.topics.items():
            self.topic(topic, acc.type, acc.encoding).merge(acc)
        for topic, info in other.channels.items():
            self.channels.setdefault(topic, info)
        self.skipped_bytes += other.skipped_bytes

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

    def span(self) -> tuple[int, int] | None:
        """The first and last log time read, or None without messages."""
        read = [a for a in self.topics.values() if a.count]
        if not read:
            return None
        return min(a.first_ns for a in read), max(a.last_ns for a in read)

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
    topics = tuple(_topic_stats(name, reading) for name in sorted(reading.topics))
    count = reading.message_count
    with_messages = [t for t in topics if t.count]
    start = min((t.first_ns for t in with_messages), default=None)
    end = max((t.last_ns for t in with_messages), default=None)
    problems = "; ".join(reading.problems)
    # The loss the problems state (None: they state none that can be counted).
    lost = reading.lost if reading.problems else None
    if reading.fatal is not None:
        verdict, reason = "rejected", f"{label}: {describe_fatal(reading)}"
    elif count == 0 and reading.problems:
        verdict, reason = "rejected", f"{label}: {problems}; {NO_MESSAGE}"
    elif count == 0:
        # Intact and well-formed, but nothing was recorded: not damage, and not data either.
        verdict, reason, lost = "empty", f"{label}: a valid log that holds no messages", 0
    elif reading.problems:
        verdict, reason = "recovered", f"{label}: {problems} (kept {count} messages)"
    else:
        verdict, reason, lost = "ok", None, 0
    damaged = verdict in ("recovered", "rejected")
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
        lost_messages=lost,
        lost_ranges=tuple(_merge_ranges(reading.lost_ranges)) if damaged else (),
    )


@functools.lru_cache(maxsize=256)
def _channel_problem(info: ChannelInfo) -> str | None:
    return decoder_problem(info)


def _topic_stats(name: str, reading: _Reading) -> TopicStats:
    stats = reading.topics[name].stats(name)
    info = reading.channels.get(name)
    if info is None:
        acc = reading.topics[name]
        info = ChannelInfo(name, name, acc.type, acc.encoding, "")
    problem = _channel_problem(replace(info, key=None))
    stats = replace(stats, schema_encoding=info.schema_encoding, decodable=problem is None, decodable_reason=problem)
    if problem is not None and stats.count and not stats.undecodable:
        # No decoder for the channel at all: every message is undecodable, known without decoding.
        stats = replace(stats, undecodable=stats.count, decode_error=problem)
    return stats


# -- MCAP -----------------------------------------------------------------------------------------


def _read_mcap(path: Path, label: str, *, topics=None, sink=None, batch_bytes: int = _BATCH_BYTES,
               verify: bool = False, key_prefix: str = "") -> _Reading:
    reading = _Reading()
    try:
        scan_mcap(path, label, reading, topics=topics, sink=sink, batch_bytes=batch_bytes, key_prefix=key_prefix,
                  verify=verify)
    except LogReadError as exc:
        # The problems that made it unreadable are in reading.problems already (scan_mcap puts
        # them there); the fatal part is only what followed from them.
        reading.fatal = NO_MESSAGE if reading.problems else (exc.problem or str(exc))
    return reading


# -- rosbag2 folders ------------------------------------------------------------------------------


def _read_folder(folder: Path, label: str, *, topics=None, sink=None, batch_bytes: int = _BATCH_BYTES,
                 verify: bool = False) -> _Reading:
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

    listed = [str(r) for r in (info or {}).get("relative_file_paths") or []]
    if listed:
        parts = [(relative, _find_listed(folder, relative)) for relative in listed]
    else:
        parts = _found_parts(folder, (info or {}).get("storage_identifier") or "")
        if not parts:
            return _Reading(problems=problems, fatal="a folder without a readable rosbag2 bag")
        if info is None:
            found = [name for name, file in parts if file is not None]
            problems.append(f"read the {len(found)} storage file(s) found: {', '.join(found)}")
    reading = _Reading()
    spans: list[tuple[int, int] | None] = []
    missing: list[int] = []
    for number, (name, file) in enumerate(parts):
        if file is None:
            problems.append(
                f"{name}: listed in metadata.yaml but missing"
                if listed
                else f"{name}: missing (the split files are numbered without it)"
            )
            reading.add_lost(None)
            missing.append(number)
            spans.append(None)
            continue
        part = _read_part(folder, file, topics=topics, sink=sink, batch_bytes=batch_bytes, verify=verify)
        reading.merge(part)
        if part.fatal is not None:
            reading.problems.append(f"{file.name}: {part.fatal}")
            reading.add_lost(None)
        reading.problems.extend(f"{file.name}: {p}" for p in part.problems)
        reading.add_lost(part.lost)
        reading.lost_ranges.extend(part.lost_ranges)
        spans.append(part.span())
    if reading.message_count == 0 and all(file is None for _, file in parts):
        return _Reading(problems=problems, fatal="none of the storage files metadata.yaml lists is there")
    reading.problems[:0] = problems
    bounds = _bag_bounds(info or {}, reading.span())
    for number in missing:
        lost_range = _missing_part_range(info or {}, parts[number][0], spans, number, bounds)
        if lost_range is not None:
            reading.lost_ranges.append(lost_range)
    if info is not None:
        capacity = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) * _MAX_MESSAGES_PER_BYTE
        _compare_with_metadata(reading, info, bounds, topics, capacity=capacity)
    return reading


def _read_part(folder: Path, file: Path, *, topics, sink, batch_bytes: int, verify: bool) -> _Reading:
    """One storage file of a bag, recognised by its content."""
    with open(file, "rb") as fh:
        head = fh.read(16)
    if head.startswith(MCAP_MAGIC):
        return _read_mcap(file, f"{folder.name}/{file.name}", topics=topics, sink=sink, batch_bytes=batch_bytes,
                          verify=verify, key_prefix=file.name)
    if head.startswith(_SQLITE_MAGIC):
        return _read_db3(file, topics=topics, sink=sink, key_prefix=file.name)
    if not head:
        return _Reading(fatal="empty file (0 bytes)")
    return _Reading(fatal=f"neither MCAP nor SQLite (no known magic bytes at its start{_hex_hint(head)})")


def _find_listed(folder: Path, relative: str) -> Path | None:
    # Some tools record paths relative to the folder's parent (``bag/bag_0.db3``).
    candidates = (folder / relative, folder / Path(relative).name)
    return next((c for c in candidates if c.is_file()), None)


_PART_NUMBER = re.compile(r"^(?P<stem>.*)_(?P<number>\d+)$")


def _found_parts(folder: Path, storage: str) -> list[tuple[str, Path | None]]:
    """The storage files in a folder whose metadata does not list them, in split order.

    rosbag2 names split files ``<bag>_<n>``; a gap in the numbers is a part that went missing
    (a missing last part cannot be noticed this way), returned with ``None`` in its place.
    """
    suffixes = {"mcap": [".mcap"], "sqlite3": [".db3"]}.get(storage, [".mcap", ".db3"])
    for suffix in suffixes:
        files = [f for f in folder.glob(f"*{suffix}") if f.is_file()]
        if files:
            break
    else:
        return []

    def order(file: Path) -> tuple[str, int, str]:
        match = _PART_NUMBER.match(file.stem)
        return (match["stem"], int(match["number"]), "") if match else (file.stem, -1, file.name)

    files.sort(key=order)
    parts: list[tuple[str, Path | None]] = []
    previous: tuple[str, int] | None = None
    for file in files:
        match = _PART_NUMBER.match(file.stem)
        if match:
            stem, number = match["stem"], int(match["number"])
            expected = previous[1] + 1 if previous is not None and previous[0] == stem else 0
            parts.extend((f"{stem}_{n}{suffix}", None) for n in range(expected, number))
            previous = (stem, number)
        parts.append((file.name, file))
    return parts


def _bag_bounds(info: dict[str, Any], read: tuple[int, int] | None) -> tuple[int, int] | None:
    """The first and last message time metadata.yaml gives, if they are consistent with the
    messages read (they lie outside what was read); None otherwise.

    Not every tool fills them in faithfully (one of the real test bags says its 6,074 messages
    span 411 ns starting after the first one), so they are only used when consistent.
    """
    try:
        start = int(info["starting_time"]["nanoseconds_since_epoch"])
        end = start + int(info["duration"]["nanoseconds"])
    except (KeyError, TypeError, ValueError):
        return None
    if read is not None and not (start <= read[0] and read[1] <= end):
        return None
    return start, end


def _missing_part_range(
    info: dict[str, Any],
    name: str,
    spans: list[tuple[int, int] | None],
    number: int,
    bounds: tuple[int, int] | None,
) -> tuple[int, int] | None:
    """The log-time range a missing split part covered: from metadata.yaml's per-file entry
    (rosbag2 >= Humble writes one), else between the parts on either side of it (or the bag's
    start or end, for the first or last part)."""
    for entry in info.get("files") or []:
        if isinstance(entry, dict) and Path(str(entry.get("path", ""))).name == Path(name).name:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                start = int(entry["starting_time"]["nanoseconds_since_epoch"])
                return start, start + int(entry["duration"]["nanoseconds"])
    before = next((s[1] for s in reversed(spans[:number]) if s is not None), None)
    after = next((s[0] for s in spans[number + 1 :] if s is not None), None)
    if bounds is not None:
        before = bounds[0] if before is None else before
        after = bounds[1] if after is None else after
    if before is None or after is None:
        return None
    return min(before, after), max(before, after)


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


# A stored message takes at least 31 bytes before compression, and zstd compresses no better
# than ~32,000:1: no file holds more than about a thousand messages per byte.
_MAX_MESSAGES_PER_BYTE = 1100


def _compare_with_metadata(reading: _Reading, info: dict[str, Any], bounds: tuple[int, int] | None,
                           topics: frozenset[str] | None = None, *, capacity: int | None = None) -> None:
    """Checks the counts read against ``metadata.yaml``, which then decides the loss.

    When messages are missing and the bag's own first or last message time lies outside what
    was read (a part cut short at either end), that stretch is a lost range too.
    """
    expected: dict[str, int] = {}
    for entry in info.get("topics_with_message_count") or []:
        meta = entry.get("topic_metadata") or {}
        name = meta.get("name")
        if name is None or (topics is not None and name not in topics):
            continue  # a topic the caller did not read is not missing
        reading.topic(name, meta.get("type", ""), meta.get("serialization_format", ""))
        expected[name] = expected.get(name, 0) + int(entry.get("message_count") or 0)
    if not expected:
        return
    claimed = sum(expected.values())
    if any(n < 0 for n in expected.values()) or (capacity is not None and claimed > capacity):
        size = capacity // _MAX_MESSAGES_PER_BYTE if capacity else 0
        reading.problems.append(f"metadata.yaml claims {claimed} messages, impossible for {size} bytes of storage: "
                                "damaged counts, not used")
        reading.lost = None
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
        read_span = reading.span()
        if bounds is not None and read_span is not None:
            if bounds[0] < read_span[0]:
                reading.lost_ranges.append((bounds[0], read_span[0]))
            if read_span[1] < bounds[1]:
                reading.lost_ranges.append((read_span[1], bounds[1]))
        return
    # Every message metadata.yaml lists was read: the ranges damage might have cost held nothing.
    reading.lost_ranges.clear()
    if extra:
        reading.problems.append(
            f"read more messages than metadata.yaml lists ({_describe(extra)} extra); "
            "metadata.yaml is stale"
        )
    elif reading.lost is None:
        reading.lost = 0


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{topic}: {n}" for topic, n in sorted(counts.items()))


# -- rosbag2 sqlite3 storage (.db3) ---------------------------------------------------------------


@contextlib.contextmanager
def _sqlite_copy(path: Path) -> Iterator[tuple[Path, Path | None]]:
    """The database to open, and its write-ahead log if it has one.

    Committed data a killed recorder left in ``<file>-wal`` is part of the bag, but opening the
    file normally would make SQLite fold the log into it: the raw file would change. So such a
    file is read from a temporary copy; one without a log is opened in place, immutable.
    """
    wal = path.with_name(path.name + "-wal")
    if not wal.is_file() or wal.stat().st_size == 0:
        yield path, None
        return
    with tempfile.TemporaryDirectory(prefix="flywheel-db3-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        yield copy, copy.with_name(copy.name + "-wal")


def _read_db3(path: Path, *, topics=None, sink=None, key_prefix: str = "") -> _Reading:
    """Reads a rosbag2 sqlite3 file's messages, counting them per topic; salvages a malformed file.

    An intact file is read with SQL. When SQLite reports the file malformed (a truncated or
    overwritten file is, as a whole), every page is parsed instead and each intact message row
    is kept; the rows between two kept ones that are gone give the lost ranges.
    """
    key_prefix = key_prefix or path.name
    with _sqlite_copy(path) as (database, wal):
        try:
            return _db3_sql(database, in_place=wal is None, topics=topics, sink=sink, key_prefix=key_prefix)
        except sqlite3.DatabaseError as exc:
            why = str(exc)
        reading = _db3_pages(database, wal, topics=topics, sink=sink, key_prefix=key_prefix)
    if reading.fatal is None:
        reading.problems.insert(0, f"SQLite reports it damaged ({why}); read page by page")
    else:
        reading.fatal = f"SQLite reports it damaged ({why}) and {reading.fatal}"
    return reading


def _db3_channel(key_prefix: str, topic_id: int, name: str, type_: str, serialization: str,
                 definitions: dict[str, tuple[str, str]]) -> ChannelInfo:
    """A topic row as a channel: with the stored ``ros2msg`` definition (rosbag2 >= Iron keeps them
    in ``message_definitions``), else the type name alone (decoded with rosbags' type store)."""
    encoding, text = definitions.get(type_, ("", ""))
    if encoding != "ros2msg" or not text.strip():
        encoding, text = "", ""
    return ChannelInfo((key_prefix, topic_id), name, type_, serialization, encoding, text.encode())


def _db3_definitions(connection: sqlite3.Connection) -> dict[str, tuple[str, str]]:
    try:
        rows = connection.execute("SELECT topic_type, encoding, encoded_message_definition FROM message_definitions")
        return {type_: (encoding, text) for type_, encoding, text in rows}
    except sqlite3.OperationalError:  # older bags have no such table
        return {}


def _deliver_rows(reading: _Reading, infos: dict[int, ChannelInfo], sink, ids: np.ndarray, times: np.ndarray,
                  payloads: list | None) -> None:
    """Counts one batch of message rows per topic and hands the wanted ones' payloads to ``sink``."""
    for topic_id in np.unique(ids).tolist():
        info = infos.get(topic_id)
        if info is None:
            continue
        rows = np.flatnonzero(ids == topic_id)
        reading.channel(info).add_times(times[rows])
        if sink is None or payloads is None or not sink.wants(info.topic):
            continue
        data = [payloads[r] for r in rows.tolist()]
        lengths = np.fromiter((len(d) for d in data), np.int64, len(data))
        starts = np.zeros(len(data), np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        t = times[rows]
        sink.add(info, np.frombuffer(b"".join(data), np.uint8), starts, lengths, t, t)


def _db3_sql(database: Path, *, in_place: bool, topics=None, sink=None, key_prefix: str = "") -> _Reading:
    reading = _Reading()
    uri = database.resolve().as_uri() + ("?immutable=1&mode=ro" if in_place else "")
    connection = sqlite3.connect(uri, uri=True)
    try:
        definitions = _db3_definitions(connection)
        infos: dict[int, ChannelInfo] = {}
        known: set[int] = set()
        for topic_id, name, type_, serialization in connection.execute(
            "SELECT id, name, type, serialization_format FROM topics ORDER BY id"
        ):
            known.add(topic_id)
            if topics is None or name in topics:
                infos[topic_id] = _db3_channel(key_prefix, topic_id, name, type_, serialization, definitions)
                reading.channel(infos[topic_id])
        # Counted first over the whole table: a malformed page raises here, before any payload
        # reached the sink (the page-by-page salvage then reads the file from the start).
        expected = dict(connection.execute("SELECT topic_id, count(*) FROM messages GROUP BY topic_id").fetchall())
        orphans = sum(n for topic_id, n in expected.items() if topic_id not in known)
        wanted = sorted(infos)
        with_data = sink is not None
        columns = "topic_id, timestamp" + (", data" if with_data else "")
        where = f"WHERE topic_id IN ({','.join('?' * len(wanted))})" if topics is not None else ""
        read = 0
        try:
            cursor = connection.execute(f"SELECT {columns} FROM messages {where} ORDER BY id",
                                        wanted if topics is not None else ())
            while rows := cursor.fetchmany(20_000):
                ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                times = np.fromiter((r[1] for r in rows), np.int64, len(rows))
                _deliver_rows(reading, infos, sink, ids, times, [r[2] for r in rows] if with_data else None)
                read += len(rows)
        except sqlite3.DatabaseError as exc:
            # The count above read every row, so this is damage in the payloads themselves.
            reading.problems.append(f"reading stopped after {read} messages ({exc})")
            reading.add_lost(sum(expected.get(t, 0) for t in wanted) - read)
    finally:
        connection.close()
    if orphans:
        reading.problems.append(f"{orphans} messages reference no topic in the topics table")
        reading.add_lost(orphans)
    return reading


def _db3_pages(database: Path, wal: Path | None, *, topics=None, sink=None, key_prefix: str = "") -> _Reading:
    """Salvages a malformed rosbag2 sqlite3 file by parsing its pages (see :class:`_SqlitePages`)."""
    with open(database, "rb") as fh:
        if database.stat().st_size < 100:
            return _Reading(fatal="its SQLite header is cut short")
        # Mapped, not read: a multi-gigabyte bag is parsed page by page without loading it whole.
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _db3_rows(_SqlitePages.load(data, wal), topics=topics, sink=sink, key_prefix=key_prefix)


def _db3_rows(pages: _SqlitePages | None, *, topics=None, sink=None, key_prefix: str = "") -> _Reading:
    if pages is None:
        return _Reading(fatal="its SQLite header is unreadable")
    found = pages.topics()
    if found is None:
        return _Reading(fatal="its topics table cannot be found")
    reading = _Reading()
    infos = {topic_id: _db3_channel(key_prefix, topic_id, name, type_, encoding, pages.definitions())
             for topic_id, (name, type_, encoding) in found.items() if topics is None or name in topics}
    for info in infos.values():
        reading.channel(info)
    rows = pages.message_rows(with_data=sink is not None)
    orphans = 0
    previous: tuple[int, int] | None = None
    order = sorted(rows)
    for rowid in order:
        topic_id, timestamp, _data = rows[rowid]
        if topic_id not in found:
            orphans += 1
        # rosbag2 numbers messages 1, 2, 3... as it inserts them (in receive order): a gap is
        # rows that could not be read, and their times lie between their neighbours'.
        if previous is not None and rowid > previous[0] + 1:
            reading.lost_ranges.append((min(previous[1], timestamp), max(previous[1], timestamp)))
        previous = (rowid, timestamp)
    for start in range(0, len(order), 20_000):
        batch = [rows[r] for r in order[start : start + 20_000]]
        ids = np.fromiter((b[0] for b in batch), np.int64, len(batch))
        times = np.fromiter((b[1] for b in batch), np.int64, len(batch))
        payloads = [b[2] if b[2] is not None else b"" for b in batch] if sink is not None else None
        _deliver_rows(reading, infos, sink, ids, times, payloads)
    if orphans:
        reading.problems.append(f"{orphans} message rows reference no topic in the topics table")
    if rows:
        first_id, last_id = min(rows), max(rows)
        unread = last_id - len(rows)  # ids 1..last_id that were not found
        reading.problems.append(
            f"read {len(rows)} message rows (ids {first_id}..{last_id}, {unread} ids up to there unreadable); "
            f"rows after id {last_id}, if any, cannot be counted"
        )
    # Without the file's own index nothing says how many rows there were: metadata.yaml decides.
    reading.lost = None
    return reading


class _SqlitePages:
    """Just enough of the SQLite file format to read table rows from intact pages.

    Used only on files SQLite itself refuses. Message rows are recognised by their shape
    (``NULL`` id, integer topic id, integer timestamp, blob: no other rosbag2 table has it), so
    rows are found on every intact leaf page even when the pages above them are lost. The topics
    table is found through ``sqlite_master`` and read from its root page down. Pages from the
    write-ahead log, when there is one, replace the file's own (later frames win).
    """

    def __init__(self, data: bytes | mmap.mmap, page_size: int, usable: int, wal_pages: dict[int, bytes]):
        self.data = data
        self.page_size = page_size
        self.usable = usable
        self.wal_pages = wal_pages
        self.count = len(data) // page_size

    @classmethod
    def load(cls, data: bytes | mmap.mmap, wal: Path | None) -> _SqlitePages | None:
        if len(data) < 100 or data[: len(_SQLITE_MAGIC)] != _SQLITE_MAGIC:
            return None
        (page_size,) = struct.unpack_from(">H", data, 16)
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512 or page_size & (page_size - 1):
            return None
        usable = page_size - data[20]
        wal_pages: dict[int, bytes] = {}
        if wal is not None:
            wal_data = wal.read_bytes()
            position = 32
            while position + 24 + page_size <= len(wal_data):
                (number,) = struct.unpack_from(">I", wal_data, position)
                wal_pages[number] = wal_data[position + 24 : position + 24 + page_size]
                position += 24 + page_size
        return cls(data, page_size, usable, wal_pages)

    def page(self, number: int) -> bytes | None:
        if number in self.wal_pages:
            return self.wal_pages[number]
        if not 1 <= number <= self.count:
            return None
        return self.data[(number - 1) * self.page_size : number * self.page_size]

    def numbers(self) -> Iterator[int]:
        yield from range(1, self.count + 1)
        yield from (n for n in self.wal_pages if n > self.count)

    def cells(self, number: int, *, full: bool = False) -> Iterator[tuple[int, bytes] | int]:
        """A table page's cells: (rowid, local payload) on a leaf, the child page number on an
        interior page; nothing for any other kind of page."""
        page = self.page(number)
        if page is None:
            return
        header = 100 if number == 1 else 0
        kind = page[header]
        if kind not in (5, 13):
            return
        (cell_count,) = struct.unpack_from(">H", page, header + 3)
        pointers = header + (12 if kind == 5 else 8)
        if pointers + 2 * cell_count > self.usable:
            return
        for index in range(cell_count):
            (offset,) = struct.unpack_from(">H", page, pointers + 2 * index)
            if not pointers + 2 * cell_count <= offset < self.usable:
                continue
            if kind == 5:
                yield struct.unpack_from(">I", page, offset)[0]
                continue
            try:
                payload_length, position = _varint(page, offset)
                rowid, position = _varint(page, position)
            except IndexError:
                continue
            local = payload_length if payload_length <= self.usable - 35 else self._local(payload_length)
            payload = page[position : position + local]
            if full and local < payload_length:
                payload = self._overflow(payload, page[position + local : position + local + 4], payload_length)
            yield rowid, payload
        if kind == 5:
            yield struct.unpack_from(">I", page, header + 8)[0]

    def _overflow(self, local: bytes, pointer: bytes, payload_length: int) -> bytes:
        """A payload's local part followed by its chain of overflow pages, as far as they are intact."""
        pieces, got, seen = [local], len(local), set()
        (number,) = struct.unpack(">I", pointer) if len(pointer) == 4 else (0,)
        while number and got < payload_length and number not in seen:
            seen.add(number)
            page = self.page(number)
            if page is None or len(page) < self.usable:
                break
            piece = page[4 : self.usable][: payload_length - got]
            pieces.append(piece)
            got += len(piece)
            (number,) = struct.unpack_from(">I", page, 0)
        return b"".join(pieces)

    def _local(self, payload_length: int) -> int:
        low = (self.usable - 12) * 32 // 255 - 23
        local = low + (payload_length - low) % (self.usable - 4)
        return local if local <= self.usable - 35 else low

    def rows(self, root: int) -> Iterator[tuple[int, list[Any]]]:
        """The rows of the table whose B-tree starts at ``root``, as far as its pages are intact."""
        stack, seen = [root], set()
        while stack:
            number = stack.pop()
            if number in seen:
                continue
            seen.add(number)
            for cell in self.cells(number):
                if isinstance(cell, int):
                    stack.append(cell)
                elif (values := _record(cell[1])) is not None:
                    yield cell[0], values

    def _table_root(self, name: str) -> int | None:
        root = None
        for _rowid, values in self.rows(1):
            if len(values) >= 4 and values[0] == "table" and values[1] == name and isinstance(values[3], int):
                root = values[3]
        return root

    def topics(self) -> dict[int, tuple[str, str, str]] | None:
        root = self._table_root("topics")
        if root is None:
            return None
        topics = {}
        for rowid, values in self.rows(root):
            if len(values) >= 4 and all(isinstance(v, str) for v in values[1:4]):
                topics[rowid] = (values[1], values[2], values[3])
        return topics

    @functools.cached_property
    def _definitions(self) -> dict[str, tuple[str, str]]:
        root = self._table_root("message_definitions")
        if root is None:
            return {}
        return {values[1]: (values[2], values[3]) for _rowid, values in self.rows(root)
                if len(values) >= 4 and all(isinstance(v, str) for v in values[1:4])}

    def definitions(self) -> dict[str, tuple[str, str]]:
        """type -> (encoding, definition text) from ``message_definitions``, where intact."""
        return self._definitions

    def message_rows(self, *, with_data: bool = False) -> dict[int, tuple[int, int, bytes | None]]:
        """rowid -> (topic id, timestamp, payload) of every intact message row (payload: None
        without ``with_data``, or when its overflow pages are damaged)."""
        rows: dict[int, tuple[int, int, bytes | None]] = {}
        for number in self.numbers():
            for cell in self.cells(number, full=with_data):
                if isinstance(cell, int):
                    continue
                rowid, payload = cell
                values = _record(payload, want=3)
                if values is not None and values[0] is None and all(isinstance(v, int) for v in values[1:]):
                    data = _record(payload)[3] if with_data else None
                    rows.setdefault(rowid, (values[1], values[2], data if isinstance(data, bytes) else None))
        return rows


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = 0
    for index in range(9):
        byte = data[position + index]
        if index == 8:
            return (value << 8) | byte, position + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, position + index + 1
    raise AssertionError("unreachable")


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _record(payload: bytes, want: int | None = None) -> list[Any] | None:
    """Decodes a record (a leaf cell's payload) into its column values; None if malformed.

    With ``want``, only that many columns are decoded, and only a record with exactly one more
    column, a blob, is decoded at all (the shape of a rosbag2 message row).
    """
    try:
        header_size, position = _varint(payload, 0)
        types = []
        while position < header_size:
            serial, position = _varint(payload, position)
            types.append(serial)
    except IndexError:
        return None
    if position != header_size:
        return None
    if want is not None:
        if len(types) != want + 1 or types[want] < 12 or types[want] % 2:
            return None
        types = types[:want]
    values: list[Any] = []
    body = header_size
    for serial in types:
        if serial == 0:
            values.append(None)
        elif serial in _INT_SIZES:
            size = _INT_SIZES[serial]
            if body + size > len(payload):
                return None
            values.append(int.from_bytes(payload[body : body + size], "big", signed=True))
            body += size
        elif serial in (8, 9):
            values.append(serial - 8)
        elif serial == 7:
            body += 8
            values.append(None)
        elif serial >= 12:
            size = (serial - 12) // 2
            raw = payload[body : body + size]
            if serial % 2:
                values.append(raw.decode("utf-8", "replace") if len(raw) == size else None)
            else:
                values.append(bytes(raw) if len(raw) == size else None)
            body += size
        else:
            return None
    return values


# -- ROS 1 bags ------------------------------------------------------------------------------------


class _Pending:
    """Messages of the wanted topics, batched per channel before they go to the sink."""

    LIMIT = 16 * 2**20

    def __init__(self, reading: _Reading, sink, skip: set[tuple[str, int]] | None = None) -> None:
        self.reading, self.sink, self.skip = reading, sink, skip
        self.items: dict[object, tuple[ChannelInfo, list[int], list[bytes]]] = {}
        self.size = 0
        self.delivered: set[tuple[str, int]] | None = set() if sink is not None else None

    def add(self, info: ChannelInfo, timestamp: int, data) -> None:
        """Counts one message; keeps its payload for the sink when its topic is wanted."""
        if self.skip is not None and (info.topic, timestamp) in self.skip:
            return  # already delivered by an earlier, interrupted read of the same bag
        if self.sink is None or not self.sink.wants(info.topic):
            self.reading.channel(info).add(timestamp)
            return
        entry = self.items.setdefault(info.key, (info, [], []))
        entry[1].append(timestamp)
        entry[2].append(bytes(data))
        self.size += len(data)
        if self.size >= self.LIMIT:
            self.flush()

    def flush(self) -> None:
        for info, times, payloads in self.items.values():
            if not times:
                continue
            t = np.asarray(times, np.int64)
            self.reading.channel(info).add_times(t)
            if self.delivered is not None:
                self.delivered.update((info.topic, x) for x in times)
            lengths = np.fromiter((len(d) for d in payloads), np.int64, len(payloads))
            starts = np.zeros(len(payloads), np.int64)
            np.cumsum(lengths[:-1], out=starts[1:])
            self.sink.add(info, np.frombuffer(b"".join(payloads), np.uint8), starts, lengths, t, t)
            times.clear()
            payloads.clear()
        self.size = 0


def _ros1_info(path: Path, conn_id: int, topic: str, type_: str, definition: str) -> ChannelInfo:
    return ChannelInfo((path.name, conn_id), topic, type_, "ros1", "ros1msg", definition.encode())


def _read_ros1(path: Path, *, topics=None, sink=None) -> _Reading:
    """Reads a ROS 1 bag with ``rosbags``' bag reader; a bag it cannot read is walked record by record."""
    from rosbags.rosbag1 import Reader

    reading = _Reading()
    # rosbags' AnyReader tells ROS 1 from ROS 2 by the ".bag" suffix; the content has said it.
    reader = Reader(path)
    try:
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several unrelated types
        # A bag's index is written last, so a recorder killed mid-write leaves none to open.
        reading = _walk_ros1(path, topics=topics, sink=sink)
        reading.problems.insert(0, f"rosbags cannot open it ({type(exc).__name__}: {exc}); read record by record")
        return reading
    try:
        expected: dict[str, int] = {}
        infos: dict[int, ChannelInfo] = {}
        for connection in reader.connections:
            if topics is not None and connection.topic not in topics:
                continue
            infos[connection.id] = _ros1_info(path, connection.id, connection.topic, connection.msgtype,
                                              connection.msgdef.data)
            reading.channel(infos[connection.id])
            expected[connection.topic] = expected.get(connection.topic, 0) + connection.msgcount
        pending = _Pending(reading, sink)
        read = 0
        try:
            for connection, timestamp, data in reader.messages(connections=[c for c in reader.connections
                                                                            if c.id in infos]):
                pending.add(infos[connection.id], timestamp, data)
                read += 1
        except Exception as exc:  # noqa: BLE001 - damage surfaces as struct/rosbags errors
            pending.flush()
            # What already went to the sink is not handed over twice; without a sink the walk
            # simply counts the whole bag again.
            already = len(pending.delivered) if pending.delivered is not None else 0
            walked = _walk_ros1(path, topics=topics, sink=sink, skip=pending.delivered)
            if walked.message_count + already > read:
                if already:
                    walked.merge(reading)
                walked.problems.insert(0, f"rosbags stopped after {read} messages ({type(exc).__name__}: {exc}); "
                                          "read record by record")
                _compare_counts(walked, expected, "the bag index")
                return walked
            reading.problems.append(f"reading stopped after {read} messages ({type(exc).__name__}: {exc})")
            reading.lost = None
        pending.flush()
        _compare_counts(reading, expected, "the bag index")
    finally:
        # Closing a broken bag may fail too; that must not mask what was read.
        with contextlib.suppress(Exception):
            reader.close()
    return reading


_ROS1_CHUNK, _ROS1_CONNECTION, _ROS1_MESSAGE = 0x05, 0x07, 0x02


def _walk_ros1(path: Path, *, topics=None, sink=None, skip: set[tuple[str, int]] | None = None) -> _Reading:
    """Reads a ROS 1 bag's messages from its records alone, without the index at its end.

    Chunks are decompressed as far as their data goes (``bz2`` and ``lz4`` decode block by
    block), so the chunk a truncated bag ends in still gives its complete messages. ``skip``:
    (topic, time) of messages an interrupted read already handed to the sink.
    """
    from rosbags.typesys.msg import normalize_msgtype

    reading = _Reading(lost=None)
    pending = _Pending(reading, sink, skip)
    connections: dict[int, ChannelInfo] = {}
    last_time: int | None = None
    ends: list[str] = []  # how each walk ended: "" at the end of its data, else the problem

    def records(data: bytes | mmap.mmap, where: str, position: int = 0) -> Iterator[tuple[int, dict[str, bytes], bytes]]:
        """(op, header fields, data) of each complete record; records the end in ``ends``."""
        while position + 4 <= len(data):
            (header_length,) = struct.unpack_from("<I", data, position)
            header_end = position + 4 + header_length
            if header_end + 4 > len(data):
                break
            fields = _ros1_fields(data[position + 4 : header_end])
            (data_length,) = struct.unpack_from("<I", data, header_end)
            if fields is None or (header_length and "op" not in fields):
                ends.append(f"{where}: unreadable record at byte {position}; the rest of it is skipped")
                return
            if header_end + 4 + data_length > len(data):
                if fields.get("op", b"")[:1] == bytes([_ROS1_CHUNK]):
                    yield _ROS1_CHUNK, fields, data[header_end + 4 :]  # a cut chunk: salvage it
                break
            op = fields.get("op", b"\xff")[0]  # a header-less record is padding
            yield op, fields, data[header_end + 4 : header_end + 4 + data_length]
            position = header_end + 4 + data_length
        ends.append("" if position >= len(data) else "cut")

    def visit(op: int, fields: dict[str, bytes], body: bytes) -> None:
        nonlocal last_time
        if op == _ROS1_CONNECTION and "conn" in fields and "topic" in fields:
            info = _ros1_fields(body) or {}
            type_ = normalize_msgtype(info["type"].decode(errors="replace")) if info.get("type") else ""
            topic = fields["topic"].decode(errors="replace")
            if topics is None or topic in topics:
                conn_id = struct.unpack("<I", fields["conn"][:4])[0]
                connections[conn_id] = _ros1_info(path, conn_id, topic, type_,
                                                  info.get("message_definition", b"").decode(errors="replace"))
                reading.channel(connections[conn_id])
        elif op == _ROS1_MESSAGE and "conn" in fields and len(fields.get("time", b"")) == 8:
            sec, nsec = struct.unpack("<II", fields["time"])
            info = connections.get(struct.unpack("<I", fields["conn"][:4])[0])
            if info is not None:
                pending.add(info, sec * 1_000_000_000 + nsec, body)
                last_time = max(last_time or 0, sec * 1_000_000_000 + nsec)

    # Mapped, not read: only one chunk at a time is ever decompressed into memory.
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for op, fields, body in records(data, "bag", len(_ROS1_MAGIC) + 1):
            if op != _ROS1_CHUNK:
                visit(op, fields, body)
                continue
            inner = _ros1_decompress(fields.get("compression", b"none").decode(errors="replace"), body)
            if inner is None:
                reading.problems.append(f"a chunk with unknown compression {fields.get('compression')!r} skipped")
                continue
            for inner_op, inner_fields, inner_body in records(inner, "a chunk"):
                visit(inner_op, inner_fields, inner_body)
    pending.flush()
    reading.problems.extend(end for end in ends if end and end != "cut")
    if "cut" in ends:
        reading.problems.append(
            "truncated: the bag ends inside a record, and its index (written last) is gone"
            + (f"; anything recorded after {last_time} is lost" if last_time is not None else "")
        )
    return reading


def _ros1_fields(header: bytes) -> dict[str, bytes] | None:
    fields, position = {}, 0
    while position + 4 <= len(header):
        (length,) = struct.unpack_from("<I", header, position)
        field_bytes = header[position + 4 : position + 4 + length]
        if len(field_bytes) < length or b"=" not in field_bytes:
            return None
        name, value = field_bytes.split(b"=", 1)
        fields[name.decode(errors="replace")] = value
        position += 4 + length
    return fields


def _ros1_decompress(compression: str, data: bytes) -> bytes | None:
    """A chunk's records, as far as its (possibly cut) data decodes."""
    if compression == "none":
        return data
    if compression == "bz2":
        import bz2

        decompressor = bz2.BZ2Decompressor()
        with contextlib.suppress(OSError, EOFError):
            return decompressor.decompress(data)
        return b""
    if compression == "lz4":
        import lz4.frame

        decompressor = lz4.frame.LZ4FrameDecompressor()
        pieces = []
        with contextlib.suppress(RuntimeError):
            for start in range(0, len(data), 1 << 16):
                pieces.append(decompressor.decompress(data[start : start + (1 << 16)]))
        return b"".join(pieces)
    return None


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


def _hash_folder(folder: Path) -> tuple[str, int, tuple[tuple[str, str], ...]]:
    """The listing's hash, the total size and each file's (relative path, sha256)."""
    listing = hashlib.sha256()
    total = 0
    parts = []
    for relative, file in _folder_files(folder):
        sha256, size = _hash_file(file)
        listing.update(f"{sha256}  {relative}\n".encode())
        total += size
        parts.append((relative, sha256))
    return listing.hexdigest(), total, tuple(parts)
