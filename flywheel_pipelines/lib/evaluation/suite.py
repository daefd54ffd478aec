"""Evaluation suites: versioned YAML configuration, and the seeded scenarios it stands for.

A suite (``suites/<name>.yaml`` in the package, or any YAML path) fixes the scenario groups, how
many episodes each has, the domain-randomization ranges, the baselines, the release gate and the
statistics. Its version is the sha256 of the file's bytes, so two reports with the same suite
version were judged by the same rules on the same scenarios (given the same seed).
"""

from __future__ import annotations

import hashlib
import statistics as pystats
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from flywheel_pipelines.lib.sim.robot import RobotProfile, sample_task, seeded_rng
from flywheel_pipelines.lib.sim.scenario import Scenario

DEFAULT_SUITE = "reach-default"
GENERATED_GROUPS = ("nominal", "randomized")
GOLDEN = "golden"
GROUPS = (*GENERATED_GROUPS, GOLDEN)
BASELINES = ("scripted_expert", "hold_position")
# RobotProfile fields a suite may randomize; the tuple-valued ones are drawn per joint.
RANDOMIZABLE = ("friction", "damping", "mass_scale", "gain_scale", "latency_s", "sensor_delay_s", "pos_noise",
                "vel_noise", "drop_rate", "burst_drop_rate")
PER_JOINT = ("friction", "damping")


class SuiteError(ValueError):
    """A suite file that cannot be used (unknown key, bad range, missing group)."""


@dataclass(frozen=True)
class GroupSpec:
    name: str
    description: str
    episodes: int = 0  # golden: the size comes from golden_scenarios, not from here
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class GateSpec:
    """The release gate. Absolute criteria always apply; relative ones need a production policy."""

    min_success_rate: dict[str, float]
    beat_baseline: str | None
    max_safety_event_rate: float | None
    max_success_drop: float | None
    block_safety_regressions: bool
    block_golden_regressions: bool


@dataclass(frozen=True)
class Suite:
    name: str
    version: str  # sha256 of the YAML bytes, first 12 hex digits
    source: str  # where it was loaded from (package resource name or path)
    embodiment: str
    seed: int
    groups: dict[str, GroupSpec]
    baselines: tuple[str, ...]
    production_alias: str
    gate: GateSpec
    confidence: float
    bootstrap_resamples: int
    bootstrap_seed: int

    @property
    def z(self) -> float:
        """The two-sided normal quantile of ``confidence`` (1.959964 for 95%)."""
        return pystats.NormalDist().inv_cdf(0.5 + self.confidence / 2)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "version": self.version, "source": self.source, "embodiment": self.embodiment,
            "seed": self.seed, "baselines": list(self.baselines), "production_alias": self.production_alias,
            "groups": {g.name: {"description": g.description, "episodes": g.episodes,
                                "ranges": {k: list(v) for k, v in sorted(g.ranges.items())}}
                       for g in self.groups.values()},
            "gate": {"min_success_rate": dict(sorted(self.gate.min_success_rate.items())),
                     "beat_baseline": self.gate.beat_baseline,
                     "max_safety_event_rate": self.gate.max_safety_event_rate,
                     "max_success_drop": self.gate.max_success_drop,
                     "block_safety_regressions": self.gate.block_safety_regressions,
                     "block_golden_regressions": self.gate.block_golden_regressions},
            "statistics": {"confidence": self.confidence, "bootstrap_resamples": self.bootstrap_resamples,
                           "bootstrap_seed": self.bootstrap_seed},
        }


def _keys(where: str, doc: object, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(doc, dict):
        raise SuiteError(f"{where}: expected a mapping, got {type(doc).__name__}")
    unknown = set(doc) - allowed
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {sorted(unknown)} (allowed: {sorted(allowed)})")
    missing = required - set(doc)
    if missing:
        raise SuiteError(f"{where}: missing key(s) {sorted(missing)}")
    return doc


def _fraction(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise SuiteError(f"{where}: expected a number in [0, 1], got {value!r}")
    return float(value)


def parse_suite(text: str, *, source: str) -> Suite:
    """Parse and validate a suite's YAML text. Unknown keys are errors: a typo must not be ignored."""
    doc = _keys(source, yaml.safe_load(text), {"name", "embodiment", "seed", "groups", "baselines",
                                               "production_alias", "gate", "statistics"},
                {"name", "seed", "groups", "gate"})
    groups_doc = _keys(f"{source}: groups", doc["groups"], set(GROUPS), set(GROUPS))
    groups = {}
    for name in GROUPS:
        g = _keys(f"{source}: groups.{name}", groups_doc[name] or {}, {"description", "episodes", "ranges"})
        episodes = g.get("episodes", 0)
        if name in GENERATED_GROUPS and (not isinstance(episodes, int) or episodes < 1):
            raise SuiteError(f"{source}: groups.{name}.episodes must be a positive integer, got {episodes!r}")
        if name == GOLDEN and "episodes" in g:
            raise SuiteError(f"{source}: groups.golden.episodes: the golden set's size comes from golden_scenarios")
        ranges = {}
        for key, bounds in (g.get("ranges") or {}).items():
            if key not in RANDOMIZABLE:
                raise SuiteError(f"{source}: groups.{name}.ranges.{key}: not a randomizable parameter {RANDOMIZABLE}")
            if (not isinstance(bounds, list) or len(bounds) != 2
                    or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
                    or not 0 <= bounds[0] <= bounds[1]):
                raise SuiteError(f"{source}: groups.{name}.ranges.{key}: expected [low, high] with 0 <= low <= high, "
                                 f"got {bounds!r}")
            ranges[key] = (float(bounds[0]), float(bounds[1]))
        if ranges and name != "randomized":
            raise SuiteError(f"{source}: groups.{name}: only the randomized group has ranges")
        groups[name] = GroupSpec(name, str(g.get("description", "")), int(episodes), ranges)
    baselines = tuple(doc.get("baselines", BASELINES))
    if unknown := sorted(set(baselines) - set(BASELINES)):
        raise SuiteError(f"{source}: baselines: unknown {unknown} (known: {list(BASELINES)})")
    gate_doc = _keys(f"{source}: gate", doc["gate"], {"min_success_rate", "beat_baseline", "max_safety_event_rate",
                                                      "max_success_drop", "block_safety_regressions",
                                                      "block_golden_regressions"})
    minimums = _keys(f"{source}: gate.min_success_rate", gate_doc.get("min_success_rate") or {}, set(GROUPS))
    beat = gate_doc.get("beat_baseline")
    if beat is not None and beat not in baselines:
        raise SuiteError(f"{source}: gate.beat_baseline {beat!r} is not one of the suite's baselines {list(baselines)}")
    safety, drop = gate_doc.get("max_safety_event_rate"), gate_doc.get("max_success_drop")
    gate = GateSpec(
        min_success_rate={k: _fraction(f"{source}: gate.min_success_rate.{k}", v) for k, v in minimums.items()},
        beat_baseline=beat,
        max_safety_event_rate=None if safety is None else _fraction(f"{source}: gate.max_safety_event_rate", safety),
        max_success_drop=None if drop is None else _fraction(f"{source}: gate.max_success_drop", drop),
        block_safety_regressions=bool(gate_doc.get("block_safety_regressions", True)),
        block_golden_regressions=bool(gate_doc.get("block_golden_regressions", True)),
    )
    stats = _keys(f"{source}: statistics", doc.get("statistics") or {},
                  {"confidence", "bootstrap_resamples", "bootstrap_seed"})
    confidence = _fraction(f"{source}: statistics.confidence", stats.get("confidence", 0.95))
    if not 0.5 <= confidence < 1.0:
        raise SuiteError(f"{source}: statistics.confidence must be in [0.5, 1), got {confidence}")
    seed = doc["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SuiteError(f"{source}: seed must be an integer, got {seed!r}")
    return Suite(
        name=str(doc["name"]), version=hashlib.sha256(text.encode()).hexdigest()[:12], source=source,
        embodiment=str(doc.get("embodiment", "flywheel_arm2")), seed=seed, groups=groups, baselines=baselines,
        production_alias=str(doc.get("production_alias", "production")), gate=gate, confidence=confidence,
        bootstrap_resamples=int(stats.get("bootstrap_resamples", 2000)),
        bootstrap_seed=int(stats.get("bootstrap_seed", 0)),
    )


def load_suite(name_or_path: str = DEFAULT_SUITE) -> Suite:
    """A suite shipped in the package (by name) or a YAML file (by path).

    Raises:
        SuiteError: no such suite, or the file does not validate.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise SuiteError(f"{path}: no such suite file")
        return parse_suite(path.read_text(), source=str(path))
    resource = resources.files("flywheel_pipelines.lib.evaluation").joinpath("suites", f"{name_or_path}.yaml")
    if not resource.is_file():
        raise SuiteError(f"no suite named {name_or_path!r} (shipped: {', '.join(shipped_suites())})")
    return parse_suite(resource.read_text(), source=f"flywheel_pipelines/lib/evaluation/suites/{name_or_path}.yaml")


def shipped_suites() -> list[str]:
    folder = resources.files("flywheel_pipelines.lib.evaluation").joinpath("suites")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _draw(rng, low: float, high: float) -> float:
    return float(rng.uniform(low, high)) if high > low else float(low)


def randomized_profile(robot_id: str, ranges: dict[str, tuple[float, float]], rng) -> RobotProfile:
    """A profile with every ranged parameter drawn uniformly (keys in sorted order, per joint where
    the parameter is per joint); parameters without a range keep the nominal value."""
    values: dict[str, object] = {}
    for key in sorted(ranges):
        low, high = ranges[key]
        values[key] = tuple(_draw(rng, low, high) for _ in range(2)) if key in PER_JOINT else _draw(rng, low, high)
    return RobotProfile(robot_id=robot_id, **values)


def generated_scenarios(suite: Suite, *, seed: int | None = None) -> list[Scenario]:
    """The nominal and randomized scenarios of ``suite`` (golden ones come from the lake).

    Scenario ``<group>/<i>`` depends only on (seed, group, i).
    """
    seed = suite.seed if seed is None else seed
    out = []
    for name in GENERATED_GROUPS:
        group = suite.groups[name]
        for i in range(group.episodes):
            rng = seeded_rng("suite", seed, name, i)
            q0, goal = sample_task(rng)
            scenario_id = f"{name}/{i:04d}"
            profile = (RobotProfile(robot_id=scenario_id) if name == "nominal"
                       else randomized_profile(scenario_id, group.ranges, rng))
            out.append(Scenario(
                scenario_id=scenario_id, group=name, profile=profile, q0=(float(q0[0]), float(q0[1])),
                goal=(float(goal[0]), float(goal[1])), seed=int(rng.integers(2**31)),
                source={"suite": suite.name, "suite_version": suite.version, "seed": seed},
            ))
    return out


def suite_scenarios(suite: Suite, golden: Sequence[Scenario], *, seed: int | None = None) -> list[Scenario]:
    """Everything one evaluation runs: nominal, randomized, then the active golden scenarios."""
    for s in golden:
        if s.group != GOLDEN:
            raise SuiteError(f"{s.scenario_id}: a golden scenario must be in group {GOLDEN!r}, not {s.group!r}")
    scenarios = generated_scenarios(suite, seed=seed) + sorted(golden, key=lambda s: s.scenario_id)
    ids = [s.scenario_id for s in scenarios]
    if len(set(ids)) != len(ids):
        raise SuiteError("scenario ids are not unique")
    return scenarios
