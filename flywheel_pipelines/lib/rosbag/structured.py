"""Columnar decoding of self-describing channels: ``json`` (``jsonschema`` or no schema) and ``protobuf``.

Foxglove's SDKs and many non-ROS robots write MCAP channels in these encodings. The mapping
language is the same as for ROS messages: dotted field paths, ``[i]`` into arrays; a numeric
field may be a number, a bool or an array of numbers (one column per element); a text field a
string or an array of strings (e.g. joint names, which then reorder the values by name).

Both decoders parse a whole batch at once and then read each wanted field for all messages with
one list comprehension and one ``np.array`` (per-message work only where a message differs):
JSON payloads are joined into one JSON array and parsed with one ``orjson.loads`` (the values
``json.loads`` gives; a payload only the standard library accepts, e.g. one with ``NaN``, is
parsed by it);
protobuf payloads are framed as the repeated field of a wrapper message built next to the
channel's own type, and parsed with one ``ParseFromString`` (upb, in C). A payload that breaks
the batch parse sends the batch to a per-message parse, which words the error for that message.

The message's own stamp (for ``clock: header``) is found by the fields it has: ``header.stamp``
(``sec``/``nanosec``, ``nsec``, or ROS 1's ``secs``/``nsecs``) or ``timestamp`` (a Foxglove
``{sec, nsec}``, a ``google.protobuf.Timestamp``'s ``seconds``/``nanos``). Without one, the
message is placed at its publish time, as a header-less ROS message is.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from flywheel_pipelines.lib.rosbag.cdr import CdrError, Columns, parse_path

try:  # parses numbers several times faster than the standard library; same values
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - a declared dependency
    _fast_loads = json.loads

__all__ = ["JsonDecoder", "ProtobufDecoder", "decoder_for", "message_decoder"]

# (seconds path, nanoseconds path), tried in this order.
STAMP_FIELDS = (
    ("header.stamp.sec", "header.stamp.nanosec"),
    ("header.stamp.sec", "header.stamp.nsec"),
    ("header.stamp.secs", "header.stamp.nsecs"),
    ("timestamp.sec", "timestamp.nsec"),
    ("timestamp.sec", "timestamp.nanosec"),
    ("timestamp.seconds", "timestamp.nanos"),
)


def decoder_for(info, numeric: Sequence[str], text: Sequence[str], *, stamp: bool):
    """The column decoder of a ``json`` or ``protobuf`` channel. Raises CdrError (the reason
    every message of the channel is undecodable) when the schema or a field path is unusable."""
    if info.message_encoding == "json":
        return JsonDecoder(info, numeric, text, stamp=stamp)
    return ProtobufDecoder(info, numeric, text, stamp=stamp)


class _Layouts:
    """Numbers each distinct combination of text values (e.g. a joint-name list) once."""

    def __init__(self, text_paths: Sequence[str]) -> None:
        self.text_paths = tuple(text_paths)
        self.numbers: dict[tuple, int] = {}
        self.texts: list[dict[str, object]] = []

    def number(self, values: tuple) -> int:
        key = tuple(tuple(v) if isinstance(v, list) else v for v in values)
        found = self.numbers.get(key)
        if found is None:
            found = self.numbers[key] = len(self.texts)
            self.texts.append(dict(zip(self.text_paths, values, strict=True)))
        return found


def _columns(n: int, numeric_paths, text_paths, rows: list, layouts: _Layouts, stamps: list,
             bad: np.ndarray, errors: list[str]) -> Columns:
    """Columns from per-message extracted values: ``rows[i]`` is (numeric lists, text values) or None."""
    numeric: dict[str, np.ndarray] = {}
    for k, path in enumerate(numeric_paths):
        width = max((len(r[0][k]) for r in rows if r is not None), default=0)
        column = np.full((n, width), np.nan)
        for i, r in enumerate(rows):
            if r is not None and r[0][k]:
                column[i, : len(r[0][k])] = r[0][k]
        numeric[path] = column
    text = {path: [r[1][k] if r is not None else None for r in rows] for k, path in enumerate(text_paths)}
    layout = np.full(n, -1, np.int32)
    if text_paths:
        for i, r in enumerate(rows):
            if r is not None:
                layout[i] = layouts.number(r[1])
    stamp = np.asarray(stamps, np.int64) if stamps else None
    return Columns(numeric, text, layout, layouts.texts, bad, errors, stamp)


def _getter(parts: tuple, attributes: bool, repeated_leaf: bool = False):
    """``lambda m: m["a"]["b"][0]`` (JSON) or ``lambda m: m.a.b[0]`` (protobuf), compiled once per path."""
    code = "m" + "".join(f"[{p!r}]" if isinstance(p, int) or not attributes else f".{p}" for p in parts)
    return eval(f"lambda m: list({code})" if repeated_leaf else f"lambda m: {code}")  # noqa: S307 - paths are checked names


def _fast_columns(objs: list, numeric_paths, numeric_getters, text_paths, text_getters, stamp_getters,
                  layouts: _Layouts) -> Columns | None:
    """Every message at once, column by column (one list comprehension and one ``np.array`` per
    field); None when some message needs the careful per-message path (a missing field, an index
    past an array's end, arrays of different lengths, a value of the wrong type)."""
    n = len(objs)
    try:
        numeric: dict[str, np.ndarray] = {}
        for path, get in zip(numeric_paths, numeric_getters, strict=True):
            column = np.array([get(o) for o in objs])
            if column.dtype.kind not in "biuf":  # strings (which a float cast would parse), nulls, ragged
                return None
            column = column.astype(np.float64, copy=False)
            if column.ndim == 1:
                column = column[:, None]
            elif column.ndim != 2:
                return None
            numeric[path] = column
        text = {path: [get(o) for o in objs] for path, get in zip(text_paths, text_getters, strict=True)}
        stamp = None
        if stamp_getters is not None:
            sec, nsec = stamp_getters
            stamp = (np.array([sec(o) for o in objs], np.int64) * 1_000_000_000
                     + np.array([nsec(o) for o in objs], np.int64))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError):
        return None
    layout = np.full(n, -1, np.int32)
    if text_paths:
        previous, number = None, -1
        for i, values in enumerate(zip(*(text[p] for p in text_paths), strict=True)):
            if values != previous:  # streams keep their names: compare with the last, check and number rarely
                if not all(type(v) is str or (type(v) is list and all(type(x) is str for x in v)) for v in values):
                    return None
                number, previous = layouts.number(values), values
            layout[i] = number
    return Columns(numeric, text, layout, layouts.texts, np.zeros(n, bool), [], stamp)


def _numbers(value: Any, path: str) -> list[float]:
    if value is None:
        return [np.nan]
    if isinstance(value, bool | int | float):
        return [float(value)]
    if isinstance(value, list) and all(isinstance(v, bool | int | float) or v is None for v in value):
        return [np.nan if v is None else float(v) for v in value]
    raise CdrError(f"field {path} is a {type(value).__name__}, not a number or an array of numbers")


# -- JSON ------------------------------------------------------------------------------------------


def _json_get(doc: Any, parts: tuple, path: str) -> tuple[Any, bool]:
    """(value, present); an index past an array's end reads as absent (NaN), a missing key raises."""
    value = doc
    for part in parts:
        if isinstance(part, int):
            if not isinstance(value, list):
                raise CdrError(f"field {path}: not an array where [{part}] is asked")
            if part >= len(value):
                return None, False
            value = value[part]
        else:
            if not isinstance(value, dict) or part not in value:
                raise CdrError(f"field {path} is absent from the message")
            value = value[part]
    return value, True


class JsonDecoder:
    """Decodes the wanted fields of a ``json`` channel, a batch at a time."""

    def __init__(self, info, numeric: Sequence[str], text: Sequence[str], *, stamp: bool) -> None:
        self.numeric_paths, self.text_paths = tuple(numeric), tuple(text)
        self.type = info.type
        self.schema = _json_schema(info)
        for path in (*numeric, *text):
            _check_json_path(self.schema, path, self.type)
        self.parts = [parse_path(p) for p in (*numeric, *text)]
        self._getters = [_getter(parts, False) for parts in self.parts]
        self.stamp_paths: tuple[tuple, tuple] | None = None
        self.want_stamp = stamp
        if stamp and self.schema is not None:
            self.stamp_paths = _json_stamp(self.schema)
        self.layouts = _Layouts(text)

    def layout_text(self) -> list[dict[str, object]]:
        return self.layouts.texts

    def decode(self, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Columns:
        n = len(starts)
        view = memoryview(buf)
        payloads = [view[a : a + m] for a, m in zip(starts.tolist(), lengths.tolist(), strict=True)]
        docs: list[Any]
        whole = True
        try:
            docs = _fast_loads(b"[" + b",".join(payloads) + b"]")
            if len(docs) != n:  # a payload holding two values, "1, 2"
                raise ValueError("payload count mismatch")
        except ValueError:
            docs = [self._parse_one(p) for p in payloads]
            whole = not any(isinstance(d, _Failed) for d in docs)
        bad = np.zeros(n, bool)
        errors: list[str] = []
        rows: list = []
        stamps: list[int] = []
        if self.want_stamp and self.stamp_paths is None:
            first = next((d for d in docs if isinstance(d, dict)), None)
            self.stamp_paths = _json_stamp_of(first) if first is not None else None
        if whole:
            stamp_getters = None
            if self.want_stamp and self.stamp_paths is not None:
                stamp_getters = tuple(_getter(p, False) for p in self.stamp_paths)
            fast = _fast_columns(docs, self.numeric_paths, self._getters[: len(self.numeric_paths)], self.text_paths,
                                 self._getters[len(self.numeric_paths) :],
                                 stamp_getters if self.want_stamp and stamp_getters is not None else None, self.layouts)
            if fast is not None:
                if self.want_stamp and fast.stamp is None:
                    fast.stamp = np.full(n, -1, np.int64)
                return fast
        k = len(self.numeric_paths)
        paths = (*self.numeric_paths, *self.text_paths)
        for i, doc in enumerate(docs):
            try:
                if isinstance(doc, _Failed):
                    raise CdrError(doc.why)
                if not isinstance(doc, dict):
                    raise CdrError(f"payload is a JSON {type(doc).__name__}, not an object")
                values = [_json_get(doc, parts, path) for parts, path in zip(self.parts, paths, strict=True)]
                numbers = [_numbers(v, path) if present else [] for (v, present), path in
                           zip(values[:k], self.numeric_paths, strict=True)]
                texts = tuple(v if present else None for v, present in values[k:])
                for value, path in zip(texts, self.text_paths, strict=True):
                    if value is not None and not (isinstance(value, str) or (
                            isinstance(value, list) and all(isinstance(x, str) for x in value))):
                        raise CdrError(f"field {path} is a {type(value).__name__}, not a string or strings")
                rows.append((numbers, texts))
                if self.want_stamp:
                    stamps.append(_stamp_of(doc, self.stamp_paths))
            except CdrError as exc:
                bad[i] = True
                errors.append(str(exc))
                rows.append(None)
                if self.want_stamp:
                    stamps.append(-1)
        return _columns(n, self.numeric_paths, self.text_paths, rows, self.layouts, stamps, bad, errors)

    @staticmethod
    def _parse_one(payload) -> Any:
        try:
            return _fast_loads(bytes(payload))
        except ValueError:
            pass
        try:
            return json.loads(bytes(payload))  # NaN, Infinity, integers past 64 bits
        except ValueError as exc:
            return _Failed(f"payload is not valid JSON ({exc})")


class _Failed:
    def __init__(self, why: str) -> None:
        self.why = why


def _json_schema(info) -> dict | None:
    if info.schema_encoding not in ("jsonschema", ""):
        raise CdrError(f"JSON messages with a {info.schema_encoding!r} schema (expected jsonschema or none)")
    if not info.schema.strip():
        return None
    try:
        schema = json.loads(info.schema)
    except ValueError as exc:
        raise CdrError(f"JSON schema of {info.type!r} is not valid JSON: {exc}") from None
    return schema if isinstance(schema, dict) else None


def _check_json_path(schema: dict | None, path: str, type_: str) -> None:
    """Rejects a path the schema says cannot exist (a schema without ``properties`` allows any)."""
    node = schema
    for part in parse_path(path):
        if not isinstance(node, dict):
            return
        if isinstance(part, int):
            node = node.get("items") if node.get("type") == "array" else None
            continue
        props = node.get("properties")
        if not isinstance(props, dict):
            return  # the schema does not list its fields: anything may appear
        if part not in props:
            if node.get("additionalProperties") not in (None, False):
                return  # fields beyond those listed are declared welcome
            raise CdrError(f"{type_ or 'message'}: field {path} does not exist (fields: {', '.join(props)})")
        node = props[part]


def _json_stamp(schema: dict) -> tuple[tuple, tuple] | None:
    for sec, nsec in STAMP_FIELDS:
        try:
            _check_strict(schema, sec)
            _check_strict(schema, nsec)
        except (CdrError, KeyError, TypeError):
            continue
        return parse_path(sec), parse_path(nsec)
    return None


def _check_strict(schema: dict, path: str) -> None:
    node = schema
    for part in parse_path(path):
        node = node["properties"][part]


def _json_stamp_of(doc: dict) -> tuple[tuple, tuple] | None:
    for sec, nsec in STAMP_FIELDS:
        a, b = parse_path(sec), parse_path(nsec)
        try:
            if all(isinstance(_json_get(doc, p, "")[0], int) for p in (a, b)):
                return a, b
        except CdrError:
            continue
    return None


def _stamp_of(doc: Any, paths: tuple[tuple, tuple] | None) -> int:
    if paths is None:
        return -1
    try:
        sec, _ = _json_get(doc, paths[0], "")
        nsec, _ = _json_get(doc, paths[1], "")
        return int(sec) * 1_000_000_000 + int(nsec)
    except (CdrError, TypeError, ValueError):
        return -1


# -- protobuf --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _protobuf_classes(type_: str, schema: bytes) -> tuple[Any, Any]:
    """The message class of ``type_`` from a FileDescriptorSet, and a wrapper class whose field 1
    is a repeated ``type_`` (to parse a batch in one call)."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message_factory import GetMessageClass

    try:
        fds = descriptor_pb2.FileDescriptorSet.FromString(schema)
    except Exception as exc:  # noqa: BLE001 - the schema bytes are untrusted input
        raise CdrError(f"protobuf schema of {type_!r} is not a FileDescriptorSet ({exc})") from None
    pool = descriptor_pool.DescriptorPool()
    by_name = {fd.name: fd for fd in fds.file}
    added: set[str] = set()

    def add(fd) -> None:
        if fd.name in added:
            return
        added.add(fd.name)
        for dependency in fd.dependency:
            if dependency in by_name:
                add(by_name[dependency])
        pool.Add(fd)

    try:
        for fd in fds.file:
            add(fd)
        descriptor = pool.FindMessageTypeByName(type_)
    except Exception as exc:  # noqa: BLE001
        raise CdrError(f"protobuf schema does not define {type_!r} ({exc})") from None
    wrapper = descriptor_pb2.FileDescriptorProto(name="flywheel_batch_wrapper.proto", package="flywheel_batch",
                                                 dependency=[descriptor.file.name], syntax="proto3")
    message = wrapper.message_type.add(name="Batch")
    message.field.add(name="m", number=1, label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                      type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, type_name="." + type_)
    pool.Add(wrapper)
    return GetMessageClass(descriptor), GetMessageClass(pool.FindMessageTypeByName("flywheel_batch.Batch"))


def _check_protobuf_path(descriptor, path: str, type_: str) -> None:
    from google.protobuf.descriptor import FieldDescriptor

    parts = parse_path(path)
    node = descriptor
    field = None
    position = 0
    while position < len(parts):
        part = parts[position]
        if isinstance(part, int):
            raise CdrError(f"{type_}: field {path}: [{part}] follows a field that is not repeated")
        if node is None:
            raise CdrError(f"{type_}: field {path}: {field.name} has no subfields")
        field = node.fields_by_name.get(part)
        if field is None:
            raise CdrError(f"{type_}: field {path} does not exist (fields: {', '.join(node.fields_by_name)})")
        position += 1
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
        if repeated and position < len(parts) and isinstance(parts[position], int):
            position += 1
        elif repeated and field.type == FieldDescriptor.TYPE_MESSAGE:
            raise CdrError(f"{type_}: field {path}: {field.name} is a repeated message, give an index")
        node = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
    if node is not None:
        raise CdrError(f"{type_}: field {path} is a {node.full_name} message: name one of its fields")


def _repeated_leaf(descriptor, parts: tuple) -> bool:
    """Whether a (checked) path ends on a repeated field without an index: read as a list."""
    from google.protobuf.descriptor import FieldDescriptor

    node, field = descriptor, None
    for part in parts:
        if isinstance(part, int):
            field = None
            continue
        field = node.fields_by_name[part]
        node = field.message_type
    return field is not None and field.label == FieldDescriptor.LABEL_REPEATED


def _protobuf_get(message: Any, parts: tuple) -> tuple[Any, bool]:
    value = message
    for part in parts:
        if isinstance(part, int):
            if part >= len(value):
                return None, False
            value = value[part]
        else:
            value = getattr(value, part)
    return value, True


def _protobuf_stamp(descriptor) -> tuple[tuple, tuple] | None:
    for sec, nsec in STAMP_FIELDS:
        try:
            _check_protobuf_path(descriptor, sec, "")
            _check_protobuf_path(descriptor, nsec, "")
        except CdrError:
            continue
        return parse_path(sec), parse_path(nsec)
    return None


@functools.lru_cache(maxsize=4096)
def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class ProtobufDecoder:
    """Decodes the wanted fields of a ``protobuf`` channel, a batch at a time (see the module docstring)."""

    def __init__(self, info, numeric: Sequence[str], text: Sequence[str], *, stamp: bool) -> None:
        if info.schema_encoding != "protobuf":
            raise CdrError(f"protobuf messages with a {info.schema_encoding or 'missing'!r} schema "
                           "(expected a protobuf FileDescriptorSet)")
        self.cls, self.batch_cls = _protobuf_classes(info.type, bytes(info.schema))
        descriptor = self.cls.DESCRIPTOR
        for path in (*numeric, *text):
            _check_protobuf_path(descriptor, path, info.type)
        self.numeric_paths, self.text_paths = tuple(numeric), tuple(text)
        self.parts = [parse_path(p) for p in (*numeric, *text)]
        self._getters = [_getter(parts, True, _repeated_leaf(descriptor, parts)) for parts in self.parts]
        self.stamp_paths = _protobuf_stamp(descriptor) if stamp else None
        self.want_stamp = stamp
        self.layouts = _Layouts(text)

    def layout_text(self) -> list[dict[str, object]]:
        return self.layouts.texts

    def decode(self, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Columns:
        n = len(starts)
        view = memoryview(buf)
        payloads = [view[a : a + m] for a, m in zip(starts.tolist(), lengths.tolist(), strict=True)]
        messages: list[Any]
        framed = b"".join(b"\x0a" + _varint(len(p)) + p for p in payloads)
        batch = self.batch_cls()
        whole = True
        try:
            batch.ParseFromString(framed)
            messages = list(batch.m)
            if len(messages) != n:
                raise ValueError("message count mismatch")
        except Exception:  # noqa: BLE001 - one bad payload: find it, message by message
            messages = [self._parse_one(p) for p in payloads]
            whole = not any(isinstance(m, _Failed) for m in messages)
        if whole:
            k = len(self.numeric_paths)
            stamp_getters = tuple(_getter(p, True) for p in self.stamp_paths) if self.stamp_paths else None
            fast = _fast_columns(messages, self.numeric_paths, self._getters[:k], self.text_paths, self._getters[k:],
                                 stamp_getters, self.layouts)
            if fast is not None:
                if self.want_stamp and fast.stamp is None:
                    fast.stamp = np.full(n, -1, np.int64)
                return fast
        bad = np.zeros(n, bool)
        errors: list[str] = []
        rows: list = []
        stamps: list[int] = []
        k = len(self.numeric_paths)
        for i, message in enumerate(messages):
            if isinstance(message, _Failed):
                bad[i] = True
                errors.append(message.why)
                rows.append(None)
                if self.want_stamp:
                    stamps.append(-1)
                continue
            try:
                values = [_protobuf_get(message, parts) for parts in self.parts]
                numbers = []
                for value, present in values[:k]:
                    if not present:
                        numbers.append([])
                    elif isinstance(value, bool | int | float):
                        numbers.append([float(value)])
                    else:
                        numbers.append([float(v) for v in value])
                texts = tuple((v if isinstance(v, str) else list(v)) if present else None for v, present in values[k:])
            except (TypeError, ValueError) as exc:
                bad[i] = True
                errors.append(f"field value is not numeric ({exc})")
                rows.append(None)
                if self.want_stamp:
                    stamps.append(-1)
                continue
            rows.append((numbers, texts))
            if self.want_stamp:
                if self.stamp_paths is None:
                    stamps.append(-1)
                else:
                    sec = _protobuf_get(message, self.stamp_paths[0])[0]
                    nsec = _protobuf_get(message, self.stamp_paths[1])[0]
                    stamps.append(int(sec) * 1_000_000_000 + int(nsec))
        return _columns(n, self.numeric_paths, self.text_paths, rows, self.layouts, stamps, bad, errors)

    def _parse_one(self, payload) -> Any:
        try:
            return self.cls.FromString(bytes(payload))
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            return _Failed(f"payload is not a valid {self.cls.DESCRIPTOR.full_name} ({type(exc).__name__}: {exc})")


# -- whole-message decoding (``flywheel logs inspect --decode``) ------------------------------------


def message_decoder(info):
    """A function that decodes one payload in full, or the reason the channel has none (a str)."""
    from flywheel_pipelines.lib.rosbag.columnar import _known_type, _ros1_type, decoder_problem

    problem = decoder_problem(info)
    if problem is not None:
        return problem
    encoding = info.message_encoding
    if encoding == "cdr" and info.schema_encoding == "ros2msg":
        from mcap.records import Schema
        from mcap_ros2.decoder import DecoderFactory

        schema = Schema(id=1, name=info.type, encoding="ros2msg", data=info.schema)
        try:
            decoder = DecoderFactory().decoder_for("cdr", schema)
        except Exception as exc:  # noqa: BLE001 - the schema text is untrusted input
            return f"schema {info.type!r} cannot be parsed: {exc}"
        return lambda payload: decoder(bytes(payload))
    if encoding == "cdr":
        from rosbags.typesys import Stores, get_typestore

        _known_type(info.type)
        store = get_typestore(Stores.LATEST)
        return lambda payload: store.deserialize_cdr(bytes(payload), info.type)
    if encoding == "ros1":
        _mtype, convert = _ros1_type(info.type, info.schema.decode("utf-8", "replace"))
        return convert
    if encoding == "json":
        def parse(payload) -> Any:
            doc = json.loads(bytes(payload))
            if not isinstance(doc, dict):
                raise ValueError(f"payload is a JSON {type(doc).__name__}, not an object")
            return doc

        return parse
    cls, _batch = _protobuf_classes(info.type, bytes(info.schema))
    return lambda payload: cls.FromString(bytes(payload))
