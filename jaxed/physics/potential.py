"""Fourier coefficients of the crystal potential (docs/PHYSICS.md §3.1).

Physics sign convention (PHYSICS.md §0):  V(r) = Σ_g V_g exp(+2πi g·r), hence

    F_g = Σ_atoms occ · f_e(|g|) · T(g) · exp(−2πi h·x)     [Å]
    V_g = 47.877647 · F_g / Ω                                [V]
    U_g = γ · F_g / (π Ω)                                    [Å⁻²]   (γ applied once, here)

Using the crystallographic exp(+2πi h·x) instead silently simulates the enantiomer (PHYSICS.md §6.4).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxed.physics.constants import VOLT_ANGSTROM2_PER_F
from jaxed.physics.crystal import AtomParams, Crystal, expand
from jaxed.physics.scattering import debye_waller, form_factor

__all__ = ["structure_factors", "structure_sum", "potential_coefficients", "potential_volts"]


def structure_factors(atoms: AtomParams, crystal: Crystal, hkl: jax.Array) -> jax.Array:
    """Electron structure factors F_h of the unit cell.

    Args:
        atoms: ASU parameters (differentiable).
        crystal: fixed crystal description.
        hkl: Miller indices, (n_hkl, 3) int or float.

    Returns:
        F_h, (n_hkl,) complex [Å], rest mass (no γ).
    """
    dtype = atoms.frac.dtype
    hkl = jnp.asarray(hkl, dtype=dtype)
    recip = jnp.asarray(crystal.reciprocal, dtype=dtype)
    g = hkl @ recip.T  # crystal-Cartesian g, (n_hkl, 3) [Å⁻¹]
    g2 = jnp.sum(g * g, axis=-1)
    f_species = form_factor(g2, jnp.asarray(crystal.ff_a, dtype), jnp.asarray(crystal.ff_b, dtype), crystal.scattering)
    f_site = f_species[jnp.asarray(crystal.species)]  # (n_asu, n_hkl)

    frac, u_star, weight = expand(atoms, crystal)  # (n_asu, n_ops, 3), (n_asu, n_ops, 3, 3), (n_asu, n_ops)
    dw = debye_waller(hkl, u_star)  # (n_asu, n_ops, n_hkl)
    return structure_sum(f_site, weight[..., None] * dw, frac, hkl)


def structure_sum(f_site: jax.Array, amp: jax.Array, frac: jax.Array, hkl: jax.Array) -> jax.Array:
    """Σ_sites f_site(h) Σ_images amp · exp(−2πi h·x) (physics sign, PHYSICS.md §0).

    Args:
        f_site: per-ASU-site factor, (n_asu, n_hkl).  amp: per image, (n_asu, n_ops, n_hkl) or (n_asu, n_ops, 1)
            (weights, Debye–Waller).
        frac: image positions, (n_asu, n_ops, 3).  hkl: (n_hkl, 3) float.

    Returns:
        (n_hkl,) complex.
    """
    phase = -2.0 * jnp.pi * jnp.einsum("hi,noi->noh", hkl, frac)
    real = jnp.sum(amp * jnp.cos(phase), axis=1)
    imag = jnp.sum(amp * jnp.sin(phase), axis=1)
    return jnp.sum(f_site * real, axis=0) + 1j * jnp.sum(f_site * imag, axis=0)


def potential_coefficients(atoms: AtomParams, crystal: Crystal, hkl: jax.Array, gamma: float) -> jax.Array:
    """U_h = γ F_h / (π Ω), (n_hkl,) complex [Å⁻²] (PHYSICS.md §3.1). ``gamma`` is the relativistic factor."""
    return structure_factors(atoms, crystal, hkl) * (gamma / (jnp.pi * crystal.volume))


def potential_volts(atoms: AtomParams, crystal: Crystal, hkl: jax.Array) -> jax.Array:
    """V_h = 47.877647 F_h / Ω, (n_hkl,) complex [V] (rest mass)."""
    return structure_factors(atoms, crystal, hkl) * (VOLT_ANGSTROM2_PER_F / crystal.volume)
