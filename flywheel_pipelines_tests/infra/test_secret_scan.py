"""Credentials never reach the outputs: `flywheel demo` on an S3 lake (a SeaweedFS of its own whose
only key pair is recognizable), with recognizable AWS, MLflow and PostgreSQL secrets in the
environment too, then every output is scanned for every secret: each object in the bucket (Parquet
decoded, since its pages are compressed), the server's own files at rest, the FLYWHEEL_HOME
(Dagster run and event storage, compute logs, MLflow store and artifacts) and the run's output.
A hit fails with the file (or object) and the byte offset."""

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel_pipelines.lib import access
from flywheel_pipelines_tests.conftest import missing
from flywheel_pipelines_tests.infra.seaweed import SeaweedUnavailable, seaweed_s3, weed_binary

BUCKET, PREFIX = "flywheel-scan", "lake"
CHECKOUT = Path(__file__).resolve().parents[2]


def _secret(label: str) -> str:
    # Recognizable in a hexdump, unique to this run, and long enough never to occur by chance.
    return f"FWSECRET{label}{secrets.token_hex(12).upper()}"


def find_secrets(data: bytes, values: dict[str, str]) -> Iterator[tuple[str, int]]:
    """(name, offset) of every occurrence of a secret value in ``data`` (as UTF-8, or as UTF-16
    such as a Windows-style log would hold)."""
    for name, value in values.items():
        for needle in (value.encode(), value.encode("utf-16-le")):
            start = data.find(needle)
            while start >= 0:
                yield name, start
                start = data.find(needle, start + 1)


def _decoded(path_or_bytes, name: str) -> bytes:
    """What a reader of the file sees: a Parquet file's values (its pages are compressed, so a
    byte scan alone would miss a secret in a column), else the bytes themselves."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    if name.endswith(".parquet") and data[:4] == b"PAR1":
        table = pq.read_table(pa.BufferReader(data))
        return data + repr(table.to_pylist()).encode() + repr(table.schema.metadata).encode()
    return data


def scan_tree(root: Path, values: dict[str, str], scanned: list[Path] | None = None) -> list[str]:
    """Hits in every regular file under ``root`` (appended to ``scanned`` when given)."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        hits += [f"{path} at byte {offset}: {name}" for name, offset in find_secrets(_decoded(path, path.name), values)]
        if scanned is not None:
            scanned.append(path)
    return hits


def scan_bucket(client, values: dict[str, str]) -> tuple[int, list[str]]:
    hits, count = [], 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            count += 1
            data = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            hits += [f"s3://{BUCKET}/{item['Key']} at byte {offset}: {name}"
                     for name, offset in find_secrets(_decoded(data, item["Key"]), values)]
    return count, hits


def test_the_scanner_finds_a_planted_secret_in_plain_and_compressed_files(tmp_path):
    values = {"PLANTED": _secret("PLANT")}
    (tmp_path / "run.log").write_bytes(b"x" * 17 + values["PLANTED"].encode())
    # Deflate Huffman-codes its literals, so the secret's bytes are not in the file as written.
    notes = [f"run {i}: token={values['PLANTED']}" for i in range(200)]
    pq.write_table(pa.table({"note": notes}), tmp_path / "t.parquet", compression="gzip", use_dictionary=False,
                   write_statistics=False)  # min/max statistics would hold it in plain
    assert values["PLANTED"].encode() not in (tmp_path / "t.parquet").read_bytes()  # compressed away
    hits = scan_tree(tmp_path, values)
    assert f"{tmp_path / 'run.log'} at byte 17: PLANTED" in hits
    assert any(h.startswith(f"{tmp_path / 't.parquet'} at byte") for h in hits)


@pytest.mark.slow
def test_no_credential_reaches_any_output_of_a_demo_on_an_s3_lake(tmp_path_factory):
    try:
        weed_binary()
    except SeaweedUnavailable as exc:
        missing(str(exc))
    values = {name: _secret(label) for name, label in [
        ("FLYWHEEL_S3_ACCESS_KEY_ID", "AK"), ("FLYWHEEL_S3_SECRET_ACCESS_KEY", "SK"),
        ("AWS_ACCESS_KEY_ID", "AWSAK"), ("AWS_SECRET_ACCESS_KEY", "AWSSK"), ("AWS_SESSION_TOKEN", "AWSST"),
        ("MLFLOW_TRACKING_TOKEN", "MLT"), ("MLFLOW_TRACKING_PASSWORD", "MLP"), ("DAGSTER_PG_PASSWORD", "PG")]}
    identity = {"name": "flywheel-scan", "actions": ["Read", "Write", "List", "Tagging"], "credentials": [
        {"accessKey": values["FLYWHEEL_S3_ACCESS_KEY_ID"], "secretKey": values["FLYWHEEL_S3_SECRET_ACCESS_KEY"]}]}
    work = tmp_path_factory.mktemp("secret-scan")
    home = work / "home"
    (home / "dagster_home").mkdir(parents=True)
    with seaweed_s3(work / "seaweed", identities=[identity]) as server:
        admin = server.client()
        admin.create_bucket(Bucket=BUCKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "AWS_", "MLFLOW_"))}
        env.update(values)
        env.update({
            "FLYWHEEL_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"),
            "FLYWHEEL_LAKE": f"s3://{BUCKET}/{PREFIX}", "FLYWHEEL_S3_ENDPOINT_URL": server.endpoint_url,
            "FLYWHEEL_S3_REGION": server.region, "FLYWHEEL_S3_ALLOW_HTTP": "true", "FLYWHEEL_S3_SSE": "AES256",
            "DAGSTER_DISABLE_TELEMETRY": "1", "GIT_PYTHON_REFRESH": "quiet", "MUJOCO_GL": env.get("MUJOCO_GL", "egl"),
        })
        proc = subprocess.run([sys.executable, "-m", "flywheel_pipelines.cli", "demo", "--robots", "2", "--days", "2",
                               "--episodes", "20"], env=env, cwd=CHECKOUT, capture_output=True, timeout=900)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output.decode(errors="replace")[-6000:]
        (work / "demo.log").write_bytes(output)
        # The demo really ran on the bucket, with its (recognizable) keys, encrypting every write.
        objects, bucket_hits = scan_bucket(admin, values)
        released = admin.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/releases/")
        top = {p["Prefix"].split("/")[1] + "/" for p in
               admin.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/", Delimiter="/").get("CommonPrefixes", [])}
        head = admin.head_object(Bucket=BUCKET, Key=f"{PREFIX}/catalog/episodes.parquet")
    assert objects > 50 and released.get("KeyCount", 0) > 0, "the demo published no release into the bucket"
    assert head["ServerSideEncryption"] == "AES256"
    # Everything the demo wrote outside raw/ is under a prefix the pipeline role may write.
    assert top - {"raw/"} <= set(access.DERIVED_PREFIXES), sorted(top - {"raw/"} - set(access.DERIVED_PREFIXES))
    # Everything on disk: the FLYWHEEL_HOME (Dagster storage and logs, MLflow), the demo's output and
    # the server's own files at rest, except its identities config (s3.json), which holds the key
    # pair by design.
    config = str(work / "seaweed" / "s3.json")
    scanned: list[Path] = []
    hits = bucket_hits + [h for h in scan_tree(work, values, scanned) if not h.startswith(config + " ")]
    print(f"scanned {objects} objects and {len(scanned)} files ({sum(p.stat().st_size for p in scanned) / 1e6:.0f} MB)")
    # The run's own records were there to scan: Dagster's run and event storage, the MLflow store.
    assert any(p.suffix == ".db" and home / "dagster_home" in p.parents for p in scanned)
    assert any(p.suffix == ".db" and home / "mlflow" in p.parents for p in scanned)
    assert not hits, "credentials found in outputs:\n" + "\n".join(hits[:50])
