"""Per-frame orientation refinement (the reference paper's two searches, and gradients).

Each virtual frame's orientation O_i is corrected by a small lab rotation C_i (O_i ← C_i O_i) chosen to minimise that
frame's own wR_all (its scale in closed form), with the structure and thickness model held fixed:

* ``nelder_mead``: three angles, C = R_z(ω) R_y(β) R_x(α), scipy's Nelder–Mead per frame (the paper's search).
  R_z(ω) does not change excitation errors (PHYSICS.md §8.1); it is kept to match the published search.
* ``hexagonal``: the paper's two-angle scan C = R_z(φ) R_x(θ) R_z(−φ), φ in 60° steps, θ halved when no direction
  improves; all frames advance together (one batched evaluation per direction).
* ``about_beam``: a scan of the rotation about the beam alone, C = R_z(ω), all frames batched (a coarse grid, then
  ± steps halved like the hexagonal scan). Under rocking integration ω turns the rocking axis in the crystal; a few
  batched passes instead of one search per frame (how its moves compare with Nelder–Mead's: docs/OPTIMIZERS.md).
* ``gradient``: the two beam-perpendicular tilts of every frame refined by gradient jointly (jaxed.refine.optimize with
  ``refine_orientation=True``); this module's :func:`gradient_tilts` does it with the structure frozen.

All take the refinement model (jaxed.refine.problem.Model: its crystal, experiment, bloch, ``atoms(params)`` and
``frame_thickness(params)``) and the parameters at which structure and thickness are held, and return a new
:class:`Experiment` whose ``base_orientation`` carries the corrections.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize

from jaxed.model import batching
from jaxed.refine import objective
from jaxed.physics.bloch import potential_table
from jaxed.model.experiment import (Experiment, intensities_from_table, reselect_sample_beams, take_frames,
                              tilt_matrices)
from jaxed.physics.geometry import rotation_x, rotation_y, rotation_z
from jaxed.settings import schema

#: the initial simplex step of :func:`nelder_mead` [deg]: the schema's ``nm_step`` (jaxed.settings)
_NM_STEP_DEG = schema("refine")["nm_step"].default

__all__ = ["with_corrections", "frame_losses", "hexagonal_scan", "about_beam_scan", "nelder_mead",
           "gradient_tilts", "misorientation_deg"]


def with_corrections(experiment: Experiment, corrections: np.ndarray) -> Experiment:
    """Apply lab rotations C_i (n_frames, 3, 3): O_i ← C_i O_i."""
    base = np.einsum("fij,fjk->fik", np.asarray(corrections), np.asarray(experiment.base_orientation))
    return dataclasses.replace(experiment, base_orientation=base)


def _moved(model, experiment: Experiment, corrections: np.ndarray) -> Experiment:
    """``experiment`` with corrections applied and, with per-sample beam sets, each sample's beams selected at the
    corrected orientation (host): a trial orientation is scored with the beams it
    excites, not those of the starting orientation. The padded size never shrinks below the starting one, so the
    trials of a search compile a kernel only when one needs more beams than any before it."""
    start = 0 if experiment.sample_beams is None else int(np.shape(experiment.sample_beams)[-1])
    return reselect_sample_beams(with_corrections(experiment, corrections), model.crystal, min_size=start)


def misorientation_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation angle [deg] of a bᵀ for stacks of orientation matrices (n, 3, 3) (polar-decomposed first)."""
    def polar(m):
        u, _, vt = np.linalg.svd(m)
        return u @ vt

    rel = np.einsum("fij,fkj->fik", polar(np.asarray(a)), polar(np.asarray(b)))
    cos = (np.trace(rel, axis1=1, axis2=2) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _make_frame_loss(model, atoms, obs):
    """Jitted per-frame wR_all (paper form, closed-form scales) for an experiment of any frames; the Fourier
    coefficients of the (fixed) structure are computed once. The frames run in chunks when jaxed.model.batching's memory
    model says they do not all fit at once (the batched scans evaluate every frame in one call)."""
    crystal, bloch = model.crystal, model.bloch
    u_ext = potential_table(atoms, crystal, model.experiment.beams, bloch)
    float64 = jnp.asarray(atoms.frac).dtype == jnp.float64

    @functools.partial(jax.jit, static_argnames="chunk")
    def loss(experiment, thickness, chunk):
        i_calc = intensities_from_table(u_ext, crystal, experiment, thickness, bloch, frames_per_batch=chunk)
        obs_e = objective.prepare_observations(experiment.i_obs, experiment.sigma, experiment.refl_mask)
        k = objective.frame_scales(i_calc, obs_e)
        return objective.wr_all_paper(i_calc * k[:, None], obs_e, per_frame=True)

    def fn(experiment, thickness):  # frames in chunks when the memory model says all of them do not fit at once
        return loss(experiment, thickness, batching.experiment_frames_per_batch(
            experiment, float64=float64, absorption=bloch.absorbing, gradient=False))

    return fn


def frame_losses(model, params, experiment: Experiment | None = None) -> np.ndarray:
    """wR_all of every frame (n_frames,) for the model's model at ``params``."""
    experiment = model.experiment if experiment is None else experiment
    fn = _make_frame_loss(model, model.atoms(params), None)
    return np.asarray(fn(experiment, model.frame_thickness(params)))


def hexagonal_scan(model, params, *, theta0_deg: float = 0.2, theta_min_deg: float = 0.005,
                   max_rounds: int = 40, log=None) -> tuple[Experiment, dict]:
    """The paper's two-angle scan for all frames at once; returns (corrected experiment, info)."""
    exp = model.experiment
    fn = _make_frame_loss(model, model.atoms(params), None)
    thickness = model.frame_thickness(params)
    n = exp.n_frames
    corr = np.tile(np.eye(3), (n, 1, 1))
    theta = np.full(n, np.deg2rad(theta0_deg))
    best = np.array(fn(exp, thickness))
    start = best.copy()
    evaluations = 1
    for rnd in range(max_rounds):
        active = theta >= np.deg2rad(theta_min_deg)
        if not active.any():
            break
        cand_loss, cand_rot = [], []
        for phi in np.deg2rad(np.arange(0, 360, 60)):
            rot = np.stack([np.asarray(rotation_z(phi) @ rotation_x(t) @ rotation_z(-phi)) for t in theta])
            trial = np.einsum("fij,fjk->fik", rot, corr)
            cand_loss.append(np.asarray(fn(_moved(model, exp, trial), thickness)))
            cand_rot.append(trial)
            evaluations += 1
        cand_loss = np.stack(cand_loss)  # (6, n)
        pick = np.argmin(cand_loss, axis=0)
        improved = active & (cand_loss[pick, np.arange(n)] < best)
        corr[improved] = np.stack(cand_rot)[pick[improved], improved]
        best[improved] = cand_loss[pick[improved], improved]
        theta[active & ~improved] /= 2
        if log:
            log(f"  hexagonal round {rnd}: mean frame wR {best.mean():.4f}, {improved.sum()} frames improved")
    info = {"evaluations_batched": evaluations, "frame_wr_start": start, "frame_wr_end": best}
    return with_corrections(exp, corr), info


def about_beam_scan(model, params, *, grid_deg: float = 1.0, max_about_beam_deg: float = 4.0,
                    omega_min_deg: float = 0.05, max_rounds: int = 10, log=None) -> tuple[Experiment, dict]:
    """The rotation about the beam (lab z, ω) of every frame, scanned with all frames in each batched evaluation;
    returns (corrected experiment, info). First a grid ω ∈ {0, ±grid, ±2 grid, …} up to ±``max_about_beam_deg``, each
    frame keeping its best point; then ± steps from grid/2, kept while they improve and halved when neither does,
    down to ``omega_min_deg``, never beyond ±``max_about_beam_deg``. A still frame does not see ω (its excitation
    errors are unchanged, PHYSICS.md §8.1); under rocking integration ω turns the rocking axis in the crystal."""
    exp = model.experiment
    fn = _make_frame_loss(model, model.atoms(params), None)
    thickness = model.frame_thickness(params)
    n = exp.n_frames

    def turns(omega_deg):
        return np.stack([np.asarray(rotation_z(w)) for w in np.deg2rad(omega_deg)])

    def losses(omega_deg):
        return np.asarray(fn(_moved(model, exp, turns(omega_deg)), thickness))

    def gains(trial):  # a real gain, not rounding (a still frame ties at every ω)
        return trial < best * (1 - 1e-9) - 1e-12

    start = losses(np.zeros(n))
    best, omega, evaluations = start.copy(), np.zeros(n), 1
    steps = np.arange(1, int(np.floor(max_about_beam_deg / grid_deg + 1e-9)) + 1) * grid_deg
    for w in np.concatenate([steps, -steps]):
        trial = losses(np.full(n, w))
        evaluations += 1
        better = gains(trial)
        best[better], omega[better] = trial[better], w
    step = np.full(n, grid_deg / 2)
    for rnd in range(max_rounds):
        active = step >= omega_min_deg
        if not active.any():
            break
        improved = np.zeros(n, bool)
        for sign in (1.0, -1.0):
            target = np.clip(omega + sign * step, -max_about_beam_deg, max_about_beam_deg)
            trial = losses(np.where(active & ~improved, target, omega))
            evaluations += 1
            better = active & ~improved & gains(trial)
            best[better], omega[better] = trial[better], target[better]
            improved |= better
        step[active & ~improved] /= 2
        if log:
            log(f"  about-beam round {rnd}: mean frame wR {best.mean():.4f}, {improved.sum()} frames improved")
    corr = turns(omega)
    info = {"evaluations_batched": evaluations, "frame_wr_start": start, "frame_wr_end": best, "omega_deg": omega}
    return with_corrections(exp, corr), info


def nelder_mead(model, params, *, initial_step_deg: float = _NM_STEP_DEG, xatol_deg: float = 0.002, maxfev: int = 200,
                max_about_beam_deg: float | None = None, frames=None, log=None) -> tuple[Experiment, dict]:
    """Three-angle Nelder–Mead per frame (R_z(ω)R_y(β)R_x(α)); returns (corrected experiment, info).

    ``frames``: indices of the frames to search (default all); the others keep their orientation, and ``info``'s
    per-frame arrays follow ``frames``.

    ``max_about_beam_deg`` bounds the rotation about the beam (ω, lab z): ω = B tanh(u/B) with u the searched
    variable. A still frame does not see ω; under rocking integration it turns the rocking axis in the crystal, a
    per-frame freedom that can fit the data with in-plane errors of many degrees, which PETS2's indexing of each
    frame's spots rules out."""
    exp = model.experiment
    fn = _make_frame_loss(model, model.atoms(params), None)
    thickness = np.asarray(model.frame_thickness(params))
    corr = np.tile(np.eye(3), (exp.n_frames, 1, 1))
    start, end, fevals = [], [], 0
    for i in (range(exp.n_frames) if frames is None else (int(f) for f in frames)):
        one = dataclasses.replace(take_frames(exp, [i]), frame_ids=(0,))  # same static data: one compilation
        t_i = jnp.asarray(thickness[i : i + 1])

        def rotation(angles):
            w, b, a = angles
            if max_about_beam_deg is not None:
                w = max_about_beam_deg * np.tanh(w / max_about_beam_deg)
            w, b, a = np.deg2rad([w, b, a])
            return np.asarray(rotation_z(w) @ rotation_y(b) @ rotation_x(a))

        def f(angles):
            return float(fn(_moved(model, one, rotation(angles)[None]), t_i)[0])

        simplex = np.vstack([np.zeros(3), np.eye(3) * initial_step_deg])
        res = minimize(f, np.zeros(3), method="Nelder-Mead",
                       options={"initial_simplex": simplex, "xatol": xatol_deg, "fatol": 1e-7, "maxfev": maxfev})
        corr[i] = rotation(res.x)
        start.append(f(np.zeros(3)))
        end.append(res.fun)
        fevals += res.nfev
        if log and i % 10 == 0:
            log(f"  Nelder–Mead frame {i}: wR {start[-1]:.4f} → {end[-1]:.4f} ({res.nfev} evaluations)")
    info = {"function_evaluations": fevals, "frame_wr_start": np.array(start), "frame_wr_end": np.array(end)}
    return with_corrections(exp, corr), info


def gradient_tilts(model, params, *, steps: int = 60, lr: float = 2e-4, angles: int = 2, obs=None,
                   log=None) -> tuple[Experiment, dict]:
    """Two tilts per frame (``angles=3``: and the rotation about the beam, jaxed.model.experiment.frame_orientations) by
    Adam on the RMS of the per-frame wR_all of ``obs`` (default: every observation of the model's experiment),
    structure and thickness frozen."""
    import optax

    atoms = model.atoms(params)
    thickness = model.frame_thickness(params)
    exp = model.experiment
    if obs is None:
        obs = objective.prepare_observations(jnp.asarray(exp.i_obs), jnp.asarray(exp.sigma), jnp.asarray(exp.refl_mask))

    u_ext = potential_table(atoms, model.crystal, exp.beams, model.bloch)

    def loss(tilts):
        i_calc = intensities_from_table(u_ext, model.crystal, exp, thickness, model.bloch, tilts)
        return objective.loss(i_calc, obs, per_frame_mean=True)

    opt = optax.adam(lr)
    tilts = jnp.zeros((exp.n_frames, angles))
    state = opt.init(tilts)

    @jax.jit
    def step(tilts, state):
        value, g = jax.value_and_grad(loss)(tilts)
        updates, state = opt.update(g, state)
        return optax.apply_updates(tilts, updates), state, value

    t0 = time.perf_counter()
    for s in range(steps):
        tilts, state, value = step(tilts, state)
        if log and s % 10 == 0:
            log(f"  gradient step {s}: loss {float(value):.4f} ({time.perf_counter() - t0:.0f} s)")
    corr = np.asarray(tilt_matrices(tilts))
    return with_corrections(exp, corr), {"steps": steps, "tilts_deg": np.rad2deg(np.asarray(tilts))}
