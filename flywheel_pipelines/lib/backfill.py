"""Fleet backfills of one day through Dagster's public GraphQL API.

A fleet-wide re-run of one day is one backfill of the ``ingest_robot_day`` job over the partitions
``<day>|<robot>`` of the robots that existed on that day (they had joined by then: see
``fleet.fleet_day_robots``), not the whole robot dimension: a robot that joined later has no logs
for the day, and a run for it would only fail or ingest nothing.

The backfill is launched with the ``launchPartitionBackfill`` mutation, the same one the UI and
``dagster_graphql.DagsterGraphQLClient`` use (its query is
``dagster_graphql.client.query.LAUNCH_PARTITION_BACKFILL_MUTATION``; the selector is a
``PartitionSetSelector`` naming the job's partition set ``<job>_partition_set`` in a
``RepositorySelector``). The daemon then runs the backfill. Launching needs the webserver of the
deployment (``http_execute``): a backfill records where its code location lives, and only a
location loaded by the webserver/daemon workspace can be run by the daemon.

Only days in the hot window have robot x day partitions; an older (cold) day is re-ingested by its
month's ``archive_month`` partition instead, and is refused here with that advice.

No Dagster import at module level: the CLI imports this cheaply. ``in_process_execute`` (tests,
benchmarks) loads the code location in this process.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from flywheel_pipelines.lib import fleet, ids

JOB_NAME = "ingest_robot_day"
# The code location's name in every workspace: workspace.yaml, docker/workspace.yaml, pyproject.toml's
# [tool.dg.project] and the Helm values (dagsterWebserver.workspace). FLYWHEEL_CODE_LOCATION overrides
# it for a workspace that names it otherwise.
LOCATION_NAME = "flywheel_pipelines"
LOCATION_ENV = "FLYWHEEL_CODE_LOCATION"
REPOSITORY_NAME = "__repository__"  # the repository a dg.Definitions object becomes
PARTITION_SET_SUFFIX = "_partition_set"  # dagster: partition_set_snap_name_for_job_name
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


def check_day(day: str, *, today: dt.date | None = None) -> str:
    """``day`` if it has robot x day partitions (in the hot window, not after today, UTC), else a
    ``BackfillError`` saying why and what to do instead."""
    from flywheel_pipelines.defs import partitions

    try:
        day = ids.day(day)
    except ids.InvalidIdentifier as exc:
        raise BackfillError(f"cannot backfill {day!r}: {exc}") from None
    today = today or dt.datetime.now(dt.UTC).date()
    if day > today.isoformat():
        raise BackfillError(f"cannot backfill {day}: it is in the future (today is {today.isoformat()} UTC), "
                            "its partitions do not exist yet")
    if not partitions.is_hot(day):
        raise BackfillError(
            f"cannot backfill {day}: it is a cold day, before the hot robot x day window that starts on "
            f"{partitions.HOT_START.isoformat()} ({fleet.HOT_DAYS_ENV}={partitions.HOT_DAYS}); cold days are handled "
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


def backfill_params(day: str, robots: Iterable[str], *, location: str = LOCATION_NAME,
                    repository: str = REPOSITORY_NAME, job: str = JOB_NAME, title: str | None = None,
                    tags: dict[str, str] | None = None) -> dict:
    """The ``LaunchBackfillParams`` of a job backfill of ``job`` over ``robots`` x ``day``."""
    all_tags = {"flywheel/backfill": "fleet_day", "flywheel/date": ids.day(day), **(tags or {})}
    return {
        "selector": {
            "partitionSetName": f"{job}{PARTITION_SET_SUFFIX}",
            "repositorySelector": {"repositoryLocationName": location, "repositoryName": repository},
        },
        "partitionNames": partition_keys(day, robots),
        "title": title or f"fleet_day_{day.replace('-', '_')}",
        "description": f"{job}: every robot that had joined by {day} ({len(set(robots))} robots)",
        "tags": [{"key": k, "value": v} for k, v in sorted(all_tags.items())],
    }


def launch_day_backfill(execute: Execute, day: str, robots: Iterable[str], *, location: str = LOCATION_NAME,
                        repository: str = REPOSITORY_NAME, job: str = JOB_NAME, title: str | None = None,
                        today: dt.date | None = None) -> str:
    """Launch one backfill of ``job`` for ``day`` over exactly ``robots``; return its backfill id.

    ``robots`` should be the robots that had joined by ``day`` (``day_robots``). The day must be in
    the hot window (``check_day``). Raises ``BackfillError`` naming the day when the day is refused,
    there are no robots, the GraphQL request fails, or Dagster answers anything but
    ``LaunchBackfillSuccess`` (``PartitionSetNotFoundError``: wrong location/repository/job;
    ``PartitionKeysNotFoundError``: a robot that is not a registered partition; ``PythonError``).
    """
    day = check_day(day, today=today)
    robots = sorted(set(robots))
    if not robots:
        raise BackfillError(f"backfill of {day}: no registered robot had joined by {day}, nothing to run")
    params = backfill_params(day, robots, location=location, repository=repository, job=job, title=title)
    try:
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


@contextmanager
def in_process_execute(instance, *, module: str = "flywheel_pipelines.definitions",
                       location: str = LOCATION_NAME) -> Iterator[Execute]:
    """An ``Execute`` over Dagster's GraphQL schema with our code location loaded in this process
    (named ``location``, as in the deployment) against ``instance``: for tests and benchmarks.

    A backfill launched this way records an in-process code location origin, which a daemon cannot
    load: launch real backfills through the webserver (``http_execute``).
    """
    import asyncio

    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster_graphql.schema import create_schema

    schema = create_schema()
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name=module), location_name=location)
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as process_context:

        def execute(query: str, variables: dict) -> dict:
            context = process_context.create_request_context()
            result = asyncio.run(schema.execute_async(query, context_value=context, variable_values=variables))
            errors = [{"message": str(e)} for e in (result.errors or [])]
            return _raise_on_errors({"data": result.data, "errors": errors}, f"code location {location}")

        yield execute
