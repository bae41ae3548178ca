"""jaxed against an independent Bloch-wave code: abTEM 1.0.11 (``abtem.bloch``), non-centrosymmetric crystals.

abTEM computes its own structure factors from ase ``Atoms`` (its own symmetry expansion, its own Lobato table, its
own constants), builds its own structure matrix and diagonalises it; only the list of beams (hkl), the orientation,
the thicknesses and the isotropic displacements are shared. Agreement is required to 1e-3 of the strongest
diffracted beam; it is measured at ~1.5e-6 (GaAs) and ~8e-6 (quartz), the difference between the two codes' Lobato
coefficients (abTEM's table and ``jaxed/data/lobato_2014.json`` differ by 1e-6 (Ga, As) to 1e-5 (O) relative) and
their CODATA vintages (λ differs by 5e-9).

How the two calculations correspond (read in ``abtem/bloch/dynamical.py`` and ``abtem/bloch/utils.py``, 1.0.11):

* **Structure factor.** ``calculate_structure_factors`` uses the crystallographic sign,
  F^ab(q) = Σ_j f_j T_j exp(+2πi q·x_j)/Ω (PHYSICS.md §3.1 says abTEM uses −2πi: that is not what 1.0.11 does).
  jaxed uses the physics sign F(q) = Σ_j f_j T_j exp(−2πi q·x_j), so F^ab(q) = F(−q)/Ω.
* **Matrix ordering.** ``calculate_structure_matrix`` builds ``gmh = hkl[None] − hkl[:, None]``, i.e. element
  (row g, column h) holds F^ab(h − g) = F(g − h)/Ω. The two sign choices cancel: abTEM's off-diagonal element is
  jaxed's A_gh = U_{g−h} (PHYSICS.md §4.3), times σ/(κλπ) = γ/π (checked to 2e-9).
* **Diagonal.** abTEM overwrites the diagonal with 2K s_g M_g², so U₀ is *not* on it: jaxed is run with
  ``mean_potential=False``.
* **Metric.** abTEM (``use_wave_eq=False``) uses M_g = 1/sqrt(1 + g_z/K) with the surface normal along its beam,
  B = M A M, C = M C' — jaxed's ``metric=True`` with the default normal (along the beam).
* **Propagation.** ψ = M C' exp(2πi γ t) C'ᴴ e₀ with γ = λ/2 · eigenvalue = eigenvalue/(2K): jaxed's exp(iτB),
  τ = πt/K (PHYSICS.md §0: exp(+2πiγt)). Both report |ψ_g|².
* **Beam direction.** abTEM's electrons travel along +z and s_g = −g_z − |g|²/(2K); jaxed's travel along −z and
  s_g = +g_z − |g|²/(2K). The jaxed orientation R (crystal → lab) is mapped to abTEM's lab by the *proper* rotation
  Q = R_x(180°) = diag(1, −1, −1): R_ab = Q R. The ase cell is rotated by R_ab with the atoms carried along
  (``scale_atoms=True``, fractional coordinates unchanged), so that s_g, g_n and M are identical in both codes.

Handedness. With these conventions abTEM simulates the *same* hand as jaxed, not its enantiomer (demonstrated in
:func:`test_abtem_oracle`): jaxed with the structure inverted through the origin (x → −x, the enantiomer; for quartz
P3₂21 → P3₁21) differs from abTEM by far more than the tolerance, and equals abTEM at thickness −t (the inversion
theorem of PHYSICS.md §6.4, across the two codes). Note on "mirror" mappings: abTEM's (and jaxed's) result depends
on the orientation only through g_z (s_g and the metric), so a lab z-mirror that carries the atoms along gives the
same numbers as Q (parity invariance of the whole set-up). The mistake that does produce the enantiomer is to flip
the beam without the crystal, i.e. to hand jaxed's R to abTEM unchanged: that gives exactly jaxed's inverted
structure with every beam relabelled g → −g, as the test also shows.

Friedel pairs. At a general orientation I_g and I_−g differ mostly because s_g ≠ s_−g. The Friedel check therefore
uses orientations with one systematic row exactly perpendicular to the beam (g·[uvw] = 0: s_g = s_−g and g_n = 0
for that row; still not a zone axis): GaAs 111/−1−1−1 (the polar axis) and quartz 101/−10−1. Both codes show the
same violation there, far above the tolerance; a centrosymmetric crystal can show a violation too at such an
orientation (many-beam asymmetry), so the decisive enantiomer check is the inverted-structure one.
"""
import dataclasses

import jax
import numpy as np
import pytest

pytest.importorskip("abtem")
pytest.importorskip("ase")

import gemmi  # noqa: E402
from ase.io import read as ase_read  # noqa: E402
from ase.spacegroup import crystal as ase_crystal  # noqa: E402
from abtem.bloch.dynamical import (  # noqa: E402
    StructureFactor,
    calculate_dynamical_scattering,
    calculate_structure_matrix,
)

from conftest import ROOT  # noqa: E402
from jaxed.physics.bloch import BlochSettings, simulate  # noqa: E402
from jaxed.physics.crystal import iso_u_star, load_structure  # noqa: E402
from jaxed.physics.geometry import make_beam_set, select_beams, zone_axis_rotation  # noqa: E402

DATA = ROOT / "jaxed" / "data"
ENERGY_KV = 200.0
THICKNESS = np.array([60.0, 200.0, 450.0, 800.0])  # [Å]
TOL = 1e-3  # agreement, relative to the strongest diffracted beam (all thicknesses)
Q_X180 = np.diag([1.0, -1.0, -1.0])  # proper rotation: jaxed lab (beam −z) → abTEM lab (beam +z)
SETTINGS = BlochSettings(ENERGY_KV, mean_potential=False, metric=True)
SIMULATE = jax.jit(simulate, static_argnames="settings")  # one compiled program per beam count, not op by op


def _gaas():
    """GaAs in both codes: jaxed from the CIF (gemmi), abTEM from ase's own F-43m expansion of the same sites."""
    path = DATA / "simple_crystals.cif"
    crystal, atoms = load_structure(path, block="GaAs", scattering="lobato")
    block = gemmi.cif.read(str(path)).find_block("GaAs")
    cellpar = [float(block.find_value(f"_cell_length_{x}")) for x in "abc"]
    cellpar += [float(block.find_value(f"_cell_angle_{x}")) for x in ("alpha", "beta", "gamma")]
    table = block.find("_atom_site_", ["type_symbol", "fract_x", "fract_y", "fract_z", "B_iso_or_equiv"])
    symbols = [row[0] for row in table]
    basis = [[float(row[i]) for i in (1, 2, 3)] for row in table]
    u_iso = {row[0]: float(row[4]) / (8 * np.pi**2) for row in table}  # B = 8π² U
    ase_atoms = ase_crystal(symbols, basis=basis, spacegroup=216, cellpar=cellpar)
    return crystal, atoms, ase_atoms, u_iso


def _quartz():
    """Quartz P3₂21 with isotropic U = U_eq in both codes (abTEM takes isotropic thermal sigmas only)."""
    path = DATA / "quartz_P3221.cif"
    crystal, atoms = load_structure(path, scattering="lobato")
    block = gemmi.cif.read(str(path)).sole_block()
    table = block.find("_atom_site_", ["label", "type_symbol", "U_iso_or_equiv"])
    u_eq = {row[0]: float(row[2]) for row in table}
    atoms = dataclasses.replace(atoms, u_star=iso_u_star(np.array([u_eq[lab] for lab in crystal.labels]), crystal))
    ase_atoms = ase_read(str(path))  # ase's own symmetry expansion
    u_iso = {row[1]: float(row[2]) for row in table}  # one site per element
    return crystal, atoms, ase_atoms, u_iso


def _abtem_intensities(ase_atoms, u_iso, rotation_lab, hkl, thickness, g_max_beams):
    """|ψ_g|² from abTEM's own structure factors, structure matrix and eigh propagation.

    ``rotation_lab`` is applied to the ase cell with the atoms carried along (crystal → abTEM lab, beam +z).
    """
    atoms = ase_atoms.copy()
    atoms.set_cell(np.asarray(ase_atoms.cell) @ rotation_lab.T, scale_atoms=True)
    sigma = [np.sqrt(u_iso[s]) for s in atoms.get_chemical_symbols()]  # DW exp(−½(2π)²σ²g²) = exp(−2π²U g²)
    # U_{g−h} is needed up to |g − h| ≤ 2 g_max; 'hard' cutoff beyond that (abTEM's taper would damp near g_max).
    sf = StructureFactor(atoms, g_max=2 * g_max_beams + 0.05, parametrization="lobato", thermal_sigma=sigma,
                         cutoff="hard", centering="P")
    values = np.asarray(sf.build(lazy=False).array)
    a = calculate_structure_matrix(values, sf.hkl, hkl, atoms.cell, ENERGY_KV * 1e3, sf.gpts)
    psi = calculate_dynamical_scattering(a, hkl, atoms.cell, ENERGY_KV * 1e3, thickness)
    return np.abs(psi) ** 2


def _jaxed_intensities(crystal, atoms, rotation, hkl, thickness):
    beams = make_beam_set([hkl])
    out = SIMULATE(atoms, crystal, beams, rotation[None], thickness, SETTINGS)
    return np.asarray(out)[0, :, : len(hkl)]


CASES = {
    # name: (structure, zone-axis-like direction [uvw] (not a zone axis), g_max, sg_max, Friedel row in the zero layer)
    "GaAs-general": (_gaas, [1.0, 0.13, 2.4], 1.5, 0.03, False),
    "GaAs-111-row": (_gaas, [1.0, 0.3, -1.3], 1.5, 0.03, True),
    "quartz-general": (_quartz, [0.31, 1.17, 2.9], 1.3, 0.03, False),
    "quartz-101-row": (_quartz, [1.0, 0.4, -1.0], 1.3, 0.03, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_abtem_oracle(case):
    make, uvw, g_max, sg_max, friedel_row = CASES[case]
    crystal, atoms, ase_atoms, u_iso = make()
    # The same unit cell in the same Cartesian frame before rotation (a ∥ x, b in the xy plane).
    np.testing.assert_allclose(np.asarray(ase_atoms.cell), np.asarray(crystal.direct).T, atol=1e-9)

    rot = zone_axis_rotation(uvw, np.asarray(crystal.direct))
    assert np.isclose(np.linalg.det(rot), 1.0) and np.isclose(np.linalg.det(Q_X180 @ rot), 1.0)
    hkl = select_beams(np.asarray(crystal.reciprocal), rot, SETTINGS.k, g_max, sg_max)
    assert 25 <= len(hkl) <= 120

    i_jax = _jaxed_intensities(crystal, atoms, rot, hkl, THICKNESS)
    # abTEM at t and −t in one call (one structure matrix, one diagonalisation): rows 0..3 at t, 4..7 at −t
    i_ab, i_ab_neg = np.split(_abtem_intensities(ase_atoms, u_iso, Q_X180 @ rot, hkl,
                                                 np.concatenate([THICKNESS, -THICKNESS]), g_max), 2)
    scale = i_ab[:, 1:].max()  # strongest diffracted beam over all thicknesses
    assert scale > 1e-3
    err = np.abs(i_jax - i_ab).max() / scale
    assert err <= TOL, f"{case}: jaxed vs abTEM differ by {err:.2e} of the strongest diffracted beam (tolerance {TOL})"

    # Enantiomer: the inverted structure (x → −x) is far from abTEM — the comparison can tell the hands apart ...
    # Every atom r → −r: ASU x → −x and every operation (R, t) → (R, −t) (P3₂21 → P3₁21 for quartz; for GaAs the
    # F-centring translations are their own negatives modulo the lattice).
    crystal_inv = dataclasses.replace(crystal, translations=-np.asarray(crystal.translations))
    inverted = dataclasses.replace(atoms, frac=-atoms.frac)
    i_inv = _jaxed_intensities(crystal_inv, inverted, rot, hkl, THICKNESS)
    enantiomer_gap = np.abs(i_inv - i_ab).max() / scale
    assert enantiomer_gap > 2 * TOL, f"{case}: enantiomer only {enantiomer_gap:.2e} from abTEM"
    # ... and equals abTEM at thickness −t (inversion theorem, PHYSICS.md §6.4, across the codes).
    err_inv = np.abs(i_inv - i_ab_neg).max() / scale
    assert err_inv <= TOL, f"{case}: jaxed(inverted, t) vs abTEM(−t) differ by {err_inv:.2e} (tolerance {TOL})"
    # Handing jaxed's R to abTEM unconverted flips the beam but not the crystal: that is the enantiomer with every
    # beam relabelled g → −g (same hkl list, negated), not the structure.
    i_ab_unconverted = _abtem_intensities(ase_atoms, u_iso, rot, hkl, THICKNESS, g_max)
    i_inv_neg = _jaxed_intensities(crystal_inv, inverted, rot, -hkl, THICKNESS)
    err_flip = np.abs(i_ab_unconverted - i_inv_neg).max() / scale
    assert err_flip <= TOL, f"{case}: abTEM(R unconverted) vs jaxed(inverted, −hkl) differ by {err_flip:.2e}"

    if friedel_row:
        # Friedel pairs with identical excitation errors (the row ⟂ beam): I_g ≠ I_−g, the same in both codes.
        g_lab = hkl @ (rot @ np.asarray(crystal.reciprocal)).T
        index = {tuple(h): i for i, h in enumerate(hkl.tolist())}
        partner = [index.get(tuple(h), -1) for h in (-hkl).tolist()]
        pairs = [(i, partner[i]) for i in range(1, len(hkl)) if partner[i] > i and abs(g_lab[i, 2]) < 1e-12]
        assert pairs, "no Friedel pair in the zero layer"
        d_jax = np.stack([i_jax[:, i] - i_jax[:, j] for i, j in pairs], axis=1) / scale
        d_ab = np.stack([i_ab[:, i] - i_ab[:, j] for i, j in pairs], axis=1) / scale
        d_inv = np.stack([i_inv[:, i] - i_inv[:, j] for i, j in pairs], axis=1) / scale
        assert np.abs(d_jax).max() > 10 * TOL and np.abs(d_ab).max() > 10 * TOL, (
            f"{case}: Friedel violation {np.abs(d_jax).max():.2e} (jaxed), {np.abs(d_ab).max():.2e} (abTEM)")
        assert np.abs(d_jax - d_ab).max() <= TOL, f"{case}: Friedel differences disagree by {np.abs(d_jax - d_ab).max():.2e}"
        assert np.abs(d_inv - d_ab).max() > 10 * TOL, f"{case}: the enantiomer has the same Friedel differences"
