"""A 6-joint arm's logs in the two non-ROS MCAP encodings, written by those formats' own writers.

* :func:`write_json_log`: ``mcap``'s Writer, ``json`` channels with ``jsonschema`` schemas (as
  Foxglove's SDKs write them; stamps are Foxglove ``{sec, nsec}`` times).
* :func:`write_protobuf_log`: ``mcap-protobuf-support``'s Writer, ``protobuf`` channels whose
  schemas are FileDescriptorSets (stamps are ``google.protobuf.Timestamp``).

Both hold the same recording: ``/arm/joint_states`` (names, positions, velocities) at 200 Hz,
``/arm/command`` at 50 Hz, and ``/arm/events`` (episode_start / episode_end JSON strings, as
the simulated fleet writes them). Used by the tests and by ``bench_ingest.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

JOINTS = [f"j{i}" for i in range(6)]
T0 = 1_790_000_000_000_000_000
STATE_HZ, COMMAND_HZ = 200, 50

# Schemas as Foxglove's JSON channels carry them.
JSON_SCHEMAS = {
    "arm.JointState": {
        "type": "object",
        "properties": {
            "timestamp": {"type": "object", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}},
            "name": {"type": "array", "items": {"type": "string"}},
            "position": {"type": "array", "items": {"type": "number"}},
            "velocity": {"type": "array", "items": {"type": "number"}},
        },
    },
    "arm.Command": {
        "type": "object",
        "properties": {
            "timestamp": {"type": "object", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}},
            "position": {"type": "array", "items": {"type": "number"}},
            "gripper": {"type": "object", "properties": {"width": {"type": "number"}}},
        },
    },
    "arm.Event": {
        "type": "object",
        "properties": {
            "timestamp": {"type": "object", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}},
            "data": {"type": "string"},
        },
    },
}


def recording(seconds: float, episodes: int, seed: int = 0):
    """The arm's messages in log-time order: (topic, t_ns, fields)."""
    rng = np.random.default_rng(seed)
    out = []
    n_state = int(seconds * STATE_HZ)
    q = np.zeros(6)
    for i in range(n_state):
        t = T0 + i * 1_000_000_000 // STATE_HZ
        q = q + rng.normal(scale=0.01, size=6)
        out.append(("/arm/joint_states", t, {"name": JOINTS, "position": q.tolist(),
                                              "velocity": rng.normal(size=6).tolist()}))
        if i % (STATE_HZ // COMMAND_HZ) == 0:
            out.append(("/arm/command", t + 100_000, {"position": (q + 0.05).tolist(), "gripper": 0.04 + 0.01 * (i % 3)}))
    span = n_state * 1_000_000_000 // STATE_HZ
    for k in range(episodes):
        start = T0 + k * span // episodes + 50_000_000
        end = T0 + (k + 1) * span // episodes - 50_000_000
        out.append(("/arm/events", start, {"data": json.dumps({"event": "episode_start", "episode_id": f"arm6-{k}",
                                                                 "task": "pick"})}))
        out.append(("/arm/events", end, {"data": json.dumps({"event": "episode_end", "outcome": "success"})}))
    out.sort(key=lambda m: m[1])
    return out


def write_json_log(path: Path, *, seconds: float = 10.0, episodes: int = 2, chunk_size: int = 1 << 20) -> int:
    """Writes the recording with mcap's Writer as json/jsonschema channels; returns the message count."""
    from mcap.writer import Writer

    messages = recording(seconds, episodes)
    types = {"/arm/joint_states": "arm.JointState", "/arm/command": "arm.Command", "/arm/events": "arm.Event"}
    with open(path, "wb") as fh:
        writer = Writer(fh, chunk_size=chunk_size)
        writer.start(profile="", library="flywheel-tests")
        channels = {}
        for topic, name in types.items():
            schema = writer.register_schema(name, "jsonschema", json.dumps(JSON_SCHEMAS[name]).encode())
            channels[topic] = writer.register_channel(topic, "json", schema)
        for topic, t, fields in messages:
            doc = {"timestamp": {"sec": t // 10**9, "nsec": t % 10**9}}
            if topic == "/arm/command":
                doc.update(position=fields["position"], gripper={"width": fields["gripper"]})
            else:
                doc.update(fields)
            writer.add_message(channels[topic], t + 500_000, json.dumps(doc).encode(), t)
        writer.finish()
    return len(messages)


def protobuf_classes():
    """Message classes for the arm (built from a FileDescriptorProto; no protoc needed)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
    from google.protobuf.message_factory import GetMessageClass

    pool = descriptor_pool.Default()
    name = "flywheel_tests/arm.proto"
    try:
        pool.FindFileByName(name)
    except KeyError:
        fdp = descriptor_pb2.FileDescriptorProto(name=name, package="arm", syntax="proto3",
                                                 dependency=[timestamp_pb2.DESCRIPTOR.name])
        F = descriptor_pb2.FieldDescriptorProto
        repeated, optional = F.LABEL_REPEATED, F.LABEL_OPTIONAL

        def message(msg_name: str, *fields: tuple[str, int, int, int, str]) -> None:
            m = fdp.message_type.add(name=msg_name)
            for field_name, number, label, type_, type_name in fields:
                field = m.field.add(name=field_name, number=number, label=label, type=type_)
                if type_name:
                    field.type_name = type_name

        ts = (F.TYPE_MESSAGE, ".google.protobuf.Timestamp")
        message("JointState", ("timestamp", 1, optional, *ts), ("name", 2, repeated, F.TYPE_STRING, ""),
                ("position", 3, repeated, F.TYPE_DOUBLE, ""), ("velocity", 4, repeated, F.TYPE_DOUBLE, ""))
        message("Target", ("joint", 1, optional, F.TYPE_STRING, ""), ("position", 2, optional, F.TYPE_DOUBLE, ""))
        message("Command", ("timestamp", 1, optional, *ts), ("targets", 2, repeated, F.TYPE_MESSAGE, ".arm.Target"),
                ("gripper_width", 3, optional, F.TYPE_FLOAT, ""))
        message("Event", ("timestamp", 1, optional, *ts), ("data", 2, optional, F.TYPE_STRING, ""))
        pool.Add(fdp)
    return {n: GetMessageClass(pool.FindMessageTypeByName(f"arm.{n}")) for n in ("JointState", "Command", "Event")}


def write_protobuf_log(path: Path, *, seconds: float = 10.0, episodes: int = 2) -> int:
    """Writes the recording with mcap-protobuf-support's Writer; returns the message count."""
    from google.protobuf.timestamp_pb2 import Timestamp
    from mcap_protobuf.writer import Writer

    classes = protobuf_classes()
    messages = recording(seconds, episodes)
    with open(path, "wb") as fh, Writer(fh) as writer:
        for topic, t, fields in messages:
            stamp = Timestamp(seconds=t // 10**9, nanos=t % 10**9)
            if topic == "/arm/joint_states":
                msg = classes["JointState"](timestamp=stamp, name=fields["name"], position=fields["position"],
                                            velocity=fields["velocity"])
            elif topic == "/arm/command":
                msg = classes["Command"](timestamp=stamp, gripper_width=fields["gripper"])
                for joint, value in zip(JOINTS, fields["position"], strict=True):
                    msg.targets.add(joint=joint, position=value)
            else:
                msg = classes["Event"](timestamp=stamp, data=fields["data"])
            writer.write_message(topic, msg, log_time=t + 500_000, publish_time=t)
    return len(messages)
