"""rosbag2 folders: ``metadata.yaml`` and its storage files, read part by part and checked.

A rosbag2 bag is a folder: ``metadata.yaml`` (written when recording stops) lists the storage
files (``.mcap`` or ``.db3`` split parts) and each topic's message count. Each part is recognised
by content and read on its own (MCAP through :func:`.reading._read_mcap`, sqlite3 through
:mod:`.db3`); what is specific to the folder lives here: finding the parts (listed, or numbered
when ``metadata.yaml`` is missing), naming a missing part and the log-time range it covered, and
comparing what was read with ``metadata.yaml``, which decides the loss.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from flywheel_pipelines.lib.rosbag.db3 import _read_db3
from flywheel_pipelines.lib.rosbag.mcap_format import MCAP_MAGIC
from flywheel_pipelines.lib.rosbag.reading import _BATCH_BYTES, _describe, _read_mcap, _Reading
from flywheel_pipelines.lib.rosbag.report import _hex_hint
from flywheel_pipelines.lib.rosbag.sqlite_pages import _SQLITE_MAGIC


def _read_folder(folder: Path, label: str, *, topics=None, sink=None, batch_bytes: int = _BATCH_BYTES,
                 verify: bool = False) -> _Reading:
    metadata_path = folder / "metadata.yaml"
    info: dict[str, Any] | None = None
    problems: list[str] = []
    if metadata_path.is_file():
        info, problem = _load_metadata(metadata_path)
        if problem:
            problems.append(problem)
    else:
        # rosbag2 writes metadata.yaml when recording stops, so a killed recorder leaves none.
        problems.append("no metadata.yaml (the recording was probably not stopped cleanly)")

    listed = [str(r) for r in (info or {}).get("relative_file_paths") or []]
    if listed:
        parts = [(relative, _find_listed(folder, relative)) for relative in listed]
    else:
        parts = _found_parts(folder, (info or {}).get("storage_identifier") or "")
        if not parts:
            return _Reading(problems=problems, fatal="a folder without a readable rosbag2 bag")
        if info is None:
            found = [name for name, file in parts if file is not None]
            problems.append(f"read the {len(found)} storage file(s) found: {', '.join(found)}")
    reading = _Reading()
    spans: list[tuple[int, int] | None] = []
    missing: list[int] = []
    for number, (name, file) in enumerate(parts):
        if file is None:
            problems.append(
                f"{name}: listed in metadata.yaml but missing"
                if listed
                else f"{name}: missing (the split files are numbered without it)"
            )
            reading.add_lost(None)
            missing.append(number)
            spans.append(None)
            continue
        part = _read_part(folder, file, topics=topics, sink=sink, batch_bytes=batch_bytes, verify=verify)
        reading.merge(part)
        if part.fatal is not None:
            reading.problems.append(f"{file.name}: {part.fatal}")
            reading.add_lost(None)
        reading.problems.extend(f"{file.name}: {p}" for p in part.problems)
        reading.add_lost(part.lost)
        reading.lost_ranges.extend(part.lost_ranges)
        spans.append(part.span())
    if reading.message_count == 0 and all(file is None for _, file in parts):
        return _Reading(problems=problems, fatal="none of the storage files metadata.yaml lists is there")
    reading.problems[:0] = problems
    bounds = _bag_bounds(info or {}, reading.span())
    for number in missing:
        lost_range = _missing_part_range(info or {}, parts[number][0], spans, number, bounds)
        if lost_range is not None:
            reading.lost_ranges.append(lost_range)
    if info is not None:
        capacity = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) * _MAX_MESSAGES_PER_BYTE
        _compare_with_metadata(reading, info, bounds, topics, capacity=capacity)
    return reading


def _read_part(folder: Path, file: Path, *, topics, sink, batch_bytes: int, verify: bool) -> _Reading:
    """One storage file of a bag, recognised by its content."""
    with open(file, "rb") as fh:
        head = fh.read(16)
    if head.startswith(MCAP_MAGIC):
        return _read_mcap(file, f"{folder.name}/{file.name}", topics=topics, sink=sink, batch_bytes=batch_bytes,
                          verify=verify, key_prefix=file.name)
    if head.startswith(_SQLITE_MAGIC):
        return _read_db3(file, topics=topics, sink=sink, key_prefix=file.name)
    if not head:
        return _Reading(fatal="empty file (0 bytes)")
    return _Reading(fatal=f"neither MCAP nor SQLite (no known magic bytes at its start{_hex_hint(head)})")


def _find_listed(folder: Path, relative: str) -> Path | None:
    # Some tools record paths relative to the folder's parent (``bag/bag_0.db3``).
    candidates = (folder / relative, folder / Path(relative).name)
    return next((c for c in candidates if c.is_file()), None)


_PART_NUMBER = re.compile(r"^(?P<stem>.*)_(?P<number>\d+)$")


def _found_parts(folder: Path, storage: str) -> list[tuple[str, Path | None]]:
    """The storage files in a folder whose metadata does not list them, in split order.

    rosbag2 names split files ``<bag>_<n>``; a gap in the numbers is a part that went missing
    (a missing last part cannot be noticed this way), returned with ``None`` in its place.
    """
    suffixes = {"mcap": [".mcap"], "sqlite3": [".db3"]}.get(storage, [".mcap", ".db3"])
    for suffix in suffixes:
        files = [f for f in folder.glob(f"*{suffix}") if f.is_file()]
        if files:
            break
    else:
        return []

    def order(file: Path) -> tuple[str, int, str]:
        match = _PART_NUMBER.match(file.stem)
        return (match["stem"], int(match["number"]), "") if match else (file.stem, -1, file.name)

    files.sort(key=order)
    parts: list[tuple[str, Path | None]] = []
    previous: tuple[str, int] | None = None
    for file in files:
        match = _PART_NUMBER.match(file.stem)
        if match:
            stem, number = match["stem"], int(match["number"])
            expected = previous[1] + 1 if previous is not None and previous[0] == stem else 0
            parts.extend((f"{stem}_{n}{suffix}", None) for n in range(expected, number))
            previous = (stem, number)
        parts.append((file.name, file))
    return parts


def _bag_bounds(info: dict[str, Any], read: tuple[int, int] | None) -> tuple[int, int] | None:
    """The first and last message time metadata.yaml gives, if they are consistent with the
    messages read (they lie outside what was read); None otherwise.

    Not every tool fills them in faithfully (one of the real test bags says its 6,074 messages
    span 411 ns starting after the first one), so they are only used when consistent.
    """
    try:
        start = int(info["starting_time"]["nanoseconds_since_epoch"])
        end = start + int(info["duration"]["nanoseconds"])
    except (KeyError, TypeError, ValueError):
        return None
    if read is not None and not (start <= read[0] and read[1] <= end):
        return None
    return start, end


def _missing_part_range(
    info: dict[str, Any],
    name: str,
    spans: list[tuple[int, int] | None],
    number: int,
    bounds: tuple[int, int] | None,
) -> tuple[int, int] | None:
    """The log-time range a missing split part covered: from metadata.yaml's per-file entry
    (rosbag2 >= Humble writes one), else between the parts on either side of it (or the bag's
    start or end, for the first or last part)."""
    for entry in info.get("files") or []:
        if isinstance(entry, dict) and Path(str(entry.get("path", ""))).name == Path(name).name:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                start = int(entry["starting_time"]["nanoseconds_since_epoch"])
                return start, start + int(entry["duration"]["nanoseconds"])
    before = next((s[1] for s in reversed(spans[:number]) if s is not None), None)
    after = next((s[0] for s in spans[number + 1 :] if s is not None), None)
    if bounds is not None:
        before = bounds[0] if before is None else before
        after = bounds[1] if after is None else after
    if before is None or after is None:
        return None
    return min(before, after), max(before, after)


def _load_metadata(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
        info = document["rosbag2_bagfile_information"]
        if not isinstance(info, dict):
            raise TypeError("rosbag2_bagfile_information is not a mapping")
    except Exception as exc:  # noqa: BLE001 - yaml and key errors alike mean "unusable"
        return None, f"metadata.yaml unreadable ({type(exc).__name__}: {exc})"
    return info, None


# A stored message takes at least 31 bytes before compression, and zstd compresses no better
# than ~32,000:1: no file holds more than about a thousand messages per byte.
_MAX_MESSAGES_PER_BYTE = 1100


def _compare_with_metadata(reading: _Reading, info: dict[str, Any], bounds: tuple[int, int] | None,
                           topics: frozenset[str] | None = None, *, capacity: int | None = None) -> None:
    """Checks the counts read against ``metadata.yaml``, which then decides the loss.

    When messages are missing and the bag's own first or last message time lies outside what
    was read (a part cut short at either end), that stretch is a lost range too.
    """
    expected: dict[str, int] = {}
    for entry in info.get("topics_with_message_count") or []:
        meta = entry.get("topic_metadata") or {}
        name = meta.get("name")
        if name is None or (topics is not None and name not in topics):
            continue  # a topic the caller did not read is not missing
        reading.topic(name, meta.get("type", ""), meta.get("serialization_format", ""))
        expected[name] = expected.get(name, 0) + int(entry.get("message_count") or 0)
    if not expected:
        return
    claimed = sum(expected.values())
    if any(n < 0 for n in expected.values()) or (capacity is not None and claimed > capacity):
        size = capacity // _MAX_MESSAGES_PER_BYTE if capacity else 0
        reading.problems.append(f"metadata.yaml claims {claimed} messages, impossible for {size} bytes of storage: "
                                "damaged counts, not used")
        reading.lost = None
        return
    read = {name: acc.count for name, acc in reading.topics.items()}
    missing = {t: n - read.get(t, 0) for t, n in expected.items() if n > read.get(t, 0)}
    extra = {t: n - expected.get(t, 0) for t, n in read.items() if n > expected.get(t, 0)}
    if missing:
        reading.problems.append(
            f"read {sum(read.values())} of the {sum(expected.values())} messages metadata.yaml "
            f"lists ({_describe(missing)} missing)"
        )
        reading.lost = sum(missing.values())
        read_span = reading.span()
        if bounds is not None and read_span is not None:
            if bounds[0] < read_span[0]:
                reading.lost_ranges.append((bounds[0], read_span[0]))
            if read_span[1] < bounds[1]:
                reading.lost_ranges.append((read_span[1], bounds[1]))
        return
    # Every message metadata.yaml lists was read: the ranges damage might have cost held nothing.
    reading.lost_ranges.clear()
    if extra:
        reading.problems.append(
            f"read more messages than metadata.yaml lists ({_describe(extra)} extra); "
            "metadata.yaml is stale"
        )
    elif reading.lost is None:
        reading.lost = 0
