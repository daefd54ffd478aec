"""Fault cases of the S3 lake on a real SeaweedFS (part of the fault-injection suite, see
docs/reliability.md): hidden uploads are warned about, not ignored in silence (issue #16)."""

import json

from flywheel_pipelines_tests.infra.test_s3_sensor import DAYS, instance, pk, put, resource, tick  # noqa: F401 - fixtures


def test_a_hidden_upload_is_warned_about_once(instance, resource, put):  # noqa: F811
    put("r1", DAYS[0], "s-080000.mcap")
    put("r1", DAYS[0], ".s-090000.mcap")
    put("r1", DAYS[0], "_tmp-s-100000.mcap")
    first = tick(instance, resource)
    assert [r.partition_key for r in first.run_requests] == [pk("r1", DAYS[0])]
    ignored = json.loads(first.cursor)["ignored"]
    assert any(".s-090000.mcap" in k for k in ignored) and any("_tmp-s-100000.mcap" in k for k in ignored)
    # said once: the next tick does not repeat it (the cursor remembers)
    second = tick(instance, resource, first.cursor)
    assert json.loads(second.cursor)["ignored"] == ignored


def test_a_renamed_upload_is_requested_once(instance, resource, put, s3_client, s3_prefix):  # noqa: F811
    from flywheel_pipelines_tests.infra.conftest import BUCKET
    from flywheel_pipelines_tests.infra.test_s3_sensor import launch

    put("r2", DAYS[0], "s-080000.mcap")
    first = tick(instance, resource)
    launch(instance, first)
    old = f"{s3_prefix}/raw/robot=r2/date={DAYS[0]}/s-080000.mcap"
    s3_client.copy_object(Bucket=BUCKET, Key=old.replace("s-080000", "s-080000-renamed"),
                          CopySource={"Bucket": BUCKET, "Key": old})
    s3_client.delete_object(Bucket=BUCKET, Key=old)
    second = tick(instance, resource, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [pk("r2", DAYS[0])]
    launch(instance, second)
    assert tick(instance, resource, second.cursor).run_requests == []
    assert tick(instance, resource, None).run_requests == []  # a restart re-derives keys that have runs
