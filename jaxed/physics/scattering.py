"""Electron scattering factors f_e (rest mass, neutral atoms) and Debye–Waller factors.

Two parameterisations (docs/PHYSICS.md §2.2), each evaluated at its own argument — the classic silent bug is to feed
|g| to a table fitted in s = |g|/2 (PHYSICS.md §0, §2.4):

* ``lobato`` (default): Lobato & Van Dyck (2014), f_e(g) = Σᵢ aᵢ (2 + bᵢ g²)/(1 + bᵢ g²)², argument g = |g| [Å⁻¹].
  Coefficients in ``jaxed/data/lobato_2014.json`` (the paper's Table 1).
* ``peng``: Peng et al. (1996) = ITC Vol. C Table 4.3.2.2, f_e(s) = Σᵢ aᵢ exp(−bᵢ s²), argument s = |g|/2, read from
  gemmi's ``Element.c4322``.

Both return f_e in [Å]. Coefficients are stored as two (n_species, 5) arrays (a, b) so that the evaluation is one
pure, differentiable expression.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Sequence

import gemmi
import jax
import jax.numpy as jnp
import numpy as np

from jaxed.errors import JaxedInputError

__all__ = ["SCATTERING_KINDS", "form_factor_coefficients", "form_factor", "debye_waller"]

SCATTERING_KINDS = ("lobato", "peng")


@functools.lru_cache(maxsize=1)
def _lobato_table() -> dict:
    text = resources.files("jaxed").joinpath("data/lobato_2014.json").read_text()
    return json.loads(text)["coefficients"]


def form_factor_coefficients(elements: Sequence[str], kind: str = "lobato") -> tuple[np.ndarray, np.ndarray]:
    """Form-factor coefficients (a, b) of the given element symbols (host, numpy).

    Args:
        elements: element symbols (n_species,).  kind: 'lobato' or 'peng'.

    Returns:
        a, b, each (n_species, 5) float64. 'lobato': f_e(g) = Σ aᵢ (2 + bᵢ g²)/(1 + bᵢ g²)² with a [Å] and b [Å²]
        (argument g = |g| [Å⁻¹]); 'peng': f_e(s) = Σ aᵢ exp(−bᵢ s²) with a [Å] and b [Å²] (argument s = |g|/2).

    Raises:
        JaxedInputError: an unknown kind or an element without coefficients.
    """
    if kind not in SCATTERING_KINDS:
        raise JaxedInputError(f"scattering '{kind}': expected one of {', '.join(SCATTERING_KINDS)}")
    a_rows, b_rows = [], []
    for el in elements:
        if kind == "lobato":
            entry = _lobato_table().get(el)
            if entry is None:
                raise JaxedInputError(f"element '{el}': no Lobato–Van Dyck coefficients (Z = 1–103 available)")
            a_rows.append(entry["a"])
            b_rows.append(entry["b"])
        else:
            coef = gemmi.Element(el).c4322 if gemmi.Element(el).atomic_number > 0 else None
            if coef is None:
                raise JaxedInputError(f"element '{el}': not in ITC C Table 4.3.2.2 (gemmi c4322)")
            a_rows.append(list(coef.a))
            b_rows.append(list(coef.b))
    return np.array(a_rows, dtype=np.float64), np.array(b_rows, dtype=np.float64)


def form_factor(g2: jax.Array, a: jax.Array, b: jax.Array, kind: str) -> jax.Array:
    """Electron form factors f_e [Å] of each species at squared reciprocal distances.

    Args:
        g2: |g|² [Å⁻²], shape (n_hkl,).
        a, b: coefficients (n_species, 5) from :func:`form_factor_coefficients`.
        kind: 'lobato' (argument |g|) or 'peng' (argument s² = |g|²/4).

    Returns:
        (n_species, n_hkl) [Å].
    """
    g2 = g2[None, :, None]
    a = a[:, None, :]
    b = b[:, None, :]
    if kind == "lobato":
        x = b * g2
        return jnp.sum(a * (2.0 + x) / (1.0 + x) ** 2, axis=-1)
    if kind == "peng":
        return jnp.sum(a * jnp.exp(-b * (g2 / 4.0)), axis=-1)
    raise ValueError(f"unknown scattering kind {kind!r}")


def debye_waller(hkl: jax.Array, u_star: jax.Array) -> jax.Array:
    """Anisotropic Debye–Waller factor T(h) = exp(−2π² hᵀ U* h) (PHYSICS.md §3.2).

    Args:
        hkl: Miller indices as floats, (n_hkl, 3).
        u_star: (..., 3, 3) U* tensors [–].

    Returns:
        (..., n_hkl) [–]. For U* = U_iso G* this is exp(−2π² U_iso |g|²) = exp(−B s²).
    """
    quad = jnp.einsum("hi,...ij,hj->...h", hkl, u_star, hkl)
    return jnp.exp(-2.0 * jnp.pi**2 * quad)
