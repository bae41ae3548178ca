"""Speed and memory plumbing of the forward model: BLAS threads, a memory model, frames per device step.

**BLAS threads.** On CPU, XLA runs each ``eigh`` of a batch through LAPACK (scipy's OpenBLAS), one matrix after the
other. OpenBLAS then starts its own thread pool on every core; for the N ≲ 1000 matrices of 3D-ED its threads mostly
spin-wait, and when the cores are shared (other jobs, XLA's own pool) a batched ``eigh`` becomes 8–18× slower
(measured: N = 104, 2 cores under load, 29–56 ms → 3.0–3.5 ms per matrix). :func:`blas_threads` limits the pool
for the duration of a block (default 1 thread; ``JAXED_BLAS_THREADS`` overrides); the refinement driver uses it.
Parallelism across cores comes instead from the batch: frames sharded over devices (:mod:`jaxed.model.distributed`).

**Memory model.** Forward + reverse-mode gradient of one rocking-curve sample with N beams (padded) and n_t
thicknesses keeps, in complex128 (16 bytes per number): the structure matrix B, its eigenvectors C, the
Daleckii–Krein divided differences Φ (n_t N²) and the N×N temporaries of the backward pass (Cᴴ dB C, C X Cᴴ):
``MATRICES_PER_SAMPLE + 2 n_t`` N×N complex arrays with the gradient, ``2 + n_t`` for the forward alone, plus the
frame's int32 coupling table and the gathered U_{g−h} (shared by the frame's samples). :func:`bytes_per_frame` is
that count. XLA's own ``memory_analysis`` of the compiled computation measured 4.1–4.5 (gradient) and 2.0 (forward)
N×N complex arrays per sample for N = 24–72, so the model has a ≈ 1.4× margin (tests/test_memory.py checks that it
neither under- nor over-estimates by more than 3×). With absorption (first order, PHYSICS.md §4.5) each sample also
holds B_a, W = Cᴴ B_a C, the complex eigenvalues' exponentials and their cotangents: measured 16–19 (gradient) and
5.0 (forward) N×N complex arrays per sample for N = 16–56, modelled as :data:`ABSORPTION_MATRICES_PER_SAMPLE` and
:data:`ABSORPTION_FORWARD_MATRICES` (without this term the automatic chunk size of a CsPbBr₃ absorption refinement
asked for 30 GB on a 23 GB host). The process's peak RSS in a real refinement is ≈ 1.5× XLA's count: paracetamol
with TDS absorption in complex64 (≤ 160 beams, 96 precession samples, 5 frames per chunk) peaked at 4.5 GB,
≈ 0.67 GB per frame = 34 N×N arrays per sample, and with 22 the automatic chunk (26 frames) was killed for memory on
24 GB; hence 34.
:func:`frames_per_batch` turns it into the number of frames one device step can hold, and raises a one-line
:class:`JaxedInputError` saying how much is needed when not even one frame fits.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os

import jax

from jaxed.errors import JaxedInputError

__all__ = ["blas_threads", "with_blas_threads", "bytes_per_frame", "available_memory", "frames_per_batch",
           "experiment_frames_per_batch",
           "frame_devices", "MATRICES_PER_SAMPLE"]

#: N×N complex arrays alive per rocking sample in forward + gradient (besides 2 n_t for thickness-dependent terms).
MATRICES_PER_SAMPLE = 4
#: The same with absorption (gradient, forward alone), besides the 2 n_t (n_t) thickness-dependent terms.
ABSORPTION_MATRICES_PER_SAMPLE = 34
ABSORPTION_FORWARD_MATRICES = 6
#: Share of the device memory the forward/gradient working set may use (the rest: XLA buffers, params, data).
MEMORY_FRACTION = 0.6


@contextlib.contextmanager
def blas_threads(n: int | None = None):
    """Limit the BLAS/LAPACK thread pools (OpenBLAS, MKL) to ``n`` threads inside the block.

    ``n`` None: ``$JAXED_BLAS_THREADS`` if set, else 1. Without ``threadpoolctl`` installed this does nothing
    (set ``OPENBLAS_NUM_THREADS=1`` before starting Python instead).
    """
    if n is None:
        n = int(os.environ.get("JAXED_BLAS_THREADS", "1"))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional dependency
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def with_blas_threads(fn):
    """Decorator: run ``fn`` inside :func:`blas_threads` (default thread count)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with blas_threads():
            return fn(*args, **kwargs)

    return wrapped


def frame_devices(experiment) -> int:
    """Number of devices the experiment's frames are sharded over (1 for host/numpy arrays)."""
    sharding = getattr(experiment.refl_mask, "sharding", None)
    return len(sharding.device_set) if sharding is not None else 1


def bytes_per_frame(n_beams: int, n_samples: int, n_thickness: int = 1, *, gradient: bool = True,
                    complex_bytes: int = 16, absorption: bool = False) -> int:
    """Working-set estimate of one frame [bytes]: all its rocking samples, forward (+ reverse-mode gradient).

    Args:
        n_beams: padded beams N of the frame's Bloch matrix.  n_samples: rocking-curve samples.
        n_thickness: thicknesses per sample (ThicknessNN draws).  gradient: forward + gradient (else forward only).
        complex_bytes: 16 for complex128, 8 for complex64.  absorption: the model has absorption (κ > 0).
    """
    n2 = n_beams * n_beams
    if gradient:
        per_sample = (ABSORPTION_MATRICES_PER_SAMPLE if absorption else MATRICES_PER_SAMPLE) + 2 * n_thickness
    else:
        per_sample = (ABSORPTION_FORWARD_MATRICES if absorption else 2) + n_thickness
    shared = 4 * n2 + 2 * complex_bytes * n2  # int32 coupling + U_{g−h} (and its cotangent)
    return int(n_samples * per_sample * complex_bytes * n2 + shared)


def experiment_frames_per_batch(experiment, *, float64: bool, absorption: bool, n_thickness: int = 1,
                                gradient: bool = True) -> int:
    """:func:`frames_per_batch` for a prepared :class:`jaxed.model.experiment.Experiment`: its frames, padded beams, rocking
    samples and frame sharding; ``float64``: complex128 (else complex64) Bloch matrices."""
    return frames_per_batch(experiment.n_frames, experiment.matrix_size, int(experiment.sample_rotations.shape[1]),
                            n_thickness, gradient=gradient, complex_bytes=16 if float64 else 8,
                            n_devices=frame_devices(experiment), absorption=absorption)


def available_memory(device: jax.Device | None = None) -> int:
    """Memory a computation may use on ``device`` [bytes]: the accelerator's limit, or the host's MemAvailable."""
    device = device or jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may not implement it
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3  # unknown: assume 8 GiB


def frames_per_batch(n_frames: int, n_beams: int, n_samples: int, n_thickness: int = 1, *,
                     memory_bytes: int | None = None, gradient: bool = True, complex_bytes: int = 16,
                     n_devices: int = 1, absorption: bool = False) -> int:
    """How many frames one device step evaluates at once (``lax.map`` runs the chunks one after the other).

    Args:
        n_frames: frames per device (after sharding).  memory_bytes: memory of one device [bytes] (default:
            :func:`available_memory`); :data:`MEMORY_FRACTION` of it is used.
        n_devices: devices sharing the frames (each holds ⌈n_frames / n_devices⌉).
        absorption: the model has absorption (a larger working set per sample, :func:`bytes_per_frame`).

    Returns:
        ``n_frames`` when every device's share fits (one vmapped call, no chunking), else the frames per chunk
        1 ≤ k < frames per device.
    Raises:
        JaxedInputError (one line) when one frame alone does not fit, with the memory it needs.
    """
    memory_bytes = available_memory() if memory_bytes is None else int(memory_bytes)
    budget = MEMORY_FRACTION * memory_bytes
    need = bytes_per_frame(n_beams, n_samples, n_thickness, gradient=gradient, complex_bytes=complex_bytes,
                           absorption=absorption)
    if need > budget:
        raise JaxedInputError(
            f"one frame needs ≈ {need / 1024**3:.1f} GiB ({n_beams} beams × {n_samples} samples"
            f"{' with gradient' if gradient else ''}{' and absorption' if absorption else ''}) but "
            f"{budget / 1024**3:.1f} GiB of the device's "
            f"{memory_bytes / 1024**3:.1f} GiB is usable: lower sg_max/g_max (fewer beams) or n_samples")
    per_device = math.ceil(n_frames / max(n_devices, 1))
    fit = int(budget // need)
    return n_frames if fit >= per_device else max(1, fit)
