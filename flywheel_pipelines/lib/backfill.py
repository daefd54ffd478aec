"""Fleet backfills of one day through Dagster's public GraphQL API.

A fleet-wide re-run of one day is one backfill of the ``ingest_robot_day`` job over the partitions
``<day>|<robot>`` of the robots that existed on that day (they had joined by then: see
``fleet.fleet_day_robots``), not the whole robot dimension: a robot that joined later has no logs
for the day, and a run for it would only fail or ingest nothing.

The backfill is launched with the ``launchPartitionBackfill`` mutation, the same one the UI and
``dagster_graphql.DagsterGraphQLClient`` use (its query is
``dagster_graphql.client.query.LAUNCH_PARTITION_BACKFILL_MUTATION``). Its selector names the job's
partition set in a repository of the code location; both names are looked up through the same
public GraphQL API (``repositoriesOrError``: each repository's location and partition sets), not
spelled after Dagster's internal naming. The daemon then runs the backfill. Launching needs the
webserver of the deployment (``http_execute``): a backfill records where its code location lives,
and only a location loaded by the webserver/daemon workspace can be run by the daemon.

Only days in the hot window have robot x day partitions; an older (cold) day is re-ingested by its
month's ``archive_month`` partition instead, and is refused here with that advice.

No Dagster import at all: the CLI imports this cheaply, and the hot window's first day is passed
in (``hot_start``, the start of the robot x day partitions) rather than read from ``defs/``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable
from typing import Any

from flywheel_pipelines.lib import fleet, ids

JOB_NAME = "ingest_robot_day"
# The code location's name in every workspace: workspace.yaml, docker/workspace.yaml, pyproject.toml's
# [tool.dg.project] and the Helm values (dagsterWebserver.workspace). FLYWHEEL_CODE_LOCATION overrides
# it for a workspace that names it otherwise.
LOCATION_NAME = "flywheel_pipelines"
LOCATION_ENV = "FLYWHEEL_CODE_LOCATION"
MANIFEST_ASSET = "log_manifest"  # robot x day partitioned, like every asset of ingest_robot_day

Execute = Callable[[str, dict], dict]
"""A GraphQL executor: (query, variables) -> the response's ``data``; raises on GraphQL ``errors``."""

# The mutation as dagster_graphql's own client sends it (client/query.py); every error member of
# LaunchBackfillResult (PartitionSetNotFoundError, PythonError, UnauthorizedError, ...) is an Error.
LAUNCH_PARTITION_BACKFILL = """
mutation LaunchFleetDayBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
    ... on PartitionKeysNotFoundError { partitionKeys }
    ... on PythonError { className }
    ... on Error { message }
  }
}
"""

# Every repository of the workspace with its code location and partition sets: where a job's
# partition set lives, whatever Dagster names it.
PARTITION_SETS = """
query FleetPartitionSets {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } partitionSets { name pipelineName } } }
    ... on PythonError { message }
  }
}
"""

# The robot dimension of log_manifest's partitions: the robots registered in the server's instance.
ROBOT_PARTITIONS = """
query FleetRobots($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode { partitionKeysByDimension(startIdx: 0, endIdx: 0) { name partitionKeys } }
    ... on AssetNotFoundError { message }
  }
}
"""


class BackfillError(RuntimeError):
    """A fleet-day backfill that was refused (cold, future or invalid day, no robots) or that Dagster
    did not create (GraphQL error, unknown partition set or partitions, user code error)."""


def partition_keys(day: str, robots: Iterable[str]) -> list[str]:
    """The ``ingest_robot_day`` partition keys of ``robots`` on ``day``: ``<day>|<robot>``, as
    ``dg.MultiPartitionKey({"date": day, "robot": robot})`` renders them (dimensions in name order)."""
    day = ids.day(day)
    return [f"{day}|{ids.robot_id(r)}" for r in sorted(set(robots))]


def check_day(day: str, *, hot_start: dt.date, today: dt.date | None = None) -> str:
    """``day`` if it has robot x day partitions (on or after ``hot_start``, the daily dimension's
    first day, and not after today, UTC), else a ``BackfillError`` saying why and what to do instead."""
    try:
        day = ids.day(day)
    except ids.InvalidIdentifier as exc:
        raise BackfillError(f"cannot backfill {day!r}: {exc}") from None
    today = today or dt.datetime.now(dt.UTC).date()
    if day > today.isoformat():
        raise BackfillError(f"cannot backfill {day}: it is in the future (today is {today.isoformat()} UTC), "
                            "its partitions do not exist yet")
    if day < hot_start.isoformat():
        raise BackfillError(
            f"cannot backfill {day}: it is a cold day, before the hot robot x day window that starts on "
            f"{hot_start.isoformat()} (its length is {fleet.HOT_DAYS_ENV}); cold days are handled "
            f"by the month's archive_month partition: launch archive_month for partition {fleet.month_key(day)} "
            f"with config reingest: ['<robot>/{day}', ...]")
    return day


def day_robots(lake, day: str, registered: Iterable[str]) -> list[str]:
    """The registered robots that had joined by ``day`` (join days as the upload sensor recorded
    them in the lake under ``fleet/robots/``)."""
    return fleet.fleet_day_robots(fleet.joined_robots(lake), day, registered)


def default_location(environ: dict[str, str] | None = None) -> str:
    """The code location to launch in: ``$FLYWHEEL_CODE_LOCATION`` when set, else ``flywheel_pipelines``
    (its name in every workspace we ship, the Helm deployment's included)."""
    environ = os.environ if environ is None else environ
    return (environ.get(LOCATION_ENV) or "").strip() or LOCATION_NAME


def partition_set(execute: Execute, *, location: str = LOCATION_NAME, job: str = JOB_NAME) -> tuple[str, str]:
    """(repository name, partition set name) of ``job``'s partition set in code location ``location``,
    as the server behind ``execute`` lists them; a ``BackfillError`` naming the location and job (and
    the locations the server has) when there is none."""
    data = execute(PARTITION_SETS, {})
    repos = (data or {}).get("repositoriesOrError") or {}
    if repos.get("__typename") != "RepositoryConnection":
        raise BackfillError(f"cannot list the repositories: {repos.get('message') or repos.get('__typename')}")
    nodes = repos.get("nodes") or []
    for repo in nodes:
        if repo["location"]["name"] != location:
            continue
        for ps in repo["partitionSets"]:
            if ps["pipelineName"] == job:
                return repo["name"], ps["name"]
    locations = sorted({r["location"]["name"] for r in nodes})
    raise BackfillError(f"no partitioned job {job} in code location {location!r} (the server has: "
                        f"{', '.join(locations) or 'no code location'}; --location or ${LOCATION_ENV} names it)")


def backfill_params(day: str, robots: Iterable[str], *, location: str, repository: str, partition_set_name: str,
                    job: str = JOB_NAME, title: str | None = None, tags: dict[str, str] | None = None) -> dict:
    """The ``LaunchBackfillParams`` of a job backfill of ``job`` (its partition set
    ``partition_set_name`` in ``repository`` of ``location``) over ``robots`` x ``day``."""
    all_tags = {"flywheel/backfill": "fleet_day", "flywheel/date": ids.day(day), **(tags or {})}
    return {
        "selector": {
            "partitionSetName": partition_set_name,
            "repositorySelector": {"repositoryLocationName": location, "repositoryName": repository},
        },
        "partitionNames": partition_keys(day, robots),
        "title": title or f"fleet_day_{day.replace('-', '_')}",
        "description": f"{job}: every robot that had joined by {day} ({len(set(robots))} robots)",
        "tags": [{"key": k, "value": v} for k, v in sorted(all_tags.items())],
    }


def launch_day_backfill(execute: Execute, day: str, robots: Iterable[str], *, hot_start: dt.date,
                        location: str = LOCATION_NAME, job: str = JOB_NAME, title: str | None = None,
                        today: dt.date | None = None) -> str:
    """Launch one backfill of ``job`` for ``day`` over exactly ``robots``; return its backfill id.

    ``robots`` should be the robots that had joined by ``day`` (``day_robots``). The day must be in
    the hot window that starts on ``hot_start`` (``check_day``). Raises ``BackfillError`` naming the
    day when the day is refused, there are no robots, the GraphQL request fails, the location has no
    such job (``partition_set``), or Dagster answers anything but ``LaunchBackfillSuccess``
    (``PartitionKeysNotFoundError``: a robot that is not a registered partition; ``PythonError``).
    """
    day = check_day(day, hot_start=hot_start, today=today)
    robots = sorted(set(robots))
    if not robots:
        raise BackfillError(f"backfill of {day}: no registered robot had joined by {day}, nothing to run")
    try:
        repository, set_name = partition_set(execute, location=location, job=job)
        params = backfill_params(day, robots, location=location, repository=repository, partition_set_name=set_name,
                                 job=job, title=title)
        data = execute(LAUNCH_PARTITION_BACKFILL, {"backfillParams": params})
    except BackfillError as exc:
        raise BackfillError(f"backfill of {day} not launched: {exc}") from None
    result = (data or {}).get("launchPartitionBackfill") or {}
    kind = result.get("__typename")
    if kind == "LaunchBackfillSuccess":
        return result["backfillId"]
    detail = result.get("message") or kind or "empty response"
    if kind == "PartitionSetNotFoundError":
        detail += f" (is job {job} in code location {location!r}, repository {repository!r}?)"
    raise BackfillError(f"backfill of {day} not launched ({len(robots)} robots): {kind}: {detail}")


def registered_robots(execute: Execute, *, asset: str = MANIFEST_ASSET) -> list[str]:
    """The robots registered as partitions in the instance behind ``execute`` (the robot dimension
    of ``asset``'s partitions, from the same GraphQL API that validates a backfill)."""
    data = execute(ROBOT_PARTITIONS, {"assetKey": {"path": [asset]}})
    node = (data or {}).get("assetNodeOrError") or {}
    if node.get("__typename") != "AssetNode":
        raise BackfillError(f"asset {asset}: {node.get('message') or node.get('__typename') or 'no answer'}")
    for dim in node["partitionKeysByDimension"]:
        if dim["name"] == "robot":
            return sorted(dim["partitionKeys"])
    raise BackfillError(f"asset {asset} has no robot partition dimension")


def _raise_on_errors(payload: dict[str, Any], where: str) -> dict:
    if payload.get("errors"):
        messages = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in payload["errors"])
        raise BackfillError(f"GraphQL error from {where}: {messages}")
    return payload.get("data") or {}


def http_execute(url: str, *, timeout: float = 60.0, headers: dict[str, str] | None = None) -> Execute:
    """An ``Execute`` POSTing to the Dagster webserver at ``url`` (``<url>/graphql``)."""
    import requests

    endpoint = url.rstrip("/") + "/graphql"

    def execute(query: str, variables: dict) -> dict:
        try:
            response = requests.post(endpoint, json={"query": query, "variables": variables}, timeout=timeout,
                                     headers=headers)
        except requests.RequestException as exc:
            raise BackfillError(f"cannot reach the Dagster webserver at {endpoint}: {exc}") from None
        try:
            payload = response.json()
        except ValueError:
            raise BackfillError(f"{endpoint}: HTTP {response.status_code}, not a GraphQL answer: "
                                f"{response.text[:200]!r}") from None
        if response.status_code >= 400 and not payload.get("errors"):
            raise BackfillError(f"{endpoint}: HTTP {response.status_code}")
        return _raise_on_errors(payload, endpoint)

    return execute
