"""Fewer rocking samples (Gauss–Legendre vs midpoint) and complex64: change of R_obs / wR_all and the time saved.

Measured quartz (quartz_suresh2024 + quartz_P3221.cif, g_max 2.25, sg_max 0.01, R_Sg 0.9, t = 820 Å, orientations as
in the file), structure fixed: R factors of each variant against the reference (midpoint rule, 42 samples, float64),
in percentage points, and the forward time relative to the reference (same process, minimum of repeats, 1 BLAS
thread; the 2-core machine was shared). complex64 = the whole model in float32/complex64 (atoms and data cast).

    python experiments/bench_quadrature.py --quick        # every 8th frame
Writes experiments/results/bench_quadrature.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import jax  # noqa: E402

import jaxed  # noqa: E402

jax.config.update("jax_enable_x64", True)
jaxed.configure_cpu()  # CPU thread settings (docs/SPEED.md), before the backend starts
jax.config.update("jax_platforms", "cpu")
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
from jaxed.refine import objective  # noqa: E402
from jaxed.physics.bloch import BlochSettings  # noqa: E402
from jaxed.physics.crystal import load_structure  # noqa: E402
from jaxed.model.experiment import ExperimentSettings, integrated_intensities, prepare_experiment  # noqa: E402
from jaxed.data.pets import read_pets  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
VARIANTS = [("midpoint", 42, "f64"), ("midpoint", 21, "f64"), ("midpoint", 12, "f64"), ("gauss", 21, "f64"),
            ("gauss", 12, "f64"), ("gauss", 8, "f64"), ("midpoint", 42, "c64"), ("gauss", 12, "c64")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every 8th frame")
    ap.add_argument("--step", type=int, default=1)
    args = ap.parse_args(argv)
    step = 8 if args.quick else args.step
    crystal, atoms = load_structure(SHARED / "structures" / "quartz_P3221.cif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = read_pets(SHARED / "pets" / "quartz_suresh2024.cif_pets")
    data = data.subset_frames(np.arange(0, len(data.alpha), step))
    rows = []
    ref = None
    for quad, ns, prec in VARIANTS:
        exp = prepare_experiment(data, crystal, ExperimentSettings(g_max=2.25, sg_max=0.01, g_max_refine=2.25,
                                                                   r_sg_max=0.9, n_samples=ns, quadrature=quad))
        bloch = BlochSettings(exp.energy_kev)
        a = atoms if prec == "f64" else jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, jnp.float32) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, atoms)
        t = jnp.full(exp.n_frames, 820.0, dtype=jnp.float64 if prec == "f64" else jnp.float32)
        fwd = jax.jit(lambda a, t: integrated_intensities(a, crystal, exp, t, bloch))
        jax.block_until_ready(fwd(a, t))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            i_calc = jax.block_until_ready(fwd(a, t))
            times.append(time.perf_counter() - t0)
        obs = objective.prepare_observations(jnp.asarray(exp.i_obs), jnp.asarray(exp.sigma), jnp.asarray(exp.refl_mask))
        s = objective.summary(jnp.asarray(i_calc, jnp.float64), obs)
        row = {"quadrature": quad, "samples": ns, "precision": prec, "R_obs": 100 * s["R_obs"],
               "wR_all": 100 * s["wR_all"], "seconds": min(times), "frames": exp.n_frames, "N": exp.matrix_size}
        if ref is None:
            ref = row
        row["dR_obs"] = row["R_obs"] - ref["R_obs"]
        row["dwR_all"] = row["wR_all"] - ref["wR_all"]
        row["time_ratio"] = row["seconds"] / ref["seconds"]
        print(row, flush=True)
        rows.append(row)
    lines = ["# Rocking quadrature and precision (experiments/bench_quadrature.py)", "",
             f"Measured quartz, {rows[0]['frames']} frames (every {step}th), N = {rows[0]['N']}, t = 820 Å, structure "
             "and orientations as given; R factors in %, Δ against midpoint/42/float64 in percentage points. Time = "
             "jitted forward of all frames, relative to the reference in the same process (2-core CPU shared with "
             "other jobs, 1 BLAS thread).", "",
             "| quadrature | samples | precision | R_obs | wR_all | ΔR_obs | ΔwR_all | time ratio |", "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['quadrature']} | {r['samples']} | {r['precision']} | {r['R_obs']:.3f} | {r['wR_all']:.3f} "
                     f"| {r['dR_obs']:+.3f} | {r['dwR_all']:+.3f} | {r['time_ratio']:.2f} |")
    text = "\n".join(lines) + "\n"
    (ROOT / "experiments" / "results" / "bench_quadrature.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
