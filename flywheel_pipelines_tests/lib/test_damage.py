"""Damaged logs, made from real ones: every kind of damage gets a verdict, every message that can
still be read is kept, the lost log-time ranges hold what is gone, and the raw input is never
modified.

Each case starts from a file in ``../shared/real-logs`` (or the project's simulated robot-day) and
damages a copy the way robots, recorders and disks do. The truth comes from the intact original,
read with ``mcap``'s own reader (MCAP) or ``rosbags`` (rosbag2 sqlite3).
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import struct
from collections import Counter
from pathlib import Path

import pytest
from mcap.data_stream import ReadDataStream
from mcap.reader import make_reader
from mcap.records import Chunk, ChunkIndex
from mcap.records import Message as McapMessage
from mcap.stream_reader import breakup_chunk
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from flywheel_pipelines.lib.rosbag.manifest import FileManifest, inspect_log
from flywheel_pipelines.lib.rosbag.reader import iter_decoded, iter_messages
from flywheel_pipelines.lib.rosbag.report import ReadStats
from flywheel_pipelines_tests.conftest import require_real_logs

EVO = "mcap/evo__nav2_turtlebot.mcap"  # Go writer, one zstd chunk
JOINTS = "rosbag2/derived__plotjuggler_fake_joint_state_mcap/derived__plotjuggler_fake_joint_state_mcap.mcap"  # uncompressed
WBAG = "rosbag2/ros2_rosbag2__rosbag2_py__mcap_wbag"  # five split MCAP parts
DB3_BAG = "rosbag2/plotjuggler__rosbag2_test"  # sqlite3 storage
DB3 = "rosbag2_test_0.db3"

Message = tuple[str, int, bytes]  # topic, log time, payload


# -- helpers --------------------------------------------------------------------------------------


def real(relative: str) -> Path:
    return require_real_logs() / relative


def copy_of(relative: str, tmp_path: Path) -> Path:
    """A writable copy of a real log (file or folder)."""
    source = real(relative)
    target = tmp_path / source.name
    if source.is_dir():
        shutil.copytree(source, target)
        for file in target.iterdir():
            file.chmod(0o644)
    else:
        shutil.copyfile(source, target)
    return target


def file_order(path: Path) -> list[Message]:
    """The messages of an intact MCAP file in the order they are stored, per ``mcap``'s reader."""
    with path.open("rb") as fh:
        return [(c.topic, m.log_time, m.data) for _s, c, m in make_reader(fh).iter_messages(log_time_order=False)]


def summary_chunks(path: Path) -> list[ChunkIndex]:
    with path.open("rb") as fh:
        return sorted(make_reader(fh).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset)


def read_all(path: Path) -> tuple[list[Message], ReadStats]:
    stats = ReadStats()
    return [(m.topic, m.log_time_ns, m.data) for m in iter_messages(path, stats=stats)], stats


def rechunk(source: Path, target: Path, *, chunk_size: int = 16_384,
            compression: CompressionType = CompressionType.ZSTD, use_chunking: bool = True) -> list[Message]:
    """Rewrites a real log's messages (same schemas, channels, times and bytes) into many chunks,
    so that one chunk can be damaged while the rest stay intact (or into no chunks at all)."""
    with source.open("rb") as fh, target.open("wb") as out:
        writer = McapWriter(out, chunk_size=chunk_size, compression=compression, use_chunking=use_chunking)
        writer.start(profile="ros2")
        schemas: dict[int, int] = {}
        channels: dict[int, int] = {}
        for schema, channel, message in make_reader(fh).iter_messages(log_time_order=False):
            if channel.id not in channels:
                if schema.id not in schemas:
                    schemas[schema.id] = writer.register_schema(schema.name, schema.encoding, schema.data)
                channels[channel.id] = writer.register_channel(channel.topic, channel.message_encoding,
                                                               schemas[schema.id], channel.metadata)
            writer.add_message(channels[channel.id], message.log_time, message.data, message.publish_time,
                               message.sequence)
        writer.finish()
    return file_order(target)


def records_offset(chunk: ChunkIndex) -> int:
    """File offset of a chunk's (compressed) records: opcode, length, 3 times/sizes, CRC, name, length."""
    return chunk.chunk_start_offset + 9 + 8 + 8 + 8 + 4 + 4 + len(chunk.compression) + 8


def chunk_messages(path: Path, chunk: ChunkIndex) -> list[Message]:
    """The messages stored in one chunk of an intact file, read with ``mcap``'s own code."""
    with path.open("rb") as fh:
        channels = make_reader(fh).get_summary().channels
        fh.seek(chunk.chunk_start_offset + 9)
        records = breakup_chunk(Chunk.read(ReadDataStream(fh)), validate_crc=True)
    return [(channels[r.channel_id].topic, r.log_time, r.data) for r in records if isinstance(r, McapMessage)]


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its SHA-256, to prove reading changed and created nothing."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f.relative_to(path.parent)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def inspect_untouched(path: Path, **kwargs) -> FileManifest:
    """inspect_log on a read-only input, asserting it is byte for byte the same afterwards."""
    before = snapshot(path)
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]} if path.is_dir() else {path: path.stat().st_mode}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        manifest = inspect_log(path, **kwargs)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert snapshot(path) == before
    return manifest


def assert_lost_within_ranges(lost: Counter, ranges: tuple[tuple[int, int], ...]) -> None:
    """Every message that was not read lies in a reported lost range."""
    outside = [m for m in lost.elements() if not any(a <= m[1] <= b for a, b in ranges)]
    assert not outside, f"{len(outside)} lost messages outside {ranges}, e.g. {outside[0][:2]}"


def counts(messages) -> dict[str, int]:
    return dict(Counter(m[0] for m in messages))


# -- MCAP: a file cut short -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated_log(tmp_path_factory, sim_day) -> Path:
    """The first session file of the project's simulated robot-day (a private copy)."""
    target = tmp_path_factory.mktemp("simulated") / "session.mcap"
    shutil.copyfile(sim_day.paths[0], target)
    return target


@pytest.mark.parametrize(
    ("log", "fraction"),
    [(EVO, 0.2), (EVO, 0.5), (EVO, 0.85), (JOINTS, 0.5), ("simulated", 0.6)],
)
def test_cut_inside_the_last_chunk_keeps_every_complete_message(tmp_path, simulated_log, log, fraction) -> None:
    source = simulated_log if log == "simulated" else real(log)
    reference = file_order(source)
    (chunk,) = summary_chunks(source)  # all three are single-chunk files: the cut is inside it
    cut = records_offset(chunk) + int(chunk.chunk_length * fraction)
    path = tmp_path / "cut.mcap"
    path.write_bytes(source.read_bytes()[:cut])

    kept, stats = read_all(path)
    manifest = inspect_untouched(path)

    # What is kept is exactly the messages stored before the cut, byte for byte.
    assert 0 < len(kept) < len(reference)
    assert Counter(kept) == Counter(reference[: len(kept)])
    assert manifest.verdict == "recovered"
    assert manifest.message_count == len(kept)
    assert manifest.reason.startswith(f"{path}: truncated at byte {cut}: the file ends inside the chunk at byte ")
    assert "no CRC can vouch for them" in manifest.reason
    assert manifest.lost_messages is None  # no summary survives to count against
    last_kept = max(t for _, t, _ in kept)
    assert manifest.lost_ranges == ((last_kept, chunk.message_end_time),) == tuple(stats.lost_ranges)
    assert_lost_within_ranges(Counter(reference) - Counter(kept), manifest.lost_ranges)


@pytest.mark.parametrize("log", [EVO, JOINTS])
def test_preallocated_file_cut_short_keeps_what_was_written(tmp_path, log) -> None:
    """A recorder that preallocates its file and loses power leaves zeros after the last write:
    the chunk that was being written is kept up to the zeros, as if the file had been cut there."""
    source = real(log)
    data = source.read_bytes()
    (chunk,) = summary_chunks(source)
    written = records_offset(chunk) + chunk.compressed_size // 2
    zeroed = tmp_path / "prealloc.mcap"
    zeroed.write_bytes(data[:written] + bytes(len(data) - written))
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[:written])

    kept, _stats = read_all(zeroed)
    manifest = inspect_untouched(zeroed)

    assert kept == read_all(cut)[0]
    assert manifest.verdict == "recovered"
    end = chunk.chunk_start_offset + chunk.chunk_length
    assert f"truncated at byte {end} of {len(data)}: zero bytes where a record should start" in manifest.reason
    assert "as where a preallocated file's writing stopped: kept the" in manifest.reason
    assert manifest.lost_ranges == inspect_log(cut).lost_ranges


def _record_ends(records: bytes) -> list[tuple[int, int]]:
    """(end offset, opcode) of each record in an uncompressed chunk: the test's own framing."""
    ends, position = [], 0
    while position < len(records):
        opcode, length = struct.unpack_from("<BQ", records, position)
        position += 9 + length
        ends.append((position, opcode))
    return ends


@pytest.mark.parametrize("extra", [0, 1, 9, 40])
def test_cut_uncompressed_chunk_keeps_messages_up_to_the_exact_record(tmp_path, extra) -> None:
    source = real(JOINTS)
    reference = file_order(source)
    (chunk,) = summary_chunks(source)
    start = records_offset(chunk)
    data = source.read_bytes()
    ends = _record_ends(data[start : start + chunk.uncompressed_size])
    message_ends = [end for end, opcode in ends if opcode == 0x05]
    complete = 1000  # cut just after the 1000th message record, plus ``extra`` bytes of the next
    path = tmp_path / "cut.mcap"
    path.write_bytes(data[: start + message_ends[complete - 1] + extra])

    kept, _stats = read_all(path)

    assert Counter(kept) == Counter(reference[:complete])


def test_cut_between_chunk_and_summary_keeps_everything(tmp_path) -> None:
    source = real(EVO)
    (chunk,) = summary_chunks(source)
    path = tmp_path / "cut.mcap"
    path.write_bytes(source.read_bytes()[: chunk.chunk_start_offset + chunk.chunk_length + 100])

    manifest = inspect_untouched(path)

    assert manifest.verdict == "recovered"
    assert manifest.message_count == len(file_order(source))
    assert f"truncated at byte {chunk.chunk_start_offset + chunk.chunk_length}" in manifest.reason
    assert manifest.lost_messages is None and manifest.lost_ranges == ()  # nothing says what followed


# -- MCAP: one chunk among many damaged -----------------------------------------------------------


COMPRESSIONS = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """The evo log re-chunked into many chunks (same messages, byte for byte), per compression."""
    made: dict[str, Path] = {}

    def make(compression: str) -> Path:
        if compression not in made:
            path = tmp_path_factory.mktemp("chunked") / f"evo_{compression}.mcap"
            rechunk(real(EVO), path, compression=COMPRESSIONS[compression])
            assert len(summary_chunks(path)) > 10
            made[compression] = path
        return made[compression]

    return make


@pytest.fixture(params=sorted(COMPRESSIONS))
def chunked_evo(request, chunked) -> Path:
    return chunked(request.param)


def _damage_chunk(chunked: Path, tmp_path: Path, damage) -> tuple[Path, ChunkIndex, list[Message]]:
    chunk = summary_chunks(chunked)[7]
    data = bytearray(chunked.read_bytes())
    damage(data, chunk)
    path = tmp_path / "damaged.mcap"
    path.write_bytes(bytes(data))
    return path, chunk, chunk_messages(chunked, chunk)


def _flip_a_record_byte(data: bytearray, chunk: ChunkIndex) -> None:
    data[records_offset(chunk) + chunk.compressed_size // 2] ^= 0x55


def _rename_compression(data: bytearray, chunk: ChunkIndex) -> None:
    name = records_offset(chunk) - 8 - len(chunk.compression)
    data[name : name + len(chunk.compression)] = b"x" * len(chunk.compression)


@pytest.mark.parametrize(
    ("compression", "damage"),
    [("zstd", _flip_a_record_byte), ("lz4", _flip_a_record_byte), ("none", _flip_a_record_byte),
     ("zstd", _rename_compression), ("lz4", _rename_compression)],
    ids=["zstd-flipped byte", "lz4-flipped byte", "none-flipped byte", "zstd-bad compression", "lz4-bad compression"],
)
def test_damaged_chunk_loses_exactly_its_messages(tmp_path, chunked, compression, damage) -> None:
    chunked_evo = chunked(compression)
    path, chunk, in_chunk = _damage_chunk(chunked_evo, tmp_path, damage)
    reference = file_order(chunked_evo)

    kept, _stats = read_all(path)
    manifest = inspect_untouched(path)

    assert Counter(kept) == Counter(reference) - Counter(in_chunk)
    assert manifest.verdict == "recovered"
    assert f"chunk at byte {chunk.chunk_start_offset}: " in manifest.reason
    if damage is _rename_compression:
        assert f"unsupported compression {'x' * len(chunk.compression)!r}" in manifest.reason
    elif not chunk.compression:
        assert "CRC mismatch" in manifest.reason
    else:  # corrupt compressed data fails to decompress, to the right size, or to the right CRC
        assert any(p in manifest.reason for p in ("data corrupt", "decompressed to", "CRC mismatch"))
    assert manifest.lost_messages == len(in_chunk)
    assert manifest.lost_ranges == ((chunk.message_start_time, chunk.message_end_time),)
    assert_lost_within_ranges(Counter(in_chunk), manifest.lost_ranges)


def test_damaged_chunk_length_loses_nothing(tmp_path, chunked_evo) -> None:
    path, chunk, _ = _damage_chunk(chunked_evo, tmp_path, lambda d, c: d.__setitem__(c.chunk_start_offset + 6, 0x7F))

    kept, _stats = read_all(path)
    manifest = inspect_untouched(path)

    assert Counter(kept) == Counter(file_order(chunked_evo))
    assert manifest.verdict == "recovered" and manifest.lost_messages == 0 and manifest.lost_ranges == ()
    assert f"chunk at byte {chunk.chunk_start_offset}: its record length" in manifest.reason


def _zero_record_header(data: bytearray, chunk: ChunkIndex) -> None:
    data[chunk.chunk_start_offset : chunk.chunk_start_offset + 9] = bytes(9)


def test_unframeable_chunk_is_skipped_with_the_summary(tmp_path, chunked_evo) -> None:
    path, chunk, in_chunk = _damage_chunk(chunked_evo, tmp_path, _zero_record_header)
    reference = file_order(chunked_evo)

    kept, _stats = read_all(path)
    manifest = inspect_untouched(path)

    assert manifest.verdict == "recovered"
    assert f"unreadable record at byte {chunk.chunk_start_offset}: zero bytes" in manifest.reason
    if chunk.compression:
        assert Counter(kept) == Counter(reference) - Counter(in_chunk)
        assert manifest.lost_messages == len(in_chunk)
        assert manifest.lost_ranges == ((chunk.message_start_time, chunk.message_end_time),)
    else:
        # Uncompressed records are themselves framed messages: the scan finds and keeps them all.
        assert Counter(kept) == Counter(reference)
        assert manifest.lost_messages == 0 and manifest.lost_ranges == ()


def test_unframeable_chunk_without_a_summary_is_scanned_past(tmp_path, chunked_evo) -> None:
    chunks = summary_chunks(chunked_evo)
    data_end = chunks[-1].chunk_start_offset + chunks[-1].chunk_length
    path, chunk, in_chunk = _damage_chunk(chunked_evo, tmp_path, _zero_record_header)
    path.write_bytes(path.read_bytes()[: data_end + 2000])  # the summary and footer are gone
    reference = file_order(chunked_evo)

    kept, stats = read_all(path)
    manifest = inspect_untouched(path)

    assert manifest.verdict == "recovered"
    assert stats.skipped_bytes > 0
    assert f"unreadable record at byte {chunk.chunk_start_offset}: zero bytes" in manifest.reason
    assert "to the next readable record" in manifest.reason
    lost = Counter(reference) - Counter(kept)
    # Every chunk after the damage was found and read, so only that chunk's messages can be gone.
    assert not (lost - Counter(in_chunk))
    if chunk.compression:
        assert lost == Counter(in_chunk)
    assert manifest.lost_messages is None
    assert_lost_within_ranges(lost, manifest.lost_ranges)
    assert manifest.end_ns == max(t for _, t, _ in reference)


def test_zeroed_stretch_across_chunks_is_scanned_past(tmp_path, chunked_evo) -> None:
    # A lost disk block in the middle of a file that also lost its tail.
    chunks = summary_chunks(chunked_evo)
    first, last = chunks[5], chunks[8]
    data = bytearray(chunked_evo.read_bytes())
    zeroed = slice(first.chunk_start_offset + 100, last.chunk_start_offset + 50)
    data[zeroed] = bytes(zeroed.stop - zeroed.start)
    path = tmp_path / "zeroed.mcap"
    path.write_bytes(bytes(data[: len(data) - 5000]))
    reference = file_order(chunked_evo)

    kept, stats = read_all(path)
    manifest = inspect_untouched(path)

    lost = Counter(reference) - Counter(kept)
    assert manifest.verdict == "recovered"
    assert len(kept) > len(reference) // 2
    damaged = sum((Counter(chunk_messages(chunked_evo, c)) for c in chunks[5:9]), Counter())
    assert not (lost - damaged), "only the chunks the zeros hit may lose messages"
    assert_lost_within_ranges(lost, manifest.lost_ranges)
    assert stats.skipped_bytes > 0


def test_unchunked_log_with_its_header_overwritten_keeps_the_rest(tmp_path) -> None:
    # Without chunks, schemas, channels and messages are all top-level records: the scan must find
    # the definitions again (no summary to take them from), or every message after would be orphaned.
    path = tmp_path / "unchunked.mcap"
    reference = rechunk(real(EVO), path, use_chunking=False)
    data = bytearray(path.read_bytes())
    (header_length,) = struct.unpack_from("<Q", data, 9)
    data[8 : 8 + 9 + header_length] = bytes(9 + header_length)
    data = data[: len(data) * 9 // 10]  # and the summary is gone with the tail
    path.write_bytes(bytes(data))

    kept, stats = read_all(path)

    assert stats.problems[0] == (
        f"unreadable record at byte 8: zero bytes where a record should start (zero-filled or overwritten); "
        f"skipped {9 + header_length} bytes to the next readable record (schema) at byte {8 + 9 + header_length}"
    )
    assert len(kept) > len(reference) * 8 // 10
    assert Counter(kept) == Counter(reference[: len(kept)])  # everything up to the cut


# -- MCAP: summary and footer ---------------------------------------------------------------------


def test_damaged_summary_is_ignored_and_nothing_lost(tmp_path) -> None:
    path = copy_of(EVO, tmp_path)
    data = bytearray(path.read_bytes())
    (summary_start,) = struct.unpack_from("<Q", data, len(data) - 8 - 20)  # the footer's first field
    data[summary_start + 30] ^= 0xFF
    path.write_bytes(bytes(data))

    manifest = inspect_untouched(path)

    assert manifest.verdict == "recovered"
    assert "summary ignored" in manifest.reason  # by its CRC, or (the Go writer writes none) as unparseable
    assert manifest.message_count == len(file_order(real(EVO)))
    assert manifest.lost_messages == 0 and manifest.lost_ranges == ()


def test_damaged_footer_loses_nothing(tmp_path) -> None:
    path = copy_of(EVO, tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # the closing magic
    path.write_bytes(bytes(data))

    manifest = inspect_untouched(path)

    assert manifest.verdict == "recovered"
    assert "no valid footer" in manifest.reason
    assert manifest.message_count == len(file_order(real(EVO)))
    assert manifest.lost_messages == 0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (lambda: b"", "empty file (0 bytes)"),
        (lambda: real(WBAG + "/metadata.yaml").read_bytes(), "not a recognised log format"),
        (lambda: real(EVO).read_bytes()[:60], "truncated at byte"),
        (lambda: real(EVO).read_bytes()[:8] + bytes(4096), "zero bytes where a record should start"),
    ],
    ids=["zero-length", "not a log", "header only", "zeros after the magic"],
)
def test_unusable_file_is_rejected_naming_it(tmp_path, content, problem) -> None:
    path = tmp_path / "upload.mcap"
    path.write_bytes(content())

    manifest = inspect_untouched(path, key="raw/robot=r7/date=2026-01-01/upload.mcap")

    assert manifest.verdict == "rejected"
    assert manifest.reason.startswith("raw/robot=r7/date=2026-01-01/upload.mcap: ")
    assert problem in manifest.reason
    assert manifest.message_count == 0


def test_format_is_recognised_by_content_not_name(tmp_path) -> None:
    path = tmp_path / "mislabelled.mcap"
    shutil.copyfile(real("ros1/plotjuggler__fake_joint_state.bag"), path)

    manifest = inspect_untouched(path)

    assert manifest.verdict == "ok" and manifest.message_count == 2725


# -- MCAP: what does not decode -------------------------------------------------------------------


def test_unknown_encodings_and_undecodable_messages_are_counted_per_topic(tmp_path) -> None:
    """A schema encoding nobody knows, a message encoding with no ROS 2 decoder and payloads cut
    short are counted per topic; they are not damage and do not stop anything."""
    source = real(EVO)
    path = tmp_path / "odd.mcap"
    with source.open("rb") as fh, path.open("wb") as out:
        writer = McapWriter(out)
        writer.start(profile="ros2")
        channels: dict[str, int] = {}
        cut_payloads = 0
        for schema, channel, message in make_reader(fh).iter_messages(log_time_order=False):
            if channel.topic not in channels:
                encoding = "x-robot-idl" if channel.topic == "/tf" else schema.encoding
                schema_id = writer.register_schema(schema.name, encoding, schema.data)
                message_encoding = "protobuf" if channel.topic == "/tf_static" else channel.message_encoding
                channels[channel.topic] = writer.register_channel(channel.topic, message_encoding, schema_id)
            data = message.data
            if channel.topic == "/amcl_pose" and cut_payloads < 10:
                data, cut_payloads = data[:12], cut_payloads + 1  # a payload that does not match its schema
            writer.add_message(channels[channel.topic], message.log_time, data, message.publish_time)
        writer.finish()
    reference = counts(file_order(source))

    quick = inspect_untouched(path)
    decoded = inspect_untouched(path, decode=True)
    stats = ReadStats()
    yielded = Counter(raw.topic for raw, _msg in iter_decoded(path, stats=stats))

    for manifest in (quick, decoded):
        assert manifest.verdict == "ok" and manifest.reason is None
        assert {t.topic: t.count for t in manifest.topics} == reference
    by_topic = {t.topic: t for t in quick.topics}
    assert by_topic["/tf"].undecodable == reference["/tf"]
    assert "CDR messages with a 'x-robot-idl' schema" in by_topic["/tf"].decode_error
    assert not by_topic["/tf"].decodable and by_topic["/tf"].decodable_reason == by_topic["/tf"].decode_error
    assert by_topic["/tf_static"].undecodable == 1
    assert "protobuf messages with a 'ros2msg' schema" in by_topic["/tf_static"].decode_error
    assert by_topic["/odom"].decodable and by_topic["/odom"].decodable_reason is None
    assert by_topic["/amcl_pose"].undecodable == 0  # payloads are only checked when decoding
    by_topic = {t.topic: t for t in decoded.topics}
    assert {t: s.undecodable for t, s in by_topic.items()} == {"/tf": 5422, "/tf_static": 1, "/amcl_pose": 10, "/odom": 0}
    assert stats.undecodable_by_topic == {"/tf": 5422, "/tf_static": 1, "/amcl_pose": 10}
    assert yielded == {"/odom": 2639, "/amcl_pose": 125}
    assert not stats.damaged


# -- rosbag2 folders ------------------------------------------------------------------------------


def rosbags_messages(path: Path) -> list[tuple[str, int]]:
    with AnyReader([path], default_typestore=get_typestore(Stores.LATEST)) as reader:
        return [(c.topic, t) for c, t, _ in reader.messages()]


def part_messages(folder: Path, names: list[str]) -> list[tuple[str, int]]:
    return [(topic, t) for name in names for topic, t, _ in file_order(folder / name)]


def test_split_bag_with_a_missing_part_is_recovered_naming_it(tmp_path) -> None:
    bag = copy_of(WBAG, tmp_path)
    (bag / "wbag_2.mcap").unlink()
    others = part_messages(real(WBAG), ["wbag_0.mcap", "wbag_1.mcap", "wbag_3.mcap", "wbag_4.mcap"])
    missing = part_messages(real(WBAG), ["wbag_2.mcap"])

    manifest = inspect_untouched(bag, key="raw/robot=r7/date=2026-01-01/wbag")

    assert manifest.verdict == "recovered"
    assert manifest.reason.startswith("raw/robot=r7/date=2026-01-01/wbag: wbag_2.mcap: listed in metadata.yaml but missing")
    assert {t.topic: t.count for t in manifest.topics} == counts(others)
    assert manifest.lost_messages == len(missing) == 1240
    before = max(t for _, t in part_messages(real(WBAG), ["wbag_1.mcap"]))
    after = min(t for _, t in part_messages(real(WBAG), ["wbag_3.mcap"]))
    assert manifest.lost_ranges == ((before, after),)
    assert_lost_within_ranges(Counter((topic, t, b"") for topic, t in missing), manifest.lost_ranges)


def test_split_bag_with_a_cut_part_keeps_the_other_parts(tmp_path) -> None:
    bag = copy_of(WBAG, tmp_path)
    part = bag / "wbag_1.mcap"
    (chunk,) = summary_chunks(part)
    cut = records_offset(chunk) + chunk.compressed_size // 2  # one zstd block: nothing before the cut decodes
    part.write_bytes(part.read_bytes()[:cut])
    others = part_messages(real(WBAG), ["wbag_0.mcap", "wbag_2.mcap", "wbag_3.mcap", "wbag_4.mcap"])
    lost = Counter((topic, t, b"") for topic, t in part_messages(real(WBAG), ["wbag_1.mcap"]))

    manifest = inspect_untouched(bag)

    assert manifest.verdict == "recovered"
    assert f"wbag_1.mcap: truncated at byte {cut}: the file ends inside the chunk" in manifest.reason
    assert "no complete message before the cut" in manifest.reason
    assert {t.topic: t.count for t in manifest.topics} == counts(others)
    assert manifest.lost_messages == sum(lost.values()) == 1240  # metadata.yaml counts the loss
    assert_lost_within_ranges(lost, manifest.lost_ranges)


def test_bag_without_metadata_is_read_from_its_files(tmp_path) -> None:
    bag = copy_of(WBAG, tmp_path)
    (bag / "metadata.yaml").unlink()

    manifest = inspect_untouched(bag)

    assert manifest.verdict == "recovered"
    assert "no metadata.yaml" in manifest.reason
    assert "read the 5 storage file(s) found" in manifest.reason
    assert {t.topic: t.count for t in manifest.topics} == counts(rosbags_messages(real(WBAG)))
    assert manifest.lost_messages == 0  # each part checked against its own summary


def test_bag_without_metadata_names_a_gap_in_its_parts(tmp_path) -> None:
    bag = copy_of(WBAG, tmp_path)
    (bag / "metadata.yaml").unlink()
    (bag / "wbag_3.mcap").unlink()

    manifest = inspect_untouched(bag)

    assert manifest.verdict == "recovered"
    assert "wbag_3.mcap: missing (the split files are numbered without it)" in manifest.reason
    assert manifest.lost_messages is None
    before = max(t for _, t in part_messages(real(WBAG), ["wbag_2.mcap"]))
    after = min(t for _, t in part_messages(real(WBAG), ["wbag_4.mcap"]))
    assert manifest.lost_ranges == ((before, after),)


def test_sqlite_bag_without_metadata_is_read(tmp_path) -> None:
    bag = copy_of(DB3_BAG, tmp_path)
    (bag / "metadata.yaml").unlink()

    manifest = inspect_untouched(bag)

    assert manifest.verdict == "recovered" and "no metadata.yaml" in manifest.reason
    reference = rosbags_messages(real(DB3_BAG))
    assert {t.topic: t.count for t in manifest.topics if t.count} == counts(reference)


def test_bare_sqlite_file_is_read_like_a_bag_without_metadata(tmp_path) -> None:
    path = copy_of(f"{DB3_BAG}/{DB3}", tmp_path)

    manifest = inspect_untouched(path)

    assert manifest.verdict == "recovered"
    assert manifest.reason.startswith(f"{path}: a bare rosbag2 sqlite3 file: no metadata.yaml to check it against")
    reference = rosbags_messages(real(DB3_BAG))
    assert {t.topic: t.count for t in manifest.topics if t.count} == counts(reference)


def test_cut_sqlite_file_keeps_every_intact_page(tmp_path) -> None:
    bag = copy_of(DB3_BAG, tmp_path)
    database = bag / DB3
    database.write_bytes(database.read_bytes()[: database.stat().st_size // 2])
    reference = rosbags_messages(real(DB3_BAG))

    manifest = inspect_untouched(bag)

    assert manifest.verdict == "recovered"
    assert f"{DB3}: SQLite reports it damaged (database disk image is malformed); read page by page" in manifest.reason
    kept = manifest.message_count
    assert len(reference) // 3 < kept < len(reference)
    assert manifest.lost_messages == len(reference) - kept
    # The rows are kept in insertion (receive) order, so the kept ones are the earliest.
    by_time = sorted(t for _, t in reference)
    assert manifest.end_ns == by_time[kept - 1]
    assert manifest.lost_ranges == ((by_time[kept - 1], by_time[-1]),)


@pytest.mark.parametrize(("page", "lost_some"), [(3, False), (120, True)], ids=["table root", "leaf page"])
def test_overwritten_sqlite_page_loses_only_its_rows(tmp_path, page, lost_some) -> None:
    bag = copy_of(DB3_BAG, tmp_path)
    database = bag / DB3
    data = bytearray(database.read_bytes())
    data[(page - 1) * 4096 : page * 4096] = bytes(4096)
    database.write_bytes(bytes(data))
    reference = rosbags_messages(real(DB3_BAG))

    manifest = inspect_untouched(bag)

    assert manifest.verdict == "recovered"
    assert "read page by page" in manifest.reason
    lost = len(reference) - manifest.message_count
    assert manifest.lost_messages == lost
    if lost_some:
        assert 0 < lost < 50  # one 4 KiB page of ~100-byte rows
        ((low, high),) = manifest.lost_ranges
        assert high - low < 1_000_000_000
    else:
        assert lost == 0 and manifest.lost_ranges == ()


def test_sqlite_write_ahead_log_is_read_without_touching_the_file(tmp_path) -> None:
    """A recorder killed before SQLite folded its write-ahead log into the database: the rows in
    the log are part of the bag, and reading them must not fold it in (that would modify the raw
    upload)."""
    bag = copy_of(DB3_BAG, tmp_path)
    (bag / "metadata.yaml").unlink()
    work = tmp_path / "work" / DB3
    work.parent.mkdir()
    shutil.copyfile(bag / DB3, work)
    connection = sqlite3.connect(work)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute(
        "INSERT INTO messages (topic_id, timestamp, data) SELECT topic_id, timestamp + 100000000000, data "
        "FROM messages WHERE id <= 30"
    )
    connection.commit()
    # Copy the database and its log while the connection is open, before any checkpoint.
    shutil.copyfile(work, bag / DB3)
    shutil.copyfile(work.with_name(DB3 + "-wal"), bag / (DB3 + "-wal"))
    connection.close()

    manifest = inspect_untouched(bag)

    assert manifest.message_count == 4695 + 30
    assert sorted(p.name for p in bag.iterdir()) == [DB3, DB3 + "-wal"]


def test_sqlite_file_that_is_not_a_database_is_rejected(tmp_path) -> None:
    bag = copy_of(DB3_BAG, tmp_path)
    (bag / DB3).write_bytes(b"\x00" * 8192)

    manifest = inspect_untouched(bag)

    assert manifest.verdict == "rejected"
    assert manifest.reason.startswith(f"{bag}: ")
    assert f"{DB3}: neither MCAP nor SQLite" in manifest.reason


# -- ROS 1 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_cut_ros1_bag_is_read_record_by_record(tmp_path, fraction) -> None:
    source = real("ros1/plotjuggler__fake_joint_state.bag")
    with AnyReader([source]) as reader:
        reference = [t for _c, t, _d in reader.messages()]
    path = tmp_path / source.name
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])

    manifest = inspect_untouched(path)

    assert manifest.verdict == "recovered"
    assert manifest.reason.startswith(f"{path}: rosbags cannot open it")
    assert "read record by record" in manifest.reason
    (topic,) = manifest.topics
    assert (topic.topic, topic.type) == ("/fake_joints_state", "sensor_msgs/msg/JointState")
    # The bag is one uncompressed chunk written in time order: what is kept is its beginning.
    assert len(reference) * fraction * 0.8 < topic.count < len(reference)
    assert (topic.first_ns, topic.last_ns) == (reference[0], reference[topic.count - 1])
    assert manifest.lost_messages is None
