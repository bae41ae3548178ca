"""Joint refinement: the settings (:class:`RefineConfig`), a convenience bundle of the problem (:class:`Refinement`)
and the driver that runs any optimiser with checkpoints (:func:`run_refinement`).

The pieces are pure factories elsewhere in jaxed.refine: the model, observations and loss in
:mod:`jaxed.refine.problem`, Adam / L-BFGS and their step in :mod:`jaxed.refine.step`, Gauss–Newton / LM in
:mod:`jaxed.refine.lsq`, checkpoints in :mod:`jaxed.refine.checkpoints`. Work is never lost: checkpoints every N
steps and at the end, ``resume=True`` continues a killed run, and a non-finite loss or gradient stops the run with a
message while the last good checkpoint stays on disk.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import optax

from jaxed.errors import JaxedInputError
from jaxed.model import batching
from jaxed.model.experiment import Experiment
from jaxed.model.thickness import ThicknessModel
from jaxed.physics.bloch import BlochSettings
from jaxed.physics.crystal import AtomParams, Crystal
from jaxed.refine import objective
from jaxed.refine.checkpoints import (RefinementDiverged, has_checkpoint, load_best, load_checkpoint, load_params,
                                     save_checkpoint, save_params)
from jaxed.refine.lsq import run_least_squares
from jaxed.refine.problem import make_loss, make_loss_and_intensities, make_model, make_observations
from jaxed.refine.step import StepState, init_state, lbfgs_units, make_optimizer, make_step
from jaxed.settings import field_default, setting_of_field

__all__ = ["RefineConfig", "Refinement", "RefinementDiverged", "run_refinement", "load_params", "save_params"]


OPTIMIZERS = setting_of_field("RefineConfig.optimizer").choices  # from jaxed.settings


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Settings of a refinement (static).

    Attributes:
        thickness_model: 'nn' | 'single' | 'kinematic' | 'plate' | 'tilt' | 'constant'.
        thickness_init: starting thickness [Å]; thickness_range: (t_min, t_max) for ThicknessNN [Å].
        nn_prior: ThicknessNN with the learnable quadratic prior.
        optimizer: 'adam' or 'lbfgs'.  epochs: optimiser steps.  lr: Adam learning rate (all groups).
        lr_groups: per-group learning rates, e.g. (("thickness", 0.02),); 0 freezes a group.
        lbfgs_metric: 'rates' — L-BFGS works in each group's units of its rate (lr_groups / lr: x = p / rate, a
            fixed diagonal preconditioner, so tilts in rad and shifts in Å are no longer one Euclidean ball), and
            its first trial step has the length of Adam's first step, √(free parameters) in those units; a 0 rate
            freezes the group. 'identity' — optax's L-BFGS as it is (the first trial step has unit length in the
            raw parameters; docs/OPTIMIZERS.md).
        lr_schedule: 'constant' or 'cosine' (cosine decay to 5 % of each rate over ``epochs``; damps Adam's
            end-of-run oscillations).
        lr_warmup: Adam steps over which every rate ramps up linearly from 1/lr_warmup of itself (0: none). Its first
            steps move every parameter by about its full rate whatever the gradient's size; a run that starts from
            a refined model (``load_params``) otherwise climbs above its start before it descends again.
        refine_orientation: per-frame tilt corrections (two angles ⟂ beam) refined by gradient.
        orientation_angles: 2 (the tilts ⟂ beam) or 3 (also the rotation about the beam, which moves the rocking
            axis relative to the crystal and so changes the rocking-curve integration; PETS.md β errors).
        aniso: 'as-given' | 'all' | 'none'.  refine_occupancy.
        residual: 'paper' (the reference paper's wR_all) or 'jana' (|F|-based wR_all).
        per_frame_mean: minimise the root mean square of per-frame wR_all (every frame counts equally) instead of
            the wR_all of all reflections together.
        frame_loss: with per_frame_mean, 'rms' (sqrt of the mean of wR_f²) or 'mean' (the mean of wR_f: the
            published aggregate, which is what diffBloch minimises).
        minibatch: frames per Adam step, drawn without replacement each step (0: full batch).
        thickness_samples: ThicknessNN reparameterised draws per frame whose intensities are averaged (1: the mean).
        checkpoint_every: steps between checkpoints (0: only at the end).  seed: PRNG seed.
        keep_best: return the parameters of the lowest loss met — the start of any step, or the end (one more
            forward evaluation) — instead of the last step's (Adam and L-BFGS with a full-batch loss; a minibatch or
            thickness draws make the loss noisy, and the last step is returned). A rate too high for the end of a
            run (a continuation restarted without warm-up) then cannot leave the result above a point it passed.
        optimizer 'gn' / 'lm': Gauss–Newton / Levenberg–Marquardt on the weighted residual vector (jaxed.refine.lsq),
            ``epochs`` = the most iterations (stops earlier on relative change < lsq_ftol); 'hybrid': cycles of
            ``hybrid_adam_steps`` Adam steps on the thickness model and one LM step on everything else.
        lsq_jacobian: 'auto' | 'fwd' | 'rev' | 'cg' (matrix-free).  lsq_damping: initial LM λ.  lsq_ftol.
        r_free: fraction of the reflections (unique hkl, symmetry equivalents and Friedel mates together) or, with
            r_free_mode='frames', of the frames held out of the optimiser; R_free is reported beside R_obs/wR_all.
        r_free_seed: seed of that (reproducible) choice.
    """

    thickness_model: str = field_default("RefineConfig.thickness_model")
    thickness_init: float = field_default("RefineConfig.thickness_init")
    thickness_range: tuple = field_default("RefineConfig.thickness_range")
    nn_prior: bool = field_default("RefineConfig.nn_prior")
    optimizer: str = field_default("RefineConfig.optimizer")
    epochs: int = field_default("RefineConfig.epochs")
    lr: float = field_default("RefineConfig.lr")
    lr_groups: tuple = field_default("RefineConfig.lr_groups")
    lbfgs_metric: str = field_default("RefineConfig.lbfgs_metric")
    lr_schedule: str = field_default("RefineConfig.lr_schedule")
    lr_warmup: int = field_default("RefineConfig.lr_warmup")
    refine_orientation: bool = field_default("RefineConfig.refine_orientation")
    orientation_angles: int = field_default("RefineConfig.orientation_angles")
    aniso: str = field_default("RefineConfig.aniso")
    refine_occupancy: bool = field_default("RefineConfig.refine_occupancy")
    residual: str = field_default("RefineConfig.residual")
    per_frame_mean: bool = field_default("RefineConfig.per_frame_mean")
    frame_loss: str = field_default("RefineConfig.frame_loss")
    minibatch: int = field_default("RefineConfig.minibatch")
    thickness_samples: int = field_default("RefineConfig.thickness_samples")
    frames_per_batch: int = field_default("RefineConfig.frames_per_batch")  # frames per device step; 0: auto
    checkpoint_every: int = field_default("RefineConfig.checkpoint_every")
    seed: int = field_default("RefineConfig.seed")
    keep_best: bool = field_default("RefineConfig.keep_best")
    lsq_jacobian: str = field_default("RefineConfig.lsq_jacobian")
    lsq_damping: float = field_default("RefineConfig.lsq_damping")
    lsq_ftol: float = field_default("RefineConfig.lsq_ftol")
    hybrid_adam_steps: int = field_default("RefineConfig.hybrid_adam_steps")
    r_free: float = field_default("RefineConfig.r_free")
    r_free_mode: str = field_default("RefineConfig.r_free_mode")
    r_free_seed: int = field_default("RefineConfig.r_free_seed")

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise JaxedInputError(f"optimizer '{self.optimizer}': expected one of {', '.join(OPTIMIZERS)}")
        if not 0.0 <= self.r_free < 0.5 or self.r_free_mode not in ("reflections", "frames"):
            raise JaxedInputError(f"r_free = {self.r_free} ({self.r_free_mode}): expected a fraction in [0, 0.5) "
                                  "of 'reflections' or 'frames'")
        if self.optimizer in ("gn", "lm", "hybrid") and (self.minibatch or self.thickness_samples > 1
                                                         or self.per_frame_mean):
            raise JaxedInputError(f"{self.optimizer} needs the full-batch wR_all: no minibatch, thickness_samples "
                                  "or per_frame_mean")
        if self.lbfgs_metric not in ("rates", "identity"):
            raise JaxedInputError(f"lbfgs_metric '{self.lbfgs_metric}': expected 'rates' or 'identity'")
        if self.frame_loss not in ("rms", "mean"):
            raise JaxedInputError(f"frame_loss '{self.frame_loss}': expected 'rms' or 'mean'")
        if self.epochs < 0:
            raise JaxedInputError(f"epochs = {self.epochs}: expected ≥ 0")
        if not self.lr > 0:
            raise JaxedInputError(f"lr = {self.lr}: expected > 0")
        if self.optimizer == "lbfgs" and (self.minibatch or self.thickness_samples > 1):
            raise JaxedInputError("L-BFGS needs a deterministic loss: use adam with minibatch / thickness_samples")
        if self.minibatch < 0 or self.thickness_samples < 1:
            raise JaxedInputError(f"minibatch = {self.minibatch}, thickness_samples = {self.thickness_samples}: "
                                  "expected minibatch ≥ 0 and thickness_samples ≥ 1")
        if self.lr_schedule not in ("constant", "cosine"):
            raise JaxedInputError(f"lr_schedule '{self.lr_schedule}': expected constant or cosine")
        if self.lr_warmup < 0:
            raise JaxedInputError(f"lr_warmup = {self.lr_warmup}: expected ≥ 0 steps")


class Refinement:
    """A convenience bundle of one refinement problem, built from the factories (the parts are its attributes).

    Args:
        crystal, atoms: the starting structure.
        experiment: prepared data (jaxed.model.experiment.prepare_experiment).
        bloch: physics settings.
        config: refinement settings.
        thickness: a thickness model to use instead of the one ``config`` names.

    Attributes:
        config; model (:class:`jaxed.refine.problem.Model`); obs, obs_free (work and R_free observations, obs_free
        None without a free set); params0 (the starting parameters, a dict the caller may replace groups of);
        loss (``loss(params, key=None)``); optimizer (optax, for 'adam' / 'lbfgs').
    """

    def __init__(self, crystal: Crystal, atoms: AtomParams, experiment: Experiment, bloch: BlochSettings,
                 config: RefineConfig, *, thickness: ThicknessModel | None = None):
        self.config = config
        self.model = make_model(crystal, atoms, experiment, bloch, config, thickness=thickness)
        self.obs, self.obs_free = make_observations(experiment, crystal, config)
        self.params0 = self.model.init(jax.random.PRNGKey(config.seed))
        self.loss = make_loss(self.model, self.obs, config)
        self.optimizer = make_optimizer(config, self.params0)

    # the model's data and functions, as attributes of the bundle
    crystal = property(lambda self: self.model.crystal)
    experiment = property(lambda self: self.model.experiment)
    bloch = property(lambda self: self.model.bloch)
    structure = property(lambda self: self.model.structure)
    thickness = property(lambda self: self.model.thickness)
    frames_per_batch = property(lambda self: self.model.frames_per_batch)

    def atoms(self, params) -> AtomParams:
        return self.model.atoms(params)

    def frame_thickness(self, params) -> jax.Array:
        """Thickness of every frame [Å], (n_frames,) (the model's mean)."""
        return self.model.frame_thickness(params)

    def intensities(self, params) -> jax.Array:
        """Unscaled calculated intensities, (n_frames, n_refl), one compiled program."""
        return self.model.intensities(params)

    def full_loss(self, params) -> jax.Array:
        """The full-batch loss at the mean thickness (what :attr:`loss` is without a key), from the compiled
        :meth:`intensities`."""
        config = self.config
        return objective.loss(self.intensities(params), self.obs, kind=config.residual,
                              per_frame_mean=config.per_frame_mean, frame_loss=config.frame_loss)

    def init_state(self, params=None) -> StepState:
        """The step state at ``params`` (default: :attr:`params0`) for :meth:`make_step`."""
        return init_state(self.optimizer, self.params0 if params is None else params)

    def make_step(self):
        """The jitted ``step(state) -> (state, info)`` of ``config`` ('adam' / 'lbfgs'; jaxed.refine.step)."""
        config = self.config
        return make_step(make_loss_and_intensities(self.model, self.obs, config), self.optimizer,
                         key=jax.random.PRNGKey(config.seed),
                         stochastic=bool(config.minibatch) or config.thickness_samples > 1,
                         units=lbfgs_units(config, self.params0) if config.optimizer == "lbfgs" else None)

    def summary(self, params, n_params: int = 0) -> dict:
        """:func:`jaxed.refine.objective.summary` of the intensities at ``params`` (with the R_free set)."""
        return objective.summary(self.intensities(params), self.obs, n_params, kind=self.config.residual,
                                 free=self.obs_free)


# ----------------------------------------------------------------------------------------------------- driver
def _evaluations_in_step(optimizer: str, state, *, first: bool) -> int:
    """Loss + gradient evaluations made by one optimiser step: 1 for Adam; for L-BFGS the zoom line search's
    trial points (each a value and gradient; the accepted one is reused by the next step), plus the starting point at
    epoch 0 (a resumed run's state holds the last value and gradient, so its first step evaluates nothing new)."""
    if optimizer != "lbfgs":
        return 1
    steps = optax.tree_utils.tree_get(state, "num_linesearch_steps")
    return int(steps) + (1 if first else 0)


def _epoch_metrics(problem: Refinement, params) -> dict:
    """R_obs and wR_all of the work set, R_free and wR_free of the held-out set, at ``params`` (one forward)."""
    s = objective.summary(problem.intensities(params), problem.obs, kind=problem.config.residual,
                          free=problem.obs_free)
    return {k: s[k] for k in ("R_obs", "wR_all", "R_free", "wR_free")}


@batching.with_blas_threads  # one LAPACK thread per eigh (jaxed.model.batching, docs/SPEED.md)
def run_refinement(problem: Refinement, out: str | Path | None = None, *, resume: bool = False,
                   progress: bool = True, callback: Callable | None = None) -> tuple[dict, list]:
    """Optimise ``problem`` (from ``problem.params0``) for ``config.epochs`` steps.

    ``callback(epoch, params, loss)`` after each step; a callback with the attribute ``from_intensities`` is called
    ``callback(epoch, params, loss, i_before)`` with the intensities its step's loss computed at the parameters
    the step started from (None where the step had none: a stochastic loss, L-BFGS, Gauss–Newton / LM).

    Returns:
        (params, history) — history is a list of dicts {epoch, loss (wR_all), seconds, evaluations}, with an
        R_free set also R_obs, wR_all, R_free, wR_free after each step.
    Raises:
        RefinementDiverged on a non-finite loss or gradient (the last good checkpoint is kept in ``out``).
    """
    config = problem.config
    if config.optimizer in ("gn", "lm", "hybrid"):
        return run_least_squares(problem.model, problem.obs, config, problem.params0, out, free=problem.obs_free,
                                 resume=resume, progress=progress, callback=callback)
    out = None if out is None else Path(out)
    state = problem.init_state()
    history: list = []
    # keep_best: (loss, epoch, params) of the lowest full-batch loss met; a step's loss is that of its incoming params
    stochastic = bool(config.minibatch) or config.thickness_samples > 1
    keep_best = config.keep_best and not stochastic
    best = None
    if resume:
        if not has_checkpoint(out):
            raise JaxedInputError(f"--resume: no checkpoint in {out}")
        params, opt_state, history, start = load_checkpoint(out, state.params, state.opt_state)
        best = load_best(out, state.params) if keep_best else None
        state = StepState(params, opt_state, jax.numpy.asarray(start, jax.numpy.int32))
    start_epoch = int(state.count)
    with_intensities = bool(getattr(callback, "from_intensities", False)) and config.optimizer == "adam" \
        and not stochastic
    step = problem.make_step()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, initial=start_epoch, desc="refine", unit="epoch", dynamic_ncols=True)
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    last_good = state
    evaluations = int(history[-1].get("evaluations", len(history))) if history else 0
    for epoch in range(start_epoch, config.epochs):
        new_state, info = step(state)
        value = float(info.loss)
        if not bool(info.finite):
            if out is not None:
                save_checkpoint(out, last_good.params, last_good.opt_state, history, epoch, best)
            if bar is not None:
                bar.close()
            raise RefinementDiverged(
                f"epoch {epoch}: non-finite loss or gradient (loss = {value}); stopped, last good state kept"
                + (f" in {out / 'checkpoint.npz'}" if out is not None else ""))
        evaluations += _evaluations_in_step(config.optimizer, new_state.opt_state, first=epoch == 0)
        history.append({"epoch": epoch, "loss": value, "seconds": time.perf_counter() - t0,
                        "evaluations": evaluations})
        if keep_best and (best is None or value < best[0]):
            best = (value, epoch, state.params)
        last_good = state = new_state
        if problem.obs_free is not None:  # R_obs, wR_all (work set) and R_free after this step
            history[-1].update(_epoch_metrics(problem, state.params))
        if bar is not None:
            bar.set_postfix_str(f"wR_all {value:.4f}")
            bar.update(1)
        if callback is not None:
            if with_intensities:  # intensities at the parameters this epoch's step started from
                callback(epoch, state.params, value, info.intensities)
            elif getattr(callback, "from_intensities", False):
                callback(epoch, state.params, value, None)
            else:
                callback(epoch, state.params, value)
        if out is not None and config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0:
            save_checkpoint(out, state.params, state.opt_state, history, epoch + 1, best)
    if bar is not None:
        bar.close()
    params = state.params
    if keep_best and history and history[-1].get("final_loss") is None:
        # the last step's result has no loss yet: evaluate it once, and keep whichever is lower
        final = float(problem.full_loss(params))
        if not np.isfinite(final):
            final = np.inf  # a last step into NaN leaves the best earlier point
        history[-1]["final_loss"] = final
        if best is None or final <= best[0]:
            best = (final, config.epochs, params)
        history[-1]["kept_epoch"] = best[1]  # config.epochs: the last step's result; k: the start of epoch k
    if out is not None:
        save_checkpoint(out, params, state.opt_state, history, config.epochs, best)
    return (best[2] if keep_best and best is not None else params), history
