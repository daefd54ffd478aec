"""Data-quality suites (Great Expectations 1.x), built from the embodiment mapping.

Importing this package is cheap: Great Expectations (seconds to import) is only imported when a
suite actually runs, so loading the Dagster definitions does not pay for it.
"""

from flywheel_pipelines.lib.quality.episode_suite import (
    CHECKS,
    ISSUE_CHECKS,
    ExpectationResult,
    QualityError,
    Rule,
    SuiteResult,
    episode_frame,
    suite_name,
    suite_rules,
    validate_episodes,
)

__all__ = [
    "CHECKS",
    "ISSUE_CHECKS",
    "ExpectationResult",
    "QualityError",
    "Rule",
    "SuiteResult",
    "episode_frame",
    "suite_name",
    "suite_rules",
    "validate_episodes",
]
