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

* an MCAP file: read with the tolerant, CRC-checking scan of :mod:`.mcap_scan`, and its counts
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

This module owns the manifest itself: its records (:class:`FileManifest`, :class:`TopicStats`),
the verdict, duplicate marking within a robot-day, and the content hashes. Reading is elsewhere:
the walk (:mod:`.walk`), its accumulators (:mod:`.reading`) and one module per storage kind
(:mod:`.rosbag2`, :mod:`.db3` with :mod:`.sqlite_pages`, :mod:`.ros1`; MCAP in :mod:`.mcap_scan`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from flywheel_pipelines.lib.rosbag.columnar import ChannelInfo, decoder_problem
from flywheel_pipelines.lib.rosbag.reading import NO_MESSAGE, _Reading, _TopicAcc, describe_fatal
from flywheel_pipelines.lib.rosbag.report import _merge_ranges
from flywheel_pipelines.lib.rosbag.walk import read_log

__all__ = ["DAY_VERDICTS", "DUPLICATE", "VERDICTS", "FileManifest", "TopicStats", "inspect_log", "mark_duplicates"]

# ok: every message read, every check passed; recovered: damaged, but messages were read;
# empty: a valid log without messages; rejected: damaged beyond use (nothing could be read).
VERDICTS = ("ok", "recovered", "empty", "rejected")
# A robot-day's manifest adds one: a log whose bytes another log of the day already holds (a
# retried upload under a second name). It is recorded, and read once, through the other.
DUPLICATE = "duplicate"
DAY_VERDICTS = (*VERDICTS, DUPLICATE)

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
    stats = _acc_stats(reading.topics[name], name)
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


def _acc_stats(acc: _TopicAcc, topic: str) -> TopicStats:
    """The manifest's record of one topic from what the walk counted of it."""
    span_s = (acc.last_ns - acc.first_ns) / 1e9
    rate = (acc.count - 1) / span_s if acc.count > 1 and span_s > 0 else 0.0
    return TopicStats(
        topic=topic,
        type=acc.type,
        encoding=acc.encoding,
        count=acc.count,
        first_ns=acc.first_ns,
        last_ns=acc.last_ns,
        rate_hz=rate,
        undecodable=acc.undecodable,
        decode_error=acc.decode_error if acc.undecodable else None,
    )


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
