"""Residuals of the refinement: R_obs, wR_all (two forms), GoF, closed-form frame scales (docs/PHYSICS.md §7.1,
"Settled for jaxed"; docs/TARGETS.md).

Observations are padded per frame: arrays (n_frames, n_refl) with a mask. Conventions, u = 0.01:

* weak rule (reference paper / Klar et al. 2023): I_obs < 0.01·σ(I) counts as I_obs = 0 with σ(√I) = 5√σ(I);
  otherwise σ(√I) = σ(I)/(2√I_obs). The two agree at I_obs = 0.01σ, so the rule is continuous.
* **wR_all (paper)**, as printed: sqrt(Σ w²(I_o − I_c)² / Σ w² I_o²), w = (σ(√I_o)² + (u√I_o)²)^(−1/2).
* **wR_all (Jana)**, on |F|: sqrt(Σ w(|F_o| − |F_c|)² / Σ w|F_o|²), w = 1/(σ(F)² + (uF_o)²), σ(F) = σ(√I) above.
* R_obs = Σ_obs |√I_o − √I_c| / Σ_obs √I_o over I_o > 3σ(I); R_all the same over all reflections.
* GoF = sqrt(Σ w(|F_o| − |F_c|)² / (N_all − N_par)) with the Jana weights.

Per-frame scales k_i multiply I_calc and are eliminated in closed form (weighted least squares) at every evaluation;
a frame whose model intensities all vanish gets k = 1. Masked entries never leak (sanitised once), and every
square root is guarded so that values and gradients stay finite for zero, negative and padded data.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Observations", "prepare_observations", "frame_scales", "wr_all_paper", "wr_all_jana", "r_obs", "r_all",
           "goodness_of_fit", "counts", "residual_vector", "loss", "summary"]

_TINY = 1e-30


@partial(jax.tree_util.register_dataclass,
         data_fields=["i_obs", "sigma", "sigma_sqrt", "f_obs", "w_paper", "w_jana", "observed", "mask"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Observations:
    """Per-observation quantities, (n_frames, n_refl) each; zero wherever ``mask`` is False.

    Attributes:
        i_obs: I_obs after the weak rule [counts].  sigma: σ(I) [counts].  sigma_sqrt: σ(√I).
        f_obs: √I_obs.  w_paper: w of the paper's wR_all.  w_jana: w of Jana's wR_all.
        observed: I_obs > 3σ(I).  mask: real observation (not padding).
    """

    i_obs: jax.Array
    sigma: jax.Array
    sigma_sqrt: jax.Array
    f_obs: jax.Array
    w_paper: jax.Array
    w_jana: jax.Array
    observed: jax.Array
    mask: jax.Array


def _safe_sqrt(x):
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def prepare_observations(i_obs, sigma, mask=None, *, u: float = 0.01) -> Observations:
    """Apply the weak rule and compute weights. ``i_obs``, ``sigma``, ``mask``: (n_frames, n_refl)."""
    i_obs = jnp.asarray(i_obs)
    sigma = jnp.asarray(sigma)
    mask = jnp.ones(i_obs.shape, bool) if mask is None else jnp.asarray(mask, bool)
    mask = mask & jnp.isfinite(i_obs) & jnp.isfinite(sigma) & (sigma > 0)
    i_obs = jnp.where(mask, i_obs, 0.0)
    sigma = jnp.where(mask, sigma, 1.0)
    weak = i_obs < 0.01 * sigma
    i_eff = jnp.where(weak, 0.0, i_obs)
    f_obs = _safe_sqrt(i_eff)
    sigma_sqrt = jnp.where(weak, 5.0 * jnp.sqrt(sigma), sigma / (2.0 * jnp.where(weak, 1.0, f_obs)))
    w_paper = 1.0 / jnp.sqrt(sigma_sqrt**2 + (u * f_obs) ** 2)
    w_jana = 1.0 / (sigma_sqrt**2 + (u * f_obs) ** 2)
    zero = jnp.zeros_like(i_obs)
    return Observations(i_obs=jnp.where(mask, i_eff, zero), sigma=sigma, sigma_sqrt=jnp.where(mask, sigma_sqrt, 1.0),
                        f_obs=jnp.where(mask, f_obs, zero), w_paper=jnp.where(mask, w_paper, zero),
                        w_jana=jnp.where(mask, w_jana, zero), observed=mask & (i_obs > 3.0 * sigma), mask=mask)


def frame_scales(i_calc, obs: Observations, *, kind: str = "paper") -> jax.Array:
    """Closed-form per-frame scale k minimising the chosen residual, (n_frames,).

    paper: k = Σ w² I_o I_c / Σ w² I_c².   jana: √k = Σ w F_o F_c / Σ w F_c², F_c = √I_c.
    A frame whose denominator vanishes (no reflections, all I_c = 0) gets k = 1.
    """
    i_calc = jnp.where(obs.mask, i_calc, 0.0)
    if kind == "paper":
        w2 = obs.w_paper**2
        num = jnp.sum(w2 * obs.i_obs * i_calc, axis=-1)
        den = jnp.sum(w2 * i_calc**2, axis=-1)
        ok = den > _TINY
        return jnp.where(ok, num / jnp.where(ok, den, 1.0), 1.0)
    if kind == "jana":
        f_calc = _safe_sqrt(i_calc)
        num = jnp.sum(obs.w_jana * obs.f_obs * f_calc, axis=-1)
        den = jnp.sum(obs.w_jana * f_calc**2, axis=-1)
        ok = den > _TINY
        return jnp.where(ok, num / jnp.where(ok, den, 1.0), 1.0) ** 2
    raise ValueError(f"unknown residual kind {kind!r}")


def _ratio(num, den):
    ok = den > _TINY
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def wr_all_paper(i_scaled, obs: Observations, axis=None) -> jax.Array:
    """The reference paper's wR_all (as printed), over ``axis`` (None: all; -1: per frame)."""
    w2 = obs.w_paper**2
    diff = jnp.where(obs.mask, obs.i_obs - i_scaled, 0.0)
    return _safe_sqrt(_ratio(jnp.sum(w2 * diff**2, axis=axis), jnp.sum(w2 * obs.i_obs**2, axis=axis)))


def wr_all_jana(i_scaled, obs: Observations, axis=None) -> jax.Array:
    """Jana's wR(all) on |F|."""
    diff = jnp.where(obs.mask, obs.f_obs - _safe_sqrt(i_scaled), 0.0)
    return _safe_sqrt(_ratio(jnp.sum(obs.w_jana * diff**2, axis=axis), jnp.sum(obs.w_jana * obs.f_obs**2, axis=axis)))


def _r(i_scaled, obs, select):
    diff = jnp.abs(obs.f_obs - _safe_sqrt(i_scaled))
    return _ratio(jnp.sum(jnp.where(select, diff, 0.0)), jnp.sum(jnp.where(select, obs.f_obs, 0.0)))


def r_obs(i_scaled, obs: Observations) -> jax.Array:
    """R_obs = Σ|√I_o − √I_c| / Σ√I_o over I_o > 3σ."""
    return _r(i_scaled, obs, obs.observed)


def r_all(i_scaled, obs: Observations) -> jax.Array:
    """R_all: as R_obs, over every reflection."""
    return _r(i_scaled, obs, obs.mask)


def counts(obs: Observations) -> tuple[int, int]:
    """(N_obs, N_all)."""
    return int(np.sum(np.asarray(obs.observed))), int(np.sum(np.asarray(obs.mask)))


def goodness_of_fit(i_scaled, obs: Observations, n_params: int = 0) -> jax.Array:
    """GoF = sqrt(Σ w_J (|F_o| − |F_c|)² / (N_all − N_par))."""
    diff = jnp.where(obs.mask, obs.f_obs - _safe_sqrt(i_scaled), 0.0)
    dof = jnp.maximum(jnp.sum(obs.mask) - n_params, 1)
    return jnp.sqrt(jnp.sum(obs.w_jana * diff**2) / dof)


def residual_vector(i_scaled, obs: Observations, kind: str = "paper") -> jax.Array:
    """Weighted residuals r (n_frames·n_refl,), zero on padding, with Σ r² = wR_all² of the chosen form."""
    if kind == "paper":
        r = obs.w_paper * jnp.where(obs.mask, obs.i_obs - i_scaled, 0.0)
        norm = jnp.sum(obs.w_paper**2 * obs.i_obs**2)
    else:
        r = jnp.sqrt(obs.w_jana) * jnp.where(obs.mask, obs.f_obs - _safe_sqrt(i_scaled), 0.0)
        norm = jnp.sum(obs.w_jana * obs.f_obs**2)
    return (r / jnp.sqrt(jnp.maximum(norm, _TINY))).reshape(-1)


def loss(i_calc, obs: Observations, *, kind: str = "paper", per_frame_mean: bool = False) -> jax.Array:
    """The refinement objective: wR_all after closed-form scaling (differentiable through the scales).

    ``per_frame_mean``: the mean over frames (with reflections) of each frame's wR_all instead of the global wR_all.
    """
    k = frame_scales(i_calc, obs, kind=kind)
    scaled = i_calc * k[:, None]
    fn = wr_all_paper if kind == "paper" else wr_all_jana
    if not per_frame_mean:
        return fn(scaled, obs)
    per = fn(scaled, obs, axis=-1)
    has = jnp.any(obs.mask, axis=-1)
    return jnp.sum(jnp.where(has, per, 0.0)) / jnp.maximum(jnp.sum(has), 1)


def summary(i_calc, obs: Observations, n_params: int = 0) -> dict:
    """R factors (paper scaling) of unscaled model intensities, as python floats."""
    k = frame_scales(i_calc, obs, kind="paper")
    scaled = i_calc * k[:, None]
    n_obs, n_all = counts(obs)
    return {"R_obs": float(r_obs(scaled, obs)), "R_all": float(r_all(scaled, obs)),
            "wR_all": float(wr_all_paper(scaled, obs)), "wR_all_jana": float(wr_all_jana(scaled, obs)),
            "GoF": float(goodness_of_fit(scaled, obs, n_params)), "N_obs": n_obs, "N_all": n_all,
            "scales": [float(x) for x in np.asarray(k)]}
