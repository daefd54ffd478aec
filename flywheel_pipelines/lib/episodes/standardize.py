"""Decode a robot-day's logs, segment them into episodes and align every stream onto one clock.

Time is int64 nanoseconds from the log to the Parquet file: float seconds would make frames of
a 250 Hz stream collide after a few hours of epoch time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from flywheel_pipelines.lib.episodes.control import POLICY_EVENT, episode_control
from flywheel_pipelines.lib.episodes.embodiment import Embodiment, FeatureMapping, MappingError
from flywheel_pipelines.lib.rosbag.columnar import TopicColumns, TopicRequest, join_arrays, read_columns
from flywheel_pipelines.lib.rosbag.report import ReadStats

_NS_PER_MS = 1_000_000


class StandardizeError(ValueError):
    """A log that cannot be standardized with the given mapping (names the file and problem)."""


@dataclass
class Stream:
    """One topic's samples on the mapping's clock, in time order."""

    topic: str
    stamps: np.ndarray  # int64 ns
    values: np.ndarray  # float64 (n, dim)
    # Stamps at which the stream stepped backwards (in log-time order): each episode counts its own.
    backwards: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def backwards_between(self, start_ns: int, end_ns: int) -> int:
        return int(np.count_nonzero((self.backwards >= start_ns) & (self.backwards <= end_ns)))


@dataclass(frozen=True)
class Event:
    t_ns: int
    payload: dict


@dataclass(frozen=True)
class SourceFile:
    key: str
    path: Path
    sha256: str


@dataclass
class EpisodeSpan:
    """One episode as delimited by the event topic."""

    episode_id: str
    start_ns: int
    end_ns: int
    task: str
    outcome: str
    operator: str | None = None
    tags: list[str] = field(default_factory=list)
    interventions: list[tuple[int, int]] = field(default_factory=list)
    policy: dict | None = None  # the episode's ``policy`` event (lib/episodes/control.py), if any


@dataclass(frozen=True)
class Standardized:
    """The standardized frames and the episode table of one robot-day.

    ``accounting`` says where every message of every mapped topic went (see :func:`account`);
    ``empty_cause`` is set when the mapped topics held messages but no frame came out, and
    names each file, topic, encoding and cause.
    """

    frames: pa.Table
    episodes: pa.Table
    undecodable: int
    accounting: list[dict] = field(default_factory=list)
    empty_cause: str | None = None


def _parse_event(text: str) -> dict:
    try:
        payload = json.loads(text)
        if isinstance(payload, dict) and "event" in payload:
            return payload
    except json.JSONDecodeError:
        pass
    return {"event": text.strip()}


@dataclass
class TopicRead:
    """What one file gave for one mapped topic: messages read, undecodable ones (and why), and the
    decoded messages' times on the mapping's clock (to place them in or outside episodes)."""

    file: str
    topic: str
    encoding: str
    read: int
    undecodable: int
    reason: str | None
    stamps: np.ndarray


@dataclass(frozen=True)
class Extracted:
    streams: dict[str, Stream]
    events: list[Event]
    file_ranges: dict[str, tuple[int, int]]  # key -> (first, last) stamp read from that file
    undecodable: int
    reads: list[TopicRead] = field(default_factory=list)


def _requests(emb: Embodiment) -> dict[str, TopicRequest]:
    numeric: dict[str, list[str]] = {}
    names: set[str] = set()
    for feature in emb.features:
        paths = numeric.setdefault(feature.topic, [])
        paths.extend(f for f in feature.fields if f not in paths)
        if feature.joint_names is not None:
            names.add(feature.topic)
    stamp = emb.clock == "header"
    requests = {t: TopicRequest(tuple(p), ("name",) if t in names else (), stamp) for t, p in numeric.items()}
    for image in emb.images:
        requests.setdefault(image.topic, TopicRequest((), (), stamp))
    if emb.events_topic:
        requests[emb.events_topic] = TopicRequest((), ("data",), stamp)
    return requests


def _topic_values(columns: TopicColumns, features: Sequence[FeatureMapping]) -> np.ndarray:
    """The (n, sum of dims) values of the features drawn from one topic, filled in place.

    JointState-style arrays are reordered by joint name; a field with fewer values than the
    feature's names leaves NaN; more values than names is a MappingError naming the feature.
    """
    n = len(columns)
    out = np.full((n, sum(f.dim for f in features)), np.nan)
    at = 0
    for feature in features:
        col = at
        for path in feature.fields:
            values = columns.numeric[path]
            width = len(feature.joint_names) if feature.joint_names is not None else values.shape[1]
            if col + width > at + feature.dim:  # the names do not cover every value: never drop one in silence
                raise MappingError(f"feature {feature.key!r} (topic {feature.topic}): fields {', '.join(feature.fields)} "
                                   f"give {_field_widths(columns, feature)} values per message but the mapping names "
                                   f"{feature.dim} ({', '.join(feature.names)})")
            width = max(0, min(width, at + feature.dim - col))
            if width:
                target = out[:, col : col + width]
                if feature.joint_names is not None:
                    _by_joint_name(columns, values, feature.joint_names[:width], target)
                else:
                    target[:] = values[:, :width]
            col += width
        at += feature.dim
    return out


def _field_widths(columns: TopicColumns, feature: FeatureMapping) -> str:
    widths = [len(feature.joint_names) if feature.joint_names is not None else columns.numeric[p].shape[1]
              for p in feature.fields]
    return f"{sum(widths)} (" + " + ".join(f"{p}: {w}" for p, w in zip(feature.fields, widths, strict=True)) + ")"


def _by_joint_name(columns: TopicColumns, values: np.ndarray, joints: tuple[str, ...], out: np.ndarray) -> None:
    """Writes ``values``' columns into ``out`` in the mapping's joint order (NaN stays for a joint
    the message does not carry).

    Done once per message layout (a stream almost always keeps its names), per message only for
    messages decoded on their own.
    """

    def order(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        index = {name: i for i, name in enumerate(names) if i < values.shape[1]}
        pairs = [(k, index[j]) for k, j in enumerate(joints) if j in index]
        return np.array([k for k, _ in pairs], np.int64), np.array([i for _, i in pairs], np.int64)

    layouts = np.unique(columns.layout).tolist()
    for layout in layouts:
        if layout >= 0:
            dst, src = order(columns.text_of_layout[layout]["name"])
            if len(layouts) == 1:
                out[:, dst] = values[:, src]
            else:
                rows = np.flatnonzero(columns.layout == layout)
                out[np.ix_(rows, dst)] = values[np.ix_(rows, src)]
        else:
            names = columns.text["name"]
            for r in np.flatnonzero(columns.layout == layout).tolist():
                dst, src = order(names[r])
                out[r, dst] = values[r, src]


def _clock(columns: TopicColumns, clock: str) -> np.ndarray:
    if clock == "header":
        if columns.stamp is not None:
            return columns.stamp
        # Messages without a header (events, Float64MultiArray commands) carry the send time.
        return np.where(columns.publish_time > 0, columns.publish_time, columns.log_time)
    return columns.log_time


def _order(t: np.ndarray) -> np.ndarray | None:
    """The stable sort order of ``t``, or None when it is sorted already (no copy needed)."""
    return None if len(t) < 2 or bool((t[1:] >= t[:-1]).all()) else np.argsort(t, kind="stable")


def extract_streams(files: Sequence[SourceFile], emb: Embodiment) -> Extracted:
    """Decode the mapped topics and the event topic of all files, on the mapping's clock."""
    by_topic: dict[str, list[FeatureMapping]] = {}
    for feature in emb.features:
        by_topic.setdefault(feature.topic, []).append(feature)
    for image in emb.images:
        by_topic.setdefault(image.topic, [])
    requests = _requests(emb)
    stamps: dict[str, list[np.ndarray]] = {t: [] for t in by_topic}
    values: dict[str, list[np.ndarray]] = {t: [] for t in by_topic}
    events: list[Event] = []
    undecodable = 0
    file_ranges: dict[str, tuple[int, int]] = {}
    reads: list[TopicRead] = []
    for source in files:
        stats = ReadStats(source=source.key)
        columns = read_columns(source.path, requests, stats=stats)
        undecodable += stats.undecodable
        for topic, count in stats.read_by_topic.items():
            reads.append(TopicRead(source.key, topic, stats.encoding_by_topic.get(topic, "?"), count,
                                   stats.undecodable_by_topic.get(topic, 0), stats.decode_error_by_topic.get(topic),
                                   np.zeros(0, np.int64)))
        by_topic_read = {r.topic: r for r in reads if r.file == source.key}
        lo, hi = None, None
        for topic in list(columns):
            cols = columns.pop(topic)  # freed topic by topic: a long log's columns are large
            if not len(cols):
                continue
            # Log-time order first, so that "stamps going backwards" means what the robot sent.
            order = _order(cols.log_time)
            t = _clock(cols, emb.clock)
            t = t if order is None else t[order]
            if topic in by_topic_read:
                by_topic_read[topic].stamps = t
            lo = int(t.min()) if lo is None else min(lo, int(t.min()))
            hi = int(t.max()) if hi is None else max(hi, int(t.max()))
            if topic == emb.events_topic:
                data = cols.text["data"]
                index = range(len(t)) if order is None else order.tolist()
                events.extend(Event(int(ti), _parse_event(str(data[i]))) for ti, i in zip(t, index, strict=True))
                continue
            # A topic feeding several features is decoded once with all their fields.
            row = _topic_values(cols, by_topic[topic])
            del cols
            stamps[topic].append(t)
            values[topic].append(row if order is None else row[order])
        if lo is not None:
            file_ranges[source.key] = (lo, hi)
    streams = {}
    for topic in by_topic:
        width = sum(f.dim for f in by_topic[topic])
        st = join_arrays(stamps.pop(topic)) if stamps[topic] else np.zeros(0, np.int64)
        vals = join_arrays(values.pop(topic)) if values[topic] else np.zeros((0, width))
        back = st[1:][np.diff(st) < 0] if len(st) > 1 else np.zeros(0, np.int64)
        order = _order(st)
        streams[topic] = Stream(topic, st if order is None else st[order], vals if order is None else vals[order], back)
    events.sort(key=lambda e: e.t_ns)
    return Extracted(streams, events, file_ranges, undecodable, reads)


def segment(events: Sequence[Event], *, default_task: str, id_prefix: str) -> list[EpisodeSpan]:
    """Cut episodes at episode_start / episode_end events.

    An episode that never ends (a truncated log, a crashed recorder) is kept with outcome
    ``unknown`` and ends at its last event, so it is visible in the catalog and curated out.
    """
    spans: list[EpisodeSpan] = []
    current: EpisodeSpan | None = None
    open_intervention: int | None = None

    def close(end_ns: int, outcome: str) -> None:
        nonlocal current, open_intervention
        if current is None:
            return
        if open_intervention is not None:
            current.interventions.append((open_intervention, end_ns))
            open_intervention = None
        current.end_ns, current.outcome = end_ns, outcome
        spans.append(current)
        current = None

    for ev in events:
        kind = ev.payload.get("event")
        if kind == "episode_start":
            if current is not None:
                current.tags.append("aborted")
                close(ev.t_ns, "unknown")
            episode_id = str(ev.payload.get("episode_id") or f"{id_prefix}-{len(spans):03d}")
            current = EpisodeSpan(episode_id, ev.t_ns, ev.t_ns, str(ev.payload.get("task") or default_task),
                                  "unknown", operator=ev.payload.get("operator"))
        elif current is None:
            continue
        elif kind == "episode_end":
            close(ev.t_ns, str(ev.payload.get("outcome") or "unknown"))
        elif kind == "intervention_start":
            open_intervention = ev.t_ns
        elif kind == "intervention_end" and open_intervention is not None:
            current.interventions.append((open_intervention, ev.t_ns))
            open_intervention = None
        elif kind == POLICY_EVENT:
            current.policy = dict(ev.payload)
        elif kind == "tag" and ev.payload.get("tag"):
            current.tags.append(str(ev.payload["tag"]))
    if current is not None:
        current.tags.append("truncated")
        close(max(current.start_ns, events[-1].t_ns), "unknown")
    # A robot whose episode counter restarted (a reboot) reuses ids: keep every episode, uniquely.
    seen: dict[str, int] = {}
    for span in spans:
        n = seen.get(span.episode_id, 0)
        seen[span.episode_id] = n + 1
        if n:
            span.episode_id = f"{span.episode_id}~{n + 1}"
            span.tags.append("duplicate_id")
    return spans


def _pick(stamps: np.ndarray, grid: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For hold / nearest: the sample index at each grid time, the skew (ns) and a validity mask."""
    n = len(stamps)
    right = np.searchsorted(stamps, grid, side="right")
    prev = right - 1
    if rule == "hold":
        valid = prev >= 0
        idx = np.clip(prev, 0, n - 1)
        return idx, np.where(valid, grid - stamps[idx], 0), valid
    nxt = np.clip(right, 0, n - 1)
    prev_c = np.clip(prev, 0, n - 1)
    d_prev = np.where(prev >= 0, grid - stamps[prev_c], np.iinfo(np.int64).max)
    d_next = np.where(right < n, stamps[nxt] - grid, np.iinfo(np.int64).max)
    return np.where(d_prev <= d_next, prev_c, nxt), np.minimum(d_prev, d_next), np.ones(len(grid), bool)


def _sample(stream: Stream, grid: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values at grid times, the per-frame skew (ns) and a validity mask."""
    st, vals = stream.stamps, stream.values
    n = len(st)
    if n == 0:
        return np.full((len(grid), vals.shape[1]), np.nan), np.zeros(len(grid), np.int64), np.zeros(len(grid), bool)
    if rule in ("hold", "nearest"):
        idx, skew, valid = _pick(st, grid, rule)
        return vals[idx], skew, valid
    # linear: interpolate between the bracketing samples; outside them, hold the edge.
    right = np.searchsorted(st, grid, side="right")
    prev = right - 1
    nxt = np.clip(right, 0, n - 1)
    prev_c = np.clip(prev, 0, n - 1)
    d_prev = np.where(prev >= 0, grid - st[prev_c], np.iinfo(np.int64).max)
    d_next = np.where(right < n, st[nxt] - grid, np.iinfo(np.int64).max)
    span = (st[nxt] - st[prev_c]).astype(np.float64)
    w = np.where(span > 0, (grid - st[prev_c]) / np.where(span > 0, span, 1), 0.0)
    w = np.clip(w, 0.0, 1.0)[:, None]
    out = vals[prev_c] * (1 - w) + vals[nxt] * w
    return out, np.minimum(d_prev, d_next), np.ones(len(grid), bool)


def _stream_quality(stream: Stream, start: int, end: int) -> dict:
    lo, hi = np.searchsorted(stream.stamps, [start, end], side="left")
    st = stream.stamps[lo:hi]
    if len(st) < 2:
        return {"count": len(st), "rate_hz": 0.0, "jitter_ms": 0.0, "max_gap_ms": 0.0}
    d = np.diff(st)
    return {
        "count": len(st),
        "rate_hz": float((len(st) - 1) / ((st[-1] - st[0]) / 1e9)),
        "jitter_ms": float(np.std(d) / _NS_PER_MS),
        "max_gap_ms": float(d.max() / _NS_PER_MS),
    }


def align_episode(span: EpisodeSpan, streams: dict[str, Stream], emb: Embodiment) -> tuple[dict, dict]:
    """Frames of one episode on a uniform ``fps`` grid, and its quality figures."""
    period = 1_000_000_000 // emb.fps
    action = emb.feature("action")
    anchor, last = span.start_ns, span.end_ns
    if emb.frame_anchor == "action":
        a = streams[action.topic].stamps
        inside = a[(a >= span.start_ns) & (a <= span.end_ns)]
        if len(inside):
            anchor, last = int(inside[0]), int(inside[-1])
    grid = np.arange(anchor, last + 1, period, dtype=np.int64)
    columns: dict[str, np.ndarray] = {}
    valid = np.ones(len(grid), bool)
    max_skew = np.zeros(len(grid), np.int64)
    quality = {"streams": {}, "skew_violations": 0}
    skew_ok = True
    offsets: dict[str, int] = {}
    for feature in emb.features:
        stream = streams[feature.topic]
        off = offsets.get(feature.topic, 0)
        offsets[feature.topic] = off + feature.dim
        sub = Stream(stream.topic, stream.stamps, stream.values[:, off : off + feature.dim])
        vals, skew, ok = _sample(sub, grid, feature.rule)
        columns[feature.key] = vals.astype(np.float32)
        valid &= ok
        tol = emb.skew_tolerance_ns(feature)
        q = _stream_quality(stream, span.start_ns, span.end_ns)
        q["max_skew_ms"] = float(skew[ok].max() / _NS_PER_MS) if ok.any() else 0.0
        q["non_monotonic"] = stream.backwards_between(span.start_ns, span.end_ns)
        quality["streams"][feature.key] = q
        violations = int(np.sum(skew[ok] > tol))
        quality["skew_violations"] += violations
        skew_ok &= violations == 0
        max_skew = np.maximum(max_skew, np.where(feature.max_skew_ms is None, skew, 0))
    for image in emb.images:
        stream = streams[image.topic]
        q = _stream_quality(stream, span.start_ns, span.end_ns)
        if len(stream.stamps):
            idx, skew, ok = _pick(stream.stamps, grid, image.rule)
            # The frame references the raw image message by its stamp; pixels stay in the raw log.
            columns[f"{image.key}.stamp_ns"] = np.where(ok, stream.stamps[idx], -1)
        else:
            skew, ok = np.zeros(len(grid), np.int64), np.zeros(len(grid), bool)
            columns[f"{image.key}.stamp_ns"] = np.full(len(grid), -1, np.int64)
        valid &= ok
        q["max_skew_ms"] = float(skew[ok].max() / _NS_PER_MS) if ok.any() else 0.0
        q["non_monotonic"] = stream.backwards_between(span.start_ns, span.end_ns)
        quality["streams"][image.key] = q
        violations = int(np.sum(skew[ok] > emb.skew_tolerance_ns(image)))
        quality["skew_violations"] += violations
        skew_ok &= violations == 0
    grid, max_skew = grid[valid], max_skew[valid]
    columns = {k: v[valid] for k, v in columns.items()}
    inter = np.zeros(len(grid), bool)
    for s, e in span.interventions:
        inter |= (grid >= s) & (grid <= e)
    frames = {"timestamp_ns": grid, "frame_index": np.arange(len(grid), dtype=np.int64),
              "intervention": inter, "max_skew_ns": max_skew, **columns}
    nan_count = int(sum(np.isnan(v).sum() for v in columns.values() if v.dtype.kind == "f"))
    state_topic = emb.features[0].key
    loose = {f.key for f in emb.features if f.max_skew_ms is not None} | {i.key for i in emb.images if i.max_skew_ms is not None}
    gap_ms = max((q["max_gap_ms"] for k, q in quality["streams"].items() if k not in loose), default=0.0)
    issues = []
    if not skew_ok:
        issues.append("sync_skew")
    if gap_ms > emb.max_gap_ms:
        issues.append("gap")
    if nan_count:
        issues.append("nan")
    if any(q["non_monotonic"] for q in quality["streams"].values()):
        issues.append("non_monotonic")
    if len(grid) < 2:
        issues.append("too_short")
    quality.update(
        max_skew_ms=float(max_skew.max() / _NS_PER_MS) if len(max_skew) else 0.0,
        max_gap_ms=gap_ms,
        nan_count=nan_count,
        state_rate_hz=quality["streams"][state_topic]["rate_hz"],
        state_jitter_ms=quality["streams"][state_topic]["jitter_ms"],
        issues=issues,
    )
    return frames, quality


def standardize(files: Sequence[SourceFile], emb: Embodiment, *, robot: str, day: str) -> Standardized:
    """Standardize every readable file of one robot-day into frames + an episode table."""
    ex = extract_streams(files, emb)
    streams = ex.streams
    prefix = f"{robot}-{day.replace('-', '')}"
    if emb.events_topic is None:
        # No event topic: each recording (file or bag) is one episode.
        ranges = sorted(ex.file_ranges.values())
        spans = [EpisodeSpan(f"{prefix}-{k:03d}", lo, hi, emb.default_task, "unknown", tags=["no_events"])
                 for k, (lo, hi) in enumerate(ranges)]
    else:
        spans = segment(ex.events, default_task=emb.default_task, id_prefix=prefix)
    frame_tables, rows = [], []
    for span in spans:
        frames, quality = align_episode(span, streams, emb)
        n = len(frames["timestamp_ns"])
        # Which raw files an episode came from is lineage: decided by each file's own time range.
        sources = [f for f in files if f.key in ex.file_ranges
                   and ex.file_ranges[f.key][0] <= span.end_ns and ex.file_ranges[f.key][1] >= span.start_ns]
        tbl = {"episode_id": pa.array([span.episode_id] * n, pa.string())}
        for key, arr in frames.items():
            if arr.ndim == 2:
                tbl[key] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), pa.float32()), arr.shape[1])
            else:
                tbl[key] = pa.array(arr)
        frame_tables.append(pa.table(tbl))
        rows.append({
            "episode_id": span.episode_id, "robot": robot, "date": day, "task": span.task,
            "outcome": span.outcome, "operator": span.operator, "tags": sorted(set(span.tags)),
            "intervention": bool(span.interventions), "start_ns": span.start_ns, "end_ns": span.end_ns,
            "duration_s": (span.end_ns - span.start_ns) / 1e9, "num_frames": n,
            "source_keys": [f.key for f in sources], "source_sha256": [f.sha256 for f in sources],
            "embodiment": emb.name, "embodiment_version": emb.version,
            "max_skew_ms": quality["max_skew_ms"], "max_gap_ms": quality["max_gap_ms"],
            "state_rate_hz": quality["state_rate_hz"], "state_jitter_ms": quality["state_jitter_ms"],
            "nan_count": quality["nan_count"], "quality_issues": quality["issues"],
            "quality_ok": not quality["issues"], "stream_quality": json.dumps(quality["streams"], sort_keys=True),
            **episode_control(policy=span.policy, operator=span.operator, interventions=span.interventions),
        })
    frames_table = pa.concat_tables(frame_tables) if frame_tables else empty_frames(emb)
    counts = [r["num_frames"] for r in rows]
    accounting = account(ex, spans, counts, emb)
    cause = empty_cause(ex, spans, counts, accounting, emb, robot=robot, day=day)
    return Standardized(frames_table, pa.Table.from_pylist(rows, schema=EPISODE_SCHEMA), ex.undecodable,
                        accounting, cause)


def account(ex: Extracted, spans: Sequence[EpisodeSpan], frame_counts: Sequence[int], emb: Embodiment) -> list[dict]:
    """Where every message of every mapped topic went, per file and topic.

    Each message read is exactly one of: ``undecodable`` (with the first ``reason``),
    ``events`` (the event topic: consumed to cut episodes), ``in_episodes`` (decoded, its time
    inside an episode that has frames), ``dropped`` by a named rule (``episode_without_frames``:
    inside an episode too short for one frame at the mapping's fps), or ``outside_episodes``.
    ``read`` is the manifest's count for that file and topic (the same walk reads both).
    """
    kept = [(s.start_ns, s.end_ns) for s, n in zip(spans, frame_counts, strict=True) if n > 0]
    empty = [(s.start_ns, s.end_ns) for s, n in zip(spans, frame_counts, strict=True) if n == 0]
    rows = []
    for r in ex.reads:
        decoded = r.read - r.undecodable
        row = {"file": r.file, "topic": r.topic, "encoding": r.encoding, "read": r.read,
               "undecodable": r.undecodable, "reason": r.reason, "events": 0, "in_episodes": 0,
               "outside_episodes": 0, "dropped": {}}
        if r.topic == emb.events_topic:
            row["events"] = decoded
        else:
            inside = _within(r.stamps, kept)
            dropped = _within(r.stamps, empty) & ~inside
            row["in_episodes"] = int(inside.sum())
            if dropped.any():
                row["dropped"] = {"episode_without_frames": int(dropped.sum())}
            # Messages whose time could not be placed (none today) would show as a mismatch here.
            row["outside_episodes"] = decoded - row["in_episodes"] - int(dropped.sum())
        rows.append(row)
    return rows


def _within(stamps: np.ndarray, ranges: Sequence[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(len(stamps), bool)
    for lo, hi in ranges:
        mask |= (stamps >= lo) & (stamps <= hi)
    return mask


def empty_cause(ex: Extracted, spans: Sequence[EpisodeSpan], frame_counts: Sequence[int], accounting: list[dict],
                emb: Embodiment, *, robot: str, day: str) -> str | None:
    """Why a robot-day whose mapped topics hold messages yielded no frame (None when it yielded
    frames, or when the mapped topics hold nothing). Names each file, topic, encoding and cause."""
    if sum(frame_counts) > 0 or not any(row["read"] for row in accounting):
        return None
    causes: list[str] = []
    feature_topics = list(dict.fromkeys([f.topic for f in emb.features] + [i.topic for i in emb.images]))
    for topic in feature_topics:
        rows = [row for row in accounting if row["topic"] == topic]
        decoded = sum(row["read"] - row["undecodable"] for row in rows)
        if decoded:
            continue
        if not rows:
            causes.append(f"mapped topic {topic} has no message in any file (every frame needs each mapped stream)")
        for row in rows:
            causes.append(f"{row['file']}: {topic} ({row['encoding']}): all {row['read']} messages undecodable: "
                          f"{row['reason']}")
    if emb.events_topic is not None and not spans:
        rows = [row for row in accounting if row["topic"] == emb.events_topic]
        if not rows:
            causes.append(f"event topic {emb.events_topic} has no message in any file, so no episode starts")
        for row in rows:
            if row["undecodable"] == row["read"]:
                causes.append(f"{row['file']}: event topic {emb.events_topic} ({row['encoding']}): all {row['read']} "
                              f"messages undecodable: {row['reason']}")
            else:
                causes.append(f"{row['file']}: event topic {emb.events_topic} ({row['encoding']}): {row['events']} "
                              "events, none an episode_start")
    if not causes and spans:
        inside = sum(row["in_episodes"] for row in accounting)
        dropped = sum(sum(row["dropped"].values()) for row in accounting)
        outside = [row for row in accounting if row["outside_episodes"]]
        causes.append(f"{len(spans)} episodes, none with a frame at {emb.fps} fps ({inside + dropped} messages inside "
                      "them" + "".join(f"; {r['file']}: {r['topic']} ({r['encoding']}): {r['outside_episodes']} outside"
                                        for r in outside) + ")")
    if not causes:
        causes.append("no frame could be aligned: " + "; ".join(
            f"{r['file']}: {r['topic']} ({r['encoding']}): {r['read']} read" for r in accounting))
    total = sum(row["read"] for row in accounting)
    return (f"robot {robot} on {day}: the mapped topics hold {total} messages but no frame came out "
            f"(mapping {emb.name} v{emb.version}): " + "; ".join(causes))


EPISODE_SCHEMA = pa.schema([
    ("episode_id", pa.string()), ("robot", pa.string()), ("date", pa.string()), ("task", pa.string()),
    ("outcome", pa.string()), ("operator", pa.string()), ("tags", pa.list_(pa.string())),
    ("intervention", pa.bool_()), ("start_ns", pa.int64()), ("end_ns", pa.int64()),
    ("duration_s", pa.float64()), ("num_frames", pa.int64()), ("source_keys", pa.list_(pa.string())),
    ("source_sha256", pa.list_(pa.string())), ("embodiment", pa.string()), ("embodiment_version", pa.int64()),
    ("max_skew_ms", pa.float64()), ("max_gap_ms", pa.float64()), ("state_rate_hz", pa.float64()),
    ("state_jitter_ms", pa.float64()), ("nan_count", pa.int64()), ("quality_issues", pa.list_(pa.string())),
    ("quality_ok", pa.bool_()), ("stream_quality", pa.string()),
    # Control (lib/episodes/control.py): who drove, which release, how often a person took over.
    ("control_mode", pa.string()), ("policy_name", pa.string()), ("policy_version", pa.string()),
    ("policy_onnx_sha256", pa.string()), ("intervention_count", pa.int64()), ("intervention_s", pa.float64()),
])


def empty_frames(emb: Embodiment) -> pa.Table:
    fields = [("episode_id", pa.string()), ("timestamp_ns", pa.int64()), ("frame_index", pa.int64()),
              ("intervention", pa.bool_()), ("max_skew_ns", pa.int64())]
    fields += [(f.key, pa.list_(pa.float32(), f.dim)) for f in emb.features]
    fields += [(f"{i.key}.stamp_ns", pa.int64()) for i in emb.images]
    return pa.schema(fields).empty_table()
