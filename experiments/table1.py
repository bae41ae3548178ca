"""Reference-paper Table 1: kinematical vs single thickness vs ThicknessNN on synthetic data.

Two sources of synthetic data:

* ``paper``: the reference paper's own synthetic datasets (../shared/data/synthetic/*_paper_data.cif_pets) with its
  displaced starting models (*_0{1,2,3}_displacement.cif); truth = the experimental models in structures/.
* ``jaxed``: data made here by ``jaxed.model.synth`` (known random smooth thickness profile, I_max 1e6, Poisson noise),
  starts displaced by Δ (0.2 Å default) with the symmetry-aware protocol.

One run = one (sample, start, thickness model); its result goes to experiments/results/table1/<tag>.json and
``--summary`` prints all results side by side with the paper's numbers.

Examples:
    python experiments/table1.py --sample quartz --source paper --start 1 --model nn
    python experiments/table1.py --sample quartz --source jaxed --delta 0.2 --model nn --imax 1e6
    python experiments/table1.py --summary
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import jax

import jaxed

jax.config.update("jax_enable_x64", True)
jaxed.configure_cpu()  # CPU thread settings (docs/SPEED.md), before the backend starts

import numpy as np  # noqa: E402

from jaxed.refine import objective  # noqa: E402
from jaxed.physics.bloch import BlochSettings  # noqa: E402
from jaxed.physics.crystal import load_structure  # noqa: E402
from jaxed.model.experiment import ExperimentSettings, integrated_intensities, prepare_experiment  # noqa: E402
from jaxed.refine.metrics import adp_frobenius, asu_rmsd, thickness_errors  # noqa: E402
from jaxed.data.pets import read_pets  # noqa: E402
from jaxed.refine.optimize import RefineConfig, Refinement, run_refinement  # noqa: E402
from jaxed.model.synth import random_start, synthesize, thickness_profile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "experiments" / "results" / "table1"

# The paper's Table 1 (docs/TARGETS.md): wR_all, ASU RMSD [Å], ‖ΔU‖_F for kinematic / single / nn.
PAPER = {
    "quartz": {"kinematic": (0.452, 0.0347, 0.0154), "single": (0.207, 0.0026, 0.0023), "nn": (0.012, 0.0003, 0.0001)},
    "cspbbr3": {"kinematic": (0.607, 0.0575, 0.0392), "single": (0.121, 0.0080, 0.0160), "nn": (0.020, 0.0004, 0.0011)},
    "paracetamol": {"kinematic": (0.323, 0.0136, 0.0096), "single": (0.0279, 0.0007, 0.0009),
                    "nn": (0.014, 0.0006, 0.0002)},
}

# Settings recorded with the paper's synthetic data (shared/data/README.md); samples reduced where noted.
SAMPLES = {
    "quartz": dict(truth="structures/quartz_P3221.cif", data="synthetic/quartz_paper_data.cif_pets",
                   start="synthetic/quartz_0{}_displacement.cif", geometry="pets/quartz_suresh2024.cif_pets",
                   settings=ExperimentSettings(g_max=2.0, sg_max=0.01, g_max_refine=1.6, r_sg_max=0.9, n_samples=42,
                                               semi_angle_deg=1.0), aniso="as-given"),
    "cspbbr3": dict(truth="structures/cspbbr3_Pbnm.cif", data="synthetic/cspbbr3_paper_data.cif_pets",
                    start="synthetic/cspbbr3_0{}_displacement.cif", geometry="pets/cspbbr3_suresh2024.cif_pets",
                    settings=ExperimentSettings(g_max=1.6, sg_max=0.01, g_max_refine=1.0, r_sg_max=0.66, n_samples=60,
                                                semi_angle_deg=1.5), aniso="all"),
    "paracetamol": dict(truth="structures/paracetamol_formII_Pbca.cif", data="synthetic/paracetamol_paper_data.cif_pets",
                        start="synthetic/paracetamol_0{}_displacement.cif", geometry="pets/paracetamol_formII.cif_pets",
                        settings=ExperimentSettings(g_max=1.4, sg_max=0.01, g_max_refine=1.2, r_sg_max=0.9,
                                                    n_samples=42, semi_angle_deg=1.4), aniso="as-given"),
}


def run(args) -> dict:
    spec = SAMPLES[args.sample]
    settings = spec["settings"]
    if args.samples:
        settings = dataclasses.replace(settings, n_samples=args.samples)
    if args.g_max:
        settings = dataclasses.replace(settings, g_max=args.g_max)
    if args.g_max_refine:
        settings = dataclasses.replace(settings, g_max_refine=args.g_max_refine)
    if args.max_beams:
        settings = dataclasses.replace(settings, max_beams=args.max_beams)
    if args.beams != "frame":  # per-sample beam sets (docs/SPEED.md §7); the jaxed synthesis uses the same model
        settings = dataclasses.replace(settings, beam_selection=args.beams)
    crystal, truth = load_structure(SHARED / spec["truth"])
    t_true = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.source == "paper":
            data = read_pets(SHARED / spec["data"], drop_bad_sigma=True)
            start_atoms = truth if args.start == 0 else load_structure(SHARED / spec["start"].format(args.start))[1]
        else:
            frames = read_pets(SHARED / spec["geometry"], drop_bad_sigma=True)
            if args.frame_step > 1:
                frames = frames.subset_frames(np.arange(0, frames.n_frames, args.frame_step))
            t_true = thickness_profile("random", np.deg2rad(frames.alpha), args.t0, seed=args.seed + 1)
            syn = dataclasses.replace(settings, r_sg_max=None)
            bloch0 = BlochSettings(prepare_experiment(frames.subset_frames([0]), crystal, syn).energy_kev)
            data = synthesize(crystal, truth, frames, t_true, bloch0, syn, i_max=args.imax, seed=args.seed)
            start_atoms = None
    if args.frame_step > 1 and args.source == "paper":
        data = data.subset_frames(np.arange(0, data.n_frames, args.frame_step))
    exp = prepare_experiment(data, crystal, settings)
    bloch = BlochSettings(exp.energy_kev)
    model_opts = dict(thickness_model=args.model, thickness_init=args.t_init, epochs=args.epochs, lr=args.lr,
                      lr_groups=((("thickness", args.lr_thickness),) if args.model != "kinematic" else ())
                      + ((("structure", 0.0),) if args.start == 0 and args.source == "paper" else ()),
                      lr_schedule=args.schedule, checkpoint_every=25, seed=args.seed, aniso=spec["aniso"],
                      thickness_range=(50.0, 3000.0))
    config = RefineConfig(**model_opts)
    # a given start's reference positions define ξ = 0 (make_structure_model of the start)
    reference = truth if start_atoms is None else start_atoms
    problem = Refinement(crystal, reference, exp, bloch, config)
    if start_atoms is None:
        problem.params0["structure"] = random_start(problem.structure, problem.params0["structure"], args.delta,
                                                    seed=args.seed)
    start = problem.atoms(problem.params0)
    tag = args.tag or f"{args.sample}_{args.source}_{args.model}_" + (
        f"start{args.start}" if args.source == "paper" else f"d{args.delta}_imax{args.imax:g}") + (
        "_persample" if args.beams == "sample" else "") + (f"_lm{args.polish_lm}" if args.polish_lm else "")
    print(f"[{tag}] {exp.n_frames} frames, {int(np.sum(exp.refl_mask))} reflections, {exp.matrix_size} beams, "
          f"{settings.n_samples} samples; start RMSD {asu_rmsd(crystal, start, truth):.4f} Å", flush=True)
    t0 = time.perf_counter()
    params, history = run_refinement(problem, RESULTS / f"{tag}.ckpt", progress=False, resume=args.resume,
                                     callback=lambda e, p, v: print(f"  epoch {e:4d}  wR_all {v:.5f}  "
                                                                   f"{time.perf_counter() - t0:7.1f} s", flush=True)
                                     if e % 10 == 0 else None)
    adam_summary = None
    if args.polish_lm:
        # second-order polish: K Levenberg–Marquardt iterations from the first-order result (same problem)
        adam_summary = {"wR_all": problem.summary(params)["wR_all"],
                        "rmsd_A": asu_rmsd(crystal, problem.atoms(params), truth), "epochs": len(history)}
        polish = Refinement(crystal, reference, exp, bloch, dataclasses.replace(config, optimizer="lm",
                                                                                epochs=args.polish_lm))
        polish.params0 = params
        params, more = run_refinement(polish, RESULTS / f"{tag}.lm.ckpt", progress=False, resume=args.resume,
                                      callback=lambda e, p, v: print(f"  LM {e:4d}  wR_all {v:.5f}  "
                                                                     f"{time.perf_counter() - t0:7.1f} s", flush=True))
        history = history + more
        print(f"  after Adam: wR_all {adam_summary['wR_all']:.5f}, RMSD {adam_summary['rmsd_A']:.4f} Å", flush=True)
    refined = problem.atoms(params)
    non_h = [e not in ("H", "D") for e in crystal.site_elements]
    summary = problem.summary(params)
    thickness = np.asarray(problem.frame_thickness(params))
    result = {"tag": tag, "sample": args.sample, "source": args.source, "model": args.model,
              "start": args.start if args.source == "paper" else None, "delta": args.delta, "imax": args.imax,
              "epochs": len(history), "seconds": time.perf_counter() - t0, "wR_all": summary["wR_all"],
              "R_obs": summary["R_obs"], "N_obs": summary["N_obs"], "N_all": summary["N_all"],
              "rmsd_A": asu_rmsd(crystal, refined, truth), "adp_frobenius": adp_frobenius(crystal, refined, truth),
              "rmsd_non_h_A": asu_rmsd(crystal, refined, truth, sites=non_h),
              "adp_frobenius_non_h": adp_frobenius(crystal, refined, truth, sites=non_h),
              "start_rmsd_A": asu_rmsd(crystal, start, truth), "mean_thickness_A": float(thickness.mean()),
              "n_samples": settings.n_samples, "frame_step": args.frame_step, "g_max": settings.g_max,
              "g_max_refine": settings.g_max_refine, "beams_padded": int(exp.matrix_size),
              "beam_selection": settings.beam_selection, "polish_lm": args.polish_lm, "before_polish": adam_summary,
              "command": "python " + " ".join(sys.argv), "history": [h["loss"] for h in history]}
    if t_true is not None:
        result["thickness_error"] = thickness_errors(thickness, t_true)
        # the noise floor: wR_all of the true structure at the true thickness of every frame (the data's Poisson
        # noise alone); a refined model at this wR_all has fitted everything but the noise
        i_true = integrated_intensities(truth, crystal, exp, jax.numpy.asarray(t_true), bloch)
        result["wR_all_truth"] = objective.summary(i_true, problem.obs, kind=problem.config.residual)["wR_all"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps(result, indent=1))
    if args.polish_lm and args.su:  # after the first write: the refinement is kept even if this fails
        result["expected_from_su"] = expected_errors(polish, params, crystal)
        if "wR_all_truth" in result:  # V ∝ GoF² ∝ wR_all²: the s.u. a fit down to the noise would give
            ratio = result["wR_all_truth"] / result["wR_all"]
            result["expected_from_su"]["at_noise_floor"] = {
                k: v * ratio for k, v in result["expected_from_su"].items() if k.startswith(("rmsd", "adp"))}
        (RESULTS / f"{tag}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))
    return result


def expected_errors(problem, params, crystal) -> dict:
    """What the data can determine: the RMSD and ‖ΔU‖_F that the refined model's standard uncertainties
    (jaxed.refine.uncertainty, V = GoF² (JᵀWJ)⁻¹ of the structural parameters) predict,
    √(mean_j Σ_k σ²(x_jk)) [Å] and √(Σ_j Σ_kl σ²(U_jkl)) [Å²] — comparable with the achieved errors (an error well
    above them means the optimiser has not converged; near them, the noise of the data sets the floor)."""
    from jaxed.refine.lsq import make_least_squares
    from jaxed.refine.uncertainty import standard_uncertainties

    # structure only, thickness network held at its refined values: forming J for its ~4 400 weights would cost
    # ~4 400 forward passes; the conditional s.u. are a lower bound of the full ones (correlations only add)
    lsq = make_least_squares(problem.model, problem.obs, problem.config, ["structure"], jacobian="auto",
                             matrix_free_above=10**9)
    su = standard_uncertainties(lsq, params, problem.structure)
    heavy = np.array([e not in ("H", "D") for e in crystal.site_elements])
    var = np.sum(np.asarray(su.cart_su) ** 2, axis=1)
    # U (CIF convention) → Cartesian needs the metric; for the orthogonal cells of Table 1's paracetamol (Pbca) and
    # CsPbBr3 (Pbnm) they coincide, for quartz the ADP figure is approximate
    u_var = np.sum(np.asarray(su.u_cif_su) ** 2, axis=(1, 2))
    return {"rmsd_A": float(np.sqrt(var.mean())), "rmsd_non_h_A": float(np.sqrt(var[heavy].mean())),
            "adp_frobenius": float(np.sqrt(u_var.sum())), "adp_frobenius_non_h": float(np.sqrt(u_var[heavy].sum())),
            "gof": float(su.gof), "rank": int(su.rank)}


def summary() -> None:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    print("| sample | data | model | start | frames step / samples / g_max | N_all | wR_all | ASU RMSD (Å) | ‖ΔU‖_F (Å²) | "
          "paper wR / RMSD / ‖ΔU‖ | epochs | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = PAPER[r["sample"]][r["model"]]
        start = f"#{r['start']}" if r["source"] == "paper" else f"Δ{r['delta']} I{r['imax']:g}"
        size = f"{r.get('frame_step', 1)} / {r.get('n_samples', '?')} / {r.get('g_max', 'default')}" + (
            " / per-sample beams" if r.get("beam_selection") == "sample" else "")
        print(f"| {r['sample']} | {r['source']} | {r['model']} | {start} | {size} | {r.get('N_all', '?')} | "
              f"{r['wR_all']:.4f} | {r['rmsd_A']:.4f} | "
              f"{r['adp_frobenius']:.4f} | {p[0]} / {p[1]} / {p[2]} | {r['epochs']} | {r['seconds']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", choices=sorted(SAMPLES), default="quartz")
    ap.add_argument("--source", choices=("paper", "jaxed"), default="paper")
    ap.add_argument("--start", type=int, default=1, choices=(0, 1, 2, 3),
                    help="paper start model 1–3; 0 = the truth with the structure frozen (thickness-only floor)")
    ap.add_argument("--model", choices=("kinematic", "single", "nn"), default="nn")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--polish-lm", type=int, default=0, metavar="K",
                    help="after the Adam epochs, K Levenberg–Marquardt iterations from the Adam result")
    ap.add_argument("--resume", action="store_true",
                    help="continue from the checkpoints of the same tag (a finished run is only re-evaluated)")
    ap.add_argument("--su", action="store_true",
                    help="with --polish-lm: record the errors the standard uncertainties predict (expected_from_su)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lr-thickness", type=float, default=2e-2)
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="cosine")
    ap.add_argument("--t-init", type=float, default=600.0)
    ap.add_argument("--t0", type=float, default=700.0, help="jaxed source: base thickness of the true profile")
    ap.add_argument("--delta", type=float, default=0.2)
    ap.add_argument("--imax", type=float, default=1e6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=None, help="override the rocking-curve samples")
    ap.add_argument("--frame-step", type=int, default=1, help="use every k-th frame")
    ap.add_argument("--g-max", type=float, default=None, help="override the beams' g_max [1/Å]")
    ap.add_argument("--g-max-refine", type=float, default=None, help="override the reflections' g_max [1/Å]")
    ap.add_argument("--max-beams", type=int, default=None, help="cap on beams per frame (smallest |s_g| kept)")
    ap.add_argument("--beams", choices=("frame", "sample"), default="frame",
                    help="one Bloch matrix per frame, or per rocking sample (its own |s_g| ≤ sg_max beams)")
    ap.add_argument("--tag")
    ap.add_argument("--summary", action="store_true")
    args = ap.parse_args()
    if args.summary:
        summary()
    else:
        run(args)


if __name__ == "__main__":
    sys.exit(main())
