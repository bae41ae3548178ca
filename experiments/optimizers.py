"""Optimisers compared: Adam, L-BFGS, Gauss–Newton, Levenberg–Marquardt and the hybrid (Adam thickness + LM structure).

For each problem (quartz, CsPbBr₃, paracetamol; synthetic with a known truth made by ``jaxed.model.synth`` on the measured
frame geometry, or the measured data with the published structure as the reference) and each optimiser, one run
from the same displaced start records: final wR_all, ASU RMSD to the truth [Å], wall time [s] (compilation
included), steps, objective / Jacobian evaluations, peak memory (max RSS of the run's own process [MB]) and the loss
history (for the loss-vs-time plots). A second sweep grows the ThicknessNN (two hidden layers of H units) and runs
Adam, hybrid and LM (matrix-free when the network is large) on the same problem.

Each run executes in its own subprocess (clean peak memory, no shared compile cache) and writes
experiments/results/optimizers/<tag>.json; ``--summary`` writes experiments/results/optimizers.md and the plots.

Examples:
    python experiments/optimizers.py --quick            # small cases, a few minutes each (2-core CPU)
    python experiments/optimizers.py --samples quartz cspbbr3 paracetamol --frames 8 --g-max 1.4 --n-samples 7 \\
        --widths 64 256 1024 4096
    python experiments/optimizers.py --summary
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "experiments" / "results" / "optimizers"
SAMPLES = {
    "quartz": ("structures/quartz_P3221.cif", "pets/quartz_suresh2024.cif_pets"),
    "cspbbr3": ("structures/cspbbr3_Pbnm.cif", "pets/cspbbr3_suresh2024.cif_pets"),
    "paracetamol": ("structures/paracetamol_formII_Pbca.cif", "pets/paracetamol_formII.cif_pets"),
}
OPTIMIZERS = ("adam", "lbfgs", "gn", "lm", "hybrid")


def run_case(args) -> dict:
    """One (sample, source, optimiser, width) run in this process; returns the result dict."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jaxed

    jaxed.configure_cpu()  # CPU thread settings (docs/SPEED.md), before the backend starts
    import dataclasses

    import numpy as np

    from jaxed.physics.bloch import BlochSettings
    from jaxed.physics.crystal import load_structure
    from jaxed.model.experiment import ExperimentSettings, prepare_experiment
    from jaxed.refine.metrics import asu_rmsd
    from jaxed.data.pets import read_pets
    from jaxed.refine.optimize import RefineConfig, Refinement, run_refinement
    from jaxed.model.synth import random_start, synthesize, thickness_profile
    from jaxed.model.thickness import make_thickness_model

    structure, data_file = SAMPLES[args.sample]
    crystal, truth = load_structure(str(SHARED / structure))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = read_pets(str(SHARED / data_file), drop_bad_sigma=True)
    n = data.n_frames if hasattr(data, "n_frames") else len(data.alpha)
    chosen = np.linspace(0, n - 1, args.frames).round().astype(int)
    data = data.subset_frames(list(chosen))
    settings = ExperimentSettings(g_max=args.g_max, sg_max=0.01, g_max_refine=args.g_max, r_sg_max=0.9,
                                  n_samples=args.n_samples, beam_selection=args.beams, max_beams=args.max_beams)
    exp = prepare_experiment(data, crystal, settings)
    bloch = BlochSettings(exp.energy_kev)
    t_true = None
    if args.source == "synthetic":
        t_true = thickness_profile("random", np.asarray(exp.theta), 700.0, seed=1)
        data = synthesize(crystal, truth, data, t_true, bloch, dataclasses.replace(settings, r_sg_max=None),
                          i_max=1e6, seed=0)
        exp = prepare_experiment(data, crystal, settings)
    nn = args.width > 0
    lsq_opt = args.optimizer in ("gn", "lm", "hybrid")
    config = RefineConfig(thickness_model="nn" if nn else "tilt", thickness_init=600.0, optimizer=args.optimizer,
                          epochs=args.iterations if lsq_opt else args.epochs, lr=3e-3,
                          lr_groups=(("thickness", 2e-2),), lr_schedule="cosine" if args.optimizer == "adam" else "constant",
                          checkpoint_every=0, hybrid_adam_steps=10, lsq_jacobian=args.jacobian,
                          lbfgs_metric=args.lbfgs_metric)
    print(f"  prepared {int(np.sum(exp.refl_mask))} reflections, {exp.matrix_size} beams", flush=True)
    thickness = make_thickness_model("nn", t_init=600.0, t_min=50.0, t_max=3000.0,
                                     hidden=(args.width, args.width)) if nn else None
    problem = Refinement(crystal, truth, exp, bloch, config, thickness=thickness)  # thickness seeded by config.seed
    problem.params0["structure"] = random_start(problem.structure, problem.params0["structure"], args.delta, seed=1)
    n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(problem.params0)))
    start = {"wR_all": float(problem.loss(problem.params0)), "rmsd": asu_rmsd(crystal, problem.atoms(problem.params0), truth)}
    t0 = time.perf_counter()
    params, history = run_refinement(problem, progress=False)
    seconds = time.perf_counter() - t0
    final = float(problem.loss(params))
    result = {
        "sample": args.sample, "source": args.source, "optimizer": args.optimizer, "width": args.width,
        "jacobian": args.jacobian, "frames": int(exp.n_frames), "reflections": int(np.sum(exp.refl_mask)),
        "beams": int(exp.matrix_size), "beam_selection": args.beams, "n_samples": args.n_samples, "g_max": args.g_max,
        "n_params": n_params, "lbfgs_metric": args.lbfgs_metric if args.optimizer == "lbfgs" else None,
        "start_wR_all": start["wR_all"], "start_rmsd_A": start["rmsd"], "wR_all": final,
        "rmsd_A": asu_rmsd(crystal, problem.atoms(params), truth), "seconds": seconds, "steps": len(history),
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "history": [[h["seconds"], h["loss"], h.get("evaluations"), h.get("jacobians")] for h in history],
        "evaluations": history[-1].get("evaluations") if history else 0,
        "jacobians": history[-1].get("jacobians") if history else 0,
    }
    if t_true is not None:
        t = np.asarray(problem.frame_thickness(params))
        result["thickness_rms_rel"] = float(np.sqrt(np.mean(((t - t_true) / t_true) ** 2)))
    return result


def tag_of(a) -> str:
    return f"{a.sample}_{a.source}_{a.optimizer}_w{a.width}_{a.jacobian}"


def launch(base: list[str], sample, source, optimizer, width, jacobian, timeout) -> None:
    cmd = [sys.executable, __file__, "--case", "--sample", sample, "--source", source, "--optimizer", optimizer,
           "--width", str(width), "--jacobian", jacobian, *base]
    print(" ".join(cmd[2:]), flush=True)
    try:
        subprocess.run(cmd, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout} s", flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{sample}_{source}_{optimizer}_w{width}_{jacobian}.json").write_text(json.dumps(
            {"sample": sample, "source": source, "optimizer": optimizer, "width": width, "jacobian": jacobian,
             "timed_out": timeout}))


def _evals(r: dict) -> str:
    if r.get("evaluations") is None:
        return ""
    return f"{r['evaluations']} / {r['jacobians']}" if r.get("jacobians") else f"{r['evaluations']}"


def summary() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    lines = ["| sample | data | optimiser | NN width | params | refl | start wR / RMSD Å | final wR_all | RMSD Å | "
             "time s | steps | evals / Jacobians | peak MB |", "|" + "---|" * 13]
    for r in sorted(rows, key=lambda r: (r["sample"], r["source"], r["width"], OPTIMIZERS.index(r["optimizer"]))):
        if "timed_out" in r:
            lines.append(f"| {r['sample']} | {r['source']} | {r['optimizer']} | {r['width']} | | | | timed out "
                         f"({r['timed_out']} s) | | | | | |")
            continue
        lines.append(f"| {r['sample']} | {r['source']} | {r['optimizer']}{'' if r['jacobian'] == 'auto' else '/' + r['jacobian']} "
                     f"| {r['width'] or '–'} | {r['n_params']} | {r['reflections']} | {r['start_wR_all']:.3f} / "
                     f"{r['start_rmsd_A']:.3f} | {r['wR_all']:.4f} | {r['rmsd_A']:.4f} | {r['seconds']:.0f} | "
                     f"{r['steps']} | {_evals(r)} | {r['peak_rss_MB']:.0f} |")
    groups = {}
    for r in rows:
        if "history" in r:
            groups.setdefault((r["sample"], r["source"], r["width"]), []).append(r)
    for (sample, source, width), rs in groups.items():
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
        for r in sorted(rs, key=lambda r: OPTIMIZERS.index(r["optimizer"])):
            h = r["history"]
            ax.plot([x[0] for x in h], [x[1] for x in h], label=r["optimizer"])
            if h and len(h[0]) > 2 and h[-1][2] is not None:  # loss vs evaluations (+ Jacobians for GN/LM)
                ax2.plot([x[2] + (x[3] or 0) for x in h], [x[1] for x in h], label=r["optimizer"])
        ax.set_yscale("log")
        ax.set_xlabel("wall time [s]")
        ax2.set_xlabel("evaluations (loss+gradient, LM trials, Jacobians)")
        ax2.set_xscale("log")
        ax.set_ylabel("wR_all")
        fig.suptitle(f"{sample} ({source}), NN width {width or '–'}")
        ax.legend()
        ax.grid(alpha=0.3)
        ax2.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(RESULTS / f"loss_vs_time_{sample}_{source}_w{width}.png", dpi=110)
        plt.close(fig)
    print("\n".join(lines))
    (RESULTS / "table.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", action="store_true", help="(internal) run one case in this process")
    p.add_argument("--quick", action="store_true", help="small sizes: quartz + CsPbBr3 + paracetamol synthetic, "
                   "quartz measured, 4 frames, g_max 1.0, 3 rocking samples, widths 8 and 64")
    p.add_argument("--results", default="optimizers",
                   help="folder under experiments/results for this study's JSON files, table and plots")
    p.add_argument("--samples", nargs="+", default=list(SAMPLES), choices=list(SAMPLES))
    p.add_argument("--sources", nargs="+", default=["synthetic", "measured"], choices=["synthetic", "measured"])
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    p.add_argument("--widths", nargs="+", type=int, default=[64, 256, 1024, 4096],
                   help="ThicknessNN hidden units per layer (two layers) for the width sweep")
    p.add_argument("--sample", default="quartz", choices=list(SAMPLES))
    p.add_argument("--source", default="synthetic", choices=["synthetic", "measured"])
    p.add_argument("--optimizer", default="lm", choices=list(OPTIMIZERS))
    p.add_argument("--width", type=int, default=0, help="0: tilt-interpolating thickness model (no network)")
    p.add_argument("--jacobian", default="auto", choices=["auto", "fwd", "rev", "cg"])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--g-max", type=float, default=1.4)
    p.add_argument("--n-samples", type=int, default=7)
    p.add_argument("--width-samples", nargs="*", default=["quartz"], choices=list(SAMPLES),
                   help="samples on which the ThicknessNN width sweep runs")
    p.add_argument("--skip-done", action="store_true", help="skip runs whose result file exists")
    p.add_argument("--max-beams", type=int, default=None, help="cap on the beams of each Bloch matrix")
    p.add_argument("--size", nargs="*", default=[], metavar="SAMPLE:FRAMES:GMAX",
                   help="per-sample problem size, e.g. cspbbr3:16:0.8 (others use --frames/--g-max)")
    p.add_argument("--beams", default="frame", choices=["frame", "sample"], help="Bloch matrix per frame or per sample")
    p.add_argument("--epochs", type=int, default=300, help="Adam / L-BFGS steps")
    p.add_argument("--lbfgs-metric", default="rates", choices=["rates", "identity"],
                   help="L-BFGS in the groups' rate units (jaxed's default) or optax's raw parameters (the runs "
                   "recorded before 2026-12-03)")
    p.add_argument("--iterations", type=int, default=30, help="GN / LM iterations, hybrid cycles")
    p.add_argument("--delta", type=float, default=0.1, help="start displacement [Å]")
    p.add_argument("--timeout", type=int, default=1800, help="per run [s]")
    p.add_argument("--summary", action="store_true")
    args = p.parse_args(argv)
    global RESULTS
    RESULTS = ROOT / "experiments" / "results" / args.results
    if args.summary:
        summary()
        return 0
    if args.case:
        result = run_case(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{tag_of(args)}.json").write_text(json.dumps(result))
        print(f"  wR_all {result['start_wR_all']:.4f} → {result['wR_all']:.4f}, RMSD {result['start_rmsd_A']:.4f} → "
              f"{result['rmsd_A']:.4f} Å, {result['seconds']:.1f} s, {result['steps']} steps, "
              f"{result['peak_rss_MB']:.0f} MB", flush=True)
        return 0
    sizes = {s_.split(":")[0]: (int(s_.split(":")[1]), float(s_.split(":")[2])) for s_ in args.size}
    if args.quick:  # (frames, g_max, rocking samples) per sample: tens to hundreds of reflections each
        sizes = {"quartz": (6, 1.2), "cspbbr3": (4, 1.0), "paracetamol": (4, 0.8)}
        args.n_samples, args.epochs, args.iterations = 3, 150, 15
        args.widths = [8, 64]
        args.timeout = 300

    def base(sample):
        frames, g_max = sizes.get(sample, (args.frames, args.g_max))
        return ["--frames", str(frames), "--g-max", str(g_max), "--n-samples", str(args.n_samples),
                "--epochs", str(args.epochs), "--iterations", str(args.iterations), "--delta", str(args.delta),
                "--beams", args.beams, "--results", args.results, "--lbfgs-metric", args.lbfgs_metric] + \
            ([] if args.max_beams is None else ["--max-beams", str(args.max_beams)])

    plan = [(s_, "synthetic", o, 0) for s_ in args.samples[:1] for o in args.optimizers if "synthetic" in args.sources]
    plan += [(s_, "synthetic", o, w) for s_ in args.width_samples for w in args.widths
             for o in ("adam", "lbfgs", "hybrid", "lm") if s_ in args.samples and o in args.optimizers]
    plan += [(s_, "synthetic", o, 0) for s_ in args.samples[1:] for o in args.optimizers if "synthetic" in args.sources]
    plan += [(s_, "measured", o, 0) for s_ in args.samples for o in args.optimizers if "measured" in args.sources
             and not (args.quick and s_ != "quartz")]
    for sample, source, opt, width in plan:
        if args.skip_done and (RESULTS / f"{sample}_{source}_{opt}_w{width}_auto.json").exists():
            continue
        launch(base(sample), sample, source, opt, width, "auto", args.timeout)
    summary()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
