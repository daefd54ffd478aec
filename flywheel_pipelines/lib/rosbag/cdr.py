"""Columnar decoding of ROS 2 (CDR) messages: one layout per stream, numpy gathers per batch.

A robot's streams keep their layout from message to message: a JointState carries the same joint
names, the same array lengths and the same frame id for hours. So the offsets of the wanted
fields are the same too. This module walks one message with a small CDR interpreter to find them
(a :class:`Template`), then reads a whole batch of messages at once with numpy: it gathers the
bytes that decide the layout (every length prefix, plus the strings the caller asked for) and
compares them with the template's, and for the messages that match it gathers each wanted field
at its offset. A message that does not match gets a template of its own (streams with a few
layouts, e.g. a gripper that comes and goes) and past :data:`MAX_TEMPLATES` per stream it is
walked on its own (the general decoder), which is still a walk over offsets, not a tree of
Python objects.

Only what precedes the last wanted field matters: a CompressedImage whose caller wants the header
stamp never has its image bytes looked at, whatever their size.

Message definitions come from the log itself (MCAP schemas, rosbag2 type descriptions) and are
parsed with rosbags' type system; nothing here needs a ROS installation.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import as_strided
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype

__all__ = ["MAX_TEMPLATES", "CdrError", "Columns", "MessageType", "StreamDecoder", "parse_path"]

# Beyond this many distinct layouts a stream's odd messages are walked one by one.
MAX_TEMPLATES = 16
_SIZES = {
    "bool": 1, "byte": 1, "char": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2,
    "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "float32": 4, "float64": 8,
}
_KINDS = {
    "bool": "u", "byte": "u", "char": "u", "uint8": "u", "uint16": "u", "uint32": "u", "uint64": "u",
    "int8": "i", "int16": "i", "int32": "i", "int64": "i", "float32": "f", "float64": "f",
}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}


class CdrError(ValueError):
    """A message that does not match its definition, or a definition that cannot be used."""


def parse_path(path: str) -> tuple[str | int, ...]:
    """``"transforms[0].transform.translation.x"`` -> ``("transforms", 0, "transform", ...)``."""
    parts: list[str | int] = []
    for piece in path.split("."):
        name, _, rest = piece.partition("[")
        if not name:
            raise CdrError(f"field path {path!r}: empty name")
        parts.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            if not index.isdigit():
                raise CdrError(f"field path {path!r}: index must be a number")
            parts.append(int(index))
            rest = rest.removeprefix("[")
    return tuple(parts)


# -- message definitions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Op:
    """One field of a compiled message definition."""

    name: str
    kind: str  # prim | string | msg | prim_array | string_array | msg_array
    base: str = ""  # primitive type name
    length: int | None = None  # fixed array length; None: a sequence (length prefix)
    sub: str = ""  # nested message type


class MessageType:
    """A ROS 2 message type and the types it uses, compiled to field lists for the walker."""

    def __init__(self, name: str, fielddefs: dict[str, tuple]):
        self.name = name
        self._ops: dict[str, list[_Op]] = {}
        self._compile(name, fielddefs)

    @classmethod
    def from_msgdef(cls, name: str, text: str) -> MessageType:
        """From the concatenated ``.msg`` text a ROS 2 recorder stores as its schema (cached)."""
        return _from_msgdef(cls, name, text)

    @classmethod
    def _parse_msgdef(cls, name: str, text: str) -> MessageType:
        try:
            types = get_types_from_msg(text, name)
        except Exception as exc:  # noqa: BLE001 - the definition text is untrusted input
            raise CdrError(f"message definition of {name!r} cannot be parsed: {exc}") from None
        return cls.from_types(name, types)

    @classmethod
    def from_types(cls, name: str, types: dict) -> MessageType:
        store = get_typestore(Stores.EMPTY)
        try:
            store.register(types)
        except Exception as exc:  # noqa: BLE001
            raise CdrError(f"message definition of {name!r} cannot be used: {exc}") from None
        return cls(name, store.fielddefs)

    def ops(self, typename: str | None = None) -> list[_Op]:
        return self._ops[typename or self.name]

    def _compile(self, typename: str, fielddefs: dict[str, tuple]) -> None:
        if typename in self._ops:
            return
        if typename not in fielddefs:
            raise CdrError(f"message type {typename!r} is used but not defined")
        ops: list[_Op] = []
        self._ops[typename] = ops
        for fname, (nodetype, desc) in fielddefs[typename][1]:
            length: int | None = None
            suffix = ""
            if nodetype in (Nodetype.ARRAY, Nodetype.SEQUENCE):
                (element, desc), bound = desc
                length = bound if nodetype == Nodetype.ARRAY else None
                nodetype, suffix = element, "_array"
            if nodetype == Nodetype.BASE:
                base = desc[0]
                if base == "string" or base == "wstring":
                    ops.append(_Op(fname, "string" + suffix, base, length))
                elif base in _SIZES:
                    ops.append(_Op(fname, "prim" + suffix, base, length))
                else:
                    raise CdrError(f"{typename}.{fname}: unsupported primitive type {base!r}")
            else:
                self._compile(desc, fielddefs)
                ops.append(_Op(fname, "msg" + suffix, length=length, sub=desc))


@functools.lru_cache(maxsize=256)
def _from_msgdef(cls: type[MessageType], name: str, text: str) -> MessageType:
    return cls._parse_msgdef(name, text)


# -- the walker --------------------------------------------------------------------------------------


@dataclass
class _Found:
    """What walking one message found: the wanted fields' places and the bytes deciding them."""

    numeric: dict[str, tuple[int, str, int]] = field(default_factory=dict)  # path -> (offset, dtype, count)
    text: dict[str, object] = field(default_factory=dict)  # path -> str | list[str]
    structure: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) of layout bytes
    end: int = 0  # one past the last byte read


class _Trie(dict):
    """Wanted paths: name -> sub-trie; a leaf (whole field wanted) is an empty trie with ``path``."""

    path: str | None = None


def _build_trie(paths: Iterable[str]) -> _Trie:
    root = _Trie()
    for path in paths:
        node = root
        for part in parse_path(path):
            node = node.setdefault(part, _Trie())
        node.path = path
    return root


class _Walker:
    """Finds the wanted fields of one CDR payload (encapsulation header included)."""

    def __init__(self, mtype: MessageType, wanted: Iterable[str], keep_text: Iterable[str] = ()):
        self.mtype = mtype
        self.trie = _build_trie(wanted)
        self.keep_text = frozenset(keep_text)  # string fields whose content decides a template
        self._check(self.trie, mtype.name, "")

    def _check(self, trie: _Trie, typename: str, prefix: str) -> None:
        ops = {op.name: op for op in self.mtype.ops(typename)}
        for name, sub in trie.items():
            op = ops.get(name) if isinstance(name, str) else None
            where = f"{self.mtype.name}: field {prefix}{name}"
            if op is None:
                raise CdrError(f"{where} does not exist (fields: {', '.join(ops)})")
            if op.kind.startswith("msg"):
                if op.kind == "msg_array":
                    for index, elem in sub.items():
                        if not isinstance(index, int):
                            raise CdrError(f"{where} is an array of {op.sub}: give an index, e.g. {name}[0]")
                        self._check(elem, op.sub, f"{prefix}{name}[{index}].")
                else:
                    if sub.path is not None and not sub:
                        raise CdrError(f"{where} is a {op.sub} message: name one of its fields")
                    self._check(sub, op.sub, f"{prefix}{name}.")
            elif sub:
                raise CdrError(f"{where} is a {op.base}{'[]' if 'array' in op.kind else ''}, it has no subfields")

    def walk(self, data: bytes | memoryview, start: int = 0, length: int | None = None) -> _Found:
        """Walks the payload ``data[start:start+length]``; offsets in the result are from ``start``."""
        length = len(data) - start if length is None else length
        if length < 4:
            raise CdrError(f"payload of {length} bytes is shorter than the CDR encapsulation header")
        kind = data[start + 1]
        if data[start] != 0 or kind not in (0, 1):
            raise CdrError(f"unknown CDR encapsulation {bytes(data[start:start + 2]).hex()}")
        found = _Found(structure=[(0, 2)])
        self._le = kind == 1
        self._u32 = _U32[self._le]
        self._data, self._base, self._limit = data, start + 4, length - 4
        try:
            pos = self._walk(self.mtype.name, self.trie, 0, found, True)
        except (struct.error, IndexError):
            raise CdrError("payload ends before its last field") from None
        found.end = pos + 4
        return found

    def _need(self, pos: int, size: int) -> None:
        if pos + size > self._limit:
            raise CdrError(f"payload ends at byte {self._limit + 4}, a field needs bytes up to {pos + size + 4}")

    def _count(self, pos: int, found: _Found) -> tuple[int, int]:
        pos = (pos + 3) & -4
        self._need(pos, 4)
        (n,) = self._u32.unpack_from(self._data, self._base + pos)
        found.structure.append((pos + 4, 4))
        return n, pos + 4

    def _string(self, pos: int, found: _Found, keep: bool) -> tuple[str | None, int]:
        n, pos = self._count(pos, found)
        self._need(pos, n)
        if keep:
            found.structure.append((pos + 4, n))
        text = bytes(self._data[self._base + pos : self._base + pos + max(n - 1, 0)])
        return (text.decode("utf-8", "replace") if keep else None), pos + n

    def _walk(self, typename: str, trie: _Trie | None, pos: int, found: _Found, last_wanted: bool) -> int:
        """Walks one message; ``last_wanted``: nothing after it is wanted, so it may stop early."""
        ops = self.mtype.ops(typename)
        if trie is not None and last_wanted:
            # Nothing after the last wanted field can move a wanted offset: stop there.
            ops = ops[: max((i for i, op in enumerate(ops) if op.name in trie), default=-1) + 1]
        final = len(ops) - 1
        for number, op in enumerate(ops):
            sub = trie.get(op.name) if trie is not None else None
            kind = op.kind
            if kind == "prim":
                size = _SIZES[op.base]
                pos = (pos + size - 1) & -size
                self._need(pos, size)
                if sub is not None:
                    found.numeric[sub.path] = (pos + 4, self._dtype(op.base), 1)
                pos += size
            elif kind == "prim_array":
                size = _SIZES[op.base]
                if op.length is None:
                    n, pos = self._count(pos, found)
                else:
                    n = op.length
                if n:
                    pos = (pos + size - 1) & -size
                self._need(pos, n * size)
                if sub is not None:
                    found.numeric[sub.path] = (pos + 4, self._dtype(op.base), n)
                pos += n * size
            elif kind == "string":
                keep = sub is not None
                value, pos = self._string(pos, found, keep)
                if keep:
                    found.text[sub.path] = value
            elif kind == "string_array":
                if op.length is None:
                    n, pos = self._count(pos, found)
                else:
                    n = op.length
                keep = sub is not None
                values = []
                for _ in range(n):
                    value, pos = self._string(pos, found, keep)
                    values.append(value)
                if keep:
                    found.text[sub.path] = values
            elif kind == "msg":
                pos = self._walk(op.sub, sub, pos, found, last_wanted and number == final)
            else:  # msg_array
                if op.length is None:
                    n, pos = self._count(pos, found)
                else:
                    n = op.length
                wanted = [i for i in (sub or {}) if isinstance(i, int)]
                last = max(wanted, default=-1)
                stop = last_wanted and number == final and sub is not None
                for index in range(min(n, last + 1) if stop else n):
                    elem = sub.get(index) if sub is not None else None
                    pos = self._walk(op.sub, elem, pos, found, stop and index == last)
                if sub is not None and last >= n:
                    # The element is absent in this message: the field reads as missing (NaN).
                    for index in wanted:
                        if index >= n:
                            _missing(sub[index], found)
        return pos

    def _dtype(self, base: str) -> str:
        return ("<" if self._le else ">") + _KINDS[base] + str(_SIZES[base])


def _missing(trie: _Trie, found: _Found) -> None:
    if trie.path is not None:
        found.numeric.setdefault(trie.path, (0, "<f8", 0))
    for sub in trie.values():
        _missing(sub, found)


# -- the general decoder: one walk over all pending messages at once ---------------------------------


class _VectorWalk:
    """The general decoder: walks every pending message of a batch together, field by field.

    Positions are one int64 array (a message per element), so a field costs a few numpy calls
    per batch, not a Python step per message: a sequence or string length is one gather, an array
    of messages or strings is walked element by element over the messages that still have one.
    It records the wanted fields' offsets and counts (the values are gathered afterwards, as for
    templates) and the places of the wanted strings, which are then decoded in one go: a stream
    whose joint names never repeat costs one ``bytes.decode`` per batch. Messages whose lengths
    run past their payload are marked and left to :class:`_Walker`, which words the error.
    Little-endian CDR only.
    """

    def __init__(self, mtype: MessageType, numeric: Sequence[str], text: Sequence[str]):
        self.mtype = mtype
        self.numeric, self.text = tuple(numeric), tuple(text)
        self.trie = _build_trie([*numeric, *text])
        self.dtypes: dict[str, str] = {}

    def walk(self, buf: np.ndarray, origin: np.ndarray, limit: np.ndarray):
        """``origin``: where each payload's CDR body starts in ``buf`` (after the 4-byte header);
        ``limit``: its length. Returns (numeric: path -> (offsets from origin, counts), text: path ->
        per-message values, bad mask)."""
        n = len(origin)
        self._buf, self._origin, self._limit = buf, origin, limit
        self._bad = np.zeros(n, bool)
        self._numeric = {p: (np.zeros(n, np.int64), np.zeros(n, np.int64)) for p in self.numeric}
        # wanted strings: path -> list of (message rows, element number, absolute start, length with NUL)
        self._strings: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {p: [] for p in self.text}
        self._counts: dict[str, np.ndarray] = {}
        self._walk(self.mtype.name, self.trie, np.arange(n), np.zeros(n, np.int64), True)
        text = {path: self._decode_strings(path, n) for path in self.text}
        return self._numeric, text, self._bad

    def _u32(self, rows: np.ndarray, r: np.ndarray) -> np.ndarray:
        """The u32 at each message's position ``r``; a message without 4 bytes there is marked bad (0)."""
        fits = r + 4 <= self._limit[rows]
        where = np.where(fits, self._origin[rows] + r, 0)
        values = _rows(self._buf, where, 4).copy().view("<u4").ravel().astype(np.int64) if len(rows) else \
            np.zeros(0, np.int64)
        if not fits.all():
            self._bad[rows[~fits]] = True
            values[~fits] = 0
        return values

    def _check(self, rows: np.ndarray, end: np.ndarray) -> None:
        over = end > self._limit[rows]
        if over.any():
            self._bad[rows[over]] = True

    def _count(self, rows: np.ndarray, r: np.ndarray, op: _Op) -> tuple[np.ndarray, np.ndarray]:
        if op.length is not None:
            return np.full(len(rows), op.length, np.int64), r
        r = (r + 3) & -4
        c = self._u32(rows, r)
        r = r + 4
        # No element is smaller than a byte: a count past the payload is damage (and must not loop).
        over = c > self._limit[rows] - r
        if over.any():
            self._bad[rows[over]] = True
            c[over] = 0
        return c, r

    def _walk(self, typename: str, trie: _Trie | None, rows: np.ndarray, r: np.ndarray, tail: bool) -> np.ndarray:
        ops = self.mtype.ops(typename)
        if trie is not None and tail:
            ops = ops[: max((i for i, op in enumerate(ops) if op.name in trie), default=-1) + 1]
        final = len(ops) - 1
        for number, op in enumerate(ops):
            if not len(rows):
                return r
            sub = trie.get(op.name) if trie is not None else None
            path = sub.path if sub is not None else None
            last = tail and number == final
            kind = op.kind
            if kind in ("prim", "prim_array"):
                size = _SIZES[op.base]
                if kind == "prim":
                    c = None
                    r = (r + size - 1) & -size
                else:
                    c, r = self._count(rows, r, op)
                    if size > 1:
                        r = np.where(c > 0, (r + size - 1) & -size, r)
                if path is not None and path in self._numeric:
                    self.dtypes[path] = "<" + _KINDS[op.base] + str(size)
                    offsets, counts = self._numeric[path]
                    offsets[rows] = r
                    counts[rows] = 1 if c is None else c
                r = r + (size if c is None else size * c)
                self._check(rows, r)
            elif kind == "string":
                r = (r + 3) & -4
                length = self._u32(rows, r)
                if path is not None and path in self._strings:
                    self._strings[path].append((rows, np.zeros(len(rows), np.int64), self._origin[rows] + r + 4, length))
                r = r + 4 + length
                self._check(rows, r)
            elif kind == "string_array":
                c, r = self._count(rows, r, op)
                wanted = path is not None and path in self._strings
                if wanted:
                    counts = np.zeros(len(self._origin), np.int64)
                    counts[rows] = c
                    self._counts[path] = counts
                for k in range(int(c.max()) if len(c) else 0):
                    active = c > k
                    sub_rows = rows[active]
                    pos = (r[active] + 3) & -4
                    length = self._u32(sub_rows, pos)
                    if wanted:
                        self._strings[path].append((sub_rows, np.full(len(sub_rows), k, np.int64),
                                                    self._origin[sub_rows] + pos + 4, length))
                    r[active] = pos + 4 + length
                self._check(rows, r)
            elif kind == "msg":
                r = self._walk(op.sub, sub, rows, r, last)
            else:  # msg_array
                c, r = self._count(rows, r, op)
                wanted = [i for i in (sub or {}) if isinstance(i, int)]
                stop = last and sub is not None
                top = int(c.max()) if len(c) else 0
                if stop:
                    top = min(top, max(wanted, default=-1) + 1)
                for k in range(top):
                    active = c > k
                    elem = sub.get(k) if sub is not None else None
                    r[active] = self._walk(op.sub, elem, rows[active], r[active].copy(),
                                           stop and k == max(wanted, default=-1))
        return r

    def _decode_strings(self, path: str, n: int) -> list:
        """The wanted strings of every message, decoded together (a list of str per message for a
        string array, a str for a string)."""
        pieces = self._strings[path]
        array = path in self._counts
        out: list = [[] if array else None for _ in range(n)]
        if not pieces:
            return out
        rows = np.concatenate([p[0] for p in pieces])
        element = np.concatenate([p[1] for p in pieces])
        start = np.concatenate([p[2] for p in pieces])
        length = np.concatenate([p[3] for p in pieces])
        good = ~self._bad[rows]
        rows, element, start, length = rows[good], element[good], start[good], length[good]
        order = np.lexsort((element, rows))
        rows, start, length = rows[order], start[order], length[order]
        strings = self._bulk_decode(start, length)
        if not array:
            for i, s in zip(rows.tolist(), strings, strict=True):
                out[i] = s
            return out
        counts = self._counts[path][rows]  # rows are grouped by message: slice each message's names
        first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, np.int64)
        for i, a, m in zip(rows[first].tolist(), first.tolist(), counts[first].tolist(), strict=True):
            out[i] = strings[a : a + m]
        return out

    def _bulk_decode(self, start: np.ndarray, length: np.ndarray) -> list[str]:
        """Strings (without their NUL) at these places, with one gather and one decode."""
        if not len(start):
            return []
        total = int(length.sum())
        if total and (length > 0).all():
            offsets = np.zeros(len(length), np.int64)
            np.cumsum(length[:-1], out=offsets[1:])
            index = np.repeat(start - offsets, length) + np.arange(total)
            blob = self._buf[index]
            # Each CDR string ends in its NUL: one decode, one split, unless a string holds a NUL
            # of its own (then one decode each, below).
            if (blob[offsets + length - 1] == 0).all() and np.count_nonzero(blob == 0) == len(length):
                return blob.tobytes().decode("utf-8", "replace").split("\x00")[:-1]
        data = self._buf
        return [bytes(data[a : a + max(m - 1, 0)]).decode("utf-8", "replace")
                for a, m in zip(start.tolist(), length.tolist(), strict=True)]


# -- templates and batches -----------------------------------------------------------------------


@dataclass
class Template:
    """The layout one group of messages shares."""

    positions: np.ndarray  # byte offsets (in the payload) that decide the layout
    expected: np.ndarray  # their values
    min_length: int
    numeric: dict[str, tuple[int, str, int]]
    text: dict[str, object]
    # The same check as whole 8-byte words over the span of ``positions``: (mask, expected & mask).
    words: tuple[np.ndarray, np.ndarray] | None = None

    def seal(self, sample: np.ndarray) -> None:
        """Takes the layout bytes from one message of the layout (the payload's bytes, ``sample``)."""
        self.expected = sample[self.positions].copy()
        if not len(self.positions):
            return
        lo = int(self.positions.min())
        span = int(self.positions.max()) + 1 - lo
        width = (span + 7) // 8 * 8
        mask = np.zeros(width, np.uint8)
        mask[self.positions - lo] = 0xFF
        want = np.zeros(width, np.uint8)
        want[self.positions - lo] = self.expected
        self.words = (mask.view("<u8"), want.view("<u8"))

    @classmethod
    def from_found(cls, found: _Found) -> Template:
        positions = np.concatenate(
            [np.arange(off, off + n, dtype=np.int64) for off, n in found.structure] or [np.zeros(0, np.int64)]
        )
        return cls(positions, np.zeros(0, np.uint8), found.end, found.numeric, found.text)


@dataclass
class Columns:
    """The wanted fields of a batch of messages, in the order given.

    ``numeric[path]`` is float64 ``(n, k)`` (``k``: the field's element count, NaN-padded where a
    message has fewer); ``text[path]`` is a list of str (or list of str) per message. ``layout``
    numbers the message's layout and ``text_of_layout`` gives the text fields of each, so a caller
    can act once per layout (e.g. reorder joints by name) instead of once per message.
    """

    numeric: dict[str, np.ndarray]
    text: dict[str, list]
    layout: np.ndarray  # int32 per message: index into text_of_layout, -1 for a per-message walk
    text_of_layout: list[dict[str, object]]
    bad: np.ndarray  # bool per message: did not decode (the reason is in ``errors``)
    errors: list[str]
    stamp: np.ndarray | None = None  # the message's own stamp (int64 ns, -1: none), for decoders that find it


class StreamDecoder:
    """Decodes the wanted fields of one stream (one channel / connection) batch by batch."""

    def __init__(self, mtype: MessageType, numeric: Sequence[str], text: Sequence[str] = ()):
        self.mtype = mtype
        self.numeric_paths = tuple(numeric)
        self.text_paths = tuple(text)
        self._walker = _Walker(mtype, [*numeric, *text], keep_text=text)
        self._vector = _VectorWalk(mtype, numeric, text)
        self.templates: list[Template] = []
        self.walked = 0  # messages decoded one by one (no template)
        self.fast = 0  # messages decoded by a template gather

    def layout_text(self) -> list[dict[str, object]]:
        """The text fields of each layout, indexed by the layout numbers :meth:`decode` gives."""
        return [t.text for t in self.templates]

    def decode(self, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Columns:
        """``buf``: uint8 array; message ``i`` is ``buf[starts[i] : starts[i] + lengths[i]]``."""
        n = len(starts)
        layout = np.full(n, -1, np.int32)
        pending = np.arange(n)
        groups: list[tuple[int, np.ndarray]] = []
        for number, template in enumerate(self.templates):
            if not len(pending):
                break
            ok = self._matches(template, buf, starts[pending], lengths[pending])
            if ok.any():
                groups.append((number, pending[ok]))
                pending = pending[~ok]
        # Messages no stored template matches get one of their own, until the cap.
        while len(pending) and len(self.templates) < MAX_TEMPLATES:
            i = int(pending[0])
            try:
                found = self._walker.walk(buf, int(starts[i]), int(lengths[i]))
            except CdrError:
                break  # walked again below, which records the error
            template = Template.from_found(found)
            template.seal(buf[int(starts[i]) : int(starts[i]) + int(lengths[i])])
            self.templates.append(template)
            ok = self._matches(template, buf, starts[pending], lengths[pending])
            ok[0] = True
            groups.append((len(self.templates) - 1, pending[ok]))
            pending = pending[~ok]
        # Per field: (rows, absolute offsets, count, dtype) pieces to gather.
        pieces: dict[str, list[tuple[np.ndarray, np.ndarray, int, str]]] = {p: [] for p in self.numeric_paths}
        text: dict[str, list] = {p: [None] * n for p in self.text_paths}
        for number, rows in groups:
            template = self.templates[number]
            layout[rows] = number
            for path in self.text_paths:
                value = template.text[path]
                column = text[path]
                for r in rows.tolist():
                    column[r] = value
        self.fast += n - len(pending)
        bad = np.zeros(n, bool)
        errors: list[str] = []
        if len(pending):
            self._walk_each(buf, starts, lengths, pending, pieces, text, bad, errors)
        numeric: dict[str, np.ndarray] = {}
        for path, parts in pieces.items():
            width = max([c for _, _, c, _ in parts] + [self.templates[k].numeric[path][2] for k, _ in groups] + [0])
            numeric[path] = np.full((n, width), np.nan)
        # A layout's fields are read with one gather of the bytes spanning them all, then sliced.
        for number, rows in groups:
            fields = [(path, *self.templates[number].numeric[path]) for path in self.numeric_paths]
            fields = [f for f in fields if f[3]]
            if not fields:
                continue
            lo = min(offset for _, offset, _, _ in fields)
            hi = max(offset + count * int(dtype[2:]) for _, offset, dtype, count in fields)
            block = _rows(buf, starts[rows] + lo, hi - lo)
            whole = len(rows) == n
            for path, offset, dtype, count in fields:
                size = count * int(dtype[2:])
                values = np.ascontiguousarray(block[:, offset - lo : offset - lo + size]).view(np.dtype(dtype))
                if whole:
                    numeric[path][:, :count] = values
                else:
                    numeric[path][rows, :count] = values
        for path, parts in pieces.items():
            for rows, offsets, count, dtype in parts:
                if count and len(rows):
                    numeric[path][rows, :count] = _gather(buf, offsets, dtype, count)
        return Columns(numeric, text, layout, [t.text for t in self.templates], bad, errors)

    def _walk_each(self, buf, starts, lengths, pending, pieces, text, bad, errors) -> None:
        """The general decoder: one vectorized walk over the pending messages (see :class:`_VectorWalk`),
        then one gather per field and count; big-endian or damaged payloads go to the interpreter."""
        self.walked += len(pending)
        first = starts[pending]
        little = (lengths[pending] >= 4) & (buf[first] == 0) & (buf[np.minimum(first + 1, len(buf) - 1)] == 1)
        slow: list[int] = pending[~little].tolist()
        fast = pending[little]
        if len(fast):
            origin = starts[fast] + 4
            found, strings, failed = self._vector.walk(buf, origin, lengths[fast] - 4)
            slow += fast[failed].tolist()
            keep = ~failed
            rows, base = fast[keep], origin[keep]
            for path in self.numeric_paths:
                offsets, counts = (a[keep] for a in found[path])
                dtype = self._vector.dtypes.get(path, "<f8")
                for count in np.unique(counts).tolist():
                    sel = counts == count
                    pieces[path].append((rows[sel], base[sel] + offsets[sel], count, dtype))
            for path in self.text_paths:
                column, values = text[path], strings[path]
                for j in np.flatnonzero(keep).tolist():
                    column[int(fast[j])] = values[j]
        # Big-endian CDR and damaged payloads: the interpreter, which also words the error.
        for i in slow:
            try:
                found = self._walker.walk(buf, int(starts[i]), int(lengths[i]))
            except CdrError as exc:
                bad[i] = True
                errors.append(str(exc))
                continue
            for path in self.numeric_paths:
                offset, dtype, count = found.numeric[path]
                pieces[path].append((np.array([i]), np.array([int(starts[i]) + offset]), count, dtype))
            for path in self.text_paths:
                text[path][i] = found.text[path]

    @staticmethod
    def _matches(template: Template, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        ok = lengths >= template.min_length
        if not len(template.positions) or not ok.any():
            return ok
        lo = int(template.positions.min())
        mask, want = template.words
        width = 8 * len(mask)
        idx = np.flatnonzero(ok)
        first = starts[idx] + lo
        # Whole words where the buffer has room for them (all but possibly the last message).
        room = first + width <= len(buf)
        same = np.zeros(len(idx), bool)
        if room.any():
            words = np.ascontiguousarray(_rows(buf, first[room], width)).view("<u8")
            same[room] = ((words & mask) == want).all(axis=1)
        if not room.all():
            rest = ~room
            block = _rows(buf, first[rest], int(template.positions.max()) + 1 - lo)
            same[rest] = (block[:, template.positions - lo] == template.expected).all(axis=1)
        ok[idx[~same]] = False
        return ok


def _rows(buf: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """``buf[s : s + width]`` for every s in ``starts``, as one (n, width) array."""
    usable = len(buf) - width + 1
    if usable <= 0:
        return np.zeros((len(starts), width), np.uint8)
    window = as_strided(buf, shape=(usable, width), strides=(buf.strides[0], buf.strides[0]), writeable=False)
    return window[starts]


def _gather(buf: np.ndarray, starts: np.ndarray, dtype: str, count: int) -> np.ndarray:
    itemsize = int(dtype[2:])
    raw = np.ascontiguousarray(_rows(buf, starts, itemsize * count))
    return raw.view(np.dtype(dtype)).reshape(len(starts), count).astype(np.float64)
