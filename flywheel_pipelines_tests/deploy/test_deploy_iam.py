"""The pipeline's IAM policy in docs/deploy.md lets it write every prefix the flywheel writes: a
prefix missing there fails its asset with AccessDenied on the first cluster run, and nothing
offline would notice. The lake of a whole on-call drill (ingest, training, evaluation, release,
incident, quarantine, promotion) is the reference."""

import json
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
# Written by paths the drill does not take: month archives, staged rollouts, the fleet's join record.
NOT_IN_THE_DRILL = {"archive", "deployments", "fleet"}


def pipeline_policy() -> dict:
    """The JSON policy in docs/deploy.md that holds the WriteDerived statement."""
    for block in re.findall(r"```json\n(.*?)```", DOCS.read_text(), flags=re.S):
        doc = json.loads(block)
        if any(s.get("Sid") == "WriteDerived" for s in doc["Statement"]):
            return doc
    raise AssertionError(f"{DOCS}: no JSON policy with a WriteDerived statement")


def prefixes(policy: dict) -> tuple[set[str], set[str]]:
    """(prefixes the pipeline may write, prefixes it may list), top level only."""
    statements = {s["Sid"]: s for s in policy["Statement"]}
    write = {r.split(":::", 1)[1].split("/", 1)[1].split("/", 1)[0] for r in statements["WriteDerived"]["Resource"]}
    listed = {p.split("/", 1)[0] for p in statements["ListLake"]["Condition"]["StringLike"]["s3:prefix"] if p}
    return write, listed


def test_the_policy_never_lets_the_pipeline_write_raw_logs():
    write, listed = prefixes(pipeline_policy())
    assert "raw" not in write and "raw" in listed
    assert write >= NOT_IN_THE_DRILL and write - {"dagster"} <= listed


@pytest.mark.slow
def test_every_prefix_the_drill_writes_is_writable(drilled):
    written = {p.name for p in drilled.lake.iterdir() if p.is_dir()} - {"raw"}
    write, listed = prefixes(pipeline_policy())
    assert written - write == set(), f"docs/deploy.md's WriteDerived misses {sorted(written - write)}"
    assert written - listed == set(), f"docs/deploy.md's ListLake misses {sorted(written - listed)}"
