"""Materialization metadata the Dagster UI shows well: Dagster's own table keys (row count, column
schema), figures rounded to what they mean, and MLflow runs as links.

Helpers for the asset bodies; no definitions here.
"""

import math
from collections.abc import Mapping

import dagster as dg
import pyarrow as pa

from flywheel_pipelines.lib import markdown
from flywheel_pipelines.lib.ingest import IngestError
from flywheel_pipelines.lib.ingest.episodes import accounting_totals

SIGNIFICANT_DIGITS = 4


def rounded(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` to ``digits`` significant digits (a loss of 0.0123456 -> 0.01235, 2.3e-07 stays)."""
    if not math.isfinite(value) or value == 0:
        return value
    return float(f"{value:.{digits}g}")


def round_floats(metadata: Mapping[str, object], digits: int = SIGNIFICANT_DIGITS) -> dict[str, object]:
    """``metadata`` with every float (and every float in a dict value) rounded; the rest as is."""
    def one(v):
        if isinstance(v, float):
            return rounded(v, digits)
        if isinstance(v, dict):
            return {k: one(x) for k, x in v.items()}
        return v

    return {k: one(v) for k, v in metadata.items()}


def table_metadata(schema: pa.Schema, rows: int, *, partition: bool = False,
                   descriptions: Mapping[str, str] | None = None) -> dict[str, object]:
    """``dagster/row_count`` and ``dagster/column_schema`` for a table of ``schema`` with ``rows`` rows
    (plus ``dagster/partition_row_count`` for a partition's own table)."""
    descriptions = descriptions or {}
    columns = [dg.TableColumn(f.name, str(f.type), description=descriptions.get(f.name)) for f in schema]
    meta: dict[str, object] = {"dagster/row_count": dg.MetadataValue.int(rows),
                               "dagster/column_schema": dg.MetadataValue.table_schema(dg.TableSchema(columns))}
    if partition:
        meta["dagster/partition_row_count"] = dg.MetadataValue.int(rows)
    return meta


def lerobot_table_metadata(features: Mapping[str, Mapping], rows: int) -> dict[str, object]:
    """The same keys for a LeRobot dataset's frame table, from info.json's ``features``."""
    columns = [dg.TableColumn(name, f"{spec['dtype']}{list(spec['shape'])}",
                              description=", ".join(map(str, spec["names"])) if spec.get("names") else None)
               for name, spec in features.items()]
    return {"dagster/row_count": dg.MetadataValue.int(rows),
            "dagster/column_schema": dg.MetadataValue.table_schema(dg.TableSchema(columns))}


def ingest_failure(exc: IngestError) -> dg.Failure:
    """An ingest error as the step's failure, with the accounting (when there is one) as its metadata."""
    metadata = accounting_metadata(exc.accounting) if exc.accounting is not None else None
    return dg.Failure(description=str(exc), metadata=metadata)


def accounting_metadata(accounting: list[dict]) -> dict:
    """The accounting as asset metadata: totals and a per file and topic table."""
    totals = accounting_totals(accounting)
    rows = [(r["file"].rsplit("/", 1)[-1] or r["file"], r["topic"], r["encoding"], r["read"], r["in_episodes"],
             r["outside_episodes"], r["events"], ", ".join(f"{k}: {v}" for k, v in r["dropped"].items()),
             r["undecodable"], r["reason"] or "") for r in accounting]
    table = markdown.table(["file", "topic", "encoding", "read", "in episodes", "outside", "events", "dropped",
                            "undecodable", "reason"], rows)
    return {**{f"messages_{k}": v for k, v in totals.items()}, "accounting": dg.MetadataValue.md(table)}
