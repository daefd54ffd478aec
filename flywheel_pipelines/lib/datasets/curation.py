"""Curation: a spec selects catalog episodes, the episode-quality suite leaves out those over the
mapping's tolerances, and the rest are split deterministically and written as a LeRobot v3.0
dataset whose version is a content hash of what went in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel_pipelines.lib import ids, layout, quarantine
from flywheel_pipelines.lib.catalog import EpisodeQuery, search
from flywheel_pipelines.lib.datasets.lerobot.format import FeatureSpec
from flywheel_pipelines.lib.datasets.lerobot.writer import write_lerobot_v3
from flywheel_pipelines.lib.episodes.control import AUTONOMOUS_MODES
from flywheel_pipelines.lib.episodes.embodiment import Embodiment
from flywheel_pipelines.lib.quality import ISSUE_CHECKS, QualityError, validate_episodes

MANIFEST = layout.MANIFEST
CARD = "README.md"
# Bump when the way a dataset is built changes, so versions change too.
# 2: episodes are judged by the GX episode-quality suite; the manifest records what it left out.
# 3: quarantined episodes are left out by default; the manifest records the quarantine state honoured.
FORMAT_VERSION = 3


class CurationError(ValueError):
    """A curation spec that selects nothing usable, or inconsistent inputs."""


@dataclass(frozen=True)
class CurationSpec:
    """What goes into a dataset. Every field takes part in the dataset's version hash."""

    name: str = "reach"
    robots: tuple[str, ...] = ()
    date_from: str | None = None
    date_to: str | None = None
    tasks: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ("success",)
    include_interventions: bool = False
    # Keep episodes that fail the episode-quality suite (or that standardize marked quality_ok=false).
    include_quality_issues: bool = False
    # Keep episodes under an active quarantine (an explicit opt-in; recorded in the manifest).
    include_quarantined: bool = False
    val_fraction: float = 0.2
    split_seed: int = 0
    min_frames: int = 5
    # Keep episodes a released policy drove (field logs: lib/episodes/control.py). Off by default:
    # they are the policy's own actions, not demonstrations. Left out of to_dict() when off, so the
    # version of every dataset curated before the option existed stays the same.
    include_autonomous: bool = False

    def __post_init__(self):
        ids.name(self.name, what="dataset name")
        for robot in self.robots:
            ids.robot_id(robot)
        if not 0.0 <= self.val_fraction < 1.0:
            raise CurationError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def query(self) -> EpisodeQuery:
        """The catalog search for the spec's episodes; quality is judged afterwards by :func:`quality_gate`."""
        return EpisodeQuery(
            robots=tuple(self.robots), date_from=self.date_from, date_to=self.date_to, tasks=tuple(self.tasks),
            outcomes=tuple(self.outcomes),
            intervention=None if self.include_interventions else False,
        )

    def to_dict(self) -> dict:
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if not self.include_autonomous:
            out.pop("include_autonomous")
        return out


def select_episodes(catalog: pa.Table, spec: CurationSpec) -> pa.Table:
    """The catalog rows the spec admits, ordered by episode id.

    Quality is not judged here: :func:`build_dataset` runs the episode-quality suite of the
    dataset's own mapping over these rows, so what it leaves out is counted in the manifest.
    """
    chosen = search(catalog, spec.query())
    chosen = chosen.filter(pc.greater_equal(chosen["num_frames"], spec.min_frames))
    if not spec.include_autonomous and "control_mode" in chosen.column_names:
        driven = pc.fill_null(pc.is_in(chosen["control_mode"], pa.array(AUTONOMOUS_MODES)), False)
        chosen = chosen.filter(pc.invert(driven))
    return chosen.sort_by("episode_id")


def split_episodes(episode_ids: list[str], *, val_fraction: float, seed: int) -> dict[str, str]:
    """Deterministic split: an episode's side depends only on its id and the seed.

    Hashing each id (rather than shuffling the list) keeps an episode on the same side when
    other episodes are added or removed, so val never leaks into train across dataset versions.
    """
    out = {}
    for episode_id in episode_ids:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{episode_id}".encode()).digest()[:8], "big") / 2**64
        out[episode_id] = "val" if h < val_fraction else "train"
    def rank(e: str) -> bytes:
        return hashlib.sha256(f"{seed}:{e}".encode()).digest()

    if val_fraction > 0 and len(episode_ids) >= 2 and "val" not in out.values():
        # Tiny selections would otherwise get no validation data at all.
        out[min(episode_ids, key=rank)] = "val"
    if episode_ids and "train" not in out.values():
        # ...or nothing to train on.
        out[max(episode_ids, key=rank)] = "train"
    return out


@dataclass(frozen=True)
class QualityGate:
    """The episode-quality verdict on the selected episodes, and what curation did with it."""

    suite: str
    checked: int
    failures: dict[str, list[str]]  # episode id -> the checks it fails
    include_failures: bool

    @property
    def left_out(self) -> dict[str, list[str]]:
        return {} if self.include_failures else self.failures

    def by_check(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for checks in self.failures.values():
            for check in checks:
                counts[check] = counts.get(check, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict:
        return {
            "suite": self.suite, "checked": self.checked, "include_failures": self.include_failures,
            "failed": len(self.failures), "left_out": len(self.left_out), "by_check": self.by_check(),
            "failures": [{"episode_id": e, "checks": c} for e, c in sorted(self.failures.items())],
        }


def quality_gate(selected: pa.Table, emb: Embodiment, *, include_failures: bool = False) -> QualityGate:
    """Judge the selected episodes with ``emb``'s episode-quality suite (GX).

    An episode fails if the suite fails it, or if standardize already marked it
    ``quality_ok = false`` (its ``quality_issues`` are named by the check they belong to).

    Raises:
        CurationError: the suite cannot judge these rows (a column it needs is missing).
    """
    try:
        verdict = validate_episodes(selected, emb)
    except QualityError as exc:
        raise CurationError(f"cannot judge the selected catalog episodes: {exc}") from None
    failures = {e: set(checks) for e, checks in verdict.failures_by_episode().items()}
    rows = selected.select(["episode_id", "quality_ok", "quality_issues"]).to_pylist()
    for row in rows:
        if row["quality_ok"] is False or row["quality_ok"] is None:
            issues = {ISSUE_CHECKS.get(i, i) for i in row["quality_issues"] or []}
            failures.setdefault(row["episode_id"], set()).update(issues or {"quality_ok"})
    return QualityGate(verdict.suite, len(rows), {e: sorted(c) for e, c in sorted(failures.items())},
                       include_failures)


@dataclass(frozen=True)
class BuiltDataset:
    name: str
    version: str
    episodes: int
    frames: int
    splits: dict[str, int]
    manifest: dict = field(repr=False)


def fixed_list_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list float column as a (rows, dim) float32 array, without Python objects."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)


def _hash_dir(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build_dataset(
    out_dir: Path,
    *,
    selected: pa.Table,
    load_frames: Callable[[str, str], pa.Table],
    spec: CurationSpec,
    emb: Embodiment,
    quarantine_records: list[quarantine.Record] | tuple = (),
) -> BuiltDataset:
    """Write the curated dataset into ``out_dir`` (an empty staging folder).

    Episodes failing ``emb``'s episode-quality suite are left out unless
    ``spec.include_quality_issues``; the manifest and the card say how many, which and why.

    Args:
        out_dir: where to write; the caller publishes it atomically at datasets/<name>/<version>/.
        selected: catalog rows chosen by :func:`select_episodes`.
        load_frames: (robot, day) -> that robot-day's standardized frames table.
        spec: the curation spec (recorded in the manifest).
        emb: the embodiment mapping the frames were standardized with; its tolerances judge quality.
        quarantine_records: the quarantine log (:func:`quarantine.read_records`); episodes under an
            active quarantine are left out unless ``spec.include_quarantined``. The state honoured
            is part of the version.
    """
    if selected.num_rows == 0:
        raise CurationError(f"curation spec {spec.name!r} selects no episodes: {spec.to_dict()}")
    held = dict(zip(selected["episode_id"].to_pylist(), quarantine.episode_quarantines(selected, quarantine_records),
                    strict=True))
    held = {e: q for e, q in held.items() if q}
    q_state = {**quarantine.state(quarantine_records), "include_quarantined": spec.include_quarantined,
               "matched": len(held), "left_out": 0 if spec.include_quarantined else len(held),
               "episodes": [{"episode_id": e, "quarantines": q} for e, q in sorted(held.items())]}
    if held and not spec.include_quarantined:
        selected = selected.filter(pc.invert(pc.is_in(selected["episode_id"], pa.array(sorted(held)))))
        if selected.num_rows == 0:
            raise CurationError(f"curation spec {spec.name!r}: every selected episode is quarantined "
                                f"({', '.join(q_state['records'])}); set include_quarantined to keep them")
    gate = quality_gate(selected, emb, include_failures=spec.include_quality_issues)
    if gate.left_out:
        selected = selected.filter(pc.invert(pc.is_in(selected["episode_id"], pa.array(sorted(gate.left_out)))))
    if selected.num_rows == 0:
        raise CurationError(
            f"curation spec {spec.name!r}: all {gate.checked} selected episodes fail the episode-quality suite "
            f"{gate.suite} ({gate.by_check()}); set include_quality_issues to keep them"
        )
    rows = selected.to_pylist()
    sides = split_episodes([r["episode_id"] for r in rows], val_fraction=spec.val_fraction, seed=spec.split_seed)
    # LeRobot splits are index ranges, so train episodes come first, then val.
    rows.sort(key=lambda r: (sides[r["episode_id"]] != "train", r["episode_id"]))
    tasks = sorted({r["task"] for r in rows})
    feature_keys = [f.key for f in emb.features]
    cache: dict[tuple[str, str], pa.Table] = {}
    columns: dict[str, list] = {k: [] for k in feature_keys}
    episode_index, frame_index, timestamp, task_index = [], [], [], []
    manifest_episodes = []
    for idx, row in enumerate(rows):
        part = (row["robot"], row["date"])
        if part not in cache:
            cache[part] = load_frames(*part)
        frames = cache[part].filter(pc.equal(cache[part]["episode_id"], row["episode_id"]))
        if frames.num_rows != row["num_frames"]:
            raise CurationError(
                f"episode {row['episode_id']}: catalog says {row['num_frames']} frames, "
                f"{layout.episodes_prefix(*part)} has {frames.num_rows}; re-materialize the catalog"
            )
        frames = frames.sort_by("frame_index")
        for key in feature_keys:
            columns[key].append(fixed_list_to_numpy(frames[key]))
        ts = frames["timestamp_ns"].to_numpy()
        n = len(ts)
        episode_index.append(np.full(n, idx, np.int64))
        frame_index.append(np.arange(n, dtype=np.int64))
        timestamp.append(((ts - ts[0]) / 1e9).astype(np.float32))
        task_index.append(np.full(n, tasks.index(row["task"]), np.int64))
        manifest_episodes.append({
            "episode_index": idx, "episode_id": row["episode_id"], "split": sides[row["episode_id"]],
            "robot": row["robot"], "date": row["date"], "task": row["task"], "outcome": row["outcome"],
            "num_frames": n, "start_ns": int(ts[0]), "end_ns": int(ts[-1]),
            "quality_failures": gate.failures.get(row["episode_id"], []),
            "quarantines": held.get(row["episode_id"], []),
            "raw_files": [{"key": k, "sha256": s} for k, s in zip(row["source_keys"], row["source_sha256"], strict=True)],
        })
    table = {}
    for key in feature_keys:
        arr = np.concatenate(columns[key])
        table[key] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), pa.float32()), arr.shape[1])
    table.update({
        "timestamp": pa.array(np.concatenate(timestamp)), "frame_index": pa.array(np.concatenate(frame_index)),
        "episode_index": pa.array(np.concatenate(episode_index)), "task_index": pa.array(np.concatenate(task_index)),
    })
    features = {f.key: FeatureSpec("float32", (f.dim,), list(f.names)) for f in emb.features}
    split_idx = {s: [m["episode_index"] for m in manifest_episodes if m["split"] == s] for s in ("train", "val")}
    write_lerobot_v3(
        out_dir, frames=pa.table(table), features=features, fps=emb.fps, robot_type=emb.robot_type,
        tasks=tasks, splits={k: v for k, v in split_idx.items() if v},
    )
    identity = json.dumps({"data": _hash_dir(out_dir), "spec": spec.to_dict(), "embodiment": emb.content_hash,
                           "quality_suite": gate.suite, "quarantine": q_state["hash"], "format": FORMAT_VERSION},
                          sort_keys=True)
    version = hashlib.sha256(identity.encode()).hexdigest()[:12]
    manifest = {
        "name": spec.name, "version": version, "format_version": FORMAT_VERSION,
        "layout": "lerobot-v3.0", "spec": spec.to_dict(),
        "embodiment": {"name": emb.name, "version": emb.version, "hash": emb.content_hash},
        "quality": gate.to_dict(),
        "quarantine": q_state,
        "episodes": manifest_episodes,
        "splits": {s: len(v) for s, v in split_idx.items()},
        "frames": int(sum(m["num_frames"] for m in manifest_episodes)),
        "raw_files": sorted({(f["key"], f["sha256"]) for m in manifest_episodes for f in m["raw_files"]}),
    }
    manifest["raw_files"] = [{"key": k, "sha256": s} for k, s in manifest["raw_files"]]
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (out_dir / "meta" / "embodiment.yaml").write_text(emb.source_text)
    (out_dir / CARD).write_text(dataset_card(manifest))
    return BuiltDataset(spec.name, version, len(rows), manifest["frames"], manifest["splits"], manifest)


def dataset_card(manifest: dict) -> str:
    robots = sorted({e["robot"] for e in manifest["episodes"]})
    days = sorted({e["date"] for e in manifest["episodes"]})
    outcomes: dict[str, int] = {}
    for e in manifest["episodes"]:
        outcomes[e["outcome"]] = outcomes.get(e["outcome"], 0) + 1
    return "\n".join([
        f"# Dataset `{manifest['name']}` version `{manifest['version']}`",
        "",
        "LeRobotDataset v3.0 layout (meta/info.json, meta/stats.json, meta/tasks.parquet, meta/episodes/, data/).",
        "",
        f"- episodes: {len(manifest['episodes'])} (train {manifest['splits'].get('train', 0)}, "
        f"val {manifest['splits'].get('val', 0)}), frames: {manifest['frames']}",
        f"- robots: {', '.join(robots)}",
        f"- days: {days[0]} .. {days[-1]}" if days else "- days: none",
        f"- outcomes: {json.dumps(outcomes, sort_keys=True)}",
        f"- embodiment mapping: {manifest['embodiment']['name']} v{manifest['embodiment']['version']} "
        f"({manifest['embodiment']['hash']}), copied to meta/embodiment.yaml",
        f"- raw files: {len(manifest['raw_files'])} (each with sha256 in manifest.json)",
        quality_line(manifest["quality"]),
        quarantine_line(manifest["quarantine"]),
        "",
        "## Curation spec",
        "",
        "```json",
        json.dumps(manifest["spec"], indent=2, sort_keys=True),
        "```",
        "",
    ])


def quality_line(quality: dict) -> str:
    """The card's line on what the episode-quality suite said and what curation did with it."""
    suite = f"episode-quality suite `{quality['suite']}`"
    if not quality["failed"]:
        return f"- quality: all {quality['checked']} selected episodes pass the {suite}"
    why = ", ".join(f"{check} {n}" for check, n in quality["by_check"].items())
    if quality["include_failures"]:
        return (f"- quality: {quality['failed']} of {quality['checked']} episodes fail the {suite} ({why}) and are "
                "included on request (include_quality_issues); see quality.failures in manifest.json")
    return (f"- quality: {quality['left_out']} of {quality['checked']} selected episodes left out, failing the {suite} "
            f"({why}); listed under quality.failures in manifest.json (include_quality_issues keeps them)")


def quarantine_line(q: dict) -> str:
    """The card's line on the quarantine state the dataset honoured."""
    if not q["records"]:
        return "- quarantine: none active when the dataset was built"
    what = f"{len(q['records'])} active quarantine(s) ({', '.join(q['records'])}, state {q['hash']})"
    if not q["matched"]:
        return f"- quarantine: {what}; none of them covers a selected episode"
    if q["include_quarantined"]:
        return f"- quarantine: {q['matched']} quarantined episodes INCLUDED on request (include_quarantined); {what}"
    return f"- quarantine: {q['left_out']} quarantined episodes left out; {what}"
