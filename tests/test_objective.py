"""Tests of jaxed.refine.objective: closed-form scales, R factors against loop implementations, NaN safety, gradients,
padding/permutation invariance and the paper's weak rule. float64 throughout (tests/conftest.py).

Every residual is evaluated through one jitted function, :func:`_quantities`, so that each array shape compiles once.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from jaxed.model.frames import take_frames
from jaxed.refine import objective as obj

U = 0.01
KINDS = ("paper", "jana")
N_PARAMS = 3


# ------------------------------------------------------------------------------------------------ helpers
LOSS_MODES = (("", False, "rms"), ("_mean", True, "rms"), ("_fmean", True, "mean"))  # pooled, rms, mean over frames


def _quantities(i_calc, obs, with_grads=False):
    """Every output of jaxed.refine.objective for unscaled model intensities, both kinds; optionally the loss gradients."""
    out = {}
    for kind in KINDS:
        k = obj.frame_scales(i_calc, obs, kind=kind)
        s = k[:, None] * jnp.where(obs.mask, i_calc, 0.0)
        out[f"scales_{kind}"] = k
        out[f"r_obs_{kind}"] = obj.r_obs(s, obs)
        out[f"r_all_{kind}"] = obj.r_all(s, obs)
        out[f"wr_paper_{kind}"] = obj.wr_all_paper(s, obs)
        out[f"wr_jana_{kind}"] = obj.wr_all_jana(s, obs)
        out[f"wr_paper_frames_{kind}"] = obj.wr_all_paper(s, obs, per_frame=True)
        out[f"wr_jana_frames_{kind}"] = obj.wr_all_jana(s, obs, per_frame=True)
        out[f"gof_{kind}"] = obj.goodness_of_fit(s, obs, N_PARAMS)
        out[f"resid_{kind}"] = obj.residual_vector(s, obs, kind)
        out[f"resid_norm_{kind}"] = obj.residual_vector(s, obs, kind, normalize=True)
        for suffix, mean, frame_loss in LOSS_MODES:
            name = f"loss_{kind}{suffix}"
            if with_grads:
                out[name], out[f"grad_{name}"] = jax.value_and_grad(obj.loss)(i_calc, obs, kind=kind,
                                                                              per_frame_mean=mean,
                                                                              frame_loss=frame_loss)
            else:
                out[name] = obj.loss(i_calc, obs, kind=kind, per_frame_mean=mean, frame_loss=frame_loss)
    return out


QUANTITIES = jax.jit(_quantities, static_argnames="with_grads")


@jax.jit
def _grad_of_everything(i_calc, obs):
    """Gradient of a random combination of every quantity (one backward pass through all of them)."""
    q = _quantities(i_calc, obs)
    c = jax.random.uniform(jax.random.PRNGKey(0), (len(q),), minval=0.5, maxval=1.5)
    return jax.grad(lambda x: sum(c[j] * jnp.sum(v) for j, v in enumerate(_quantities(x, obs).values())))(
        i_calc)


@jax.jit
def _gauss_newton_jacobians(i_calc, obs):
    """d(residual_vector at the closed-form scales)/d(i_calc), both kinds."""
    return [jax.jacfwd(lambda x, k=kind: obj.residual_vector(obj.frame_scales(x, obs, kind=k)[:, None] * x, obs, k))(
        i_calc) for kind in KINDS]


def _np_obs_row(i_obs, sigma, u=U):
    """Independent loop implementation of the paper's rule for one reflection list: (I, F, σ(F), w_paper, w_jana)."""
    out = []
    for i, s in zip(i_obs, sigma):
        if i < 0.01 * s:
            i_eff, sf = 0.0, 5.0 * math.sqrt(s)
        else:
            i_eff, sf = float(i), s / (2.0 * math.sqrt(i))
        f = math.sqrt(i_eff)
        w_p = (sf**2 + (u * f) ** 2) ** -0.5
        w_j = 1.0 / (sf**2 + (u * f) ** 2)
        out.append((i_eff, f, sf, w_p, w_j))
    return out


def _random_data(seed, n_frames=4, n_refl=12, n_pad=3):
    """Poisson-like data with weak, zero and negative intensities and some padded entries (mask False)."""
    rng = np.random.default_rng(seed)
    true = rng.exponential(200.0, size=(n_frames, n_refl)) + 1.0
    sigma = np.sqrt(true) + 1.0
    i_obs = true + sigma * rng.normal(size=true.shape)
    i_obs[:, 0] = -2.0  # negative
    i_obs[:, 1] = 0.0  # zero
    i_obs[:, 2] = 0.003 * sigma[:, 2]  # weak but positive
    mask = np.ones(true.shape, bool)
    mask[:, n_refl - n_pad:] = False
    i_calc = true * rng.uniform(0.8, 1.2, size=true.shape) * 1e-4  # unscaled model
    return i_obs, sigma, mask, i_calc


def _finite_tree(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


# ------------------------------------------------------------------------------ 1. closed-form scales
@pytest.mark.parametrize("kind", KINDS)
def test_closed_form_scale_matches_brute_force(kind):
    i_obs, sigma, mask, i_calc = _random_data(1)
    obs = obj.prepare_observations(i_obs, sigma, mask)
    k = np.asarray(QUANTITIES(jnp.asarray(i_calc), obs)[f"scales_{kind}"])
    for f in range(i_obs.shape[0]):
        rows = [r for r, m in zip(_np_obs_row(i_obs[f], sigma[f]), mask[f]) if m]
        ic = i_calc[f][mask[f]]

        if kind == "paper":
            def objective(kk):
                return sum(w_p**2 * (i - kk * c) ** 2 for (i, _, _, w_p, _), c in zip(rows, ic))
        else:
            def objective(kk):
                return sum(w_j * (fo - math.sqrt(kk * c)) ** 2 for (_, fo, _, _, w_j), c in zip(rows, ic))

        guess = sum(r[0] for r in rows) / ic.sum()
        best = minimize_scalar(objective, bounds=(0.0, 5.0 * guess), method="bounded",
                               options={"xatol": 1e-10 * guess, "maxiter": 2000})
        # relative 1e-6 (the bounded Brent search resolves the minimum to ~1e-8 relative)
        assert abs(k[f] - best.x) <= 1e-6 * best.x
        assert best.x < 4.0 * guess  # the minimum is interior, not at the bound


# ------------------------------------------------------------------------------ 2. exact model
def test_model_proportional_to_observations_gives_zero():
    i_obs, sigma, mask, _ = _random_data(2)
    obs = obj.prepare_observations(i_obs, sigma, mask)
    k_true = np.array([1e-6, 0.37, 12.0, 4.5e3])
    i_calc = obs.i_obs / k_true[:, None]  # I_obs (after the weak rule) = k · I_calc, weak/negative ones included
    q = QUANTITIES(i_calc, obs)
    for kind in KINDS:
        np.testing.assert_allclose(q[f"scales_{kind}"], k_true, rtol=1e-12)  # rtol 1e-12: exact identity
        for name in ("r_obs", "r_all", "wr_paper", "wr_jana", "gof", "loss"):
            assert abs(float(q[f"{name}_{kind}"])) <= 1e-12, name  # exact identity in float64
        assert abs(float(q[f"loss_{kind}_mean"])) <= 1e-12  # exact identity in float64
        assert abs(float(q[f"loss_{kind}_fmean"])) <= 1e-12  # exact identity in float64


# ------------------------------------------------------------------------------ 3. hand-computed example
def test_hand_computed_small_example():
    i_obs = np.array([[100.0, 25.0, 2.0, -1.0]])
    sigma = np.array([[10.0, 5.0, 4.0, 3.0]])
    i_calc = np.array([[90.0, 30.0, 1.0, 0.5]])  # already scaled
    obs = obj.prepare_observations(i_obs, sigma)
    rows = _np_obs_row(i_obs[0], sigma[0])

    # textbook formulas with explicit loops
    num_r = den_r = num_rall = den_rall = num_p = den_p = num_j = den_j = 0.0
    for (i, f, _, w_p, w_j), i_raw, s, c in zip(rows, i_obs[0], sigma[0], i_calc[0]):
        fc = math.sqrt(c)
        if i_raw > 3.0 * s:
            num_r += abs(f - fc)
            den_r += f
        num_rall += abs(f - fc)
        den_rall += f
        num_p += w_p**2 * (i - c) ** 2
        den_p += w_p**2 * i**2
        num_j += w_j * (f - fc) ** 2
        den_j += w_j * f**2
    r_obs_ref = num_r / den_r
    # and by hand: only 100 and 25 are observed (2 < 3·4; −1 is weak)
    assert abs(r_obs_ref - ((10.0 - math.sqrt(90.0)) + (math.sqrt(30.0) - 5.0)) / 15.0) <= 1e-14  # arithmetic

    i_c = jnp.asarray(i_calc)
    assert abs(float(obj.r_obs(i_c, obs)) - r_obs_ref) <= 1e-12  # 1e-12 absolute: same formula
    assert abs(float(obj.r_all(i_c, obs)) - num_rall / den_rall) <= 1e-12  # 1e-12 absolute
    assert abs(float(obj.wr_all_paper(i_c, obs)) - math.sqrt(num_p / den_p)) <= 1e-12  # 1e-12 absolute
    assert abs(float(obj.wr_all_jana(i_c, obs)) - math.sqrt(num_j / den_j)) <= 1e-12  # 1e-12 absolute
    gof_ref = math.sqrt(num_j / (4 - N_PARAMS))
    assert abs(float(obj.goodness_of_fit(i_c, obs, N_PARAMS)) - gof_ref) <= 1e-12  # 1e-12 absolute
    assert obj.counts(obs) == (2, 4)

    # loss = wR_all at the closed-form scale, also by loops
    raw = i_calc[0] / 7.0
    k_p = sum(w_p**2 * i * c for (i, _, _, w_p, _), c in zip(rows, raw)) / sum(
        w_p**2 * c**2 for (_, _, _, w_p, _), c in zip(rows, raw))
    wr_p = math.sqrt(sum(w_p**2 * (i - k_p * c) ** 2 for (i, _, _, w_p, _), c in zip(rows, raw)) / den_p)
    s_j = sum(w_j * f * math.sqrt(c) for (_, f, _, _, w_j), c in zip(rows, raw)) / sum(
        w_j * c for (_, _, _, _, w_j), c in zip(rows, raw))
    wr_j = math.sqrt(sum(w_j * (f - s_j * math.sqrt(c)) ** 2 for (_, f, _, _, w_j), c in zip(rows, raw)) / den_j)
    q = QUANTITIES(jnp.asarray(raw[None]), obs)
    assert abs(float(q["loss_paper"]) - wr_p) <= 1e-12  # 1e-12 absolute
    assert abs(float(q["loss_jana"]) - wr_j) <= 1e-12  # 1e-12 absolute
    assert abs(float(q["scales_jana"][0]) - s_j**2) <= 1e-12 * s_j**2  # 1e-12 relative

    summ = obj.summary(jnp.asarray(raw[None]), obs, N_PARAMS)
    assert abs(summ["wR_all"] - wr_p) <= 1e-12 and abs(summ["wR_all_jana"] - wr_j) <= 1e-12  # 1e-12 absolute
    assert abs(summ["scales"][0] - k_p) <= 1e-12 * k_p  # 1e-12 relative
    assert (summ["N_obs"], summ["N_all"]) == (2, 4)
    assert all(isinstance(summ[key], float) for key in ("R_obs", "R_all", "wR_all", "wR_all_jana", "GoF"))


# ------------------------------------------------------------------------------ 4. no NaN
def _nasty():
    """Frames: normal; all weak; all masked (NaN garbage); I_calc all zero; zero and negative I_obs."""
    i_obs = np.array([[400.0, 90.0, 30.0, 5.0],
                      [0.001, -3.0, 0.0, 0.002],
                      [np.nan, np.inf, -5.0, 1e300],
                      [300.0, 50.0, 10.0, 1.0],
                      [0.0, -10.0, 40.0, 0.0]])
    sigma = np.array([[20.0, 10.0, 6.0, 3.0],
                      [1.0, 2.0, 1.0, 1.0],
                      [np.nan, 0.0, -1.0, 1.0],
                      [17.0, 7.0, 4.0, 1.0],
                      [1.0, 3.0, 6.0, 1.0]])
    mask = np.ones(i_obs.shape, bool)
    mask[2] = False
    i_calc = np.array([[3.0, 1.0, 0.5, 0.1],
                       [0.2, 0.1, 0.3, 0.0],
                       [np.nan, np.inf, -1.0, 7.0],
                       [0.0, 0.0, 0.0, 0.0],
                       [0.0, 0.1, 0.4, 0.2]])
    return i_obs, sigma, mask, i_calc


def test_no_nan_values_or_gradients():
    i_obs, sigma, mask, i_calc = _nasty()
    obs = obj.prepare_observations(i_obs, sigma, mask)
    assert _finite_tree(obs)
    i_c = jnp.asarray(i_calc)
    q = QUANTITIES(i_c, obs)
    assert _finite_tree(q)  # values and the loss gradients
    for kind in KINDS:
        k = q[f"scales_{kind}"]
        assert float(k[2]) == 1.0 and float(k[3]) == 1.0  # guard: masked frame and I_calc = 0 frame
        assert float(k[1]) == 0.0  # all-weak frame: the exact minimiser
    grad = _grad_of_everything(i_c, obs)
    assert _finite_tree(grad)
    assert bool(jnp.all(jnp.where(obs.mask, True, grad == 0.0)))  # nothing flows into padding
    assert _finite_tree(_gauss_newton_jacobians(i_c, obs))

    # a data set with no observed intensity at all: every residual 0, finite gradients
    weak_only = obj.prepare_observations(np.full(i_obs.shape, -1.0), np.ones(i_obs.shape))
    q = QUANTITIES(jnp.ones(i_obs.shape), weak_only)
    assert _finite_tree(q) and _finite_tree(_grad_of_everything(jnp.ones(i_obs.shape), weak_only))
    assert all(float(q[f"loss_{kind}{m}"]) == 0.0 for kind in KINDS for m, _, _ in LOSS_MODES)


# ------------------------------------------------------------------------------ 5. gradients
def test_loss_gradient_matches_finite_differences():
    i_obs, sigma, mask, i_calc = _random_data(5)
    obs = obj.prepare_observations(i_obs, sigma, mask)
    weights = jnp.arange(1.0, i_obs.shape[0] + 1.0)

    def values(x):  # the six losses, and a weighted sum of each kind's scales (the closed form on its own)
        return jnp.stack([obj.loss(x, obs, kind=kind, per_frame_mean=mean, frame_loss=fl) for kind in KINDS
                          for _, mean, fl in LOSS_MODES]
                         + [jnp.sum(weights * obj.frame_scales(x, obs, kind=kind)) for kind in KINDS])

    x0 = jnp.asarray(i_calc)
    jac = np.asarray(jax.jit(jax.jacrev(values))(x0))  # (8, n_frames, n_refl)
    steps = 1e-4 * i_calc  # relative step 1e-4
    eye = np.eye(i_calc.size).reshape(i_calc.size, *i_calc.shape)
    batched = jax.jit(jax.vmap(values))
    f = {m: np.asarray(batched(jnp.asarray(x0[None] + m * eye * steps[None]))).T.reshape(jac.shape)
         for m in (-2, -1, 1, 2)}
    fd = (8.0 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12.0 * steps[None])  # central, fourth order
    for row in range(jac.shape[0]):
        # rtol 1e-6 (fourth-order central differences, relative step 1e-4: truncation ~1e-13, rounding ~1e-11
        # relative to the largest component); atol 1e-8·max|g| for the components far below the largest
        np.testing.assert_allclose(jac[row], fd[row], rtol=1e-6, atol=1e-8 * np.abs(jac[row]).max())
        assert np.all(jac[row][~mask] == 0.0)  # padding: exactly zero
    # (the loss gradient equals the one at frozen scales, by the envelope theorem at the optimal k; the scale rows
    # above check the derivative of the closed form itself)


def test_loss_is_invariant_to_a_global_model_scale():
    i_obs, sigma, mask, i_calc = _random_data(6)
    obs = obj.prepare_observations(i_obs, sigma, mask)
    ref = QUANTITIES(jnp.asarray(i_calc), obs)
    for alpha in (1e-200, 1e-3, 1e150):  # the normalised closed form does not care about units
        q = QUANTITIES(jnp.asarray(alpha * i_calc), obs)
        for kind in KINDS:
            assert abs(float(q[f"loss_{kind}"]) - float(ref[f"loss_{kind}"])) <= 1e-12  # 1e-12: identity
            np.testing.assert_allclose(alpha * q[f"scales_{kind}"], ref[f"scales_{kind}"], rtol=1e-12)  # identity


# ------------------------------------------------------------------------------ 6. padding / permutation
def test_padding_and_permutation_invariance():
    i_obs, sigma, mask, i_calc = _random_data(7, n_pad=0)
    obs = obj.prepare_observations(i_obs, sigma, mask)
    ref = QUANTITIES(jnp.asarray(i_calc), obs, with_grads=True)
    n_frames, n_refl = i_obs.shape

    rng = np.random.default_rng(0)
    garbage_obs = np.array([np.nan, np.inf, -np.inf, 1e308, -7.0])
    garbage_sig = np.array([np.nan, 0.0, -1.0, np.inf, 2.0])
    garbage_calc = np.array([np.nan, np.inf, -3.0, 1e308, 5.0])
    n_extra = garbage_obs.size
    pad = lambda a, g: np.concatenate([a, np.broadcast_to(g, (n_frames, n_extra))], axis=1)  # noqa: E731
    i_obs2, sigma2, calc2 = pad(i_obs, garbage_obs), pad(sigma, garbage_sig), pad(i_calc, garbage_calc)
    mask2 = np.concatenate([mask, np.zeros((n_frames, n_extra), bool)], axis=1)
    # an extra, fully padded frame full of garbage
    i_obs2 = np.vstack([i_obs2, np.full(n_refl + n_extra, np.nan)])
    sigma2 = np.vstack([sigma2, np.full(n_refl + n_extra, -1.0)])
    calc2 = np.vstack([calc2, np.full(n_refl + n_extra, np.nan)])
    mask2 = np.vstack([mask2, np.zeros(n_refl + n_extra, bool)])
    # permute the reflections within each frame, and the frames
    perms = [rng.permutation(n_refl + n_extra) for _ in range(n_frames + 1)]
    i_obs2, sigma2, calc2, mask2 = (np.stack([a[f, p] for f, p in enumerate(perms)])
                                    for a in (i_obs2, sigma2, calc2, mask2))
    frames = np.array([2, 4, 0, 3, 1])  # new row r holds old frame frames[r]; old frame 4 is the padded one
    i_obs2, sigma2, calc2, mask2 = i_obs2[frames], sigma2[frames], calc2[frames], mask2[frames]

    obs2 = obj.prepare_observations(i_obs2, sigma2, mask2)
    got = QUANTITIES(jnp.asarray(calc2), obs2, with_grads=True)
    assert _finite_tree(got)
    real = frames != n_frames
    for name, value in ref.items():
        value, new = np.asarray(value), np.asarray(got[name])
        if name.startswith(("grad_", "resid_")):  # per reflection: compare each frame as a multiset
            value, new = value.reshape(n_frames, n_refl), new.reshape(n_frames + 1, n_refl + n_extra)
            assert np.all(new[~mask2] == 0.0), name  # zero at padding
            for r in np.flatnonzero(real):
                np.testing.assert_allclose(np.sort(new[r][mask2[r]]), np.sort(value[frames[r]]),
                                           rtol=1e-12, atol=1e-14 * np.abs(value).max(), err_msg=name)  # 1e-12
        elif name.startswith(("scales_", "wr_paper_frames", "wr_jana_frames")):  # per frame
            np.testing.assert_allclose(new[real], value[frames[real]], rtol=1e-12, err_msg=name)  # rtol 1e-12
        else:
            assert abs(float(new) - float(value)) <= 1e-12 * max(1.0, abs(float(value))), name  # 1e-12
    for kind in KINDS:
        assert float(got[f"scales_{kind}"][~real][0]) == 1.0  # the padded frame: guard scale

    assert obj.counts(obs2) == obj.counts(obs)  # (N_obs, N_all) (summary() reports these same quantities)


def test_frame_minibatch_uses_only_its_rows():
    i_obs, sigma, mask, i_calc = _random_data(8)
    obs = obj.prepare_observations(i_obs, sigma, mask)
    full = QUANTITIES(jnp.asarray(i_calc), obs)
    parts = []
    for rows in (np.array([3, 1]), np.array([0, 2])):
        sub = QUANTITIES(jnp.asarray(i_calc[rows]), take_frames(obs, rows))
        direct = obj.prepare_observations(i_obs[rows], sigma[rows], mask[rows])
        assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree_util.tree_leaves(take_frames(obs, rows)),
                                                        jax.tree_util.tree_leaves(direct)))  # exact
        for kind in KINDS:
            np.testing.assert_allclose(sub[f"scales_{kind}"], full[f"scales_{kind}"][rows],
                                       rtol=1e-14)  # rtol 1e-14: same arithmetic per row
        parts.append(float(sub["loss_paper_mean"]) ** 2)
    # per_frame_mean: the means over a partition of the frames recombine into the full-batch value
    assert abs(sum(parts) / 2 - float(full["loss_paper_mean"]) ** 2) <= 1e-12  # 1e-12 absolute


# ------------------------------------------------------------------------------ 7. weak rule
def test_weak_rule():
    sigma = np.array([[16.0, 16.0, 16.0, 16.0, 16.0]])
    # weak positive, zero, negative, exactly at the threshold (not weak), strong
    i_obs = np.array([[0.005 * 16.0, 0.0, -4.0, 0.01 * 16.0, 400.0]])
    obs = obj.prepare_observations(i_obs, sigma)
    np.testing.assert_array_equal(np.asarray(obs.weak[0]), [True, True, True, False, False])
    np.testing.assert_array_equal(np.asarray(obs.i_obs[0, :3]), 0.0)
    np.testing.assert_array_equal(np.asarray(obs.f_obs[0, :3]), 0.0)
    # σ(√I) = 5√σ = 20 for the weak ones; 1e-14 relative (exact arithmetic)
    np.testing.assert_allclose(np.asarray(obs.sigma_f[0, :3]), 20.0, rtol=1e-14)
    # continuity at the threshold: σ/(2√(0.01σ)) = 5√σ; 1e-12 relative
    np.testing.assert_allclose(float(obs.sigma_f[0, 3]), 20.0, rtol=1e-12)
    np.testing.assert_allclose(float(obs.sigma_f[0, 4]), 16.0 / 40.0, rtol=1e-14)  # σ/(2√I), 1e-14 relative
    np.testing.assert_allclose(np.asarray(obs.w_paper[0, :3]), 1.0 / 20.0, rtol=1e-14)  # u·√0 = 0; 1e-14
    np.testing.assert_allclose(np.asarray(obs.w_jana), np.asarray(obs.w_paper) ** 2, rtol=1e-14)  # identity
    np.testing.assert_array_equal(np.asarray(obs.observed[0]), [False, False, False, False, True])

    # a weak reflection counts in wR_all as I_obs = 0 with w = 1/(5√σ)
    i_c = jnp.array([[3.0, 2.0, 1.0, 0.1, 380.0]])  # already scaled
    r = np.asarray(obj.residual_vector(i_c, obs, "paper"))
    np.testing.assert_allclose(r[:3], -np.array([3.0, 2.0, 1.0]) / 20.0, rtol=1e-14)  # w·(0 − I_c); 1e-14
    w3, w4 = float(obs.w_paper[0, 3]), float(obs.w_paper[0, 4])
    num = sum((ic / 20.0) ** 2 for ic in (3.0, 2.0, 1.0)) + (w3 * (0.16 - 0.1)) ** 2 + (w4 * 20.0) ** 2
    den = (w3 * 0.16) ** 2 + (w4 * 400.0) ** 2
    assert abs(float(obj.wr_all_paper(i_c, obs)) - math.sqrt(num / den)) <= 1e-12  # 1e-12 absolute
    # the residual vectors reproduce wR² (the Gauss–Newton form); 1e-12 relative
    for kind, fn in (("paper", obj.wr_all_paper), ("jana", obj.wr_all_jana)):
        wr2 = float(fn(i_c, obs)) ** 2
        assert abs(float(jnp.sum(obj.residual_vector(i_c, obs, kind, normalize=True) ** 2)) - wr2) <= 1e-12 * wr2


# ------------------------------------------------------------------------------ transforms
def test_jit_eager_vmap_and_errors():
    i_obs, sigma, mask, i_calc = _random_data(9)
    obs = obj.prepare_observations(i_obs, sigma, mask)
    x = jnp.asarray(i_calc)
    jitted = QUANTITIES(x, obs)
    eager = float(obj.loss(x, obs, kind="jana"))
    assert abs(eager - float(jitted["loss_jana"])) <= 1e-14  # 1e-14 absolute: same graph
    batch = jnp.stack([x, 2.0 * x, x**1.1])
    vm = jax.jit(jax.vmap(lambda b: obj.loss(b, obs)))(batch)
    loop = [float(QUANTITIES(b, obs)["loss_paper"]) for b in batch]
    np.testing.assert_allclose(vm, loop, rtol=1e-13)  # rtol 1e-13: vmap = loop
    with pytest.raises(ValueError, match="unknown residual kind"):
        obj.loss(x, obs, kind="wr2")
    ints = obj.prepare_observations(np.array([[100, 4]]), np.array([[10, 2]]))
    assert jnp.issubdtype(ints.w_paper.dtype, jnp.floating)


# ------------------------------------------------------------------------------- per-frame values and their means
def test_frame_values_equal_brute_force_minima_and_their_means_are_reported():
    """Per-frame R_obs at its own scale equals the brute-force minimum over every kink of the piecewise-linear L1
    objective (1e-12) and is below a dense scale grid; per-frame wR_all equals the paper form at the
    closed-form scale (1e-12); summary's *_frame_mean are their means over frames with data; a frame whose
    observations are proportional to the model has R_obs 0 and wR_all 0 whatever its scale."""
    rng = np.random.default_rng(7)
    n_frames, n_refl = 4, 12
    i_true = rng.uniform(5.0, 400.0, (n_frames, n_refl))
    sigma = np.sqrt(i_true) + 1.0
    i_obs = i_true + rng.normal(0.0, 1.0, i_true.shape) * sigma
    i_obs[0] = 3.0 * i_true[0]  # frame 0: observations proportional to the model (any scale)
    i_obs[1, :4] = -2.0  # some weak entries
    mask = np.ones_like(i_obs, bool)
    mask[2, 9:] = False
    obs = obj.prepare_observations(jnp.asarray(i_obs), jnp.asarray(sigma), jnp.asarray(mask))
    i_calc = jnp.asarray(i_true * rng.uniform(0.8, 1.25, i_true.shape))
    i_calc = i_calc.at[0].set(jnp.asarray(i_true[0]) * 0.01)
    v = obj.frame_values(i_calc, obs)
    observed, f_obs = np.asarray(obs.observed), np.asarray(obs.f_obs)
    for i in range(n_frames):
        fo = f_obs[i, observed[i]]
        fc = np.sqrt(np.asarray(i_calc)[i, observed[i]])
        # Σ|F_o − cF_c| is convex and piecewise linear in c: its minimum sits at one of the kinks c = F_o/F_c
        kinks = fo / fc
        r = np.abs(fo[None] - kinks[:, None] * fc[None]).sum(axis=1) / fo.sum()
        np.testing.assert_allclose(v["R_obs"][i], r.min(), rtol=1e-12, atol=1e-15)
        grid = np.linspace(0.5, 1.5, 2001) * fo.sum() / fc.sum()  # and no scale on a dense grid does better
        assert v["R_obs"][i] <= (np.abs(fo[None] - grid[:, None] * fc[None]).sum(axis=1) / fo.sum()).min() + 1e-15
        k = obj.frame_scales(i_calc, obs)[i]
        wr_i = obj.wr_all_paper(k * jnp.where(obs.mask, i_calc, 0.0)[i:i + 1], take_frames(obs, slice(i, i + 1)))
        np.testing.assert_allclose(v["wR_all"][i], float(wr_i), rtol=1e-12)
    assert v["R_obs"][0] < 1e-12 and v["wR_all"][0] < 1e-12
    s = obj.summary(i_calc, obs)
    np.testing.assert_allclose(s["R_obs_frame_mean"], v["R_obs"].mean(), rtol=1e-12)
    np.testing.assert_allclose(s["wR_all_frame_mean"], v["wR_all"].mean(), rtol=1e-12)
    # the 'mean' frame loss is exactly the reported aggregate (what the published runs minimise); the rms is above it
    mean_loss = float(obj.loss(i_calc, obs, per_frame_mean=True, frame_loss="mean"))
    np.testing.assert_allclose(mean_loss, s["wR_all_frame_mean"], rtol=1e-12)
    assert float(obj.loss(i_calc, obs, per_frame_mean=True)) > mean_loss * (1 + 1e-3)  # frames differ: rms > mean
    pooled = obj.wr_all_paper(obj.frame_scales(i_calc, obs)[:, None] * jnp.where(obs.mask, i_calc, 0.0), obs)
    np.testing.assert_allclose(s["wR_all"], float(pooled), rtol=1e-12)  # the pooled value is unchanged
    assert list(v["N_all"]) == [12, 12, 9, 12]
