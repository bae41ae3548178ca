"""End-to-end jobs behind the command line: evaluate, refine, synthesise, demo.

Each job takes plain settings, does its I/O at the edges and calls the library; the command line only parses.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxed import objective
from jaxed.bloch import BlochSettings
from jaxed.crystal import AtomParams, Crystal, load_structure
from jaxed.errors import JaxedInputError
from jaxed.experiment import Experiment, ExperimentSettings, integrated_intensities, prepare_experiment
from jaxed.refine import RefineConfig, Refinement, run_refinement
from jaxed.report import write_plots, write_refined_cif, write_report

__all__ = ["load_problem", "evaluate", "refine", "parse_frames", "read_config"]


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
    """Settings from a JSON or TOML file (keys as the long command-line options, '-' or '_')."""
    path = Path(path)
    if not path.is_file():
        raise JaxedInputError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line
        raise JaxedInputError(f"{path}: cannot parse config ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise JaxedInputError(f"{path}: expected a table/object of settings")
    return {k.replace("-", "_"): v for k, v in data.items()}


def load_problem(structure: str, data_path: str, *, block: str | None = None, scattering: str = "lobato",
                 frames: str | None = None, exp_settings: ExperimentSettings = ExperimentSettings(),
                 absorption: float = 0.0, cell_tolerance: float = 0.05, drop_bad_sigma: bool = False, log=print):
    """Read the structure and the data, check them against each other and prepare the experiment.

    Returns:
        (crystal, atoms, data, experiment, bloch_settings)
    """
    from jaxed.pets import check_cell_match, read_pets

    crystal, atoms = load_structure(structure, block=block, scattering=scattering)
    data = read_pets(data_path, drop_bad_sigma=drop_bad_sigma)
    try:
        log(check_cell_match(crystal.cell, data.cell, cell_tolerance))
    except JaxedInputError as exc:
        raise JaxedInputError(f"{exc} (--cell-tolerance)") from None
    chosen = parse_frames(frames, len(data.alpha))
    if chosen is not None:
        data = data.subset_frames(chosen)
    experiment = prepare_experiment(data, crystal, exp_settings)
    if not np.asarray(experiment.refl_mask).any():
        raise JaxedInputError(f"{data_path}: no reflections left after the selection (g_max_refine, R_Sg)")
    bloch = BlochSettings(energy_kev=experiment.energy_kev, absorption=absorption)
    return crystal, atoms, data, experiment, bloch


def _report_dict(summary: dict, experiment: Experiment, thickness: np.ndarray, history: list, seconds: float,
                 extra: dict) -> dict:
    return {**summary, "epochs": len(history), "wall_seconds": seconds,
            "thickness_A": [float(t) for t in thickness], "frame_id": list(experiment.frame_ids),
            "mean_thickness_A": float(np.mean(thickness)),
            "history": [h["loss"] for h in history], "residual_definitions": {
                "wR_all": "reference paper: sqrt(Σ w²(Io−Ic)²/Σ w²Io²), w = (σ(√Io)² + (0.01√Io)²)^-1/2",
                "wR_all_jana": "Jana |F| form: sqrt(Σ w(|Fo|−|Fc|)²/Σ w|Fo|²), w = 1/(σ(F)² + (0.01F)²)",
                "R_obs": "Σ|√Io−√Ic|/Σ√Io over Io > 3σ"}, **extra}


def evaluate(crystal: Crystal, atoms: AtomParams, experiment: Experiment, bloch: BlochSettings, thickness: float,
             out: str | Path) -> dict:
    """R factors of a model at one thickness, without refining; writes ``out/report.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    t = jnp.full((experiment.n_frames,), float(thickness))
    i_calc = jax.jit(integrated_intensities, static_argnames="settings")(atoms, crystal, experiment, t, bloch)
    obs = objective.prepare_observations(jnp.asarray(experiment.i_obs), jnp.asarray(experiment.sigma),
                                         jnp.asarray(experiment.refl_mask))
    summary = objective.summary(i_calc, obs)
    report = _report_dict(summary, experiment, np.asarray(t), [], time.perf_counter() - t0, {"mode": "evaluate"})
    write_report(out / "report.json", report)
    return report


def refine(crystal: Crystal, atoms: AtomParams, experiment: Experiment, bloch: BlochSettings, config: RefineConfig,
           out: str | Path, *, resume: bool = False, progress: bool = True, true_thickness=None) -> dict:
    """Run a refinement and write refined.cif, report.json, checkpoints and plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    problem = Refinement(crystal, atoms, experiment, bloch, config)
    t0 = time.perf_counter()
    params, history = run_refinement(problem, out, resume=resume, progress=progress)
    seconds = history[-1]["seconds"] if history else time.perf_counter() - t0
    refined = problem.atoms(params)
    thickness = np.asarray(problem.frame_thickness(params))
    i_calc = problem.intensities(params)
    summary = objective.summary(i_calc, problem.obs)
    write_refined_cif(out / "refined.cif", crystal, refined, summary, thickness, experiment.frame_ids)
    scales = np.asarray(objective.frame_scales(i_calc, problem.obs))
    write_plots(out, history, np.rad2deg(np.asarray(experiment.theta)), thickness, np.asarray(experiment.i_obs),
                np.asarray(i_calc) * scales[:, None], np.asarray(experiment.refl_mask), true_thickness)
    extra = {"mode": "refine", "config": dataclasses.asdict(config)}
    if "orientation" in params:
        extra["tilt_corrections_deg"] = np.rad2deg(np.asarray(params["orientation"])).tolist()
    report = _report_dict(summary, experiment, thickness, history, seconds, extra)
    write_report(out / "report.json", report)
    return {"report": report, "params": params, "problem": problem, "atoms": refined}
