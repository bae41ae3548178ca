"""The automatic protocol's first stages (jaxed.refine.protocol) on small synthetic sets made with jaxed.model.synth
from the shipped quartz structure, and (slow) the geometry detector on a few measured frames."""
import dataclasses
import warnings
from importlib import resources

import numpy as np
import pytest

from conftest import shared_file
from jaxed.data.pets import read_pets
from jaxed.errors import JaxedInputError
from jaxed.model.experiment import ExperimentSettings, prepare_experiment
from jaxed.model.synth import synthesize, tilt_series
from jaxed.physics.bloch import BlochSettings
from jaxed.physics.constants import energy_from_wavelength
from jaxed.physics.crystal import load_structure
from jaxed.refine import protocol

QUARTZ = str(resources.files("jaxed").joinpath("data") / "quartz_P3221.cif")
DEMO = str(resources.files("jaxed").joinpath("data") / "quartz_demo.cif_pets")
T_TRUE = 420.0  # [Å] the synthetic sets' constant thickness
# settings the synthetic sets are made with: small matrices (g_max 1.2 Å⁻¹), 96 samples (no count of the doubling
# rule's sequence 8, 16, 32, … reproduces the generator exactly)
SYNTH = ExperimentSettings(g_max=1.2, g_max_refine=1.0, sg_max=0.01, n_samples=96, r_sg_max=None)


@pytest.fixture(scope="module")
def quartz():
    crystal, atoms = load_structure(QUARTZ)
    return crystal, atoms, BlochSettings(200.0)


def _synthetic(quartz, precession: bool, n_frames: int = 3, semi: float = 1.0):
    """Noise-free synthetic frames (the file says 'continuous rotation' either way, as the measured paracetamol
    export does), constant thickness :data:`T_TRUE`."""
    crystal, atoms, bloch = quartz
    frames = tilt_series(crystal, alpha_start=-24.0, alpha_end=24.0, step=48.0 / (n_frames - 1), semi_angle=semi,
                         wavelength=0.02508, seed=3)
    settings = dataclasses.replace(SYNTH, precession=precession)
    return synthesize(crystal, atoms, frames, np.full(n_frames, T_TRUE), bloch, settings, noise=False)


@pytest.fixture(scope="module")
def rotation_data(quartz):
    return _synthetic(quartz, precession=False)


@pytest.fixture(scope="module")
def precession_data(quartz):
    return _synthetic(quartz, precession=True)


def test_inspect_gives_sensible_limits_on_the_demo_data(quartz):
    """The shipped demo set (synthetic quartz, every 4th frame of the measured geometry, reflections to 1.6 Å⁻¹,
    I_max 10⁶): every shell is strong, so g_max_refine is the data's limit, 1.6 Å⁻¹ (to one shell, 0.1); the Bloch
    matrix reaches 0.2 beyond (1.8); frames 4° apart with φ = 1° give R_Sg 2 → the ceiling 1.0; the file's RC width
    0.001 is D_Sg; quartz is not centric (complex path); exact values, as the rules are host arithmetic."""
    crystal, _, _ = quartz
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = read_pets(DEMO)
    ins = protocol.inspect(crystal, data)
    by = {c.name: c for c in ins.choices}
    assert by["g_max_refine"].value == pytest.approx(1.6, abs=1e-9)
    assert by["g_max"].value == pytest.approx(1.8, abs=1e-9)
    assert by["r_sg_max"].value == pytest.approx(1.0, abs=1e-12) and "clipped" in by["r_sg_max"].reason
    assert by["d_sg_min"].value == pytest.approx(0.001, abs=1e-12)
    assert by["bloch path"].value == "complex" and by["precession"].value is False
    assert ins.settings.g_max >= ins.settings.g_max_refine + protocol.MATRIX_MARGIN - 1e-9
    assert by["beam_selection"].value in ("frame", "sample") and ins.n_beams >= 8
    assert by["frames_per_batch"].value >= 1
    table = protocol.choices_table(ins.choices)
    assert table.count("\n") == len(ins.choices) + 1 and all(c.reason for c in ins.choices)


def test_resolution_rule_stops_at_the_first_weak_shell(quartz):
    """The demo data with σ raised 10⁴-fold beyond 1.2 Å⁻¹ (mean I/σ there < 2, every shell below stays strong):
    g_max_refine is 1.2 Å⁻¹ exactly, g_max 1.6 (the data's limit, ≥ 1.2 + 0.2); without an RC width in the file
    D_Sg is the 0.0015 Å⁻¹ default."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = read_pets(DEMO)
    g = np.linalg.norm(np.asarray(data.hkl) @ np.asarray(data.ub).T, axis=1)
    weak = dataclasses.replace(data, sigma=np.where(g > 1.2, 1e4 * data.sigma, data.sigma), details={})
    assert protocol.refinement_resolution(weak).value == pytest.approx(1.2, abs=1e-9)
    assert protocol.matrix_resolution(weak, 1.2).value == pytest.approx(1.6, abs=1e-9)
    assert protocol.d_sg_cut(weak).value == pytest.approx(protocol.D_SG_DEFAULT, abs=1e-15)
    shells = protocol.resolution_shells(weak)
    assert sum(n for _, n, _, _ in shells) == len(g)  # every reflection in one shell


def test_r_sg_rule_tiles_the_tilt_range(quartz):
    """R_Sg = Δα/(2φ) (rotation) and Δα/(2 sin α_p) (precession), clipped into [0.4, 1]: exact to 1e-3 (the
    value is rounded to three decimals)."""
    frames = tilt_series(quartz[0], alpha_start=0.0, alpha_end=6.0, step=1.5, semi_angle=1.4)
    rot = protocol.r_sg_cut(frames, precession=False).value
    prec = protocol.r_sg_cut(frames, precession=True).value
    assert rot == pytest.approx(1.5 / 2.8, abs=1e-3)
    assert prec == pytest.approx(np.deg2rad(1.5) / (2 * np.sin(np.deg2rad(1.4))), abs=1e-3)
    dense = tilt_series(quartz[0], alpha_start=0.0, alpha_end=2.0, step=0.2, semi_angle=1.0)
    assert protocol.r_sg_cut(dense, precession=False).value == pytest.approx(0.4, abs=1e-12)


def test_thickness_scan_finds_the_truth_within_one_step(quartz, rotation_data):
    """Noise-free rotation data at 420 Å, modelled as made but with 32 samples (converged to the rule's 0.1 points,
    test_sample_count_rule_reaches_the_converged_r): the three scans land within one step of the last scan (stated
    in the reason, < 2 % of t) of 420 Å, and wR_all there is < 1 %."""
    crystal, atoms, bloch = quartz
    exp = prepare_experiment(rotation_data, crystal, dataclasses.replace(SYNTH, precession=False, n_samples=32))
    choice, scan = protocol.choose_thickness(atoms, crystal, exp, bloch)
    step = float(choice.reason.split("±")[1].split("Å")[0])
    assert 0 < step < 0.02 * T_TRUE, choice.reason
    assert abs(choice.value - T_TRUE) <= step + 1e-9, choice.reason
    assert scan.wr_all[scan.best] < 0.01 and scan.wr_all[scan.best] == scan.wr_all.min()


@pytest.mark.parametrize("precession", [True, False], ids=["precession", "rotation"])
def test_geometry_detector_picks_the_geometry_of_the_data(quartz, request, precession):
    """Data in a file labelled with the other geometry (precession data that says 'continuous rotation', rotation
    data relabelled 'precession'): the detector takes the data's own geometry by fit, each geometry at its own best
    thickness, with wR_all below half of the other geometry's (far beyond the 1 % tie margin)."""
    crystal, atoms, bloch = quartz
    if precession:
        data = request.getfixturevalue("precession_data")
    else:
        data = dataclasses.replace(request.getfixturevalue("rotation_data"), geometry="precession")
    settings = protocol.inspect(crystal, data).settings
    choice, fits = protocol.detect_geometry(crystal, atoms, data, settings, bloch)
    assert choice.value is precession, choice.reason
    wr = {p: f[1].wr_all[f[1].best] for p, f in fits.items()}
    assert wr[precession] < 0.5 * wr[not precession], wr


def test_sample_count_rule_reaches_the_converged_r(quartz, rotation_data):
    """Doubling from 8 until R_obs changes by < 0.1 points: at the count chosen, R_obs is within 0.3 points of its
    converged value — 0 at the generator's 96 samples (noise-free data, the model is the generator) — and the count
    before it was not converged (R_obs moved ≥ 0.1 points on doubling it)."""
    crystal, atoms, bloch = quartz
    settings = dataclasses.replace(SYNTH, precession=False, r_sg_max=0.9)
    choice, history = protocol.choose_sample_count(crystal, atoms, rotation_data, settings, bloch, T_TRUE, start=8,
                                                   n_max=64)
    n, r = choice.value, dict(history)
    assert 8 < n <= 32, choice.reason  # 8 samples over 2° at 420 Å are not converged
    r_ref = protocol._r_obs_at(atoms, crystal, rotation_data, settings, bloch, T_TRUE,
                               protocol.probe_frames(rotation_data))
    assert r_ref < 1e-8, r_ref
    assert abs(r[n] - r_ref) < 3e-3, (history, r_ref)
    assert abs(r[n // 2] - r[n]) >= 1e-3, history


def test_first_stages_refuse_an_energy_other_than_the_data(quartz, rotation_data):
    """Bloch settings at 300 kV for data measured at λ = 0.02508 Å (200 kV): a one-line input error, before any
    simulation."""
    crystal, atoms, _ = quartz
    with pytest.raises(JaxedInputError, match="kV"):
        protocol.first_stages(crystal, atoms, rotation_data, BlochSettings(300.0))


# ------------------------------------------------------------------------------------------------ measured data
def _measured(structure: str, data: str, frames: int = 3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crystal, atoms = load_structure(shared_file(f"structures/{structure}"))
        full = read_pets(shared_file(f"pets/{data}"))
    pick = protocol.probe_frames(full, frames)
    return crystal, atoms, full.subset_frames(pick)


@pytest.mark.slow
def test_geometry_detector_on_measured_quartz_and_paracetamol():
    """On 3 measured frames each (published structures, the files' orientations): quartz is continuous rotation,
    paracetamol — whose export says continuous rotation — is precession."""
    for structure, data_file, precession in (("quartz_P3221.cif", "quartz_suresh2024.cif_pets", False),
                                              ("paracetamol_formII_Pbca.cif", "paracetamol_formII.cif_pets", True)):
        crystal, atoms, data = _measured(structure, data_file)
        settings = protocol.inspect(crystal, data).settings
        bloch = BlochSettings(energy_from_wavelength(float(data.wavelength)))
        choice, fits = protocol.detect_geometry(crystal, atoms, data, settings, bloch)
        assert choice.value is precession, choice.reason
        wr = {p: f[1].wr_all[f[1].best] for p, f in fits.items()}
        assert wr[precession] < 0.9 * wr[not precession], choice.reason  # a clear margin, not a tie
