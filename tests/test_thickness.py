"""Tests for jaxed.model.thickness: geometric thickness models, ThicknessNN, warm start, checkpoints, optax use.

conftest.py turns on float64; every numeric assertion states its tolerance.
"""
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jaxed.errors import JaxedInputError
from jaxed.model.thickness import (
    THICKNESS_MODELS,
    KinematicThickness,
    SingleThickness,
    fit_to_profile,
    make_thickness_model,
    params_from_flat,
    params_to_flat,
)

THETA = jnp.radians(jnp.linspace(-70.0, 70.0, 57))  # [rad]
KEY = jax.random.key(0)
NN_OPTIONS = dict(t_init=800.0, t_min=100.0, t_max=3000.0, sigma_min=2.0, sigma_max=50.0)


def _model(name, **options):
    if name == "nn":
        options = {**NN_OPTIONS, **options}
    return make_thickness_model(name, **options)


def _perturbed(params, key, scale):
    """params + scale·N(0, 1) on every leaf (so that every path of the network carries gradient)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(treedef, noisy)


# ---------------------------------------------------------------------------------------------------------------------
# 1. every model: shapes, positivity, finiteness, transforms


@pytest.mark.parametrize("name", THICKNESS_MODELS)
def test_shape_positive_finite(name):
    model = _model(name)
    params = model.init(KEY)
    t = model.apply(params, THETA)
    assert t.shape == THETA.shape and t.dtype == jnp.float64
    assert bool(jnp.all(jnp.isfinite(t))) and bool(jnp.all(t > 0))
    samples = model.apply(params, THETA, key=jax.random.key(1), n_samples=4)
    assert samples.shape == (4, *THETA.shape)
    assert bool(jnp.all(jnp.isfinite(samples)))


@pytest.mark.parametrize("name", THICKNESS_MODELS)
def test_jit_and_vmap_match_eager(name):
    model = _model(name)
    params = model.init(KEY)
    eager = model.apply(params, THETA)
    jitted = jax.jit(model.apply)(params, THETA)
    np.testing.assert_allclose(jitted, eager, rtol=1e-13)  # same maths, only fusion differs
    batches = THETA.reshape(3, -1)
    mapped = jax.vmap(model.apply, in_axes=(None, 0))(params, batches)
    np.testing.assert_allclose(mapped, eager.reshape(3, -1), rtol=1e-13)  # vmap = loop


@pytest.mark.parametrize("name", THICKNESS_MODELS)
def test_float32(name):
    model = _model(name)
    params = model.init(KEY, dtype=jnp.float32)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    theta32 = THETA.astype(jnp.float32)
    t = model.apply(params, theta32)
    assert t.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(t))) and bool(jnp.all(t > 0))
    t64 = model.apply(model.init(KEY), THETA)
    np.testing.assert_allclose(t, t64, rtol=1e-5)  # float32 rounding of the same function


def test_kinematic_is_exactly_10_angstrom():
    model = make_thickness_model("kinematic")
    params = model.init()
    assert params == {}
    t = model.apply(params, THETA)
    assert bool(jnp.all(t == 10.0))  # exact


def test_single_and_constant_are_the_same_model():
    assert make_thickness_model("constant", t0=820.0) == make_thickness_model("single", t0=820.0)
    model = make_thickness_model("constant", t0=820.0)
    np.testing.assert_allclose(model.apply(model.init(), THETA), 820.0, rtol=1e-14)  # exp(log t0), a few ulp


def test_plate_is_t0_over_cos():
    model = make_thickness_model("plate", t0=700.0)
    params = model.init()
    np.testing.assert_allclose(model.apply(params, THETA), 700.0 / np.cos(THETA), rtol=1e-12)  # identity, float64
    # θ₀ shifts the minimum; a fixed θ₀ lives in the configuration, not in params
    fixed = make_thickness_model("plate", t0=700.0, theta0=0.1, learn_theta0=False)
    assert set(fixed.init()) == {"log_t0"}
    np.testing.assert_allclose(fixed.apply(fixed.init(), THETA), 700.0 / np.cos(THETA - 0.1), rtol=1e-12)


def test_plate_is_capped():
    model = make_thickness_model("plate", t0=700.0, max_tilt_deg=80.0)
    theta = jnp.radians(jnp.array([80.0, 85.0, 89.999, 90.0, 120.0, -179.0]))
    t = model.apply(model.init(), theta)
    np.testing.assert_allclose(t, 700.0 / math.cos(math.radians(80.0)), rtol=1e-12)  # capped value, float64


def test_tilt_interpolates_between_constant_and_plate():
    model = make_thickness_model("tilt", t0=600.0)
    params = model.init()
    t_const = 600.0 * np.ones(THETA.shape)
    t_plate = 600.0 / np.cos(THETA)
    w0 = {**params, "logit_w": jnp.array(-40.0)}  # w = 4e-18
    w1 = {**params, "logit_w": jnp.array(40.0)}  # 1 − w = 4e-18
    np.testing.assert_allclose(model.apply(w0, THETA), t_const, rtol=1e-12)  # w·(secant − 1) ≤ 1e-17 relative
    np.testing.assert_allclose(model.apply(w1, THETA), t_plate, rtol=1e-12)  # (1 − w) ≤ 1e-17 relative
    # w_init = 0.5: the arithmetic mean of the two
    np.testing.assert_allclose(model.apply(params, THETA), 0.5 * (t_const + t_plate), rtol=1e-12)


def test_geometric_gradients():
    model = make_thickness_model("tilt", t0=600.0, theta0=0.05, w_init=0.3)
    params = model.init()
    check_grads(lambda p: model.apply(p, THETA), (params,), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_factory_rejects_bad_input():
    with pytest.raises(JaxedInputError):
        make_thickness_model("wedge")
    with pytest.raises(JaxedInputError):
        make_thickness_model("single", thickness=5.0)
    with pytest.raises(JaxedInputError):
        make_thickness_model("single", t0=-5.0)
    with pytest.raises(JaxedInputError):
        make_thickness_model("nn", t_init=50.0, t_min=100.0, t_max=3000.0)
    with pytest.raises(JaxedInputError):
        make_thickness_model("nn", sigma_min=0.0)
    with pytest.raises(JaxedInputError):
        make_thickness_model("nn").init(None)


# ---------------------------------------------------------------------------------------------------------------------
# 2. ThicknessNN


@pytest.mark.parametrize("prior", [False, True])
def test_nn_stays_in_range_for_any_params(prior):
    model = _model("nn", prior=prior)
    theta = jnp.linspace(-3.0, 3.0, 301)  # [rad], far beyond any real tilt
    params = model.init(KEY)
    predict = jax.jit(model.predict)
    for i in range(5):
        wild = _perturbed(params, jax.random.key(10 + i), scale=10.0**i)
        mu, sigma = predict(wild, theta)
        assert bool(jnp.all(jnp.isfinite(mu))) and bool(jnp.all(jnp.isfinite(sigma)))
        # bounds up to the float64 rounding of t_min + Δ·sigmoid(z): 1e-9 Å
        assert bool(jnp.all(mu >= 100.0 - 1e-9)) and bool(jnp.all(mu <= 3000.0 + 1e-9))
        assert bool(jnp.all(sigma >= 2.0 - 1e-9)) and bool(jnp.all(sigma <= 50.0 + 1e-9))


def test_nn_initial_mean_is_t_init():
    model = _model("nn")
    np.testing.assert_allclose(model.apply(model.init(KEY), THETA), 800.0, rtol=1e-12)  # exact by construction
    with_prior = _model("nn", prior=True)
    np.testing.assert_allclose(with_prior.apply(with_prior.init(KEY), THETA), 800.0, rtol=1e-2)  # within 1 %
    sigma = model.predict(model.init(KEY), THETA)[1]
    assert bool(jnp.all(sigma > 2.0)) and bool(jnp.all(sigma < 50.0))


def test_nn_params_are_plain_dicts_of_arrays():
    params = _model("nn", prior=True).init(KEY)
    assert set(params) == {"mlp", "prior"} and set(params["prior"]) == {"log_a", "b", "c"}
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(params))
    # two hidden layers of 64 (the reference paper) and a two-output head (mean logit, spread logit)
    shapes = {k: v.shape for k, v in params_to_flat(params).items()}
    assert shapes["mlp/hidden_0/kernel"] == (1, 64) and shapes["mlp/hidden_1/kernel"] == (64, 64)
    assert shapes["mlp/head/kernel"] == (64, 2)


@pytest.mark.parametrize("prior", [False, True])
def test_nn_gradient_matches_finite_differences(prior):
    model = _model("nn", prior=prior)
    params = _perturbed(model.init(KEY), jax.random.key(3), scale=0.3)

    @jax.jit
    def loss(p):
        mu, sigma = model.predict(p, THETA)
        return jnp.mean(mu) / 800.0 + jnp.mean(sigma) / 10.0

    grads = jax.grad(loss)(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    probes = [("hidden_0", "kernel", (0, 3)), ("hidden_1", "bias", (7,)), ("head", "kernel", (5, 0))]
    probes += [("head", "kernel", (11, 1))]
    h = 1e-6
    for *path, index in probes:
        def shifted(delta, path=path, index=index):
            p = jax.tree_util.tree_map(lambda x: x, params)
            leaf = p["mlp"]
            for k in path[:-1]:
                leaf = leaf[k]
            leaf[path[-1]] = leaf[path[-1]].at[index].add(delta)
            return loss(p)

        fd = (shifted(h) - shifted(-h)) / (2 * h)
        g = grads["mlp"]
        for k in path:
            g = g[k]
        np.testing.assert_allclose(g[index], fd, rtol=1e-5)  # central difference, h = 1e-6, float64
    if prior:
        for name in ("log_a", "b", "c"):
            p_plus = {**params, "prior": {**params["prior"], name: params["prior"][name] + h}}
            p_minus = {**params, "prior": {**params["prior"], name: params["prior"][name] - h}}
            fd = (loss(p_plus) - loss(p_minus)) / (2 * h)
            np.testing.assert_allclose(grads["prior"][name], fd, rtol=1e-5)  # central difference, float64


def test_nn_sampling_statistics_and_gradients():
    model = _model("nn")
    params = _perturbed(model.init(KEY), jax.random.key(4), scale=0.3)
    theta = jnp.radians(jnp.array([-50.0, -10.0, 0.0, 25.0, 60.0]))
    n = 20000
    mu, sigma = model.predict(params, theta)
    samples = model.apply(params, theta, key=jax.random.key(5), n_samples=n)
    assert samples.shape == (n, 5)
    # sample mean: standard error σ/√n; allow 5 standard errors
    np.testing.assert_array_less(jnp.abs(samples.mean(0) - mu), 5.0 * sigma / math.sqrt(n))
    # sample std: relative standard error 1/√(2n) = 0.5 %; allow 5 of them (2.5 %)
    np.testing.assert_allclose(samples.std(0), sigma, rtol=5.0 / math.sqrt(2 * n))
    # the same key gives the same samples; another key gives others
    assert bool(jnp.all(model.apply(params, theta, key=jax.random.key(5), n_samples=n) == samples))
    assert not bool(jnp.all(model.apply(params, theta, key=jax.random.key(6), n_samples=n) == samples))

    # reparameterised gradient: finite, and reaching the spread output (ℓ column of the head)
    def loss(p, key):
        t = model.apply(p, theta, key=key, n_samples=64)
        return jnp.mean((t / 800.0 - 1.0) ** 2)

    grads = jax.jit(jax.grad(loss))(params, jax.random.key(7))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads["mlp"]["head"]["kernel"][:, 1]).max()) > 0.0


def test_nn_prior_curvature_is_positive():
    model = _model("nn", prior=True)
    params = model.init(KEY)
    # switch the residual off so that the mean logit is the prior alone: z(x) = a x² + b x + c
    head = {"kernel": jnp.zeros_like(params["mlp"]["head"]["kernel"]), "bias": jnp.zeros(2)}
    params = {**params, "mlp": {**params["mlp"], "head": head}}

    def z_of_x(p, x):
        return model.logits(p, x * model.theta_scale)[0]

    for log_a in (-30.0, -2.0, 0.0, 4.0):
        p = {**params, "prior": {"log_a": jnp.array(log_a), "b": jnp.array(-0.7), "c": jnp.array(0.2)}}
        curvature = jax.grad(jax.grad(z_of_x, argnums=1), argnums=1)(p, jnp.array(0.3))
        assert float(curvature) > 0.0
        np.testing.assert_allclose(curvature, 2.0 * math.exp(log_a), rtol=1e-12)  # d²z/dx² = 2a, float64
    # an optimiser pushing towards a concave profile cannot make a ≤ 0
    concave = 1500.0 - 600.0 * THETA**2
    fitted = fit_to_profile(model, model.init(KEY), THETA, concave, steps=300, lr=0.1)
    a = jnp.exp(fitted["prior"]["log_a"])
    assert bool(jnp.isfinite(a)) and float(a) > 0.0


# ---------------------------------------------------------------------------------------------------------------------
# 3. warm start


def test_fit_to_profile_recovers_quadratic_with_nn():
    model = _model("nn")
    theta = jnp.radians(jnp.linspace(-60.0, 60.0, 61))
    target = 800.0 + 300.0 * theta**2
    start = time.perf_counter()
    fitted = fit_to_profile(model, model.init(KEY), theta, target, steps=2000, lr=1e-2)
    t = jax.block_until_ready(model.apply(fitted, theta))
    elapsed = time.perf_counter() - start
    rms = float(jnp.sqrt(jnp.mean((t / target - 1.0) ** 2)))
    assert rms < 1e-2  # < 1 % RMS relative error
    # test-sized budget [s], compile included; generous (a few seconds on 2 idle cores, 11 s on 2 loaded ones) so that
    # machine load cannot fail it, while a recompilation per step (minutes) does
    assert elapsed < 60.0


def test_fit_to_profile_geometric_models():
    plate = make_thickness_model("plate", t0=500.0)
    fitted = fit_to_profile(plate, plate.init(), THETA, 650.0 / jnp.cos(THETA - 0.05), steps=1500, lr=2e-2)
    np.testing.assert_allclose(jnp.exp(fitted["log_t0"]), 650.0, rtol=1e-3)  # Adam converged to 0.1 %
    np.testing.assert_allclose(fitted["theta0"], 0.05, atol=1e-3)  # [rad]
    kinematic = KinematicThickness()
    assert fit_to_profile(kinematic, kinematic.init(), THETA, 800.0 + 0 * THETA, steps=5, lr=1e-2) == {}


# ---------------------------------------------------------------------------------------------------------------------
# 4. checkpoints


@pytest.mark.parametrize("name", THICKNESS_MODELS + ("nn_prior",))
def test_checkpoint_round_trip(name, tmp_path):
    model = _model("nn", prior=True) if name == "nn_prior" else _model(name)
    params = _perturbed(model.init(KEY), jax.random.key(8), scale=0.1)
    np.savez(tmp_path / "thickness.npz", **params_to_flat(params))
    with np.load(tmp_path / "thickness.npz") as stored:
        restored = params_from_flat(model, dict(stored))
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(params)):
        assert a.dtype == b.dtype and bool(jnp.all(a == b))  # exact
    assert bool(jnp.all(model.apply(restored, THETA) == model.apply(params, THETA)))  # identical output


def test_checkpoint_mismatch_is_reported():
    flat = params_to_flat(_model("nn").init(KEY))
    with pytest.raises(JaxedInputError):
        params_from_flat(_model("nn", prior=True), flat)  # prior entries missing
    with pytest.raises(JaxedInputError):
        params_from_flat(_model("nn", hidden=(32, 32)), flat)  # shapes differ
    with pytest.raises(JaxedInputError):
        params_from_flat(SingleThickness(), {"log_t0": np.zeros(()), "extra": np.zeros(3)})


# ---------------------------------------------------------------------------------------------------------------------
# 5. optax


@pytest.mark.parametrize("name", ["nn", "tilt"])
def test_one_jitted_adam_step_changes_params(name):
    model = _model(name)
    params = model.init(KEY)
    optimizer = optax.adam(1e-3)
    target = 900.0 + 200.0 * THETA**2

    @jax.jit
    def step(p, opt_state):
        loss, grads = jax.value_and_grad(lambda q: jnp.mean((model.apply(q, THETA) / target - 1.0) ** 2))(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    new, _, loss = step(params, optimizer.init(params))
    assert bool(jnp.isfinite(loss))
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)
    pairs = zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(params))
    assert any(not bool(jnp.all(a == b)) for a, b in pairs)
    assert not bool(jnp.all(model.apply(new, THETA) == model.apply(params, THETA)))


def test_partition_freezes_thickness_subtree():
    """The thickness params sit in a bigger pytree; optax.partition can freeze them."""
    model = _model("nn")
    params = {"structure": {"xyz": jnp.ones((2, 3))}, "thickness": model.init(KEY)}
    frozen = jax.tree_util.tree_map(lambda _: "frozen", params["thickness"])
    labels = {"structure": {"xyz": "train"}, "thickness": frozen}
    optimizer = optax.partition({"train": optax.adam(1e-2), "frozen": optax.set_to_zero()}, labels)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    assert not bool(jnp.all(new["structure"]["xyz"] == params["structure"]["xyz"]))
    for a, b in zip(jax.tree_util.tree_leaves(new["thickness"]), jax.tree_util.tree_leaves(params["thickness"])):
        assert bool(jnp.all(a == b))  # frozen: exact
