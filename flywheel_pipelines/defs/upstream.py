"""Reading what a declared upstream asset produced, from its materialization metadata.

Fleet assets are versioned by content hash, so a downstream asset must load exactly the version
its upstream materialized (recorded in the event log), never "the newest folder in the lake".
"""


import dagster as dg


def upstream_metadata(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, key: str) -> dict:
    """Metadata values of the latest materialization of asset ``key``.

    Raises:
        dagster.Failure: the upstream was never materialized.
    """
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"upstream asset {key!r} has not been materialized yet; materialize it first")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}
