"""End-to-end jobs behind the command line: evaluate, refine, synthesise, demo.

Each job takes plain settings, does its I/O at the edges and calls the library; the command line only parses.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxed.model import batching
from jaxed.refine import objective
from jaxed.physics.bloch import BlochSettings
from jaxed.physics.constants import wavelength as _wavelength
from jaxed.physics.crystal import AtomParams, Crystal, load_structure, u_equivalent
from jaxed.errors import JaxedInputError
from jaxed.model.experiment import (Experiment, ExperimentSettings, integrated_intensities, prepare_experiment,
                              reselect_sample_beams)
from jaxed.refine.optimize import RefineConfig, Refinement, run_refinement
from jaxed.refine.problem import count_parameters, make_model
from jaxed.app.report import (frame_statistics, largest_residuals, write_frame_plot, write_markdown_report, write_plots,
                          write_refined_cif, write_report)

__all__ = ["load_problem", "evaluate", "refine", "parse_frames", "read_config", "check_structure"]

def parse_frames(text: str | None, n_frames: int) -> np.ndarray | None:
    """Frame selection: '1-20', '1,5,9-12' (1-based, inclusive) or 'every:3' / 'first:20'. None: all frames."""
    if text is None or text == "all":
        return None
    try:
        if text.startswith("every:"):
            return np.arange(0, n_frames, int(text.split(":")[1]))
        if text.startswith("first:"):
            return np.arange(min(int(text.split(":")[1]), n_frames))
        out = []
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a) - 1, int(b)))
            else:
                out.append(int(part) - 1)
    except ValueError:
        raise JaxedInputError(f"--frames '{text}': expected e.g. '1-20', '1,5,9-12', 'every:3' or 'first:20'") from None
    out = np.array(sorted(set(out)))
    if out.size == 0 or out.min() < 0 or out.max() >= n_frames:
        raise JaxedInputError(f"--frames '{text}': frames must lie in 1..{n_frames}")
    return out


def read_config(path: str | Path) -> dict:
    """Settings from a TOML or JSON file, validated (see :mod:`jaxed.app.config`)."""
    from jaxed.app.config import read_config as _read

    return _read(path)


def check_structure(crystal: Crystal, atoms: AtomParams, where: str) -> None:
    """Refuse a structure that cannot scatter (every occupancy 0) or has negative occupancies; warn above 1."""
    import warnings

    occ = np.asarray(atoms.occupancy, float)
    if not np.all(np.isfinite(occ)) or np.any(occ < 0):
        bad = int(np.argmax(~np.isfinite(occ) | (occ < 0)))
        raise JaxedInputError(f"{where}: site {crystal.labels[bad]}: occupancy {occ[bad]}: expected a value in [0, 1]")
    if not np.any(occ > 0):
        raise JaxedInputError(f"{where}: every site has occupancy 0: nothing scatters; expected at least one "
                              "occupied site")
    if np.any(occ > 1 + 1e-6):
        bad = int(np.argmax(occ))
        warnings.warn(f"{where}: site {crystal.labels[bad]} has occupancy {occ[bad]:g} > 1", stacklevel=2)


def _drop_duplicates_and_empty(data, where: str):
    """Warn about (and drop) repeated (frame, hkl) rows and frames without reflections; the rest is usable."""
    import warnings

    keys = np.concatenate([np.asarray(data.frame_index)[:, None], np.asarray(data.hkl)], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    if len(first) < len(keys):
        first = np.sort(first)
        repeated = np.setdiff1d(np.arange(len(keys)), first)
        r = repeated[0]
        warnings.warn(f"{where}: {len(repeated)} reflection row(s) repeat a (frame, hkl) already listed (first: hkl "
                      f"{tuple(int(v) for v in np.asarray(data.hkl)[r])} of frame id "
                      f"{data.frame_id[int(np.asarray(data.frame_index)[r])]}); only the first of each is used",
                      stacklevel=2)
        data = dataclasses.replace(data, hkl=np.asarray(data.hkl)[first], intensity=np.asarray(data.intensity)[first],
                                   sigma=np.asarray(data.sigma)[first],
                                   frame_index=np.asarray(data.frame_index)[first])
    counts = np.bincount(np.asarray(data.frame_index, int), minlength=len(data.alpha))
    empty = np.nonzero(counts == 0)[0]
    if empty.size and empty.size < len(counts):
        warnings.warn(f"{where}: {empty.size} frame(s) have no reflections (first: id {data.frame_id[empty[0]]}); "
                      "they are left out", stacklevel=2)
        data = data.subset_frames(np.nonzero(counts > 0)[0])
    elif empty.size:
        raise JaxedInputError(f"{where}: no frame has reflections; expected at least one")
    return data


def load_problem(structure: str, data_path: str, *, block: str | None = None, scattering: str = "lobato",
                 frames: str | None = None, exp_settings: ExperimentSettings = ExperimentSettings(),
                 absorption: float = 0.0, thermal_absorption: bool = False, cell_tolerance: float = 0.05,
                 drop_bad_sigma: bool = False, log=print):
    """Read the structure and the data, check them against each other and prepare the experiment.

    Returns:
        (crystal, atoms, data, experiment, bloch_settings)
    """
    from jaxed.data.pets import check_cell_match, read_pets

    crystal, atoms = load_structure(structure, block=block, scattering=scattering)
    check_structure(crystal, atoms, str(structure))
    data = read_pets(data_path, drop_bad_sigma=drop_bad_sigma)
    try:
        log(check_cell_match(crystal.cell, data.cell, cell_tolerance))
    except JaxedInputError as exc:
        raise JaxedInputError(f"{exc} (--cell-tolerance)") from None
    chosen = parse_frames(frames, len(data.alpha))
    if chosen is not None:
        data = data.subset_frames(chosen)
    data = _drop_duplicates_and_empty(data, str(data_path))
    semi = (exp_settings.semi_angle_deg if exp_settings.semi_angle_deg is not None
            else float(np.max(np.abs(data.precession_angle))))
    if exp_settings.beam_selection == "sample":
        semi = 0.0  # each sample's matrix holds only its own slab |s_g| ≤ sg_max (no widening by the rocking range)
    # One frame, not all: the refinement and the evaluation run the frames in chunks sized to the memory
    # (jaxed.model.batching.frames_per_batch), so a problem is out of reach only when one frame's matrices do not fit.
    batching.check_memory(crystal.volume, exp_settings.g_max, exp_settings.sg_max, 1, exp_settings.n_samples, semi)
    experiment = prepare_experiment(data, crystal, exp_settings)
    if not np.asarray(experiment.refl_mask).any():
        raise JaxedInputError(f"{data_path}: no reflections left after the selection (g_max_refine, R_Sg)")
    bloch = BlochSettings(energy_kev=experiment.energy_kev, absorption=absorption,
                          thermal_absorption=thermal_absorption)
    return crystal, atoms, data, experiment, bloch


def _report_dict(summary: dict, experiment: Experiment, thickness: np.ndarray, history: list, seconds: float,
                 extra: dict) -> dict:
    return {**summary, "epochs": len(history), "wall_seconds": seconds,
            "thickness_A": [float(t) for t in thickness], "frame_id": list(experiment.frame_ids),
            "mean_thickness_A": float(np.mean(thickness)),
            "history": [h["loss"] for h in history], "residual_definitions": {
                "wR_all": "reference paper: sqrt(Σ w²(Io−Ic)²/Σ w²Io²), w = (σ(√Io)² + (0.01√Io)²)^-1/2",
                "wR_all_jana": "Jana |F| form: sqrt(Σ w(|Fo|−|Fc|)²/Σ w|Fo|²), w = 1/(σ(F)² + (0.01F)²)",
                "R_obs": "Σ|√Io−√Ic|/Σ√Io over Io > 3σ",
                "*_frame_mean": "mean over frames of the per-frame value, each frame at the scale minimising it "
                                "(diffBloch's aggregate)"}, **extra}


def data_statistics(crystal: Crystal, experiment: Experiment, summary: dict, inputs: dict | None = None) -> dict:
    """Frames, reflections, resolution [Å], wavelength [Å] and beams of a prepared experiment (for report.md)."""
    mask = np.asarray(experiment.refl_mask)
    hkl = np.asarray(experiment.refl_hkl)[mask]
    g = np.linalg.norm(hkl @ np.asarray(crystal.reciprocal).T, axis=1)
    theta = np.rad2deg(np.asarray(experiment.theta))
    stats = {**(inputs or {}), "structure (space group)": f"{crystal.name} ({crystal.spacegroup})",
             "frames": experiment.n_frames, "tilt range [deg]": f"{theta.min():.2f} … {theta.max():.2f}",
             "N_obs / N_all (I > 3σ / all)": f"{summary['N_obs']} / {summary['N_all']}",
             "unique hkl": int(len(np.unique(hkl, axis=0))) if len(hkl) else 0,
             "resolution d_max … d_min [Å]": (f"{1 / g.min():.3f} … {1 / g.max():.3f}" if len(g) else "–"),
             "energy [kV]": float(experiment.energy_kev), "wavelength [Å]": float(_wavelength(experiment.energy_kev)),
             "beams per Bloch matrix (padded)": int(experiment.matrix_size),
             "beam selection": "per sample" if experiment.sample_beams is not None else "per frame"}
    return stats


def _epoch_monitor(path: Path, problem: Refinement, n_params: int, every: int):
    """A run_refinement callback that appends R_obs, wR_all, GoF (and R_free) after every ``every``-th epoch and
    after the last to ``path`` (JSON lines, so a resumed run keeps the earlier ones).

    Row ``epoch e`` holds the R factors after the step of epoch e. With Adam the step hands over the intensities
    its loss computed at the parameters it started from (those after epoch e − 1), so row e − 1 is written at epoch
    e without a forward model of its own; only the last row, and every row of the other optimisers, costs one."""
    last = problem.config.epochs - 1

    def write(epoch, i_calc):
        row = objective.summary(i_calc, problem.obs, n_params, kind=problem.config.residual, free=problem.obs_free)
        entry = {"epoch": int(epoch), **{k: row[k] for k in ("wR_all", "R_obs", "GoF", "R_free", "wR_free")
                                          if k in row}}
        with open(path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def callback(epoch, params, value, i_before=None):
        if i_before is not None:
            if epoch >= 1 and (epoch - 1) % every == 0:
                write(epoch - 1, i_before)
            if epoch == last:
                write(epoch, problem.intensities(params))
        elif epoch % every == 0 or epoch == last:
            write(epoch, problem.intensities(params))

    callback.from_intensities = True
    return callback


def _read_epochs(path: Path, n_epochs: int) -> list[dict]:
    """The monitor's rows for epochs < n_epochs, the last row of each epoch (a resumed run may repeat some)."""
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] < n_epochs:
            rows[row["epoch"]] = row
    return [rows[k] for k in sorted(rows)]


def _write_md(out: Path, *, title: str, crystal: Crystal, atoms: AtomParams, experiment: Experiment, obs,
              i_calc, scales, thickness, report: dict, settings: dict | None, inputs: dict | None,
              epochs: list[dict], plots: list, sigmas: dict | None = None) -> None:
    """report.md, the per-frame R plot and the tables they need."""
    scaled = np.asarray(i_calc) * np.asarray(scales)[:, None]
    mask = np.asarray(experiment.refl_mask)
    stats = frame_statistics(np.asarray(experiment.i_obs), np.asarray(experiment.sigma), scaled, mask)
    theta = np.rad2deg(np.asarray(experiment.theta))
    plots = list(plots) + [write_frame_plot(out, theta, stats["wR"])]
    frames = {"frame_id": list(experiment.frame_ids), "alpha_deg": theta, "thickness_A": np.asarray(thickness),
              "scale": np.asarray(scales), **stats}
    u_eq = np.asarray(u_equivalent(atoms.u_star, crystal.direct))
    frac = np.asarray(atoms.frac)
    rows = []
    for j, label in enumerate(crystal.labels):
        row = {"label": label, "element": crystal.site_elements[j], "x": frac[j, 0], "y": frac[j, 1],
               "z": frac[j, 2], "U_eq": u_eq[j], "occupancy": float(np.asarray(atoms.occupancy)[j])}
        if sigmas is not None and sigmas.get("frac") is not None:
            for k, axis in enumerate("xyz"):
                row[f"su_{axis}"] = float(np.asarray(sigmas["frac"])[j, k])
        if sigmas is not None and sigmas.get("u_eq") is not None:
            row["su_U_eq"] = float(np.asarray(sigmas["u_eq"])[j])
        rows.append(row)
    residuals = largest_residuals(np.asarray(experiment.refl_hkl), np.asarray(experiment.i_obs),
                                  np.asarray(experiment.sigma), scaled, np.asarray(obs.mask),
                                  list(experiment.frame_ids))
    write_markdown_report(out / "report.md", {**report, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
                          settings=settings, data=data_statistics(crystal, experiment, report, inputs), frames=frames,
                          parameters=rows, residuals=residuals, epochs=epochs, plots=plots, title=title)


def evaluate(crystal: Crystal, atoms: AtomParams, experiment: Experiment, bloch: BlochSettings, thickness: float,
             out: str | Path, *, settings: dict | None = None, inputs: dict | None = None) -> dict:
    """R factors of a model at one thickness, without refining; writes ``out/report.json`` and ``out/report.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    t = jnp.full((experiment.n_frames,), float(thickness))
    chunk = batching.experiment_frames_per_batch(experiment, float64=jnp.asarray(atoms.frac).dtype == jnp.float64,
                                                 absorption=bloch.absorbing, gradient=False)
    i_calc = jax.jit(integrated_intensities, static_argnames=("settings", "frames_per_batch"))(
        atoms, crystal, experiment, t, bloch, frames_per_batch=chunk)
    obs = objective.prepare_observations(jnp.asarray(experiment.i_obs), jnp.asarray(experiment.sigma),
                                         jnp.asarray(experiment.refl_mask))
    summary = objective.summary(i_calc, obs)
    report = _report_dict(summary, experiment, np.asarray(t), [], time.perf_counter() - t0, {"mode": "evaluate"})
    write_report(out / "report.json", report)
    scales = np.asarray(summary["scales"])
    plots = write_plots(out, [], np.rad2deg(np.asarray(experiment.theta)), np.asarray(t), np.asarray(experiment.i_obs),
                        np.asarray(i_calc) * scales[:, None], np.asarray(experiment.refl_mask))
    _write_md(out, title="jaxed evaluate", crystal=crystal, atoms=atoms, experiment=experiment, obs=obs, i_calc=i_calc,
              scales=scales, thickness=np.asarray(t), report=report, settings=settings, inputs=inputs, epochs=[],
              plots=plots)
    return report


class Refined(NamedTuple):
    """A refined model's values for the outputs.

    Attributes:
        params: the refined parameters; atoms: the refined ASU (AtomParams).
        thickness: (n_frames,) [Å]; i_calc: (n_frames, n_refl) unscaled intensities; scales: (n_frames,) the
            paper-form closed-form scales of the work set.
        summary: jaxed.refine.objective.summary (GoF with ``n_params``; R_free with a free set).
        n_params: parameters counted for the GoF and the CIF (jaxed.refine.problem.count_parameters).
    """

    params: dict
    atoms: AtomParams
    thickness: np.ndarray
    i_calc: np.ndarray
    scales: np.ndarray
    summary: dict
    n_params: int


def refine(crystal: Crystal, atoms: AtomParams, experiment: Experiment, bloch: BlochSettings, config: RefineConfig,
           out: str | Path, *, resume: bool = False, progress: bool = True, true_thickness=None,
           settings: dict | None = None, inputs: dict | None = None, sigmas: dict | None = None) -> dict:
    """Run a refinement and write refined.cif, report.json, report.md, checkpoints and plots into ``out``
    (``settings``: the effective settings, recorded in report.md and the CIF; ``sigmas``: s.u. to write instead of
    those of a Gauss–Newton / LM refinement).

    Returns:
        {report, params, problem, atoms (refined), thickness (n_frames,) [Å], i_calc (n_frames, n_refl) unscaled,
        scales (n_frames,)}.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    problem = Refinement(crystal, atoms, experiment, bloch, config)
    # 1. refine
    params, history, seconds = _run(problem, out, resume=resume, progress=progress)
    refined = _refined(problem, params)
    # 2. uncertainties: (JᵀWJ)⁻¹ GoF² at a least-squares minimum (jaxed.refine.uncertainty)
    uncertainties = None
    if sigmas is None and config.optimizer in ("gn", "lm", "hybrid"):
        uncertainties = _uncertainties(problem, params)
        sigmas = uncertainties.cif_sigmas()
    # 3. outputs
    report = _write_outputs(out, problem, refined, history, seconds, uncertainties, sigmas, settings=settings,
                            inputs=inputs, true_thickness=true_thickness)
    return {"report": report, "params": params, "problem": problem, "atoms": refined.atoms,
            "thickness": refined.thickness, "i_calc": refined.i_calc, "scales": refined.scales}


def _run(problem: Refinement, out: Path, *, resume: bool, progress: bool) -> tuple[dict, list, float]:
    """run_refinement with the per-epoch R-factor table (``out/epochs.jsonl``, about 20 rows); (params, history,
    seconds)."""
    epochs_file = out / "epochs.jsonl"
    if not resume and epochs_file.exists():
        epochs_file.unlink()
    every = max(1, -(-problem.config.epochs // 20))
    n_params = count_parameters(problem.params0, problem.experiment.n_frames)
    t0 = time.perf_counter()
    params, history = run_refinement(problem, out, resume=resume, progress=progress,
                                     callback=_epoch_monitor(epochs_file, problem, n_params, every))
    return params, history, (history[-1]["seconds"] if history else time.perf_counter() - t0)


def _refined(problem: Refinement, params: dict) -> Refined:
    """The refined model's atoms, thicknesses, intensities, scales and R factors (one forward evaluation)."""
    n_params = count_parameters(problem.params0, problem.experiment.n_frames)
    i_calc = problem.intensities(params)
    summary = objective.summary(i_calc, problem.obs, n_params, kind=problem.config.residual, free=problem.obs_free)
    return Refined(params=params, atoms=problem.atoms(params), thickness=np.asarray(problem.frame_thickness(params)),
                   i_calc=np.asarray(i_calc), scales=np.asarray(objective.frame_scales(i_calc, problem.obs)),
                   summary=summary, n_params=n_params)


def _uncertainties(problem: Refinement, params: dict):
    """Standard uncertainties of every refined group at ``params`` (dense Jacobian)."""
    from jaxed.refine.lsq import make_least_squares
    from jaxed.refine.uncertainty import standard_uncertainties

    lsq = make_least_squares(problem.model, problem.obs, problem.config, jacobian="auto", matrix_free_above=10**9)
    return standard_uncertainties(lsq, params, problem.structure)


def _write_outputs(out: Path, problem: Refinement, refined: Refined, history: list, seconds: float, uncertainties,
                   sigmas: dict | None, *, settings: dict | None, inputs: dict | None, true_thickness) -> dict:
    """refined.cif, the plots, report.json and report.md of a refinement; returns the report dict."""
    crystal, experiment, config = problem.crystal, problem.experiment, problem.config
    cif_info = {**refined.summary, "n_params": refined.n_params,
                "wavelength": float(_wavelength(experiment.energy_kev)), "settings": settings}
    mask = np.asarray(experiment.refl_mask)
    if mask.any():
        g = np.linalg.norm(np.asarray(experiment.refl_hkl)[mask] @ np.asarray(crystal.reciprocal).T, axis=1)
        cif_info["d_min"] = float(1 / g.max())
    write_refined_cif(out / "refined.cif", crystal, refined.atoms, cif_info, refined.thickness, experiment.frame_ids,
                      sigmas=sigmas)
    plots = write_plots(out, history, np.rad2deg(np.asarray(experiment.theta)), refined.thickness,
                        np.asarray(experiment.i_obs), refined.i_calc * refined.scales[:, None], mask, true_thickness)
    extra = {"mode": "refine", "config": dataclasses.asdict(config), "n_params": refined.n_params}
    if uncertainties is not None:
        extra["uncertainties"] = uncertainties.report_dict()
    if "orientation" in refined.params:
        extra["tilt_corrections_deg"] = np.rad2deg(np.asarray(refined.params["orientation"])).tolist()
    report = _report_dict(refined.summary, experiment, refined.thickness, history, seconds, extra)
    write_report(out / "report.json", report)
    _write_md(out, title="jaxed refinement", crystal=crystal, atoms=refined.atoms, experiment=experiment,
              obs=problem.obs, i_calc=refined.i_calc, scales=refined.scales, thickness=refined.thickness,
              report=report, settings=settings, inputs=inputs,
              epochs=_read_epochs(out / "epochs.jsonl", len(history)), plots=plots, sigmas=sigmas)
    return report


def search_orientations(crystal: Crystal, atoms: AtomParams, experiment: Experiment, bloch: BlochSettings,
                        config: RefineConfig, method: str, log=print, **options) -> Experiment:
    """Per-frame orientation searches run before a refinement, with the starting structure and the starting
    thickness model fixed: the reference paper's 'hexagonal' (two-angle scan, θ halving) and 'nelder-mead' (three
    angles), 'about-beam' (the rotation about the beam alone, all frames batched), or 'gradient' (two tilts by
    Adam). Searches chain with '+', each from where the last ended (e.g.
    'nelder-mead+hexagonal': coarse, then fine). ``options`` go to the searches that take them (e.g. ``max_rounds``
    to hexagonal, ``initial_step_deg`` to nelder-mead); one that no search takes is an error.

    Returns the experiment with corrected frame orientations (per-sample beams selected at them).
    """
    import inspect

    from jaxed.refine import orientation

    searches = {"hexagonal": orientation.hexagonal_scan, "nelder-mead": orientation.nelder_mead,
                "about-beam": orientation.about_beam_scan, "gradient": orientation.gradient_tilts}
    methods = method.split("+")
    unknown = [m for m in methods if m not in searches]
    if unknown:
        raise JaxedInputError(f"refine_orientation '{method}': expected one of {sorted(searches)}, or several "
                              "joined by '+'")
    accepted = {m: set(inspect.signature(f).parameters) - {"model", "params", "log", "obs"}
                for m, f in searches.items()}
    stray = set(options) - set().union(*accepted.values())
    if stray:
        raise JaxedInputError(f"orientation search options {sorted(stray)}: no search takes them")
    config = dataclasses.replace(config, refine_orientation=False, r_free=0.0)
    losses = None
    for m in methods:
        model = make_model(crystal, atoms, experiment, bloch, config)
        params = model.init(jax.random.PRNGKey(config.seed))
        before = orientation.frame_losses(model, params) if losses is None else losses
        corrected, _ = searches[m](model, params, log=log, **{k: v for k, v in options.items() if k in accepted[m]})
        corrected = reselect_sample_beams(corrected, crystal)  # per-sample beam sets follow the new orientations
        losses = orientation.frame_losses(model, params, corrected)
        mis = orientation.misorientation_deg(corrected.base_orientation, experiment.base_orientation)
        log(f"orientation search ({m}): mean frame wR_all {np.mean(before):.4f} → {np.mean(losses):.4f}, "
            f"median correction {np.median(mis):.3f}°")
        experiment = corrected
    return experiment
