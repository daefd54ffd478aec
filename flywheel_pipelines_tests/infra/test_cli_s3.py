"""The `flywheel` command line on a bucket: the same S3 settings as the pipeline, from the environment."""

from click.testing import CliRunner

from flywheel_pipelines.cli import main
from flywheel_pipelines.defs.resources import open_configured_lake
from flywheel_pipelines.lib.storage import S3Lake
from flywheel_pipelines_tests.infra.conftest import BUCKET


def test_fleet_simulate_writes_into_a_bucket_lake(seaweed, s3_prefix, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_S3_ENDPOINT_URL", seaweed.endpoint_url)
    monkeypatch.setenv("FLYWHEEL_S3_REGION", seaweed.region)
    monkeypatch.setenv("FLYWHEEL_S3_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("FLYWHEEL_S3_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("FLYWHEEL_S3_ALLOW_HTTP", "true")  # the test server is plain http on 127.0.0.1
    root = f"s3://{BUCKET}/{s3_prefix}"
    result = CliRunner().invoke(main, ["fleet", "simulate", "--robots", "1", "--days", "1", "--episodes", "2",
                                       "--start-date", "2026-11-01", "--lake", root])
    assert result.exit_code == 0, result.output
    lake = open_configured_lake(root)
    assert isinstance(lake, S3Lake)
    keys = [o.key for o in lake.list("raw/")]
    assert keys and all(k.startswith("raw/robot=r101/date=2026-11-01/") and k.endswith(".mcap") for k in keys)
    # The CLI reads them back through the same lake the pipeline uses.
    with lake.local_path(keys[0]) as path:
        assert path.stat().st_size > 0
