"""Residuals and closed-form scales (docs/PHYSICS.md §7.1 and "Settled for jaxed")."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from jaxed import objective as ob


def _data(seed=0, n_frames=3, n_refl=12):
    rng = np.random.default_rng(seed)
    i_calc = rng.uniform(0.0, 1.0, (n_frames, n_refl)) ** 3
    i_obs = 500 * i_calc * rng.uniform(0.8, 1.2, i_calc.shape) + rng.normal(0, 3, i_calc.shape)
    sigma = np.sqrt(np.abs(i_obs) + 4)
    return jnp.asarray(i_calc), ob.prepare_observations(jnp.asarray(i_obs), jnp.asarray(sigma))


@pytest.mark.parametrize("kind", ["paper", "jana"])
def test_closed_form_scale_equals_brute_force(kind):
    # k from the closed form minimises the residual: equal to scipy's bounded scalar minimum, rtol 1e-6.
    i_calc, obs = _data()
    k = np.asarray(ob.frame_scales(i_calc, obs, kind=kind))
    fn = ob.wr_all_paper if kind == "paper" else ob.wr_all_jana
    for f in range(i_calc.shape[0]):
        sub = jax.tree_util.tree_map(lambda x: x[f : f + 1], obs)
        res = minimize_scalar(lambda s: float(fn(i_calc[f : f + 1] * s, sub)), bounds=(1, 2000), method="bounded",
                              options={"xatol": 1e-10})
        assert k[f] == pytest.approx(res.x, rel=1e-6)


def test_perfect_model_gives_zero():
    # I_obs = k_f·I_calc exactly (positive, well above σ): every residual is 0 after scaling, tol 1e-12.
    rng = np.random.default_rng(1)
    i_calc = jnp.asarray(rng.uniform(0.1, 1.0, (4, 9)))
    k = jnp.asarray([10.0, 300.0, 2.0, 7e4])
    obs = ob.prepare_observations(i_calc * k[:, None], jnp.sqrt(i_calc * k[:, None]) * 0.1)
    s = ob.summary(i_calc, obs)
    for key in ("R_obs", "R_all", "wR_all", "wR_all_jana", "GoF"):
        assert s[key] < 1e-12
    assert float(ob.loss(i_calc, obs)) < 1e-12 and float(ob.loss(i_calc, obs, kind="jana")) < 1e-12


def test_hand_computed_example():
    # Four reflections, one frame, scale fixed to 1 by construction (textbook formulas in plain python).
    i_o = np.array([400.0, 100.0, 2.0, 0.001])
    sig = np.array([20.0, 10.0, 3.0, 1.0])
    i_c = np.array([380.0, 110.0, 5.0, 1.0])
    obs = ob.prepare_observations(jnp.asarray(i_o[None]), jnp.asarray(sig[None]))
    u = 0.01
    num = den = numj = denj = 0.0
    r_num = r_den = 0.0
    for io, s, ic in zip(i_o, sig, i_c):
        if io < 0.01 * s:  # weak rule
            io_eff, s_sqrt = 0.0, 5 * np.sqrt(s)
        else:
            io_eff, s_sqrt = io, s / (2 * np.sqrt(io))
        w = (s_sqrt**2 + (u * np.sqrt(io_eff)) ** 2) ** -0.5
        num += w**2 * (io_eff - ic) ** 2
        den += w**2 * io_eff**2
        wj = 1 / (s_sqrt**2 + (u * np.sqrt(io_eff)) ** 2)
        numj += wj * (np.sqrt(io_eff) - np.sqrt(ic)) ** 2
        denj += wj * io_eff
        if io > 3 * s:
            r_num += abs(np.sqrt(io) - np.sqrt(ic))
            r_den += np.sqrt(io)
    ic = jnp.asarray(i_c[None])
    assert float(ob.wr_all_paper(ic, obs)) == pytest.approx(np.sqrt(num / den), rel=1e-12)
    assert float(ob.wr_all_jana(ic, obs)) == pytest.approx(np.sqrt(numj / denj), rel=1e-12)
    assert float(ob.r_obs(ic, obs)) == pytest.approx(r_num / r_den, rel=1e-12)
    assert ob.counts(obs) == (2, 4)


def test_weak_rule():
    # I_obs < 0.01σ → I_obs = 0 and σ(√I) = 5√σ; just above, σ(√I) = σ/(2√I) (continuous at the threshold, 1e-12).
    obs = ob.prepare_observations(jnp.array([[0.009, -50.0, 0.0100001]]), jnp.array([[1.0, 4.0, 1.0]]))
    np.testing.assert_allclose(np.asarray(obs.i_obs)[0, :2], 0.0)
    np.testing.assert_allclose(np.asarray(obs.sigma_sqrt)[0], [5.0, 10.0, 1 / (2 * np.sqrt(0.0100001))], rtol=1e-12)
    assert abs(float(obs.sigma_sqrt[0, 2]) - 5.0) < 1e-4  # 0.0100001 is 1e-5 relative above the threshold


def test_no_nan_anywhere():
    # All-weak frame, fully masked frame, I_calc = 0 frame, negative and zero I_obs: value and gradient finite.
    i_obs = jnp.array([[-5.0, 0.0, 0.001, -1.0], [100.0, 50.0, 20.0, 1.0], [100.0, 50.0, 20.0, 1.0], [3.0, 0, 0, 0]])
    sigma = jnp.array([[3.0, 2.0, 1.0, 1.0], [10.0, 7.0, 4.0, 1.0], [10.0, 7.0, 4.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    mask = jnp.array([[True] * 4, [False] * 4, [True] * 4, [True, False, False, False]])
    obs = ob.prepare_observations(i_obs, sigma, mask)
    i_calc = jnp.array([[0.1, 0.2, 0.3, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    for kind in ("paper", "jana"):
        for per_frame in (False, True):
            value, grad = jax.value_and_grad(lambda x: ob.loss(x, obs, kind=kind, per_frame_mean=per_frame))(i_calc)
            assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    assert all(np.isfinite(v) for k, v in ob.summary(i_calc, obs).items() if k != "scales")


@pytest.mark.parametrize("kind", ["paper", "jana"])
def test_loss_gradient_matches_finite_differences(kind):
    # Through the closed-form scale: directional derivative vs central differences, rtol 1e-6.
    i_calc, obs = _data(seed=2)
    f = lambda x: ob.loss(x, obs, kind=kind)
    g = np.asarray(jax.grad(f)(i_calc))
    d = np.random.default_rng(3).normal(size=g.shape)
    h = 1e-6
    fd = (float(f(i_calc + h * d)) - float(f(i_calc - h * d))) / (2 * h)
    assert np.sum(g * d) == pytest.approx(fd, rel=1e-6)


def test_padding_with_garbage_changes_nothing():
    # Extra masked entries holding NaN/inf/garbage: every residual unchanged, tol 1e-12.
    i_calc, obs = _data(seed=4)
    ref = ob.summary(i_calc, obs)
    i_obs = jnp.concatenate([obs.i_obs, jnp.full((3, 2), jnp.nan)], axis=1)
    sigma = jnp.concatenate([obs.sigma, jnp.array([[0.0, -1.0]] * 3)], axis=1)
    mask = jnp.concatenate([obs.mask, jnp.zeros((3, 2), bool)], axis=1)
    padded = ob.prepare_observations(i_obs, sigma, mask)
    i_pad = jnp.concatenate([i_calc, jnp.full((3, 2), 1e9)], axis=1)
    # weak-rule already applied in obs.i_obs, so compare against a fresh preparation of the same raw data
    new = ob.summary(i_pad, padded)
    for key in ("R_obs", "wR_all", "wR_all_jana", "N_obs", "N_all"):
        assert new[key] == pytest.approx(ref[key], abs=1e-12)
    np.testing.assert_allclose(np.asarray(ob.residual_vector(i_pad * 2, padded)).reshape(3, -1)[:, :-2],
                               np.asarray(ob.residual_vector(i_calc * 2, obs)).reshape(3, -1), atol=1e-12)


def test_residual_vector_squares_to_wr():
    i_calc, obs = _data(seed=5)
    for kind, fn in (("paper", ob.wr_all_paper), ("jana", ob.wr_all_jana)):
        r = ob.residual_vector(i_calc * 300, obs, kind)
        assert float(jnp.sqrt(jnp.sum(r**2))) == pytest.approx(float(fn(i_calc * 300, obs)), rel=1e-12)
