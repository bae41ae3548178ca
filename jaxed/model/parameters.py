"""Refinable structure parameters with the site-symmetry constraints of each Wyckoff position.

Positions: x_j = x⁰_j + P_j ξ_j, where the columns of P_j (3 × d_j, fractional) span the directions that every
operation of the site's stabiliser leaves invariant (the range of the projector Π_j = mean_S R_S). A special position
therefore stays special under any step, and ξ holds only the free coordinates.

ADPs, anisotropic: U_cart,j = sym_j(L_j L_jᵀ) with L_j lower triangular (6 numbers) and sym_j the average of
R U Rᵀ over the stabiliser (Cartesian rotations). An average of positive-definite congruences is positive definite,
so U is positive definite by construction and obeys the site symmetry exactly. ADPs, isotropic: U_iso = exp(ℓ).

Occupancies (optional): occ = sigmoid(o) ∈ (0, 1).

The parameters are a plain dict pytree (optax-ready):
``{"xyz": [ξ_j ...], "u_iso": (n_iso,), "u_chol": (n_aniso, 6), "occ": (n_asu,)}``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxed.physics.crystal import AtomParams, Crystal, u_equivalent

__all__ = ["StructureModel", "make_structure_model"]

_TRIL = np.tril_indices(3)


def _stabiliser(crystal: Crystal, frac: np.ndarray, tol_a: float = 0.02) -> list[np.ndarray]:
    rot = np.asarray(crystal.rotations)
    trans = np.asarray(crystal.translations)
    direct = np.asarray(crystal.direct)
    out = []
    for x in frac:
        d = rot @ x + trans - x
        d -= np.rint(d)
        out.append(np.linalg.norm(d @ direct.T, axis=-1) < tol_a)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class StructureModel:
    """Maps free parameters to :class:`AtomParams` (host-built, then pure JAX).

    Attributes:
        x0: (n_asu, 3) reference fractional positions.
        basis: per site, (3, d_j) free-displacement directions (fractional).
        sym_ops_cart: per site, (n_stab, 3, 3) Cartesian rotations of the stabiliser.
        aniso: per-site flags (True: Cholesky ADP, False: U_iso).
        refine_occupancy: whether occupancies are free.
        occupancy0: (n_asu,) fixed occupancies when not refined.
    """

    crystal: Crystal
    x0: np.ndarray
    basis: tuple
    sym_ops_cart: tuple
    aniso: tuple
    refine_occupancy: bool
    occupancy0: np.ndarray

    @property
    def n_free_xyz(self) -> int:
        return int(sum(b.shape[1] for b in self.basis))

    def init(self, atoms: AtomParams) -> dict:
        """Parameters that reproduce ``atoms`` (ξ = 0; ADPs and occupancies from the given values)."""
        direct = np.asarray(self.crystal.direct)
        u_cart = direct @ np.asarray(atoms.u_star) @ direct.T
        params = {"xyz": [np.zeros(b.shape[1]) for b in self.basis]}
        iso = [j for j, a in enumerate(self.aniso) if not a]
        ani = [j for j, a in enumerate(self.aniso) if a]
        u_eq = u_equivalent(np.asarray(atoms.u_star), direct)
        params["u_iso"] = jnp.asarray(np.log(np.maximum(u_eq[iso], 1e-6)).reshape(-1))
        chol = []
        for j in ani:
            u = u_cart[j]
            w, v = np.linalg.eigh(0.5 * (u + u.T))
            u = (v * np.maximum(w, 1e-6)) @ v.T
            chol.append(np.linalg.cholesky(u)[_TRIL])
        params["u_chol"] = jnp.asarray(np.array(chol).reshape(-1, 6))
        params["xyz"] = [jnp.asarray(x) for x in params["xyz"]]
        if self.refine_occupancy:
            occ = np.clip(np.asarray(atoms.occupancy), 1e-4, 1 - 1e-4)
            params["occ"] = jnp.asarray(np.log(occ / (1 - occ)))
        return params

    def atoms(self, params: dict) -> AtomParams:
        """The :class:`AtomParams` of ``params`` (pure JAX, differentiable)."""
        dtype = params["u_iso"].dtype if params["u_iso"].size else params["u_chol"].dtype
        direct = jnp.asarray(self.crystal.direct, dtype)
        inv_direct = jnp.linalg.inv(direct)
        frac = jnp.stack([jnp.asarray(self.x0[j], dtype) + jnp.asarray(b, dtype) @ params["xyz"][j]
                          for j, b in enumerate(self.basis)])
        g_star = jnp.asarray(np.asarray(self.crystal.reciprocal).T @ np.asarray(self.crystal.reciprocal), dtype)
        u_star = []
        i_iso = i_ani = 0
        for j, is_aniso in enumerate(self.aniso):
            if is_aniso:
                lower = jnp.zeros((3, 3), dtype).at[_TRIL].set(params["u_chol"][i_ani])
                u = lower @ lower.T
                ops = jnp.asarray(self.sym_ops_cart[j], dtype)
                u = jnp.mean(jnp.einsum("sij,jk,slk->sil", ops, u, ops), axis=0)
                u_star.append(inv_direct @ u @ inv_direct.T)
                i_ani += 1
            else:
                u_star.append(jnp.exp(params["u_iso"][i_iso]) * g_star)
                i_iso += 1
        if self.refine_occupancy:
            occ = jax.nn.sigmoid(params["occ"])
        else:
            occ = jnp.asarray(self.occupancy0, dtype)
        return AtomParams(frac=frac, u_star=jnp.stack(u_star), occupancy=occ)


def make_structure_model(crystal: Crystal, atoms: AtomParams, *, aniso: str = "as-given",
                         refine_occupancy: bool = False) -> tuple[StructureModel, dict]:
    """Build the constrained parameterisation of ``crystal``/``atoms`` and its initial parameters.

    Args:
        aniso: 'as-given' (each site as in the CIF), 'all' (every site anisotropic; isotropic sites start as
            U_iso·I — the switch the paper makes for CsPbBr₃), or 'none' (every site isotropic, U_eq).
        refine_occupancy: refine occupancies in (0, 1).

    Returns:
        (model, params).
    """
    if aniso not in ("as-given", "all", "none"):
        raise ValueError(f"aniso {aniso!r}: expected 'as-given', 'all' or 'none'")
    frac = np.asarray(atoms.frac)
    stab = _stabiliser(crystal, frac)
    rot = np.asarray(crystal.rotations)
    direct = np.asarray(crystal.direct)
    inv_direct = np.linalg.inv(direct)
    basis, ops_cart = [], []
    for j, s in enumerate(stab):
        projector = rot[s].mean(axis=0)  # projector onto the invariant subspace (fractional coordinates)
        u, sv, _ = np.linalg.svd(projector)
        basis.append(u[:, sv > 0.5])
        ops_cart.append(np.einsum("ij,sjk,kl->sil", direct, rot[s], inv_direct))
    flags = {"as-given": tuple(crystal.aniso), "all": (True,) * len(stab), "none": (False,) * len(stab)}[aniso]
    model = StructureModel(crystal=crystal, x0=frac.copy(), basis=tuple(basis), sym_ops_cart=tuple(ops_cart),
                           aniso=flags, refine_occupancy=refine_occupancy,
                           occupancy0=np.asarray(atoms.occupancy).copy())
    return model, model.init(atoms)
