"""Per-frame orientation refinement recovers a known misorientation (synthetic, noise-free)."""
import dataclasses

import jax
import numpy as np
import pytest

from jaxed.physics.bloch import BlochSettings
from jaxed.physics.crystal import load_structure
from jaxed.app.demo import demo_files
from jaxed.errors import JaxedInputError
from jaxed.model.experiment import ExperimentSettings, prepare_experiment
from jaxed.refine.orientation import frame_losses, gradient_tilts, hexagonal_scan, misorientation_deg, nelder_mead
from jaxed.data.pets import read_pets
from jaxed.refine.optimize import RefineConfig, Refinement
from jaxed.model.synth import synthesize

SETTINGS = ExperimentSettings(g_max=1.2, sg_max=0.01, g_max_refine=1.2, r_sg_max=None, n_samples=15)


def _two_frames_and_their_true_angles():
    """Demo structure and two demo frames read with their nominal α, and the same frames at α + 0.15° (a lab
    rotation about the tilt axis x, ⟂ beam): (crystal, atoms, nominal data, true data)."""
    structure, data_path, _ = demo_files()
    crystal, atoms = load_structure(structure)
    with pytest.warns(UserWarning):
        data = read_pets(data_path).subset_frames([2, 10])
    return crystal, atoms, data, dataclasses.replace(data, alpha=data.alpha + 0.15)


@pytest.fixture(scope="module")
def misoriented():
    # Data simulated at α + 0.15° per frame (a lab rotation about the tilt axis x, ⟂ beam), read with the nominal α:
    # the searches must find the difference. (A β error would also rotate the crystal about the beam, which with
    # rocking-curve integration changes intensities at second order and is not in the two-tilt searches' space.)
    # Returns (problem at nominal angles, true base orientations).
    crystal, atoms, data, true = _two_frames_and_their_true_angles()
    bloch = BlochSettings(prepare_experiment(data, crystal, SETTINGS).energy_kev)
    synthetic = synthesize(crystal, atoms, true, np.full(2, 600.0), bloch, SETTINGS, noise=False)
    nominal = dataclasses.replace(synthetic, alpha=data.alpha)
    exp = prepare_experiment(nominal, crystal, SETTINGS)
    true_base = np.asarray(prepare_experiment(synthetic, crystal, SETTINGS).base_orientation)
    problem = Refinement(crystal, atoms, exp, bloch, RefineConfig(thickness_model="single", thickness_init=600.0))
    return problem, true_base


@pytest.mark.parametrize("method", ["hexagonal", pytest.param("nelder-mead", marks=pytest.mark.slow),
                                    pytest.param("gradient", marks=pytest.mark.slow)])
def test_search_recovers_the_true_orientation(misoriented, method):
    # Start 0.15° from the truth; after the search the beam direction is within 0.03° of the truth and every frame's
    # wR_all falls by > 3× (noise-free data, so the truth has wR ≈ 0).
    problem, true_base = misoriented
    start = misorientation_deg(problem.experiment.base_orientation, true_base)
    assert np.all(start > 0.1)
    fn = {"hexagonal": hexagonal_scan, "gradient": lambda p, x: gradient_tilts(p, x, steps=80, lr=3e-4),
          "nelder-mead": lambda p, x: nelder_mead(p, x, maxfev=120)}[method]
    corrected, _ = fn(problem.model, problem.params0)
    before = frame_losses(problem.model, problem.params0)
    after = frame_losses(problem.model, problem.params0, corrected)
    assert np.all(after < before / 3)
    # compare the beam directions (the rotation about the beam does not change intensities and is not determined)
    beam = lambda o: np.linalg.solve(o, [0, 0, -1.0])  # noqa: E731
    for o_new, o_true in zip(np.asarray(corrected.base_orientation), true_base):
        a, b = beam(o_new), beam(o_true)
        assert np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))) < 0.03


def test_cli_hexagonal_search_before_refinement(misoriented, tmp_path):
    # `jaxed refine --refine-orientation hexagonal` searches every frame's orientation (structure fixed) before the
    # refinement: with zero epochs the reported wR_all must fall well below that of the nominal orientations (the data
    # are noise-free and 0.15° off), and the search must leave the run's other outputs intact.
    import json

    from jaxed.app.cli import main
    from jaxed.data.pets import write_pets

    problem, _ = misoriented
    structure, data_path, _ = demo_files()
    with pytest.warns(UserWarning):
        data = read_pets(data_path).subset_frames([2, 10])
    exp = problem.experiment
    i_true = np.asarray(exp.i_obs)  # simulated at the true (misoriented) angles
    mask = np.asarray(exp.refl_mask)
    # write the misoriented noise-free data of the fixture as a file the CLI reads (σ = 1 % of I)
    rows = [(f, *np.asarray(exp.refl_hkl)[f, j]) for f in range(2) for j in np.nonzero(mask[f])[0]]
    inten = np.concatenate([i_true[f][mask[f]] for f in range(2)])
    synthetic = dataclasses.replace(
        data, hkl=np.array([r[1:] for r in rows]), frame_index=np.array([r[0] for r in rows]), intensity=inten,
        sigma=np.maximum(0.01 * inten, 1e-3))
    path = tmp_path / "mis.cif_pets"
    write_pets(path, synthetic)
    common = [str(structure), str(path), "--g-max", "1.2", "--g-max-refine", "1.2", "--r-sg", "1000", "--samples", "15",
              "--thickness-model", "single", "--thickness-init", "600", "--epochs", "0", "--no-progress"]
    wr = {}
    for method in ("none", "hexagonal", "nelder-mead+hexagonal"):
        out = tmp_path / method
        assert main(["refine", *common, "--refine-orientation", method, "--nm-step", "0.2", "--out", str(out)]) == 0
        wr[method] = json.loads((out / "report.json").read_text())["wR_all"]
    assert wr["hexagonal"] < wr["none"] / 3, wr
    assert wr["nelder-mead+hexagonal"] < wr["none"] / 3, wr  # the chained search (coarse, then fine)


def test_given_orientation_matrices_replace_the_pets_geometry():
    # prepare_experiment(orientations=M): the true per-frame matrices given to a nominal-angle file select the same
    # beams and reflections and give the same intensities as the file with the true angles (float64, 1e-12);
    # a wrong shape is refused with a one-line error.
    crystal, atoms, data, true = _two_frames_and_their_true_angles()
    true_exp = prepare_experiment(true, crystal, SETTINGS)
    given = prepare_experiment(data, crystal, SETTINGS, orientations=np.asarray(true_exp.base_orientation))
    nominal = prepare_experiment(data, crystal, SETTINGS)
    assert np.array_equal(np.asarray(given.beams.hkl), np.asarray(true_exp.beams.hkl))
    assert not np.array_equal(np.asarray(nominal.beams.hkl), np.asarray(true_exp.beams.hkl))  # the test has teeth
    bloch = BlochSettings(true_exp.energy_kev)
    config = RefineConfig(thickness_model="single", thickness_init=600.0)
    a = Refinement(crystal, atoms, given, bloch, config)
    b = Refinement(crystal, atoms, true_exp, bloch, config)
    i_b = np.asarray(b.intensities(b.params0))
    np.testing.assert_allclose(np.asarray(a.intensities(a.params0)), i_b, rtol=1e-12, atol=1e-12 * i_b.max())
    with pytest.raises(JaxedInputError, match="orientations"):
        prepare_experiment(data, crystal, SETTINGS, orientations=np.eye(3))


def test_rotation_about_the_beam_changes_only_rocking_integrated_intensities():
    # A third correction angle δ₃ (R_z, about the beam) leaves every excitation error s_g = g_z − |g|²/2K unchanged,
    # so a still frame (1 sample: no rocking) keeps its intensities exactly (rtol 1e-12, float64); with rocking about
    # lab x over ±1° it turns the crystal against the rocking axis and the integrated intensities change (by > 1e-3
    # relative at δ₃ = 0.3°). A tilt ⟂ beam (δ₁) changes even the still frame.
    import jax.numpy as jnp

    from jaxed.model.experiment import integrated_intensities

    structure, data_path, _ = demo_files()
    crystal, atoms = load_structure(structure)
    with pytest.warns(UserWarning):
        data = read_pets(data_path).subset_frames([2, 10])
    thickness = jnp.full(2, 600.0)
    changes = {}
    for n_samples in (1, 15):
        settings = dataclasses.replace(SETTINGS, n_samples=n_samples, semi_angle_deg=1.0)
        exp = prepare_experiment(data, crystal, settings)
        bloch = BlochSettings(exp.energy_kev)
        mask = np.asarray(exp.refl_mask)

        fwd = jax.jit(lambda tilts, exp=exp, bloch=bloch: integrated_intensities(atoms, crystal, exp, thickness,
                                                                                  bloch, tilts))

        def calc(d, fwd=fwd, mask=mask):
            return np.asarray(fwd(jnp.tile(jnp.asarray(d), (2, 1))))[mask]

        ref = calc([0.0, 0.0, 0.0])
        assert np.allclose(calc([0.0, 0.0]), ref, rtol=1e-14, atol=0)  # 2 and 3 angles agree at zero
        changes[n_samples] = {name: np.max(np.abs(calc(d) - ref)) / np.max(ref)
                              for name, d in (("beam", [0.0, 0.0, np.deg2rad(0.3)]),
                                              ("tilt", [np.deg2rad(0.3), 0.0, 0.0]))}
    assert changes[1]["beam"] < 1e-12
    assert changes[1]["tilt"] > 1e-3
    assert changes[15]["beam"] > 1e-3


def test_tilt_corrections_must_have_two_or_three_angles():
    from jaxed.model.experiment import tilt_matrices

    assert tilt_matrices(np.zeros((4, 3))).shape == (4, 3, 3)
    with pytest.raises(JaxedInputError, match=r"expected \(n_frames, 2\) or \(n_frames, 3\)"):
        tilt_matrices(np.zeros((4, 4)))


def test_searches_score_trials_with_the_trial_orientations_own_sample_beams():
    """With per-sample beam sets (each rocking sample holds only the beams it excites), a trial orientation must be
    scored with the beams selected at *that* orientation: the wR_all a search reports for each frame equals the
    wR_all of the returned orientation with its beams reselected (1e-10), and the search still recovers the truth.
    Scored with the starting orientation's beams instead, the two differ by ≈ 1e-2 here (checked)."""
    from jaxed.model.experiment import reselect_sample_beams

    crystal, atoms, data, true = _two_frames_and_their_true_angles()
    settings = dataclasses.replace(SETTINGS, beam_selection="sample", max_beams=24)
    bloch = BlochSettings(prepare_experiment(data, crystal, settings).energy_kev)
    synthetic = synthesize(crystal, atoms, true, np.full(2, 600.0), bloch, settings, noise=False)
    exp = prepare_experiment(dataclasses.replace(synthetic, alpha=data.alpha), crystal, settings)
    problem = Refinement(crystal, atoms, exp, bloch, RefineConfig(thickness_model="single", thickness_init=600.0))
    corrected, info = hexagonal_scan(problem.model, problem.params0)
    after = frame_losses(problem.model, problem.params0, reselect_sample_beams(corrected, crystal))
    np.testing.assert_allclose(after, info["frame_wr_end"], rtol=1e-10, atol=1e-12)
    assert np.all(after < frame_losses(problem.model, problem.params0) / 3)


def test_search_chain_rejects_unknown_searches_and_options(misoriented):
    """search_orientations: searches chain with '+'; an unknown search or an option no search takes is a one-line
    JaxedInputError naming it (a mistyped option must not be dropped silently)."""
    from jaxed.app.workflow import search_orientations

    problem, _ = misoriented
    args = (problem.crystal, problem.atoms(problem.params0), problem.experiment, problem.bloch, problem.config)
    with pytest.raises(JaxedInputError, match="'nelder-mead\\+hexagnal'"):
        search_orientations(*args, "nelder-mead+hexagnal", log=lambda s: None)
    with pytest.raises(JaxedInputError, match=r"\['max_round'\]: no search takes them"):
        search_orientations(*args, "hexagonal", log=lambda s: None, max_round=3)


def test_nelder_mead_bounds_the_rotation_about_the_beam():
    # Noise-free data at the nominal orientations, modelled with each frame turned 1.5° about the beam (lab z; with
    # rocking integration this changes the intensities, weakly). Unbounded, the three-angle search turns a frame by
    # > 0.15° about the beam; with max_about_beam_deg = 0.1 every turn about the beam stays ≤ 0.1° (tanh map, 1e-9)
    # while the search still lowers each frame's wR_all.
    from scipy.spatial.transform import Rotation

    from jaxed.physics.geometry import rotation_z

    crystal, atoms, data, _ = _two_frames_and_their_true_angles()
    exp = prepare_experiment(data, crystal, SETTINGS)
    bloch = BlochSettings(exp.energy_kev)
    turned = np.einsum("ij,fjk->fik", np.asarray(rotation_z(np.deg2rad(1.5))), np.asarray(exp.base_orientation))
    synthetic = synthesize(crystal, atoms, data, np.full(2, 600.0), bloch, SETTINGS, noise=False)
    problem = Refinement(crystal, atoms, prepare_experiment(synthetic, crystal, SETTINGS, orientations=turned), bloch,
                         RefineConfig(thickness_model="single", thickness_init=600.0))
    before = frame_losses(problem.model, problem.params0)
    turns = {}
    for bound in (None, 0.1):
        found, info = nelder_mead(problem.model, problem.params0, initial_step_deg=0.3, maxfev=80, max_about_beam_deg=bound)
        rel = np.einsum("fij,fkj->fik", np.asarray(found.base_orientation),
                        np.asarray(problem.experiment.base_orientation))
        turns[bound] = np.abs(np.degrees(Rotation.from_matrix(rel).as_rotvec()[:, 2]))
        assert np.all(info["frame_wr_end"] < before)
    assert np.all(turns[0.1] <= 0.1 + 1e-9), turns
    assert np.max(turns[None]) > 0.15, turns
    # frames=: only the listed frames are searched; the others keep their orientation exactly
    found, info = nelder_mead(problem.model, problem.params0, initial_step_deg=0.3, maxfev=10, frames=[1])
    assert np.array_equal(np.asarray(found.base_orientation)[0], np.asarray(problem.experiment.base_orientation)[0])
    assert len(info["frame_wr_end"]) == 1 and info["frame_wr_end"][0] <= info["frame_wr_start"][0]
    assert info["frame_wr_start"][0] == pytest.approx(before[1], rel=1e-9)  # it searched frame 1, not frame 0


def test_about_beam_scan_finds_a_turn_about_the_beam_and_leaves_still_frames_alone():
    # Noise-free data at the nominal orientations, modelled with each frame turned 1.5° about the beam (lab z). The
    # batched about-beam scan (grid 1°, then ± steps halved to 0.05°) turns each frame back to within 0.1° of −1.5°
    # and lowers every frame's wR_all by > 3×. A still frame (1 sample) does not see the turn: every trial ties with
    # the start, so the scan keeps ω = 0 exactly.
    from jaxed.physics.geometry import rotation_z
    from jaxed.refine.orientation import about_beam_scan

    crystal, atoms, data, _ = _two_frames_and_their_true_angles()
    for n_samples in (15, 1):
        settings = dataclasses.replace(SETTINGS, n_samples=n_samples)
        exp = prepare_experiment(data, crystal, settings)
        bloch = BlochSettings(exp.energy_kev)
        turned = np.einsum("ij,fjk->fik", np.asarray(rotation_z(np.deg2rad(1.5))), np.asarray(exp.base_orientation))
        synthetic = synthesize(crystal, atoms, data, np.full(2, 600.0), bloch, settings, noise=False)
        problem = Refinement(crystal, atoms, prepare_experiment(synthetic, crystal, settings, orientations=turned),
                             bloch, RefineConfig(thickness_model="single", thickness_init=600.0))
        found, info = about_beam_scan(problem.model, problem.params0, grid_deg=1.0, max_about_beam_deg=3.0)
        after = frame_losses(problem.model, problem.params0, found)
        np.testing.assert_allclose(after, info["frame_wr_end"], rtol=1e-10)
        if n_samples == 1:
            assert np.all(info["omega_deg"] == 0.0)
        else:
            np.testing.assert_allclose(info["omega_deg"], -1.5, atol=0.1)
            assert np.all(after < info["frame_wr_start"] / 3)


def test_search_losses_in_frame_chunks_equal_one_batched_call(misoriented, monkeypatch):
    # The searches' per-frame wR_all runs the frames in chunks when the memory model says they do not all fit: with
    # one frame per chunk forced, the values equal the one-call values (float64, rtol 1e-12), frame by frame.
    from jaxed.model import batching

    problem, _ = misoriented
    whole = frame_losses(problem.model, problem.params0)
    monkeypatch.setattr(batching, "experiment_frames_per_batch", lambda *a, **k: 1)
    chunked = frame_losses(problem.model, problem.params0)
    assert whole.shape == (2,) and not np.allclose(whole[0], whole[1], rtol=1e-3)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=0)


@pytest.mark.parametrize("angles", [2, 3])
def test_joint_tilts_folded_into_the_orientations_give_the_same_intensities(angles):
    """A refinement's joint tilts (jaxed.model.experiment.frame_orientations) and the same tilts folded into the frames'
    base orientations (orientation.with_corrections of tilt_matrices, as the refinement cycles and table2.py
    --folded do) are one geometry: with the per-sample beam sets kept, the integrated intensities agree to 1e-10
    (relative); any difference in the order of composition or a sign of an angle shows at 1e-3 here. Tilts of
    0.05–0.3° (and a third angle, about the beam, of 0.5–0.8°), two demo frames, per-sample beams."""
    from jaxed.model.experiment import tilt_matrices
    from jaxed.refine.orientation import with_corrections

    crystal, atoms, data, _ = _two_frames_and_their_true_angles()
    settings = dataclasses.replace(SETTINGS, beam_selection="sample", max_beams=24)
    exp = prepare_experiment(data, crystal, settings)
    bloch = BlochSettings(exp.energy_kev)
    config = RefineConfig(thickness_model="single", thickness_init=600.0)
    tilted = Refinement(crystal, atoms, exp, bloch, dataclasses.replace(config, refine_orientation=True,
                                                                         orientation_angles=angles))
    tilts = np.deg2rad(np.array([[0.3, -0.1, 0.8], [-0.05, 0.2, -0.5]]))[:, :angles]
    i_tilted = np.asarray(tilted.intensities(dict(tilted.params0, orientation=tilts)))
    folded = Refinement(crystal, atoms, with_corrections(exp, tilt_matrices(tilts)), bloch, config)
    i_folded = np.asarray(folded.intensities(folded.params0))
    mask = np.asarray(exp.refl_mask)
    np.testing.assert_allclose(i_folded[mask], i_tilted[mask], rtol=1e-10, atol=1e-14 * i_tilted[mask].max())
    untilted = np.asarray(tilted.intensities(tilted.params0))
    assert np.max(np.abs(untilted[mask] - i_tilted[mask])) > 1e-3 * i_tilted[mask].max()  # the tilts matter here
