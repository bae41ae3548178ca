"""jaxed: differentiable Bloch-wave dynamical refinement for 3D electron diffraction, in JAX.

The library never changes JAX's precision settings on import; turn on float64 with
``jax.config.update("jax_enable_x64", True)`` before using it for refinement-grade accuracy (the command line does).

One JAX setting *is* changed on import, as a deadlock workaround: CPU async dispatch is turned off (when the CPU
backend has not been started yet). With async dispatch, two jitted programs can run at once, each with a batched
LAPACK ``eigh`` whose batch is parallelised over XLA's intra-op pool; on a 2-core machine each program holds one of
the two pool threads and waits for tasks queued to the same pool, and the refinement hangs at 0 % CPU (seen with
jaxlib 0.10.2 in LM/hybrid runs). Refinement steps last milliseconds to seconds, so synchronous dispatch costs
nothing measurable. ``JAXED_CPU_ASYNC_DISPATCH=1`` keeps JAX's default.

One environment default is set on import, for speed: ``PJRT_NPROC`` (the CPU client's intra-op thread count) becomes
twice the number of cores when it is unset. With one thread per core, a refinement step's program runs its
``eigh`` thunk on one of the pool's threads and the ``eigh`` batch gets only the others (measured on 2 cores: the
``eigh`` inside the step ran at one-core speed); with two threads per core the batch keeps every core busy. The
99-frame quartz step went 1.09 → 0.86 s (float64) and 0.75 → 0.56–0.60 s (complex64); docs/SPEED.md. It only takes
effect when jaxed is imported before the CPU backend starts (a set ``PJRT_NPROC`` is never changed).
"""
import os as _os

if "PJRT_NPROC" not in _os.environ:
    _cores = len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity") else (_os.cpu_count() or 1)
    _os.environ["PJRT_NPROC"] = str(2 * _cores)

import jax as _jax  # noqa: E402

if _os.environ.get("JAXED_CPU_ASYNC_DISPATCH", "0") != "1":
    _jax.config.update("jax_cpu_enable_async_dispatch", False)
from jaxed.bloch import BlochSettings, simulate
from jaxed.crystal import AtomParams, Crystal, load_structure, write_structure_cif
from jaxed.errors import JaxedInputError
from jaxed.experiment import Experiment, ExperimentSettings, integrated_intensities, prepare_experiment
from jaxed.geometry import BeamSet, make_beam_set, select_beams, zone_axis_rotation
from jaxed.pets import PetsData, read_pets, write_pets
from jaxed.potential import potential_coefficients, structure_factors
from jaxed.refine import RefineConfig, Refinement, run_refinement
from jaxed.thickness import make_thickness_model

__version__ = "0.1.0"

__all__ = [
    "AtomParams",
    "BeamSet",
    "BlochSettings",
    "Crystal",
    "Experiment",
    "ExperimentSettings",
    "JaxedInputError",
    "PetsData",
    "RefineConfig",
    "Refinement",
    "integrated_intensities",
    "load_structure",
    "make_beam_set",
    "make_thickness_model",
    "potential_coefficients",
    "prepare_experiment",
    "read_pets",
    "run_refinement",
    "select_beams",
    "simulate",
    "structure_factors",
    "write_pets",
    "write_structure_cif",
    "zone_axis_rotation",
]
