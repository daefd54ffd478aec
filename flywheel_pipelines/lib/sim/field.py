"""Robots that run a release: the ONNX policy of the bundle their deployments manifest names,
through ONNX Runtime, with an operator watching who takes over when the policy strays.

What the robot logs (besides the usual topics): the release in the MCAP metadata record
``flywheel.policy`` of every file, and per episode a ``policy`` event right after
``episode_start`` (lib/episodes/control.py). Interventions are the usual
``intervention_start``/``intervention_end`` events.

The operator judges by eye (the true fingertip, as the teleoperating operator does): the policy
*strays* when, after the first 0.5 s, the fingertip is outside 1.5x the success radius and has
not come 5 mm closer to the goal over the last 0.5 s, or has moved 3 cm further from the goal
than where it started. The operator then takes over and drives to the goal (no lapses: a
person who just caught a problem is paying attention) until success or the episode's end.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from flywheel_pipelines.lib.episodes.control import AUTONOMOUS, MCAP_METADATA, POLICY_EVENT
from flywheel_pipelines.lib.evaluation.policies import OnnxPolicy, check_interface
from flywheel_pipelines.lib.rollout import deployments
from flywheel_pipelines.lib.sim.expert import NoisyOperator
from flywheel_pipelines.lib.sim.msgdefs import goal_point
from flywheel_pipelines.lib.sim.robot import (
    CONTROL_HZ,
    MAX_EPISODE_STEPS,
    SUCCESS_HOLD_STEPS,
    SUCCESS_RADIUS_M,
    TASK,
    ArmSim,
    sample_task,
)
from flywheel_pipelines.lib.storage import Lake

_NS = 1_000_000_000
WATCH_STEPS = CONTROL_HZ // 2  # 0.5 s
STRAY_PROGRESS_M = 0.005
STRAY_RADIUS_M = 1.5 * SUCCESS_RADIUS_M
STRAY_AWAY_M = 0.03


@dataclass(frozen=True)
class RobotRelease:
    """A release as a robot runs it: the manifest's entry and the loaded ONNX model."""

    name: str
    version: str
    onnx_sha256: str
    policy: OnnxPolicy

    def metadata(self) -> dict[str, str]:
        return {"policy_name": self.name, "policy_version": self.version, "onnx_sha256": self.onnx_sha256,
                "control_mode": AUTONOMOUS}


def load_release(store: Lake, entry: dict) -> RobotRelease:
    """Fetch a release's ``policy.onnx`` from its bundle, as an OTA agent would: refused unless its
    SHA-256 is the manifest's and its interface is the robot's."""
    prefix = entry["bundle"]
    model = store.read_bytes(f"{prefix}/policy.onnx")
    digest = hashlib.sha256(model).hexdigest()
    if digest != entry["onnx_sha256"]:
        raise deployments.ManifestError(f"{prefix}/policy.onnx has sha256 {digest}, the manifest names "
                                        f"{entry['onnx_sha256']}: refusing to run it")
    config = json.loads(store.read_bytes(f"{prefix}/policy_config.json"))["policy"]
    check_interface(config["obs_names"], config["action_names"], what=f"release {entry['name']}/{entry['version']}")
    return RobotRelease(entry["name"], entry["version"], entry["onnx_sha256"], OnnxPolicy(model))


def load_fleet_releases(store: Lake, manifest: dict) -> dict[str, RobotRelease]:
    """robot -> its release (robots the manifest does not list are teleoperated: absent)."""
    manifest = deployments.verify(manifest)
    loaded = {ref: load_release(store, entry) for ref, entry in manifest["releases"].items()}
    return {robot: loaded[ref] for robot, ref in manifest["assignments"].items()}


def record_autonomous_episode(rec, sim: ArmSim, rng: np.random.Generator, *, t0_ns: int, episode_id: str,
                              operator: str, release: RobotRelease, joint_state) -> tuple[int, str]:
    """Run one episode under the release's policy, the operator taking over if it strays.
    Returns (end time ns, outcome). ``rec``/``joint_state`` are lib/sim/fleet.py's recorder and
    message builder (the same topics as a teleoperated episode)."""
    q0, goal = sample_task(rng)
    sim.reset(q0, goal)
    pilot = NoisyOperator(rng)

    def t_ns() -> int:
        return t0_ns + int(round(sim.t * _NS))

    def on_sample(s) -> None:
        rec.publish("/joint_states", "sensor_msgs/msg/JointState",
                    joint_state(t0_ns + int(round(s.t * _NS)), s.position, s.velocity, "base"),
                    t0_ns + int(round(s.t * _NS)), droppable=True)

    on_sample(sim.last_sample)
    rec.event(t_ns(), event="episode_start", episode_id=episode_id, task=TASK, operator=operator)
    rec.event(t_ns(), event=POLICY_EVENT, episode_id=episode_id, **release.metadata())
    start_error = sim.fingertip_error()
    errors: list[float] = []
    held, outcome, taken_over = 0, "failure", False
    for step in range(MAX_EPISODE_STEPS):
        if step % 10 == 0:
            rec.publish("/goal", "geometry_msgs/msg/PointStamped", goal_point(t_ns(), goal), t_ns())
        obs = sim.observation()
        if not taken_over and step >= WATCH_STEPS:
            error = errors[-1]
            stalled = error > STRAY_RADIUS_M and errors[-WATCH_STEPS] - error < STRAY_PROGRESS_M
            if stalled or error > start_error + STRAY_AWAY_M:
                rec.event(t_ns(), event="intervention_start")
                taken_over = True
        action = pilot.act(obs) if taken_over else release.policy(obs[None, :])[0]
        rec.publish("/joint_commands", "sensor_msgs/msg/JointState", joint_state(t_ns(), action, [], "base"), t_ns())
        sim.advance(np.asarray(action, dtype=np.float64), on_sample)
        errors.append(sim.fingertip_error())
        held = held + 1 if errors[-1] < SUCCESS_RADIUS_M else 0
        if held >= SUCCESS_HOLD_STEPS:
            outcome = "success"
            break
    if taken_over:
        rec.event(t_ns(), event="intervention_end")
    rec.event(t_ns(), event="episode_end", episode_id=episode_id, outcome=outcome)
    return t_ns(), outcome


def mcap_metadata(release: RobotRelease | None) -> dict[str, dict[str, str]]:
    """The MCAP metadata records a robot writes into each file besides ``recorder``."""
    return {} if release is None else {MCAP_METADATA: release.metadata()}
