"""One table of who may do what in the lake, checked twice: against the shipped IAM policies
(offline, ``lib/test_access.py``) and against a real SeaweedFS started with the identities
rendered from the same roles (``infra/test_s3_roles.py``).

Each case: the principal (a role, or ``robot-<id>``), an operation on a lake key, whether IAM
allows it, and whether SeaweedFS does where it cannot express the rule (``lib.access.SEAWEED_GAPS``).
"""

from dataclasses import dataclass

DAY = "2026-11-02"
OWN = f"raw/robot=r1/date={DAY}/session-1.mcap"
OTHER = f"raw/robot=r2/date={DAY}/session-1.mcap"
# Objects the server is seeded with before the cases run (overwrites, reads and deletes hit them).
SEEDED = [OWN, OTHER, "episodes/robot=r1/date=2026-11-02/frames.parquet", "catalog/episodes.parquet",
          "datasets/arm/v1/meta/info.json", "releases/arm/v1/policy.onnx", "evals/v1/summary.json",
          "lineage/edges/releases/arm/v1.json"]


@dataclass(frozen=True)
class Case:
    who: str
    op: str  # get | put_new (If-None-Match: *) | put_over (a plain PUT onto an existing key) | delete | list
    key: str  # a lake key (for list: a prefix)
    iam: bool
    seaweed: bool | None = None  # where SeaweedFS differs from IAM (a documented gap)

    @property
    def on_seaweed(self) -> bool:
        return self.iam if self.seaweed is None else self.seaweed

    def __str__(self) -> str:
        return f"{self.who}-{self.op}-{self.key}"


CASES = [
    # A robot uploads its own logs, never anyone else's, and reads nothing but its own.
    Case("robot-r1", "put_new", f"raw/robot=r1/date={DAY}/session-2.mcap", True),
    Case("robot-r1", "get", OWN, True),
    Case("robot-r1", "put_over", OWN, False, seaweed=True),  # gap: SeaweedFS has no If-None-Match condition
    Case("robot-r1", "delete", OWN, False, seaweed=True),  # gap: SeaweedFS Write includes delete
    Case("robot-r1", "get", OTHER, False),
    Case("robot-r1", "put_new", f"raw/robot=r2/date={DAY}/forged.mcap", False),
    Case("robot-r1", "put_new", f"raw/robot=r10/date={DAY}/prefix-sibling.mcap", False),
    Case("robot-r1", "delete", OTHER, False),
    Case("robot-r1", "list", "raw/", False),
    Case("robot-r1", "list", "raw/robot=r2/", False),
    Case("robot-r1", "put_new", "releases/arm/v9/policy.onnx", False),
    Case("robot-r1", "get", "releases/arm/v1/policy.onnx", False),
    Case("robot-r1", "get", "datasets/arm/v1/meta/info.json", False),
    Case("robot-r2", "get", OTHER, True),
    Case("robot-r2", "get", OWN, False),
    # The pipeline reads raw and writes everything else, and never changes a raw log.
    Case("pipeline", "get", OTHER, True),
    Case("pipeline", "list", "raw/", True),
    Case("pipeline", "list", "", True),
    Case("pipeline", "put_over", "catalog/episodes.parquet", True),
    Case("pipeline", "put_new", "episodes/robot=r2/date=2026-11-02/frames.parquet", True),
    Case("pipeline", "put_new", "releases/arm/v2/policy.onnx", True),
    Case("pipeline", "delete", "datasets/arm/v1/meta/info.json", True),
    Case("pipeline", "put_new", f"raw/robot=r1/date={DAY}/injected.mcap", False),
    Case("pipeline", "put_over", OWN, False),
    Case("pipeline", "delete", OWN, False),
    # Retention and erasure may delete raw logs (and everything derived).
    Case("governance", "delete", OTHER, True),
    Case("governance", "delete", "episodes/robot=r1/date=2026-11-02/frames.parquet", True),
    Case("governance", "put_new", "governance/tombstones/x.json", True),
    Case("governance", "get", OWN, True),
    Case("governance", "put_new", f"raw/robot=r1/date={DAY}/by-retention.mcap", False, seaweed=True),  # gap
    # A reader sees datasets, releases and evaluations, and nothing else; changes nothing.
    Case("reader", "get", "datasets/arm/v1/meta/info.json", True),
    Case("reader", "get", "releases/arm/v1/policy.onnx", True),
    Case("reader", "get", "evals/v1/summary.json", True),
    Case("reader", "list", "datasets/", True),
    Case("reader", "list", "releases/arm/", True),
    Case("reader", "get", OWN, False),
    Case("reader", "get", "episodes/robot=r1/date=2026-11-02/frames.parquet", False),
    Case("reader", "get", "lineage/edges/releases/arm/v1.json", False),
    Case("reader", "list", "raw/", False),
    Case("reader", "list", "", False),
    Case("reader", "put_new", "datasets/arm/v2/meta/info.json", False),
    Case("reader", "put_over", "releases/arm/v1/policy.onnx", False),
    Case("reader", "delete", "evals/v1/summary.json", False),
]
