"""Camera topics are opt-in: nothing of an image topic outside the mapping's ``images:`` list leaves
the raw log, and an allowlisted one leaves only its stamps (frames reference the raw message).

A real MCAP with a 30 Hz CompressedImage topic (benchmarks/arm7_log.py) goes through the manifest,
``flywheel logs inspect``, standardization, the catalog and a LeRobot export; every artifact is
searched for the image payloads, and every table for a column that could carry bytes.
"""

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from flywheel_pipelines.cli import inspect_document
from flywheel_pipelines.lib.catalog import build_catalog
from flywheel_pipelines.lib.datasets.curation import CurationSpec, build_dataset, select_episodes
from flywheel_pipelines.lib.episodes.embodiment import parse_embodiment
from flywheel_pipelines.lib.episodes.standardize import SourceFile, standardize
from flywheel_pipelines.lib.governance.policy import classify
from flywheel_pipelines.lib.ingest.manifest import write_manifest
from flywheel_pipelines.lib.rosbag.manifest import inspect_log
from flywheel_pipelines.lib.storage import LocalLake, sha256_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from arm7_log import EMBODIMENT, TOPICS, write_arm7_log  # noqa: E402

ROBOT, DAY = "r201", "2026-03-02"
KEY = f"raw/robot={ROBOT}/date={DAY}/arm7.mcap"
CAMERA = TOPICS["camera"][0]
WITHOUT_IMAGES = EMBODIMENT.split("images:")[0] + "tolerance:" + EMBODIMENT.split("tolerance:")[1]


@pytest.fixture(scope="module")
def camera_log(tmp_path_factory) -> tuple[LocalLake, Path, list[bytes]]:
    root = tmp_path_factory.mktemp("camera")
    log = root / "arm7.mcap"
    write_arm7_log(log, minutes=0.7)
    lake = LocalLake(root / "lake")
    lake.put_raw(KEY, log)
    return lake, log, payload_samples(log)


def payload_samples(log: Path, n: int = 40) -> list[bytes]:
    """24 random bytes from each of the first ``n`` images: unique to that image."""
    samples = []
    with open(log, "rb") as fh:
        for _s, channel, _m, msg in make_reader(fh, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            if channel.topic == CAMERA and len(samples) < n:
                samples.append(bytes(msg.data[1000:1024]))
    assert len(samples) == n
    assert len(leaks(log.read_bytes(), samples)) == n  # the search finds payloads where they are
    return samples


def leaks(text_or_bytes, samples: list[bytes]) -> list[str]:
    """Forms a copied payload would take in a text artifact: raw, hex, base64, a Python bytes repr."""
    import base64

    blob = text_or_bytes if isinstance(text_or_bytes, bytes) else text_or_bytes.encode()
    found = []
    for s in samples:
        for form in (s, s.hex().encode(), base64.b64encode(s)[:24], repr(s)[2:-1].encode()):
            if form in blob:
                found.append(form[:16].hex())
    return found


def _byte_columns(table: pa.Table) -> list[str]:
    """Columns that could hold pixels: binary, or lists of (u)int8."""
    out = []
    for f in table.schema:
        t = f.type
        while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            t = t.value_type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or t in (pa.uint8(), pa.int8()):
            out.append(f.name)
    return out


@pytest.mark.parametrize("mapping", ["allowlisted", "not_listed"])
def test_no_pixels_leave_the_raw_log(camera_log, tmp_path, mapping: str) -> None:
    lake, log, samples = camera_log
    emb = parse_embodiment(EMBODIMENT if mapping == "allowlisted" else WITHOUT_IMAGES, source=f"arm7-{mapping}")
    manifest = write_manifest(lake, ROBOT, DAY)
    (entry,) = manifest["files"]
    camera = [t for t in entry["topics"] if t["topic"] == CAMERA]
    # The manifest describes the camera topic (name, type, count): metadata, never a frame.
    assert camera and camera[0]["count"] > 500 and classify(camera[0]["type"]) == "camera"
    inspected = json.dumps(inspect_document(inspect_log(log, key=KEY, decode=True), decoded=True))

    result = standardize([SourceFile(KEY, lake.path(KEY), sha256_file(log))], emb, robot=ROBOT, day=DAY)
    assert result.episodes.num_rows >= 1 and result.frames.num_rows > 100
    catalog = build_catalog([result.episodes])
    spec = CurationSpec(name="arm7", outcomes=(), val_fraction=0.0, min_frames=1, include_quality_issues=True)
    built = build_dataset(tmp_path / "ds", selected=select_episodes(catalog, spec),
                          load_frames=lambda r, d: result.frames, spec=spec, emb=emb)
    assert built.episodes >= 1

    image_columns = [c for c in result.frames.column_names if "images" in c]
    if mapping == "allowlisted":
        # Only the stamp of the chosen image: the frame points into the raw log, which keeps the pixels.
        assert image_columns == ["observation.images.wrist.stamp_ns"]
        assert result.frames.schema.field(image_columns[0]).type == pa.int64()
        assert (result.frames[image_columns[0]].to_numpy() > 0).any()
    else:
        assert image_columns == []
        assert all(a["topic"] != CAMERA for a in result.accounting)  # not even counted by the episodes
    texts = {"manifest": json.dumps(manifest), "logs inspect": inspected,
             "accounting": json.dumps(result.accounting, default=str)}
    for path in sorted((tmp_path / "ds").rglob("*")):
        if path.is_file():
            texts[f"dataset {path.relative_to(tmp_path / 'ds')}"] = path.read_bytes()
            if path.suffix == ".parquet":
                t = pq.read_table(path)
                assert _byte_columns(t) == [], f"{path.name} has byte columns"
                texts[f"dataset {path.name} (decoded)"] = json.dumps(t.to_pylist(), default=str)
    info = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())
    assert not [k for k, f in info["features"].items() if f["dtype"] in ("image", "video")]
    for name, table in (("frames", result.frames), ("episodes", result.episodes), ("catalog", catalog)):
        assert _byte_columns(table) == [], f"{name} has byte columns"
        texts[name] = json.dumps(table.to_pylist(), default=str)
    leaked = {name: found for name, text in texts.items() if (found := leaks(text, samples))}
    assert leaked == {}
