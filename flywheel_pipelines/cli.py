"""`flywheel`: what people do outside the Dagster UI."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from flywheel_pipelines.lib import settings


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
def fleet_simulate(robots: int, days: int, episodes_per_day: int, seed: int, start_date: str | None,
                   lake: str | None) -> None:
    """Write a simulated fleet's ROS2 MCAP logs into raw/robot=<id>/date=<day>/."""
    import datetime as dt

    from flywheel_pipelines.lib.ids import InvalidIdentifier
    from flywheel_pipelines.lib.sim.fleet import day_range, simulate_fleet

    store = _lake(lake)
    first = start_date or (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)).isoformat()
    try:
        day_list = day_range(first, days)
    except InvalidIdentifier as exc:
        raise click.BadParameter(str(exc), param_hint="--start-date") from None
    with click.progressbar(length=robots * len(day_list), label="simulating robot-days") as bar:
        out = simulate_fleet(store, robots=robots, days=day_list, episodes_per_day=episodes_per_day, seed=seed,
                             progress=lambda _d: bar.update(1))
    for d in out:
        click.echo(f"raw/robot={d.robot}/date={d.day}: {len(d.keys)} files, {d.episodes} episodes, {d.messages} messages")
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
                   "$FLYWHEEL_CODE_LOCATION, else flywheel_pipelines as in workspace.yaml; the Helm chart names it "
                   "after the user deployment: flywheel-pipelines).")
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
    from flywheel_pipelines.lib import backfill
    from flywheel_pipelines.lib import fleet as fleet_lib

    location = location or backfill.default_location()
    try:
        day = backfill.check_day(day)
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
        backfill_id = backfill.launch_day_backfill(execute, day, robots, location=location)
    except backfill.BackfillError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backfill {backfill_id}: {backfill.JOB_NAME} for {day}, {len(robots)} robots "
               f"({', '.join(robots[:10])}{', ...' if len(robots) > 10 else ''})")
    click.echo(f"  {url.rstrip('/')}/runs/b/{backfill_id}")


@main.command()
@click.option("--robots", default=3, show_default=True)
@click.option("--days", default=2, show_default=True)
@click.option("--episodes", "episodes_per_day", default=20, show_default=True)
@click.option("--seed", default=0, show_default=True)
def demo(robots: int, days: int, episodes_per_day: int, seed: int) -> None:
    """Simulate a small fleet and materialize every asset, then say where everything is."""
    from flywheel_pipelines.demo import run_demo

    t0 = time.perf_counter()
    try:
        result = run_demo(robots=robots, days=days, episodes_per_day=episodes_per_day, seed=seed,
                          log=lambda m: click.echo(m))
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
    from flywheel_pipelines.lib.evaluation.registry import production_version, read_log

    store = _lake(lake)
    mv = production_version(_registry(mlflow_uri), name)
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
    click.echo(f"promotion log ({len(log)} entries, {store.uri(f'promotions/{name}')}):")
    for e in log[-limit:]:
        forced = " FORCED" if e.get("forced") else ""
        click.echo(f"  {e['at']}  {e['action']:<8} {e.get('from_version') or 'none'} -> {e['version']}{forced}  "
                   f"by {e['by']}: {e['reason']}")


@main.group()
def episodes() -> None:
    """The episode catalog."""


@episodes.command("search")
@click.option("--robot", "robots", multiple=True, help="Robot id (repeatable).")
@click.option("--from", "date_from", default=None, help="First day, YYYY-MM-DD.")
@click.option("--to", "date_to", default=None, help="Last day, YYYY-MM-DD.")
@click.option("--task", "tasks", multiple=True)
@click.option("--outcome", "outcomes", multiple=True, help="success / failure / unknown (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Episodes carrying every given tag.")
@click.option("--intervention/--no-intervention", default=None)
@click.option("--quality-ok/--quality-issues", "quality_ok", default=None)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--lake", default=None)
def episodes_search(robots, date_from, date_to, tasks, outcomes, tags, intervention, quality_ok, limit, as_json,
                    lake) -> None:
    """Search the episode catalog (materialize episode_catalog first)."""
    from flywheel_pipelines.lib.catalog import CATALOG_KEY, EpisodeQuery, search
    from flywheel_pipelines.lib.storage import LakeError

    store = _lake(lake)
    try:
        table = store.read_parquet(CATALOG_KEY)
    except LakeError as exc:
        raise click.ClickException(f"{exc}: materialize episode_catalog first") from None
    query = EpisodeQuery(robots=robots, date_from=date_from, date_to=date_to, tasks=tasks, outcomes=outcomes,
                         tags=tags, intervention=intervention, quality_ok=quality_ok)
    found = search(table, query)
    rows = found.slice(0, limit).to_pylist()
    if as_json:
        for row in rows:
            row.pop("stream_quality", None)
            click.echo(json.dumps(row, sort_keys=True))
        return
    click.echo(f"{found.num_rows} episodes match" + (f" (showing {limit})" if found.num_rows > limit else ""))
    click.echo(f"{'episode':<22} {'robot':<6} {'date':<10} {'outcome':<8} {'frames':>6} {'skew ms':>8}  tags/issues")
    for r in rows:
        notes = ", ".join(r["tags"] + (["intervention"] if r["intervention"] else []) + r["quality_issues"])
        click.echo(f"{r['episode_id']:<22} {r['robot']:<6} {r['date']:<10} {r['outcome']:<8} {r['num_frames']:>6} "
                   f"{r['max_skew_ms']:>8.1f}  {notes}")


def _bundle_dir(ref: str, lake: str | None) -> Path:
    path = Path(ref)
    if path.is_dir():
        return path
    store = _lake(lake)
    candidate = getattr(store, "path", None)
    if candidate is not None and ref.startswith("releases/"):
        return candidate(ref)
    raise click.ClickException(f"{ref}: not a release bundle folder (give its path, or releases/<name>/<version>)")


@main.command()
@click.argument("bundle")
@click.option("--json", "as_json", is_flag=True)
@click.option("--lake", default=None)
def lineage(bundle: str, as_json: bool, lake: str | None) -> None:
    """Show where a release came from: policy, MLflow run, dataset, robots, days, raw files."""
    from flywheel_pipelines.lib.lineage import lineage_summary

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
    click.echo(f"  {m.message_count} messages, {m.size} bytes, sha256 {m.sha256}")
    if m.verdict in ("recovered", "rejected") and (m.lost_messages or m.lost_ranges or m.verdict == "recovered"):
        lost = "an unknown number of" if m.lost_messages is None else str(m.lost_messages)
        click.echo(f"  lost: {lost} messages" + "".join(f"; {a} .. {b}" for a, b in m.lost_ranges))
    for t in m.topics:
        encoding = f"{t.encoding or 'none'}/{t.schema_encoding or 'none'}"
        line = (f"  {t.topic:<28} {t.type:<40} {encoding:<20} {t.count:>8}  {t.first_ns} .. {t.last_ns}  "
                f"({t.rate_hz:.1f} Hz)")
        if not t.decodable:
            line += f"  not decodable: {t.decodable_reason}"
        elif t.undecodable:
            line += f"  {t.undecodable} undecodable: {t.decode_error}"
        click.echo(line)


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


if __name__ == "__main__":
    main()
