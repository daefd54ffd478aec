"""ROS 1 bags (``.bag``, format 2.0): through rosbags' reader, or record by record without an index.

rosbags' reader needs the bag's index, which is written last, so a recorder killed mid-write
leaves a bag it cannot open. Such a bag (or one rosbags stops reading) is walked record by record
here, chunks decompressed as far as their data goes, without handing a message to the sink
twice. The counts are compared with the bag's own index when there is one.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flywheel_pipelines.lib.rosbag.columnar import ChannelInfo
from flywheel_pipelines.lib.rosbag.reading import _describe, _Reading

_ROS1_MAGIC = b"#ROSBAG V2.0"


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
