"""The MCAP record layout as the tolerant reader sees it: magic, record framing, chunk headers.

Shared by the two-pass scan (:mod:`.mcap_scan`), its damage recovery (:mod:`.mcap_salvage`) and
the columnar fast path (:mod:`.columnar`), which frames the same records without the scan's
per-message objects. What lives here is fixed by the MCAP specification (and by the limits we
put on untrusted lengths), not by how any of those readers walks a file.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Any

from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.records import Channel, ChunkIndex, Schema, Statistics

from flywheel_pipelines.lib.settings import max_chunk_bytes

# The chunk compressions of the MCAP spec, optional as in mcap itself: one import for the scan and
# the salvage, which both decompress chunks.
try:
    import zstandard
except ImportError:  # pragma: no cover - zstandard ships with mcap's usual installs
    zstandard = None  # type: ignore[assignment]
try:
    import lz4.frame as lz4_frame
except ImportError:  # pragma: no cover
    lz4_frame = None  # type: ignore[assignment]

__all__ = ["MCAP_MAGIC"]

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
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


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
