"""Validation of identifiers that come from object keys or users before they become paths."""

from __future__ import annotations

import datetime as _dt
import re

_ROBOT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


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
    """Split a raw object key into validated (robot, day, file); see ``layout.parse_raw_key``."""
    from flywheel_pipelines.lib import layout  # layout builds on this module's validators

    return layout.parse_raw_key(key)


def raw_log_key(key: str) -> str:
    """The log a raw object belongs to; see ``layout.raw_log_key``."""
    from flywheel_pipelines.lib import layout

    return layout.raw_log_key(key)
