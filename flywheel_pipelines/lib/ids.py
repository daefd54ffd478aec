"""Validation of identifiers that come from object keys or users before they become paths."""

from __future__ import annotations

import datetime as _dt
import re

_ROBOT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_RAW_KEY_RE = re.compile(r"^raw/robot=([^/]+)/date=([^/]+)/([^/]+)(?:/([^/]+))?$")


class InvalidIdentifier(ValueError):
    """An identifier (robot id, date, file or dataset name) that must not become a path."""


def robot_id(value: str) -> str:
    """Return ``value`` if it is a valid robot id (lowercase, digits, ``-``/``_``, <= 63 chars)."""
    if not isinstance(value, str) or not _ROBOT_RE.fullmatch(value):
        raise InvalidIdentifier(f"invalid robot id {value!r}: expected [a-z0-9][a-z0-9_-]{{0,62}}")
    return value


def day(value: str) -> str:
    """Return ``value`` if it is an ISO calendar date ``YYYY-MM-DD``."""
    try:
        parsed = _dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidIdentifier(f"invalid date {value!r}: expected YYYY-MM-DD") from None
    if parsed.isoformat() != value:
        raise InvalidIdentifier(f"invalid date {value!r}: expected YYYY-MM-DD")
    return value


def name(value: str, *, what: str = "name") -> str:
    """Return ``value`` if it is a safe single path component (no ``/``, no ``..``)."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or ".." in value:
        raise InvalidIdentifier(f"invalid {what} {value!r}: expected [A-Za-z0-9][A-Za-z0-9_.-]*")
    return value


def parse_raw_key(key: str) -> tuple[str, str, str]:
    """Split a raw object key into validated (robot, day, file).

    A log is a file (``raw/robot=<id>/date=<day>/<file>``: an .mcap or a ROS 1 .bag) or a rosbag2
    folder (``raw/robot=<id>/date=<day>/<bag>/<file>``: metadata.yaml and its .mcap / .db3
    parts); for a file inside a bag folder, ``file`` is ``<bag>/<file>``.
    """
    match = _RAW_KEY_RE.fullmatch(key)
    if not match:
        raise InvalidIdentifier(
            f"not a raw log key {key!r}: expected raw/robot=<id>/date=<YYYY-MM-DD>/<file> or .../<bag folder>/<file>")
    robot, d, first, second = match.groups()
    file = name(first, what="file name")
    if second is not None:
        file = f"{file}/{name(second, what='file name')}"
    return robot_id(robot), day(d), file


def raw_log_key(key: str) -> str:
    """The log a raw object belongs to: the file's own key, or its bag folder's prefix (ending in /)."""
    robot, d, file = parse_raw_key(key)
    bag, sep, _ = file.partition("/")
    return f"raw/robot={robot}/date={d}/{bag}/" if sep else key
