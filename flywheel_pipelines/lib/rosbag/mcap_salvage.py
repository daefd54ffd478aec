"""Recovering what an MCAP file's damage left readable: resync after bad bytes, cut chunks.

The fast path (:mod:`.mcap_scan`) frames records one after the other and loads CRC-checked
chunks whole. Everything here runs only once that fails: a record that cannot be framed (the
next plausible record is searched for, the summary's chunk index first), a chunk whose record
length runs past the data section (read by its own header's layout, or kept as *cut* when the
file ends inside it), the lost log-time ranges of skipped stretches, and the stream
decompression of a cut or zero-tailed chunk up to where its data stops. It is kept apart because
it is where the guessing is: every rule here trades recall against believing garbage, and an
intact file never reaches it.

:class:`_Salvage` is a mixin of :class:`.mcap_scan._McapScan`: it reads and records through the
scan's state (``_read_at``, ``_problem``, ``_add_lost``, ``_chunk_header``, ``_add_chunk``,
``_walk_records``, ``_check_time_range``, ``stats``, ``summary``, ``channels``, ``_units``,
``_skips``, ``_limit``, ``size``, ``has_footer``, ``_cut_problem``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import zlib
from collections.abc import Callable
from typing import Any

from mcap.opcode import Opcode

from flywheel_pipelines.lib.rosbag.mcap_format import (
    _COMPRESSIONS,
    _DATA_OPCODES,
    _MAX_RECORD,
    _MESSAGE_PREFIX,
    _RECORD_HEADER,
    _U16,
    _U32,
    _check_chunk_limit,
    _ChunkHeader,
    _Damage,
    _Unit,
    lz4_frame,
    zstandard,
)

# Searching for the next record after damage: candidate opcodes, and how much is read at a time.
_SCAN_OPCODES = b"\x03\x04\x05\x06\x07\x0f"
_SCAN_WINDOW = 4 << 20
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


class _Salvage:
    """The damage-recovery half of one MCAP scan (see the module docstring)."""

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
