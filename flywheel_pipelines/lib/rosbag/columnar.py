"""Read chosen fields of chosen topics from a robot log as numpy columns, at memory-bandwidth speed.

This is the path standardization takes. For MCAP it reuses the tolerant reader's pass 1 (record
framing, footer, summary; see :mod:`.reader`) and its per-chunk decompression and CRC check, so a
damaged file gets the same verdict whichever way it is read. What differs is pass 2: instead of
one Python object per message in log-time order, each chunk's MessageIndex records give every
message's offset as one numpy array (validated against the records they point at), decompressed
chunks are gathered into batches of about :data:`BATCH_BYTES`, and :mod:`.cdr` decodes each
stream's wanted fields from a batch with a handful of numpy gathers. Messages come out per topic
in file order, not merged across topics: the caller sorts by the clock it uses anyway.

Memory is bounded by the batch, not the file: decompressed chunks are dropped after their batch
is decoded, and only the wanted fields are kept.

Every storage kind goes through one walk (:func:`.walk.read_log`): the same code that counts
a log's messages for its manifest hands the payloads of the wanted topics to :class:`ColumnSink`,
so what the manifest counts and what standardization reads agree by construction. rosbag2
``.db3`` parts are read with SQLite (page by page when it reports them malformed), ROS 1 bags
with rosbags' own bag reader (record by record when it cannot open them).

Decoding depends on the channel's encodings (:func:`stream_for`): CDR with ``ros2msg`` schemas
(or a type known to rosbags' type store) by :mod:`.cdr`; ROS 1 payloads converted to CDR first;
``json`` and ``protobuf`` channels by :mod:`.structured`. Anything else is counted undecodable,
with the reason.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mcap.opcode import Opcode

from flywheel_pipelines.lib.rosbag.cdr import CdrError, MessageType, StreamDecoder, _rows
from flywheel_pipelines.lib.rosbag.mcap_format import _MESSAGE_PREFIX, _PARSE_ERRORS, _RECORD_HEADER, _Damage, _Unit
from flywheel_pipelines.lib.rosbag.mcap_scan import _McapScan
from flywheel_pipelines.lib.rosbag.report import LogReadError, ReadStats, _count_undecodable

__all__ = ["BATCH_BYTES", "ChannelInfo", "ColumnSink", "TopicColumns", "TopicRequest", "read_columns", "stream_for"]

BATCH_BYTES = 32 * 2**20
_PREFIX = _RECORD_HEADER.size + _MESSAGE_PREFIX.size  # payload offset within a message record


@dataclass(frozen=True)
class TopicRequest:
    """What to read from one topic: numeric fields (dotted paths) and text fields."""

    numeric: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    stamp: bool = False  # also read header.stamp when the type has a std_msgs/Header ``header``


@dataclass
class TopicColumns:
    """One topic's messages (file order) with the requested fields.

    ``numeric[path]``: float64 ``(n, k)``; ``text[path]``: one value per message; ``layout``: the
    decoder's layout number per message (-1: decoded on its own), with ``text_of_layout`` giving
    each layout's text fields, so per-layout work (reordering joints by name) is done once.
    """

    topic: str
    type: str
    log_time: np.ndarray
    publish_time: np.ndarray
    numeric: dict[str, np.ndarray]
    text: dict[str, list]
    layout: np.ndarray
    text_of_layout: list[dict[str, object]] = field(default_factory=list)
    stamp: np.ndarray | None = None  # header stamps (int64 ns) when asked for and present

    def __len__(self) -> int:
        return len(self.log_time)


@dataclass(frozen=True)
class ChannelInfo:
    """One channel (MCAP), topic row (.db3) or connection (ROS 1) as the log declares it.

    Attributes:
        key: Unique within one read of a log (e.g. ``(part file, channel id)``).
        topic: Topic name.
        type: Message type name as stored (``sensor_msgs/msg/JointState``, a protobuf full name...).
        message_encoding: ``cdr``, ``ros1``, ``json``, ``protobuf``, ...
        schema_encoding: ``ros2msg``, ``ros1msg``, ``jsonschema``, ``protobuf``, ``""`` (none stored:
            a .db3 without message definitions, a schemaless channel).
        schema: The schema's bytes (``b""`` when none is stored).
    """

    key: object
    topic: str
    type: str
    message_encoding: str
    schema_encoding: str
    schema: bytes = b""


class _Stream:
    """Accumulates one channel's decoded batches."""

    def __init__(self, topic: str, type_: str, decoder, why: str | None = None, stamp: str | None = None,
                 convert=None):
        self.topic, self.type, self.decoder, self.why = topic, type_, decoder, why
        # "added": header stamp fields read only to make ``stamp`` (dropped after); "asked": kept too;
        # "own": the decoder finds the message's own stamp (JSON, protobuf)
        self.stamp = stamp
        self.convert = convert  # payload -> CDR bytes (ROS 1 payloads), or None
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, object]] = []

    def add(self, log_time: np.ndarray, publish_time: np.ndarray, columns) -> None:
        stamp = None
        if self.stamp == "own":
            stamp = getattr(columns, "stamp", None)
            if stamp is not None:
                # A message without a stamp of its own is placed at its send time, as a header-less one.
                fallback = np.where(publish_time > 0, publish_time, log_time)
                stamp = np.where(stamp >= 0, stamp, fallback)
        elif self.stamp is not None:
            sec, nanosec = (columns.numeric[path][:, 0] for path in _STAMP)
            stamp = sec.astype(np.int64) * 1_000_000_000 + nanosec.astype(np.int64)
            if self.stamp == "added":
                for path in _STAMP:
                    del columns.numeric[path]
        self.parts.append((log_time, publish_time, stamp, columns))

    def layout_text(self) -> list[dict[str, object]]:
        return self.decoder.layout_text() if self.decoder is not None else []


class ColumnSink:
    """Receives the wanted topics' messages from the log walk and decodes them into columns."""

    def __init__(self, requests: Mapping[str, TopicRequest], stats: ReadStats) -> None:
        self.requests = requests
        self.stats = stats
        self.streams: dict[object, _Stream] = {}
        self.channels: dict[str, ChannelInfo] = {}  # topic -> the first channel seen for it

    def wants(self, topic: str) -> bool:
        return topic in self.requests

    def add(self, info: ChannelInfo, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
            log_time: np.ndarray, publish_time: np.ndarray) -> None:
        stream = self.streams.get(info.key)
        if stream is None:
            stream = self.streams[info.key] = stream_for(info, self.requests[info.topic])
            self.channels.setdefault(info.topic, info)
        self.stats.messages += len(starts)
        self.stats.read_by_topic[info.topic] = self.stats.read_by_topic.get(info.topic, 0) + len(starts)
        self.stats.encoding_by_topic.setdefault(info.topic, _encoding_text(info))
        if stream.convert is not None and stream.decoder is not None:
            buf, starts, lengths, ok, errors = _converted(stream.convert, buf, starts, lengths)
            for error in errors:
                _count_undecodable(self.stats, info.topic, error)
            log_time, publish_time = log_time[ok], publish_time[ok]
        _decode_into(stream, self.stats, buf, starts, lengths, log_time, publish_time)


def _encoding_text(info: ChannelInfo) -> str:
    return f"{info.message_encoding or 'none'}/{info.schema_encoding or 'none'}"


def _converted(convert, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
    """Payloads converted one by one (ROS 1 -> CDR); the failures, with their reasons, left out."""
    view = memoryview(buf)
    out: list[bytes] = []
    ok = np.ones(len(starts), bool)
    errors: list[str] = []
    for i, (a, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        try:
            out.append(convert(view[a : a + n]))
        except Exception as exc:  # noqa: BLE001 - a payload that does not match its definition
            ok[i] = False
            errors.append(f"ROS 1 payload does not convert to CDR ({type(exc).__name__}: {exc})")
    sizes = np.fromiter((len(d) for d in out), np.int64, len(out))
    new_starts = np.zeros(len(out), np.int64)
    np.cumsum(sizes[:-1], out=new_starts[1:])
    return np.frombuffer(b"".join(out), np.uint8), new_starts, sizes, ok, errors


def read_columns(
    path: str | Path,
    requests: Mapping[str, TopicRequest],
    *,
    stats: ReadStats | None = None,
    batch_bytes: int = BATCH_BYTES,
) -> dict[str, TopicColumns]:
    """Reads the requested topics of one log (an MCAP file, a rosbag2 folder or ``.db3`` file, a ROS 1 bag).

    The log is walked by :func:`.walk.read_log`, the code that makes its manifest. Damage is
    recorded in ``stats`` (problems, lost messages and ranges), never raised once something was
    read; ``stats.read_by_topic`` counts the messages read per requested topic (the manifest's
    count for that topic, by construction) and ``stats.undecodable_by_topic`` those that did not
    decode. Topics absent from the log are absent from the result.

    Raises:
        LogReadError: The log cannot be read at all.
    """
    # Imported here: the walk and its storage readers import this module (ChannelInfo, scan_mcap).
    from flywheel_pipelines.lib.rosbag.reading import describe_fatal
    from flywheel_pipelines.lib.rosbag.walk import read_log

    p = Path(path)
    stats = stats if stats is not None else ReadStats()
    stats.source = stats.source or str(p)
    sink = ColumnSink(requests, stats)
    reading = read_log(p, stats.source, topics=frozenset(requests), sink=sink, batch_bytes=batch_bytes)
    if reading.fatal is not None:
        problem = describe_fatal(reading)
        raise LogReadError(f"{stats.source}: {problem}", source=stats.source, problem=problem)
    stats.problems.extend(reading.problems)
    stats.lost_messages = reading.lost
    stats.lost_ranges = sorted(reading.lost_ranges)
    stats.skipped_bytes += reading.skipped_bytes
    return _finish(sink.streams)


# -- MCAP ----------------------------------------------------------------------------------------


class _Batch:
    """Decompressed chunks waiting to be decoded together, with their messages per channel.

    The chunks are copied into one buffer that is reused batch after batch: already-touched
    memory makes the copy a plain memcpy, where joining fresh bytes objects would page-fault.
    """

    def __init__(self, capacity: int) -> None:
        self.buffer = np.empty(capacity, np.uint8)
        self.size = 0
        self.messages: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}  # channel -> (base, offsets, lengths)

    def fits(self, n: int) -> bool:
        return self.size + n <= len(self.buffer)

    def add(self, records: bytes, positions: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        if not self.fits(len(records)):  # one chunk larger than a batch: grow for it
            grown = np.empty(self.size + len(records), np.uint8)
            grown[: self.size] = self.buffer[: self.size]
            self.buffer = grown
        base = self.size
        self.buffer[base : base + len(records)] = np.frombuffer(records, np.uint8)
        self.size += len(records)
        for channel_id, (offsets, lengths) in positions.items():
            self.messages.setdefault(channel_id, []).append((base, offsets, lengths))

    def clear(self) -> None:
        self.size = 0
        self.messages = {}


def scan_mcap(
    path: Path,
    label: str,
    reading,
    *,
    topics: frozenset[str] | None,
    sink: ColumnSink | None,
    batch_bytes: int = BATCH_BYTES,
    key_prefix: str = "",
    verify: bool = False,
) -> None:
    """The MCAP part of the log walk: counts every message read into ``reading`` (per topic) and
    hands those of the wanted topics to ``sink``, batch by batch.

    ``topics`` (None: all) limits what is read at all: chunks holding none of them are skipped.
    ``verify`` also checks the data section CRC (reads the whole file once more).
    Damage goes to ``reading.problems``, ``lost``, ``lost_ranges`` and ``skipped_bytes``.

    Raises:
        LogReadError: Nothing could be read (not MCAP, empty, damaged before any message).
    """
    stats = ReadStats(source=label)
    try:
        with _McapScan(path, label, topics, stats) as scan:
            scan.index()
            batch = _Batch(batch_bytes)
            loads = _Prefetch(scan)
            try:
                for number, unit in enumerate(scan._units):
                    records, positions = _unit_positions(scan, loads, number, unit)
                    if positions is None:
                        continue
                    wanted = {}
                    for channel_id, pos in positions.items():
                        channel = scan.channels.get(channel_id)
                        if channel is None:
                            scan._orphans[channel_id] += len(pos[0])
                        elif scan._wanted(channel):
                            wanted[channel_id] = pos
                            scan.read_by_channel[channel_id] += len(pos[0])
                            stats.messages += len(pos[0])
                            scan.readable = True
                    if wanted:
                        if not batch.fits(len(records)):
                            _deliver_batch(scan, batch, reading, sink, key_prefix)
                        batch.add(records, wanted)
                _deliver_batch(scan, batch, reading, sink, key_prefix)
            finally:
                loads.close()
            scan._finish()
            if verify:
                scan.verify_data_crc()
            # Channels that never got a message still document what the robot was set to record.
            for channel in scan.channels.values():
                if scan._wanted(channel):
                    info = _mcap_info(scan, channel, key_prefix)
                    reading.channel(info)
            readable = scan.readable
        if stats.messages == 0 and stats.problems and not readable:
            raise LogReadError(f"{stats.describe()}; no message could be read", source=label,
                               problem="; ".join(stats.problems))
    finally:
        reading.problems.extend(stats.problems)
        reading.add_lost(stats.lost_messages)
        reading.lost_ranges.extend(stats.lost_ranges)
        reading.skipped_bytes += stats.skipped_bytes


def _unit_positions(scan: _McapScan, loads, number: int, unit: _Unit):
    """A unit's records and its wanted messages' (offsets, lengths) per channel; (None, None) to skip it."""
    if unit.is_chunk:
        if not scan._chunk_wanted(unit):
            scan.readable = True
            return None, None
        positions = None
        if not (unit.cut or unit.zero_tail):
            try:
                records = loads.get(number)
            except _Damage:
                pass  # the reader's own path below words the problem and counts the loss
            else:
                unit.loaded = True
                positions = _indexed_positions(scan, unit, records)
                if positions is None:
                    positions = _framed_positions(scan, records)
        if positions is None:
            # Damaged, cut or zero-tailed: the reader salvages what it can, message by message.
            unit.loaded = False
            records, positions = _salvaged(scan, number)
        return records, positions
    unit.loaded = True
    body = scan._read_at(unit.offset + _RECORD_HEADER.size, unit.body_length)
    if len(body) < unit.body_length:
        scan._problem(f"message at byte {unit.offset} could not be read back")
        scan._add_lost(1)
        return None, None
    records = bytes(_RECORD_HEADER.pack(Opcode.MESSAGE, unit.body_length)) + body
    return records, {unit.channel_id: (np.zeros(1, np.int64), np.array([unit.body_length], np.int64))}


def _mcap_info(scan: _McapScan, channel, key_prefix: str) -> ChannelInfo:
    cache = scan.__dict__.setdefault("_infos", {})
    info = cache.get(channel.id)
    if info is None or info.topic != channel.topic:
        info = cache[channel.id] = _make_info(scan, channel, key_prefix)
    return info


def _make_info(scan: _McapScan, channel, key_prefix: str) -> ChannelInfo:
    schema = scan.schemas.get(channel.schema_id) if channel.schema_id else None
    return ChannelInfo(
        (key_prefix, channel.id), channel.topic, schema.name if schema is not None else "", channel.message_encoding,
        schema.encoding if schema is not None else "", bytes(schema.data) if schema is not None else b"")


class _Prefetch:
    """Reads, decompresses and CRC-checks the next chunks on a second thread.

    zlib, zstd, lz4 and ``pread`` release the GIL, so on a machine with a spare core this work
    overlaps the numpy work on the current batch; on one core it costs a thread switch.
    """

    AHEAD = 3

    def __init__(self, scan: _McapScan) -> None:
        self.scan = scan
        self.numbers = [n for n, u in enumerate(scan._units)
                        if u.is_chunk and not (u.cut or u.zero_tail) and scan._chunk_wanted(u)]
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcap-chunks")
        self.pending: dict[int, Future] = {}
        self.next = 0

    def get(self, number: int) -> bytes:
        while self.next < len(self.numbers) and len(self.pending) < self.AHEAD + 1:
            ahead = self.numbers[self.next]
            self.pending[ahead] = self.pool.submit(self.scan._chunk_records, self.scan._units[ahead])
            self.next += 1
        future = self.pending.pop(number, None)
        if future is None:  # not planned (cannot happen in file order): load it here
            return self.scan._chunk_records(self.scan._units[number])
        return future.result()

    def close(self) -> None:
        for future in self.pending.values():
            future.cancel()
        self.pool.shutdown(wait=True)


def _indexed_positions(scan: _McapScan, unit: _Unit, records: bytes) -> dict[int, tuple[np.ndarray, np.ndarray]] | None:
    """Message offsets and record lengths per channel from the chunk's MessageIndex records.

    Message indexes are outside the chunk's CRC, so every entry is checked against the record it
    points at (opcode, channel, log time, bounds); ``None`` sends the chunk to the framing walk.
    """
    if not unit.index_records or unit.index_counts is None:
        return None
    if any(cid not in scan.channels for cid in unit.index_counts):
        return None  # its definitions are inside the chunk: walk it to read them
    # The index records follow the chunk back to back: one read for all of them.
    first = unit.index_records[0][0]
    last = unit.index_records[-1][0] + unit.index_records[-1][1]
    block = scan._read_at(first, last - first)
    if len(block) < last - first:
        return None
    channel_ids, parts = [], []
    for offset, length in unit.index_records:
        at = offset - first
        if length < 6:
            return None
        channel_id, entries_length = struct.unpack_from("<HI", block, at)
        if 6 + entries_length > length or entries_length % 16:
            return None
        parts.append(np.frombuffer(block, "<u8", count=entries_length // 8, offset=at + 6))
        channel_ids.append(np.full(entries_length // 16, channel_id, np.uint16))
    entries = np.concatenate(parts).reshape(-1, 2)
    channels = np.concatenate(channel_ids)
    offsets = entries[:, 1].astype(np.int64)
    size = len(records)
    if len(offsets) and (offsets.max() > size - _PREFIX or offsets.min() < 0):
        return None
    buf = np.frombuffer(records, np.uint8)
    heads = np.ascontiguousarray(_rows(buf, offsets, 23))  # opcode, length, channel, sequence, log time
    lengths = heads[:, 1:9].copy().view("<u8").ravel().astype(np.int64)
    ok = (
        (heads[:, 0] == Opcode.MESSAGE)
        & (heads[:, 9:11].copy().view("<u2").ravel() == channels)
        & (heads[:, 15:23].copy().view("<u8").ravel() == entries[:, 0])
        & (lengths >= _MESSAGE_PREFIX.size)
        & (offsets + _RECORD_HEADER.size + lengths <= size)
    )
    if not ok.all():
        return None
    order = np.lexsort((offsets, channels))
    channels, offsets, lengths = channels[order], offsets[order], lengths[order]
    bounds = np.flatnonzero(np.diff(channels)) + 1
    starts = np.concatenate([[0], bounds]).tolist()
    ends = [*bounds.tolist(), len(channels)]
    return {int(channels[a]): (offsets[a:b], lengths[a:b]) for a, b in zip(starts, ends, strict=True)}


def _framed_positions(scan: _McapScan, records: bytes) -> dict[int, tuple[np.ndarray, np.ndarray]] | None:
    """Walks an intact chunk's records one by one (no usable index), reading definitions on the way.

    ``None`` when a record cannot be framed: the reader's own path then handles the chunk.
    """
    found: dict[int, tuple[list[int], list[int]]] = {}
    position, end = 0, len(records)
    while position < end:
        if end - position < _RECORD_HEADER.size:
            return None
        opcode, length = _RECORD_HEADER.unpack_from(records, position)
        body_end = position + _RECORD_HEADER.size + length
        if body_end > end or (opcode == Opcode.MESSAGE and length < _MESSAGE_PREFIX.size):
            return None
        if opcode == Opcode.MESSAGE:
            (channel_id,) = struct.unpack_from("<H", records, position + _RECORD_HEADER.size)
            offsets, lengths = found.setdefault(channel_id, ([], []))
            offsets.append(position)
            lengths.append(length)
        elif opcode in (Opcode.SCHEMA, Opcode.CHANNEL):
            try:
                scan._define(opcode, bytes(records[position + _RECORD_HEADER.size : body_end]))
            except _PARSE_ERRORS:
                return None
        position = body_end
    return {cid: (np.asarray(o, np.int64), np.asarray(n, np.int64)) for cid, (o, n) in found.items()}


def _salvaged(scan: _McapScan, number: int) -> tuple[bytes, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """The messages the reader's own pass 2 keeps from one damaged unit, as records to batch.

    The same code decides the verdict, the problems and the lost ranges on both paths.
    """
    heap: list = []
    scan._load(number, heap)
    parts: list[bytes] = []
    found: dict[int, tuple[list[int], list[int]]] = {}
    position = 0
    for entry in sorted(heap, key=lambda e: (e[2], e[3])):  # file order
        if entry[1] != 1:
            continue
        _channel, (channel_id, sequence, log_time, publish_time, data) = entry[4]
        length = _MESSAGE_PREFIX.size + len(data)
        parts.append(_RECORD_HEADER.pack(Opcode.MESSAGE, length) + _MESSAGE_PREFIX.pack(channel_id, sequence, log_time,
                                                                                          publish_time) + data)
        offsets, lengths = found.setdefault(channel_id, ([], []))
        offsets.append(position)
        lengths.append(length)
        position += _RECORD_HEADER.size + length
    return b"".join(parts), {cid: (np.asarray(o, np.int64), np.asarray(n, np.int64)) for cid, (o, n) in found.items()}


def _deliver_batch(scan: _McapScan, batch: _Batch, reading, sink: ColumnSink | None, key_prefix: str) -> None:
    if not batch.messages:
        return
    buf = batch.buffer[: batch.size]
    for channel_id, pieces in batch.messages.items():
        channel = scan.channels[channel_id]
        info = _mcap_info(scan, channel, key_prefix)
        offsets = np.concatenate([base + o for base, o, _ in pieces])
        lengths = np.concatenate([n for _, _, n in pieces])
        times = _rows(buf, offsets + _RECORD_HEADER.size + 6, 16).copy().view("<u8").astype(np.int64)
        reading.channel(info).add_times(times[:, 0])
        if sink is not None and sink.wants(channel.topic):
            sink.add(info, buf, offsets + _PREFIX, lengths - _MESSAGE_PREFIX.size, times[:, 0], times[:, 1])
    batch.clear()


_STAMP = ("header.stamp.sec", "header.stamp.nanosec")


def _cdr_stream(topic: str, type_: str, mtype: MessageType, request: TopicRequest, convert=None) -> _Stream:
    numeric, stamp = request.numeric, None
    if request.stamp and any(op.name == "header" and op.sub == "std_msgs/msg/Header" for op in mtype.ops()):
        stamp = "asked" if all(p in numeric for p in _STAMP) else "added"
        numeric = (*numeric, *(p for p in _STAMP if p not in numeric))
    return _Stream(topic, type_, StreamDecoder(mtype, numeric, request.text), stamp=stamp, convert=convert)


def decoder_problem(info: ChannelInfo) -> str | None:
    """Why a channel cannot be decoded, judged from its encodings and schema alone; None if it can."""
    stream = stream_for(info, TopicRequest())
    return stream.why if stream.decoder is None else None


def stream_for(info: ChannelInfo, request: TopicRequest) -> _Stream:
    """The decoder for one channel's requested fields, chosen by its encodings (see the module
    docstring); a stream without a decoder carries the reason its messages are undecodable."""
    topic, type_ = info.topic, info.type
    encoding, schema_encoding = info.message_encoding, info.schema_encoding
    try:
        if encoding == "cdr":
            if schema_encoding == "ros2msg":
                mtype = MessageType.from_msgdef(type_, info.schema.decode("utf-8", "replace"))
            elif schema_encoding == "":
                mtype = _known_type(type_)
            else:
                return _Stream(topic, type_, None, f"CDR messages with a {schema_encoding!r} schema (expected ros2msg)")
            return _cdr_stream(topic, type_, mtype, request)
        if encoding == "ros1":
            if schema_encoding not in ("ros1msg", ""):
                return _Stream(topic, type_, None, f"ROS 1 messages with a {schema_encoding!r} schema (expected ros1msg)")
            mtype, convert = _ros1_type(type_, info.schema.decode("utf-8", "replace"))
            return _cdr_stream(topic, type_, mtype, request, convert)
        if encoding in ("json", "protobuf"):
            from flywheel_pipelines.lib.rosbag import structured

            decoder = structured.decoder_for(info, request.numeric, request.text, stamp=request.stamp)
            return _Stream(topic, type_, decoder, stamp="own" if request.stamp else None)
    except CdrError as exc:
        return _Stream(topic, type_, None, str(exc))
    known = "cdr (ros2msg), ros1 (ros1msg), json (jsonschema or none), protobuf (protobuf)"
    return _Stream(topic, type_, None, f"message encoding {encoding or 'none'!r} is not supported (supported: {known})")


def _known_type(name: str) -> MessageType:
    """A type a .db3 names without storing its definition: from rosbags' store of ROS 2 types."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.LATEST)
    if name not in store.fielddefs:
        raise CdrError(f"type {name!r} has no stored definition and is not a standard ROS 2 type")
    return MessageType(name, store.fielddefs)


def _ros1_type(name: str, text: str):
    """A ROS 1 type from its stored definition, and the ROS 1 -> CDR conversion of its payloads.

    rosbags' own ``ros1_to_cdr`` mistakes a ROS 1 Header (with seq) for a ROS 2 one, so payloads go
    through its (correct) ROS 1 deserializer and are serialized again as CDR.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    from rosbags.typesys.msg import normalize_msgtype

    store = get_typestore(Stores.EMPTY)
    name = normalize_msgtype(name)  # MCAP ros1msg schemas say "pkg/Type", rosbags "pkg/msg/Type"
    try:
        store.register(get_types_from_msg(text, name))
    except Exception as exc:  # noqa: BLE001 - the definition text is untrusted input
        raise CdrError(f"ROS 1 definition of {name!r} cannot be parsed: {exc}") from None
    mtype = MessageType(name, store.fielddefs)

    def convert(payload) -> bytes:
        return bytes(store.serialize_cdr(store.deserialize_ros1(payload, name), name))

    return mtype, convert


def _decode_into(
    stream: _Stream, stats: ReadStats, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
    log_time: np.ndarray, publish_time: np.ndarray,
) -> None:
    if stream.decoder is None:
        for _ in range(len(starts)):
            _count_undecodable(stats, stream.topic, stream.why or "no decoder")
        return
    columns = stream.decoder.decode(buf, starts, lengths)
    if columns.bad.any():
        for error in columns.errors:
            _count_undecodable(stats, stream.topic, error)
        keep = ~columns.bad
        log_time, publish_time = log_time[keep], publish_time[keep]
        columns.numeric = {k: v[keep] for k, v in columns.numeric.items()}
        columns.text = {k: [x for x, good in zip(v, keep, strict=True) if good] for k, v in columns.text.items()}
        columns.layout = columns.layout[keep]
        if getattr(columns, "stamp", None) is not None:
            columns.stamp = columns.stamp[keep]
    stream.add(log_time, publish_time, columns)


# -- results -------------------------------------------------------------------------------------


def _finish(streams: dict[object, _Stream]) -> dict[str, TopicColumns]:
    by_topic: dict[str, list[_Stream]] = {}
    for stream in streams.values():
        by_topic.setdefault(stream.topic, []).append(stream)
    out: dict[str, TopicColumns] = {}
    for topic, parts in by_topic.items():
        pieces = [p for s in parts for p in s.parts]
        if not pieces:
            continue
        first = pieces[0][3]
        paths = set.intersection(*(set(p[3].numeric) for p in pieces))
        numeric = {}
        for path in [p for p in first.numeric if p in paths]:
            arrays = [p[3].numeric.pop(path) for p in pieces]  # popped: each part is freed as it is joined
            width = max(a.shape[1] for a in arrays)
            numeric[path] = join_arrays([_pad(a, width) for a in arrays])
            del arrays
        text = {path: [x for p in pieces for x in p[3].text[path]] for path in first.text}
        # Layout numbers are per decoder; several files of one topic have several decoders.
        layouts, table = [], []
        for stream in parts:
            offset = len(table)
            table.extend(stream.layout_text())
            for p in stream.parts:
                layouts.append(np.where(p[3].layout >= 0, p[3].layout + offset, -1))
            stream.parts = []
        stamps = [p[2] for p in pieces]
        stamp = join_arrays(stamps) if all(s is not None for s in stamps) else None
        out[topic] = TopicColumns(topic, parts[0].type, join_arrays([p[0] for p in pieces]), join_arrays([p[1] for p in pieces]),
                                  numeric, text, join_arrays(layouts) if layouts else np.zeros(0, np.int32), table, stamp)
    return out


def join_arrays(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenated, or the array itself when there is one (no copy)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    if a.shape[1] == width:
        return a
    out = np.full((a.shape[0], width), np.nan)
    out[:, : a.shape[1]] = a
    return out

