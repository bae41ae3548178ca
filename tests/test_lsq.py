"""Gauss–Newton / Levenberg–Marquardt (jaxed.refine.lsq), R_free and the optimizer dispatch of run_refinement.

Small noise-free synthetic quartz problems (float64): a few frames, g_max 1.4 Å⁻¹, 3–5 rocking samples.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxed.refine import objective
from jaxed.physics.bloch import BlochSettings
from jaxed.physics.crystal import load_structure
from jaxed.app.demo import demo_files
from jaxed.errors import JaxedInputError
from jaxed.model.experiment import ExperimentSettings, prepare_experiment
from jaxed.refine.lsq import LeastSquares, LSQSettings, least_squares, make_least_squares
from jaxed.refine.metrics import asu_rmsd
from jaxed.data.pets import read_pets
from jaxed.refine.optimize import RefineConfig, Refinement, run_refinement
from jaxed.model.synth import random_start, synthesize
from jaxed.model.thickness import make_thickness_model

SMALL = ExperimentSettings(g_max=1.4, sg_max=0.01, g_max_refine=1.4, r_sg_max=None, n_samples=5)


@pytest.fixture(scope="module")
def quartz():
    structure, data_path, _ = demo_files()
    crystal, atoms = load_structure(structure)
    with pytest.warns(UserWarning, match="UB cell"):
        data = read_pets(data_path)
    frames = data.subset_frames([0, 8, 16])
    bloch = BlochSettings(prepare_experiment(frames, crystal, SMALL).energy_kev)
    synthetic = synthesize(crystal, atoms, frames, np.full(3, 650.0), bloch, SMALL, noise=False)
    return crystal, atoms, prepare_experiment(synthetic, crystal, SMALL), bloch


def _problem(quartz, delta, seed=1, thickness=None, **config):
    crystal, atoms, exp, bloch = quartz
    config = RefineConfig(**{"thickness_model": "single", "checkpoint_every": 0, **config})
    problem = Refinement(crystal, atoms, exp, bloch, config, thickness=thickness)
    if delta:
        problem.params0["structure"] = random_start(problem.structure, problem.params0["structure"], delta, seed=seed)
    return problem


def test_residual_vector_squares_to_the_loss_and_jacobian_modes_agree(quartz):
    # Σ r² = wR_all² (the objective), to 1e-12 relative; forward- and reverse-mode Jacobians agree to 1e-8 and
    # match a central difference along a random direction (h = 1e-6) to 1e-5 relative.
    problem = _problem(quartz, 0.05, thickness_init=600.0)
    fwd, rev = (make_least_squares(problem.model, problem.obs, problem.config, jacobian=m) for m in ("fwd", "rev"))
    x, fixed = fwd.split(problem.params0)
    r, j_fwd = fwd.jacobian(x, fixed, problem.obs)
    _, j_rev = rev.jacobian(x, fixed, problem.obs)
    assert float(jnp.sum(r**2)) == pytest.approx(float(jax.jit(problem.loss)(problem.params0)) ** 2, rel=1e-12)
    np.testing.assert_allclose(np.asarray(j_fwd), np.asarray(j_rev), rtol=1e-8, atol=1e-10 * np.abs(j_fwd).max())
    d = jnp.asarray(np.random.default_rng(0).normal(size=x.size))
    h = 1e-6
    residuals = jax.jit(fwd.residuals)
    fd = (residuals(x + h * d, fixed, problem.obs) - residuals(x - h * d, fixed, problem.obs)) / (2 * h)
    np.testing.assert_allclose(np.asarray(j_fwd @ d), np.asarray(fd), rtol=1e-5, atol=1e-7 * float(jnp.abs(fd).max()))
    assert fwd.n_params == x.size and fwd.merge(x, fixed).keys() == problem.params0.keys()


def test_jacobian_in_chunks_equals_the_whole(quartz):
    # When the tangents of all parameters (or cotangents of all residuals) do not fit in memory, J is built in
    # chunks by lax.map (LeastSquares.jacobian_chunk, from jaxed.model.batching's memory model). Chunks of 3 give the
    # same J as one vmapped call, to 1e-12 relative, in both modes, and the chunked program still holds one eigh.
    problem = _problem(quartz, 0.05, thickness_init=600.0)
    for mode in ("fwd", "rev"):
        whole, chunked = (make_least_squares(problem.model, problem.obs, problem.config, jacobian=mode) for _ in "ab")
        count = whole.n_params if mode == "fwd" else whole.n_residuals
        assert whole.jacobian_chunk == count  # this small problem fits at once
        chunked.jacobian_chunk = 3  # read when the jitted Jacobian is traced (first call)
        x, fixed = whole.split(problem.params0)
        _, j_whole = whole.jacobian(x, fixed, problem.obs)
        _, j_chunk = chunked.jacobian(x, fixed, problem.obs)
        assert j_chunk.shape == j_whole.shape == (whole.n_residuals, whole.n_params)
        np.testing.assert_allclose(np.asarray(j_chunk), np.asarray(j_whole), rtol=1e-12,
                                   atol=1e-14 * float(jnp.abs(j_whole).max()))
        if jax.default_backend() == "cpu":
            text = chunked.jacobian.lower(x, fixed, problem.obs).compile().as_text()
            assert text.count("custom_call_target=\"lapack_zheevd_ffi\"") == 1, mode


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="counts the CPU LAPACK custom calls")
def test_jacobian_programs_hold_one_eigh(quartz):
    # Regression for a deadlock: r and J computed separately put two independent batched LAPACK eigh calls in one
    # XLA program, which on a 2-core CPU hung jaxlib's intra-op pool (GN/LM runs stuck at 0 % CPU). r and J now
    # come from one linearisation, so the compiled forward- and reverse-mode Jacobian programs (and the
    # matrix-free CG step) each contain exactly one eigh custom call.
    problem = _problem(quartz, 0.05, thickness_init=600.0)
    for mode in ("fwd", "rev"):
        lsq = make_least_squares(problem.model, problem.obs, problem.config, jacobian=mode)
        x, fixed = lsq.split(problem.params0)
        text = lsq.jacobian.lower(x, fixed, problem.obs).compile().as_text()
        assert text.count("custom_call_target=\"lapack_zheevd_ffi\"") == 1, mode
    cg = make_least_squares(problem.model, problem.obs, problem.config, jacobian="cg")
    text = cg._cg_solve.lower(x, fixed, problem.obs, 1e-3, jax.random.PRNGKey(0), max_iter=3,
                              tol=1e-6).compile().as_text()
    assert text.count("custom_call_target=\"lapack_zheevd_ffi\"") == 1


def test_gauss_newton_converges_in_a_handful_of_steps(quartz):
    # Well posed: 39 noise-free reflections, 17 parameters, start 0.02 Å and 600 Å (truth 650 Å). Undamped GN reaches
    # the truth (RMSD < 1e-6 Å, thickness to 1e-6 relative, wR_all < 1e-6) in at most 6 iterations, with the cost
    # falling at every iteration and faster than linearly at the end (quadratic convergence on a zero-residual fit).
    crystal, atoms, _, _ = quartz
    problem = _problem(quartz, 0.02, thickness_init=600.0, optimizer="gn", epochs=20)
    assert asu_rmsd(crystal, problem.atoms(problem.params0), atoms) > 0.01
    params, history = run_refinement(problem, progress=False)
    assert len(history) <= 6
    losses = [h["loss"] for h in history]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 1e-6
    assert asu_rmsd(crystal, problem.atoms(params), atoms) < 1e-6
    assert float(problem.frame_thickness(params)[0]) == pytest.approx(650.0, rel=1e-6)


def test_levenberg_marquardt_recovers_from_a_bad_start(quartz):
    # Start 0.12 Å RMSD away (each free coordinate up to 0.2 Å), ADPs ±30 %, thickness 500 Å (truth 650 Å):
    # wR_all starts > 0.3. LM reaches RMSD < 1e-4 Å, thickness within 0.1 %, wR_all < 1e-4 in ≤ 40 iterations.
    crystal, atoms, _, _ = quartz
    problem = _problem(quartz, 0.2, seed=3, thickness_init=500.0, optimizer="lm", epochs=40)
    start = asu_rmsd(crystal, problem.atoms(problem.params0), atoms)
    assert start > 0.08 and float(problem.loss(problem.params0)) > 0.3
    params, history = run_refinement(problem, progress=False)
    assert asu_rmsd(crystal, problem.atoms(params), atoms) < 1e-4
    assert float(problem.frame_thickness(params)[0]) == pytest.approx(650.0, rel=1e-3)
    assert history[-1]["loss"] < 1e-4
    # one linearisation per iteration; every iteration tries at least one step (more when LM raises the damping)
    assert [h["jacobians"] for h in history] == list(range(1, len(history) + 1))
    assert all(h["evaluations"] >= h["jacobians"] + 1 for h in history)


def test_matrix_free_step_matches_the_dense_step(quartz):
    # One matrix-free step — CG on (JᵀJ + λμI)δ = −Jᵀr with J v / Jᵀ u products, J never formed — equals the dense
    # solve of the same system (J from forward mode) to 1e-6 relative (λ = 1e-2). An LM run with the matrix-free step
    # (no Jacobi scaling, so slower than the dense one) lowers wR_all at least 20× in 8 iterations from a 0.05 Å start.
    problem = _problem(quartz, 0.05, thickness_init=620.0)
    dense, free = (make_least_squares(problem.model, problem.obs, problem.config, jacobian=m) for m in ("fwd", "cg"))
    x, fixed = dense.split(problem.params0)
    r, jac = dense.jacobian(x, fixed, problem.obs)
    jac, r = np.asarray(jac), np.asarray(r)
    delta, _, _, mu = free._cg_solve(x, fixed, problem.obs, jnp.asarray(1e-2), jax.random.PRNGKey(0),
                                     max_iter=200, tol=1e-12)
    expected = np.linalg.solve(jac.T @ jac + 1e-2 * float(mu) * np.eye(x.size), -jac.T @ r)
    np.testing.assert_allclose(np.asarray(delta), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    result = least_squares(free, x, fixed, settings=LSQSettings(method="lm", jacobian="cg", max_iter=8, ftol=0.0,
                                                                xtol=0.0))
    assert result.history[-1]["loss"] < float(problem.loss(problem.params0)) / 20


def test_auto_jacobian_picks_forward_mode_for_few_parameters_and_matrix_free_for_many(quartz):
    problem = _problem(quartz, 0.0)
    assert make_least_squares(problem.model, problem.obs, problem.config).jacobian_mode == "fwd"
    assert make_least_squares(problem.model, problem.obs, problem.config, matrix_free_above=5).jacobian_mode == "cg"
    nn = _problem(quartz, 0.0, thickness_model="nn")  # ThicknessNN: ~4400 weights ≫ 4 × 63 residuals
    assert make_least_squares(nn.model, nn.obs, nn.config).jacobian_mode == "cg"
    assert make_least_squares(nn.model, nn.obs, nn.config, matrix_free_above=10**6).jacobian_mode == "rev"


def test_hybrid_adam_thickness_network_and_lm_structure(quartz):
    # Hybrid schedule: 5 Adam steps on a small ThicknessNN (8 + 8 hidden units; structure fixed), then 1 LM step on
    # the structure, × 5 cycles, from a 0.05 Å start: wR_all falls by at least 5× and the ASU RMSD by at least 3×.
    crystal, atoms, _, _ = quartz
    problem = _problem(quartz, 0.05, thickness_model="nn", thickness_init=600.0, optimizer="hybrid", epochs=5,
                       hybrid_adam_steps=5, lr=0.02,
                       thickness=make_thickness_model("nn", t_init=600.0, t_min=50.0, t_max=3000.0, hidden=(8, 8)))
    start_loss = float(problem.loss(problem.params0))
    start = asu_rmsd(crystal, problem.atoms(problem.params0), atoms)
    params, history = run_refinement(problem, progress=False)
    assert len(history) >= 2
    assert history[-1]["loss"] < start_loss / 5
    # per cycle: 5 Adam gradient steps + ≥ 1 LM trial, and one Jacobian
    assert history[-1]["jacobians"] == len(history)
    assert history[-1]["evaluations"] >= 6 * len(history)
    assert asu_rmsd(crystal, problem.atoms(params), atoms) < start / 3


def test_free_set_is_reproducible_held_out_and_reported(quartz, tmp_path):
    # R_free set: reproducible for a seed, different for another, whole symmetry classes (every observation of a
    # chosen unique reflection, equivalents and Friedel mates included) held out; the optimiser's loss does not
    # change when only free reflections change; R_free appears in every history entry and in the summary.
    crystal, _, exp, _ = quartz
    hkl, mask = np.asarray(exp.refl_hkl), np.asarray(exp.refl_mask)
    a = objective.free_set_mask(hkl, mask, 0.1, seed=0, rotations=np.asarray(crystal.rotations))
    b = objective.free_set_mask(hkl, mask, 0.1, seed=0, rotations=np.asarray(crystal.rotations))
    c = objective.free_set_mask(hkl, mask, 0.1, seed=5, rotations=np.asarray(crystal.rotations))
    assert np.array_equal(a, b) and not np.array_equal(a, c) and a.any() and not (a & ~mask).any()
    canon = objective._canonical_hkl(hkl[mask], np.asarray(crystal.rotations))
    free_classes = {tuple(h) for h in canon[a[mask]]}
    assert all((tuple(h) in free_classes) == f for h, f in zip(canon, a[mask]))
    frames = objective.free_set_mask(hkl, mask, 0.3, by="frames")
    assert np.array_equal(frames.any(axis=1), frames.sum(axis=1) == mask.sum(axis=1)) and frames.any()
    with pytest.raises(JaxedInputError):
        objective.free_set_mask(hkl, mask, 1.5)

    problem = _problem(quartz, 0.05, optimizer="lm", epochs=2, r_free=0.1)
    free = ~np.asarray(problem.obs.mask) & mask
    assert np.array_equal(free, np.asarray(problem.obs_free.mask))
    changed = dataclasses.replace(problem.experiment, i_obs=np.where(free, 1e9, np.asarray(exp.i_obs)))
    other = Refinement(problem.crystal, quartz[1], changed, problem.bloch, problem.config)
    other.params0 = problem.params0
    assert float(other.loss(problem.params0)) == pytest.approx(float(problem.loss(problem.params0)), rel=1e-14)
    params, history = run_refinement(problem, tmp_path, progress=False)
    assert history and all({"R_free", "wR_free", "R_obs", "wR_all"} <= set(h) for h in history)
    summary = problem.summary(params)
    assert 0 <= summary["R_free"] < 1 and summary["N_free"] == int(free.sum())
    assert json.loads((tmp_path / "checkpoint.json").read_text())["epoch"] == len(history)


def test_lsq_input_errors():
    with pytest.raises(JaxedInputError):
        LSQSettings(method="newton")
    with pytest.raises(JaxedInputError):
        RefineConfig(optimizer="lm", minibatch=2)
    with pytest.raises(JaxedInputError):
        RefineConfig(r_free=0.7)
    with pytest.raises(JaxedInputError):
        RefineConfig(optimizer="bfgs")


def test_damped_step_ignores_a_parameter_the_data_do_not_see():
    # J has a zero column (a parameter with no effect on any residual); rounding leaves g_1 = 1e-12 instead of 0.
    # The LM step must not move it (before the fix: |δ_1| ≈ 1e-12 / (λ · 1e-14 floor) → 10⁹ at λ = 1e-5), and the
    # seen parameter gets the exact damped step −g₀ / (1 + λ) (Marquardt scaling: D = diag JᵀJ = 1).
    from jaxed.refine.lsq import _dense_step, _scaled_eigen

    jac = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    g = np.array([0.3, 1e-12])
    scale, w, v = _scaled_eigen(jac.T @ jac)
    for lam in (0.0, 1e-5, 1.0):
        d = _dense_step(scale, w, v, g, lam, 1e-12)
        assert d[1] == 0.0
        assert d[0] == pytest.approx(-0.3 / (1.0 + lam), rel=1e-12)


def test_lm_resume_continues_the_iterations_and_the_counts(quartz, tmp_path):
    # LM for 4 iterations in one go vs 2 + --resume 2 more: same parameters (float64, 1e-9 relative: the damping is
    # carried in the checkpoint), epochs numbered on, and the evaluation / Jacobian counts continue instead of
    # restarting at the resumed run's first iteration. The resumed process evaluates its starting cost once more
    # (the uninterrupted run knew it from its last step): that is real work and is counted.
    full_problem = _problem(quartz, 0.1, seed=2, optimizer="lm", epochs=4)
    full, full_history = run_refinement(full_problem, tmp_path / "full", progress=False)
    half = _problem(quartz, 0.1, seed=2, optimizer="lm", epochs=2)
    run_refinement(half, tmp_path / "split", progress=False)
    resumed, history = run_refinement(_problem(quartz, 0.1, seed=2, optimizer="lm", epochs=4), tmp_path / "split",
                                      resume=True, progress=False)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert [h["jacobians"] for h in history] == [1, 2, 3, 4]
    counts, full_counts = [h["evaluations"] for h in history], [h["evaluations"] for h in full_history]
    assert counts[:2] == full_counts[:2] and [c - f for c, f in zip(counts[2:], full_counts[2:])] == [1, 1]
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_least_squares_takes_any_residual_function():
    # Gauss–Newton / LM work on a residual function, not on a refinement: on the linear r = A x − b (12 × 3, no
    # Bloch model) one GN step reaches the least-squares solution of numpy's lstsq (rtol 1e-10), and LM gets there
    # too (its damping falls after each accepted step; rtol 1e-6 after 30 iterations).
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 3)), rng.normal(size=12)
    want = np.linalg.lstsq(a, b, rcond=None)[0]
    lsq = LeastSquares(lambda params, obs: jnp.asarray(a) @ params["x"] - obs, {"x": jnp.zeros(3)}, jnp.asarray(b),
                       ["x"], jacobian="fwd")
    x0, fixed = lsq.split({"x": jnp.zeros(3)})
    gn = least_squares(lsq, x0, fixed, settings=LSQSettings(method="gn", max_iter=3))
    assert gn.n_jacobians >= 1 and gn.history[0]["accepted"]
    np.testing.assert_allclose(lsq.merge(jnp.asarray(gn.x), fixed)["x"], want, rtol=1e-10)
    lm = least_squares(lsq, x0, fixed, settings=LSQSettings(method="lm", max_iter=30, ftol=0.0, xtol=0.0))
    np.testing.assert_allclose(lm.x, want, rtol=1e-6)
