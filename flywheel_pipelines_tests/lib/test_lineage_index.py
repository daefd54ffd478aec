"""The lineage index on a real local lake: edge records, build_index, queries both ways, bad input."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel_pipelines.lib import lineage_index as li
from flywheel_pipelines.lib.catalog import CATALOG_KEY, build_catalog
from flywheel_pipelines.lib.episodes.standardize import EPISODE_SCHEMA
from flywheel_pipelines.lib.evaluation import registry
from flywheel_pipelines.lib.ids import InvalidIdentifier
from flywheel_pipelines.lib.storage import LocalLake

AT = "2026-03-03T00:00:00+00:00"
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


def raw_key(robot: str, day: str) -> str:
    return f"raw/robot={robot}/date={day}/log.mcap"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def episode_rows(robots=("r1", "r2"), days=DAYS, per_day=2) -> list[dict]:
    """Catalog rows: every robot-day one raw log holding ``per_day`` episodes."""
    rows = []
    for robot in robots:
        for day in days:
            key = raw_key(robot, day)
            for k in range(per_day):
                row = {f.name: None for f in EPISODE_SCHEMA}
                row.update(episode_id=f"{robot}-{day.replace('-', '')}-{k:03d}", robot=robot, date=day,
                           start_ns=k, source_keys=[key], source_sha256=[sha(key)], tags=[], quality_issues=[])
                rows.append(row)
    return rows


def write_catalog(lake: LocalLake, rows: list[dict]) -> None:
    lake.write_parquet(CATALOG_KEY, build_catalog([pa.Table.from_pylist(rows, schema=EPISODE_SCHEMA)]))


def manifest_of(rows: list[dict]) -> dict:
    """The shape of curation's manifest["episodes"] (only the fields the lineage reads)."""
    return {"episodes": [
        {"episode_id": r["episode_id"], "robot": r["robot"], "date": r["date"], "split": "train",
         "raw_files": [{"key": k, "sha256": s} for k, s in zip(r["source_keys"], r["source_sha256"], strict=True)]}
        for r in rows]}


def promote(lake: LocalLake, model: str, version: str, *, minute: int, action: str = "promote") -> None:
    # registry._append is how promote() and rollback() write the log: the same names and documents.
    entry = registry.Promotion(action=action, model=model, alias=registry.PRODUCTION_ALIAS, version=version,
                               from_version=None, by="test", at=AT, reason="test", forced=False, gate="passed",
                               gate_reasons="", report="", policy_version="", via="cli")
    registry._append(lake, entry, dt.datetime(2026, 3, 3, 12, minute, tzinfo=dt.UTC))


def policy(lake, name, version, dataset, registered_version, model=None):
    dname, dversion = dataset.split("/")
    li.write_policy_edge(lake, name=name, version=version, dataset_name=dname, dataset_version=dversion,
                         mlflow_run_id=f"run-{version}", registered_model=model or name,
                         registered_version=registered_version, at=AT)
    li.write_eval_edge(lake, policy_name=name, policy_version=version, eval_id="suite-v1", gate_passed=True,
                       at=AT, prefix=f"evals/{version}")


def release(lake, name, version):
    p = lake.read_json(li.policy_edge_key(name, version))
    li.write_release_edge(lake, name=name, version=version, policy_name=name, policy_version=version,
                          dataset_name=p["dataset_name"], dataset_version=p["dataset_version"],
                          eval_prefix=f"evals/{version}", prefix=f"releases/{name}/{version}", at=AT)


@pytest.fixture
def fleet(tmp_path) -> LocalLake:
    """Two robots x three days; datasets reach/v1 (r1), reach/v2 (r1 day 2 + all r2), grasp/g1 (r2 day 3);
    policies p1 (reach/v1), p2 (reach/v2), q1 (grasp/g1); releases of p1 and p2; p2 is production."""
    lake = LocalLake(tmp_path / "lake")
    rows = episode_rows()
    write_catalog(lake, rows)
    pick = {
        "reach/v1": [r for r in rows if r["robot"] == "r1"],
        "reach/v2": [r for r in rows if r["robot"] == "r2" or r["date"] == DAYS[1]],
        "grasp/g1": [r for r in rows if r["robot"] == "r2" and r["date"] == DAYS[2]],
    }
    for ref, members in pick.items():
        name, version = ref.split("/")
        assert li.write_dataset_edges(lake, name=name, version=version, manifest=manifest_of(members), at=AT)
    policy(lake, "reach-bc", "p1", "reach/v1", "1")
    policy(lake, "reach-bc", "p2", "reach/v2", "2")
    policy(lake, "grasp-bc", "q1", "grasp/g1", "1")
    release(lake, "reach-bc", "p1")
    release(lake, "reach-bc", "p2")
    promote(lake, "reach-bc", "1", minute=0)
    promote(lake, "reach-bc", "2", minute=1)
    li.build_index(lake)
    return lake


def names(nodes, kind) -> set[str]:
    out = set()
    for n in li.walk(nodes):
        if n.kind == kind:
            out.add(f"{n.name}/{n.version}")
    return out


@pytest.mark.parametrize(("selector", "datasets", "episodes"), [
    ({"raw": raw_key("r1", DAYS[0])}, {"reach/v1"}, 2),
    ({"raw": sha(raw_key("r1", DAYS[1]))}, {"reach/v1", "reach/v2"}, 2),
    ({"raw": sha(raw_key("r2", DAYS[2]))[:16]}, {"reach/v2", "grasp/g1"}, 2),
    ({"robot": "r1"}, {"reach/v1", "reach/v2"}, 6),
    ({"robot": "r1", "date_from": DAYS[2]}, {"reach/v1"}, 2),
    ({"robot": "r2", "date_to": DAYS[1]}, {"reach/v2"}, 4),
    ({"episode": "r2-20260103-001"}, {"reach/v2", "grasp/g1"}, 1),
])
def test_downstream_of_raw_robot_and_episode(fleet, selector, datasets, episodes):
    result = li.query(fleet, **selector)
    assert names(result.downstream, "dataset") == datasets
    assert len(result.episodes) == episodes
    policies = {"reach/v1": "reach-bc/p1", "reach/v2": "reach-bc/p2", "grasp/g1": "grasp-bc/q1"}
    assert names(result.downstream, "policy") == {policies[d] for d in datasets}
    prod = {f"{n.kind} {n.name}/{n.version}" for n in li.walk(result.downstream) if n.production}
    assert prod == ({"policy reach-bc/p2", "release reach-bc/p2"} if "reach/v2" in datasets else set())


def test_raw_key_gives_its_files_and_counts(fleet):
    result = li.query(fleet, raw=raw_key("r1", DAYS[1]))
    assert [(f.key, f.sha256, f.episodes) for f in result.raw_files] == [
        (raw_key("r1", DAYS[1]), sha(raw_key("r1", DAYS[1])), 2)]
    (v1,) = [n for n in result.downstream if n.version == "v1"]
    assert v1.detail == {"episodes": 6, "matched_episodes": 2, "at": AT}
    assert names(result.downstream, "evaluation") == {"suite-v1/p1", "suite-v1/p2"}
    assert names(result.downstream, "release") == {"reach-bc/p1", "reach-bc/p2"}


def test_upstream_of_release_policy_and_dataset(fleet):
    rel = li.query(fleet, release="reach-bc/p2")
    assert [(n.kind, n.name, n.version, n.production) for n in rel.upstream] == [
        ("release", "reach-bc", "p2", True), ("policy", "reach-bc", "p2", True), ("dataset", "reach", "v2", False)]
    assert rel.downstream == ()
    assert rel.robot_days == [("r1", DAYS[1], 2), ("r2", DAYS[0], 2), ("r2", DAYS[1], 2), ("r2", DAYS[2], 2)]
    assert {f.key for f in rel.raw_files} == {raw_key("r1", DAYS[1])} | {raw_key("r2", d) for d in DAYS}

    pol = li.query(fleet, policy="reach-bc/p1")
    assert [n.kind for n in pol.upstream] == ["policy", "dataset"]
    assert not pol.upstream[0].production
    assert [(n.kind, n.name) for n in pol.downstream] == [("evaluation", "suite-v1"), ("release", "reach-bc")]
    assert len(pol.episodes) == 6

    ds = li.query(fleet, dataset="grasp/g1")
    assert [(n.kind, n.name, n.version) for n in ds.downstream] == [("policy", "grasp-bc", "q1")]
    assert ds.robot_days == [("r2", DAYS[2], 2)]


def test_production_follows_the_promotion_log(fleet):
    assert li.query(fleet, robot="r1").production == ("policy reach-bc/p2 (registered reach-bc v2)",)
    promote(fleet, "reach-bc", "1", minute=2, action="rollback")
    result = li.query(fleet, robot="r1")  # read at query time: no re-index needed
    prod = {f"{n.kind} {n.name}/{n.version}" for n in li.walk(result.downstream) if n.production}
    assert prod == {"policy reach-bc/p1", "release reach-bc/p1"}
    assert li.production_version(fleet, "grasp-bc") is None
    # A withdrawal does not move the alias: production stays where the last promotion put it.
    promote(fleet, "reach-bc", "2", minute=3, action="withdraw")
    assert li.production_version(fleet, "reach-bc") == "1"
    marked = li.query(fleet, robot="r1")
    assert {f"{n.kind} {n.name}/{n.version}" for n in li.walk(marked.downstream) if n.detail.get("withdrawn")} == {
        "policy reach-bc/p2", "release reach-bc/p2"}
    assert "[WITHDRAWN]" in li.render_tree(marked)
    promote(fleet, "reach-bc", "2", minute=4)  # a (forced) promotion brings it back
    assert li.withdrawn_versions(fleet, "reach-bc") == set()


def test_edges_written_after_the_index_are_found(fleet):
    # A new robot-day episode that reached a dataset before the catalog and the index were rebuilt.
    new = episode_rows(robots=("r3",), days=["2026-01-04"], per_day=1)
    li.write_dataset_edges(fleet, name="reach", version="v3", manifest=manifest_of(new + episode_rows(
        robots=("r1",), days=[DAYS[0]], per_day=1)), at=AT)
    policy(fleet, "reach-bc", "p3", "reach/v3", "3")
    release(fleet, "reach-bc", "p3")
    result = li.query(fleet, raw=raw_key("r1", DAYS[0]))
    assert "reach-bc/p3" in names(result.downstream, "release")
    assert result.index["fresh_edge_files"] == 4  # dataset, policy, evaluation, release
    assert li.query(fleet, episode="r3-20260104-000").episodes == (("r3-20260104-000", "r3", "2026-01-04"),)
    assert names(li.query(fleet, robot="r3").downstream, "policy") == {"reach-bc/p3"}
    assert [n.kind for n in li.query(fleet, release="reach-bc/p3").upstream] == ["release", "policy", "dataset"]
    summary = li.build_index(fleet)
    assert summary["artifacts"] == {"datasets": 4, "policies": 4, "evals": 4, "releases": 3}
    again = li.query(fleet, raw=raw_key("r1", DAYS[0]))
    assert again.index["fresh_edge_files"] == 0 and not again.warnings
    write_catalog(fleet, episode_rows() + new)
    assert "changed since the index was built" in li.query(fleet, robot="r1").warnings[0]
    li.build_index(fleet)
    assert li.query(fleet, robot="r3").warnings == ()
    assert names(again.downstream, "release") == names(result.downstream, "release")


def test_dataset_edges_are_content_addressed(fleet):
    rows = [r for r in episode_rows() if r["robot"] == "r1"]
    assert not li.write_dataset_edges(fleet, name="reach", version="v1", manifest=manifest_of(rows), at="later")
    with pytest.raises(li.LineageError, match="immutable"):
        li.write_dataset_edges(fleet, name="reach", version="v1", manifest=manifest_of(rows[:1]), at=AT)
    assert not li.write_policy_edge(fleet, name="reach-bc", version="p1", dataset_name="reach", dataset_version="v1",
                                    mlflow_run_id="run-p1", registered_model="reach-bc", registered_version="1",
                                    at="a minute later")


def test_index_tables_are_sorted_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(li, "ROW_GROUP_ROWS", 4)
    lake = LocalLake(tmp_path / "lake")
    rows = episode_rows(robots=("r1", "r2", "r3"), per_day=3)
    write_catalog(lake, rows)
    li.write_dataset_edges(lake, name="all", version="v1", manifest=manifest_of(rows), at=AT)
    summary = li.build_index(lake)
    assert summary["rows"] == {"raw_files": 27, "episodes": 27, "dataset_members": 27}
    pf = pq.ParquetFile(lake.path(f"{li.INDEX_PREFIX}/{li.RAW_EPISODES}"))
    assert pf.metadata.num_row_groups == 7
    shas = pq.read_table(lake.path(f"{li.INDEX_PREFIX}/{li.RAW_BY_SHA}"))["sha256"].to_pylist()
    assert shas == sorted(shas)
    result = li.query(lake, robot="r2", date_from=DAYS[1], date_to=DAYS[1])
    assert [e for e, _, _ in result.episodes] == ["r2-20260102-000", "r2-20260102-001", "r2-20260102-002"]
    assert li.query(lake, episode="r3-20260103-002").robot_days == [("r3", DAYS[2], 1)]


def test_render_and_json(fleet):
    result = li.query(fleet, robot="r2")
    text = li.render_tree(result)
    assert "[PRODUCTION]" in text and "policy reach-bc/p2 [PRODUCTION]" in text
    assert "r2 2026-01-01: 2 episodes" in text
    assert "downstream: 2 datasets, 2 policies, 2 evaluations, 1 releases (2 in production)" in text
    doc = li.to_json(result)
    assert json.loads(json.dumps(doc)) == doc
    assert doc["schema"] == li.RESULT_SCHEMA
    assert set(doc) == {"schema", "selector", "episodes", "raw_files", "upstream", "downstream", "counts",
                        "production", "index", "warnings"}
    assert doc["counts"] == {"dataset": 2, "policy": 2, "evaluation": 2, "release": 1}
    assert doc["episodes"]["count"] == 6


def test_render_summarizes_many_robot_days(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    days = [(dt.date(2026, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(60)]
    write_catalog(lake, episode_rows(robots=("r1",), days=days, per_day=2))
    li.build_index(lake)
    text = li.render_tree(li.query(lake, robot="r1"))
    assert "r1: 120 episodes on 60 days, 2026-01-01 .. 2026-03-01" in text
    assert "... and 48 more raw files" in text
    assert len(text.splitlines()) < 30


@pytest.mark.parametrize(("selector", "error", "match"), [
    ({"robot": "r9"}, li.LineageError, "unknown robot 'r9'"),
    ({"episode": "r1-20990101-000"}, li.LineageError, "unknown episode"),
    ({"dataset": "reach/v9"}, li.LineageError, "unknown dataset reach/v9"),
    ({"policy": "reach-bc/p9"}, li.LineageError, "unknown policy reach-bc/p9"),
    ({"release": "reach-bc/p9"}, li.LineageError, "unknown release"),
    ({"raw": "ab" * 32}, li.LineageError, "no raw file with sha256"),
    ({"raw": raw_key("r1", "2026-02-01")}, li.LineageError, "not found"),
    ({"raw": "not-a-key"}, li.LineageError, "neither a raw object key"),
    ({"robot": "r1", "date_from": DAYS[2], "date_to": DAYS[0]}, li.LineageError, "after"),
    ({"date_from": DAYS[0]}, li.LineageError, "exactly one"),
    ({}, li.LineageError, "exactly one"),
    ({"robot": "r1", "episode": "x"}, li.LineageError, "exactly one"),
    ({"robot": "r1", "date_to": "2026-13-01"}, InvalidIdentifier, "invalid date"),
    ({"robot": "../r1"}, InvalidIdentifier, "invalid robot"),
    ({"dataset": "../../etc/passwd"}, InvalidIdentifier, "invalid dataset name"),
    ({"dataset": "reach/../v1"}, InvalidIdentifier, "invalid dataset version"),
    ({"policy": "reach-bc"}, li.LineageError, "NAME/VERSION"),
    ({"raw": "raw/robot=../date=2026-01-01/x.mcap"}, InvalidIdentifier, "invalid robot"),
    ({"episode": "../x"}, InvalidIdentifier, "invalid episode"),
])
def test_bad_input(fleet, selector, error, match):
    with pytest.raises(error, match=match):
        li.query(fleet, **selector)


def test_ambiguous_sha_prefix(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    rows = episode_rows(robots=("r1",), days=DAYS[:2], per_day=1)
    rows[0]["source_sha256"], rows[1]["source_sha256"] = ["a" * 64], ["a" * 63 + "b"]
    write_catalog(lake, rows)
    li.build_index(lake)
    with pytest.raises(li.LineageError, match="ambiguous"):
        li.query(lake, raw="a" * 20)
    assert li.query(lake, raw="a" * 63 + "b").episodes == (("r1-20260102-000", "r1", DAYS[1]),)


def test_hostile_edge_ids_are_refused_before_any_write(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    with pytest.raises(InvalidIdentifier):
        li.write_dataset_edges(lake, name="../x", version="v1", manifest={"episodes": []}, at=AT)
    with pytest.raises(InvalidIdentifier):
        li.write_eval_edge(lake, policy_name="p", policy_version="v", eval_id="a/b", gate_passed=True, at=AT,
                           prefix="evals/v")
    assert not (tmp_path / "lake").exists()


def test_without_an_index(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    with pytest.raises(li.LineageError, match="no lineage index"):
        li.query(lake, robot="r1")


def test_real_dataset_edges_like_the_assets(tmp_path, sim_day, catalog, dataset):
    """A simulated robot-day through standardize and curation: its manifest is what curated_dataset
    passes to write_dataset_edges; policy, evaluation and release edges as their assets write them."""
    lake = LocalLake(tmp_path / "lake")
    lake.write_parquet(CATALOG_KEY, catalog)
    built = dataset.built
    li.write_dataset_edges(lake, name=built.name, version=built.version, manifest=built.manifest, at=AT)
    li.write_policy_edge(lake, name="reach-bc", version="abc123", dataset_name=built.name,
                         dataset_version=built.version, mlflow_run_id="0123", registered_model="reach-bc",
                         registered_version="1", at=AT)
    li.write_eval_edge(lake, policy_name="reach-bc", policy_version="abc123", eval_id="suite-3", gate_passed=True,
                       at=AT, prefix="evals/abc123")
    li.write_release_edge(lake, name="reach-bc", version="abc123", policy_name="reach-bc", policy_version="abc123",
                          dataset_name=built.name, dataset_version=built.version, eval_prefix="evals/abc123",
                          prefix="releases/reach-bc/abc123", at=AT)
    promote(lake, "reach-bc", "1", minute=0)
    li.build_index(lake)

    key = sim_day.day.keys[0]
    by_key = li.query(lake, raw=key)
    by_sha = li.query(lake, raw=next(f["sha256"] for f in built.manifest["raw_files"] if f["key"] == key))
    assert by_key.episodes == by_sha.episodes and by_key.episodes
    for result in (by_key, by_sha, li.query(lake, robot=catalog["robot"][0].as_py()),
                   li.query(lake, episode=built.manifest["episodes"][0]["episode_id"])):
        assert names(result.downstream, "release") == {"reach-bc/abc123"}
        assert any(n.production for n in li.walk(result.downstream) if n.kind == "release")
    up = li.query(lake, release="reach-bc/abc123")
    assert sorted((f.key, f.sha256) for f in up.raw_files) == sorted(
        (f["key"], f["sha256"]) for f in built.manifest["raw_files"])
    assert len(up.episodes) == built.episodes
    assert li.query(lake, dataset=f"{built.name}/{built.version}").downstream[0].production
    assert li.query(lake, policy="reach-bc/abc123").downstream[-1].kind == "release"


def test_cli_lineage_selectors(fleet):
    from click.testing import CliRunner

    from flywheel_pipelines.cli import main

    runner = CliRunner()
    lake = ["--lake", str(fleet.root)]
    out = runner.invoke(main, ["lineage", "--raw", raw_key("r2", DAYS[2]), *lake])
    assert out.exit_code == 0, out.output
    assert "release reach-bc/p2 [PRODUCTION]" in out.output and "query took" in out.output
    out = runner.invoke(main, ["lineage", "--robot", "r1", "--from", DAYS[1], "--to", DAYS[2], "--json", *lake])
    doc = json.loads(out.output)
    assert doc["episodes"]["count"] == 4 and doc["selector"] == {"robot": "r1", "from": DAYS[1], "to": DAYS[2]}
    out = runner.invoke(main, ["lineage", "--policy", "reach-bc/p2", *lake])
    assert "built from: dataset reach/v2" in out.output
    for bad, message in ((["--robot", "r9"], "unknown robot"), (["--dataset", "../x/y"], "invalid dataset name"),
                         (["--robot", "r1", "--episode", "e"], "exactly one"),
                         (["releases/reach-bc/p2", "--robot", "r1"], "give a BUNDLE or one of")):
        out = runner.invoke(main, ["lineage", *bad, *lake])
        assert out.exit_code != 0 and message in out.output, out.output
