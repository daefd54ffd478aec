"""Tolerant, CRC-checked reading of MCAP robot logs.

Robot logs arrive damaged more often than not: a recorder killed mid-write leaves no footer, a
flaky disk flips bits, a preallocated file ends in zeros. ``mcap``'s own readers either trust the
summary section (and raise when it is missing) or raise at the first bad byte. This module walks
the file record by record itself, so it can keep everything that is intact and say precisely what
was not:

* **Pass 1 (index)** reads only record headers: chunk headers, top-level schema/channel records,
  message-index sizes and the prefix of top-level messages. Chunk payloads are skipped with a
  seek, so this pass is cheap even for multi-gigabyte files. Where a record cannot be framed
  (zeros, an unknown opcode, a length running past the end), the scan looks for the next
  plausible record: the next chunk the summary indexes if the file has one, else (and before
  it) the first offset holding a record whose fields agree with each other (a chunk with a known
  compression and a records length that adds up to its record length; a message on a known
  channel followed by another record; a strictly parseable schema or channel), and carries on
  from there, counting the bytes it skipped. A chunk whose record length is damaged but whose
  own header lays it out inside the file is read by that layout (its CRC then decides). A file
  cut inside a chunk keeps that chunk as *cut*.
* **Pass 2 (messages)** merges the chunks in log-time order with a heap keyed by each chunk's
  start time (the same strategy as ``mcap``'s seeking reader, so memory is bounded by the chunks
  that overlap in time). Each chunk is decompressed and its CRC checked on its own; a bad chunk is
  skipped and recorded, never half-trusted. The one exception is the cut chunk at the end of a
  truncated file: what is there is stream-decompressed (zstd and lz4 frames decode block by
  block) and every complete message before the cut is kept. No CRC can vouch for those (it covers
  the whole chunk), and the problem text says so.

At the end, if the file has a readable summary with statistics, the per-channel counts read are
compared with it: that comparison is what turns "a chunk failed" into "N messages were lost".
The log-time ranges that lost messages fall in are recorded too (``ReadStats.lost_ranges``): a
skipped chunk's header range, the part of a cut chunk after its last kept message, or, for a
stretch that could not be framed, the gap between the messages read before and after it.

Nothing here imports Dagster; the pipeline code calls :func:`iter_messages` /
:func:`iter_decoded` and :func:`flywheel_pipelines.lib.rosbag.manifest.inspect_log`.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import io
import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Self

from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.records import Channel, ChunkIndex, Schema, Statistics

from flywheel_pipelines.lib.settings import max_chunk_bytes

try:
    import zstandard
except ImportError:  # pragma: no cover - zstandard ships with mcap's usual installs
    zstandard = None  # type: ignore[assignment]
try:
    import lz4.frame as lz4_frame
except ImportError:  # pragma: no cover
    lz4_frame = None  # type: ignore[assignment]

__all__ = [
    "MCAP_MAGIC",
    "LogReadError",
    "RawMessage",
    "ReadStats",
    "iter_decoded",
    "iter_messages",
]

MCAP_MAGIC = b"\x89MCAP0\r\n"

_RECORD_HEADER = struct.Struct("<BQ")  # opcode, body length
_MESSAGE_PREFIX = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time
_CHUNK_FIXED = struct.Struct("<QQQII")  # start, end, uncompressed size, crc, compression len
_FOOTER = struct.Struct("<BQQQI")  # opcode, length, summary start, summary offset start, crc
_FOOTER_SIZE = _FOOTER.size
# Records (and decompressed chunks) larger than this are treated as a corrupt length field rather
# than allocated; ``mcap`` uses the same 4 GiB default.
_MAX_RECORD = 4 * 2**30
# opcode (1) + record length (8) + channel id, sequence, log time, publish time (22).
_MIN_MESSAGE_RECORD = 1 + 8 + _MESSAGE_PREFIX.size
# A damaged compression-name length would otherwise make us read megabytes as a string.
_MAX_COMPRESSION_NAME = 64
# Record kinds a data section may legitimately contain; other spec-defined opcodes belong to the
# summary section only.
_DATA_OPCODES = frozenset(
    {
        Opcode.HEADER,
        Opcode.SCHEMA,
        Opcode.CHANNEL,
        Opcode.MESSAGE,
        Opcode.CHUNK,
        Opcode.MESSAGE_INDEX,
        Opcode.ATTACHMENT,
        Opcode.METADATA,
        Opcode.DATA_END,
    }
)
# Summary-section records: out of place in the data section, but framed like any record.
_SUMMARY_OPCODES = frozenset(
    {
        Opcode.CHUNK_INDEX,
        Opcode.ATTACHMENT_INDEX,
        Opcode.METADATA_INDEX,
        Opcode.STATISTICS,
        Opcode.SUMMARY_OFFSET,
    }
)
_PARSE_ERRORS = (McapError, struct.error, ValueError, EOFError)
_COMPRESSIONS = frozenset({"", "zstd", "lz4"})
# Searching for the next record after damage: candidate opcodes, and how much is read at a time.
_SCAN_OPCODES = b"\x03\x04\x05\x06\x07\x0f"
_SCAN_WINDOW = 4 << 20
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class LogReadError(Exception):
    """A log that cannot be read at all (missing, empty, not MCAP, or damaged before any message).

    The message always starts with the file it is about, e.g.
    ``"raw/2024/run3.mcap: not an MCAP file (starts with b'hello')"``.

    Attributes:
        source: The file (path or lake key) the error is about, when known.
        problem: The problem alone, without the file name, when known.
    """

    def __init__(self, message: str, *, source: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.source = source
        self.problem = problem


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as stored in the log, payload still serialized.

    Attributes:
        topic: Topic name, e.g. ``"/joint_states"``.
        schema_name: Message type from the channel's schema, e.g. ``"sensor_msgs/msg/JointState"``;
            ``""`` for a schemaless channel.
        log_time_ns: Time the recorder received the message (ns since the epoch).
        publish_time_ns: Time the publisher sent it (ns since the epoch).
        data: The serialized payload (CDR for ROS 2 logs).
    """

    topic: str
    schema_name: str
    log_time_ns: int
    publish_time_ns: int
    data: bytes


@dataclass
class ReadStats:
    """What happened while reading one log; pass one in to learn about damage and skips.

    The reader fills it in as it goes, so it is complete once the iterator is exhausted (a
    consumer that stops early sees the counts up to that point).

    Attributes:
        source: The name problems and :class:`LogReadError` use for the file. Set it before
            reading (e.g. to the lake key) to have them name that; left empty, the reader sets it
            to the path.
        messages: Messages read from the log so far (for :func:`iter_decoded` this includes the
            ``undecodable`` ones it skipped).
        undecodable: Messages :func:`iter_decoded` skipped because they did not decode.
        undecodable_by_topic: ``undecodable`` split by topic.
        first_decode_error: The first decode failure, as ``"<topic>: <error>"``.
        problems: Damage found, one entry per problem, without the file name (see
            :meth:`describe`). Empty for an intact file.
        lost_messages: Messages known to be lost to damage among the requested topics (from the
            summary statistics when the file has them, else from the message indexes of skipped
            chunks); ``None`` when damage was found but the loss cannot be counted (a truncated
            file has no summary to compare with).
        lost_ranges: Log-time intervals ``(first_ns, last_ns)``, sorted and not overlapping, that
            contain the messages lost to damage (bounds may equal the times of kept messages):
            a skipped chunk's header range, the rest of a cut chunk after its last kept message,
            or the gap around a stretch of bytes that could not be read. Loss whose times are
            unknown (the tail after a cut between chunks) has no range; the problems say so.
        skipped_bytes: Bytes of the data section skipped over while looking for the next
            readable record after damage.
    """

    source: str = ""
    messages: int = 0
    undecodable: int = 0
    undecodable_by_topic: dict[str, int] = field(default_factory=dict)
    first_decode_error: str | None = None
    problems: list[str] = field(default_factory=list)
    lost_messages: int | None = 0
    lost_ranges: list[tuple[int, int]] = field(default_factory=list)
    skipped_bytes: int = 0
    # Filled by ``columnar.read_columns``: messages read per requested topic (decoded or not) and
    # each topic's encodings (``"<message encoding>/<schema encoding>"``).
    read_by_topic: dict[str, int] = field(default_factory=dict)
    encoding_by_topic: dict[str, str] = field(default_factory=dict)
    decode_error_by_topic: dict[str, str] = field(default_factory=dict)  # the first failure per topic

    @property
    def damaged(self) -> bool:
        """Whether any damage was found."""
        return bool(self.problems)

    def describe(self) -> str | None:
        """The problems as one line naming the file, or ``None`` if there were none."""
        if not self.problems:
            return None
        return f"{self.source}: " + "; ".join(self.problems)


# Formats an upload is commonly mistaken for, named by their magic. A message never quotes the
# file's own bytes: a raw file may hold anything (a key, a password) and reasons reach run logs.
_KNOWN_MAGIC = ((b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip stream"), (b"\x28\xb5\x2f\xfd", "a zstd frame"),
                (b"\x04\x22\x4d\x18", "an LZ4 frame"), (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                (b"BZh", "a bzip2 stream"), (b"\xfd7zXZ", "an xz stream"), (b"%PDF", "a PDF document"))


def _hex_hint(head: bytes) -> str:
    """``: it looks like a ZIP archive`` for a known format, nothing otherwise (never the bytes)."""
    for magic, name in _KNOWN_MAGIC:
        if head.startswith(magic):
            return f"; it looks like {name}"
    return ""


def iter_messages(
    path: str | Path,
    *,
    topics: Collection[str] | None = None,
    stats: ReadStats | None = None,
) -> Iterator[RawMessage]:
    """Iterates over the messages of an MCAP file in log-time order.

    Reading is tolerant: chunks are CRC-checked one by one, a damaged chunk is skipped, a
    truncated file yields everything before the cut, and the damage is recorded in ``stats``
    instead of raised. Equal log times keep their file order.

    Args:
        path: The ``.mcap`` file.
        topics: Only yield these topics (``None``: all). Chunks whose message indexes show none of
            these topics are not even decompressed.
        stats: Filled in with counts and the damage found (see :class:`ReadStats`).

    Yields:
        The messages, oldest log time first.

    Raises:
        LogReadError: Only before the first message: the file is missing, empty, not MCAP, or so
            damaged that no message could be read. Never raised once a message was yielded.
    """
    for raw, _channel, _schema in _iter_scan(path, topics, stats):
        yield raw


def iter_decoded(
    path: str | Path,
    *,
    topics: Collection[str] | None = None,
    stats: ReadStats | None = None,
) -> Iterator[tuple[RawMessage, Any]]:
    """Iterates over an MCAP file's ROS 2 messages, decoded, in log-time order.

    Each message is decoded with ``mcap_ros2``'s :class:`~mcap_ros2.decoder.DecoderFactory`, using
    the message definition stored in the file's schema (so no ROS installation is needed).
    Messages that cannot be decoded (non-CDR channels, schemas the decoder cannot parse, payloads
    that do not match their schema) are skipped and counted in ``stats.undecodable``.

    Args:
        path: The ``.mcap`` file.
        topics: Only yield these topics (``None``: all).
        stats: Filled in with counts, decode failures and damage (see :class:`ReadStats`).

    Yields:
        ``(raw, decoded)`` pairs; ``decoded`` has the ROS fields as attributes
        (``decoded.header.stamp.sec``, ``decoded.position``, ...).

    Raises:
        LogReadError: As for :func:`iter_messages`.
    """
    stats = stats if stats is not None else ReadStats()
    factory = _decoder_factory()
    # Per channel: a decoder, or the reason there is none (so a bad schema costs one attempt).
    decoders: dict[int, Any] = {}
    for raw, channel, schema in _iter_scan(path, topics, stats):
        decoder = decoders.get(channel.id)
        if decoder is None:
            decoder = decoders[channel.id] = _build_decoder(factory, channel, schema)
        if isinstance(decoder, str):
            _count_undecodable(stats, raw.topic, decoder)
            continue
        try:
            decoded = decoder(raw.data)
        except Exception as exc:  # noqa: BLE001 - a payload that does not match its schema
            _count_undecodable(stats, raw.topic, f"{type(exc).__name__}: {exc}")
            continue
        yield raw, decoded


def _decoder_problem(message_encoding: str, schema: Schema | None) -> str | None:
    """Why a channel's messages cannot be decoded as ROS 2, judged from its encodings alone.

    This is the test :func:`iter_decoded` applies before it parses a schema: only CDR messages
    with a ``ros2msg`` schema have a decoder.

    Args:
        message_encoding: The channel's message encoding, e.g. ``"cdr"``.
        schema: The channel's schema, ``None`` for a schemaless channel.

    Returns:
        The reason, or ``None`` when a decoder applies (the schema may still fail to parse).
    """
    if message_encoding == "cdr" and schema is not None and schema.encoding == "ros2msg":
        return None
    encoding = schema.encoding if schema is not None else "none"
    return f"no ROS 2 decoder for message encoding {message_encoding!r} with schema encoding {encoding!r}"


def _decoder_factory() -> Any:
    from mcap_ros2.decoder import DecoderFactory

    return DecoderFactory()


def _build_decoder(factory: Any, channel: Channel, schema: Schema | None) -> Any:
    """A decoder function for the channel, or the reason there is none (a string)."""
    problem = _decoder_problem(channel.message_encoding, schema)
    if problem is not None:
        return problem
    try:
        decoder = factory.decoder_for(channel.message_encoding, schema)
    except Exception as exc:  # noqa: BLE001 - the schema text is untrusted input
        name = schema.name if schema is not None else ""
        return f"schema {name!r} cannot be parsed: {exc}"
    return decoder if decoder is not None else f"no ROS 2 decoder for message encoding {channel.message_encoding!r}"


def _count_undecodable(stats: ReadStats, topic: str, why: str) -> None:
    stats.undecodable += 1
    stats.undecodable_by_topic[topic] = stats.undecodable_by_topic.get(topic, 0) + 1
    stats.decode_error_by_topic.setdefault(topic, why)
    if stats.first_decode_error is None:
        stats.first_decode_error = f"{topic}: {why}"


def _topic_set(topics: Collection[str] | None) -> frozenset[str] | None:
    if topics is None:
        return None
    if isinstance(topics, str):
        # A lone string is a common slip; treating it as a set of characters would match nothing.
        return frozenset({topics})
    return frozenset(topics)


def _iter_scan(
    path: str | Path,
    topics: Collection[str] | None,
    stats: ReadStats | None,
    label: str | None = None,
) -> Iterator[tuple[RawMessage, Channel, Schema | None]]:
    p = Path(path)
    stats = stats if stats is not None else ReadStats()
    # A caller that set ``stats.source`` (e.g. to the lake key) wants problems to name that.
    label = label or stats.source or str(p)
    stats.source = label
    with _McapScan(p, label, _topic_set(topics), stats) as scan:
        scan.index()
        yield from scan.messages()
        readable = scan.readable
    if stats.messages == 0 and stats.problems and not readable:
        raise LogReadError(
            f"{stats.describe()}; no message could be read",
            source=label,
            problem="; ".join(stats.problems),
        )


@dataclass(slots=True)
class _Unit:
    """A piece of the data section that pass 2 loads as a whole: a chunk or a top-level message."""

    offset: int  # byte offset of the record's opcode
    start_time: int  # earliest log time it may contain: the heap key
    is_chunk: bool
    end_time: int = 0  # chunk: latest log time, per its header
    body_length: int = 0  # top-level message: record body length
    channel_id: int = -1  # top-level message: its channel
    data_offset: int = 0  # chunk: where its (compressed) records start
    data_length: int = 0
    compression: str = ""
    uncompressed_size: int = 0
    uncompressed_crc: int = 0
    # chunk: channel id -> messages, from the MessageIndex records that follow it (None: absent)
    index_counts: dict[int, int] | None = None
    # chunk: (file offset, body length) of each MessageIndex record after it; the columnar reader
    # reads their (log time, offset) entries to find messages without walking the chunk.
    index_records: list[tuple[int, int]] = field(default_factory=list)
    loaded: bool = False
    # chunk: the file ends inside its records (a truncated file). ``_chunk_records`` raises
    # ``_Damage`` for it as for any incomplete chunk; pass 2 salvages it message by message.
    cut: bool = False
    # chunk: zeros follow it where the next record should start, as in a preallocated file whose
    # writing stopped; if the chunk fails its checks, it is salvaged up to where the zeros begin.
    zero_tail: bool = False


@dataclass
class _Summary:
    schemas: dict[int, Schema]
    channels: dict[int, Channel]
    chunk_indexes: list[ChunkIndex]
    statistics: Statistics | None


# start, end, uncompressed size, CRC, compression (None: corrupt name length), header length,
# records length
_ChunkHeader = tuple[int, int, int, int, str | None, int, int]
_KIND = {
    Opcode.MESSAGE: "message",
    Opcode.SCHEMA: "schema",
    Opcode.CHANNEL: "channel",
}


def _scan_pattern(limit: int) -> re.Pattern[bytes]:
    """Candidate record starts: an opcode, then a length whose bytes above ``limit`` are zero."""
    return _compiled_scan_pattern(8 - max(1, (limit.bit_length() + 7) // 8))


@functools.cache
def _compiled_scan_pattern(zero_bytes: int) -> re.Pattern[bytes]:
    opcodes = b"[" + b"".join(re.escape(bytes([b])) for b in _SCAN_OPCODES) + b"]"
    # The lookahead (rather than matching the length) lets candidates overlap.
    return re.compile(opcodes + b"(?=.{%d}\\x00{%d})" % (8 - zero_bytes, zero_bytes), re.DOTALL)


def _definition_fits(opcode: int, length: int, read_at: Callable[[int, int], bytes], body: int) -> bool:
    """Whether a schema or channel record's own length fields add up to exactly its ``length``.

    Only the length fields are read (at ``body`` onwards), never the text or data between them.
    """
    if opcode == Opcode.SCHEMA:
        head = read_at(body, 2)
        if len(head) < 2 or _U16.unpack(head)[0] == 0:  # schema id 0 means "no schema"
            return False
        position = 2  # then name, encoding and data, each with a u32 length
    else:
        position = 4  # channel id, schema id; then topic, message encoding, metadata map
    for _ in range(3):
        if position + 4 > length:
            return False
        size = read_at(body + position, 4)
        if len(size) < 4:
            return False
        position += 4 + _U32.unpack(size)[0]
    return position == length


@dataclass(slots=True)
class _Walk:
    """What walking one chunk's records found."""

    messages: int = 0
    stop: int | None = None  # offset of the first record that could not be framed
    record_number: int = 0
    first_time: int | None = None
    last_time: int | None = None
    in_order: bool = True


def _check_chunk_limit(unit: Any) -> None:
    """Refuses a chunk that declares more decompressed bytes than the configured per-chunk limit
    (``FLYWHEEL_MAX_CHUNK_BYTES``), before anything is decompressed or allocated."""
    limit = max_chunk_bytes()
    if unit.compression and unit.uncompressed_size > limit:
        raise _Damage(f"a {unit.compression} chunk of {unit.data_length} bytes declares {unit.uncompressed_size} bytes "
                      f"decompressed, above the per-chunk limit of {limit} (FLYWHEEL_MAX_CHUNK_BYTES): refused, "
                      "not decompressed")


class _Damage(Exception):
    """A damaged chunk; the message says what is wrong with it."""


class _McapScan:
    """One tolerant read of one MCAP file (see the module docstring for the two passes).

    Used by :func:`iter_messages` and by ``manifest.inspect_log``; not part of the public API.
    """

    def __init__(
        self, path: Path, label: str, topics: frozenset[str] | None, stats: ReadStats
    ) -> None:
        self.path = path
        self.label = label
        self.topics = topics
        self.stats = stats
        self.size = 0
        self.schemas: dict[int, Schema] = {}
        self.channels: dict[int, Channel] = {}
        self.summary: _Summary | None = None
        self.has_footer = False
        self.data_end_offset: int | None = None
        self.data_section_crc = 0
        self.read_by_channel: Counter[int] = Counter()
        self._units: list[_Unit] = []
        self._defs_loaded_before = 0  # units [0, n) have been loaded for their definitions
        self._orphans: Counter[int] = Counter()
        self._orphan_span: tuple[int, int] | None = None  # log times of the orphaned messages
        # Whether some message record was found intact, or some part was left unread by the topic
        # filter: a damaged file with neither is "unreadable" (LogReadError), not merely empty.
        self.readable = False
        self._fh: BinaryIO | None = None
        self._limit = 0  # where the data section ends (the summary start, the footer or EOF)
        # Stretches pass 1 could not frame: (where the damage starts, where reading resumed or
        # None). Their lost time ranges are worked out once every unit around them is known.
        self._skips: list[tuple[int, int | None]] = []
        # The chunk that MessageIndex records read now belong to (None after anything else).
        self._index_target: _Unit | None = None
        self._cut_problem: int | None = None  # index in stats.problems of the cut-chunk problem

    # -- opening --------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _fatal(self, problem: str) -> LogReadError:
        return LogReadError(f"{self.label}: {problem}", source=self.label, problem=problem)

    def _open(self) -> None:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed in __exit__
        except IsADirectoryError:
            raise self._fatal("is a directory, not an MCAP file") from None
        except OSError as exc:
            raise self._fatal(f"cannot open: {exc.strerror or exc}") from None
        self._fh = fh
        self.size = fh.seek(0, io.SEEK_END)
        fh.seek(0)
        head = fh.read(len(MCAP_MAGIC))
        if self.size == 0:
            fh.close()
            raise self._fatal("empty file (0 bytes)")
        if head != MCAP_MAGIC:
            fh.close()
            raise self._fatal(f"not an MCAP file (no known magic bytes at its start{_hex_hint(head)})")

    def _read_at(self, offset: int, length: int) -> bytes:
        # pread: no shared file position, so the columnar reader may load chunks on another thread.
        assert self._fh is not None
        return os.pread(self._fh.fileno(), length, offset)

    def _problem(self, text: str) -> None:
        self.stats.problems.append(text)

    def _add_lost(self, count: int | None) -> None:
        if count is None:
            self.stats.lost_messages = None
        elif self.stats.lost_messages is not None:
            self.stats.lost_messages += count

    # -- footer and summary ---------------------------------------------------------------------

    def _read_footer_and_summary(self) -> int:
        """Reads the footer and, if its CRC holds, the summary; returns where the data section ends.

        A file without a valid footer was not closed (or lost its tail): the data section then
        runs to the end of the file and pass 1 finds where it breaks off.
        """
        tail_size = _FOOTER_SIZE + len(MCAP_MAGIC)
        if self.size < len(MCAP_MAGIC) + tail_size:
            return self.size
        tail = self._read_at(self.size - tail_size, tail_size)
        if tail[_FOOTER_SIZE:] != MCAP_MAGIC:
            return self.size
        opcode, length, summary_start, _summary_offset_start, summary_crc = _FOOTER.unpack(
            tail[:_FOOTER_SIZE]
        )
        if opcode != Opcode.FOOTER or length != _FOOTER_SIZE - 9:
            return self.size
        self.has_footer = True
        footer_offset = self.size - tail_size
        if summary_start == 0:
            return footer_offset
        if not len(MCAP_MAGIC) <= summary_start < footer_offset:
            self._problem(f"footer points to a summary at byte {summary_start}, outside the file")
            return footer_offset
        # The summary CRC covers the summary and the footer up to its own CRC field.
        covered = self._read_at(summary_start, footer_offset - summary_start + _FOOTER_SIZE - 4)
        if summary_crc != 0 and zlib.crc32(covered) != summary_crc:
            self._problem("summary section CRC mismatch; summary ignored")
            return footer_offset
        try:
            self.summary = _parse_summary(covered[: footer_offset - summary_start])
        except _PARSE_ERRORS as exc:
            self._problem(f"summary section unreadable ({_error_text(exc)}); summary ignored")
            return footer_offset
        # Definitions from the data section, read later, take precedence over these copies.
        self.schemas.update(self.summary.schemas)
        self.channels.update(self.summary.channels)
        return summary_start

    # -- pass 1 -----------------------------------------------------------------------------------

    def index(self) -> None:
        """Pass 1: frames every record of the data section without decompressing anything."""
        limit = self._limit = self._read_footer_and_summary()
        pos = len(MCAP_MAGIC)
        first = True
        chunk_end: tuple[int, _Unit] | None = None  # where the last framed chunk record ended
        while True:
            if pos >= limit:
                if not self.has_footer and self._cut_problem is None:
                    self._problem(
                        f"truncated: the file ends at byte {self.size} without a DataEnd record "
                        "or footer (the recording was not closed)"
                    )
                break
            if limit - pos < _RECORD_HEADER.size:
                pos = self._framing_damage(pos, f"only {limit - pos} bytes left, a partial record")
                if pos is None:
                    break
                continue
            opcode, length = _RECORD_HEADER.unpack(self._read_at(pos, _RECORD_HEADER.size))
            end = pos + _RECORD_HEADER.size + length
            why = None
            if opcode == 0:
                why = "zero bytes where a record should start (zero-filled or overwritten)"
                if chunk_end is not None and chunk_end[0] == pos:
                    chunk_end[1].zero_tail = True
            elif end > limit:
                if opcode == Opcode.CHUNK:
                    resume = self._index_overlong_chunk(pos, length)
                    if resume is not None:
                        first = False
                        if resume >= self.size:
                            break  # a cut chunk: the file ends inside it
                        pos = resume
                        continue
                why = (
                    f"a record (opcode 0x{opcode:02x}) declares {length} bytes but only "
                    f"{limit - pos - _RECORD_HEADER.size} remain"
                )
            elif (
                opcode < 0x80
                and opcode not in _DATA_OPCODES
                and opcode not in _SUMMARY_OPCODES
                and opcode != Opcode.FOOTER
            ):
                # 0x80-0xff are user records, fine to skip; no spec-defined record has this one.
                why = f"unknown record opcode 0x{opcode:02x}"
            if why is not None:
                first = False
                pos = self._framing_damage(pos, why)
                if pos is None:
                    break
                continue
            if first and opcode != Opcode.HEADER:
                self._problem(f"the first record is opcode 0x{opcode:02x}, not a Header")
            first = False
            if opcode == Opcode.DATA_END:
                self.data_end_offset = pos
                if length >= 4:
                    (self.data_section_crc,) = struct.unpack("<I", self._read_at(pos + 9, 4))
                if not self.has_footer:
                    # Every message was written before the cut, but the file is still damaged.
                    self._problem(
                        f"truncated after the data section: no valid footer at the end of the "
                        f"file ({self.size} bytes); no message is lost"
                    )
                break
            if opcode == Opcode.FOOTER:
                break  # a writer that skipped DataEnd: the summary or footer starts here
            units = len(self._units)
            self._index_record(pos, opcode, length)
            chunk_end = (end, self._units[-1]) if opcode == Opcode.CHUNK and len(self._units) > units else None
            pos = end
        self._skip_ranges()

    def _index_record(self, pos: int, opcode: int, length: int) -> None:
        body = pos + _RECORD_HEADER.size
        if opcode == Opcode.CHUNK:
            self._index_chunk(pos, length)
            return
        if opcode == Opcode.MESSAGE_INDEX:
            # Message indexes follow their chunk; their sizes give its per-channel message counts,
            # which let pass 2 skip chunks of unwanted topics and count what a bad chunk lost.
            target = self._index_target
            if length >= 6 and target is not None:
                channel_id, records_length = struct.unpack("<HI", self._read_at(body, 6))
                counts = target.index_counts
                if counts is None:
                    counts = target.index_counts = {}
                counts[channel_id] = counts.get(channel_id, 0) + records_length // 16
                target.index_records.append((body, length))
            return
        if opcode == Opcode.MESSAGE:
            self._index_target = None
            if length < _MESSAGE_PREFIX.size:
                self._problem(f"message record at byte {pos} is too short ({length} bytes)")
                self._add_lost(1)
                return
            channel_id, _seq, log_time, _pub = _MESSAGE_PREFIX.unpack(
                self._read_at(body, _MESSAGE_PREFIX.size)
            )
            channel = self.channels.get(channel_id)
            if channel is not None and not self._wanted(channel):
                self.readable = True  # intact, merely not asked for
                return
            self._units.append(
                _Unit(pos, log_time, False, body_length=length, channel_id=channel_id)
            )
        elif opcode in (Opcode.SCHEMA, Opcode.CHANNEL):
            try:
                self._define(opcode, self._read_at(body, length))
            except _PARSE_ERRORS as exc:
                kind = "schema" if opcode == Opcode.SCHEMA else "channel"
                self._problem(f"{kind} record at byte {pos} unreadable ({_error_text(exc)})")
        elif opcode in _SUMMARY_OPCODES:
            self._problem(f"unexpected record opcode 0x{opcode:02x} at byte {pos} skipped")

    def _chunk_header(self, pos: int) -> _ChunkHeader | None:
        """The chunk header at ``pos``: start, end, uncompressed size, CRC, compression (None
        for an implausibly long name), header length (from the body start to the records) and
        records length; None if the file ends inside it."""
        fixed = self._read_at(pos + _RECORD_HEADER.size, _CHUNK_FIXED.size)
        if len(fixed) < _CHUNK_FIXED.size:
            return None
        start, end, usize, crc, name_length = _CHUNK_FIXED.unpack(fixed)
        header_length = _CHUNK_FIXED.size + name_length + 8
        if name_length > _MAX_COMPRESSION_NAME:
            return start, end, usize, crc, None, header_length, 0
        rest = self._read_at(pos + _RECORD_HEADER.size + _CHUNK_FIXED.size, name_length + 8)
        if len(rest) < name_length + 8:
            return None
        try:
            compression = rest[:name_length].decode()
        except UnicodeDecodeError:
            compression = repr(rest[:name_length])
        (records_length,) = _U64.unpack_from(rest, name_length)
        return start, end, usize, crc, compression, header_length, records_length

    def _index_chunk(self, pos: int, length: int) -> None:
        self._index_target = None
        header = self._chunk_header(pos) if length >= _CHUNK_FIXED.size + 8 else None
        if header is None:
            self._problem(f"chunk at byte {pos}: header cut short")
            self._add_lost(None)
            return
        _start, _end, _usize, _crc, compression, header_length, records_length = header
        if compression is None or header_length > length:
            self._problem(f"chunk at byte {pos}: corrupt header (compression name length)")
            self._add_lost(None)
            return
        if records_length > length - header_length:
            self._problem(f"chunk at byte {pos}: corrupt header (records length)")
            self._add_lost(None)
            return
        self._add_chunk(pos, header)

    def _add_chunk(self, pos: int, header: _ChunkHeader, *, cut: bool = False) -> _Unit:
        start, end, usize, crc, compression, header_length, records_length = header
        unit = _Unit(
            pos,
            start,
            True,
            end_time=end,
            data_offset=pos + _RECORD_HEADER.size + header_length,
            data_length=records_length,
            compression=compression or "",
            uncompressed_size=usize,
            uncompressed_crc=crc,
            cut=cut,
        )
        self._units.append(unit)
        self._index_target = unit
        return unit

    def _index_overlong_chunk(self, pos: int, length: int) -> int | None:
        """A chunk whose record length runs past the data section: read it by its own layout.

        Either the record length is damaged and the chunk header (compression, records length)
        lays the chunk out inside the file, or the file was cut inside the chunk. Returns where
        to continue (the file size for a cut chunk), or None when neither holds.
        """
        header = self._chunk_header(pos)
        if header is None or not self._sane_chunk_header(header):
            return None
        _start, _end, _usize, _crc, compression, header_length, records_length = header
        data_offset = pos + _RECORD_HEADER.size + header_length
        layout_end = data_offset + records_length
        if layout_end <= self._limit:
            self._problem(
                f"chunk at byte {pos}: its record length ({length} bytes) runs past the data "
                f"section, but its header lays it out in {layout_end - pos - _RECORD_HEADER.size} "
                "bytes; read by that layout (the chunk CRC decides whether it is intact)"
            )
            self._add_chunk(pos, header)
            return layout_end
        if self.has_footer or data_offset >= self.size:
            return None
        # The file ends inside this chunk's records: what is there is salvaged in pass 2.
        self._add_chunk(pos, header, cut=True)
        self._cut_problem = len(self.stats.problems)
        self._problem(
            f"truncated at byte {self.size}: the file ends inside the chunk at byte {pos} "
            f"({self.size - data_offset} of its {records_length} bytes of "
            f"{compression or 'uncompressed'} records are present)"
        )
        self._add_lost(None)
        return self.size

    @staticmethod
    def _sane_chunk_header(header: _ChunkHeader) -> bool:
        start, end, usize, _crc, compression, _header_length, records_length = header
        return (
            compression in _COMPRESSIONS
            and start <= end
            and usize <= _MAX_RECORD
            and records_length <= _MAX_RECORD
            and (compression != "" or usize == records_length)
        )

    def _framing_damage(self, pos: int, why: str) -> int | None:
        """Records a record that cannot be framed; returns where to resume, or None to stop."""
        self._index_target = None
        indexed = self._resync_after(pos)
        found = self._scan_forward(pos + 1, indexed if indexed is not None else self._limit)
        resume = found[0] if found is not None else indexed
        if resume is not None:
            what = (
                "next indexed chunk"
                if found is None or resume == indexed
                else f"next readable record ({found[1]})"
            )
            self._problem(
                f"unreadable record at byte {pos}: {why}; skipped {resume - pos} bytes to the "
                f"{what} at byte {resume}"
            )
            self.stats.skipped_bytes += resume - pos
            self._skips.append((pos, resume))
            # Whatever lay in the skipped stretch is only countable against the summary.
            self._add_lost(None)
            return resume
        if self.has_footer:
            self._problem(f"unreadable record at byte {pos}: {why}; nothing after it is indexed")
        else:
            self._problem(f"truncated at byte {pos} of {self.size}: {why}")
        self.stats.skipped_bytes += self._limit - pos
        self._skips.append((pos, None))
        self._add_lost(None)
        return None

    def _resync_after(self, pos: int) -> int | None:
        """The next chunk after ``pos`` that the summary indexes and that still looks intact."""
        if self.summary is None:
            return None
        for index in sorted(self.summary.chunk_indexes, key=lambda c: c.chunk_start_offset):
            offset = index.chunk_start_offset
            if offset <= pos or offset + index.chunk_length > self.size:
                continue
            header = self._read_at(offset, _RECORD_HEADER.size)
            if len(header) < _RECORD_HEADER.size:
                continue
            opcode, length = _RECORD_HEADER.unpack(header)
            if opcode == Opcode.CHUNK and length + _RECORD_HEADER.size == index.chunk_length:
                return offset
        return None

    # -- finding the next record after damage ---------------------------------------------------

    def _scan_forward(self, start: int, bound: int) -> tuple[int, str] | None:
        """The first offset in ``[start, bound)`` where a plausible record starts, and its kind.

        Candidates are found with one regular expression (a record opcode followed by a length
        whose high bytes are zero, since it must fit in the file), so random or zeroed stretches
        are crossed at C speed; each candidate is then checked field by field.
        """
        if start >= bound:
            return None
        pattern = _scan_pattern(self._limit)
        window_start = start
        while window_start < bound:
            window_end = min(bound, window_start + _SCAN_WINDOW)
            window = self._read_at(window_start, window_end - window_start + _RECORD_HEADER.size)
            span = window_end - window_start
            # No endpos: the lookahead must see the length bytes past the window's end.
            for match in pattern.finditer(window):
                if match.start() >= span:
                    break
                offset = window_start + match.start()
                kind = self._plausible_record(offset)
                if kind is not None:
                    return offset, kind
            window_start = window_end
        return None

    def _plausible_record(self, pos: int, follow: int | None = None) -> str | None:
        """What record starts at ``pos``, if its fields agree with each other; else None.

        A message or definition has few self-checking fields, so it is only believed when a
        plausible record (or the end of the data section) follows it; a message on a channel not
        defined yet (its definition may sit in a chunk, read in pass 2) needs two more records.
        ``follow`` is how many of the records after it must be checked this way too.
        """
        header = self._read_at(pos, _RECORD_HEADER.size)
        if len(header) < _RECORD_HEADER.size:
            return None
        opcode, length = _RECORD_HEADER.unpack(header)
        end = pos + _RECORD_HEADER.size + length
        if opcode == Opcode.CHUNK:
            chunk = self._chunk_header(pos)
            if chunk is None or not self._sane_chunk_header(chunk):
                return None
            if chunk[5] + chunk[6] != length:
                return None
            # A chunk cut by the end of a file that has no footer is still worth salvaging.
            return "chunk" if end <= self._limit or not self.has_footer else None
        if end > self._limit:
            return None
        if opcode == Opcode.DATA_END:
            return "DataEnd" if length == 4 else None
        if opcode == Opcode.MESSAGE_INDEX:
            if length < 6:
                return None
            (records_length,) = _U32.unpack(self._read_at(pos + 11, 4))
            return "message index" if records_length % 16 == 0 and records_length + 6 == length else None
        if opcode == Opcode.MESSAGE:
            if length < _MESSAGE_PREFIX.size:
                return None
            (channel_id,) = _U16.unpack(self._read_at(pos + _RECORD_HEADER.size, 2))
            if follow is None and channel_id not in self.channels:
                follow = 2
        elif opcode in (Opcode.SCHEMA, Opcode.CHANNEL):
            if not _definition_fits(opcode, length, self._read_at, pos + _RECORD_HEADER.size):
                return None
        else:
            return None
        if end == self._limit:
            return _KIND[opcode]
        if follow is not None and follow > 1:
            return _KIND[opcode] if self._plausible_record(end, follow - 1) is not None else None
        after = self._read_at(end, _RECORD_HEADER.size)
        if len(after) < _RECORD_HEADER.size:
            return None
        next_opcode, next_length = _RECORD_HEADER.unpack(after)
        next_end = end + _RECORD_HEADER.size + next_length
        if next_opcode in _DATA_OPCODES and (next_end <= self._limit or not self.has_footer):
            return _KIND[opcode]
        return None

    def _skip_ranges(self) -> None:
        """The log-time ranges the stretches skipped in pass 1 may have held.

        The summary's chunk indexes give exact ranges for the chunks inside a stretch; without
        them, the range is the gap between the last time read before it and the first after it.
        """
        if not self._skips:
            return
        statistics = self.summary.statistics if self.summary is not None else None
        for pos, resume in self._skips:
            stop = resume if resume is not None else self._limit
            indexed = [
                (c.message_start_time, c.message_end_time)
                for c in (self.summary.chunk_indexes if self.summary is not None else ())
                if pos <= c.chunk_start_offset < stop
            ]
            if indexed:
                self.stats.lost_ranges.extend(indexed)
                continue
            # The units are in file order: the nearest ones on either side bound the stretch.
            before = next((u for u in reversed(self._units) if u.offset < pos), None)
            after = next((u for u in self._units if u.offset >= stop), None)
            low = (
                (before.end_time if before.is_chunk else before.start_time)
                if before is not None
                else (statistics.message_start_time if statistics else None)
            )
            high = (
                after.start_time
                if after is not None
                else (statistics.message_end_time if statistics else None)
            )
            if low is not None and high is not None:
                self.stats.lost_ranges.append((min(low, high), max(low, high)))

    def _define(self, opcode: int, body: bytes) -> None:
        stream = ReadDataStream(io.BytesIO(body))
        if opcode == Opcode.SCHEMA:
            schema = Schema.read(stream)
            self.schemas[schema.id] = schema
        else:
            channel = Channel.read(stream)
            self.channels[channel.id] = channel

    def _wanted(self, channel: Channel) -> bool:
        return self.topics is None or channel.topic in self.topics

    def _chunk_wanted(self, unit: _Unit) -> bool:
        if self.topics is None or unit.index_counts is None:
            return True
        for channel_id in unit.index_counts:
            channel = self.channels.get(channel_id)
            if channel is None or channel.topic in self.topics:
                return True
        return False

    # -- pass 2 -----------------------------------------------------------------------------------

    def messages(self) -> Iterator[tuple[RawMessage, Channel, Schema | None]]:
        """Pass 2: yields the messages in log-time order, then checks the counts."""
        # Heap entries: (time, 0 = unit to load | 1 = message, unit number, record number, item).
        # Units sort before messages of the same time so that loading one can still place its
        # messages ahead; unit and record numbers keep equal times in file order.
        heap: list[tuple[int, int, int, int, Any]] = []
        for number, unit in enumerate(self._units):
            if not unit.is_chunk or self._chunk_wanted(unit):
                heap.append((unit.start_time, 0, number, 0, None))
            else:
                self.readable = True  # not read, but nothing says it is damaged
        heapq.heapify(heap)
        while heap:
            _time, kind, number, _record, item = heapq.heappop(heap)
            if kind == 0:
                self._load(number, heap)
                continue
            channel, message = item
            self.read_by_channel[channel.id] += 1
            self.stats.messages += 1
            schema = self.schemas.get(channel.schema_id) if channel.schema_id else None
            yield (
                RawMessage(
                    topic=channel.topic,
                    schema_name=schema.name if schema is not None else "",
                    log_time_ns=message[2],
                    publish_time_ns=message[3],
                    data=message[4],
                ),
                channel,
                schema,
            )
        self._finish()

    def _load(self, number: int, heap: list[tuple[int, int, int, int, Any]]) -> None:
        unit = self._units[number]
        if unit.loaded:
            return
        unit.loaded = True
        if not unit.is_chunk:
            body = self._read_at(unit.offset + _RECORD_HEADER.size, unit.body_length)
            if len(body) < unit.body_length:  # the file shrank since pass 1
                self._problem(f"message at byte {unit.offset} could not be read back")
                self._add_lost(1)
                return
            message = _MESSAGE_PREFIX.unpack_from(body) + (body[_MESSAGE_PREFIX.size :],)
            self._place(number, 0, message, heap)
            self.readable = True
            return
        if unit.cut:
            self._load_cut_chunk(number, unit, heap)
            return
        if unit.zero_tail and not unit.uncompressed_crc:
            # Without a CRC nothing tells zeros the writer never wrote from data: stop where they start.
            self._load_cut_chunk(number, unit, heap, damage="no CRC to check")
            return
        try:
            records = self._chunk_records(unit)
        except _Damage as exc:
            if unit.zero_tail:
                self._load_cut_chunk(number, unit, heap, damage=str(exc))
                return
            self._problem(f"chunk at byte {unit.offset}: {exc}; skipped")
            lost = self._chunk_message_count(unit)
            self._add_lost(lost)
            if lost != 0:
                self.stats.lost_ranges.append((unit.start_time, unit.end_time))
            return
        walked = self._walk_records(number, records, heap)
        if walked.stop is not None:
            self._chunk_malformed(unit, walked)
            return
        self._check_time_range(unit, walked)

    def _walk_records(
        self, number: int, records: bytes, heap: list[tuple[int, int, int, int, Any]]
    ) -> _Walk:
        """Places the messages of a chunk's records on the heap, defining schemas and channels.

        Stops at the first record that cannot be framed (``stop`` is its offset): for a CRC-checked
        chunk that is a malformed record, for a cut chunk simply where the cut is.
        """
        position = 0
        end = len(records)
        record_number = 0
        messages = 0
        stop = None
        first_time = last_time = None
        in_order = True
        while position < end:
            if end - position < _RECORD_HEADER.size:
                stop = position
                break
            opcode, length = _RECORD_HEADER.unpack_from(records, position)
            body_start = position + _RECORD_HEADER.size
            body_end = body_start + length
            if body_end > end:
                stop = position
                break
            if opcode == Opcode.MESSAGE:
                if length < _MESSAGE_PREFIX.size:
                    stop = position
                    break
                message = _MESSAGE_PREFIX.unpack_from(records, body_start) + (
                    bytes(records[body_start + _MESSAGE_PREFIX.size : body_end]),
                )
                self._place(number, record_number, message, heap)
                messages += 1
                log_time = message[2]
                if first_time is None:
                    first_time = last_time = log_time
                elif log_time >= last_time:
                    last_time = log_time
                else:
                    in_order = False
                    first_time = min(first_time, log_time)
            elif opcode in (Opcode.SCHEMA, Opcode.CHANNEL):
                try:
                    self._define(opcode, bytes(records[body_start:body_end]))
                except _PARSE_ERRORS:
                    stop = position
                    break
            position = body_end
            record_number += 1
        if messages:
            # Not per message: a chunk of bare definitions does not make a file readable.
            self.readable = True
        return _Walk(messages, stop, record_number, first_time, last_time, in_order)

    def _check_time_range(self, unit: _Unit, walked: _Walk) -> None:
        if walked.first_time is not None and not (
            unit.start_time <= walked.first_time and walked.last_time <= unit.end_time
        ):
            # The CRC does not cover the chunk header, and the merge trusts its start time.
            self._problem(
                f"chunk at byte {unit.offset}: its header's time range does not cover its "
                f"messages ({walked.first_time}..{walked.last_time}); log-time order may be off around it"
            )

    def _load_cut_chunk(
        self, number: int, unit: _Unit, heap: list[tuple[int, int, int, int, Any]], damage: str | None = None
    ) -> None:
        """Salvages the complete messages of the chunk a truncated file ends in (or, with
        ``damage``, of a chunk whose data turns to zeros where its writing stopped)."""
        try:
            records, complete = self._salvage_records(unit)
        except _Damage as exc:
            self._cut_chunk_problem(unit, f"nothing could be salvaged from it ({exc})", damage)
            self.stats.lost_ranges.append((unit.start_time, unit.end_time))
            return
        walked = self._walk_records(number, records, heap)
        if complete and walked.stop is None:
            self._cut_chunk_problem(
                unit,
                f"its records are complete and match its CRC, so all {walked.messages} of its messages "
                "were kept; anything written after it is lost with the tail",
                damage,
            )
            self._check_time_range(unit, walked)
            return
        if walked.messages:
            kept = (
                f"kept the {walked.messages} complete messages before the cut (log times "
                f"{walked.first_time}..{walked.last_time}); no CRC can vouch for them, as the chunk CRC "
                "covers the whole chunk"
            )
            # Messages are written in log-time order as a rule; if these were not, the lost rest
            # of the chunk may lie anywhere in its range.
            lost_from = walked.last_time if walked.in_order else unit.start_time
        else:
            kept = "no complete message before the cut"
            lost_from = unit.start_time
        lost_to = max(unit.end_time, lost_from)
        self._cut_chunk_problem(unit, f"{kept}; the rest of the chunk (log times up to {lost_to}) is lost", damage)
        self.stats.lost_ranges.append((lost_from, lost_to))

    def _cut_chunk_problem(self, unit: _Unit, outcome: str, damage: str | None) -> None:
        if damage is not None:
            self._problem(
                f"chunk at byte {unit.offset}: {damage}; its data turns to zeros before its end and zeros "
                f"follow it, as where a preallocated file's writing stopped: {outcome}"
            )
        elif self._cut_problem is not None and self._cut_problem < len(self.stats.problems):
            # One problem per damage: the text pass 1 wrote for the cut gets the outcome appended.
            self.stats.problems[self._cut_problem] += f"; {outcome}"
        else:
            self._problem(f"chunk at byte {unit.offset} (cut by the end of the file): {outcome}")

    def _salvage_records(self, unit: _Unit) -> tuple[bytes, bool]:
        """The decompressed records of a cut chunk, as far as they go, and whether they are all
        there and match the chunk CRC (a file cut inside a compressed frame's epilogue)."""
        available = max(0, min(unit.data_length, self.size - unit.data_offset))
        data = self._read_at(unit.data_offset, available)
        if unit.zero_tail:
            data = data.rstrip(b"\x00")  # where the writing stopped
        _check_chunk_limit(unit)
        wanted = min(unit.uncompressed_size, _MAX_RECORD)
        if unit.compression == "":
            records = data
        elif unit.compression == "zstd" and zstandard is not None:
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
            pieces: list[bytes] = []
            got = 0
            # Piecewise, so that damage near the cut still leaves the blocks decoded before it.
            with contextlib.suppress(zstandard.ZstdError):
                while got < wanted:
                    piece = reader.read(min(1 << 20, wanted - got))
                    if not piece:
                        break
                    pieces.append(piece)
                    got += len(piece)
            records = b"".join(pieces)
        elif unit.compression == "lz4" and lz4_frame is not None:
            decompressor = lz4_frame.LZ4FrameDecompressor()
            pieces = []
            got = 0
            with contextlib.suppress(RuntimeError):
                for block in range(0, len(data), 1 << 16):
                    if got >= wanted:
                        break
                    piece = decompressor.decompress(data[block : block + (1 << 16)], max_length=wanted - got)
                    pieces.append(piece)
                    got += len(piece)
            records = b"".join(pieces)
        else:
            raise _Damage(f"unsupported compression {unit.compression!r}")
        records = records[:wanted]
        complete = len(records) == unit.uncompressed_size and (
            unit.uncompressed_crc == 0 or zlib.crc32(records) == unit.uncompressed_crc
        )
        return records, complete

    def _place(
        self,
        number: int,
        record_number: int,
        message: tuple[int, int, int, int, bytes],
        heap: list[tuple[int, int, int, int, Any]],
    ) -> None:
        channel_id = message[0]
        channel = self.channels.get(channel_id)
        if channel is None and channel_id not in self._orphans:
            # The definition may sit in a chunk that is earlier in the file but later in log time,
            # so not loaded yet. Once an id proved undefined, later messages do not retry: loading
            # every earlier chunk again and again would pull a whole damaged file into memory.
            self._load_definitions_before(number, heap)
            channel = self.channels.get(channel_id)
        if channel is None:
            self._orphans[channel_id] += 1
            low, high = self._orphan_span or (message[2], message[2])
            self._orphan_span = (min(low, message[2]), max(high, message[2]))
            return
        if self._wanted(channel):
            heapq.heappush(heap, (message[2], 1, number, record_number, (channel, message)))

    def _load_definitions_before(
        self, number: int, heap: list[tuple[int, int, int, int, Any]]
    ) -> None:
        while self._defs_loaded_before < number:
            self._load(self._defs_loaded_before, heap)
            self._defs_loaded_before += 1

    def _chunk_records(self, unit: _Unit) -> bytes:
        if unit.uncompressed_size > _MAX_RECORD:
            raise _Damage(f"implausible uncompressed size {unit.uncompressed_size}")
        _check_chunk_limit(unit)
        data = self._read_at(unit.data_offset, unit.data_length)
        if len(data) < unit.data_length:
            raise _Damage("file ends inside the chunk")
        if unit.compression == "":
            records = data
        elif unit.compression == "zstd" and zstandard is not None:
            try:
                # One-shot decompression is the fast path, but it allocates what the frame header
                # claims: only take it when that claim is the chunk's own size. Otherwise a bounded
                # read, so a corrupt header cannot make us allocate its claimed size.
                declared = zstandard.frame_content_size(data)
                if declared == unit.uncompressed_size:
                    records = zstandard.ZstdDecompressor().decompress(data, max_output_size=unit.uncompressed_size + 1)
                else:
                    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
                    records = reader.read(unit.uncompressed_size + 1)
            except zstandard.ZstdError as exc:
                raise _Damage(f"zstd data corrupt ({exc})") from None
        elif unit.compression == "lz4" and lz4_frame is not None:
            try:
                records = lz4_frame.LZ4FrameDecompressor().decompress(
                    data, max_length=unit.uncompressed_size + 1
                )
            except RuntimeError as exc:
                raise _Damage(f"lz4 data corrupt ({exc})") from None
        else:
            raise _Damage(f"unsupported compression {unit.compression!r}")
        if len(records) != unit.uncompressed_size:
            raise _Damage(
                f"decompressed to {len(records)} bytes, header says {unit.uncompressed_size}"
            )
        if unit.uncompressed_crc != 0:
            crc = zlib.crc32(records)
            if crc != unit.uncompressed_crc:
                raise _Damage(
                    f"CRC mismatch (stored {unit.uncompressed_crc:#010x}, computed {crc:#010x})"
                )
        return records

    def _chunk_message_count(self, unit: _Unit) -> int | None:
        if unit.index_counts is None:
            return None
        total = 0
        for channel_id, count in unit.index_counts.items():
            channel = self.channels.get(channel_id)
            if channel is None:
                if self.topics is not None:
                    return None  # cannot tell whether they were wanted
            elif not self._wanted(channel):
                continue
            total += count
        return total

    def _chunk_malformed(self, unit: _Unit, walked: _Walk) -> None:
        # The CRC held (or there was none), so the records before this one are trusted as written.
        checked = "despite a matching CRC" if unit.uncompressed_crc else "(chunk has no CRC)"
        self._problem(
            f"chunk at byte {unit.offset}: malformed record {walked.record_number} at chunk offset "
            f"{walked.stop} {checked}; rest of the chunk skipped"
        )
        self._add_lost(None)
        lost_from = walked.last_time if walked.in_order and walked.last_time is not None else unit.start_time
        self.stats.lost_ranges.append((lost_from, max(lost_from, unit.end_time)))

    def _finish(self) -> None:
        if self._orphans:
            ids = ", ".join(str(i) for i in sorted(self._orphans))
            self._problem(
                f"{sum(self._orphans.values())} messages reference undefined channel id(s) {ids}"
            )
            self._add_lost(sum(self._orphans.values()))
            if self._orphan_span is not None:
                self.stats.lost_ranges.append(self._orphan_span)
        self._compare_with_statistics()
        self.stats.lost_ranges[:] = _merge_ranges(self.stats.lost_ranges)

    def _compare_with_statistics(self) -> None:
        """Compares what was read with the summary's statistics, which then decide the loss."""
        stats = self.summary.statistics if self.summary is not None else None
        if stats is None:
            return
        expected: dict[int, int]
        if stats.channel_message_counts:
            expected = {
                cid: n
                for cid, n in stats.channel_message_counts.items()
                if cid not in self.channels or self._wanted(self.channels[cid])
            }
        elif self.topics is None:
            expected = {-1: stats.message_count}  # only a total to compare with
        else:
            return
        # A message record takes at least _MIN_MESSAGE_RECORD bytes of (decompressed) data: a count
        # beyond what the file can hold is damage, not a loss of 3.7e19 messages.
        capacity = (self.size + sum(u.uncompressed_size for u in self._units)) // _MIN_MESSAGE_RECORD
        claimed = sum(stats.channel_message_counts.values()) if stats.channel_message_counts else stats.message_count
        if claimed > capacity or any(n > capacity for n in expected.values()):
            self._problem(f"the summary's statistics claim {claimed} messages, more than the file can hold "
                          f"(at most {capacity}): damaged statistics, not used")
            if self.stats.lost_messages == 0:
                self.stats.lost_messages = None  # unknown: the only count to compare with is damaged
            return
        read = dict(self.read_by_channel)
        if -1 in expected:
            read = {-1: sum(read.values())}
        missing = {cid: n - read.get(cid, 0) for cid, n in expected.items() if n > read.get(cid, 0)}
        extra = {cid: n - expected.get(cid, 0) for cid, n in read.items() if n > expected.get(cid, 0)}
        if not missing:
            # Every message the summary lists was read: the ranges damage might have cost held
            # nothing that is not here.
            self.stats.lost_ranges.clear()
        if missing:
            total_missing = sum(missing.values())
            self._problem(
                f"read {sum(read.values())} of the {sum(expected.values())} messages the summary "
                f"lists ({self._describe_counts(missing)} missing)"
            )
            # The statistics count every lost message, including those of chunks that could not
            # be counted individually, so they replace the running estimate.
            self.stats.lost_messages = total_missing
        elif extra:
            self._problem(
                f"read more messages than the summary lists ({self._describe_counts(extra)} "
                "extra); the summary is stale or corrupt"
            )
        elif self.stats.lost_messages is None:
            # Everything the summary lists was read, so the damage cost no messages.
            self.stats.lost_messages = 0

    def _describe_counts(self, counts: dict[int, int]) -> str:
        parts = []
        for cid, n in sorted(counts.items()):
            channel = self.channels.get(cid)
            name = "all topics" if cid == -1 else (channel.topic if channel else f"channel {cid}")
            parts.append(f"{name}: {n}")
        return ", ".join(parts)

    # -- data section CRC (used by inspect_log) --------------------------------------------------

    def verify_data_crc(self) -> None:
        """Checks the DataEnd CRC, which also covers records outside chunks; reads the data section.

        Only reported when nothing else was found: damage inside a chunk breaks this CRC too,
        and saying so twice adds nothing.
        """
        if not self.data_section_crc or self.data_end_offset is None or self.stats.problems:
            return
        assert self._fh is not None
        self._fh.seek(0)
        crc = 0
        remaining = self.data_end_offset
        while remaining > 0:
            block = self._fh.read(min(remaining, 1 << 20))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            remaining -= len(block)
        if crc != self.data_section_crc:
            self._problem(
                f"data section CRC mismatch (stored {self.data_section_crc:#010x}, computed "
                f"{crc:#010x}): some record outside the CRC-checked chunks is damaged"
            )
            self._add_lost(None)


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with overlapping or touching ranges merged."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _parse_summary(data: bytes) -> _Summary:
    summary = _Summary(schemas={}, channels={}, chunk_indexes=[], statistics=None)
    position = 0
    while position < len(data):
        opcode, length = _RECORD_HEADER.unpack_from(data, position)
        body = data[position + _RECORD_HEADER.size : position + _RECORD_HEADER.size + length]
        if len(body) < length:
            raise McapError(f"summary record at summary offset {position} is cut short")
        stream = ReadDataStream(io.BytesIO(body))
        if opcode == Opcode.SCHEMA:
            schema = Schema.read(stream)
            summary.schemas[schema.id] = schema
        elif opcode == Opcode.CHANNEL:
            channel = Channel.read(stream)
            summary.channels[channel.id] = channel
        elif opcode == Opcode.CHUNK_INDEX:
            summary.chunk_indexes.append(ChunkIndex.read(stream))
        elif opcode == Opcode.STATISTICS:
            summary.statistics = Statistics.read(stream)
        position += _RECORD_HEADER.size + length
    return summary


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
