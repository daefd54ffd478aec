"""The code version recorded with every trained policy and release."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def code_version() -> dict:
    """Package version, a hash of the package's source files, and the git commit if known."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*")):
        if path.suffix in (".py", ".yaml", ".xml") and "__pycache__" not in path.parts:
            digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        version = metadata.version("flywheel_pipelines")
    except metadata.PackageNotFoundError:
        version = "unknown"
    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_PACKAGE, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            commit = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package_version": version, "source_hash": digest.hexdigest()[:12], "git_commit": commit}
