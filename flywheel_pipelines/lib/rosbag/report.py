"""What reading one robot log yields and reports, whatever its storage (MCAP, rosbag2, ROS 1).

These types are the contract between the readers (:mod:`.mcap_scan` for MCAP, :mod:`.manifest`'s
walk for bags) and their callers (the manifest, standardization, tests): a message as stored, the
running account of damage and loss (:class:`ReadStats`), and the one error a log that cannot be
read at all raises. They live apart from any reader so that every storage kind and every caller
imports them from one place, without importing a reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LogReadError", "RawMessage", "ReadStats"]


class LogReadError(Exception):
    """A log that cannot be read at all (missing, empty, not MCAP, or damaged before any message).

    The message always starts with the file it is about, e.g.
    ``"raw/2024/run3.mcap: not an MCAP file (starts with b'hello')"``.

    Attributes:
        source: The file (path or lake key) the error is about, when known.
        problem: The problem alone, without the file name, when known.
    """

    def __init__(self, message: str, *, source: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.source = source
        self.problem = problem


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as stored in the log, payload still serialized.

    Attributes:
        topic: Topic name, e.g. ``"/joint_states"``.
        schema_name: Message type from the channel's schema, e.g. ``"sensor_msgs/msg/JointState"``;
            ``""`` for a schemaless channel.
        log_time_ns: Time the recorder received the message (ns since the epoch).
        publish_time_ns: Time the publisher sent it (ns since the epoch).
        data: The serialized payload (CDR for ROS 2 logs).
    """

    topic: str
    schema_name: str
    log_time_ns: int
    publish_time_ns: int
    data: bytes


@dataclass
class ReadStats:
    """What happened while reading one log; pass one in to learn about damage and skips.

    The reader fills it in as it goes, so it is complete once the iterator is exhausted (a
    consumer that stops early sees the counts up to that point).

    Attributes:
        source: The name problems and :class:`LogReadError` use for the file. Set it before
            reading (e.g. to the lake key) to have them name that; left empty, the reader sets it
            to the path.
        messages: Messages read from the log so far (for :func:`.reader.iter_decoded` this includes the
            ``undecodable`` ones it skipped).
        undecodable: Messages :func:`.reader.iter_decoded` skipped because they did not decode.
        undecodable_by_topic: ``undecodable`` split by topic.
        first_decode_error: The first decode failure, as ``"<topic>: <error>"``.
        problems: Damage found, one entry per problem, without the file name (see
            :meth:`describe`). Empty for an intact file.
        lost_messages: Messages known to be lost to damage among the requested topics (from the
            summary statistics when the file has them, else from the message indexes of skipped
            chunks); ``None`` when damage was found but the loss cannot be counted (a truncated
            file has no summary to compare with).
        lost_ranges: Log-time intervals ``(first_ns, last_ns)``, sorted and not overlapping, that
            contain the messages lost to damage (bounds may equal the times of kept messages):
            a skipped chunk's header range, the rest of a cut chunk after its last kept message,
            or the gap around a stretch of bytes that could not be read. Loss whose times are
            unknown (the tail after a cut between chunks) has no range; the problems say so.
        skipped_bytes: Bytes of the data section skipped over while looking for the next
            readable record after damage.
    """

    source: str = ""
    messages: int = 0
    undecodable: int = 0
    undecodable_by_topic: dict[str, int] = field(default_factory=dict)
    first_decode_error: str | None = None
    problems: list[str] = field(default_factory=list)
    lost_messages: int | None = 0
    lost_ranges: list[tuple[int, int]] = field(default_factory=list)
    skipped_bytes: int = 0
    # Filled by ``columnar.read_columns``: messages read per requested topic (decoded or not) and
    # each topic's encodings (``"<message encoding>/<schema encoding>"``).
    read_by_topic: dict[str, int] = field(default_factory=dict)
    encoding_by_topic: dict[str, str] = field(default_factory=dict)
    decode_error_by_topic: dict[str, str] = field(default_factory=dict)  # the first failure per topic

    @property
    def damaged(self) -> bool:
        """Whether any damage was found."""
        return bool(self.problems)

    def describe(self) -> str | None:
        """The problems as one line naming the file, or ``None`` if there were none."""
        if not self.problems:
            return None
        return f"{self.source}: " + "; ".join(self.problems)


def _count_undecodable(stats: ReadStats, topic: str, why: str) -> None:
    stats.undecodable += 1
    stats.undecodable_by_topic[topic] = stats.undecodable_by_topic.get(topic, 0) + 1
    stats.decode_error_by_topic.setdefault(topic, why)
    if stats.first_decode_error is None:
        stats.first_decode_error = f"{topic}: {why}"


# Formats an upload is commonly mistaken for, named by their magic. A message never quotes the
# file's own bytes: a raw file may hold anything (a key, a password) and reasons reach run logs.
_KNOWN_MAGIC = ((b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip stream"), (b"\x28\xb5\x2f\xfd", "a zstd frame"),
                (b"\x04\x22\x4d\x18", "an LZ4 frame"), (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                (b"BZh", "a bzip2 stream"), (b"\xfd7zXZ", "an xz stream"), (b"%PDF", "a PDF document"))


def _hex_hint(head: bytes) -> str:
    """``: it looks like a ZIP archive`` for a known format, nothing otherwise (never the bytes)."""
    for magic, name in _KNOWN_MAGIC:
        if head.startswith(magic):
            return f"; it looks like {name}"
    return ""


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with overlapping or touching ranges merged."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged
