"""Benchmark of the Bloch-wave forward model (CPU, float64): jaxed vs abTEM, numpy, expm and the bare eigh limit.

For N ≈ 40, 150 and 400 beams (GaAs, general orientations, 200 kV; each frame gets exactly N beams: the N − 1
smallest |s_g| with |g| ≤ 2 Å⁻¹), a batch of orientations is simulated at 4 thicknesses and timed per orientation:

* jaxed fwd / grad — ``simulate`` (eigh propagator, structure factors included) under ``jit``, and ``grad`` of
  Σ w·I with respect to the atom positions, ADPs (and occupancies) and the thickness;
* expm fwd / grad — the same model with ``BlochSettings(propagator='expm')`` (diffBloch's matrix exponential; one
  expm per thickness);
* eigh limit — ``jnp.linalg.eigh`` of a batch of N×N complex Hermitian matrices under ``jit`` (the floor for any
  eigh-based forward model);
* numpy — a plain loop over orientations: ``numpy.linalg.eigh`` of jaxed's own symmetrised matrices and the same
  propagation (matrices precomputed, so this is eigh + propagation only);
* abTEM — abTEM 1.0.11's own calculation on the same beams: ``StructureFactor.build`` once per batch (U_{g−h} up to
  2 max|g|), then per orientation ``calculate_structure_matrix`` + ``calculate_dynamical_scattering`` (eigh).

Everything is compiled/warmed up first, ``block_until_ready`` is used, and the median over repeats is reported.

    python experiments/bench_forward.py                 # default sizes 40 150 400
    python experiments/bench_forward.py --quick --sizes 40 150
Writes experiments/results/bench_forward.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def _threads_from_argv(argv) -> int:
    """--threads must act before numpy/jax load their BLAS and thread pools."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 1


THREADS = _threads_from_argv(sys.argv[1:])
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))
if THREADS == 1:  # one thread everywhere: with XLA's pool and OpenBLAS's both on 2 cores, timings oversubscribe
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

import jax

import jaxed

jax.config.update("jax_enable_x64", True)
jaxed.configure_cpu()  # CPU thread settings (docs/SPEED.md), before the backend starts
jax.config.update("jax_platforms", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

from jaxed.physics.bloch import BlochSettings, frame_wavefunction, potential_table, simulate, structure_matrix  # noqa: E402
from jaxed.physics.crystal import load_structure  # noqa: E402
from jaxed.physics.geometry import excitation_errors, make_beam_set, select_beams, zone_axis_rotation  # noqa: E402

ENERGY_KV = 200.0
THICKNESS = np.array([100.0, 250.0, 400.0, 600.0])
G_MAX = 2.0  # [Å⁻¹] candidate pool; the N − 1 beams with the smallest |s_g| are kept
BATCH = {40: 32, 150: 16, 400: 4}


BUDGET_S = 8.0  # stop repeating a measurement once it has used this much time (at least one run)


def timeit(fn, repeats: int) -> float:
    """Median wall time [s] of ``fn()`` (which must block until its result is ready), after a warm-up call."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > BUDGET_S:
            break
    return statistics.median(times)


def orientations(direct: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    uvw = rng.normal(size=(n, 3)) + np.array([1.0, 0.13, 2.4])
    return np.stack([zone_axis_rotation(u, direct) for u in uvw])


def setup(n_beams: int, batch: int):
    crystal, atoms = load_structure(ROOT / "jaxed" / "data" / "simple_crystals.cif", block="GaAs", scattering="lobato")
    settings = BlochSettings(ENERGY_KV, mean_potential=False)
    rots = orientations(np.asarray(crystal.direct), batch)
    hkls = [select_beams(np.asarray(crystal.reciprocal), r, settings.k, G_MAX, 1.0, max_beams=n_beams) for r in rots]
    assert all(len(h) == n_beams for h in hkls)
    beams = make_beam_set(hkls, n_beams=n_beams)
    return crystal, atoms, settings, rots, hkls, beams


def bench_size(n_beams: int, repeats: int) -> dict:
    batch = BATCH.get(n_beams, 16)
    crystal, atoms, settings, rots, hkls, beams = setup(n_beams, batch)
    rots_j = jnp.asarray(rots)
    t = jnp.asarray(THICKNESS)
    weights = jnp.asarray(np.random.default_rng(1).uniform(size=(batch, len(THICKNESS), n_beams)))
    res = {"N": n_beams, "batch": batch}

    def make(st):
        @jax.jit
        def fwd(atoms, crystal, beams, rots, t):
            return simulate(atoms, crystal, beams, rots, t, st)

        def loss(atoms, t, crystal, beams, rots):
            return jnp.sum(weights * simulate(atoms, crystal, beams, rots, t, st))

        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        return fwd, grad

    for name, st in (("jaxed", settings), ("expm", dataclasses.replace(settings, propagator="expm"))):
        fwd, grad = make(st)
        jax.block_until_ready(fwd(atoms, crystal, beams, rots_j, t))  # compile
        jax.block_until_ready(grad(atoms, t, crystal, beams, rots_j))
        res[f"{name}_fwd"] = timeit(lambda: jax.block_until_ready(fwd(atoms, crystal, beams, rots_j, t)), repeats) / batch
        res[f"{name}_grad"] = timeit(lambda: jax.block_until_ready(grad(atoms, t, crystal, beams, rots_j)), repeats) / batch
        print(f"  N={n_beams} {name}: fwd {1e3 * res[f'{name}_fwd']:.3g} ms, grad {1e3 * res[f'{name}_grad']:.3g} ms",
              file=sys.stderr, flush=True)

    # Bare eigh of a batch of complex Hermitian matrices (the limit).
    rng = np.random.default_rng(2)
    x = rng.normal(size=(batch, n_beams, n_beams)) + 1j * rng.normal(size=(batch, n_beams, n_beams))
    herm = jnp.asarray(x + np.conj(np.swapaxes(x, 1, 2)))
    eigh = jax.jit(jnp.linalg.eigh)
    jax.block_until_ready(eigh(herm))
    res["eigh"] = timeit(lambda: jax.block_until_ready(eigh(herm)), repeats) / batch

    # jaxed without the structure factors: the per-orientation part alone (U table precomputed).
    u_ext = potential_table(atoms, crystal, beams, settings)
    recip = jnp.asarray(crystal.reciprocal)
    frames = jax.jit(jax.vmap(lambda u, hkl, m, cpl, r: frame_wavefunction(u, hkl, m, cpl, r, t, recip, settings),
                              in_axes=(None, 0, 0, 0, 0)))
    frames_args = (u_ext, beams.hkl, beams.mask, beams.coupling, rots_j)
    jax.block_until_ready(frames(*frames_args))
    res["jaxed_frames"] = timeit(lambda: jax.block_until_ready(frames(*frames_args)), repeats) / batch

    # jaxed's own symmetrised matrices, then a plain numpy loop: eigh + propagation per orientation.

    @jax.jit
    def matrices(u_ext, hkl, mask, coupling, rot):
        g_lab = hkl.astype(jnp.float64) @ (rot @ recip).T
        sg = excitation_errors(g_lab, settings.k)
        b, _, m = structure_matrix(u_ext, coupling, mask, sg, -g_lab[:, 2], settings.k, settings.k, settings)
        return b, m

    bm = jax.vmap(matrices, in_axes=(None, 0, 0, 0, 0))(u_ext, beams.hkl, beams.mask, beams.coupling, rots_j)
    b_np, m_np = (np.asarray(v) for v in bm)
    tau = np.pi * THICKNESS / settings.k

    def numpy_loop():
        out = np.empty((batch, len(THICKNESS), n_beams))
        for f in range(batch):
            lam, c = np.linalg.eigh(b_np[f])
            psi = (np.exp(1j * tau[:, None] * lam[None, :]) * np.conj(c[0])[None, :]) @ c.T
            out[f] = np.abs(psi * m_np[f][None]) ** 2
        return out

    i_ref = np.asarray(simulate(atoms, crystal, beams, rots_j, t, settings))
    assert np.abs(numpy_loop() - i_ref).max() < 1e-10
    res["numpy"] = timeit(numpy_loop, repeats) / batch

    # abTEM on the same beams.
    try:
        from abtem.bloch.dynamical import StructureFactor, calculate_dynamical_scattering, calculate_structure_matrix
        from ase.spacegroup import crystal as ase_crystal
    except ImportError:
        res["abtem"] = float("nan")
        return res
    base = ase_crystal(["Ga", "As"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=216, cellpar=list(crystal.cell))
    sigma = {"Ga": np.sqrt(0.5854 / (8 * np.pi**2)), "As": np.sqrt(0.3528 / (8 * np.pi**2))}
    q = np.diag([1.0, -1.0, -1.0])  # jaxed lab (beam −z) → abTEM lab (beam +z), a proper rotation
    g_sel = max(np.linalg.norm(h @ np.asarray(crystal.reciprocal).T, axis=1).max() for h in hkls)
    cells = []
    for r in rots:
        a = base.copy()
        a.set_cell(np.asarray(base.cell) @ (q @ r).T, scale_atoms=True)
        cells.append(a)

    def abtem_all():
        a0 = cells[0]
        sf = StructureFactor(a0, g_max=2 * g_sel + 0.05, parametrization="lobato",
                             thermal_sigma=[sigma[s] for s in a0.get_chemical_symbols()], cutoff="hard", centering="P")
        values = np.asarray(sf.build(lazy=False).array)
        out = np.empty((batch, len(THICKNESS), n_beams))
        for f in range(batch):
            mat = calculate_structure_matrix(values, sf.hkl, hkls[f], cells[f].cell, ENERGY_KV * 1e3, sf.gpts)
            out[f] = np.abs(calculate_dynamical_scattering(mat, hkls[f], cells[f].cell, ENERGY_KV * 1e3, THICKNESS)) ** 2
        return out

    i_ab = abtem_all()
    res["abtem_check"] = float(np.abs(i_ab - i_ref).max() / i_ref[:, :, 1:].max())
    res["abtem"] = timeit(abtem_all, max(1, repeats // 2)) / batch
    return res


def table(results: list[dict]) -> str:
    head = ("| N | batch | eigh limit | jaxed fwd | jaxed fwd w/o SF | jaxed grad | expm fwd | expm grad | numpy | abTEM "
            "| jaxed/eigh | jaxed w/o SF/eigh | expm/jaxed fwd | expm-grad/jaxed-grad | numpy/jaxed | abTEM/jaxed "
            "| grad/fwd |")
    lines = [head, "|" + "---|" * 18]
    for r in results:
        ms = {k: 1e3 * r[k] for k in ("eigh", "jaxed_fwd", "jaxed_frames", "jaxed_grad", "expm_fwd", "expm_grad",
                                      "numpy", "abtem")}
        lines.append(
            f"| {r['N']} | {r['batch']} | {ms['eigh']:.3g} | {ms['jaxed_fwd']:.3g} | {ms['jaxed_frames']:.3g} "
            f"| {ms['jaxed_grad']:.3g} "
            f"| {ms['expm_fwd']:.3g} | {ms['expm_grad']:.3g} | {ms['numpy']:.3g} | {ms['abtem']:.3g} "
            f"| {r['jaxed_fwd'] / r['eigh']:.2f} | {r['jaxed_frames'] / r['eigh']:.2f} "
            f"| {r['expm_fwd'] / r['jaxed_fwd']:.2f} "
            f"| {r['expm_grad'] / r['jaxed_grad']:.2f} | {r['numpy'] / r['jaxed_fwd']:.2f} "
            f"| {r['abtem'] / r['jaxed_fwd']:.2f} | {r['jaxed_grad'] / r['jaxed_fwd']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 150, 400], help="numbers of beams N")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/XLA threads (default 1: stable timings)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "bench_forward.md")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    results = []
    for n in args.sizes:
        t0 = time.perf_counter()
        r = bench_size(n, repeats)
        results.append(r)
        print(f"N = {n}: done in {time.perf_counter() - t0:.1f} s (abTEM vs jaxed max |ΔI| / I_max = "
              f"{r.get('abtem_check', float('nan')):.1e})", flush=True)
    text = table(results)
    print("\nms per orientation (median of", repeats, "repeats; abTEM: of", max(1, repeats // 2), ")\n")
    print(text)
    import abtem  # noqa: F401 (version only)
    info = (f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__}, "
            f"numpy {np.__version__}, abTEM {getattr(sys.modules.get('abtem'), '__version__', '?')}; float64; "
            f"GaAs, 200 kV, {len(THICKNESS)} thicknesses, general orientations; {THREADS} thread(s); "
            f"median of ≤ {repeats} repeats (≤ {BUDGET_S:.0f} s per measurement).")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Forward-model benchmark (experiments/bench_forward.py)\n\n" + info + "\n\n"
        "Times in ms per orientation (batch vmapped / looped, divided by the batch size). "
        "jaxed fwd includes the structure factors (w/o SF: the per-orientation part with the U table precomputed); grad = value_and_grad of Σ w·I w.r.t. atoms and thickness. "
        "numpy = eigh + propagation of jaxed's matrices in a Python loop; abTEM = its structure factors (once per "
        "batch) + structure matrix + eigh scattering per orientation; eigh limit = jnp.linalg.eigh of a batch of "
        "N×N complex Hermitian matrices.\n\n" + text + "\n")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
