"""Test configuration: float64 everywhere, strict rank promotion, paths to data.

The library itself never flips ``jax_enable_x64``; the tests do, before anything is traced.
"""
import os
import tempfile
from pathlib import Path

import jax

import jaxed
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jaxed.configure_cpu()  # CPU thread settings (docs/SPEED.md), before the backend starts
jax.config.update("jax_numpy_rank_promotion", "raise")
# One fresh persistent compilation cache per test session: tests that build the same programs (same shapes, same
# data) compile them once. Fresh each session, so nothing carries over between runs.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jaxed-tests-xla-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JAXED_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_file(relpath: str) -> Path:
    """Path of a file under ../shared/data; skips the calling test cleanly when it is absent."""
    path = SHARED_DATA / relpath
    if not path.exists():
        pytest.skip(f"shared data file {relpath} not available (set JAXED_SHARED_DATA or clone beside ../shared)")
    return path


def directional_fd(loss, args, seed, h=1e-6, scales=None):
    """Gradient of ``loss`` along a random direction (one normal draw per argument, times ``scales``) and the central
    difference with step ``h`` along it: (analytic, finite difference, grads w.r.t. every argument)."""
    rng = np.random.default_rng(seed)
    scales = (1.0,) * len(args) if scales is None else scales
    dirs = [rng.normal(size=np.shape(a)) * s for a, s in zip(args, scales)]
    # compiled once each: op-by-op dispatch of a vmapped forward and its backward costs many small compilations
    value = jax.jit(loss)
    plus = float(value(*(a + h * d for a, d in zip(args, dirs))))
    minus = float(value(*(a - h * d for a, d in zip(args, dirs))))
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)
    return sum(float(np.sum(np.asarray(g) * d)) for g, d in zip(grads, dirs)), (plus - minus) / (2 * h), grads
