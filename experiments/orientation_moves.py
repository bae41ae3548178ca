"""How far searched quartz orientations sit from the PETS2 file's, split into the tilt perpendicular to the beam and
the rotation about it (lab z), beside the reference paper's authors' optimised orientations (results/table2.md).

A rotation about the beam leaves a still frame's excitation errors alone but turns the rocking axis in the crystal,
so a three-angle search (Nelder–Mead, R_z R_y R_x) can use it as a per-frame fitting freedom; PETS2 indexes each
frame's spots, so the file's in-plane angle is known far better than several degrees.

    python experiments/orientation_moves.py experiments/results/table2/quartz_P3221_v3ref_shared_tds_nm_orientations.npy
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

import numpy as np  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from quartz_parity import reference_orientations  # noqa: E402
from table2 import SAMPLES, SHARED  # noqa: E402

from jaxed.model.experiment import ExperimentSettings  # noqa: E402
from jaxed.app.workflow import load_problem  # noqa: E402


def _polar(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    return u @ vt


def split_moves(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the lab rotation a bᵀ as (tilt ⊥ beam, |rotation about the beam|) [deg] (rotation-vector parts)."""
    rel = np.einsum("fij,fkj->fik", _polar(np.asarray(a)), _polar(np.asarray(b)))
    deg = np.degrees(Rotation.from_matrix(rel).as_rotvec())
    return np.hypot(deg[:, 0], deg[:, 1]), np.abs(deg[:, 2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("orientations", nargs="*", help="<tag>_orientations.npy files of quartz runs (all 99 frames)")
    args = ap.parse_args()
    spec = SAMPLES["quartz"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, _, exp, _ = load_problem(SHARED / spec["structure"]["P3221"], SHARED / spec["data"], log=lambda s: None,
                                       exp_settings=ExperimentSettings(g_max=2.0, sg_max=0.01, g_max_refine=1.6,
                                                                       n_samples=3))
    pets = np.asarray(exp.base_orientation)
    rows = [("the authors' optimised orientations", reference_orientations(exp.frame_ids)[0])]
    rows += [(Path(p).name, np.load(p)) for p in args.orientations]
    print("vs the PETS file, per frame [deg]: tilt ⊥ beam (median / 90 % / max); rotation about the beam (same)")
    for name, other in rows:
        tilt, about = split_moves(other, pets)
        print(f"{name}: {np.percentile(tilt, [50, 90, 100]).round(2).tolist()}; "
              f"{np.percentile(about, [50, 90, 100]).round(2).tolist()}")


if __name__ == "__main__":
    main()
