"""A realistic long log for the ingest benchmarks: a 7-joint arm recorded for N minutes.

Streams (per minute): /joint_states sensor_msgs/JointState at 500 Hz, /imu sensor_msgs/Imu at
200 Hz, /arm_controller/commands std_msgs/Float64MultiArray at 50 Hz (a ros2_control forward
command controller), /wrist_camera/image_raw/compressed sensor_msgs/CompressedImage at 30 Hz
(about 22 KB of incompressible JPEG-like bytes each) and /events std_msgs/String with an episode
every 20 s. 10 minutes is about 470k messages and 440 MB with zstd chunks, as a ROS 2 recorder
writes them (all channels interleaved in 1 MiB chunks, with message indexes and a summary).

Messages are serialized with rosbags and written with mcap's own Writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mcap.writer import CompressionType, Writer
from rosbags.typesys import Stores, get_typestore

JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
RATES = {"joint_states": 500, "imu": 200, "commands": 50, "camera": 30}
IMAGE_BYTES = 22_000
TOPICS = {
    "joint_states": ("/joint_states", "sensor_msgs/msg/JointState"),
    "imu": ("/imu", "sensor_msgs/msg/Imu"),
    "commands": ("/arm_controller/commands", "std_msgs/msg/Float64MultiArray"),
    "camera": ("/wrist_camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage"),
    "events": ("/events", "std_msgs/msg/String"),
}

EMBODIMENT = """\
# A 7-joint arm with a ros2_control forward command controller, an IMU and a wrist camera.
name: arm7
version: 1
robot_type: arm7
fps: 50
clock: header
default_task: pick_place
frame_anchor: action
events:
  topic: /events
features:
  observation.state:
    topic: /joint_states
    fields: [position, velocity]
    joint_names: [{joints}]
    names: [{state_names}]
    rule: hold
  observation.imu:
    topic: /imu
    fields: [angular_velocity.x, angular_velocity.y, angular_velocity.z, linear_acceleration.x,
             linear_acceleration.y, linear_acceleration.z]
    names: [gyro.x, gyro.y, gyro.z, accel.x, accel.y, accel.z]
    rule: linear
  action:
    topic: /arm_controller/commands
    fields: [data]
    names: [{action_names}]
    rule: nearest
images:
  observation.images.wrist:
    topic: /wrist_camera/image_raw/compressed
    rule: nearest
    max_skew_ms: 40
tolerance:
  max_skew_ms: 20
  max_gap_ms: 100
""".format(
    joints=", ".join(JOINTS),
    state_names=", ".join([f"{j}.pos" for j in JOINTS] + [f"{j}.vel" for j in JOINTS]),
    action_names=", ".join(f"{j}.target" for j in JOINTS),
)


def write_arm7_log(path: Path, *, minutes: float = 10.0, seed: int = 0, start_ns: int = 1_780_000_000_000_000_000) -> int:
    """Writes the log; returns the number of messages."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    T = store.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Vector3, Quaternion = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]
    rng = np.random.default_rng(seed)
    duration = int(minutes * 60 * 1e9)
    # Every stream's send times, with a little jitter, merged into one timeline.
    timeline = []
    for kind, hz in RATES.items():
        n = int(duration * hz // 1_000_000_000)
        t = start_ns + np.arange(n, dtype=np.int64) * (1_000_000_000 // hz)
        t += rng.integers(0, 200_000, n)
        timeline.append(np.stack([t, np.full(n, list(RATES).index(kind)), np.arange(n)], axis=1))
    events = []
    for k, t0 in enumerate(range(0, duration - 19_000_000_000, 20_000_000_000)):
        events.append((start_ns + t0 + 100_000_000, {"event": "episode_start", "episode_id": f"ep{k:04d}", "task": "pick_place"}))
        events.append((start_ns + t0 + 19_000_000_000, {"event": "episode_end", "outcome": "success"}))
    order = np.concatenate(timeline)
    order = order[np.argsort(order[:, 0], kind="stable")]
    kinds = list(RATES)
    cov = np.zeros(9)
    count = 0
    with open(path, "wb") as fh:
        writer = Writer(fh, chunk_size=1 << 20, compression=CompressionType.ZSTD)
        writer.start(profile="ros2", library="flywheel benchmarks")
        channels = {}
        for kind, (topic, typename) in TOPICS.items():
            text, _ = store.generate_msgdef(typename, ros_version=2)
            schema = writer.register_schema(typename, "ros2msg", text.encode())
            channels[kind] = writer.register_channel(topic, "cdr", schema)
        ev = iter(events)
        next_event = next(ev, None)
        for t, k, i in order.tolist():
            while next_event is not None and next_event[0] <= t:
                msg = T["std_msgs/msg/String"](data=json.dumps(next_event[1]))
                writer.add_message(channels["events"], next_event[0], store.serialize_cdr(msg, TOPICS["events"][1]).tobytes(),
                                   next_event[0], sequence=count)
                count += 1
                next_event = next(ev, None)
            kind = kinds[k]
            header = Header(stamp=Time(sec=t // 1_000_000_000, nanosec=t % 1_000_000_000), frame_id="panda_link0")
            phase = (t - start_ns) / 1e9
            if kind == "joint_states":
                q = np.sin(phase * 0.5 + np.arange(7))
                dq = np.cos(phase + np.arange(7))
                msg = T["sensor_msgs/msg/JointState"](header=header, name=JOINTS, position=q, velocity=dq, effort=np.zeros(7))
            elif kind == "imu":
                msg = T["sensor_msgs/msg/Imu"](
                    header=header, orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0), orientation_covariance=cov,
                    angular_velocity=Vector3(x=np.sin(phase), y=0.01 * i, z=0.0), angular_velocity_covariance=cov,
                    linear_acceleration=Vector3(x=0.0, y=0.0, z=9.81 + 0.01 * np.cos(phase)), linear_acceleration_covariance=cov)
            elif kind == "commands":
                layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
                msg = T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.sin(phase * 0.5 + 0.1 + np.arange(7)))
            else:
                # JPEG data is incompressible: fresh random bytes, so zstd cannot shrink it either.
                data = np.frombuffer(rng.bytes(IMAGE_BYTES), np.uint8)
                msg = T["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=data)
            writer.add_message(channels[kind], t + 300_000, store.serialize_cdr(msg, TOPICS[kind][1]).tobytes(), t, sequence=i)
            count += 1
        writer.finish()
    return count


if __name__ == "__main__":
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    n = write_arm7_log(args.out, minutes=args.minutes)
    print(f"{args.out}: {n} messages, {args.out.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")
