"""Golden regression scenarios: field failures turned into simulator scenarios.

Every catalog episode that failed or needed an operator intervention becomes a :class:`Scenario`
the evaluator can replay: its start joint configuration and goal (from the episode's standardized
frames) and the robot as its logs show it. The pipeline never reads the simulator's ground-truth
profile; it sees a robot only through what the robot logged:

- dynamics (actuator gain, command latency, joint damping and friction) by system identification:
  the episode's recorded joint commands are replayed open-loop through the arm's MJCF model
  (the design model any robot team has) from the recorded start, and a Levenberg-Marquardt fit
  matches the replayed joint positions and velocities to the logged ones on the first
  ``FIT_FRAMES`` frames. A
  fit that does not explain the log (RMS above ``FIT_MAX_RMS_RAD``) is recorded but not used:
  the scenario keeps nominal dynamics and says so.
- sensor noise from the fit's residual (logged minus replayed position and velocity): the median
  absolute frame-to-frame change of the residual, which the slow model error hardly moves. For
  velocities the model error is not that slow: their noise comes out too high by up to about a
  third (a conservative error: golden scenarios are noisier, not cleaner, than the robot).
- dropped /joint_states messages from the episode's stream statistics in the catalog: with
  independent drops at rate p the sample intervals are geometric, so (jitter / mean interval)^2
  estimates p; a gap those independent drops would hardly ever produce is a transport outage,
  taken out of that estimate and counted as a burst (at least one per episode duration).

What the logs cannot show is left nominal and written down in each scenario's evidence: an
encoder calibration offset (the joint dynamics are the same in any offset frame), the delay
between measurement and the controller, and link masses (confounded with the actuator gain).

The set only grows: scenarios already in it are kept byte for byte when it is rebuilt, new
failures are appended, and a scenario leaves the evaluation only by an explicit, recorded
retirement (it stays in the file, marked retired, with the reason).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources

import mujoco
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from mujoco import rollout

from flywheel_pipelines.lib.sim.robot import CONTROL_HZ, JOINT_STATE_HZ, MAX_EPISODE_STEPS, MJCF, RobotProfile, apply_profile
from flywheel_pipelines.lib.sim.scenario import Scenario

FORMAT = "flywheel-golden-v1"
ESTIMATOR = "sysid-lm-v1"
GROUP = "golden"
SIM_EMBODIMENT = "flywheel_arm2"  # the embodiment the evaluator can simulate
FIT_FRAMES = 20  # the first second: the reach itself, where the dynamics show
FIT_MAX_RMS_RAD = 0.01
OUTAGE_IMPROBABLE = 0.01  # expected count of a gap that long under independent drops
MAX_DROP_RATE = 0.5
# Levenberg-Marquardt over (gain_scale, latency_s, damping x2, friction x2).
_PARAMS = ("gain_scale", "latency_s", "damping_shoulder", "damping_elbow", "friction_shoulder", "friction_elbow")
_START = np.array([1.0, 0.02, 0.05, 0.05, 0.01, 0.01])
_LOW = np.array([0.4, 0.0, 0.0, 0.0, 0.0, 0.0])
_HIGH = np.array([2.5, 0.1, 0.5, 0.5, 0.3, 0.3])
# Finite-difference steps; latency moves the command schedule in whole 2 ms physics steps, so its
# step spans two of them.
_STEP = np.array([0.02, 0.004, 0.005, 0.005, 0.003, 0.003])
_MAX_ITERATIONS = 4
# Velocities join the fit at a tenth of the weight of positions: reported velocities are about ten
# times noisier (rad/s against rad), and they pin the damping down.
VELOCITY_WEIGHT = 0.1


class GoldenError(ValueError):
    """A golden set that cannot be built or changed as asked."""


# --- what an episode logged ------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodeLog:
    """One episode's standardized frames, as arrays (sensor frame, as the robot reported them)."""

    t_s: np.ndarray  # (n,) seconds since the first frame
    position: np.ndarray  # (n, 2) measured joint positions
    velocity: np.ndarray  # (n, 2) measured joint velocities
    goal: np.ndarray  # (n, 2)
    action: np.ndarray  # (n, 2) commanded joint targets


def _column(frames: pa.Table, key: str) -> np.ndarray:
    col = frames.column(key).combine_chunks()
    width = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, width)


def episode_log(frames: pa.Table, episode_id: str) -> EpisodeLog:
    """The frames of ``episode_id`` from a robot-day's frames table (flywheel_arm2 mapping:
    observation.state = [shoulder.pos, elbow.pos, shoulder.vel, elbow.vel], goal, action)."""
    mine = frames.filter(pc.equal(frames["episode_id"], episode_id)).sort_by("frame_index")
    if mine.num_rows < 2:
        raise GoldenError(f"episode {episode_id}: {mine.num_rows} frames, need at least 2")
    state = _column(mine, "observation.state")
    t = mine.column("timestamp_ns").to_numpy().astype(np.int64)
    return EpisodeLog(t_s=(t - t[0]) / 1e9, position=state[:, :2], velocity=state[:, 2:4],
                      goal=_column(mine, "observation.environment_state"), action=_column(mine, "action"))


# --- dropped messages from the stream statistics ---------------------------------------------


def stream_estimates(stream: Mapping[str, float], duration_s: float) -> dict:
    """Drop rate and transport outages of one stream from its catalog statistics
    (count, rate_hz, jitter_ms, max_gap_ms over the episode)."""
    n, rate, jitter, gap = int(stream["count"]), float(stream["rate_hz"]), float(stream["jitter_ms"]), \
        float(stream["max_gap_ms"])
    if n < 3 or rate <= 0:
        return {"drop_rate": 0.0, "outage": False, "burst_drop_rate": 0.0, "basis": "too few samples"}
    mean = 1000.0 / rate
    intervals, total, squares = n - 1, (n - 1) * mean, (n - 1) * (jitter**2 + mean**2)
    p_all = min(max(squares / intervals - mean**2, 0.0) / mean**2, MAX_DROP_RATE)
    # The longest gap is an outage when independent drops at the rate seen would not produce it:
    # k consecutive drops turn up about n * p^k times in n samples.
    missed = gap / (mean * (1 - p_all)) - 1
    outage = intervals > 1 and missed >= 2 and n * p_all**missed < OUTAGE_IMPROBABLE
    if outage:
        # Take the longest gap out: what is left are the independent drops.
        intervals, total, squares = intervals - 1, total - gap, squares - gap**2
        mean = total / intervals
    variance = max(squares / intervals - mean**2, 0.0)
    return {
        "drop_rate": round(min(variance / mean**2, MAX_DROP_RATE), 6),
        "outage": bool(outage),
        # An outage is seen at least once in this episode: its rate is at least one per duration.
        "burst_drop_rate": round(1.0 / duration_s, 6) if outage and duration_s > 0 else 0.0,
        "basis": f"{n} samples at {rate:.1f} Hz, jitter {jitter:.3f} ms, longest gap {gap:.1f} ms",
    }


# --- dynamics by replaying the recorded commands ---------------------------------------------


def _model_xml() -> str:
    return resources.files("flywheel_pipelines.lib.sim").joinpath("assets", MJCF).read_text()


def _profile(theta: np.ndarray) -> RobotProfile:
    return RobotProfile(robot_id="fit", gain_scale=float(theta[0]), latency_s=float(theta[1]),
                        damping=(float(theta[2]), float(theta[3])), friction=(float(theta[4]), float(theta[5])))


class _Replay:
    """Open-loop replays of one episode's commands through the MJCF, many parameter sets at once.

    Mirrors ``ArmSim``: the episode starts at rest at the first logged position with the actuator
    holding it, a command issued at a control step reaches the actuator ``latency_s`` later
    (at the first physics step at or after that time), and a frame holds the newest joint sample
    (taken every ``1 / JOINT_STATE_HZ``) at or before its time.
    """

    def __init__(self, log: EpisodeLog, frames: int, batch: int):
        self.base = mujoco.MjModel.from_xml_string(_model_xml())
        self.models = [copy.copy(self.base) for _ in range(batch)]
        self.data = [mujoco.MjData(self.base) for _ in range(2)]
        self.log, self.frames = log, frames
        self.dt = self.base.opt.timestep
        self.substeps = round(1.0 / (CONTROL_HZ * self.dt))
        sensor_every = round(1.0 / (JOINT_STATE_HZ * self.dt))
        self.nstep = frames * self.substeps
        data = mujoco.MjData(self.base)
        q0 = log.position[0]
        data.qpos[:2], data.ctrl[:2] = q0, q0
        mujoco.mj_forward(self.base, data)
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self.initial = np.zeros(mujoco.mj_stateSize(self.base, spec))
        mujoco.mj_getState(self.base, data, self.initial, spec)
        # Physics steps completed when the sample each frame holds was taken.
        t = log.t_s[1:frames]
        self.sample_steps = (np.floor(t / (sensor_every * self.dt) + 1e-9) * sensor_every).astype(int)

    def _controls(self, latency: float) -> np.ndarray:
        issued = self.log.t_s[: self.frames] + latency
        now = np.arange(self.nstep) * self.dt
        idx = np.searchsorted(issued, now + 1e-9, side="right") - 1
        return np.where(idx[:, None] >= 0, self.log.action[np.clip(idx, 0, None)], self.log.position[0][None, :])

    def states(self, thetas: Sequence[np.ndarray]) -> np.ndarray:
        """(len(thetas), frames - 1, nstate) physics states at the frames' sample times."""
        models = self.models[: len(thetas)]
        for model, theta in zip(models, thetas, strict=True):
            apply_profile(model, _profile(theta))
        controls = np.stack([self._controls(float(theta[1])) for theta in thetas])
        state, _ = rollout.rollout(models, self.data, self.initial[None], controls)
        return state[:, self.sample_steps - 1, :]

    def residuals(self, thetas: Sequence[np.ndarray]) -> np.ndarray:
        """Logged minus replayed joint positions, then velocities (weighted by VELOCITY_WEIGHT),
        flattened per parameter set: the first ``2 * (frames - 1)`` entries are the positions."""
        state = self.states(thetas)
        q = (self.log.position[None, 1: self.frames] - state[:, :, 1:3]).reshape(len(thetas), -1)
        v = (self.log.velocity[None, 1: self.frames] - state[:, :, 3:5]).reshape(len(thetas), -1)
        return np.concatenate([q, VELOCITY_WEIGHT * v], axis=1)


@dataclass(frozen=True)
class DynamicsFit:
    gain_scale: float
    latency_s: float
    damping: tuple[float, float]
    friction: tuple[float, float]
    rms_rad: float  # position RMS of the fitted replay over the fitted frames
    nominal_rms_rad: float  # the same for the MJCF's nominal parameters: what the fit bought
    frames: int
    replays: int
    used: bool  # False: the fit did not explain the log; the scenario keeps nominal dynamics

    def to_dict(self) -> dict:
        d = asdict(self)
        d["damping"], d["friction"] = list(self.damping), list(self.friction)
        return d


def fit_dynamics(log: EpisodeLog, *, frames: int = FIT_FRAMES) -> DynamicsFit:
    """Fit actuator gain, latency, damping and friction to one episode (see the module doc)."""
    frames = min(frames, len(log.t_s))
    if frames < 4:
        raise GoldenError(f"{frames} frames are too few to fit the dynamics")
    replay = _Replay(log, frames, batch=len(_PARAMS) + 1)
    eye = np.eye(len(_PARAMS))

    def evaluate(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probes = [np.clip(theta + _STEP[i] * eye[i], _LOW, _HIGH) for i in range(len(_PARAMS))]
        # At an upper bound the forward probe collapses onto theta: probe backwards instead.
        probes = [p if p[i] != theta[i] else np.clip(theta - _STEP[i] * eye[i], _LOW, _HIGH)
                  for i, p in enumerate(probes)]
        res = replay.residuals([theta, *probes])
        jac = np.stack([(res[i + 1] - res[0]) / (probes[i][i] - theta[i]) for i in range(len(_PARAMS))], axis=1)
        return res[0], jac

    theta = _START.copy()
    r, jac = evaluate(theta)
    nominal = replay.residuals([np.array([1.0, 0.0, 0.05, 0.05, 0.0, 0.0])])[0]
    replays, cost, damping_lm = len(_PARAMS) + 2, float(r @ r), 1e-2
    for _ in range(_MAX_ITERATIONS):
        a, g = jac.T @ jac, jac.T @ r
        improved = False
        while damping_lm < 1e6:
            delta = np.linalg.solve(a + damping_lm * np.diag(np.diag(a) + 1e-12), -g)
            trial = np.clip(theta + delta, _LOW, _HIGH)
            r_new, jac_new = evaluate(trial)
            replays += len(_PARAMS) + 1
            if float(r_new @ r_new) < cost:
                gain = cost - float(r_new @ r_new)
                theta, r, jac, cost = trial, r_new, jac_new, float(r_new @ r_new)
                damping_lm = max(damping_lm / 3, 1e-6)
                improved = gain > 1e-3 * cost
                break
            damping_lm *= 4
        if not improved:
            break
    npos = 2 * (frames - 1)
    rms = float(np.sqrt(r[:npos] @ r[:npos] / npos))
    return DynamicsFit(
        gain_scale=round(float(theta[0]), 4), latency_s=round(float(theta[1]), 4),
        damping=(round(float(theta[2]), 4), round(float(theta[3]), 4)),
        friction=(round(float(theta[4]), 4), round(float(theta[5]), 4)),
        rms_rad=round(rms, 6), nominal_rms_rad=round(float(np.sqrt(nominal[:npos] @ nominal[:npos] / npos)), 6),
        frames=frames, replays=replays, used=rms <= FIT_MAX_RMS_RAD,
    )


def noise_estimates(log: EpisodeLog, fit: DynamicsFit) -> dict:
    """Sensor noise (std of reported position and velocity) from the whole episode's residual
    against the replay with the fitted dynamics."""
    theta = np.array([fit.gain_scale, fit.latency_s, *fit.damping, *fit.friction])
    frames = len(log.t_s)
    if frames < 4:
        return {"pos_noise": 0.001, "vel_noise": 0.01, "basis": "too few frames: defaults"}
    state = _Replay(log, frames, batch=1).states([theta])[0]
    res_q = log.position[1:] - state[:, 1:3]
    res_v = log.velocity[1:] - state[:, 3:5]

    def robust_std(res: np.ndarray) -> float:
        # Frame-to-frame change of white noise has twice its variance; MAD / 0.6745 is a std.
        return float(np.median(np.abs(np.diff(res, axis=0))) / 0.6745 / np.sqrt(2))

    return {"pos_noise": round(robust_std(res_q), 6), "vel_noise": round(robust_std(res_v), 6),
            "basis": f"residual of {frames} frames against the fitted replay"}


# --- golden scenarios ------------------------------------------------------------------------


def is_candidate(row: Mapping) -> bool:
    """A catalog episode that belongs in the golden set: a failure or an intervention, of the
    embodiment the evaluator simulates, with frames to start from."""
    return ((row["outcome"] == "failure" or bool(row["intervention"])) and row["embodiment"] == SIM_EMBODIMENT
            and int(row["num_frames"]) >= 2)


def candidates(catalog: pa.Table) -> list[dict]:
    """The catalog rows that are golden-scenario candidates, by episode id."""
    return sorted((r for r in catalog.to_pylist() if is_candidate(r)), key=lambda r: r["episode_id"])


def scenario_id(episode_id: str) -> str:
    return f"{GROUP}/{episode_id}"


def derive(row: Mapping, log: EpisodeLog, *, catalog_version: str, frames_key: str) -> dict:
    """One golden-set entry (scenario + evidence + provenance) from a catalog row and its frames."""
    fit = fit_dynamics(log)
    noise = noise_estimates(log, fit)
    streams = json.loads(row["stream_quality"])
    drops = stream_estimates(streams["observation.state"], float(row["duration_s"]))
    dynamics = ({"gain_scale": fit.gain_scale, "latency_s": fit.latency_s, "damping": fit.damping,
                 "friction": fit.friction} if fit.used else {})
    profile = RobotProfile(robot_id=row["robot"], pos_noise=noise["pos_noise"], vel_noise=noise["vel_noise"],
                           drop_rate=drops["drop_rate"], burst_drop_rate=drops["burst_drop_rate"], **dynamics)
    episode_id = row["episode_id"]
    seed = int.from_bytes(hashlib.sha256(f"golden|{episode_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF
    scenario = Scenario(
        scenario_id=scenario_id(episode_id), group=GROUP, profile=profile,
        q0=(round(float(log.position[0, 0]), 6), round(float(log.position[0, 1]), 6)),
        goal=(round(float(log.goal[0, 0]), 6), round(float(log.goal[0, 1]), 6)), seed=seed,
        max_steps=MAX_EPISODE_STEPS,
        source={
            "episode_id": episode_id, "robot": row["robot"], "date": row["date"], "task": row["task"],
            "outcome": row["outcome"], "intervention": bool(row["intervention"]), "operator": row["operator"],
            "tags": list(row["tags"] or []), "frames": frames_key, "catalog_version": catalog_version,
            "raw_files": [{"key": k, "sha256": s} for k, s in zip(row["source_keys"], row["source_sha256"], strict=True)],
        },
    )
    return {
        "scenario": scenario.to_dict(),
        "status": "active",
        "evidence": {
            "estimator": ESTIMATOR,
            "dynamics": {**fit.to_dict(), "note": "fitted dynamics used" if fit.used else
                         f"fit RMS {fit.rms_rad * 1000:.1f} mrad > {FIT_MAX_RMS_RAD * 1000:.0f} mrad: nominal dynamics used"},
            "noise": noise,
            "drops": drops,
            "not_observable": ["calibration_offset", "sensor_delay_s", "mass_scale"],
        },
        "retired": None,
    }


def scenario_from_entry(entry: Mapping) -> Scenario:
    d = dict(entry["scenario"])
    prof = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("profile").items()}
    return Scenario(**{**d, "q0": tuple(d["q0"]), "goal": tuple(d["goal"]), "profile": RobotProfile(**prof)})


def active_scenarios(entries: Iterable[Mapping]) -> list[Scenario]:
    return [scenario_from_entry(e) for e in entries if e["status"] == "active"]


def merge(previous: Sequence[Mapping], new: Iterable[Mapping], *, retire: Mapping[str, str] | None = None,
          retired_by: str = "") -> list[dict]:
    """The next golden set: every previous entry unchanged, new scenario ids appended, and the
    scenarios named in ``retire`` (id -> reason) marked retired (kept, with the reason).

    Raises:
        GoldenError: retiring an id the set does not hold, or without a reason.
    """
    out = {e["scenario"]["scenario_id"]: copy.deepcopy(dict(e)) for e in previous}
    for e in new:
        out.setdefault(e["scenario"]["scenario_id"], copy.deepcopy(dict(e)))
    for sid, reason in (retire or {}).items():
        if sid not in out:
            raise GoldenError(f"cannot retire {sid!r}: no such golden scenario")
        if not reason or not reason.strip():
            raise GoldenError(f"retiring {sid!r} needs a reason")
        if out[sid]["status"] != "retired":
            out[sid]["status"] = "retired"
            out[sid]["retired"] = {"reason": reason.strip(), "by": retired_by}
    return [out[k] for k in sorted(out)]


def golden_version(entries: Sequence[Mapping]) -> str:
    return hashlib.sha256(canonical_json(list(entries)).encode()).hexdigest()[:12]


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def golden_document(entries: Sequence[Mapping]) -> dict:
    """The file stored in the lake: format, version, counts and every entry."""
    return {"format": FORMAT, "version": golden_version(entries), "scenarios": list(entries),
            "active": sum(e["status"] == "active" for e in entries),
            "retired": sum(e["status"] == "retired" for e in entries)}


def read_document(doc: Mapping) -> list[dict]:
    if doc.get("format") != FORMAT:
        raise GoldenError(f"not a golden set (format {doc.get('format')!r}, expected {FORMAT!r})")
    entries = list(doc["scenarios"])
    if golden_version(entries) != doc["version"]:
        raise GoldenError(f"golden set {doc['version']}: content does not match its version (edited by hand?)")
    return entries
