"""Render the lake's access roles as AWS IAM policy JSON (one file per role).

    python tools/render_iam.py deploy/iam                       # the shipped templates
    python tools/render_iam.py out/ --bucket my-lake --prefix prod/lake   # ready to attach

The templates keep ``${LAKE_BUCKET}`` for the bucket (fill it in, e.g. with
``envsubst '$LAKE_BUCKET'``) and ``${aws:username}`` in the robot policy, which IAM substitutes
per request. Roles are defined once in ``flywheel_pipelines/lib/access.py``.
"""

import argparse
import json
from pathlib import Path

from flywheel_pipelines.lib.access import COMPUTE_LOGS_PREFIX, ROLES, iam_policy

PLACEHOLDER = "${LAKE_BUCKET}"


def render(out: Path, *, bucket: str = PLACEHOLDER, lake_prefix: str = "",
           compute_logs_prefix: str = COMPUTE_LOGS_PREFIX) -> list[Path]:
    """Writes ``<out>/<role>.json`` for every role; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for role in ROLES:
        path = out / f"{role}.json"
        path.write_text(json.dumps(iam_policy(role, bucket=bucket, lake_prefix=lake_prefix,
                                                compute_logs_prefix=compute_logs_prefix or None), indent=2) + "\n")
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
