"""The lake's retention policy: how long raw logs are kept, per class of topic they contain.

A policy is a YAML file in the lake, one file per version (``governance/policy/v<N>.yaml``, see
:mod:`paths`), never rewritten: setting a policy writes the next version, so the history of who
changed retention, when and why is the folder itself. The newest version is in force.

::

    schema: flywheel-governance-policy-v1
    retention_days:        # days a raw log containing a topic of the class is kept; null = forever
      camera: 30           # sensor_msgs Image / CompressedImage / CameraInfo, foxglove images, video
      audio: 30            # audio_common_msgs, foxglove audio
      other: null          # everything else

A log is kept for the shortest period of the classes it contains (a log with one camera topic
is a camera log), counted from its day (``date=`` in its key).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import yaml

from flywheel_pipelines.lib import layout
from flywheel_pipelines.lib.storage import Lake

SCHEMA = "flywheel-governance-policy-v1"
CLASSES = ("camera", "audio", "other")
MAX_DAYS = 36_500

# Message types by class, normalized to "package/Type" (ROS 2's "/msg/" dropped).
_CAMERA_TYPES = frozenset({
    "sensor_msgs/Image", "sensor_msgs/CompressedImage", "sensor_msgs/CameraInfo",
    "theora_image_transport/Packet", "ffmpeg_image_transport_msgs/FFMPEGPacket",
    "foxglove.RawImage", "foxglove.CompressedImage", "foxglove.CompressedVideo", "foxglove.CameraCalibration",
    "foxglove_msgs/RawImage", "foxglove_msgs/CompressedImage", "foxglove_msgs/CompressedVideo",
    "foxglove_msgs/CameraCalibration",
})
_AUDIO_PACKAGES = ("audio_common_msgs/", "audio_msgs/")


class PolicyError(ValueError):
    """A policy file that must not be put in force (names the file and the problem)."""


def _normal(message_type: str) -> str:
    return (message_type or "").replace("/msg/", "/").strip()


def classify(message_type: str) -> str:
    """The topic class of a message type: camera, audio or other."""
    t = _normal(message_type)
    if t in _CAMERA_TYPES:
        return "camera"
    if t.startswith(_AUDIO_PACKAGES) or t.startswith("foxglove.Audio"):
        return "audio"
    return "other"


@dataclass(frozen=True)
class Policy:
    """One version of the retention policy."""

    version: int
    retention_days: dict[str, int | None]
    set_by: str
    set_at: str
    reason: str

    def keep_days(self, classes: Iterable[str]) -> tuple[int | None, str | None]:
        """(days a log with topics of ``classes`` is kept, the class that decides); (None, None): forever."""
        best: tuple[int | None, str | None] = (None, None)
        for c in sorted(set(classes)):
            days = self.retention_days[c]
            if days is not None and (best[0] is None or days < best[0]):
                best = (days, c)
        return best

    def to_yaml(self) -> str:
        doc = {"schema": SCHEMA, "version": self.version, "set_by": self.set_by, "set_at": self.set_at,
               "reason": self.reason, "retention_days": dict(self.retention_days)}
        return yaml.safe_dump(doc, sort_keys=False)


def parse(text: str, *, source: str) -> dict[str, int | None]:
    """The ``retention_days`` of a policy file, validated.

    Raises:
        PolicyError: not YAML, a wrong schema, a missing or unknown class, a value that is not
            null or a whole number of days in 1..36500; the message names ``source``.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise PolicyError(f"{source}: expected a mapping with schema and retention_days")
    if doc.get("schema") != SCHEMA:
        raise PolicyError(f"{source}: schema must be {SCHEMA!r}, got {doc.get('schema')!r}")
    days = doc.get("retention_days")
    if not isinstance(days, dict):
        raise PolicyError(f"{source}: retention_days must map each of {', '.join(CLASSES)} to days or null")
    unknown = sorted(set(map(str, days)) - set(CLASSES))
    if unknown:
        raise PolicyError(f"{source}: unknown topic class {', '.join(unknown)} (known: {', '.join(CLASSES)})")
    missing = [c for c in CLASSES if c not in days]
    if missing:
        raise PolicyError(f"{source}: retention_days has no {', '.join(missing)} (give days, or null to keep forever)")
    for c in CLASSES:
        v = days[c]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DAYS):
            raise PolicyError(f"{source}: retention_days.{c} must be null or a whole number of days "
                              f"in 1..{MAX_DAYS}, got {v!r}")
    return {c: days[c] for c in CLASSES}


def history(lake: Lake) -> list[Policy]:
    """Every version, oldest first (each validated as it is read)."""
    found = sorted((v, o.key) for o in lake.list(layout.POLICY_PREFIX + "/")
                   if (v := layout.policy_version(o.key)) is not None)
    out = []
    for version, key in found:
        text = lake.read_bytes(key).decode()
        doc = yaml.safe_load(text)
        out.append(Policy(version, parse(text, source=lake.uri(key)), str(doc.get("set_by")), str(doc.get("set_at")),
                          str(doc.get("reason"))))
    return out


def current(lake: Lake) -> Policy | None:
    """The policy in force (the newest version), or None when none was ever set."""
    versions = history(lake)
    return versions[-1] if versions else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def set_policy(lake: Lake, text: str, *, source: str, by: str, reason: str,
               now: Callable[[], dt.datetime] = _now) -> tuple[Policy, str]:
    """Validate ``text`` and put it in force as the next version; returns (policy, key).

    Raises:
        PolicyError: an invalid file, no person or reason, or the same retention as in force.
    """
    days = parse(text, source=source)
    if not by or not by.strip() or not reason or not reason.strip():
        raise PolicyError("setting a policy needs --by and --reason (both recorded)")
    before = current(lake)
    if before is not None and before.retention_days == days:
        raise PolicyError(f"{source}: the same retention as v{before.version} in force; nothing to set")
    version = 1 if before is None else before.version + 1
    key = layout.policy_key(version)
    if lake.exists(key):  # set concurrently: never rewrite a version
        raise PolicyError(f"{lake.uri(key)} exists already (another change landed); read it and retry")
    policy = Policy(version, days, by.strip(), now().isoformat(timespec="seconds"), reason.strip())
    lake.write_bytes(key, policy.to_yaml().encode())
    return policy, key
