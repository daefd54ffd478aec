"""The one walk over a log's messages, whatever its storage: manifests and ingest both use it.

:func:`read_log` recognises the storage by content (never by name) and hands it to its reader:
an MCAP file (:func:`.columnar.scan_mcap`), a ROS 1 bag (:mod:`.ros1`), a bare rosbag2 sqlite3
file (:mod:`.db3`) or a rosbag2 folder (:mod:`.rosbag2`). It is apart from the storage readers so
that each of them knows only its own format, and apart from the manifest because standardization
(:func:`.columnar.read_columns`) walks the same way: what the manifest counts per topic is what
ingest reads, by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel_pipelines.lib.rosbag.columnar import ColumnSink
from flywheel_pipelines.lib.rosbag.db3 import _read_db3
from flywheel_pipelines.lib.rosbag.mcap_format import MCAP_MAGIC
from flywheel_pipelines.lib.rosbag.reading import _BATCH_BYTES, _read_mcap, _Reading
from flywheel_pipelines.lib.rosbag.report import _hex_hint
from flywheel_pipelines.lib.rosbag.ros1 import _ROS1_MAGIC, _read_ros1
from flywheel_pipelines.lib.rosbag.rosbag2 import _read_folder
from flywheel_pipelines.lib.rosbag.sqlite_pages import _SQLITE_MAGIC

if TYPE_CHECKING:  # the manifest's full-decode sink; the manifest imports this module
    from flywheel_pipelines.lib.rosbag.manifest import _DecodeSink

__all__ = ["read_log"]


def read_log(
    path: Path,
    label: str,
    *,
    topics: frozenset[str] | None = None,
    sink: ColumnSink | _DecodeSink | None = None,
    batch_bytes: int | None = None,
    verify: bool = False,
) -> _Reading:
    """The one walk over a log's messages, whatever its storage: manifests and ingest both use it.

    Every message read is counted per topic in the result; those of the wanted ``topics``
    (None: all) are handed to ``sink`` as batches of payloads. The storage is recognised by
    content: an MCAP file, a ROS 1 bag, a rosbag2 sqlite3 file, or a rosbag2 folder (its parts
    as metadata.yaml lists them, each recognised by content). Damage never raises: it is in the
    result's problems, lost counts and ranges, and ``fatal`` says why nothing could be read.

    Args:
        path: The log.
        label: The name problems are worded with (a lake key, a path).
        topics: Only these topics are read (and counted); None: all.
        sink: Receives the wanted messages (``add(info, buf, starts, lengths, log_time, publish_time)``).
        batch_bytes: The MCAP batch size (see :mod:`.columnar`).
        verify: Also check an MCAP file's data section CRC (one more read of the file).
    """
    options = {"topics": topics, "sink": sink, "batch_bytes": batch_bytes or _BATCH_BYTES}
    if path.is_dir():
        return _guard(label, lambda: _read_folder(path, label, verify=verify, **options))
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        return _Reading(fatal=f"cannot open: {exc.strerror or exc}")
    if size == 0:
        return _Reading(fatal="empty file (0 bytes)")
    if head.startswith(MCAP_MAGIC):
        return _guard(label, lambda: _read_mcap(path, label, verify=verify, **options))
    if head.startswith(_ROS1_MAGIC):
        return _guard(label, lambda: _read_ros1(path, topics=topics, sink=sink))
    if head.startswith(_SQLITE_MAGIC):
        reading = _guard(label, lambda: _read_db3(path, topics=topics, sink=sink))
        # Like a folder without metadata.yaml: readable, but nothing to check its counts against.
        reading.problems.insert(0, "a bare rosbag2 sqlite3 file: no metadata.yaml to check it against")
        return reading
    return _Reading(fatal=f"not a recognised log format (no known magic bytes at its start{_hex_hint(head)})")


def _guard(label: str, read: Callable[[], _Reading]) -> _Reading:
    """Runs a reader, turning an unforeseen exception into a rejection instead of a crash.

    The storage readers already handle the damage they know of; this catches what third-party
    parsers (rosbags, sqlite3, yaml) raise on inputs nobody anticipated, so that one odd upload
    cannot fail a whole ingestion run.
    """
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return _Reading(fatal=f"unreadable ({type(exc).__name__}: {exc})")
