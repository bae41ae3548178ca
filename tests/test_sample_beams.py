"""Per-sample beam sets (ExperimentSettings.beam_selection='sample'): each rocking sample diagonalises only its own
beams (|s_g| ≤ sg_max at that sample). Checked against the per-frame model where the two must agree exactly, for
convergence to the many-beam answer, for the completeness of the observed reflections, and by finite differences."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import directional_fd
from jaxed.physics.bloch import BlochSettings
from jaxed.errors import JaxedInputError
from jaxed.model.experiment import (ExperimentSettings, integrated_intensities, prepare_experiment, reselect_sample_beams,
                              take_frames)
from jaxed.refine.orientation import with_corrections
from jaxed.physics.geometry import excitation_errors
from jaxed.physics.geometry import rotation_x as jaxed_rotation_x

BASE = ExperimentSettings(g_max=1.2, sg_max=0.01, g_max_refine=1.0, n_samples=5, beam_selection="sample")
THICKNESS = 650.0


@pytest.fixture(scope="module")
def demo(demo_quartz):
    return demo_quartz.crystal, demo_quartz.atoms, demo_quartz.data.subset_frames([0, 7, 14])


def _forward(atoms, crystal, exp, thickness):
    """Intensities of every frame at one thickness, as one compiled program."""
    fwd = jax.jit(lambda a, t: integrated_intensities(a, crystal, exp, t, BlochSettings(exp.energy_kev)))
    return np.asarray(fwd(atoms, jnp.full(exp.n_frames, thickness)))


def _intensities(demo, settings, thickness=THICKNESS):
    crystal, atoms, data = demo
    exp = prepare_experiment(data, crystal, settings)
    return exp, _forward(atoms, crystal, exp, thickness)


def test_every_sample_holding_every_beam_is_the_frame_model(demo):
    # sg_max = 1 Å⁻¹ puts every beam with |g| ≤ 0.6 Å⁻¹ (N > 70) in every sample's matrix: the per-sample
    # model then diagonalises a permutation of the frame's matrix, so the intensities agree to rounding (1e-11 of
    # the largest).
    settings = dataclasses.replace(BASE, g_max=0.6, sg_max=1.0, g_max_refine=0.6)
    exp_f, frame = _intensities(demo, dataclasses.replace(settings, beam_selection="frame"))
    exp_s, sample = _intensities(demo, settings)
    n_frame = np.asarray(exp_f.beams.mask).sum(-1)
    assert n_frame.min() > 70 and np.all(np.asarray(exp_s.sample_beam_mask).sum(-1) == n_frame[:, None])
    np.testing.assert_allclose(sample, frame, rtol=0, atol=1e-11 * frame.max())


def test_per_sample_beams_converge_to_the_many_beam_answer(demo):
    # Against the per-frame model at sg_max = 0.06 (reference; g_max 0.8), the per-sample model's relative L1 error
    # on the observed reflections must fall as sg_max grows 0.01 → 0.02 → 0.04 and reach < 1 % at 0.04 (measured
    # 2.7 %, 1.3 %, 0.43 %); at 0.04 it stays within 2× the per-frame model's error (measured 0.43 % vs 0.31 %).
    base = dataclasses.replace(BASE, g_max=0.8, g_max_refine=0.8)
    _, ref = _intensities(demo, dataclasses.replace(base, sg_max=0.06, beam_selection="frame"))
    errors = []
    for sg in (0.01, 0.02, 0.04):
        exp_s, sample = _intensities(demo, dataclasses.replace(base, sg_max=sg))
        m = np.asarray(exp_s.refl_mask)
        errors.append(np.abs(sample - ref)[m].sum() / ref[m].sum())
    _, frame = _intensities(demo, dataclasses.replace(base, sg_max=0.04, beam_selection="frame"))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01, errors
    assert errors[2] <= 2.0 * np.abs(frame - ref)[m].sum() / ref[m].sum()


def test_sample_sets_hold_their_excited_beams_and_every_observed_reflection(demo):
    # Host-side selection: the direct beam first; every beam of a sample has |s_g| ≤ sg_max at that sample or is an
    # observed reflection at its sample of smallest |s_g|; every beam of the frame with |s_g| ≤ sg_max at a sample
    # is in that sample's set; every observed reflection is in ≥ 1 sample; max_beams caps each set.
    crystal, _, data = demo
    exp = prepare_experiment(data, crystal, BASE)
    k = BlochSettings(exp.energy_kev).k
    subs, masks = np.asarray(exp.sample_beams), np.asarray(exp.sample_beam_mask)
    hkl, fmask = np.asarray(exp.beams.hkl), np.asarray(exp.beams.mask)
    for f in range(exp.n_frames):
        g = np.einsum("bj,sij->sbi", hkl[f] @ (exp.base_orientation[f] @ np.asarray(crystal.reciprocal)).T,
                      exp.sample_rotations[f])
        s_abs = np.abs(np.asarray(excitation_errors(g, k)))
        observed = set(np.asarray(exp.refl_beam[f])[np.asarray(exp.refl_mask[f])].tolist())
        seen = set()
        for j in range(subs.shape[1]):
            idx = subs[f, j][masks[f, j]]
            assert idx[0] == 0
            inside = set(np.nonzero((s_abs[j] <= BASE.sg_max) & fmask[f])[0].tolist()) - {0}
            assert inside <= set(idx[1:].tolist())
            extra = set(idx[1:].tolist()) - inside
            assert extra <= observed
            for b in extra:
                assert np.argmin(s_abs[:, b]) == j
            seen |= set(idx.tolist())
        assert observed <= seen
    capped = prepare_experiment(data, crystal, dataclasses.replace(BASE, sg_max=0.03, max_beams=20))
    assert np.asarray(capped.sample_beam_mask).sum(-1).max() == 20 and capped.matrix_size == 24


def test_reselection_follows_the_orientation(demo):
    # Reselecting at unchanged orientations reproduces the prepared sets exactly; after a 0.3° rotation of every
    # frame the sets change and hold every beam of the frame's list with |s_g| ≤ sg_max at the new sample
    # orientations.
    crystal, _, data = demo
    exp = prepare_experiment(data, crystal, BASE)
    same = reselect_sample_beams(exp, crystal)
    assert np.array_equal(same.sample_beams, exp.sample_beams) and np.array_equal(same.sample_beam_mask,
                                                                                   exp.sample_beam_mask)
    rot = np.stack([np.asarray(jaxed_rotation_x(np.deg2rad(0.3)))] * exp.n_frames)
    moved = reselect_sample_beams(with_corrections(exp, rot), crystal)
    assert not np.array_equal(np.asarray(moved.sample_beam_mask).sum(-1), np.asarray(exp.sample_beam_mask).sum(-1))
    k = BlochSettings(exp.energy_kev).k
    hkl = np.asarray(moved.beams.hkl)
    for f in range(moved.n_frames):
        g = np.einsum("bj,sij->sbi", hkl[f] @ (moved.base_orientation[f] @ np.asarray(crystal.reciprocal)).T,
                      moved.sample_rotations[f])
        s_abs = np.abs(np.asarray(excitation_errors(g, k)))
        for j in range(s_abs.shape[0]):
            idx = np.asarray(moved.sample_beams[f, j])[np.asarray(moved.sample_beam_mask[f, j])]
            inside = set(np.nonzero((s_abs[j] <= BASE.sg_max) & np.asarray(moved.beams.mask[f]))[0].tolist())
            assert inside <= set(idx.tolist())


def test_take_frames_keeps_the_sample_sets(demo):
    # Frame 2 taken from the 3-frame experiment = frame 2 computed alone: 1e-13 relative, and 1e-12 of the strongest
    # intensity absolute (a 1-frame and a 3-frame batch may round differently; a wrong frame differs by O(1)).
    crystal, atoms, _ = demo
    exp, full = _intensities(demo, dataclasses.replace(BASE, g_max=0.8, g_max_refine=0.8))
    one = take_frames(exp, [2])
    np.testing.assert_allclose(_forward(atoms, crystal, one, THICKNESS)[0], full[2], rtol=1e-13,
                               atol=1e-12 * np.abs(full[2]).max())


def test_take_frames_is_one_generic_take_along_the_frame_axis(demo):
    # Every per-frame array is indexed along axis 0 and the shared coupling table is kept (exact equality); host
    # indices, slices and boolean masks give the same subset and renumber the static frame ids; traced indices
    # (a minibatch under jit) give the same arrays and keep the ids.
    crystal, _, data = demo
    exp = prepare_experiment(data, crystal, dataclasses.replace(BASE, g_max=0.8, g_max_refine=0.8))
    sub = take_frames(exp, [2, 0])
    assert sub.frame_ids == (exp.frame_ids[2], exp.frame_ids[0]) and sub.n_frames == 2
    np.testing.assert_array_equal(np.asarray(sub.beams.hkl_unique), np.asarray(exp.beams.hkl_unique))
    np.testing.assert_array_equal(np.asarray(sub.beams.hkl), np.asarray(exp.beams.hkl)[[2, 0]])
    np.testing.assert_array_equal(np.asarray(sub.sample_beams), np.asarray(exp.sample_beams)[[2, 0]])
    by_slice, by_mask = take_frames(exp, slice(1, 3)), take_frames(exp, np.array([False, True, True]))
    assert by_slice.frame_ids == by_mask.frame_ids == exp.frame_ids[1:3]
    for a, b in zip(jax.tree_util.tree_leaves(by_slice), jax.tree_util.tree_leaves(by_mask)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    traced = jax.jit(take_frames)(exp, jnp.array([2, 0]))
    assert traced.frame_ids == exp.frame_ids
    for a, b in zip(jax.tree_util.tree_leaves(traced), jax.tree_util.tree_leaves(sub)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a plain pytree of per-frame arrays (e.g. observations and tilts) is taken the same way
    pair = take_frames((np.asarray(exp.i_obs), np.asarray(exp.theta)), [1])
    np.testing.assert_array_equal(np.asarray(pair[0]), np.asarray(exp.i_obs)[[1]])
    np.testing.assert_array_equal(np.asarray(pair[1]), np.asarray(exp.theta)[[1]])


def test_per_sample_gradient_matches_finite_differences(demo):
    # d/d(positions, ADPs, thickness) of Σ w·I along a random direction vs central differences (h = 1e-6):
    # rtol 1e-6 (float64). The gathers and the scatter back to the frame's beams are part of the derivative.
    crystal, atoms, data = demo
    exp = prepare_experiment(data, crystal, BASE)
    bloch = BlochSettings(exp.energy_kev)
    w = jnp.asarray(np.random.default_rng(0).uniform(size=np.shape(exp.refl_mask)))

    def f(frac, u, t):
        a = dataclasses.replace(atoms, frac=frac, u_star=u)
        return jnp.sum(w * integrated_intensities(a, crystal, exp, t, bloch))

    f = jax.jit(f)
    args = (jnp.asarray(atoms.frac), jnp.asarray(atoms.u_star), jnp.full(exp.n_frames, THICKNESS))
    analytic, fd, _ = directional_fd(f, args, seed=1, h=1e-6, scales=(1.0, 1e-3, 10.0))
    assert analytic == pytest.approx(fd, rel=1e-6)


def test_unknown_beam_selection_is_one_line(demo_quartz):
    crystal, data = demo_quartz.crystal, demo_quartz.data.subset_frames([0])
    with pytest.raises(JaxedInputError, match="beam_selection 'beam': expected one of frame, sample") as info:
        prepare_experiment(data, crystal, dataclasses.replace(BASE, beam_selection="beam"))
    assert "\n" not in str(info.value)
