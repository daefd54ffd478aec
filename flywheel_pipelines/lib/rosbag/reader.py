"""Reading MCAP robot logs message by message: the per-message API over the tolerant scan.

:func:`iter_messages` yields each message as stored, :func:`iter_decoded` decodes ROS 2 (CDR)
messages with ``mcap_ros2``'s decoder as well. Both read through the two-pass, CRC-checked scan
of :mod:`.mcap_scan` (and its recovery, :mod:`.mcap_salvage`), so a damaged file yields what is
intact and says in :class:`.report.ReadStats` what was not. Ingest itself does not go through
here: manifests and standardization read every storage kind through one walk
(:func:`.walk.read_log`) and decode columns (:mod:`.columnar`); this is the reader API for
tests, tools and callers that want message objects.

Nothing here imports Dagster.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from mcap.records import Channel, Schema

from flywheel_pipelines.lib.rosbag.mcap_scan import _McapScan
from flywheel_pipelines.lib.rosbag.report import LogReadError, RawMessage, ReadStats, _count_undecodable

__all__ = ["iter_decoded", "iter_messages"]


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
