"""The two-pass, CRC-checked scan of one MCAP file behind :func:`.reader.iter_messages`.

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

Recovery from damage (finding the next record, cut chunks) lives in :mod:`.mcap_salvage`; the
record layout in :mod:`.mcap_format`; what a read reports in :mod:`.report`.
"""

from __future__ import annotations

import heapq
import io
import os
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Self

from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Channel, Schema

from flywheel_pipelines.lib.rosbag.mcap_format import (
    _CHUNK_FIXED,
    _DATA_OPCODES,
    _FOOTER,
    _FOOTER_SIZE,
    _MAX_COMPRESSION_NAME,
    _MAX_RECORD,
    _MESSAGE_PREFIX,
    _MIN_MESSAGE_RECORD,
    _PARSE_ERRORS,
    _RECORD_HEADER,
    _SUMMARY_OPCODES,
    _U64,
    MCAP_MAGIC,
    _check_chunk_limit,
    _ChunkHeader,
    _Damage,
    _error_text,
    _parse_summary,
    _Summary,
    _Unit,
    _Walk,
    lz4_frame,
    zstandard,
)
from flywheel_pipelines.lib.rosbag.mcap_salvage import _Salvage
from flywheel_pipelines.lib.rosbag.report import LogReadError, RawMessage, ReadStats, _hex_hint, _merge_ranges


class _McapScan(_Salvage):
    """One tolerant read of one MCAP file (see the module docstring for the two passes).

    Used by :func:`.reader.iter_messages`, ``walk.read_log`` and ``columnar``; not part of the
    public API.
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
