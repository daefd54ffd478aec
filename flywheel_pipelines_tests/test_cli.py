"""The `flywheel` command line on real files."""

import json

from click.testing import CliRunner

from flywheel_pipelines.cli import main
from flywheel_pipelines_tests.conftest import require_real_logs


def test_fleet_simulate_writes_the_raw_layout(tmp_path):
    out = CliRunner().invoke(main, ["fleet", "simulate", "--robots", "2", "--days", "2", "--episodes", "2",
                                    "--start-date", "2026-10-01", "--lake", str(tmp_path)])
    assert out.exit_code == 0, out.output
    days = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "raw").glob("robot=*/date=*"))
    assert days == ["raw/robot=r101/date=2026-10-01", "raw/robot=r101/date=2026-10-02",
                    "raw/robot=r102/date=2026-10-01", "raw/robot=r102/date=2026-10-02"]
    assert all(list((tmp_path / d).glob("session-*.mcap")) for d in days)


def test_fleet_simulate_rejects_a_bad_date(tmp_path):
    out = CliRunner().invoke(main, ["fleet", "simulate", "--start-date", "2026-13-01", "--lake", str(tmp_path)])
    assert out.exit_code == 2
    assert "invalid date '2026-13-01'" in out.output


def test_logs_inspect_json_on_a_real_log():
    path = require_real_logs() / "mcap" / "evo__nav2_turtlebot.mcap"
    out = CliRunner().invoke(main, ["logs", "inspect", str(path), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert set(doc) == {"verdict", "reason", "topics", "lost_messages"}
    assert doc["verdict"] == "ok"
    counts = {t["topic"]: t["count"] for t in doc["topics"]}
    assert counts == {"/odom": 2639, "/tf": 5422, "/tf_static": 1, "/amcl_pose": 135}
    assert all(isinstance(t["first_ns"], int) and t["first_ns"] <= t["last_ns"] for t in doc["topics"])


def test_logs_inspect_names_a_broken_file(tmp_path):
    bad = tmp_path / "cut.mcap"
    bad.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 10)
    out = CliRunner().invoke(main, ["logs", "inspect", str(bad)])
    assert out.exit_code == 0
    assert "rejected" in out.output and "cut.mcap" in out.output


def test_episodes_search_without_a_catalog_says_what_to_do(tmp_path):
    out = CliRunner().invoke(main, ["episodes", "search", "--lake", str(tmp_path)])
    assert out.exit_code != 0
    assert "materialize episode_catalog first" in out.output


def test_verify_of_a_folder_without_sums_fails(tmp_path):
    out = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert out.exit_code == 1
    assert "SHA256SUMS: missing" in out.output
