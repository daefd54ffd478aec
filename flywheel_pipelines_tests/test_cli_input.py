"""The `flywheel` command line refuses bad input with the right exit status (0 ran, 1 error, 2 usage)
and prints what people read: plurals, aligned columns, sane rates, decode results."""

import pyarrow as pa
import pytest
from click.testing import CliRunner

from flywheel_pipelines.cli import main, rate_text
from flywheel_pipelines.lib.catalog import CATALOG_KEY
from flywheel_pipelines.lib.episodes.standardize import EPISODE_SCHEMA
from flywheel_pipelines.lib.storage import LocalLake


def _episode(episode_id: str, robot: str, date: str, outcome: str = "success", **extra) -> dict:
    row = {name: None for name in EPISODE_SCHEMA.names}
    row.update(episode_id=episode_id, robot=robot, date=date, task="reach", outcome=outcome, tags=[],
               intervention=False, num_frames=120, max_skew_ms=1.25, quality_issues=[], quality_ok=True)
    row.update(extra)
    return row


@pytest.fixture
def catalog_lake(tmp_path) -> str:
    rows = [_episode("r101-2026-12-01-000", "r101", "2026-12-01"),
            _episode("r101-2026-12-01-001", "r101", "2026-12-01", "failure", tags=["dropped"]),
            _episode("a-much-longer-robot-id-2026-12-02-000", "a-much-longer-robot-id", "2026-12-02",
                     num_frames=12345, intervention=True)]
    LocalLake(tmp_path).write_parquet(CATALOG_KEY, pa.Table.from_pylist(rows, schema=EPISODE_SCHEMA))
    return str(tmp_path)


def _search(lake: str, *args: str):
    return CliRunner().invoke(main, ["episodes", "search", "--lake", lake, *args])


@pytest.mark.parametrize(("args", "message"), [
    (["--outcome", "crashed"], "'crashed' is not an outcome; choose from failure, success, unknown"),
    (["--from", "2026-13-45"], "invalid date '2026-13-45': expected YYYY-MM-DD"),
    (["--to", "yesterday"], "invalid date 'yesterday'"),
    (["--from", "2026-12-03", "--to", "2026-12-01"], "--from 2026-12-03 is after --to 2026-12-01"),
    (["--robot", "R101"], "invalid robot id 'R101'"),
    (["--robot", "r1/../x"], "invalid robot id 'r1/../x'"),
])
def test_episodes_search_rejects_malformed_options_as_usage_errors(catalog_lake, args, message):
    out = _search(catalog_lake, *args)
    assert out.exit_code == 2, out.output
    assert message in " ".join(out.output.split())


def test_episodes_search_says_which_robots_exist(catalog_lake):
    out = _search(catalog_lake, "--robot", "r999")
    assert out.exit_code == 1, out.output
    assert "no such robot 'r999' in the catalog (known: a-much-longer-robot-id, r101)" in out.output


def test_episodes_search_accepts_an_outcome_the_catalog_holds(tmp_path):
    LocalLake(tmp_path).write_parquet(CATALOG_KEY, pa.Table.from_pylist(
        [_episode("e1", "r1", "2026-12-01", "timeout")], schema=EPISODE_SCHEMA))
    out = _search(str(tmp_path), "--outcome", "timeout")
    assert out.exit_code == 0, out.output
    assert out.output.startswith("1 episode matches\n")


def test_episodes_search_prints_aligned_columns_and_plurals(catalog_lake):
    out = _search(catalog_lake)
    assert out.exit_code == 0, out.output
    # Every column as wide as its widest cell, however long the ids.
    assert out.output.splitlines() == [
        "3 episodes match",
        "episode                               robot                  date       outcome frames skew ms  tags/issues",
        "r101-2026-12-01-000                   r101                   2026-12-01 success    120     1.2",
        "r101-2026-12-01-001                   r101                   2026-12-01 failure    120     1.2  dropped",
        "a-much-longer-robot-id-2026-12-02-000 a-much-longer-robot-id 2026-12-02 success  12345     1.2  intervention",
    ]

    out = _search(catalog_lake, "--robot", "r101", "--outcome", "failure")
    assert out.exit_code == 0 and out.output.splitlines()[0] == "1 episode matches"
    out = _search(catalog_lake, "--outcome", "unknown")
    assert out.exit_code == 0 and out.output == "0 episodes match\n"


@pytest.mark.parametrize(("count", "first", "last", "text"), [
    (11, 0, 100, "rate n/a: 11 messages within 100 ns, timestamps not in ns?"),
    (101, 0, 1_000_000_000, "100.0 Hz"),
    (2001, 0, 1_000_000_000, "2.00 kHz"),
    (3, 0, 60_000_000_000, "0.0333 Hz, one per 30 s"),
    (1, 5, 5, "rate n/a"),
])
def test_rates_are_printed_in_sane_units(count, first, last, text):
    assert rate_text(count, first, last) == text


def _tiny_timestamps_log(path, messages: int = 30) -> None:
    import json

    from mcap.writer import Writer

    with open(path, "wb") as fh:
        writer = Writer(fh)
        writer.start()
        schema = writer.register_schema("Note", "jsonschema", json.dumps({"type": "object"}).encode())
        channel = writer.register_channel("/note", "json", schema)
        for i in range(messages):  # log times that count messages, not nanoseconds
            writer.add_message(channel, i + 1, json.dumps({"i": i}).encode(), i + 1)
        writer.finish()


def test_logs_inspect_text_gives_no_absurd_rate_and_shows_decode_results(tmp_path):
    path = tmp_path / "counter.mcap"
    _tiny_timestamps_log(path)

    out = CliRunner().invoke(main, ["logs", "inspect", str(path)])
    assert out.exit_code == 0, out.output
    assert "Hz" not in out.output and "rate n/a: 30 messages within 29 ns, timestamps not in ns?" in out.output
    assert "decoded" not in out.output

    out = CliRunner().invoke(main, ["logs", "inspect", str(path), "--decode"])
    assert out.exit_code == 0, out.output
    assert "  decoded: 30 messages in full, 0 undecodable" in out.output
    assert out.output.splitlines()[-1].endswith("decoded 30/30")


def test_policy_status_of_an_unknown_model_is_an_error(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = CliRunner().invoke(main, ["policy", "status", "nope", "--mlflow-uri", uri, "--lake", str(tmp_path / "l")])
    assert out.exit_code == 1, out.output
    assert "no such model 'nope' in the registry (registered: none)" in out.output
    assert "no production policy" not in out.output
