"""The incident report: which robot-days behind a policy or release trained it on odd data.

Input: a curated dataset (directly, or through the policy or release bundle that names it).
Output: every robot-day in the dataset, ranked by how far its frames deviate from the rest of
the fleet, with its share of the training frames, the catalog's quality-check and outcome
history for the whole day, and the golden (field-failure) scenarios it produced.

How a robot-day is scored (nothing here knows the arm; it reads feature names from the dataset):

* **Fleet model.** A ridge regression of every action dimension on every observation dimension
  (+ intercept), fitted on all frames with each robot-day weighted equally, then refitted
  without the robot-days it flags as outliers (so one bad robot cannot bend the fleet's model).
  A robot-day's mean residual (``residual:<action>``) is what the fleet cannot explain from what
  the robot observed: it is invariant to which goals the operator happened to set, which a
  per-day mean of positions is not. Its residual spread (``residual_std:<action>``) catches
  jitter, lag and noisy operators.
* **Paired offsets.** Where the mapping names an action and a state dimension of the same joint
  (``elbow.target`` / ``elbow.pos``, the convention :func:`learning.policy.residual_indices`
  uses), the mean of action - state (``offset:<action>``): what an encoder offset shows as,
  directly in radians.
* **Distribution** (weight 0.5, since it moves with the tasks of the day): per-dimension mean and
  log standard deviation of every observation and action dimension.
* **History** (weight 0.5, one-sided): the day's failure and quality-failure rates in the catalog
  against the fleet's, as binomial z-scores.

Each feature becomes a robust z-score across robot-days: (value - median) / (1.4826 MAD), the
scale floored at the sampling error of the statistic so that a feature that happens to agree
across days cannot turn a rounding difference into a large z. A robot-day's score is its largest
weighted |z|: "this many robust standard deviations from the fleet, on this feature", with the
top features as the breakdown. Robust statistics need a fleet: with fewer than
:data:`MIN_ROBOT_DAYS` robot-days every z is 0 and the report says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from flywheel_pipelines.lib import layout, markdown
from flywheel_pipelines.lib.catalog import CATALOG_KEY
from flywheel_pipelines.lib.datasets.curation import MANIFEST, fixed_list_to_numpy
from flywheel_pipelines.lib.datasets.lerobot.reader import read_lerobot_v3
from flywheel_pipelines.lib.release.bundle import LINEAGE
from flywheel_pipelines.lib.storage import Lake

METHOD = "incident-robust-z-v1"
MIN_ROBOT_DAYS = 4
MAD_TO_SIGMA = 1.4826
# A robot-day whose fleet-model residual is this far out is left out of the refit.
REFIT_Z = 6.0
# Scores at or above this are marked as outliers in the report (|z| of a normal sample over
# ~30 features rarely passes 4).
OUTLIER_SCORE = 6.0
RIDGE = 1e-3
WEIGHTS = {"residual": 1.0, "residual_std": 1.0, "offset": 1.0, "mean": 0.5, "std": 0.5,
           "failure_rate": 0.5, "quality_fail_rate": 0.5}
# Lake keys this module reads (lib/layout.py names them all).
POLICY_CONFIG = layout.POLICY_CONFIG
GOLDEN_POINTER = layout.GOLDEN_POINTER
GOLDEN_FILE = layout.GOLDEN_FILE
INCIDENT_REPORTS = layout.INCIDENT_REPORTS


def report_key(release_name: str, release_version: str) -> str:
    """Where the incident report of a release is kept: incidents/reports/<name>/<version>.json."""
    return layout.incident_report_key(release_name, release_version)


class IncidentError(ValueError):
    """A prefix that is not a release, policy or dataset, or a dataset the report cannot read."""


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RobotDayFrames:
    """Every frame of a dataset as arrays, with the robot-day each frame belongs to."""

    obs: np.ndarray  # (n, d_obs) float64
    obs_names: tuple[str, ...]
    act: np.ndarray  # (n, d_act) float64
    act_names: tuple[str, ...]
    group: np.ndarray  # (n,) int: index into keys
    keys: tuple[tuple[str, str], ...]  # (robot, date) per group
    train: np.ndarray  # (n,) bool: the frame is in the training split
    episode: np.ndarray  # (n,) int: episode index


def _feature_names(spec: Mapping, dim: int, key: str) -> list[str]:
    names = spec.get("names")
    if isinstance(names, Mapping):  # lerobot also writes {"motors": [...]}
        names = [n for v in names.values() for n in v]
    if not names or len(names) != dim:
        names = [f"{key}[{i}]" for i in range(dim)]
    return list(names)


def load_dataset_frames(dataset_dir: Path) -> tuple[RobotDayFrames, dict]:
    """Read a curated dataset's frames and manifest (which maps episodes to robot-days and splits)."""
    dataset_dir = Path(dataset_dir)
    manifest_path = dataset_dir / MANIFEST
    if not manifest_path.is_file():
        raise IncidentError(f"{dataset_dir}: no {MANIFEST}; not a curated dataset")
    manifest = json.loads(manifest_path.read_text())
    info, frames, _ = read_lerobot_v3(dataset_dir)
    features = info["features"]
    obs_keys = [k for k in features if k.startswith("observation.") and features[k]["dtype"] == "float32"]
    if "action" not in features or not obs_keys:
        raise IncidentError(f"{dataset_dir}: needs float32 observation.* features and an action")
    obs_parts, obs_names = [], []
    for k in obs_keys:
        arr = fixed_list_to_numpy(frames[k])
        obs_parts.append(arr)
        obs_names += _feature_names(features[k], arr.shape[1], k)
    act = fixed_list_to_numpy(frames["action"]).astype(np.float64)
    by_index = {int(e["episode_index"]): e for e in manifest["episodes"]}
    episode = frames["episode_index"].to_numpy()
    missing = sorted(set(np.unique(episode).tolist()) - set(by_index))
    if missing:
        raise IncidentError(f"{dataset_dir}: episode indices {missing[:5]} are not in {MANIFEST}")
    keys = sorted({(e["robot"], e["date"]) for e in manifest["episodes"]})
    key_index = {k: i for i, k in enumerate(keys)}
    ep_group = {i: key_index[(e["robot"], e["date"])] for i, e in by_index.items()}
    ep_train = {i: e.get("split", "train") == "train" for i, e in by_index.items()}
    group = np.array([ep_group[int(i)] for i in episode], dtype=np.int64)
    train = np.array([ep_train[int(i)] for i in episode], dtype=bool)
    data = RobotDayFrames(
        obs=np.concatenate(obs_parts, axis=1).astype(np.float64), obs_names=tuple(obs_names), act=act,
        act_names=tuple(_feature_names(features["action"], act.shape[1], "action")), group=group,
        keys=tuple(keys), train=train, episode=episode.astype(np.int64),
    )
    return data, manifest


# --- scoring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDeviation:
    """One feature of one robot-day against the fleet."""

    feature: str  # e.g. "residual:elbow.target", "offset:elbow.target-elbow.pos", "std:elbow.vel"
    value: float  # the robot-day's statistic
    fleet: float  # the fleet's median of it
    z: float  # robust z (signed)
    weight: float

    @property
    def weighted(self) -> float:
        return abs(self.z) * self.weight


@dataclass(frozen=True)
class Scored:
    key: tuple[str, str]
    score: float
    features: tuple[FeatureDeviation, ...]  # every feature, largest weighted |z| first


def robust_z(values: np.ndarray, floor: float | np.ndarray = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(z, median) per column of ``values`` (robot-days x features): (v - median) / max(1.4826 MAD, floor)."""
    values = np.asarray(values, dtype=np.float64)
    med = np.median(values, axis=0)
    scale = MAD_TO_SIGMA * np.median(np.abs(values - med), axis=0)
    scale = np.maximum(scale, np.maximum(floor, 1e-9))
    return (values - med) / scale, med


def pair_dims(obs_names: Sequence[str], act_names: Sequence[str]) -> list[tuple[int, int]]:
    """(action dim, observation dim) pairs of the same joint: ``<joint>.<x>`` with ``<joint>.pos``."""
    out = []
    for a, name in enumerate(act_names):
        joint = name.rsplit(".", 1)[0] if "." in name else None
        for candidate in (f"{joint}.pos", f"{joint}.position"):
            if joint and candidate in obs_names:
                out.append((a, list(obs_names).index(candidate)))
                break
    return out


def _group_stats(values: np.ndarray, group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: count, mean and standard deviation of each column."""
    counts = np.bincount(group, minlength=n_groups).astype(np.float64)
    sums = np.zeros((n_groups, values.shape[1]))
    np.add.at(sums, group, values)
    means = sums / np.maximum(counts, 1)[:, None]
    sq = np.zeros_like(sums)
    np.add.at(sq, group, (values - means[group]) ** 2)
    stds = np.sqrt(sq / np.maximum(counts - 1, 1)[:, None])
    return counts, means, stds


def _ridge_residual(data: RobotDayFrames, use: np.ndarray) -> np.ndarray:
    """Residual of action on observation for every frame, fitted on robot-days ``use`` (each weighted equally)."""
    mu, sd = data.obs.mean(axis=0), data.obs.std(axis=0)
    x = (data.obs - mu) / np.where(sd > 1e-12, sd, 1.0)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    counts = np.bincount(data.group, minlength=len(data.keys)).astype(np.float64)
    w = np.where(use[data.group], 1.0 / np.maximum(counts[data.group], 1), 0.0)
    xtw = x.T * w
    reg = RIDGE * w.sum() * np.eye(x.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(xtw @ x + reg, xtw @ data.act)
    return data.act - x @ coef


def _history_z(catalog_rows: Mapping[tuple[str, str], Mapping] | None, keys: Sequence[tuple[str, str]]) -> dict:
    """Binomial z (one-sided: only excess counts) of each robot-day's failure and quality-failure rates."""
    out: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    if not catalog_rows:
        return out
    for name, column in (("failure_rate", "failures"), ("quality_fail_rate", "quality_failures")):
        n = np.array([catalog_rows.get(k, {}).get("episodes", 0) for k in keys], dtype=np.float64)
        bad = np.array([catalog_rows.get(k, {}).get(column, 0) for k in keys], dtype=np.float64)
        total_n = sum(r["episodes"] for r in catalog_rows.values())
        total_bad = sum(r[column] for r in catalog_rows.values())
        p = (total_bad + 0.5) / (total_n + 1.0)  # never exactly 0 or 1
        rate = np.divide(bad, n, out=np.full_like(n, p), where=n > 0)
        z = np.where(n > 0, np.maximum(0.0, (rate - p) / np.sqrt(p * (1 - p) / np.maximum(n, 1))), 0.0)
        out[name] = (rate, z, p)
    return out


def score_robot_days(
    data: RobotDayFrames, *, catalog_rows: Mapping[tuple[str, str], Mapping] | None = None
) -> list[Scored]:
    """Score every robot-day of ``data`` against the rest (see the module docstring), best first.

    Episodes are the statistical unit (frames of one episode are strongly correlated): each
    statistic is computed per episode, a robot-day's value is the mean over its episodes, and its
    z-scale is at least the between-episode standard error of that mean, so a robot-day with one
    or two episodes in the dataset cannot look extreme by chance.
    """
    n_groups = len(data.keys)
    episodes, ep_of_frame = np.unique(data.episode, return_inverse=True)
    ep_group = np.zeros(len(episodes), dtype=np.int64)
    ep_group[ep_of_frame] = data.group
    k = np.bincount(ep_group, minlength=n_groups).astype(np.float64)  # episodes per robot-day
    names: list[str] = []
    columns: list[np.ndarray] = []  # per-episode values, one column per feature

    def add(prefix: str, labels: Sequence[str], values: np.ndarray) -> None:
        names.extend(f"{prefix}:{label}" for label in labels)
        columns.extend(values.T)

    def episode_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, means, stds = _group_stats(values, ep_of_frame, len(episodes))
        # Relative epsilon: a dimension constant within episodes (a goal) gives the same log for all.
        eps = 1e-6 * (np.std(values, axis=0) + 1e-9)
        return means, np.log(stds + eps)

    for values, labels in ((data.obs, data.obs_names), (data.act, data.act_names)):
        means, log_stds = episode_stats(values)
        add("mean", labels, means)
        add("std", labels, log_stds)
    pairs = pair_dims(data.obs_names, data.act_names)
    if pairs:
        diff = np.stack([data.act[:, a] - data.obs[:, o] for a, o in pairs], axis=1)
        add("offset", [f"{data.act_names[a]}-{data.obs_names[o]}" for a, o in pairs], episode_stats(diff)[0])

    use = np.ones(n_groups, dtype=bool)
    residual = _ridge_residual(data, use)
    if n_groups >= MIN_ROBOT_DAYS:
        day_means = _group_stats(episode_stats(residual)[0], ep_group, n_groups)[1]
        flagged = np.any(np.abs(robust_z(day_means)[0]) > REFIT_Z, axis=1)
        if 0 < flagged.sum() <= n_groups // 2:
            use = ~flagged
            residual = _ridge_residual(data, use)
    means, log_stds = episode_stats(residual)
    add("residual", data.act_names, means)
    add("residual_std", data.act_names, log_stds)

    per_episode = np.stack(columns, axis=1) if columns else np.zeros((len(episodes), 0))
    _, values, spread = _group_stats(per_episode, ep_group, n_groups)
    # Between-episode spread within robot-days, pooled over the fleet -> standard error per robot-day.
    pooled = np.sqrt(np.sum(spread**2 * np.maximum(k - 1, 0)[:, None], axis=0) / max(np.sum(np.maximum(k - 1, 0)), 1))
    if n_groups >= MIN_ROBOT_DAYS:
        med = np.median(values, axis=0)
        mad = MAD_TO_SIGMA * np.median(np.abs(values - med), axis=0)
        scale = np.maximum(np.maximum(mad[None, :], pooled[None, :] / np.sqrt(np.maximum(k, 1))[:, None]), 1e-9)
        z = (values - med) / scale
    else:
        med = np.median(values, axis=0) if n_groups else np.zeros(values.shape[1])
        z = np.zeros_like(values)
    weights = np.array([WEIGHTS[n.split(":", 1)[0]] for n in names])
    history = _history_z(catalog_rows, data.keys)

    out = []
    for g, key in enumerate(data.keys):
        feats = [FeatureDeviation(names[j], float(values[g, j]), float(med[j]), float(z[g, j]), float(weights[j]))
                 for j in range(len(names))]
        for hname, (rate, hz, p) in history.items():
            feats.append(FeatureDeviation(f"history:{hname}", float(rate[g]), float(p),
                                          float(hz[g]) if n_groups >= MIN_ROBOT_DAYS else 0.0, WEIGHTS[hname]))
        feats.sort(key=lambda f: -f.weighted)
        out.append(Scored(key, feats[0].weighted if feats else 0.0, tuple(feats)))
    out.sort(key=lambda s: (-s.score, s.key))
    return out


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncidentRow:
    robot: str
    date: str
    score: float
    share_of_training_frames: float
    frames: int  # training frames of this robot-day
    episodes: int  # training episodes of this robot-day
    dataset_frames: int  # all frames in the dataset (train + val)
    top_features: tuple[FeatureDeviation, ...]
    outlier: bool
    catalog_episodes: int | None = None  # the whole day in the catalog, curated or not
    quality_failures: int | None = None
    quality_failure_rate: float | None = None
    field_failures: int | None = None  # outcome == failure
    interventions: int | None = None
    golden_failures: int | None = None  # golden scenarios derived from this robot-day


@dataclass(frozen=True)
class IncidentReport:
    subject: dict  # {"kind": "release"|"policy"|"dataset", "name", "version", "dataset": {...}}
    rows: tuple[IncidentRow, ...]  # by score, highest first
    training_frames: int
    method: dict = field(default_factory=dict)


def catalog_history(catalog: pa.Table) -> dict[tuple[str, str], dict]:
    """Per robot-day of the catalog: episodes, quality failures, field failures, interventions."""
    out: dict[tuple[str, str], dict] = {}
    cols = catalog.select(["robot", "date", "quality_ok", "outcome", "intervention"]).to_pydict()
    for robot, date, ok, outcome, intervention in zip(*cols.values(), strict=True):
        row = out.setdefault((robot, date), {"episodes": 0, "quality_failures": 0, "failures": 0, "interventions": 0})
        row["episodes"] += 1
        row["quality_failures"] += not ok
        row["failures"] += outcome == "failure"
        row["interventions"] += bool(intervention)
    return out


def golden_counts(entries: Sequence[Mapping]) -> dict[tuple[str, str], int]:
    """Active golden scenarios per source robot-day."""
    out: dict[tuple[str, str], int] = {}
    for e in entries:
        source = e.get("scenario", {}).get("source", {})
        if e.get("status", "active") == "active" and source.get("robot") and source.get("date"):
            key = (source["robot"], source["date"])
            out[key] = out.get(key, 0) + 1
    return out


def incident_report(
    dataset_dir: Path,
    *,
    catalog: pa.Table | None = None,
    golden: Sequence[Mapping] | None = None,
    subject: Mapping | None = None,
    top_k: int = 3,
) -> IncidentReport:
    """Rank the robot-days of a curated dataset by how far their data deviates from the fleet.

    Args:
        dataset_dir: a curated dataset folder (LeRobot v3.0 + manifest.json).
        catalog: the episode catalog, for each robot-day's quality and outcome history (optional).
        golden: golden-set entries (``scenarios`` of golden/<version>/scenarios.json), optional.
        subject: what the report is about (release / policy / dataset identity), recorded as is.
        top_k: how many features each row names.
    """
    data, manifest = load_dataset_frames(dataset_dir)
    history = catalog_history(catalog) if catalog is not None else None
    scored = score_robot_days(data, catalog_rows=history)
    gold = golden_counts(golden) if golden is not None else None
    train_frames = int(data.train.sum())
    train_eps: dict[tuple[str, str], set[int]] = {}
    for g, ep in zip(data.group[data.train], data.episode[data.train], strict=True):
        train_eps.setdefault(data.keys[g], set()).add(int(ep))
    frames_by_group = np.bincount(data.group[data.train], minlength=len(data.keys))
    all_by_group = np.bincount(data.group, minlength=len(data.keys))
    index = {k: i for i, k in enumerate(data.keys)}
    rows = []
    for s in scored:
        g = index[s.key]
        h = history.get(s.key) if history is not None else None
        rows.append(IncidentRow(
            robot=s.key[0], date=s.key[1], score=s.score,
            share_of_training_frames=float(frames_by_group[g] / train_frames) if train_frames else 0.0,
            frames=int(frames_by_group[g]), episodes=len(train_eps.get(s.key, ())), dataset_frames=int(all_by_group[g]),
            top_features=s.features[:top_k], outlier=s.score >= OUTLIER_SCORE,
            catalog_episodes=None if history is None else (h or {}).get("episodes", 0),
            quality_failures=None if history is None else (h or {}).get("quality_failures", 0),
            quality_failure_rate=None if not h else h["quality_failures"] / h["episodes"],
            field_failures=None if history is None else (h or {}).get("failures", 0),
            interventions=None if history is None else (h or {}).get("interventions", 0),
            golden_failures=None if gold is None else gold.get(s.key, 0),
        ))
    subject = dict(subject or {"kind": "dataset", "name": manifest.get("name"), "version": manifest.get("version")})
    subject.setdefault("dataset", {"name": manifest.get("name"), "version": manifest.get("version")})
    method = {"method": METHOD, "robot_days": len(data.keys), "min_robot_days": MIN_ROBOT_DAYS,
              "outlier_score": OUTLIER_SCORE, "weights": dict(WEIGHTS),
              "paired_dims": [f"{data.act_names[a]}-{data.obs_names[o]}" for a, o in pair_dims(data.obs_names, data.act_names)]}
    if len(data.keys) < MIN_ROBOT_DAYS:
        method["note"] = f"only {len(data.keys)} robot-days: too few for robust z-scores, all scores are 0"
    return IncidentReport(subject=subject, rows=tuple(rows), training_frames=train_frames, method=method)


def _dataset_prefix(dataset: Mapping) -> str:
    return layout.dataset_prefix(dataset["name"], dataset["version"])


def resolve_subject(store: Lake, prefix: str) -> tuple[dict, str]:
    """(subject, dataset prefix) for a release bundle, policy or dataset prefix in the lake."""
    prefix = prefix.strip("/")
    if store.exists(f"{prefix}/{LINEAGE}"):
        lineage = store.read_json(f"{prefix}/{LINEAGE}")
        release, policy, dataset = lineage["release"], lineage.get("policy", {}), lineage["dataset"]
        subject = {"kind": "release", "name": release.get("name"), "version": release.get("version"),
                   "prefix": prefix, "policy": {"name": policy.get("name"), "version": policy.get("version"),
                                                "mlflow_run_id": policy.get("mlflow_run_id")},
                   "dataset": {"name": dataset["name"], "version": dataset["version"]}}
        return subject, _dataset_prefix(dataset)
    if store.exists(f"{prefix}/{MANIFEST}"):
        manifest = store.read_json(f"{prefix}/{MANIFEST}")
        subject = {"kind": "dataset", "name": manifest["name"], "version": manifest["version"], "prefix": prefix,
                   "dataset": {"name": manifest["name"], "version": manifest["version"]}}
        return subject, prefix
    if store.exists(f"{prefix}/{POLICY_CONFIG}"):
        config = store.read_json(f"{prefix}/{POLICY_CONFIG}")
        if "dataset" not in config:
            raise IncidentError(f"{store.uri(prefix)}: policy config names no dataset")
        name, version = (prefix.split("/") + ["", ""])[1:3]
        subject = {"kind": "policy", "name": name, "version": version, "prefix": prefix,
                   "dataset": {"name": config["dataset"]["name"], "version": config["dataset"]["version"]}}
        return subject, _dataset_prefix(config["dataset"])
    raise IncidentError(f"{store.uri(prefix)} is not a release bundle ({LINEAGE}), a policy ({POLICY_CONFIG}) "
                        f"or a curated dataset ({MANIFEST})")


def read_golden_entries(store: Lake) -> list[dict] | None:
    """The current golden set's entries, or None when there is none yet."""
    if not store.exists(GOLDEN_POINTER):
        return None
    doc = store.read_json(f"{store.read_json(GOLDEN_POINTER)['prefix']}/{GOLDEN_FILE}")
    return list(doc.get("scenarios", []))


def load_incident_report(store: Lake, prefix: str, *, top_k: int = 3) -> IncidentReport:
    """The incident report for a release bundle, policy or dataset prefix of ``store``.

    Reads the dataset the subject names, the catalog (catalog/episodes.parquet) and the current
    golden set when they exist; a missing catalog or golden set leaves those columns empty.
    """
    subject, dataset_prefix = resolve_subject(store, prefix)
    catalog = store.read_parquet(CATALOG_KEY) if store.exists(CATALOG_KEY) else None
    golden = read_golden_entries(store)
    with store.local_dir(dataset_prefix) as dataset_dir:
        return incident_report(dataset_dir, catalog=catalog, golden=golden, subject=subject, top_k=top_k)


# --- rendering -------------------------------------------------------------------------------


def _fmt_feature(f: FeatureDeviation) -> str:
    weight = "" if f.weight == 1.0 else f" x{f.weight:g}"
    return f"{f.feature} = {f.value:.3g} (fleet {f.fleet:.3g}, z {f.z:+.1f}{weight})"


def to_markdown(report: IncidentReport, *, limit: int = 25) -> str:
    """A Markdown summary and table (rounded) for the Dagster UI or a ticket."""
    s = report.subject
    title = f"{s.get('kind', 'dataset')} `{s.get('name')}` `{s.get('version')}`"
    ds = s.get("dataset") or {}
    lines = [f"# Incident report: {title}", "",
             f"Dataset `{ds.get('name')}` `{ds.get('version')}`: {len(report.rows)} robot-days, "
             f"{report.training_frames} training frames. Score = largest weighted robust |z| of a robot-day's "
             f"features against the fleet; outlier at >= {report.method.get('outlier_score', OUTLIER_SCORE):g}.", ""]
    if report.method.get("note"):
        lines += [f"> {report.method['note']}", ""]

    def opt(v, fmt="{}"):
        return "-" if v is None else fmt.format(v)

    rows = [(
        r.robot, r.date, f"{r.score:.1f}" + (" (outlier)" if r.outlier else ""), f"{r.share_of_training_frames:.1%}",
        r.frames, r.episodes, "; ".join(_fmt_feature(f) for f in r.top_features),
        opt(r.quality_failures) + ("" if r.catalog_episodes is None else f"/{r.catalog_episodes}"),
        opt(r.field_failures), opt(r.interventions), opt(r.golden_failures),
    ) for r in report.rows[:limit]]
    lines.append(markdown.table(["robot", "day", "score", "share of train frames", "train frames", "train episodes",
                                 "top deviating features", "quality failures", "field failures", "interventions",
                                 "golden"], rows))
    if len(report.rows) > limit:
        lines += ["", f"... and {len(report.rows) - limit} more robot-days (see the JSON report)."]
    return "\n".join(lines) + "\n"


def to_dict(report: IncidentReport) -> dict:
    """JSON-ready form (floats rounded to 6 significant digits)."""

    def clean(obj):
        if isinstance(obj, float):
            return float(f"{obj:.6g}") if math.isfinite(obj) else None
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [clean(v) for v in obj]
        return obj

    out = asdict(report)
    for row, r in zip(out["rows"], report.rows, strict=True):
        for f, feat in zip(row["top_features"], r.top_features, strict=True):
            f["weighted"] = feat.weighted
    return clean(out)
