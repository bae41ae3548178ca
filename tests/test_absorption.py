"""Thermal-diffuse-scattering absorptive potential (jaxed.physics.absorption, PHYSICS.md §3.3) against independent routes:
the closed form that Gaussian form factors admit, the 1-D TDS cross-section, B → 0, symmetry, decay of the total
intensity, perturbative vs exact propagation, and finite-difference gradients through the ADPs."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from conftest import ROOT, directional_fd
from jaxed.physics.absorption import absorptive_coefficients, absorptive_form_factors, tds_integral
from jaxed.physics.bloch import BlochSettings, potential_table, simulate
from jaxed.physics.crystal import AtomParams, expand, load_structure
from jaxed.physics.geometry import make_beam_set, select_beams, zone_axis_rotation
from jaxed.physics.potential import potential_coefficients
from jaxed.physics.scattering import form_factor_coefficients

SIMPLE = ROOT / "jaxed" / "data" / "simple_crystals.cif"
QUARTZ = ROOT / "jaxed" / "data" / "quartz_P3221.cif"
SETTINGS = BlochSettings(200.0)
SIMULATE = jax.jit(simulate, static_argnames="settings")  # one compiled program per settings, not op by op


def gaussian_closed_form(g, b_iso, a, b):
    """The TDS integral for f(q) = Σ aᵢ exp(−bᵢ q²/4): each term is a 2-D Gaussian integral,
    ∫ d²q e^{−α q² − β |g − q|²} = π/(α + β) · exp(−αβ g²/(α + β))."""
    al, be = b[:, None] / 4.0, b[None, :] / 4.0
    elastic = np.pi / (al + be) * np.exp(-al * be * g**2 / (al + be))
    al2, be2 = al + b_iso / 4.0, be + b_iso / 4.0
    diffuse = np.pi / (al2 + be2) * np.exp(-al2 * be2 * g**2 / (al2 + be2))
    return float(np.sum(np.outer(a, a) * (np.exp(-b_iso * g**2 / 4.0) * elastic - diffuse)))


@pytest.mark.parametrize("element", ["H", "O", "Pb"])
def test_quadrature_matches_the_gaussian_closed_form(element):
    # Peng/ITC Gaussians: the 2-D integral has a closed form. Quadrature (64 × 32 nodes) within 1e-6 relative for
    # |g| ≤ 4 Å⁻¹ and B = 0.3–3 Å² (measured ≤ 1e-9 where the value is not near a zero crossing).
    a, b = form_factor_coefficients([element], "peng")
    g = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    for b_iso in (0.3, 1.0, 3.0):
        got = np.asarray(tds_integral(jnp.asarray(g), jnp.array([b_iso]), jnp.asarray(a), jnp.asarray(b), "peng"))[0]
        want = np.array([gaussian_closed_form(x, b_iso, a[0], b[0]) for x in g])
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * scale)


@pytest.mark.parametrize("kind", ["lobato", "peng"])
def test_forward_value_is_the_einstein_tds_cross_section(kind):
    # g = 0: f'(0) = γ/(2K) · ∫ 2πq f(q)² (1 − e^{−Bq²/2}) dq (the TDS cross-section, scipy's adaptive 1-D quadrature
    # as the independent route), 1e-7 relative; Lobato's slow 1/q² tail included.
    for element, b_iso in (("Si", 0.5), ("Pb", 2.5)):
        a, b = form_factor_coefficients([element], kind)

        def f(q):
            x = b[0] * q * q
            return np.sum(a[0] * (2 + x) / (1 + x) ** 2) if kind == "lobato" else np.sum(a[0] * np.exp(-x / 4))

        want = integrate.quad(lambda q: 2 * np.pi * q * f(q) ** 2 * (1 - np.exp(-b_iso * q * q / 2)), 0, np.inf,
                              limit=200, epsabs=0, epsrel=1e-11)[0]
        got = float(tds_integral(jnp.zeros(1), jnp.array([b_iso]), jnp.asarray(a), jnp.asarray(b), kind)[0, 0])
        assert got == pytest.approx(want, rel=1e-7)


def test_mean_absorption_equals_number_density_times_cross_section():
    # The chain of prefactors: μ₀ = 2π U'₀/K must equal Σ_cell σ_TDS / Ω with σ_TDS = ∫|γ f|²(1 − e^{−Bq²/2}) dΩ,
    # dΩ = d²q/K² (1e-6 relative), the cell content taken from the expanded structure.
    crystal, atoms = load_structure(QUARTZ)
    k, gamma = SETTINGS.k, SETTINGS.gamma
    u0 = float(jnp.real(absorptive_coefficients(atoms, crystal, np.zeros((1, 3)), gamma, k)[0]))
    _, _, weight = (np.asarray(x) for x in expand(atoms, crystal))
    u_iso = np.asarray([np.trace(np.asarray(crystal.direct) @ u @ np.asarray(crystal.direct).T) / 3
                        for u in np.asarray(atoms.u_star)])
    sigma_sum = 0.0
    for site, species in enumerate(np.asarray(crystal.species)):
        a, b = np.asarray(crystal.ff_a)[species], np.asarray(crystal.ff_b)[species]
        bb = 8 * np.pi**2 * u_iso[site]

        def f(q):
            x = b * q * q
            return np.sum(a * (2 + x) / (1 + x) ** 2)

        cross = integrate.quad(lambda q: 2 * np.pi * q * (gamma * f(q)) ** 2 * (1 - np.exp(-bb * q * q / 2)), 0,
                               np.inf, limit=200, epsabs=0, epsrel=1e-11)[0] / k**2
        sigma_sum += weight[site].sum() * cross
    assert 2 * np.pi * u0 / k == pytest.approx(sigma_sum / crystal.volume, rel=1e-6)


def test_no_thermal_motion_no_absorption_and_growth_with_b_and_g():
    # B = 0: the bracket vanishes identically (|U'| ≤ 1e-15 |U|). With motion U'/U grows with |g| (anomalous
    # absorption is stronger for high-order coefficients) and with B.
    crystal, atoms = load_structure(SIMPLE, block="GaAs")
    k, gamma = SETTINGS.k, SETTINGS.gamma
    hkl = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 0], [4, 0, 0], [4, 4, 4]])
    u = np.abs(np.asarray(potential_coefficients(atoms, crystal, hkl, gamma)))
    still = AtomParams(atoms.frac, jnp.zeros_like(atoms.u_star), atoms.occupancy)
    assert np.abs(np.asarray(absorptive_coefficients(still, crystal, hkl, gamma, k))).max() <= 1e-15 * u.max()
    ratios = []
    for scale in (1.0, 2.0):
        hot = AtomParams(atoms.frac, atoms.u_star * scale, atoms.occupancy)
        u_hot = np.abs(np.asarray(potential_coefficients(hot, crystal, hkl, gamma)))
        ratios.append(np.abs(np.asarray(absorptive_coefficients(hot, crystal, hkl, gamma, k))) / u_hot)
    assert np.all(np.diff(ratios[0]) > 0) and np.all(ratios[1] > ratios[0])
    assert 0.0 < ratios[0][0] < 0.05  # a few per cent at g = 0 for GaAs at room temperature


def test_interpolated_form_factors_match_direct_evaluation():
    # f'(|g|) from the 384-knot grid vs the quadrature at each exact |g|: 1e-4 of f'(0).
    crystal, atoms = load_structure(QUARTZ)
    g = jnp.asarray(np.linspace(0.0, 3.0, 157) + 0.0071)
    # compiled (eager dispatch of the quadrature costs seconds); g and the crystal are constants of the program
    interp = np.asarray(jax.jit(lambda a: absorptive_form_factors(a, crystal, g, SETTINGS.gamma, SETTINGS.k))(atoms))
    direct = np.asarray(jax.jit(lambda a: absorptive_form_factors(a, crystal, g, SETTINGS.gamma, SETTINGS.k,
                                                                  n_knots=157 * 8))(atoms))
    exact = []
    for site in range(interp.shape[0]):
        species = np.asarray(crystal.species)[site]
        u_cart = np.asarray(crystal.direct) @ np.asarray(atoms.u_star)[site] @ np.asarray(crystal.direct).T
        row = tds_integral(g, jnp.array([8 * np.pi**2 * np.trace(u_cart) / 3]),
                           jnp.asarray(crystal.ff_a)[species][None], jnp.asarray(crystal.ff_b)[species][None],
                           crystal.scattering)
        exact.append(np.asarray(row)[0] * SETTINGS.gamma / (2 * SETTINGS.k))
    exact = np.array(exact)
    np.testing.assert_allclose(interp, exact, atol=1e-4 * exact[:, 0].max())
    np.testing.assert_allclose(direct, exact, atol=1e-5 * exact[:, 0].max())


def test_symmetry_friedel_and_equivalents():
    # Quartz (P3₂21, no inversion): U'_{−h} = U'_h* (a real absorptive potential), U'_h is complex, and the
    # symmetry-equivalent reflections h·R of each operation R have equal |U'| (and equal |U|). Tolerance 1e-12.
    crystal, atoms = load_structure(QUARTZ)
    base = np.array([[1, 0, 1], [1, 1, 2], [2, -1, 3]])
    rots = np.rint(np.asarray(crystal.rotations)).astype(int)
    assert len(rots) == 6
    for h in base:
        hkl = np.concatenate([[h, -h], np.einsum("i,oij->oj", h, rots)])
        ua = np.asarray(absorptive_coefficients(atoms, crystal, hkl, SETTINGS.gamma, SETTINGS.k))
        u = np.asarray(potential_coefficients(atoms, crystal, hkl, SETTINGS.gamma))
        np.testing.assert_allclose(ua[1], np.conj(ua[0]), rtol=1e-12)
        assert abs(ua[0].imag) > 1e-3 * abs(ua[0])
        assert len({tuple(x) for x in hkl[2:]}) > 1  # the operations do move h
        np.testing.assert_allclose(np.abs(ua[2:]), abs(ua[0]), rtol=1e-12)
        np.testing.assert_allclose(np.abs(u[2:]), abs(u[0]), rtol=1e-12)


def _setup(sg_max=0.02):
    crystal, atoms = load_structure(SIMPLE, block="GaAs")
    rot = zone_axis_rotation([1.0, 0.13, 2.4], np.asarray(crystal.direct))
    hkl = select_beams(np.asarray(crystal.reciprocal), rot, SETTINGS.k, 1.5, sg_max)
    return crystal, atoms, rot, make_beam_set([hkl])


def test_thermal_absorption_removes_intensity_at_the_tds_rate_and_matches_exact():
    # GaAs off axis, t = 100/400 Å. Perturbative vs exact exponential: |ΔI_g| ≤ 1e-3 of the strongest diffracted beam,
    # totals within 2e-3 (measured 3.4e-4 and 1.2e-3; the first-order error grows to 2.7e-3 of the strongest beam at
    # 800 Å, as with κ = 0.1). The total falls with t at about the mean rate exp(−2π U'₀ t/K) (within 0.03; anomalous
    # absorption adds a little), and the table has a second row only with thermal absorption on.
    crystal, atoms, rot, beams = _setup()
    t = np.array([100.0, 400.0])
    tds = BlochSettings(200.0, thermal_absorption=True)
    assert potential_table(atoms, crystal, beams, SETTINGS).ndim == 1
    assert potential_table(atoms, crystal, beams, tds).ndim == 2
    a = np.asarray(SIMULATE(atoms, crystal, beams, rot[None], t, tds))[0]
    b = np.asarray(SIMULATE(atoms, crystal, beams, rot[None], t,
                            dataclasses.replace(tds, absorption_method="exact")))[0]
    assert np.abs(a - b)[:, 1:].max() <= 1e-3 * b[:, 1:].max()
    np.testing.assert_allclose(a.sum(axis=1), b.sum(axis=1), atol=2e-3)
    u0 = float(jnp.real(absorptive_coefficients(atoms, crystal, np.zeros((1, 3)), SETTINGS.gamma, SETTINGS.k)[0]))
    mean = np.exp(-2 * np.pi * u0 * t / SETTINGS.k)
    assert np.all(b.sum(axis=1) < 1.0) and b.sum(axis=1)[1] < b.sum(axis=1)[0]
    np.testing.assert_allclose(b.sum(axis=1), mean, atol=0.03)
    # κ adds to the thermal term: κ > 0 on top removes more
    both = np.asarray(SIMULATE(atoms, crystal, beams, rot[None], t, dataclasses.replace(tds, absorption=0.05)))[0]
    assert np.all(both.sum(axis=1) < a.sum(axis=1) - 1e-3)


def test_thermal_absorption_gradient_through_adps():
    # d/d(U*, t) of a weighted intensity sum with thermal absorption (ADPs enter both U and U'): central differences
    # along a random direction, 1e-6 relative; everything finite.
    crystal, atoms, rot, beams = _setup(sg_max=0.015)
    settings = BlochSettings(200.0, thermal_absorption=True)
    weights = jnp.arange(beams.n_beams, dtype=jnp.float64)

    def f(u_star, t):
        return jnp.sum(simulate(AtomParams(atoms.frac, u_star, atoms.occupancy), crystal, beams, rot[None],
                                t, settings)[0, 0] * weights)

    args = (atoms.u_star, jnp.array([300.0]))
    analytic, fd, grads = directional_fd(f, args, seed=5, h=1e-5, scales=(1e-3, 10.0))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert analytic == pytest.approx(fd, rel=1e-6)
    # the absorptive part carries ADP information of its own: its gradient alone is non-zero
    g_abs = jax.jit(jax.grad(lambda u: jnp.real(absorptive_coefficients(AtomParams(atoms.frac, u, atoms.occupancy),
                                                                         crystal, np.array([[2, 0, 0]]),
                                                                         SETTINGS.gamma, SETTINGS.k)[0])))(atoms.u_star)
    assert np.abs(np.asarray(g_abs)).max() > 0
