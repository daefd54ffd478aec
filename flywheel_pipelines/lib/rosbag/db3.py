"""rosbag2 sqlite3 storage (``.db3``): read with SQL, or page by page when SQLite refuses it.

An intact file is read with SQL, opened ``immutable`` so the raw file is never touched (one with
a leftover write-ahead log is read from a temporary copy). A file SQLite reports malformed is
salvaged from its pages (:mod:`.sqlite_pages` parses them) and each intact message row is kept.
Both paths hand the rows to the walk's accumulators in the same batches, so a salvaged bag
counts and decodes like an intact one. Message definitions come from ``message_definitions``
(rosbag2 >= Iron) or, without them, from the type name (rosbags' type store).
"""

from __future__ import annotations

import contextlib
import mmap
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flywheel_pipelines.lib.rosbag.columnar import ChannelInfo
from flywheel_pipelines.lib.rosbag.reading import _Reading
from flywheel_pipelines.lib.rosbag.sqlite_pages import _SqlitePages


@contextlib.contextmanager
def _sqlite_copy(path: Path) -> Iterator[tuple[Path, Path | None]]:
    """The database to open, and its write-ahead log if it has one.

    Committed data a killed recorder left in ``<file>-wal`` is part of the bag, but opening the
    file normally would make SQLite fold the log into it: the raw file would change. So such a
    file is read from a temporary copy; one without a log is opened in place, immutable.
    """
    wal = path.with_name(path.name + "-wal")
    if not wal.is_file() or wal.stat().st_size == 0:
        yield path, None
        return
    with tempfile.TemporaryDirectory(prefix="flywheel-db3-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        yield copy, copy.with_name(copy.name + "-wal")


def _read_db3(path: Path, *, topics=None, sink=None, key_prefix: str = "") -> _Reading:
    """Reads a rosbag2 sqlite3 file's messages, counting them per topic; salvages a malformed file.

    An intact file is read with SQL. When SQLite reports the file malformed (a truncated or
    overwritten file is, as a whole), every page is parsed instead and each intact message row
    is kept; the rows between two kept ones that are gone give the lost ranges.
    """
    key_prefix = key_prefix or path.name
    with _sqlite_copy(path) as (database, wal):
        try:
            return _db3_sql(database, in_place=wal is None, topics=topics, sink=sink, key_prefix=key_prefix)
        except sqlite3.DatabaseError as exc:
            why = str(exc)
        reading = _db3_pages(database, wal, topics=topics, sink=sink, key_prefix=key_prefix)
    if reading.fatal is None:
        reading.problems.insert(0, f"SQLite reports it damaged ({why}); read page by page")
    else:
        reading.fatal = f"SQLite reports it damaged ({why}) and {reading.fatal}"
    return reading


def _db3_channel(key_prefix: str, topic_id: int, name: str, type_: str, serialization: str,
                 definitions: dict[str, tuple[str, str]]) -> ChannelInfo:
    """A topic row as a channel: with the stored ``ros2msg`` definition (rosbag2 >= Iron keeps them
    in ``message_definitions``), else the type name alone (decoded with rosbags' type store)."""
    encoding, text = definitions.get(type_, ("", ""))
    if encoding != "ros2msg" or not text.strip():
        encoding, text = "", ""
    return ChannelInfo((key_prefix, topic_id), name, type_, serialization, encoding, text.encode())


def _db3_definitions(connection: sqlite3.Connection) -> dict[str, tuple[str, str]]:
    try:
        rows = connection.execute("SELECT topic_type, encoding, encoded_message_definition FROM message_definitions")
        return {type_: (encoding, text) for type_, encoding, text in rows}
    except sqlite3.OperationalError:  # older bags have no such table
        return {}


def _deliver_rows(reading: _Reading, infos: dict[int, ChannelInfo], sink, ids: np.ndarray, times: np.ndarray,
                  payloads: list | None) -> None:
    """Counts one batch of message rows per topic and hands the wanted ones' payloads to ``sink``."""
    for topic_id in np.unique(ids).tolist():
        info = infos.get(topic_id)
        if info is None:
            continue
        rows = np.flatnonzero(ids == topic_id)
        reading.channel(info).add_times(times[rows])
        if sink is None or payloads is None or not sink.wants(info.topic):
            continue
        data = [payloads[r] for r in rows.tolist()]
        lengths = np.fromiter((len(d) for d in data), np.int64, len(data))
        starts = np.zeros(len(data), np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        t = times[rows]
        sink.add(info, np.frombuffer(b"".join(data), np.uint8), starts, lengths, t, t)


def _db3_sql(database: Path, *, in_place: bool, topics=None, sink=None, key_prefix: str = "") -> _Reading:
    reading = _Reading()
    uri = database.resolve().as_uri() + ("?immutable=1&mode=ro" if in_place else "")
    connection = sqlite3.connect(uri, uri=True)
    try:
        definitions = _db3_definitions(connection)
        infos: dict[int, ChannelInfo] = {}
        known: set[int] = set()
        for topic_id, name, type_, serialization in connection.execute(
            "SELECT id, name, type, serialization_format FROM topics ORDER BY id"
        ):
            known.add(topic_id)
            if topics is None or name in topics:
                infos[topic_id] = _db3_channel(key_prefix, topic_id, name, type_, serialization, definitions)
                reading.channel(infos[topic_id])
        # Counted first over the whole table: a malformed page raises here, before any payload
        # reached the sink (the page-by-page salvage then reads the file from the start).
        expected = dict(connection.execute("SELECT topic_id, count(*) FROM messages GROUP BY topic_id").fetchall())
        orphans = sum(n for topic_id, n in expected.items() if topic_id not in known)
        wanted = sorted(infos)
        with_data = sink is not None
        columns = "topic_id, timestamp" + (", data" if with_data else "")
        where = f"WHERE topic_id IN ({','.join('?' * len(wanted))})" if topics is not None else ""
        read = 0
        try:
            cursor = connection.execute(f"SELECT {columns} FROM messages {where} ORDER BY id",
                                        wanted if topics is not None else ())
            while rows := cursor.fetchmany(20_000):
                ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                times = np.fromiter((r[1] for r in rows), np.int64, len(rows))
                _deliver_rows(reading, infos, sink, ids, times, [r[2] for r in rows] if with_data else None)
                read += len(rows)
        except sqlite3.DatabaseError as exc:
            # The count above read every row, so this is damage in the payloads themselves.
            reading.problems.append(f"reading stopped after {read} messages ({exc})")
            reading.add_lost(sum(expected.get(t, 0) for t in wanted) - read)
    finally:
        connection.close()
    if orphans:
        reading.problems.append(f"{orphans} messages reference no topic in the topics table")
        reading.add_lost(orphans)
    return reading


def _db3_pages(database: Path, wal: Path | None, *, topics=None, sink=None, key_prefix: str = "") -> _Reading:
    """Salvages a malformed rosbag2 sqlite3 file by parsing its pages (see :class:`_SqlitePages`)."""
    with open(database, "rb") as fh:
        if database.stat().st_size < 100:
            return _Reading(fatal="its SQLite header is cut short")
        # Mapped, not read: a multi-gigabyte bag is parsed page by page without loading it whole.
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _db3_rows(_SqlitePages.load(data, wal), topics=topics, sink=sink, key_prefix=key_prefix)


def _db3_rows(pages: _SqlitePages | None, *, topics=None, sink=None, key_prefix: str = "") -> _Reading:
    if pages is None:
        return _Reading(fatal="its SQLite header is unreadable")
    found = pages.topics()
    if found is None:
        return _Reading(fatal="its topics table cannot be found")
    reading = _Reading()
    infos = {topic_id: _db3_channel(key_prefix, topic_id, name, type_, encoding, pages.definitions())
             for topic_id, (name, type_, encoding) in found.items() if topics is None or name in topics}
    for info in infos.values():
        reading.channel(info)
    rows = pages.message_rows(with_data=sink is not None)
    orphans = 0
    previous: tuple[int, int] | None = None
    order = sorted(rows)
    for rowid in order:
        topic_id, timestamp, _data = rows[rowid]
        if topic_id not in found:
            orphans += 1
        # rosbag2 numbers messages 1, 2, 3... as it inserts them (in receive order): a gap is
        # rows that could not be read, and their times lie between their neighbours'.
        if previous is not None and rowid > previous[0] + 1:
            reading.lost_ranges.append((min(previous[1], timestamp), max(previous[1], timestamp)))
        previous = (rowid, timestamp)
    for start in range(0, len(order), 20_000):
        batch = [rows[r] for r in order[start : start + 20_000]]
        ids = np.fromiter((b[0] for b in batch), np.int64, len(batch))
        times = np.fromiter((b[1] for b in batch), np.int64, len(batch))
        payloads = [b[2] if b[2] is not None else b"" for b in batch] if sink is not None else None
        _deliver_rows(reading, infos, sink, ids, times, payloads)
    if orphans:
        reading.problems.append(f"{orphans} message rows reference no topic in the topics table")
    if rows:
        first_id, last_id = min(rows), max(rows)
        unread = last_id - len(rows)  # ids 1..last_id that were not found
        reading.problems.append(
            f"read {len(rows)} message rows (ids {first_id}..{last_id}, {unread} ids up to there unreadable); "
            f"rows after id {last_id}, if any, cannot be counted"
        )
    # Without the file's own index nothing says how many rows there were: metadata.yaml decides.
    reading.lost = None
    return reading
