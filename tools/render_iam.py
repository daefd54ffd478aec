"""Render the lake's access roles as AWS IAM policy JSON (one file per role).

    python tools/render_iam.py deploy/iam                       # the shipped templates
    python tools/render_iam.py out/ --bucket my-lake --prefix prod/lake   # ready to attach

The templates keep ``${LAKE_BUCKET}`` for the bucket (fill it in, e.g. with
``envsubst '$LAKE_BUCKET'``) and ``${aws:username}`` in the robot policy, which IAM substitutes
per request. Roles are defined once in ``flywheel_pipelines/lib/access.py``.
"""

import argparse
import json
import os
from pathlib import Path

from flywheel_pipelines.lib.access import COMPUTE_LOGS_PREFIX, ROLES, iam_policy
from flywheel_pipelines.lib.storage import parse_s3_uri

PLACEHOLDER = "${LAKE_BUCKET}"


def render(out: Path, *, bucket: str = PLACEHOLDER, lake_prefix: str = "",
           compute_logs_prefix: str = COMPUTE_LOGS_PREFIX) -> list[Path]:
    """Writes ``<out>/<role>.json`` for every role; returns the paths.

    Raises:
        LakeError: ``bucket`` (unless the placeholder) or ``lake_prefix`` is not a valid lake root.
    """
    if bucket != PLACEHOLDER or lake_prefix:
        parse_s3_uri(f"s3://{'placeholder-bucket' if bucket == PLACEHOLDER else bucket}/{lake_prefix}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for role in ROLES:
        path = out / f"{role}.json"
        policy = iam_policy(role, bucket=bucket, lake_prefix=lake_prefix, compute_logs_prefix=compute_logs_prefix or None)
        tmp = path.with_name(f".{path.name}.tmp")  # written aside and renamed: never a half-written policy
        tmp.write_text(json.dumps(policy, indent=2) + "\n")
        os.replace(tmp, path)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--bucket", default=PLACEHOLDER)
    parser.add_argument("--prefix", default="", help="the lake's key prefix inside the bucket")
    parser.add_argument("--compute-logs-prefix", default=COMPUTE_LOGS_PREFIX,
                        help="DAGSTER_COMPUTE_LOGS_PREFIX, granted to pipeline and governance ('' for none)")
    args = parser.parse_args()
    for path in render(args.out, bucket=args.bucket, lake_prefix=args.prefix,
                       compute_logs_prefix=args.compute_logs_prefix):
        print(path)


if __name__ == "__main__":
    main()
