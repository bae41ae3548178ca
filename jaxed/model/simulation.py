"""Simulation of zone-axis / arbitrary-direction diffraction patterns (the `jaxed simulate` job)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxed.physics.bloch import BlochSettings, simulate
from jaxed.physics.crystal import AtomParams, Crystal
from jaxed.errors import JaxedInputError
from jaxed.physics.geometry import hkl_within, excitation_errors, make_beam_set, select_beams, zone_axis_rotation

__all__ = ["PatternResult", "simulate_directions", "read_beam_directions", "write_pattern_csv"]


@dataclasses.dataclass(frozen=True)
class PatternResult:
    """Intensities of every beam in the calculation, frame by frame (host arrays).

    Attributes:
        frame: (n_rows,) int, 0-based index of the beam direction.
        hkl: (n_rows, 3) int.  sg: (n_rows,) excitation error [Å⁻¹].
        intensity: (n_rows, n_t) relative to a unit incident beam.
    """

    frame: np.ndarray
    hkl: np.ndarray
    sg: np.ndarray
    intensity: np.ndarray


def read_beam_directions(path: str | Path) -> np.ndarray:
    """Read one 'u v w' per line (blank lines and '#' comments ignored), (n, 3) [direct-lattice coordinates]."""
    path = Path(path)
    if not path.is_file():
        raise JaxedInputError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.replace(",", " ").split()
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise JaxedInputError(f"{path}:{number}: expected three numbers 'u v w', got '{text}'") from None
        if len(values) != 3 or not np.all(np.isfinite(values)):
            raise JaxedInputError(f"{path}:{number}: expected three finite numbers 'u v w', got '{text}'")
        if not any(values):
            raise JaxedInputError(f"{path}:{number}: zero beam direction")
        rows.append(values)
    if not rows:
        raise JaxedInputError(f"{path}: no beam directions (expected one 'u v w' per line)")
    return np.array(rows)


def simulate_directions(crystal: Crystal, atoms: AtomParams, uvws: np.ndarray, thickness, settings: BlochSettings,
                        g_max: float = 1.5, sg_max: float = 0.02, normal=None) -> PatternResult:
    """Dynamical intensities for crystal orientations given as zone axes [uvw] (pointing towards the source).

    Args:
        uvws: (n_frames, 3) beam directions in direct-lattice coordinates.
        thickness: scalar or (n_t,) [Å] along the surface normal (default normal: along the beam).
        settings: physics settings.  g_max, sg_max: beam selection [Å⁻¹].

    Returns:
        one row per beam of every frame, the direct beam included.
    """
    thickness = np.atleast_1d(np.asarray(thickness, dtype=np.float64))
    if thickness.ndim != 1 or not np.all(np.isfinite(thickness)) or np.any(thickness <= 0):
        raise JaxedInputError(f"thickness {thickness.tolist()}: expected positive values [Å]")
    if not (g_max > 0 and sg_max > 0):
        raise JaxedInputError(f"g_max = {g_max}, sg_max = {sg_max}: expected positive values [1/Å]")
    direct, reciprocal = np.asarray(crystal.direct), np.asarray(crystal.reciprocal)
    rotations = np.stack([zone_axis_rotation(uvw, direct) for uvw in np.atleast_2d(uvws)])
    candidates = hkl_within(reciprocal, g_max)
    beams_per_frame = [select_beams(reciprocal, r, settings.k, g_max, sg_max, candidates=candidates) for r in rotations]
    beams = make_beam_set(beams_per_frame)
    dtype = atoms.frac.dtype
    intensity = np.asarray(jax.jit(simulate, static_argnames="settings")(
        atoms, crystal, beams, jnp.asarray(rotations, dtype), jnp.asarray(thickness, dtype), settings,
        None if normal is None else jnp.asarray(normal, dtype)))
    frames, hkls, sgs, values = [], [], [], []
    for f, hkl in enumerate(beams_per_frame):
        g_lab = hkl @ (rotations[f] @ reciprocal).T
        frames.append(np.full(len(hkl), f))
        hkls.append(hkl)
        sgs.append(np.asarray(excitation_errors(g_lab, settings.k)))
        values.append(intensity[f, :, : len(hkl)].T)
    return PatternResult(np.concatenate(frames), np.concatenate(hkls), np.concatenate(sgs), np.concatenate(values))


def write_pattern_csv(path: str | Path, result: PatternResult) -> None:
    """CSV with header ``frame,h,k,l,sg,intensity`` (one intensity column per thickness, suffixed when several)."""
    n_t = result.intensity.shape[1]
    names = ["intensity"] if n_t == 1 else [f"intensity_{j}" for j in range(n_t)]
    lines = [",".join(["frame", "h", "k", "l", "sg", *names])]
    for f, (h, k, l), s, row in zip(result.frame, result.hkl, result.sg, result.intensity):
        lines.append(f"{f},{h},{k},{l},{s:.8g}," + ",".join(f"{x:.10g}" for x in row))
    Path(path).write_text("\n".join(lines) + "\n")
