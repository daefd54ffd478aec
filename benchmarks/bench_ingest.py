"""Ingest speed and memory, each beside its peer in the same run (these machines are shared and noisy).

1. Standardize (decode + align + write Parquet) a 10-minute log of a 7-joint arm (about 470k
   messages, 440 MB with zstd; see arm7_log.py) against mcap-ros2-support's
   ``iter_decoded_messages`` reading the same file. Goal: >= 15x.
2. The general decoder, on messages whose layout changes from one to the next (a JointState whose
   joints and frame id vary), against rosbags' ``deserialize_cdr`` on the same payloads. Goal: >= 1x.
3. JSON and Protobuf channels (a 6-joint arm written by mcap's Writer / mcap-protobuf-support's
   Writer, see structured_logs.py): our batch decoders on the mapping's fields against the naive
   per-message decode (``json.loads`` per payload; mcap-protobuf-support's decoder, i.e.
   ``ParseFromString`` per payload), on the same payloads; and the whole read (file -> columns)
   against mcap's reader with those per-message decoders. No goal: the ratios are printed.
4. Peak memory of standardizing a 2 GB log in a fresh process (RSS high-water mark). Goal: < 1 GB.
   Skipped with --quick.

Usage: python benchmarks/bench_ingest.py [--minutes 10] [--quick] [--workdir DIR]
(``make bench`` runs it with the defaults.)
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

sys.path.insert(0, str(Path(__file__).parent))
from arm7_log import EMBODIMENT, write_arm7_log  # noqa: E402
from structured_logs import write_json_log, write_protobuf_log  # noqa: E402
from timing import best_of  # noqa: E402

from flywheel_pipelines.lib.episodes.embodiment import parse_embodiment  # noqa: E402
from flywheel_pipelines.lib.episodes.standardize import SourceFile, standardize  # noqa: E402
from flywheel_pipelines.lib.rosbag.cdr import MessageType, StreamDecoder  # noqa: E402


def standardize_file(path: Path) -> int:
    emb = parse_embodiment(EMBODIMENT, source="arm7")
    result = standardize([SourceFile(path.name, path, "-")], emb, robot="arm7", day="2026-11-22")
    for table in (result.frames, result.episodes):
        pq.write_table(table, io.BytesIO(), compression="zstd")
    return result.frames.num_rows


def peer_decode(path: Path) -> int:
    with open(path, "rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        return sum(1 for _ in reader.iter_decoded_messages())


def variable_layout_payloads(n: int = 40_000, *, unique_names: bool = False) -> list[bytes]:
    """JointStates whose joint count and frame id change from message to message (81 layouts).

    ``unique_names``: the worst case, every message names its joints as never before.
    """
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    T = store.types
    rng = np.random.default_rng(1)
    joints = [f"joint{i}" for i in range(9)]
    frames = ["base", "base_link", "tool0", "panda_hand", "camera_optical_frame", "map", "odom", "world", "ee"]
    out = []
    for i in range(n):
        k = int(rng.integers(1, 10))  # a tool change, a gripper that comes and goes: layouts vary
        names = [f"{j}_{i}" for j in joints[:k]] if unique_names else joints[:k]
        stamp = T["builtin_interfaces/msg/Time"](sec=i, nanosec=i)
        header = T["std_msgs/msg/Header"](stamp=stamp, frame_id=str(rng.choice(frames)))
        msg = T["sensor_msgs/msg/JointState"](header=header, name=names, position=rng.normal(size=k), velocity=rng.normal(size=k),
                                              effort=np.zeros(0))
        out.append(bytes(store.serialize_cdr(msg, "sensor_msgs/msg/JointState")))
    return out


def bench_variable_layout(repeat: int, *, unique_names: bool = False) -> None:
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    payloads = variable_layout_payloads(unique_names=unique_names)
    lengths = np.array([len(p) for p in payloads], np.int64)
    starts = np.zeros(len(payloads), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    buf = np.frombuffer(b"".join(payloads), np.uint8)
    mtype = MessageType("sensor_msgs/msg/JointState", store.fielddefs)

    def ours() -> StreamDecoder:
        decoder = StreamDecoder(mtype, ["header.stamp.sec", "header.stamp.nanosec", "position", "velocity"], ["name"])
        decoder.decode(buf, starts, lengths)
        return decoder

    def peer() -> None:
        for p in payloads:
            store.deserialize_cdr(p, "sensor_msgs/msg/JointState")

    t_peer, _ = best_of(repeat, peer)
    t_ours, decoder = best_of(repeat, ours)
    n = len(payloads)
    case = "worst case, never-seen joint names in every message" if unique_names else "joint count and frame id vary"
    print(f"\nvariable layout ({case}): {n} JointState messages, {len(decoder.templates)} templates, "
          f"{decoder.walked} walked one by one")
    print(f"  rosbags deserialize_cdr:        {n / t_peer:>10,.0f} msg/s")
    print(f"  flywheel general decoder:       {n / t_ours:>10,.0f} msg/s")
    print(f"  ratio ours / rosbags: {t_peer / t_ours:.2f}x")


def bench_structured(workdir: Path, repeat: int, seconds: float = 300.0) -> None:
    """JSON and Protobuf decode throughput beside the naive per-message decode (see the module docstring)."""
    from mcap_protobuf.decoder import DecoderFactory as ProtobufDecoderFactory

    from flywheel_pipelines.lib.episodes.embodiment import load_embodiment
    from flywheel_pipelines.lib.episodes.standardize import _requests
    from flywheel_pipelines.lib.rosbag.columnar import ChannelInfo, read_columns
    from flywheel_pipelines.lib.rosbag.structured import decoder_for

    for encoding, writer, mapping in (("json", write_json_log, "json_arm6"), ("protobuf", write_protobuf_log, "protobuf_arm6")):
        path = workdir / f"arm6_{encoding}_{seconds:g}s.mcap"
        if not path.exists():
            writer(path, seconds=seconds, episodes=10)
        requests = _requests(load_embodiment(mapping))
        factory = ProtobufDecoderFactory()
        by_topic: dict[str, list] = {}
        with open(path, "rb") as fh:
            for schema, channel, message in make_reader(fh).iter_messages(log_time_order=False):
                by_topic.setdefault(channel.topic, [schema, []])[1].append(message.data)
        n = sum(len(v[1]) for v in by_topic.values())

        def naive(by_topic=by_topic, encoding=encoding, factory=factory) -> None:
            for schema, payloads in by_topic.values():
                decode = json.loads if encoding == "json" else factory.decoder_for("protobuf", schema)
                for payload in payloads:
                    decode(payload)

        def naive_fields(by_topic=by_topic, encoding=encoding, factory=factory, requests=requests) -> None:
            """The naive decode, then the mapped fields read from each decoded message into lists."""
            from flywheel_pipelines.lib.rosbag.cdr import parse_path

            for topic, (schema, payloads) in by_topic.items():
                decode = json.loads if encoding == "json" else factory.decoder_for("protobuf", schema)
                request = requests[topic]
                paths = [parse_path(p) for p in (*request.numeric, *request.text)]
                columns: list[list] = [[] for _ in paths]
                for payload in payloads:
                    msg = decode(payload)
                    for column, parts in zip(columns, paths, strict=True):
                        value = msg
                        for part in parts:
                            value = value[part] if encoding == "json" or isinstance(part, int) else getattr(value, part)
                        column.append(value if encoding == "json" or isinstance(value, (int, float, str)) else list(value))

        batches = {}
        for topic, (schema, payloads) in by_topic.items():
            info = ChannelInfo(topic, topic, schema.name, encoding, schema.encoding, schema.data)
            lengths = np.array([len(p) for p in payloads], np.int64)
            starts = np.zeros(len(payloads), np.int64)
            np.cumsum(lengths[:-1], out=starts[1:])
            batches[topic] = (info, np.frombuffer(b"".join(payloads), np.uint8), starts, lengths)

        def ours(batches=batches, requests=requests) -> None:
            for topic, (info, buf, starts, lengths) in batches.items():
                request = requests[topic]
                decoder = decoder_for(info, request.numeric, request.text, stamp=request.stamp)
                decoder.decode(buf, starts, lengths)

        def naive_file(path=path, encoding=encoding) -> None:
            with open(path, "rb") as fh:
                if encoding == "json":
                    for _schema, _channel, message in make_reader(fh).iter_messages():
                        json.loads(message.data)
                else:
                    for _ in make_reader(fh, decoder_factories=[ProtobufDecoderFactory()]).iter_decoded_messages():
                        pass

        t_naive, _ = best_of(repeat, naive)
        t_naive_fields, _ = best_of(repeat, naive_fields)
        t_ours, _ = best_of(repeat, ours)
        t_naive_file, _ = best_of(repeat, naive_file)
        t_ours_file, _ = best_of(repeat, lambda path=path, requests=requests: read_columns(path, requests))
        what = "json.loads per message" if encoding == "json" else "mcap-protobuf-support decoder (ParseFromString) per message"
        print(f"\n{encoding}: {path.name}, {n:,} messages ({path.stat().st_size / 1e6:.0f} MB), fields of {mapping}")
        print(f"  decode, naive ({what}): {n / t_naive:>10,.0f} msg/s")
        print(f"  decode, flywheel batch decoder (mapped fields, columns): {n / t_ours:>10,.0f} msg/s")
        print(f"  ratio ours / naive (decode): {t_naive / t_ours:.2f}x")
        print(f"  decode + read the mapped fields, naive (per message):   {n / t_naive_fields:>10,.0f} msg/s")
        print(f"  ratio ours / naive (decode + fields): {t_naive_fields / t_ours:.2f}x")
        print(f"  file -> decoded, naive (mcap reader + per-message decode): {n / t_naive_file:>10,.0f} msg/s")
        print(f"  file -> columns, flywheel read_columns:                    {n / t_ours_file:>10,.0f} msg/s")
        print(f"  ratio ours / naive (whole read): {t_naive_file / t_ours_file:.2f}x")


def bench_memory(workdir: Path) -> None:
    big = workdir / "arm7_2gb.mcap"
    if not big.exists():
        t0 = time.perf_counter()
        n = write_arm7_log(big, minutes=45.0)
        print(f"\n(wrote {big.name}: {n} messages, {big.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s)")
    code = (
        "import resource, sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path;"
        "from bench_ingest import standardize_file; frames = standardize_file(Path(sys.argv[1]));"
        "print(frames, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    t0 = time.perf_counter()
    here = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", code, str(big), here], capture_output=True, text=True, check=True)
    frames, rss_kb = out.stdout.split()
    print(f"\nmemory: standardize {big.stat().st_size / 1e9:.2f} GB ({frames} frames) in {time.perf_counter() - t0:.1f} s, "
          f"peak RSS {int(rss_kb) / 1024:.0f} MB (goal < 1024 MB; file/RSS = {big.stat().st_size / 1024 / int(rss_kb):.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the 2 GB memory run")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated logs here between runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / f"arm7_{args.minutes:g}min.mcap"
        if not log.exists():
            write_arm7_log(log, minutes=args.minutes)
        t_peer, messages = best_of(1, lambda: peer_decode(log))
        t_ours, frames = best_of(args.repeat, lambda: standardize_file(log))
        print(f"log: {log.name}, {log.stat().st_size / 1e6:.0f} MB, {messages:,} messages -> {frames:,} frames")
        print(f"  mcap-ros2-support iter_decoded_messages (decode only): {messages / t_peer:>10,.0f} msg/s ({t_peer:.2f} s)")
        print(f"  flywheel standardize (decode + align + Parquet):       {messages / t_ours:>10,.0f} msg/s ({t_ours:.2f} s)")
        print(f"  ratio ours / peer: {t_peer / t_ours:.1f}x (goal >= 15x)")
        bench_variable_layout(args.repeat)
        bench_variable_layout(args.repeat, unique_names=True)
        bench_structured(workdir, args.repeat)
        if not args.quick:
            bench_memory(workdir)
    print(f"\n(this process's peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
