"""The lineage index: raw file -> episode -> dataset -> policy -> evaluation -> release, both directions.

Edges are written by the assets that create each link, as small immutable records under
``lineage/edges/``; ``build_index`` compacts them (with the raw -> episode edges of the episode
catalog) into sorted Parquet tables under ``lineage/index/``; ``query`` answers from those tables
plus any edge record written since the last build, so a release made a minute ago is found before
the index is rebuilt.

Layout (every lake path of the lineage is named here, once)::

    lineage/edges/datasets/<name>/<version>.parquet      one row per episode of the dataset
    lineage/edges/policies/<name>/<version>.json          policy -> dataset, MLflow run, registry version
    lineage/edges/evals/<policy>/<version>/<eval id>.json  evaluation of a policy, gate verdict
    lineage/edges/releases/<name>/<version>.json          release -> policy, dataset, evaluation
    lineage/index/                                        built by build_index, published whole:
        meta.json                 build id, time, catalog hash, the edge records it covers
        artifacts.json            datasets (with episode counts), policies, evaluations, releases
        raw_episodes.parquet      robot, date, episode_id, key, sha256  sorted by (robot, date, episode_id)
        raw_by_sha.parquet        the same rows sorted by sha256
        episodes_by_id.parquet    episode_id, robot, date               sorted by episode_id
        dataset_members.parquet   robot, date, episode_id, dataset      sorted by (robot, date, episode_id)

The big tables are sorted and written in row groups of ``ROW_GROUP_ROWS``, so a query filtered on
the sort key reads only the row groups whose min/max statistics can match (a robot's three years
are one or two row groups of a million-row table). Which MLflow model version holds the
``production`` alias is read from the promotion log at query time, so it is always current.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel_pipelines.lib import ids, layout
from flywheel_pipelines.lib.evaluation import registry
from flywheel_pipelines.lib.governance import deleter
from flywheel_pipelines.lib.storage import Lake

LINEAGE_PREFIX = layout.LINEAGE
EDGES_PREFIX = layout.LINEAGE_EDGES
DATASET_EDGES = layout.DATASET_EDGES
POLICY_EDGES = layout.POLICY_EDGES
EVAL_EDGES = layout.EVAL_EDGES
RELEASE_EDGES = layout.RELEASE_EDGES
INDEX_PREFIX = layout.LINEAGE_INDEX
INDEX_META = "meta.json"
INDEX_ARTIFACTS = "artifacts.json"
RAW_EPISODES = "raw_episodes.parquet"
RAW_BY_SHA = "raw_by_sha.parquet"
EPISODES_BY_ID = "episodes_by_id.parquet"
DATASET_MEMBERS = "dataset_members.parquet"

EDGE_SCHEMA = "flywheel-lineage-edge-v1"
INDEX_SCHEMA = "flywheel-lineage-index-v1"
RESULT_SCHEMA = "flywheel-lineage-query-v1"
ROW_GROUP_ROWS = 16_384
_META_KEY = b"flywheel.lineage"  # Parquet key-value metadata of edge files and index tables

_SHA_RE = re.compile(r"^[0-9a-f]{12,64}$")
# Episode ids are never paths here, but they come from users: same alphabet as names, plus the
# "~" that standardize appends to a split episode.
_EPISODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,127}$")

_DATASET_EDGE_SCHEMA = pa.schema([
    ("episode_id", pa.string()), ("robot", pa.string()), ("date", pa.string()), ("split", pa.string()),
    ("raw_keys", pa.list_(pa.string())), ("raw_sha256", pa.list_(pa.string())),
])
_RAW_SCHEMA = pa.schema([("robot", pa.string()), ("date", pa.string()), ("episode_id", pa.string()),
                         ("key", pa.string()), ("sha256", pa.string())])


class LineageError(ValueError):
    """A lineage record or question that cannot be answered (unknown artifact, bad selector, ...)."""


# --- edge records ------------------------------------------------------------------------------

def dataset_edge_key(name: str, version: str) -> str:
    return f"{DATASET_EDGES}/{ids.name(name, what='dataset name')}/{ids.name(version, what='dataset version')}.parquet"


def policy_edge_key(name: str, version: str) -> str:
    return f"{POLICY_EDGES}/{ids.name(name, what='policy name')}/{ids.name(version, what='policy version')}.json"


def eval_edge_key(policy_name: str, policy_version: str, eval_id: str) -> str:
    return (f"{EVAL_EDGES}/{ids.name(policy_name, what='policy name')}/"
            f"{ids.name(policy_version, what='policy version')}/{ids.name(eval_id, what='evaluation id')}.json")


def release_edge_key(name: str, version: str) -> str:
    return f"{RELEASE_EDGES}/{ids.name(name, what='release name')}/{ids.name(version, what='release version')}.json"


def _episode_id(value: str) -> str:
    if not isinstance(value, str) or not _EPISODE_RE.fullmatch(value) or ".." in value:
        raise ids.InvalidIdentifier(f"invalid episode id {value!r}")
    return value


def _parquet_bytes(table: pa.Table, meta: dict | None = None) -> bytes:
    if meta is not None:
        table = table.replace_schema_metadata({_META_KEY: json.dumps(meta, sort_keys=True).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue().to_pybytes()


def _file_meta(schema: pa.Schema) -> dict:
    raw = (schema.metadata or {}).get(_META_KEY)
    return json.loads(raw) if raw else {}


def write_dataset_edges(store: Lake, *, name: str, version: str, manifest: dict, at: str) -> bool:
    """Record which episodes (and raw files) a dataset version holds: one row per episode.

    Content-addressed like the dataset version itself: rewriting the same episodes is a no-op
    (returns False); different episodes under an existing version raise, since a version is
    immutable.

    Args:
        manifest: the dataset's manifest.json; ``manifest["episodes"]`` items carry episode_id,
            robot, date, split and raw_files ``[{key, sha256}]``.
        at: when the dataset was built (ISO 8601).
    """
    key = dataset_edge_key(name, version)
    rows = sorted(manifest["episodes"], key=lambda e: (e["robot"], e["date"], e["episode_id"]))
    table = pa.Table.from_pydict({
        "episode_id": [e["episode_id"] for e in rows], "robot": [e["robot"] for e in rows],
        "date": [e["date"] for e in rows], "split": [e.get("split") for e in rows],
        "raw_keys": [[f["key"] for f in e.get("raw_files", [])] for e in rows],
        "raw_sha256": [[f["sha256"] for f in e.get("raw_files", [])] for e in rows],
    }, schema=_DATASET_EDGE_SCHEMA)
    content = hashlib.sha256(_ipc_bytes(table)).hexdigest()
    if store.exists(key):
        old = _file_meta(pq.read_schema(pa.BufferReader(store.read_bytes(key))))
        if old.get("content") == content:
            return False
        raise LineageError(f"dataset {name}/{version} already has lineage edges with different episodes "
                           f"({store.uri(key)}); a dataset version is immutable")
    meta = {"schema": EDGE_SCHEMA, "kind": "dataset", "name": name, "version": version, "at": at,
            "episodes": table.num_rows, "content": content}
    store.write_bytes(key, _parquet_bytes(table, meta))
    return True


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return sink.getvalue().to_pybytes()


def _write_edge_doc(store: Lake, key: str, doc: dict) -> bool:
    """Write a JSON edge unless the same edge (ignoring its time) is already there."""
    doc = {"schema": EDGE_SCHEMA, **doc}
    if store.exists(key):
        old = store.read_json(key)
        if {k: v for k, v in old.items() if k != "at"} == {k: v for k, v in doc.items() if k != "at"}:
            return False
    store.write_json(key, doc)
    return True


def write_policy_edge(store: Lake, *, name: str, version: str, dataset_name: str, dataset_version: str,
                      mlflow_run_id: str | None, registered_model: str | None, registered_version: str | None,
                      at: str) -> bool:
    """Record that policy ``name``/``version`` was trained on a dataset version (False: already recorded)."""
    ids.name(dataset_name, what="dataset name"), ids.name(dataset_version, what="dataset version")
    return _write_edge_doc(store, policy_edge_key(name, version), {
        "kind": "policy", "name": name, "version": version, "dataset_name": dataset_name,
        "dataset_version": dataset_version, "mlflow_run_id": mlflow_run_id, "registered_model": registered_model,
        "registered_version": None if registered_version is None else str(registered_version), "at": at})


def write_eval_edge(store: Lake, *, policy_name: str, policy_version: str, eval_id: str, gate_passed: bool,
                    at: str, prefix: str) -> bool:
    """Record an evaluation of a policy and its gate verdict (``eval_id``: e.g. the suite version)."""
    return _write_edge_doc(store, eval_edge_key(policy_name, policy_version, eval_id), {
        "kind": "evaluation", "policy_name": policy_name, "policy_version": policy_version, "eval_id": eval_id,
        "gate_passed": bool(gate_passed), "prefix": prefix, "at": at})


def write_release_edge(store: Lake, *, name: str, version: str, policy_name: str, policy_version: str,
                       dataset_name: str, dataset_version: str, eval_prefix: str, prefix: str, at: str) -> bool:
    """Record a release bundle and what it was built from (False: already recorded)."""
    ids.name(policy_name, what="policy name"), ids.name(policy_version, what="policy version")
    ids.name(dataset_name, what="dataset name"), ids.name(dataset_version, what="dataset version")
    return _write_edge_doc(store, release_edge_key(name, version), {
        "kind": "release", "name": name, "version": version, "policy_name": policy_name,
        "policy_version": policy_version, "dataset_name": dataset_name, "dataset_version": dataset_version,
        "eval_prefix": eval_prefix, "prefix": prefix, "at": at})


# --- the index ---------------------------------------------------------------------------------

def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _edge_files(store: Lake) -> dict[str, dict[str, int]]:
    """Every edge record by kind: {key: size}."""
    out: dict[str, dict[str, int]] = {}
    for kind, prefix, suffix in (("datasets", DATASET_EDGES, ".parquet"), ("policies", POLICY_EDGES, ".json"),
                                 ("evals", EVAL_EDGES, ".json"), ("releases", RELEASE_EDGES, ".json")):
        out[kind] = {o.key: o.size for o in store.list(prefix + "/") if o.key.endswith(suffix)}
    return out


def _read_dataset_edge(store: Lake, key: str) -> tuple[dict, pa.Table]:
    table = pq.ParquetFile(pa.BufferReader(store.read_bytes(key))).read()
    meta = _file_meta(table.schema)
    if meta.get("kind") != "dataset":
        raise LineageError(f"{store.uri(key)}: not a dataset lineage edge")
    return meta, table.replace_schema_metadata(None)


def _explode_raw(table: pa.Table, keys: str, shas: str) -> pa.Table:
    """One row per (episode, raw file) from list columns of keys and sha256s."""
    parents = pc.list_parent_indices(table[keys])
    base = table.select(["robot", "date", "episode_id"]).take(parents)
    return pa.table({"robot": base["robot"], "date": base["date"], "episode_id": base["episode_id"],
                     "key": pc.list_flatten(table[keys]), "sha256": pc.list_flatten(table[shas])},
                    schema=_RAW_SCHEMA)


def _size(store: Lake, key: str) -> int | None:
    folder = key.rsplit("/", 1)[0] + "/"
    return next((o.size for o in store.list(folder) if o.key == key), None)


def build_index(store: Lake, *, now: str | None = None) -> dict:
    """Compact the catalog's raw -> episode edges and every edge record into ``lineage/index/``.

    The index is published whole (``Lake.publish_dir``), so a query never reads half of a build.

    Returns:
        What the build covered: build id, time, catalog hash and rows, counts per table and edge kind.
    """
    # Imported here: the catalog module loads the standardizer, which a one-shot query never needs.
    from flywheel_pipelines.lib.catalog import CATALOG_KEY

    build_id = uuid.uuid4().hex[:12]
    built_at = now or now_iso()
    edges = _edge_files(store)
    catalog = {"key": CATALOG_KEY, "sha256": None, "episodes": 0, "size": _size(store, CATALOG_KEY)}
    if store.exists(CATALOG_KEY):
        with store.local_path(CATALOG_KEY) as path:
            data = Path(path).read_bytes()
        catalog["sha256"] = hashlib.sha256(data).hexdigest()
        cat = pq.read_table(pa.BufferReader(data), columns=["episode_id", "robot", "date", "source_keys",
                                                             "source_sha256"])
        del data
        catalog["episodes"] = cat.num_rows
    else:
        cat = pa.table({"episode_id": pa.array([], pa.string()), "robot": pa.array([], pa.string()),
                        "date": pa.array([], pa.string()), "source_keys": pa.array([], pa.list_(pa.string())),
                        "source_sha256": pa.array([], pa.list_(pa.string()))})
    episodes = cat.select(["episode_id", "robot", "date"]).sort_by("episode_id")
    raw = _explode_raw(cat, "source_keys", "source_sha256")
    del cat
    raw = raw.sort_by([("robot", "ascending"), ("date", "ascending"), ("episode_id", "ascending")])
    by_sha = raw.sort_by("sha256")

    datasets, members = [], []
    for number, key in enumerate(sorted(edges["datasets"])):
        meta, table = _read_dataset_edge(store, key)
        datasets.append({"id": number, "name": meta["name"], "version": meta["version"], "at": meta.get("at"),
                         "episodes": table.num_rows, "key": key})
        members.append(table.select(["robot", "date", "episode_id"]).append_column(
            "dataset", pa.array([number] * table.num_rows, pa.int32())))
    member_table = (pa.concat_tables(members) if members else pa.table({
        "robot": pa.array([], pa.string()), "date": pa.array([], pa.string()),
        "episode_id": pa.array([], pa.string()), "dataset": pa.array([], pa.int32())}))
    member_table = member_table.sort_by([("robot", "ascending"), ("date", "ascending"), ("episode_id", "ascending")])
    artifacts = {
        "datasets": datasets,
        "policies": [store.read_json(k) for k in sorted(edges["policies"])],
        "evals": [store.read_json(k) for k in sorted(edges["evals"])],
        "releases": [store.read_json(k) for k in sorted(edges["releases"])],
    }
    tag = {"build_id": build_id}
    meta = {"schema": INDEX_SCHEMA, "build_id": build_id, "built_at": built_at, "catalog": catalog,
            "covered": {k: v for kind in edges.values() for k, v in kind.items()},
            "rows": {"raw_files": raw.num_rows, "episodes": episodes.num_rows, "dataset_members": member_table.num_rows},
            "artifacts": {kind: len(v) for kind, v in artifacts.items()}}
    with tempfile.TemporaryDirectory(prefix="flywheel-lineage-") as tmp:
        out = Path(tmp)
        for filename, table in ((RAW_EPISODES, raw), (RAW_BY_SHA, by_sha), (EPISODES_BY_ID, episodes),
                                (DATASET_MEMBERS, member_table)):
            (out / filename).write_bytes(_parquet_bytes(table, tag))
        (out / INDEX_ARTIFACTS).write_text(json.dumps({**artifacts, **tag}, sort_keys=True) + "\n")
        (out / INDEX_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        store.publish_dir(INDEX_PREFIX, out, replace=True)
    return {k: v for k, v in meta.items() if k != "covered"} | {"edge_files": len(meta["covered"])}


# --- queries -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArtifactNode:
    """A dataset, policy, evaluation or release in a lineage tree."""

    kind: str  # dataset | policy | evaluation | release
    name: str
    version: str
    production: bool = False
    detail: dict = field(default_factory=dict)
    children: tuple[ArtifactNode, ...] = ()

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "version": self.version, "production": self.production,
                "detail": self.detail, "children": [c.to_json() for c in self.children]}


@dataclass(frozen=True)
class RawFile:
    key: str
    sha256: str
    robot: str
    date: str
    episodes: int
    status: str | None = None  # expired | erased: the raw bytes were deleted (a tombstone says why)


@dataclass(frozen=True)
class LineageResult:
    """The answer to one lineage question.

    ``episodes``/``robot_days``/``raw_files`` are the episodes the question is about: the ones a
    raw file, robot or episode selector matched, or the ones a dataset, policy or release was built
    from (its upstream). ``upstream`` is the chain from a selected release or policy up to its
    dataset; ``downstream`` the trees of every dataset, policy, evaluation and release built on them.
    """

    selector: dict
    episodes: tuple[tuple[str, str, str], ...]  # (episode_id, robot, date), sorted by robot, date, id
    raw_files: tuple[RawFile, ...]
    upstream: tuple[ArtifactNode, ...]
    downstream: tuple[ArtifactNode, ...]
    production: tuple[str, ...]  # "policy <name>/<version> (registered <model> v<n>)"
    index: dict
    warnings: tuple[str, ...] = ()

    @property
    def robot_days(self) -> list[tuple[str, str, int]]:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for _, robot, date in self.episodes:
            counts[(robot, date)] += 1
        return [(r, d, n) for (r, d), n in sorted(counts.items())]

    def count(self, kind: str) -> int:
        return len({(n.name, n.version) for n in walk(self.downstream) if n.kind == kind})


class _Index:
    """The published index plus every edge record written since it was built."""

    def __init__(self, store: Lake):
        self.store = store
        self.meta: dict | None = None
        self.withdrawn_policies: set[tuple[str, str]] = set()  # set by query() from the promotion log
        self._aliases: dict[str, tuple[str | None, set[str]]] | None = None
        artifacts = {"datasets": [], "policies": [], "evals": [], "releases": []}
        if store.exists(f"{INDEX_PREFIX}/{INDEX_META}"):
            self.meta = store.read_json(f"{INDEX_PREFIX}/{INDEX_META}")
            artifacts = store.read_json(f"{INDEX_PREFIX}/{INDEX_ARTIFACTS}")
            self._check_build(artifacts.get("build_id"), INDEX_ARTIFACTS)
        covered = (self.meta or {}).get("covered", {})
        self.fresh: list[str] = []
        # Edge records are few (hundreds), so listing them all on every query is cheap; the ones
        # the index does not cover yet (or that changed since) are read here.
        self.fresh_datasets: dict[int, pa.Table] = {}
        self.datasets = list(artifacts["datasets"])
        by_key = {d["key"]: d for d in self.datasets}
        for kind, files in _edge_files(store).items():
            for key, size in files.items():
                if covered.get(key) == size:
                    continue
                self.fresh.append(key)
                if kind == "datasets":
                    meta, table = _read_dataset_edge(store, key)
                    number = by_key[key]["id"] if key in by_key else len(self.datasets)
                    entry = {"id": number, "name": meta["name"], "version": meta["version"], "at": meta.get("at"),
                             "episodes": table.num_rows, "key": key}
                    if key not in by_key:
                        self.datasets.append(entry)
                    self.fresh_datasets[number] = table
                else:
                    doc = store.read_json(key)
                    artifacts[kind] = [d for d in artifacts[kind] if _doc_key(d) != key] + [doc]
        self.dataset_by_id = {d["id"]: d for d in self.datasets}
        self.dataset_by_nv = {(d["name"], d["version"]): d for d in self.datasets}
        self.policies = {(p["name"], p["version"]): p for p in artifacts["policies"]}
        self.evals: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for e in artifacts["evals"]:
            self.evals[(e["policy_name"], e["policy_version"])].append(e)
        self.releases_of: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self.releases = {}
        for r in artifacts["releases"]:
            self.releases_of[(r["policy_name"], r["policy_version"])].append(r)
            self.releases[(r["name"], r["version"])] = r
        self.policies_of: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for p in self.policies.values():
            self.policies_of[(p["dataset_name"], p["dataset_version"])].append(p)

    def _check_build(self, build_id: str | None, what: str) -> None:
        if build_id != self.meta["build_id"]:
            raise LineageError(f"{self.store.uri(INDEX_PREFIX)}/{what} belongs to another build of the index "
                               "(it is being rebuilt right now); retry")

    def table(self, filename: str, filters: list[tuple[str, str, object]] = (),
              columns: list[str] | None = None) -> pa.Table:
        """Rows of an index table matching every ``(column, op, value)`` filter (op: = >= <= < in).

        Only the row groups whose min/max statistics can match are read: the tables are sorted
        on the columns the queries filter by, so that is one or two row groups of a large table.
        """
        if self.meta is None:
            raise LineageError(f"no lineage index at {self.store.uri(INDEX_PREFIX)} yet: materialize lineage_index "
                               "(raw, robot and episode questions need the episode catalog's edges)")
        key = f"{INDEX_PREFIX}/{filename}"
        # A real file lets Parquet read the footer and only the row groups that can match.
        with self.store.local_path(key) as path:
            pf = pq.ParquetFile(path)
            self._check_build(_file_meta(pf.schema_arrow).get("build_id"), filename)
            names = pf.schema_arrow.names
            groups = [i for i in range(pf.metadata.num_row_groups)
                      if _may_match(pf.metadata.row_group(i), names, filters)]
            table = pf.read_row_groups(groups, columns=columns and sorted(set(columns) | {f[0] for f in filters}))
        table = table.replace_schema_metadata(None)
        if table.num_rows and filters:
            table = table.filter(_mask(table, filters))
        return table.select(columns) if columns else table

    def _alias_states(self) -> dict[str, tuple[str | None, set[str]]]:
        """Each registered model's (production version, withdrawn versions): one log read each."""
        if self._aliases is None:
            models = {p["registered_model"] for p in self.policies.values() if p.get("registered_model")}
            self._aliases = {model: alias_state(self.store, model) for model in sorted(models)}
        return self._aliases

    def withdrawn(self) -> set[tuple[str, str]]:
        """Policies whose registered version was withdrawn (and not promoted again since)."""
        states = self._alias_states()
        return {(p["name"], p["version"]) for p in self.policies.values()
                if p.get("registered_model") in states
                and p.get("registered_version") in states[p["registered_model"]][1]}

    def production(self) -> dict[tuple[str, str], str]:
        """Policies holding the production alias now: {(name, version): "registered <model> v<n>"}."""
        states = self._alias_states()
        out = {}
        for p in self.policies.values():
            model = p.get("registered_model")
            version = states[model][0] if model in states else None
            if version is not None and p.get("registered_version") == version:
                out[(p["name"], p["version"])] = f"registered {model} v{version}"
        return out


_OPS = {"=": pc.equal, ">=": pc.greater_equal, "<=": pc.less_equal, "<": pc.less}


def _may_match(group: pq.RowGroupMetaData, names: list[str], filters) -> bool:
    """False when a row group's min/max statistics rule out every row (None: no statistics)."""
    for column, op, value in filters:
        stats = group.column(names.index(column)).statistics
        if stats is None or not stats.has_min_max:
            continue
        lo, hi = stats.min, stats.max
        values = value if op == "in" else [value]
        if op in ("=", "in") and not any(lo <= v <= hi for v in values):
            return False
        if (op == ">=" and hi < value) or (op == "<=" and lo > value) or (op == "<" and lo >= value):
            return False
    return True


def _mask(table: pa.Table, filters):
    masks = [pc.is_in(table[c], value_set=pa.array(list(v), table.schema.field(c).type)) if op == "in"
             else _OPS[op](table[c], v) for c, op, v in filters]
    out = masks[0]
    for m in masks[1:]:
        out = pc.and_(out, m)
    return out


def _doc_key(doc: dict) -> str:
    kind = doc.get("kind")
    if kind == "policy":
        return policy_edge_key(doc["name"], doc["version"])
    if kind == "evaluation":
        return eval_edge_key(doc["policy_name"], doc["policy_version"], doc["eval_id"])
    return release_edge_key(doc["name"], doc["version"])


def alias_state(store: Lake, model: str) -> tuple[str | None, set[str]]:
    """(the registered version holding the production alias now, the versions withdrawn by on-call
    and not promoted again since), from one read of the append-only promotion log.

    The newest promotion or rollback says where the alias points; a withdrawal does not move the
    alias, and a (forced) re-promotion brings a withdrawn version back.
    """
    production: str | None = None
    withdrawn: set[str] = set()
    for entry in registry.read_log(store, ids.name(model, what="model")):
        version = str(entry["version"])
        if entry.get("action") == "withdraw":
            withdrawn.add(version)
        elif entry.get("action") in ("promote", "rollback"):
            production = version
            if entry["action"] == "promote":
                withdrawn.discard(version)
    return production, withdrawn


def production_version(store: Lake, model: str) -> str | None:
    """The registered-model version holding the production alias now, from the promotion log."""
    return alias_state(store, model)[0]


def withdrawn_versions(store: Lake, model: str) -> set[str]:
    """Registered versions of ``model`` withdrawn by on-call and not promoted again since."""
    return alias_state(store, model)[1]


def _split_ref(value: str, what: str) -> tuple[str, str]:
    name, sep, version = value.partition("/")
    if not sep:
        raise LineageError(f"{what} must be NAME/VERSION, got {value!r}")
    return ids.name(name, what=f"{what} name"), ids.name(version, what=f"{what} version")


def _filter(table: pa.Table, mask) -> pa.Table:
    return table.filter(mask) if table.num_rows else table


def query(store: Lake, *, raw: str | None = None, robot: str | None = None, date_from: str | None = None,
          date_to: str | None = None, episode: str | None = None, dataset: str | None = None,
          policy: str | None = None, release: str | None = None) -> LineageResult:
    """Everything built on (downstream) or behind (upstream) one artifact.

    Exactly one selector: ``raw`` (a raw object key ``raw/robot=<id>/date=<day>/<file>`` or a
    sha256, or a unique prefix of at least 12 hex digits), ``robot`` (optionally with
    ``date_from``/``date_to``, inclusive), ``episode`` (an episode id), ``dataset``, ``policy`` or
    ``release`` (``NAME/VERSION``).

    Raises:
        LineageError: bad selector, or the artifact is unknown.
        ids.InvalidIdentifier: an identifier that is not safe (checked before it touches a path).
    """
    given = {k: v for k, v in {"raw": raw, "robot": robot, "episode": episode, "dataset": dataset,
                                "policy": policy, "release": release}.items() if v is not None}
    if len(given) != 1:
        raise LineageError(f"give exactly one of --raw, --robot, --episode, --dataset, --policy, --release "
                           f"(got {', '.join(sorted(given)) or 'none'})")
    if (date_from or date_to) and robot is None:
        raise LineageError("--from/--to go with --robot")
    selector = dict(given)
    # Validate every identifier before anything is read.
    if robot is not None:
        ids.robot_id(robot)
        if date_from:
            selector["from"] = ids.day(date_from)
        if date_to:
            selector["to"] = ids.day(date_to)
        if date_from and date_to and date_from > date_to:
            raise LineageError(f"--from {date_from} is after --to {date_to}")
    raw_key = raw_sha = None
    if raw is not None:
        if raw.startswith(layout.RAW):
            raw_key = raw
            ids.parse_raw_key(raw.rstrip("/"))
        elif _SHA_RE.fullmatch(raw.lower()):
            raw_sha = raw.lower()
        else:
            raise LineageError(f"--raw {raw!r} is neither a raw object key ({layout.RAW_LOG_FORMAT}) "
                               "nor a sha256 (at least 12 hex digits)")
    if episode is not None:
        _episode_id(episode)
    refs = {k: _split_ref(v, k) for k, v in given.items() if k in ("dataset", "policy", "release")}

    idx = _Index(store)
    warnings: list[str] = []
    upstream: list[ArtifactNode] = []
    production = idx.production()
    idx.withdrawn_policies = idx.withdrawn()
    if refs:
        kind, (name, version) = next(iter(refs.items()))
        episodes_t, raw_t, upstream, root = _upstream(idx, kind, name, version, production)
        downstream = list(root.children) if root is not None else []
    else:
        raw_t = _start_raw(idx, raw_key=raw_key, raw_sha=raw_sha, robot=robot, date_from=date_from,
                           date_to=date_to, episode=episode, warnings=warnings)
        episodes_t = _distinct(raw_t.select(["episode_id", "robot", "date"]))
        containing = _containing(idx, episodes_t, robot=robot, date_from=date_from, date_to=date_to)
        catalog = idx.meta["catalog"]
        if _size(store, catalog["key"]) != catalog.get("size"):
            # Cheap to notice (one listing), costly to fix here (the whole catalog): say so instead.
            warnings.append(f"{catalog['key']} changed since the index was built: episodes catalogued since then "
                            "are missing unless a dataset already holds them (re-materialize lineage_index)")
        downstream = _downstream(idx, containing, production)
    if idx.meta is None:
        warnings.append("no lineage index yet: answered from the edge records alone")
    index_info = {"built_at": (idx.meta or {}).get("built_at"), "build_id": (idx.meta or {}).get("build_id"),
                  "fresh_edge_files": len(idx.fresh)}
    raw_files, upstream, downstream = _mark_deleted(idx, _raw_files(raw_t), upstream, downstream)
    episodes_t = episodes_t.sort_by([("robot", "ascending"), ("date", "ascending"), ("episode_id", "ascending")])
    episodes = tuple(zip(episodes_t["episode_id"].to_pylist(), episodes_t["robot"].to_pylist(),
                         episodes_t["date"].to_pylist(), strict=True))
    return LineageResult(selector=selector, episodes=episodes, raw_files=raw_files,
                         upstream=tuple(upstream), downstream=tuple(downstream),
                         production=tuple(f"policy {n}/{v} ({how})" for (n, v), how in sorted(production.items())),
                         index=index_info, warnings=tuple(warnings))


def _worst(statuses) -> str | None:
    found = set(statuses) - {None}
    return "erased" if "erased" in found else ("expired" if found else None)


def _deleted_datasets(idx: _Index, stones: dict[str, str]) -> dict[tuple[str, str], str]:
    """{(dataset name, version): worst status} of the datasets holding an episode of a deleted raw
    log, found like a --robot question: the raw -> episode and membership tables read only for
    the robot-days that have tombstones (row groups pruned), plus fresh dataset edge records."""
    days = sorted({ids.parse_raw_key(k.rstrip("/"))[:2] for k in stones})
    robots = sorted({r for r, _ in days})
    filters = [("robot", "in", robots), ("date", ">=", days[0][1]), ("date", "<=", days[-1][1])]
    fresh = _fresh_raw(idx)
    edges = pa.concat_tables([idx.table(RAW_EPISODES, filters=filters), fresh]) if idx.meta is not None else fresh
    episode_status: dict[str, str | None] = {}
    for episode, key in zip(edges["episode_id"].to_pylist(), edges["key"].to_pylist(), strict=True):
        if key in stones:
            episode_status[episode] = _worst([episode_status.get(episode), stones[key]])
    if not episode_status:
        return {}
    wanted = pa.array(sorted(episode_status), pa.string())
    found: dict[int, str | None] = {}
    if idx.meta is not None:
        members = idx.table(DATASET_MEMBERS, filters=filters, columns=["episode_id", "dataset"])
        members = _filter(members, pc.is_in(members["episode_id"], value_set=wanted))
        for episode, number in zip(members["episode_id"].to_pylist(), members["dataset"].to_pylist(), strict=True):
            if number not in idx.fresh_datasets:  # a rewritten record is read fresh below
                found[number] = _worst([found.get(number), episode_status[episode]])
    for number, table in idx.fresh_datasets.items():
        hits = _filter(table, pc.is_in(table["episode_id"], value_set=wanted))["episode_id"].to_pylist()
        if hits:
            found[number] = _worst([found.get(number), *(episode_status[e] for e in hits)])
    return {(idx.dataset_by_id[n]["name"], idx.dataset_by_id[n]["version"]): st for n, st in found.items()}


def _mark_deleted(idx: _Index, raw_files: tuple[RawFile, ...], upstream: list[ArtifactNode],
                  downstream: list[ArtifactNode]):
    """Marks what derives from deleted raw logs (governance tombstones, one listing): each raw file
    gets its status, each dataset holding an episode of a deleted log ``source_status`` (erased
    over expired), and everything built on that dataset inherits it."""
    stones = deleter.all_statuses(idx.store)
    if not stones:
        return raw_files, upstream, downstream
    raw_files = tuple(dataclasses.replace(f, status=stones.get(f.key)) for f in raw_files)
    datasets = _deleted_datasets(idx, stones)

    def mark(n: ArtifactNode, inherited: str | None) -> ArtifactNode:
        s = _worst([datasets.get((n.name, n.version)) if n.kind == "dataset" else None, inherited])
        detail = {**n.detail, "source_status": s} if s else n.detail
        return dataclasses.replace(n, detail=detail, children=tuple(mark(c, s) for c in n.children))

    # The upstream chain (release -> policy -> dataset) inherits from its dataset, the last link.
    chain = _worst([datasets.get((n.name, n.version)) for n in upstream if n.kind == "dataset"])
    return raw_files, [mark(n, chain) for n in upstream], [mark(n, None) for n in downstream]


def _distinct(table: pa.Table) -> pa.Table:
    """``table`` without repeated rows, first occurrence kept.

    In Python on purpose: answers are small (a robot's years, a dataset), and Table.group_by would
    load Acero and pyarrow.dataset, ~0.4 s of imports on every fresh `flywheel lineage`.
    """
    rows = list(dict.fromkeys(zip(*(table[c].to_pylist() for c in table.column_names), strict=True)))
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in table.column_names]
    return pa.table([pa.array(list(c), table.schema.field(i).type) for i, c in enumerate(columns)],
                    schema=table.schema)


def _raw_files(raw_t: pa.Table) -> tuple[RawFile, ...]:
    raw_t = _filter(raw_t, pc.is_valid(raw_t["key"]))
    edges = dict.fromkeys(zip(*(raw_t[c].to_pylist() for c in ("key", "sha256", "robot", "date", "episode_id")),
                              strict=True))
    counts: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for key, sha, robot, date, _ in edges:
        counts[(key, sha, robot, date)] += 1
    order = sorted(counts, key=lambda f: (f[2], f[3], f[0]))
    return tuple(RawFile(k, s, r, d, counts[(k, s, r, d)]) for k, s, r, d in order)


def _fresh_raw(idx: _Index) -> pa.Table:
    """Raw -> episode edges carried by dataset edge records the index does not cover yet."""
    parts = [_explode_raw(t, "raw_keys", "raw_sha256") for t in idx.fresh_datasets.values()]
    return pa.concat_tables(parts) if parts else _RAW_SCHEMA.empty_table()


def _start_raw(idx: _Index, *, raw_key, raw_sha, robot, date_from, date_to, episode, warnings) -> pa.Table:
    fresh = _fresh_raw(idx)
    if raw_key is not None:
        r, d, _ = ids.parse_raw_key(raw_key.rstrip("/"))
        found = idx.table(RAW_EPISODES, filters=[("robot", "=", r), ("date", "=", d)])
        found = pa.concat_tables([found, _filter(fresh, pc.and_(pc.equal(fresh["robot"], r),
                                                                pc.equal(fresh["date"], d)))])
        keys = found["key"]
        mask = pc.equal(keys, raw_key)
        if raw_key.endswith("/"):
            mask = pc.or_(mask, pc.starts_with(keys, raw_key))
        else:
            # A file inside a rosbag2 folder whose episodes name the folder (key ending in "/").
            folders = {k for k in keys.to_pylist() if k.endswith("/") and raw_key.startswith(k)}
            if folders:
                mask = pc.or_(mask, pc.is_in(keys, pa.array(sorted(folders))))
        out = _filter(found, mask)
        if not out.num_rows:
            raise LineageError(f"raw file {raw_key} not found in the lineage index (not ingested yet, or the "
                               "index predates it: re-materialize lineage_index)")
    elif raw_sha is not None:
        upper = raw_sha + "g"  # every sha256 starting with the prefix sorts in [prefix, prefix + "g")
        found = idx.table(RAW_BY_SHA, filters=[("sha256", ">=", raw_sha), ("sha256", "<", upper)])
        found = pa.concat_tables([found, _filter(fresh, pc.starts_with(fresh["sha256"], raw_sha))])
        out = _filter(found, pc.starts_with(found["sha256"], raw_sha))
        shas = set(out["sha256"].to_pylist())
        if not shas:
            raise LineageError(f"no raw file with sha256 {raw_sha} in the lineage index")
        if len(shas) > 1:
            raise LineageError(f"sha256 prefix {raw_sha} is ambiguous: {len(shas)} raw files match; give more digits")
    elif robot is not None:
        filters = [("robot", "=", robot)]
        if date_from:
            filters.append(("date", ">=", date_from))
        if date_to:
            filters.append(("date", "<=", date_to))
        out = idx.table(RAW_EPISODES, filters=filters)
        mask = pc.equal(fresh["robot"], robot)
        if date_from:
            mask = pc.and_(mask, pc.greater_equal(fresh["date"], date_from))
        if date_to:
            mask = pc.and_(mask, pc.less_equal(fresh["date"], date_to))
        out = pa.concat_tables([out, _filter(fresh, mask)])
        if not out.num_rows:
            known = idx.table(RAW_EPISODES, filters=[("robot", "=", robot)], columns=["robot"]).num_rows or \
                pc.any(pc.equal(fresh["robot"], robot)).as_py()
            if not known:
                raise LineageError(f"unknown robot {robot!r}: no episodes of it in the lineage index")
            warnings.append(f"robot {robot} has no episodes between {date_from or 'the start'} and "
                            f"{date_to or 'today'}")
    else:
        hit = idx.table(EPISODES_BY_ID, filters=[("episode_id", "=", episode)])
        fresh_hit = _filter(fresh, pc.equal(fresh["episode_id"], episode))
        if not hit.num_rows and not fresh_hit.num_rows:
            raise LineageError(f"unknown episode {episode!r}: not in the lineage index")
        out = fresh_hit
        if hit.num_rows:
            r, d = hit["robot"][0].as_py(), hit["date"][0].as_py()
            found = idx.table(RAW_EPISODES, filters=[("robot", "=", r), ("date", "=", d), ("episode_id", "=", episode)])
            if not found.num_rows:  # an episode without raw files still is an episode
                found = pa.table({"robot": [r], "date": [d], "episode_id": [episode], "key": pa.array([None], pa.string()),
                                  "sha256": pa.array([None], pa.string())}, schema=_RAW_SCHEMA)
            out = pa.concat_tables([found, out])
    # The same edge can come from the catalog and from a fresh dataset record.
    return _distinct(out)


def _containing(idx: _Index, episodes_t: pa.Table, *, robot, date_from, date_to) -> dict[int, int]:
    """Datasets holding any of the episodes: {dataset id: how many of them}."""
    if not episodes_t.num_rows:
        return {}
    if robot is not None:
        filters = [("robot", "=", robot)]
        if date_from:
            filters.append(("date", ">=", date_from))
        if date_to:
            filters.append(("date", "<=", date_to))
    else:
        robots = sorted(set(episodes_t["robot"].to_pylist()))
        filters = [("robot", "in", robots), ("date", ">=", pc.min(episodes_t["date"]).as_py()),
                   ("date", "<=", pc.max(episodes_t["date"]).as_py())]
    members = idx.table(DATASET_MEMBERS, filters=filters) if idx.meta is not None else None
    wanted = episodes_t["episode_id"]
    counts: dict[int, int] = defaultdict(int)
    if members is not None and members.num_rows:
        members = _filter(members, pc.is_in(members["episode_id"], value_set=wanted.combine_chunks()))
        for number, n in _value_counts(members["dataset"]):
            if number not in idx.fresh_datasets:  # a rewritten record is read fresh below
                counts[number] += n
    for number, table in idx.fresh_datasets.items():
        n = pc.sum(pc.is_in(table["episode_id"], value_set=wanted.combine_chunks())).as_py() or 0
        if n:
            counts[number] += n
    return dict(counts)


def _value_counts(column: pa.ChunkedArray) -> list[tuple[int, int]]:
    vc = pc.value_counts(column)
    return list(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))


def _policy_node(idx: _Index, p: dict, production: dict) -> ArtifactNode:
    key = (p["name"], p["version"])
    children = [ArtifactNode("evaluation", e["eval_id"], e["policy_version"], False,
                             {"gate_passed": e["gate_passed"], "prefix": e["prefix"], "at": e.get("at")})
                for e in sorted(idx.evals.get(key, []), key=lambda e: (e.get("at") or "", e["eval_id"]))]
    withdrawn = key in idx.withdrawn_policies
    children += [ArtifactNode("release", r["name"], r["version"], key in production,
                              {"prefix": r["prefix"], "eval_prefix": r["eval_prefix"], "at": r.get("at"),
                               **({"withdrawn": True} if withdrawn else {})})
                 for r in sorted(idx.releases_of.get(key, []), key=lambda r: (r.get("at") or "", r["name"], r["version"]))]
    detail = {"mlflow_run_id": p.get("mlflow_run_id"), "registered_model": p.get("registered_model"),
              "registered_version": p.get("registered_version"), "at": p.get("at"),
              "dataset": f"{p['dataset_name']}/{p['dataset_version']}", **({"withdrawn": True} if withdrawn else {})}
    return ArtifactNode("policy", p["name"], p["version"], key in production, detail, tuple(children))


def _dataset_node(idx: _Index, d: dict, matched: int | None, production: dict) -> ArtifactNode:
    policies = sorted(idx.policies_of.get((d["name"], d["version"]), []),
                      key=lambda p: (p.get("at") or "", p["name"], p["version"]))
    detail = {"episodes": d["episodes"], "at": d.get("at")}
    if matched is not None:
        detail["matched_episodes"] = matched
    return ArtifactNode("dataset", d["name"], d["version"], False, detail,
                        tuple(_policy_node(idx, p, production) for p in policies))


def _downstream(idx: _Index, containing: dict[int, int], production: dict) -> list[ArtifactNode]:
    order = sorted(containing, key=lambda i: (idx.dataset_by_id[i]["name"], idx.dataset_by_id[i].get("at") or "",
                                              idx.dataset_by_id[i]["version"]))
    return [_dataset_node(idx, idx.dataset_by_id[i], containing[i], production) for i in order]


def _upstream(idx: _Index, kind: str, name: str, version: str, production: dict):
    """Behind a release, policy or dataset: (episodes, raw edges, chain release -> policy -> dataset,
    the selected artifact's own node with what is built on it; None for a release)."""
    chain: list[ArtifactNode] = []
    root: ArtifactNode | None = None
    if kind == "release":
        r = idx.releases.get((name, version))
        if r is None:
            raise LineageError(f"unknown release {name}/{version}: no lineage edge for it")
        holds = (r["policy_name"], r["policy_version"]) in production
        chain.append(ArtifactNode("release", name, version, holds,
                                  {"prefix": r["prefix"], "eval_prefix": r["eval_prefix"], "at": r.get("at")}))
        kind, name, version = "policy", r["policy_name"], r["policy_version"]
    if kind == "policy":
        p = idx.policies.get((name, version))
        if p is None:
            raise LineageError(f"unknown policy {name}/{version}: no lineage edge for it")
        node = _policy_node(idx, p, production)
        root = root if chain else node
        chain.append(ArtifactNode(node.kind, node.name, node.version, node.production, node.detail))
        kind, name, version = "dataset", p["dataset_name"], p["dataset_version"]
    d = idx.dataset_by_nv.get((name, version))
    if d is None:
        raise LineageError(f"unknown dataset {name}/{version}: no lineage edge for it")
    table = idx.fresh_datasets.get(d["id"])
    if table is None:
        table = _read_dataset_edge(idx.store, d["key"])[1]
    node = _dataset_node(idx, d, None, production)
    root = node if not chain else root
    chain.append(ArtifactNode(node.kind, node.name, node.version, False, node.detail))
    return table.select(["episode_id", "robot", "date"]), _explode_raw(table, "raw_keys", "raw_sha256"), chain, root


# --- output ------------------------------------------------------------------------------------

def _selector_text(selector: dict) -> str:
    parts = [f"{k} {v}" for k, v in selector.items() if k not in ("from", "to")]
    if "from" in selector or "to" in selector:
        parts.append(f"from {selector.get('from', 'the start')} to {selector.get('to', 'today')}")
    return ", ".join(parts)


def _node_line(n: ArtifactNode) -> str:
    mark = (" [PRODUCTION]" if n.production else "") + (" [WITHDRAWN]" if n.detail.get("withdrawn") else "")
    if n.detail.get("source_status"):
        mark += f" [{n.detail['source_status'].upper()} SOURCE]"
    d = n.detail
    if n.kind == "dataset":
        extra = (f"{d['matched_episodes']} of its {d['episodes']} episodes" if "matched_episodes" in d
                 else f"{d['episodes']} episodes")
        return f"dataset {n.name}/{n.version}{mark} ({extra})"
    if n.kind == "policy":
        reg = (f", registered {d['registered_model']} v{d['registered_version']}" if d.get("registered_model") else "")
        return f"policy {n.name}/{n.version}{mark} (MLflow run {d.get('mlflow_run_id')}{reg})"
    if n.kind == "evaluation":
        return f"evaluation {n.name} of {n.version}: gate {'passed' if d['gate_passed'] else 'FAILED'} ({d['prefix']})"
    return f"release {n.name}/{n.version}{mark} ({d['prefix']})"


def render_tree(result: LineageResult, *, max_robot_days: int = 12, max_raw_files: int = 12) -> str:
    """A human-readable tree, compact at fleet scale: episodes are summarized per robot-day (or per
    robot when there are many days), raw files listed up to ``max_raw_files``."""
    lines = [f"lineage of {_selector_text(result.selector)}"]
    for i, n in enumerate(result.upstream):
        lines.append(f"  {'selected:  ' if i == 0 else 'built from:'} {_node_line(n)}")
    days = result.robot_days
    robots = sorted({r for r, _, _ in days})
    lines.append(f"  episodes: {len(result.episodes)} on {len(days)} robot-days of {len(robots)} robots, "
                 f"{len(result.raw_files)} raw files")
    if len(days) <= max_robot_days:
        lines += [f"    {r} {d}: {n} episodes" for r, d, n in days]
    else:
        per: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for r, d, n in days:
            per[r].append((d, n))
        for r in robots[:max_robot_days]:
            ds = per[r]
            lines.append(f"    {r}: {sum(n for _, n in ds)} episodes on {len(ds)} days, {ds[0][0]} .. {ds[-1][0]}")
        if len(robots) > max_robot_days:
            lines.append(f"    ... and {len(robots) - max_robot_days} more robots (--json lists all)")
    for f in result.raw_files[:max_raw_files]:
        gone = f"  [{f.status.upper()}]" if f.status else ""
        lines.append(f"    raw {f.sha256[:16] if f.sha256 else '-':<16}  {f.key}  ({f.episodes} episodes){gone}")
    if len(result.raw_files) > max_raw_files:
        lines.append(f"    ... and {len(result.raw_files) - max_raw_files} more raw files (--json lists all)")
    in_prod = sum(1 for n in walk(result.downstream) if n.production and n.kind in ("policy", "release"))
    lines.append(f"  downstream: {result.count('dataset')} datasets, {result.count('policy')} policies, "
                 f"{result.count('evaluation')} evaluations, {result.count('release')} releases"
                 f" ({in_prod} in production)")

    def tree(nodes: tuple[ArtifactNode, ...], indent: str) -> None:
        for i, n in enumerate(nodes):
            last = i == len(nodes) - 1
            lines.append(f"{indent}{'└── ' if last else '├── '}{_node_line(n)}")
            tree(n.children, indent + ("    " if last else "│   "))

    tree(result.downstream, "  ")
    lines.append("  production now: " + ("; ".join(result.production) or "none recorded"))
    idx = result.index
    lines.append(f"  index built {idx['built_at'] or 'never'}; {idx['fresh_edge_files']} newer edge records read")
    lines += [f"  warning: {w}" for w in result.warnings]
    return "\n".join(lines)


def walk(nodes: Iterable[ArtifactNode]):
    """Every node of the trees, depth first."""
    for n in nodes:
        yield n
        yield from walk(n.children)


def to_json(result: LineageResult) -> dict:
    """The result as a JSON document with a stable schema (``flywheel-lineage-query-v1``)."""
    return {
        "schema": RESULT_SCHEMA,
        "selector": result.selector,
        "episodes": {"count": len(result.episodes),
                     "robot_days": [{"robot": r, "date": d, "episodes": n} for r, d, n in result.robot_days],
                     "episode_ids": [e for e, _, _ in result.episodes]},
        "raw_files": [{"key": f.key, "sha256": f.sha256, "robot": f.robot, "date": f.date, "episodes": f.episodes,
                       "status": f.status}
                      for f in result.raw_files],
        "upstream": [n.to_json() for n in result.upstream],
        "downstream": [n.to_json() for n in result.downstream],
        "counts": {k: result.count(k) for k in ("dataset", "policy", "evaluation", "release")},
        "production": list(result.production),
        "index": result.index,
        "warnings": list(result.warnings),
    }
