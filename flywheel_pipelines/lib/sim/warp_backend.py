"""MuJoCo Warp physics for the batched evaluator: one world per episode, stepped on a CUDA GPU
(or, slowly, on the CPU, which is how the tests run it).

Only the physics moves here. :class:`WarpStepper` has the same job as the CPU stepper in
``batched.py``: advance every running episode by one control period of ``substeps`` physics
steps under a given open-loop control and hand back the joint positions and velocities after
every substep. Everything layered on top (latency, noisy delayed samples, torques, success,
the result rows) stays in ``batched.py`` and is shared by both backends, so scenarios, seeds and
result schema are the same by construction.

Per-robot physics (gains, damping, joint friction, scaled masses and what ``mj_setConst``
derives from them) become per-world model fields: every batchable ``mjwarp.Model`` field that
differs between the scenarios' ``MjModel``s is given one row per world
(``mjwarp.put_model(batch_sizes=...)``).

Precision: MuJoCo Warp computes in float32, the CPU path in float64, so trajectories agree to
float32 accuracy, not bit for bit (docs/simulation.md gives the tolerance the tests hold).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import mujoco
import numpy as np

DEVICE_AUTO = "auto"


def _import_warp():
    try:
        import warp as wp

        wp.config.log_level = wp.LOG_WARNING  # before warp initializes: no banner, no per-module load lines
        import mujoco_warp as mjw
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the warp simulation backend needs the mujoco-warp and warp-lang packages") from exc
    wp.init()
    return wp, mjw


def cuda_available() -> bool:
    """Whether Warp sees a CUDA device (False when warp is not installed)."""
    import ctypes.util
    import os

    # No NVIDIA driver on this host: say so without initializing Warp, which would only print
    # "Could not find or load the NVIDIA CUDA driver" (in every CPU evaluation, the demo's too).
    if not os.path.exists("/dev/nvidiactl") and ctypes.util.find_library("cuda") is None:
        return False
    try:
        wp, _ = _import_warp()
    except RuntimeError:
        return False
    return wp.get_cuda_device_count() > 0


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda:0`` when Warp sees a GPU, else ``cpu``; anything else as given."""
    if device == DEVICE_AUTO:
        return "cuda:0" if cuda_available() else "cpu"
    return device


def _batched_fields(models: Sequence[mujoco.MjModel], template: mujoco.MjModel, wm) -> dict[str, np.ndarray]:
    """Model fields that differ between ``models``: name -> (n_models, ...) stacked host values.

    Only fields whose ``mjwarp.Model`` spec is batchable (leading ``*``) and that are copied from
    the ``MjModel`` attribute of the same name qualify; a differing field that is not both is
    refused rather than silently shared by every world.
    """
    from mujoco_warp._src import warp_util

    out = {}
    for f in dataclasses.fields(type(wm)):
        if not warp_util.is_array_spec(f.type) or not hasattr(template, f.name):
            continue
        values = [np.asarray(getattr(m, f.name)) for m in models]
        if all(np.array_equal(values[0], v) for v in values[1:]):
            continue
        shape = getattr(f.type, "shape", ())
        if not shape or shape[0] != "*":
            raise NotImplementedError(f"per-robot physics changes {f.name!r}, which MuJoCo Warp cannot batch")
        current = getattr(wm, f.name).numpy()
        if current.size != values[0].size or not np.allclose(current.reshape(-1), np.asarray(
                getattr(template, f.name), dtype=current.dtype).reshape(-1)):
            raise NotImplementedError(f"{f.name!r} is transformed by put_model; cannot batch it per robot")
        out[f.name] = np.stack([v.astype(current.dtype).reshape(current.shape[1:]) for v in values])
    return out


class WarpStepper:
    """``n`` worlds, one per episode, each with its own model parameters.

    Args:
        models: one ``MjModel`` per episode (shared objects for equal physics are fine); all must
            have the same structure, only parameter values may differ.
        q0: (n, nq) initial joint positions; the initial control equals them (as ``ArmSim.reset``).
        substeps: physics steps per call of :meth:`step`.
        device: ``cpu``, ``cuda:<i>`` or ``auto``.
    """

    def __init__(self, models: Sequence[mujoco.MjModel], q0: np.ndarray, *, substeps: int, device: str = DEVICE_AUTO):
        wp, mjw = _import_warp()
        self.wp, self.mjw = wp, mjw
        self.device = resolve_device(device)
        self.n, self.substeps = len(models), int(substeps)
        distinct: dict[int, int] = {}
        world_model = np.array([distinct.setdefault(id(m), len(distinct)) for m in models])
        uniques = list({id(m): m for m in models}.values())
        template = copy.copy(uniques[0])  # a deep copy (mj_copyModel)
        # Structure-dependent sizes (friction rows, say) are taken from the template: give it
        # every kind of constraint any world has.
        template.dof_frictionloss[:] = np.max([m.dof_frictionloss for m in uniques], axis=0)
        self.nq, self.nv, self.nu = template.nq, template.nv, template.nu
        with wp.ScopedDevice(self.device):
            probe = mjw.put_model(template)
            per_model = _batched_fields(uniques, template, probe) if len(uniques) > 1 else {}
            self.model = mjw.put_model(template, batch_sizes={name: self.n for name in per_model})
            for name, stacked in per_model.items():
                getattr(self.model, name).assign(np.ascontiguousarray(stacked[world_model]))
            njmax = 2 * (template.nv + template.njnt) + 4  # friction + limits per dof, with room
            self.data = mjw.make_data(template, nworld=self.n, njmax=njmax)
            self.control = wp.zeros((self.n, self.substeps, self.nu), dtype=float)
            self.qpos_out = wp.zeros((self.n, self.substeps, self.nq), dtype=float)
            self.qvel_out = wp.zeros((self.n, self.substeps, self.nv), dtype=float)
            self._control_host = np.zeros((self.n, self.substeps, self.nu), dtype=np.float32)
            mjw.step(self.model, self.data)  # compile and load every kernel before any capture
            mjw.reset_data(self.model, self.data)
            q0 = np.asarray(q0, dtype=np.float32)
            self.data.qpos.assign(q0)
            self.data.ctrl.assign(q0[:, :self.nu])
            self._graph = None
            self._period()  # load the small kernels, then undo their effect on the state
            mjw.reset_data(self.model, self.data)
            self.data.qpos.assign(q0)
            self.data.ctrl.assign(q0[:, :self.nu])
            wp.synchronize_device(self.device)
            if wp.get_device(self.device).is_cuda:
                with wp.ScopedCapture(device=self.device) as capture:
                    self._period()
                self._graph = capture.graph

    def _period(self) -> None:
        wp, mjw, d = self.wp, self.mjw, self.data
        set_ctrl, record = _kernel_pair()
        for k in range(self.substeps):
            wp.launch(set_ctrl, dim=(self.n, self.nu), inputs=[self.control, k], outputs=[d.ctrl])
            mjw.step(self.model, d)
            wp.launch(record, dim=(self.n, max(self.nq, self.nv)), inputs=[d.qpos, d.qvel, k],
                      outputs=[self.qpos_out, self.qvel_out])

    def step(self, active: np.ndarray, control: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step every world ``substeps`` times; ``control`` (len(active), substeps, nu) drives the
        worlds ``active``, the others hold their last control (their results are not read).

        Returns qpos (a, substeps, nq) and qvel (a, substeps, nv) after each substep, float64.
        """
        wp = self.wp
        host = self._control_host
        host[:] = host[:, -1:]  # finished worlds keep their last command
        host[active] = control
        self.control.assign(host)
        if self._graph is not None:
            wp.capture_launch(self._graph)
        else:
            with wp.ScopedDevice(self.device):
                self._period()
        qpos, qvel = self.qpos_out.numpy(), self.qvel_out.numpy()
        return qpos[active].astype(np.float64), qvel[active].astype(np.float64)


_KERNELS: list = []


def _kernel_pair():
    """The two small kernels of a control period, defined on first use (importing this module
    must not import warp)."""
    if _KERNELS:
        return _KERNELS
    wp, _ = _import_warp()

    @wp.kernel
    def set_ctrl(control: wp.array3d(dtype=float), k: int, ctrl: wp.array2d(dtype=float)):
        w, u = wp.tid()
        ctrl[w, u] = control[w, k, u]

    @wp.kernel
    def record(qpos: wp.array2d(dtype=float), qvel: wp.array2d(dtype=float), k: int,
               qpos_out: wp.array3d(dtype=float), qvel_out: wp.array3d(dtype=float)):
        w, i = wp.tid()
        if i < qpos.shape[1]:
            qpos_out[w, k, i] = qpos[w, i]
        if i < qvel.shape[1]:
            qvel_out[w, k, i] = qvel[w, i]

    _KERNELS.extend([set_ctrl, record])
    return _KERNELS
