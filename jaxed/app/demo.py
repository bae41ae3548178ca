"""`jaxed demo`: a real refinement on data shipped with the package, a few minutes on a laptop CPU.

The data (``jaxed/data/quartz_demo.cif_pets``) were made with ``jaxed synth`` from ``quartz_P3221.cif`` on every
4th frame of the measured quartz geometry (Suresh et al. 2024), a random smooth thickness profile (t₀ 700 Å, seed 1),
I_max = 10⁶ and Poisson noise; the true thickness per frame is in ``quartz_demo.cif_pets.truth.json``. The demo
displaces the true structure by up to 0.2 Å (uniform per free coordinate, ADPs ±30 %), refines positions, ADPs and a
ThicknessNN jointly with Adam, and prints starting vs refined RMSD, ADP error, wR_all and thickness error.
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from importlib import resources
from pathlib import Path

import numpy as np

from jaxed.physics.bloch import BlochSettings
from jaxed.physics.crystal import load_structure
from jaxed.model.experiment import ExperimentSettings, prepare_experiment
from jaxed.refine import objective
from jaxed.refine.metrics import adp_frobenius, asu_rmsd, thickness_errors
from jaxed.data.pets import read_pets
from jaxed.model.synth import random_start
from jaxed.refine.optimize import RefineConfig, Refinement, run_refinement
from jaxed.app.report import write_markdown_report, write_plots, write_refined_cif, write_report

__all__ = ["DEMO_SETTINGS", "DEMO_CONFIG", "run_demo", "demo_files"]

#: Modelling settings of the demo (the same as those the data were synthesised with; `jaxed synth` defaults
#: except g_max_refine 1.6 and 15 samples).
DEMO_SETTINGS = ExperimentSettings(g_max=1.6, sg_max=0.01, g_max_refine=1.6, r_sg_max=0.9, n_samples=15)
DEMO_CONFIG = RefineConfig(thickness_model="nn", thickness_init=600.0, optimizer="adam", epochs=200, lr=3e-3,
                           lr_groups=(("thickness", 2e-2),), lr_schedule="cosine", checkpoint_every=50)


def demo_files() -> tuple[Path, Path, Path]:
    """(structure CIF, data, truth sidecar) shipped in jaxed/data."""
    root = resources.files("jaxed").joinpath("data")
    return (Path(str(root / "quartz_P3221.cif")), Path(str(root / "quartz_demo.cif_pets")),
            Path(str(root / "quartz_demo.cif_pets.truth.json")))


def run_demo(out: str | Path = "jaxed-demo", *, epochs: int | None = None, delta: float = 0.2, seed: int = 0,
             progress: bool = True) -> dict:
    """Run the demo refinement; returns the table as a dict and writes report, CIF and plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    structure, data_path, truth_path = demo_files()
    crystal, truth = load_structure(structure)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_pets(data_path)
    for w in caught:
        print(f"note: {w.message}")
    t_true = np.array(json.loads(truth_path.read_text())["thickness_A"])
    experiment = prepare_experiment(data, crystal, DEMO_SETTINGS)
    bloch = BlochSettings(experiment.energy_kev)
    config = DEMO_CONFIG if epochs is None else dataclasses.replace(DEMO_CONFIG, epochs=epochs)
    problem = Refinement(crystal, truth, experiment, bloch, config)
    problem.params0["structure"] = random_start(problem.structure, problem.params0["structure"], delta, seed=seed)
    print(f"jaxed demo: synthetic quartz, {experiment.n_frames} frames, {int(np.sum(experiment.refl_mask))} "
          f"reflections, {experiment.matrix_size} beams × {DEMO_SETTINGS.n_samples} rocking samples per frame; "
          f"start displaced by ≤ {delta} Å; ThicknessNN + structure, Adam, {config.epochs} epochs")

    def table_row(params):
        atoms = problem.atoms(params)
        s = problem.summary(params)
        t = np.asarray(problem.frame_thickness(params))
        return {"rmsd_A": asu_rmsd(crystal, atoms, truth), "adp_frobenius_A2": adp_frobenius(crystal, atoms, truth),
                "wR_all": s["wR_all"], "R_obs": s["R_obs"], "thickness_rms_rel": thickness_errors(t, t_true)["rms_relative"],
                "summary": s, "thickness": t, "atoms": atoms}

    start = table_row(problem.params0)
    t0 = time.perf_counter()
    params, history = run_refinement(problem, out, progress=progress)
    seconds = time.perf_counter() - t0
    end = table_row(params)
    print()
    print(f"{'':22s}{'start':>12s}{'refined':>12s}")
    for key, label, fmt in (("rmsd_A", "ASU RMSD [Å]", "{:12.4f}"), ("adp_frobenius_A2", "‖ΔU‖_F [Å²]", "{:12.5f}"),
                            ("wR_all", "wR_all", "{:12.4f}"), ("R_obs", "R_obs", "{:12.4f}"),
                            ("thickness_rms_rel", "thickness error (rms)", "{:12.1%}")):
        print(f"{label:22s}" + fmt.format(start[key]) + fmt.format(end[key]))
    print(f"\n{len(history)} epochs in {seconds:.0f} s; outputs in {out}/")
    write_refined_cif(out / "refined.cif", crystal, end["atoms"], end["summary"], end["thickness"],
                      experiment.frame_ids)
    i_calc = problem.intensities(params)
    scales = np.asarray(objective.frame_scales(i_calc, problem.obs))
    plots = write_plots(out, history, np.rad2deg(np.asarray(experiment.theta)), end["thickness"],
                np.asarray(experiment.i_obs), np.asarray(i_calc) * scales[:, None], np.asarray(experiment.refl_mask),
                t_true)
    table = {k: {"start": start[k], "refined": end[k]} for k in
             ("rmsd_A", "adp_frobenius_A2", "wR_all", "R_obs", "thickness_rms_rel")}
    write_report(out / "report.json", {**end["summary"], "epochs": len(history), "wall_seconds": seconds,
                                       "thickness_A": end["thickness"], "true_thickness_A": t_true,
                                       "history": [h["loss"] for h in history], "demo_table": table})
    every = max(1, len(history) // 20)
    write_markdown_report(out / "report.md", {**end["summary"], "epochs": len(history), "wall_seconds": seconds},
                          data={"data file": str(data_path), "frames": experiment.n_frames,
                                "start: ASU RMSD [Å]": f"{start['rmsd_A']:.4f}",
                                "refined: ASU RMSD [Å]": f"{end['rmsd_A']:.4f}",
                                "refined: thickness error (rms)": f"{end['thickness_rms_rel']:.1%}"},
                          epochs=[{"epoch": h["epoch"], "wR_all": h["loss"]} for h in history[::every]],
                          plots=plots, title="jaxed demo: synthetic quartz")
    return table
