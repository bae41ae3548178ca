"""Symmetry-constrained structure parameters (positions on special positions, positive-definite symmetric ADPs)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, shared_file
from jaxed.physics.crystal import load_structure
from jaxed.refine.metrics import adp_frobenius, asu_rmsd
from jaxed.model.parameters import make_structure_model
from jaxed.model.synth import random_start

QUARTZ = ROOT / "jaxed" / "data" / "quartz_P3221.cif"


def _site_symmetry_violation(model, atoms):
    """Largest violation [Å, Å²] of x = R x + t and U* = R U* Rᵀ over each site's stabiliser."""
    crystal = model.crystal
    rot, trans, direct = (np.asarray(x) for x in (crystal.rotations, crystal.translations, crystal.direct))
    worst_x = worst_u = 0.0
    for j, (x, u) in enumerate(zip(np.asarray(atoms.frac), np.asarray(atoms.u_star))):
        d = rot @ np.asarray(model.x0[j]) + trans - np.asarray(model.x0[j])
        stab = np.linalg.norm((d - np.rint(d)) @ direct.T, axis=1) < 0.02
        for r, t in zip(rot[stab], trans[stab]):
            e = r @ x + t - x
            worst_x = max(worst_x, float(np.linalg.norm((e - np.rint(e)) @ direct.T)))
            worst_u = max(worst_u, float(np.abs(direct @ (r @ u @ r.T - u) @ direct.T).max()))
    return worst_x, worst_u


@pytest.mark.parametrize("name, free", [("quartz_P3221.cif", [1, 3]), ("cspbbr3_Pbnm.cif", [2, 0, 3, 2])])
def test_free_coordinates_follow_wyckoff_positions(name, free):
    crystal, atoms = load_structure(shared_file(f"structures/{name}"))
    model, params = make_structure_model(crystal, atoms)
    assert [b.shape[1] for b in model.basis] == free
    back = model.atoms(params)  # initial parameters reproduce the structure (tol 1e-15 / 1e-18)
    np.testing.assert_allclose(np.asarray(back.frac), np.asarray(atoms.frac), atol=1e-15)
    np.testing.assert_allclose(np.asarray(back.u_star), np.asarray(atoms.u_star), atol=1e-18)


def test_any_step_keeps_special_positions_special_and_adps_positive_definite():
    # Random (large) parameter steps: site symmetry holds to 1e-12 Å / 1e-12 Å², ADPs stay positive definite.
    crystal, atoms = load_structure(shared_file("structures/cspbbr3_Pbnm.cif"))
    for aniso in ("as-given", "all", "none"):
        model, params = make_structure_model(crystal, atoms, aniso=aniso)
        rng = np.random.default_rng(0)
        for _ in range(5):
            stepped = jax.tree_util.tree_map(lambda p: p + jnp.asarray(rng.normal(0, 0.3, np.shape(p))), params)
            new = model.atoms(stepped)
            wx, wu = _site_symmetry_violation(model, new)
            assert wx < 1e-12 and wu < 1e-12
            direct = np.asarray(crystal.direct)
            for u in np.asarray(new.u_star):
                assert np.linalg.eigvalsh(direct @ u @ direct.T).min() > 0


def test_isotropic_to_anisotropic_switch_starts_from_the_same_adps():
    # aniso='all' on isotropic sites starts at U_iso·I: same U* to 1e-15.
    crystal, atoms = load_structure(shared_file("structures/paracetamol_formII_Pbca.cif"))
    model, params = make_structure_model(crystal, atoms, aniso="all")
    assert all(model.aniso) and params["u_chol"].shape == (20, 6)
    np.testing.assert_allclose(np.asarray(model.atoms(params).u_star), np.asarray(atoms.u_star), atol=1e-15)


def test_random_start_displacement_and_metrics():
    # Uniform displacements in [−Δ, Δ] per free coordinate: RMSD between 0 and Δ·sqrt(3), > 0.2Δ (seeded);
    # the metrics are 0 (tol 1e-12) for the truth itself and see symmetry-equivalent positions as identical.
    crystal, atoms = load_structure(QUARTZ)
    model, params = make_structure_model(crystal, atoms)
    start = model.atoms(random_start(model, params, 0.2, seed=3))
    rmsd = asu_rmsd(crystal, start, atoms)
    assert 0.04 < rmsd < 0.2 * np.sqrt(3)
    assert adp_frobenius(crystal, start, atoms) > 1e-4
    assert asu_rmsd(crystal, atoms, atoms) < 1e-12
    # a symmetry image of the truth (operation 2 applied to each site) is the same structure: RMSD 0
    r, t = np.asarray(crystal.rotations[1]), np.asarray(crystal.translations[1])
    image = atoms.__class__(jnp.asarray(np.asarray(atoms.frac) @ r.T + t + 1.0), atoms.u_star, atoms.occupancy)
    assert asu_rmsd(crystal, image, atoms) < 1e-9


def test_rmsd_over_chosen_sites():
    # Paracetamol (Pbca, no polar axis): move one H atom by 0.1 Å along x. Over all 20 sites RMSD = 0.1/√20 Å;
    # over the non-H sites it is 0 (1e-12 Å).
    crystal, atoms = load_structure(shared_file("structures/paracetamol_formII_Pbca.cif"))
    h = [i for i, e in enumerate(crystal.site_elements) if e == "H"][0]
    shift = np.linalg.solve(np.asarray(crystal.direct), [0.1, 0.0, 0.0])
    frac = np.asarray(atoms.frac).copy()
    frac[h] += shift
    moved = dataclasses.replace(atoms, frac=jnp.asarray(frac))
    n = len(crystal.site_elements)
    assert asu_rmsd(crystal, moved, atoms) == pytest.approx(0.1 / np.sqrt(n), rel=1e-9)
    heavy = [e != "H" for e in crystal.site_elements]
    assert asu_rmsd(crystal, moved, atoms, sites=heavy) < 1e-12
