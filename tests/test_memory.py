"""Memory model and frame chunking (jaxed.model.batching), Gauss–Legendre rocking quadrature (jaxed.model.experiment)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxed.model.batching import bytes_per_frame, check_memory, estimate_beams, estimate_bytes, frames_per_batch
from jaxed.physics.bloch import BlochSettings
from jaxed.errors import JaxedInputError
from jaxed.model.experiment import ExperimentSettings, integrated_intensities, prepare_experiment, quadrature_nodes


@pytest.fixture(scope="module")
def small(demo_quartz):
    crystal, atoms = demo_quartz.crystal, demo_quartz.atoms
    data = demo_quartz.data.subset_frames([0, 4, 8, 12, 16])
    exp = prepare_experiment(data, crystal, ExperimentSettings(g_max=1.4, sg_max=0.01, g_max_refine=1.2, n_samples=4))
    return crystal, atoms, data, exp, BlochSettings(exp.energy_kev)


@pytest.mark.parametrize("absorption", [0.0, 0.1])
def test_memory_model_bounds_xla_memory_analysis(small, absorption):
    # XLA's compiled temp buffers of forward and forward+gradient for the 5 frames: the model (5 × bytes_per_frame)
    # must not under-estimate them, and must not exceed them by more than 3× (it picks the batch size). With
    # absorption the working set is 2.5–2.9× the elastic one (measured): the elastic model would under-estimate it.
    crystal, atoms, _, exp, bloch = small
    bloch = dataclasses.replace(bloch, absorption=absorption)
    t = jnp.full(exp.n_frames, 600.0)
    f = lambda a, t: jnp.sum(integrated_intensities(a, crystal, exp, t, bloch))  # noqa: E731
    for gradient, fn in ((False, f), (True, jax.grad(f, argnums=(0, 1)))):
        measured = jax.jit(fn).lower(atoms, t).compile().memory_analysis().temp_size_in_bytes
        model = exp.n_frames * bytes_per_frame(exp.beams.n_beams, 4, gradient=gradient, absorption=absorption > 0)
        assert measured <= model <= 3 * measured, (gradient, measured, model)
        if absorption:
            elastic = exp.n_frames * bytes_per_frame(exp.beams.n_beams, 4, gradient=gradient)
            assert elastic < measured, (gradient, measured, elastic)


def test_chunks_bound_the_gradients_memory_too(small):
    # frames_per_batch must bound forward *and* gradient memory: reverse mode through lax.map keeps every chunk's
    # residuals unless the chunk is rematerialised. XLA's temp buffers of the gradient with one frame per chunk must
    # be well below those of one vmapped call over the 5 frames (measured 0.3×; 1.0× without jax.checkpoint), and
    # shrink with the chunk size.
    crystal, atoms, _, exp, bloch = small
    t = jnp.full(exp.n_frames, 600.0)

    def temp(k):
        f = lambda a, t: jnp.sum(integrated_intensities(a, crystal, exp, t, bloch, frames_per_batch=k))  # noqa: E731
        return jax.jit(jax.grad(f, argnums=(0, 1))).lower(atoms, t).compile().memory_analysis().temp_size_in_bytes

    whole, two, one = temp(None), temp(2), temp(1)
    assert one < two < whole and one <= 0.6 * whole, (whole, two, one)


def test_frames_per_batch_fits_or_says_how_much_is_needed():
    # CsPbBr₃-sized frames (N = 850, 60 samples): ≈ 4.2 GB each with the gradient. A 24 GiB host takes 3 frames per
    # step, a 16 GiB GPU 2; everything fitting means no chunking (n_frames); 4 GiB cannot hold one frame: one line.
    assert bytes_per_frame(850, 60) == pytest.approx(4.19e9, rel=0.01)
    assert frames_per_batch(59, 850, 60, memory_bytes=24 * 1024**3) == 3
    assert frames_per_batch(59, 850, 60, memory_bytes=16 * 1024**3) == 2
    assert frames_per_batch(99, 40, 42, memory_bytes=8 * 1024**3) == 99
    assert frames_per_batch(99, 104, 42, memory_bytes=8 * 1024**3, n_devices=4) == 99
    # absorption: 36 instead of 6 N×N arrays per sample with the gradient, so 6× the memory per frame
    assert bytes_per_frame(850, 60, absorption=True) == pytest.approx(6 * bytes_per_frame(850, 60), rel=0.01)
    # the full CsPbBr₃ run (59 frames, 248 beams, 30 samples, 23 GiB host): elastic in one call, absorption in chunks
    # of 13 (measured: 12 frames per chunk peaked at 12.2 GB RSS, results/table2.md)
    assert frames_per_batch(59, 248, 30, memory_bytes=23 * 1024**3) == 59
    assert frames_per_batch(59, 248, 30, memory_bytes=23 * 1024**3, absorption=True) == 13
    # paracetamol with TDS in complex64 (160 beams, 96 cone samples, 20 GiB free): 18 frames ≈ 12 GB at the measured
    # 0.67 GB per frame (the old constant, 22, chose 26 and the run was killed for memory)
    assert frames_per_batch(50, 160, 96, memory_bytes=20 * 1024**3, absorption=True, complex_bytes=8) == 18
    with pytest.raises(JaxedInputError, match=r"one frame needs ≈ 3\.9 GiB \(850 beams × 60 samples") as info:
        frames_per_batch(59, 850, 60, memory_bytes=4 * 1024**3)
    assert "\n" not in str(info.value)


def test_check_memory_uses_the_one_memory_model(small):
    # The refusal before beam selection counts bytes with bytes_per_frame (exact equality of integers) at the
    # estimated beam count, which is within a factor 2 of the beams the selection picks on the demo data; it refuses
    # in one line stating the bytes, and passes when the memory holds them.
    crystal, _, data, exp, _ = small
    semi = float(np.max(data.precession_angle))
    n_est = estimate_beams(crystal.volume, 1.4, 0.01, semi)
    real = int(np.asarray(exp.beams.mask).sum(axis=1).max())
    assert 0.5 < n_est / real < 2.0, (n_est, real)
    need, n = estimate_bytes(crystal.volume, 1.4, 0.01, 3, 4, semi)
    assert n == n_est and need == 3 * bytes_per_frame(int(np.ceil(n_est)), 4)
    check_memory(crystal.volume, 1.4, 0.01, 3, 4, semi, available=need)
    with pytest.raises(JaxedInputError, match=rf"3 frame\(s\) × 4 sample\(s\) need .* \({need} bytes") as info:
        check_memory(crystal.volume, 1.4, 0.01, 3, 4, semi, available=need - 1)
    assert "\n" not in str(info.value)


@pytest.mark.slow  # ~35 s on 2 cores: run with -m slow
def test_chunked_frames_equal_one_vmapped_call(small):
    # lax.map over chunks of 2 frames (5 frames: chunks 2, 2, + remainder 1) = one vmap over all: intensities to rtol
    # 1e-12, gradient w.r.t. positions/ADPs and thickness to rtol 1e-10 (float64, same operations per frame); absolute
    # parts 1e-12 of the largest value, for entries at rounding level (a frame lost or repeated is O(1)).
    crystal, atoms, _, exp, bloch = small
    t = jnp.linspace(500.0, 700.0, exp.n_frames)
    w = jnp.asarray(np.random.default_rng(0).uniform(size=np.shape(exp.refl_mask)))

    def loss(a, t, k):
        return jnp.sum(w * integrated_intensities(a, crystal, exp, t, bloch, frames_per_batch=k))

    i_all = integrated_intensities(atoms, crystal, exp, t, bloch)
    i_chunk = integrated_intensities(atoms, crystal, exp, t, bloch, frames_per_batch=2)
    np.testing.assert_allclose(np.asarray(i_chunk), np.asarray(i_all), rtol=1e-12, atol=1e-12 * np.abs(i_all).max())
    g_all = jax.grad(loss, argnums=(0, 1))(atoms, t, None)
    g_chunk = jax.grad(loss, argnums=(0, 1))(atoms, t, 2)
    for a, b in zip(jax.tree_util.tree_leaves(g_chunk), jax.tree_util.tree_leaves(g_all)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12 * float(np.max(np.abs(b))))


def test_gauss_legendre_quadrature(small):
    # Nodes in (−1, 1), weights summing to 1, exact for x^(2n−1) (mean of x^6 on [−1, 1] = 1/7 with n = 4, to 1e-14);
    # the midpoint default leaves sample_weights None (the plain mean, unchanged behaviour); the gauss weights are
    # attached per frame and the intensities stay finite and positive.
    x, w = quadrature_nodes(4, "gauss")
    assert np.all(np.abs(x) < 1) and np.sum(w) == pytest.approx(1.0, abs=1e-14)
    assert np.sum(w * x**6) == pytest.approx(1 / 7, abs=1e-14)
    xm, wm = quadrature_nodes(4, "midpoint")
    assert np.allclose(xm, [-0.75, -0.25, 0.25, 0.75]) and np.allclose(wm, 0.25)
    crystal, atoms, data, exp, bloch = small
    assert exp.sample_weights is None
    gauss = prepare_experiment(data, crystal, ExperimentSettings(g_max=1.4, sg_max=0.01, g_max_refine=1.2,
                                                                 n_samples=4, quadrature="gauss"))
    assert np.shape(gauss.sample_weights) == (5, 4)
    forward = jax.jit(lambda a, t: integrated_intensities(a, crystal, gauss, t, bloch))  # compiled: eager is slow
    i = np.asarray(forward(atoms, jnp.full(5, 600.0)))
    assert np.all(np.isfinite(i)) and np.all(i[np.asarray(gauss.refl_mask)] >= 0)
    with pytest.raises(JaxedInputError, match="quadrature"):
        prepare_experiment(data, crystal, ExperimentSettings(n_samples=4, quadrature="simpson"))
