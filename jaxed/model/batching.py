"""Speed and memory plumbing of the forward model: BLAS threads, the one memory model, frames per device step.

**BLAS threads.** On CPU, XLA runs each ``eigh`` of a batch through LAPACK one matrix after the other, and OpenBLAS
starts a spin-waiting pool on every core. :func:`blas_threads` limits that pool for the duration of a block (default
1 thread; ``JAXED_BLAS_THREADS`` overrides); parallelism across cores comes from sharding frames over devices
(:mod:`jaxed.model.distributed`). Measurements: docs/SPEED.md §2.

**Memory model** (this module is its only home). The working set of one frame, :func:`bytes_per_frame`, counts
N×N complex arrays per rocking sample — the structure matrix, its eigenvectors, the Daleckii–Krein divided
differences (n_t of them) and the temporaries of the backward pass; more with first-order absorption — plus the
frame's int32 coupling table and gathered U_{g−h}:

    bytes = n_samples · (m + 2 n_t) · b · N² + (4 + 2b) · N²        (gradient; forward: m_f + n_t)

with b the bytes of one complex number (16 complex128, 8 complex64), m = :data:`MATRICES_PER_SAMPLE`
(:data:`ABSORPTION_MATRICES_PER_SAMPLE` with absorption) and m_f = :data:`FORWARD_MATRICES`
(:data:`ABSORPTION_FORWARD_MATRICES`). It is used
twice: :func:`frames_per_batch` turns it into the frames one device step holds (chunking), and :func:`check_memory`
refuses, before any beam is selected, settings whose frames cannot fit at all (beams estimated by
:func:`estimate_beams`). Both refusals are one-line :class:`JaxedInputError` errors stating the bytes needed. How
the constants were measured against XLA and real runs: docs/SPEED.md, "Memory model".
"""
from __future__ import annotations

import contextlib
import functools
import math
import os

import jax

from jaxed.errors import JaxedInputError

__all__ = ["blas_threads", "with_blas_threads", "bytes_per_frame", "available_memory", "physical_memory",
           "frames_per_batch", "experiment_frames_per_batch", "estimate_beams", "estimate_bytes", "check_memory",
           "frame_devices", "MATRICES_PER_SAMPLE", "FORWARD_MATRICES", "ABSORPTION_MATRICES_PER_SAMPLE", "ABSORPTION_FORWARD_MATRICES",
           "MEMORY_FRACTION"]

#: N×N complex arrays alive per rocking sample in forward + gradient, besides the 2 n_t thickness-dependent ones.
MATRICES_PER_SAMPLE = 4
#: N×N complex arrays per sample of the forward alone, besides the n_t thickness-dependent ones.
FORWARD_MATRICES = 2
#: The same as MATRICES_PER_SAMPLE with absorption, besides the 2 n_t thickness-dependent ones (gradient).
ABSORPTION_MATRICES_PER_SAMPLE = 34
#: N×N complex arrays per sample of the forward alone with absorption, besides the n_t thickness-dependent ones.
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
    """Working set of one frame [bytes]: all its rocking samples, forward (+ reverse-mode gradient); the formula of
    the module docstring.

    Args:
        n_beams: padded beams N of the frame's Bloch matrix.  n_samples: rocking-curve samples.
        n_thickness: thicknesses per sample (ThicknessNN draws).  gradient: forward + gradient (else forward only).
        complex_bytes: 16 for complex128, 8 for complex64.  absorption: the model has absorption (κ > 0).
    """
    n2 = n_beams * n_beams
    if gradient:
        per_sample = (ABSORPTION_MATRICES_PER_SAMPLE if absorption else MATRICES_PER_SAMPLE) + 2 * n_thickness
    else:
        per_sample = (ABSORPTION_FORWARD_MATRICES if absorption else FORWARD_MATRICES) + n_thickness
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


def physical_memory() -> float:
    """Physical memory of this machine [bytes] (inf when unknown): the limit :func:`check_memory` refuses beyond."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def estimate_beams(volume: float, g_max: float, sg_max: float, semi_angle_deg: float = 0.0) -> float:
    """Beams N of one Bloch matrix estimated before any beam is selected [–].

    The reciprocal-lattice points (density V_cell [Å³]) within |g| ≤ g_max of the slab |s_g| ≤ sg_max, widened by the
    rocking range |g|·θ: N ≈ 1 + V (2π sg_max g_max² + (4π/3) θ g_max³).

    Args:
        volume: cell volume [Å³].  g_max, sg_max: [Å⁻¹].  semi_angle_deg: rocking / precession semi-angle θ [deg]
            (0 for per-sample beam sets, whose matrices hold only their own slab).
    """
    theta = math.radians(abs(semi_angle_deg))
    return 1.0 + volume * (2 * math.pi * sg_max * g_max**2 + 4 * math.pi / 3 * theta * g_max**3)


def estimate_bytes(volume: float, g_max: float, sg_max: float, n_frames: int, n_samples: int,
                   semi_angle_deg: float = 0.0, *, gradient: bool = True, complex_bytes: int = 16,
                   absorption: bool = False) -> tuple[int, float]:
    """(bytes, N): :func:`bytes_per_frame` of ``n_frames`` frames with the :func:`estimate_beams` beam count."""
    n_beams = estimate_beams(volume, g_max, sg_max, semi_angle_deg)
    need = n_frames * bytes_per_frame(math.ceil(n_beams), n_samples, gradient=gradient, complex_bytes=complex_bytes,
                                      absorption=absorption)
    return need, n_beams


def check_memory(volume: float, g_max: float, sg_max: float, n_frames: int, n_samples: int,
                 semi_angle_deg: float = 0.0, available: float | None = None, *, gradient: bool = True,
                 complex_bytes: int = 16, absorption: bool = False) -> None:
    """Refuse, before anything is allocated or selected, settings whose ``n_frames`` frames cannot fit in memory.

    Args:
        volume: cell volume [Å³].  g_max, sg_max: beam selection [Å⁻¹].  n_frames: frames that must fit at once
            (1 when the model runs in chunks of frames).  n_samples: rocking samples per frame.
        semi_angle_deg: rocking / precession semi-angle [deg] (:func:`estimate_beams`).
        available: memory [bytes]; default :func:`physical_memory`.
        gradient, complex_bytes, absorption: as :func:`bytes_per_frame`.

    Raises:
        JaxedInputError: one line with the estimated beams and the bytes needed.
    """
    need, n_beams = estimate_bytes(volume, g_max, sg_max, n_frames, n_samples, semi_angle_deg, gradient=gradient,
                                   complex_bytes=complex_bytes, absorption=absorption)
    have = physical_memory() if available is None else float(available)
    if need > have:
        raise JaxedInputError(
            f"--g-max {g_max:g} / --sg-max {sg_max:g}: about {n_beams:.3g} beams per matrix, so {n_frames} frame(s) × "
            f"{n_samples} sample(s) need ≈ {need / 1e9:.3g} GB ({need} bytes, jaxed.model.batching.bytes_per_frame), "
            f"more than this machine's {have / 1e9:.3g} GB; lower --g-max / --sg-max / --samples or select fewer "
            "--frames")


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
