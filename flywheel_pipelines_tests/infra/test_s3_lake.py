"""The lake contract on a real S3 server (SeaweedFS), beside the local folder it must behave like.

Contract tests take ``lake`` (parametrized: local folder and S3) and use the Lake interface only;
the S3-only tests below them pin what S3 adds: ETags, multipart uploads, conditional PUTs and the
folder manifest that stands in for an atomic rename.
"""

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from flywheel_pipelines.defs.resources import LAKE_S3_ENV, LakeResource, lake_resource_from_env
from flywheel_pipelines.lib.storage import (
    FOLDER_MANIFEST,
    FOLDER_PENDING,
    LakeError,
    LocalLake,
    S3Lake,
    open_lake,
)
from flywheel_pipelines_tests.infra.conftest import BUCKET

RAW_KEY = "raw/robot=r101/date=2026-03-02/session-080000.mcap"
MiB = 1 << 20


@pytest.fixture(params=["local", "s3"])
def lake(request, tmp_path):
    if request.param == "local":
        return LocalLake(tmp_path / "lake")
    return request.getfixturevalue("s3_lake")


def _local(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _folder(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    root = tmp_path / name
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _keys(lake, prefix: str = "") -> list[str]:
    # Sorted here: S3 lists in key (UTF-8 byte) order, a local folder each folder's files before its sub-folders.
    return sorted(o.key for o in lake.list(prefix))


def _bucket_keys(s3_lake: S3Lake) -> list[str]:
    """Every object under the lake's prefix as the bucket holds it, hidden ones included."""
    pages = s3_lake.client.get_paginator("list_objects_v2").paginate(Bucket=s3_lake.bucket, Prefix=s3_lake.prefix + "/")
    return [o["Key"][len(s3_lake.prefix) + 1:] for page in pages for o in page.get("Contents", [])]


def _multipart_etag(data: bytes, part_size: int) -> str:
    parts = [data[i:i + part_size] for i in range(0, len(data), part_size)]
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"


# --- the contract, on both lakes ----------------------------------------------------------------


def test_write_read_list_round_trip(lake):
    lake.write_bytes("catalog/episodes.bin", b"one")
    lake.write_bytes("catalog/episodes.bin", b"two")  # derived artifacts may be replaced
    lake.write_json("a/b/c.json", {"z": 1, "a": [1, 2]})
    lake.write_parquet("a/t.parquet", pa.table({"x": [1, 2, 3]}))
    assert lake.read_bytes("catalog/episodes.bin") == b"two"
    assert lake.read_json("a/b/c.json") == {"z": 1, "a": [1, 2]}
    assert lake.read_parquet("a/t.parquet")["x"].to_pylist() == [1, 2, 3]
    assert _keys(lake) == ["a/b/c.json", "a/t.parquet", "catalog/episodes.bin"]
    assert _keys(lake, "a/") == _keys(lake, "a") == ["a/b/c.json", "a/t.parquet"]
    assert _keys(lake, "nothing/") == [] and _keys(lake, "a/b/c") == []  # folder prefixes, not string prefixes
    assert [o.size for o in lake.list("catalog/")] == [3]
    assert lake.exists("a/t.parquet") and not lake.exists("a/missing")


def test_failed_write_keeps_the_old_bytes(lake):
    lake.write_bytes("d/x.bin", b"old")
    with pytest.raises(TypeError):
        lake.write_bytes("d/x.bin", "not bytes")  # type: ignore[arg-type]
    assert lake.read_bytes("d/x.bin") == b"old"
    assert _keys(lake) == ["d/x.bin"]


def test_missing_objects_and_folders_say_they_do_not_exist(lake):
    with pytest.raises(LakeError, match="does not exist"):
        lake.read_bytes("nope.bin")
    with pytest.raises(LakeError, match="does not exist"), lake.local_path("nope.bin"):
        pass
    for prefix in ("nope", "nope/"):
        with pytest.raises(LakeError, match="does not exist"), lake.local_dir(prefix):
            pass


def test_local_path_and_local_dir_hold_the_bytes(lake, tmp_path):
    lake.write_bytes("x/y.mcap", b"1" * 3000)
    with lake.local_path("x/y.mcap") as path:
        assert path.name == "y.mcap" and path.read_bytes() == b"1" * 3000
    lake.publish_dir("policies/p/v1", _folder(tmp_path, "v1", {"model.bin": b"m", "meta/config.json": b"{}"}))
    with lake.local_dir("policies/p/v1/") as folder:
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
            "meta/config.json", "model.bin"]
        assert (folder / "model.bin").read_bytes() == b"m"


@pytest.mark.parametrize("key", [RAW_KEY, "raw/anything.bin"])
def test_write_bytes_refuses_raw(lake, key):
    with pytest.raises(LakeError, match="raw logs are immutable"):
        lake.write_bytes(key, b"x")
    assert _keys(lake) == []


def test_put_raw_is_idempotent_for_identical_bytes_and_refuses_others(lake, tmp_path):
    assert lake.put_raw(RAW_KEY, _local(tmp_path, "a.mcap", b"log bytes")) is True
    [before] = lake.list("raw/")
    assert lake.put_raw(RAW_KEY, _local(tmp_path, "copy.mcap", b"log bytes")) is False
    with pytest.raises(LakeError, match="already exists with different content"):
        lake.put_raw(RAW_KEY, _local(tmp_path, "b.mcap", b"other bytes"))
    assert lake.list("raw/") == [before]  # not rewritten: same mtime (and ETag)
    assert lake.read_bytes(RAW_KEY) == b"log bytes"
    with pytest.raises(LakeError, match="raw logs live under raw/"):
        lake.put_raw("episodes/x.mcap", _local(tmp_path, "c.mcap", b"x"))


def test_publish_dir_is_idempotent_and_refuses_raw(lake, tmp_path):
    v1 = _folder(tmp_path, "v1", {"manifest.json": b"{}", "data/file-000.parquet": b"p1", "meta/info.json": b"i"})
    assert lake.publish_dir("datasets/reach/abc/", v1) is True
    assert _keys(lake, "datasets/") == ["datasets/reach/abc/data/file-000.parquet", "datasets/reach/abc/manifest.json",
                                        "datasets/reach/abc/meta/info.json"]
    assert lake.exists("datasets/reach/abc")
    # The same version again: a no-op that keeps the published bytes.
    assert lake.publish_dir("datasets/reach/abc", _folder(tmp_path, "v1b", {"manifest.json": b"changed"})) is False
    assert lake.read_bytes("datasets/reach/abc/manifest.json") == b"{}"
    assert v1.exists()  # the source folder is copied, not moved
    with pytest.raises(LakeError, match="raw logs are immutable"):
        lake.publish_dir("raw/robot=r101/date=2026-03-02", v1, replace=True)


def test_publish_dir_replace_swaps_the_whole_folder(lake, tmp_path):
    lake.publish_dir("policies/current", _folder(tmp_path, "a", {"model.safetensors": b"A", "old.txt": b"o"}))
    new = _folder(tmp_path, "b", {"model.safetensors": b"B", "config.json": b"{}"})
    assert lake.publish_dir("policies/current", new, replace=True) is True
    assert _keys(lake, "policies/") == ["policies/current/config.json", "policies/current/model.safetensors"]
    assert lake.read_bytes("policies/current/model.safetensors") == b"B"
    with lake.local_dir("policies/current") as folder:
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_list_is_sorted(lake):
    for key in ["b/2", "a/1", "b/1", "a/z/0"]:
        lake.write_bytes(key, b"x")
    assert [o.key for o in lake.list("")] == ["a/1", "a/z/0", "b/1", "b/2"]


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/../b", "./a", "a/.", "", "a/"])
def test_invalid_keys_raise_lake_error(lake, tmp_path, key):
    src = _local(tmp_path, "f.bin", b"x")
    for call in (lambda: lake.write_bytes(key, b"x"), lambda: lake.read_bytes(key), lambda: lake.exists(key),
                 lambda: lake.uri(key), lambda: lake.put_raw("raw/" + key, src)):
        with pytest.raises(LakeError, match="invalid lake key"):
            call()
    assert _keys(lake) == []


@pytest.mark.parametrize("prefix", ["../", "/tmp"])
def test_list_refuses_prefixes_outside_the_lake(lake, prefix):
    lake.write_bytes("inside.bin", b"x")
    with pytest.raises(LakeError):
        lake.list(prefix)


# --- S3: ETags and multipart uploads ------------------------------------------------------------


def test_etags_are_s3_etags_single_part_and_multipart(s3_lake, tmp_path):
    small, big = os.urandom(3000), os.urandom(11 * MiB)  # 11 MiB in 5 MiB parts: 3 parts
    s3_lake.put_raw("raw/robot=r1/date=2026-03-02/small.mcap", _local(tmp_path, "s", small))
    s3_lake.put_raw("raw/robot=r1/date=2026-03-02/big.mcap", _local(tmp_path, "b", big))
    etags = {o.key.rsplit("/", 1)[1]: o.etag for o in s3_lake.list("raw/")}
    assert etags == {"small.mcap": hashlib.md5(small).hexdigest(), "big.mcap": _multipart_etag(big, 5 * MiB)}
    assert etags["big.mcap"].endswith("-3")
    head = s3_lake.client.head_object(Bucket=BUCKET, Key=f"{s3_lake.prefix}/raw/robot=r1/date=2026-03-02/big.mcap")
    assert head["ETag"].strip('"') == etags["big.mcap"]
    assert head["Metadata"]["sha256"] == hashlib.sha256(big).hexdigest()
    with s3_lake.local_path("raw/robot=r1/date=2026-03-02/big.mcap") as path:
        assert path.read_bytes() == big


def test_multipart_upload_in_flight_is_invisible_until_completed(s3_lake):
    key = "raw/robot=r1/date=2026-03-02/late.mcap"
    full = f"{s3_lake.prefix}/{key}"
    client = s3_lake.client
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=full)["UploadId"]
    part = os.urandom(5 * MiB)
    etag = client.upload_part(Bucket=BUCKET, Key=full, UploadId=upload, PartNumber=1, Body=part)["ETag"]
    assert s3_lake.list("raw/") == [] and list(s3_lake.iter_objects("raw/")) == []
    assert not s3_lake.exists(key)
    with pytest.raises(LakeError, match="does not exist"):
        s3_lake.read_bytes(key)
    client.complete_multipart_upload(Bucket=BUCKET, Key=full, UploadId=upload,
                                     MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": 1}]})
    assert [(o.key, o.size, o.etag) for o in s3_lake.list("raw/")] == [(key, len(part), _multipart_etag(part, 5 * MiB))]


def test_failed_multipart_raw_upload_leaves_nothing(s3_lake, tmp_path):
    big = _local(tmp_path, "big", os.urandom(11 * MiB))
    s3_lake.put_raw(RAW_KEY, big)
    other = _local(tmp_path, "other", os.urandom(11 * MiB))
    with pytest.raises(LakeError, match="already exists with different content"):
        s3_lake.put_raw(RAW_KEY, other)
    # The refused upload was aborted: no parts left behind in the bucket.
    assert s3_lake.client.list_multipart_uploads(Bucket=BUCKET, Prefix=s3_lake.prefix).get("Uploads", []) == []
    with s3_lake.local_path(RAW_KEY) as path:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()


# --- S3: raw/ immutability is the store's conditional PUT -------------------------------------


def test_concurrent_raw_uploads_of_different_bytes_one_wins(s3_lake, tmp_path):
    files = [_local(tmp_path, f"v{i}", f"version {i}".encode()) for i in range(8)]
    barrier = threading.Barrier(len(files))

    def upload(path):
        barrier.wait()
        try:
            return s3_lake.put_raw(RAW_KEY, path)
        except LakeError as exc:
            return str(exc)

    with ThreadPoolExecutor(len(files)) as pool:
        results = list(pool.map(upload, files))
    assert results.count(True) == 1, results
    assert all("already exists with different content" in r for r in results if r is not True)
    assert s3_lake.read_bytes(RAW_KEY) == files[results.index(True)].read_bytes()


def test_put_raw_recognises_identical_bytes_uploaded_by_another_tool(s3_lake, tmp_path):
    """A robot's own uploader sets no sha256 metadata: single-part ETags are compared as MD5,
    multipart ones (part size unknown) by reading the object back."""
    client, data, big = s3_lake.client, b"robot upload", os.urandom(7 * MiB)
    client.put_object(Bucket=BUCKET, Key=f"{s3_lake.prefix}/{RAW_KEY}", Body=data)
    assert s3_lake.put_raw(RAW_KEY, _local(tmp_path, "same", data)) is False
    with pytest.raises(LakeError, match="different content"):
        s3_lake.put_raw(RAW_KEY, _local(tmp_path, "diff", b"robot uploaX"))
    key = RAW_KEY.replace("session", "multi")
    full = f"{s3_lake.prefix}/{key}"
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=full)["UploadId"]
    parts = [client.upload_part(Bucket=BUCKET, Key=full, UploadId=upload, PartNumber=n + 1,
                                Body=big[n * 6 * MiB:(n + 1) * 6 * MiB])["ETag"] for n in range(2)]
    client.complete_multipart_upload(Bucket=BUCKET, Key=full, UploadId=upload, MultipartUpload={
        "Parts": [{"ETag": e, "PartNumber": n + 1} for n, e in enumerate(parts)]})
    assert s3_lake.put_raw(key, _local(tmp_path, "big", big)) is False
    changed = bytearray(big)
    changed[-1] ^= 1
    with pytest.raises(LakeError, match="different content"):
        s3_lake.put_raw(key, _local(tmp_path, "big2", bytes(changed)))


# --- S3: folders appear whole ------------------------------------------------------------------


def test_published_folder_has_a_manifest_written_last_and_hidden(s3_lake, tmp_path):
    s3_lake.publish_dir("datasets/d/v1", _folder(tmp_path, "v1", {"a.bin": b"A", "sub/b.bin": b"BB"}))
    assert _bucket_keys(s3_lake) == [f"datasets/d/v1/{FOLDER_MANIFEST}", "datasets/d/v1/a.bin", "datasets/d/v1/sub/b.bin"]
    manifest = json.loads(s3_lake.read_bytes(f"datasets/d/v1/{FOLDER_MANIFEST}"))
    assert manifest["files"] == {"a.bin": {"size": 1, "etag": hashlib.md5(b"A").hexdigest()},
                                 "sub/b.bin": {"size": 2, "etag": hashlib.md5(b"BB").hexdigest()}}
    assert _keys(s3_lake) == ["datasets/d/v1/a.bin", "datasets/d/v1/sub/b.bin"]


def test_a_folder_without_its_manifest_is_absent_and_a_republish_cleans_it(s3_lake, tmp_path):
    """What a publish killed half-way leaves: some files and the pending marker, no manifest."""
    client = s3_lake.client
    for name, body in [(FOLDER_PENDING, b"{}"), ("a.bin", b"half"), ("stale.bin", b"from the killed run")]:
        client.put_object(Bucket=BUCKET, Key=f"{s3_lake.prefix}/datasets/d/v1/{name}", Body=body)
    s3_lake.write_bytes("datasets/d/other.json", b"{}")
    assert not s3_lake.exists("datasets/d/v1")
    with pytest.raises(LakeError, match="does not exist"), s3_lake.local_dir("datasets/d/v1"):
        pass
    assert _keys(s3_lake, "datasets/") == ["datasets/d/other.json"]  # nothing of the half-published folder
    assert s3_lake.publish_dir("datasets/d/v1", _folder(tmp_path, "v1", {"a.bin": b"whole"})) is True
    assert _bucket_keys(s3_lake) == ["datasets/d/other.json", f"datasets/d/v1/{FOLDER_MANIFEST}", "datasets/d/v1/a.bin"]
    with s3_lake.local_dir("datasets/d/v1") as folder:
        assert [p.name for p in folder.iterdir()] == ["a.bin"] and (folder / "a.bin").read_bytes() == b"whole"


class _DiesUploading:
    """The real client, except that uploading one file fails as if the process were killed there."""

    def __init__(self, client, name: str):
        self._client, self._name = client, name

    def __getattr__(self, attr):
        return getattr(self._client, attr)

    def put_object(self, **kwargs):
        if kwargs["Key"].endswith("/" + self._name):
            raise ConnectionError("killed")
        return self._client.put_object(**kwargs)


def test_a_killed_republish_leaves_the_old_folder_whole_never_absent(s3_lake, tmp_path):
    """Issue #16: a republish killed before its manifest used to leave the folder absent (a catalog
    refresh then read 5 of 6 robot-days); now the old version stays, whole, for every reader."""
    prefix = "episodes/robot=r1/date=2026-03-02"
    s3_lake.publish_dir(prefix, _folder(tmp_path, "v1", {"a": b"old-a", "b": b"old-b"}))
    dying = S3Lake(_DiesUploading(s3_lake.client, "b"), BUCKET, s3_lake.prefix, workers=1)
    with pytest.raises(LakeError, match="killed"):
        dying.publish_dir(prefix, _folder(tmp_path, "v2", {"a": b"new-a", "b": b"new-b"}), replace=True)
    assert s3_lake.exists(prefix)
    assert s3_lake.read_bytes(f"{prefix}/a") == b"old-a"
    with s3_lake.local_dir(prefix) as folder:
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"a": b"old-a", "b": b"old-b"}
    assert _keys(s3_lake, "episodes/") == [f"{prefix}/a", f"{prefix}/b"]
    assert s3_lake.publish_dir(prefix, _folder(tmp_path, "v3", {"a": b"new-a", "b": b"new-b"}), replace=True)
    with s3_lake.local_dir(prefix) as folder:
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"a": b"new-a", "b": b"new-b"}
    assert s3_lake.read_bytes(f"{prefix}/b") == b"new-b"
    # nothing of the killed attempt or of the old version is left, hidden or not
    leftovers = [o["Key"] for o in s3_lake.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{s3_lake.prefix}/{prefix}/")
                 .get("Contents", [])]
    assert sum(".gen-" in k for k in leftovers) == 2 and len(leftovers) == 5  # a, b, the generation's a, b, manifest


def test_local_dir_refuses_a_folder_changed_under_its_manifest(s3_lake, tmp_path):
    s3_lake.publish_dir("policies/p/v1", _folder(tmp_path, "v1", {"model.bin": b"v1", "config.json": b"{}"}))
    # Another writer replaces one file without a new manifest (a concurrent republish mid-way).
    s3_lake.client.put_object(Bucket=BUCKET, Key=f"{s3_lake.prefix}/policies/p/v1/model.bin", Body=b"v2")
    with pytest.raises(LakeError, match="changed while it was being read"), s3_lake.local_dir("policies/p/v1"):
        pass


def test_local_dir_refuses_manifest_names_that_escape(s3_lake, tmp_path):
    bad = {"files": {"../../escape": {"size": 1, "etag": "x"}}}
    s3_lake.write_bytes(f"datasets/evil/{FOLDER_MANIFEST}", json.dumps(bad).encode())
    with pytest.raises(LakeError, match="invalid lake key"), s3_lake.local_dir("datasets/evil"):
        pass
    assert not (tmp_path.parent / "escape").exists()


def test_local_path_temp_files_are_removed(s3_lake):
    s3_lake.write_bytes("x/y.bin", b"1")
    with s3_lake.local_path("x/y.bin") as path:
        assert path.exists()
    assert not path.exists() and not path.parent.exists()


# --- opening the lake ------------------------------------------------------------------------


def test_open_lake_s3(s3_client):
    lake = open_lake("s3://flywheel-test-lake/prod/lake/", s3_client=s3_client, allow_http=True)
    assert isinstance(lake, S3Lake) and (lake.bucket, lake.prefix) == ("flywheel-test-lake", "prod/lake")
    assert lake.uri("catalog/episodes.parquet") == "s3://flywheel-test-lake/prod/lake/catalog/episodes.parquet"
    assert open_lake("s3://flywheel-test-lake", s3_client=s3_client, allow_http=True).root_uri == "s3://flywheel-test-lake"
    with pytest.raises(LakeError, match="not supported without an S3 client"):
        open_lake("s3://flywheel-test-lake/x")
    for bad in ["s3://Bad_Bucket/x", "s3://flywheel-test-lake/../x", "s3://flywheel-test-lake/a//b", "s3:///x"]:
        with pytest.raises(LakeError, match="invalid S3 lake root"):
            open_lake(bad, s3_client=s3_client)


def test_lake_resource_reaches_s3_through_env_vars(seaweed, s3_prefix, monkeypatch, flywheel_home):
    # The local folder stays the default: no S3 variable set, nothing bound.
    for var in LAKE_S3_ENV.values():
        monkeypatch.delenv(var, raising=False)
    assert isinstance(lake_resource_from_env().lake(), LocalLake)
    monkeypatch.setenv("FLYWHEEL_LAKE", f"s3://{BUCKET}/{s3_prefix}")
    monkeypatch.setenv("FLYWHEEL_S3_ENDPOINT_URL", seaweed.endpoint_url)
    monkeypatch.setenv("FLYWHEEL_S3_REGION", seaweed.region)
    monkeypatch.setenv("FLYWHEEL_S3_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("FLYWHEEL_S3_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("FLYWHEEL_S3_ALLOW_HTTP", "true")  # the test server is plain http on 127.0.0.1
    resource = lake_resource_from_env()
    # Bound as environment references (resolved when the resource starts), so no secret is in its config.
    assert isinstance(resource.aws_secret_access_key, dg.EnvVar) and isinstance(resource.endpoint_url, dg.EnvVar)

    @dg.asset
    def probe(lake: LakeResource) -> str:
        store = lake.lake()
        store.write_bytes("probe/hello.txt", b"hi")
        return store.uri("probe/hello.txt")

    result = dg.materialize([probe], resources={"lake": resource})
    assert result.output_for_node("probe") == f"s3://{BUCKET}/{s3_prefix}/probe/hello.txt"
    assert S3Lake(seaweed.client(), BUCKET, s3_prefix).read_bytes("probe/hello.txt") == b"hi"
    # Wrong credentials are refused by the server, and the error names the object.
    monkeypatch.setenv("FLYWHEEL_S3_SECRET_ACCESS_KEY", "wrong")
    with dg.build_resources({"lake": lake_resource_from_env()}) as resources:
        with pytest.raises(LakeError, match=f"s3://{BUCKET}/{s3_prefix}/probe/hello.txt: GET failed"):
            resources.lake.lake().read_bytes("probe/hello.txt")
