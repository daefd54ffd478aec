"""`flywheel governance ...` and `flywheel erase`: retention policy and erasure on request."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from flywheel_pipelines.lib import layout


def _lake(root: str | None):
    from flywheel_pipelines.cli import _lake as open_lake

    return open_lake(root)


def _who(by: str | None) -> str:
    from flywheel_pipelines.cli import _who as who

    return who(by)


@click.group()
def governance() -> None:
    """Data governance: the retention policy, what retention would delete, erasures."""


@governance.group("policy")
def policy_group() -> None:
    """The lake's retention policy (governance/policy/v<N>.yaml, append-only)."""


@policy_group.command("show")
@click.option("--history", "show_history", is_flag=True, help="Every version, oldest first.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--lake", default=None)
def policy_show(show_history: bool, as_json: bool, lake: str | None) -> None:
    """The policy in force (or every version)."""
    from flywheel_pipelines.lib.governance import policy

    try:
        versions = policy.history(_lake(lake))
    except policy.PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    shown = versions if show_history else versions[-1:]
    if as_json:
        click.echo(json.dumps([{"version": p.version, "retention_days": p.retention_days, "set_by": p.set_by,
                                "set_at": p.set_at, "reason": p.reason} for p in shown], sort_keys=True))
        return
    if not versions:
        click.echo("no retention policy set: raw logs are kept forever (flywheel governance policy set --file ...)")
        return
    for p in shown:
        days = ", ".join(f"{c}: {'forever' if d is None else f'{d} days'}" for c, d in p.retention_days.items())
        click.echo(f"v{p.version} ({p.set_at}, by {p.set_by}: {p.reason}): {days}")


@policy_group.command("set")
@click.option("--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--reason", required=True, help="Why (recorded in the new version).")
@click.option("--by", default=None, help="Who (default: $FLYWHEEL_USER or the login name).")
@click.option("--lake", default=None)
def policy_set(path: Path, reason: str, by: str | None, lake: str | None) -> None:
    """Validate FILE and put it in force as the next version (earlier versions stay)."""
    from flywheel_pipelines.lib.governance import policy

    store = _lake(lake)
    try:
        p, key = policy.set_policy(store, path.read_text(), source=str(path), by=_who(by), reason=reason)
    except policy.PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"retention policy v{p.version} in force: {p.retention_days} ({store.uri(key)})")


@governance.command("retention")
@click.option("--today", default=None, help="Judge ages as of this day (default: today, UTC).")
@click.option("--lake", default=None)
def retention_plan(today: str | None, lake: str | None) -> None:
    """What the retention sweep would delete now (deletes nothing; the retention_sweep asset does)."""
    from flywheel_pipelines.lib import ids
    from flywheel_pipelines.lib.governance import policy, retention

    store = _lake(lake)
    day = dt.date.fromisoformat(ids.day(today)) if today else dt.datetime.now(dt.UTC).date()
    p = policy.current(store)
    plan = retention.plan(store, p, today=day)
    name = f"v{p.version}" if p else "none (nothing expires)"
    click.echo(f"policy {name}: {len(plan.expired)} raw logs expired, "
               f"{plan.kept} kept, {len(plan.unclassified)} not described by a manifest yet (kept)")
    for e in plan.expired:
        click.echo(f"  {e.key}  {e.size} bytes  ({e.rule})")


@click.command("erase")
@click.option("--raw", default=None, help=f"A raw log key {layout.RAW_KEY_FORMAT} (a bag folder ends in /).")
@click.option("--robot", default=None, help="Robot id (with --from and --to).")
@click.option("--from", "date_from", default=None, help="First day, YYYY-MM-DD.")
@click.option("--to", "date_to", default=None, help="Last day, YYYY-MM-DD.")
@click.option("--reason", required=True, help="Why (recorded; never the erased content).")
@click.option("--by", default=None, help="Who asks (default: $FLYWHEEL_USER or the login name).")
@click.option("--dry-run", is_flag=True, help="Print the blast radius; change nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--lake", default=None)
def erase(raw, robot, date_from, date_to, reason, by, dry_run, as_json, lake) -> None:
    """Delete raw logs and everything holding their content; mark the models trained on them.

    Datasets are deleted and rebuilt without the erased episodes (the governance_rebuild_sensor
    launches curated_dataset); policies and releases are marked, not deleted. Re-running the same
    erasure (e.g. after a kill) finishes it.
    """
    from flywheel_pipelines.lib import layout
    from flywheel_pipelines.lib.governance import deleter, erasure

    store = _lake(lake)
    try:
        radius = erasure.blast_radius(store, raw=raw, robot=robot, date_from=date_from, date_to=date_to)
        if dry_run:
            click.echo(json.dumps(radius.to_json(), sort_keys=True) if as_json
                       else erasure.render(radius) + "\n(dry run: nothing changed)")
            return
        done = erasure.erase(store, radius, reason=reason, by=_who(by))
    except (erasure.ErasureError, deleter.DeletionError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(done, sort_keys=True))
        return
    click.echo(erasure.render(radius))
    d = done["deleted"]
    click.echo(f"erased {len(d['raw_logs'])} raw logs, {d['episode_rows']} episode rows ({d['catalog_rows']} catalog "
               f"rows), {len(d['dataset_versions'])} dataset versions ({d['dataset_files']} files); "
               f"rebuild requested: {', '.join(done['rebuild_requests']) or 'none'}")
    marked = [f"policy {p}" for p in done["marked"]["policies"]] + [f"release {r}" for r in done["marked"]["releases"]]
    click.echo(f"  marked (kept): {', '.join(marked) or 'nothing'}")
    click.echo(f"  audit trail: {store.uri(layout.erasure_prefix(done['erasure']))}")
