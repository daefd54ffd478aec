"""The lake: one root (a local folder by default) holding raw logs and every derived artifact.

Every write is atomic: bytes go to a hidden sibling first and are renamed into place, and a
folder artifact (a dataset, a policy, a release) is assembled aside and renamed in whole, so a
killed run never leaves something half-written that a later step would read. ``raw/`` is
immutable: the pipeline never rewrites or deletes a raw log.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

RAW_PREFIX = "raw/"
_HIDDEN_PREFIXES = (".", "_tmp")


class LakeError(RuntimeError):
    """A lake operation that cannot be done (bad key, immutable raw log, missing object)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object in the lake."""

    key: str
    size: int
    mtime_ns: int


def _check_key(key: str) -> str:
    path = PurePosixPath(key)
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise LakeError(f"invalid lake key {key!r}")
    return str(path)


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Lake(abc.ABC):
    """Interface of the lake; a local folder now, S3 behind the same methods."""

    @property
    @abc.abstractmethod
    def root_uri(self) -> str: ...

    def uri(self, key: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{_check_key(key)}"

    @abc.abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every complete object under ``prefix`` (in-flight temp files are never listed)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Atomically write ``data`` to ``key`` (replacing a derived artifact, never a raw log)."""

    @abc.abstractmethod
    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local file path holding ``key``'s bytes for readers that need a real file."""

    @abc.abstractmethod
    @contextlib.contextmanager
    def local_dir(self, prefix: str) -> Iterator[Path]:
        """A local folder holding every object under ``prefix`` (read-only use)."""

    @abc.abstractmethod
    def publish_dir(self, prefix: str, local_dir: Path, *, replace: bool = False) -> bool:
        """Publish a whole folder at ``prefix`` atomically.

        Returns False (and writes nothing) when ``prefix`` already exists and ``replace`` is
        False: content-addressed versions are immutable, so an identical re-run is a no-op.
        """

    # Convenience built on the primitives.
    def read_json(self, key: str) -> dict:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj) -> None:
        self.write_bytes(key, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_parquet(self, key: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(key)))

    def write_parquet(self, key: str, table: pa.Table) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(key, sink.getvalue())

    def put_raw(self, key: str, local_file: Path) -> bool:
        """Upload a raw log. Returns False if the identical file is already there.

        Raises:
            LakeError: a different file already sits at ``key`` (raw logs are immutable).
        """
        if not key.startswith(RAW_PREFIX):
            raise LakeError(f"raw logs live under {RAW_PREFIX}, got {key!r}")
        return self._put_immutable(key, Path(local_file))

    @abc.abstractmethod
    def _put_immutable(self, key: str, local_file: Path) -> bool: ...


class LocalLake(Lake):
    """The lake as a local folder (the embedded default)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    @property
    def root_uri(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.exists():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(_HIDDEN_PREFIXES))
            for filename in sorted(filenames):
                if filename.startswith(_HIDDEN_PREFIXES):
                    continue
                full = Path(dirpath) / filename
                st = full.stat()
                out.append(ObjectInfo(full.relative_to(self.root).as_posix(), st.st_size, st.st_mtime_ns))
        return out

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise LakeError(f"{self.uri(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        if key.startswith(RAW_PREFIX):
            raise LakeError(f"refusing to write {key!r}: raw logs are immutable (use put_raw)")
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        path = self.path(key)
        if not path.exists():
            raise LakeError(f"{self.uri(key)} does not exist")
        yield path

    @contextlib.contextmanager
    def local_dir(self, prefix: str) -> Iterator[Path]:
        path = self.path(prefix.rstrip("/"))
        if not path.is_dir():
            raise LakeError(f"{self.uri(prefix.rstrip('/'))} does not exist")
        yield path

    def publish_dir(self, prefix: str, local_dir: Path, *, replace: bool = False) -> bool:
        if (prefix.rstrip("/") + "/").startswith(RAW_PREFIX):
            raise LakeError(f"refusing to publish to {prefix!r}: raw logs are immutable")
        target = self.path(prefix.rstrip("/"))
        if target.exists() and not replace:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        shutil.copytree(local_dir, staging)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.{uuid.uuid4().hex}.old"
            os.replace(target, old)
        try:
            os.replace(staging, target)
        except OSError:
            if old is not None:
                os.replace(old, target)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return True

    def _put_immutable(self, key: str, local_file: Path) -> bool:
        target = self.path(key)
        if target.exists():
            if sha256_file(target) == sha256_file(local_file):
                return False
            raise LakeError(f"{self.uri(key)} already exists with different content; raw logs are immutable")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            shutil.copyfile(local_file, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return True


def open_lake(root: str) -> Lake:
    """The lake for a root URI: a local folder (S3 roots arrive with the object-store issue)."""
    if root.startswith("s3://"):
        raise LakeError("s3:// lakes are not supported yet; set FLYWHEEL_LAKE to a local folder")
    return LocalLake(root)


@contextlib.contextmanager
def staging_dir(prefix: str = "flywheel-") -> Iterator[Path]:
    """A temporary local folder in which a folder artifact is assembled before publishing."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def raw_fingerprint(files: list[tuple[str, str]]) -> str:
    """Identity of a robot-day's raw content: a hash over sorted (file name, sha256) pairs.

    Equal for the same bytes re-uploaded (the sensor then requests nothing), different as soon
    as a file is added or changed.
    """
    digest = hashlib.sha256()
    for key, sha in sorted(files):
        digest.update(f"{key.rsplit('/', 1)[-1]}\0{sha}\n".encode())
    return digest.hexdigest()[:16]
