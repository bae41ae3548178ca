"""Structure-comparison metrics for synthetic benchmarks (the reference paper's Table 1).

* ASU RMSD [Å]: each refined ASU site is matched to the nearest symmetry-equivalent image of its true site (all
  operations, lattice translations); for polar space groups the free origin along the polar directions (those left
  invariant by every rotation part) is removed by subtracting the mean displacement along them.
* ‖ΔU‖_F [Å²]: Frobenius norm of the difference of the Cartesian ADP tensors, stacked over the ASU.
* thickness error: RMS and mean absolute relative error of the per-frame thickness.
"""
from __future__ import annotations

import numpy as np

from jaxed.physics.crystal import AtomParams, Crystal

__all__ = ["asu_rmsd", "adp_frobenius", "thickness_errors"]


def _polar_basis(crystal: Crystal) -> np.ndarray:
    rot = np.asarray(crystal.rotations)
    stacked = (rot - np.eye(3)[None]).reshape(-1, 3)
    _, sv, vt = np.linalg.svd(stacked)
    return vt[sv < 1e-8]  # (d, 3) fractional directions invariant under every rotation part


def _displacements(crystal: Crystal, refined: AtomParams, truth: AtomParams) -> np.ndarray:
    rot, trans = np.asarray(crystal.rotations), np.asarray(crystal.translations)
    direct = np.asarray(crystal.direct)
    out = []
    for x, y in zip(np.asarray(refined.frac), np.asarray(truth.frac)):
        images = rot @ y + trans  # (n_ops, 3)
        d = x[None] - images
        d -= np.rint(d)
        cart = d @ direct.T
        out.append(d[np.argmin(np.linalg.norm(cart, axis=1))])
    return np.array(out)  # fractional


def asu_rmsd(crystal: Crystal, refined: AtomParams, truth: AtomParams, sites=None) -> float:
    """Root-mean-square distance [Å] between refined and true ASU sites (symmetry images, polar origin removed).

    ``sites``: optional boolean mask or index array of the ASU sites to average over (e.g. the non-H atoms); the
    polar-origin shift is always fitted on all sites."""
    d = _displacements(crystal, refined, truth)
    polar = _polar_basis(crystal)
    if polar.size:
        # remove the mean shift along the polar directions (least squares in Cartesian metric)
        direct = np.asarray(crystal.direct)
        p_cart = polar @ direct.T  # (k, 3)
        mean = (d @ direct.T).mean(axis=0)
        coef, *_ = np.linalg.lstsq(p_cart.T, mean, rcond=None)
        d = d - (coef @ polar)[None]
    cart = d @ np.asarray(crystal.direct).T
    if sites is not None:
        cart = cart[np.asarray(sites)]
    return float(np.sqrt(np.mean(np.sum(cart**2, axis=1))))


def adp_frobenius(crystal: Crystal, refined: AtomParams, truth: AtomParams, sites=None) -> float:
    """‖U_cart(refined) − U_cart(truth)‖_F over all ASU sites [Å²] (``sites``: optional mask or indices, as in
    :func:`asu_rmsd`)."""
    direct = np.asarray(crystal.direct)
    diff = np.asarray(refined.u_star) - np.asarray(truth.u_star)
    u = np.einsum("ij,njk,lk->nil", direct, diff, direct)
    if sites is not None:
        u = u[np.asarray(sites)]
    return float(np.sqrt(np.sum(u**2)))


def thickness_errors(refined: np.ndarray, truth: np.ndarray) -> dict:
    """RMS and mean absolute relative thickness errors, and the RMS error [Å]."""
    refined, truth = np.asarray(refined, float), np.asarray(truth, float)
    rel = (refined - truth) / truth
    return {"rms_relative": float(np.sqrt(np.mean(rel**2))), "mean_abs_relative": float(np.mean(np.abs(rel))),
            "rms_A": float(np.sqrt(np.mean((refined - truth) ** 2)))}
