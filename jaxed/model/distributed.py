"""Frames sharded over devices: data parallelism of the forward model and its gradient.

Every frame is independent until the loss sums over reflections, so the frames are the natural axis to split:

* :func:`frame_mesh` — a 1-D ``jax.sharding.Mesh`` with axis ``"frames"`` over the devices (all local devices, or
  all devices of every process after :func:`initialize`);
* :func:`shard_experiment` — pads the frames to a multiple of the device count (padding frames have no reflection:
  they add nothing to the loss or the gradient) and places every per-frame array with
  ``NamedSharding(mesh, P("frames"))``; the small shared tables (U_{g−h} indices) are replicated;
* :func:`replicate` — parameters (and optimiser state) on every device, ``NamedSharding(mesh, P())``.

A :class:`jaxed.refine.optimize.Refinement` built on a sharded experiment needs nothing else: under ``jit`` XLA's SPMD
partitioner runs each device's frames locally (the ``vmap`` over frames is split along the sharded axis; batched
``eigh`` is partitioned along its batch dimension) and inserts the all-reduce of the sums of the loss and of the
gradient, which come back replicated. On CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` (set before
JAX is imported) gives K host devices, so that the cores work on different frames at once; also set
``PJRT_NPROC`` ≥ 2K (the CPU client's thread count): with its default of one thread per core, K devices on fewer
busy cores can deadlock in the in-process all-reduce (docs/SPEED.md, "Memory model", notes).

Multi-host: call :func:`initialize` (a thin wrapper of ``jax.distributed.initialize``) at the start of every process,
then build the mesh with ``frame_mesh()``; the arrays are created from the same host data on every process.

Determinism: on CPU, results are bitwise reproducible for a fixed seed and device count (tests/test_sharding.py). On
GPU, reductions may use atomics; for bitwise-reproducible runs set
``XLA_FLAGS=--xla_gpu_deterministic_ops=true --xla_gpu_exclude_nondeterministic_ops=true`` (some slowdown) and keep
the device count fixed (the all-reduce order depends on it). Results across different device counts agree to
rounding (float64: ~1e-13 relative).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxed.model.selection import Experiment
from jaxed.physics.geometry import BeamSet

__all__ = ["initialize", "frame_mesh", "shard_experiment", "replicate", "FRAMES"]

FRAMES = "frames"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, **kwargs) -> None:
    """Multi-host start-up (every process calls it first); arguments as ``jax.distributed.initialize``.
    On managed clusters (SLURM, Open MPI, TPU pods) the arguments can be omitted and are auto-detected."""
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **kwargs)


def frame_mesh(devices=None) -> Mesh:
    """1-D mesh over ``devices`` (default: ``jax.devices()``, every device of every process) with axis "frames"."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (FRAMES,))


def _pad_frames(x: np.ndarray, n_pad: int, zero: bool) -> np.ndarray:
    if n_pad == 0:
        return x
    filler = np.zeros_like(x[-1:]) if zero else x[-1:]
    return np.concatenate([x, np.repeat(filler, n_pad, axis=0)], axis=0)


def shard_experiment(experiment: Experiment, mesh: Mesh) -> Experiment:
    """The experiment with its frames split over ``mesh`` (padded to a multiple of the device count).

    Padding frames copy the last frame's geometry and have ``refl_mask`` False everywhere (no reflection): the loss,
    its gradient and the R factors are those of the real frames. ``frame_ids`` keeps the real frames only.
    """
    n_dev = mesh.devices.size
    n = experiment.n_frames
    n_pad = (-n) % n_dev
    frames = NamedSharding(mesh, P(FRAMES))
    rep = NamedSharding(mesh, P())

    def put(x, zero=False):
        return jax.device_put(_pad_frames(np.asarray(x), n_pad, zero), frames)

    b = experiment.beams
    beams = BeamSet(hkl=put(b.hkl), mask=put(b.mask), coupling=put(b.coupling),
                    hkl_unique=jax.device_put(np.asarray(b.hkl_unique), rep))
    return dataclasses.replace(
        experiment, beams=beams, base_orientation=put(experiment.base_orientation),
        sample_rotations=put(experiment.sample_rotations), theta=put(experiment.theta),
        refl_beam=put(experiment.refl_beam), refl_hkl=put(experiment.refl_hkl), i_obs=put(experiment.i_obs, True),
        sigma=put(np.where(np.asarray(experiment.refl_mask), experiment.sigma, 1.0)),
        refl_mask=put(experiment.refl_mask, True),
        sample_weights=None if experiment.sample_weights is None else put(experiment.sample_weights),
        sample_beams=None if experiment.sample_beams is None else put(experiment.sample_beams),
        sample_beam_mask=None if experiment.sample_beam_mask is None else put(experiment.sample_beam_mask))


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` on every device of ``mesh`` (parameters, optimiser state)."""
    rep = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda x: jax.device_put(jnp.asarray(x), rep), tree)
