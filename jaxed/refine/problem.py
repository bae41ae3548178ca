"""A refinement problem as pure functions: the model, the observations (work and R_free sets) and the loss.

    model = make_model(crystal, atoms, experiment, bloch, config)      # parameters → intensities
    obs, free = make_observations(experiment, crystal, config)         # what the optimiser sees, what it does not
    loss = make_loss(model, obs, config)                               # loss(params, key=None) → wR_all

The parameters are one pytree ``{"structure": …, "thickness": …[, "orientation": (n_frames, n_angles) [rad]]}``:
the constrained structure parameterisation (jaxed.model.parameters), the thickness model's parameters
(jaxed.model.thickness) and, with ``config.refine_orientation``, per-frame tilt corrections. The loss is wR_all with
the per-frame scales eliminated in closed form at every evaluation (jaxed.refine.objective). Everything that decides
an array's shape (frames per device step, the free set) is decided here, on the host, before tracing.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxed.errors import JaxedInputError
from jaxed.model import batching
from jaxed.model.experiment import Experiment, integrated_intensities, take_frames
from jaxed.model.parameters import StructureModel, make_structure_model
from jaxed.model.thickness import ThicknessModel, make_thickness_model
from jaxed.physics.bloch import BlochSettings
from jaxed.physics.crystal import AtomParams, Crystal
from jaxed.refine import objective
from jaxed.refine.checkpoints import strong

__all__ = ["Model", "make_model", "make_observations", "make_loss", "make_loss_and_intensities",
           "count_parameters", "thickness_options"]


class Model(NamedTuple):
    """The forward model of a refinement: parameters → unscaled intensities (built by :func:`make_model`).

    Data (static, host-side):
        crystal, experiment, bloch: the structure's symmetry and cell, the prepared data, the physics settings.
        structure: the structure parameterisation (``structure.atoms(params["structure"])``).
        thickness: the thickness model (``thickness.apply(params["thickness"], theta)`` [Å]).
        frames_per_batch: frames per device step of the forward model (``lax.map`` over chunks of frames).
    Functions (pure, jit/grad friendly):
        init(key) -> params: the starting parameters (explicit dtypes; ``key`` seeds a thickness network).
        atoms(params) -> AtomParams of the ASU.
        frame_thickness(params) -> (n_frames,) [Å], the thickness model's mean.
        intensities(params) -> (n_frames, n_refl) unscaled calculated intensities, jitted (one compiled program).
    """

    crystal: Crystal
    experiment: Experiment
    bloch: BlochSettings
    structure: StructureModel
    thickness: ThicknessModel
    frames_per_batch: int
    init: Callable
    atoms: Callable
    frame_thickness: Callable
    intensities: Callable


def thickness_options(config) -> dict:
    """Keyword arguments of :func:`jaxed.model.thickness.make_thickness_model` for ``config``'s thickness model."""
    name = config.thickness_model
    if name == "kinematic":
        return {}
    if name == "nn":
        t_min, t_max = config.thickness_range
        return {"t_init": config.thickness_init, "t_min": t_min, "t_max": t_max, "prior": config.nn_prior}
    return {"t0": config.thickness_init}


def make_model(crystal: Crystal, atoms: AtomParams, experiment: Experiment, bloch: BlochSettings, config, *,
               thickness: ThicknessModel | None = None) -> Model:
    """The forward model of ``config`` (a :class:`jaxed.refine.optimize.RefineConfig`) on ``experiment``.

    Args:
        crystal, atoms: the starting structure (``atoms`` also fixes the parameters' precision).
        experiment: prepared data (jaxed.model.experiment.prepare_experiment).
        bloch: physics settings.
        config: uses thickness_model / thickness_init / thickness_range / nn_prior, aniso, refine_occupancy,
            refine_orientation / orientation_angles, frames_per_batch and thickness_samples (memory per frame).
        thickness: a thickness model to use instead of the one ``config`` names (e.g. a network of another size).
    """
    if config.refine_orientation and config.orientation_angles not in (2, 3):
        raise JaxedInputError(f"orientation_angles = {config.orientation_angles}: expected 2 or 3")
    structure, p_struct = make_structure_model(crystal, atoms, aniso=config.aniso,
                                               refine_occupancy=config.refine_occupancy)
    thickness = thickness if thickness is not None else make_thickness_model(config.thickness_model,
                                                                            **thickness_options(config))
    # frames per device step: all of them when the memory model says they fit (one vmapped call), else chunks
    frames_per_batch = config.frames_per_batch or batching.experiment_frames_per_batch(
        experiment, float64=jnp.asarray(atoms.frac).dtype == jnp.float64, absorption=bloch.absorbing,
        n_thickness=config.thickness_samples)
    theta = jnp.asarray(experiment.theta)

    def init(key):
        params = {"structure": p_struct, "thickness": thickness.init(key)}
        if config.refine_orientation:
            params["orientation"] = jnp.zeros((experiment.n_frames, config.orientation_angles))
        return strong(params)

    def frame_atoms(params):
        return structure.atoms(params["structure"])

    def frame_thickness(params):
        return thickness.apply(params["thickness"], theta)

    @jax.jit
    def intensities(params):
        return integrated_intensities(frame_atoms(params), crystal, experiment, frame_thickness(params), bloch,
                                      params.get("orientation"), frames_per_batch=frames_per_batch)

    return Model(crystal=crystal, experiment=experiment, bloch=bloch, structure=structure, thickness=thickness,
                 frames_per_batch=int(frames_per_batch), init=init, atoms=frame_atoms,
                 frame_thickness=frame_thickness, intensities=intensities)


def make_observations(experiment: Experiment, crystal: Crystal, config) -> tuple[objective.Observations,
                                                                                  objective.Observations | None]:
    """(work set, R_free set or None): the observations the optimiser sees and those held out of it.

    With ``config.r_free`` > 0 a reproducible fraction (``r_free_seed``) of the unique reflections (symmetry
    equivalents under the crystal's rotations and Friedel mates together) or, with ``r_free_mode='frames'``, of
    the frames is moved from the work set's mask to the free set's (jaxed.refine.objective.free_set_mask).
    """
    i_obs, sigma = jnp.asarray(experiment.i_obs), jnp.asarray(experiment.sigma)
    if not config.r_free > 0:
        return objective.prepare_observations(i_obs, sigma, jnp.asarray(experiment.refl_mask)), None
    mask = np.asarray(experiment.refl_mask)
    free = objective.free_set_mask(np.asarray(experiment.refl_hkl), mask, config.r_free, seed=config.r_free_seed,
                                   by=config.r_free_mode, rotations=np.asarray(crystal.rotations))
    return (objective.prepare_observations(i_obs, sigma, jnp.asarray(mask & ~free)),
            objective.prepare_observations(i_obs, sigma, jnp.asarray(mask & free)))


def make_loss_and_intensities(model: Model, obs: objective.Observations, config) -> Callable:
    """``f(params, key=None) -> (loss, intensities)``: :func:`make_loss`'s loss and the unscaled intensities
    (n_frames, n_refl) it was computed from — those of :attr:`Model.intensities` when the loss is full batch at the
    mean thickness (no ``key``, or a config without minibatch / thickness draws), NaN otherwise."""
    exp_all = model.experiment
    stochastic_frames = bool(config.minibatch and config.minibatch < exp_all.n_frames)

    def fn(params, key=None):
        exp, o, tilts = exp_all, obs, params.get("orientation")
        if key is not None and stochastic_frames:
            key, sub = jax.random.split(key)
            idx = jax.random.choice(sub, exp.n_frames, (config.minibatch,), replace=False)
            exp, o = take_frames(exp, idx), take_frames(o, idx)
            tilts = None if tilts is None else tilts[idx]
        theta = jnp.asarray(exp.theta)
        if key is not None and config.thickness_samples > 1:
            thickness = model.thickness.apply(params["thickness"], theta, key=key,
                                              n_samples=config.thickness_samples).T  # (n_frames, n_samples)
        else:
            thickness = model.thickness.apply(params["thickness"], theta)
        i_calc = integrated_intensities(model.atoms(params), model.crystal, exp, thickness, model.bloch, tilts,
                                        frames_per_batch=model.frames_per_batch)
        value = objective.loss(i_calc, o, kind=config.residual, per_frame_mean=config.per_frame_mean,
                               frame_loss=config.frame_loss)
        if exp is not exp_all or thickness.ndim != 1:
            i_calc = jnp.full(np.shape(exp_all.i_obs), jnp.nan, dtype=value.dtype)
        return value, i_calc

    return fn


def make_loss(model: Model, obs: objective.Observations, config) -> Callable:
    """``loss(params, key=None) -> ()``: the refinement objective, wR_all of ``obs`` (``config.residual``: the
    paper's or Jana's form; ``per_frame_mean``: the RMS or mean of the per-frame values) with closed-form scales.

    With ``key`` and ``config.minibatch`` the loss is over a random minibatch of frames; with ``key`` and
    ``config.thickness_samples`` > 1 each frame's intensities are averaged over reparameterised thickness draws.
    """
    both = make_loss_and_intensities(model, obs, config)
    return lambda params, key=None: both(params, key)[0]


def count_parameters(params: dict, n_frames: int) -> int:
    """Parameters for the GoF and the CIF: structure and orientation parameters, one scale per frame, and the
    thickness model's parameters but at most one per frame (a ThicknessNN's weights are not independent degrees of
    freedom)."""
    def size(tree):
        return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))

    return (size(params["structure"]) + size(params.get("orientation", {})) + n_frames
            + min(size(params["thickness"]), n_frames))
