"""Reading what a declared upstream asset produced, from its materialization metadata.

Fleet assets are versioned by content hash, so a downstream asset must load exactly the version
its upstream materialized (recorded in the event log), never "the newest folder in the lake".
Only a declared upstream may be read: the graph in the UI is the lineage an on-call engineer
trusts, so reading an undeclared asset is a bug that fails the step, not a warning.
"""


import dagster as dg


class UndeclaredUpstream(dg.Failure):
    """An asset body asked for an asset it does not declare as a dependency."""


def declared_keys(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> set[dg.AssetKey]:
    """The assets the running asset (or check) declares it reads, plus its own keys."""
    if isinstance(context, dg.AssetCheckExecutionContext):
        keys: set[dg.AssetKey] = set()
        for spec in context.check_specs:
            keys.add(spec.asset_key)
            keys.update(dep.asset_key for dep in spec.additional_deps)
        return keys
    assets_def = context.assets_def
    return set(assets_def.keys) | set(assets_def.dependency_keys)


def upstream_metadata(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, key: str) -> dict:
    """Metadata values of the latest materialization of asset ``key``.

    Raises:
        UndeclaredUpstream: ``key`` is not a declared dependency of the running asset or check.
        dagster.Failure: the upstream was never materialized.
    """
    asset_key = dg.AssetKey(key)
    if asset_key not in declared_keys(context):
        raise UndeclaredUpstream(f"reads asset {key!r} without declaring it (deps=...): the lineage shown in the UI "
                                 "would be wrong")
    event = context.instance.get_latest_materialization_event(asset_key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"upstream asset {key!r} has not been materialized yet; materialize it first")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}
