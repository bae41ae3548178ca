"""The automatic protocol's first stages: the modelling settings chosen from the structure and the data.

Every choice is a :class:`Choice` — the value and a one-line reason — so a run can print one table of every setting
and why it was taken (:func:`choices_table`). Nothing here knows a dataset by name; each setting is either computed
from the data or a documented default (docs/PROTOCOL.md gives the rules and what they give on measured data).

1. :func:`inspect` (host, no simulation): the data's resolution → g_max of the Bloch matrix and of the refinement;
   the frame step and integration semi-angle → the R_Sg cut; the file's rocking-curve width → the D_Sg cut; the
   space group → real or complex Bloch path; exact matrix sizes on a few frames → per-frame or per-sample beams;
   the memory of one frame (jaxed.model.batching).
2. :func:`detect_geometry`: continuous rotation or precession, by fit — both integrations on a few frames, the
   structure fixed, each at its best single thickness; the lower wR_all wins.
3. :func:`choose_sample_count`: rocking / cone samples doubled until R_obs changes by less than 0.1 points.
4. :func:`choose_thickness`: one thickness for all frames, a coarse log-spaced scan then two local linear ones (±
   the last one's step); frame scales in closed form (jaxed.refine.objective).

:func:`first_stages` runs them (1, 2, 4 with the probe sample count, 3 at that thickness, 4 again) and returns the
settings, the thickness and every choice.
Thickness scans evaluate all grid points in one call: ``vmap`` over the thickness leaves the structure matrices and
their ``eigh`` unbatched (they do not depend on it), so a grid costs one diagonalisation per sample.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxed.errors import JaxedInputError
from jaxed.model import batching
from jaxed.model.experiment import (Experiment, ExperimentSettings, intensities_from_table, prepare_experiment,
                                    uses_precession)
from jaxed.physics.bloch import BlochSettings, centric_at_origin, potential_table
from jaxed.physics.constants import energy_from_wavelength
from jaxed.physics.crystal import AtomParams, Crystal
from jaxed.refine import objective
from jaxed.settings import field_default

__all__ = ["Choice", "Inspection", "ThicknessScan", "FirstStages", "choices_table", "probe_frames",
           "resolution_shells", "refinement_resolution", "matrix_resolution", "frame_step_deg", "r_sg_cut",
           "d_sg_cut", "bloch_path", "beam_selection", "memory_estimate", "inspect", "thickness_grid",
           "scan_thickness", "choose_thickness", "detect_geometry", "choose_sample_count", "first_stages"]

#: Width of the resolution shells of :func:`resolution_shells` [Å⁻¹].
SHELL_WIDTH = 0.1
#: A shell is used for refinement while its mean I/σ(I) is at least this (the usual crystallographic cut).
MIN_MEAN_I_OVER_SIGMA = 2.0
#: Shells with fewer reflections than this are merged into the next one (their mean is not a statistic).
MIN_SHELL_COUNT = 10
#: The Bloch matrix reaches at least this far beyond the refined reflections [Å⁻¹].
MATRIX_MARGIN = 0.2
#: |s_g| cut of the beams of a Bloch matrix [Å⁻¹]: the settings schema's default (docs/PHYSICS.md §5.1).
SG_MAX = field_default("ExperimentSettings.sg_max")
#: The R_Sg cut is clipped into this range (below 0.4 few reflections per frame are left; above 1 the Bragg
#: condition is not crossed within the frame).
R_SG_RANGE = (0.4, 1.0)
#: D_Sg when the file states no rocking-curve width [Å⁻¹] (Klar et al. 2023, as diffBloch applies it).
D_SG_DEFAULT = 0.0015
#: Per-frame beam sets up to this padded size stay per frame (their eigh is cheap and they are smooth in the
#: orientation); above it per-sample sets are used when their eigh costs (∝ N³) at most SAMPLE_COST_RATIO as much.
FRAME_BEAMS_MAX = 64
SAMPLE_COST_RATIO = 0.5
#: Rocking / cone samples of the geometry test and of the first thickness scan.
PROBE_SAMPLES = 24
#: Frames of the probes (geometry, sample count), spread over the tilt range.
PROBE_FRAMES = 4
#: Sample-count rule: first count, largest count, and the R_obs change [fraction, 0.001 = 0.1 points] below which a
#: doubling counts as converged.
SAMPLES_START = 12
SAMPLES_MAX = 384
SAMPLES_TOLERANCE = 1e-3
#: Thickness scans: T_POINTS thicknesses each, the first log-spaced from T_MIN to T_MAX [Å], the second around the
#: T_MINIMA lowest local minima of the first (:func:`choose_thickness`).
T_MIN, T_MAX, T_POINTS = 50.0, 3000.0, 16
T_MINIMA = 2
#: Geometry test: fits whose wR_all differ by less than this relative amount are a tie (the file's statement stands).
GEOMETRY_TIE = 0.01


@dataclasses.dataclass(frozen=True)
class Choice:
    """One setting of the protocol: its name (an :class:`ExperimentSettings` field where it is one), the value
    taken and a one-line reason."""

    name: str
    value: Any
    reason: str


def choices_table(choices) -> str:
    """The choices as a Markdown table (setting | value | reason)."""
    rows = ["| setting | value | reason |", "|---|---|---|"]
    for c in choices:
        value = f"{c.value:.4g}" if isinstance(c.value, float) else str(c.value)
        rows.append(f"| {c.name} | {value} | {c.reason} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------- 1. inspect (host)
def _g_norm(data) -> np.ndarray:
    """|g| of every listed reflection with the data's metric (UB), (n_refl,) [Å⁻¹]."""
    return np.linalg.norm(np.asarray(data.hkl, np.float64) @ np.asarray(data.ub, np.float64).T, axis=1)


def resolution_shells(data, width: float = SHELL_WIDTH) -> list[tuple[float, int, float, float]]:
    """Shells of |g| over the listed reflections: (upper edge [Å⁻¹], count, mean I/σ(I), fraction I > 3σ), from low
    to high resolution; a shell with fewer than :data:`MIN_SHELL_COUNT` reflections is merged into the next."""
    g = _g_norm(data)
    i_over_s = np.asarray(data.intensity, np.float64) / np.asarray(data.sigma, np.float64)
    n_shells = max(1, int(np.ceil(g.max() / width - 1e-9))) if g.size else 0
    out, lower = [], 0.0
    for j in range(n_shells):
        upper = (j + 1) * width
        sel = (g > lower) & (g <= upper + 1e-9)
        if sel.sum() < MIN_SHELL_COUNT and j < n_shells - 1:
            continue  # merged into the next shell (lower stays)
        if sel.any():
            out.append((round(upper, 6), int(sel.sum()), float(i_over_s[sel].mean()),
                        float(np.mean(i_over_s[sel] > 3))))
        lower = upper + 1e-9
    return out


def refinement_resolution(data) -> Choice:
    """g_max_refine [Å⁻¹]: the upper edge of the last shell, counted from low resolution, before the first shell whose
    mean I/σ(I) falls below :data:`MIN_MEAN_I_OVER_SIGMA`."""
    shells = resolution_shells(data)
    if not shells:
        raise JaxedInputError(f"{data.path}: no reflections listed; expected at least one")
    for k, (upper, _, mean_is, _) in enumerate(shells):
        if mean_is < MIN_MEAN_I_OVER_SIGMA:
            nxt = f"the shell to {upper:.1f} Å⁻¹ has ⟨I/σ⟩ {mean_is:.1f}"
            if k == 0:  # not even the first shell: keep it (there is nothing else to refine against)
                return Choice("g_max_refine", float(upper), f"{nxt} < {MIN_MEAN_I_OVER_SIGMA:g} already; kept")
            return Choice("g_max_refine", float(shells[k - 1][0]), f"shells to {shells[k - 1][0]:.1f} Å⁻¹ have "
                          f"⟨I/σ⟩ ≥ {MIN_MEAN_I_OVER_SIGMA:g}; {nxt}")
    return Choice("g_max_refine", float(shells[-1][0]),
                  f"every shell to the data's limit has ⟨I/σ⟩ ≥ {MIN_MEAN_I_OVER_SIGMA:g}")


def matrix_resolution(data, g_max_refine: float) -> Choice:
    """g_max of the Bloch matrix [Å⁻¹]: the data's resolution (largest listed |g|, to 0.1 Å⁻¹ above) and at least
    :data:`MATRIX_MARGIN` beyond the refined reflections."""
    d_star = float(np.ceil(_g_norm(data).max() / SHELL_WIDTH - 1e-6) * SHELL_WIDTH)
    g_max = max(d_star, g_max_refine + MATRIX_MARGIN)
    why = ("the data's resolution" if d_star >= g_max_refine + MATRIX_MARGIN
           else f"g_max_refine + {MATRIX_MARGIN:g} Å⁻¹ (beyond the data's {d_star:.1f} Å⁻¹)")
    return Choice("g_max", round(g_max, 6), f"{why}; listed reflections reach {d_star:.1f} Å⁻¹")


def frame_step_deg(data) -> float | None:
    """Median tilt step between consecutive frames (sorted by α) [deg]; None for a single tilt."""
    alpha = np.sort(np.asarray(data.alpha, np.float64))
    steps = np.diff(alpha)
    steps = steps[steps > 1e-6]
    return float(np.median(steps)) if steps.size else None


def r_sg_cut(data, precession: bool) -> Choice:
    """R_Sg cut: the smallest at which the frames' central windows tile the tilt range, so every reflection is kept
    in the frame nearest its Bragg condition and the frames' edges (partly recorded) are left out.

    Consecutive frames Δα apart move s_g by |g_y|·Δα. In units of a frame's swept half-range this is Δα/φ (rotation,
    half-range |g_y|·φ) or at most Δα/sin α_p (precession, half-range |g_⊥|·sin α_p), so windows |R_Sg| ≤ c meet
    when c = Δα/(2φ), resp. Δα/(2 sin α_p) (angles in rad), clipped into :data:`R_SG_RANGE`."""
    step = frame_step_deg(data)
    semi = float(np.median(np.asarray(data.precession_angle, np.float64)))
    lo, hi = R_SG_RANGE
    if step is None or semi <= 0:
        return Choice("r_sg_max", hi, "a single tilt (or no semi-angle): every crossed reflection")
    width = np.sin(np.deg2rad(semi)) if precession else np.deg2rad(semi)
    raw = np.deg2rad(step) / (2.0 * width)
    value = float(np.clip(raw, lo, hi))
    kind = f"2 sin α_p, α_p {semi:g}°" if precession else f"2φ, φ {semi:g}°"
    clip = "" if lo <= raw <= hi else f" (clipped into [{lo:g}, {hi:g}])"
    return Choice("r_sg_max", round(value, 3), f"frame step Δα {step:.3g}° / ({kind}) = {raw:.2f}{clip}")


def d_sg_cut(data) -> Choice:
    """D_Sg cut [Å⁻¹]: the Bragg condition must lie one rocking-curve width inside the swept range — the file's
    ``RC width`` (PETS2's fitted rocking-curve width) when stated, else :data:`D_SG_DEFAULT`."""
    details = {str(k).lower(): v for k, v in dict(getattr(data, "details", {}) or {}).items()}
    width = details.get("rc width")
    if isinstance(width, (int, float)) and np.isfinite(width) and width > 0:
        return Choice("d_sg_min", float(width), "the file's rocking-curve width (RC width)")
    return Choice("d_sg_min", D_SG_DEFAULT, "no RC width in the file: the literature default")


def bloch_path(crystal: Crystal) -> Choice:
    """Real symmetric or complex Hermitian Bloch matrices (jaxed.physics.bloch.centric_at_origin; BlochSettings'
    ``real_if_centric`` takes the real path by itself)."""
    if centric_at_origin(crystal):
        return Choice("bloch path", "real", f"{crystal.spacegroup}: inversion at the origin, every U_g real")
    return Choice("bloch path", "complex", f"{crystal.spacegroup}: no inversion at the origin")


def probe_frames(data, n: int = PROBE_FRAMES) -> np.ndarray:
    """Indices of ``n`` frames spread evenly over the tilt range (sorted by α), among frames with reflections."""
    counts = np.bincount(np.asarray(data.frame_index, np.int64), minlength=len(data.alpha))
    usable = np.nonzero(counts > 0)[0]
    if usable.size == 0:
        raise JaxedInputError(f"{data.path}: no frame has reflections; expected at least one")
    usable = usable[np.argsort(np.asarray(data.alpha)[usable], kind="stable")]
    pick = np.unique(np.round(np.linspace(0, usable.size - 1, min(n, usable.size))).astype(int))
    return np.sort(usable[pick])


def beam_selection(crystal: Crystal, data, settings: ExperimentSettings, frames=None) -> tuple[Choice, int]:
    """Per-frame or per-sample beams from the exact padded matrix sizes on the probe frames: per frame while it is
    ≤ :data:`FRAME_BEAMS_MAX`, else per sample when its eigh costs at most :data:`SAMPLE_COST_RATIO` of the
    per-frame one ((N_sample/N_frame)³). Returns (choice, the padded matrix size N of the choice)."""
    sub = data.subset_frames(probe_frames(data) if frames is None else frames)
    n_frame = prepare_experiment(sub, crystal, dataclasses.replace(settings, beam_selection="frame")).matrix_size
    if n_frame <= FRAME_BEAMS_MAX:
        return Choice("beam_selection", "frame", f"per-frame matrices N = {n_frame} ≤ {FRAME_BEAMS_MAX}"), n_frame
    n_sample = prepare_experiment(sub, crystal, dataclasses.replace(settings, beam_selection="sample")).matrix_size
    cost = (n_sample / n_frame) ** 3
    if cost <= SAMPLE_COST_RATIO:
        return Choice("beam_selection", "sample", f"per-sample N = {n_sample} vs per-frame {n_frame}: "
                      f"{cost:.2f} of the eigh cost"), n_sample
    return Choice("beam_selection", "frame", f"per-sample N = {n_sample} vs per-frame {n_frame}: "
                  f"{cost:.2f} of the eigh cost, too little saved"), n_frame


def memory_estimate(n_beams: int, n_samples: int, n_frames: int, *, absorption: bool = False,
                    memory_bytes: int | None = None) -> Choice:
    """Working set of one frame, forward + gradient in complex128 (jaxed.model.batching.bytes_per_frame), and the
    frames one device step holds (batching.frames_per_batch)."""
    need = batching.bytes_per_frame(n_beams, n_samples, absorption=absorption)
    fit = batching.frames_per_batch(n_frames, n_beams, n_samples, memory_bytes=memory_bytes, absorption=absorption)
    return Choice("frames_per_batch", int(fit), f"{need / 1024**2:.0f} MiB per frame (N {n_beams}, {n_samples} "
                  f"samples, gradient, complex128): {fit} of {n_frames} frames per step")


@dataclasses.dataclass(frozen=True)
class Inspection:
    """Stage 1: the settings chosen without simulation, and every choice with its reason."""

    settings: ExperimentSettings
    choices: tuple
    n_beams: int


def inspect(crystal: Crystal, data, *, precession: bool | None = None, n_samples: int = PROBE_SAMPLES,
            absorption: bool = False) -> Inspection:
    """Stage 1 (host): the settings from the structure and the data's statistics.

    Args:
        crystal: the structure.  data: PetsData (jaxed.data.pets).
        precession: the integration geometry; None: the file's statement.
        n_samples: rocking / cone samples the matrix sizes and memory are estimated with.
        absorption: the model will have an absorptive potential (memory estimate).
    """
    given = precession is not None
    precession = uses_precession(ExperimentSettings(precession=precession), data)
    refine = refinement_resolution(data)
    matrix = matrix_resolution(data, refine.value)
    rsg, dsg = r_sg_cut(data, precession), d_sg_cut(data)
    geometry = Choice("precession", precession, "given" if given else f"the file's statement ({data.geometry})")
    settings = ExperimentSettings(g_max=matrix.value, sg_max=SG_MAX, g_max_refine=refine.value, r_sg_max=rsg.value,
                                  d_sg_min=dsg.value, n_samples=n_samples, precession=precession)
    beams, n_beams = beam_selection(crystal, data, settings)
    settings = dataclasses.replace(settings, beam_selection=beams.value)
    choices = (refine, matrix, Choice("sg_max", SG_MAX, "literature default (PHYSICS.md §5.1)"), rsg, dsg, geometry,
               bloch_path(crystal), beams,
               memory_estimate(n_beams, n_samples, len(data.alpha), absorption=absorption))
    return Inspection(settings=settings, choices=choices, n_beams=n_beams)


# ------------------------------------------------------------------------------------------- 4. thickness scans
@dataclasses.dataclass(frozen=True)
class ThicknessScan:
    """wR_all and R_obs (pooled, closed-form paper scales) of one thickness for all frames, over a grid.

    Attributes: thickness (n_t,) [Å]; wr_all, r_obs (n_t,) [–]."""

    thickness: np.ndarray
    wr_all: np.ndarray
    r_obs: np.ndarray

    @property
    def best(self) -> int:
        return int(np.argmin(self.wr_all))


def thickness_grid(t_min: float = T_MIN, t_max: float = T_MAX, n: int = T_POINTS) -> np.ndarray:
    """Log-spaced thicknesses [Å], (n,)."""
    return np.geomspace(t_min, t_max, n)


@partial(jax.jit, static_argnames=("settings", "frames_per_batch"))
def _grid_intensities(atoms, crystal, experiment, grid, settings, frames_per_batch):
    u_ext = potential_table(atoms, crystal, experiment.beams, settings)
    n_frames = experiment.n_frames

    def one(t):
        return intensities_from_table(u_ext, crystal, experiment, jnp.full((n_frames,), t, grid.dtype), settings,
                                      frames_per_batch=frames_per_batch)

    return jax.vmap(one)(grid)  # (n_t, n_frames, n_refl); the structure matrices are not batched over t


@jax.jit
def _grid_residuals(i_calc, obs):
    def one(i):
        scaled = objective.frame_scales(i, obs)[:, None] * jnp.where(obs.mask, i, 0.0)
        return objective.wr_all_paper(scaled, obs), objective.r_obs(scaled, obs)

    return jax.vmap(one)(i_calc)


def scan_thickness(atoms: AtomParams, crystal: Crystal, experiment: Experiment, bloch: BlochSettings,
                   grid) -> ThicknessScan:
    """wR_all and R_obs of one thickness for all frames at each grid value [Å] (structure and orientations fixed)."""
    grid = np.asarray(grid, np.float64)
    fpb = batching.experiment_frames_per_batch(experiment, float64=jax.config.jax_enable_x64,
                                               absorption=bloch.absorbing, gradient=False)
    dtype = jnp.zeros(()).dtype
    i_calc = _grid_intensities(atoms, crystal, experiment, jnp.asarray(grid, dtype), bloch,
                               None if fpb >= experiment.n_frames else fpb)
    obs = objective.prepare_observations(experiment.i_obs, experiment.sigma, experiment.refl_mask)
    wr, r = _grid_residuals(i_calc, obs)
    return ThicknessScan(grid, np.asarray(wr, np.float64), np.asarray(r, np.float64))


def _local_minima(wr: np.ndarray, n: int) -> list[int]:
    """Indices of up to ``n`` local minima of ``wr`` (ends included), lowest first."""
    idx = [i for i in range(len(wr)) if (i == 0 or wr[i] <= wr[i - 1]) and (i == len(wr) - 1 or wr[i] <= wr[i + 1])]
    return sorted(idx, key=lambda i: wr[i])[:n]


def _merge(*scans: ThicknessScan) -> ThicknessScan:
    t = np.concatenate([s.thickness for s in scans])
    t, first = np.unique(t, return_index=True)
    pick = lambda name: np.concatenate([getattr(s, name) for s in scans])[first]  # noqa: E731
    return ThicknessScan(t, pick("wr_all"), pick("r_obs"))


def choose_thickness(atoms: AtomParams, crystal: Crystal, experiment: Experiment, bloch: BlochSettings, *,
                     n_points: int = T_POINTS, n_minima: int = T_MINIMA) -> tuple[Choice, ThicknessScan]:
    """Stage 4: one thickness for all frames (structure fixed, closed-form scales), by three scans of ``n_points``
    thicknesses each (one compiled program): log-spaced over [:data:`T_MIN`, :data:`T_MAX`]; linear between the
    neighbours of each of the ``n_minima`` lowest local minima of wR_all; linear over ± one step of the second scan
    around its best point. The Choice's value is the thickness of the lowest wR_all [Å], its reason the last
    scan's step (the minimum lies within ± one step). Returns (choice, every scanned point)."""
    coarse = thickness_grid(n=n_points)
    first = scan_thickness(atoms, crystal, experiment, bloch, coarse)
    minima = _local_minima(first.wr_all, n_minima)
    per = n_points // len(minima)
    pieces = [np.linspace(coarse[max(i - 1, 0)], coarse[min(i + 1, n_points - 1)], per) for i in minima]
    middle = np.concatenate(pieces)
    middle = np.concatenate([middle, np.full(n_points - middle.size, middle[-1])])  # the same program's size
    second = scan_thickness(atoms, crystal, experiment, bloch, middle)
    j = int(np.argmin(second.wr_all))
    best, step = middle[j], float(np.diff(pieces[min(j // per, len(pieces) - 1)])[0])
    fine = np.linspace(max(best - step, 1.0), best + step, n_points)
    third = scan_thickness(atoms, crystal, experiment, bloch, fine)
    scan = _merge(first, second, third)
    k = scan.best
    fine_step = float(fine[1] - fine[0])
    edge = " (at the edge of the grid)" if scan.thickness[k] in (coarse[0], coarse[-1]) else ""
    return Choice("thickness", float(scan.thickness[k]),
                  f"lowest wR_all {scan.wr_all[k]:.4f} (R_obs {scan.r_obs[k]:.4f}) of 3 × {n_points} thicknesses "
                  f"({T_MIN:g}–{T_MAX:g} Å log-spaced, then linear), ± {fine_step:.1f} Å{edge}"), scan


# ------------------------------------------------------------------------------------------- 2. geometry by fit
def _probe_experiment(crystal, data, settings: ExperimentSettings, frames) -> Experiment:
    sub = data.subset_frames(frames)
    return prepare_experiment(sub, crystal, settings)


def _common_reflections(first: Experiment, second: Experiment) -> tuple[Experiment, Experiment]:
    """The two experiments (same frames) with their masks restricted to the (frame, hkl) pairs both selected."""
    masks = []
    for a, b in ((first, second), (second, first)):
        hkl_a, hkl_b = np.asarray(a.refl_hkl), np.asarray(b.refl_hkl)
        ma, mb = np.asarray(a.refl_mask), np.asarray(b.refl_mask)
        keep = np.zeros_like(ma)
        for i in range(a.n_frames):
            other = {tuple(h) for h in hkl_b[i][mb[i]]}
            keep[i] = ma[i] & np.array([tuple(h) in other for h in hkl_a[i]])
        masks.append(keep)
    return dataclasses.replace(first, refl_mask=masks[0]), dataclasses.replace(second, refl_mask=masks[1])


def detect_geometry(crystal: Crystal, atoms: AtomParams, data, settings: ExperimentSettings, bloch: BlochSettings,
                    *, frames=None, n_samples: int = PROBE_SAMPLES) -> tuple[Choice, dict]:
    """Stage 2: continuous rotation or precession, decided by fit on a few frames.

    Both integrations are evaluated on the same reflections: those listed with |g| ≤ g_max_refine whose Bragg
    condition is crossed within the frame (R_Sg ≤ 1) under both geometries (R_Sg depends on the geometry; files
    also list reflections crossed in neighbouring frames only). Each uses per-sample beams and ``n_samples``
    samples, the structure fixed, at its own best single thickness (:func:`choose_thickness`); the lower wR_all
    wins. Fits within :data:`GEOMETRY_TIE` (relative) of each other are a tie, and the file's statement stands.

    Returns (Choice 'precession' with a bool value, {False: (thickness choice, scan), True: ...}).
    """
    frames = probe_frames(data) if frames is None else np.asarray(frames)
    exps = {}
    for precession in (False, True):
        s = dataclasses.replace(settings, r_sg_max=1.0, d_sg_min=None, sg_max_refine=None, n_samples=n_samples,
                                beam_selection="sample", max_beams=None, precession=precession)
        exps[precession] = _probe_experiment(crystal, data, s, frames)
    exps[False], exps[True] = _common_reflections(exps[False], exps[True])
    n_refl = int(np.sum(np.asarray(exps[False].refl_mask)))
    if n_refl == 0:
        raise JaxedInputError(f"{data.path}: no reflection of the probe frames is crossed under both geometries")
    fits = {p: choose_thickness(atoms, crystal, e, bloch) for p, e in exps.items()}
    wr = {p: float(f[1].wr_all[f[1].best]) for p, f in fits.items()}
    stated = uses_precession(ExperimentSettings(), data)
    name = {False: "rotation", True: "precession"}
    tie = abs(wr[True] - wr[False]) < GEOMETRY_TIE * min(wr.values())
    winner = stated if tie else wr[True] < wr[False]
    how = "tie: the file's statement" if tie else "lower wR_all"
    reason = (f"{how}: rotation {wr[False]:.4f} at {fits[False][0].value:.0f} Å, precession {wr[True]:.4f} at "
              f"{fits[True][0].value:.0f} Å ({len(frames)} frames, {n_refl} reflections, {n_samples} samples); the "
              f"file says {name[stated]}")
    return Choice("precession", bool(winner), reason), fits


# ----------------------------------------------------------------------------------------------- 3. sample count
def _r_obs_at(atoms, crystal, data, settings, bloch, thickness, frames) -> float:
    exp = _probe_experiment(crystal, data, settings, frames)
    return float(scan_thickness(atoms, crystal, exp, bloch, [thickness]).r_obs[0])


def choose_sample_count(crystal: Crystal, atoms: AtomParams, data, settings: ExperimentSettings,
                        bloch: BlochSettings, thickness: float, *, frames=None, start: int = SAMPLES_START,
                        n_max: int = SAMPLES_MAX, tolerance: float = SAMPLES_TOLERANCE) -> tuple[Choice, list]:
    """Stage 3: rocking / cone samples per frame. From ``start``, the count is doubled until R_obs (pooled, probe
    frames, structure fixed, at ``thickness`` [Å]) changes by less than ``tolerance`` (0.001 = 0.1 points); the
    count before that last doubling is taken. Returns (Choice 'n_samples', [(n, R_obs), ...])."""
    frames = probe_frames(data) if frames is None else np.asarray(frames)
    n = int(start)
    history = [(n, _r_obs_at(atoms, crystal, data, dataclasses.replace(settings, n_samples=n), bloch, thickness,
                             frames))]
    while 2 * n <= n_max:
        r = _r_obs_at(atoms, crystal, data, dataclasses.replace(settings, n_samples=2 * n), bloch, thickness, frames)
        history.append((2 * n, r))
        if abs(r - history[-2][1]) < tolerance:
            return Choice("n_samples", n, f"R_obs {history[-2][1]:.4f} at {n}, {r:.4f} at {2 * n} samples: change < "
                          f"{100 * tolerance:g} points ({len(frames)} frames at {thickness:.0f} Å)"), history
        n *= 2
    return Choice("n_samples", n, f"not converged at the cap {n_max}: R_obs {history[-2][1]:.4f} → "
                  f"{history[-1][1]:.4f} in the last doubling"), history


# ------------------------------------------------------------------------------------------------- stages 1–4
@dataclasses.dataclass(frozen=True)
class FirstStages:
    """The settings, thickness and choices of stages 1–4 (:func:`first_stages`)."""

    settings: ExperimentSettings
    thickness: float
    choices: tuple
    scan: ThicknessScan

    def table(self) -> str:
        return choices_table(self.choices)


def first_stages(crystal: Crystal, atoms: AtomParams, data, bloch: BlochSettings, *, frames=None,
                 log: Callable[[str], None] = lambda s: None) -> FirstStages:
    """Stages 1–4 on ``data``: inspect; the geometry on the probe ``frames`` (default :func:`probe_frames`); a
    first thickness on all frames with :data:`PROBE_SAMPLES` samples; the sample count on the probe frames at that
    thickness (rocking curves narrow as the crystal thickens, so the count is checked where the crystal is); the
    thickness again on all frames with that count. ``log`` gets one line per choice."""
    energy = energy_from_wavelength(float(data.wavelength))
    if abs(bloch.energy_kev - energy) > 0.5:
        raise JaxedInputError(f"{data.path}: the data's wavelength {data.wavelength} Å is {energy:.1f} kV, the Bloch "
                              f"settings' energy {bloch.energy_kev:g} kV; expected the same")
    first = inspect(crystal, data, absorption=bloch.absorbing)
    for c in first.choices:
        log(f"{c.name}: {c.value} — {c.reason}")
    geometry, _ = detect_geometry(crystal, atoms, data, first.settings, bloch, frames=frames)
    log(f"{geometry.name}: {geometry.value} — {geometry.reason}")
    second = first if geometry.value == first.settings.precession else inspect(
        crystal, data, precession=geometry.value, absorption=bloch.absorbing)
    settings = dataclasses.replace(second.settings, n_samples=PROBE_SAMPLES)
    rough, scan = choose_thickness(atoms, crystal, prepare_experiment(data, crystal, settings), bloch)
    log(f"thickness at {PROBE_SAMPLES} samples: {rough.value:.0f} — {rough.reason}")
    samples, _ = choose_sample_count(crystal, atoms, data, settings, bloch, rough.value, frames=frames)
    log(f"{samples.name}: {samples.value} — {samples.reason}")
    thickness = rough
    settings = dataclasses.replace(settings, n_samples=samples.value)
    experiment = prepare_experiment(data, crystal, settings)
    if samples.value != PROBE_SAMPLES:
        thickness, scan = choose_thickness(atoms, crystal, experiment, bloch)
        log(f"{thickness.name}: {thickness.value:.0f} — {thickness.reason}")
    memory = memory_estimate(experiment.matrix_size, samples.value, experiment.n_frames, absorption=bloch.absorbing)
    kept = tuple(c for c in second.choices if c.name not in ("precession", "frames_per_batch"))
    return FirstStages(settings=settings, thickness=float(thickness.value),
                       choices=kept + (geometry, samples, memory, thickness), scan=scan)
