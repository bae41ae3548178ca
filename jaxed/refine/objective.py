"""Residuals of the refinement: R_obs, R_all, wR_all (two forms), GoF and closed-form per-frame scales.

Conventions are those of the reference paper (Malik et al. 2026, after Klar et al. 2023; docs/TARGETS.md) and of
Jana (docs/PHYSICS.md §7.1 and its "Settled for jaxed" section). Observations are grouped per frame and padded:
every array is (n_frames, n_refl) with a boolean ``mask`` (False on padding). Instability factor u = 0.01.

**Observation rule (the paper's, as printed).** With σ = σ(I_obs):

* weak, I_obs < 0.01·σ (this includes zero and negative I_obs):  I_obs ← 0,  σ(√I_obs) = 5·√σ;
* otherwise (I_obs ≥ 0.01·σ > 0):                               σ(√I_obs) = σ / (2·√I_obs).

The two branches meet at I_obs = 0.01·σ (σ/(2·√(0.01σ)) = 5·√σ), so σ(√I) is continuous in I_obs; this is why the
printed rule needs no separate "weak but positive" case, and the smooth variant of PHYSICS §7.1 is not used.
σ(F) of Jana's residual is this same σ(√I_obs), and |F_o| = √I_obs after the rule.

**Residuals** (sums over the unmasked entries of the rows passed in; F_o = √I_obs, F_c = √I_calc, I_calc scaled):

* ``wr_all_paper``, the paper's wR_all as printed (intensity differences, amplitude weights):
  sqrt(Σ w²(I_o − I_c)² / Σ w² I_o²),  w = (σ(√I_o)² + (u·√I_o)²)^(−1/2).
* ``wr_all_jana``, Jana's wR(all) on |F|: sqrt(Σ w(F_o − F_c)² / Σ w F_o²),  w = 1/(σ(F)² + (u·F_o)²).
  Note w_jana = w_paper²: the two forms share their per-reflection weight and differ in I versus |F| differences.
* ``r_obs`` = Σ|F_o − F_c| / Σ F_o over the observed reflections, I_obs > 3σ(I_obs); ``r_all`` the same over all.
* ``goodness_of_fit`` = sqrt(Σ_all w_jana (F_o − F_c)² / (N_all − N_par)).

**Two aggregates.** The values above pool every (frame, reflection) pair: one ratio of sums over all frames (Jana's
convention). diffBloch (Colmey et al. 2026) and, as far as can be established, the reference paper report instead the
**arithmetic mean over frames of per-frame values**, each frame at the scale that minimises that metric for that frame
(their summary logger; the training loss is the mean of per-frame wR_all). :func:`frame_values` computes these
per-frame values: wR_all at its closed-form scale, R_obs at its exact minimiser (a weighted median, below), and
:func:`summary` reports both aggregates, named ``R_obs`` / ``wR_all`` (pooled) and ``R_obs_frame_mean`` /
``wR_all_frame_mean``. The two differ by several points on measured data (frames with few strong reflections fit
better alone), so published numbers are only comparable with the aggregate of the same definition.

**Scales.** Each frame i has a scale k_i multiplying its I_calc, eliminated in closed form (weighted least squares):
paper form k = Σ w² I_o I_c / Σ w² I_c²; Jana form √k = Σ w F_o F_c / Σ w F_c² (the minimiser of Σ w(F_o − √k F_c)²).
Both are ≥ 0 because I_o ≥ 0 after the observation rule. Guard: a frame whose denominator vanishes (no unmasked
reflection, or I_calc = 0 on all of them) gets k = 1; the choice is local to the frame, so a frame's scale never
depends on which other frames share the minibatch (a median over frames would). A frame whose observations are all
weak (I_o = 0) has the exact minimiser k = 0: it then adds nothing to wR_all and its gradient is exactly zero.
The closed forms are evaluated on I_calc divided by its per-frame maximum (a stop-gradient constant; k is
homogeneous of degree −1 in I_calc, so value and derivative are unchanged), which makes the guard independent of the
units of I_calc and keeps the sums away from underflow in float32.

**Safety.** Non-finite I_obs or σ and σ ≤ 0 are treated as padding; masked entries are replaced by harmless values
once in :func:`prepare_observations`, and every function also masks ``i_calc`` before using it, so garbage (NaN, inf)
at padded entries cannot reach a value or a gradient. Square roots use the double-``where`` form (value and
derivative 0 at 0), ratios whose denominator is 0 return 0 (e.g. wR_all of a set without any observed intensity).

All functions are pure ``jax.numpy``, work on any subset of rows (frame minibatches: nothing is global) and may be
``jit``-ted (``kind`` is static), ``vmap``-ped and differentiated with respect to ``i_calc``; :func:`counts` and
:func:`summary` return python numbers and run on the host.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:  # shape annotations only
    from jaxtyping import Array, ArrayLike, Bool, Float

__all__ = ["Observations", "prepare_observations", "frame_scales", "wr_all_paper", "wr_all_jana", "r_obs", "r_all",
           "goodness_of_fit", "counts", "residual_vector", "loss", "summary", "frame_values", "RESIDUAL_KINDS",
           "free_set_mask", "free_values"]

RESIDUAL_KINDS = ("paper", "jana")
WEAK_FRACTION = 0.01  # I_obs < 0.01·σ(I_obs) is "weak"
WEAK_SIGMA_FACTOR = 5.0  # σ(√I_obs) = 5·√σ(I_obs) for weak reflections
OBSERVED_SIGMAS = 3.0  # "observed": I_obs > 3·σ(I_obs)


@partial(jax.tree_util.register_dataclass,
         data_fields=["i_obs", "sigma", "f_obs", "sigma_f", "w_paper", "w_jana", "observed", "weak", "mask"],
         meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Observations:
    """Per-observation quantities of the residuals, each (n_frames, n_refl); see :func:`prepare_observations`.

    Attributes:
        i_obs: I_obs after the weak rule (≥ 0), 0 on padding [counts].
        sigma: σ(I_obs) as measured, 1 on padding [counts].
        f_obs: |F_o| = √I_obs after the weak rule, 0 on padding [counts^½].
        sigma_f: σ(√I_obs) = σ(F), 1 on padding [counts^½].
        w_paper: w of the paper's wR_all, (σ(√I)² + (u√I)²)^(−1/2), 0 on padding [counts^−½].
        w_jana: w of Jana's wR_all on |F|, 1/(σ(F)² + (uF)²) = w_paper², 0 on padding [counts^−1].
        observed: I_obs > 3σ(I_obs) (the R_obs set), False on padding.
        weak: I_obs < 0.01σ(I_obs) (set to 0 by the rule), False on padding.
        mask: a real observation (False: padding, or non-finite I_obs / σ, or σ ≤ 0).
    """

    i_obs: Float[Array, "n_frames n_refl"]
    sigma: Float[Array, "n_frames n_refl"]
    f_obs: Float[Array, "n_frames n_refl"]
    sigma_f: Float[Array, "n_frames n_refl"]
    w_paper: Float[Array, "n_frames n_refl"]
    w_jana: Float[Array, "n_frames n_refl"]
    observed: Bool[Array, "n_frames n_refl"]
    weak: Bool[Array, "n_frames n_refl"]
    mask: Bool[Array, "n_frames n_refl"]

    @property
    def shape(self) -> tuple[int, int]:
        """(n_frames, n_refl)."""
        return self.mask.shape


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """√x for x > 0, else 0; the derivative is 0 (not inf/NaN) wherever x ≤ 0 (double-where)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """num/den where den > 0, else 0, with finite derivatives on both branches."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _check_kind(kind: str) -> None:
    if kind not in RESIDUAL_KINDS:
        raise ValueError(f"unknown residual kind {kind!r}; expected one of {RESIDUAL_KINDS}")


def prepare_observations(i_obs: ArrayLike, sigma: ArrayLike, mask: ArrayLike | None = None, *,
                         u: float = 0.01) -> Observations:
    """Apply the paper's weak rule and precompute σ(√I), weights and masks, once per dataset.

    Args:
        i_obs: measured intensities, (n_frames, n_refl) [counts]; any value at padded entries (NaN included).
        sigma: σ(I_obs), (n_frames, n_refl) [counts].
        mask: True for real observations, (n_frames, n_refl); default all True. Entries with non-finite I_obs or σ,
            or σ ≤ 0, are dropped from the mask as well (they carry no usable weight).
        u: instability factor of both weightings (the paper: 0.01).

    Returns:
        :class:`Observations`. Weak rule: I_obs < 0.01σ → I_obs = 0 and σ(√I) = 5√σ; otherwise σ(√I) = σ/(2√I_obs).
    """
    i_obs = jnp.asarray(i_obs)
    if not jnp.issubdtype(i_obs.dtype, jnp.floating):
        i_obs = i_obs.astype(jnp.result_type(float))
    sigma = jnp.asarray(sigma, dtype=i_obs.dtype)
    mask = jnp.ones(i_obs.shape, bool) if mask is None else jnp.asarray(mask, bool)
    mask = mask & jnp.isfinite(i_obs) & jnp.isfinite(sigma) & (sigma > 0)
    i_raw = jnp.where(mask, i_obs, 0.0)
    sig = jnp.where(mask, sigma, 1.0)

    weak = mask & (i_raw < WEAK_FRACTION * sig)
    strong = mask & ~weak  # here I_obs ≥ 0.01σ > 0
    i_eff = jnp.where(strong, i_raw, 0.0)
    f_obs = _safe_sqrt(i_eff)
    sigma_f = jnp.where(weak, WEAK_SIGMA_FACTOR * jnp.sqrt(sig),
                        jnp.where(strong, sig / (2.0 * jnp.where(strong, f_obs, 1.0)), 1.0))
    variance_f = sigma_f**2 + (u * f_obs) ** 2  # σ(√I)² + (u√I)² > 0 on real entries, 1 on padding
    w_paper = jnp.where(mask, 1.0 / jnp.sqrt(variance_f), 0.0)
    w_jana = jnp.where(mask, 1.0 / variance_f, 0.0)
    observed = mask & (i_raw > OBSERVED_SIGMAS * sig)
    return Observations(i_obs=i_eff, sigma=sig, f_obs=f_obs, sigma_f=sigma_f, w_paper=w_paper, w_jana=w_jana,
                        observed=observed, weak=weak, mask=mask)


def _ls_scale(x: jax.Array, y: jax.Array, wt: jax.Array) -> jax.Array:
    """Per-row s minimising Σ wt (y − s x)², i.e. Σ wt x y / Σ wt x², and 1 where Σ wt x² = 0. Rows: (n_frames,).

    x is divided by its row maximum c (held constant for differentiation); s(x) = s(x/c)/c exactly, so value and
    derivative are those of the plain formula while the guard does not depend on the units of x.
    """
    c = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=-1, initial=0.0))
    c_ok = c > jnp.finfo(x.dtype).tiny
    c = jnp.where(c_ok, c, 1.0)
    xn = x / c[:, None]
    num = jnp.sum(wt * xn * y, axis=-1)
    den = jnp.sum(wt * xn**2, axis=-1)
    ok = c_ok & (den > jnp.finfo(x.dtype).tiny)
    return jnp.where(ok, num / jnp.where(ok, den, 1.0) / c, 1.0)


def frame_scales(i_calc: Float[Array, "n_frames n_refl"], obs: Observations, *,
                 kind: str = "paper") -> Float[Array, " n_frames"]:
    """Closed-form per-frame scale k (multiplying I_calc) that minimises the ``kind`` residual given the model.

    Args:
        i_calc: unscaled model intensities, (n_frames, n_refl).
        obs: the observations of the same rows.
        kind: 'paper': k = Σ w² I_o I_c / Σ w² I_c² (wR_all of the paper); 'jana': k = (Σ w F_o F_c / Σ w F_c²)²
            with F_c = √I_c (Jana's wR_all on |F|).

    Returns:
        k ≥ 0, (n_frames,) [counts per unit of I_calc]; 1 for frames with no reflection or I_calc = 0 throughout,
        0 for frames whose observations are all weak.
    """
    _check_kind(kind)
    i_calc = jnp.where(obs.mask, i_calc, 0.0)
    if kind == "paper":
        return _ls_scale(i_calc, obs.i_obs, obs.w_paper**2)
    return _ls_scale(_safe_sqrt(i_calc), obs.f_obs, obs.w_jana) ** 2


def _scaled(i_calc: jax.Array, obs: Observations, kind: str) -> jax.Array:
    """k·I_calc with the closed-form scales of ``kind``, 0 on padding."""
    i_calc = jnp.where(obs.mask, i_calc, 0.0)
    return frame_scales(i_calc, obs, kind=kind)[:, None] * i_calc


def _sums(i_scaled: jax.Array, obs: Observations, kind: str, axis) -> tuple[jax.Array, jax.Array]:
    """(Σ weighted squared residual, Σ weighted squared observation) of the ``kind`` wR_all over ``axis``."""
    i_scaled = jnp.where(obs.mask, i_scaled, 0.0)
    if kind == "paper":
        w2 = obs.w_paper**2
        return jnp.sum(w2 * (obs.i_obs - i_scaled) ** 2, axis=axis), jnp.sum(w2 * obs.i_obs**2, axis=axis)
    diff = jnp.where(obs.mask, obs.f_obs - _safe_sqrt(i_scaled), 0.0)
    return jnp.sum(obs.w_jana * diff**2, axis=axis), jnp.sum(obs.w_jana * obs.f_obs**2, axis=axis)


def wr_all_paper(i_calc_scaled: Float[Array, "n_frames n_refl"], obs: Observations, *,
                 per_frame: bool = False) -> Float[Array, ""] | Float[Array, " n_frames"]:
    """The paper's wR_all (as printed): sqrt(Σ w²(I_o − I_c)² / Σ w² I_o²), w = (σ(√I_o)² + (u√I_o)²)^(−1/2).

    ``i_calc_scaled``: scaled model intensities (n_frames, n_refl) [counts]. Over all rows, or one value per row
    with ``per_frame``; 0 where Σ w² I_o² = 0 (no observed intensity).
    """
    num, den = _sums(i_calc_scaled, obs, "paper", -1 if per_frame else None)
    return _safe_sqrt(_safe_ratio(num, den))


def wr_all_jana(i_calc_scaled: Float[Array, "n_frames n_refl"], obs: Observations, *,
                per_frame: bool = False) -> Float[Array, ""] | Float[Array, " n_frames"]:
    """Jana's wR(all) on |F|: sqrt(Σ w(F_o − F_c)² / Σ w F_o²), w = 1/(σ(F)² + (uF_o)²), F_c = √I_c (scaled).

    Over all rows, or one value per row with ``per_frame``; 0 where Σ w F_o² = 0.
    """
    num, den = _sums(i_calc_scaled, obs, "jana", -1 if per_frame else None)
    return _safe_sqrt(_safe_ratio(num, den))


def _r_factor(i_calc_scaled: jax.Array, obs: Observations, select: jax.Array) -> jax.Array:
    f_calc = _safe_sqrt(jnp.where(select, i_calc_scaled, 0.0))
    diff = jnp.where(select, jnp.abs(obs.f_obs - f_calc), 0.0)
    return _safe_ratio(jnp.sum(diff), jnp.sum(jnp.where(select, obs.f_obs, 0.0)))


def r_obs(i_calc_scaled: Float[Array, "n_frames n_refl"], obs: Observations) -> Float[Array, ""]:
    """R_obs = Σ_obs |√I_o − √I_c| / Σ_obs √I_o over the observed reflections, I_obs > 3σ(I_obs)."""
    return _r_factor(i_calc_scaled, obs, obs.observed)


def r_all(i_calc_scaled: Float[Array, "n_frames n_refl"], obs: Observations) -> Float[Array, ""]:
    """R_all = Σ |√I_o − √I_c| / Σ √I_o over every reflection (weak ones with √I_o = 0)."""
    return _r_factor(i_calc_scaled, obs, obs.mask)


def goodness_of_fit(i_calc_scaled: Float[Array, "n_frames n_refl"], obs: Observations,
                    n_params: int = 0) -> Float[Array, ""]:
    """GoF(all) = sqrt(Σ_all w (F_o − F_c)² / (N_all − N_par)) with Jana's weights (u included).

    The number of degrees of freedom is clipped at 1.
    """
    num, _ = _sums(i_calc_scaled, obs, "jana", None)
    dof = jnp.maximum(jnp.sum(obs.mask) - n_params, 1)
    return _safe_sqrt(num / dof)


def counts(obs: Observations) -> tuple[int, int]:
    """(N_obs, N_all): observed (I_obs > 3σ) and all unmasked reflections, as python ints (host side)."""
    return int(np.sum(np.asarray(obs.observed))), int(np.sum(np.asarray(obs.mask)))


def residual_vector(i_calc_scaled: Float[Array, "n_frames n_refl"], obs: Observations, kind: str = "paper", *,
                    normalize: bool = False) -> Float[Array, " n_frames*n_refl"]:
    """Weighted residuals for least squares (Gauss–Newton), flattened frame-major, 0 on padding.

    'paper': r = w (I_o − I_c), so Σ r² / Σ w² I_o² = wR_all(paper)²;
    'jana':  r = √w (F_o − F_c), so Σ r² / Σ w F_o² = wR_all(Jana)².
    With ``normalize`` the residuals are divided by the square root of that denominator, so Σ r² = wR_all².
    """
    _check_kind(kind)
    i_scaled = jnp.where(obs.mask, i_calc_scaled, 0.0)
    if kind == "paper":
        r = obs.w_paper * (obs.i_obs - i_scaled)
        den = jnp.sum(obs.w_paper**2 * obs.i_obs**2)
    else:
        r = obs.w_paper * jnp.where(obs.mask, obs.f_obs - _safe_sqrt(i_scaled), 0.0)  # √w_jana = w_paper
        den = jnp.sum(obs.w_jana * obs.f_obs**2)
    r = jnp.where(obs.mask, r, 0.0).reshape(-1)
    if normalize:
        r = r * _safe_ratio(1.0, _safe_sqrt(den))
    return r


def loss(i_calc: Float[Array, "n_frames n_refl"], obs: Observations, *, kind: str = "paper",
         per_frame_mean: bool = False, frame_loss: str = "rms") -> Float[Array, ""]:
    """The refinement objective: wR_all of ``kind`` after closed-form per-frame scaling.

    Args:
        i_calc: unscaled model intensities (n_frames, n_refl); the scales are recomputed from them in closed form
            and differentiated through.
        obs: the observations of the same rows.
        kind: 'paper' (:func:`wr_all_paper`) or 'jana' (:func:`wr_all_jana`).
        per_frame_mean: False: the wR_all of all rows together (ratio of sums). True: the root mean square over
            frames of the per-frame wR_all, sqrt(mean_f wR_f²), over the frames with a nonzero denominator; every
            frame then counts equally whatever its intensity, and a minibatch mean is an unbiased estimate of the
            full-batch value (the ratio of sums is not).
        frame_loss: with ``per_frame_mean``, how the per-frame values combine: 'rms' (above) or 'mean', the
            arithmetic mean over frames of wR_f — the published aggregate itself (and diffBloch's training loss);
            the rms weighs the worst frames more.

    Returns:
        The loss (a scalar, dimensionless).
    """
    _check_kind(kind)
    i_scaled = _scaled(i_calc, obs, kind)
    if not per_frame_mean:
        num, den = _sums(i_scaled, obs, kind, None)
        return _safe_sqrt(_safe_ratio(num, den))
    if frame_loss not in ("rms", "mean"):
        from jaxed.errors import JaxedInputError

        raise JaxedInputError(f"frame_loss '{frame_loss}': expected 'rms' or 'mean'")
    num, den = _sums(i_scaled, obs, kind, -1)
    n_frames = jnp.maximum(jnp.sum(den > 0), 1)
    if frame_loss == "mean":
        return jnp.sum(_safe_sqrt(_safe_ratio(num, den))) / n_frames
    return _safe_sqrt(jnp.sum(_safe_ratio(num, den)) / n_frames)


def summary(i_calc: Float[Array, "n_frames n_refl"], obs: Observations, n_params: int = 0, *,
            kind: str = "paper", free: Observations | None = None) -> dict:
    """R factors of unscaled model intensities, as python numbers (for reports; host side).

    Each wR is evaluated at its own closed-form scales (wR_all: paper scales; wR_all_jana and GoF: Jana scales);
    R_obs and R_all at the scales of ``kind`` (the residual refined), which are returned as ``scales``.

    Also the means over frames of the per-frame values of :func:`frame_values` (diffBloch's aggregate): frames
    without an observed reflection are left out of the R_obs mean, frames without any observed intensity out of the
    wR_all mean.

    With ``free`` (the R_free set held out of ``obs``, jaxed.refine.problem.make_observations) also R_free and
    wR_free (:func:`free_values`) and the counts N_free_obs, N_free.

    Returns:
        {'R_obs', 'R_all', 'wR_all', 'wR_all_jana', 'GoF', 'R_obs_frame_mean', 'wR_all_frame_mean', 'N_obs', 'N_all',
        'scales_kind', 'scales'[, 'R_free', 'wR_free', 'N_free_obs', 'N_free']}.
    """
    _check_kind(kind)
    values = _summary_values(i_calc, obs, n_params, kind)
    n_obs, n_all = counts(obs)
    out = {name: float(values[name]) for name in ("R_obs", "R_all", "wR_all", "wR_all_jana", "GoF")}
    per_frame = frame_values(i_calc, obs)
    for name in ("R_obs", "wR_all"):
        v = per_frame[name][per_frame[f"has_{name}"]]
        out[f"{name}_frame_mean"] = float(v.mean()) if v.size else 0.0
    scales = [float(x) for x in np.asarray(values["k"])]
    out |= {"N_obs": n_obs, "N_all": n_all, "scales_kind": kind, "scales": scales}
    if free is not None:
        n_free_obs, n_free = counts(free)
        out |= {k: float(v) for k, v in free_values(i_calc, obs, free, kind=kind).items()}
        out |= {"N_free_obs": n_free_obs, "N_free": n_free}
    return out


def _l1_scale(f_obs: np.ndarray, f_calc: np.ndarray) -> float:
    """c ≥ 0 minimising Σ|F_o − c·F_c| (host, one frame): the median of F_o/F_c weighted by F_c (exact).

    Σ|F_o − cF_c| = Σ F_c·|F_o/F_c − c| over F_c > 0 (+ a constant from F_c = 0), a weighted L1 distance whose
    minimisers are the weighted medians; the smallest one is returned (1 when every F_c is 0)."""
    ok = f_calc > 0
    if not np.any(ok):
        return 1.0
    ratio, weight = f_obs[ok] / f_calc[ok], f_calc[ok]
    order = np.argsort(ratio, kind="stable")
    cum = np.cumsum(weight[order])
    return float(ratio[order][np.searchsorted(cum, 0.5 * cum[-1])])


def frame_values(i_calc: Float[Array, "n_frames n_refl"], obs: Observations) -> dict:
    """Per-frame R_obs and wR_all (paper form), each at the scale that minimises it for that frame (host, numpy).

    wR_all: the closed-form paper scale (:func:`frame_scales`). R_obs = Σ_obs|F_o − √k F_c| / Σ_obs F_o over the
    frame's observed reflections, minimised exactly over √k (:func:`_l1_scale`); diffBloch minimises each metric
    over a grid of 100 scales instead, which can only give values ≥ these.

    Returns:
        {'R_obs', 'wR_all', 'has_R_obs', 'has_wR_all', 'N_obs', 'N_all'}: arrays over frames; ``has_*`` is False
        where the frame has no observed reflection (R_obs) or no observed intensity (wR_all), whose value is 0.
    """
    wr = np.asarray(wr_all_paper(_scaled(jnp.asarray(i_calc), obs, "paper"), obs, per_frame=True), np.float64)
    has_wr = np.asarray(jnp.sum(obs.w_paper**2 * obs.i_obs**2, axis=-1)) > 0  # the denominator of wR_all
    i_calc = np.where(np.asarray(obs.mask), np.asarray(i_calc, dtype=np.float64), 0.0)
    f_obs, observed = np.asarray(obs.f_obs, dtype=np.float64), np.asarray(obs.observed)
    f_calc = np.sqrt(np.maximum(i_calc, 0.0))
    r = np.zeros(len(i_calc))
    has_r = observed.any(axis=1)
    for i in np.nonzero(has_r)[0]:
        fo, fc = f_obs[i, observed[i]], f_calc[i, observed[i]]
        c = _l1_scale(fo, fc)
        r[i] = np.sum(np.abs(fo - c * fc)) / np.sum(fo) if np.sum(fo) > 0 else 0.0
    return {"R_obs": r, "wR_all": wr, "has_R_obs": has_r, "has_wR_all": has_wr,
            "N_obs": observed.sum(axis=1), "N_all": np.asarray(obs.mask).sum(axis=1)}


@partial(jax.jit, static_argnames="kind")
def _summary_values(i_calc: jax.Array, obs: Observations, n_params, kind: str) -> dict:
    paper = _scaled(i_calc, obs, "paper")
    jana = _scaled(i_calc, obs, "jana")
    chosen = paper if kind == "paper" else jana
    return {"R_obs": r_obs(chosen, obs), "R_all": r_all(chosen, obs), "wR_all": wr_all_paper(paper, obs),
            "wR_all_jana": wr_all_jana(jana, obs), "GoF": goodness_of_fit(jana, obs, n_params),
            "k": frame_scales(i_calc, obs, kind=kind)}


# ------------------------------------------------------------------------------------------------------- R_free
def _canonical_hkl(hkl: np.ndarray, rotations: np.ndarray | None) -> np.ndarray:
    """One representative per class of symmetry-equivalent reflections and Friedel mates, (n, 3) int.

    h and h·R (reciprocal indices transform with the rotation part from the right) and −h are one class; the
    representative is the lexicographically largest member.
    """
    hkl = np.asarray(hkl, np.int64).reshape(-1, 3)
    rots = [np.eye(3)] if rotations is None else list(np.asarray(rotations))
    images = np.concatenate([np.rint(hkl @ r).astype(np.int64) for r in rots], axis=0).reshape(len(rots), -1, 3)
    images = np.concatenate([images, -images], axis=0)  # (n_images, n, 3)
    order = np.lexsort((images[..., 2], images[..., 1], images[..., 0]), axis=0)[-1]  # largest per reflection
    return images[order, np.arange(hkl.shape[0])]


def free_set_mask(refl_hkl: np.ndarray, refl_mask: np.ndarray, fraction: float, *, seed: int = 0,
                  by: str = "reflections", rotations: np.ndarray | None = None) -> np.ndarray:
    """The R_free test set: True for held-out observations, (n_frames, n_refl) bool (host side, reproducible).

    Args:
        refl_hkl: (n_frames, n_refl, 3) indices; refl_mask: (n_frames, n_refl) real observations.
        fraction: share held out, 0 < fraction < 1 (typically a few %).
        by: 'reflections' — a random ``fraction`` of the unique reflections (symmetry equivalents under
            ``rotations`` (n_ops, 3, 3) and Friedel mates form one class), with every frame's observation of a chosen
            class held out, so no measurement of it reaches the optimiser; 'frames' — a random ``fraction`` of the
            frames, entirely (at least one), to judge a thickness model on frames it never saw.
        seed: the choice depends only on (seed, the set of unique reflections / the number of frames).
    """
    refl_mask = np.asarray(refl_mask, bool)
    if not 0.0 < fraction < 1.0:
        from jaxed.errors import JaxedInputError

        raise JaxedInputError(f"R_free fraction {fraction}: expected 0 < fraction < 1")
    rng = np.random.default_rng(seed)
    if by == "frames":
        n_frames = refl_mask.shape[0]
        n_free = min(max(1, int(round(fraction * n_frames))), max(n_frames - 1, 1))
        rows = rng.choice(n_frames, n_free, replace=False)
        free = np.zeros_like(refl_mask)
        free[rows] = True
        return free & refl_mask
    if by != "reflections":
        raise ValueError(f"free set by {by!r}: expected 'reflections' or 'frames'")
    canon = _canonical_hkl(np.asarray(refl_hkl)[refl_mask], rotations)
    unique, inverse = np.unique(canon, axis=0, return_inverse=True)
    n_free = max(1, int(round(fraction * len(unique)))) if len(unique) else 0
    chosen = np.zeros(len(unique), bool)
    chosen[rng.choice(len(unique), n_free, replace=False)] = True
    free = np.zeros_like(refl_mask)
    free[refl_mask] = chosen[np.asarray(inverse).reshape(-1)]
    return free


def free_values(i_calc: Float[Array, "n_frames n_refl"], obs_work: Observations, obs_free: Observations, *,
                kind: str = "paper") -> dict:
    """R_free (R_obs of the held-out observed reflections) and wR_free (the paper's wR_all of the held-out set).

    The frame scales come from the work set (the free reflections do not influence them); a frame without any
    work reflection (held-out frames) is scaled on its own free reflections, the only option for a nuisance scale.
    """
    k_work = frame_scales(i_calc, obs_work, kind=kind)
    k_free = frame_scales(i_calc, obs_free, kind=kind)
    k = jnp.where(jnp.any(obs_work.mask, axis=-1), k_work, k_free)
    scaled = k[:, None] * jnp.where(obs_free.mask, i_calc, 0.0)
    return {"R_free": r_obs(scaled, obs_free), "wR_free": wr_all_paper(scaled, obs_free)}
