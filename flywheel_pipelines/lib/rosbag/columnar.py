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

rosbag2 folders that store ``.db3`` files and ROS 1 bags are read through rosbags (ROS 1 payloads
converted to CDR), then decoded by the same column decoder.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mcap.opcode import Opcode

from flywheel_pipelines.lib.rosbag.cdr import CdrError, MessageType, StreamDecoder, _rows
from flywheel_pipelines.lib.rosbag.reader import (
    _MESSAGE_PREFIX,
    _PARSE_ERRORS,
    _RECORD_HEADER,
    LogReadError,
    ReadStats,
    _count_undecodable,
    _Damage,
    _McapScan,
    _Unit,
)

__all__ = ["BATCH_BYTES", "TopicColumns", "TopicRequest", "read_columns"]

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


class _Stream:
    """Accumulates one channel's decoded batches."""

    def __init__(self, topic: str, type_: str, decoder: StreamDecoder | None, why: str | None = None,
                 stamp: str | None = None):
        self.topic, self.type, self.decoder, self.why = topic, type_, decoder, why
        # "added": header stamp fields read only to make ``stamp`` (dropped after); "asked": kept too
        self.stamp = stamp
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, object]] = []

    def add(self, log_time: np.ndarray, publish_time: np.ndarray, columns) -> None:
        stamp = None
        if self.stamp is not None:
            sec, nanosec = (columns.numeric[path][:, 0] for path in _STAMP)
            stamp = sec.astype(np.int64) * 1_000_000_000 + nanosec.astype(np.int64)
            if self.stamp == "added":
                for path in _STAMP:
                    del columns.numeric[path]
        self.parts.append((log_time, publish_time, stamp, columns))


def read_columns(
    path: str | Path,
    requests: Mapping[str, TopicRequest],
    *,
    stats: ReadStats | None = None,
    batch_bytes: int = BATCH_BYTES,
) -> dict[str, TopicColumns]:
    """Reads the requested topics of one log (an ``.mcap`` file, a rosbag2 folder or a ROS 1 bag).

    Damage is handled as :func:`.reader.iter_messages` handles it (recorded in ``stats``, never
    raised once something was read); messages that do not decode are counted in
    ``stats.undecodable`` per topic. Topics absent from the log are absent from the result.

    Raises:
        LogReadError: The log cannot be read at all.
    """
    p = Path(path)
    stats = stats if stats is not None else ReadStats()
    stats.source = stats.source or str(p)
    streams: dict[object, _Stream] = {}
    if p.is_dir():
        mcaps = sorted(p.glob("*.mcap"))
        if mcaps:
            for file in mcaps:
                part = ReadStats(source=f"{stats.source}/{file.name}")
                try:
                    _read_mcap(file, requests, part, streams, batch_bytes, key_prefix=file.name)
                except LogReadError as exc:
                    part.problems.append(exc.problem or str(exc))
                    part.lost_messages = None
                _merge_stats(stats, part, file.name)
        else:
            _read_rosbags(p, requests, stats, streams, batch_bytes)
    elif p.suffix == ".bag":
        _read_rosbags(p, requests, stats, streams, batch_bytes)
    else:
        _read_mcap(p, requests, stats, streams, batch_bytes)
    return _finish(streams)


def _merge_stats(total: ReadStats, part: ReadStats, name: str) -> None:
    total.messages += part.messages
    total.undecodable += part.undecodable
    for topic, n in part.undecodable_by_topic.items():
        total.undecodable_by_topic[topic] = total.undecodable_by_topic.get(topic, 0) + n
    total.first_decode_error = total.first_decode_error or part.first_decode_error
    total.problems.extend(f"{name}: {problem}" for problem in part.problems)
    total.lost_ranges = sorted([*total.lost_ranges, *part.lost_ranges])
    total.skipped_bytes += part.skipped_bytes
    if part.lost_messages is None or total.lost_messages is None:
        total.lost_messages = None
    else:
        total.lost_messages += part.lost_messages


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


def _read_mcap(
    path: Path,
    requests: Mapping[str, TopicRequest],
    stats: ReadStats,
    streams: dict[object, _Stream],
    batch_bytes: int,
    key_prefix: str = "",
) -> None:
    label = stats.source or str(path)
    stats.source = label
    with _McapScan(path, label, frozenset(requests), stats) as scan:
        scan.index()
        batch = _Batch(batch_bytes)
        loads = _Prefetch(scan)
        for number, unit in enumerate(scan._units):
            if unit.is_chunk:
                if not scan._chunk_wanted(unit):
                    scan.readable = True
                    continue
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
            else:
                unit.loaded = True
                body = scan._read_at(unit.offset + _RECORD_HEADER.size, unit.body_length)
                if len(body) < unit.body_length:
                    scan._problem(f"message at byte {unit.offset} could not be read back")
                    scan._add_lost(1)
                    continue
                records = bytes(_RECORD_HEADER.pack(Opcode.MESSAGE, unit.body_length)) + body
                positions = {unit.channel_id: (np.zeros(1, np.int64), np.array([unit.body_length], np.int64))}
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
                    _decode_batch(scan, batch, requests, streams, key_prefix)
                batch.add(records, wanted)
        _decode_batch(scan, batch, requests, streams, key_prefix)
        loads.close()
        scan._finish()
        readable = scan.readable
    if stats.messages == 0 and stats.problems and not readable:
        raise LogReadError(f"{stats.describe()}; no message could be read", source=label, problem="; ".join(stats.problems))


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


def _decode_batch(
    scan: _McapScan,
    batch: _Batch,
    requests: Mapping[str, TopicRequest],
    streams: dict[object, _Stream],
    key_prefix: str,
) -> None:
    if not batch.messages:
        return
    buf = batch.buffer[: batch.size]
    for channel_id, pieces in batch.messages.items():
        channel = scan.channels[channel_id]
        key = (key_prefix, channel_id)
        stream = streams.get(key)
        if stream is None:
            schema = scan.schemas.get(channel.schema_id) if channel.schema_id else None
            stream = streams[key] = _mcap_stream(channel, schema, requests[channel.topic])
        offsets = np.concatenate([base + o for base, o, _ in pieces])
        lengths = np.concatenate([n for _, _, n in pieces])
        times = _rows(buf, offsets + _RECORD_HEADER.size + 6, 16).copy().view("<u8").astype(np.int64)
        _decode_into(stream, scan.stats, buf, offsets + _PREFIX, lengths - _MESSAGE_PREFIX.size, times[:, 0],
                     times[:, 1])
    batch.clear()


_STAMP = ("header.stamp.sec", "header.stamp.nanosec")


def _stream(topic: str, type_: str, mtype: MessageType, request: TopicRequest) -> _Stream:
    numeric, stamp = request.numeric, None
    if request.stamp and any(op.name == "header" and op.sub == "std_msgs/msg/Header" for op in mtype.ops()):
        stamp = "asked" if all(p in numeric for p in _STAMP) else "added"
        numeric = (*numeric, *(p for p in _STAMP if p not in numeric))
    return _Stream(topic, type_, StreamDecoder(mtype, numeric, request.text), stamp=stamp)


def _mcap_stream(channel, schema, request: TopicRequest) -> _Stream:
    type_ = schema.name if schema is not None else ""
    if channel.message_encoding != "cdr":
        return _Stream(channel.topic, type_, None, f"message encoding {channel.message_encoding!r} is not CDR")
    if schema is None or schema.encoding != "ros2msg":
        encoding = schema.encoding if schema is not None else "none"
        return _Stream(channel.topic, type_, None, f"schema encoding {encoding!r} is not ros2msg")
    try:
        mtype = MessageType.from_msgdef(schema.name, schema.data.decode("utf-8", "replace"))
        return _stream(channel.topic, type_, mtype, request)
    except CdrError as exc:
        return _Stream(channel.topic, type_, None, str(exc))


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
    stream.add(log_time, publish_time, columns)


# -- rosbags (rosbag2 .db3 folders, ROS 1 bags) ----------------------------------------------------


def _read_rosbags(
    path: Path,
    requests: Mapping[str, TopicRequest],
    stats: ReadStats,
    streams: dict[object, _Stream],
    batch_bytes: int,
) -> None:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    ros1 = path.suffix == ".bag"
    try:
        reader = AnyReader([path], default_typestore=None if ros1 else get_typestore(Stores.LATEST))
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several unrelated types
        problem = f"rosbags cannot open it ({type(exc).__name__}: {exc})"
        raise LogReadError(f"{stats.source}: {problem}", source=stats.source, problem=problem) from None
    try:
        connections = [c for c in reader.connections if c.topic in requests]
        pending: dict[int, list[tuple[int, bytes]]] = {}
        size = 0
        by_id = {}
        for connection in connections:
            try:
                mtype = MessageType(connection.msgtype, reader.typestore.fielddefs)
                request = requests[connection.topic]
                by_id[connection.id] = _stream(connection.topic, connection.msgtype, mtype, request)
            except CdrError as exc:
                by_id[connection.id] = _Stream(connection.topic, connection.msgtype, None, str(exc))
            streams[(str(path), connection.id)] = by_id[connection.id]
        try:
            for connection, timestamp, data in reader.messages(connections=connections):
                if ros1:
                    # rosbags' ros1_to_cdr mistakes a ROS 1 Header (with seq) for a ROS 2 one, so
                    # convert through its (correct) ROS 1 deserializer instead.
                    try:
                        message = reader.deserialize(data, connection.msgtype)
                        data = reader.typestore.serialize_cdr(message, connection.msgtype)
                    except Exception as exc:  # noqa: BLE001 - a payload that does not match its type
                        _count_undecodable(stats, connection.topic, f"ROS 1 payload does not convert ({exc})")
                        continue
                stats.messages += 1
                pending.setdefault(connection.id, []).append((timestamp, bytes(data)))
                size += len(data)
                if size >= batch_bytes:
                    _flush_rosbags(pending, by_id, stats)
                    size = 0
        except Exception as exc:  # noqa: BLE001 - damage surfaces as sqlite3/struct/rosbags errors
            stats.problems.append(f"reading stopped after {stats.messages} messages ({type(exc).__name__}: {exc})")
            stats.lost_messages = None
        _flush_rosbags(pending, by_id, stats)
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def _flush_rosbags(pending: dict[int, list[tuple[int, bytes]]], by_id: dict[int, _Stream], stats: ReadStats) -> None:
    for connection_id, items in pending.items():
        if not items:
            continue
        payloads = [d for _, d in items]
        lengths = np.fromiter((len(d) for d in payloads), np.int64, len(payloads))
        starts = np.zeros(len(payloads), np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        buf = np.frombuffer(b"".join(payloads), np.uint8)
        times = np.fromiter((t for t, _ in items), np.int64, len(items))
        _decode_into(by_id[connection_id], stats, buf, starts, lengths, times, times)
        items.clear()


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
            table.extend(t.text for t in stream.decoder.templates)
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

