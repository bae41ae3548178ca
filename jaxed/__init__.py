"""jaxed: differentiable Bloch-wave dynamical refinement for 3D electron diffraction, in JAX.

Importing jaxed changes no global state. Turn on float64 with ``jax.config.update("jax_enable_x64", True)`` for
refinement-grade accuracy, and call :func:`jaxed.configure_cpu` before the first computation for the CPU thread
settings the command line uses (docs/SPEED.md).
"""
from jaxed.physics.bloch import BlochSettings, simulate
from jaxed.physics.crystal import AtomParams, Crystal, load_structure, write_structure_cif
from jaxed.errors import JaxedInputError
from jaxed.runtime import configure_cpu
from jaxed.model.experiment import Experiment, ExperimentSettings, integrated_intensities, prepare_experiment
from jaxed.physics.geometry import BeamSet, make_beam_set, select_beams, zone_axis_rotation
from jaxed.data.pets import PetsData, read_pets, write_pets
from jaxed.physics.potential import potential_coefficients, structure_factors
from jaxed.refine.optimize import RefineConfig, Refinement, run_refinement
from jaxed.model.thickness import make_thickness_model

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
    "configure_cpu",
    "write_structure_cif",
    "zone_axis_rotation",
]
