"""The `jaxed` command line. A stable contract: other tools call it.

Bad input (missing file, unknown element, malformed CIF, zero beam vector, non-positive thickness, ...) exits with
status 2 and one line on stderr naming the problem; no traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from jaxed.errors import JaxedInputError
from jaxed.model.experiment import GEOMETRIES

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse prints usage + error and exits 2; keep it to one line."""

    def error(self, message):  # noqa: D401
        sys.stderr.write(f"jaxed: error: {message}\n")
        raise SystemExit(2)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text}: expected a positive value")
        return value

    return parse


def _add_physics(p: argparse.ArgumentParser, g_max: float = 1.5, sg_max: float = 0.02) -> None:
    p.add_argument("--g-max", type=_positive(float), default=g_max, help=f"beams in the matrix: |g| ≤ G [1/Å] ({g_max})")
    p.add_argument("--sg-max", type=_positive(float), default=sg_max,
                   help=f"beams in the matrix: |s_g| ≤ S [1/Å] ({sg_max})")
    p.add_argument("--scattering", choices=("lobato", "peng"), default="lobato",
                   help="electron form factors: Lobato & Van Dyck 2014 (default) or Peng/ITC C 4.3.2.2")
    p.add_argument("--absorption", type=float, default=0.0, metavar="KAPPA",
                   help="proportional absorption U'_g = κ U_g (0 = none)")
    p.add_argument("--thermal-absorption", action="store_true",
                   help="thermal-diffuse-scattering absorption from the ADPs (Einstein model; adds to κ)")
    p.add_argument("--float32", action="store_true", help="single precision (faster on GPUs; default float64)")


def _build_parser() -> argparse.ArgumentParser:
    from jaxed import __version__

    parser = _Parser(prog="jaxed",
                     description="Differentiable Bloch-wave dynamical refinement for 3D electron diffraction. "
                     "Every setting of simulate, synth, refine and evaluate can also come from a TOML/JSON --config "
                     "file (command line wins); each run saves its effective settings.")
    parser.add_argument("--version", action="version", version=f"jaxed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("simulate", help="dynamical intensities of a structure along given beam directions")
    p.add_argument("structure", help="structure CIF")
    p.add_argument("--block", help="data block name (multi-block CIFs)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--beam", nargs=3, type=float, metavar=("U", "V", "W"),
                     help="zone axis [uvw] (direct lattice, towards the source; electrons travel along −[uvw])")
    src.add_argument("--beams", metavar="FILE", help="file with one 'u v w' per line")
    p.add_argument("--thickness", type=_positive(float), help="crystal thickness along the normal [Å]")
    p.add_argument("--energy", type=_positive(float), default=200.0, help="accelerating voltage [kV] (200)")
    _add_physics(p)
    p.add_argument("--out", required=True, help="output CSV: frame,h,k,l,sg,intensity")
    p.add_argument("--config", help="TOML or JSON file of settings (command line wins)")
    p.set_defaults(run=_run_simulate)

    for name, helptext in (("refine", "refine a structure (and thickness model) against a .cif_pets dataset"),
                           ("evaluate", "R factors of a structure against a .cif_pets dataset, without refining")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("structure", help="structure CIF")
        p.add_argument("data", help="PETS2 .cif_pets file")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--block", help="data block of the structure CIF")
        p.add_argument("--config", help="JSON or TOML file with any of these options (command line wins)")
        _add_data_options(p)
        if name == "evaluate":
            p.add_argument("--thickness", type=_positive(float), default=None, help="thickness [Å] (800)")
            p.set_defaults(run=_run_evaluate)
        else:
            p.add_argument("--thickness-model", choices=("nn", "single", "kinematic", "plate", "tilt", "constant"),
                           default=None, help="thickness model (nn = ThicknessNN)")
            p.add_argument("--thickness-init", type=_positive(float), default=None, help="starting thickness [Å] (800)")
            p.add_argument("--optimizer", choices=("adam", "lbfgs", "gn", "lm", "hybrid"), default=None,
                           help="optimiser (adam); gn/lm: Gauss-Newton/Levenberg-Marquardt with s.u. in the CIF, "
                                "hybrid: Adam for the thickness model + LM for the structure")
            p.add_argument("--r-free", type=float, default=None, metavar="FRACTION",
                           help="hold out this fraction of the unique reflections for R_free (0: none)")
            p.add_argument("--epochs", type=int, default=None, help="optimiser steps (200)")
            p.add_argument("--lr", type=_positive(float), default=None, help="Adam learning rate (0.001)")
            p.add_argument("--seed", type=int, default=None, help="PRNG seed (0)")
            p.add_argument("--aniso", choices=("as-given", "all", "none"), default=None,
                           help="ADPs: as in the CIF, all anisotropic, or all isotropic")
            p.add_argument("--refine-orientation",
                           choices=("none", "gradient", "hexagonal", "nelder-mead", "nelder-mead+hexagonal"),
                           default=None, help="per-frame orientations: gradient = two tilts refined jointly with "
                           "everything else; hexagonal / nelder-mead = the reference paper's searches with the "
                           "structure fixed, run first; nelder-mead+hexagonal = both in turn (none)")
            p.add_argument("--nm-step", type=_positive(float), default=None,
                           help="initial simplex step of the Nelder–Mead search [deg] (0.5)")
            p.add_argument("--orientation-angles", type=int, choices=(2, 3), default=None,
                           help="with --refine-orientation gradient: 2 tilts ⟂ beam (2) or also the rotation about "
                           "the beam (3)")
            p.add_argument("--minibatch", type=int, default=None, help="frames per Adam step (0: full batch)")
            p.add_argument("--thickness-samples", type=int, default=None,
                           help="ThicknessNN reparameterised draws per frame, intensities averaged (1)")
            p.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None, help="learning-rate schedule")
            p.add_argument("--lr-warmup", type=int, default=None,
                           help="steps over which the learning rates ramp up linearly (0); for runs that start from "
                           "a refined model")
            p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (10)")
            p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.npz")
            p.add_argument("--no-progress", action="store_true", help="no progress bar")
            p.set_defaults(run=_run_refine)

    p = sub.add_parser("synth", help="synthetic integrated intensities (the reference paper's protocol)")
    p.add_argument("structure", help="true structure CIF")
    p.add_argument("--block", help="data block of the structure CIF")
    geo = p.add_mutually_exclusive_group(required=True)
    geo.add_argument("--frames-from", metavar="DATA", help="take the frame geometry of this .cif_pets file")
    geo.add_argument("--tilt-series", nargs=3, type=float, metavar=("START", "END", "STEP"),
                     help="generated continuous rotation: α from START to END every STEP degrees")
    p.add_argument("--frames", help="subset of frames (e.g. 'every:3', '1-20')")
    p.add_argument("--profile", choices=("constant", "wedge", "plate", "random"), default="random",
                   help="true thickness profile (random: a smooth seeded function of θ)")
    p.add_argument("--thickness", type=_positive(float), default=800.0, help="mean/base thickness t0 [Å] (800)")
    p.add_argument("--i-max", type=_positive(float), default=1e6, help="counts of the brightest reflection (1e6)")
    p.add_argument("--semi-angle", type=_positive(float), default=1.0, help="integration semi-angle [deg] (tilt series)")
    p.add_argument("--seed", type=int, default=0, help="seed of the profile and the Poisson noise")
    p.add_argument("--g-max", type=_positive(float), default=1.6)
    p.add_argument("--sg-max", type=_positive(float), default=0.01)
    p.add_argument("--g-max-refine", type=_positive(float), default=1.4)
    p.add_argument("--samples", type=int, default=21, help="rocking-curve samples per frame (21)")
    p.add_argument("--scattering", choices=("lobato", "peng"), default="lobato")
    p.add_argument("--out", required=True, help="output .cif_pets (a sidecar OUT.truth.json holds the thickness)")
    p.add_argument("--config", help="TOML or JSON file of settings (command line wins)")
    p.set_defaults(run=_run_synth)

    p = sub.add_parser("demo", help="a real refinement on synthetic quartz shipped with jaxed (a few minutes)")
    p.add_argument("--out", default="jaxed-demo", help="output folder (jaxed-demo)")
    p.add_argument("--epochs", type=int, default=None, help="Adam steps (default: 200)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (none anyway when not in a terminal)")
    p.set_defaults(run=_run_demo)
    _apply_schema(sub)
    return parser


def _apply_schema(sub) -> None:
    """Help text (unit, default) of every setting from jaxed.app.config; argparse defaults become None so that a
    config file can fill what the command line leaves out."""
    from jaxed.app.config import COMMANDS, format_help, schema

    for command in COMMANDS:
        settings = schema(command)
        for action in sub.choices[command]._actions:
            if action.dest in settings:
                action.default = None
                action.help = format_help(settings[action.dest])


# Defaults, units and allowed values of every setting live in jaxed.app.config (one schema for --help, config files
# and validation).


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--g-max", type=_positive(float), default=None, help="beams in the matrix: |g| ≤ G [1/Å] (1.6)")
    p.add_argument("--sg-max", type=_positive(float), default=None, help="beams in the matrix: |s_g| ≤ S [1/Å] (0.01)")
    p.add_argument("--g-max-refine", type=_positive(float), default=None, help="reflections used: |g| ≤ G [1/Å] (1.4)")
    p.add_argument("--g-min-refine", type=_positive(float), default=None,
                   help="reflections used: |g| ≥ G [1/Å], a low-resolution cut (unset: none)")
    p.add_argument("--r-sg", type=_positive(float), default=None, help="reflections used: R_Sg ≤ R (0.9)")
    p.add_argument("--d-sg", type=_positive(float), default=None,
                   help="reflections used: Δs_g − |s_g| > D [1/Å] (Klar et al.'s D_Sg, e.g. 0.0015; unset: none)")
    p.add_argument("--samples", type=int, default=None, help="rocking-curve samples per frame (21)")
    p.add_argument("--beams", choices=("frame", "sample"), default=None,
                   help="one Bloch matrix per frame (frame, default) or per rocking sample with only its own "
                   "|s_g| ≤ S beams (sample: ~10× faster)")
    p.add_argument("--max-beams", type=int, default=None, help="cap on the beams of one Bloch matrix (unset: none)")
    p.add_argument("--semi-angle", type=_positive(float), default=None,
                   help="integration semi-angle [deg] (default: the file's precession_angle column)")
    p.add_argument("--geometry", choices=tuple(GEOMETRIES), default=None,
                   help="integration over a rotation about the tilt axis or a precession cone (default: what the "
                   "file's measurement details say)")
    p.add_argument("--scattering", choices=("lobato", "peng"), default=None, help="electron form factors (lobato)")
    p.add_argument("--absorption", type=float, default=None, metavar="KAPPA", help="U'_g = κU_g (0)")
    p.add_argument("--thermal-absorption", action="store_true", default=None,
                   help="thermal-diffuse-scattering absorption from the ADPs (Einstein model; adds to κ)")
    p.add_argument("--frames", help="subset of frames: '1-20', '1,5,9-12', 'every:3', 'first:20'")
    p.add_argument("--cell-tolerance", type=_positive(float), default=None,
                   help="refuse a structure whose cell differs from the data's by more than this (0.05 = 5 %%)")
    p.add_argument("--drop-bad-sigma", action="store_true", default=None, help="drop reflections with σ ≤ 0")
    p.add_argument("--float32", action="store_true", help="single precision (default float64)")


def _configure_precision(float32: bool) -> None:
    import jax

    from jaxed.runtime import configure_cpu

    jax.config.update("jax_enable_x64", not float32)
    configure_cpu()


def _run_simulate(args) -> int:
    s = _settings(args)
    _configure_precision(s["float32"])
    import numpy as np

    from jaxed.physics.bloch import BlochSettings
    from jaxed.physics.crystal import load_structure
    from jaxed.model.simulation import read_beam_directions, simulate_directions, write_pattern_csv
    from jaxed.app.workflow import check_memory, check_structure

    if s["thickness"] is None:
        raise JaxedInputError("--thickness: required (on the command line or as thickness in the --config file) [Å]")
    crystal, atoms = load_structure(args.structure, block=args.block, scattering=s["scattering"])
    check_structure(crystal, atoms, args.structure)
    if args.beam is not None:
        uvws = np.array([args.beam])
        if not np.all(np.isfinite(uvws)) or not np.any(uvws):
            raise JaxedInputError(f"--beam {' '.join(map(str, args.beam))}: expected a non-zero finite direction")
    else:
        uvws = read_beam_directions(args.beams)
    settings = BlochSettings(energy_kev=s["energy"], absorption=s["absorption"],
                             thermal_absorption=bool(s["thermal_absorption"]))
    out = Path(args.out)
    if not out.parent.exists():
        raise JaxedInputError(f"--out {out}: folder {out.parent} does not exist")
    check_memory(crystal.volume, s["g_max"], s["sg_max"], len(uvws), 1)
    result = simulate_directions(crystal, atoms, uvws, s["thickness"], settings, g_max=s["g_max"], sg_max=s["sg_max"])
    write_pattern_csv(out, result)
    _save_settings(Path(str(out) + ".config.toml"), args, s)
    n_frames = int(result.frame.max()) + 1
    print(f"jaxed simulate: {crystal.name} ({crystal.spacegroup}), {n_frames} direction(s), {len(result.frame)} beams, "
          f"t = {s['thickness']:g} Å, {s['energy']:g} kV → {out}")
    return 0


def _settings(args) -> dict:
    """Effective settings of ``args.command``: defaults < config file (top level < [command]) < command line."""
    from jaxed.app.config import effective_settings, read_config

    cfg = read_config(args.config) if getattr(args, "config", None) else None
    return effective_settings(args.command, cfg, vars(args))


def _save_settings(path: Path, args, s: dict) -> None:
    """The effective settings of this run, as TOML that --config reads back."""
    from jaxed import __version__
    from jaxed.app.config import write_config

    inputs = {k: getattr(args, k) for k in ("structure", "data", "block", "beam", "beams", "frames_from",
                                             "tilt_series") if getattr(args, k, None) is not None}
    write_config(path, args.command, s, header={"jaxed": __version__, **inputs})


def _inputs(args) -> dict:
    return {"structure file": args.structure, "data file": args.data}


def _progress(args) -> bool:
    """Progress bars only on a terminal (never in logs or pipes) and not with --no-progress."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _load(args, s):
    import warnings

    from jaxed.model.experiment import ExperimentSettings
    from jaxed.app.workflow import load_problem

    exp = ExperimentSettings(g_max=s["g_max"], sg_max=s["sg_max"], g_max_refine=s["g_max_refine"],
                             g_min_refine=s["g_min_refine"], r_sg_max=s["r_sg"], d_sg_min=s["d_sg"],
                             n_samples=int(s["samples"]), semi_angle_deg=s["semi_angle"],
                             beam_selection=s["beams"], max_beams=s["max_beams"],
                             precession=GEOMETRIES[s["geometry"]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problem = load_problem(args.structure, args.data, block=args.block, scattering=s["scattering"],
                               frames=s["frames"], exp_settings=exp, absorption=s["absorption"],
                               thermal_absorption=bool(s["thermal_absorption"]),
                               cell_tolerance=s["cell_tolerance"], drop_bad_sigma=bool(s["drop_bad_sigma"]))
    for w in caught:
        print(f"jaxed: warning: {w.message}", file=sys.stderr)
    _print_geometry(problem[2], exp, s["geometry"])
    return problem


def _print_geometry(data, exp, geometry: str) -> None:
    """One line on how each frame is integrated, and whether that came from the file or from --geometry."""
    import numpy as np

    from jaxed.model.experiment import uses_precession

    precession = uses_precession(exp, data)
    semi = exp.semi_angle_deg if exp.semi_angle_deg is not None else float(np.max(np.abs(data.precession_angle)))
    what = f"a precession cone of {semi:g}°" if precession else f"a rotation of ±{semi:g}° about the tilt axis"
    source = (f"the file says '{data.geometry}'" if geometry == "file"
              else f"--geometry {geometry}; the file says '{data.geometry}'")
    print(f"jaxed: each frame integrated over {what}, {exp.n_samples} samples ({source})")


def _print_summary(report: dict) -> None:
    print(f"R_obs {100 * report['R_obs']:.2f} %   wR_all {100 * report['wR_all']:.2f} % (paper form)   "
          f"wR_all(|F|) {100 * report['wR_all_jana']:.2f} %   N_obs {report['N_obs']}   N_all {report['N_all']}   "
          f"mean thickness {report['mean_thickness_A']:.0f} Å")
    if report.get("R_obs_frame_mean") is not None:
        print(f"means over frames (diffBloch's aggregate): R_obs {100 * report['R_obs_frame_mean']:.2f} %   "
              f"wR_all {100 * report['wR_all_frame_mean']:.2f} %")


def _run_evaluate(args) -> int:
    s = _settings(args)
    _configure_precision(s["float32"])
    from jaxed.app.workflow import evaluate

    crystal, atoms, _, experiment, bloch = _load(args, s)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    _save_settings(Path(args.out) / "config.toml", args, s)
    report = evaluate(crystal, atoms, experiment, bloch, s["thickness"], args.out, settings=s, inputs=_inputs(args))
    _print_summary(report)
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0


def _run_refine(args) -> int:
    s = _settings(args)
    _configure_precision(s["float32"])
    from jaxed.refine.optimize import RefineConfig, RefinementDiverged
    from jaxed.app.workflow import refine

    # every RefineConfig field the settings hold (jaxed.app.config lists them all), then the converted ones
    passthrough = {f.name: s[f.name] for f in dataclasses.fields(RefineConfig) if s.get(f.name) is not None}
    config = RefineConfig(**{**passthrough, **dict(
                          thickness_model=s["thickness_model"], thickness_init=s["thickness_init"],
                          optimizer=s["optimizer"], epochs=int(s["epochs"]), lr=s["lr"], seed=int(s["seed"]),
                          aniso=s["aniso"], refine_orientation=s["refine_orientation"] == "gradient",
                          checkpoint_every=int(s["checkpoint_every"]), minibatch=int(s["minibatch"]),
                          thickness_samples=int(s["thickness_samples"]), lr_schedule=s["lr_schedule"])})
    crystal, atoms, _, experiment, bloch = _load(args, s)
    if s["refine_orientation"] not in ("none", "gradient"):
        from jaxed.app.workflow import search_orientations

        experiment = search_orientations(crystal, atoms, experiment, bloch, config, s["refine_orientation"],
                                         initial_step_deg=s["nm_step"])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    _save_settings(Path(args.out) / "config.toml", args, s)
    try:
        result = refine(crystal, atoms, experiment, bloch, config, args.out, resume=args.resume,
                        progress=_progress(args), settings=s, inputs=_inputs(args))
    except RefinementDiverged as exc:
        raise JaxedInputError(str(exc)) from None
    _print_summary(result["report"])
    print(f"refined structure: {Path(args.out) / 'refined.cif'}   report: {Path(args.out) / 'report.json'}")
    return 0


def _run_synth(args) -> int:
    s = _settings(args)
    _configure_precision(False)
    import numpy as np

    from jaxed.physics.bloch import BlochSettings
    from jaxed.physics.constants import energy_from_wavelength
    from jaxed.physics.crystal import load_structure
    from jaxed.model.experiment import ExperimentSettings
    from jaxed.data.pets import read_pets, write_pets
    from jaxed.model.synth import synthesize, thickness_profile, tilt_series, write_sidecar
    from jaxed.app.workflow import check_memory, check_structure, parse_frames

    crystal, atoms = load_structure(args.structure, block=args.block, scattering=s["scattering"])
    check_structure(crystal, atoms, args.structure)
    if args.frames_from:
        frames = read_pets(args.frames_from, drop_bad_sigma=True)
    else:
        start, end, step = args.tilt_series
        if not (step > 0 and end > start):
            raise JaxedInputError(f"--tilt-series {start} {end} {step}: expected START < END and STEP > 0")
        frames = tilt_series(crystal, alpha_start=start, alpha_end=end, step=step, semi_angle=s["semi_angle"],
                             seed=s["seed"])
    chosen = parse_frames(s["frames"], frames.n_frames)
    if chosen is not None:
        frames = frames.subset_frames(chosen)
    theta = np.deg2rad(frames.alpha)
    truth = thickness_profile(s["profile"], theta, s["thickness"], seed=s["seed"])
    settings = ExperimentSettings(g_max=s["g_max"], sg_max=s["sg_max"], g_max_refine=s["g_max_refine"],
                                  n_samples=s["samples"], r_sg_max=None)
    check_memory(crystal.volume, s["g_max"], s["sg_max"], frames.n_frames, s["samples"],
                 float(np.max(np.abs(frames.precession_angle))))
    bloch = BlochSettings(energy_from_wavelength(frames.wavelength))
    data = synthesize(crystal, atoms, frames, truth, bloch, settings, i_max=s["i_max"], seed=s["seed"])
    write_pets(args.out, data)
    sidecar = str(args.out) + ".truth.json"
    write_sidecar(sidecar, frames, truth, structure=str(args.structure), profile=s["profile"], i_max=s["i_max"],
                  seed=s["seed"], g_max=s["g_max"], sg_max=s["sg_max"], g_max_refine=s["g_max_refine"],
                  samples=s["samples"])
    _save_settings(Path(str(args.out) + ".config.toml"), args, s)
    print(f"jaxed synth: {data.n_frames} frames, {data.n_refl} reflections → {args.out} (truth: {sidecar})")
    return 0


def _run_demo(args) -> int:
    _configure_precision(False)
    from jaxed.app.demo import run_demo

    run_demo(args.out, epochs=args.epochs, progress=_progress(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except JaxedInputError as exc:
        sys.stderr.write(f"jaxed: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("jaxed: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
