"""The `flywheel` command line on real files."""

import json
import re
import sys
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from flywheel_pipelines.cli import main
from flywheel_pipelines_tests.conftest import require_real_logs

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "logs-inspect.schema.json").read_text())
jsonschema.Draft202012Validator.check_schema(SCHEMA)


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
    jsonschema.validate(doc, SCHEMA)
    assert doc["verdict"] == "ok" and doc["reason"] is None
    assert doc["lost_messages"] == 0 and doc["lost_ranges"] == []
    counts = {t["topic"]: t["count"] for t in doc["topics"]}
    assert counts == {"/odom": 2639, "/tf": 5422, "/tf_static": 1, "/amcl_pose": 135}
    assert all(t["encoding"] == "cdr" and t["schema_encoding"] == "ros2msg" and t["decodable"] for t in doc["topics"])
    assert all(isinstance(t["first_ns"], int) and t["first_ns"] <= t["last_ns"] for t in doc["topics"])


def test_logs_inspect_json_on_a_cut_real_log_says_what_was_lost(tmp_path):
    source = require_real_logs() / "mcap" / "evo__nav2_turtlebot.mcap"
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(source.read_bytes()[:250_000])  # the recorder lost power mid-chunk

    out = CliRunner().invoke(main, ["logs", "inspect", str(cut), "--json"])

    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["verdict"] == "recovered"
    assert doc["reason"].startswith(f"{cut}: truncated at byte 250000: the file ends inside the chunk")
    assert doc["lost_messages"] is None
    kept = sum(t["count"] for t in doc["topics"])
    assert 0 < kept < 8197
    ((first_lost, last_lost),) = doc["lost_ranges"]
    assert first_lost == max(t["last_ns"] for t in doc["topics"]) < last_lost


def test_logs_inspect_text_on_a_bag_folder_with_a_missing_part(tmp_path):
    source = require_real_logs() / "rosbag2" / "ros2_rosbag2__rosbag2_py__mcap_wbag"
    bag = tmp_path / "wbag"
    bag.mkdir()
    for part in source.iterdir():
        if part.name != "wbag_2.mcap":
            (bag / part.name).write_bytes(part.read_bytes())

    out = CliRunner().invoke(main, ["logs", "inspect", str(bag)])

    assert out.exit_code == 0, out.output
    first, _sizes, lost, *topics = out.output.splitlines()
    assert first.startswith(f"wbag: recovered ({bag}: wbag_2.mcap: listed in metadata.yaml but missing")
    assert lost.startswith("  lost: 1240 messages; ")
    assert len(topics) == 8


def test_logs_inspect_decode_counts_what_does_not_decode():
    path = require_real_logs() / "rosbag2" / "ros2_rosbag2__rosbag2_tests__mcap_cdr_test" / "cdr_test_0.mcap"

    out = CliRunner().invoke(main, ["logs", "inspect", str(path), "--json", "--decode"])

    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert {t["topic"]: (t["count"], t["undecodable"]) for t in doc["topics"]} == {
        "/array_topic": (4, 0), "/test_topic": (3, 0)}


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


def _registry_with_versions(tmp_path, gates: dict[str, tuple[bool, str | None]]) -> str:
    """A real MLflow registry (SQLite) holding reach-bc versions with the given release-gate verdicts
    (passed, production version it was judged against)."""
    import mlflow

    from flywheel_pipelines.lib.evaluation.registry import record_gate

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("reach-bc")
    for version, (passed, production) in gates.items():
        assert client.create_model_version("reach-bc", source=str(tmp_path)).version in (int(version), version)
        record_gate(client, "reach-bc", version, passed=passed, reasons=["golden_regressions: golden/r103-x"],
                    suite="reach-default", suite_version="s1", report_uri="/r.html", golden_version="g1",
                    production=production, policy_version=f"p{version}")
    return uri


def test_policy_promote_rollback_and_status(tmp_path):
    uri = _registry_with_versions(tmp_path, {"1": (True, None), "2": (True, "1"), "3": (False, "2")})
    lake = str(tmp_path / "lake")
    common = ["--mlflow-uri", uri, "--lake", lake]
    runner = CliRunner()

    out = runner.invoke(main, ["policy", "status", "reach-bc", *common])
    assert out.exit_code == 0, out.output
    assert "reach-bc: no production policy" in out.output and "promotion log (0 entries" in out.output

    out = runner.invoke(main, ["policy", "promote", "reach-bc", "1", "--reason", "first release", "--by", "maya", *common])
    assert out.exit_code == 0, out.output
    assert "reach-bc: production is now version 1 (was none)" in out.output
    assert "promote by maya at " in out.output and ": first release" in out.output

    out = runner.invoke(main, ["policy", "promote", "reach-bc", "2", "--reason", "nightly", *common],
                        env={"FLYWHEEL_USER": "bao"})
    assert out.exit_code == 0, out.output
    assert "production is now version 2 (was 1)" in out.output and "promote by bao" in out.output

    # A version whose gate failed is refused, and nothing moves...
    out = runner.invoke(main, ["policy", "promote", "reach-bc", "3", "--reason", "trust me", "--by", "x", *common])
    assert out.exit_code == 1
    assert "refusing to promote reach-bc version 3: its release gate is failed (golden_regressions" in out.output
    # ...unless forced, which says so and is recorded.
    out = runner.invoke(main, ["policy", "promote", "reach-bc", "3", "--reason", "hotfix", "--force", "--by", "x",
                               *common])
    assert out.exit_code == 0, out.output
    assert "production is now version 3 (was 2) (FORCED past a failed gate)" in out.output

    out = runner.invoke(main, ["policy", "rollback", "reach-bc", "--reason", "r104 oscillates", "--by", "oncall",
                               *common])
    assert out.exit_code == 0, out.output
    assert "production is now version 2 (was 3)" in out.output and "rollback by oncall" in out.output

    out = runner.invoke(main, ["policy", "status", "reach-bc", *common])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "reach-bc: production is version 2 (policy p2, gate passed)"
    assert lines[1].startswith("promotion log (4 entries, ")
    assert [line.split()[1:5] for line in lines[2:]] == [
        ["promote", "none", "->", "1"], ["promote", "1", "->", "2"], ["promote", "2", "->", "3"],
        ["rollback", "3", "->", "2"]]
    assert "FORCED" in lines[4] and lines[5].endswith("by oncall: r104 oscillates")

    out = runner.invoke(main, ["policy", "status", "reach-bc", "--json", *common])
    doc = json.loads(out.output)
    assert doc["production"]["version"] == "2" and doc["production"]["tags"]["flywheel.gate"] == "passed"
    assert [e["version"] for e in doc["log"]] == ["1", "2", "3", "2"]


def test_policy_commands_need_a_reason_and_say_why_they_refuse(tmp_path):
    uri = _registry_with_versions(tmp_path, {"1": (True, None)})
    common = ["--mlflow-uri", uri, "--lake", str(tmp_path / "lake")]
    out = CliRunner().invoke(main, ["policy", "promote", "reach-bc", "1", *common])
    assert out.exit_code == 2 and "Missing option '--reason'" in out.output
    out = CliRunner().invoke(main, ["policy", "rollback", "reach-bc", "--reason", "r", "--by", "x", *common])
    assert out.exit_code == 1 and "reach-bc has no production version to roll back" in out.output
    out = CliRunner().invoke(main, ["policy", "promote", "reach-bc", "7", "--reason", "r", "--by", "x", *common])
    assert out.exit_code == 1 and "registered model 'reach-bc' has no version 7" in out.output


def _crc_damaged_chunk(path: Path, messages: int = 30) -> None:
    """One uncompressed chunk of ``messages`` JSON messages (mcap's Writer), a payload byte flipped."""
    from mcap.writer import CompressionType, Writer

    with open(path, "wb") as fh:
        writer = Writer(fh, compression=CompressionType.NONE)
        writer.start()
        channel = writer.register_channel("/imu", "json", writer.register_schema("Imu", "jsonschema", b"{}"))
        for i in range(messages):
            writer.add_message(channel, 1000 + i, b'{"ax": 0.125}', 1000 + i)
        writer.finish()
    data = bytearray(path.read_bytes())
    at = data.index(b"0.125")
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_crc_damaged_chunk_is_rejected_with_the_loss_its_reason_states(tmp_path):
    path = tmp_path / "crc.mcap"
    _crc_damaged_chunk(path)
    doc = json.loads(CliRunner().invoke(main, ["logs", "inspect", str(path), "--json"]).output)
    jsonschema.validate(doc, SCHEMA)
    assert doc["verdict"] == "rejected"
    assert "CRC mismatch" in doc["reason"] and "read 0 of the 30 messages the summary lists (/imu: 30 missing)" in doc["reason"]
    assert doc["lost_messages"] == 30 and doc["lost_ranges"] == [[1000, 1029]]


def _stated_loss(reason: str) -> int | None:
    """The loss a reason states: 'read X of the Y messages ... lists' means Y - X are gone."""
    found = re.findall(r"read (\d+) of the (\d+) messages", reason)
    return sum(int(y) - int(x) for x, y in found) if found else None


def _damaged_inputs(tmp_path: Path) -> list[Path]:
    real = require_real_logs()
    data = (real / "mcap" / "evo__nav2_turtlebot.mcap").read_bytes()
    out = []
    for name, blob in (("cut.mcap", data[:250_000]), ("flipped.mcap", data[:60_000] + bytes([data[60_000] ^ 0xFF])
                                                         + data[60_001:]), ("notes.txt", b"fine today\n"), ("zero.mcap", b"")):
        (tmp_path / name).write_bytes(blob)
        out.append(tmp_path / name)
    _crc_damaged_chunk(tmp_path / "crc.mcap")
    out.append(tmp_path / "crc.mcap")
    bag = tmp_path / "wbag"
    bag.mkdir()
    for part in (real / "rosbag2" / "ros2_rosbag2__rosbag2_py__mcap_wbag").iterdir():
        if part.name != "wbag_2.mcap":
            (bag / part.name).write_bytes(part.read_bytes())
    out.append(bag)
    return out


def test_lost_messages_always_equals_what_the_reason_says(tmp_path):
    for path in _damaged_inputs(tmp_path):
        doc = json.loads(CliRunner().invoke(main, ["logs", "inspect", str(path), "--json"]).output)
        jsonschema.validate(doc, SCHEMA)
        stated = _stated_loss(doc["reason"])
        assert doc["verdict"] in ("recovered", "rejected"), path
        assert doc["lost_messages"] == stated, (path.name, doc["reason"], doc["lost_messages"])


def test_every_real_and_written_log_validates_against_the_schema(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from structured_logs import write_json_log, write_protobuf_log

    real = require_real_logs()
    paths = [*sorted((real / "mcap").iterdir()), *sorted((real / "rosbag2").iterdir()), *sorted((real / "ros1").iterdir()),
             real / "rosbag2" / "plotjuggler__rosbag2_test" / "rosbag2_test_0.db3"]
    write_json_log(tmp_path / "json.mcap", seconds=1.0)
    write_protobuf_log(tmp_path / "pb.mcap", seconds=1.0)
    paths += [tmp_path / "json.mcap", tmp_path / "pb.mcap"]
    verdicts = set()
    for path in paths:
        for flags in ([], ["--decode"]):
            out = CliRunner().invoke(main, ["logs", "inspect", str(path), "--json", *flags])
            assert out.exit_code == 0, out.output
            doc = json.loads(out.output)
            jsonschema.validate(doc, SCHEMA)
            verdicts.add(doc["verdict"])
            assert doc["decoded"] == bool(flags)
            assert all(t["decodable"] and t["undecodable"] == 0 for t in doc["topics"]), (path, doc["topics"])
    assert verdicts == {"ok", "recovered"}  # the bare .db3 has no metadata.yaml to check it against


@pytest.mark.parametrize("bad", [
    {"verdict": "fine"},
    {"verdict": "ok", "lost_messages": 3},
    {"verdict": "empty", "message_count": 4},
])
def test_the_schema_rejects_what_the_contract_rules_out(bad):
    path = require_real_logs() / "mcap" / "evo__nav2_turtlebot.mcap"
    doc = json.loads(CliRunner().invoke(main, ["logs", "inspect", str(path), "--json"]).output)
    doc.update(bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


def test_logs_inspect_says_why_a_channel_cannot_be_decoded(tmp_path):
    from mcap.writer import Writer

    path = tmp_path / "odd.mcap"
    with open(path, "wb") as fh:
        writer = Writer(fh)
        writer.start()
        channel = writer.register_channel("/lidar", "flatbuffer", writer.register_schema("Scan", "flatbuffer", b"\x00"))
        for i in range(3):
            writer.add_message(channel, i + 1, b"\x01\x02", i + 1)
        writer.finish()
    doc = json.loads(CliRunner().invoke(main, ["logs", "inspect", str(path), "--json"]).output)
    jsonschema.validate(doc, SCHEMA)
    [topic] = doc["topics"]
    assert doc["verdict"] == "ok"  # an encoding ingest cannot decode is not damage
    assert topic["encoding"] == "flatbuffer" and topic["decodable"] is False
    assert "message encoding 'flatbuffer' is not supported" in topic["decodable_reason"]
    assert topic["undecodable"] == 3 and topic["decode_error"] == topic["decodable_reason"]
    text = CliRunner().invoke(main, ["logs", "inspect", str(path)]).output
    assert "flatbuffer/flatbuffer" in text and "not decodable: message encoding 'flatbuffer'" in text
