"""Ingest as plain functions over the lake (no Dagster here): raw logs -> manifest -> episodes,
cold-day re-ingest and month compaction, and the upload sensor's planners (listings in, run plans out).

``defs/ingest``, ``defs/episodes`` and ``defs/archive`` map these results onto assets, checks,
run requests and metadata; an :class:`IngestError` becomes a ``dg.Failure`` there.
"""

from __future__ import annotations


class IngestError(RuntimeError):
    """A robot-day that cannot be ingested, with a message naming the files and the cause.

    ``accounting`` (when set) is the per file x topic accounting of what was read, for the
    failure's metadata.
    """

    def __init__(self, message: str, *, accounting: list[dict] | None = None):
        super().__init__(message)
        self.accounting = accounting
