"""Host side of the forward model: a 3D-ED data set prepared for tracing (numpy only, before any ``jit``).

Everything that decides an array shape is fixed here: for each virtual frame the beams of its Bloch matrix (every
beam with |s_g| ≤ sg_max at any rocking sample, plus every reflection observed in that frame), the padding, the
couplings, the rocking / precession sample rotations, and the observed reflections to refine against (g_max_refine,
R_Sg, docs/PHYSICS.md §5.2). The traced integration over the samples is :mod:`jaxed.model.integrate`.

Geometry (docs/PETS.md): the data's UB describes the measured lattice; frame i has R_i = R_x(α_i) R_y(β_i) and
g_lab = R_i · UB · h. The model works with crystal-Cartesian reciprocal vectors B_s h of the structure's cell, so the
orientation matrix handed to the Bloch model is O_i = R_i · UB · B_s⁻¹ (a rotation up to the small cell difference).
Continuous rotation: samples R_x(δ_ℓ) O_i, δ_ℓ the quadrature nodes on [−φ, φ] about the tilt axis (lab x), φ the
integration semi-angle. Precession: samples R_z(θ_ℓ) R_x(φ_p) R_z(−θ_ℓ) O_i on the cone, θ_ℓ equally spaced.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import numpy as np

from jaxed.data.pets import frame_rotation
from jaxed.errors import JaxedInputError
from jaxed.settings import field_default, setting_of_field
from jaxed.physics.bloch import BlochSettings
from jaxed.physics.constants import energy_from_wavelength
from jaxed.physics.crystal import Crystal
from jaxed.physics.geometry import BeamSet, excitation_errors, hkl_within, make_beam_set, rotation_x, rotation_z

__all__ = ["ExperimentSettings", "Experiment", "prepare_experiment", "reselect_sample_beams", "quadrature_nodes",
           "GEOMETRIES", "QUADRATURES", "BEAM_SELECTIONS", "uses_precession"]


@dataclasses.dataclass(frozen=True)
class ExperimentSettings:
    """How the data are modelled (all static).

    Attributes:
        g_max: beams in the Bloch matrix, |g| ≤ g_max [Å⁻¹].
        sg_max: beams in the matrix, |s_g| ≤ sg_max at some rocking sample [Å⁻¹].
        g_max_refine: observed reflections used, |g| ≤ g_max_refine [Å⁻¹].
        g_min_refine: observed reflections used, |g| ≥ g_min_refine [Å⁻¹] (0: none): the low-resolution cut of
            SHELX/Jana (SHEL d_max), for reflections so close to the primary beam that its tail enters their
            integration.
        sg_max_refine: observed reflections used, |s_g| ≤ this at the frame centre [Å⁻¹] (None: no cap).
        r_sg_max: observed reflections used, R_Sg ≤ this (None: no cap) (PHYSICS.md §5.2). R_Sg = |s_g|/Δs_g at the
            frame centre, Δs_g the half-range of s_g swept by the frame: |ds_g/dφ|·φ_semi = |g_y|·φ_semi for rotation
            about lab x (PHYSICS.md §5.4), |g_⊥|·sin α_p for precession.
        d_sg_min: observed reflections used, Δs_g − |s_g| > this [Å⁻¹] (None: no cap): the Bragg condition must be
            crossed with a margin, not at the frame's edge (Klar et al. 2023's D_Sg as diffBloch applies it; it
            drops reflections near the rotation axis and reflections only grazed by a frame). diffBloch measures the lever as the distance |(g_y, g_z)| from the axis; here it is |g_y|,
            the exact first-order rate (the two differ by g_z ≈ |g|²/2K, < 1.3 % of |g| at 2 Å⁻¹ and 200 kV).
        n_samples: rocking-curve samples per frame.
        semi_angle_deg: integration semi-angle [deg]; None: the file's per-frame value (precession_angle column).
        max_beams: cap on the beams of a frame (smallest |s_g| kept; observed reflections always kept).
        precession: None: from the file; True/False to force.
        energy_kev: None: from the data's wavelength.
        quadrature: rocking-curve quadrature of continuous-rotation frames: 'midpoint' (N equal sub-intervals, equal
            weights) or 'gauss' (Gauss–Legendre nodes and weights on [−φ, φ]; exact for smooth integrands, while
            the rocking curves of thick crystals are narrower than the sample spacing: comparison in
            experiments/results/bench_quadrature.md). Precession cones always use equally spaced azimuths
            (periodic integrand).
        beam_selection: 'frame': one Bloch matrix per frame holding every beam with |s_g| ≤ sg_max at *any* sample
            (and every observed reflection), shared by all samples; 'sample': each rocking sample's matrix holds only
            the beams with |s_g| ≤ sg_max at that sample (diffBloch's per-orientation selection): smaller matrices
            (docs/SPEED.md §7). An observed reflection also enters the sample nearest its
            Bragg condition, so none is identically zero. A beam outside a sample's set contributes I = 0 there.
    """

    g_max: float = field_default("ExperimentSettings.g_max")
    sg_max: float = field_default("ExperimentSettings.sg_max")
    g_max_refine: float = field_default("ExperimentSettings.g_max_refine")
    g_min_refine: float = field_default("ExperimentSettings.g_min_refine")
    sg_max_refine: float | None = field_default("ExperimentSettings.sg_max_refine")
    r_sg_max: float | None = field_default("ExperimentSettings.r_sg_max")
    d_sg_min: float | None = field_default("ExperimentSettings.d_sg_min")
    n_samples: int = field_default("ExperimentSettings.n_samples")
    semi_angle_deg: float | None = field_default("ExperimentSettings.semi_angle_deg")
    max_beams: int | None = field_default("ExperimentSettings.max_beams")
    precession: bool | None = field_default("ExperimentSettings.precession")
    energy_kev: float | None = field_default("ExperimentSettings.energy_kev")
    quadrature: str = field_default("ExperimentSettings.quadrature")
    beam_selection: str = field_default("ExperimentSettings.beam_selection")


#: The ``geometry`` setting (config, ``--geometry``) → :attr:`ExperimentSettings.precession` (None: from the file).
GEOMETRIES = {"file": None, "rotation": False, "precession": True}


def uses_precession(settings: ExperimentSettings, data) -> bool:
    """Whether ``data``'s frames are integrated over a precession cone: the settings' choice, else the file's
    measurement details (``data.geometry``)."""
    if settings.precession is not None:
        return bool(settings.precession)
    return "precession" in str(getattr(data, "geometry", "")).lower()


QUADRATURES = setting_of_field("ExperimentSettings.quadrature").choices  # from jaxed.settings
BEAM_SELECTIONS = setting_of_field("ExperimentSettings.beam_selection").choices


@partial(jax.tree_util.register_dataclass,
         data_fields=["beams", "base_orientation", "sample_rotations", "theta", "refl_beam", "refl_hkl", "i_obs",
                      "sigma", "refl_mask", "sample_weights", "sample_beams", "sample_beam_mask"],
         meta_fields=["frame_ids", "energy_kev", "sample_selection"])
@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything the traced model needs about the data (arrays; the frame ids and energy are static).

    Attributes:
        beams: BeamSet of the n_frames frames.
        base_orientation: (n_frames, 3, 3) O_i = R_i · UB · B_s⁻¹.
        sample_rotations: (n_frames, n_samples, 3, 3) lab rotations of the rocking / precession samples.
        theta: (n_frames,) goniometer tilt α_i [rad] (input of the thickness model).
        refl_beam: (n_frames, n_refl) index of each observed reflection in its frame's beam list.
        refl_hkl: (n_frames, n_refl, 3) int.  i_obs, sigma: (n_frames, n_refl) [counts].
        refl_mask: (n_frames, n_refl) bool, False on padding.
        sample_weights: (n_frames, n_samples) quadrature weights summing to 1 per frame, or None for the plain mean
            over samples (midpoint rule).
        sample_beams: (n_frames, n_samples, n_sub) int index into the frame's beam list of the beams of each
            sample's own Bloch matrix (beam_selection 'sample'; entry 0 is the direct beam), or None: every sample
            uses the whole frame list.  sample_beam_mask: (n_frames, n_samples, n_sub) bool, False on padding.
    """

    beams: BeamSet
    base_orientation: jax.Array
    sample_rotations: jax.Array
    theta: jax.Array
    refl_beam: jax.Array
    refl_hkl: jax.Array
    i_obs: jax.Array
    sigma: jax.Array
    refl_mask: jax.Array
    frame_ids: tuple
    energy_kev: float
    sample_weights: jax.Array | None = None
    sample_beams: jax.Array | None = None
    sample_beam_mask: jax.Array | None = None
    sample_selection: tuple | None = None  # (sg_max, max_beams) of the per-sample sets, for reselect_sample_beams

    @property
    def n_frames(self) -> int:
        return int(np.shape(self.theta)[0])

    @property
    def matrix_size(self) -> int:
        """N of the Bloch matrices actually diagonalised (padded): per sample or per frame."""
        if self.sample_beams is not None:
            return int(np.shape(self.sample_beams)[2])
        return self.beams.n_beams


def _sample_rotations(n_frames: int, semi_angles: np.ndarray, n_samples: int, precession: bool,
                      quadrature: str = "midpoint") -> np.ndarray:
    out = np.zeros((n_frames, n_samples, 3, 3))
    nodes = quadrature_nodes(n_samples, quadrature)[0]
    for i in range(n_frames):
        phi = np.deg2rad(semi_angles[i])
        if precession:
            thetas = 2 * np.pi * (np.arange(n_samples) + 0.5) / n_samples
            out[i] = [np.asarray(rotation_z(t) @ rotation_x(phi) @ rotation_z(-t)) for t in thetas]
        else:
            out[i] = [np.asarray(rotation_x(d)) for d in phi * nodes]
    return out


def quadrature_nodes(n_samples: int, quadrature: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in [−1, 1] and weights summing to 1 of the rocking-curve average (host)."""
    if quadrature not in QUADRATURES:
        raise JaxedInputError(f"quadrature '{quadrature}': expected one of {', '.join(QUADRATURES)}")
    if quadrature == "gauss":
        x, w = np.polynomial.legendre.leggauss(n_samples)
        return x, w / 2.0
    return -1.0 + 2.0 * (np.arange(n_samples) + 0.5) / n_samples, np.full(n_samples, 1.0 / n_samples)


def prepare_experiment(data, crystal: Crystal, settings: ExperimentSettings,
                       orientations: np.ndarray | None = None) -> Experiment:
    """Build the :class:`Experiment` of PETS-like ``data`` (see :mod:`jaxed.data.pets`) for ``crystal`` (host, numpy).

    ``orientations``: optional (n_frames, 3, 3) matrices M with g_lab = M·g_crys (crystal-Cartesian of ``crystal``,
    electrons along lab −z) that replace the frames' R_x(α)R_y(β)·UB geometry (PETS.md) — e.g. another program's
    refined orientations. They need not be pure rotations (they may absorb a data-vs-structure cell difference).
    Beams and reflections are selected at these orientations."""
    if settings.n_samples < 1:
        raise JaxedInputError(f"n_samples = {settings.n_samples}: expected ≥ 1")
    if settings.beam_selection not in BEAM_SELECTIONS:
        raise JaxedInputError(f"beam_selection '{settings.beam_selection}': expected one of {', '.join(BEAM_SELECTIONS)}")
    per_sample = settings.beam_selection == "sample"
    ub = np.asarray(data.ub, dtype=np.float64)
    recip_s = np.asarray(crystal.reciprocal)
    lam = float(data.wavelength)
    k = 1.0 / lam
    energy = settings.energy_kev if settings.energy_kev is not None else energy_from_wavelength(lam)
    n_frames = len(data.alpha)
    base = np.stack([frame_rotation(a, b) @ ub @ np.linalg.inv(recip_s) for a, b in zip(data.alpha, data.beta)])
    if orientations is not None:
        orientations = np.asarray(orientations, dtype=np.float64)
        if orientations.shape != base.shape or not np.all(np.isfinite(orientations)):
            raise JaxedInputError(f"orientations: expected finite ({n_frames}, 3, 3) matrices, got shape "
                                  f"{orientations.shape}")
        base = orientations
    semi = (np.full(n_frames, settings.semi_angle_deg) if settings.semi_angle_deg is not None
            else np.asarray(data.precession_angle, dtype=np.float64))
    precession = uses_precession(settings, data)
    samples = _sample_rotations(n_frames, semi, settings.n_samples, precession, settings.quadrature)
    weights = None
    if settings.quadrature != "midpoint" and not precession:
        weights = np.tile(quadrature_nodes(settings.n_samples, settings.quadrature)[1], (n_frames, 1))

    candidates = hkl_within(ub, settings.g_max)  # |g| with the data's metric
    frame_index = np.asarray(data.frame_index)
    hkl_all = np.asarray(data.hkl, dtype=np.int64)
    beams, refl_rows = [], []
    for i in range(n_frames):
        orients = np.einsum("sij,jk->sik", samples[i], base[i] @ recip_s)  # (n_s, 3, 3): h → g_lab
        g_c = candidates @ orients.reshape(-1, 3).T  # (n_cand, n_s*3)
        g_c = g_c.reshape(len(candidates), settings.n_samples, 3)
        s_min = np.abs(np.asarray(excitation_errors(g_c, k))).min(axis=1)
        # observed reflections of this frame kept for refinement
        rows = np.nonzero(frame_index == i)[0]
        h_obs = hkl_all[rows]
        g_obs = h_obs @ (base[i] @ recip_s).T
        g_norm = np.linalg.norm(h_obs @ ub.T, axis=1)
        keep = (g_norm <= settings.g_max_refine) & (g_norm >= settings.g_min_refine)
        s_centre = np.asarray(excitation_errors(g_obs, k))
        if settings.sg_max_refine is not None:
            keep &= np.abs(s_centre) <= settings.sg_max_refine
        if settings.r_sg_max is not None or settings.d_sg_min is not None:
            if precession:
                g_perp = np.linalg.norm(g_obs[:, :2], axis=1)
                width = g_perp * np.sin(np.deg2rad(semi[i]))
            else:
                width = np.abs(g_obs[:, 1]) * np.deg2rad(semi[i])  # |ds/dφ| = |g_y| for rotation about lab x
            if settings.r_sg_max is not None:
                keep &= np.abs(s_centre) <= settings.r_sg_max * np.maximum(width, 1e-12)
            if settings.d_sg_min is not None:
                keep &= width - np.abs(s_centre) > settings.d_sg_min
        keep &= ~np.all(h_obs == 0, axis=1)
        rows, h_obs = rows[keep], h_obs[keep]
        _, first = np.unique(h_obs, axis=0, return_index=True)  # a reflection listed twice in a frame counts once
        first = np.sort(first)
        rows, h_obs = rows[first], h_obs[first]
        chosen = candidates[(s_min <= settings.sg_max) & ~np.all(candidates == 0, axis=1)]
        order = np.argsort(s_min[(s_min <= settings.sg_max) & ~np.all(candidates == 0, axis=1)], kind="stable")
        chosen = chosen[order]
        # observed reflections first (always in the matrix), then the others by increasing |s_g|
        obs_set = {tuple(h) for h in h_obs}
        others = [h for h in chosen if tuple(h) not in obs_set]
        if settings.max_beams is not None and not per_sample:
            others = others[: max(0, settings.max_beams - 1 - len(h_obs))]
        frame_beams = np.concatenate([np.zeros((1, 3), np.int64), h_obs.reshape(-1, 3),
                                      np.array(others, dtype=np.int64).reshape(-1, 3)])
        beams.append(frame_beams)
        refl_rows.append(rows)
    beam_set = make_beam_set(beams)
    n_refl = max(1, max(len(r) for r in refl_rows))
    refl_beam = np.zeros((n_frames, n_refl), np.int32)
    refl_hkl = np.zeros((n_frames, n_refl, 3), np.int32)
    i_obs = np.zeros((n_frames, n_refl))
    sigma = np.ones((n_frames, n_refl))
    mask = np.zeros((n_frames, n_refl), bool)
    intensity, sig = np.asarray(data.intensity, np.float64), np.asarray(data.sigma, np.float64)
    for i, rows in enumerate(refl_rows):
        m = len(rows)
        refl_beam[i, :m] = 1 + np.arange(m)  # observed reflections sit right after the direct beam
        refl_hkl[i, :m] = hkl_all[rows]
        i_obs[i, :m] = intensity[rows]
        sigma[i, :m] = sig[rows]
        mask[i, :m] = True
    experiment = Experiment(beams=beam_set, base_orientation=base, sample_rotations=samples,
                            theta=np.deg2rad(np.asarray(data.alpha, dtype=np.float64)), refl_beam=refl_beam,
                            refl_hkl=refl_hkl, i_obs=i_obs, sigma=sigma, refl_mask=mask,
                            frame_ids=tuple(int(x) for x in np.asarray(data.frame_id)), energy_kev=float(energy),
                            sample_weights=weights,
                            sample_selection=(float(settings.sg_max), settings.max_beams) if per_sample else None)
    return reselect_sample_beams(experiment, crystal)  # the per-sample sets (a no-op for per-frame beams)


def _pad_subsets(sub_lists: list, n_samples: int, min_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    n_sub = max(max(len(b) for frame in sub_lists for b in frame), min_size)
    n_sub = -(-n_sub // 8) * 8
    sample_beams = np.zeros((len(sub_lists), n_samples, n_sub), np.int32)
    sample_mask = np.zeros((len(sub_lists), n_samples, n_sub), bool)
    for i, frame in enumerate(sub_lists):
        for j, b in enumerate(frame):
            sample_beams[i, j, : len(b)] = b
            sample_mask[i, j, : len(b)] = True
    return sample_beams, sample_mask


def reselect_sample_beams(experiment: Experiment, crystal: Crystal, min_size: int = 0) -> Experiment:
    """The per-sample beam sets for the experiment's current frame orientations, from each frame's beam list (built
    by :func:`prepare_experiment`, recomputed after an orientation search moved the frames); unchanged for
    per-frame beam sets. The padded size may change (one recompilation); ``min_size`` keeps it from shrinking below
    a size already compiled (the searches pass their starting size, so trial orientations reuse that kernel)."""
    if experiment.sample_selection is None:
        return experiment
    sg_max, max_beams = experiment.sample_selection
    k = BlochSettings(experiment.energy_kev).k
    hkl, mask = np.asarray(experiment.beams.hkl), np.asarray(experiment.beams.mask)
    refl_mask = np.asarray(experiment.refl_mask)
    recip = np.asarray(crystal.reciprocal)
    n_samples = int(np.shape(experiment.sample_rotations)[1])
    subs = []
    for i in range(experiment.n_frames):
        frame_beams = hkl[i][mask[i]]
        subs.append(_sample_subsets(frame_beams, int(refl_mask[i].sum()), np.asarray(experiment.sample_rotations[i]),
                                    np.asarray(experiment.base_orientation[i]) @ recip, k, sg_max, max_beams))
    sample_beams, sample_mask = _pad_subsets(subs, n_samples, min_size)
    return dataclasses.replace(experiment, sample_beams=sample_beams, sample_beam_mask=sample_mask)


def _sample_subsets(frame_beams: np.ndarray, n_obs: int, sample_rot: np.ndarray, orient: np.ndarray, k: float,
                    sg_max: float, max_beams: int | None) -> list[np.ndarray]:
    """Per rocking sample, the indices into ``frame_beams`` of the beams with |s_g| ≤ sg_max at that sample, the
    direct beam first, then by increasing |s_g| (host). Each observed reflection (rows 1..n_obs) is also put in the
    sample where its |s_g| is smallest. ``max_beams`` caps each sample's list (smallest |s_g| kept)."""
    g = np.einsum("bj,sij->sbi", frame_beams @ orient.T, sample_rot)  # (n_s, n_beams, 3) lab g per sample
    s_abs = np.abs(np.asarray(excitation_errors(g, k)))
    nearest = np.argmin(s_abs[:, 1 : 1 + n_obs], axis=0)  # sample nearest the Bragg condition of each reflection
    out = []
    for j in range(len(sample_rot)):
        keep = s_abs[j] <= sg_max
        keep[1 : 1 + n_obs] |= nearest == j
        keep[0] = False
        idx = np.nonzero(keep)[0]
        idx = idx[np.argsort(s_abs[j, idx], kind="stable")]
        if max_beams is not None:
            idx = idx[: max(0, max_beams - 1)]
        out.append(np.concatenate([[0], idx]).astype(np.int32))
    return out
