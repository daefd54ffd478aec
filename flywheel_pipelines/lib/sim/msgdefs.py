"""ROS2 message definitions (the concatenated .msg text a ROS2 recorder stores as MCAP schema)."""

_SEP = "=" * 80

_TIME = "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec"
_HEADER = "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id"
_POINT = "MSG: geometry_msgs/Point\nfloat64 x\nfloat64 y\nfloat64 z"

MSGDEFS: dict[str, str] = {
    "sensor_msgs/msg/JointState": "\n".join(
        [
            "std_msgs/Header header",
            "string[] name",
            "float64[] position",
            "float64[] velocity",
            "float64[] effort",
            _SEP,
            _HEADER,
            _SEP,
            _TIME,
        ]
    ),
    "geometry_msgs/msg/PointStamped": "\n".join(
        ["std_msgs/Header header", "geometry_msgs/Point point", _SEP, _HEADER, _SEP, _TIME, _SEP, _POINT]
    ),
    "std_msgs/msg/String": "string data",
}


def stamp(ns: int) -> dict:
    """A builtin_interfaces/Time from int64 nanoseconds."""
    return {"sec": ns // 1_000_000_000, "nanosec": ns % 1_000_000_000}


def goal_point(ns: int, goal) -> dict:
    """The geometry_msgs/PointStamped a robot publishes on /goal (a goal in the base plane)."""
    return {"header": {"stamp": stamp(ns), "frame_id": "base"},
            "point": {"x": float(goal[0]), "y": float(goal[1]), "z": 0.0}}
