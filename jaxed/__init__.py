"""jaxed: differentiable Bloch-wave dynamical refinement for 3D electron diffraction, in JAX.

Importing jaxed changes no global state. Turn on float64 with ``jax.config.update("jax_enable_x64", True)`` for
refinement-grade accuracy, and call :func:`jaxed.configure_cpu` before the first computation for the CPU thread
settings the command line uses (docs/SPEED.md).

What a script needs, in the order it uses it:

* load: :func:`load_structure`, :func:`read_pets`, :func:`prepare_experiment` (or :func:`load_problem`, which does
  all three with the checks of the command line), :func:`demo_files` (the shipped demo data);
* the model: :func:`make_structure_model`, :func:`make_thickness_model`, :func:`make_model`,
  :func:`make_observations` (work and R_free sets), :func:`make_loss`;
* optimise: :func:`make_optimizer`, :func:`make_step` / :func:`init_state` (or any optax loop over ``jax.value_and_grad``
  of the loss), :func:`make_least_squares` / :func:`least_squares` (Gauss–Newton / LM), :class:`RefineConfig` with
  :func:`run_refinement` (checkpoints, every optimiser), :func:`standard_uncertainties`;
* judge and write: :func:`summary` (R factors), :func:`asu_rmsd`, :func:`adp_frobenius`, :func:`thickness_errors`,
  :func:`synthesize` / :func:`random_start` (synthetic data and starts), :func:`write_refined_cif`,
  :func:`write_report`, :func:`write_markdown_report`.
"""
from jaxed.app.demo import demo_files
from jaxed.app.report import write_markdown_report, write_refined_cif, write_report
from jaxed.app.workflow import load_problem
from jaxed.data.pets import PetsData, read_pets, write_pets
from jaxed.errors import JaxedInputError
from jaxed.model.experiment import Experiment, ExperimentSettings, integrated_intensities, prepare_experiment
from jaxed.model.parameters import StructureModel, make_structure_model
from jaxed.model.synth import random_start, synthesize, thickness_profile
from jaxed.model.thickness import make_thickness_model
from jaxed.physics.bloch import BlochSettings, simulate
from jaxed.physics.crystal import (AtomParams, Crystal, format_su, load_structure, u_equivalent,
                                   write_structure_cif)
from jaxed.physics.geometry import BeamSet, make_beam_set, select_beams, zone_axis_rotation
from jaxed.physics.potential import potential_coefficients, structure_factors
from jaxed.refine.checkpoints import RefinementDiverged, load_params, save_params
from jaxed.refine.lsq import LSQSettings, least_squares, make_least_squares
from jaxed.refine.metrics import adp_frobenius, asu_rmsd, thickness_errors
from jaxed.refine.objective import Observations, summary
from jaxed.refine.optimize import RefineConfig, Refinement, run_refinement
from jaxed.refine.problem import Model, make_loss, make_model, make_observations
from jaxed.refine.step import StepInfo, StepState, init_state, make_optimizer, make_step
from jaxed.refine.uncertainty import standard_uncertainties
from jaxed.runtime import configure_cpu

__version__ = "0.1.0"

__all__ = [
    "AtomParams",
    "BeamSet",
    "BlochSettings",
    "Crystal",
    "Experiment",
    "ExperimentSettings",
    "JaxedInputError",
    "LSQSettings",
    "Model",
    "Observations",
    "PetsData",
    "RefineConfig",
    "Refinement",
    "RefinementDiverged",
    "StepInfo",
    "StepState",
    "StructureModel",
    "adp_frobenius",
    "asu_rmsd",
    "configure_cpu",
    "demo_files",
    "format_su",
    "init_state",
    "integrated_intensities",
    "least_squares",
    "load_params",
    "load_problem",
    "load_structure",
    "make_beam_set",
    "make_least_squares",
    "make_loss",
    "make_model",
    "make_observations",
    "make_optimizer",
    "make_step",
    "make_structure_model",
    "make_thickness_model",
    "potential_coefficients",
    "prepare_experiment",
    "random_start",
    "read_pets",
    "run_refinement",
    "save_params",
    "select_beams",
    "simulate",
    "standard_uncertainties",
    "structure_factors",
    "summary",
    "synthesize",
    "thickness_errors",
    "thickness_profile",
    "u_equivalent",
    "write_markdown_report",
    "write_pets",
    "write_refined_cif",
    "write_report",
    "write_structure_cif",
    "zone_axis_rotation",
]
