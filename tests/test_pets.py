"""jaxed.data.pets: the PETS2 `.cif_pets` reader/writer and its frame geometry (docs/PETS.md).

The real and synthetic files of ../shared/data are each parsed once per module (``_load``); tests that need them
skip cleanly when the shared data are absent. Every numeric assertion states its tolerance and why.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import gemmi
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_file
from jaxed.errors import JaxedInputError
from jaxed.data.pets import PetsData, beam_uvw, cell_from_ub, check_cell_match, frame_rotation, read_pets, write_pets
from jaxed.physics.geometry import (excitation_errors, rotation_x, rotation_x_jax, rotation_y, rotation_y_jax, rotation_z,
                                    rotation_z_jax)

REAL = ["pets/cspbbr3_suresh2024.cif_pets", "pets/paracetamol_formII.cif_pets", "pets/quartz_dials_dyn.cif_pets",
        "pets/quartz_suresh2024.cif_pets"]
SYNTHETIC = ["synthetic/cspbbr3_paper_data.cif_pets", "synthetic/paracetamol_paper_data.cif_pets",
             "synthetic/quartz_paper_data.cif_pets"]
ALL_FILES = REAL + SYNTHETIC


@functools.lru_cache(maxsize=None)
def _cached(path: str) -> PetsData:
    # The synthetic sets hold a few σ = 0 rows (I = 0): dropped here. Warnings (the quartz UB cell is 1.16 % off
    # its _cell_*) are checked in their own test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_pets(path, drop_bad_sigma=True)


def _load(rel: str) -> PetsData:
    return _cached(str(shared_file(rel)))


def _angle_between_deg(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Angle between the rows of x and y [deg] (atan2 form: accurate for small angles, unlike arccos)."""
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(x, y), axis=-1), np.sum(x * y, axis=-1)))


# ------------------------------------------------------------------------------------------------------------------
# Geometry helpers
# ------------------------------------------------------------------------------------------------------------------

def test_rotations_are_active_right_handed_and_vectorised():
    ex, ey, ez = np.eye(3)
    # 90° (π/2 rad) about x takes y to z, about y takes z to x, about z takes x to y (right-handed, active);
    # atol 1e-15.
    np.testing.assert_allclose(rotation_x(np.pi / 2) @ ey, ez, atol=1e-15)
    np.testing.assert_allclose(rotation_y(np.pi / 2) @ ez, ex, atol=1e-15)
    np.testing.assert_allclose(rotation_z(np.pi / 2) @ ex, ey, atol=1e-15)
    # frame_rotation takes the file's degrees: 90° about x also takes y to z
    np.testing.assert_allclose(frame_rotation(90.0, 0.0) @ ey, ez, atol=1e-15)
    angles = np.array([-37.0, 0.0, 12.5])
    stacked = frame_rotation(angles, angles / 3)
    assert stacked.shape == (3, 3, 3)
    for r, a in zip(stacked, angles):
        # array input equals the scalar call; proper rotation (RᵀR = 1, det = +1); atol 1e-14 (rounding).
        np.testing.assert_allclose(r, frame_rotation(a, a / 3), atol=1e-14)
        # the traced (jax.numpy) rotations equal the host ones (1e-15: same arithmetic)
        t = np.deg2rad(a)
        for host, traced in ((rotation_x, rotation_x_jax), (rotation_y, rotation_y_jax), (rotation_z, rotation_z_jax)):
            np.testing.assert_allclose(np.asarray(traced(jnp.asarray(t))), host(t), atol=1e-15)
        np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-14)
        assert abs(np.linalg.det(r) - 1.0) < 1e-14


def _random_ub(cell, seed=0):
    """UB = U·B for a random proper rotation U; B = columns a*, b*, c* of ``cell`` (from gemmi)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    frac = np.array(gemmi.UnitCell(*cell).frac.mat.tolist())  # rows a*, b*, c* ⇒ B = fracᵀ
    return q @ frac.T


def test_cell_from_ub_and_beam_uvw_on_a_triclinic_cell():
    cell = (5.1, 6.3, 7.7, 81.0, 97.0, 113.0)
    ub = _random_ub(cell)
    # cell_from_ub recovers the cell; 1e-9 (float64 rounding through two inversions).
    np.testing.assert_allclose(cell_from_ub(ub), cell, rtol=1e-9)
    direct = np.linalg.inv(ub).T
    for alpha, beta in [(0.0, 0.0), (-48.3, 0.7), (59.0, -1.2)]:
        uvw = beam_uvw(ub, alpha, beta)
        # A·uvw ∥ Rᵀẑ (towards the source), largest component ±1; 1e-9 [deg] and 1e-12 (exact algebra).
        beam = frame_rotation(alpha, beta).T @ np.array([0.0, 0.0, 1.0])
        assert _angle_between_deg(direct @ uvw, beam) < 1e-9
        assert abs(np.max(np.abs(uvw)) - 1.0) < 1e-12


def test_excitation_error_is_zero_on_the_ewald_sphere_and_positive_inside():
    # Electrons along −z: the sphere through the origin has its centre at +Kẑ. A reciprocal-lattice point put on it
    # (by choosing UB) has s_g = 0 (atol 1e-12 Å⁻¹); moving it towards the centre makes s_g > 0.
    lam = 0.0251
    k = 1.0 / lam
    g = np.array([0.3, 0.0, k - np.sqrt(k**2 - 0.3**2)])  # |g − Kẑ| = K
    ub = np.diag([g[0], 1.0, 1.0])
    ub[2, 0] = g[2]  # UB·(1,0,0) = g
    h = np.array([1.0, 0.0, 0.0])
    assert abs(excitation_errors(frame_rotation(0.0, 0.0) @ ub @ h, k)) < 1e-12
    inside = ub.copy()
    inside[2, 0] += 1e-3
    assert excitation_errors(frame_rotation(0.0, 0.0) @ inside @ h, k) > 0
    # tilted by α = 5° about x the point leaves the sphere: g_z' = g_z cos α with |g| unchanged and |g|²/2K = g_z,
    # so s_g = −g_z (1 − cos α) < 0 (1e-12 Å⁻¹, exact geometry)
    tilted = excitation_errors(frame_rotation(5.0, 0.0) @ ub @ h, k)
    assert tilted == pytest.approx(-g[2] * (1 - np.cos(np.deg2rad(5.0))), abs=1e-12)


def test_check_cell_match():
    line = check_cell_match((4.92, 4.92, 5.40, 90, 90, 120), (4.9226, 4.9226, 5.4003, 90, 90, 120))
    assert "\n" not in line and "%" in line
    with pytest.raises(JaxedInputError) as info:  # 5 % in length > 2 %
        check_cell_match((5.17, 4.92, 5.40, 90, 90, 120), (4.9226, 4.9226, 5.4003, 90, 90, 120))
    assert "\n" not in str(info.value)
    with pytest.raises(JaxedInputError):  # 3° in angle > 100 × 0.02 = 2°
        check_cell_match((4.92, 4.92, 5.40, 90, 93, 120), (4.9226, 4.9226, 5.4003, 90, 90, 120))


# ------------------------------------------------------------------------------------------------------------------
# The real and synthetic files
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rel", ALL_FILES)
def test_every_file_reads(rel):
    data = _load(rel)
    assert data.n_frames > 0 and data.n_refl > 0
    assert data.geometry == "continuous rotation"
    assert data.frame_index.min() >= 0 and data.frame_index.max() < data.n_frames
    assert np.all(data.sigma > 0)
    assert {"dstarmax", "RC width", "mosaicity", "rotation axis position", "reflection size"} <= set(data.details)
    assert all(isinstance(v, float) for v in data.details.values())  # every value in these files is numeric
    # the integration semi-angle the reference paper used (PETS.md): quartz 1.0°, CsPbBr₃ 1.5°, paracetamol 1.4°
    expected = {"quartz": 1.0, "cspbbr3": 1.5, "paracetamol": 1.4}[Path(rel).name.split("_")[0]]
    np.testing.assert_array_equal(data.precession_angle, expected)  # exact: printed as such


@pytest.mark.parametrize("rel", ALL_FILES)
def test_tabulated_uvw_follow_from_ub_alpha_beta(rel):
    # A·uvw ∥ R_iᵀẑ for every frame. Tolerance 0.015°: the printed UB (5 decimals) and α, β (3 decimals) allow
    # ≈ 0.005°; the two quartz files (re-merged virtual frames, written by a script) reach 0.0101°, the others 0.005°.
    data = _load(rel)
    direct = np.linalg.inv(data.ub).T
    off = _angle_between_deg(data.uvw @ direct.T, beam_uvw(data.ub, data.alpha, data.beta) @ direct.T)
    assert off.max() < 0.015, f"worst frame {data.frame_id[np.argmax(off)]}: {off.max():.4f}°"


@pytest.mark.parametrize("rel", ALL_FILES)
def test_listed_reflections_sit_on_the_ewald_sphere_of_electrons_along_minus_z(rel):
    # For each frame, the reflections it lists at its orientation R_i: with k₀ = −Kẑ (s = g_z − |g|²/2K) the median
    # |s_g| is within a frame's rocking range, < 0.025 Å⁻¹ in every frame (worst: DIALS quartz 0.0244, paracetamol
    # 0.0225). With k₀ = +Kẑ (s' = −g_z − |g|²/2K) it is larger: median over frames < 0.7× the +z one. (Half, as
    # first planned, fails on the measured paracetamol, 0.021 vs 0.034 Å⁻¹ = 0.63, and DIALS quartz, 0.497: low-|g|
    # reflections of a large cell barely feel the curvature.) The sharp discriminator is the signed, curvature-scaled
    # error t = s/(|g|²/2K) of the listed reflections: its per-frame median is ≈ 0 for −z (|median over frames| < 0.5;
    # worst −0.25, synthetic paracetamol) and ≈ −2 for +z (t' = −t − 2 exactly, so < −1.5).
    data = _load(rel)
    k = 1.0 / data.wavelength
    g = np.einsum("nij,jk,nk->ni", data.rotations()[data.frame_index], data.ub, data.hkl.astype(float))
    g2 = np.sum(g * g, axis=1)
    s_minus = excitation_errors(g, k)
    s_plus = -g[:, 2] - g2 / (2 * k)
    frames = [np.nonzero(data.frame_index == i)[0] for i in range(data.n_frames)]
    frames = [rows for rows in frames if len(rows) >= 5]
    med_minus = np.array([np.median(np.abs(s_minus[rows])) for rows in frames])
    med_plus = np.array([np.median(np.abs(s_plus[rows])) for rows in frames])
    assert med_minus.max() < 0.025
    assert np.median(med_minus) < 0.7 * np.median(med_plus)
    t = s_minus / (g2 / (2 * k))
    t_frame = np.array([np.median(t[rows]) for rows in frames])
    assert abs(np.median(t_frame)) < 0.5
    assert np.median([np.median(-t[rows] - 2.0) for rows in frames]) < -1.5


def test_dials_and_pets_quartz_describe_the_same_crystal():
    # The DIALS export is reindexed (P3₁21), so compare metrics: sorted lengths / angles and the volume.
    pets, dials = _load("pets/quartz_suresh2024.cif_pets"), _load("pets/quartz_dials_dyn.cif_pets")
    # _cell_*: 1 % on lengths, 0.5° on angles (actual: 0.05 %, 0°).
    np.testing.assert_allclose(sorted(pets.cell[:3]), sorted(dials.cell[:3]), rtol=0.01)
    np.testing.assert_allclose(sorted(pets.cell[3:]), sorted(dials.cell[3:]), atol=0.5)
    # UB cells: 1.5 % (the PETS quartz UB is 1.16 % smaller than its own _cell_*, see the warning test), 0.5°.
    a, b = cell_from_ub(pets.ub), cell_from_ub(dials.ub)
    np.testing.assert_allclose(sorted(a[:3]), sorted(b[:3]), rtol=0.015)
    np.testing.assert_allclose(sorted(a[3:]), sorted(b[3:]), atol=0.5)
    # volumes of the UB cells within 4 % (3 × 1.2 %)
    assert abs(np.linalg.det(pets.ub) / np.linalg.det(dials.ub)) == pytest.approx(1.0, rel=0.04)


def test_quartz_ub_cell_mismatch_is_a_one_line_warning():
    path = shared_file("pets/quartz_suresh2024.cif_pets")
    with pytest.warns(UserWarning, match="UB cell") as record:
        read_pets(path)
    message = str(record[0].message)
    assert "\n" not in message and str(path) in message and "1.16 %" in message and "the UB is used" in message
    with warnings.catch_warnings():  # within a 2 % tolerance it is silent
        warnings.simplefilter("error")
        read_pets(path, cell_tolerance=0.02)


def test_round_trip_of_a_real_subset(tmp_path):
    # CRLF file → 5 frames → write (LF) → read: exact equality (tolerance 0): floats are written as repr.
    data = _load("pets/quartz_suresh2024.cif_pets")
    chosen = [0, 10, 20, 30, 98]
    sub = data.subset_frames(chosen)
    assert sub.n_frames == 5
    np.testing.assert_array_equal(sub.frame_id, data.frame_id[chosen])
    in_chosen = np.isin(data.frame_index, chosen)
    assert sub.n_refl == int(in_chosen.sum())
    np.testing.assert_array_equal(sub.hkl, data.hkl[in_chosen])
    np.testing.assert_array_equal(sub.frame_id[sub.frame_index], data.frame_id[data.frame_index[in_chosen]])

    path = tmp_path / "sub.cif_pets"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the quartz UB cell warning again
        write_pets(path, sub)
        back = read_pets(path)
    for name in ("frame_id", "uvw", "precession_angle", "alpha", "beta", "omega", "frame_scale", "hkl", "intensity",
                 "sigma", "frame_index", "ub"):
        np.testing.assert_array_equal(getattr(back, name), getattr(sub, name), err_msg=name)
    assert back.cell == sub.cell and back.wavelength == sub.wavelength
    assert back.geometry == sub.geometry and back.details == sub.details and back.energy_kev == sub.energy_kev
    assert back.pets_omega == sub.pets_omega


def test_round_trip_with_energy_and_text_details(tmp_path):
    # A data set with a voltage, string details and non-round numbers: exact round trip (tolerance 0).
    rng = np.random.default_rng(3)
    ub = _random_ub((8.1, 8.4, 11.8, 90.0, 90.0, 90.0), seed=5)
    alpha = np.array([-10.123456789, 0.5, 20.0])
    frames = PetsData(
        path="<test>", cell=cell_from_ub(ub), wavelength=0.025079340, ub=ub, frame_id=[3, 7, 11],
        uvw=beam_uvw(ub, alpha, np.zeros(3)), precession_angle=[0.5, 0.5, 0.5], alpha=alpha, beta=[0.0, 0.01, -0.02],
        omega=[0.1, 0.2, 0.3], frame_scale=[1.0, 0.9, 1.1], hkl=rng.integers(-9, 10, size=(20, 3)),
        intensity=rng.normal(100.0, 50.0, 20), sigma=rng.uniform(1.0, 9.0, 20), frame_index=rng.integers(0, 3, 20),
        geometry="precession", details={"dstarmax": 1.6, "RC width": 0.0015, "note": "made by a test"},
        energy_kev=200.0)
    path = tmp_path / "e.cif_pets"
    write_pets(path, frames)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 200 kV agrees with λ to 3e-6; no warning expected
        back = read_pets(path)
    for name in ("frame_id", "uvw", "alpha", "beta", "hkl", "intensity", "sigma", "frame_index", "ub"):
        np.testing.assert_array_equal(getattr(back, name), getattr(frames, name), err_msg=name)
    assert back.details == frames.details and back.geometry == "precession" and back.energy_kev == 200.0


# ------------------------------------------------------------------------------------------------------------------
# Validation on small hand-made files
# ------------------------------------------------------------------------------------------------------------------

_MINIMAL = """data_t
_cell_length_a 5
_cell_length_b 5
_cell_length_c 5
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_diffrn_radiation_wavelength 0.0251
_diffrn_orient_matrix_UB_11 0.2
_diffrn_orient_matrix_UB_12 0
_diffrn_orient_matrix_UB_13 0
_diffrn_orient_matrix_UB_21 0
_diffrn_orient_matrix_UB_22 0.2
_diffrn_orient_matrix_UB_23 0
_diffrn_orient_matrix_UB_31 0
_diffrn_orient_matrix_UB_32 0
_diffrn_orient_matrix_UB_33 0.2
_diffrn_measurement_details
;
data collection geometry: continuous rotation
dstarmax:  1.600
Virtual frame settings: number of merged frames:  3
;
loop_
_diffrn_zone_axis_id
_diffrn_zone_axis_u
_diffrn_zone_axis_v
_diffrn_zone_axis_w
_diffrn_zone_axis_precession_angle
_diffrn_zone_axis_alpha
_diffrn_zone_axis_beta
_diffrn_zone_axis_omega
_diffrn_zone_axis_scale
1 0 0 1 1.0 0.0 0.0 0.0 1.0
2 0 0.176327 1 1.0 10.0 0.0 0.0 1.0
loop_
_refln_index_h
_refln_index_k
_refln_index_l
_refln_intensity_meas
_refln_intensity_sigma
_refln_zone_axis_id
1 0 0 100.0 10.0 1
0 1 0 -3.0 2.0 1
0 1 1 50.0 5.0 2
"""


def _write(tmp_path, text: str, crlf: bool = False) -> Path:
    path = tmp_path / "t.cif_pets"
    path.write_bytes((text.replace("\n", "\r\n") if crlf else text).encode())
    return path


def test_minimal_crlf_file(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consistent file: no warning
        data = read_pets(_write(tmp_path, _MINIMAL, crlf=True))
    assert (data.n_frames, data.n_refl) == (2, 3)
    assert data.intensity[1] == -3.0  # negative intensities are legal
    np.testing.assert_array_equal(data.frame_index, [0, 0, 1])
    assert data.details == {"dstarmax": 1.6, "number of merged frames": 3.0}
    assert data.geometry == "continuous rotation" and data.energy_kev is None


def _one_line_error(path, match: str, **kwargs) -> str:
    with pytest.raises(JaxedInputError) as info:
        read_pets(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    assert match in message, message
    return message


@pytest.mark.parametrize("old, new, match", [
    ("_diffrn_radiation_wavelength 0.0251\n", "", "_diffrn_radiation_wavelength"),  # missing tag
    ("_refln_index_h\n", "_refln_index_x\n", "_refln_index_h"),  # missing loop column
    ("0 1 1 50.0 5.0 2", "0 1 1 50.0 5.0 9", "_refln_zone_axis_id 9"),  # frame id with no frame
    ("100.0 10.0 1", "nan 10.0 1", "_refln_intensity_meas"),  # NaN intensity
    ("100.0 10.0 1", "? 10.0 1", "_refln_intensity_meas"),  # unknown value
    ("100.0 10.0 1", "abc 10.0 1", "_refln_intensity_meas, loop row 1"),  # not a number
    ("1 0 0 100.0", "1.5 0 0 100.0", "_refln_index_h, loop row 1"),  # non-integer index
    ("-3.0 2.0 1", "-3.0 0.0 1", "_refln_intensity_sigma ≤ 0 in 1 rows (first: loop row 2"),  # σ = 0
    ("-3.0 2.0 1", "-3.0 -2.0 1", "_refln_intensity_sigma ≤ 0"),  # σ < 0
    ("2 0 0.176327", "1 0 -0.176327", "_diffrn_zone_axis_id 1 appears 2 times"),  # duplicate frame id
    ("_diffrn_orient_matrix_UB_11 0.2", "_diffrn_orient_matrix_UB_11 0.25", "UB cell"),  # 20 % > 10 × 1 %
    ("_diffrn_orient_matrix_UB_11 0.2", "_diffrn_orient_matrix_UB_11 0", "singular"),
    ("_diffrn_radiation_wavelength 0.0251", "_diffrn_radiation_wavelength -0.0251", "_diffrn_radiation_wavelength"),
])
def test_bad_files_raise_one_line_errors(tmp_path, old, new, match):
    assert old in _MINIMAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the [uvw] warning that a changed UB also gives
        _one_line_error(_write(tmp_path, _MINIMAL.replace(old, new)), match)


def test_missing_tags_are_all_named(tmp_path):
    text = _MINIMAL.replace("_cell_length_b 5\n", "").replace("_cell_angle_gamma 90\n", "")
    message = _one_line_error(_write(tmp_path, text), "missing")
    assert "_cell_length_b" in message and "_cell_angle_gamma" in message


def test_unknown_frame_error_names_id_and_count(tmp_path):
    text = _MINIMAL.replace("100.0 10.0 1", "100.0 10.0 5").replace("-3.0 2.0 1", "-3.0 2.0 5")
    _one_line_error(_write(tmp_path, text), "_refln_zone_axis_id 5 has no frame in _diffrn_zone_axis_id (2 reflections")


def test_missing_and_garbage_files(tmp_path):
    _one_line_error(tmp_path / "nope.cif_pets", "no such file")
    garbage = tmp_path / "garbage.cif_pets"
    garbage.write_text("this is not a CIF file\n")
    _one_line_error(garbage, "not a readable CIF (line 1")
    broken = tmp_path / "broken.cif_pets"  # a loop whose values do not fill its rows: gemmi's error, with the line
    broken.write_text(_MINIMAL.replace("0 1 1 50.0 5.0 2\n", "0 1 1 50.0 5.0\n"))
    _one_line_error(broken, "not a readable CIF (line")
    empty = tmp_path / "empty.cif_pets"
    empty.write_text("")
    _one_line_error(empty, "not a readable CIF")


def test_soft_problems_are_one_line_warnings(tmp_path):
    # UB cell 3 % off _cell_* (> 1 %, < 10 %): a warning, the UB is used.
    text = _MINIMAL.replace("_cell_length_a 5\n", "_cell_length_a 5.15\n")
    with pytest.warns(UserWarning, match=r"UB cell .* 2\.91 % .*the UB is used") as record:
        read_pets(_write(tmp_path, text))
    assert all("\n" not in str(w.message) for w in record)
    # a stated voltage that contradicts the wavelength (300 kV ⇒ 0.0197 Å, the file says 0.0251 Å)
    text = _MINIMAL.replace("_diffrn_radiation_wavelength 0.0251\n",
                            "_diffrn_radiation_wavelength 0.0251\n_diffrn_source_voltage 300\n")
    with pytest.warns(UserWarning, match="_diffrn_source_voltage = 300 kV") as record:
        data = read_pets(_write(tmp_path, text))
    assert data.energy_kev == 300.0 and "\n" not in str(record[0].message)
    # a tabulated [uvw] that does not follow from UB, alpha, beta (frame 2 says [0 0 1] but is tilted by 10°)
    text = _MINIMAL.replace("2 0 0.176327 1", "2 0 0 1")
    with pytest.warns(UserWarning, match="frame 2 is 10.000°"):
        read_pets(_write(tmp_path, text))


def test_drop_bad_sigma(tmp_path):
    path = _write(tmp_path, _MINIMAL.replace("-3.0 2.0 1", "-3.0 0.0 1"))
    with pytest.warns(UserWarning, match="dropped"):
        data = read_pets(path, drop_bad_sigma=True)
    assert data.n_refl == 2 and np.all(data.sigma > 0)


def test_subset_frames_rejects_bad_indices():
    ub = np.eye(3) * 0.2
    data = PetsData(path="<t>", cell=(5, 5, 5, 90, 90, 90), wavelength=0.0251, ub=ub, frame_id=[1, 2],
                    uvw=[[0, 0, 1], [0, 0, 1]], precession_angle=[1, 1], alpha=[0, 1], beta=[0, 0], omega=[0, 0],
                    frame_scale=[1, 1], hkl=[[1, 0, 0], [0, 1, 0]], intensity=[1.0, 2.0], sigma=[1.0, 1.0],
                    frame_index=[0, 1])
    assert data.subset_frames([1]).n_refl == 1 and data.subset_frames([1]).frame_index.tolist() == [0]
    with pytest.raises(JaxedInputError):
        data.subset_frames([2])
    with pytest.raises(JaxedInputError):
        data.subset_frames([0, 0])


def test_write_refuses_what_cannot_round_trip(tmp_path):
    ub = np.eye(3) * 0.2
    common = dict(path="<t>", cell=(5, 5, 5, 90, 90, 90), wavelength=0.0251, ub=ub, frame_id=[1], uvw=[[0, 0, 1]],
                  precession_angle=[1], alpha=[0], beta=[0], omega=[0], frame_scale=[1])
    empty = PetsData(**common, hkl=np.zeros((0, 3), int), intensity=[], sigma=[], frame_index=[])
    with pytest.raises(JaxedInputError, match="no reflections"):
        write_pets(tmp_path / "a.cif_pets", empty)
    bad_key = PetsData(**common, hkl=[[1, 0, 0]], intensity=[1.0], sigma=[1.0], frame_index=[0],
                       details={"a: b": 1.0})
    with pytest.raises(JaxedInputError, match="details item"):
        write_pets(tmp_path / "b.cif_pets", bad_key)


def test_a_rotation_header_on_a_precession_series_is_a_one_line_warning(tmp_path):
    # A virtual frame of m raw frames, s apart, spans ±m·Δα/(2s). Frames 1.5° apart with m = s = 1 span ±0.75°: a
    # listed angle of 1.4° is not a rotation range (the paracetamol export: a precession series), 0.75° is silent.
    ub = _random_ub((11.8, 7.2, 17.2, 90.0, 90.0, 90.0), seed=2)
    alpha = np.array([-3.0, -1.5, 0.0, 1.5])

    def write(angle: float) -> Path:
        frames = PetsData(
            path="<test>", cell=cell_from_ub(ub), wavelength=0.02508, ub=ub, frame_id=[1, 2, 3, 4],
            uvw=beam_uvw(ub, alpha, np.zeros(4)), precession_angle=[angle] * 4, alpha=alpha, beta=np.zeros(4),
            omega=np.zeros(4), frame_scale=np.ones(4), hkl=np.array([[1, 0, 0], [0, 1, 1]]),
            intensity=np.array([10.0, 20.0]), sigma=np.array([1.0, 2.0]), frame_index=np.array([0, 3]),
            geometry="continuous rotation", details={"number of merged frames": 1.0, "step between frames": 1.0})
        path = tmp_path / f"r{angle}.cif_pets"
        write_pets(path, frames)
        return path

    with pytest.warns(UserWarning, match="a precession series") as record:
        read_pets(write(1.4))
    message = str(record[0].message)
    assert "\n" not in message and "±0.75°" in message and "1.4°" in message and "--geometry precession" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_pets(write(0.75))


@pytest.mark.parametrize("rel", REAL)
def test_only_the_paracetamol_export_looks_like_precession(rel):
    # The measured files: CsPbBr₃ (6 merged, step 4, 2° apart: ±1.5° as listed) and DIALS quartz (2, 1, 1°: ±1°) are
    # consistent rotations; quartz_suresh2024 states no virtual-frame settings; paracetamol (1, 1, 1.5°, 1.4°) warns.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        read_pets(shared_file(rel))
    flagged = any("a precession series" in str(w.message) for w in record)
    assert flagged == ("paracetamol" in rel)
