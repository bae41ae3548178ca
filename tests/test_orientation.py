"""Per-frame orientation refinement recovers a known misorientation (synthetic, noise-free)."""
import dataclasses

import numpy as np
import pytest

from jaxed.bloch import BlochSettings
from jaxed.crystal import load_structure
from jaxed.demo import demo_files
from jaxed.experiment import ExperimentSettings, prepare_experiment
from jaxed.orientation import frame_losses, gradient_tilts, hexagonal_scan, misorientation_deg, nelder_mead
from jaxed.pets import read_pets
from jaxed.refine import RefineConfig, Refinement
from jaxed.synth import synthesize

SETTINGS = ExperimentSettings(g_max=1.2, sg_max=0.01, g_max_refine=1.2, r_sg_max=None, n_samples=15)


@pytest.fixture(scope="module")
def misoriented():
    # Data simulated at α + 0.15° per frame (a lab rotation about the tilt axis x, ⟂ beam), read with the nominal α:
    # the searches must find the difference. (A β error would also rotate the crystal about the beam, which with
    # rocking-curve integration changes intensities at second order and is not in the two-tilt searches' space.)
    # Returns (problem at nominal angles, true base orientations).
    structure, data_path, _ = demo_files()
    crystal, atoms = load_structure(structure)
    with pytest.warns(UserWarning):
        data = read_pets(data_path).subset_frames([2, 10])
    true = dataclasses.replace(data, alpha=data.alpha + 0.15)
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
    corrected, _ = fn(problem, problem.params0)
    before = frame_losses(problem, problem.params0)
    after = frame_losses(problem, problem.params0, corrected)
    assert np.all(after < before / 3)
    # compare the beam directions (the rotation about the beam does not change intensities and is not determined)
    beam = lambda o: np.linalg.solve(o, [0, 0, -1.0])  # noqa: E731
    for o_new, o_true in zip(np.asarray(corrected.base_orientation), true_base):
        a, b = beam(o_new), beam(o_true)
        assert np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))) < 0.03
