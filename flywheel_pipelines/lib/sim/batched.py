"""Batched closed-loop evaluation: many scenarios at once, one policy call per control step.

``ArmSim`` is the reference: one robot, one Python loop per 2 ms physics step. Here every active
episode of a batch is advanced by one control period (25 substeps) in a single call of MuJoCo's
threaded ``mujoco.rollout`` (one ``MjModel`` per distinct robot physics, one ``MjData`` per
thread, a thread pool that lives for the whole evaluation), and the policy sees all observations as one
(N, 6) array. Everything ``ArmSim`` layers on top of the physics is replayed in numpy from the
rollout's per-substep states:

- actuator latency: each command's activation substep is computed exactly as ``ArmSim`` does
  (``t_cmd + latency <= t_substep + 1e-9``) and the open-loop control sequence switches there,
  also when the command lands one or more control periods later;
- joint samples every ``1 / JOINT_STATE_HZ`` from the substep states, calibration offset added,
  Gaussian noise from a per-scenario ``np.random.Generator(scenario.seed)`` drawn in the order
  ``ArmSim`` draws it (position then velocity, sample after sample);
- the controller sees the newest sample at least ``sensor_delay_s`` old;
- actuator torque per substep, recomputed from the control and the state before that substep
  (``gain * ctrl + bias(q, qdot)`` of the position actuators, what ``mj_fwdActuation`` does).

The only physics difference from ``ArmSim``: rollout restarts the constraint solver's warm start
every control period (ArmSim carries it over). With Newton's solver this moves results by ~1e-14
(the tests hold them to 1e-9); with no constraint active (no joint friction, away from the
limits) the trajectories are bit-identical. Scalar and vectorized numpy (a vector norm, say)
can still differ in the last bit of a reported float.

Results do not depend on the thread count or on how scenarios are split into batches: each
episode only sees its own model, its own noise and the policy's output for its own row (a
policy whose output for a row depends on the batch it is in, as BLAS blocking can do in the last
bit, is the policy's business).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Protocol

import mujoco
import mujoco.rollout
import numpy as np

from flywheel_pipelines.lib.sim.robot import (
    CONTROL_HZ,
    JOINT_STATE_HZ,
    MJCF,
    SUCCESS_HOLD_STEPS,
    ArmSim,
    RobotProfile,
    forward_kinematics,
)
from flywheel_pipelines.lib.sim.scenario import (
    FORCE_LIMIT_NM,
    JOINT_LIMIT_MARGIN_RAD,
    EpisodeResult,
    Scenario,
    apply_profile,
    is_inside,
    step_reward,
)

BatchPolicy = Callable[[np.ndarray], np.ndarray]  # (N, 6) float32 observations -> (N, 2) joint targets
SinglePolicy = Callable[[np.ndarray], np.ndarray]  # (6,) -> (2,)
# (scenario indices, control step, qpos (a, substeps, nq), qvel (a, substeps, nv)) -> None
PeriodObserver = Callable[[np.ndarray, int, np.ndarray, np.ndarray], None]

DEFAULT_BATCH_SIZE = 1024  # episodes in flight at once: bounds the per-episode buffers (~60 kB each)
_TIME_EPS = 1e-9  # ArmSim's tolerance on event times


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def per_row(policy: SinglePolicy) -> BatchPolicy:
    """Adapt a one-observation policy (the scripted expert, say) to the batched interface."""

    def batched(obs: np.ndarray) -> np.ndarray:
        rows = [np.asarray(policy(o), dtype=np.float64).reshape(-1)[:2] for o in obs]
        return np.stack(rows) if rows else np.zeros((0, 2))

    return batched


def jerk_rms(q: np.ndarray) -> float:
    """RMS third difference quotient of joint angles sampled at the control rate, rad/s^3.

    ``q`` is (T + 1, n_joints): the start configuration and the angles after each control step.
    Fewer than four samples have no third difference: 0.
    """
    q = np.asarray(q, dtype=np.float64)
    if len(q) < 4:
        return 0.0
    jerk = np.diff(q, n=3, axis=0) * float(CONTROL_HZ) ** 3
    return float(np.sqrt(np.mean(jerk**2)))


class _Tallies:
    """What each episode accumulates step by step (the evaluation suites' bookkeeping), vectorized."""

    def __init__(self, n: int):
        self.steps = np.zeros(n, dtype=np.int64)
        self.held = np.zeros(n, dtype=np.int64)
        self.success = np.zeros(n, dtype=bool)
        self.time_to_goal = np.full(n, np.nan)  # start of the current hold, NaN when outside
        self.return_ = np.zeros(n)
        self.final_error = np.full(n, np.nan)
        self.min_error = np.full(n, np.inf)
        self.limit_hits = np.zeros(n, dtype=np.int64)
        self.force_events = np.zeros(n, dtype=np.int64)

    def add(self, idx: np.ndarray, step: int, error: np.ndarray, limit_hit: np.ndarray, force_event: np.ndarray) -> None:
        """Record control step ``step`` (1-based) of the episodes ``idx``."""
        inside = is_inside(error)
        self.steps[idx] = step
        self.return_[idx] += step_reward(error, inside)
        self.final_error[idx] = error
        self.min_error[idx] = np.minimum(self.min_error[idx], error)
        self.limit_hits[idx] += limit_hit
        self.force_events[idx] += force_event
        held = np.where(inside, self.held[idx] + 1, 0)
        self.held[idx] = held
        self.time_to_goal[idx] = np.where(held == 1, step / CONTROL_HZ, np.where(held == 0, np.nan, self.time_to_goal[idx]))
        self.success[idx] = held >= SUCCESS_HOLD_STEPS

    def result(self, i: int, scenario: Scenario, policy_name: str, q_history: np.ndarray) -> EpisodeResult:
        p = scenario.profile
        success = bool(self.success[i])
        return EpisodeResult(
            policy=policy_name, scenario_id=scenario.scenario_id, group=scenario.group, seed=scenario.seed,
            success=success, steps=int(self.steps[i]), time_to_goal_s=float(self.time_to_goal[i]) if success else None,
            return_=float(self.return_[i]), final_error_m=float(self.final_error[i]), min_error_m=float(self.min_error[i]),
            jerk_rms=jerk_rms(q_history), joint_limit_hits=int(self.limit_hits[i]), force_events=int(self.force_events[i]),
            gain_scale=p.gain_scale, latency_ms=p.latency_s * 1000, mass_scale=p.mass_scale,
        )


def _check_action(target: np.ndarray, n: int, policy_name: str, scenarios: Sequence[Scenario], step: int) -> np.ndarray:
    target = np.asarray(target, dtype=np.float64)
    if target.shape != (n, 2):
        raise ValueError(f"policy {policy_name!r} returned shape {target.shape} for {n} observations, expected ({n}, 2)")
    bad = ~np.all(np.isfinite(target), axis=1)
    if bad.any():
        ids = [scenarios[i].scenario_id for i in np.flatnonzero(bad)[:3]]
        raise ValueError(f"policy {policy_name!r} returned a non-finite action at step {step} of {ids}")
    return target


def evaluate_reference(policy: SinglePolicy, scenarios: Sequence[Scenario], policy_name: str) -> list[EpisodeResult]:
    """The ground truth: each scenario on its own ``ArmSim``, one policy call per observation."""
    results = []
    for scenario in scenarios:
        sim = ArmSim(scenario.profile, seed=scenario.seed)
        sim.reset(np.asarray(scenario.q0, dtype=np.float64), np.asarray(scenario.goal, dtype=np.float64))
        tally, qs, one = _Tallies(1), [sim.data.qpos[:2].copy()], np.zeros(1, dtype=np.int64)
        for step in range(1, scenario.max_steps + 1):
            obs = sim.observation()
            target = _check_action(np.asarray(policy(obs)).reshape(1, -1)[:, :2], 1, policy_name, [scenario], step)
            sim.advance(target[0])
            qs.append(sim.data.qpos[:2].copy())
            tally.add(one, step, np.array([sim.fingertip_error()]), np.array([sim.joint_limit_margin() < JOINT_LIMIT_MARGIN_RAD]),
                      np.array([sim.peak_actuator_force() > FORCE_LIMIT_NM]))
            if tally.success[0]:
                break
        results.append(tally.result(0, scenario, policy_name, np.stack(qs)))
    return results


def _base_model() -> mujoco.MjModel:
    xml = resources.files("flywheel_pipelines.lib.sim").joinpath("assets", MJCF).read_text()
    return mujoco.MjModel.from_xml_string(xml)


def _can_collide(model: mujoco.MjModel) -> bool:
    """Whether any two geoms could ever be in contact (explicit pairs, or contype/conaffinity overlap)."""
    if model.npair:
        return True
    contype, conaffinity = model.geom_contype, model.geom_conaffinity
    return bool(np.any((contype[:, None] & conaffinity[None, :]) != 0))


class ScenarioModels:
    """MuJoCo models for scenarios: one per distinct physics (what :func:`apply_profile` sets),
    shared by the scenarios that have it; ``base`` is the unmodified ``arm2.xml``."""

    def __init__(self):
        self.base = _base_model()
        self._by_physics: dict[tuple, mujoco.MjModel] = {}

    def get(self, profile: RobotProfile) -> mujoco.MjModel:
        """The model of ``profile``'s physics (treat it as read-only: other scenarios share it)."""
        key = (float(profile.gain_scale), *map(float, profile.damping), *map(float, profile.friction),
               float(profile.mass_scale))
        model = self._by_physics.get(key)
        if model is None:
            model = copy.copy(self.base)  # a deep copy (mj_copyModel): apply_profile wants a fresh one
            apply_profile(model, profile)
            if not _can_collide(model):
                # Collision detection can only find nothing: skipping it changes no bit of the
                # result and saves about a tenth of each step.
                model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONTACT
            self._by_physics[key] = model
        return model


BACKENDS = ("mujoco", "warp", "auto")


def resolve_backend(backend: str) -> str:
    """``mujoco`` (CPU, ``mujoco.rollout``) or ``warp`` (MuJoCo Warp); ``auto`` is ``warp`` when
    a CUDA device is present and MuJoCo Warp is installed, else ``mujoco``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown simulation backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        from flywheel_pipelines.lib.sim.warp_backend import cuda_available

        return "warp" if cuda_available() else "mujoco"
    return backend


class Stepper(Protocol):
    """Advances the running episodes of a batch by one control period."""

    def step(self, active: np.ndarray, control: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``control`` is (a, substeps, nu) for the episodes ``active``; returns their qpos
        (a, substeps, nq) and qvel (a, substeps, nv) after each substep."""
        ...


class RolloutStepper:
    """The CPU backend: one threaded ``mujoco.rollout`` call per control period, float64."""

    def __init__(self, models: list[mujoco.MjModel], state: np.ndarray, *, substeps: int,
                 pool: mujoco.rollout.Rollout, datas: list[mujoco.MjData]):
        self.models, self.state, self.substeps, self.pool, self.datas = models, state, substeps, pool, datas
        self.nq, self.nv = models[0].nq, models[0].nv
        self.out = np.empty((len(models), substeps, state.shape[1]))

    def step(self, active: np.ndarray, control: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.out[:active.size]
        self.pool.rollout([self.models[i] for i in active], self.datas, np.ascontiguousarray(self.state[active]),
                          control, state=out, nstep=self.substeps, skip_checks=True)
        self.state[active] = out[:, -1]
        # FULLPHYSICS state vector: [time, qpos, qvel, act, ...].
        return out[:, :, 1:1 + self.nq], out[:, :, 1 + self.nq:1 + self.nq + self.nv]


def evaluate_batched(
    policy: BatchPolicy,
    scenarios: Sequence[Scenario],
    *,
    policy_name: str,
    threads: int | None = None,
    batch_size: int | None = None,
    pool: mujoco.rollout.Rollout | None = None,
    backend: str = "mujoco",
    device: str = "auto",
    on_period: PeriodObserver | None = None,
) -> list[EpisodeResult]:
    """Run ``policy`` on every scenario, all episodes of a batch stepped together.

    Args:
        policy: maps a (N, 6) float32 batch of observations [q, dq, goal] to (N, 2) absolute
            joint targets in the sensor frame; called once per control step for all episodes
            still running.
        scenarios: the episodes; results come back in the same order.
        policy_name: the ``policy`` column of the results.
        threads: MuJoCo stepping threads (``mujoco`` backend); default all cores this process may use.
        batch_size: episodes in flight at once (default 1024 on the CPU, every scenario in one
            batch with ``warp``); results do not depend on it.
        pool: a ``mujoco.rollout.Rollout`` to step with, to share one thread pool between
            evaluations; by default one is started for this call (``threads`` then follows it).
        backend: ``mujoco`` (CPU, float64, the reference), ``warp`` (MuJoCo Warp, float32, one
            world per episode) or ``auto`` (``warp`` when a CUDA device is present).
        device: the ``warp`` backend's device: ``cpu``, ``cuda:<i>`` or ``auto``.
        on_period: called after every control period with (scenario indices, control step,
            qpos, qvel after each substep); for agreement tests and diagnostics.

    Returns:
        One :class:`EpisodeResult` per scenario: equal to :func:`evaluate_reference`'s with the
        ``mujoco`` backend; within float32 accuracy of it with ``warp`` (docs/simulation.md).
    """
    scenarios = list(scenarios)
    if any(s.max_steps < 1 for s in scenarios):
        raise ValueError("every scenario needs max_steps >= 1")
    backend = resolve_backend(backend)
    if backend == "warp":
        return _evaluate_warp(policy, scenarios, policy_name=policy_name, batch_size=batch_size, device=device,
                              on_period=on_period)
    if pool is not None:
        if threads is not None and threads != max(pool.nthread, 1):
            raise ValueError(f"threads={threads} but the pool has {pool.nthread} threads")
        threads = max(pool.nthread, 1)
    threads = available_cores() if threads is None else int(threads)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if threads < 1 or batch_size < 1:
        raise ValueError(f"threads and batch_size must be positive, got {threads} and {batch_size}")
    models = ScenarioModels()
    datas = [mujoco.MjData(models.base) for _ in range(threads)]
    results: list[EpisodeResult] = []
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(mujoco.rollout.Rollout(nthread=threads if threads > 1 else 0))
        for start in range(0, len(scenarios), batch_size):
            chunk = scenarios[start:start + batch_size]
            batch = _Batch(chunk, [models.get(s.profile) for s in chunk])
            stepper = RolloutStepper(batch.models, batch.state, substeps=batch.substeps, pool=pool, datas=datas)
            results += batch.run(policy, policy_name, stepper, on_period=_offset(on_period, start))
    return results


def _offset(on_period: PeriodObserver | None, start: int) -> PeriodObserver | None:
    if on_period is None:
        return None
    return lambda idx, step, qpos, qvel: on_period(idx + start, step, qpos, qvel)


def _evaluate_warp(policy: BatchPolicy, scenarios: list[Scenario], *, policy_name: str, batch_size: int | None,
                   device: str, on_period: PeriodObserver | None) -> list[EpisodeResult]:
    from flywheel_pipelines.lib.sim.warp_backend import WarpStepper

    batch_size = len(scenarios) if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    models = ScenarioModels()
    results: list[EpisodeResult] = []
    for start in range(0, len(scenarios), batch_size):
        chunk = scenarios[start:start + batch_size]
        batch = _Batch(chunk, [models.get(s.profile) for s in chunk])
        stepper = WarpStepper(batch.models, batch.qpos, substeps=batch.substeps, device=device)
        results += batch.run(policy, policy_name, stepper, on_period=_offset(on_period, start))
    return results


class _Batch:
    """The per-episode arrays of one batch of scenarios, advanced one control period at a time."""

    def __init__(self, scenarios: list[Scenario], models: list[mujoco.MjModel]):
        n = len(scenarios)
        m0 = models[0]
        self.scenarios, self.models = scenarios, models
        self.dt = m0.opt.timestep
        if any(m.opt.timestep != self.dt for m in models):
            raise ValueError("all scenario models must share one timestep")
        self.substeps = round(1.0 / (CONTROL_HZ * self.dt))
        self.sensor_every = round(1.0 / (JOINT_STATE_HZ * self.dt))
        self.nstate = mujoco.mj_stateSize(m0, mujoco.mjtState.mjSTATE_FULLPHYSICS)
        # The two joints' places in qpos and qvel.
        self.iq = m0.jnt_qposadr[:2]
        self.iv = m0.jnt_dofadr[:2]
        self.max_steps = np.array([s.max_steps for s in scenarios])
        horizon = int(self.max_steps.max())
        nsamples = 1 + horizon * self.substeps // self.sensor_every

        profiles = [s.profile for s in scenarios]
        self.offset = np.array([p.calibration_offset for p in profiles], dtype=np.float64)
        self.latency = np.array([p.latency_s for p in profiles], dtype=np.float64)
        self.delay = np.array([p.sensor_delay_s for p in profiles], dtype=np.float64)
        self.goal = np.array([s.goal for s in scenarios], dtype=np.float64)
        q0 = np.array([s.q0 for s in scenarios], dtype=np.float64)

        # Position actuators on hinge joints: torque = gain*ctrl + b0 + b1*(gear q) + b2*(gear qdot).
        position = ((m0.actuator_trntype == mujoco.mjtTrn.mjTRN_JOINT) & (m0.actuator_gaintype == mujoco.mjtGain.mjGAIN_FIXED)
                    & (m0.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE) & (m0.actuator_dyntype == mujoco.mjtDyn.mjDYN_NONE))
        if not position.all():
            raise ValueError("the batched evaluator expects joint position actuators")
        joint = m0.actuator_trnid[:, 0]
        self.act_q = m0.jnt_qposadr[joint]  # the actuated joints' places in qpos and qvel
        self.act_v = m0.jnt_dofadr[joint]
        self.gear = np.array([m.actuator_gear[:, 0] for m in models])
        self.gain = np.array([m.actuator_gainprm[:, 0] for m in models])
        self.bias = np.array([m.actuator_biasprm[:, :3] for m in models])  # (n, nu, 3)
        self.ctrl_limited = m0.actuator_ctrllimited.astype(bool)
        self.ctrl_range = np.array([m.actuator_ctrlrange for m in models])
        self.force_limited = m0.actuator_forcelimited.astype(bool)
        self.force_range = np.array([m.actuator_forcerange for m in models])
        self.jnt_lo = np.array([m.jnt_range[:2, 0] for m in models])
        self.jnt_hi = np.array([m.jnt_range[:2, 1] for m in models])

        # Initial states, as ArmSim.reset leaves them (mj_resetData, qpos = q0, ctrl = q0).
        data = mujoco.MjData(m0)
        self.state = np.empty((n, self.nstate))
        for i, (m, q) in enumerate(zip(models, q0, strict=True)):
            mujoco.mj_resetData(m, data)
            data.qpos[:2] = q
            mujoco.mj_getState(m, data, self.state[i], mujoco.mjtState.mjSTATE_FULLPHYSICS)
        self.ctrl = q0.copy()
        # The state before the next substep, as joint positions and velocities.
        self.qpos = self.state[:, 1:1 + m0.nq].copy()
        self.qvel = self.state[:, 1 + m0.nq:1 + m0.nq + m0.nv].copy()

        # All sensor noise up front, in ArmSim's draw order: per sample pos(2) then vel(2).
        noise = np.stack([np.random.default_rng(s.seed).standard_normal(4 * nsamples) for s in scenarios])
        noise = noise.reshape(n, nsamples, 4)
        pos_noise = np.array([p.pos_noise for p in profiles])[:, None, None]
        vel_noise = np.array([p.vel_noise for p in profiles])[:, None, None]
        self.noise_pos = pos_noise * noise[:, :, :2]
        self.noise_vel = vel_noise * noise[:, :, 2:]
        self.sample_pos = np.empty((n, nsamples, 2))
        self.sample_vel = np.empty((n, nsamples, 2))
        self.sample_pos[:, 0] = (q0 + self.offset) + self.noise_pos[:, 0]
        self.sample_vel[:, 0] = 0.0 + self.noise_vel[:, 0]
        self.seen = np.zeros(n, dtype=np.int64)

        # Commands (true frame) and the global substep index at which each one takes effect.
        self.cmd_target = np.zeros((n, horizon, 2))
        self.cmd_at = np.zeros((n, horizon), dtype=np.int64)
        # How many commands can be in flight, and how many samples can be waiting, at most.
        period = self.substeps * self.dt
        self.cmd_window = int(np.ceil(self.latency.max() / period)) + 2
        self.lat_window = int(np.ceil(self.latency.max() / self.dt)) + 2
        per_period = self.substeps // self.sensor_every
        self.sample_window = int(np.ceil(self.delay.max() / (self.sensor_every * self.dt))) + per_period + 3

        self.q_history = np.zeros((n, horizon + 1, 2))
        self.q_history[:, 0] = q0
        self.tallies = _Tallies(n)

    def observations(self, idx: np.ndarray) -> np.ndarray:
        rows = self.seen[idx]
        obs = np.concatenate([self.sample_pos[idx, rows], self.sample_vel[idx, rows], self.goal[idx]], axis=1)
        return obs.astype(np.float32)

    def run(self, policy: BatchPolicy, policy_name: str, stepper: Stepper, *,
            on_period: PeriodObserver | None = None) -> list[EpisodeResult]:
        n, ns, dt = len(self.scenarios), self.substeps, self.dt
        active = np.arange(n)
        step = 0
        while active.size:
            k0 = step * ns  # global index of this period's first substep
            step += 1
            target = _check_action(policy(self.observations(active)), active.size, policy_name,
                                   [self.scenarios[i] for i in active], step)
            self._command(active, step - 1, target - self.offset[active], k0)
            control = self._control(active, step - 1, k0)

            qpos, qvel = stepper.step(active, control)  # (a, ns, nq), (a, ns, nv) after each substep
            if on_period is not None:
                on_period(active, step, qpos, qvel)
            before_q = np.concatenate([self.qpos[active][:, None], qpos[:, :-1]], axis=1)
            before_v = np.concatenate([self.qvel[active][:, None], qvel[:, :-1]], axis=1)
            self.qpos[active], self.qvel[active] = qpos[:, -1], qvel[:, -1]
            self.ctrl[active] = control[:, -1]

            peak = self._peak_torque(active, control, before_q, before_v)
            self._sample(active, qpos, qvel, k0)
            t_now = (k0 + ns) * dt
            self._update_seen(active, t_now, k0 + ns)

            q = qpos[:, -1][:, self.iq]
            self.q_history[active, step] = q
            error = np.linalg.norm(forward_kinematics(q) - self.goal[active], axis=1)
            margin = np.min(np.minimum(q - self.jnt_lo[active], self.jnt_hi[active] - q), axis=1)
            self.tallies.add(active, step, error, margin < JOINT_LIMIT_MARGIN_RAD, peak > FORCE_LIMIT_NM)
            done = self.tallies.success[active] | (step >= self.max_steps[active])
            active = active[~done]
        t = self.tallies
        return [t.result(i, s, policy_name, self.q_history[i, :t.steps[i] + 1]) for i, s in enumerate(self.scenarios)]

    def _command(self, active: np.ndarray, j: int, true_target: np.ndarray, k0: int) -> None:
        """Queue command ``j``: it takes effect at the first substep s >= k0 with
        ``t_cmd + latency <= s * dt + 1e-9`` (ArmSim's test, in the same float arithmetic)."""
        dt = self.dt
        t_cmd = k0 * dt
        arrive = t_cmd + self.latency[active]
        s = k0 + np.arange(self.lat_window)
        ready = arrive[:, None] <= s[None, :] * dt + _TIME_EPS
        self.cmd_target[active, j] = true_target
        self.cmd_at[active, j] = k0 + np.argmax(ready, axis=1)

    def _control(self, active: np.ndarray, j: int, k0: int) -> np.ndarray:
        """The (a, substeps, nu) control sequence: the newest command that has taken effect."""
        s = k0 + np.arange(self.substeps)
        control = np.repeat(self.ctrl[active][:, None, :], self.substeps, axis=1)
        for c in range(max(0, j - self.cmd_window), j + 1):
            at = self.cmd_at[active, c]
            live = (at[:, None] <= s[None, :]) & (at >= k0)[:, None]
            control = np.where(live[:, :, None], self.cmd_target[active, c][:, None, :], control)
        return control

    def _peak_torque(self, active: np.ndarray, control: np.ndarray, before_q: np.ndarray,
                     before_v: np.ndarray) -> np.ndarray:
        """Largest |actuator torque| per episode over the period, from the state before each substep."""
        ctrl = control
        if self.ctrl_limited.any():
            rng = self.ctrl_range[active][:, None]  # (a, 1, nu, 2)
            ctrl = np.where(self.ctrl_limited, np.clip(ctrl, rng[..., 0], rng[..., 1]), ctrl)
        gear = self.gear[active][:, None]
        length = gear * before_q[:, :, self.act_q]
        velocity = gear * before_v[:, :, self.act_v]
        bias = self.bias[active][:, None]  # (a, 1, nu, 3)
        force = self.gain[active][:, None] * ctrl + (bias[..., 0] + bias[..., 1] * length + bias[..., 2] * velocity)
        if self.force_limited.any():
            rng = self.force_range[active][:, None]
            force = np.where(self.force_limited, np.clip(force, rng[..., 0], rng[..., 1]), force)
        return np.abs(force).max(axis=(1, 2))

    def _sample(self, active: np.ndarray, qpos: np.ndarray, qvel: np.ndarray, k0: int) -> None:
        """Joint samples at every substep whose (1-based) global count is a multiple of sensor_every."""
        after = k0 + 1 + np.arange(self.substeps)  # global step count after each substep
        which = np.flatnonzero(after % self.sensor_every == 0)
        r0, r1 = after[which[0]] // self.sensor_every, after[which[-1]] // self.sensor_every + 1
        taken_q = qpos[:, which][:, :, self.iq]
        self.sample_pos[active, r0:r1] = (taken_q + self.offset[active][:, None]) + self.noise_pos[active, r0:r1]
        self.sample_vel[active, r0:r1] = qvel[:, which][:, :, self.iv] + self.noise_vel[active, r0:r1]

    def _update_seen(self, active: np.ndarray, t_now: float, steps_done: int) -> None:
        """The controller's view: the newest sample with ``t_sample <= t_now - delay + 1e-9``."""
        newest = steps_done // self.sensor_every
        rows = np.arange(max(1, newest - self.sample_window), newest + 1)
        t_sample = (rows * self.sensor_every) * self.dt
        ok = t_sample[None, :] <= (t_now - self.delay[active])[:, None] + _TIME_EPS
        last = np.where(ok.any(axis=1), rows[ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)], -1)
        self.seen[active] = np.maximum(self.seen[active], last)
