"""The lake: one root (a local folder by default, or an S3 bucket) holding raw logs and every derived artifact.

Every write is atomic, so a killed run never leaves something half-written that a later step would
read, and ``raw/`` is immutable: the pipeline never rewrites or deletes a raw log.

- ``LocalLake``: bytes go to a hidden sibling first and are renamed into place; a folder artifact
  (a dataset, a policy, a release) is assembled aside and renamed in whole.
- ``S3Lake``: one PUT (or one completed multipart upload) is atomic in S3; a folder cannot be
  renamed into place, so ``publish_dir`` writes its files and then a manifest object last, and a
  folder without its manifest is absent (see ``S3Lake``).
"""

from __future__ import annotations

import abc
import contextlib
import datetime as _dt
import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from flywheel_pipelines.lib import faults, layout

RAW_PREFIX = layout.RAW
_HIDDEN_PREFIXES = (".", "_tmp")
SYMLINK_REFUSED = "a symbolic link (refused: the lake reads only regular files inside its root, never a link's target)"


class LakeError(RuntimeError):
    """A lake operation that cannot be done (bad key, immutable raw log, missing object)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object in the lake."""

    key: str
    size: int
    mtime_ns: int
    # The store's content tag: S3's ETag without quotes (MD5 of the bytes for a single PUT,
    # ``<md5 of the part md5s>-<parts>`` for a multipart upload); None for a local folder.
    etag: str | None = None
    # When the object last changed in the lake: a local file's max(mtime, ctime). Its ctime is
    # set by the kernel when the file is created, renamed or linked into place, so an upload
    # whose mtime was preserved (rsync -a, cp -p, tar) or that was renamed into place still
    # shows as new; for S3, LastModified (the upload time) as mtime_ns.
    changed_ns: int | None = None


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
    """Interface of the lake: a local folder (``LocalLake``) or an S3 bucket (``S3Lake``) behind the same methods."""

    @property
    @abc.abstractmethod
    def root_uri(self) -> str: ...

    def uri(self, key: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{_check_key(key)}"

    @abc.abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every complete object under ``prefix`` (in-flight temp files are never listed)."""

    def refused(self, prefix: str) -> list[tuple[str, str]]:
        """(key, why) of what sits under ``prefix`` but is never listed nor read: symbolic links
        and special files in a local lake (an object store has neither)."""
        return []

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


# A writer's temp file or folder younger than this may still be in use; older ones are leftovers
# of a killed run (kill -9 between writing aside and renaming into place), removed by the next
# write of the same artifact.
LEFTOVER_AGE_S = 3600.0
_LEFTOVER_RE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{32}\.(tmp|old)$")


def _sweep_leftovers(target: Path, *, older_than_s: float | None = None) -> list[Path]:
    """Removes ``.<target name>.<uuid>.tmp|.old`` siblings of ``target`` older than LEFTOVER_AGE_S."""
    limit = time.time() - (LEFTOVER_AGE_S if older_than_s is None else older_than_s)
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _LEFTOVER_RE.match(entry.name)
        if match is None or match["name"] != target.name:
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime > limit:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except FileNotFoundError:
            continue
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            _renameat2 = libc.renameat2
            _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        except (OSError, AttributeError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    import ctypes

    at_fdcwd, rename_exchange = -100, 2
    if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # this file system cannot exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


_renameat2 = None


class LocalLake(Lake):
    """The lake as a local folder (the embedded default)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    @property
    def root_uri(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def scan(self, prefix: str) -> tuple[list[ObjectInfo], list[tuple[str, str]]]:
        """``list`` and ``refused`` in one walk."""
        return self._walk(prefix)

    def _walk(self, prefix: str) -> tuple[list[ObjectInfo], list[tuple[str, str]]]:
        """Regular files under ``prefix``, and what was refused: symbolic links (to a file or a
        folder, inside the lake or not) and anything that is not a regular file (a FIFO, a
        device). Nothing refused is followed, opened or read."""
        base = self.path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        out: list[ObjectInfo] = []
        refused: list[tuple[str, str]] = []
        if base.is_symlink():
            return out, [(base.relative_to(self.root).as_posix(), SYMLINK_REFUSED)]
        if not base.exists():
            return out, refused
        for dirpath, dirnames, filenames in os.walk(base):
            for d in list(dirnames):
                if (Path(dirpath) / d).is_symlink():
                    dirnames.remove(d)
                    if not d.startswith(_HIDDEN_PREFIXES):
                        refused.append(((Path(dirpath) / d).relative_to(self.root).as_posix() + "/", SYMLINK_REFUSED))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(_HIDDEN_PREFIXES))
            for filename in sorted(filenames):
                if filename.startswith(_HIDDEN_PREFIXES):
                    continue
                full = Path(dirpath) / filename
                try:
                    st = full.lstat()
                except FileNotFoundError:
                    continue  # removed while listing
                rel = full.relative_to(self.root).as_posix()
                if stat.S_ISLNK(st.st_mode):
                    refused.append((rel, SYMLINK_REFUSED))
                elif not stat.S_ISREG(st.st_mode):
                    refused.append((rel, "not a regular file (refused, never opened)"))
                else:
                    out.append(ObjectInfo(rel, st.st_size, st.st_mtime_ns, changed_ns=max(st.st_mtime_ns, st.st_ctime_ns)))
        return out, sorted(refused)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self._walk(prefix)[0]

    def refused(self, prefix: str) -> list[tuple[str, str]]:
        return self._walk(prefix)[1]

    def changed_ns(self, key: str) -> int:
        """max(mtime, ctime) of a file or folder (a folder renamed into place has a new ctime,
        its files do not)."""
        st = self.path(key.rstrip("/")).lstat()
        return max(st.st_mtime_ns, st.st_ctime_ns)

    def _inside(self, key: str) -> Path:
        """The path of ``key``, refused if it is or passes through a symbolic link: the lake
        never reads outside its root, and never follows a link inside it either."""
        path = self.path(key.rstrip("/"))
        if path.resolve() != path:
            raise LakeError(f"{self.uri(key)}: {SYMLINK_REFUSED}")
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._inside(key).read_bytes()
        except FileNotFoundError:
            raise LakeError(f"{self.uri(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        if key.startswith(RAW_PREFIX):
            raise LakeError(f"refusing to write {key!r}: raw logs are immutable (use put_raw)")
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_leftovers(target)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            faults.point("local.write_bytes.before_rename")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        path = self._inside(key)
        if not path.exists():
            raise LakeError(f"{self.uri(key)} does not exist")
        if not path.is_file():
            raise LakeError(f"{self.uri(key)}: not a regular file (refused, never opened)")
        yield path

    @contextlib.contextmanager
    def local_dir(self, prefix: str) -> Iterator[Path]:
        path = self._inside(prefix)
        if not path.is_dir():
            raise LakeError(f"{self.uri(prefix.rstrip('/'))} does not exist")
        if refused := self.refused(prefix.rstrip("/") + "/"):
            raise LakeError("; ".join(f"{self.uri(key)}: {why}" for key, why in refused))
        yield path

    def publish_dir(self, prefix: str, local_dir: Path, *, replace: bool = False) -> bool:
        if (prefix.rstrip("/") + "/").startswith(RAW_PREFIX):
            raise LakeError(f"refusing to publish to {prefix!r}: raw logs are immutable")
        target = self.path(prefix.rstrip("/"))
        if target.exists() and not replace:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_leftovers(target)
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        shutil.copytree(local_dir, staging)
        faults.point("local.publish_dir.staged")
        if target.exists() and _exchange(staging, target):
            # One atomic step: readers see the old folder or the new one, never none.
            faults.point("local.publish_dir.swapped")
            shutil.rmtree(staging, ignore_errors=True)  # now the old folder
            return True
        # Without renameat2 (not Linux): two renames, with a short window where the folder is absent.
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
        _sweep_leftovers(target)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            shutil.copyfile(local_file, tmp)
            faults.point("local.put_raw.before_rename")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return True


# S3 error codes that mean "no such object" (HEAD answers a bare status code, GET a name).
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
# A conditional write lost to an existing object (412), or raced another one in flight (409).
_PRECONDITION = frozenset({"412", "PreconditionFailed"})
_CONFLICT = frozenset({"409", "ConditionalRequestConflict"})
# Written last by S3Lake.publish_dir: a folder whose manifest is missing is absent. Hidden names,
# so list() never shows them.
FOLDER_MANIFEST = ".lake-folder.json"
FOLDER_PENDING = ".lake-folder.pending"
# A republished folder's files, under a hidden prefix the folder manifest points at.
_GENERATION_PREFIX = ".gen-"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MiB = 1 << 20


def _s3_code(exc: Exception) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (a name, or the HTTP status for HEAD); None
    for anything else (a connection error, a bug)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = str(response.get("Error", {}).get("Code", ""))
    status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code if code and not code.isdigit() else status or code


def _hidden(rel: str) -> bool:
    return any(part.startswith(_HIDDEN_PREFIXES) for part in rel.split("/"))


def _mtime_ns(value: _dt.datetime) -> int:
    return int(value.timestamp()) * 1_000_000_000 + value.microsecond * 1000


def _md5_file(path: Path, *, chunk: int = _MiB) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _AlreadyExists(Exception):
    """A conditional PUT (If-None-Match: *) found an object at the key."""


# Server-side encryption S3 offers without the client holding the key: SSE-S3 (keys managed by the
# store) and SSE-KMS (a KMS key the deployment names). SSE-C is left out on purpose: every reader
# would need the key, which would put a secret in every process that reads the lake.
SSE_ALGORITHMS = ("AES256", "aws:kms")


@dataclass(frozen=True)
class Encryption:
    """Server-side encryption that every write to an S3 lake asks for.

    Readers need nothing: S3 decrypts SSE-S3 and SSE-KMS objects for any principal allowed to read
    them (and, for KMS, to use the key), so a bucket that requires encryption stays readable.

    Args:
        algorithm: ``AES256`` (SSE-S3) or ``aws:kms`` (SSE-KMS).
        kms_key_id: the KMS key (id, ARN or alias) for ``aws:kms``; None uses the account's
            default ``aws/s3`` key. Never set for ``AES256``.
    """

    algorithm: str
    kms_key_id: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in SSE_ALGORITHMS:
            raise LakeError(f"unknown S3 server-side encryption {self.algorithm!r}: expected one of "
                            f"{', '.join(SSE_ALGORITHMS)}")
        if self.kms_key_id is not None and self.algorithm != "aws:kms":
            raise LakeError(f"a KMS key id is only used with aws:kms encryption, not {self.algorithm!r}")
        if self.kms_key_id is not None and not self.kms_key_id.strip():
            raise LakeError("empty KMS key id: leave it unset for the account's default aws/s3 key")

    def write_args(self) -> dict[str, str]:
        """The boto3 arguments of a PUT, CreateMultipartUpload or CopyObject that encrypt the object."""
        args = {"ServerSideEncryption": self.algorithm}
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args


def check_endpoint(endpoint_url: str, *, allow_http: bool) -> None:
    """Refuses a plain-http S3 endpoint unless explicitly allowed: requests (and, on writes, the
    data and its signature) would cross the network in clear text.

    Raises:
        LakeError: ``endpoint_url`` is ``http://`` and ``allow_http`` is False, or not an http(s) URL.
    """
    parts = urlsplit(endpoint_url)
    where = f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    if parts.scheme == "https":
        return
    if parts.scheme != "http":
        raise LakeError(f"invalid S3 endpoint {where!r}: expected https:// (or http:// where allowed)")
    if not allow_http:
        raise LakeError(f"refusing plain-http S3 endpoint {where}: the lake's traffic would not be encrypted in "
                        "transit. Use https, or set FLYWHEEL_S3_ALLOW_HTTP=true (LakeResource.allow_http) for a "
                        "test server on 127.0.0.1 or a network you trust")


class S3Lake(Lake):
    """The lake in an S3 bucket (AWS S3 or an S3-compatible store such as SeaweedFS) under a key prefix.

    The same contract as ``LocalLake``, built from what S3 guarantees:

    - ``write_bytes`` is one PUT, which S3 makes atomic: a reader gets the old object or the new one.
      A multipart upload in flight is invisible (not listed, not readable) until it is completed.
    - ``put_raw`` is a conditional PUT (``If-None-Match: *``; for files above ``multipart_threshold``
      on ``CompleteMultipartUpload``): the store itself refuses to overwrite a raw key, also between
      two uploaders racing for it, which a HEAD-then-PUT could not promise. AWS S3 and SeaweedFS
      (since mid-2025; the tests check 4.48) honour it. The object carries its sha256 as user
      metadata (``x-amz-meta-sha256``), so a repeated upload is recognised without downloading it.
    - ``publish_dir`` cannot rename a folder into place. It writes a pending marker, the files, then
      a manifest object (``<prefix>/.lake-folder.json``: every file with its size and ETag) last, and
      removes the marker. Readers follow the manifest: ``local_dir`` and ``exists`` treat a prefix
      without its manifest as absent, ``local_dir`` fetches exactly the files the manifest names
      with ``If-Match: <etag>`` (a concurrent republish makes it fail loudly instead of mixing two
      versions), and ``list`` hides every object of a folder whose pending marker is in the listing.
      A republish (``replace=True``) is never absent: the new files go to a hidden generation
      prefix, one PUT of the manifest switches to them, then they are copied onto their plain
      keys (``_republish``). Single-key readers (``read_bytes`` on one file of the folder) see
      each file old or new, whole.
    - ``local_path`` and ``local_dir`` stream objects to a temporary folder, removed on exit.
    - With ``encryption``, every request that creates an object (PUT, CreateMultipartUpload,
      CopyObject) asks for server-side encryption, so a bucket policy that denies unencrypted
      writes accepts all of the lake's; reads need nothing.

    Args:
        client: a boto3 S3 client (dagster-aws's ``S3Resource.get_client()`` in the code location).
        bucket: the bucket.
        prefix: key prefix of the lake root inside the bucket ("" for the whole bucket).
        multipart_threshold: files above this size are uploaded in parts (S3 caps one PUT at 5 GiB).
        part_size: part size of multipart uploads (S3's minimum is 5 MiB); one part is held in memory.
        workers: parallel transfers for folder uploads and downloads.
        encryption: server-side encryption asked for on every write (each PUT, multipart upload
            and copy: ``_write_args``); None leaves it to the bucket's default.
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, multipart_threshold: int = 64 * _MiB,
                 part_size: int = 16 * _MiB, workers: int = 8, encryption: Encryption | None = None):
        if not _BUCKET_RE.fullmatch(bucket or ""):
            raise LakeError(f"invalid S3 bucket name {bucket!r}")
        if part_size < 5 * _MiB:
            raise LakeError(f"S3 multipart parts must be at least 5 MiB, got part_size={part_size}")
        self.client = client
        self.bucket = bucket
        self.prefix = _check_key(prefix.strip("/")) if prefix.strip("/") else ""
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.workers = workers
        self.encryption = encryption
        # Every request that creates an object carries these (PutObject, CreateMultipartUpload,
        # CopyObject); UploadPart and CompleteMultipartUpload inherit the upload's encryption.
        self._write_args: dict[str, str] = encryption.write_args() if encryption else {}

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # --- key mapping and errors ---------------------------------------------------------------

    def _full(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _folder(self, prefix: str) -> str:
        """The bucket key prefix of a lake folder ("" or "a/b" -> ".../a/b/"), validated."""
        rel = prefix.rstrip("/")
        if not prefix.strip("/"):
            return f"{self.prefix}/" if self.prefix else ""
        return self._full(_check_key(rel)) + "/"

    def _fail(self, rel: str, action: str, exc: Exception) -> LakeError:
        code = _s3_code(exc)
        message = exc.response.get("Error", {}).get("Message", "") if code is not None else ""  # type: ignore[attr-defined]
        detail = f"{code} {message}".strip() if code is not None else f"{type(exc).__name__}: {exc}"
        return LakeError(f"{self.uri(rel)}: {action} failed: {detail}")

    def _head(self, rel: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._full(rel))
        except Exception as exc:
            if _s3_code(exc) in _MISSING:
                return None
            raise self._fail(rel, "HEAD", exc) from exc

    def _delete(self, rels: list[str]) -> None:
        for start in range(0, len(rels), 1000):
            batch = [{"Key": self._full(rel)} for rel in rels[start:start + 1000]]
            response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise LakeError(f"{self.root_uri}: could not delete {len(response['Errors'])} objects, "
                                f"first {first.get('Key')!r}: {first.get('Code')} {first.get('Message')}")

    # --- listing --------------------------------------------------------------------------------

    def _pages(self, folder: str, **kwargs) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        yield from paginator.paginate(Bucket=self.bucket, Prefix=folder, **kwargs)

    def iter_objects(self, prefix: str, *, start_after: str | None = None,
                     hidden: list[str] | None = None) -> Iterator[ObjectInfo]:
        """Objects under the folder ``prefix`` in key order (S3 sorts by UTF-8 bytes), fetched
        lazily one page (1000 keys) at a time, optionally only those after the lake key ``start_after``.

        Keys come back as stored (hidden names excepted), also ones that are not valid lake keys:
        callers that turn them into identifiers validate them (``ids.parse_raw_key``). Hidden keys
        are appended to ``hidden`` when given (an upload under a hidden name is never ingested).
        """
        kwargs = {"StartAfter": self._full(start_after)} if start_after else {}
        for page in self._pages(self._folder(prefix), **kwargs):
            for item in page.get("Contents", []):
                rel = self._rel(item["Key"])
                if not _hidden(rel):
                    yield ObjectInfo(rel, item["Size"], _mtime_ns(item["LastModified"]), item["ETag"].strip('"'))
                elif hidden is not None:
                    hidden.append(rel)

    def list_children(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        """One level of the folder ``prefix``: its sub-folders (as ``<prefix>/<name>/``, one
        ``Delimiter='/'`` listing, 1000 per request however many objects they hold) and its own objects."""
        folders, objects = [], []
        for page in self._pages(self._folder(prefix), Delimiter="/"):
            folders += [self._rel(p["Prefix"]) for p in page.get("CommonPrefixes", [])]
            objects += [ObjectInfo(self._rel(o["Key"]), o["Size"], _mtime_ns(o["LastModified"]), o["ETag"].strip('"'))
                        for o in page.get("Contents", [])]
        return folders, [o for o in objects if not _hidden(o.key)]

    def list(self, prefix: str) -> list[ObjectInfo]:
        objects, pending = [], []
        for obj in self._iter_all(prefix):
            if obj.key.rsplit("/", 1)[-1] == FOLDER_PENDING:
                pending.append(obj.key[: -len(FOLDER_PENDING)])
            elif not _hidden(obj.key):
                objects.append(obj)
        if pending:
            objects = [o for o in objects if not o.key.startswith(tuple(pending))]
        return objects

    def _iter_all(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every addressable object under ``prefix``, hidden ones included (keys that are not valid
        lake keys, such as ``a//b`` or a folder placeholder ``a/``, cannot be read through the lake
        and are left out)."""
        for page in self._pages(self._folder(prefix)):
            for item in page.get("Contents", []):
                rel = self._rel(item["Key"])
                try:
                    _check_key(rel)
                except LakeError:
                    continue
                yield ObjectInfo(rel, item["Size"], _mtime_ns(item["LastModified"]), item["ETag"].strip('"'))

    # --- single objects -------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """True for an object at ``key`` or a published folder (one with its manifest) at ``key``."""
        rel = _check_key(key)
        return self._head(rel) is not None or self._head(f"{rel}/{FOLDER_MANIFEST}") is not None

    def read_bytes(self, key: str) -> bytes:
        rel = _check_key(key)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(rel))["Body"].read()
        except Exception as exc:
            if _s3_code(exc) in _MISSING:
                raise LakeError(f"{self.uri(rel)} does not exist") from None
            raise self._fail(rel, "GET", exc) from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        if key.startswith(RAW_PREFIX):
            raise LakeError(f"refusing to write {key!r}: raw logs are immutable (use put_raw)")
        rel = _check_key(key)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"{self.uri(rel)}: write_bytes needs bytes, got {type(data).__name__}")
        self._put_small(rel, bytes(data))

    def _download(self, rel: str, dest: Path, *, if_match: str | None = None) -> None:
        """Stream one object to ``dest`` (1 MiB at a time; never the whole object in memory)."""
        kwargs = {"IfMatch": f'"{if_match}"'} if if_match else {}
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(rel), **kwargs)["Body"]
        except Exception as exc:
            code = _s3_code(exc)
            if code in _MISSING:
                raise LakeError(f"{self.uri(rel)} does not exist") from None
            if code in _PRECONDITION:
                raise LakeError(f"{self.uri(rel)} changed while it was being read (ETag is no longer {if_match}; "
                                "a concurrent publish?), retry") from None
            raise self._fail(rel, "GET", exc) from exc
        dest.parent.mkdir(parents=True, exist_ok=True)
        with body, open(dest, "wb") as handle:
            for block in body.iter_chunks(_MiB):
                handle.write(block)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        rel = _check_key(key)
        with tempfile.TemporaryDirectory(prefix="flywheel-s3-") as tmp:
            # Keep the file name: readers go by the suffix (.mcap, .db3, .parquet).
            path = Path(tmp) / PurePosixPath(rel).name
            self._download(rel, path)
            yield path

    # --- folders --------------------------------------------------------------------------------

    def _read_folder_manifest(self, rel: str) -> dict | None:
        try:
            return json.loads(self.read_bytes(f"{rel}/{FOLDER_MANIFEST}"))
        except LakeError as exc:
            if "does not exist" in str(exc):
                return None
            raise

    @contextlib.contextmanager
    def local_dir(self, prefix: str) -> Iterator[Path]:
        rel = _check_key(prefix.rstrip("/"))
        manifest = self._read_folder_manifest(rel)
        if manifest is None:
            raise LakeError(f"{self.uri(rel)} does not exist (no {FOLDER_MANIFEST}: never published, "
                            "or being published right now)")
        with tempfile.TemporaryDirectory(prefix="flywheel-s3-") as tmp:
            root = Path(tmp) / PurePosixPath(rel).name
            root.mkdir()
            jobs = []
            for name, info in sorted(manifest["files"].items()):
                # The manifest is an object in the bucket: its names become local paths only once valid.
                _check_key(name)
                stored = _check_key(info.get("key", name))
                if stored != name and not (stored.startswith(_GENERATION_PREFIX) and stored.endswith("/" + name)):
                    raise LakeError(f"{self.uri(rel)}: folder manifest names {stored!r} for {name!r}")
                jobs.append((f"{rel}/{stored}", root / name, info["etag"]))
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                for future in [pool.submit(self._download, key, dest, if_match=etag) for key, dest, etag in jobs]:
                    future.result()
            yield root

    def publish_dir(self, prefix: str, local_dir: Path, *, replace: bool = False) -> bool:
        if (prefix.rstrip("/") + "/").startswith(RAW_PREFIX):
            raise LakeError(f"refusing to publish to {prefix!r}: raw logs are immutable")
        rel = _check_key(prefix.rstrip("/"))
        manifest_key = f"{rel}/{FOLDER_MANIFEST}"
        if not replace and self._head(manifest_key) is not None:
            return False
        local_dir = Path(local_dir)
        files = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
        for name in files:
            _check_key(f"{rel}/{name}")
        if replace and self._read_folder_manifest(rel) is not None:
            return self._republish(rel, local_dir, files)
        pending = f"{rel}/{FOLDER_PENDING}"
        self._put_small(pending, json.dumps({"started": time.time()}).encode())
        faults.point("s3.publish_dir.pending")
        if replace:
            self._delete([manifest_key])
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            etags = dict(zip(files, pool.map(lambda n: self._upload(f"{rel}/{n}", local_dir / n), files), strict=True))
        faults.point("s3.publish_dir.uploaded")
        stale = [o.key for o in self._iter_all(rel + "/")
                 if o.key[len(rel) + 1:] not in etags and o.key not in (pending, manifest_key)]
        self._delete(stale)
        manifest = {"files": {n: {"size": (local_dir / n).stat().st_size, "etag": etags[n]} for n in files}}
        self._put_small(manifest_key, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        faults.point("s3.publish_dir.published")
        self._delete([pending])
        return True

    def _republish(self, rel: str, local_dir: Path, files: list[str]) -> bool:
        """Replaces a published folder so that it is never absent: the new files go to a hidden
        generation prefix, one PUT of the folder manifest switches ``local_dir``/``exists``
        readers to them, then each file is copied onto its plain key (single-key readers see each
        file old or new, whole) and the previous generation is deleted. A kill anywhere leaves
        the old or the new manifest, each naming complete objects; the next publish of the
        prefix removes what a killed one left."""
        generation = f"{_GENERATION_PREFIX}{uuid.uuid4().hex}"
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            etags = dict(zip(files, pool.map(lambda n: self._upload(f"{rel}/{generation}/{n}", local_dir / n), files),
                             strict=True))
        faults.point("s3.publish_dir.uploaded")
        manifest = {"files": {n: {"size": (local_dir / n).stat().st_size, "etag": etags[n], "key": f"{generation}/{n}"}
                              for n in files}}
        self._put_small(f"{rel}/{FOLDER_MANIFEST}", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        faults.point("s3.publish_dir.published")
        for n in files:
            try:
                self.client.copy_object(Bucket=self.bucket, Key=self._full(f"{rel}/{n}"),
                                        CopySource={"Bucket": self.bucket, "Key": self._full(f"{rel}/{generation}/{n}")},
                                        **self._write_args)
            except Exception as exc:
                raise self._fail(f"{rel}/{n}", "copy", exc) from exc
        keep = {f"{rel}/{n}" for n in files} | {f"{rel}/{generation}/{n}" for n in files} | {f"{rel}/{FOLDER_MANIFEST}"}
        self._delete([o.key for o in self._iter_all(rel + "/") if o.key not in keep])
        return True

    def _put_small(self, rel: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._full(rel), Body=data, **self._write_args)
        except Exception as exc:
            raise self._fail(rel, "PUT", exc) from exc

    # --- uploads --------------------------------------------------------------------------------

    def _upload(self, rel: str, path: Path, *, if_none_match: bool = False, metadata: dict | None = None) -> str:
        """Upload a local file (streamed: one PUT, or parts of ``part_size``); returns the ETag.

        Raises:
            _AlreadyExists: ``if_none_match`` and an object already sits at ``rel``.
        """
        key = self._full(rel)
        extra: dict[str, Any] = {**({"Metadata": metadata} if metadata else {}), **self._write_args}
        condition = {"IfNoneMatch": "*"} if if_none_match else {}
        try:
            if path.stat().st_size <= self.multipart_threshold:
                with open(path, "rb") as handle:
                    response = self.client.put_object(Bucket=self.bucket, Key=key, Body=handle, **extra, **condition)
                return response["ETag"].strip('"')
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)["UploadId"]
            try:
                parts = []
                with open(path, "rb") as handle:
                    while block := handle.read(self.part_size):
                        number = len(parts) + 1
                        response = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                           PartNumber=number, Body=block)
                        parts.append({"ETag": response["ETag"], "PartNumber": number})
                response = self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition)
                return response["ETag"].strip('"')
            except BaseException:
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                raise
        except Exception as exc:
            if if_none_match and _s3_code(exc) in _PRECONDITION | _CONFLICT:
                raise _AlreadyExists(_s3_code(exc)) from exc
            raise self._fail(rel, "upload", exc) from exc

    def _put_immutable(self, key: str, local_file: Path) -> bool:
        rel = _check_key(key)
        sha = sha256_file(local_file)
        attempt = 0
        while True:
            try:
                self._upload(rel, local_file, if_none_match=True, metadata={"sha256": sha})
                return True
            except _AlreadyExists as exc:
                head = self._head(rel)
                if head is not None:
                    if self._same_content(rel, head, local_file, sha):
                        return False
                    raise LakeError(f"{self.uri(rel)} already exists with different content; raw logs are immutable") from None
                # 409: another conditional upload of this key was in flight and did not land; try again.
                attempt += 1
                if attempt == 5:
                    raise LakeError(f"{self.uri(rel)}: conditional upload refused ({exc}) {attempt} times, "
                                    "yet no object is there") from None
                time.sleep(0.1 * 2**attempt)

    def _same_content(self, rel: str, head: dict, local_file: Path, sha: str) -> bool:
        """Whether the object at ``rel`` holds ``local_file``'s bytes, as cheaply as the object allows."""
        if head.get("ContentLength") != local_file.stat().st_size:
            return False
        stored = (head.get("Metadata") or {}).get("sha256")
        if stored:
            return stored == sha
        etag = head.get("ETag", "").strip('"')
        if etag and "-" not in etag:
            return etag == _md5_file(local_file)
        # Uploaded by another tool in parts of unknown size: compare the bytes themselves.
        with self.local_path(rel) as copy:
            return sha256_file(copy) == sha


def parse_s3_uri(root: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix), both validated."""
    parts = urlsplit(root)
    if parts.scheme != "s3" or parts.query or parts.fragment:
        raise LakeError(f"invalid S3 lake root {root!r}: expected s3://bucket/prefix")
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise LakeError(f"invalid S3 lake root {root!r}: bad bucket name {bucket!r}")
    if prefix:
        try:
            _check_key(prefix)
        except LakeError:
            raise LakeError(f"invalid S3 lake root {root!r}: bad key prefix {prefix!r}") from None
    return bucket, prefix


def open_lake(root: str, *, s3_client: Any | None = None, allow_http: bool = False,
              encryption: Encryption | None = None) -> Lake:
    """The lake for a root: a local folder, or ``s3://bucket/prefix`` with an S3 client.

    The client carries endpoint, region and credentials; this library never picks them itself
    (the code location builds it from ``LakeResource``'s dagster-aws configuration). Its endpoint
    must be https unless ``allow_http`` (``check_endpoint``); ``encryption`` goes on every write.
    """
    if root.startswith("s3://"):
        if s3_client is None:
            raise LakeError(f"s3:// lakes are not supported without an S3 client ({root}): "
                            "configure LakeResource (endpoint_url, region_name, credentials) or pass s3_client")
        bucket, prefix = parse_s3_uri(root)
        check_endpoint(s3_client.meta.endpoint_url, allow_http=allow_http)
        return S3Lake(s3_client, bucket, prefix, encryption=encryption)
    return LocalLake(root)


@contextlib.contextmanager
def staging_dir(prefix: str = "flywheel-") -> Iterator[Path]:
    """A temporary local folder in which a folder artifact is assembled before publishing."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def raw_fingerprint(files: list[tuple[str, str]]) -> str:
    """Identity of a robot-day's raw content: a hash over sorted (raw object key, sha256) pairs.

    Equal for the same bytes re-uploaded (the sensor then requests nothing), different as soon
    as a file is added or changed.
    """
    digest = hashlib.sha256()
    for key, sha in sorted(files):
        # The name within the robot-day: a file, or <bag>/<file> for a rosbag2 folder's parts.
        name = key.split("/", 3)[3] if key.startswith(RAW_PREFIX) and key.count("/") >= 3 else key.rsplit("/", 1)[-1]
        digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()[:16]
