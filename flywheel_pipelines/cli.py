"""`flywheel`: what people do outside the Dagster UI."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from flywheel_pipelines.lib import layout, settings


def _lake(root: str | None):
    """A folder or an ``s3://bucket/prefix`` lake (S3 settings from the FLYWHEEL_S3_* variables)."""
    from flywheel_pipelines.defs.resources import open_configured_lake

    return open_configured_lake(root or settings.default_lake_root())


@click.group()
def main() -> None:
    """The robot-learning flywheel: simulate a fleet, run the demo, search episodes, trace releases."""


@main.group()
def fleet() -> None:
    """The simulated fleet."""


@fleet.command("simulate")
@click.option("--robots", default=3, show_default=True, help="Number of robots (r101, r102, ...).")
@click.option("--days", default=2, show_default=True, help="Number of consecutive days.")
@click.option("--episodes", "episodes_per_day", default=20, show_default=True, help="Episodes per robot-day.")
@click.option("--seed", default=0, show_default=True)
@click.option("--start-date", default=None, help="First day, YYYY-MM-DD (default: DAYS days ago).")
@click.option("--lake", default=None, help="Target lake root (default: $FLYWHEEL_LAKE or .flywheel/lake).")
@click.option("--deployment", default=None,
              help=f"A deployments manifest (a local file, or a lake key such as {layout.deployments_current_key('reach-bc')}): "
                   "each robot it lists runs its release's policy.onnx; the others are teleoperated.")
def fleet_simulate(robots: int, days: int, episodes_per_day: int, seed: int, start_date: str | None,
                   lake: str | None, deployment: str | None) -> None:
    """Write a simulated fleet's ROS2 MCAP logs into raw/robot=<id>/date=<day>/."""
    import datetime as dt

    from flywheel_pipelines.lib.ids import InvalidIdentifier
    from flywheel_pipelines.lib.rollout.deployments import ManifestError
    from flywheel_pipelines.lib.sim.field import load_fleet_releases
    from flywheel_pipelines.lib.sim.fleet import day_range, simulate_fleet

    store = _lake(lake)
    releases = None
    if deployment:
        try:
            manifest = (json.loads(Path(deployment).read_text()) if Path(deployment).is_file()
                        else store.read_json(deployment))
            releases = load_fleet_releases(store, manifest)
        except (ManifestError, ValueError, KeyError) as exc:
            raise click.BadParameter(str(exc), param_hint="--deployment") from None
        for robot, rel in sorted(releases.items()):
            click.echo(f"{robot} runs {rel.name}/{rel.version} (policy.onnx sha256 {rel.onnx_sha256[:12]})")
    first = start_date or (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)).isoformat()
    try:
        day_list = day_range(first, days)
    except InvalidIdentifier as exc:
        raise click.BadParameter(str(exc), param_hint="--start-date") from None
    with click.progressbar(length=robots * len(day_list), label="simulating robot-days") as bar:
        out = simulate_fleet(store, robots=robots, days=day_list, episodes_per_day=episodes_per_day, seed=seed,
                             progress=lambda _d: bar.update(1), releases=releases)
    for d in out:
        folder = layout.raw_prefix(d.robot, d.day).rstrip("/")
        click.echo(f"{folder}: {len(d.keys)} files, {d.episodes} episodes, {d.messages} messages")
    click.echo(f"lake: {store.root_uri}")


@fleet.command("backfill")
@click.option("--day", required=True, help="The day to run again for the whole fleet, YYYY-MM-DD (in the hot window).")
@click.option("--url", default="http://localhost:3000", show_default=True,
              help="The Dagster webserver whose GraphQL API launches the backfill (the daemon runs it).")
@click.option("--robots-from", "robots_from", type=click.Choice(["server", "instance", "lake"]), default="server",
              show_default=True,
              help="Where the registered robots come from: 'server': the robot partitions of the instance behind "
                   "--url (the instance that validates the backfill; works against a remote deployment); "
                   "'instance': the local Dagster instance ($DAGSTER_HOME); 'lake': every robot with a join record "
                   "(the upload sensor registers a robot when it records its join, so they match; an unregistered "
                   "one makes Dagster refuse the backfill, naming it).")
@click.option("--location", default=None,
              help="The code location holding ingest_robot_day, as the webserver's workspace names it (default: "
                   "$FLYWHEEL_CODE_LOCATION, else flywheel_pipelines, its name in workspace.yaml and in the "
                   "Helm values).")
@click.option("--lake", default=None, help="Lake with the robots' join days (default: $FLYWHEEL_LAKE or .flywheel/lake).")
@click.option("--dry-run", is_flag=True, help="Print the robots and partition keys; launch nothing.")
def fleet_backfill(day: str, url: str, robots_from: str, location: str | None, lake: str | None,
                   dry_run: bool) -> None:
    """Run ingest_robot_day again for one DAY across the fleet: one backfill of the partitions
    DAY|ROBOT of exactly the registered robots that had joined by DAY (join days as the upload
    sensor recorded them in the lake; robots that joined later are left out).

    Only days in the hot robot x day window ($FLYWHEEL_HOT_DAYS days, from a Monday) have these
    partitions; an older day is refused: cold days are handled by the month's archive_month partition.
    """
    import datetime as dt

    from flywheel_pipelines.lib import backfill
    from flywheel_pipelines.lib import fleet as fleet_lib

    location = location or backfill.default_location()
    try:
        # The window as the code location computes it when it loads, from the same environment.
        hot_start = fleet_lib.configured_hot_start(dt.datetime.now(dt.UTC).date())
        day = backfill.check_day(day, hot_start=hot_start)
        store = _lake(lake)
        execute = backfill.http_execute(url)
        if robots_from == "server":
            registered = backfill.registered_robots(execute)
        elif robots_from == "instance":
            import dagster as dg

            from flywheel_pipelines.defs.partitions import ROBOTS

            with dg.DagsterInstance.get() as instance:
                registered = instance.get_dynamic_partitions(ROBOTS.name)
        else:
            registered = list(fleet_lib.joined_robots(store))
        robots = backfill.day_robots(store, day, registered)
        if dry_run:
            click.echo(f"{day}: {len(robots)} robots had joined by then ({len(registered)} registered, "
                       f"from {robots_from}); would launch {backfill.JOB_NAME} (code location {location!r}) for:")
            for key in backfill.partition_keys(day, robots):
                click.echo(f"  {key}")
            return
        backfill_id = backfill.launch_day_backfill(execute, day, robots, hot_start=hot_start, location=location)
    except (backfill.BackfillError, fleet_lib.FleetConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backfill {backfill_id}: {backfill.JOB_NAME} for {day}, {len(robots)} robots "
               f"({', '.join(robots[:10])}{', ...' if len(robots) > 10 else ''})")
    click.echo(f"  {url.rstrip('/')}/runs/b/{backfill_id}")


@main.command()
@click.option("--robots", default=3, show_default=True)
@click.option("--days", default=2, show_default=True)
@click.option("--episodes", "episodes_per_day", default=20, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--field/--no-field", "field_day", default=True, show_default=True,
              help="Then one turn of the field loop: canary rollout of the release, a field day, KPIs, decision.")
def demo(robots: int, days: int, episodes_per_day: int, seed: int, field_day: bool) -> None:
    """Simulate a small fleet and materialize every asset, then say where everything is."""
    from flywheel_pipelines.demo import run_demo

    t0 = time.perf_counter()
    try:
        result = run_demo(robots=robots, days=days, episodes_per_day=episodes_per_day, seed=seed,
                          log=lambda m: click.echo(m), field_day=field_day)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    meta = result.metadata
    ds, pol, ev = meta.get("curated_dataset", {}), meta.get("policy_candidate", {}), meta.get("eval_report", {})
    gold, rel = meta.get("golden_scenarios", {}), meta.get("release_bundle")
    click.echo("")
    click.echo(f"demo finished in {time.perf_counter() - t0:.0f} s ({result.partitions} robot-day partitions)")
    click.echo(f"dataset:  {ds.get('dataset_name')} version {ds.get('dataset_version')} "
               f"({ds.get('episodes')} episodes, {ds.get('frames')} frames) at {ds.get('uri')}")
    click.echo(f"policy:   {pol.get('policy_name')} {pol.get('policy_version')} (MLflow run {pol.get('mlflow_run_id')}, "
               f"registered version {pol.get('registered_version')})")
    click.echo(f"golden:   {gold.get('active', 0)} regression scenarios from field failures and interventions "
               f"(set {gold.get('golden_version')}, {gold.get('added', 0)} new)")
    if ev:
        click.echo(f"evaluation: suite {ev.get('suite')} {ev.get('suite_version')}, production: {ev.get('production_version')}")
        click.echo(f"  candidate        {ev.get('success_rate', 0):.1%}  [{ev.get('success_ci')}]")
        if ev.get("production_success_rate") is not None:
            click.echo(f"  production       {ev['production_success_rate']:.1%}")
        click.echo(f"  scripted expert  {ev.get('expert_success_rate') or 0:.1%}")
        click.echo(f"  hold position    {ev.get('trivial_success_rate') or 0:.1%}")
        click.echo(f"  gate: {'PASSED' if ev.get('gate_passed') else 'FAILED'}")
        for reason in ev.get("gate_reasons", []):
            click.echo(f"    - {reason}")
        click.echo(f"  report: {ev.get('report_html')}")
    if rel:
        click.echo(f"release:  {rel['release']} at {rel['uri']} (ONNX parity max abs error {rel['onnx_max_abs_error']:.1e})")
        click.echo(f"          flywheel verify {rel['uri']}   |   flywheel lineage {rel['uri']}")
        if pol.get("registered_version"):
            click.echo(f"          make it production: flywheel policy promote {pol.get('policy_name')} "
                       f"{pol.get('registered_version')} --reason '...'")
    else:
        click.echo("release:  none (the evaluation gate did not pass)")
    f = result.field
    if f and not f.get("skipped"):
        click.echo(f"field:    rollout {f['rollout_id']} of {f['release']}: {f['status']} at stage {f['stage']} "
                   f"(canary {', '.join(f['cohort'])}); decision: {f['decision']} - {f['reason']}")
        for arm, k in f["arms"].items():
            iph = "" if k["interventions_per_hour"] is None else f", {k['interventions_per_hour']:.0f} interventions/h"
            click.echo(f"  {arm:<26} {k['episodes']:>4} episodes, unassisted success {k['success_rate']:.1%} "
                       f"({k['success_low']:.1%}-{k['success_high']:.1%}){iph}")
        click.echo(f"  deployments manifest: {f['manifest']} (flywheel rollout status); field loop {f['seconds']:.0f} s")
    click.echo(f"UI:       make dev   (DAGSTER_HOME={result.dagster_home}), then open http://127.0.0.1:3000")


@main.group()
def policy() -> None:
    """The production policy: promote a registered version, roll back, show status and history."""


def _registry(mlflow_uri: str | None):
    import mlflow

    uri = mlflow_uri or settings.default_mlflow_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _who(by: str | None) -> str:
    import getpass
    import os

    return by or os.environ.get("FLYWHEEL_USER") or getpass.getuser()


_MLFLOW_OPTION = click.option("--mlflow-uri", default=None, help="Default: $FLYWHEEL_MLFLOW_URI or the local store.")
_BY_OPTION = click.option("--by", default=None, help="Who (default: $FLYWHEEL_USER or the login name).")


def _echo_entry(entry, key: str, store) -> None:
    forced = " (FORCED past a failed gate)" if entry.forced else ""
    click.echo(f"{entry.model}: {entry.alias} is now version {entry.version} (was {entry.from_version or 'none'})"
               f"{forced}")
    click.echo(f"  {entry.action} by {entry.by} at {entry.at}: {entry.reason}")
    click.echo(f"  gate of version {entry.version}: {entry.gate}" + (f" ({entry.report})" if entry.report else ""))
    click.echo(f"  recorded: MLflow model version tags, and {store.uri(key)}")


@policy.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--reason", required=True, help="Why (recorded).")
@click.option("--force", is_flag=True, help="Promote although the release gate did not pass (recorded).")
@_BY_OPTION
@_MLFLOW_OPTION
@click.option("--lake", default=None)
def policy_promote(name: str, version: str, reason: str, force: bool, by: str | None, mlflow_uri: str | None,
                   lake: str | None) -> None:
    """Make registered model NAME version VERSION the production policy (its release gate must have passed)."""
    from flywheel_pipelines.lib.evaluation.registry import PromotionError, promote

    store = _lake(lake)
    try:
        entry, key = promote(_registry(mlflow_uri), store, name, version, by=_who(by), reason=reason, force=force)
    except PromotionError as exc:
        raise click.ClickException(str(exc)) from None
    _echo_entry(entry, key, store)


@policy.command("rollback")
@click.argument("name")
@click.option("--reason", required=True, help="Why (recorded).")
@_BY_OPTION
@_MLFLOW_OPTION
@click.option("--lake", default=None)
def policy_rollback(name: str, reason: str, by: str | None, mlflow_uri: str | None, lake: str | None) -> None:
    """Return NAME's production alias to the previous production version."""
    from flywheel_pipelines.lib.evaluation.registry import PromotionError, rollback

    store = _lake(lake)
    try:
        entry, key = rollback(_registry(mlflow_uri), store, name, by=_who(by), reason=reason)
    except PromotionError as exc:
        raise click.ClickException(str(exc)) from None
    _echo_entry(entry, key, store)


@policy.command("status")
@click.argument("name")
@click.option("--limit", default=10, show_default=True, help="Promotion-log entries to show (newest last).")
@click.option("--json", "as_json", is_flag=True)
@_MLFLOW_OPTION
@click.option("--lake", default=None)
def policy_status(name: str, limit: int, as_json: bool, mlflow_uri: str | None, lake: str | None) -> None:
    """NAME's production version, its gate, and the promotion log."""
    from flywheel_pipelines.lib.evaluation.registry import model_exists, production_version, read_log

    store = _lake(lake)
    client = _registry(mlflow_uri)
    if not model_exists(client, name):
        known = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise click.ClickException(f"no such model {name!r} in the registry (registered: {', '.join(known) or 'none'})")
    mv = production_version(client, name)
    log = read_log(store, name)
    if as_json:
        click.echo(json.dumps({"model": name, "production": None if mv is None else {
            "version": str(mv.version), "tags": dict(sorted(mv.tags.items()))}, "log": log}, sort_keys=True))
        return
    if mv is None:
        click.echo(f"{name}: no production policy")
    else:
        click.echo(f"{name}: production is version {mv.version} (policy {mv.tags.get('flywheel.policy_version', '?')}, "
                   f"gate {mv.tags.get('flywheel.gate', 'unknown')})")
    click.echo(f"promotion log ({_plural(len(log), 'entry', 'entries')}, {store.uri(layout.promotions_prefix(name))}):")
    for e in log[-limit:]:
        forced = " FORCED" if e.get("forced") else ""
        move = (f"{e['version']} (production stays {e.get('from_version') or 'none'})" if e["action"] == "withdraw"
                else f"{e.get('from_version') or 'none'} -> {e['version']}")
        click.echo(f"  {e['at']}  {e['action']:<8} {move}{forced}  by {e['by']}: {e['reason']}")


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _robot_ids(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    from flywheel_pipelines.lib import ids

    try:
        return tuple(ids.robot_id(v) for v in values)
    except ids.InvalidIdentifier as exc:
        hint = " (robot ids are lowercase)" if any(v.lower() != v for v in values) else ""
        raise click.BadParameter(f"{exc}{hint}") from None


def _day(ctx, param, value: str | None) -> str | None:
    from flywheel_pipelines.lib import ids

    try:
        return None if value is None else ids.day(value)
    except ids.InvalidIdentifier as exc:
        raise click.BadParameter(str(exc)) from None


def _known(values, shown: int = 20) -> str:
    values = sorted(values)
    more = f", ... ({len(values)} in all)" if len(values) > shown else ""
    return ", ".join(values[:shown]) + more


@main.group()
def episodes() -> None:
    """The episode catalog."""


@episodes.command("search")
@click.option("--robot", "robots", multiple=True, callback=_robot_ids, help="Robot id (repeatable).")
@click.option("--from", "date_from", default=None, callback=_day, help="First day, YYYY-MM-DD.")
@click.option("--to", "date_to", default=None, callback=_day, help="Last day, YYYY-MM-DD.")
@click.option("--task", "tasks", multiple=True)
@click.option("--outcome", "outcomes", multiple=True,
              help="success / failure / unknown, or another outcome the catalog holds (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Episodes carrying every given tag.")
@click.option("--intervention/--no-intervention", default=None)
@click.option("--quality-ok/--quality-issues", "quality_ok", default=None)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--lake", default=None)
def episodes_search(robots, date_from, date_to, tasks, outcomes, tags, intervention, quality_ok, limit, as_json,
                    lake) -> None:
    """Search the episode catalog (materialize episode_catalog first).

    Exit status: 0 when the search ran (whether or not episodes match), 1 on an error (no catalog,
    a robot the catalog does not know), 2 on a malformed option (bad date, robot id or outcome).
    """
    from flywheel_pipelines.lib.catalog import CATALOG_KEY, KNOWN_OUTCOMES, EpisodeQuery, search
    from flywheel_pipelines.lib.storage import LakeError

    if date_from and date_to and date_from > date_to:
        raise click.BadParameter(f"--from {date_from} is after --to {date_to}", param_hint="'--from' / '--to'")
    store = _lake(lake)
    try:
        table = store.read_parquet(CATALOG_KEY)
    except LakeError as exc:
        raise click.ClickException(f"{exc}: materialize episode_catalog first") from None
    outcome_choices = set(KNOWN_OUTCOMES) | set(table["outcome"].unique().to_pylist()) - {None}
    for outcome in outcomes:
        if outcome not in outcome_choices:
            raise click.BadParameter(f"{outcome!r} is not an outcome; choose from {_known(outcome_choices)}",
                                     param_hint="'--outcome'")
    known_robots = set(table["robot"].unique().to_pylist())
    for robot in robots:
        if robot not in known_robots:
            raise click.ClickException(f"no such robot {robot!r} in the catalog (known: {_known(known_robots) or 'none'})")
    query = EpisodeQuery(robots=robots, date_from=date_from, date_to=date_to, tasks=tasks, outcomes=outcomes,
                         tags=tags, intervention=intervention, quality_ok=quality_ok)
    found = search(table, query)
    rows = found.slice(0, limit).to_pylist()
    if as_json:
        for row in rows:
            row.pop("stream_quality", None)
            click.echo(json.dumps(row, sort_keys=True))
        return
    verb = "matches" if found.num_rows == 1 else "match"
    click.echo(f"{_plural(found.num_rows, 'episode')} {verb}" + (f" (showing {limit})" if found.num_rows > limit else ""))
    if not rows:
        return
    # Columns as wide as their widest cell: episode and robot ids have no fixed length.
    header = ("episode", "robot", "date", "outcome", "frames", "skew ms", "tags/issues")
    cells = [(r["episode_id"], r["robot"], r["date"], r["outcome"], str(r["num_frames"]), f"{r['max_skew_ms']:.1f}",
              ", ".join(r["tags"] + (["intervention"] if r["intervention"] else []) + r["quality_issues"]))
             for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header) - 1)]
    for c in [header, *cells]:
        left = " ".join(v.ljust(w) for v, w in zip(c[:4], widths[:4], strict=True))
        right = " ".join(v.rjust(w) for v, w in zip(c[4:6], widths[4:6], strict=True))
        click.echo(f"{left} {right}  {c[6]}".rstrip())


def _bundle_dir(ref: str, lake: str | None) -> Path:
    path = Path(ref)
    if path.is_dir():
        return path
    store = _lake(lake)
    candidate = getattr(store, "path", None)
    if candidate is not None and ref.startswith(f"{layout.RELEASES}/"):
        return candidate(ref)
    raise click.ClickException(f"{ref}: not a release bundle folder (give its path, or {layout.RELEASE_FORMAT})")


@main.command()
@click.argument("bundle", required=False)
@click.option("--raw", default=None, help=f"A raw object key ({layout.RAW_LOG_FORMAT}) or its sha256 "
                                          "(or a unique prefix of >= 12 hex digits).")
@click.option("--robot", default=None, help="A robot id; with --from/--to, a range of its days (inclusive).")
@click.option("--from", "date_from", default=None, help="First day (YYYY-MM-DD), with --robot.")
@click.option("--to", "date_to", default=None, help="Last day (YYYY-MM-DD), with --robot.")
@click.option("--episode", default=None, help="An episode id.")
@click.option("--dataset", default=None, help="NAME/VERSION: what it holds and what was built on it.")
@click.option("--policy", default=None, help="NAME/VERSION: its dataset, robots, days, raw files; its evaluations "
                                             "and releases.")
@click.option("--release", default=None, help="NAME/VERSION from the lineage index (BUNDLE reads the bundle itself).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--lake", default=None)
def lineage(bundle: str | None, raw: str | None, robot: str | None, date_from: str | None, date_to: str | None,
            episode: str | None, dataset: str | None, policy: str | None, release: str | None, as_json: bool,
            lake: str | None) -> None:
    """Lineage both ways, from the lineage index; or, given BUNDLE, where a release bundle came from.

    With one of --raw, --robot, --episode, --dataset, --policy, --release: the tree of every
    dataset, policy, evaluation and release built on it (marking those that hold the MLflow
    `production` alias now) and, for a dataset, policy or release, the robots, days and raw files
    behind it.
    """
    from flywheel_pipelines.lib.lineage import lineage_summary

    selectors = {"raw": raw, "robot": robot, "episode": episode, "dataset": dataset, "policy": policy,
                 "release": release}
    if bundle is None or any(v is not None for v in selectors.values()) or date_from or date_to:
        if bundle is not None:
            raise click.UsageError("give a BUNDLE or one of --raw/--robot/--episode/--dataset/--policy/--release")
        _lineage_query(lake, as_json, date_from=date_from, date_to=date_to, **selectors)
        return
    path = _bundle_dir(bundle, lake) / "lineage.json"
    if not path.is_file():
        raise click.ClickException(f"{path}: missing (not a release bundle?)")
    doc = json.loads(path.read_text())
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    rel, pol, ds = doc["release"], doc["policy"], doc["dataset"]
    click.echo(f"release {rel['name']} {rel['version']} (created {rel['created_at']}, Dagster run {rel['dagster_run_id']})")
    click.echo(f"  policy {pol['version']}: MLflow run {pol['mlflow_run_id']}, registered {pol['registered_model']} "
               f"v{pol['registered_version']}, code {pol['code']['source_hash']} (git {pol['code']['git_commit']})")
    click.echo(f"  evaluation: success {doc['evaluation']['success_rate']:.1%}, gate "
               f"{'passed' if doc['evaluation']['gate']['passed'] else 'failed'}")
    click.echo(f"  dataset {ds['name']} {ds['version']}: {len(doc['episodes'])} episodes, {ds['frames']} frames, "
               f"embodiment {ds['embodiment']['name']} v{ds['embodiment']['version']}")
    for robot, days in lineage_summary(doc).items():
        click.echo(f"    robot {robot}: " + ", ".join(f"{d} ({n} episodes)" for d, n in days.items()))
    click.echo(f"  raw files ({len(doc['raw_files'])}):")
    for f in doc["raw_files"]:
        click.echo(f"    {f['sha256'][:16]}  {f['key']}  ({f['episodes']} episodes)")


def _lineage_query(lake: str | None, as_json: bool, **selector) -> None:
    from flywheel_pipelines.lib import lineage_index
    from flywheel_pipelines.lib.ids import InvalidIdentifier
    from flywheel_pipelines.lib.storage import open_lake

    # A folder lake opens without loading Dagster (seconds of imports) for a sub-second question;
    # an S3 lake needs the resource's S3 settings.
    root = lake or settings.default_lake_root()
    store = _lake(lake) if root.startswith("s3://") else open_lake(root)
    t0 = time.perf_counter()
    try:
        result = lineage_index.query(store, **selector)
    except (lineage_index.LineageError, InvalidIdentifier) as exc:
        raise click.ClickException(str(exc)) from None
    took = time.perf_counter() - t0
    if as_json:
        click.echo(json.dumps(lineage_index.to_json(result) | {"query_s": round(took, 4)}, indent=2, sort_keys=True))
        return
    click.echo(lineage_index.render_tree(result))
    click.echo(f"  query took {took:.3f} s")


@main.command()
@click.argument("bundle")
@click.option("--lake", default=None)
def verify(bundle: str, lake: str | None) -> None:
    """Verify a release bundle against its SHA256SUMS (exit 1 on any problem)."""
    from flywheel_pipelines.lib.release.bundle import verify_bundle

    result = verify_bundle(_bundle_dir(bundle, lake))
    for problem in result.problems:
        click.echo(f"FAIL {problem}", err=True)
    if not result.ok:
        sys.exit(1)
    click.echo(f"OK {result.checked} files verified")


@main.group()
def logs() -> None:
    """Raw robot logs."""


@logs.command("inspect")
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object (schema: docs/logs-inspect.schema.json): verdict, reason, lost messages "
                   "and ranges, and per topic its encodings, counts and whether it can be decoded.")
@click.option("--decode", is_flag=True,
              help="Also decode every message in full (CDR, ROS 1, JSON, protobuf) and count per topic those "
                   "that do not decode (several times slower).")
def logs_inspect(path: str, as_json: bool, decode: bool) -> None:
    """Verdict (ok / recovered / empty / rejected) and, per topic, type, encodings, whether ingest
    can decode it (and why not), count and first/last time (int64 ns), as ingest sees them.

    PATH is an MCAP file, a ROS 1 bag, a rosbag2 folder or a bare rosbag2 .db3 file. The exit
    status is 0 whatever the verdict: a damaged log is a finding, not an error of this command.
    """
    from flywheel_pipelines.lib.rosbag.manifest import inspect_log

    m = inspect_log(Path(path), decode=decode)
    if as_json:
        click.echo(json.dumps(inspect_document(m, decoded=decode), sort_keys=True))
        return
    click.echo(f"{m.key}: {m.verdict}" + (f" ({m.reason})" if m.reason else ""))
    click.echo(f"  {_plural(m.message_count, 'message')}, {_plural(m.size, 'byte')}, sha256 {m.sha256}")
    if m.verdict in ("recovered", "rejected") and (m.lost_messages or m.lost_ranges or m.verdict == "recovered"):
        lost = "an unknown number of messages" if m.lost_messages is None else _plural(m.lost_messages, "message")
        click.echo(f"  lost: {lost}" + "".join(f"; {a} .. {b}" for a, b in m.lost_ranges))
    if decode:
        bad = sum(t.undecodable for t in m.topics)
        click.echo(f"  decoded: {_plural(m.message_count - bad, 'message')} in full, {bad} undecodable")
    for t in m.topics:
        encoding = f"{t.encoding or 'none'}/{t.schema_encoding or 'none'}"
        line = (f"  {t.topic:<28} {t.type:<40} {encoding:<20} {t.count:>8}  {t.first_ns} .. {t.last_ns}  "
                f"({rate_text(t.count, t.first_ns, t.last_ns)})")
        if not t.decodable:
            line += f"  not decodable: {t.decodable_reason}"
        elif t.undecodable:
            line += f"  {t.undecodable} undecodable: {t.decode_error}"
        elif decode:
            line += f"  decoded {t.count}/{t.count}"
        click.echo(line)


@main.group()
def quarantine() -> None:
    """Keep bad data out of datasets: quarantine a robot (x days), a raw log or an episode."""


def _report_quarantine_event(record, key: str, store) -> None:
    """Tell the Dagster instance ($DAGSTER_HOME), if there is one, so the catalog refreshes as
    after the UI's quarantine jobs. Curation reads the records itself, so nothing depends on it."""
    import os

    if not os.environ.get("DAGSTER_HOME"):
        return
    import dagster as dg

    try:
        with dg.DagsterInstance.get() as instance:
            instance.report_runless_asset_event(dg.AssetMaterialization(
                asset_key="quarantine_log",
                metadata={"action": record.action, "id": record.id, "by": record.by, "reason": record.reason,
                          "record": dg.MetadataValue.path(store.uri(key)), "via": "cli"}))
    except Exception as exc:  # the record is written; the instance is a convenience
        click.echo(f"  (could not report to the Dagster instance: {exc})", err=True)


@quarantine.command("add")
@click.option("--robot", default=None, help="Robot id.")
@click.option("--from", "date_from", default=None, help="First day, YYYY-MM-DD (with --robot).")
@click.option("--to", "date_to", default=None, help="Last day, YYYY-MM-DD (with --robot).")
@click.option("--raw", default=None, help=f"A raw log key: {layout.RAW_LOG_FORMAT} (a bag folder ends in /).")
@click.option("--episode", default=None, help="An episode id.")
@click.option("--reason", required=True, help="Why (recorded in the log and every dataset manifest honouring it).")
@click.option("--incident", default=None, help="The incident this belongs to.")
@_BY_OPTION
@click.option("--json", "as_json", is_flag=True)
@click.option("--lake", default=None)
def quarantine_add(robot, date_from, date_to, raw, episode, reason, incident, by, as_json, lake) -> None:
    """Record a quarantine (append-only). Curation leaves the covered episodes out from now on."""
    from flywheel_pipelines.lib import quarantine as q
    from flywheel_pipelines.lib.catalog import CATALOG_KEY

    store = _lake(lake)
    catalog = store.read_parquet(CATALOG_KEY) if store.exists(CATALOG_KEY) else None
    try:
        scope = q.make_scope(robot=robot, date_from=date_from, date_to=date_to, raw=raw, episode=episode)
        record, key = q.add(store, scope, reason=reason, by=_who(by), known=q.known_target(store, catalog),
                            incident=incident)
    except q.QuarantineError as exc:
        raise click.ClickException(str(exc)) from None
    _report_quarantine_event(record, key, store)
    if as_json:
        click.echo(json.dumps({**record.to_dict(), "key": key}, sort_keys=True))
        return
    click.echo(f"quarantined {scope.describe()} as {record.id}: {record.reason} (by {record.by})")
    click.echo(f"  recorded at {store.uri(key)}; curation leaves these episodes out from the next dataset on")


@quarantine.command("lift")
@click.argument("quarantine_id")
@click.option("--reason", required=True, help="Why it is safe again (recorded).")
@_BY_OPTION
@click.option("--lake", default=None)
def quarantine_lift(quarantine_id: str, reason: str, by: str | None, lake: str | None) -> None:
    """End the active quarantine QUARANTINE_ID (a new record; the old one stays)."""
    from flywheel_pipelines.lib import quarantine as q

    store = _lake(lake)
    try:
        record, key = q.lift(store, quarantine_id, reason=reason, by=_who(by))
    except q.QuarantineError as exc:
        raise click.ClickException(str(exc)) from None
    _report_quarantine_event(record, key, store)
    click.echo(f"lifted {quarantine_id} as {record.id}: {record.reason} (by {record.by}); recorded at {store.uri(key)}")


@quarantine.command("list")
@click.option("--all", "show_all", is_flag=True, help="Every record, lifted ones and lifts too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--lake", default=None)
def quarantine_list(show_all: bool, as_json: bool, lake: str | None) -> None:
    """Active quarantines (with --all: the whole append-only log)."""
    from flywheel_pipelines.lib import quarantine as q

    records = q.read_records(_lake(lake))
    active = q.active(records)
    shown = records if show_all else active
    if as_json:
        for r in shown:
            click.echo(json.dumps(r.to_dict(), sort_keys=True))
        return
    active_ids = {r.id for r in active}
    click.echo(f"{len(active)} active quarantines" + (f", {len(records)} records" if show_all else ""))
    for r in shown:
        what = r.scope.describe() if r.scope else f"lifts {r.lifts}"
        status = "" if not show_all else (" [active]" if r.id in active_ids else "")
        click.echo(f"  {r.id}  {r.at}  {r.action:<4} {what}{status}  by {r.by}: {r.reason}")


@policy.command("withdraw")
@click.argument("name")
@click.argument("version")
@click.option("--reason", required=True, help="Why (recorded).")
@_BY_OPTION
@_MLFLOW_OPTION
@click.option("--lake", default=None)
def policy_withdraw(name: str, version: str, reason: str, by: str | None, mlflow_uri: str | None,
                    lake: str | None) -> None:
    """Take NAME version VERSION out of service for good: no rollback returns to it, and promoting
    it again needs --force (recorded). Refused while it is production: promote its replacement first."""
    from flywheel_pipelines.lib.evaluation.registry import PromotionError, withdraw

    store = _lake(lake)
    try:
        entry, key = withdraw(_registry(mlflow_uri), store, name, version, by=_who(by), reason=reason)
    except PromotionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name}: version {entry.version} withdrawn by {entry.by}: {entry.reason}")
    click.echo(f"  production stays version {entry.from_version or 'none'}; recorded: MLflow tag "
               f"flywheel.withdrawn, and {store.uri(key)}")


def _release_prefix(ref: str, store) -> str:
    """NAME/VERSION, releases/NAME/VERSION or a bundle folder inside the lake -> the lake prefix."""
    from flywheel_pipelines.lib import ids

    ref = ref.rstrip("/")
    root = getattr(store, "root", None)  # a folder lake
    if root is not None and Path(ref).is_dir():
        try:
            ref = Path(ref).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            raise click.ClickException(f"{ref}: not inside the lake {store.root_uri}") from None
    parts = ref.removeprefix(f"{layout.RELEASES}/").split("/")
    if len(parts) != 2:
        raise click.ClickException(f"{ref}: expected NAME/VERSION (e.g. reach-bc/05a9684cfeec) or a release folder")
    try:
        return layout.release_prefix(parts[0], parts[1])
    except ids.InvalidIdentifier as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("release")
@click.option("--top-features", default=3, show_default=True, help="Deviating features named per robot-day.")
@click.option("--limit", default=25, show_default=True, help="Robot-days shown (all are in --json).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--lake", default=None)
def incident(release: str, top_features: int, limit: int, as_json: bool, lake: str | None) -> None:
    """Rank the robot-days behind RELEASE (NAME/VERSION or its folder) by how far their training data
    deviates from the rest of the fleet, with each one's share of the training frames, quality-check
    history and golden failures. Then: `flywheel quarantine add --robot ... --from ... --to ...`."""
    from flywheel_pipelines.lib import incident as inc
    from flywheel_pipelines.lib.storage import LakeError

    store = _lake(lake)
    prefix = _release_prefix(release, store)
    if not store.exists(f"{prefix}/lineage.json"):
        raise click.ClickException(f"no release bundle at {store.uri(prefix)}")
    source = _governance_mark(store, prefix)
    try:
        report = inc.load_incident_report(store, prefix, top_k=top_features)
    except inc.IncidentError as exc:
        raise click.ClickException(str(exc)) from None
    except LakeError as exc:
        if source and source.get("erased_by"):
            raise click.ClickException(
                f"{prefix} was trained on dataset {source['dataset']}, deleted by erasure {source['erased_by']} "
                f"(see governance/erasures/{source['erased_by']}/): its training data no longer exists") from None
        raise click.ClickException(str(exc)) from None
    if source and source.get("status"):
        click.echo(f"note: {prefix} is marked [{source['status'].upper()} SOURCE]: raw logs behind its training data "
                   f"were {source['status']} (flywheel lineage --release {source['release']})", err=True)
    if as_json:
        click.echo(json.dumps(inc.to_dict(report), sort_keys=True))
        return
    click.echo(inc.to_markdown(report, limit=limit))
    outliers = [r for r in report.rows if r.outlier]
    if outliers:
        click.echo(f"{len(outliers)} outlier robot-day(s). To keep them out of the next dataset:")
        for r in outliers:
            click.echo(f"  flywheel quarantine add --robot {r.robot} --from {r.date} --to {r.date} --reason '...'")


def _governance_mark(store, prefix: str) -> dict | None:
    """A release's governance mark: erased/expired sources (from lineage), and the erasure that
    deleted its dataset, if one did. None when lineage does not know the release."""
    from flywheel_pipelines.lib import lineage_index
    from flywheel_pipelines.lib.governance import erasure

    ref = "/".join(prefix.rstrip("/").split("/")[-2:])
    try:
        result = lineage_index.query(store, release=ref)
    except (lineage_index.LineageError, ValueError):
        return None
    dataset = next((n for n in result.upstream if n.kind == "dataset"), None)
    if dataset is None:
        return None
    name = f"{dataset.name}/{dataset.version}"
    return {"release": ref, "dataset": name, "status": result.upstream[0].detail.get("source_status"),
            "erased_by": erasure.deleted_by(store, name)}


@main.command()
@click.option("--home", type=click.Path(file_okay=False), default=None,
              help="The drill's own FLYWHEEL_HOME (emptied first). Default: <FLYWHEEL_HOME>/drill.")
@click.option("--robots", default=4, show_default=True)
@click.option("--days", default=4, show_default=True)
@click.option("--fault-days", default=2, show_default=True, help="The last N days carry the encoder fault.")
@click.option("--episodes", "episodes_per_day", default=10, show_default=True)
@click.option("--robot", "faulty_robot", default="r103", show_default=True, help="The robot with the bad encoder.")
@click.option("--offset", "offset_rad", default=0.3, show_default=True, help="Encoder offset, rad.")
@click.option("--seed", default=1, show_default=True)
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Also write the result as JSON here.")
def drill(home, robots, days, fault_days, episodes_per_day, faulty_robot, offset_rad, seed, json_out) -> None:
    """The on-call drill: a fleet with a bad encoder yields a bad release; starting from its version
    alone, find the robot-days, quarantine them, retrain, promote the replacement, withdraw the bad
    release and record the incident. Prints what it found and its time."""
    from flywheel_pipelines.drill import DrillError, result_json, run_drill, summary_lines

    target = Path(home) if home else settings.flywheel_home() / "drill"
    t0 = time.perf_counter()
    try:
        result = run_drill(home=target, robots=robots, days=days, fault_days=fault_days,
                           episodes_per_day=episodes_per_day, faulty_robot=faulty_robot, offset_rad=offset_rad,
                           seed=seed, log=lambda m: click.echo(m))
    except DrillError as exc:
        raise click.ClickException(f"drill failed: {exc}") from None
    click.echo("")
    for line in summary_lines(result):
        click.echo(line)
    click.echo(f"wall time {time.perf_counter() - t0:.0f} s")
    if json_out:
        Path(json_out).write_text(result_json(result) + "\n")


@main.group()
def rollout() -> None:
    """Staged rollouts of a release: start, status, evaluate, pause, resume, advance, abort."""


def _echo_state(s) -> None:
    click.echo(f"{s.rollout_id}: {s.release} vs {s.control or 'teleoperated'} - {s.status}, stage {s.stage_name} "
               f"({len(s.cohort)} robots: {', '.join(s.cohort)})")
    for e in s.events:
        line = f"  {e['at'][:19]}  {e['action']:<10}"
        if e["action"] == "evaluation":
            line += f" {e['decision']}: {e['reason']}"
        elif e["action"] == "stage":
            line += f" {e['name']} from {e['effective_from']} on {len(e['robots'])} robots (manifest #{e['sequence']})"
        else:
            line += f" by {e.get('by', '?')}: {e.get('reason', '')}"
            if e.get("alias", {}).get("moved"):
                line += f" [MLflow production {e['alias'].get('from_version')} -> {e['alias'].get('version')}]"
        click.echo(line)


@rollout.command("start")
@click.argument("release")
@click.option("--model", default="reach-bc", show_default=True)
@click.option("--stages", default="canary:0.1:60,half:0.5:120,full:1.0", show_default=True,
              help="name:fraction[:min episodes[:min autonomous hours]], comma-separated, ending at 1.0.")
@click.option("--margin", default=0.05, show_default=True, help="Non-inferiority margin on the success rate.")
@click.option("--effective-from", default=None, help="First day whose logs count (default: after the newest logs).")
@click.option("--reason", required=True)
@_BY_OPTION
@_MLFLOW_OPTION
@click.option("--lake", default=None)
def rollout_start(release, model, stages, margin, effective_from, reason, by, mlflow_uri, lake) -> None:
    """Roll RELEASE (<name>/<version>) out in stages, canary first; writes its deployments manifest."""
    from flywheel_pipelines.lib.rollout import plan, service

    store = _lake(lake)
    try:
        s = service.start(store, _registry(mlflow_uri), model=model, release=release, by=_who(by), reason=reason,
                          stages=plan.parse_stages(stages), margin=margin, effective_from=effective_from)
    except (plan.RolloutError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _echo_state(s)
    click.echo(f"deployments manifest: {store.uri(layout.deployments_current_key(model))}")


@rollout.command("status")
@click.option("--model", default="reach-bc", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--lake", default=None)
def rollout_status(model, as_json, lake) -> None:
    """The model's rollouts, newest last, with every event of their logs."""
    from flywheel_pipelines.lib.rollout import plan

    store = _lake(lake)
    states = [plan.load(store, model, rid) for rid in plan.rollout_ids(store, model)]
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in states], sort_keys=True, default=str))
        return
    if not states:
        click.echo(f"{model}: no rollouts")
    for s in states:
        _echo_state(s)


@rollout.command("evaluate")
@click.option("--effective-from", default=None, help="First day a new stage counts for (default: after the newest logs).")
@_MLFLOW_OPTION
@click.option("--lake", default=None)
def rollout_evaluate(effective_from, mlflow_uri, lake) -> None:
    """Decide every active rollout on the catalog now (what rollout_sensor launches after field_kpis)."""
    from flywheel_pipelines.lib.rollout import service

    for o in service.evaluate_all(_lake(lake), _registry(mlflow_uri), via="cli", effective_from=effective_from):
        click.echo(f"{o.state.rollout_id}: {o.decision} - {o.reason}; now {o.state.status} at {o.state.stage_name}")


_ACTION_HELP = {"pause": "Pause the active rollout (no advance; an automatic rollback still happens).",
                "resume": "Resume a paused rollout.",
                "advance": "Advance the active rollout to its next stage now (recorded as manual).",
                "abort": "Abort the active rollout: every robot back to its release before it."}


def _rollout_action(action: str):
    @rollout.command(action, help=_ACTION_HELP[action])
    @click.option("--model", default="reach-bc", show_default=True)
    @click.option("--reason", required=True)
    @click.option("--effective-from", default=None, help="advance: first day the next stage counts for.")
    @_BY_OPTION
    @_MLFLOW_OPTION
    @click.option("--lake", default=None)
    def command(model, reason, effective_from, by, mlflow_uri, lake) -> None:
        from flywheel_pipelines.lib.rollout import plan, service

        try:
            s = service.act(_lake(lake), _registry(mlflow_uri), model=model, action=action, by=_who(by),
                            reason=reason, effective_from=effective_from)
        except (plan.RolloutError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        _echo_state(s)

    return command


for _action in ("pause", "resume", "advance", "abort"):
    _rollout_action(_action)


@main.group("field")
def field_group() -> None:
    """Field KPIs from the catalog."""


@field_group.command("kpis")
@click.option("--model", default="reach-bc", show_default=True, help="Whose production version is the baseline.")
@click.option("--json", "as_json", is_flag=True)
@_MLFLOW_OPTION
@click.option("--lake", default=None)
def field_kpis(model, as_json, mlflow_uri, lake) -> None:
    """Per release: unassisted success (Wilson 95%), interventions per hour of autonomy, MTBI, and the
    comparison with production where they overlap."""
    from flywheel_pipelines.lib import field
    from flywheel_pipelines.lib.rollout import service

    rows, _ = service.catalog(_lake(lake))
    out = field.report(rows, production=field.production_arm(_registry(mlflow_uri), model))
    if as_json:
        click.echo(json.dumps(out, sort_keys=True, default=str))
        return
    click.echo(f"production: {out['production']}")
    for a, s in out["arms"].items():
        iph = "" if s["interventions_per_hour"] is None else f", {s['interventions_per_hour']:.0f} interventions/h"
        click.echo(f"  {a:<28} {s['episodes']:>5} episodes on {s['robots']} robots, unassisted success "
                   f"{s['success_rate']:.1%} ({s['success_low']:.1%}-{s['success_high']:.1%}){iph}")
    for c in out["comparisons"]:
        e = c["evidence"]
        click.echo(f"  {c['arm']} vs {c['baseline']} on {len(c['days'])} days: {e['delta']:+.3f} "
                   f"[{e['lower_advance']:+.3f}, {e['upper_rollback']:+.3f}]{' REGRESSED' if c['regressed'] else ''}")


def entry() -> None:
    """The `flywheel` executable: ``main`` with its exit status kept.

    Native libraries loaded by a command (pyarrow's filesystem modules among them) sometimes abort
    the interpreter's shutdown ("terminate called without an active exception"): the command's
    status 0 or 1 became 134 in ~10% of short runs that read Parquet (measured here). Once the
    command has finished and its output is flushed there is nothing left to clean up, so the
    process ends with the command's own status. Unexpected exceptions propagate as usual.
    """
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | type(None)):
            print(exc.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# Above this a topic's "rate" says more about its timestamps than about its publisher: the fastest
# ROS sensors (IMUs, force-torque) publish at a few kHz. Typically log times in µs or a counter.
_MAX_PLAUSIBLE_HZ = 100_000.0


def rate_text(count: int, first_ns: int, last_ns: int) -> str:
    """A topic's mean rate for people: Hz or kHz with sensible digits, a period below 1 Hz, and no
    number at all when the timestamps cannot be nanoseconds (a rate would be nonsense)."""
    span_ns = last_ns - first_ns
    if count < 2 or span_ns <= 0:
        return "rate n/a"
    hz = (count - 1) / (span_ns / 1e9)
    if hz > _MAX_PLAUSIBLE_HZ:
        return f"rate n/a: {_plural(count, 'message')} within {span_ns} ns, timestamps not in ns?"
    if hz >= 1000:
        return f"{hz / 1000:.2f} kHz"
    if hz >= 1:
        return f"{hz:.1f} Hz"
    return f"{hz:.3g} Hz, one per {1 / hz:.3g} s"


def inspect_document(m, *, decoded: bool) -> dict:
    """``flywheel logs inspect --json``'s object; docs/logs-inspect.schema.json is its contract."""
    topics = [{"topic": t.topic, "type": t.type, "encoding": t.encoding, "schema_encoding": t.schema_encoding,
               "decodable": t.decodable, "decodable_reason": t.decodable_reason, "count": t.count,
               "first_ns": t.first_ns, "last_ns": t.last_ns, "rate_hz": t.rate_hz, "undecodable": t.undecodable,
               "decode_error": t.decode_error} for t in m.topics]
    return {"key": m.key, "verdict": m.verdict, "reason": m.reason, "message_count": m.message_count,
            "size": m.size, "sha256": m.sha256, "start_ns": m.start_ns, "end_ns": m.end_ns,
            "lost_messages": m.lost_messages, "lost_ranges": [list(r) for r in m.lost_ranges], "decoded": decoded,
            "topics": topics}


def _add_governance() -> None:
    from flywheel_pipelines.cli_governance import erase, governance

    main.add_command(governance)
    main.add_command(erase)


_add_governance()


if __name__ == "__main__":
    entry()
