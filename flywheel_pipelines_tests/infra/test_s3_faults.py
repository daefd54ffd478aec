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
