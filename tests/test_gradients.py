"""Derivatives of the forward model (docs/PHYSICS.md §4.7): exact, finite at degenerate eigenvalues and padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import ROOT, directional_fd
from jaxed.physics.bloch import BlochSettings, propagate_eigh, simulate
from jaxed.physics.crystal import AtomParams, load_structure
from jaxed.physics.geometry import make_beam_set, select_beams, zone_axis_rotation

QUARTZ = ROOT / "jaxed" / "data" / "quartz_P3221.cif"
SIMPLE = ROOT / "jaxed" / "data" / "simple_crystals.cif"
U_SCALE = 1e-3  # U* entries are ~1e-3: differentiate w.r.t. U*/U_SCALE so finite-difference steps are well scaled


def _problem(path, block, uvw, g_max, sg_max, n_beams=None):
    crystal, atoms = load_structure(path, block=block)
    settings = BlochSettings(200.0)
    rot = zone_axis_rotation(uvw, np.asarray(crystal.direct))
    beams = make_beam_set([select_beams(np.asarray(crystal.reciprocal), rot, settings.k, g_max, sg_max)], n_beams=n_beams)
    return crystal, atoms, settings, rot, beams


def _loss_fn(crystal, atoms, settings, rot, beams):
    weights = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, beams.n_beams))

    def loss(frac, u_scaled, t):
        a = AtomParams(frac, u_scaled * U_SCALE, atoms.occupancy)
        i = simulate(a, crystal, beams, rot[None], t, settings)[0]
        return jnp.sum(i[:, 1:] * weights[None, 1:])

    return jax.jit(loss), (atoms.frac, atoms.u_star / U_SCALE, jnp.array([350.0, 800.0]))


def test_check_grads_general_orientation():
    # jax.test_util.check_grads, forward and reverse mode, float64, positions + ADPs + thickness of quartz at a
    # general orientation (all sites have free coordinates). Tolerances: atol = rtol = 1e-6 (eps 1e-6).
    crystal, atoms, settings, rot, beams = _problem(QUARTZ, None, [1.0, 0.13, 2.4], 1.2, 0.02)
    assert beams.mask.sum() >= 15
    loss, args = _loss_fn(crystal, atoms, settings, rot, beams)
    check_grads(loss, args, order=1, modes=("fwd", "rev"), eps=1e-6, atol=1e-6, rtol=1e-6)


def _naive_intensity_sum(b, tau):
    """exp(iτB)e₀ differentiated through eigh's eigenvectors (what jaxed avoids)."""
    lam, c = jnp.linalg.eigh(b)
    psi = (jnp.exp(1j * tau[:, None] * lam[None, :]) * jnp.conj(c[0, :])[None, :]) @ c.T
    return jnp.sum(jnp.abs(psi[:, 1:]) ** 2)


def test_gradients_at_a_zone_axis_with_degenerate_eigenvalues():
    # SrTiO₃ exactly along [001]: symmetry-equivalent beams give exactly degenerate Bloch-wave eigenvalues.
    # (1) The spectrum really is degenerate (gaps < 1e-10 Å⁻²), and differentiating through eigh's eigenvectors
    #     gives non-finite gradients there: this test would catch a regression to that.
    # (2) jaxed's Daleckii–Krein derivative is finite and matches central differences (tol 1e-6 relative).
    crystal, atoms, settings, rot, beams = _problem(SIMPLE, "SrTiO3", [0, 0, 1], 1.5, 0.03)
    from jaxed.physics.bloch import potential_table, structure_matrix
    from jaxed.physics.geometry import excitation_errors

    u_ext = potential_table(atoms, crystal, beams, settings)
    g_lab = beams.hkl[0].astype(jnp.float64) @ jnp.asarray(rot @ np.asarray(crystal.reciprocal)).T
    b, _, _ = structure_matrix(u_ext, beams.coupling[0], beams.mask[0], excitation_errors(g_lab, settings.k),
                               -g_lab[:, 2], settings.k, settings.k, settings)
    lam = np.linalg.eigvalsh(np.asarray(b))
    assert np.min(np.diff(lam)) < 1e-10
    tau = jnp.array([np.pi * 300.0 / settings.k])
    naive = jax.jit(jax.grad(lambda m: _naive_intensity_sum(m, tau)))(b)  # compiled: eager dispatch costs seconds
    assert not np.all(np.isfinite(np.asarray(naive)))

    ours = jax.jit(jax.grad(lambda m: jnp.sum(jnp.abs(propagate_eigh(m, tau)[:, 1:]) ** 2)))(b)
    assert np.all(np.isfinite(np.asarray(ours)))

    loss, args = _loss_fn(crystal, atoms, settings, rot, beams)
    # positions of SrTiO₃ are special positions; differentiate w.r.t. ADPs and thickness, plus all of B directly.
    analytic, fd, grads = directional_fd(lambda u, t: loss(args[0], u, t), args[1:], seed=1, h=1e-5)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    assert analytic == pytest.approx(fd, rel=1e-6)


def test_gradients_with_padded_beams_and_degenerate_padding_values():
    # A frame padded with many beams: gradients finite and equal to finite differences (tol 1e-6 relative), and
    # equal to the unpadded gradients (tol 1e-10 relative, and 1e-10 of each gradient's norm absolute: entries near
    # zero differ at rounding level). Quartz at a general orientation, all parameters.
    crystal, atoms, settings, rot, beams = _problem(QUARTZ, None, [1.0, 0.13, 2.4], 1.2, 0.02)
    padded = make_beam_set([np.asarray(beams.hkl[0])[np.asarray(beams.mask[0])]], n_beams=4 * beams.n_beams)
    loss, args = _loss_fn(crystal, atoms, settings, rot, beams)
    loss_p, _ = _loss_fn(crystal, atoms, settings, rot, padded)
    analytic, fd, grads = directional_fd(loss_p, args, seed=2)
    assert analytic == pytest.approx(fd, rel=1e-6)
    for g, g0 in zip(grads, jax.grad(loss, argnums=(0, 1, 2))(*args)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=1e-10, atol=1e-10 * np.linalg.norm(g0))


def test_propagator_derivative_matches_expm_derivative():
    # The custom JVP of exp(iτB)e₀ against autodiff of jax.scipy.linalg.expm on a random Hermitian B with a
    # repeated eigenvalue, for a random Hermitian direction and dτ. Tolerance 1e-9 (both exact).
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)) + 1j * rng.normal(size=(6, 6)))
    b = jnp.asarray(q @ np.diag([0.1, 0.1, 0.1, -0.3, 0.5, 0.9]) @ q.conj().T)
    x = rng.normal(size=(6, 6)) + 1j * rng.normal(size=(6, 6))
    db = jnp.asarray(x + x.conj().T)
    tau, dtau = jnp.array([3.0, 7.5]), jnp.array([0.2, -0.1])
    _, ours = jax.jvp(propagate_eigh, (b, tau), (db, dtau))

    def via_expm(m, t):
        return jax.vmap(lambda s: jax.scipy.linalg.expm(1j * s * m)[:, 0])(t)

    _, ref = jax.jvp(via_expm, (b, tau), (db, dtau))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-9)
