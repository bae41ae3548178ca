"""Where the CsPbBr₃ misfit sits: per-frame checks of a refined `table2.py` run (results/table2.md, last section).

For the refined structure and ThicknessNN of a run (its checkpoint and searched orientations):

* ``values``: per-frame R_obs and wR_all (each at its own best scale; reflections above ``--g-min``, the run's
  absorption flags), worst first;
* ``tilts``: for chosen frames, a grid of tilts θ ∈ {0.1 … 1.0}°, φ every 30° about the searched orientation;
* ``beams``: chosen frames (or ``--frames all``: the aggregates, runs with joint tilts too) with larger beam sets
  (``--beam-sets``, default sg_max 0.02 / 0.03, g_max 2.3), with the run's absorption flags;
* ``thickness``: every frame's own best thickness on a grid (``--thickness-grid``, by wR_all; all frames, a run's
  joint tilts folded in) and R_obs / wR_all per frame there, against ThicknessNN's;
* ``absorption-scale``: the run's model with the TDS absorptive potential multiplied by each of ``--abs-scales``
  (a diagnostic wrapper of jaxed.physics.bloch's absorptive coefficients, not a model option), not refitted: whether the
  data want more or less absorption than the Einstein model computes;
* ``gmin``: the run's model with and without the reflections below a low-resolution cut (``--g-min``), optionally
  evaluated with absorption (``--absorption κ``: the elastic fit's parameters, not refitted);
* ``kappa``: the run's model (reflections above ``--g-min``) evaluated at each absorption κ of ``--kappas``, not
  refitted: how much a different proportional absorption would change the fit; with ``--thermal-absorption`` the
  Einstein-model TDS absorptive potential is added (κ = 0: TDS alone);
* ``samples`` / ``scattering``: the run's model (all frames, reflections above ``--g-min``, the run's absorption
  flags) evaluated with other rocking-sample counts (``--sample-counts``) / with the Lobato and the Peng (ITC)
  electron form factors, not refitted;
* ``structure``: the run's thickness, tilts and orientations with another refined structure (``--structures``,
  default diffBloch's own CsPbBr₃ refinement with absorption, experiments/reference/): is the gap in the structure
  or elsewhere; also the site shifts and ‖ΔU‖_F between the two;
* ``search``: chosen frames (``worst:K``, the K of highest R_obs; ``all``) of the run's model, its joint tilts folded
  into the orientations, searched again with the structure and thickness fixed (``--searches``: Nelder–Mead, three
  angles, from ``--nm-step``; the hexagonal scan from that θ; the about-beam scan, jaxed.refine.orientation): whether a
  frame sits in a worse orientation minimum than one nearby; ``--save-orientations`` writes every frame's
  orientation for a further table2.py cycle (``--keep-unsearched``: only the searched frames the search improved
  change, every other frame keeps the run's orientation and tilts, with a matching ``_params.npz``);
* ``folded``: the run's model with its joint tilts applied on the per-sample beams chosen before them (as refined)
  and folded into the orientations with the beams reselected there: whether the tilts are fitted to a beam set
  (``--save-orientations``: write the folded orientations, for a table2.py cycle with ``--init-without-tilts``);
* ``exact``: for chosen frames (CIF structure, one thickness ``--thickness``), the integrated intensities with TDS
  absorption propagated perturbatively (the refinement's path, with ``--slices`` thickness slices) vs exactly
  (matrix exponential): the error of the perturbative path on this crystal, as Σ|ΔI| / ΣI per frame (the
  scale of an R factor).

    python experiments/cspbbr3_frames.py --check values tilts beams thickness --frames 5,19,21,29,35,41
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import jax

import jaxed

jax.config.update("jax_enable_x64", True)
jaxed.configure_cpu()  # CPU thread settings (docs/SPEED.md), before the backend starts

import numpy as np  # noqa: E402

from table2 import RESULTS, SAMPLES, SHARED, fold_tilts, folded_report  # noqa: E402

from jaxed.refine import metrics, objective  # noqa: E402
from jaxed.refine import orientation as ori  # noqa: E402
from jaxed.errors import JaxedInputError  # noqa: E402
from jaxed.model.experiment import (ExperimentSettings, integrated_intensities, reselect_sample_beams,  # noqa: E402
                              tilt_matrices)
from jaxed.physics.geometry import rotation_x, rotation_z  # noqa: E402
from jaxed.refine.optimize import RefineConfig, Refinement, load_params, save_params  # noqa: E402
from jaxed.app.workflow import load_problem  # noqa: E402


FRAMES_PER_BATCH = 0  # --frames-per-batch


def _load(frames: str | None, sg_max=0.01, g_max=2.0, g_min=0.0, absorption=0.0, thermal=False, samples=30,
          scattering="lobato", structure=None):
    """The CIF structure (or ``structure``) and the data of the full runs' settings, on the chosen frames:
    load_problem's tuple."""
    spec = SAMPLES["cspbbr3"]
    settings = ExperimentSettings(g_max=g_max, sg_max=sg_max, g_max_refine=2.0, r_sg_max=0.66, n_samples=samples,
                                  beam_selection="sample", d_sg_min=0.0015, g_min_refine=g_min)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_problem(structure or SHARED / spec["structure"]["Pbnm"], SHARED / spec["data"], frames=frames,
                            exp_settings=settings, log=lambda s: None, absorption=absorption,
                            thermal_absorption=thermal, scattering=scattering)


def _problem(tag: str, frames: str | None, sg_max=0.01, g_max=2.0, g_min=0.0, absorption=0.0, thermal=False,
             samples=30, scattering="lobato", structure=None):
    """The refined model of run ``tag`` (its joint tilts too, if it refined them) on the chosen frames."""
    crystal, atoms, _, exp, bloch = _load(frames, sg_max, g_max, g_min, absorption, thermal, samples, scattering,
                                          structure)
    orients = np.load(RESULTS / f"{tag}_orientations.npy")
    n_all = len(orients)
    if frames is not None:
        chosen = np.array(sorted(int(f) - 1 for f in frames.split(",")))
        orients = orients[chosen]
    exp = reselect_sample_beams(dataclasses.replace(exp, base_orientation=orients), crystal)
    config = RefineConfig(thickness_model="nn", thickness_init=400.0, thickness_range=(50.0, 3000.0),
                          frames_per_batch=FRAMES_PER_BATCH)
    problem = Refinement(crystal, atoms, exp, bloch, config)
    saved = RESULTS / f"{tag}_params.npz"  # kept with the results; older runs: only the checkpoint folder
    saved = saved if saved.exists() else RESULTS / f"{tag}.ckpt"
    try:
        return problem, load_params(saved, problem.params0)
    except JaxedInputError:  # a run with joint tilts: every frame's tilts are saved; keep the chosen frames' rows
        problem = Refinement(crystal, atoms, exp, bloch, dataclasses.replace(config, refine_orientation=True))
        p = load_params(saved, dict(problem.params0, orientation=np.zeros((n_all, 2))))
        return problem, (p if frames is None else dict(p, orientation=p["orientation"][chosen]))


def _folded(tag: str, frames: str, run=None, **kw):
    """The refined model of run ``tag`` on the chosen frames (``worst:K``: the K frames of highest R_obs; ``all``), its
    joint tilts folded into the frames' orientations (so that the structure-fixed searches of jaxed.refine.orientation, which
    move the orientation, start from them). ``run``: the run's ``_problem(tag, None, **kw)`` where the caller already
    has it. Returns (problem, params, the frames' indices, every frame's folded orientation)."""
    full, p = run or _problem(tag, None, **kw)
    if frames == "all":
        idx = np.arange(full.experiment.n_frames)
    elif frames.startswith("worst:"):
        r_obs = objective.frame_values(full.intensities(p), full.obs)["R_obs"]
        idx = np.sort(np.argsort(-r_obs)[: int(frames.split(":")[1])])
    else:
        idx = np.array(sorted(int(f) - 1 for f in frames.split(",")))
    problem, q = fold_tilts(full, p, None if frames == "all" else idx)
    base = full.experiment.base_orientation
    if "orientation" in p:
        base = ori.with_corrections(full.experiment, tilt_matrices(p["orientation"])).base_orientation
    return problem, q, idx, np.asarray(base)


def _print_model(name, problem, params):
    r = problem.summary(params)
    print(f"{name}: frame means R_obs {r['R_obs_frame_mean']:.4f} wR_all {r['wR_all_frame_mean']:.4f}; pooled "
          f"{r['R_obs']:.4f} / {r['wR_all']:.4f}; N_obs {r['N_obs']} N_all {r['N_all']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", default="cspbbr3_full_g2.0_dsg", help="a table2.py run (its checkpoint and orientations)")
    ap.add_argument("--check", nargs="+", default=["values"],
                    choices=("values", "tilts", "beams", "thickness", "gmin", "kappa", "exact", "samples", "scattering",
                             "structure", "search", "absorption-scale", "folded"))
    ap.add_argument("--frames", default="5,19,21,29,35,41",
                    help="frames (1-based) for tilts and beams; beams: 'all' for every frame and the aggregates")
    ap.add_argument("--beam-sets", default="0.01:2.0,0.02:2.0,0.03:2.0,0.02:2.3",
                    help="beams: sg_max:g_max pairs of the Bloch matrices to compare")
    ap.add_argument("--frames-per-batch", type=int, default=0, help="frames per chunk of the forward model (0: auto)")
    ap.add_argument("--g-min", type=float, default=0.1, help="gmin: the low-resolution cut [1/Å]")
    ap.add_argument("--absorption", type=float, default=0.0, help="gmin: evaluate with absorption κ (U' = κU)")
    ap.add_argument("--kappas", default="0.05,0.1,0.15,0.2", help="kappa: absorption values to evaluate")
    ap.add_argument("--thermal-absorption", action="store_true",
                    help="gmin, kappa: add the Einstein-model TDS absorptive potential (jaxed.physics.absorption)")
    ap.add_argument("--structures", default=str(Path(__file__).resolve().parent / "reference"
                                                 / "diffbloch_cspbbr3_absorption_refined.cif"),
                    help="structure: CIFs (comma-separated) whose sites and ADPs replace the run's refined ones")
    ap.add_argument("--nm-step", type=float, default=0.3, help="search: Nelder–Mead's initial simplex step [deg]")
    ap.add_argument("--maxfev", type=int, default=200, help="search: Nelder–Mead's evaluations per frame")
    ap.add_argument("--searches", default="nelder-mead,hexagonal",
                    help="search: which searches, in turn (nelder-mead, hexagonal, about-beam)")
    ap.add_argument("--save-orientations", help="search: write every frame's orientation (.npy) after the search, "
                    "for table2.py --orientations-from with --init-from ... --init-without-tilts")
    ap.add_argument("--keep-unsearched", action="store_true",
                    help="search, with --save-orientations: the frames not searched, and searched frames whose "
                    "wR_all the search did not bring below the run's own (its tilts unfolded, its beams), keep the "
                    "run's orientations and joint tilts as they are (folding reselects beams); also writes "
                    "<orientations stem>_params.npz, the run's parameters with the taken frames' tilts at zero, "
                    "for table2.py --orientations-from ... --init-from that file (without --init-without-tilts)")
    ap.add_argument("--sample-counts", default="30,60", help="samples: rocking samples per frame to evaluate")
    ap.add_argument("--thickness", type=float, default=434.0, help="exact: thickness [Å]")
    ap.add_argument("--abs-scales", default="0.7,1.0,1.44", help="absorption-scale: factors on the TDS potential")
    ap.add_argument("--thickness-grid", default="300:600:25", help="thickness: lo:hi:step of the grid [Å]")
    ap.add_argument("--slices", default="1,2,4,8,16", help="exact: thickness slices of the perturbative path")
    args = ap.parse_args()
    global FRAMES_PER_BATCH
    FRAMES_PER_BATCH = args.frames_per_batch
    if "exact" in args.check:
        crystal, atoms, _, exp, bloch = _load(args.frames, g_min=0.1, thermal=True)
        t = np.full(exp.n_frames, args.thickness)
        mask = np.asarray(exp.refl_mask)
        exact = np.asarray(jax.jit(lambda a: integrated_intensities(
            a, crystal, exp, t, dataclasses.replace(bloch, absorption_method="exact")))(atoms))
        for slices in (int(n) for n in args.slices.split(",")):
            first = np.asarray(jax.jit(lambda a: integrated_intensities(
                a, crystal, exp, t, dataclasses.replace(bloch, absorption_slices=slices)))(atoms))
            diff = np.sum(np.abs(first - exact) * mask, axis=1) / np.sum(exact * mask, axis=1)
            scale = np.sum(first * exact * mask, axis=1) / np.sum(first * first * mask, axis=1)  # best frame scale
            scaled = np.sum(np.abs(scale[:, None] * first - exact) * mask, axis=1) / np.sum(exact * mask, axis=1)
            print(f"TDS absorption, t = {args.thickness} Å, {slices} slice(s), frames {args.frames}: "
                  f"Σ|I − I_exact| / ΣI_exact per frame {np.round(diff, 5).tolist()}; after the best frame "
                  f"scale {np.round(scaled, 5).tolist()}", flush=True)
    if "kappa" in args.check:
        for kappa in (float(k) for k in args.kappas.split(",")):
            problem, p = _problem(args.tag, None, g_min=args.g_min, absorption=kappa, thermal=args.thermal_absorption)
            r = problem.summary(p)
            print(f"κ = {kappa}{' + TDS' if args.thermal_absorption else ''}: frame means R_obs "
                  f"{r['R_obs_frame_mean']:.4f} wR_all {r['wR_all_frame_mean']:.4f}; "
                  f"pooled {r['R_obs']:.4f} / {r['wR_all']:.4f}", flush=True)
    if "absorption-scale" in args.check:
        import jaxed.physics.bloch as jbloch

        computed = jbloch.absorptive_coefficients
        try:
            for scale in (float(x) for x in args.abs_scales.split(",")):
                jbloch.absorptive_coefficients = lambda *a, scale=scale, **k: scale * computed(*a, **k)
                _print_model(f"TDS absorptive potential × {scale}",
                             *_problem(args.tag, None, g_min=args.g_min, thermal=True))
        finally:
            jbloch.absorptive_coefficients = computed
    if "samples" in args.check or "scattering" in args.check:
        runs = ([dict(samples=int(n)) for n in args.sample_counts.split(",")] if "samples" in args.check else [])
        runs += [dict(scattering=f) for f in ("lobato", "peng")] if "scattering" in args.check else []
        for kw in runs:
            _print_model(str(kw), *_problem(args.tag, None, g_min=args.g_min, absorption=args.absorption,
                                             thermal=args.thermal_absorption, **kw))
    if "structure" in args.check:
        kw = dict(g_min=args.g_min, absorption=args.absorption, thermal=args.thermal_absorption)
        ours, p = _problem(args.tag, None, **kw)
        _print_model("the run's own structure", ours, p)
        mine = ours.atoms(p)
        for path in args.structures.split(","):
            other, _ = _problem(args.tag, None, structure=path, **kw)
            q = {**p, "structure": other.params0["structure"]}
            theirs = other.atoms(q)
            sites = range(len(ours.crystal.labels))
            per_site = [metrics.asu_rmsd(ours.crystal, theirs, mine, sites=[i]) for i in sites]
            dU = [metrics.adp_frobenius(ours.crystal, theirs, mine, sites=[i]) for i in sites]
            print(f"{Path(path).name} vs the run's structure: site shifts [Å] "
                  f"{dict(zip(ours.crystal.labels, np.round(per_site, 4).tolist()))}, ‖ΔU‖_F [Å²] "
                  f"{dict(zip(ours.crystal.labels, np.round(dU, 4).tolist()))}")
            _print_model(f"{Path(path).name} with the run's thickness, tilts", other, q)
    if "search" in args.check:
        kw = dict(g_min=args.g_min, absorption=args.absorption, thermal=args.thermal_absorption)
        run, p_run = _problem(args.tag, None, **kw)  # the run as refined: its tilts unfolded, its beams
        problem, q, idx, base = _folded(args.tag, args.frames, run=(run, p_run), **kw)
        before = objective.frame_values(problem.intensities(q), problem.obs)
        print(f"frames {(idx + 1).tolist()}, the run's orientations (tilts folded in): R_obs "
              f"{np.round(before['R_obs'], 4)} wR_all {np.round(before['wR_all'], 4)}", flush=True)
        searches = {"nelder-mead": lambda pr: ori.nelder_mead(pr.model, q, initial_step_deg=args.nm_step,
                                                               maxfev=args.maxfev),
                    "hexagonal": lambda pr: ori.hexagonal_scan(pr.model, q, theta0_deg=args.nm_step),
                    "about-beam": lambda pr: ori.about_beam_scan(pr.model, q)}
        for name in args.searches.split(","):
            t0 = time.perf_counter()
            exp, info = searches[name](problem)
            moved = Refinement(problem.crystal, problem.atoms(q), reselect_sample_beams(exp, problem.crystal),
                               problem.bloch, problem.config)
            after = objective.frame_values(moved.intensities(q), moved.obs)
            turn = ori.misorientation_deg(np.asarray(exp.base_orientation),
                                          np.asarray(problem.experiment.base_orientation))
            print(f"  after {name} ({args.nm_step}°, {time.perf_counter() - t0:.0f} s): R_obs "
                  f"{np.round(after['R_obs'], 4)} wR_all {np.round(after['wR_all'], 4)}; moved {np.round(turn, 3)}°; "
                  f"mean R_obs {before['R_obs'].mean():.4f} → {after['R_obs'].mean():.4f}, wR_all "
                  f"{before['wR_all'].mean():.4f} → {after['wR_all'].mean():.4f}", flush=True)
            if args.save_orientations:  # every frame: the run's (tilts folded in), the searched ones replaced
                better = np.ones(len(idx), bool)
                if args.keep_unsearched:  # a searched frame is taken only where it beats the run's own frame
                    own = objective.frame_values(run.intensities(p_run), run.obs)["wR_all"][idx]
                    better = after["wR_all"] < own
                    print(f"  wR_all of the run's own frames {np.round(own, 4)}: taken "
                          f"{(idx[better] + 1).tolist()}, kept {(idx[~better] + 1).tolist()}", flush=True)
                take = idx[better]
                out = np.load(RESULTS / f"{args.tag}_orientations.npy") if args.keep_unsearched else base.copy()
                out[take] = np.asarray(exp.base_orientation)[better]
                np.save(args.save_orientations, out)
                print(f"  orientations of all {len(out)} frames → {args.save_orientations}", flush=True)
                if args.keep_unsearched:  # the taken frames' tilts are in their new orientations: zero them
                    kept = dict(p_run)  # (p_run itself stays as refined for the next search's comparison)
                    if "orientation" in kept:
                        kept["orientation"] = np.asarray(kept["orientation"]).copy()
                        kept["orientation"][take] = 0.0
                    path = save_params(Path(args.save_orientations).with_suffix("").as_posix() + "_params.npz",
                                       kept)
                    print(f"  the run's parameters, the taken frames' tilts at zero → {path}", flush=True)
    if "gmin" in args.check:
        for g_min in (0.0, args.g_min):
            problem, p = _problem(args.tag, None, g_min=g_min, absorption=args.absorption,
                                  thermal=args.thermal_absorption)
            r = problem.summary(p)
            print(f"|g| ≥ {g_min}: frame means R_obs {r['R_obs_frame_mean']:.4f} "
                  f"wR_all {r['wR_all_frame_mean']:.4f}; "
                  f"pooled {r['R_obs']:.4f} / {r['wR_all']:.4f}; N_obs {r['N_obs']} N_all {r['N_all']}", flush=True)
    if "values" in args.check:
        problem, p = _problem(args.tag, None, g_min=args.g_min, absorption=args.absorption,
                              thermal=args.thermal_absorption)
        v = objective.frame_values(problem.intensities(p), problem.obs)
        theta = np.rad2deg(np.asarray(problem.experiment.theta))
        for k in np.argsort(-v["R_obs"]):
            print(f"frame {k + 1:3d}  α {theta[k]:7.2f}  R_obs {v['R_obs'][k]:.4f}  wR_all {v['wR_all'][k]:.4f}  "
                  f"N_obs {v['N_obs'][k]}  N_all {v['N_all'][k]}")
        print(f"means: R_obs {v['R_obs'].mean():.4f}  wR_all {v['wR_all'].mean():.4f}")
    if "folded" in args.check:  # are the joint tilts fitted to the beam sets chosen before them?
        kw = dict(g_min=args.g_min, absorption=args.absorption, thermal=args.thermal_absorption)
        own, p = _problem(args.tag, None, **kw)
        if "orientation" not in p:
            raise SystemExit(f"--check folded: {args.tag} has no joint tilts (nothing to fold)")
        folded, q, _, base = _folded(args.tag, "all", run=(own, p), **kw)
        if args.save_orientations:  # every frame's tilts folded in: table2.py ... --init-without-tilts
            np.save(args.save_orientations, base)
            print(f"  folded orientations of all {len(base)} frames → {args.save_orientations}", flush=True)
        folded_report(own, p, folded, q, log=lambda s: print(s, flush=True))
    if "tilts" in args.check:
        problem, p = _problem(args.tag, args.frames)
        fn, t = ori._make_frame_loss(problem, problem.atoms(p), None), problem.frame_thickness(p)
        exp = problem.experiment
        best = np.array(fn(exp, t))
        print("searched orientation: wR_all", np.round(best, 4))
        for th in (0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0):
            for phi in np.deg2rad(np.arange(0, 360, 30)):
                c = np.tile(np.asarray(rotation_z(phi) @ rotation_x(np.deg2rad(th)) @ rotation_z(-phi)),
                            (exp.n_frames, 1, 1))
                trial = reselect_sample_beams(ori.with_corrections(exp, c), problem.crystal)
                best = np.minimum(best, np.asarray(fn(trial, t)))
            print(f"best with tilts up to {th}°: wR_all", np.round(best, 4), flush=True)
    if "beams" in args.check:
        frames = None if args.frames == "all" else args.frames
        for sg, gm in ((float(x) for x in pair.split(":")) for pair in args.beam_sets.split(",")):
            problem, p = _problem(args.tag, frames, sg, gm, g_min=args.g_min if frames is None else 0.0,
                                  absorption=args.absorption, thermal=args.thermal_absorption)
            if frames is None:  # all frames (runs with joint tilts too): the aggregates
                r = problem.summary(p)
                print(f"sg_max {sg} g_max {gm} ({problem.experiment.matrix_size} beams, padded): frame means "
                      f"R_obs {r['R_obs_frame_mean']:.4f} wR_all {r['wR_all_frame_mean']:.4f}; pooled "
                      f"{r['R_obs']:.4f} / {r['wR_all']:.4f}", flush=True)
                continue
            v = objective.frame_values(problem.intensities(p), problem.obs)
            print(f"sg_max {sg} g_max {gm} ({problem.experiment.matrix_size} beams): R_obs", np.round(v["R_obs"], 4),
                  "wR_all", np.round(v["wR_all"], 4), flush=True)
    if "thickness" in args.check:  # each frame's own best thickness on a grid (a run's joint tilts folded in)
        problem, q, _, _ = _folded(args.tag, "all", g_min=args.g_min, absorption=args.absorption,
                                   thermal=args.thermal_absorption)
        lo, hi, step = (float(x) for x in args.thickness_grid.split(":"))
        grid = np.arange(lo, hi + step / 2, step)
        nn = objective.frame_values(problem.intensities(q), problem.obs)
        t_nn = np.asarray(problem.frame_thickness(q))
        single = Refinement(problem.crystal, problem.atoms(q), problem.experiment, problem.bloch,
                            dataclasses.replace(problem.config, thickness_model="single"))
        rows = [objective.frame_values(single.intensities(dict(
            single.params0, thickness={"log_t0": jax.numpy.log(float(t))})), single.obs) for t in grid]
        wr = np.stack([r["wR_all"] for r in rows])
        r_obs = np.stack([r["R_obs"] for r in rows])
        best = wr.argmin(0)
        cols = np.arange(len(best))
        print("ThicknessNN per frame [Å]:", np.round(t_nn).astype(int).tolist())
        print("per-frame best thickness by wR_all [Å]:", grid[best].astype(int).tolist())
        print("R_obs per frame, ThicknessNN:", np.round(nn["R_obs"], 4).tolist())
        print("R_obs per frame, own best thickness:", np.round(r_obs[best, cols], 4).tolist())
        print(f"frame means, ThicknessNN: R_obs {nn['R_obs'].mean():.4f} wR_all {nn['wR_all'].mean():.4f}; each "
              f"frame at its best grid thickness: R_obs {r_obs[best, cols].mean():.4f} wR_all "
              f"{wr[best, cols].mean():.4f}")


if __name__ == "__main__":
    main()
