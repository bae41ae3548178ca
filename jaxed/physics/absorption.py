"""Absorptive (imaginary) potential from thermal diffuse scattering, Einstein model (PHYSICS.md §3.3).

Electrons scattered by thermal vibrations leave the Bragg beams for large angles; for the elastic wave field this
loss is an absorptive potential U'_g (``U^tot_g = U_g + i U'_g``). For independently vibrating atoms with isotropic
mean-square displacement (Debye–Waller B = 8π² U_iso) the absorptive form factor of one atom is (Yoshioka 1957; Hall
& Hirsch 1965; Bird & King 1990, Acta Cryst. A46, 202, in crystallographic units: |g| = 2 sinθ/λ, no 2π)

    f'(g) = γ/(2K) ∫ d²q f(|q|) f(|g − q|) [exp(−B g²/4) − exp(−B (q² + |g − q|²)/4)]      [Å]

with f the elastic electron form factor (rest mass, Å), γ the relativistic factor, K = 1/λ, and the integral over
the plane through the origin containing g (the small-angle limit of the Ewald sphere). The first exponential is the
atom's elastic Debye–Waller factor; the bracket is the fraction of the scattering into q that is thermally diffuse.
The absorptive structure factor and coefficient follow as for the elastic ones (PHYSICS.md §3.1):

    F'_g = Σ_atoms occ · f'(|g|; B_atom) · exp(−2πi g·r),      U'_g = γ F'_g / (π Ω)

so U'_{−g} = U'_g* and U'_0 = K Σ_cell σ_TDS / (2πΩ) — the mean absorption μ₀ = 2πU'₀/K equals n·σ_TDS, the number
density times the Einstein-model TDS cross-section σ_TDS = ∫ |γf|² (1 − e^{−B q²/2}) dΩ, dΩ = d²q/K²
(tests/test_absorption.py).

Evaluation. With q = g/2 + p, |q|² + |g − q|² = g²/2 + 2p², so the diffuse term depends on |p| only and the bracket
vanishes at the two peaks of f·f (p = ±g/2): the integrand is smooth. It is integrated in polar coordinates about
g/2 with Gauss–Legendre nodes (radius p = tan(πu/2) Å⁻¹, u ∈ [0, 1); angle over a quarter turn, the integrand being
even in both axes). 64 × 32 nodes reproduce the closed form that a Gaussian (Peng/ITC 4.3.2.2) parameterisation
admits to ≤ 1e-6 relative for |g| ≤ 4 Å⁻¹, B = 0.3–3 Å² (tests). f'(|g|) is computed on a uniform grid of
:data:`N_KNOTS` |g| values up to the largest |g| needed and interpolated linearly (≤ 1e-4 relative, tests), so the
cost does not grow with the number of reflections. Anisotropic sites use B_eq = 8π² tr(U_cart)/3 for the absorptive
part (the elastic part keeps the full tensor). Everything is differentiable in the ADPs, which refine through it.

Core-loss (ionisation) absorption is not included.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxed.physics.crystal import AtomParams, Crystal, expand, u_equivalent
from jaxed.physics.potential import structure_sum
from jaxed.physics.scattering import form_factor

__all__ = ["N_KNOTS", "tds_integral", "absorptive_form_factors", "absorptive_coefficients"]

#: |g| grid size on which f' is evaluated before interpolation.
N_KNOTS = 384
_N_RADIAL = 64
_N_ANGULAR = 32


def _nodes(n_radial: int, n_angular: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Polar quadrature about g/2: radii p [Å⁻¹] with weights p dp (n_radial,), and cos θ with weights dθ over a
    quarter turn times 4 (n_angular,)."""
    u, wu = np.polynomial.legendre.leggauss(n_radial)
    u, wu = (u + 1.0) / 2.0, wu / 2.0
    th, wt = np.polynomial.legendre.leggauss(n_angular)
    th, wt = (th + 1.0) * np.pi / 4.0, wt * np.pi / 4.0
    p = np.tan(np.pi * u / 2.0)
    dp = (np.pi / 2.0) / np.cos(np.pi * u / 2.0) ** 2
    return p, p * dp * wu, np.cos(th), 4.0 * wt


def _radial_products(g: jax.Array, a: jax.Array, b: jax.Array, kind: str, p: jax.Array, cos_t: jax.Array,
                     w_t: jax.Array) -> jax.Array:
    """Angular sums Σ_θ w_θ f(|g/2 + p|) f(|g/2 − p|) per species, (n_species, n_g, n_radial) [Å²]."""
    base = g[:, None, None] ** 2 / 4.0 + p[None, :, None] ** 2
    cross = g[:, None, None] * p[None, :, None] * cos_t[None, None, :]
    f_plus = form_factor((base + cross).ravel(), a, b, kind)  # (n_species, n_g·n_radial·n_angular)
    f_minus = form_factor((base - cross).ravel(), a, b, kind)
    shape = (a.shape[0], g.shape[0], p.shape[0], cos_t.shape[0])
    return jnp.sum((f_plus * f_minus).reshape(shape) * w_t[None, None, None, :], axis=-1)


def _bracket_sum(g: jax.Array, b_iso: jax.Array, radial: jax.Array, p: jax.Array, w_p: jax.Array) -> jax.Array:
    """Σ_p w_p radial(g, p) [e^{−Bg²/4} − e^{−B(g²/8 + p²/2)}] for each site; radial (n_site, n_g, n_radial)."""
    g2 = g[None, :, None] ** 2
    bb = b_iso[:, None, None]
    bracket = jnp.exp(-bb * g2 / 4.0) - jnp.exp(-bb * (g2 / 8.0 + p[None, None, :] ** 2 / 2.0))
    return jnp.sum(radial * bracket * w_p[None, None, :], axis=-1)


def tds_integral(g: jax.Array, b_iso: jax.Array, a: jax.Array, b: jax.Array, kind: str,
                 species: jax.Array | None = None, n_radial: int = _N_RADIAL,
                 n_angular: int = _N_ANGULAR) -> jax.Array:
    """∫ d²q f(|q|) f(|g − q|) [e^{−B g²/4} − e^{−B(q² + |g−q|²)/4}] for each site.

    The form-factor product depends on the species only, the bracket on B and |p| only: the angular sums are done
    once per species, and each site costs one (n_g, n_radial) bracket.

    Args:
        g: |g| values, (n_g,) [Å⁻¹].
        b_iso: Debye–Waller B per site, (n_site,) [Å²].
        a, b: form-factor coefficients per species, (n_species, 5) (jaxed.physics.scattering).
        kind: 'lobato' or 'peng'.
        species: species index of each site, (n_site,); None: site i is species i.

    Returns:
        (n_site, n_g) [Å²]; multiply by γ/(2K) for f' [Å].
    """
    p, w_p, cos_t, w_t = (jnp.asarray(x, dtype=g.dtype) for x in _nodes(n_radial, n_angular))
    radial = _radial_products(g, a, b, kind, p, cos_t, w_t)
    if species is not None:
        radial = radial[species]
    return _bracket_sum(g, b_iso, radial, p, w_p)


def _site_b_iso(atoms: AtomParams, crystal: Crystal) -> jax.Array:
    """B_eq = 8π² tr(U_cart)/3 per ASU site [Å²] (U_cart = A U* Aᵀ, PHYSICS.md §3.2)."""
    return 8.0 * jnp.pi**2 * u_equivalent(atoms.u_star, jnp.asarray(crystal.direct, atoms.u_star.dtype))


def absorptive_form_factors(atoms: AtomParams, crystal: Crystal, g: jax.Array, gamma: float, k: float,
                            n_knots: int = N_KNOTS) -> jax.Array:
    """f'(|g|) of each ASU site [Å], (n_asu, n_g), interpolated from ``n_knots`` evaluations up to max |g|."""
    dtype = atoms.frac.dtype
    a = jnp.asarray(crystal.ff_a, dtype)
    b = jnp.asarray(crystal.ff_b, dtype)
    b_iso = _site_b_iso(atoms, crystal)
    g_top = jax.lax.stop_gradient(jnp.max(g)) * (1.0 + 1e-9) + 1e-9
    knots = jnp.linspace(0.0, 1.0, n_knots, dtype=dtype) * g_top
    on_knots = tds_integral(knots, b_iso, a, b, crystal.scattering, jnp.asarray(crystal.species)) * (gamma / (2.0 * k))
    return jax.vmap(lambda f: jnp.interp(g, knots, f))(on_knots)


def absorptive_coefficients(atoms: AtomParams, crystal: Crystal, hkl: jax.Array, gamma: float, k: float) -> jax.Array:
    """U'_h = γ F'_h/(πΩ), (n_hkl,) complex [Å⁻²]; U'_{−h} = U'_h*, positive U'_0 damps (PHYSICS.md §3.3)."""
    dtype = atoms.frac.dtype
    hkl = jnp.asarray(hkl, dtype=dtype)
    recip = jnp.asarray(crystal.reciprocal, dtype=dtype)
    g2 = jnp.sum((hkl @ recip.T) ** 2, axis=-1)
    g = jnp.where(g2 > 0, jnp.sqrt(jnp.where(g2 > 0, g2, 1.0)), 0.0)  # finite derivative at g = 0
    f_site = absorptive_form_factors(atoms, crystal, g, gamma, k)  # (n_asu, n_hkl)
    frac, _, weight = expand(atoms, crystal)
    f_abs = structure_sum(f_site, weight[..., None], frac, hkl)
    return f_abs * (gamma / (jnp.pi * crystal.volume))
