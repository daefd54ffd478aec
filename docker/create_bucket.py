"""Create the compose stack's bucket in SeaweedFS if it is missing (the lake-init service).

Reads FLYWHEEL_S3_ENDPOINT_URL, FLYWHEEL_S3_REGION, FLYWHEEL_S3_ACCESS_KEY_ID,
FLYWHEEL_S3_SECRET_ACCESS_KEY and FLYWHEEL_BUCKET; retries while the S3 gateway starts.
"""

import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def main() -> int:
    bucket = os.environ["FLYWHEEL_BUCKET"]
    client = boto3.client(
        "s3",
        endpoint_url=os.environ["FLYWHEEL_S3_ENDPOINT_URL"],
        region_name=os.environ.get("FLYWHEEL_S3_REGION", "us-east-1"),
        aws_access_key_id=os.environ["FLYWHEEL_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["FLYWHEEL_S3_SECRET_ACCESS_KEY"],
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
                print(f"created bucket {bucket}")
            else:
                print(f"bucket {bucket} exists")
            return 0
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                print(f"create_bucket: S3 not ready: {exc}", file=sys.stderr)
                return 1
            time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
