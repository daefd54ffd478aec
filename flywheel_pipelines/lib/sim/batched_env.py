"""The reach task for on-device RL: N worlds stepped at once, observations, rewards and resets in torch.

``ReachEnv`` is one world behind gymnasium; an RL library's VecEnv over it copies every
observation, reward and action through host numpy each control step. Here the physics of all
worlds advances in one call per control period (25 substeps), on the CPU through threaded
``mujoco.rollout`` (:class:`~flywheel_pipelines.lib.sim.batched.RolloutStepper`) or on a GPU
through MuJoCo Warp (:class:`~flywheel_pipelines.lib.sim.warp_backend.WarpStepper`, read and
written through zero-copy torch views), and everything ``ReachEnv`` layers on top of it is torch
ops on the policy's device, with no per-world Python loop and no host synchronization per step.

Same task as ``ReachEnv`` (and so as the SB3 trainers and the evaluation suites):

- action ``a`` in [-1, 1]^2 (clipped), joint target ``obs_q + action_offset + action_scale * a``
  in the sensor frame; the actuator tracks ``target - calibration_offset`` from the first
  substep at or after ``t + latency`` (``ArmSim``'s test, 1e-9 s tolerance);
- observation [q(2), dq(2), goal(2)] float32: the newest 250 Hz joint sample (true angles +
  calibration offset + N(0, pos_noise), velocities + N(0, vel_noise));
- reward :func:`~flywheel_pipelines.lib.sim.scenario.step_reward` of the true fingertip error;
  terminated on success (SUCCESS_HOLD_STEPS control steps in a row inside the radius), truncated
  at ``max_steps``; a finished world starts its next episode in the same call (the returned
  observation is the new episode's; ``terminal_obs`` holds the last one of the old).

Where it differs, on purpose:

- **Robots per world.** ``ReachEnv`` draws a fresh robot per episode; here a world keeps the
  robot it was built with (``robots`` fleet-sampled, fault-free robots shared round-robin by the
  worlds) and draws a fresh task (start, goal) per episode. The trainer builds a new env, with
  new robots, at every checkpoint boundary, so over a run the robot population is as varied.
- **Noise stream.** Sensor noise comes from a torch generator on the device (same distribution),
  not from each scenario's NumPy generator, so a world does not replay ``ArmSim``'s exact noise.
- **Sensor delay and long latency** are refused (``ValueError``): training robots have neither
  (``sample_profile``: latency below 40 ms, no sensor delay), and supporting them would need the
  evaluator's sample and command queues per world.
- **Start tasks** are drawn as ``sample_task`` draws them (uniform start, goal on a disc sector,
  at least 8 cm away) but vectorized: 16 candidates per world, the first that is far enough; if
  none is (probability below 1e-9), the farthest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import mujoco
import mujoco.rollout
import numpy as np
import torch

from flywheel_pipelines.lib.sim.batched import RolloutStepper, ScenarioModels, available_cores
from flywheel_pipelines.lib.sim.robot import (
    CONTROL_HZ,
    JOINT_STATE_HZ,
    LINK_LENGTHS,
    MAX_EPISODE_STEPS,
    SUCCESS_HOLD_STEPS,
    SUCCESS_RADIUS_M,
    RobotProfile,
    sample_profile,
)

ENV_BACKENDS = ("mujoco", "warp")
_TIME_EPS = 1e-9
_TASK_CANDIDATES = 16
_MIN_GOAL_DISTANCE_M = 0.08  # sample_task's


def training_robots(seed: int, count: int, *, draw: int) -> list[RobotProfile]:
    """``count`` fault-free fleet-sampled robots for one env build (``draw`` makes each build's own)."""
    return [sample_profile(f"train{draw}-{i}", seed=seed, faults=False) for i in range(count)]


def fingertip(q: torch.Tensor) -> torch.Tensor:
    """Fingertip (x, y) of joint angles ``q`` (..., 2): ``forward_kinematics`` in torch."""
    l1, l2 = LINK_LENGTHS
    a, b = q[..., 0], q[..., 0] + q[..., 1]
    return torch.stack([l1 * torch.cos(a) + l2 * torch.cos(b), l1 * torch.sin(a) + l2 * torch.sin(b)], dim=-1)


class BatchedReachEnv:
    """``n`` reach worlds on ``device``; see the module docstring for the semantics.

    Args:
        profiles: the robots; world ``i`` simulates ``profiles[i % len(profiles)]``.
        n: number of worlds.
        seed: seeds the env's torch generator (tasks and sensor noise).
        device: where observations, rewards and the bookkeeping live (the policy's device).
        backend: ``mujoco`` (CPU physics, float64) or ``warp`` (MuJoCo Warp on ``device``, float32).
        action_offset, action_scale: ``ReachEnv``'s action mapping.
        threads: ``mujoco`` stepping threads (default: all cores this process may use).
    """

    def __init__(self, profiles: Sequence[RobotProfile], n: int, *, seed: int, device: str | torch.device = "cpu",
                 backend: str = "mujoco", action_offset: Sequence[float] = (0.0, 0.0),
                 action_scale: Sequence[float] = (0.2, 0.2), max_steps: int = MAX_EPISODE_STEPS,
                 threads: int | None = None):
        if backend not in ENV_BACKENDS:
            raise ValueError(f"unknown env backend {backend!r}; expected one of {ENV_BACKENDS}")
        if n < 1 or not profiles:
            raise ValueError(f"need at least one world and one robot, got n={n} and {len(profiles)} robots")
        self.n, self.backend, self.max_steps = int(n), backend, int(max_steps)
        self.device = torch.device(device)
        world_profiles = [profiles[i % len(profiles)] for i in range(self.n)]
        models = ScenarioModels()
        world_models = [models.get(p) for p in world_profiles]
        m0 = models.base
        self.dt = float(m0.opt.timestep)
        self.substeps = round(1.0 / (CONTROL_HZ * self.dt))
        self.sensor_every = round(1.0 / (JOINT_STATE_HZ * self.dt))
        self.nq, self.nv = m0.nq, m0.nv
        for p in world_profiles:
            if p.sensor_delay_s or p.latency_s >= self.substeps * self.dt:
                raise ValueError(f"robot {p.robot_id}: BatchedReachEnv supports latency below one control period "
                                 f"and no sensor delay, got latency {p.latency_s} s, delay {p.sensor_delay_s} s")
        f64 = {"dtype": torch.float64, "device": self.device}
        self.calibration = torch.tensor([p.calibration_offset for p in world_profiles], **f64)
        self.pos_noise = torch.tensor([[p.pos_noise] for p in world_profiles], **f64)
        self.vel_noise = torch.tensor([[p.vel_noise] for p in world_profiles], **f64)
        # The first substep of a period at which a new command acts (ArmSim's test; k0 = 0 is
        # representative: the float error of k0 * dt is ~1e-17, far inside the 1e-9 tolerance).
        latency = np.array([p.latency_s for p in world_profiles])
        s = np.arange(self.substeps)
        switch = np.argmax(latency[:, None] <= s[None, :] * self.dt + _TIME_EPS, axis=1)
        self.switch = torch.as_tensor(switch, device=self.device)
        self.action_offset = torch.tensor(action_offset, **f64).reshape(1, 2)
        self.action_scale = torch.tensor(action_scale, **f64).reshape(1, 2)
        self.jnt_range = torch.as_tensor(m0.jnt_range[:2], **f64)

        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.goal = torch.zeros(self.n, 2, **f64)
        self.ctrl = torch.zeros(self.n, 2, **f64)  # the command in force (true frame)
        self.obs = torch.zeros(self.n, 6, dtype=torch.float32, device=self.device)
        self.steps = torch.zeros(self.n, dtype=torch.int64, device=self.device)
        self.held = torch.zeros(self.n, dtype=torch.int64, device=self.device)
        self._substep_index = torch.arange(self.substeps, device=self.device)

        self._stack = contextlib.ExitStack()
        if backend == "mujoco":
            if self.device.type != "cpu":
                raise ValueError("the mujoco backend steps on the CPU: use device='cpu' (or backend='warp')")
            threads = available_cores() if threads is None else int(threads)
            pool = self._stack.enter_context(mujoco.rollout.Rollout(nthread=threads if threads > 1 else 0))
            self._state = np.zeros((self.n, mujoco.mj_stateSize(m0, mujoco.mjtState.mjSTATE_FULLPHYSICS)))
            datas = [mujoco.MjData(m0) for _ in range(max(threads, 1))]
            self._stepper = RolloutStepper(world_models, self._state, substeps=self.substeps, pool=pool, datas=datas)
            self._all = np.arange(self.n)
        else:
            self._init_warp(world_models)

    # --- physics ---------------------------------------------------------------------------------

    def _init_warp(self, world_models) -> None:
        from flywheel_pipelines.lib.sim.warp_backend import WarpStepper

        device = f"cuda:{self.device.index or 0}" if self.device.type == "cuda" else "cpu"
        self._stepper = stepper = WarpStepper(world_models, np.zeros((self.n, self.nq)), substeps=self.substeps,
                                              device=device)
        wp, d = stepper.wp, stepper.data
        # Zero-copy torch views of the Warp arrays: resets and controls are torch ops on the same
        # memory; on CUDA the captured period is launched on torch's stream, so no sync is needed.
        self._views = {name: wp.to_torch(getattr(d, name)) for name in ("qpos", "qvel", "ctrl", "qacc_warmstart",
                                                                         "time")}
        self._control_view = wp.to_torch(stepper.control)
        self._out = (wp.to_torch(stepper.qpos_out), wp.to_torch(stepper.qvel_out))
        self._stream = wp.stream_from_torch(torch.cuda.current_stream(self.device)) if self.device.type == "cuda" else None

    def _physics(self, control: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step every world one period under ``control`` (n, substeps, nu); qpos/qvel after each substep."""
        if self.backend == "mujoco":
            qpos, qvel = self._stepper.step(self._all, control.numpy())
            return torch.from_numpy(qpos), torch.from_numpy(qvel)
        stepper = self._stepper
        self._control_view.copy_(control)
        if stepper._graph is not None:
            stepper.wp.capture_launch(stepper._graph, stream=self._stream)
        else:
            with stepper.wp.ScopedDevice(stepper.device):
                stepper._period()
        qpos, qvel = self._out
        return qpos.to(torch.float64), qvel.to(torch.float64)

    def _reset_physics(self, mask: torch.Tensor, q0: torch.Tensor) -> None:
        """Worlds in ``mask`` start over at rest at ``q0`` with control ``q0`` (``ArmSim.reset``)."""
        if self.backend == "mujoco":
            m = mask.numpy()
            self._state[m] = 0.0
            self._state[m, 1:1 + self.nq] = q0.numpy()[m]
            return
        v, col = self._views, mask[:, None]
        v["qpos"].copy_(torch.where(col, q0.to(v["qpos"].dtype), v["qpos"]))
        v["ctrl"].copy_(torch.where(col, q0.to(v["ctrl"].dtype), v["ctrl"]))
        for name in ("qvel", "qacc_warmstart"):
            v[name].masked_fill_(col, 0.0)
        v["time"].masked_fill_(mask, 0.0)

    # --- the task ----------------------------------------------------------------------------------

    def _uniform(self, lo: float, hi: float, shape: tuple[int, ...]) -> torch.Tensor:
        u = torch.rand(shape, generator=self.generator, dtype=torch.float64, device=self.device)
        return lo + (hi - lo) * u

    def _draw_tasks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A start and goal per world, distributed as ``sample_task``'s (see the module docstring)."""
        shape = (self.n, _TASK_CANDIDATES)
        q0 = torch.stack([self._uniform(-1.4, 1.4, shape), self._uniform(0.4, 2.2, shape)], dim=-1)
        radius, angle = self._uniform(0.14, 0.33, shape), self._uniform(-1.4, 1.4, shape)
        goal = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
        distance = torch.linalg.vector_norm(goal - fingertip(q0), dim=-1)
        ok = distance >= _MIN_GOAL_DISTANCE_M
        pick = torch.where(ok.any(dim=1), ok.to(torch.int8).argmax(dim=1), distance.argmax(dim=1))
        rows = torch.arange(self.n, device=self.device)
        return q0[rows, pick], goal[rows, pick]

    def _sample(self, q: torch.Tensor, dq: torch.Tensor) -> torch.Tensor:
        """What the controller sees: a noisy, offset joint sample, and the goal (float32)."""
        noise = torch.randn((self.n, 4), generator=self.generator, dtype=torch.float64, device=self.device)
        pos = q + self.calibration + self.pos_noise * noise[:, :2]
        vel = dq + self.vel_noise * noise[:, 2:]
        return torch.cat([pos, vel, self.goal], dim=1).to(torch.float32)

    def _start(self, mask: torch.Tensor, tasks: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        q0, goal = self._draw_tasks() if tasks is None else tasks
        col = mask[:, None]
        self._reset_physics(mask, q0)
        self.goal = torch.where(col, goal, self.goal)
        self.ctrl = torch.where(col, q0, self.ctrl)
        self.steps.masked_fill_(mask, 0)
        self.held.masked_fill_(mask, 0)
        fresh = self._sample(q0, torch.zeros_like(q0))
        self.obs = torch.where(col, fresh, self.obs)

    def reset(self, tasks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Start every world's episode (``tasks``: (q0, goal), each (n, 2), instead of drawn ones)."""
        if tasks is not None:
            tasks = tuple(torch.as_tensor(t, dtype=torch.float64, device=self.device).reshape(self.n, 2) for t in tasks)
        self._start(torch.ones(self.n, dtype=torch.bool, device=self.device), tasks)
        return self.obs

    def targets(self, action: torch.Tensor) -> torch.Tensor:
        """The joint targets (sensor frame) ``action`` commands from the current observations."""
        a = torch.clamp(action.to(torch.float64), -1.0, 1.0)
        return self.obs[:, :2].to(torch.float64) + self.action_offset + self.action_scale * a

    def step(self, action: torch.Tensor) -> dict[str, torch.Tensor]:
        """Advance every world one control step; finished worlds start their next episode.

        Returns ``obs`` (n, 6), ``reward`` (n,), ``terminated`` (success), ``truncated``,
        ``terminal_obs`` (the last observation of the episode a world just finished; equal to
        ``obs`` elsewhere) and ``error_m`` (the true fingertip error after the step).
        """
        command = self.targets(action) - self.calibration  # the actuator tracks the true angle
        late = self._substep_index[None, :, None] < self.switch[:, None, None]
        control = torch.where(late, self.ctrl[:, None, :], command[:, None, :])
        qpos, qvel = self._physics(control)
        self.ctrl = command
        self.steps += 1
        q_end = qpos[:, -1, :2]
        error = torch.linalg.vector_norm(fingertip(q_end) - self.goal, dim=1)
        inside = error < SUCCESS_RADIUS_M
        self.held = torch.where(inside, self.held + 1, 0)
        success = self.held >= SUCCESS_HOLD_STEPS
        reward = (-10.0 * error + inside.to(torch.float64)).to(torch.float32)
        # The newest 250 Hz sample: taken after the last substep whose global count is a multiple
        # of sensor_every (no sensor delay, see the module docstring).
        done_steps = self.steps * self.substeps
        newest = done_steps - done_steps % self.sensor_every
        at = (newest - (done_steps - self.substeps) - 1).clamp_(0, self.substeps - 1)
        rows = torch.arange(self.n, device=self.device)
        self.obs = self._sample(qpos[rows, at, :2], qvel[rows, at, :2])
        truncated = ~success & (self.steps >= self.max_steps)
        terminal_obs = self.obs
        done = success | truncated
        self._start(done)
        return {"obs": self.obs, "reward": reward, "terminated": success, "truncated": truncated,
                "terminal_obs": terminal_obs, "error_m": error}

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> BatchedReachEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
