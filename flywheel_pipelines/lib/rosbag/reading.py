"""What the one walk gathers from one log, or one part of a bag, before it becomes a manifest.

Every storage reader (:mod:`.rosbag2`, :mod:`.db3`, :mod:`.ros1`, and MCAP through
:func:`.columnar.scan_mcap`) counts into a :class:`_Reading`: per topic the messages and their
log-time span, the problems found, the messages and log-time ranges known lost, and ``fatal``
when nothing could be read. It is the common currency of the walk, so it sits below every
storage reader and knows nothing of the manifest's file format (:mod:`.manifest` turns it into a
:class:`.manifest.FileManifest`) nor of how a storage is recognised (:mod:`.walk`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flywheel_pipelines.lib.rosbag.columnar import ChannelInfo, scan_mcap
from flywheel_pipelines.lib.rosbag.report import LogReadError

__all__ = ["NO_MESSAGE", "describe_fatal"]

_BATCH_BYTES = 32 * 2**20
NO_MESSAGE = "no message could be read"


def describe_fatal(reading: _Reading) -> str:
    """Why nothing could be read, with every problem found, as one text (without the file name)."""
    problems = "; ".join(reading.problems)
    if reading.fatal == NO_MESSAGE:
        return f"{problems}; {NO_MESSAGE}" if problems else NO_MESSAGE
    return f"{reading.fatal} ({problems})" if problems else str(reading.fatal)


@dataclass
class _TopicAcc:
    type: str = ""
    encoding: str = ""
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    undecodable: int = 0
    decode_error: str | None = None

    def add(self, log_time_ns: int) -> None:
        if self.count == 0 or log_time_ns < self.first_ns:
            self.first_ns = log_time_ns
        if self.count == 0 or log_time_ns > self.last_ns:
            self.last_ns = log_time_ns
        self.count += 1

    def add_span(self, count: int, first_ns: int, last_ns: int) -> None:
        """Adds ``count`` messages whose log times run from ``first_ns`` to ``last_ns``."""
        self.merge(_TopicAcc(count=count, first_ns=first_ns, last_ns=last_ns))

    def add_times(self, times: np.ndarray) -> None:
        """Adds messages with these log times."""
        if len(times):
            self.add_span(len(times), int(times.min()), int(times.max()))

    def add_undecodable(self, count: int, why: str) -> None:
        if count:
            self.undecodable += count
            self.decode_error = self.decode_error or why

    def merge(self, other: _TopicAcc) -> None:
        if other.count:
            if self.count == 0 or other.first_ns < self.first_ns:
                self.first_ns = other.first_ns
            if self.count == 0 or other.last_ns > self.last_ns:
                self.last_ns = other.last_ns
            self.count += other.count
        self.type = self.type or other.type
        self.encoding = self.encoding or other.encoding
        if other.undecodable:
            self.add_undecodable(other.undecodable, other.decode_error or "")


@dataclass
class _Reading:
    """What reading one log (or one file of a folder) found, before it becomes a manifest."""

    topics: dict[str, _TopicAcc] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lost: int | None = 0
    lost_ranges: list[tuple[int, int]] = field(default_factory=list)
    fatal: str | None = None  # nothing could be read, and why
    skipped_bytes: int = 0
    channels: dict[str, ChannelInfo] = field(default_factory=dict)  # topic -> its first channel

    def channel(self, info: ChannelInfo) -> _TopicAcc:
        """The topic's counts; the channel's encodings and schema are kept (the first per topic)."""
        self.channels.setdefault(info.topic, info)
        return self.topic(info.topic, info.type, info.message_encoding)

    def merge(self, other: _Reading) -> None:
        """Adds another part's topics (counts and channels)."""
        for topic, acc in other.topics.items():
            self.topic(topic, acc.type, acc.encoding).merge(acc)
        for topic, info in other.channels.items():
            self.channels.setdefault(topic, info)
        self.skipped_bytes += other.skipped_bytes

    def topic(self, name: str, type_: str, encoding: str) -> _TopicAcc:
        acc = self.topics.get(name)
        if acc is None:
            acc = self.topics[name] = _TopicAcc(type=type_, encoding=encoding)
        elif not acc.type:
            acc.type, acc.encoding = type_, encoding
        return acc

    @property
    def message_count(self) -> int:
        return sum(a.count for a in self.topics.values())

    def span(self) -> tuple[int, int] | None:
        """The first and last log time read, or None without messages."""
        read = [a for a in self.topics.values() if a.count]
        if not read:
            return None
        return min(a.first_ns for a in read), max(a.last_ns for a in read)

    def add_lost(self, count: int | None) -> None:
        if count is None:
            self.lost = None
        elif self.lost is not None:
            self.lost += count


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{topic}: {n}" for topic, n in sorted(counts.items()))


def _read_mcap(path: Path, label: str, *, topics=None, sink=None, batch_bytes: int = _BATCH_BYTES,
               verify: bool = False, key_prefix: str = "") -> _Reading:
    reading = _Reading()
    try:
        scan_mcap(path, label, reading, topics=topics, sink=sink, batch_bytes=batch_bytes, key_prefix=key_prefix,
                  verify=verify)
    except LogReadError as exc:
        # The problems that made it unreadable are in reading.problems already (scan_mcap puts
        # them there); the fatal part is only what followed from them.
        reading.fatal = NO_MESSAGE if reading.problems else (exc.problem or str(exc))
    return reading
