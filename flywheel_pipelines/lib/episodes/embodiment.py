"""Embodiment mappings: which topics and fields become the standardized features of a robot."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

RULES = ("hold", "nearest", "linear")
CLOCKS = ("header", "log_time")
DEFAULT_EMBODIMENT = "flywheel_arm2"


class MappingError(ValueError):
    """An embodiment mapping that cannot be used (names the file and the problem)."""


@dataclass(frozen=True)
class FeatureMapping:
    """One standardized feature (e.g. ``observation.state``) drawn from one topic."""

    key: str
    topic: str
    fields: tuple[str, ...]
    names: tuple[str, ...]
    rule: str
    joint_names: tuple[str, ...] | None = None
    max_skew_ms: float | None = None

    @property
    def dim(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class ImageMapping:
    """A camera stream. Frames reference the chosen image by its stamp; pixels are not copied."""

    key: str
    topic: str
    rule: str = "nearest"
    max_skew_ms: float | None = None


@dataclass(frozen=True)
class Embodiment:
    """A parsed, validated embodiment mapping."""

    name: str
    version: int
    robot_type: str
    fps: int
    clock: str
    default_task: str
    frame_anchor: str
    events_topic: str | None  # None: no event topic, the whole log is one episode
    features: tuple[FeatureMapping, ...]
    max_skew_ms: float
    max_gap_ms: float
    source_text: str
    images: tuple[ImageMapping, ...] = ()

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.source_text.encode()).hexdigest()[:12]

    def feature(self, key: str) -> FeatureMapping:
        for f in self.features:
            if f.key == key:
                return f
        raise KeyError(key)

    def skew_tolerance_ns(self, feature: FeatureMapping | ImageMapping) -> int:
        ms = feature.max_skew_ms if feature.max_skew_ms is not None else self.max_skew_ms
        return int(ms * 1_000_000)


# A mapping is a page of YAML. Bigger input, or anchors/aliases (a "billion laughs" bomb expands
# a few hundred bytes into gigabytes), is refused before anything is built from it.
MAX_MAPPING_BYTES = 256 * 1024
_SHOWN = 60  # characters of a value an error message shows


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader without aliases: a mapping never needs them, and expanding them is unbounded."""

    def compose_node(self, parent, index):  # noqa: D102 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise MappingError(f"line {event.start_mark.line + 1}: YAML aliases (*name) are not allowed in a mapping")
        return super().compose_node(parent, index)


def _short(value: object) -> str:
    """A value as an error message shows it: its type and at most _SHOWN characters."""
    text = repr(value) if isinstance(value, str | int | float | bool) or value is None else type(value).__name__
    return text if len(text) <= _SHOWN else text[:_SHOWN] + f"... ({len(text)} characters)"


def _get(spec: dict, key: str, kind: type | tuple[type, ...], where: str, default: object = ..., *, required: bool = True):
    if key not in spec:
        if default is not ... or not required:
            return None if default is ... else default
        raise MappingError(f"{where}: missing {key!r}")
    value = spec[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise MappingError(f"{where}: {key!r} must be {names}, got {_short(value)}")
    return value


def _strings(spec: dict, key: str, where: str, *, required: bool = True) -> tuple[str, ...] | None:
    value = _get(spec, key, list, where, required=required)
    if value is None:
        return None
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad or not value:
        raise MappingError(f"{where}: {key!r} must be a non-empty list of names, got {_short(bad[0]) if bad else '[]'}")
    if len(set(value)) != len(value):
        raise MappingError(f"{where}: {key!r} lists a name twice")
    return tuple(value)


def _feature(key: object, spec: object, source: str) -> FeatureMapping:
    where = f"{source}: feature {_short(key)}"
    if not isinstance(key, str) or not isinstance(spec, dict):
        raise MappingError(f"{where}: must be a name with a mapping of topic, fields, names")
    rule = _get(spec, "rule", str, where, "hold")
    if rule not in RULES:
        raise MappingError(f"{where} has unknown rule {_short(rule)} (one of {RULES})")
    fields = _strings(spec, "fields", where)
    names = _strings(spec, "names", where)
    joints = _strings(spec, "joint_names", where, required=False)
    # Each field gives one value per joint (JointState-style) or at least one value: names must
    # cover every value, or a field would be dropped in silence.
    if joints is not None and len(names) != len(fields) * len(joints):
        raise MappingError(f"{where}: {len(fields)} fields x {len(joints)} joint_names need {len(fields) * len(joints)} "
                           f"names, got {len(names)}")
    if joints is None and len(names) < len(fields):
        raise MappingError(f"{where}: {len(fields)} fields ({', '.join(fields)}) but only {len(names)} names: "
                           "every field needs at least one name")
    skew = _get(spec, "max_skew_ms", (int, float), where, required=False)
    return FeatureMapping(key=key, topic=_get(spec, "topic", str, where), fields=fields, names=names, rule=rule,
                          joint_names=joints, max_skew_ms=skew)


def parse_embodiment(text: str, *, source: str = "<mapping>") -> Embodiment:
    """Parse and validate a mapping's YAML text. Raises MappingError naming ``source``.

    Parsing is bounded: at most MAX_MAPPING_BYTES, no YAML aliases; every key is type-checked,
    and error messages show at most a short prefix of a value.
    """
    if len(text) > MAX_MAPPING_BYTES:
        raise MappingError(f"{source}: a mapping is at most {MAX_MAPPING_BYTES} bytes, this one is {len(text)}")
    try:
        raw = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except MappingError as exc:
        raise MappingError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise MappingError(f"{source}: invalid YAML ({str(exc)[:200]})") from None
    if not isinstance(raw, dict):
        raise MappingError(f"{source}: a mapping is a YAML mapping of name, version, fps, features, tolerance")
    features = _get(raw, "features", dict, source)
    feats = [_feature(key, spec, source) for key, spec in features.items()]
    images = []
    for key, spec in (_get(raw, "images", dict, source, {}) or {}).items():
        where = f"{source}: image {_short(key)}"
        if not isinstance(key, str) or not isinstance(spec, dict):
            raise MappingError(f"{where}: must be a name with a mapping of topic, rule")
        rule = _get(spec, "rule", str, where, "nearest")
        if rule not in ("hold", "nearest"):
            raise MappingError(f"{where} has rule {_short(rule)}; images are picked, not interpolated (hold or nearest)")
        images.append(ImageMapping(key, _get(spec, "topic", str, where), rule,
                                   _get(spec, "max_skew_ms", (int, float), where, required=False)))
    clock = _get(raw, "clock", str, source, "header")
    if clock not in CLOCKS:
        raise MappingError(f"{source}: clock must be one of {CLOCKS}, got {_short(clock)}")
    events = _get(raw, "events", dict, source, required=False)
    tolerance = _get(raw, "tolerance", dict, source)
    name = _get(raw, "name", str, source)
    emb = Embodiment(
        name=name,
        version=_get(raw, "version", int, source),
        robot_type=_get(raw, "robot_type", str, source, name),
        fps=_get(raw, "fps", int, source),
        clock=clock,
        default_task=_get(raw, "default_task", str, source, "default"),
        frame_anchor=_get(raw, "frame_anchor", str, source, "action"),
        # No events section: each recording is one episode. A section must name its topic.
        events_topic=_get(events, "topic", str, f"{source}: events") if events is not None else None,
        features=tuple(feats),
        max_skew_ms=float(_get(tolerance, "max_skew_ms", (int, float), f"{source}: tolerance")),
        max_gap_ms=float(_get(tolerance, "max_gap_ms", (int, float), f"{source}: tolerance")),
        source_text=text,
        images=tuple(images),
    )
    if "action" not in {f.key for f in emb.features}:
        raise MappingError(f"{source}: a mapping needs an 'action' feature")
    if emb.fps <= 0:
        raise MappingError(f"{source}: fps must be positive")
    return emb


def load_embodiment(name_or_path: str = DEFAULT_EMBODIMENT) -> Embodiment:
    """A shipped mapping by name (``flywheel_arm2``) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return parse_embodiment(path.read_text(), source=str(path))
    ref = resources.files("flywheel_pipelines.lib").joinpath("embodiments", f"{name_or_path}.yaml")
    if not ref.is_file():
        raise MappingError(f"no embodiment mapping named {name_or_path!r}")
    return parse_embodiment(ref.read_text(), source=f"embodiments/{name_or_path}.yaml")
