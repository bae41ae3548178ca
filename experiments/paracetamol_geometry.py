"""Paracetamol: which frame geometry the file holds, and the settings of its Table 2 row (results/table2.md).

The file's measurement details say "continuous rotation"; the series is a precession tilt series. For the published
structure at the file's orientations (one thickness for all frames, per-sample beams, float64):

* ``geometry``: rotation ±φ about the tilt axis vs the precession cone of φ, on the same reflections (every listed
  one with |g| ≤ 1.2 Å⁻¹, no R_Sg cut), over a thickness grid;
* ``rsg``: N_all / N_obs of all 50 frames for R_Sg caps (with and without D_Sg) — the paper's counts are 6621 / 2697;
* ``samples``: R_obs for several numbers of cone samples;
* ``beams``: R_obs for several caps on the beams of one sample's Bloch matrix.

    python experiments/paracetamol_geometry.py --check geometry --frames every:3 --samples 24
    python experiments/paracetamol_geometry.py --check rsg
    python experiments/paracetamol_geometry.py --check samples --frames every:6 --samples-list 48,96,192
    python experiments/paracetamol_geometry.py --check beams --frames 1,30 --beams-list 100,120,160,220,300,0
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import jax

import jaxed

jax.config.update("jax_enable_x64", True)
jaxed.configure_cpu()  # CPU thread settings (docs/SPEED.md), before the backend starts

from table2 import SHARED, SAMPLES  # noqa: E402

from jaxed.model.experiment import ExperimentSettings  # noqa: E402
from jaxed.refine.optimize import RefineConfig, Refinement  # noqa: E402
from jaxed.app.workflow import load_problem  # noqa: E402

SPEC = SAMPLES["paracetamol"]


def _problem(frames: str | None, *, precession: bool, n_samples: int, r_sg: float | None, max_beams: int | None,
             d_sg: float | None = None) -> Refinement:
    """The published structure with one thickness (set per evaluation by :func:`_line`) on the chosen frames."""
    settings = ExperimentSettings(g_max=SPEC["g_max"], sg_max=SPEC["sg_max"], g_max_refine=SPEC["g_max_refine"],
                                  r_sg_max=r_sg, d_sg_min=d_sg, n_samples=n_samples, beam_selection="sample",
                                  max_beams=max_beams, precession=precession)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crystal, atoms, _, exp, bloch = load_problem(SHARED / SPEC["structure"]["Pbca"], SHARED / SPEC["data"],
                                                     frames=frames, exp_settings=settings, log=lambda s: None)
    return Refinement(crystal, atoms, exp, bloch, RefineConfig(thickness_model="single"))


def _line(label: str, problem: Refinement, thickness: float) -> str:
    p = dict(problem.params0, thickness={"log_t0": jax.numpy.log(thickness)})
    r = problem.summary(p)
    return (f"{label} t {thickness:5.0f} Å: frame means R_obs {100 * r['R_obs_frame_mean']:.2f} % wR_all "
            f"{100 * r['wR_all_frame_mean']:.2f} %; pooled {100 * r['R_obs']:.2f} / {100 * r['wR_all']:.2f} %; "
            f"N_obs {r['N_obs']} N_all {r['N_all']}; {problem.experiment.matrix_size} beams (padded)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", nargs="+", choices=("geometry", "rsg", "samples", "beams"), default=["geometry"])
    ap.add_argument("--frames", default="every:3", help="frame subset (geometry, samples, beams)")
    ap.add_argument("--samples", type=int, default=24, help="geometry, beams: samples per frame")
    ap.add_argument("--thicknesses", default="10,150,250,400", help="geometry: thickness grid [Å]")
    ap.add_argument("--thickness", type=float, default=450.0, help="samples, beams: thickness [Å]")
    ap.add_argument("--max-beams", type=int, default=120, help="geometry, samples: beams per sample")
    ap.add_argument("--samples-list", default="48,96,192")
    ap.add_argument("--beams-list", default="100,120,160,220,300,0", help="0: no cap")
    args = ap.parse_args()
    if "geometry" in args.check:
        for precession in (False, True):
            problem = _problem(args.frames, precession=precession, n_samples=args.samples, r_sg=None,
                               max_beams=args.max_beams)
            for t in (float(x) for x in args.thicknesses.split(",")):
                print(_line("precession cone" if precession else "rotation about the tilt axis", problem, t),
                      flush=True)
    if "rsg" in args.check:
        for r_sg in (None, 0.9, 0.66, 0.5, 0.4):
            for d_sg in (None, 0.0015):
                problem = _problem(None, precession=True, n_samples=1, r_sg=r_sg, max_beams=2, d_sg=d_sg)
                obs = problem.obs
                print(f"R_Sg ≤ {r_sg}, D_Sg {d_sg}: N_all {int(obs.mask.sum())}, N_obs {int(obs.observed.sum())}",
                      flush=True)
    if "samples" in args.check:
        for n in (int(x) for x in args.samples_list.split(",")):
            problem = _problem(args.frames, precession=True, n_samples=n, r_sg=SPEC["r_sg_max"],
                               max_beams=args.max_beams)
            print(_line(f"{n} cone samples,", problem, args.thickness), flush=True)
    if "beams" in args.check:
        for cap in (int(x) for x in args.beams_list.split(",")):
            problem = _problem(args.frames, precession=True, n_samples=SPEC["samples"], r_sg=SPEC["r_sg_max"],
                               max_beams=cap or None)
            print(_line(f"≤ {cap or 'all'} beams per sample,", problem, args.thickness), flush=True)


if __name__ == "__main__":
    main()
