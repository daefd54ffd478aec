"""Tests for the episode catalog and dataset curation (selection, quality gate, splits, LeRobot build, version)."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flywheel_pipelines.lib.catalog import EpisodeQuery, build_catalog, catalog_hash, search
from flywheel_pipelines.lib.datasets.curation import (
    CARD,
    MANIFEST,
    CurationError,
    CurationSpec,
    build_dataset,
    quality_gate,
    select_episodes,
    split_episodes,
)
from flywheel_pipelines.lib.datasets.lerobot.reader import read_lerobot_v3
from flywheel_pipelines.lib.episodes.standardize import EPISODE_SCHEMA, Standardized, standardize
from flywheel_pipelines.lib.ids import InvalidIdentifier
from flywheel_pipelines.lib.quality import ISSUE_CHECKS, suite_name
from flywheel_pipelines.lib.sim.fleet import simulate_robot_day
from flywheel_pipelines.lib.sim.robot import sample_profile
from flywheel_pipelines.lib.storage import LocalLake, sha256_file
from flywheel_pipelines_tests.lib.conftest import DAY, CuratedDataset, SimDay, curate, source_files

# --- catalog ---------------------------------------------------------------------------------


def _streams(**overrides: dict) -> str:
    """A stream_quality value within the shipped mapping's tolerances, with per-feature overrides."""
    streams = {
        "observation.state": {"count": 500, "rate_hz": 250.0, "jitter_ms": 0.5, "max_gap_ms": 6.0, "max_skew_ms": 4.0,
                              "non_monotonic": 0},
        "observation.environment_state": {"count": 4, "rate_hz": 2.0, "jitter_ms": 0.5, "max_gap_ms": 500.0,
                                          "max_skew_ms": 480.0, "non_monotonic": 0},
        "action": {"count": 40, "rate_hz": 20.0, "jitter_ms": 0.5, "max_gap_ms": 50.0, "max_skew_ms": 0.0,
                   "non_monotonic": 0},
    }
    for key, figures in overrides.items():
        streams[key.replace("_", ".", 1) if key.startswith("observation_") else key].update(figures)
    return json.dumps(streams, sort_keys=True)


def _row(episode_id: str, robot: str = "r101", date: str = "2026-03-02", start: int = 0, **overrides) -> dict:
    row = {
        "episode_id": episode_id, "robot": robot, "date": date, "task": "reach_target", "outcome": "success",
        "operator": "alice", "tags": [], "intervention": False, "start_ns": start, "end_ns": start + 10,
        "duration_s": 1e-8, "num_frames": 20, "source_keys": [], "source_sha256": [], "embodiment": "flywheel_arm2",
        "embodiment_version": 1, "max_skew_ms": 1.0, "max_gap_ms": 4.0, "state_rate_hz": 250.0,
        "state_jitter_ms": 0.1, "nan_count": 0, "quality_issues": [], "quality_ok": True, "stream_quality": _streams(),
    }
    row.update(overrides)
    return row


def _table(*rows: dict) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=EPISODE_SCHEMA)


@pytest.fixture(scope="module")
def fleet_catalog() -> pa.Table:
    return build_catalog([
        _table(
            _row("a", robot="r102", date="2026-03-01", start=5),
            _row("b", robot="r101", date="2026-03-02", start=9, outcome="failure", tags=["shift:night"]),
            _row("c", robot="r101", date="2026-03-01", start=7, intervention=True, tags=["shift:night", "glare"]),
        ),
        _table(),
        _table(
            _row("d", robot="r101", date="2026-03-02", start=1, task="stack", quality_ok=False,
                 quality_issues=["gap"], max_gap_ms=80.0, stream_quality=_streams(observation_state={"max_gap_ms": 80.0})),
            _row("e", robot="r103", date="2026-03-03", start=2, outcome="unknown", tags=["truncated"]),
            _row("f", robot="r101", date="2026-03-01", start=3),
        ),
    ])


def test_catalog_is_ordered_by_robot_day_and_start(fleet_catalog):
    assert fleet_catalog.schema == EPISODE_SCHEMA
    assert fleet_catalog["episode_id"].to_pylist() == ["f", "c", "d", "b", "a", "e"]


def test_catalog_rejects_duplicate_ids_across_robot_days():
    with pytest.raises(ValueError, match=r"not unique.*\['x'\]"):
        build_catalog([_table(_row("x"), _row("y")), _table(_row("x", robot="r102"))])


def test_empty_catalog():
    empty = build_catalog([])
    assert empty.num_rows == 0 and empty.schema == EPISODE_SCHEMA
    assert search(empty, EpisodeQuery(robots=("r101",))).num_rows == 0


def test_catalog_hash_tracks_content(fleet_catalog):
    again = build_catalog([_table(*reversed(fleet_catalog.to_pylist()))])
    assert catalog_hash(again) == catalog_hash(fleet_catalog)
    changed = build_catalog([_table(*[dict(r, outcome="failure") if r["episode_id"] == "a" else r
                                       for r in fleet_catalog.to_pylist()])])
    assert catalog_hash(changed) != catalog_hash(fleet_catalog)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (EpisodeQuery(), ["f", "c", "d", "b", "a", "e"]),
        (EpisodeQuery(robots=("r101",)), ["f", "c", "d", "b"]),
        (EpisodeQuery(robots=("r102", "r103")), ["a", "e"]),
        (EpisodeQuery(date_from="2026-03-02"), ["d", "b", "e"]),
        (EpisodeQuery(date_to="2026-03-01"), ["f", "c", "a"]),
        (EpisodeQuery(date_from="2026-03-02", date_to="2026-03-02"), ["d", "b"]),
        (EpisodeQuery(tasks=("stack",)), ["d"]),
        (EpisodeQuery(outcomes=("success",)), ["f", "c", "d", "a"]),
        (EpisodeQuery(outcomes=("failure", "unknown")), ["b", "e"]),
        (EpisodeQuery(tags=("shift:night",)), ["c", "b"]),
        (EpisodeQuery(tags=("shift:night", "glare")), ["c"]),
        (EpisodeQuery(tags=("nope",)), []),
        (EpisodeQuery(intervention=True), ["c"]),
        (EpisodeQuery(intervention=False), ["f", "d", "b", "a", "e"]),
        (EpisodeQuery(quality_ok=False), ["d"]),
        (EpisodeQuery(quality_ok=True), ["f", "c", "b", "a", "e"]),
        (EpisodeQuery(robots=("r101",), outcomes=("success",), intervention=False, quality_ok=True), ["f"]),
    ],
)
def test_search_filters(fleet_catalog, query, expected):
    assert search(fleet_catalog, query)["episode_id"].to_pylist() == expected


# --- splits ----------------------------------------------------------------------------------

_IDS = [f"r1{k % 7:02d}-20260302-{k:03d}" for k in range(1000)]


def test_split_is_deterministic_and_seeded():
    a = split_episodes(_IDS, val_fraction=0.2, seed=0)
    assert a == split_episodes(list(reversed(_IDS)), val_fraction=0.2, seed=0)
    b = split_episodes(_IDS, val_fraction=0.2, seed=1)
    assert a != b and set(a) == set(b) == set(_IDS)


def test_split_fraction_is_about_right():
    for fraction in (0.1, 0.2, 0.5):
        sides = split_episodes(_IDS, val_fraction=fraction, seed=0)
        val = sum(s == "val" for s in sides.values())
        assert abs(val - 1000 * fraction) <= 40, (fraction, val)
        assert set(sides.values()) == {"train", "val"}
    assert set(split_episodes(_IDS, val_fraction=0.0, seed=0).values()) == {"train"}


def test_an_episode_never_changes_side_when_others_are_added():
    small = split_episodes(_IDS[:300], val_fraction=0.2, seed=0)
    big = split_episodes(_IDS, val_fraction=0.2, seed=0)
    assert all(big[i] == side for i, side in small.items())
    dropped = split_episodes(_IDS[::3], val_fraction=0.2, seed=0)
    assert all(big[i] == side for i, side in dropped.items())


@pytest.mark.parametrize("n", [2, 3, 4])
def test_tiny_selections_get_a_val_episode(n):
    ids = [f"r101-20260302-{k:03d}" for k in range(n)]
    for seed in range(5):
        sides = split_episodes(ids, val_fraction=0.2, seed=seed)
        assert "val" in sides.values(), (n, seed)
        assert set(sides) == set(ids)


def test_single_episode_and_zero_fraction_get_no_forced_val():
    assert split_episodes(["only"], val_fraction=0.0, seed=0) == {"only": "train"}
    assert split_episodes(["a", "b"], val_fraction=0.0, seed=0) == {"a": "train", "b": "train"}
    assert split_episodes([], val_fraction=0.2, seed=0) == {}


# --- spec ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": "../evil"}, InvalidIdentifier),
        ({"name": "a/b"}, InvalidIdentifier),
        ({"robots": ("R1",)}, InvalidIdentifier),
        ({"val_fraction": 1.0}, CurationError),
        ({"val_fraction": -0.1}, CurationError),
    ],
)
def test_spec_validation(kwargs, error):
    with pytest.raises(error):
        CurationSpec(**kwargs)


def test_select_applies_spec_defaults(fleet_catalog):
    # Quality is judged later, by the quality gate in build_dataset: "d" (a gap) is still a candidate here.
    assert select_episodes(fleet_catalog, CurationSpec())["episode_id"].to_pylist() == ["a", "d", "f"]
    loose = CurationSpec(outcomes=(), include_interventions=True, include_quality_issues=True)
    assert select_episodes(fleet_catalog, loose)["episode_id"].to_pylist() == ["a", "b", "c", "d", "e", "f"]
    assert select_episodes(fleet_catalog, CurationSpec(min_frames=21)).num_rows == 0


# --- quality gate ----------------------------------------------------------------------------


def test_quality_gate_leaves_out_what_the_suite_fails(fleet_catalog, emb):
    candidates = select_episodes(fleet_catalog, CurationSpec())
    gate = quality_gate(candidates, emb)
    assert gate.suite == suite_name(emb) and gate.checked == 3
    assert gate.failures == gate.left_out == {"d": ["gap_tolerance"]}
    kept = quality_gate(candidates, emb, include_failures=True)
    assert kept.failures == {"d": ["gap_tolerance"]} and kept.left_out == {}


def test_quality_gate_follows_the_suite_not_only_quality_ok(emb):
    table = _table(
        _row("ok"),
        # standardize said fine, but the suite (the mapping's 20 ms) says the state stream lags 35 ms
        _row("skewed", stream_quality=_streams(observation_state={"max_skew_ms": 35.0})),
        # the goal's own 1000 ms tolerance is honoured: 900 ms is fine
        _row("slow_goal", stream_quality=_streams(observation_environment_state={"max_skew_ms": 900.0})),
        # standardize's own verdict counts too, named by its check
        _row("nan", quality_ok=False, quality_issues=["nan"]),
        _row("flagged", quality_ok=False, quality_issues=[]),
    )
    gate = quality_gate(table, emb)
    assert gate.failures == {"flagged": ["quality_ok"], "nan": ["no_nan"], "skewed": ["sync_skew"]}
    assert gate.by_check() == {"no_nan": 1, "quality_ok": 1, "sync_skew": 1}


def test_quality_gate_names_a_catalog_it_cannot_judge(fleet_catalog, emb):
    with pytest.raises(CurationError, match=r"cannot judge.*lacks column\(s\) \['stream_quality'\]"):
        quality_gate(fleet_catalog.drop_columns(["stream_quality"]), emb)


# --- build_dataset on simulated data ---------------------------------------------------------


def test_dataset_selects_the_clean_successes(dataset: CuratedDataset, standardized: Standardized):
    eps = standardized.episodes.to_pylist()
    expected = sorted(e["episode_id"] for e in eps
                      if e["outcome"] == "success" and not e["intervention"] and e["quality_ok"])
    manifest = dataset.built.manifest
    assert sorted(e["episode_id"] for e in manifest["episodes"]) == expected
    assert dataset.built.episodes == len(expected) >= 3
    assert dataset.built.frames == manifest["frames"] == sum(
        e["num_frames"] for e in eps if e["episode_id"] in expected)


def test_manifest_lists_every_episode_with_raw_files(dataset: CuratedDataset, sim_day: SimDay):
    manifest = json.loads((dataset.root / MANIFEST).read_text())
    assert manifest == dataset.built.manifest
    assert manifest["name"] == "reach" and manifest["version"] == dataset.built.version
    assert manifest["layout"] == "lerobot-v3.0" and manifest["spec"] == dataset.spec.to_dict()
    assert manifest["embodiment"]["name"] == "flywheel_arm2"
    shas = {k: sha256_file(sim_day.lake.path(k)) for k in sim_day.day.keys}
    for ep in manifest["episodes"]:
        assert ep["raw_files"], ep["episode_id"]
        for f in ep["raw_files"]:
            assert shas[f["key"]] == f["sha256"]
        assert ep["end_ns"] - ep["start_ns"] == (ep["num_frames"] - 1) * 50_000_000
    used = {(f["key"], f["sha256"]) for ep in manifest["episodes"] for f in ep["raw_files"]}
    assert [(f["key"], f["sha256"]) for f in manifest["raw_files"]] == sorted(used)


def test_splits_are_contiguous_train_first(dataset: CuratedDataset):
    manifest = dataset.built.manifest
    sides = [e["split"] for e in sorted(manifest["episodes"], key=lambda e: e["episode_index"])]
    n_train = sides.count("train")
    assert sides == ["train"] * n_train + ["val"] * (len(sides) - n_train)
    assert n_train >= 1 and len(sides) - n_train >= 1
    assert manifest["splits"] == dataset.built.splits == {"train": n_train, "val": len(sides) - n_train}
    expected = split_episodes([e["episode_id"] for e in manifest["episodes"]], val_fraction=0.3, seed=0)
    assert {e["episode_id"]: e["split"] for e in manifest["episodes"]} == expected
    info, frames, episodes = read_lerobot_v3(dataset.root)
    assert info["splits"] == {"train": f"0:{n_train}", "val": f"{n_train}:{len(sides)}"}
    assert info["fps"] == 20 and info["total_episodes"] == len(sides)
    assert frames.num_rows == manifest["frames"]
    assert episodes["length"].to_pylist() == [e["num_frames"] for e in
                                              sorted(manifest["episodes"], key=lambda e: e["episode_index"])]


def test_dataset_frames_match_the_standardized_frames(dataset: CuratedDataset, standardized: Standardized):
    _, frames, _ = read_lerobot_v3(dataset.root)
    for ep in dataset.built.manifest["episodes"]:
        mine = frames.filter(pc.equal(frames["episode_index"], ep["episode_index"]))
        src = standardized.frames.filter(pc.equal(standardized.frames["episode_id"], ep["episode_id"]))
        assert mine["action"].to_pylist() == src["action"].to_pylist()
        assert mine["observation.state"].to_pylist() == src["observation.state"].to_pylist()
        assert mine["timestamp"].to_pylist() == pytest.approx([0.05 * i for i in range(ep["num_frames"])])


def test_dataset_ships_card_and_mapping(dataset: CuratedDataset, emb):
    assert (dataset.root / "meta" / "embodiment.yaml").read_text() == emb.source_text
    card = (dataset.root / CARD).read_text()
    assert f"version `{dataset.built.version}`" in card and "robots: r101" in card
    quality = dataset.built.manifest["quality"]
    assert quality["failed"] == quality["left_out"] == 0 and quality["suite"] == suite_name(emb)
    assert f"quality: all {quality['checked']} selected episodes pass the episode-quality suite `{quality['suite']}`" in card


def test_version_is_stable_for_identical_inputs(tmp_path, dataset, standardized, catalog, emb):
    again = curate(tmp_path / "again", standardized.frames, catalog, dataset.spec, emb)
    assert again.version == dataset.built.version
    assert again.manifest == dataset.built.manifest


def test_version_changes_with_the_spec(tmp_path, dataset, standardized, catalog, emb):
    other = CurationSpec(name="reach", val_fraction=0.3, split_seed=1)
    assert curate(tmp_path / "seed", standardized.frames, catalog, other, emb).version != dataset.built.version
    renamed = CurationSpec(name="reach2", val_fraction=0.3)
    assert curate(tmp_path / "name", standardized.frames, catalog, renamed, emb).version != dataset.built.version


def test_version_changes_with_the_data(tmp_path, dataset, standardized, catalog, emb):
    frames = standardized.frames
    action = frames["action"].combine_chunks()
    values = action.flatten().to_numpy().copy()
    values[0] += 0.001
    changed = frames.set_column(frames.schema.get_field_index("action"), "action",
                                pa.FixedSizeListArray.from_arrays(pa.array(values), action.type.list_size))
    assert curate(tmp_path / "data", changed, catalog, dataset.spec, emb).version != dataset.built.version


def test_empty_selection_raises(tmp_path, standardized, catalog, emb):
    spec = CurationSpec(robots=("r999",))
    with pytest.raises(CurationError, match="selects no episodes"):
        curate(tmp_path / "none", standardized.frames, catalog, spec, emb)
    assert not (tmp_path / "none").exists()


def test_frame_count_mismatch_raises(tmp_path, standardized, catalog, emb):
    spec = CurationSpec()
    selected = select_episodes(catalog, spec)
    first = selected["episode_id"][0].as_py()
    truncated = standardized.frames.filter(
        pc.invert(pc.and_(pc.equal(standardized.frames["episode_id"], first),
                          pc.equal(standardized.frames["frame_index"], 0))))
    with pytest.raises(CurationError, match=f"episode {first}: catalog says"):
        build_dataset(tmp_path / "x", selected=selected, load_frames=lambda r, d: truncated, spec=spec, emb=emb)


# --- quality failures in a built dataset -----------------------------------------------------

FLAKY = "r202"


@pytest.fixture(scope="module")
def flaky_fleet(tmp_path_factory, standardized: Standardized, emb):
    """The clean robot's day plus a day of a robot whose network drops bursts of messages (real logs)."""
    lake = LocalLake(tmp_path_factory.mktemp("flaky"))
    profile = replace(sample_profile(FLAKY, seed=0), burst_drop_rate=1.0)
    day = simulate_robot_day(lake, profile, DAY, episodes=6, seed=2)
    flaky = standardize(source_files(lake, day.keys), emb, robot=FLAKY, day=DAY)
    frames = {("r101", DAY): standardized.frames, (FLAKY, DAY): flaky.frames}
    return build_catalog([standardized.episodes, flaky.episodes]), frames


def _build(out_dir, flaky_fleet, spec: CurationSpec, emb, selected: pa.Table | None = None):
    catalog, frames = flaky_fleet
    selected = select_episodes(catalog, spec) if selected is None else selected
    return build_dataset(out_dir, selected=selected, load_frames=lambda r, d: frames[(r, d)], spec=spec, emb=emb)


def _flagged(rows: list[dict]) -> dict[str, list[str]]:
    """What standardize flagged, by check name: the suite must agree with it on real logs."""
    return {e["episode_id"]: sorted(ISSUE_CHECKS[i] for i in e["quality_issues"]) for e in rows if not e["quality_ok"]}


def test_episodes_failing_the_suite_are_left_out_and_counted(tmp_path, flaky_fleet, emb):
    candidates = select_episodes(flaky_fleet[0], CurationSpec()).to_pylist()
    bad = _flagged(candidates)
    assert bad and {e["robot"] for e in candidates if e["episode_id"] in bad} == {FLAKY}
    assert any(e["robot"] == FLAKY and e["episode_id"] not in bad for e in candidates), "a mixed day"
    built = _build(tmp_path / "ds", flaky_fleet, CurationSpec(), emb)
    manifest = built.manifest
    kept = sorted(e["episode_id"] for e in manifest["episodes"])
    assert kept == sorted(e["episode_id"] for e in candidates if e["episode_id"] not in bad)
    quality = manifest["quality"]
    assert quality["suite"] == suite_name(emb) and quality["checked"] == len(candidates)
    assert quality["left_out"] == quality["failed"] == len(bad)
    assert {f["episode_id"]: f["checks"] for f in quality["failures"]} == bad
    by_check = {c: sum(c in checks for checks in bad.values()) for c in sorted({c for v in bad.values() for c in v})}
    assert quality["by_check"] == by_check and by_check["sync_skew"] >= 1
    assert all(e["quality_failures"] == [] for e in manifest["episodes"])
    assert json.loads((tmp_path / "ds" / MANIFEST).read_text())["quality"] == quality
    card = (tmp_path / "ds" / CARD).read_text()
    why = ", ".join(f"{c} {n}" for c, n in by_check.items())
    assert (f"quality: {len(bad)} of {len(candidates)} selected episodes left out, failing the episode-quality suite "
            f"`{suite_name(emb)}` ({why})") in card


def test_quality_failures_are_included_on_request(tmp_path, flaky_fleet, emb):
    default = _build(tmp_path / "default", flaky_fleet, CurationSpec(), emb)
    built = _build(tmp_path / "ds", flaky_fleet, CurationSpec(include_quality_issues=True), emb)
    manifest = built.manifest
    bad = _flagged(select_episodes(flaky_fleet[0], CurationSpec()).to_pylist())
    assert {e["episode_id"]: e["quality_failures"] for e in manifest["episodes"] if e["quality_failures"]} == bad
    assert built.episodes == default.episodes + len(bad)
    assert manifest["quality"]["left_out"] == 0 and manifest["quality"]["failed"] == len(bad)
    assert manifest["quality"]["include_failures"]
    card = (tmp_path / "ds" / CARD).read_text()
    assert f"quality: {len(bad)} of {built.episodes} episodes fail" in card and "included on request" in card
    assert built.version != default.version


def test_a_selection_whose_episodes_all_fail_quality_says_so(tmp_path, flaky_fleet, emb):
    spec = CurationSpec()
    candidates = select_episodes(flaky_fleet[0], spec)
    bad = pa.array(sorted(_flagged(candidates.to_pylist())))
    only_bad = candidates.filter(pc.is_in(candidates["episode_id"], bad))
    with pytest.raises(CurationError, match=rf"all {len(bad)} selected episodes fail the episode-quality suite "
                                            r".*; set include_quality_issues to keep them"):
        _build(tmp_path / "ds", flaky_fleet, spec, emb, selected=only_bad)
    assert not (tmp_path / "ds").exists()
