"""jaxed: differentiable Bloch-wave dynamical refinement for 3D electron diffraction, in JAX.

The library never changes JAX's precision settings on import; turn on float64 with
``jax.config.update("jax_enable_x64", True)`` before using it for refinement-grade accuracy (the command line does).
"""
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
