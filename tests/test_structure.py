"""Crystal input, form factors and potential coefficients against golden values (docs/PHYSICS.md §1–3)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, shared_file
from jaxed.physics.constants import interaction_constant, relativistic_gamma, wavelength
from jaxed.physics.crystal import (AtomParams, expand_to_p1, iso_u_star, load_structure, u_equivalent,
                                  write_structure_cif)
from jaxed.errors import JaxedInputError
from jaxed.physics.potential import potential_coefficients, potential_volts
from jaxed.physics.scattering import debye_waller, form_factor, form_factor_coefficients

SIMPLE = ROOT / "jaxed" / "data" / "simple_crystals.cif"

SI_ORIGIN2 = """data_Si_origin2
_cell_length_a 5.4307
_cell_length_b 5.4307
_cell_length_c 5.4307
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_space_group_name_H-M_alt 'F d -3 m :2'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_B_iso_or_equiv
Si1 Si 0.125 0.125 0.125 0.4632
"""


def test_relativistic_constants_match_table():
    # PHYSICS.md §1 table, 200 kV and 300 kV; relative tolerance 1e-7 (the table has 7-8 digits)
    assert wavelength(200.0) == pytest.approx(0.02507934, rel=1e-7)
    assert wavelength(300.0) == pytest.approx(0.01968749, rel=1e-7)
    assert relativistic_gamma(200.0) == pytest.approx(1.39139024, rel=1e-8)
    assert interaction_constant(200.0) == pytest.approx(7.288401e-4, rel=1e-6)


@pytest.mark.parametrize("kind, column", [("peng", 0), ("lobato", 1)])
def test_si_form_factor_golden_values(kind, column):
    # PHYSICS.md §2.4, Si: |g| → (Peng/ITC 4.3.2.2, Lobato). Tolerance 5e-4 Å (4 printed decimals), except the
    # (111) row whose |g| is printed to 3 decimals only (df/d|g| ≈ −5 Å²: ±0.0005 Å⁻¹ → ±0.0025 Å): 5e-3 Å there.
    table = {0.0: (5.8268, 5.8360), 0.318: (3.2628, 3.2638), 1.0: (0.7425, 0.7429), 2.0: (0.2701, 0.2705),
             4.0: (0.0738, 0.0762)}
    a, b = form_factor_coefficients(["Si"], kind)
    g = np.array(sorted(table))
    f = np.asarray(form_factor(jnp.asarray(g**2), jnp.asarray(a), jnp.asarray(b), kind))[0]
    expected = np.array([table[x][column] for x in sorted(table)])
    assert np.all(np.abs(f - expected) <= np.where(g == 0.318, 5e-3, 5e-4)), (f, expected)


def test_peng_form_factor_matches_gemmi_at_its_own_argument():
    # Golden values computed with gemmi 0.7.5, gemmi.Element('Si').c4322.calculate_sf(stol2) at stol2 = (|g|/2)²
    # (ITC C Table 4.3.2.2 takes s = sinθ/λ = |g|/2): |g| [Å⁻¹] → f_e [Å]. gemmi evaluates in float32, so the
    # tolerance is 1e-6 relative. Feeding |g| where s is expected would give f(|g| = 1) = 0.2701 (the 2.0 row), not
    # 0.7425, and fail here.
    golden = {0.5: 1.9692360162734985, 1.0: 0.742519736289978, 2.0: 0.27005258202552795, 3.0: 0.13291721045970917}
    a, b = form_factor_coefficients(["Si"], "peng")
    g = np.array(sorted(golden))
    f = np.asarray(form_factor(jnp.asarray(g**2), jnp.asarray(a), jnp.asarray(b), "peng"))[0]
    np.testing.assert_allclose(f, [golden[x] for x in sorted(golden)], rtol=1e-6)


def test_silicon_potential_golden_values():
    # PHYSICS.md §3.1 (Peng 4.3.2.2, B = 0.4632 Å², 200 kV); tolerance 1e-4 V (4 printed decimals), 1e-6 Å⁻²
    crystal, atoms = load_structure("Si", cif_text=SI_ORIGIN2, scattering="peng")
    hkl = np.array([[1, 1, 1], [2, 2, 0], [4, 0, 0], [3, 1, 1], [2, 2, 2], [0, 0, 0]])
    v = np.asarray(potential_volts(atoms, crystal, hkl))
    np.testing.assert_allclose(v.real, [-5.4446, -4.3218, -2.5701, -2.4213, 0.0, 13.934], atol=1e-3)
    assert abs(v[4]) < 1e-12  # V222 = 0 exactly (forbidden), tolerance 1e-12 V
    np.testing.assert_allclose(v.imag, 0.0, atol=1e-12)  # origin at an inversion centre: real V_g
    u111 = complex(potential_coefficients(atoms, crystal, hkl[:1], relativistic_gamma(200.0))[0])
    assert u111.real == pytest.approx(-0.050365, abs=1e-6)
    assert 1.0 / (wavelength(200.0) * abs(u111)) == pytest.approx(791.7, abs=0.1)  # ξ₁₁₁ [Å]


def test_gaas_potential_golden_values():
    # PHYSICS.md §3.1: GaAs a = 5.6533 Å, B = 0.6 Å², 200 kV, Peng: U200 = −0.004472, U0 = 0.14145 Å⁻² (tol 2e-6)
    crystal, atoms = load_structure(SIMPLE, block="GaAs", scattering="peng")
    scale = 5.6533 / crystal.cell[0]
    crystal = dataclasses.replace(crystal, direct=np.asarray(crystal.direct) * scale,
                                  reciprocal=np.asarray(crystal.reciprocal) / scale, volume=5.6533**3)
    atoms = AtomParams(atoms.frac, iso_u_star(jnp.full(2, 0.6 / (8 * np.pi**2)), crystal), atoms.occupancy)
    u = np.asarray(potential_coefficients(atoms, crystal, np.array([[2, 0, 0], [0, 0, 0]]), relativistic_gamma(200.0)))
    assert u[0].real == pytest.approx(-0.004472, abs=2e-6)
    assert u[1].real == pytest.approx(0.14145, abs=2e-5)
    # GaAs is non-centrosymmetric: U_{-g} = conj(U_g) but U_111 is complex
    u111 = np.asarray(potential_coefficients(atoms, crystal, np.array([[1, 1, 1], [-1, -1, -1]]), 1.0))
    assert abs(u111[0].imag) > 1e-3 * abs(u111[0])
    np.testing.assert_allclose(u111[1], np.conj(u111[0]), rtol=1e-13)


def test_u_equivalent_golden_values():
    # U_eq = tr(A U* Aᵀ)/3 [Å²] against the U_iso_or_equiv that the authors' programs printed beside the U_ij:
    # CsPbBr₃ Pbnm (shared/data/structures/cspbbr3_Pbnm.cif, CCDC; SHELXL) 0.0375(3), 0.01530(10), 0.0272(2),
    # 0.0353(4) — tolerance half the last printed digit (orthorhombic: the mean of U11, U22, U33);
    # quartz P3₂21 O1 (shared/data/structures/quartz_P3221.cif, diffBloch) 0.015829, tolerance 5e-7 — a hexagonal
    # cell, where U_eq = ((4/3)(U11 + U22 − U12) + U33)/3 needs the metric and the U12 term. (That file's Si1 value,
    # 0.009208, disagrees with its own U_ij, which give 0.009568 by the same formula; it is not used.)
    crystal, atoms = load_structure(shared_file("structures/cspbbr3_Pbnm.cif"))
    u_eq = u_equivalent(np.asarray(atoms.u_star), np.asarray(crystal.direct))
    assert np.all(np.abs(u_eq - [0.0375, 0.01530, 0.0272, 0.0353]) <= [5e-5, 5e-6, 5e-5, 5e-5]), u_eq
    quartz, q_atoms = load_structure(shared_file("structures/quartz_P3221.cif"))
    u_o = float(u_equivalent(np.asarray(q_atoms.u_star), np.asarray(quartz.direct))[1])
    assert u_o == pytest.approx(0.015829, abs=5e-7)
    # an isotropic site (U* = U_iso G*) has U_eq = U_iso in any cell (triclinic here), tolerance 1e-15 Å²; the JAX
    # evaluation equals the numpy one (1e-16 Å²)
    cif = SI_ORIGIN2.replace("_cell_angle_alpha 90", "_cell_angle_alpha 81").replace(
        "_cell_angle_gamma 90", "_cell_angle_gamma 103").replace("'F d -3 m :2'", "'P 1'")
    tri, _ = load_structure("tri", cif_text=cif)
    u_iso = np.asarray(iso_u_star(np.array([0.013, 0.02]), tri))
    np.testing.assert_allclose(u_equivalent(u_iso, np.asarray(tri.direct)), [0.013, 0.02], atol=1e-15)
    np.testing.assert_allclose(np.asarray(u_equivalent(jnp.asarray(u_iso), jnp.asarray(tri.direct))), [0.013, 0.02],
                               atol=1e-16)


def test_centricity_is_static_and_decided_on_the_host():
    # NaCl (Fm-3m, origin at the centre) is centric at the origin, GaAs (F-43m) is not, and the P1 expansion is not.
    # The flag is a static field: a crystal passed through jit as a traced argument keeps it, so the real-arithmetic
    # potential table (jaxed.physics.bloch) is chosen from it, never from traced operations.
    from jaxed.physics.bloch import centric_at_origin

    nacl, _ = load_structure(SIMPLE, block="NaCl")
    gaas, gaas_atoms = load_structure(SIMPLE, block="GaAs")
    assert nacl.centric and not gaas.centric and not expand_to_p1(gaas, gaas_atoms)[0].centric
    seen = []

    @jax.jit
    def traced(crystal):
        seen.append((isinstance(crystal.rotations, jax.core.Tracer), centric_at_origin(crystal)))
        return jnp.sum(crystal.rotations)

    traced(nacl)
    assert seen == [(True, True)]
    # a host crystal whose operations contradict the flag is refused
    with pytest.raises(ValueError, match="centric"):
        dataclasses.replace(nacl, translations=np.asarray(nacl.translations) + np.array([0.25, 0.0, 0.0]))


def test_isotropic_limit_of_anisotropic_debye_waller():
    # exp(−2π² hᵀ U* h) with U* = U G* equals exp(−B s²) = exp(−8π² U |g|²/4); triclinic cell, tol 1e-14
    cif = SI_ORIGIN2.replace("_cell_angle_alpha 90", "_cell_angle_alpha 81").replace(
        "_cell_angle_gamma 90", "_cell_angle_gamma 103").replace("'F d -3 m :2'", "'P 1'")
    crystal, _ = load_structure("tri", cif_text=cif)
    hkl = np.array([[1, 2, -3], [4, 0, 1], [-2, -5, 7]], dtype=float)
    u = 0.013
    g = hkl @ np.asarray(crystal.reciprocal).T
    expected = np.exp(-8 * np.pi**2 * u * np.sum(g * g, axis=1) / 4)
    got = np.asarray(debye_waller(jnp.asarray(hkl), iso_u_star(u, crystal)))
    np.testing.assert_allclose(got, expected, rtol=1e-14)


@pytest.mark.parametrize("name", ["quartz_P3221.cif", "cspbbr3_Pbnm.cif", "paracetamol_formII_Pbca.cif"])
def test_structure_equals_its_p1_expansion(name):
    # Symmetry expansion with special positions counted once: U_g of the structure and of its P1 expansion agree
    # to 1e-12 relative to U_0 (anisotropic ADPs transformed as R U* Rᵀ).
    crystal, atoms = load_structure(shared_file(f"structures/{name}"))
    p1, p1_atoms = expand_to_p1(crystal, atoms)
    assert len(p1.labels) == int(crystal.multiplicities().sum())
    hkl = np.random.default_rng(1).integers(-5, 6, size=(200, 3))
    u = np.asarray(potential_coefficients(atoms, crystal, hkl, 1.0))
    u_p1 = np.asarray(potential_coefficients(p1_atoms, p1, hkl, 1.0))
    u0 = abs(complex(potential_coefficients(atoms, crystal, np.zeros((1, 3)), 1.0)[0]))
    np.testing.assert_allclose(u, u_p1, atol=1e-12 * u0)


def test_special_positions_multiplicities():
    # Quartz P3₂21: Si on 3a (x,0,z=5/6 etc.) multiplicity 3, O general 6; CsPbBr₃ Pbnm: Cs 4c, Pb 4b, Br 8d, 4c
    quartz, _ = load_structure(shared_file("structures/quartz_P3221.cif"))
    assert quartz.multiplicities().tolist() == [3, 6]
    cspbbr3, _ = load_structure(shared_file("structures/cspbbr3_Pbnm.cif"))
    assert cspbbr3.multiplicities().tolist() == [4, 4, 8, 4]


def test_multiblock_hydrogens_and_b_values():
    gaas, atoms = load_structure(SIMPLE, block="GaAs")
    assert gaas.site_elements == ("Ga", "As") and gaas.n_ops == 96
    # B_iso 0.5854 Å² → U = B/8π² (gemmi converts), U* = U G*: U*_11 = U a*²; tol 1e-12
    assert float(atoms.u_star[0, 0, 0]) == pytest.approx(0.5854 / (8 * np.pi**2) / gaas.cell[0] ** 2, rel=1e-12)
    para, _ = load_structure(shared_file("structures/paracetamol_formII_Pbca.cif"))
    assert para.site_elements.count("H") == 9
    with pytest.raises(JaxedInputError, match="several structures"):
        load_structure(SIMPLE)
    with pytest.raises(JaxedInputError, match="no data block 'Xx'"):
        load_structure(SIMPLE, block="Xx")


@pytest.mark.parametrize("text, message", [
    ("data_x\n_cell_length_a 5\n", "no data block with"),
    ("not a cif at all 'unterminated\n", "not a readable CIF"),
    (SI_ORIGIN2.replace("Si1 Si", "Q1 Qq"), "unknown element"),
])
def test_bad_structure_input_gives_one_line_error(text, message):
    with pytest.raises(JaxedInputError, match=message) as info:
        load_structure("bad.cif", cif_text=text)
    assert "\n" not in str(info.value)


def test_missing_structure_file():
    with pytest.raises(JaxedInputError, match="no such file"):
        load_structure("/nonexistent/x.cif")


def test_written_cif_reads_back(tmp_path):
    # write_structure_cif → gemmi → same U_g (tolerance 1e-9 relative: 6 written decimals on x, U)
    crystal, atoms = load_structure(shared_file("structures/quartz_P3221.cif"))
    path = tmp_path / "out.cif"
    write_structure_cif(path, crystal, atoms, extra={"_refine_ls_wR_factor_all": "0.0123"})
    back, back_atoms = load_structure(path)
    assert back.multiplicities().tolist() == [3, 6] and back.aniso == (True, True)
    hkl = np.random.default_rng(2).integers(-4, 5, size=(50, 3))
    u, u2 = (np.asarray(potential_coefficients(x, c, hkl, 1.0)) for x, c in ((atoms, crystal), (back_atoms, back)))
    np.testing.assert_allclose(u, u2, atol=1e-6 * np.abs(u).max())
