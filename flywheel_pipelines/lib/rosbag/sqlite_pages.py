"""Just enough of the SQLite file format to read table rows from the intact pages of a damaged file.

Used only on rosbag2 ``.db3`` files that SQLite itself refuses (:func:`.db3._read_db3`): a
truncated or overwritten file is malformed as a whole, yet most of its leaf pages still hold
rows. This is a parser of SQLite's on-disk format (header, b-tree pages, cells, overflow chains,
varints, records, write-ahead log frames) and knows of rosbag2 only the shape of a message row;
it is apart from :mod:`.db3` because it is a format of its own, with its own untrusted lengths.
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_SQLITE_MAGIC = b"SQLite format 3\x00"


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
