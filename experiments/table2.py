"""Reference-paper Tables 2 and 3: refinement of measured 3D-ED data (PETS2 exports) with ThicknessNN.

One run = one (sample, structure, settings). The pipeline is the one a crystallographer would run:

1. read the structure and the ``.cif_pets`` data, select reflections (g_max_refine, R_Sg);
2. scan one thickness for all frames with the structure fixed (a coarse grid, the best wR_all wins);
3. refine every frame's orientation with the structure fixed (the reference paper's hexagonal two-angle scan);
4. refine structure + ThicknessNN (+ per-frame scales in closed form, + optional gradient tilts) with Adam.

Results go to experiments/results/table2/<tag>.json (with the command line) and a thickness-vs-tilt plot;
``--summary`` prints Table 2 (and Table 3 when both quartz hands were run) beside Jana, the reference paper and
diffBloch (docs/TARGETS.md). ``--folded TAG`` rebuilds a recorded run from its JSON command line, final orientations
and ``_params.npz`` and evaluates its model with the joint tilts on the beams chosen before them (as refined) and
folded into the orientations with the beams reselected there.

Examples:
    python experiments/table2.py --sample quartz                       # Table 2, quartz row
    python experiments/table2.py --sample quartz --hand P3121          # Table 3, the other hand
    python experiments/table2.py --sample cspbbr3 --g-max 1.2 --g-max-refine 1.0 --samples 15
    python experiments/table2.py --summary
    python experiments/table2.py --folded TAG   # a recorded run rebuilt; its joint tilts as refined vs folded in
    python experiments/table2.py --check-record TAG  # a recorded run rebuilt; its R factors vs the record (1e-5)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import jax

import jaxed

# float64 unless --float32 (complex64 Bloch waves: ≈ 2× faster on CPU; R factors move by < 0.0001 on quartz, README)
jax.config.update("jax_enable_x64", "--float32" not in sys.argv)
jaxed.configure_cpu()  # CPU thread settings (docs/SPEED.md), before the backend starts

import numpy as np  # noqa: E402

from jaxed.refine import metrics, objective, orientation  # noqa: E402
from jaxed.model.experiment import (GEOMETRIES, ExperimentSettings, prepare_experiment,  # noqa: E402
                             reselect_sample_beams, take_frames, tilt_matrices)
from jaxed.errors import JaxedInputError  # noqa: E402
from jaxed.refine.optimize import RefineConfig, Refinement, load_params, run_refinement, save_params  # noqa: E402
from jaxed.app.workflow import load_problem, parse_frames, search_orientations  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "experiments" / "results" / "table2"

# docs/TARGETS.md, Table 2: (R_obs, wR_all) of Jana and of the reference paper's hybrid model; diffBloch (elastic).
PUBLISHED = {
    "quartz": {"jana": (0.057, 0.066), "paper": (0.042, 0.043), "diffbloch": (0.0412, 0.0384),
               "paper_n": (957, 1734), "paper_t_nm": 85.0},
    "cspbbr3": {"jana": (0.055, 0.068), "paper": (0.064, 0.067), "diffbloch": (0.0640, 0.0673),
                "paper_n": (2714, 17095), "paper_t_nm": 44.0},
    "paracetamol": {"jana": (0.092, 0.1034), "paper": (0.1015, 0.084), "diffbloch": None,
                    "paper_n": (2697, 6621), "paper_t_nm": 47.5},
}
TABLE3 = {"P3221": (0.043, 0.042), "P3121": (0.071, 0.062)}  # paper: (wR_all, R_obs)

SAMPLES = {
    "quartz": dict(structure={"P3221": "structures/quartz_P3221.cif",
                              "P3121": "structures/quartz_P3121_enantiomorph.cif"},
                   data="pets/quartz_suresh2024.cif_pets", g_max=2.0, g_max_refine=1.6, sg_max=0.01, r_sg_max=0.9,
                   samples=21, t_grid=(300, 1600, 100)),
    "cspbbr3": dict(structure={"Pbnm": "structures/cspbbr3_Pbnm.cif"}, data="pets/cspbbr3_suresh2024.cif_pets",
                    g_max=2.0, g_max_refine=2.0, sg_max=0.01, r_sg_max=0.66, samples=30, t_grid=(200, 1200, 100)),
    # a precession (PEDT) series whose PETS2 export says "continuous rotation": 1.4° cone, ≈ 1.5° tilt steps;
    # R_Sg 0.5 gives the paper's counts (6976 / 2750 vs 6621 / 2697); 96 cone samples converge at 450–600 Å
    # (192: ≤ 0.03 points), results/table2.md
    "paracetamol": dict(structure={"Pbca": "structures/paracetamol_formII_Pbca.cif"},
                        data="pets/paracetamol_formII.cif_pets", g_max=1.4, g_max_refine=1.2, sg_max=0.01,
                        r_sg_max=0.5, samples=96, t_grid=(200, 800, 100), geometry="precession"),
}


def _scan_thickness(problem: Refinement, grid) -> tuple[float, list]:
    """wR_all of one thickness for all frames on a grid (structure and orientations fixed); a best value on the edge
    of the grid is not a minimum, so the scan then walks outwards (within 50–3000 Å) until it is one."""
    intens = problem.intensities

    def row(t):
        p = dict(problem.params0, thickness={"log_t0": jax.numpy.log(jax.numpy.asarray(float(t)))})
        s = objective.summary(intens(p), problem.obs, kind=problem.config.residual)
        return float(t), s["wR_all"], s["R_obs"]

    rows = [row(t) for t in grid]
    best = min(rows, key=lambda r: r[1])
    step = float(grid[1] - grid[0]) if len(grid) > 1 else 100.0
    while True:
        t_min, t_max = min(r[0] for r in rows), max(r[0] for r in rows)
        if best[0] == t_min and t_min - step >= 50.0:
            rows.append(row(t_min - step))
        elif best[0] == t_max and t_max + step <= 3000.0:
            rows.append(row(t_max + step))
        else:
            break
        if rows[-1][1] >= best[1]:
            break
        best = rows[-1]
    return best[0], rows


def _structure_shift(crystal, start, refined) -> dict:
    """How far the refinement moved the ASU sites from the starting structure [Å] (nearest symmetry image; polar
    origin removed): RMS over all and over the non-H sites, and the largest single shift (a sanity check on a
    refinement against measured data, where no true structure is known)."""
    non_h = np.array([e not in ("H", "D") for e in crystal.site_elements])
    per_site = [metrics.asu_rmsd(crystal, refined, start, sites=[i]) for i in range(len(non_h))]
    worst = int(np.argmax(per_site))
    return {"rms_A": metrics.asu_rmsd(crystal, refined, start),
            "rms_non_H_A": metrics.asu_rmsd(crystal, refined, start, sites=non_h) if non_h.any() else 0.0,
            "max_A": float(per_site[worst]), "max_site": crystal.labels[worst]}


def _plot(path: Path, theta_deg, thickness, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(theta_deg, np.asarray(thickness) / 10, "o-", ms=3)
    ax.set_xlabel("tilt α (deg)")
    ax.set_ylabel("thickness (nm)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _setup(args):
    """The run's structure, data and experiment before any orientation search (reflections selected at the file's
    orientations, or at the reference paper's authors' with ``--start reference``)."""
    spec = SAMPLES[args.sample]
    hand = args.hand or next(iter(spec["structure"]))
    settings = ExperimentSettings(g_max=args.g_max or spec["g_max"], sg_max=args.sg_max or spec["sg_max"],
                                  g_max_refine=args.g_max_refine or spec["g_max_refine"], r_sg_max=spec["r_sg_max"],
                                  g_min_refine=args.g_min_refine,
                                  n_samples=args.samples or spec["samples"], max_beams=args.max_beams,
                                  beam_selection=args.beams, d_sg_min=args.d_sg,
                                  precession=GEOMETRIES[args.geometry or spec.get("geometry", "file")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crystal, atoms, data, exp, bloch = load_problem(SHARED / spec["structure"][hand], SHARED / spec["data"],
                                                     frames=args.frames, exp_settings=settings, log=lambda s: None,
                                                     absorption=args.absorption,
                                                     thermal_absorption=args.thermal_absorption)
    if args.start == "reference":  # the reference paper's authors' optimised orientations (quartz only)
        from quartz_parity import reference_orientations

        exp = prepare_experiment(data, crystal, settings, orientations=reference_orientations(data.frame_id)[0])
    return spec, hand, settings, crystal, atoms, data, exp, bloch


def _config(args, t_best: float) -> RefineConfig:
    """The refinement's settings from the command line (``t_best``: the single thickness ThicknessNN starts at)."""
    return RefineConfig(thickness_model=args.model, thickness_init=t_best, thickness_range=(50.0, 3000.0),
                        epochs=args.epochs, lr=args.lr, optimizer=args.optimizer,
                        lr_groups=(("thickness", args.lr_thickness),)
                        + ((("orientation", args.lr_orientation),) if args.joint_tilts and args.lr_orientation
                           else ()),
                        lr_schedule="cosine", refine_orientation=args.joint_tilts, aniso=args.aniso,
                        orientation_angles=args.orientation_angles, per_frame_mean=args.per_frame_mean,
                        frame_loss=args.frame_loss, checkpoint_every=25, seed=args.seed,
                        frames_per_batch=args.frames_per_batch, lr_warmup=args.lr_warmup,
                        lbfgs_metric=args.lbfgs_metric)


def rebuild(tag: str):
    """A recorded run's refined model as it ended: (Refinement, params, the run's JSON record).

    The data are read again with the run's own command line (from its JSON), the frames set to the run's final
    orientations (``<tag>_orientations.npy``) with the per-sample beams selected there — as the run's last cycle had
    them — and the parameters loaded from ``<tag>_params.npz``. Evaluated in this process's precision (float64
    unless ``--float32`` is on this command line)."""
    path = RESULTS / f"{tag}.json"
    if not path.exists():
        raise SystemExit(f"{path}: no such run (expected a table2.py run's JSON)")
    record = json.loads(path.read_text())
    saved = RESULTS / f"{tag}_params.npz"
    if not saved.exists():
        raise SystemExit(f"{saved}: missing (runs before the parameters were kept with the results left only a "
                         f"{tag}.ckpt folder, not in git: run the JSON's command again)")
    args = parser().parse_args(shlex.split(record["command"])[2:])
    _, _, _, crystal, atoms, _, exp, bloch = _setup(args)
    orients = np.load(RESULTS / f"{tag}_orientations.npy")
    if orients.shape[0] != exp.n_frames:
        raise SystemExit(f"{tag}_orientations.npy: {orients.shape[0]} frames, the run's command gives {exp.n_frames}")
    exp = reselect_sample_beams(dataclasses.replace(exp, base_orientation=orients), crystal)
    problem = Refinement(crystal, atoms, exp, bloch, _config(args, record["single_thickness_A"]))
    return problem, load_params(saved, problem.params0), record


def check_record(tag: str, tol: float = 1e-5) -> None:
    """A recorded run rebuilt (:func:`rebuild`) against its JSON's final R factors: prints each and the largest
    absolute difference; exits 1 when it exceeds ``tol``."""
    problem, params, record = rebuild(tag)
    now = problem.summary(params)
    worst = 0.0
    for k, want in record["final"].items():
        got = float(now[k])
        worst = max(worst, abs(got - want))
        print(f"  {k:20s} recorded {want:.8f}  rebuilt {got:.8f}  Δ {got - want:+.1e}")
    print(f"{tag}: largest |Δ| {worst:.1e} ({'PASS' if worst <= tol else 'FAIL'} at {tol:g})")
    if worst > tol:
        raise SystemExit(1)


def fold_tilts(problem: Refinement, params: dict, frames=None):
    """The model with its joint tilts (if it has them) folded into the frames' orientations, on ``frames`` (indices;
    None: all), and the per-sample beams selected again there: (Refinement without tilts, its parameters). The
    refined structure is the new problem's start."""
    exp = problem.experiment
    if "orientation" in params:
        exp = orientation.with_corrections(exp, tilt_matrices(params["orientation"]))
    if frames is not None:
        exp = take_frames(exp, frames)
    exp = reselect_sample_beams(exp, problem.crystal)
    folded = Refinement(problem.crystal, problem.atoms(params), exp, problem.bloch,
                        dataclasses.replace(problem.config, refine_orientation=False,
                                            lr_groups=tuple(g for g in problem.config.lr_groups
                                                            if g[0] != "orientation")))
    q = {k: v for k, v in params.items() if k != "orientation"}
    return folded, dict(q, structure=folded.params0["structure"])


def folded_report(problem: Refinement, params: dict, folded: Refinement, q: dict, log=print) -> dict:
    """Are a run's joint tilts fitted to the beams chosen before them? Its model with the tilts applied on those
    beams (as refined) against the tilts folded into the orientations with the beams reselected there (``fold_tilts``):
    frame means, the frames that change most, and how the change follows the tilt."""
    i_calc = [pr.intensities(x) for pr, x in ((problem, params), (folded, q))]  # one evaluation each
    v, w = (objective.frame_values(i, pr.obs) for i, pr in zip(i_calc, (problem, folded)))
    tilt = np.rad2deg(np.hypot(*np.asarray(params["orientation"])[:, :2].T))  # the two beam-perpendicular tilts
    change = w["wR_all"] - v["wR_all"]
    rows = {}
    for name, pr, i in (("as refined", problem, i_calc[0]), ("folded", folded, i_calc[1])):
        r = objective.summary(i, pr.obs, kind=pr.config.residual, free=pr.obs_free)
        rows[name] = {k: float(r[k]) for k in ("R_obs_frame_mean", "wR_all_frame_mean", "R_obs", "wR_all")}
        log(f"{name}: frame means R_obs {r['R_obs_frame_mean']:.4f} wR_all {r['wR_all_frame_mean']:.4f}; pooled "
            f"{r['R_obs']:.4f} / {r['wR_all']:.4f}; N_obs {r['N_obs']} N_all {r['N_all']}")
    for k in np.argsort(-np.abs(change))[:8]:
        log(f"  frame {k + 1:3d}: wR_all {v['wR_all'][k]:.4f} → {w['wR_all'][k]:.4f}, R_obs "
            f"{v['R_obs'][k]:.4f} → {w['R_obs'][k]:.4f}, tilt {tilt[k]:.3f}°")
    corr = float(np.corrcoef(np.abs(change), tilt)[0, 1]) if np.ptp(tilt) > 0 else float("nan")
    log(f"  correlation of |ΔwR_all| with the tilt {corr:.2f}; frames worse / better folded "
        f"{int(np.sum(change > 0))} / {int(np.sum(change < 0))}; tilts median {np.median(tilt):.3f}°, "
        f"largest {tilt.max():.3f}°")
    return dict(rows, correlation=corr, worse=int(np.sum(change > 0)), better=int(np.sum(change < 0)))


def run(args) -> dict:
    spec, hand, settings, crystal, atoms, data, exp, bloch = _setup(args)
    tag = args.tag or f"{args.sample}_{hand}"
    log = lambda s: print(f"[{tag}] {s}", flush=True)  # noqa: E731
    log(f"{exp.n_frames} frames, {int(np.sum(exp.refl_mask))} reflections, {exp.matrix_size} beams (padded), "
        f"{settings.n_samples} samples, absorption κ {args.absorption}"
        f"{' + thermal (TDS)' if args.thermal_absorption else ''}")
    timing = {}
    t0 = time.perf_counter()
    single = RefineConfig(thickness_model="single", thickness_init=600.0, aniso=args.aniso)
    problem = Refinement(crystal, atoms, exp, bloch, single)
    lo, hi, step = spec["t_grid"]
    scan_grid = np.arange(lo, hi + 1, step)
    t_best, scan = _scan_thickness(problem, scan_grid) if args.thickness is None else (args.thickness, [])
    before = problem.summary(dict(problem.params0, thickness={"log_t0": jax.numpy.log(t_best)}))
    timing["thickness_scan_s"] = time.perf_counter() - t0
    log(f"single thickness {t_best:.0f} Å: R_obs {before['R_obs']:.4f} wR_all {before['wR_all']:.4f} "
        f"N_obs {before['N_obs']} N_all {before['N_all']} ({timing['thickness_scan_s']:.0f} s)")
    subset_of = None  # (frames of the run that saved --orientations-from, this run's among them)
    if args.orientations_from:  # the scanned orientations of an earlier run with the same frames
        # reflections stay those selected at the file's orientations (as in the run that saved them)
        saved = np.load(args.orientations_from)
        if saved.shape[0] > exp.n_frames and args.frames:  # a run on all frames: this run's subset of them
            chosen = parse_frames(args.frames, saved.shape[0])
            if chosen is not None and len(chosen) == exp.n_frames:
                saved, subset_of = saved[chosen], (saved.shape[0], chosen)
        if saved.shape[0] != exp.n_frames:
            raise SystemExit(f"{args.orientations_from}: orientations of {saved.shape[0]} frames, this run has "
                             f"{exp.n_frames} (--frames {args.frames or 'all'})")
        exp = reselect_sample_beams(dataclasses.replace(exp, base_orientation=saved), crystal)
        log(f"orientations from {args.orientations_from}")
    elif args.orientation != "none":
        t1 = time.perf_counter()
        t_orient = args.orientation_thickness or t_best
        exp = search_orientations(crystal, atoms, exp, bloch, dataclasses.replace(single, thickness_init=t_orient),
                                  args.orientation.replace(",", "+"), log=log, theta0_deg=args.theta0,
                                  theta_min_deg=args.theta_min, max_rounds=args.max_rounds,
                                  initial_step_deg=args.nm_step)
        timing["orientation_s"] = time.perf_counter() - t1
        if args.reselect:  # R_Sg / D_Sg (and beams) at the refined orientations, not the file's
            exp = prepare_experiment(data, crystal, settings, orientations=exp.base_orientation)
            log(f"reflections reselected at the refined orientations: {int(np.sum(exp.refl_mask))}")
    if args.orientations_from or args.orientation != "none":  # the thickness again, at the new orientations
        problem = Refinement(crystal, atoms, exp, bloch, single)
        if args.thickness is None:
            t_best, scan2 = _scan_thickness(problem, scan_grid)
            scan += scan2
    oriented = problem.summary(dict(problem.params0, thickness={"log_t0": jax.numpy.log(t_best)}))
    log(f"after orientation ({args.orientation}), t {t_best:.0f} Å: R_obs {oriented['R_obs']:.4f} "
        f"wR_all {oriented['wR_all']:.4f}")
    config = _config(args, t_best)
    problem = Refinement(crystal, atoms, exp, bloch, config)
    if args.init_from:  # continue from the structure and thickness model an earlier run refined (same frames)
        no_tilts = {k: v for k, v in problem.params0.items() if k != "orientation"}
        try:  # an earlier run without joint tilts
            start = load_params(args.init_from, no_tilts)
        except JaxedInputError:  # one with them: keep its tilts when this run refines tilts too, unless
            n_run, chosen = subset_of or (exp.n_frames, slice(None))  # --init-without-tilts (folded into
            try:  # --orientations-from); a run on all frames gives this run's frames' tilts
                start = load_params(args.init_from, dict(
                    no_tilts, orientation=jax.numpy.zeros((n_run, args.orientation_angles))))
            except JaxedInputError as err:
                raise SystemExit(f"--init-from {args.init_from}: {err}") from None
            start["orientation"] = start["orientation"][chosen]
            if args.init_without_tilts or "orientation" not in problem.params0:
                start.pop("orientation")
        problem.params0 = dict(problem.params0, **start)
        log(f"structure and thickness model from {args.init_from}")
    t2 = time.perf_counter()
    def progress(t_start):  # the loss every --log-every epochs, with the seconds since t_start
        return lambda e, p, v: log(f"epoch {e:4d}  loss {v:.5f}  {time.perf_counter() - t_start:7.1f} s") \
            if e % args.log_every == 0 else None

    params, history = run_refinement(problem, RESULTS / f"{tag}.ckpt", progress=False, callback=progress(t2))
    timing["refine_s"] = time.perf_counter() - t2
    for cycle in range(1, args.cycles):
        # fold the joint tilts into the frames, re-run the fine hexagonal scan with the *refined* structure and
        # thickness model, and refine again from where the last cycle ended (a crystallographer's alternation)
        mid = problem.summary(params)
        log(f"cycle {cycle}: R_obs {mid['R_obs']:.4f} wR_all {mid['wR_all']:.4f}, frame means "
            f"{mid['R_obs_frame_mean']:.4f} / {mid['wR_all_frame_mean']:.4f}")
        if "orientation" in params:
            exp = reselect_sample_beams(orientation.with_corrections(exp, tilt_matrices(params["orientation"])),
                                        crystal)
            params = dict(params, orientation=jax.numpy.zeros_like(params["orientation"]))
        fixed = Refinement(crystal, atoms, exp, bloch, dataclasses.replace(
            config, refine_orientation=False, lr_groups=tuple(g for g in config.lr_groups if g[0] != "orientation")))
        fixed_params = {k: v for k, v in params.items() if k != "orientation"}
        if args.cycle_search == "hexagonal":
            corrected, _ = orientation.hexagonal_scan(fixed.model, fixed_params, theta0_deg=0.05,
                                                      theta_min_deg=args.theta_min, max_rounds=args.max_rounds, log=log)
        elif args.cycle_search == "about-beam":  # the rotation about the beam alone, all frames batched
            corrected, info = orientation.about_beam_scan(fixed.model, fixed_params, max_about_beam_deg=args.max_about_beam
                                                          or 4.0, log=log)
            log(f"cycle {cycle}: about-beam scan: mean frame wR {info['frame_wr_start'].mean():.4f} → "
                f"{info['frame_wr_end'].mean():.4f}, |ω| median {np.median(np.abs(info['omega_deg'])):.2f}°")
        else:  # Nelder–Mead (three angles) on the frames the refined model fits worst: other minima, not the nearest
            v = objective.frame_values(fixed.intensities(fixed_params), fixed.obs)
            worst = np.sort(np.argsort(-v["R_obs"])[: args.cycle_frames or exp.n_frames])
            corrected, info = orientation.nelder_mead(fixed.model, fixed_params, initial_step_deg=args.nm_step, log=log,
                                                      max_about_beam_deg=args.max_about_beam, frames=worst)
            log(f"cycle {cycle}: Nelder–Mead ({args.nm_step}°) on {len(worst)} frames: mean frame wR "
                f"{info['frame_wr_start'].mean():.4f} → {info['frame_wr_end'].mean():.4f}")
        exp = reselect_sample_beams(corrected, crystal)
        problem = Refinement(crystal, atoms, exp, bloch, config)
        problem.params0 = params  # continue from the refined parameters
        t3 = time.perf_counter()
        params, more = run_refinement(problem, RESULTS / f"{tag}.cycle{cycle}.ckpt", progress=False,
                                      callback=progress(t3))
        history += more
        timing[f"cycle{cycle}_s"] = time.perf_counter() - t3
    final = problem.summary(params)
    shift = _structure_shift(crystal, atoms, problem.atoms(params))
    log(f"structure moved from the start: RMS {shift['rms_A']:.3f} Å (non-H {shift['rms_non_H_A']:.3f}, "
        f"largest {shift['max_A']:.3f} Å at {shift['max_site']})")
    thickness = np.asarray(problem.frame_thickness(params))
    theta = np.rad2deg(np.asarray(exp.theta))
    keys = ("R_obs", "wR_all", "wR_all_jana", "R_obs_frame_mean", "wR_all_frame_mean", "N_obs", "N_all")
    result = {"tag": tag, "sample": args.sample, "hand": hand, "command": "python " + shlex.join(sys.argv),
              "settings": dataclasses.asdict(settings), "bloch": dataclasses.asdict(bloch),
              "precision": "float64" if jax.config.jax_enable_x64 else "float32", "frames": exp.n_frames,
              "beams_padded": int(exp.matrix_size),
              "model": args.model, "epochs": len(history), "absorption": args.absorption,
              "thermal_absorption": args.thermal_absorption,
              "loss": f"{args.frame_loss} of per-frame wR_all" if args.per_frame_mean else "pooled wR_all",
              "orientation": args.orientation, "start": args.start, "joint_tilts": args.joint_tilts,
              "reselect": args.reselect,
              "orientation_angles": args.orientation_angles if args.joint_tilts else None,
              "single_thickness_A": t_best, "thickness_scan": scan,
              "before": {k: before[k] for k in keys}, "after_orientation": {k: oriented[k] for k in keys},
              "final": {k: final[k] for k in keys}, "structure_shift": shift,
              "mean_thickness_A": float(thickness.mean()),
              "thickness_A": thickness.tolist(), "theta_deg": theta.tolist(), "timing_s": timing,
              # per step: the loss; evaluations and seconds cumulative within each cycle
              "history": [h["loss"] for h in history],
              "history_evaluations": [h.get("evaluations") for h in history],
              "history_seconds": [h.get("seconds") for h in history]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps(result, indent=1))
    np.save(RESULTS / f"{tag}_orientations.npy", np.asarray(exp.base_orientation))  # after the scan (re-evaluation)
    save_params(RESULTS / f"{tag}_params.npz", params)  # kept with the results (the .ckpt folders are not): --init-from
    _plot(RESULTS / f"{tag}_thickness.png", theta, thickness,
          f"{tag}: R_obs {final['R_obs']:.4f}, wR_all {final['wR_all']:.4f}")
    log(json.dumps({k: result[k] for k in ("final", "mean_thickness_A", "timing_s")}))
    return result


def summary() -> None:
    rows = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    print("| sample (run) | frames | samples | beams | g_max/refine | D_Sg | R_obs | wR_all | frame means R_obs/wR | "
          "N_obs, N_all | mean t (nm) | Jana R_obs/wR | paper R_obs/wR (N) | diffBloch R_obs/wR |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for tag, r in rows.items():
        pub = PUBLISHED[r["sample"]]
        f, s = r["final"], r["settings"]
        db = "–" if pub["diffbloch"] is None else f"{pub['diffbloch'][0]:.2%} / {pub['diffbloch'][1]:.2%}"
        beams = s.get("beam_selection", "frame") + (f" ≤{s['max_beams']}" if s.get("max_beams") else "")
        means = (f"{f['R_obs_frame_mean']:.2%} / {f['wR_all_frame_mean']:.2%}" if "R_obs_frame_mean" in f else "–")
        absorbing = [f"κ {r['absorption']}"] if r.get("absorption") else []
        absorbing += ["TDS"] if r.get("thermal_absorption") else []
        label = tag + (f"; absorption {' + '.join(absorbing)}" if absorbing else "")
        label += "; precession" if s.get("precession") else ""
        print(f"| {r['sample']} ({label}) | {r['frames']} | {s['n_samples']} | {beams} | "
              f"{s['g_max']}/{s['g_max_refine']} | {s.get('d_sg_min') or '–'} | "
              f"{f['R_obs']:.2%} | {f['wR_all']:.2%} | {means} | {f['N_obs']}, {f['N_all']} | "
              f"{r['mean_thickness_A'] / 10:.1f} | "
              f"{pub['jana'][0]:.1%} / {pub['jana'][1]:.1%} | {pub['paper'][0]:.1%} / {pub['paper'][1]:.1%} "
              f"({pub['paper_n'][0]}, {pub['paper_n'][1]}) | {db} |")
    for tag, r in rows.items():  # Table 3: every run of P3221 with its twin run (same tag) of P3121
        twin = rows.get(tag.replace("P3221", "P3121"))
        if r["sample"] != "quartz" or r["hand"] != "P3221" or twin is None:
            continue
        print(f"\n| Table 3 ({tag} / {twin['tag']}) | P3₂21 (jaxed) | P3₁21 (jaxed) | P3₂21 (paper) | P3₁21 (paper) |"
              "\n|---|---|---|---|---|")
        for i, k in enumerate(("wR_all", "R_obs")):
            print(f"| {k} | {r['final'][k]:.2%} | {twin['final'][k]:.2%} | "
                  f"{TABLE3['P3221'][i]:.1%} | {TABLE3['P3121'][i]:.1%} |")
            if f"{k}_frame_mean" in r["final"] and f"{k}_frame_mean" in twin["final"]:
                print(f"| {k}, mean over frames | {r['final'][k + '_frame_mean']:.2%} | "
                      f"{twin['final'][k + '_frame_mean']:.2%} | | |")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", choices=sorted(SAMPLES), default="quartz")
    ap.add_argument("--hand", help="quartz: P3221 (published) or P3121 (its enantiomorph, Table 3)")
    ap.add_argument("--frames", help="frame subset, e.g. every:2 or 0-19")
    ap.add_argument("--samples", type=int, help="rocking-curve samples per frame")
    ap.add_argument("--g-max", type=float, help="beams in the Bloch matrix [1/Å]")
    ap.add_argument("--sg-max", type=float, help="beams in the Bloch matrix: |s_g| ≤ S [1/Å] (per sample with "
                    "--beams sample)")
    ap.add_argument("--g-max-refine", type=float, help="reflections used [1/Å]")
    ap.add_argument("--frames-per-batch", type=int, default=0,
                    help="frames per device step of the refinement (0: jaxed.model.batching's memory model)")
    ap.add_argument("--g-min-refine", type=float, default=0.0,
                    help="reflections used: |g| ≥ this [1/Å] (a low-resolution cut; 0: none)")
    ap.add_argument("--geometry", choices=sorted(GEOMETRIES),
                    help="rotation or precession integration (default: the sample's; quartz, CsPbBr3: the file's)")
    ap.add_argument("--float32", action="store_true", help="single precision (complex64 Bloch waves)")
    ap.add_argument("--max-beams", type=int, help="cap on beams per frame (per sample with --beams sample)")
    ap.add_argument("--beams", choices=("frame", "sample"), default="frame",
                    help="one Bloch matrix per frame, or per rocking sample with its own |s_g| ≤ sg_max beams")
    ap.add_argument("--absorption", type=float, default=0.0, help="κ: U' = κU (0: elastic)")
    ap.add_argument("--thermal-absorption", action="store_true",
                    help="Einstein-model TDS absorptive potential from the ADPs (jaxed.physics.absorption; adds to κ)")
    ap.add_argument("--reselect", action="store_true",
                    help="after the orientation search, select reflections (R_Sg, D_Sg) at the refined orientations")
    ap.add_argument("--per-frame-mean", action="store_true",
                    help="minimise the rms over frames of per-frame wR_all (each frame counts equally, as diffBloch)")
    ap.add_argument("--frame-loss", choices=("rms", "mean"), default="rms",
                    help="with --per-frame-mean: rms of per-frame wR_all, or their mean (the published aggregate)")
    ap.add_argument("--d-sg", type=float, default=None, help="reflections used: Δs_g − |s_g| > D [1/Å] (e.g. 0.0015)")
    ap.add_argument("--orientation", default="hexagonal",
                    help="hexagonal | nelder-mead | gradient | none, or several in turn: nelder-mead+hexagonal "
                    "(',' also joins them)")
    ap.add_argument("--theta0", type=float, default=0.2, help="hexagonal scan: first step [deg]")
    ap.add_argument("--nm-step", type=float, default=0.1, help="Nelder–Mead: initial simplex step [deg]")
    ap.add_argument("--orientation-thickness", type=float,
                    help="thickness [Å] of the orientation search (default: the scan's best single thickness)")
    ap.add_argument("--theta-min", type=float, default=0.025, help="hexagonal scan: smallest step [deg]")
    ap.add_argument("--max-rounds", type=int, default=10, help="hexagonal scan: at most this many rounds")
    ap.add_argument("--joint-tilts", action="store_true", help="also refine two tilts per frame by gradient")
    ap.add_argument("--orientation-angles", type=int, choices=(2, 3), default=2,
                    help="with --joint-tilts: 3 adds the rotation about the beam")
    ap.add_argument("--model", choices=("nn", "single"), default="nn")
    ap.add_argument("--aniso", choices=("as-given", "all", "none"), default="as-given")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--optimizer", choices=("adam", "lbfgs"), default="adam",
                    help="lbfgs: a full-batch polish of a converged run (--init-from); the --lr* rates set its "
                    "units (jaxed RefineConfig.lbfgs_metric 'rates'); --lr-warmup applies to Adam only")
    ap.add_argument("--lbfgs-metric", choices=("rates", "identity"), default="rates",
                    help="lbfgs: in the --lr* rates' units (default) or in the raw parameters (optax as it is)")
    ap.add_argument("--lr-thickness", type=float, default=2e-2)
    ap.add_argument("--lr-warmup", type=int, default=0,
                    help="Adam steps over which the rates ramp up linearly (for --init-from continuations)")
    ap.add_argument("--lr-orientation", type=float, help="Adam rate of the joint tilts [rad] (default: --lr)")
    ap.add_argument("--start", choices=("pets", "reference"), default="pets",
                    help="quartz: start from the file's orientations or the reference paper's authors' optimised ones "
                    "(reflections selected there, as in quartz_parity.py)")
    ap.add_argument("--cycle-search", choices=("hexagonal", "nelder-mead", "about-beam"), default="hexagonal",
                    help="the orientation search between cycles: the fine hexagonal scan (θ from 0.05°, all frames), "
                         "Nelder–Mead from --nm-step on the --cycle-frames frames of highest R_obs, or the scan of "
                         "the rotation about the beam (all frames, within ±--max-about-beam, default 4°)")
    ap.add_argument("--max-about-beam", type=float, default=None,
                    help="with --cycle-search nelder-mead or about-beam: bound on each frame's rotation about the "
                         "beam [deg]")
    ap.add_argument("--cycle-frames", type=int, default=0, help="with --cycle-search nelder-mead: how many (0: all)")
    ap.add_argument("--cycles", type=int, default=1,
                    help="refinement cycles; each after the first re-scans orientations with the refined model")
    ap.add_argument("--thickness", type=float,
                    help="single thickness [Å] for the start and the orientation search: skip the thickness scans")
    ap.add_argument("--init-from", help="a <tag>_params.npz (or <tag>.ckpt folder) of an earlier run (same sample, "
                    "frames, model): start from its refined structure and thickness model")
    ap.add_argument("--orientations-from", help="a <tag>_orientations.npy of an earlier run: skip the search")
    ap.add_argument("--init-without-tilts", action="store_true",
                    help="with --init-from: leave the earlier run's joint tilts out (start them at zero)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=20, help="print the loss every this many epochs")
    ap.add_argument("--tag")
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--check-record", metavar="TAG",
                    help="rebuild a recorded run from its JSON command line and kept parameters and compare its R "
                         "factors with the recorded final ones (exit 1 beyond 1e-5)")
    ap.add_argument("--folded", metavar="TAG",
                    help="a recorded run with joint tilts (its JSON and _params.npz): its model as refined (tilts on "
                         "the beams chosen before them) vs the tilts folded into the orientations with the beams "
                         "reselected there; with --save-folded, write the folded orientations")
    ap.add_argument("--save-folded", help="with --folded: the folded orientations (.npy), for a run with "
                                          "--orientations-from … --init-from <tag>_params.npz --init-without-tilts")
    return ap


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    if args.hand and args.hand not in SAMPLES[args.sample]["structure"]:
        ap.error(f"--hand {args.hand}: {args.sample} has {sorted(SAMPLES[args.sample]['structure'])}")
    if args.log_every < 1:
        ap.error(f"--log-every {args.log_every}: expected a whole number of epochs ≥ 1")
    if args.summary:
        summary()
    elif args.check_record:
        check_record(args.check_record)
    elif args.folded:
        problem, params, _ = rebuild(args.folded)
        if "orientation" not in params:
            raise SystemExit(f"--folded {args.folded}: the run has no joint tilts (nothing to fold)")
        folded, q = fold_tilts(problem, params)
        if args.save_folded:
            np.save(args.save_folded, np.asarray(folded.experiment.base_orientation))
            print(f"folded orientations of {folded.experiment.n_frames} frames → {args.save_folded}")
        folded_report(problem, params, folded, q)
    else:
        run(args)


if __name__ == "__main__":
    main()
