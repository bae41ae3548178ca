"""Test configuration: float64 everywhere, strict rank promotion, paths to data, the shipped demo problem.

The library itself never flips ``jax_enable_x64``; the tests do, before anything is traced.
"""
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import jax

import jaxed
import numpy as np
import pytest
from jaxed import AtomParams, Crystal, PetsData

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


class Demo(NamedTuple):
    """The synthetic quartz demo shipped in jaxed/data (``jaxed.app.demo.demo_files``), read once per session."""

    crystal: Crystal  # quartz P3₂21, the structure the data were synthesised from
    atoms: AtomParams  # its true positions and ADPs
    data: PetsData  # all 25 frames; take subsets with data.subset_frames (a new object, the arrays copied)
    thickness: np.ndarray  # (25,) true thickness of each frame [Å] (quartz_demo.cif_pets.truth.json)


@pytest.fixture(scope="session")
def demo_quartz() -> Demo:
    """The shipped demo problem, shared by every test module that needs it. Its arrays are made read-only: a test
    that writes into them fails instead of changing what later tests see."""
    from jaxed.app.demo import demo_files  # here, not at the top: jaxed.app pulls in matplotlib
    structure, data_path, truth_path = demo_files()
    crystal, atoms = jaxed.load_structure(structure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the UB cell is 1.16 % off _cell_* (as in the measured file it came from)
        data = jaxed.read_pets(data_path)
    for value in vars(data).values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    thickness = np.array(json.loads(truth_path.read_text())["thickness_A"], dtype=np.float64)
    thickness.flags.writeable = False
    return Demo(crystal, atoms, data, thickness)
