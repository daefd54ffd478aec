"""Where the embedded default keeps its state: one FLYWHEEL_HOME folder.

The demo, `dagster dev` and the CLI must agree on the same lake, Dagster home and MLflow
store without the user exporting anything, so every default is derived from one folder:
``$FLYWHEEL_HOME`` if set, else ``.flywheel/`` in the checkout (found by walking up from the
package to the pyproject.toml of an editable install), else ``.flywheel/`` in the cwd.
Production sets FLYWHEEL_LAKE / FLYWHEEL_MLFLOW_URI / DAGSTER_HOME explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path


def _checkout_root() -> Path | None:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "flywheel_pipelines").is_dir():
            return parent
    return None


def flywheel_home() -> Path:
    """The folder holding the default lake, Dagster home and MLflow store."""
    env = os.environ.get("FLYWHEEL_HOME")
    if env:
        return Path(env).expanduser().resolve()
    root = _checkout_root()
    return ((root or Path.cwd()) / ".flywheel").resolve()


def default_lake_root() -> str:
    """The lake root: ``FLYWHEEL_LAKE`` (a folder or s3://bucket/prefix) or ``<home>/lake``."""
    return os.environ.get("FLYWHEEL_LAKE") or str(flywheel_home() / "lake")


def default_dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or flywheel_home() / "dagster_home")


def default_mlflow_uri() -> str:
    """MLflow tracking + registry store: ``FLYWHEEL_MLFLOW_URI`` or a SQLite file in home."""
    env = os.environ.get("FLYWHEEL_MLFLOW_URI")
    if env:
        return env
    return f"sqlite:///{flywheel_home() / 'mlflow' / 'mlflow.db'}"


def default_mlflow_artifacts() -> str:
    return os.environ.get("FLYWHEEL_MLFLOW_ARTIFACTS") or str(flywheel_home() / "mlflow" / "artifacts")


# A chunk that decompresses to more than this is refused (a decompression bomb: a 33 KB file can
# declare a 1 GiB zstd chunk). MCAP writers use chunks of a few MiB; rosbag2's default is 768 KiB.
DEFAULT_MAX_CHUNK_BYTES = 512 * 2**20


def max_chunk_bytes() -> int:
    """The per-chunk decompression limit: ``FLYWHEEL_MAX_CHUNK_BYTES`` (bytes) or 512 MiB."""
    value = os.environ.get("FLYWHEEL_MAX_CHUNK_BYTES", "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else DEFAULT_MAX_CHUNK_BYTES
