"""Standard uncertainties of a refinement: covariance, propagation, correlations, CIF parenthesis notation.

Covariance of the refined parameters p (the usual least-squares estimate):

    V(p) = GoF² · (Jᵀ W J)⁻¹,     GoF² = Σ w r² / (N − P − N_scales)

where J W^(1/2) = ∂r/∂p is the Jacobian of the weighted residual vector of the refined kind
(:func:`jaxed.refine.objective.residual_vector`, PHYSICS.md §7.1), N the number of observations used, P the rank of JᵀWJ
(the number of independent parameter combinations the data determine) and N_scales the per-frame scales, which are
eliminated in closed form (variable projection: the Jacobian of the projected residual gives the structure block of
the full covariance, the Schur complement). A constant normalisation of r cancels in V. Rank-deficient directions
(e.g. over-parameterised thickness networks) are handled by the pseudo-inverse (eigenvalues of the scaled normal
matrix below ``rcond`` dropped). The estimate is meaningful when the weights are inverse variances — Jana's |F| form
with σ(F) from counting statistics; for the paper's mixed form it is the same formula applied as-is.

Derived quantities q(p) — fractional and Cartesian positions, U_ij (CIF convention), U_eq and bond lengths — get
V(q) = G V(p) Gᵀ with G = ∂q/∂p from JAX (linear propagation). Correlations are reported between crystallographic
parameters (x, y, z, U_ij or U_iso, occupancy of each site, and the non-structural parameters when they are few);
coordinates fixed by symmetry (zero s.u.) are left out and exact ±1 correlations of symmetry-tied pairs are flagged.

Notation: :func:`format_su` (jaxed.physics.crystal, re-exported here) writes 0.4697(3) with the s.u. in the last digits, one significant digit, two when the
leading digit is 1 (the IUCr "rule of 19").
"""
from __future__ import annotations

import dataclasses
import math
import jax
import jax.numpy as jnp
import numpy as np

from jaxed.refine import objective
from jaxed.errors import JaxedInputError
from jaxed.model.parameters import StructureModel
from jaxed.physics.crystal import format_su, u_equivalent
from jaxed.refine.lsq import LeastSquares

__all__ = ["format_su", "Uncertainties", "standard_uncertainties", "find_bonds"]

_UIJ = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
_UIJ_NAMES = ("U11", "U22", "U33", "U23", "U13", "U12")


def find_bonds(crystal, frac: np.ndarray, *, tolerance: float = 1.15, max_length: float = 4.0) -> list[tuple]:
    """Bonds among the ASU sites and their symmetry images (host side).

    A pair is bonded when its distance is below ``tolerance`` × (sum of covalent radii, gemmi) and ``max_length`` Å.
    Returns a list of (i, j, op, (n1, n2, n3)): site i to the image R_op x_j + t_op + n of site j; each distinct
    (pair, length) once.
    """
    import gemmi

    frac = np.asarray(frac)
    rot, trans = np.asarray(crystal.rotations), np.asarray(crystal.translations)
    direct = np.asarray(crystal.direct)
    radii = [gemmi.Element(el).covalent_r for el in crystal.site_elements]
    shifts = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)])
    out, seen = [], set()
    for i in range(len(frac)):
        for j in range(i, len(frac)):
            limit = min(tolerance * (radii[i] + radii[j]), max_length)
            for op in range(len(rot)):
                image = rot[op] @ frac[j] + trans[op]
                base = -np.rint(image - frac[i])
                for s in shifts:
                    n = base + s
                    d = float(np.linalg.norm(direct @ (image + n - frac[i])))
                    if 0.5 < d < limit:
                        key = (i, j, round(d, 5))
                        if key not in seen:
                            seen.add(key)
                            out.append((i, j, op, tuple(int(v) for v in n)))
    return out


def _symmetry_code(op: int, n: tuple) -> str:
    if op == 0 and not any(n):
        return "."
    return f"{op + 1}_{n[0] + 5}{n[1] + 5}{n[2] + 5}"


@dataclasses.dataclass
class Uncertainties:
    """Standard uncertainties of a refined model (numpy arrays; see the module docstring).

    Attributes:
        labels, values, covariance: the refined parameters (flat, as jaxed.refine.lsq.LeastSquares orders them) and
            their covariance V(p), GoF² included.
        gof: √(Σ w r² / (N − P − N_scales)); n_obs, rank, n_scales: N, P, N_scales.
        frac, frac_su: (n_asu, 3) fractional coordinates; cart, cart_su: (n_asu, 3) [Å].
        u_cif, u_cif_su: (n_asu, 3, 3) [Å²]; u_eq, u_eq_su: (n_asu,) [Å²].
        bonds: list of dicts {atom_1, atom_2, symmetry, distance [Å], su [Å], text}.
        crystallographic: dict of names, values, su and the correlation matrix of the reported parameters.
    """

    labels: list
    values: np.ndarray
    covariance: np.ndarray
    gof: float
    n_obs: int
    rank: int
    n_scales: int
    site_labels: tuple
    frac: np.ndarray
    frac_su: np.ndarray
    cart: np.ndarray
    cart_su: np.ndarray
    u_cif: np.ndarray
    u_cif_su: np.ndarray
    u_eq: np.ndarray
    u_eq_su: np.ndarray
    bonds: list
    crystallographic: dict

    @property
    def su(self) -> np.ndarray:
        """s.u. of the refined parameters (flat)."""
        return np.sqrt(np.maximum(np.diag(self.covariance), 0.0))

    def cif_sigmas(self) -> dict:
        """{'frac', 'u_cif', 'u_eq', 'bonds'} s.u. for :func:`jaxed.app.report.write_refined_cif`."""
        return {"frac": self.frac_su, "u_cif": self.u_cif_su, "u_eq": self.u_eq_su, "bonds": self.bonds}

    def strongest_correlations(self, n: int = 10, threshold: float = 0.5) -> list[dict]:
        """The ``n`` largest |ρ| ≥ threshold between reported parameters; symmetry-tied pairs (|ρ| = 1 to 1e-8)
        are left out."""
        names, corr = self.crystallographic["names"], np.asarray(self.crystallographic["correlation"])
        pairs = []
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
                rho = corr[a, b]
                if threshold <= abs(rho) < 1 - 1e-8:
                    pairs.append({"a": names[a], "b": names[b], "rho": float(rho)})
        return sorted(pairs, key=lambda p: -abs(p["rho"]))[:n]

    def report_dict(self, n_correlations: int = 10) -> dict:
        """JSON-ready summary for report.json."""
        c = self.crystallographic
        return {
            "method": "V = GoF² (Jᵀ W J)⁻¹ of the refined weighted residuals, linear propagation",
            "GoF": self.gof, "N_obs_used": self.n_obs, "rank": self.rank, "N_scales": self.n_scales,
            "parameters": [{"name": n, "value": float(v), "su": float(s), "text": format_su(float(v), float(s))}
                           for n, v, s in zip(c["names"], c["values"], c["su"])],
            "sites": [{"label": lab, "frac": self.frac[j].tolist(), "frac_su": self.frac_su[j].tolist(),
                       "cart_A": self.cart[j].tolist(), "cart_su_A": self.cart_su[j].tolist(),
                       "U_eq": float(self.u_eq[j]), "U_eq_su": float(self.u_eq_su[j]),
                       "U_eq_text": format_su(float(self.u_eq[j]), float(self.u_eq_su[j]))}
                      for j, lab in enumerate(self.site_labels)],
            "bonds": self.bonds,
            "correlation": {"names": c["names"], "matrix": np.round(np.asarray(c["correlation"]), 4).tolist()},
            "strongest_correlations": self.strongest_correlations(n_correlations),
        }


def _residual_norm2(obs: objective.Observations, kind: str) -> float:
    """The denominator c² of the normalised residual vector (Σ w I_o² of the paper form, Σ w F_o² of Jana's)."""
    if kind == "paper":
        return float(jnp.sum(obs.w_paper**2 * obs.i_obs**2))
    return float(jnp.sum(obs.w_jana * obs.f_obs**2))


def _pinv_psd(a: np.ndarray, rcond: float) -> tuple[np.ndarray, int]:
    """Pseudo-inverse of a symmetric positive semi-definite matrix in Jacobi-scaled form, and its rank."""
    d = np.diag(a).copy()
    scale = 1.0 / np.sqrt(np.where(d > d.max(initial=0.0) * 1e-300, d, 1.0))
    scale = np.where(d > 0, scale, 0.0)
    w, v = np.linalg.eigh(a * scale[:, None] * scale[None, :])
    keep = w > rcond * w.max(initial=0.0)
    inv = (v[:, keep] / w[keep]) @ v[:, keep].T
    return inv * scale[:, None] * scale[None, :], int(np.sum(keep))


def standard_uncertainties(lsq: LeastSquares, params: dict, structure: StructureModel, *,
                           obs: objective.Observations | None = None, rcond: float = 1e-10,
                           bond_tolerance: float = 1.15, max_nonstructural: int = 12) -> Uncertainties:
    """Covariance of the refined parameters at ``params`` and the s.u. of everything derived from them.

    Args:
        lsq: the residual function of the refinement and the groups it refines
            (jaxed.refine.lsq.make_least_squares); a matrix-free one is replaced by its dense twin (``lsq.dense()``).
            The other groups are held fixed (their uncertainty is not propagated).
        params: refined parameters (at the minimum).
        structure: the structure parameterisation (``structure.atoms(params["structure"])``, its crystal).
        obs: observations (default: ``lsq.obs``).
        rcond: relative eigenvalue cut-off of the pseudo-inverse.
        bond_tolerance: bonds are pairs closer than this × the sum of covalent radii.
        max_nonstructural: thickness / orientation parameters join the correlation matrix when there are at most
            this many (not for a thickness network).
    """
    lsq = lsq.dense()
    obs = lsq.obs if obs is None else obs
    x, fixed = lsq.split(params)
    r, jac = lsq.jacobian(x, fixed, obs)
    r, jac = np.asarray(r), np.asarray(jac)
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(jac))):
        raise JaxedInputError("standard uncertainties: non-finite residuals or Jacobian at these parameters")
    mask = np.asarray(obs.mask)
    n_obs = int(mask.sum())
    n_scales = int(np.any(mask, axis=1).sum())
    cov0, rank = _pinv_psd(jac.T @ jac, rcond)
    dof = max(n_obs - rank - n_scales, 1)
    # r is normalised (Σ r² = wR²); V is invariant to that constant c: (c²JᵀWJ)⁻¹ · c²Σwr²/dof. GoF is not.
    chi2 = float(r @ r) * _residual_norm2(obs, lsq.kind)
    gof2 = chi2 / dof
    cov = cov0 * (float(r @ r) / dof)

    crystal = structure.crystal
    direct = jnp.asarray(crystal.direct)
    n_len = np.linalg.norm(np.asarray(crystal.reciprocal), axis=0)
    atoms0 = structure.atoms(lsq.merge(x, fixed)["structure"])
    bonds = find_bonds(crystal, np.asarray(atoms0.frac), tolerance=bond_tolerance)
    rot = jnp.asarray(np.asarray(crystal.rotations))
    trans = jnp.asarray(np.asarray(crystal.translations))

    def derived(xv):
        atoms = structure.atoms(lsq.merge(xv, fixed)["structure"])
        frac = atoms.frac
        cart = frac @ direct.T
        u_cif = atoms.u_star / jnp.asarray(n_len[:, None] * n_len[None, :])[None]
        dist = [jnp.linalg.norm(direct @ (rot[op] @ frac[j] + trans[op] + jnp.asarray(n, frac.dtype) - frac[i]))
                for i, j, op, n in bonds]
        dist = jnp.stack(dist) if dist else jnp.zeros((0,), frac.dtype)
        return {"frac": frac, "cart": cart, "u_cif": u_cif, "u_eq": u_equivalent(atoms.u_star, direct),
                "occ": atoms.occupancy, "bonds": dist}

    values = jax.tree_util.tree_map(np.asarray, derived(jnp.asarray(x)))
    grads = jax.jacfwd(derived)(jnp.asarray(x))

    def su_of(name):
        g = np.asarray(grads[name]).reshape(-1, x.size)
        var = np.einsum("ik,kl,il->i", g, cov, g)
        return np.sqrt(np.maximum(var, 0.0)).reshape(np.shape(values[name])), g

    frac_su, g_frac = su_of("frac")
    cart_su, _ = su_of("cart")
    u_cif_su, g_u = su_of("u_cif")
    u_eq_su, g_ueq = su_of("u_eq")
    bond_su, _ = su_of("bonds")
    _, g_occ = su_of("occ")

    labels = crystal.labels
    bond_list = [{"atom_1": labels[i], "atom_2": labels[j], "symmetry": _symmetry_code(op, n),
                  "distance": float(d), "su": float(s), "text": format_su(float(d), float(s))}
                 for (i, j, op, n), d, s in zip(bonds, values["bonds"], bond_su)]

    # crystallographic parameters for the correlation matrix
    names, rows, vals = [], [], []
    g_frac = g_frac.reshape(len(labels), 3, -1)
    g_u = g_u.reshape(len(labels), 3, 3, -1)
    g_occ = g_occ.reshape(len(labels), -1)
    aniso = structure.aniso
    for j, lab in enumerate(labels):
        for k, axis in enumerate("xyz"):
            names.append(f"{lab}.{axis}")
            rows.append(g_frac[j, k])
            vals.append(values["frac"][j, k])
        if aniso[j]:
            for (a, b), nm in zip(_UIJ, _UIJ_NAMES):
                names.append(f"{lab}.{nm}")
                rows.append(g_u[j, a, b])
                vals.append(values["u_cif"][j, a, b])
        else:
            names.append(f"{lab}.Uiso")
            rows.append(g_ueq[j])
            vals.append(values["u_eq"][j])
        if structure.refine_occupancy:
            names.append(f"{lab}.occ")
            rows.append(g_occ[j])
            vals.append(values["occ"][j])
    flat_labels = lsq.parameter_labels()
    other = [i for i, lab in enumerate(flat_labels) if not lab.startswith("structure")]
    if 0 < len(other) <= max_nonstructural:
        for i in other:
            e = np.zeros(x.size)
            e[i] = 1.0
            names.append(flat_labels[i])
            rows.append(e)
            vals.append(float(np.asarray(x)[i]))
    g_all = np.array(rows).reshape(len(rows), -1)
    cov_c = g_all @ cov @ g_all.T
    su_c = np.sqrt(np.maximum(np.diag(cov_c), 0.0))
    free = su_c > 1e-9 * max(su_c.max(initial=0.0), 1e-300)
    keep = np.nonzero(free)[0]
    corr = cov_c[np.ix_(keep, keep)] / np.outer(su_c[keep], su_c[keep])
    crystallographic = {"names": [names[i] for i in keep], "values": [float(vals[i]) for i in keep],
                        "su": su_c[keep].tolist(), "correlation": np.clip(corr, -1.0, 1.0)}
    return Uncertainties(labels=flat_labels, values=np.asarray(x), covariance=cov, gof=math.sqrt(gof2), n_obs=n_obs,
                         rank=rank, n_scales=n_scales, site_labels=tuple(labels), frac=values["frac"],
                         frac_su=frac_su, cart=values["cart"], cart_su=cart_su, u_cif=values["u_cif"],
                         u_cif_su=u_cif_su, u_eq=values["u_eq"], u_eq_su=u_eq_su, bonds=bond_list,
                         crystallographic=crystallographic)
