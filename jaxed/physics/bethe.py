"""Strong beams in the Bloch matrix, weak beams by second-order Bethe potentials (PHYSICS.md §4.8).

For one orientation the beams of the Bloch matrix are split on the host into strong beams S (the direct beam, every
beam close to its Bragg condition, every beam whose Bethe strength is large, every observed reflection near its
Bragg condition) and weak beams W. In the project's symmetrised convention (jaxed.physics.bloch: A C = 2K_n γ D C,
B = M A M, M = D^(−1/2), φ = M⁻¹ψ obeys dφ/dτ = iBφ with τ = πt/K_n), neglecting the weak–weak couplings and
taking every Bloch wave's eigenvalue at the reference value λ̄ = B₀₀ (= U₀ with the mean potential on the diagonal,
else 0) in the weak rows gives the strong-beam problem

    B_eff = B_SS − B_SW diag(1/δ_w) B_WS,   δ_w = B_ww − λ̄,

i.e. A_eff,gh = U_{g−h} − Σ_w U_{g−w} U_{w−h} / (2K s_w − λ̄ g_n,w/K_n) for g, h ∈ S, the diagonal included
(Bethe 1928; Zuo & Weickenmeier 1995; the sign holds for s_g > 0 inside the Ewald sphere). B_eff is propagated
exactly like a full matrix (jaxed.physics.bloch.propagate: ``eigh`` with the Daleckii–Krein derivative, or the
absorbing paths), so gradients stay exact and finite at degenerate eigenvalues.

**Weak amplitudes.** With φ_S(τ) = exp(iτB_eff) e₀ known, each weak row is first order in its coupling:
dφ_w/dτ = i b_w φ_w + i B_wS φ_S, φ_w(0) = 0 (b_w = B_ww). In the eigenbasis B_eff = C diag(λ) Cᴴ, α = Cᴴ e₀,

    φ_w(τ) = Σ_j (B_wS c_j) α_j (e^{iτλ_j} − e^{iτb_w})/(λ_j − b_w),    ψ_w = M_w φ_w,

computed from the same ``eigh`` as φ_S (jaxed.physics.bloch.propagate_eigh_weak: the Daleckii–Krein derivative of
φ_S unchanged, φ_w differentiated through the eigenvectors with a broadened inverse gap, exact at degeneracies since
φ_w is a matrix function of B_eff). Far from resonance it is the textbook Bethe amplitude ψ_w ≈ −Σ_h U_{w−h}
ψ_h/(2K s_w) plus the boundary term that makes ψ_w(0) = 0. The absorbing and 'expm' paths expand 1/(λ_j − b_w)
about λ̄ instead, φ_w = −Σ_{n≤N} δ_w^{−(n+1)} B_wS (B_eff − λ̄)^n [φ_S(τ) − e^{iτ b_w} e₀] (N = ``weak_order``),
with the weak beam's own wave damped by its diagonal absorptive term, b_w → b_w + iB'_ww. Amplitudes are computed
only for the weak beams that are observed reflections; the other weak beams are only folded into B_eff.

Shapes are host decisions: :func:`select_bethe_beams` returns per-sample index lists into a frame's beam list,
padded with masks (:class:`BetheBeams`); :func:`bethe_intensities` is the traced one-orientation kernel.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxed.physics.bloch import BlochSettings, beam_geometry, propagate, propagate_eigh_weak, structure_matrix
from jaxed.physics.geometry import excitation_errors

__all__ = ["BetheSettings", "BetheBeams", "partition_beams", "select_bethe_beams", "bethe_wavefunction",
           "bethe_intensities"]


@dataclasses.dataclass(frozen=True)
class BetheSettings:
    """How the beams of each orientation are split into strong (in the matrix) and weak (perturbative) beams.

    Attributes:
        strength: a beam g is strong when its Bethe strength max_{h ∈ S₀} |U_{g−h}| / |2K s_g| ≥ this [–], S₀ the
            direct beam and the beams forced strong below (so a beam coupled strongly to an excited reflection, not
            only to the direct beam, is kept). 0: every beam is strong (the full matrix).
        sg_strong: beams with |s_g| ≤ this are always strong [Å⁻¹] (it also keeps the denominators 2K s_w of the
            weak beams away from 0).
        observed_sg: observed reflections with |s_g| ≤ this at the orientation are always strong [Å⁻¹].
        max_strong: cap on the strong beams of one orientation (None: no cap); beyond it the beams of lowest
            strength are folded in as weak (forced beams are kept first, then by decreasing strength). The padded
            matrix size is the largest strong set over all samples, so the cap bounds the cost.
        weak_amplitudes: 'exact' (default): the elastic 'eigh' path computes the first-order weak amplitudes
            exactly from the strong-beam eigendecomposition (eigenvector derivative in the backward pass);
            'series': the expansion about λ̄ (cheaper backward: products with φ_S only), which the absorbing and
            'expm' paths always use.
        weak_order: N of the series expansion about λ̄ (module docstring); 0 = the textbook Bethe amplitude.
    """

    strength: float = 0.01
    sg_strong: float = 1.0e-3
    observed_sg: float = 2.0e-3
    max_strong: int | None = None
    weak_amplitudes: str = "exact"
    weak_order: int = 0

    def __post_init__(self):
        if not self.strength >= 0:
            raise ValueError(f"Bethe strength threshold {self.strength}: expected ≥ 0")
        if not (self.sg_strong >= 0 and self.observed_sg >= 0):
            raise ValueError(f"sg_strong {self.sg_strong}, observed_sg {self.observed_sg}: expected ≥ 0 [Å⁻¹]")
        if self.max_strong is not None and not (isinstance(self.max_strong, int) and self.max_strong >= 1):
            raise ValueError(f"max_strong {self.max_strong!r}: expected None or an integer ≥ 1")
        if self.weak_amplitudes not in ("exact", "series"):
            raise ValueError(f"weak_amplitudes {self.weak_amplitudes!r}: expected 'exact' or 'series'")
        if not (isinstance(self.weak_order, int) and self.weak_order >= 0):
            raise ValueError(f"weak_order {self.weak_order!r}: expected an integer ≥ 0")


@partial(jax.tree_util.register_dataclass,
         data_fields=["strong", "strong_mask", "weak", "weak_mask", "folded", "folded_mask"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class BetheBeams:
    """Per-sample strong and weak beam lists, indices into each frame's beam list (host arrays, padded).

    Attributes:
        strong: (n_frames, n_samples, n_strong) int; entry 0 is the direct beam.  strong_mask: same shape, bool.
        weak: (n_frames, n_samples, n_weak) int, the weak beams that are observed reflections (their amplitudes are
            computed).  weak_mask: same shape, bool (False on padding).
        folded: (n_frames, n_samples, n_folded) int, the other weak beams (folded into B_eff only).  folded_mask.
    """

    strong: np.ndarray
    strong_mask: np.ndarray
    weak: np.ndarray
    weak_mask: np.ndarray
    folded: np.ndarray
    folded_mask: np.ndarray


def partition_beams(u_abs: np.ndarray, coupling: np.ndarray, sg: np.ndarray, candidates: np.ndarray,
                    observed: np.ndarray, k: float, settings: BetheSettings) -> tuple[np.ndarray, np.ndarray]:
    """Strong and weak beams of one orientation (host, numpy).

    Args:
        u_abs: |U_h| for the coupling table's entries, (n_unique + 1,) [Å⁻²].
        coupling: (n_b, n_b) int index of g − h into ``u_abs`` (the frame's table).
        sg: excitation errors of the frame's beams at this orientation, (n_b,) [Å⁻¹].
        candidates: indices of the beams of this orientation's matrix into the frame list; candidates[0] = 0, the
            direct beam.
        observed: (n_b,) bool, the frame's observed reflections.
        k: K [Å⁻¹].

    Returns:
        (strong, weak): index arrays into the frame list, candidates' order kept (direct beam first in strong).
    """
    candidates = np.asarray(candidates)
    s = np.abs(sg[candidates])
    forced = (s <= settings.sg_strong) | (observed[candidates] & (s <= settings.observed_sg))
    forced[0] = True
    s0 = candidates[forced]
    den = 2.0 * k * np.maximum(s, 1e-300)
    strength = u_abs[coupling[np.ix_(candidates, s0)]].max(axis=1) / den
    strong = forced | (strength >= settings.strength)
    if settings.max_strong is not None and strong.sum() > settings.max_strong:
        rank = np.argsort(-np.where(forced, np.inf, strength), kind="stable")  # forced first, then by strength
        strong = np.zeros_like(strong)
        strong[rank[: settings.max_strong]] = True
        strong[0] = True
    return candidates[strong], candidates[~strong]


def _pad(lists: list, n_frames: int, n_samples: int, multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
    n = max([len(x) for frame in lists for x in frame] + [1])
    n = -(-n // multiple) * multiple
    idx = np.zeros((n_frames, n_samples, n), np.int32)
    msk = np.zeros((n_frames, n_samples, n), bool)
    for i, frame in enumerate(lists):
        for j, x in enumerate(frame):
            idx[i, j, : len(x)] = x
            msk[i, j, : len(x)] = True
    return idx, msk


def select_bethe_beams(u_ext, hkl: np.ndarray, mask: np.ndarray, coupling: np.ndarray, orientations: np.ndarray,
                       reciprocal: np.ndarray, observed: np.ndarray, k: float, settings: BetheSettings,
                       sample_beams: np.ndarray | None = None,
                       sample_beam_mask: np.ndarray | None = None) -> BetheBeams:
    """Strong/weak split of every rocking sample of every frame (host, numpy; decided once, e.g. at the starting
    structure and orientations — it fixes the shapes).

    Args:
        u_ext: potential table (jaxed.physics.bloch.potential_table), (n_unique + 1,) or (2, n_unique + 1) [Å⁻²];
            the strengths use the elastic row's |U|.
        hkl: (n_frames, n_b, 3) int frame beam lists.  mask: (n_frames, n_b) bool.
        coupling: (n_frames, n_b, n_b) int.
        orientations: (n_frames, n_samples, 3, 3) crystal-Cartesian → lab of every sample.
        reciprocal: (3, 3) columns a*, b*, c* [Å⁻¹].
        observed: (n_frames, n_b) bool, True for the observed reflections of each frame.
        k: K [Å⁻¹].
        sample_beams, sample_beam_mask: (n_frames, n_samples, n_sub) per-sample candidate lists (the model's
            per-sample selection), or None: every beam of the frame list is a candidate at every sample.

    Returns:
        :class:`BetheBeams`, padded to multiples of 8: strong beams, observed weak beams, other weak beams.
    """
    u = np.asarray(u_ext)
    u_abs = np.abs(u[0] if u.ndim == 2 else u)
    hkl, mask, coupling = np.asarray(hkl), np.asarray(mask), np.asarray(coupling)
    orientations, observed = np.asarray(orientations), np.asarray(observed)
    n_frames, n_samples = orientations.shape[:2]
    strong_lists, weak_lists, folded_lists = [], [], []
    for i in range(n_frames):
        g = np.einsum("bj,sij->sbi", hkl[i] @ np.asarray(reciprocal).T, orientations[i])  # (n_s, n_b, 3) lab
        sg = np.asarray(excitation_errors(g, k))
        fs, fw, ff = [], [], []
        for j in range(n_samples):
            if sample_beams is None:
                cand = np.nonzero(mask[i])[0]
            else:
                cand = np.asarray(sample_beams[i, j])[np.asarray(sample_beam_mask[i, j])]
            s_idx, w_idx = partition_beams(u_abs, coupling[i], sg[j], cand, observed[i], k, settings)
            fs.append(s_idx)
            fw.append(w_idx[observed[i][w_idx]])
            ff.append(w_idx[~observed[i][w_idx]])
        strong_lists.append(fs)
        weak_lists.append(fw)
        folded_lists.append(ff)
    strong, strong_mask = _pad(strong_lists, n_frames, n_samples)
    weak, weak_mask = _pad(weak_lists, n_frames, n_samples)
    folded, folded_mask = _pad(folded_lists, n_frames, n_samples)
    return BetheBeams(strong, strong_mask, weak, weak_mask, folded, folded_mask)


def _coupling_block(u_ext: jax.Array, index: jax.Array, pair_mask: jax.Array,
                    settings: BlochSettings) -> tuple[jax.Array, jax.Array]:
    """Elastic and absorptive couplings U_{g−h}, U'_{g−h} of an index block (as structure_matrix), 0 off the mask."""
    if u_ext.ndim == 2:
        u = u_ext[0][index]
        u_abs = u_ext[1][index] + settings.absorption * u
    else:
        u = u_ext[index]
        u_abs = settings.absorption * u
    return jnp.where(pair_mask, u, 0.0), jnp.where(pair_mask, u_abs, 0.0)


def bethe_wavefunction(u_ext: jax.Array, hkl_s: jax.Array, mask_s: jax.Array, hkl_w: jax.Array, mask_w: jax.Array,
                       c_ss: jax.Array, c_sw: jax.Array, c_ws: jax.Array, rotation: jax.Array, thickness: jax.Array,
                       reciprocal: jax.Array, settings: BlochSettings, bethe: BetheSettings = BetheSettings(),
                       normal: jax.Array | None = None, n_amplitude: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Amplitudes of the strong beams (Bloch matrix with second-order Bethe potentials) and of the weak beams (first
    order off the strong-beam solution) of one orientation (module docstring).

    Args:
        u_ext: (n_unique + 1,) or (2, n_unique + 1) [Å⁻²] (jaxed.physics.bloch.potential_table).
        hkl_s: (n_s, 3) int strong beams, hkl_s[0] = 000.  mask_s: (n_s,) bool.
        hkl_w: (n_w, 3) int weak beams.  mask_w: (n_w,) bool.
        c_ss: (n_s, n_s), c_sw: (n_s, n_w), c_ws: (n_w, n_s) int indices of g − h into ``u_ext`` (row minus column).
        rotation: crystal → lab (3, 3).  thickness: (n_t,) [Å] along the surface normal.
        reciprocal: (3, 3) [Å⁻¹].  settings: physics settings.  bethe: uses ``weak_order``.
        normal: crystal-frame surface normal (3,) or None (along the beam).
        n_amplitude: amplitudes are computed for the first ``n_amplitude`` weak beams only (static; None: all);
            the others are only folded into B_eff (their amplitudes cost n_s² per beam and are not needed when they
            are not observed).

    Returns:
        (ψ_S (n_t, n_s), ψ_W (n_t, n_amplitude)) complex; zero on padding.
    """
    k = settings.k
    dtype = jnp.real(u_ext).dtype
    sg_s, gn_s, kn = beam_geometry(hkl_s, mask_s, rotation, reciprocal, k, dtype, normal)
    sg_w, gn_w, _ = beam_geometry(hkl_w, mask_w, rotation, reciprocal, k, dtype, normal)
    b, b_a, m_s = structure_matrix(u_ext, c_ss, mask_s, sg_s, gn_s, k, kn, settings)
    m_w = jnp.where(mask_w, 1.0 / jnp.sqrt(1.0 + gn_w / kn), 1.0) if settings.metric else jnp.ones_like(sg_w)
    u_sw, ua_sw = _coupling_block(u_ext, c_sw, mask_s[:, None] & mask_w[None, :], settings)
    u_ws, ua_ws = _coupling_block(u_ext, c_ws, mask_w[:, None] & mask_s[None, :], settings)
    r_sw, a_sw = (m_s[:, None] * x * m_w[None, :] for x in (u_sw, ua_sw))  # symmetrised blocks, B = M A M
    r_ws, a_ws = (m_w[:, None] * x * m_s[None, :] for x in (u_ws, ua_ws))
    lam_ref = jnp.real(b[0, 0])  # λ̄ = B₀₀ = U₀ (mean potential) or 0
    u0_elastic = (u_ext[0] if u_ext.ndim == 2 else u_ext)[c_ss[0, 0]]
    u0 = jnp.real(u0_elastic) if settings.mean_potential else 0.0
    b_w = (2.0 * k * sg_w + u0) * m_w**2  # B_ww
    delta = jnp.where(mask_w, b_w - lam_ref, 1.0)  # δ_w; padded weak beams couple through 0
    inv = (1.0 / delta)[None, :]
    # B_tot = B + iB_a; the correction B_SW δ⁻¹ B_WS splits into Hermitian elastic and absorptive parts
    if settings.absorbing:
        b_eff = b - ((r_sw * inv) @ r_ws - (a_sw * inv) @ a_ws)
        b_a_eff = b_a - ((r_sw * inv) @ a_ws + (a_sw * inv) @ r_ws)
    else:
        b_eff, b_a_eff = b - (r_sw * inv) @ r_ws, b_a
    tau = jnp.pi * thickness / kn
    na = hkl_w.shape[0] if n_amplitude is None else n_amplitude
    if not settings.absorbing and settings.propagator == "eigh" and bethe.weak_amplitudes == "exact":  # one eigh
        phi_s, phi_w = propagate_eigh_weak(b_eff, r_ws[:na], b_w[:na], tau)
    else:
        phi_s = propagate(b_eff, b_a_eff, tau, settings)  # (n_t, n_s)
        phi_w = _weak_series(phi_s, b_eff, b_a_eff, r_ws[:na], a_ws[:na], b_w[:na], delta[:na], lam_ref, tau, u_ext,
                             c_ss[0, 0], m_w[:na], settings, bethe.weak_order)
    mask_w, m_w = mask_w[:na], m_w[:na]
    psi_s = jnp.where(mask_s[None, :], phi_s * m_s[None, :], 0.0)
    psi_w = jnp.where(mask_w[None, :], phi_w * m_w[None, :], 0.0)
    return psi_s, psi_w


def _weak_series(phi_s, b_eff, b_a_eff, r_ws, a_ws, b_w, delta, lam_ref, tau, u_ext, i0, m_w, settings, order):
    """Weak amplitudes by the expansion of 1/(λ_j − b_w) about λ̄ (module docstring), for the absorbing and 'expm'
    paths: φ_w = −Σ_{n≤order} δ_w^{−(n+1)} B_wS (B_eff − λ̄)^n [φ_S(τ) − e^{iτ b_w} e₀], (n_t, n_w)."""
    absorbing = settings.absorbing
    b_tot = b_eff + 1j * b_a_eff if absorbing else b_eff
    ws_tot = r_ws + 1j * a_ws if absorbing else r_ws
    u0_abs = _coupling_block(u_ext, i0, True, settings)[1]
    bw_tot = b_w + 1j * jnp.real(u0_abs) * m_w**2 if absorbing else b_w  # the weak beam's own wave is damped
    n_s = b_eff.shape[0]
    shifted = b_tot - lam_ref * jnp.eye(n_s, dtype=b_tot.dtype)
    x_t, x_0 = phi_s, jnp.zeros(n_s, b_tot.dtype).at[0].set(1.0)  # (B_eff − λ̄)^n φ_S(τ) and (B_eff − λ̄)^n e₀
    boundary = jnp.exp(1j * tau[:, None] * bw_tot[None, :])  # (n_t, n_w)
    phi_w = jnp.zeros((tau.shape[0], r_ws.shape[0]), phi_s.dtype)
    for n in range(order + 1):
        if n > 0:
            x_t, x_0 = x_t @ shifted.T, shifted @ x_0
        term = x_t @ ws_tot.T - boundary * (ws_tot @ x_0)[None, :]
        phi_w = phi_w - term * (1.0 / delta ** (n + 1))[None, :]
    return phi_w


def bethe_intensities(u_ext: jax.Array, hkl: jax.Array, mask: jax.Array, coupling: jax.Array, strong: jax.Array,
                      strong_mask: jax.Array, weak: jax.Array, weak_mask: jax.Array, rotation: jax.Array,
                      thickness: jax.Array, reciprocal: jax.Array, settings: BlochSettings,
                      bethe: BetheSettings = BetheSettings(), normal: jax.Array | None = None,
                      folded: jax.Array | None = None, folded_mask: jax.Array | None = None) -> jax.Array:
    """Intensities I_g = |ψ_g|² of one orientation on its frame's beam list, strong beams from the reduced Bloch
    matrix and weak beams perturbatively (:func:`bethe_wavefunction`); ``folded`` beams enter B_eff like the weak
    ones but get no amplitude; beams in none of the lists (and folded beams) get 0.

    Args:
        u_ext: potential table [Å⁻²].  hkl: (n_b, 3) frame beam list.  mask: (n_b,) bool.
        coupling: (n_b, n_b) int index of g − h into ``u_ext`` (the frame's table; its last entry is U = 0).
        strong, strong_mask: (n_s,) indices into the frame list (strong[0] = 0, the direct beam) and mask.
        weak, weak_mask: (n_w,) indices and mask (one sample of :class:`BetheBeams`).
        folded, folded_mask: (n_f,) indices and mask of further weak beams folded in without amplitude, or None.
        rotation: crystal → lab (3, 3).  thickness: (n_t,) [Å].  reciprocal: (3, 3) [Å⁻¹].

    Returns:
        (n_t, n_b) intensities relative to a unit incident beam.
    """
    n_unique = u_ext.shape[-1] - 1
    hkl, mask, coupling = jnp.asarray(hkl), jnp.asarray(mask), jnp.asarray(coupling)
    n_amplitude = weak.shape[0]
    if folded is not None:
        weak = jnp.concatenate([weak, folded])
        weak_mask = jnp.concatenate([weak_mask, folded_mask])
    ms = mask[strong] & strong_mask
    mw = mask[weak] & weak_mask
    c_ss = jnp.where(ms[:, None] & ms[None, :], coupling[strong[:, None], strong[None, :]], n_unique)
    c_sw = jnp.where(ms[:, None] & mw[None, :], coupling[strong[:, None], weak[None, :]], n_unique)
    c_ws = jnp.where(mw[:, None] & ms[None, :], coupling[weak[:, None], strong[None, :]], n_unique)
    psi_s, psi_w = bethe_wavefunction(u_ext, hkl[strong], ms, hkl[weak], mw, c_ss, c_sw, c_ws, rotation, thickness,
                                      reciprocal, settings, bethe, normal, n_amplitude)
    i_s = jnp.real(psi_s * jnp.conj(psi_s))
    i_w = jnp.real(psi_w * jnp.conj(psi_w))
    out = jnp.zeros((thickness.shape[0], hkl.shape[0]), i_s.dtype)
    return out.at[:, strong].add(i_s).at[:, weak[:n_amplitude]].add(i_w)
