"""The LeRobotDataset v3.0 on-disk format, written and read without Dagster or ``lerobot``.

:mod:`.format` is the contract (path templates, info.json keys, feature specs, what differs from
lerobot 0.4.4 and why), :mod:`.writer` writes a dataset, :mod:`.reader` reads and validates one,
:mod:`.stats` ports lerobot's statistics. Import from those modules; this package re-exports
nothing.
"""
