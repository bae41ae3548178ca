"""Synthetic 3D-ED data by the reference paper's protocol (Malik et al. 2026, Methods 4.4) and random starts.

1. Frame geometry: the frames of a `.cif_pets` file, or a generated continuous-rotation tilt series.
2. A thickness profile t(θ): constant, wedge (linear in θ), plate t₀/cos θ, or a random smooth function (seeded).
3. Per frame, every reflection with |g| ≤ g_max_refine whose Bragg condition is crossed within the frame
   (R_Sg ≤ r_sg_max) gets its rocking-curve integrated dynamical intensity (jaxed.model.experiment).
4. Intensities are scaled so that the brightest reflection of the dataset equals I_max (10⁶ default; 10² low dose),
   reflections below one count are removed, Poisson noise is drawn, σ = √I (σ = 1 for I < 1 after noise).
5. The result is a `.cif_pets` (jaxed.data.pets.write_pets) plus a JSON sidecar with the true thickness per frame.

Random starting models (:func:`random_start`): each free coordinate displaced uniformly in [−Δ, Δ] Å, ADPs scaled
by factors uniform in [1 − 1.5Δ/Å, 1 + 1.5Δ/Å] (so 0.2 Å ↔ ±30 %), optionally made isotropic (U_eq).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxed.physics.bloch import BlochSettings
from jaxed.physics.crystal import AtomParams, Crystal, u_equivalent
from jaxed.errors import JaxedInputError
from jaxed.model.integrate import integrated_intensities
from jaxed.model.selection import ExperimentSettings, prepare_experiment, uses_precession
from jaxed.data.pets import PetsData, beam_uvw, frame_rotation
from jaxed.physics.geometry import excitation_errors, hkl_within
from jaxed.model.parameters import StructureModel

__all__ = ["thickness_profile", "tilt_series", "synthesize", "random_start", "write_sidecar", "read_sidecar"]

PROFILES = ("constant", "wedge", "plate", "random")


def thickness_profile(kind: str, theta: np.ndarray, t0: float = 800.0, *, slope: float = 0.3, seed: int = 0,
                      amplitude: float = 0.25, n_modes: int = 4) -> np.ndarray:
    """A thickness per frame [Å] for tilt angles ``theta`` [rad].

    'constant': t₀.  'wedge': t₀ (1 + slope·θ/θ_max).  'plate': t₀ / cos θ.
    'random': t₀ exp(Σ_k a_k sin(kπθ/(2θ_max) + φ_k)), a_k ~ N(0, amplitude/k), φ_k uniform — smooth, seeded.
    """
    theta = np.asarray(theta, float)
    span = max(np.abs(theta).max(), 1e-6)
    if kind == "constant":
        return np.full_like(theta, t0)
    if kind == "wedge":
        return t0 * (1.0 + slope * theta / span)
    if kind == "plate":
        return t0 / np.cos(theta)
    if kind == "random":
        rng = np.random.default_rng(seed)
        k = np.arange(1, n_modes + 1)
        a = rng.normal(0.0, amplitude / k)
        phase = rng.uniform(0, 2 * np.pi, n_modes)
        return t0 * np.exp(np.sum(a[:, None] * np.sin(k[:, None] * np.pi * theta[None] / (2 * span) + phase[:, None]),
                                  axis=0))
    raise JaxedInputError(f"thickness profile '{kind}': expected one of {', '.join(PROFILES)}")


def tilt_series(crystal: Crystal, *, alpha_start: float = -60.0, alpha_end: float = 60.0, step: float = 1.0,
                semi_angle: float = 0.5, wavelength: float = 0.02508, seed: int = 0):
    """A generated continuous-rotation geometry: a random crystal orientation, frames every ``step`` degrees.

    Returns a :class:`jaxed.data.pets.PetsData` without reflections (β = 0, ω = 0).
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    ub = q @ np.asarray(crystal.reciprocal)
    alpha = np.arange(alpha_start, alpha_end + 1e-9, step)
    n = len(alpha)
    uvw = np.array([beam_uvw(ub, a, 0.0) for a in alpha])
    return PetsData(path="<generated>", cell=tuple(crystal.cell), wavelength=wavelength, ub=ub,
                    frame_id=np.arange(1, n + 1), uvw=uvw, precession_angle=np.full(n, semi_angle), alpha=alpha,
                    beta=np.zeros(n), omega=np.zeros(n), frame_scale=np.ones(n), hkl=np.zeros((0, 3), int),
                    intensity=np.zeros(0), sigma=np.ones(0), frame_index=np.zeros(0, int),
                    geometry="continuous rotation", details={}, energy_kev=None)


def _excited_reflections(frames, g_max_refine: float, r_sg_max: float, precession: bool) -> tuple[np.ndarray, np.ndarray]:
    ub = np.asarray(frames.ub, float)
    k = 1.0 / float(frames.wavelength)
    cand = hkl_within(ub, g_max_refine)
    cand = cand[~np.all(cand == 0, axis=1)]
    hkls, idx = [], []
    for i, (a, b) in enumerate(zip(frames.alpha, frames.beta)):
        g = cand @ (frame_rotation(a, b) @ ub).T
        s = np.abs(np.asarray(excitation_errors(g, k)))
        semi = np.deg2rad(frames.precession_angle[i])
        width = np.linalg.norm(g[:, :2], axis=1) * np.sin(semi) if precession else np.abs(g[:, 1]) * semi
        keep = s <= r_sg_max * width
        hkls.append(cand[keep])
        idx.append(np.full(keep.sum(), i))
    return np.concatenate(hkls), np.concatenate(idx)


def synthesize(crystal: Crystal, atoms: AtomParams, frames, thickness: np.ndarray, bloch: BlochSettings,
               settings: ExperimentSettings, *, i_max: float = 1e6, seed: int = 0, r_sg_max: float = 1.0,
               noise: bool = True):
    """Synthetic integrated intensities on the geometry of ``frames`` (a PetsData; its reflections are ignored).

    Args:
        thickness: (n_frames,) true thickness per frame [Å].
        settings: modelling settings (g_max, sg_max, g_max_refine, n_samples, semi-angle).
        i_max: counts of the brightest reflection.  r_sg_max: which reflections a frame lists.

    Returns:
        PetsData with the synthetic reflections (path '<synthetic>').
    """
    thickness = np.asarray(thickness, float)
    if thickness.shape != (len(frames.alpha),) or np.any(~np.isfinite(thickness)) or np.any(thickness <= 0):
        raise JaxedInputError(f"thickness: expected {len(frames.alpha)} positive values, got shape {thickness.shape}")
    precession = uses_precession(settings, frames)
    hkl, frame_index = _excited_reflections(frames, settings.g_max_refine, r_sg_max, precession)
    full = dataclasses.replace(frames, hkl=hkl, intensity=np.ones(len(hkl)), sigma=np.ones(len(hkl)),
                               frame_index=frame_index)
    exp = prepare_experiment(full, crystal, dataclasses.replace(settings, r_sg_max=None, sg_max_refine=None))
    calc = np.asarray(jax.jit(integrated_intensities, static_argnames="settings")(
        atoms, crystal, exp, jnp.asarray(thickness), bloch))
    mask = np.asarray(exp.refl_mask)
    scale = i_max / calc[mask].max()
    rows_hkl, rows_i, rows_f = [], [], []
    for i in range(exp.n_frames):
        m = mask[i]
        rows_hkl.append(np.asarray(exp.refl_hkl)[i][m])
        rows_i.append(calc[i][m] * scale)
        rows_f.append(np.full(m.sum(), i))
    hkl, lam, fidx = np.concatenate(rows_hkl), np.concatenate(rows_i), np.concatenate(rows_f)
    keep = lam >= 1.0
    hkl, lam, fidx = hkl[keep], lam[keep], fidx[keep]
    counts = np.random.default_rng(seed).poisson(lam).astype(float) if noise else lam
    sigma = np.sqrt(np.maximum(counts, 1.0))
    return dataclasses.replace(frames, path="<synthetic>", hkl=hkl, intensity=counts, sigma=sigma, frame_index=fidx)


def write_sidecar(path: str | Path, frames, thickness: np.ndarray, **meta) -> None:
    """JSON with the true thickness per frame (frame ids, α [deg], t [Å]) and any metadata."""
    Path(path).write_text(json.dumps({
        "frame_id": [int(x) for x in frames.frame_id], "alpha_deg": [float(x) for x in frames.alpha],
        "thickness_A": [float(x) for x in thickness], **meta}, indent=1))


def read_sidecar(path: str | Path) -> dict:
    """The JSON written by :func:`write_sidecar` (frame_id, alpha_deg [deg], thickness_A [Å], metadata)."""
    return json.loads(Path(path).read_text())


def random_start(model: StructureModel, params: dict, delta: float, *, seed: int = 0, adp_factor: float = 1.5,
                 isotropic: bool = False) -> dict:
    """A symmetry-aware random starting model (the paper's protocol).

    Each free coordinate moves uniformly in [−Δ, Δ] Å along its (unit-length in Å) free direction; ADPs are scaled by
    1 + ε, ε uniform in [−adp_factor·Δ, adp_factor·Δ] (Δ in Å). ``isotropic``: the sites become isotropic (U_eq) —
    use a model built with aniso='none' for the refinement, or rebuild with aniso='all' to switch back.
    """
    rng = np.random.default_rng(seed)
    direct = np.asarray(model.crystal.direct)
    new = {k: v for k, v in params.items()}
    xyz = []
    for b, xi in zip(model.basis, params["xyz"]):
        lengths = np.linalg.norm(direct @ b, axis=0) if b.size else np.zeros(0)
        xyz.append(jnp.asarray(np.asarray(xi) + rng.uniform(-delta, delta, size=b.shape[1]) / np.maximum(lengths, 1e-12)))
    new["xyz"] = xyz
    f = adp_factor * delta
    if np.size(params["u_iso"]):
        new["u_iso"] = jnp.asarray(np.asarray(params["u_iso"]) + np.log1p(rng.uniform(-f, f, np.shape(params["u_iso"]))))
    if np.size(params["u_chol"]):
        # U = L Lᵀ scaled by (1 + ε) per site ⇔ L scaled by sqrt(1 + ε)
        eps = rng.uniform(-f, f, (np.shape(params["u_chol"])[0], 1))
        new["u_chol"] = jnp.asarray(np.asarray(params["u_chol"]) * np.sqrt(1 + eps))
    if isotropic:
        atoms = model.atoms(new)
        u_eq = u_equivalent(np.asarray(atoms.u_star), direct)
        return {"xyz": new["xyz"], "u_iso": jnp.asarray(np.log(u_eq)), "u_chol": jnp.zeros((0, 6)),
                **({"occ": new["occ"]} if "occ" in new else {})}
    return new
