"""PETS2 `.cif_pets` files (docs/PETS.md): reading with gemmi's CIF parser, validation, writing, frame geometry.

Geometry (verified on the real files, docs/PETS.md): UB columns are a*, b*, c* [Å⁻¹, no 2π] in the lab frame at zero
tilt; frame i has R_i = R_x(α_i) R_y(β_i) (active, right-handed, degrees in the file) and g_lab = R_i · UB · h; the
electrons travel along lab −z, so s_g = g_z − |g|²/(2K) with K = 1/λ; the tabulated zone axis [uvw] satisfies
A·uvw ∥ R_iᵀ ẑ with A = inv(UB)ᵀ (columns a, b, c): it points from the crystal towards the source.

This module is numpy only (host side). Angles are degrees here because the file states them in degrees; they are
converted to radians once, in :func:`frame_rotation`, and the rotations themselves are those of
:mod:`jaxed.physics.geometry` (radians), as are the excitation errors (:func:`jaxed.physics.geometry.excitation_errors`).

Every problem with a file is a :class:`~jaxed.errors.JaxedInputError` with a one-line message naming the file and
the tag (or loop row) at fault. Soft inconsistencies (UB cell vs ``_cell_*``, wavelength vs a stated voltage, a
tabulated [uvw] off the UB geometry) are one-line :class:`UserWarning`\\ s.
"""
from __future__ import annotations

import dataclasses
import math
import re
import warnings
from pathlib import Path

import gemmi
import numpy as np

from jaxed.errors import JaxedInputError
from jaxed.physics.constants import wavelength as _wavelength_from_kv
from jaxed.physics.geometry import rotation_x, rotation_y

__all__ = [
    "PetsData",
    "read_pets",
    "write_pets",
    "frame_rotation",
    "beam_uvw",
    "cell_from_ub",
    "check_cell_match",
]

_CELL_TAGS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_UB_TAGS = tuple(f"_diffrn_orient_matrix_UB_{i}{j}" for i in (1, 2, 3) for j in (1, 2, 3))
_FRAME_PREFIX = "_diffrn_zone_axis_"
_FRAME_TAGS = ("id", "u", "v", "w", "precession_angle", "alpha", "beta", "omega", "scale")
_FRAME_OPTIONAL = {"omega": 0.0, "scale": 1.0}  # absent column → this value for every frame
_REFL_PREFIX = "_refln_"
_REFL_TAGS = ("index_h", "index_k", "index_l", "intensity_meas", "intensity_sigma", "zone_axis_id")
_GEOMETRY_KEY = "data collection geometry"
_VOLTAGE_TAG = "_diffrn_source_voltage"  # CIF core, [kV]
_VOLTAGE_DETAIL_KEYS = ("voltage", "accelerating voltage", "high tension", "energy")  # in the details text, [kV]
_UVW_WARN_DEG = 0.1  # tabulated [uvw] vs the UB geometry: the real files agree to < 0.01°


# ----------------------------------------------------------------------------------------------------------------
# Geometry (numpy, pure)
# ----------------------------------------------------------------------------------------------------------------

def frame_rotation(alpha_deg, beta_deg) -> np.ndarray:
    """Orientation of a PETS frame, R = R_x(α) · R_y(β), from the file's angles α, β [deg] (the only degree → radian
    conversion of the frame geometry); (3, 3), or (..., 3, 3) for arrays of one shape.

    g_lab = R · UB · h is the reciprocal vector of h in the lab frame of that frame [Å⁻¹].
    """
    alpha = np.deg2rad(np.asarray(alpha_deg, np.float64))
    beta = np.deg2rad(np.asarray(beta_deg, np.float64))
    return rotation_x(alpha) @ rotation_y(beta)


def beam_uvw(ub: np.ndarray, alpha_deg, beta_deg) -> np.ndarray:
    """Zone axis [uvw] of a frame in direct-lattice coordinates, scaled so that its largest component is ±1.

    It solves A·uvw = R_iᵀ ẑ with A = inv(UB)ᵀ (columns a, b, c [Å]): the lab +z axis (towards the source) expressed
    in the crystal at the frame's orientation. This is PETS2's convention for the tabulated [uvw].

    Args:
        ub: (3, 3) [Å⁻¹], columns a*, b*, c*.
        alpha_deg, beta_deg: goniometer tilt α and tilt correction β [deg]; scalars or arrays of one shape.

    Returns:
        (3,) for scalar angles, (..., 3) for arrays [–].
    """
    ub = np.asarray(ub, dtype=np.float64)
    beam_lab = np.swapaxes(frame_rotation(alpha_deg, beta_deg), -1, -2)[..., :, 2]  # R_iᵀ ẑ
    uvw = beam_lab @ ub  # inv(A) = UBᵀ, so uvw = UBᵀ · (Rᵀ ẑ), written for row vectors
    return uvw / np.max(np.abs(uvw), axis=-1, keepdims=True)


def cell_from_ub(ub: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """Direct cell (a, b, c [Å], α, β, γ [deg]) of the lattice whose reciprocal basis is the columns of UB."""
    direct = np.linalg.inv(np.asarray(ub, dtype=np.float64)).T  # columns a, b, c
    a, b, c = direct.T
    lengths = [float(np.linalg.norm(v)) for v in (a, b, c)]

    def angle(x: np.ndarray, y: np.ndarray) -> float:
        cos = x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))

    return (lengths[0], lengths[1], lengths[2], angle(b, c), angle(a, c), angle(a, b))


def _cell_difference(cell, reference) -> tuple[float, float]:
    """(largest relative length difference [–], largest angle difference [deg]) of two cells."""
    x = np.asarray(cell, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(x[:3] - y[:3]) / y[:3])), float(np.max(np.abs(x[3:] - y[3:])))


def _fmt_cell(cell) -> str:
    return ", ".join(f"{v:.4f}" for v in cell[:3]) + ", " + ", ".join(f"{v:.3f}" for v in cell[3:])


def check_cell_match(structure_cell, data_cell, tolerance: float = 0.02) -> str:
    """Compare a structure's cell with a data set's; return a one-line summary, raise beyond ``tolerance``.

    Lengths are compared relatively (|Δa|/a_data ≤ tolerance); angles absolutely in degrees, with an allowance of
    ``100 × tolerance`` [deg] (0.02 → 2°). Cells are compared as given (same setting, same order of axes).

    Raises:
        JaxedInputError: when either limit is exceeded.
    """
    rel, dang = _cell_difference(structure_cell, data_cell)
    line = (f"cell of the structure ({_fmt_cell(structure_cell)}) vs the data ({_fmt_cell(data_cell)}): "
            f"lengths differ by {100 * rel:.2f} % at most, angles by {dang:.3f}° at most")
    if rel > tolerance or dang > 100 * tolerance:
        raise JaxedInputError(f"{line}; expected within {100 * tolerance:.2g} % and {100 * tolerance:.3g}°")
    return line


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class PetsData:
    """Contents of a `.cif_pets` file: frames (virtual frames of PETS2) and the reflections listed in each.

    Attributes:
        path: the source file (or a label such as ``'<synthetic>'``).
        cell: (a, b, c [Å], α, β, γ [deg]) from ``_cell_*``.
        wavelength: λ [Å].
        ub: (3, 3) [Å⁻¹], columns a*, b*, c* in the lab frame at zero tilt (no 2π).
        frame_id: (n_frames,) int, the file's ``_diffrn_zone_axis_id``.
        uvw: (n_frames, 3) tabulated zone axes [–] (towards the source; see :func:`beam_uvw`).
        precession_angle: (n_frames,) [deg]; for continuous rotation, the integration semi-angle of the frame.
        alpha: (n_frames,) goniometer tilt about lab x [deg].  beta: (n_frames,) tilt correction about y [deg].
        omega: (n_frames,) azimuth of the tilt axis on the detector [deg] (does not change excitation errors).
        frame_scale: (n_frames,) PETS2's frame scale [–].
        hkl: (n_refl, 3) int.  intensity: (n_refl,) [counts], may be negative.  sigma: (n_refl,) [counts], > 0.
        frame_index: (n_refl,) int, 0-based index into the frame arrays (from ``_refln_zone_axis_id``).
        geometry: ``'continuous rotation'``, ``'precession'`` or as the file states it.
        details: the other ``key: value`` items of ``_diffrn_measurement_details`` (floats where numeric), e.g.
            ``dstarmax`` [Å⁻¹], ``RC width`` [Å⁻¹], ``mosaicity`` [deg], ``rotation axis position`` [deg],
            ``reflection size`` [px], ``number of merged frames``, ``step between frames``.
        energy_kev: accelerating voltage [kV] if the file states one (``_diffrn_source_voltage``), else None.
        pets_omega: ``_diffrn_pets_omega`` [deg] if present, else None.
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
    pets_omega: float | None = None

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("cell", tuple(float(x) for x in self.cell))
        put("wavelength", float(self.wavelength))
        put("ub", np.asarray(self.ub, dtype=np.float64).reshape(3, 3))
        put("frame_id", np.asarray(self.frame_id, dtype=np.int64).reshape(-1))
        n = len(self.frame_id)
        put("uvw", np.asarray(self.uvw, dtype=np.float64).reshape(n, 3))
        for name in ("precession_angle", "alpha", "beta", "omega", "frame_scale"):
            arr = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if arr.shape != (n,):
                raise ValueError(f"PetsData.{name}: expected {n} values (one per frame), got {arr.shape[0]}")
            put(name, arr)
        put("hkl", np.asarray(self.hkl, dtype=np.int64).reshape(-1, 3))
        m = len(self.hkl)
        for name, dtype in (("intensity", np.float64), ("sigma", np.float64), ("frame_index", np.int64)):
            arr = np.asarray(getattr(self, name), dtype=dtype).reshape(-1)
            if arr.shape != (m,):
                raise ValueError(f"PetsData.{name}: expected {m} values (one per reflection), got {arr.shape[0]}")
            put(name, arr)
        if m and (self.frame_index.min() < 0 or self.frame_index.max() >= n):
            raise ValueError(f"PetsData.frame_index: expected values in [0, {n}), got "
                             f"[{self.frame_index.min()}, {self.frame_index.max()}]")
        put("details", dict(self.details))

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return len(self.frame_id)

    @property
    def n_refl(self) -> int:
        """Number of observations (frame × hkl rows)."""
        return len(self.hkl)

    def rotations(self) -> np.ndarray:
        """Frame orientations R_i = R_x(α_i) R_y(β_i), (n_frames, 3, 3)."""
        return frame_rotation(self.alpha, self.beta)

    def subset_frames(self, indices) -> "PetsData":
        """The chosen frames (0-based indices, negative ones count from the end, in the given order) and their
        reflections, frame_index renumbered. Reflections keep their file order; frame ids are kept.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < -self.n_frames or indices.max() >= self.n_frames):
            raise JaxedInputError(f"{self.path}: frame indices {indices.min()}..{indices.max()} out of range "
                                  f"for {self.n_frames} frames (0-based)")
        indices = indices % max(self.n_frames, 1)
        if len(np.unique(indices)) != len(indices):
            raise JaxedInputError(f"{self.path}: frame indices must not repeat")
        remap = np.full(self.n_frames, -1, dtype=np.int64)
        remap[indices] = np.arange(len(indices))
        new_index = remap[self.frame_index]
        keep = new_index >= 0
        return dataclasses.replace(
            self, frame_id=self.frame_id[indices], uvw=self.uvw[indices],
            precession_angle=self.precession_angle[indices], alpha=self.alpha[indices], beta=self.beta[indices],
            omega=self.omega[indices], frame_scale=self.frame_scale[indices], hkl=self.hkl[keep],
            intensity=self.intensity[keep], sigma=self.sigma[keep], frame_index=new_index[keep])


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------

def _parse_number(text: str) -> float:
    """A CIF numeric value (standard uncertainty in brackets allowed) or NaN for '?' / '.'; raises ValueError."""
    if text in ("?", "."):
        return float("nan")
    return float(re.sub(r"\(\d+\)$", "", gemmi.cif.as_string(text)))


def _parse_details(text: str) -> tuple[str, dict]:
    """(geometry, {key: value}) from the free text of ``_diffrn_measurement_details``.

    Each line holds ``key: value``; a line may carry a group label first (``Virtual frame settings: number of
    merged frames: 6``), in which case the last key is used. Numeric values become floats.
    """
    geometry, details = "", {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(":")]
        if len(parts) < 2 or not parts[-2]:
            continue
        key, value = re.sub(r"\s+", " ", parts[-2]), parts[-1]
        try:
            parsed: float | str = float(value)
        except ValueError:
            parsed = value
        if key.lower() == _GEOMETRY_KEY:
            geometry = value
        else:
            details[key] = parsed
    return geometry, details


def _check_rotation_width(where: str, geometry: str, details: dict, frame_id, alpha, semi) -> None:
    """Warn when a 'continuous rotation' file's per-frame angle is not the half-width its virtual frames span.

    A virtual frame of m raw frames, s raw frames apart from the next, spans m·Δα/s for a tilt step Δα between
    virtual frames, so its semi-angle is m·Δα/(2s) (CsPbBr₃: 6·2.0°/8 = 1.5°, as listed). A listed angle far from
    that is not a rotation range — a precession series exported with the continuous-rotation label (the paracetamol
    file: 1 frame, step 1, Δα ≈ 1.5°, angle 1.4° — a precession cone, tests/test_precession.py)."""
    merged, step = details.get("number of merged frames"), details.get("step between frames")
    if "rotation" not in geometry.lower() or not isinstance(merged, float) or not isinstance(step, float):
        return
    order = np.argsort(frame_id)
    d_alpha = np.abs(np.diff(np.asarray(alpha, float)[order]))
    if merged < 1 or step < 1 or len(d_alpha) < 2 or not np.all(np.isfinite(semi)):
        return
    spacing = float(np.median(d_alpha))
    implied, listed = merged * spacing / (2 * step), float(np.median(np.abs(semi)))
    if implied > 0 and not 1 / 1.5 <= listed / implied <= 1.5:
        warnings.warn(f"{where}: the measurement details say '{geometry}' with {merged:g} merged frame(s), step "
                      f"{step:g}, so frames {spacing:.2f}° apart span ±{implied:.2f}°, but "
                      f"{_FRAME_PREFIX}precession_angle is {listed:g}°: a precession series? (--geometry precession "
                      "integrates over a cone)", stacklevel=3)


class _Reader:
    """Holds the file name and the block so that every message names them the same way."""

    def __init__(self, path: Path):
        self.where = str(path)
        if not path.is_file():
            raise JaxedInputError(f"{self.where}: no such file")
        try:
            doc = gemmi.cif.read(str(path))
        except (RuntimeError, ValueError, IndexError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            found = re.search(r":(\d+):\d+(?:\(\d+\))?:\s*(.*)$", msg)
            detail = f"line {found.group(1)}: {found.group(2)}" if found else msg
            raise JaxedInputError(f"{self.where}: not a readable CIF ({detail})") from None
        if len(doc) == 0:
            raise JaxedInputError(f"{self.where}: not a readable CIF (no data_ block); expected a PETS2 .cif_pets")
        blocks = [b for b in doc if len(b.find_values(_REFL_PREFIX + "index_h")) > 0]
        self.block = blocks[0] if blocks else doc[0]

    def has(self, tag: str) -> bool:
        return len(self.block.find_values(tag)) > 0

    def require(self, tags) -> None:
        missing = [t for t in tags if not self.has(t)]
        if missing:
            raise JaxedInputError(f"{self.where}: missing {', '.join(missing)}; expected a PETS2 .cif_pets")

    def scalar(self, tag: str) -> float:
        values = self.block.find_values(tag)
        if len(values) != 1:
            raise JaxedInputError(f"{self.where}: {tag}: expected one value, got {len(values)}")
        try:
            x = _parse_number(values[0])
        except ValueError:
            raise JaxedInputError(f"{self.where}: {tag} = {values[0]!r}: expected a number") from None
        if not math.isfinite(x):
            raise JaxedInputError(f"{self.where}: {tag} = {values[0]!r}: expected a finite number")
        return x

    def column(self, tag: str) -> np.ndarray:
        """A loop column as float64; every value must be a finite number."""
        text = list(self.block.find_values(tag))
        try:
            arr = np.array(text, dtype=np.float64)
        except ValueError:
            arr = np.empty(len(text))
            for row, item in enumerate(text):
                try:
                    arr[row] = _parse_number(item)
                except ValueError:
                    raise JaxedInputError(f"{self.where}: {tag}, loop row {row + 1}: {item!r} is not a number") \
                        from None
        bad = np.nonzero(~np.isfinite(arr))[0]
        if len(bad):
            raise JaxedInputError(f"{self.where}: {tag}: {len(bad)} non-finite value(s), first in loop row "
                                  f"{bad[0] + 1} ({text[bad[0]]!r}); expected finite numbers")
        return arr

    def integers(self, tag: str, arr: np.ndarray) -> np.ndarray:
        """``arr`` (the parsed column ``tag``) as int64; every value must be a whole number."""
        bad = np.nonzero(arr != np.rint(arr))[0]
        if len(bad):
            raise JaxedInputError(f"{self.where}: {tag}, loop row {bad[0] + 1}: {arr[bad[0]]!r}; expected an integer")
        return np.rint(arr).astype(np.int64)

    def loop(self, prefix: str, tags, optional: dict | None = None) -> dict:
        optional = optional or {}
        self.require([prefix + t for t in tags if t not in optional])
        cols = {t: self.column(prefix + t) for t in tags if self.has(prefix + t)}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) != 1:
            raise JaxedInputError(f"{self.where}: the {prefix}* columns have different lengths {sorted(lengths)}; "
                                  "expected one loop")
        n = lengths.pop()
        for t, default in optional.items():
            cols.setdefault(t, np.full(n, default))
        return cols


def read_pets(path: str | Path, *, cell_tolerance: float = 0.01, drop_bad_sigma: bool = False) -> PetsData:
    """Read and validate a PETS2 `.cif_pets` file (LF or CRLF line ends).

    Args:
        path: the file.
        cell_tolerance: allowed difference between the cell of the UB matrix and ``_cell_*``: relative on lengths,
            ``100 × cell_tolerance`` [deg] on angles. Beyond it a one-line warning (the UB is used for the
            geometry); beyond 10× it a :class:`JaxedInputError`.
        drop_bad_sigma: drop reflections with σ ≤ 0 with a warning instead of refusing the file (the reference
            paper's synthetic sets contain a few σ = 0 rows with I = 0).

    Returns:
        :class:`PetsData`.

    Raises:
        JaxedInputError: a missing or unreadable file, missing tags, non-numeric or non-finite values, σ ≤ 0,
            reflections of unknown frames, duplicate frame ids, a singular UB or a UB far from the cell.
    """
    path = Path(path)
    r = _Reader(path)
    where = r.where

    r.require(_CELL_TAGS + ("_diffrn_radiation_wavelength",) + _UB_TAGS)
    cell = tuple(r.scalar(t) for t in _CELL_TAGS)
    if min(cell[:3]) <= 0 or not all(0 < x < 180 for x in cell[3:]):
        raise JaxedInputError(f"{where}: _cell_*: ({_fmt_cell(cell)}): expected positive lengths [Å] and angles in "
                              "(0, 180) [deg]")
    lam = r.scalar("_diffrn_radiation_wavelength")
    if lam <= 0:
        raise JaxedInputError(f"{where}: _diffrn_radiation_wavelength = {lam}: expected > 0 [Å]")
    ub = np.array([r.scalar(t) for t in _UB_TAGS]).reshape(3, 3)
    if abs(np.linalg.det(ub)) < 1e-12:
        raise JaxedInputError(f"{where}: _diffrn_orient_matrix_UB_ij: the matrix is singular; expected columns "
                              "a*, b*, c* [Å⁻¹]")
    pets_omega = r.scalar("_diffrn_pets_omega") if r.has("_diffrn_pets_omega") else None

    details_text = r.block.find_value("_diffrn_measurement_details")
    geometry, details = _parse_details(gemmi.cif.as_string(details_text) if details_text else "")

    # the cell of the UB must describe the same lattice as _cell_*
    ub_cell = cell_from_ub(ub)
    rel, dang = _cell_difference(ub_cell, cell)
    if rel > cell_tolerance or dang > 100 * cell_tolerance:
        line = (f"{where}: the UB cell ({_fmt_cell(ub_cell)}) differs from _cell_* ({_fmt_cell(cell)}) by "
                f"{100 * rel:.2f} % in length and {dang:.3f}° in angle")
        if rel > 10 * cell_tolerance or dang > 1000 * cell_tolerance:
            raise JaxedInputError(f"{line}; expected agreement within {1000 * cell_tolerance:.3g} % / "
                                  f"{1000 * cell_tolerance:.3g}°")
        warnings.warn(f"{line} (tolerance {100 * cell_tolerance:.3g} %); the UB is used for the geometry",
                      stacklevel=2)

    # an accelerating voltage, if the file states one, must agree with the wavelength
    energy = None
    if r.has(_VOLTAGE_TAG):
        energy, source = r.scalar(_VOLTAGE_TAG), _VOLTAGE_TAG
    else:
        for key, value in details.items():
            if key.lower() in _VOLTAGE_DETAIL_KEYS and isinstance(value, float):
                energy, source = value, f"_diffrn_measurement_details '{key}'"
                break
    if energy is not None:
        if not energy > 0:
            raise JaxedInputError(f"{where}: {source} = {energy}: expected a voltage > 0 [kV]")
        expected = _wavelength_from_kv(energy)
        if abs(expected - lam) / lam > 0.005:
            warnings.warn(f"{where}: {source} = {energy:g} kV means λ = {expected:.5f} Å but "
                          f"_diffrn_radiation_wavelength = {lam:.5f} Å; the wavelength is used", stacklevel=2)

    # frames
    frames = r.loop(_FRAME_PREFIX, _FRAME_TAGS, _FRAME_OPTIONAL)
    frame_id = r.integers(_FRAME_PREFIX + "id", frames["id"])
    ids, counts = np.unique(frame_id, return_counts=True)
    if np.any(counts > 1):
        raise JaxedInputError(f"{where}: {_FRAME_PREFIX}id {ids[counts > 1][0]} appears {counts[counts > 1][0]} "
                              "times; expected unique frame ids")
    uvw = np.stack([frames["u"], frames["v"], frames["w"]], axis=1)
    if np.any(np.all(uvw == 0, axis=1)):
        row = int(np.nonzero(np.all(uvw == 0, axis=1))[0][0])
        raise JaxedInputError(f"{where}: {_FRAME_PREFIX}u/v/w, loop row {row + 1}: [0 0 0]; expected a direction")
    computed = beam_uvw(ub, frames["alpha"], frames["beta"])
    cos = np.einsum("ij,ij->i", uvw @ np.linalg.inv(ub), computed @ np.linalg.inv(ub))  # A·uvw = inv(UB)ᵀ·uvw
    cos /= np.linalg.norm(uvw @ np.linalg.inv(ub), axis=1) * np.linalg.norm(computed @ np.linalg.inv(ub), axis=1)
    off = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    if off.max() > _UVW_WARN_DEG:
        worst = int(np.argmax(off))
        warnings.warn(f"{where}: {_FRAME_PREFIX}u/v/w of frame {frame_id[worst]} is {off[worst]:.3f}° from the beam "
                      f"given by UB, alpha, beta ({int(np.sum(off > _UVW_WARN_DEG))} frames beyond "
                      f"{_UVW_WARN_DEG}°); the UB geometry is used", stacklevel=2)

    _check_rotation_width(where, geometry or "continuous rotation", details, frame_id, frames["alpha"],
                          frames["precession_angle"])

    # reflections
    refl = r.loop(_REFL_PREFIX, _REFL_TAGS)
    hkl = np.stack([r.integers(_REFL_PREFIX + t, refl[t]) for t in ("index_h", "index_k", "index_l")], axis=1)
    zone = r.integers(_REFL_PREFIX + "zone_axis_id", refl["zone_axis_id"])
    intensity, sigma = refl["intensity_meas"], refl["intensity_sigma"]
    unknown = ~np.isin(zone, frame_id)
    if np.any(unknown):
        first = int(zone[unknown][0])
        others = len(set(zone[unknown].tolist())) - 1
        raise JaxedInputError(
            f"{where}: _refln_zone_axis_id {first} has no frame in {_FRAME_PREFIX}id ({int(np.sum(zone == first))} "
            f"reflections" + (f"; {others} more unknown ids, {int(unknown.sum())} reflections in all" if others else "")
            + ")")
    by_id = np.argsort(frame_id)
    frame_index = by_id[np.searchsorted(frame_id, zone, sorter=by_id)]

    bad = np.nonzero(sigma <= 0)[0]
    if len(bad):
        line = (f"{where}: _refln_intensity_sigma ≤ 0 in {len(bad)} rows (first: loop row {bad[0] + 1}, "
                f"hkl {tuple(int(x) for x in hkl[bad[0]])}, σ = {sigma[bad[0]]:g})")
        if not drop_bad_sigma:
            raise JaxedInputError(f"{line}; expected σ > 0 (drop_bad_sigma=True / --drop-bad-sigma drops them)")
        warnings.warn(f"{line}; those reflections are dropped", stacklevel=2)
        keep = sigma > 0
        hkl, intensity, sigma, frame_index = hkl[keep], intensity[keep], sigma[keep], frame_index[keep]

    return PetsData(
        path=where, cell=cell, wavelength=lam, ub=ub, frame_id=frame_id, uvw=uvw,
        precession_angle=frames["precession_angle"], alpha=frames["alpha"], beta=frames["beta"],
        omega=frames["omega"], frame_scale=frames["scale"], hkl=hkl, intensity=intensity, sigma=sigma,
        frame_index=frame_index, geometry=geometry or "continuous rotation", details=details, energy_kev=energy,
        pets_omega=pets_omega)


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------

def _num(x) -> str:
    """Shortest text that reads back as the same float64 (exact round trip)."""
    return repr(float(x))


def _table(rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    return [" ".join(item.rjust(w) for item, w in zip(row, widths)) for row in rows]


def write_pets(path: str | Path, data: PetsData) -> None:
    """Write ``data`` as a PETS2-style `.cif_pets` (LF line ends) that :func:`read_pets` reads back unchanged.

    Floats are written with the shortest repr that reads back to the same float64, so the round trip is exact.
    ``details`` become ``key: value`` lines of ``_diffrn_measurement_details``; ``energy_kev`` is written as
    ``_diffrn_source_voltage`` [kV].

    Raises:
        JaxedInputError: no reflections (a CIF loop cannot be empty), or a details key or value that cannot be
            written as one ``key: value`` line.
    """
    if data.n_refl == 0:
        raise JaxedInputError(f"{path}: no reflections to write; expected at least one (a CIF loop cannot be empty)")
    out = ["data_pets"]
    out += [f"{tag} {_num(v)}" for tag, v in zip(_CELL_TAGS, data.cell)]
    out.append(f"_diffrn_radiation_wavelength {_num(data.wavelength)}")
    if data.energy_kev is not None:
        out.append(f"{_VOLTAGE_TAG} {_num(data.energy_kev)}")
    out += [f"{tag} {_num(v)}" for tag, v in zip(_UB_TAGS, np.asarray(data.ub).reshape(-1))]
    if data.pets_omega is not None:
        out.append(f"_diffrn_pets_omega {_num(data.pets_omega)}")

    lines = [f"{_GEOMETRY_KEY}: {data.geometry}"]
    for key, value in data.details.items():
        text = _num(value) if isinstance(value, (float, int, np.floating, np.integer)) else str(value)
        if ":" in str(key) or "\n" in str(key) + text or "\r" in str(key) + text or not str(key).strip():
            raise JaxedInputError(f"{path}: details item {key!r}: {text!r}; expected a key without ':' and one-line "
                                  "values")
        lines.append(f"{key}: {text}")
    if any(line.startswith(";") for line in lines) or ":" in data.geometry or "\n" in data.geometry:
        raise JaxedInputError(f"{path}: geometry {data.geometry!r} or a details line cannot be written in a CIF "
                              "text field")
    out += ["_diffrn_measurement_details", ";", *lines, ";", ""]

    out += ["loop_", *[_FRAME_PREFIX + t for t in _FRAME_TAGS]]
    out += _table([[str(int(data.frame_id[i])), *(_num(x) for x in data.uvw[i]), _num(data.precession_angle[i]),
                    _num(data.alpha[i]), _num(data.beta[i]), _num(data.omega[i]), _num(data.frame_scale[i])]
                   for i in range(data.n_frames)])
    out += ["", "loop_", *[_REFL_PREFIX + t for t in _REFL_TAGS]]
    zone = data.frame_id[data.frame_index]
    out += _table([[str(int(h)), str(int(k)), str(int(l)), _num(i_), _num(s), str(int(z))]
                   for (h, k, l), i_, s, z in zip(data.hkl.tolist(), data.intensity.tolist(), data.sigma.tolist(),
                                                  zone.tolist())])
    Path(path).write_text("\n".join(out) + "\n", encoding="utf-8")
