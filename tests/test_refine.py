"""Joint refinement: full-loss gradients, recovery of a known structure, checkpoints, NaN guard, synth round trip."""
import dataclasses
import json

import gemmi
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxed.physics.bloch import BlochSettings
from jaxed.physics.crystal import load_structure
from jaxed.app.demo import demo_files
from jaxed.model.experiment import ExperimentSettings, prepare_experiment
from jaxed.refine.metrics import asu_rmsd
from jaxed.data.pets import read_pets, write_pets
from jaxed.refine.optimize import (RefineConfig, Refinement, RefinementDiverged, load_checkpoint, load_params,
                          run_refinement, save_params)
from jaxed.model.synth import random_start, synthesize, thickness_profile
from jaxed.refine.problem import make_loss_and_intensities
from jaxed.refine.step import make_step

SMALL = ExperimentSettings(g_max=1.2, sg_max=0.01, g_max_refine=1.2, r_sg_max=0.9, n_samples=5)


@pytest.fixture(scope="module")
def demo():
    structure, data_path, truth_path = demo_files()
    crystal, atoms = load_structure(structure)
    with pytest.warns(UserWarning, match="UB cell"):
        data = read_pets(data_path)
    return crystal, atoms, data, np.array(json.loads(truth_path.read_text())["thickness_A"])


def _problem(demo, frames=(0, 8, 16), config=RefineConfig(), settings=SMALL):
    crystal, atoms, data, _ = demo
    exp = prepare_experiment(data.subset_frames(list(frames)), crystal, settings)
    return Refinement(crystal, atoms, exp, BlochSettings(exp.energy_kev), config)


@pytest.mark.parametrize("angles", [2, 3])
def test_full_loss_gradient_matches_finite_differences(demo, angles):
    # d wR_all / d(all parameters: free coordinates, Cholesky ADPs, ThicknessNN weights, orientation tilts — two
    # ⟂ beam, or also the rotation about the beam) along a random direction vs central differences (float64,
    # h = 1e-6): rtol 1e-5.
    problem = _problem(demo, config=RefineConfig(thickness_model="nn", thickness_init=650.0, refine_orientation=True,
                                                 orientation_angles=angles))
    params = jax.tree_util.tree_map(jnp.asarray, problem.params0)
    params["orientation"] = params["orientation"] + 1e-3
    loss = jax.jit(problem.loss)
    grads = jax.jit(jax.grad(problem.loss))(params)
    rng = np.random.default_rng(0)
    direction = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=np.shape(x))), params)
    h = 1e-6
    shifted = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * h * d, params, direction)
    fd = (float(loss(shifted(1))) - float(loss(shifted(-1)))) / (2 * h)
    analytic = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree_util.tree_leaves(grads),
                                                         jax.tree_util.tree_leaves(direction)))
    assert np.isfinite(analytic) and analytic == pytest.approx(fd, rel=1e-5)


def test_recovers_a_known_structure_and_thickness(demo):
    # Noise-free synthetic data on 4 frames, single thickness 650 Å; start 0.1 Å away and 500 Å. Adam, 60 steps:
    # RMSD to the truth < 0.01 Å (from ~0.09), thickness within 2 %, wR_all < 0.02.
    crystal, atoms, data, _ = demo
    frames = data.subset_frames([0, 6, 12, 18])
    settings = dataclasses.replace(SMALL, r_sg_max=None)
    bloch = BlochSettings(prepare_experiment(frames, crystal, settings).energy_kev)
    synthetic = synthesize(crystal, atoms, frames, np.full(4, 650.0), bloch, settings, noise=False)
    exp = prepare_experiment(synthetic, crystal, SMALL)
    config = RefineConfig(thickness_model="single", thickness_init=500.0, epochs=60, lr=3e-3,
                          lr_groups=(("thickness", 2e-2),), lr_schedule="cosine", checkpoint_every=0)
    problem = Refinement(crystal, atoms, exp, bloch, config)
    problem.params0["structure"] = random_start(problem.structure, problem.params0["structure"], 0.1, seed=1)
    start = asu_rmsd(crystal, problem.atoms(problem.params0), atoms)
    params, history = run_refinement(problem, progress=False)
    refined = asu_rmsd(crystal, problem.atoms(params), atoms)
    assert start > 0.04 and refined < 0.01
    assert float(problem.frame_thickness(params)[0]) == pytest.approx(650.0, rel=0.02)
    assert float(problem.loss(params)) < 0.02 < history[0]["loss"]


def test_symmetry_constraints_hold_through_refinement(demo):
    # Si of quartz sits on a 2-fold axis (x, 0, 1/3-type): after steps it still does (tol 1e-12).
    problem = _problem(demo, config=RefineConfig(epochs=3, checkpoint_every=0, lr=0.05))
    params, _ = run_refinement(problem, progress=False)
    frac = np.asarray(problem.atoms(params).frac)
    crystal = problem.crystal
    rot, trans = np.asarray(crystal.rotations), np.asarray(crystal.translations)
    moved = frac[0] - np.asarray(problem.structure.x0[0])
    assert np.abs(moved).max() > 1e-4  # it did move
    images = rot @ frac[0] + trans - frac[0]
    assert np.min(np.linalg.norm(images - np.rint(images), axis=1)[1:]) < 1e-12


def test_no_nan_with_an_all_weak_frame(demo):
    problem = _problem(demo)
    exp = problem.experiment
    weak = dataclasses.replace(exp, i_obs=np.asarray(exp.i_obs) * np.array([[0.0], [1.0], [1.0]]) - 1.0)
    problem = Refinement(problem.crystal, demo[1], weak, problem.bloch, problem.config)
    value, grads = jax.jit(jax.value_and_grad(problem.loss))(problem.params0)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))


def test_lr_warmup_scales_the_first_adam_steps(demo):
    # Adam's first update is −lr·g/(|g| + ε) per coordinate, ≈ the full rate for every coordinate with a gradient,
    # however small the gradient: what makes a run restarted from a refined model climb. With lr_warmup = W, step k
    # (from 0) runs at (k + 1)/W of the rate: the first update is exactly 1/W of the unwarmed one (rtol 1e-12) in
    # every group (structure at lr, ThicknessNN at its own rate); lr_warmup = 1 is no warmup (bit for bit); a negative
    # warmup is a one-line error.
    def first_update(warmup):
        config = RefineConfig(thickness_model="nn", lr=2e-3, lr_groups=(("thickness", 2e-2),), lr_warmup=warmup,
                              lr_schedule="cosine", epochs=10)
        problem = _problem(demo, frames=(0, 12), config=config)
        p1 = problem.make_step()(problem.init_state())[0].params
        return jax.tree_util.tree_map(lambda a, b: np.asarray(a) - np.asarray(b), p1, problem.params0)

    plain, warm, one = first_update(0), first_update(4), first_update(1)
    for group, rate in (("structure", 2e-3), ("thickness", 2e-2)):
        for a, b, c in zip(*(jax.tree_util.tree_leaves(u[group]) for u in (plain, warm, one))):
            np.testing.assert_allclose(b, a / 4, rtol=1e-12, atol=0)
            np.testing.assert_array_equal(c, a)
        steps = [np.max(np.abs(a)) for a in jax.tree_util.tree_leaves(plain[group]) if a.size]
        assert max(steps) == pytest.approx(rate, rel=1e-3)
    from jaxed.errors import JaxedInputError

    with pytest.raises(JaxedInputError, match="lr_warmup = -1"):
        RefineConfig(lr_warmup=-1)


def test_keep_best_returns_the_lowest_loss_met_and_survives_a_resume(demo, tmp_path):
    # Adam at a rate far too high for this problem (0.05 on every parameter) climbs from its start. With
    # keep_best (the default) the run returns the parameters of the lowest loss it met: their loss, evaluated afresh,
    # equals the minimum over every step's incoming loss and the last step's result (rtol 1e-10), it lies below
    # the last step's result, and the checkpoint's best set is what load_params reads. keep_best=False returns the
    # last step's result. A run split 2 + 1 with --resume returns the same parameters as 3 in one go (1e-10).
    config = RefineConfig(thickness_model="nn", thickness_init=650.0, epochs=3, lr=5e-2, checkpoint_every=1)
    problem = _problem(demo, frames=(0, 12), config=config)
    kept, history = run_refinement(problem, tmp_path / "full", progress=False)
    losses = [h["loss"] for h in history] + [history[-1]["final_loss"]]
    assert np.argmin(losses) < len(losses) - 1 and losses[-1] > 1.05 * min(losses), losses  # it did climb
    assert history[-1]["kept_epoch"] == int(np.argmin(losses))
    assert float(problem.full_loss(kept)) == pytest.approx(min(losses), rel=1e-10)
    for a, b in zip(jax.tree_util.tree_leaves(load_params(tmp_path / "full", problem.params0)),
                    jax.tree_util.tree_leaves(kept)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    last, _ = run_refinement(_problem(demo, frames=(0, 12), config=dataclasses.replace(config, keep_best=False)),
                             progress=False)
    assert float(problem.full_loss(last)) == pytest.approx(losses[-1], rel=1e-10)
    half = _problem(demo, frames=(0, 12), config=dataclasses.replace(config, epochs=2))
    run_refinement(half, tmp_path / "split", progress=False)
    resumed, _ = run_refinement(problem, tmp_path / "split", resume=True, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(kept)):
        # absolute part 1e-12 of the leaf norm: entries near zero differ at rounding level, a real difference is O(norm)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12 * np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_step_compiles_once_and_resume_equals_uninterrupted(demo, tmp_path, optimizer):
    config = RefineConfig(thickness_model="nn", epochs=4, checkpoint_every=2, optimizer=optimizer, lr=2e-3)
    problem = _problem(demo, frames=(0, 12), config=config)
    step = problem.make_step()
    state = problem.init_state()
    for _ in range(2):
        state, info = step(state)
    assert step._cache_size() == 1  # the second step did not recompile
    assert int(state.count) == 2 and info.intensities.shape == problem.obs.shape  # info: the same fields always
    full, _ = run_refinement(problem, tmp_path / "full", progress=False)
    # a run killed after 2 steps (checkpoint at 2), then resumed
    half = Refinement(problem.crystal, demo[1], problem.experiment, problem.bloch, dataclasses.replace(config, epochs=2))
    run_refinement(half, tmp_path / "split", progress=False)
    resumed, history = run_refinement(problem, tmp_path / "split", resume=True, progress=False)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    # evaluation counts: Adam one loss+gradient per step; L-BFGS at least one per step (its line search's trials)
    counts = [h["evaluations"] for h in history]
    assert counts == sorted(counts) and all(b - a >= 1 for a, b in zip(counts, counts[1:]))
    assert counts[-1] == 4 if optimizer == "adam" else counts[-1] >= 5
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        # absolute part 1e-12 of the leaf norm: entries near zero differ at rounding level, a real difference is O(norm)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12 * np.linalg.norm(np.asarray(b)))


@pytest.mark.slow  # an optimiser comparison (≈ 20–40 s on 2 cores): python -m pytest -m slow
def test_lbfgs_in_rate_units_descends_further_with_fewer_evaluations(demo):
    # L-BFGS on tilts [rad], log-thickness and coordinates [Å] at once. In the raw parameters (lbfgs_metric
    # 'identity', optax as it is) its first trial step has unit length and the line search spends ~9 loss + gradient
    # evaluations shrinking it; in each group's units of its rate (the default, 'rates') the first trial step is
    # Adam's first step. Same 5 steps from the same start: 'rates' must reach a loss below 0.6× identity's with no
    # more evaluations (measured 0.19 vs 0.51, 12 vs 25), and a group at rate 0 must not move at all.
    groups = (("thickness", 2e-2), ("orientation", 3e-5))
    ends = {}
    for metric in ("identity", "rates"):
        config = RefineConfig(thickness_model="nn", epochs=5, optimizer="lbfgs", lbfgs_metric=metric, lr_groups=groups,
                              refine_orientation=True, checkpoint_every=0)
        params, history = run_refinement(_problem(demo, frames=(0, 12), config=config), None, progress=False)
        ends[metric] = (float(_problem(demo, frames=(0, 12), config=config).loss(params)), history[-1]["evaluations"])
    assert ends["rates"][0] < 0.6 * ends["identity"][0]
    assert ends["rates"][1] <= ends["identity"][1]
    frozen = RefineConfig(thickness_model="nn", epochs=2, optimizer="lbfgs", lr_groups=(("structure", 0.0),),
                          checkpoint_every=0)
    problem = _problem(demo, frames=(0, 12), config=frozen)
    params, _ = run_refinement(problem, None, progress=False)
    leaves = {g: (jax.tree_util.tree_leaves(params[g]), jax.tree_util.tree_leaves(problem.params0[g]))
              for g in ("structure", "thickness")}
    for a, b in zip(*leaves["structure"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(*leaves["thickness"]))


def test_load_params_starts_a_new_refinement_where_an_earlier_one_ended(demo, tmp_path):
    # An Adam run's refined structure and ThicknessNN seed a run with another optimiser and an extra parameter group
    # (joint tilts): the loaded leaves equal the saved ones bit for bit, the new group keeps its own start, and a
    # checkpoint of another model or a missing one is a one-line JaxedInputError.
    from jaxed.errors import JaxedInputError

    config = RefineConfig(thickness_model="nn", epochs=2, checkpoint_every=0, lr=5e-3)
    first = _problem(demo, frames=(0, 12), config=config)
    done, _ = run_refinement(first, tmp_path / "first", progress=False)
    second = _problem(demo, frames=(0, 12), config=dataclasses.replace(config, optimizer="lbfgs",
                                                                       refine_orientation=True))
    template = {k: v for k, v in second.params0.items() if k != "orientation"}
    loaded = load_params(tmp_path / "first", template)
    moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(template))]
    assert any(moved)  # the first run did change the parameters
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(done)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # exact
    second.params0 = dict(second.params0, **loaded)
    assert float(second.loss(second.params0)) == pytest.approx(float(first.loss(done)), rel=1e-12)  # zero tilts
    with pytest.raises(JaxedInputError, match="arrays, the model needs") as err:
        load_params(tmp_path / "first", second.params0)  # the tilts are not in the checkpoint
    assert "\n" not in str(err.value)
    with pytest.raises(JaxedInputError, match="cannot read the checkpoint"):
        load_params(tmp_path / "nowhere", template)
    # save_params: the parameters alone in one small .npz (kept with a run's results) load like the folder, exactly
    small = save_params(tmp_path / "results" / "run_params.npz", done)
    for a, b in zip(jax.tree_util.tree_leaves(load_params(small, template)), jax.tree_util.tree_leaves(done)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert small.stat().st_size < 100_000
    with pytest.raises(JaxedInputError, match="must end in .npz"):
        save_params(tmp_path / "run_params.npy", done)


def test_progress_rows_from_the_steps_own_intensities_equal_a_separate_forward(demo, tmp_path):
    # The per-epoch monitor (workflow._epoch_monitor) takes, with Adam, the intensities the step's loss computed at
    # the parameters it started from, and writes row e - 1 at epoch e. Its rows must equal those of the same
    # monitor evaluating the model after every step itself (float64, rtol 1e-10); an off-by-one epoch would
    # differ by the step's change in wR_all (≈ 1e-3 here).
    from jaxed.app.workflow import _epoch_monitor, _read_epochs

    config = RefineConfig(thickness_model="nn", epochs=5, checkpoint_every=0, lr=5e-3)
    problem = _problem(demo, frames=(0, 12), config=config)
    rows = {}
    for mode in ("aux", "forward"):
        path = tmp_path / f"{mode}.jsonl"
        monitor = _epoch_monitor(path, problem, 10, 1)
        callback = monitor if mode == "aux" else (lambda e, p, v, m=monitor: m(e, p, v))
        run_refinement(problem, None, progress=False, callback=callback)
        rows[mode] = _read_epochs(path, config.epochs)
    assert [r["epoch"] for r in rows["aux"]] == [r["epoch"] for r in rows["forward"]] == [0, 1, 2, 3, 4]
    changes = np.abs(np.diff([r["wR_all"] for r in rows["forward"]]))
    assert changes.min() > 1e-6  # the rows do move from epoch to epoch
    for a, b in zip(rows["aux"], rows["forward"]):
        for key in ("wR_all", "R_obs", "GoF"):
            assert a[key] == pytest.approx(b[key], rel=1e-10)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(demo, tmp_path):
    config = RefineConfig(thickness_model="single", epochs=2, checkpoint_every=1)
    problem = _problem(demo, frames=(0, 12), config=config)
    good, _ = run_refinement(problem, tmp_path, progress=False)

    class Broken(Refinement):  # its step's loss is NaN
        def make_step(self):
            both = make_loss_and_intensities(self.model, self.obs, self.config)

            def nan_loss(params, key):
                value, i_calc = both(params, key)
                return value * jnp.nan, i_calc

            return make_step(nan_loss, self.optimizer, key=jax.random.PRNGKey(0))

    broken = Broken(problem.crystal, demo[1], problem.experiment, problem.bloch, dataclasses.replace(config, epochs=5))
    with pytest.raises(RefinementDiverged, match="epoch 2: non-finite"):
        run_refinement(broken, tmp_path, resume=True, progress=False)
    kept, _, history, epoch = load_checkpoint(tmp_path, problem.params0, problem.optimizer.init(problem.params0))
    assert epoch == 2 and len(history) == 2
    for a, b in zip(jax.tree_util.tree_leaves(kept), jax.tree_util.tree_leaves(good)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_synth_round_trip_and_protocol(demo, tmp_path):
    # jaxed synth protocol: brightest reflection = I_max (before noise), nothing below 1 count, σ = √I;
    # written and read back unchanged (1e-6).
    crystal, atoms, data, _ = demo
    frames = data.subset_frames([0, 5, 10])
    theta = np.deg2rad(frames.alpha)
    t = thickness_profile("wedge", theta, 600.0)
    settings = dataclasses.replace(SMALL, r_sg_max=None)
    bloch = BlochSettings(prepare_experiment(frames, crystal, settings).energy_kev)
    clean = synthesize(crystal, atoms, frames, t, bloch, settings, i_max=1e4, noise=False)
    assert clean.intensity.max() == pytest.approx(1e4, rel=1e-12) and clean.intensity.min() >= 1.0
    noisy = synthesize(crystal, atoms, frames, t, bloch, settings, i_max=1e4, seed=3)
    np.testing.assert_allclose(noisy.sigma, np.sqrt(np.maximum(noisy.intensity, 1)), rtol=1e-12)
    assert 0 < np.abs(noisy.intensity - clean.intensity).max()
    write_pets(tmp_path / "s.cif_pets", noisy)
    back = read_pets(tmp_path / "s.cif_pets")
    np.testing.assert_array_equal(back.hkl, noisy.hkl)
    np.testing.assert_allclose(back.intensity, noisy.intensity, atol=1e-6)
    np.testing.assert_array_equal(back.frame_index, noisy.frame_index)


def test_refine_and_evaluate_commands(tmp_path, capsys):
    # The CLI on the shipped demo data (3 frames, 2 epochs): report.json keys, refined.cif readable by gemmi.
    from jaxed.app.cli import main

    structure, data_path, _ = demo_files()
    common = [str(structure), str(data_path), "--frames", "1,9,17", "--samples", "3", "--g-max", "1.2",
              "--g-max-refine", "1.2"]
    assert main(["refine", *common, "--epochs", "2", "--thickness-model", "single", "--no-progress",
                 "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    for key in ("R_obs", "wR_all", "N_obs", "N_all", "epochs", "wall_seconds", "thickness_A", "history"):
        assert key in report
    assert report["epochs"] == 2 and len(report["thickness_A"]) == 3
    doc = gemmi.cif.read(str(tmp_path / "r" / "refined.cif"))
    assert doc.sole_block().find_value("_refine_ls_wR_factor_all") is not None
    assert gemmi.make_small_structure_from_block(doc.sole_block()).sites
    assert (tmp_path / "r" / "thickness.png").exists()
    assert main(["evaluate", *common, "--thickness", "700", "--out", str(tmp_path / "e")]) == 0
    ev = json.loads((tmp_path / "e" / "report.json").read_text())
    assert ev["N_all"] == report["N_all"] and ev["thickness_A"] == [700.0] * 3
    with pytest.raises(SystemExit) as info:
        main(["refine", *common, "--out", str(tmp_path / "x"), "--optimizer", "sgd"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.slow  # ~40 s on 2 cores: run with -m slow
def test_minibatch_and_thickness_sampling(demo):
    # A minibatch of one frame equals that frame's own full-batch loss (tol 1e-12); reparameterised thickness draws
    # give a finite loss and gradient, different from the mean-thickness loss, and Adam runs with both.
    config = RefineConfig(thickness_model="nn", minibatch=1, thickness_samples=3, epochs=2, checkpoint_every=0)
    problem = _problem(demo, frames=(0, 8, 16), config=config)
    key = jax.random.PRNGKey(7)
    mb_only = Refinement(problem.crystal, demo[1], problem.experiment, problem.bloch,
                         dataclasses.replace(config, thickness_samples=1))
    value = float(mb_only.loss(mb_only.params0, key))
    singles = [float(_problem(demo, frames=(f,), config=dataclasses.replace(config, minibatch=0, thickness_samples=1))
                     .loss(mb_only.params0)) for f in (0, 8, 16)]
    assert min(abs(value - v) for v in singles) < 1e-12
    sampled, grads = jax.jit(jax.value_and_grad(problem.loss))(problem.params0, key)
    assert np.isfinite(float(sampled)) and all(np.all(np.isfinite(np.asarray(g)))
                                               for g in jax.tree_util.tree_leaves(grads))
    full = Refinement(problem.crystal, demo[1], problem.experiment, problem.bloch,
                      dataclasses.replace(config, minibatch=0))
    assert float(full.loss(full.params0, key)) != pytest.approx(float(full.loss(full.params0)), rel=1e-6)
    _, history = run_refinement(problem, progress=False)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)


def test_d_sg_keeps_exactly_the_reflections_crossed_with_a_margin(demo):
    """D_Sg (Klar et al. 2023 as diffBloch applies it): a frame keeps a listed reflection only if its Bragg condition
    is crossed with a margin, Δs_g − |s_g| > D with Δs_g = |g_y|·φ_semi. Checked against the kept set computed
    independently from the PETS geometry (jaxed.data.pets: R_x(α)R_y(β)·UB, degrees) on the shipped quartz frames:
    exactly the same (frame, hkl) pairs; D = 0.0015 drops some of the R_Sg ≤ 0.9 set and D = 10 drops them all."""
    from jaxed.data.pets import frame_rotation
    from jaxed.physics.geometry import excitation_errors

    crystal, atoms, data, _ = demo
    frames = [0, 5, 10, 15]
    sub = data.subset_frames(frames)
    base = dataclasses.replace(SMALL, g_max_refine=1.4, g_max=1.4)
    kept = {}
    for d in (None, 0.0015):
        exp = prepare_experiment(sub, crystal, dataclasses.replace(base, d_sg_min=d))
        m = np.asarray(exp.refl_mask)
        kept[d] = {(i, tuple(h)) for i in range(len(frames)) for h in np.asarray(exp.refl_hkl)[i][m[i]]}
    expected = set()
    semi = np.deg2rad(np.asarray(sub.precession_angle))
    for i in range(len(frames)):
        rows = np.asarray(sub.frame_index) == i
        hkl = np.asarray(sub.hkl)[rows]
        g = hkl @ (frame_rotation(sub.alpha[i], sub.beta[i]) @ np.asarray(sub.ub)).T
        s = excitation_errors(g, 1.0 / sub.wavelength)
        width = np.abs(g[:, 1]) * semi[i]
        ok = ((np.linalg.norm(hkl @ np.asarray(sub.ub).T, axis=1) <= 1.4) & (np.abs(s) <= 0.9 * width)
              & (width - np.abs(s) > 0.0015) & np.any(hkl != 0, axis=1))
        expected |= {(i, tuple(h)) for h in hkl[ok]}
    assert kept[0.0015] == expected
    assert kept[0.0015] < kept[None] and len(kept[None]) - len(kept[0.0015]) >= 3  # 59 → 56
    exp = prepare_experiment(sub, crystal, dataclasses.replace(base, d_sg_min=10.0))  # no margin that large
    assert not np.any(np.asarray(exp.refl_mask))


def test_g_min_refine_drops_exactly_the_low_angle_reflections(demo):
    """The low-resolution cut |g| ≥ G_min removes exactly the listed reflections below it (|g| from the file's UB,
    the same metric as g_max_refine) and nothing else; 0 removes none."""
    crystal, atoms, data, _ = demo
    sub = data.subset_frames([0, 5, 10, 15])
    base = dataclasses.replace(SMALL, g_max_refine=1.4, g_max=1.4)

    def kept(g_min):
        exp = prepare_experiment(sub, crystal, dataclasses.replace(base, g_min_refine=g_min))
        m = np.asarray(exp.refl_mask)
        return {(i, tuple(h)) for i in range(m.shape[0]) for h in np.asarray(exp.refl_hkl)[i][m[i]]}

    everything = kept(0.0)
    norms = {key: float(np.linalg.norm(np.asarray(sub.ub) @ np.asarray(key[1], float))) for key in everything}
    cut = float(np.median(list(norms.values())))  # a cut through the middle of the data
    assert kept(cut) == {key for key, g in norms.items() if g >= cut}
    assert 0 < len(kept(cut)) < len(everything)


def test_make_step_is_the_optax_loop_and_flags_a_non_finite_loss():
    # make_step on a toy loss (no Bloch model): 5 Adam steps equal the hand-written optax loop (rtol 1e-14: jit vs
    # eager rounding), state.count counts the steps, info carries the loss at the incoming parameters and the
    # loss's intensities unchanged; a NaN loss sets info.finite False.
    import optax

    from jaxed.refine.step import init_state

    target = jnp.array([1.0, -2.0, 0.5])

    def loss(params, key):
        r = params["x"] - target
        return jnp.sum(r**2), r[None, :]

    opt = optax.adam(0.1)
    step = make_step(loss, opt, key=jax.random.PRNGKey(0))
    state = init_state(opt, {"x": jnp.zeros(3)})
    p, s = {"x": jnp.zeros(3)}, opt.init({"x": jnp.zeros(3)})
    for _ in range(5):
        value = float(loss(p, None)[0])
        state, info = step(state)
        assert float(info.loss) == pytest.approx(value, rel=1e-14) and bool(info.finite)
        np.testing.assert_allclose(np.asarray(info.intensities), np.asarray(loss(p, None)[1]), rtol=1e-14)
        updates, s = opt.update(jax.grad(lambda q: loss(q, None)[0])(p), s, p)
        p = optax.apply_updates(p, updates)
    np.testing.assert_allclose(np.asarray(state.params["x"]), np.asarray(p["x"]), rtol=1e-14)
    assert int(state.count) == 5 and float(jnp.sum((p["x"] - target) ** 2)) < float(jnp.sum(target**2))
    bad = make_step(lambda params, key: (jnp.nan * jnp.sum(params["x"]), params["x"][None]), opt,
                    key=jax.random.PRNGKey(0))
    assert not bool(bad(init_state(opt, {"x": jnp.zeros(3)}))[1].finite)
