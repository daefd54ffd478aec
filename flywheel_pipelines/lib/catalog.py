"""The episode catalog: every episode of the fleet in one table, searchable."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel_pipelines.lib import layout
from flywheel_pipelines.lib.episodes.standardize import EPISODE_SCHEMA

CATALOG_KEY = layout.CATALOG_KEY
# The outcomes an episode_end event gives (lib/sim/fleet.py) and the one standardization falls back
# to; a real log's events may carry others, which the catalog then holds too.
KNOWN_OUTCOMES = ("success", "failure", "unknown")


def conform(table: pa.Table) -> pa.Table:
    """An episode table written before the control columns existed, given them: ``teleoperated``
    when an operator is named, ``unknown`` otherwise; no release; one intervention per flagged
    episode, of unknown length (0 s)."""
    missing = [f for f in EPISODE_SCHEMA if f.name not in table.column_names]
    if not missing:
        return table
    operators = table.column("operator").to_pylist() if "operator" in table.column_names else [None] * table.num_rows
    flagged = table.column("intervention").to_pylist() if "intervention" in table.column_names else [False] * table.num_rows
    fill = {"control_mode": pa.array(["teleoperated" if o else "unknown" for o in operators], pa.string()),
            "intervention_count": pa.array([1 if f else 0 for f in flagged], pa.int64()),
            "intervention_s": pa.array([0.0] * table.num_rows, pa.float64())}
    for f in missing:
        table = table.append_column(f, fill.get(f.name, pa.nulls(table.num_rows, f.type)))
    return table.select(EPISODE_SCHEMA.names)


def build_catalog(tables: Iterable[pa.Table]) -> pa.Table:
    """Concatenate robot-day episode tables into one, ordered by robot, day and start time."""
    parts = [conform(t).cast(EPISODE_SCHEMA) for t in tables if t.num_rows]
    table = pa.concat_tables(parts) if parts else EPISODE_SCHEMA.empty_table()
    if table.num_rows:
        table = table.sort_by([("robot", "ascending"), ("date", "ascending"), ("start_ns", "ascending")])
    ids = table.column("episode_id").to_pylist()
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"episode ids are not unique across the fleet: {dupes}")
    return table


def catalog_hash(table: pa.Table) -> str:
    """A content hash of the catalog rows (Arrow IPC bytes: independent of Parquet encoding)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:12]


@dataclass(frozen=True)
class EpisodeQuery:
    """A catalog search; every field is optional and they combine with AND."""

    robots: tuple[str, ...] = ()
    date_from: str | None = None
    date_to: str | None = None
    tasks: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # an episode matches if it carries every tag
    intervention: bool | None = None
    quality_ok: bool | None = None


def search(table: pa.Table, query: EpisodeQuery) -> pa.Table:
    """The catalog rows matching ``query``."""
    mask = np.ones(table.num_rows, dtype=bool)

    def keep(condition) -> None:
        nonlocal mask
        mask &= np.asarray(condition.to_numpy(zero_copy_only=False), dtype=bool)

    if query.robots:
        keep(pc.is_in(table["robot"], pa.array(query.robots)))
    if query.date_from:
        keep(pc.greater_equal(table["date"], query.date_from))
    if query.date_to:
        keep(pc.less_equal(table["date"], query.date_to))
    if query.tasks:
        keep(pc.is_in(table["task"], pa.array(query.tasks)))
    if query.outcomes:
        keep(pc.is_in(table["outcome"], pa.array(query.outcomes)))
    if query.intervention is not None:
        keep(pc.equal(table["intervention"], query.intervention))
    if query.quality_ok is not None:
        keep(pc.equal(table["quality_ok"], query.quality_ok))
    if query.tags:
        wanted = set(query.tags)
        mask &= np.array([wanted <= set(t or []) for t in table["tags"].to_pylist()], dtype=bool)
    return table.filter(pa.array(mask))
