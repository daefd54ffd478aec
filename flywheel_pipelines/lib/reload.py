"""Reload a code location through the Dagster webserver (deploy/k8s/reload-code-location.yaml, daily).

The robot x day grid starts at the hot window's first day, computed when the code location loads
(defs/partitions.py), so the window only moves when the location is reloaded. This asks the
webserver to reload it, with Dagster's public GraphQL client:

    DAGSTER_WEBSERVER_HOST=dagster-dagster-webserver FLYWHEEL_CODE_LOCATION=flywheel_pipelines \\
        python -m flywheel_pipelines.lib.reload

| variable | meaning |
| --- | --- |
| ``DAGSTER_WEBSERVER_HOST`` | the webserver's host (in Kubernetes the chart's Service, ``<release>-dagster-webserver``) |
| ``DAGSTER_WEBSERVER_PORT`` | its port (default 80, the chart's Service port) |
| ``FLYWHEEL_CODE_LOCATION`` | the code location's name (``flywheel_pipelines``, as every workspace names it) |

A reload the webserver reports as successful can still leave the code as it was: a code server
started with ``dagster api grpc`` answers a reload without re-importing anything. So the location's
server id is read before and after, and an unchanged id is a failure too (``dagster code-server
start``, which the chart runs for ``codeServerArgs``, restarts its code process and gets a new id).

Exit status: 0 reloaded, 1 the reload failed, 2 the environment is incomplete.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

HOST_ENV = "DAGSTER_WEBSERVER_HOST"
PORT_ENV = "DAGSTER_WEBSERVER_PORT"
LOCATION_ENV = "FLYWHEEL_CODE_LOCATION"
DEFAULT_PORT = 80
# A robot x day asset: the first key of its date dimension is the hot window's first day.
HOT_WINDOW_ASSET = "log_manifest"
TIMEOUT_S = 300

LOCATION_QUERY = """
query FlywheelLocation($name: String!) {
  workspaceLocationEntryOrError(name: $name) {
    __typename
    ... on WorkspaceLocationEntry {
      locationOrLoadError { __typename ... on RepositoryLocation { serverId } }
    }
  }
}
"""

HOT_WINDOW_QUERY = """
query FlywheelHotWindow($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    __typename
    ... on AssetNode { partitionKeysByDimension { name type partitionKeys } }
  }
}
"""


class ReloadError(RuntimeError):
    """The code location was not reloaded; the message says why."""


class ReloadConfigError(ValueError):
    """The environment does not say which webserver and location to reload."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    location: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Target:
        env = os.environ if environ is None else environ
        host = env.get(HOST_ENV, "").strip()
        location = env.get(LOCATION_ENV, "").strip()
        missing = [name for name, value in ((HOST_ENV, host), (LOCATION_ENV, location)) if not value]
        if missing:
            raise ReloadConfigError(f"{' and '.join(missing)} not set: which webserver and code location to reload")
        raw_port = env.get(PORT_ENV, "").strip() or str(DEFAULT_PORT)
        try:
            port = int(raw_port)
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            raise ReloadConfigError(f"{PORT_ENV}={raw_port!r}: expected a TCP port (1-65535)")
        return cls(host=host, port=port, location=location)


@dataclass(frozen=True)
class Reloaded:
    location: str
    server_id: str | None
    previous_server_id: str | None
    hot_window_start: str | None


def _query(target: Target, query: str, variables: dict, timeout: float) -> dict | None:
    """A read-only GraphQL query, for what the client has no method for; None when it cannot be answered."""
    import requests

    try:
        response = requests.post(f"{target.url}/graphql", json={"query": query, "variables": variables},
                                 timeout=timeout)
        response.raise_for_status()
        body = response.json()
    except (requests.RequestException, ValueError):
        return None
    return body.get("data") if isinstance(body, dict) and not body.get("errors") else None


def server_id(target: Target, timeout: float = 30) -> str | None:
    """The id of the code server now serving the location (None: unknown, or not loaded)."""
    data = _query(target, LOCATION_QUERY, {"name": target.location}, timeout) or {}
    entry = data.get("workspaceLocationEntryOrError") or {}
    location = entry.get("locationOrLoadError") or {}
    return location.get("serverId")


def hot_window_start(target: Target, asset: str = HOT_WINDOW_ASSET, timeout: float = 60) -> str | None:
    """The first day of the robot x day grid the webserver now shows (None: not known)."""
    data = _query(target, HOT_WINDOW_QUERY, {"path": asset.split("/")}, timeout) or {}
    node = data.get("assetNodeOrError") or {}
    for dimension in node.get("partitionKeysByDimension") or []:
        if dimension.get("type") == "TIME_WINDOW" and dimension.get("partitionKeys"):
            return min(dimension["partitionKeys"])
    return None


def _describe(exc: Exception) -> str:
    """The client's error without the query text it quotes, with the error underneath it."""
    text = str(exc).split("\n", 1)[0].strip()
    if text.startswith("Exception occured during execution of query"):
        text = ""
    cause = exc.__cause__
    if cause is not None:
        text = f"{text} ({type(cause).__name__}: {cause})" if text else f"{type(cause).__name__}: {cause}"
    return text or type(exc).__name__


def reload_location(target: Target, *, timeout: int = TIMEOUT_S) -> Reloaded:
    """Reload ``target.location`` through the webserver; raise ReloadError unless its code was reloaded."""
    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError, ReloadRepositoryLocationStatus

    before = server_id(target)
    client = DagsterGraphQLClient(target.host, port_number=target.port, timeout=timeout)
    try:
        info = client.reload_repository_location(target.location)
    except DagsterGraphQLClientError as exc:
        raise ReloadError(f"could not reload code location {target.location!r} through the Dagster webserver at "
                          f"{target.url}: {_describe(exc)}") from exc
    except (KeyError, TypeError) as exc:  # an answer the client does not parse (e.g. UnauthorizedError)
        raise ReloadError(f"the Dagster webserver at {target.url} refused to reload code location "
                          f"{target.location!r} (read-only webserver?): {exc!r}") from exc
    if info.status != ReloadRepositoryLocationStatus.SUCCESS:
        raise ReloadError(f"reloading code location {target.location!r} through the Dagster webserver at "
                          f"{target.url} failed: {info.failure_type}: {info.message}")
    after = server_id(target)
    if before is not None and after == before:
        raise ReloadError(f"the Dagster webserver at {target.url} reloaded code location {target.location!r}, but "
                          f"its code server kept server id {after}: its definitions were not loaded again. A "
                          f"code server started with `dagster api grpc` cannot reload; start it with "
                          f"`dagster code-server start` (the Helm chart's codeServerArgs)")
    return Reloaded(location=target.location, server_id=after, previous_server_id=before,
                    hot_window_start=hot_window_start(target))


def main(environ: Mapping[str, str] | None = None) -> int:
    try:
        target = Target.from_env(environ)
    except ReloadConfigError as exc:
        print(f"reload: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"reload: reloading code location {target.location!r} through {target.url}", flush=True)
    try:
        reloaded = reload_location(target)
    except ReloadError as exc:
        print(f"reload: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"reload: code location {reloaded.location!r} reloaded "
          f"(server id {reloaded.previous_server_id} -> {reloaded.server_id})", flush=True)
    if reloaded.hot_window_start:
        print(f"reload: the robot x day grid ({HOT_WINDOW_ASSET}) now starts on {reloaded.hot_window_start}",
              flush=True)
    else:
        print(f"reload: could not read the hot window's first day ({HOT_WINDOW_ASSET})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
