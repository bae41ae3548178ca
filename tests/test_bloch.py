"""Bloch-wave propagation against physics (docs/PHYSICS.md §4–6): Pendellösung, kinematic limit, flux,
eigh = expm, inversion theorem, Friedel violation, symmetry equivalents, transforms, absorption, float32."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, directional_fd
from jaxed.physics.bloch import BlochSettings, frame_wavefunction, potential_table, propagate_eigh, simulate
from jaxed.physics.crystal import AtomParams, load_structure
from jaxed.physics.geometry import make_beam_set, rotation_x, select_beams, zone_axis_rotation
from jaxed.physics.potential import potential_coefficients

SIMPLE = ROOT / "jaxed" / "data" / "simple_crystals.cif"
GENERAL_AXIS = [1.0, 0.13, 2.4]  # a general (non-zone-axis) direction, from the CLI example


def setup(block="GaAs", uvw=GENERAL_AXIS, g_max=1.5, sg_max=0.02, n_beams=None, **kw):
    crystal, atoms = load_structure(SIMPLE, block=block)
    settings = BlochSettings(200.0, **kw)
    rot = zone_axis_rotation(uvw, np.asarray(crystal.direct))
    hkl = select_beams(np.asarray(crystal.reciprocal), rot, settings.k, g_max, sg_max)
    beams = make_beam_set([hkl], n_beams=n_beams)
    return crystal, atoms, settings, rot, beams


def intensities(atoms, crystal, beams, rot, t, settings, normal=None):
    return np.asarray(simulate(atoms, crystal, beams, rot[None], np.atleast_1d(t), settings, normal))[0]


def test_two_beam_pendelloesung():
    # Two beams, no metric: I_g(t) = sin²(π t s_eff)/(ξ² s_eff²), s_eff = sqrt(s² + ξ⁻²), ξ = K/|U_g| (PHYSICS.md
    # §6.2). Tolerance 1e-12 absolute (exact identity).
    k = BlochSettings(200.0).k
    u_g = -0.004472 + 0.0013j
    xi = k / abs(u_g)
    t = np.array([100.0, 2000.0, 4458.0, 8916.0])
    for s in (0.0, 2e-4, -1e-3):
        b = jnp.array([[0.0, np.conj(u_g)], [u_g, 2 * k * s]])
        psi = np.asarray(propagate_eigh(b, jnp.asarray(np.pi * t / k)))
        s_eff = np.sqrt(s**2 + xi**-2)
        expected = np.sin(np.pi * t * s_eff) ** 2 / (xi**2 * s_eff**2)
        np.testing.assert_allclose(np.abs(psi[:, 1]) ** 2, expected, atol=1e-12)
        np.testing.assert_allclose(np.abs(psi[:, 0]) ** 2, 1 - expected, atol=1e-12)


def test_two_beam_from_the_crystal():
    # The full chain with beams {000, 200} of GaAs: period of the thickness fringes = ξ₂₀₀ = K/|U₂₀₀| (tol 1e-10).
    crystal, atoms = load_structure(SIMPLE, block="GaAs")
    settings = BlochSettings(200.0, metric=False, mean_potential=False)
    beams = make_beam_set([np.array([[0, 0, 0], [2, 0, 0]])])
    rot = zone_axis_rotation([0, 0, 1], np.asarray(crystal.direct))
    g = np.asarray(crystal.reciprocal) @ np.array([2, 0, 0])
    # tilt about the lab axis ⟂ g so that s_200 = 0 exactly (exact Bragg condition): rotate g by θ_B towards +z
    theta_b = np.arcsin(np.linalg.norm(g) / (2 * settings.k))
    g_lab = rot @ g
    axis = np.cross(g_lab / np.linalg.norm(g_lab), [0, 0, 1.0])
    axis /= np.linalg.norm(axis)
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    tilt = np.eye(3) + np.sin(theta_b) * kx + (1 - np.cos(theta_b)) * kx @ kx
    rot = tilt @ rot
    u200 = abs(complex(potential_coefficients(atoms, crystal, np.array([[2, 0, 0]]), settings.gamma)[0]))
    xi = settings.k / u200
    t = np.array([0.25, 0.5, 0.75]) * xi
    i = np.asarray(simulate(atoms, crystal, beams, rot[None], t, settings))[0]
    np.testing.assert_allclose(i[:, 1], np.sin(np.pi * t / xi) ** 2, atol=1e-10)


def test_kinematic_thin_crystal_limit():
    # I_g → (π t |U_g|/K)² sinc²(s_g t) as t → 0 (PHYSICS.md §6.1). At t = 0.5 Å the dynamical correction is
    # ~1e-3 relative (PHYSICS.md: median 5.6e-4): tolerance 1e-2 relative on every beam with |U_g| > 0.01 Å⁻².
    crystal, atoms, settings, rot, beams = setup(metric=False)
    t = 0.5
    i = intensities(atoms, crystal, beams, rot, t, settings)[0]
    hkl = np.asarray(beams.hkl[0])
    u = np.asarray(potential_coefficients(atoms, crystal, hkl, settings.gamma))
    g_lab = hkl @ (rot @ np.asarray(crystal.reciprocal)).T
    sg = g_lab[:, 2] - np.sum(g_lab**2, axis=1) / (2 * settings.k)
    kin = (np.pi * t * np.abs(u) / settings.k) ** 2 * np.sinc(sg * t) ** 2
    strong = (np.abs(u) > 0.01) & np.asarray(beams.mask[0])
    strong[0] = False
    assert strong.sum() >= 5
    np.testing.assert_allclose(i[strong], kin[strong], rtol=1e-2)


def test_flux_is_conserved_without_absorption():
    # Σ|ψ_g|² = 1 without the metric (normal ∥ beam); Σ D_g|ψ_g|² = 1 with the metric and an inclined normal
    # (PHYSICS.md §4.4). Tolerance 1e-12.
    crystal, atoms, settings, rot, beams = setup(metric=False)
    i = intensities(atoms, crystal, beams, rot, [50.0, 400.0, 1500.0], settings)
    np.testing.assert_allclose(i.sum(axis=1), 1.0, atol=1e-12)

    settings = BlochSettings(200.0)
    normal = np.linalg.inv(rot) @ np.array([0.2, -0.3, -1.0])  # crystal frame, inclined 20° from the beam
    u_ext = potential_table(atoms, crystal, beams, settings)
    psi = np.asarray(frame_wavefunction(u_ext, beams.hkl[0], beams.mask[0], beams.coupling[0], jnp.asarray(rot),
                                        jnp.array([50.0, 400.0, 1500.0]), jnp.asarray(crystal.reciprocal), settings,
                                        jnp.asarray(normal)))
    n_lab = rot @ normal / np.linalg.norm(normal)
    g_lab = np.asarray(beams.hkl[0]) @ (rot @ np.asarray(crystal.reciprocal)).T
    d = 1 + (g_lab @ n_lab) / (-settings.k * n_lab[2])
    np.testing.assert_allclose((d * np.abs(psi) ** 2).sum(axis=1), 1.0, atol=1e-12)
    assert abs((np.abs(psi) ** 2).sum(axis=1) - 1).max() > 1e-6  # the metric matters here (the test can fail)


@pytest.mark.parametrize("normal", [None, (0.1, 0.2, 1.0)])
def test_eigh_equals_matrix_exponential(normal):
    # Same model, two propagators: eigendecomposition vs jax.scipy.linalg.expm (PHYSICS.md §4.6). Tol 1e-10.
    crystal, atoms, settings, rot, beams = setup()
    normal = None if normal is None else jnp.asarray(normal)
    t = [30.0, 300.0, 900.0]
    a = intensities(atoms, crystal, beams, rot, t, settings, normal)
    b = intensities(atoms, crystal, beams, rot, t, dataclasses.replace(settings, propagator="expm"), normal)
    np.testing.assert_allclose(a, b, atol=1e-10)


def test_inversion_theorem():
    # The structure inverted through the origin (U_g → U_g*) gives I_inv(t) = I(−t) exactly (PHYSICS.md §6.4).
    # Tolerance 1e-12. And I_inv(t) ≠ I(t) (non-centrosymmetric: the test distinguishes the hands).
    crystal, atoms, settings, rot, beams = setup()
    inverted = AtomParams(-atoms.frac, atoms.u_star, atoms.occupancy)
    t = np.array([200.0, 700.0])
    i_inv = intensities(inverted, crystal, beams, rot, t, settings)
    np.testing.assert_allclose(i_inv, intensities(atoms, crystal, beams, rot, -t, settings), atol=1e-12)
    assert np.abs(i_inv - intensities(atoms, crystal, beams, rot, t, settings)).max() > 1e-5


def _friedel_pairs(hkl):
    index = {tuple(h): j for j, h in enumerate(hkl)}
    return [(j, index[tuple(-h)]) for j, h in enumerate(hkl) if any(h) and tuple(-h) in index and index[tuple(-h)] > j]


@pytest.mark.parametrize("block, centric", [("GaAs", False), ("NaCl", True)])
def test_friedel_law_at_zone_axis(block, centric):
    # Exact [110] zone axis with zero-order-Laue-zone beams only: Friedel's law I(g) = I(−g) holds for centrosymmetric
    # NaCl (tol 1e-12 relative to the strongest diffracted beam) and is broken by 3-beam interference in GaAs
    # (the 002/00-2 polarity contrast): some pair differs by > 1 % of the strongest diffracted beam.
    crystal, atoms, settings, rot, beams = setup(block, uvw=[1, 1, 0], g_max=1.6, sg_max=0.04)
    hkl = np.asarray(beams.hkl[0])[np.asarray(beams.mask[0])]
    assert np.all(hkl @ np.array([1, 1, 0]) == 0)  # ZOLZ only
    i = intensities(atoms, crystal, beams, rot, 600.0, settings)[0]
    ref = i[1:].max()
    pairs = _friedel_pairs(hkl)
    assert len(pairs) > 10
    worst = max(abs(i[a] - i[b]) for a, b in pairs)
    if centric:
        assert worst < 1e-12 * ref
    else:
        assert worst > 1e-2 * ref


def test_symmetry_equivalent_beams_at_zone_axis():
    # SrTiO₃ (Pm-3m) exactly along [001]: the 4mm projection symmetry makes the beams of each class of equivalents
    # (hk0 under 90° rotations and mirrors, same l) equally intense; tolerance 1e-10 relative to the strongest beam.
    crystal, atoms, settings, rot, beams = setup("SrTiO3", uvw=[0, 0, 1], g_max=2.0, sg_max=0.05)
    hkl = np.asarray(beams.hkl[0])[np.asarray(beams.mask[0])]
    i = intensities(atoms, crystal, beams, rot, 350.0, settings)[0][: len(hkl)]
    index = {tuple(h): j for j, h in enumerate(hkl)}
    checked = 0
    for j, (h, k, l) in enumerate(hkl):
        for e in [(-k, h, l), (-h, -k, l), (k, -h, l), (k, h, l), (-h, k, l)]:
            if e in index:
                assert abs(i[index[e]] - i[j]) < 1e-10 * i[1:].max()
                checked += 1
    assert checked > 30


def test_vmap_equals_loop_and_jit_equals_eager():
    # Several orientations in one vmapped call equal one call per orientation; jit equals eager. Tol 1e-13.
    crystal, atoms = load_structure(SIMPLE, block="GaAs")
    settings = BlochSettings(200.0)
    rots = [zone_axis_rotation(u, np.asarray(crystal.direct)) for u in ([1, 0.13, 2.4], [0.3, 1, 2], [2, 1.1, 0.2])]
    hkls = [select_beams(np.asarray(crystal.reciprocal), r, settings.k, 1.3, 0.02) for r in rots]
    beams = make_beam_set(hkls)
    t = jnp.array([[100.0], [250.0], [400.0]])
    batched = np.asarray(simulate(atoms, crystal, beams, np.stack(rots), t, settings))
    for f in range(3):
        single = make_beam_set([hkls[f]], n_beams=beams.n_beams)
        one = np.asarray(simulate(atoms, crystal, single, rots[f][None], t[f], settings))[0]
        np.testing.assert_allclose(batched[f], one, atol=1e-13)
    jitted = jax.jit(simulate, static_argnames="settings")
    np.testing.assert_allclose(np.asarray(jitted(atoms, crystal, beams, np.stack(rots), t, settings)), batched, atol=1e-13)


def test_padding_changes_nothing():
    # The same frame padded to 3× its size: identical intensities (tol 1e-13) and gradients (tol 1e-10 relative, and
    # 1e-10 of the gradient's norm absolute).
    crystal, atoms, settings, rot, beams = setup()
    padded = make_beam_set([np.asarray(beams.hkl[0])[np.asarray(beams.mask[0])]], n_beams=3 * beams.n_beams)
    n = beams.n_beams

    def loss(frac, t, b):
        a = AtomParams(frac, atoms.u_star, atoms.occupancy)
        i = simulate(a, crystal, b, rot[None], t, settings)[0, 0]
        return jnp.sum(i[1:n] * jnp.arange(1, n))

    loss = jax.jit(loss)
    args = (atoms.frac, jnp.array([420.0]))
    assert np.isclose(float(loss(*args, beams)), float(loss(*args, padded)), rtol=1e-13)
    g1 = jax.grad(loss, argnums=(0, 1))(*args, beams)
    g2 = jax.grad(loss, argnums=(0, 1))(*args, padded)
    for x, y in zip(g1, g2):
        # entries that vanish by symmetry sit at rounding level (≈ 1e-14 times the norm) and differ there: the
        # absolute tolerance scales with the gradient's norm (a real padding leak is O(norm), 1e-10 of it fails)
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-10 * np.linalg.norm(y))


def test_absorption_first_order_vs_exact():
    # κ = 0.1, t = 100/400 Å (PHYSICS.md §4.5, T6): perturbative vs the exact non-Hermitian exponential. Max |ΔI_g|
    # ≤ 1e-3 of the strongest diffracted beam, total intensity within 2e-3; the total is < 1 and falls with t.
    crystal, atoms, _, rot, beams = setup(sg_max=0.03)
    t = [100.0, 400.0]

    def both(kappa):
        a = intensities(atoms, crystal, beams, rot, t, BlochSettings(200.0, absorption=kappa))
        b = intensities(atoms, crystal, beams, rot, t, BlochSettings(200.0, absorption=kappa, absorption_method="exact"))
        return a, b

    a, b = both(0.1)
    assert np.abs(a - b)[:, 1:].max() <= 1e-3 * b[:, 1:].max()
    np.testing.assert_allclose(a.sum(axis=1), b.sum(axis=1), atol=2e-3)
    assert b.sum(axis=1)[1] < b.sum(axis=1)[0] < 1.0
    # the mean absorption exp(−2π κ U₀ t / K) sets the scale of the loss (anomalous absorption adds a little)
    u0 = float(jnp.real(potential_coefficients(atoms, crystal, np.zeros((1, 3)), BlochSettings(200.0).gamma)[0]))
    assert abs(b.sum(axis=1)[1] - np.exp(-2 * np.pi * 0.1 * u0 * 400.0 / BlochSettings(200.0).k)) < 0.02
    # first-order accuracy: the error falls as κ² (×100 for κ/10; require > ×30)
    a2, b2 = both(0.01)
    assert np.abs(a - b).max() > 30 * np.abs(a2 - b2).max()


def test_absorbing_propagator_has_no_secular_error():
    # Random 6×6 Hermitian B_r (gaps ~ 1) and absorptive ε·B_a, ε = 0.01, one slice, τ = 5 … 80. The textbook
    # first-order form diag(e^{iτλ̃}) + iW_off∘Φ (written here with numpy) misses the second-order eigenvalue shift, so
    # its error relative to the exact exponential grows with τ (measured ×8 from τ = 5 to 80; require ≥ ×4); with the
    # exponentiated shift (jaxed) it does not grow (require ≤ ×2) and is ≥ 10× smaller at τ = 20 and 80.
    from jaxed.physics.bloch import propagate_absorbing, propagate_expm

    rng = np.random.default_rng(7)
    n = 6
    x = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    b_r = (x + x.conj().T) / 2 + np.diag(np.linspace(-2.0, 2.0, n))
    y = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    b_a = 0.01 * ((y + y.conj().T) / 2 + 2.0 * np.eye(n))
    tau = np.array([5.0, 20.0, 80.0])

    lam, c = np.linalg.eigh(b_r)
    w = c.conj().T @ b_a @ c
    lam_d = lam + 1j * np.real(np.diag(w))
    v = 1j * (w - np.diag(np.diag(w)))
    first = []
    for t in tau:
        e = np.exp(1j * t * lam_d)
        d = lam_d[:, None] - lam_d[None, :]
        phi = np.where(np.eye(n, dtype=bool), 1j * t * e[:, None], (e[:, None] - e[None, :]) / (d + np.eye(n)))
        first.append(c @ (e * c[0].conj() + (v * phi) @ c[0].conj()))
    exact = np.asarray(propagate_expm(jnp.asarray(b_r + 1j * b_a), jnp.asarray(tau)))
    ours = np.asarray(propagate_absorbing(jnp.asarray(b_r), jnp.asarray(b_a), jnp.asarray(tau), slices=1))
    norm = np.abs(exact).max(axis=1)
    rel_first = np.abs(np.array(first) - exact).max(axis=1) / norm
    rel_ours = np.abs(ours - exact).max(axis=1) / norm
    assert rel_first[2] >= 4 * rel_first[0]
    assert rel_ours[2] <= 2 * rel_ours[0]
    assert np.all(rel_ours[1:] * 10 <= rel_first[1:])


def test_absorption_slices_converge_to_the_exact_exponential():
    # κ = 0.3, t = 800 Å (strong absorption). Slicing the thickness tends to the exact exponential: 256 slices are
    # ≥ 4× closer than one (measured 1.8e-5 → 4e-6 of a direct beam of 3e-3). The default is 32 slices (its accuracy
    # at κ = 0.1: test_absorption_first_order_vs_exact).
    crystal, atoms, _, rot, beams = setup(sg_max=0.03)
    t = jnp.asarray([800.0])
    run = jax.jit(simulate, static_argnames="settings")
    exact = np.asarray(run(atoms, crystal, beams, rot[None], t,
                           BlochSettings(200.0, absorption=0.3, absorption_method="exact")))[0]
    errors = {n: np.abs(np.asarray(run(atoms, crystal, beams, rot[None], t,
                                       BlochSettings(200.0, absorption=0.3, absorption_slices=n)))[0] - exact).max()
              for n in (1, 256)}
    assert errors[256] < errors[1] / 4
    assert BlochSettings(200.0).absorption_slices == 32
    with pytest.raises(ValueError, match="absorption_slices"):
        BlochSettings(200.0, absorption_slices=0)


def test_absorption_gradients_are_finite_and_correct():
    # d/d(U*, t) of a weighted intensity sum with absorption (perturbative path) matches central differences along a
    # random direction, tol 1e-6 relative. (GaAs sites are special positions: ADPs and thickness are the free inputs.)
    crystal, atoms, _, rot, beams = setup(sg_max=0.015)
    settings = BlochSettings(200.0, absorption=0.1)
    weights = jnp.arange(beams.n_beams, dtype=jnp.float64)

    def f(u_star, t):
        return jnp.sum(simulate(AtomParams(atoms.frac, u_star, atoms.occupancy), crystal, beams, rot[None],
                                t, settings)[0, 0] * weights)

    f = jax.jit(f)
    args = (atoms.u_star, jnp.array([300.0]))
    analytic, fd, grads = directional_fd(f, args, seed=3, h=1e-5, scales=(1e-3, 10.0))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert analytic == pytest.approx(fd, rel=1e-6)


def test_float32_runs_and_agrees():
    # complex64 path: intensities agree with float64 to 1e-4 absolute (single precision, phases up to ~10² rad).
    crystal, atoms, settings, rot, beams = setup()
    a32 = AtomParams(*(jnp.asarray(x, jnp.float32) for x in (atoms.frac, atoms.u_star, atoms.occupancy)))
    i32 = simulate(a32, crystal, beams, jnp.asarray(rot[None], jnp.float32), jnp.array([300.0], jnp.float32), settings)
    assert i32.dtype == jnp.float32
    i64 = intensities(atoms, crystal, beams, rot, 300.0, settings)
    np.testing.assert_allclose(np.asarray(i32)[0], i64, atol=1e-4)


def test_rotation_about_beam_leaves_intensities_unchanged():
    # A rotation about the beam (lab z) does not change s_g (PHYSICS.md §5.4): same intensities, tol 1e-12.
    crystal, atoms, settings, rot, beams = setup()
    c, s = np.cos(0.7), np.sin(0.7)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    np.testing.assert_allclose(intensities(atoms, crystal, beams, rz @ rot, 500.0, settings),
                               intensities(atoms, crystal, beams, rot, 500.0, settings), atol=1e-12)
    # whereas a tilt about x does (the test can fail)
    tilted = np.asarray(rotation_x(0.01)) @ rot
    assert np.abs(intensities(atoms, crystal, beams, tilted, 500.0, settings)
                  - intensities(atoms, crystal, beams, rot, 500.0, settings)).max() > 1e-4


def test_divided_differences_of_exp_against_the_definition():
    # Φ_jk = (e^{iτλ_j} − e^{iτλ_k})/(λ_j − λ_k) (PHYSICS.md §4.7), built from n phases and a series near the diagonal.
    # Reference: the definition in extended precision (mpmath-free: numpy longdouble) where |λ_j − λ_k| is large, the
    # limit iτ e^{iτλ} on the diagonal, and the series where the gap is tiny. Gaps span 1e-12 … 1 Å⁻² and cross the
    # series/product switch (x₀ = 0.01) on both sides. Tolerance 1e-11 relative to max|Φ| (float64).
    from jaxed.physics.bloch import _divided_exp

    lam = np.array([-0.8, -0.3, -0.3 + 1e-12, 0.05, 0.05 + 2e-4, 0.05 + 4e-4, 0.2, 0.2 + 3e-3, 0.61])
    tau = np.array([5.0, 64.6, 300.0])
    got = np.asarray(_divided_exp(jnp.asarray(lam), jnp.asarray(tau)))
    ref = np.empty_like(got)
    for it, t in enumerate(tau):
        for j, a in enumerate(lam):
            for k, b in enumerate(lam):
                d = np.longdouble(a) - np.longdouble(b)
                if abs(float(d)) * t < 1e-6:  # the limit plus the first-order term of the mean-value expansion
                    ref[it, j, k] = 1j * t * np.exp(1j * t * 0.5 * (a + b))
                else:
                    ea = np.cos(np.longdouble(t) * a) + 1j * np.sin(np.longdouble(t) * a)
                    eb = np.cos(np.longdouble(t) * b) + 1j * np.sin(np.longdouble(t) * b)
                    ref[it, j, k] = complex((ea - eb) / d)
    scale = np.max(np.abs(ref))
    assert np.max(np.abs(got - ref)) / scale < 1e-11
    # complex (damped) eigenvalues take the direct form: same definition
    lam_c = lam + 1j * np.linspace(0.0, 0.01, lam.size)
    got_c = np.asarray(_divided_exp(jnp.asarray(lam_c), jnp.asarray(tau[:1])))[0]
    e = np.exp(1j * tau[0] * lam_c)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref_c = (e[:, None] - e[None, :]) / (lam_c[:, None] - lam_c[None, :])
    far = np.abs(lam_c[:, None] - lam_c[None, :]) > 1e-3
    assert np.max(np.abs(got_c - ref_c)[far]) / np.max(np.abs(got_c)) < 1e-12


_P1BAR = """data_p1bar
_cell_length_a 5.1
_cell_length_b 6.2
_cell_length_c 7.3
_cell_angle_alpha 95
_cell_angle_beta 103
_cell_angle_gamma 88
loop_
_space_group_symop_operation_xyz
'x,y,z'
'{inv}'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_U_iso_or_equiv
Pb1 Pb 0.11 0.23 0.37 0.012
Br1 Br 0.31 0.77 0.05 0.020
O1 O 0.02 0.41 0.66 0.015
loop_
_atom_site_aniso_label
_atom_site_aniso_U_11
_atom_site_aniso_U_22
_atom_site_aniso_U_33
_atom_site_aniso_U_12
_atom_site_aniso_U_13
_atom_site_aniso_U_23
Pb1 0.011 0.014 0.009 0.002 -0.001 0.003
"""


@pytest.mark.parametrize("kappa", [0.0, 0.1])
def test_real_path_for_a_crystal_centric_at_the_origin(tmp_path, kappa):
    # P-1 with general positions and an anisotropic site. Inversion at the origin ⇒ U_g real (PHYSICS.md §3): the
    # complex table's imaginary parts are rounding (≤ 1e-13 max|U|), the real path is taken, and it gives the same
    # intensities (1e-12 absolute) and gradients w.r.t. positions, ADPs and thickness (1e-8 relative) as the complex
    # path, elastic and with perturbative absorption; its gradient matches central differences (1e-6 relative).
    # The same crystal with the centre moved to (1/4, 0, 0) has complex U_g (|Im U| > 1e-3 max|U|) and no real path.
    from jaxed.physics.bloch import centric_at_origin

    (tmp_path / "origin.cif").write_text(_P1BAR.format(inv="-x,-y,-z"))
    (tmp_path / "shifted.cif").write_text(_P1BAR.format(inv="-x+1/2,-y,-z"))
    crystal, atoms = load_structure(tmp_path / "origin.cif")
    shifted, _ = load_structure(tmp_path / "shifted.cif")
    assert centric_at_origin(crystal) and not centric_at_origin(shifted)
    real = BlochSettings(200.0, absorption=kappa)
    cplx = dataclasses.replace(real, real_if_centric=False)
    rot = zone_axis_rotation(GENERAL_AXIS, np.asarray(crystal.direct))
    beams = make_beam_set([select_beams(np.asarray(crystal.reciprocal), rot, real.k, 1.2, 0.03)])
    assert beams.n_beams > 20
    u_c = np.asarray(potential_table(atoms, crystal, beams, cplx))
    assert np.abs(u_c.imag).max() <= 1e-13 * np.abs(u_c).max()
    assert not np.iscomplexobj(np.asarray(potential_table(atoms, crystal, beams, real)))
    u_s = np.asarray(potential_table(atoms, shifted, beams, real))
    assert np.iscomplexobj(u_s) and np.abs(u_s.imag).max() > 1e-3 * np.abs(u_s).max()

    weights = jnp.linspace(0.5, 2.0, beams.n_beams)

    def loss(settings):
        def f(frac, u_star, t):
            i = simulate(AtomParams(frac, u_star, atoms.occupancy), crystal, beams, rot[None], t, settings)
            return jnp.sum(i[0] * weights[None, :])
        return jax.jit(f)

    args = (atoms.frac, atoms.u_star, jnp.array([250.0, 700.0]))
    f_r, f_c = loss(real), loss(cplx)
    i_r = simulate(atoms, crystal, beams, rot[None], args[2], real)
    i_c = simulate(atoms, crystal, beams, rot[None], args[2], cplx)
    np.testing.assert_allclose(np.asarray(i_r), np.asarray(i_c), atol=1e-12)
    analytic, fd, g_r = directional_fd(f_r, args, seed=7, h=1e-4, scales=(1e-3, 1e-4, 10.0))
    g_c = jax.grad(f_c, argnums=(0, 1, 2))(*args)
    for a, b in zip(g_r, g_c):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-10 * np.abs(np.asarray(b)).max())
    assert analytic == pytest.approx(fd, rel=1e-6)
