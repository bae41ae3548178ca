"""PETS2 `.cif_pets` files (docs/PETS.md): reading with gemmi's CIF parser, validation, writing.

Geometry (verified on the real files, docs/PETS.md): UB columns are a*, b*, c* [Å⁻¹, no 2π]; frame i has
R_i = R_x(α_i) R_y(β_i) (active, degrees in the file), g_lab = R_i · UB · h, the electrons travel along lab −z and the
tabulated [uvw] satisfies A·uvw ∥ R_iᵀ ẑ with A = inv(UB)ᵀ (columns a, b, c).
"""
from __future__ import annotations

import dataclasses
import math
import re
import warnings
from pathlib import Path

import gemmi
import numpy as np

from jaxed.constants import energy_from_wavelength
from jaxed.errors import JaxedInputError
from jaxed.geometry import excitation_errors as _excitation_errors
from jaxed.geometry import rotation_x, rotation_y

__all__ = ["PetsData", "read_pets", "write_pets", "frame_rotation", "beam_uvw", "excitation_errors", "cell_from_ub"]

_FRAME_TAGS = ("id", "u", "v", "w", "precession_angle", "alpha", "beta", "omega", "scale")
_REFL_TAGS = ("index_h", "index_k", "index_l", "intensity_meas", "intensity_sigma", "zone_axis_id")


@dataclasses.dataclass(frozen=True, eq=False)
class PetsData:
    """Contents of a `.cif_pets` file (host arrays).

    Attributes:
        path: source file.  cell: (a, b, c [Å], α, β, γ [deg]).  wavelength: λ [Å].
        ub: (3, 3) [Å⁻¹], columns a*, b*, c* in the lab frame at zero tilt.
        frame_id: (n_frames,) ids of the file.  uvw: (n_frames, 3) zone axes.  precession_angle: (n_frames,) [deg]
            (the integration semi-angle for continuous rotation).  alpha, beta, omega: (n_frames,) [deg].
        frame_scale: (n_frames,) PETS's frame scale.
        hkl: (n_refl, 3) int.  intensity, sigma: (n_refl,) [counts].  frame_index: (n_refl,) 0-based frame.
        geometry: 'continuous rotation', 'precession', ...  details: parsed measurement details.
        energy_kev: accelerating voltage if the file states one, else None.
    """

    path: str
    cell: tuple
    wavelength: float
    ub: np.ndarray
    frame_id: np.ndarray
    uvw: np.ndarray
    precession_angle: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    omega: np.ndarray
    frame_scale: np.ndarray
    hkl: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    frame_index: np.ndarray
    geometry: str = "continuous rotation"
    details: dict = dataclasses.field(default_factory=dict)
    energy_kev: float | None = None

    @property
    def n_frames(self) -> int:
        return len(self.alpha)

    @property
    def n_refl(self) -> int:
        return len(self.intensity)

    def subset_frames(self, indices) -> "PetsData":
        """The chosen frames (0-based) and their reflections, frame_index renumbered."""
        indices = np.asarray(indices, dtype=int)
        remap = np.full(self.n_frames, -1)
        remap[indices] = np.arange(len(indices))
        keep = remap[self.frame_index] >= 0
        return dataclasses.replace(
            self, frame_id=self.frame_id[indices], uvw=self.uvw[indices], precession_angle=self.precession_angle[indices],
            alpha=self.alpha[indices], beta=self.beta[indices], omega=self.omega[indices],
            frame_scale=self.frame_scale[indices], hkl=self.hkl[keep], intensity=self.intensity[keep],
            sigma=self.sigma[keep], frame_index=remap[self.frame_index[keep]])


def frame_rotation(alpha_deg: float, beta_deg: float) -> np.ndarray:
    """R = R_x(α) R_y(β), (3, 3) (docs/PETS.md)."""
    return np.asarray(rotation_x(math.radians(alpha_deg)) @ rotation_y(math.radians(beta_deg)))


def beam_uvw(ub: np.ndarray, alpha_deg: float, beta_deg: float) -> np.ndarray:
    """Zone axis [uvw] (direct lattice, towards the source) of a frame, unit-normalised as a Cartesian direction."""
    direct = np.linalg.inv(np.asarray(ub)).T
    beam = frame_rotation(alpha_deg, beta_deg).T @ np.array([0.0, 0.0, 1.0])
    uvw = np.linalg.solve(direct, beam)
    return uvw / np.abs(uvw).max()


def excitation_errors(ub: np.ndarray, alpha_deg: float, beta_deg: float, hkl: np.ndarray, wavelength: float) -> np.ndarray:
    """s_g [Å⁻¹] of ``hkl`` (n, 3) in a frame: g_lab = R·UB·h, electrons along −z."""
    g = np.asarray(hkl, float) @ (frame_rotation(alpha_deg, beta_deg) @ np.asarray(ub)).T
    return np.asarray(_excitation_errors(g, 1.0 / wavelength))


def cell_from_ub(ub: np.ndarray) -> tuple:
    """(a, b, c [Å], α, β, γ [deg]) of the direct cell described by UB."""
    direct = np.linalg.inv(np.asarray(ub)).T
    a, b, c = (direct[:, i] for i in range(3))
    length = [float(np.linalg.norm(v)) for v in (a, b, c)]

    def angle(x, y):
        return float(np.degrees(np.arccos(np.clip(x @ y / np.linalg.norm(x) / np.linalg.norm(y), -1, 1))))

    return (*length, angle(b, c), angle(a, c), angle(a, b))


def _number(text: str, where: str) -> float:
    try:
        return float(gemmi.cif.as_number(text)) if text not in ("?", ".") else float("nan")
    except (RuntimeError, ValueError):
        raise JaxedInputError(f"{where}: '{text}' is not a number") from None


def _parse_details(text: str) -> tuple[str, dict]:
    details: dict = {}
    geometry = ""
    for line in text.replace("\r", "").splitlines():
        for part in re.split(r"(?<=\S)\s{2,}(?=[A-Za-z])", line.strip()):
            if ":" not in part:
                continue
            key, _, value = part.rpartition(":") if part.count(":") > 1 else part.partition(":")
            key = key.split(":")[-1].strip().lower()
            value = value.strip()
            try:
                details[key] = float(value)
            except ValueError:
                details[key] = value
            if key == "data collection geometry":
                geometry = value
    return geometry, details


def read_pets(path: str | Path, *, cell_tolerance: float = 0.01, drop_bad_sigma: bool = False) -> PetsData:
    """Read and validate a `.cif_pets` file; every problem is a one-line :class:`JaxedInputError`.

    Args:
        cell_tolerance: relative difference between the UB cell and ``_cell_*`` above which a warning is given
            (an error beyond 10×).
        drop_bad_sigma: drop reflections with σ ≤ 0 (with a warning) instead of refusing the file. The reference
            paper's synthetic sets contain a few σ = 0 rows (I = 0, σ = √I).
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise JaxedInputError(f"{where}: no such file")
    try:
        doc = gemmi.cif.read(str(path))
        block = doc.sole_block()
    except (RuntimeError, ValueError) as exc:
        raise JaxedInputError(f"{where}: not a readable CIF ({str(exc).splitlines()[0]})") from None

    def value(tag: str, required: bool = True) -> float | None:
        v = block.find_value(tag)
        if v is None:
            if required:
                raise JaxedInputError(f"{where}: missing {tag}")
            return None
        x = _number(v, f"{where}: {tag}")
        if not math.isfinite(x):
            raise JaxedInputError(f"{where}: {tag} = {v}: expected a finite number")
        return x

    cell = tuple(value(f"_cell_{t}") for t in ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta",
                                                 "angle_gamma"))
    wavelength = value("_diffrn_radiation_wavelength")
    if not wavelength > 0:
        raise JaxedInputError(f"{where}: _diffrn_radiation_wavelength = {wavelength}: expected > 0 [Å]")
    ub = np.array([[value(f"_diffrn_orient_matrix_UB_{i}{j}") for j in (1, 2, 3)] for i in (1, 2, 3)])
    if abs(np.linalg.det(ub)) < 1e-12:
        raise JaxedInputError(f"{where}: _diffrn_orient_matrix_UB is singular")
    details_text = block.find_value("_diffrn_measurement_details")
    geometry, details = _parse_details(gemmi.cif.as_string(details_text) if details_text else "")
    energy = None
    for tag in ("_diffrn_radiation_energy", "_diffrn_source_voltage"):
        v = value(tag, required=False)
        if v is not None:
            energy = v if tag.endswith("voltage") else v
    if energy is not None:
        expected = energy_from_wavelength(wavelength)
        if abs(expected - energy) / energy > 0.01:
            warnings.warn(f"{where}: wavelength {wavelength} Å means {expected:.1f} kV, the file states {energy} kV; "
                          "the wavelength is used", stacklevel=2)

    def table(prefix: str, tags: tuple, required: tuple) -> dict:
        names = [prefix + t for t in tags]
        missing = [n for n, t in zip(names, tags) if t in required and block.find_loop(n).get_loop() is None
                   and len(block.find_values(n)) == 0]
        if missing:
            raise JaxedInputError(f"{where}: missing {', '.join(missing)}")
        present = [n for n in names if len(block.find_values(n)) > 0]
        tab = block.find(present)
        out = {}
        for col, n in enumerate(present):
            text = list(tab.column(col))
            try:
                arr = np.array(text, dtype=np.float64)
            except ValueError:  # locate the offending row for the message
                for row_no, item in enumerate(text):
                    _number(item, f"{where}: {n} (row {row_no + 1})")
                raise
            if not np.all(np.isfinite(arr)):
                bad = int(np.argmax(~np.isfinite(arr)))
                raise JaxedInputError(f"{where}: {n}: non-finite value in row {bad + 1}")
            out[n[len(prefix):]] = arr
        return out

    frames = table("_diffrn_zone_axis_", _FRAME_TAGS, ("id", "alpha"))
    refl = table("_refln_", _REFL_TAGS, _REFL_TAGS)
    sigma = refl["intensity_sigma"]
    if np.any(sigma <= 0):
        bad = np.nonzero(sigma <= 0)[0]
        line = f"{where}: _refln_intensity_sigma ≤ 0 in {len(bad)} rows (first: row {bad[0] + 1})"
        if not drop_bad_sigma:
            raise JaxedInputError(line + "; expected σ > 0 (or drop them with --drop-bad-sigma)")
        warnings.warn(line + "; those reflections are dropped", stacklevel=2)
        good = sigma > 0
        refl = {k: v[good] for k, v in refl.items()}
        sigma = refl["intensity_sigma"]
    n_frames = len(frames["id"])
    zeros = np.zeros(n_frames)
    alpha = frames["alpha"]
    beta = frames.get("beta", zeros)
    uvw = (np.stack([frames["u"], frames["v"], frames["w"]], axis=1) if "u" in frames
           else np.array([beam_uvw(ub, a, b) for a, b in zip(alpha, beta)]))
    frame_id = frames["id"].astype(int)
    if len(set(frame_id.tolist())) != n_frames:
        raise JaxedInputError(f"{where}: _diffrn_zone_axis_id: duplicate frame ids")
    lookup = {f: i for i, f in enumerate(frame_id)}
    zone = refl["zone_axis_id"].astype(int)
    unknown = sorted(set(zone.tolist()) - set(lookup))
    if unknown:
        count = int(np.isin(zone, unknown).sum())
        raise JaxedInputError(f"{where}: _refln_zone_axis_id {unknown[0]} has no frame in _diffrn_zone_axis_id "
                              f"({count} reflections, {len(unknown)} unknown ids)")
    ub_cell = cell_from_ub(ub)
    rel = max(abs(x - y) / y for x, y in zip(ub_cell[:3], cell[:3]))
    ang = max(abs(x - y) for x, y in zip(ub_cell[3:], cell[3:]))
    if rel > cell_tolerance or ang > 100 * cell_tolerance:
        line = (f"{where}: the UB cell ({', '.join(f'{x:.4f}' for x in ub_cell)}) differs from _cell_* by "
                f"{100 * rel:.2f} % / {ang:.2f}°")
        if rel > 10 * cell_tolerance or ang > 1000 * cell_tolerance:
            raise JaxedInputError(line + "; expected agreement within a few %")
        warnings.warn(line + "; the UB is used for the geometry", stacklevel=2)
    hkl = np.stack([refl["index_h"], refl["index_k"], refl["index_l"]], axis=1)
    if np.any(hkl != np.rint(hkl)):
        raise JaxedInputError(f"{where}: _refln_index_*: expected integer Miller indices")
    return PetsData(
        path=where, cell=cell, wavelength=wavelength, ub=ub, frame_id=frame_id, uvw=uvw,
        precession_angle=frames.get("precession_angle", zeros), alpha=alpha, beta=beta,
        omega=frames.get("omega", zeros), frame_scale=frames.get("scale", np.ones(n_frames)),
        hkl=np.rint(hkl).astype(int), intensity=refl["intensity_meas"], sigma=sigma,
        frame_index=np.array([lookup[z] for z in zone], dtype=int), geometry=geometry or "continuous rotation",
        details=details, energy_kev=energy)


def write_pets(path: str | Path, data: PetsData) -> None:
    """Write ``data`` as a `.cif_pets` that :func:`read_pets` reads back unchanged (to the printed precision)."""
    lines = ["data_pets"]
    for tag, v in zip(("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma"), data.cell):
        lines.append(f"_cell_{tag} {v:.6f}")
    lines.append(f"_diffrn_radiation_wavelength {data.wavelength:.8f}")
    for i in range(3):
        for j in range(3):
            lines.append(f"_diffrn_orient_matrix_UB_{i + 1}{j + 1} {data.ub[i, j]:.10f}")
    lines += ["_diffrn_measurement_details", ";", f"data collection geometry: {data.geometry}"]
    for key, v in data.details.items():
        if key != "data collection geometry":
            lines.append(f"{key}: {v}")
    lines += [";", "", "loop_"] + [f"_diffrn_zone_axis_{t}" for t in _FRAME_TAGS]
    for i in range(data.n_frames):
        u, v, w = data.uvw[i]
        lines.append(f"{data.frame_id[i]} {u:.6f} {v:.6f} {w:.6f} {data.precession_angle[i]:.6f} {data.alpha[i]:.6f} "
                     f"{data.beta[i]:.6f} {data.omega[i]:.6f} {data.frame_scale[i]:.6f}")
    lines += ["", "loop_"] + [f"_refln_{t}" for t in _REFL_TAGS]
    for (h, k, l), i_, s, f in zip(data.hkl, data.intensity, data.sigma, data.frame_index):
        lines.append(f"{h} {k} {l} {i_:.6f} {s:.6f} {data.frame_id[f]}")
    Path(path).write_text("\n".join(lines) + "\n")
