"""jaxed: differentiable Bloch-wave dynamical refinement for 3D electron diffraction, in JAX.

The library never changes JAX's precision settings on import; turn on float64 with
``jax.config.update("jax_enable_x64", True)`` before using it for refinement-grade accuracy (the command line does).

One JAX setting *is* changed on import, as a deadlock workaround: CPU async dispatch is turned off (when the CPU
backend has not been started yet). With async dispatch, two jitted programs can run at once, each with a batched
LAPACK ``eigh`` whose batch is parallelised over XLA's intra-op pool; on a 2-core machine each program holds one of
the two pool threads and waits for tasks queued to the same pool, and the refinement hangs at 0 % CPU (seen with
jaxlib 0.10.2 in LM/hybrid runs). Refinement steps last milliseconds to seconds, so synchronous dispatch costs
nothing measurable. ``JAXED_CPU_ASYNC_DISPATCH=1`` keeps JAX's default.
"""
import os as _os

import jax as _jax

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
