"""A manifest of one robot log: what it holds, whether it is intact, and what was lost if not.

:func:`inspect_log` reads every message of a log (it does not trust the file's own index or
summary) and returns a :class:`FileManifest` with a verdict:

* ``"ok"``: every message read, every check passed;
* ``"recovered"``: damage found, but messages were read; ``reason`` says what is wrong,
  ``lost_messages`` how many messages are known to be missing (``None`` when that cannot be
  counted, e.g. a truncated MCAP has no summary to compare with) and ``lost_ranges`` the log-time
  intervals the lost messages fall in, where those are known;
* ``"rejected"``: nothing usable (empty, not a log, no readable message).

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

With ``decode=True``, MCAP messages are also decoded as :func:`.reader.iter_decoded` decodes
them, and each topic counts the messages that do not decode; without it, only a channel whose
encodings have no ROS 2 decoder at all is counted (that costs nothing). Either way an
undecodable topic is not damage: it does not change the verdict.

For a folder, ``size`` is the total size of its regular files and ``sha256`` is the SHA-256 of a
``sha256sum``-style listing of them: one line ``"<hex sha256 of the file>  <relative path>\\n"``
per file, paths POSIX-style and sorted by code point. The same digest comes out of
``cd FOLDER && find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum |
sha256sum``.
"""

from __future__ import annotations

import contextlib
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

from flywheel_pipelines.lib.rosbag.reader import (
    MCAP_MAGIC,
    LogReadError,
    ReadStats,
    _build_decoder,
    _decoder_factory,
    _decoder_problem,
    _McapScan,
    _merge_ranges,
)

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
        undecodable: Messages of ``count`` known not to decode (see the module docstring for
            when this is checked); 0 when all decode or when it was not checked.
        decode_error: Why, for the first of them; ``None`` when ``undecodable`` is 0.
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
        lost_ranges: For ``"recovered"``: sorted, disjoint log-time intervals
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


def inspect_log(path: str | Path, *, key: str | None = None, decode: bool = False) -> FileManifest:
    """Reads a whole log and describes it; damaged input gives a verdict, never an exception.

    Args:
        path: An MCAP file, a ROS 1 ``.bag`` file, or a rosbag2 folder.
        key: The name to record (e.g. the lake key the file was downloaded from); also the name
            the ``reason`` uses. Defaults to the file or folder name (``reason`` then uses the
            full path, which is what a person debugging locally wants to see).
        decode: Also decode every MCAP message and count, per topic, those that do not decode
            (several times slower; see the module docstring).

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
        sha256, size, parts = _hash_folder(p)
        reading = _guard(label, lambda: _read_folder(p, decode))
        return replace(_manifest(key, label, sha256, size, reading), parts=parts)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such log")
    sha256, size = _hash_file(p)
    with open(p, "rb") as fh:
        head = fh.read(16)
    if size == 0:
        reading = _Reading(fatal="empty file (0 bytes)")
    elif head.startswith(MCAP_MAGIC):
        reading = _guard(label, lambda: _read_mcap(p, label, decode))
    elif head.startswith(_ROS1_MAGIC):
        reading = _guard(label, lambda: _read_ros1(p))
    elif head.startswith(_SQLITE_MAGIC):
        reading = _guard(label, lambda: _read_db3(p))
        # Like a folder without metadata.yaml: readable, but nothing to check its counts against.
        reading.problems.insert(0, "a bare rosbag2 sqlite3 file: no metadata.yaml to check it against")
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
    recovered = verdict == "recovered"
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
        lost_messages=reading.lost if recovered else 0,
        lost_ranges=tuple(_merge_ranges(reading.lost_ranges)) if recovered else (),
    )


# -- MCAP -----------------------------------------------------------------------------------------


def _read_mcap(path: Path, label: str, decode: bool = False) -> _Reading:
    reading = _Reading()
    stats = ReadStats(source=label)
    try:
        with _McapScan(path, label, None, stats) as scan:
            scan.index()
            if decode:
                _decode_mcap(scan, reading)
            else:
                for raw, channel, _schema in scan.messages():
                    reading.topic(raw.topic, raw.schema_name, channel.message_encoding).add(raw.log_time_ns)
            scan.verify_data_crc()
            # Channels that never got a message still document what the robot was set to record.
            for channel in scan.channels.values():
                schema = scan.schemas.get(channel.schema_id) if channel.schema_id else None
                acc = reading.topic(channel.topic, schema.name if schema else "", channel.message_encoding)
                why = _decoder_problem(channel.message_encoding, schema)
                if why is not None and not decode:
                    # Once per channel, from the encodings alone: free, unlike decoding.
                    acc.add_undecodable(scan.read_by_channel.get(channel.id, 0), why)
    except LogReadError as exc:
        reading.fatal = exc.problem or str(exc)
    reading.problems.extend(stats.problems)
    reading.lost = stats.lost_messages
    reading.lost_ranges.extend(stats.lost_ranges)
    return reading


def _decode_mcap(scan: _McapScan, reading: _Reading) -> None:
    """Reads the messages and decodes each, as ``iter_decoded`` does, counting failures per topic."""
    factory = _decoder_factory()
    decoders: dict[int, Any] = {}
    for raw, channel, schema in scan.messages():
        acc = reading.topic(raw.topic, raw.schema_name, channel.message_encoding)
        acc.add(raw.log_time_ns)
        decoder = decoders.get(channel.id)
        if decoder is None:
            decoder = decoders[channel.id] = _build_decoder(factory, channel, schema)
        if isinstance(decoder, str):
            acc.add_undecodable(1, decoder)
            continue
        try:
            decoder(raw.data)
        except Exception as exc:  # noqa: BLE001 - a payload that does not match its schema
            acc.add_undecodable(1, f"{type(exc).__name__}: {exc}")


# -- rosbag2 folders ------------------------------------------------------------------------------


def _read_folder(folder: Path, decode: bool = False) -> _Reading:
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
        part = _read_part(folder, file, decode)
        for topic, acc in part.topics.items():
            reading.topic(topic, acc.type, acc.encoding).merge(acc)
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
        _compare_with_metadata(reading, info, bounds)
    return reading


def _read_part(folder: Path, file: Path, decode: bool) -> _Reading:
    """One storage file of a bag, recognised by its content."""
    with open(file, "rb") as fh:
        head = fh.read(16)
    if head.startswith(MCAP_MAGIC):
        return _read_mcap(file, f"{folder.name}/{file.name}", decode)
    if head.startswith(_SQLITE_MAGIC):
        return _read_db3(file)
    if not head:
        return _Reading(fatal="empty file (0 bytes)")
    return _Reading(fatal=f"neither MCAP nor SQLite (starts with {head!r})")


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


def _compare_with_metadata(reading: _Reading, info: dict[str, Any], bounds: tuple[int, int] | None) -> None:
    """Checks the counts read against ``metadata.yaml``, which then decides the loss.

    When messages are missing and the bag's own first or last message time lies outside what
    was read (a part cut short at either end), that stretch is a lost range too.
    """
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


def _read_db3(path: Path) -> _Reading:
    """Counts a rosbag2 sqlite3 file's messages per topic, salvaging a malformed file.

    An intact file is counted with SQL. When SQLite reports the file malformed (a truncated or
    overwritten file is, as a whole), every page is parsed instead and each intact message row
    is kept; the rows between two kept ones that are gone give the lost ranges.
    """
    with _sqlite_copy(path) as (database, wal):
        try:
            return _db3_sql(database, in_place=wal is None)
        except sqlite3.DatabaseError as exc:
            why = str(exc)
        reading = _db3_pages(database, wal)
    if reading.fatal is None:
        reading.problems.insert(0, f"SQLite reports it damaged ({why}); read page by page")
    else:
        reading.fatal = f"SQLite reports it damaged ({why}) and {reading.fatal}"
    return reading


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


def _db3_sql(database: Path, *, in_place: bool) -> _Reading:
    reading = _Reading()
    uri = database.resolve().as_uri() + ("?immutable=1&mode=ro" if in_place else "")
    connection = sqlite3.connect(uri, uri=True)
    try:
        by_id: dict[int, _TopicAcc] = {}
        for topic_id, name, type_, serialization in connection.execute(
            "SELECT id, name, type, serialization_format FROM topics ORDER BY id"
        ):
            by_id[topic_id] = reading.topic(name, type_, serialization)
        orphans = 0
        for topic_id, count, first, last in connection.execute(
            "SELECT topic_id, count(*), min(timestamp), max(timestamp) FROM messages GROUP BY topic_id"
        ):
            acc = by_id.get(topic_id)
            if acc is None:
                orphans += count
            else:
                acc.add_span(count, first, last)
    finally:
        connection.close()
    if orphans:
        reading.problems.append(f"{orphans} messages reference no topic in the topics table")
        reading.add_lost(orphans)
    return reading


def _db3_pages(database: Path, wal: Path | None) -> _Reading:
    """Salvages a malformed rosbag2 sqlite3 file by parsing its pages (see :class:`_SqlitePages`)."""
    with open(database, "rb") as fh:
        if database.stat().st_size < 100:
            return _Reading(fatal="its SQLite header is cut short")
        # Mapped, not read: a multi-gigabyte bag is parsed page by page without loading it whole.
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _db3_rows(_SqlitePages.load(data, wal))


def _db3_rows(pages: _SqlitePages | None) -> _Reading:
    if pages is None:
        return _Reading(fatal="its SQLite header is unreadable")
    topics = pages.topics()
    if topics is None:
        return _Reading(fatal="its topics table cannot be found")
    reading = _Reading()
    by_id = {topic_id: reading.topic(name, type_, encoding) for topic_id, (name, type_, encoding) in topics.items()}
    rows = pages.message_rows()
    orphans = 0
    previous: tuple[int, int] | None = None
    for rowid in sorted(rows):
        topic_id, timestamp = rows[rowid]
        acc = by_id.get(topic_id)
        if acc is None:
            orphans += 1
        else:
            acc.add(timestamp)
        # rosbag2 numbers messages 1, 2, 3... as it inserts them (in receive order): a gap is
        # rows that could not be read, and their times lie between their neighbours'.
        if previous is not None and rowid > previous[0] + 1:
            reading.lost_ranges.append((min(previous[1], timestamp), max(previous[1], timestamp)))
        previous = (rowid, timestamp)
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

    def cells(self, number: int) -> Iterator[tuple[int, bytes] | int]:
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
            yield rowid, page[position : position + local]
        if kind == 5:
            yield struct.unpack_from(">I", page, header + 8)[0]

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

    def topics(self) -> dict[int, tuple[str, str, str]] | None:
        root = None
        for _rowid, values in self.rows(1):
            if len(values) >= 4 and values[0] == "table" and values[1] == "topics" and isinstance(values[3], int):
                root = values[3]
        if root is None:
            return None
        topics = {}
        for rowid, values in self.rows(root):
            if len(values) >= 4 and all(isinstance(v, str) for v in values[1:4]):
                topics[rowid] = (values[1], values[2], values[3])
        return topics

    def message_rows(self) -> dict[int, tuple[int, int]]:
        rows: dict[int, tuple[int, int]] = {}
        for number in self.numbers():
            for cell in self.cells(number):
                if isinstance(cell, int):
                    continue
                rowid, payload = cell
                values = _record(payload, want=3)
                if values is not None and values[0] is None and all(isinstance(v, int) for v in values[1:]):
                    rows.setdefault(rowid, (values[1], values[2]))
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
                values.append(raw)
            body += size
        else:
            return None
    return values


# -- ROS 1 bags ------------------------------------------------------------------------------------


def _read_ros1(path: Path) -> _Reading:
    """Reads a ROS 1 bag with ``rosbags``; a bag it cannot read is walked record by record."""
    from rosbags.rosbag1 import Reader

    reading = _Reading()
    # rosbags' AnyReader tells ROS 1 from ROS 2 by the ".bag" suffix; the content has said it.
    reader = Reader(path)
    try:
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several unrelated types
        # A bag's index is written last, so a recorder killed mid-write leaves none to open.
        reading = _walk_ros1(path)
        reading.problems.insert(0, f"rosbags cannot open it ({type(exc).__name__}: {exc}); read record by record")
        return reading
    try:
        expected: dict[str, int] = {}
        by_connection: dict[int, _TopicAcc] = {}
        for connection in reader.connections:
            acc = reading.topic(connection.topic, connection.msgtype, "ros1")
            by_connection[connection.id] = acc
            expected[connection.topic] = expected.get(connection.topic, 0) + connection.msgcount
        read = 0
        try:
            for connection, timestamp, _data in reader.messages():
                by_connection[connection.id].add(timestamp)
                read += 1
        except Exception as exc:  # noqa: BLE001 - damage surfaces as struct/rosbags errors
            walked = _walk_ros1(path)
            if walked.message_count > read:
                walked.problems.insert(0, f"rosbags stopped after {read} messages ({type(exc).__name__}: {exc}); "
                                          "read record by record")
                _compare_counts(walked, expected, "the bag index")
                return walked
            reading.problems.append(f"reading stopped after {read} messages ({type(exc).__name__}: {exc})")
            reading.lost = None
        _compare_counts(reading, expected, "the bag index")
    finally:
        # Closing a broken bag may fail too; that must not mask what was read.
        with contextlib.suppress(Exception):
            reader.close()
    return reading


_ROS1_CHUNK, _ROS1_CONNECTION, _ROS1_MESSAGE = 0x05, 0x07, 0x02


def _walk_ros1(path: Path) -> _Reading:
    """Counts a ROS 1 bag's messages from its records alone, without the index at its end.

    Chunks are decompressed as far as their data goes (``bz2`` and ``lz4`` decode block by
    block), so the chunk a truncated bag ends in still gives its complete messages.
    """
    from rosbags.typesys.msg import normalize_msgtype

    reading = _Reading(lost=None)
    connections: dict[int, _TopicAcc] = {}
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
            connections[struct.unpack("<I", fields["conn"][:4])[0]] = reading.topic(
                fields["topic"].decode(errors="replace"), type_, "ros1"
            )
        elif op == _ROS1_MESSAGE and "conn" in fields and len(fields.get("time", b"")) == 8:
            sec, nsec = struct.unpack("<II", fields["time"])
            acc = connections.get(struct.unpack("<I", fields["conn"][:4])[0])
            if acc is not None:
                acc.add(sec * 1_000_000_000 + nsec)
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
