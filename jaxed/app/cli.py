"""The `jaxed` command line. A stable contract: other tools call it.

Every option that is a setting (its type, default, unit, allowed values, help and ``--help`` group) comes from
:mod:`jaxed.settings`; its argparse default is None ("not given") so that a ``--config`` file can fill what the
command line leaves out (:func:`jaxed.app.config.effective_settings`).

Bad input (missing file, unknown element, malformed CIF, zero beam vector, non-positive thickness, ...) exits with
status 2 and one line on stderr naming the problem; no traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxed.errors import JaxedInputError
from jaxed.settings import CONCERNS, Setting, field_values, schema

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse prints usage + error and exits 2; keep it to one line."""

    def error(self, message):  # noqa: D401
        sys.stderr.write(f"jaxed: error: {message}\n")
        raise SystemExit(2)


def _parse_value(setting: Setting):
    """argparse ``type`` of a number setting: the text as ``setting.kind``, checked against the schema."""

    def parse(text):
        try:
            value = setting.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}': expected {setting.describe()}") from None
        if not setting.fits(value):
            raise argparse.ArgumentTypeError(f"{text}: expected {setting.describe()}")
        return value

    return parse


def _help(setting: Setting) -> str:
    """'help [unit] (default: value)' ('%' escaped for argparse); an unset default is explained by the help."""
    text = setting.help + (f" [{setting.unit}]" if setting.unit else "")
    if setting.default is not None:
        shown = str(setting.default).lower() if setting.kind is bool else setting.default
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def _add_settings(p: argparse.ArgumentParser, command: str) -> dict:
    """One option per setting of ``command``, in one group per concern it has (:data:`jaxed.settings.CONCERNS`
    order). Returns the groups by concern, for the options that are not settings."""
    settings = schema(command).values()
    groups = {concern: p.add_argument_group(concern, title) for concern, title in CONCERNS.items()
              if any(s.concern == concern for s in settings)}
    for s in settings:
        options = {"dest": s.name, "default": None, "help": _help(s)}
        if s.kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif s.choices:
            options["choices"] = s.choices
        elif s.kind is not str:
            options["type"] = _parse_value(s)
        if s.metavar:
            options["metavar"] = s.metavar
        groups[s.concern].add_argument(s.flag, **options)
    return groups


def _build_parser() -> argparse.ArgumentParser:
    from jaxed import __version__
    from jaxed.app.demo import DEMO_CONFIG

    parser = _Parser(prog="jaxed",
                     description="Differentiable Bloch-wave dynamical refinement for 3D electron diffraction. "
                     "Every setting of simulate, synth, refine and evaluate can also come from a TOML/JSON --config "
                     "file (command line wins); each run saves its effective settings.")
    parser.add_argument("--version", action="version", version=f"jaxed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    config_help = "TOML or JSON file of settings (command line wins)"

    p = sub.add_parser("simulate", help="dynamical intensities of a structure along given beam directions")
    p.add_argument("structure", help="structure CIF")
    files = p.add_argument_group("files")
    files.add_argument("--block", help="data block name (multi-block CIFs)")
    src = files.add_mutually_exclusive_group(required=True)
    src.add_argument("--beam", nargs=3, type=float, metavar=("U", "V", "W"),
                     help="zone axis [uvw] (direct lattice, towards the source; electrons travel along −[uvw])")
    src.add_argument("--beams", metavar="FILE", help="file with one 'u v w' per line")
    files.add_argument("--out", required=True, help="output CSV: frame,h,k,l,sg,intensity")
    files.add_argument("--config", help=config_help)
    _add_settings(p, "simulate")
    p.set_defaults(run=_run_simulate)

    for name, helptext in (("refine", "refine a structure (and thickness model) against a .cif_pets dataset"),
                           ("evaluate", "R factors of a structure against a .cif_pets dataset, without refining")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("structure", help="structure CIF")
        p.add_argument("data", help="PETS2 .cif_pets file")
        files = p.add_argument_group("files")
        files.add_argument("--out", required=True, help="output folder")
        files.add_argument("--block", help="data block of the structure CIF")
        files.add_argument("--config", help=config_help)
        groups = _add_settings(p, name)
        if name == "refine":
            groups["run"].add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
            groups["run"].add_argument("--no-progress", action="store_true", help="no progress bar")
        p.set_defaults(run=_run_refine if name == "refine" else _run_evaluate)

    p = sub.add_parser("synth", help="synthetic integrated intensities (the reference paper's protocol)")
    p.add_argument("structure", help="true structure CIF")
    files = p.add_argument_group("files")
    files.add_argument("--block", help="data block of the structure CIF")
    geo = files.add_mutually_exclusive_group(required=True)
    geo.add_argument("--frames-from", metavar="DATA", help="take the frame geometry of this .cif_pets file")
    geo.add_argument("--tilt-series", nargs=3, type=float, metavar=("START", "END", "STEP"),
                     help="generated continuous rotation: α from START to END every STEP degrees")
    files.add_argument("--out", required=True,
                       help="output .cif_pets (a sidecar OUT.truth.json holds the thickness)")
    files.add_argument("--config", help=config_help)
    _add_settings(p, "synth")
    p.set_defaults(run=_run_synth)

    p = sub.add_parser("demo", help="a real refinement on synthetic quartz shipped with jaxed (a few minutes)")
    p.add_argument("--out", default="jaxed-demo", help="output folder (default: jaxed-demo)")
    p.add_argument("--epochs", type=int, default=None, help=f"Adam steps (default: {DEMO_CONFIG.epochs})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (none anyway when not in a terminal)")
    p.set_defaults(run=_run_demo)
    return parser


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
    from jaxed.app.workflow import check_structure
    from jaxed.model.batching import check_memory

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
    settings = BlochSettings(**field_values("BlochSettings", "simulate", s))
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

    exp = ExperimentSettings(**field_values("ExperimentSettings", args.command, s))
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

    config = RefineConfig(**field_values("RefineConfig", "refine", s))  # refine_orientation: True for 'gradient'
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
    from jaxed.app.workflow import check_structure, parse_frames
    from jaxed.model.batching import check_memory

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
    settings = ExperimentSettings(**field_values("ExperimentSettings", "synth", s), r_sg_max=None)
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
