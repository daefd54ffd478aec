"""The asset groups, all in this one file: the flywheel's stages as the UI's global lineage shows them.

A data engineer should read the loop at a glance: a handful of boxes in the loop's order (the UI
sorts groups by name, hence the numbers), each a stage someone owns. Every asset takes its
``group_name`` from here (``group_of("<asset>")``), so moving an asset to another stage is a
one-line change in this table; ``test_defs.py`` checks that the graph's groups are exactly these.
"""

from collections.abc import Mapping

# group -> its assets. Golden scenarios sit with the dataset: both are curated from the catalog
# (training data, and the field failures the evaluation replays), and both feed the policies.
GROUPS: Mapping[str, tuple[str, ...]] = {
    "1_ingest": ("raw_fleet_logs", "log_manifest", "episodes", "episode_archive", "episode_catalog"),
    "2_datasets": ("curated_dataset", "golden_scenarios"),
    "3_policies": ("policy_candidate", "eval_report"),
    "4_release_and_field": ("release_bundle", "field_kpis"),
    # What the on-call team operates: lineage, incidents, quarantine, and the lake's retention
    # policy with the sweep that applies it (docs/governance.md; its owner is team:oncall too).
    "oncall": ("lineage_index", "incident_report", "quarantine_log", "retention_policy", "retention_sweep"),
}

_GROUP_OF = {asset: group for group, assets in GROUPS.items() for asset in assets}


def group_of(asset: str) -> str:
    """The group of ``asset`` (its name).

    Raises:
        KeyError: the asset is not listed in GROUPS (a new asset needs a stage here).
    """
    try:
        return _GROUP_OF[asset]
    except KeyError:
        raise KeyError(f"asset {asset!r} has no group: add it to GROUPS in {__name__}") from None
