"""Who was in control of an episode, and which policy release ran it, from the episode's events.

A robot running a release logs, right after ``episode_start``, one ``policy`` event:
``{"event": "policy", "control_mode": "autonomous", "policy_name": ..., "policy_version": ...,
"onnx_sha256": ...}`` (and the same release in its MCAP metadata record ``flywheel.policy``).
Interventions are the ``intervention_start``/``intervention_end`` pairs already in the log.

Logs without a ``policy`` event (every log recorded before releases ran on the fleet, and any
teleoperated session) are never an error: an episode whose start names an operator is
``teleoperated``, one without is ``unknown``.
"""

from __future__ import annotations

AUTONOMOUS = "autonomous"
ASSISTED = "autonomous_with_interventions"
TELEOPERATED = "teleoperated"
UNKNOWN = "unknown"
CONTROL_MODES = (AUTONOMOUS, ASSISTED, TELEOPERATED, UNKNOWN)
AUTONOMOUS_MODES = (AUTONOMOUS, ASSISTED)
POLICY_EVENT = "policy"
MCAP_METADATA = "flywheel.policy"


def _text(value) -> str | None:
    return str(value) if value not in (None, "") else None


def episode_control(*, policy: dict | None, operator: str | None,
                    interventions: list[tuple[int, int]]) -> dict:
    """The episode-table columns for control: mode, release and intervention figures."""
    count = len(interventions)
    seconds = sum(max(0, end - start) for start, end in interventions) / 1e9
    if policy and str(policy.get("control_mode", AUTONOMOUS)) in AUTONOMOUS_MODES and _text(policy.get("policy_version")):
        mode = ASSISTED if count else AUTONOMOUS
        name, version, sha = (_text(policy.get("policy_name")), _text(policy.get("policy_version")),
                              _text(policy.get("onnx_sha256")))
    else:
        declared = str((policy or {}).get("control_mode") or "")
        mode = TELEOPERATED if declared == TELEOPERATED or operator else UNKNOWN
        name = version = sha = None
    return {"control_mode": mode, "policy_name": name, "policy_version": version, "policy_onnx_sha256": sha,
            "intervention_count": count, "intervention_s": seconds}
