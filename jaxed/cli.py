"""The `jaxed` command line. A stable contract: other tools call it.

Bad input (missing file, unknown element, malformed CIF, zero beam vector, non-positive thickness, ...) exits with
status 2 and one line on stderr naming the problem; no traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxed.errors import JaxedInputError

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
    p.add_argument("--float32", action="store_true", help="single precision (faster on GPUs; default float64)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxed", description="Differentiable Bloch-wave dynamical refinement for 3D electron diffraction.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("simulate", help="dynamical intensities of a structure along given beam directions")
    p.add_argument("structure", help="structure CIF")
    p.add_argument("--block", help="data block name (multi-block CIFs)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--beam", nargs=3, type=float, metavar=("U", "V", "W"),
                     help="zone axis [uvw] (direct lattice, towards the source; electrons travel along −[uvw])")
    src.add_argument("--beams", metavar="FILE", help="file with one 'u v w' per line")
    p.add_argument("--thickness", type=_positive(float), required=True, help="crystal thickness along the normal [Å]")
    p.add_argument("--energy", type=_positive(float), default=200.0, help="accelerating voltage [kV] (200)")
    _add_physics(p)
    p.add_argument("--out", required=True, help="output CSV: frame,h,k,l,sg,intensity")
    p.set_defaults(run=_run_simulate)
    return parser


def _configure_precision(float32: bool) -> None:
    import jax

    jax.config.update("jax_enable_x64", not float32)


def _run_simulate(args) -> int:
    _configure_precision(args.float32)
    import numpy as np

    from jaxed.bloch import BlochSettings
    from jaxed.crystal import load_structure
    from jaxed.simulation import read_beam_directions, simulate_directions, write_pattern_csv

    crystal, atoms = load_structure(args.structure, block=args.block, scattering=args.scattering)
    if args.beam is not None:
        uvws = np.array([args.beam])
        if not np.all(np.isfinite(uvws)) or not np.any(uvws):
            raise JaxedInputError(f"--beam {' '.join(map(str, args.beam))}: expected a non-zero finite direction")
    else:
        uvws = read_beam_directions(args.beams)
    if not (args.absorption >= 0):
        raise JaxedInputError(f"--absorption {args.absorption}: expected κ ≥ 0")
    settings = BlochSettings(energy_kev=args.energy, absorption=args.absorption)
    out = Path(args.out)
    if not out.parent.exists():
        raise JaxedInputError(f"--out {out}: folder {out.parent} does not exist")
    result = simulate_directions(crystal, atoms, uvws, args.thickness, settings, g_max=args.g_max, sg_max=args.sg_max)
    write_pattern_csv(out, result)
    n_frames = int(result.frame.max()) + 1
    print(f"jaxed simulate: {crystal.name} ({crystal.spacegroup}), {n_frames} direction(s), {len(result.frame)} beams, "
          f"t = {args.thickness:g} Å, {args.energy:g} kV → {out}")
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
