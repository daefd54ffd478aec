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


def parse_embodiment(text: str, *, source: str = "<mapping>") -> Embodiment:
    """Parse and validate a mapping's YAML text. Raises MappingError naming ``source``."""
    try:
        raw = yaml.safe_load(text)
        feats = []
        for key, spec in raw["features"].items():
            rule = spec.get("rule", "hold")
            if rule not in RULES:
                raise MappingError(f"{source}: feature {key!r} has unknown rule {rule!r} (one of {RULES})")
            feats.append(
                FeatureMapping(
                    key=key,
                    topic=spec["topic"],
                    fields=tuple(spec["fields"]),
                    names=tuple(spec["names"]),
                    rule=rule,
                    joint_names=tuple(spec["joint_names"]) if spec.get("joint_names") else None,
                    max_skew_ms=spec.get("max_skew_ms"),
                )
            )
        images = []
        for key, spec in (raw.get("images") or {}).items():
            rule = spec.get("rule", "nearest")
            if rule not in ("hold", "nearest"):
                raise MappingError(f"{source}: image {key!r} has rule {rule!r}; images are picked, not interpolated "
                                   "(hold or nearest)")
            images.append(ImageMapping(key, spec["topic"], rule, spec.get("max_skew_ms")))
        clock = raw.get("clock", "header")
        if clock not in CLOCKS:
            raise MappingError(f"{source}: clock must be one of {CLOCKS}, got {clock!r}")
        emb = Embodiment(
            name=raw["name"],
            version=int(raw["version"]),
            robot_type=raw.get("robot_type", raw["name"]),
            fps=int(raw["fps"]),
            clock=clock,
            default_task=raw.get("default_task", "default"),
            frame_anchor=raw.get("frame_anchor", "action"),
            # No events section: each recording is one episode. A section must name its topic.
            events_topic=raw["events"]["topic"] if "events" in raw else None,
            features=tuple(feats),
            max_skew_ms=float(raw["tolerance"]["max_skew_ms"]),
            max_gap_ms=float(raw["tolerance"]["max_gap_ms"]),
            source_text=text,
            images=tuple(images),
        )
    except MappingError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise MappingError(f"{source}: invalid embodiment mapping ({type(exc).__name__}: {exc})") from None
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
