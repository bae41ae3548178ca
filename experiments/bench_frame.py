"""Per-frame forward and forward+gradient on measured geometries: jaxed (eigh + Daleckii–Krein) vs expm vs eigh limit.

One real frame of each dataset, prepared exactly as in a refinement (jaxed.model.experiment; beams = every |g| ≤ g_max with
|s_g| ≤ sg_max at some rocking sample, padded to a multiple of 8):

* quartz — quartz_suresh2024 + quartz_P3221.cif, g_max 2.25, sg_max 0.01, 42 samples (and the same frame capped at
  40 beams, the N ≈ 40 of diffBloch's table);
* CsPbBr₃ — cspbbr3_suresh2024 + cspbbr3_Pbnm.cif, g_max 2.3, sg_max 0.02, 60 samples.

Columns (ms per frame, all samples): jaxed fwd = jitted integrated intensities (structure factors included);
jaxed fwd+grad = value_and_grad of Σ w·I w.r.t. atoms and thickness; expm fwd+grad = the same with
BlochSettings(propagator='expm') (jax.scipy.linalg.expm, diffBloch's method); eigh limit = jnp.linalg.eigh of
n_samples random N×N Hermitian matrices (real symmetric for a crystal centric at the origin, whose model is real:
BlochSettings.real_if_centric; the ', complex path' case turns that off). Every measurement is the minimum over interleaved repeats in one process,
BLAS limited to 1 thread (jaxed.model.batching.blas_threads; the machine's 2 cores were shared with other jobs).

``--quick``: fewer samples (quartz 42 → 42, CsPbBr₃ 60 → 2, expm CsPbBr₃ skipped); the per-frame numbers for the
full sample count are then extrapolated linearly in the samples and marked '×'.

    python experiments/bench_frame.py --quick
Writes experiments/results/bench_frame.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
FLOAT32 = "--float32" in sys.argv[1:]
import jax  # noqa: E402

import jaxed  # noqa: E402

jax.config.update("jax_enable_x64", not FLOAT32)
jaxed.configure_cpu()  # CPU thread settings (docs/SPEED.md), before the backend starts
jax.config.update("jax_platforms", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
from jaxed.model.batching import blas_threads  # noqa: E402
from jaxed.physics.bloch import BlochSettings, centric_at_origin  # noqa: E402
from jaxed.physics.crystal import load_structure  # noqa: E402
from jaxed.model.experiment import ExperimentSettings, integrated_intensities, prepare_experiment  # noqa: E402
from jaxed.data.pets import read_pets  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CASES = {
    "quartz": dict(structure="structures/quartz_P3221.cif", data="pets/quartz_suresh2024.cif_pets", frame=10,
                   settings=ExperimentSettings(g_max=2.25, sg_max=0.01, g_max_refine=2.25, n_samples=42)),
    "quartz N≤40": dict(structure="structures/quartz_P3221.cif", data="pets/quartz_suresh2024.cif_pets", frame=10,
                        settings=ExperimentSettings(g_max=2.25, sg_max=0.01, g_max_refine=2.25, n_samples=42,
                                                    max_beams=40)),
    "quartz per-sample": dict(structure="structures/quartz_P3221.cif", data="pets/quartz_suresh2024.cif_pets",
                              frame=10, settings=ExperimentSettings(g_max=2.25, sg_max=0.01, g_max_refine=2.25,
                                                                    n_samples=42, beam_selection="sample")),
    "quartz per-sample N≤40": dict(structure="structures/quartz_P3221.cif", data="pets/quartz_suresh2024.cif_pets",
                                   frame=10, settings=ExperimentSettings(g_max=2.25, sg_max=0.01, g_max_refine=2.25,
                                                                         n_samples=42, beam_selection="sample",
                                                                         max_beams=40)),
    "quartz per-sample N≤40, 99 frames": dict(
        structure="structures/quartz_P3221.cif", data="pets/quartz_suresh2024.cif_pets", frame=None,
        settings=ExperimentSettings(g_max=2.25, sg_max=0.01, g_max_refine=2.25, n_samples=42,
                                    beam_selection="sample", max_beams=40)),
    "CsPbBr3": dict(structure="structures/cspbbr3_Pbnm.cif", data="pets/cspbbr3_suresh2024.cif_pets", frame=10,
                    settings=ExperimentSettings(g_max=2.3, sg_max=0.02, g_max_refine=2.0, n_samples=60)),
    "CsPbBr3 per-sample": dict(structure="structures/cspbbr3_Pbnm.cif", data="pets/cspbbr3_suresh2024.cif_pets",
                               frame=10, settings=ExperimentSettings(g_max=2.3, sg_max=0.02, g_max_refine=2.0,
                                                                     n_samples=60, beam_selection="sample")),
}
CASES["CsPbBr3 per-sample, complex path"] = dict(CASES["CsPbBr3 per-sample"], bloch=dict(real_if_centric=False))


def best(fn, repeats):
    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return min(ts)


def run_case(name, spec, samples, repeats, with_expm):
    crystal, atoms = load_structure(SHARED / spec["structure"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = read_pets(SHARED / spec["data"], drop_bad_sigma=True)
    if spec["frame"] is not None:
        data = data.subset_frames([spec["frame"]])
    settings = dataclasses.replace(spec["settings"], n_samples=samples)
    exp = prepare_experiment(data, crystal, settings)
    n = exp.matrix_size
    n_real = (round(float(np.asarray(exp.sample_beam_mask).sum(-1).mean())) if exp.sample_beams is not None
              else int(np.asarray(exp.beams.mask).sum()))  # mean over samples for per-sample beam sets
    bloch = BlochSettings(exp.energy_kev, **spec.get("bloch", {}))
    t = jnp.full((exp.n_frames, 1), 800.0)
    w = jnp.asarray(np.random.default_rng(0).uniform(size=np.shape(exp.refl_mask)))
    out = {"case": name, "N": n, "N_real": n_real, "samples": samples}

    def make(st):
        fwd = jax.jit(lambda a, t: integrated_intensities(a, crystal, exp, t, st))
        vg = jax.jit(jax.value_and_grad(lambda a, t: jnp.sum(w * integrated_intensities(a, crystal, exp, t, st)),
                                        argnums=(0, 1)))
        return fwd, vg

    fwd, vg = make(bloch)
    rng = np.random.default_rng(1)
    n_frames = exp.n_frames  # times are reported per frame: the all-frames case divides by the frame count
    x = rng.normal(size=(n_frames * samples, n, n)) + 1j * rng.normal(size=(n_frames * samples, n, n))
    herm = x + np.conj(np.swapaxes(x, 1, 2))
    if bloch.real_if_centric and centric_at_origin(crystal):  # the model's real symmetric eigh
        herm = herm.real
    herm = jnp.asarray(herm)
    eigh = jax.jit(jnp.linalg.eigh)
    fns = {"fwd": lambda: fwd(atoms, t), "fwd_grad": lambda: vg(atoms, t), "eigh": lambda: eigh(herm)}
    if with_expm:
        _, vg_e = make(dataclasses.replace(bloch, propagator="expm"))
        fns["expm_fwd_grad"] = lambda: vg_e(atoms, t)
        i_e = np.asarray(make(dataclasses.replace(bloch, propagator="expm"))[0](atoms, t))
        i_j = np.asarray(fwd(atoms, t))
        out["expm_vs_eigh_maxrel"] = float(np.max(np.abs(i_e - i_j)) / np.max(np.abs(i_j)))
    for f in fns.values():  # compile everything first
        jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved
        for k, f in fns.items():
            times[k].append(best(f, 1))
    out.update({k: min(v) / n_frames for k, v in times.items()})
    out["frames"] = n_frames
    print(name, {k: (f"{1e3 * v:.1f} ms" if isinstance(v, float) else v) for k, v in out.items()}, flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--merge", action="store_true", help="keep the table rows of cases not re-run")
    ap.add_argument("--no-expm", action="store_true", help="skip the matrix-exponential baseline")
    ap.add_argument("--float32", action="store_true", help="complex64 throughout (read before JAX starts)")
    args = ap.parse_args(argv)
    rows = []
    out_path = ROOT / "experiments" / "results" / "bench_frame.md"
    if args.merge and out_path.exists():  # keep the rows of cases not re-run
        old = [line for line in out_path.read_text().splitlines() if line.startswith("| ") and "---" not in line
               and not line.startswith("| case")]
        rerun = [c + (" (complex64)" if FLOAT32 else "") for c in args.cases]
        kept = [line for line in old if line.split("|")[1].strip() not in rerun]
        kept_checks = [c for line in out_path.read_text().splitlines() if "expm vs eigh" in line
                       for c in line.split("; ") if c.split(":")[0] not in rerun]
    else:
        kept, kept_checks = [], []
    with blas_threads(1):
        for name in args.cases:
            spec = CASES[name]
            full = spec["settings"].n_samples
            samples = 2 if (args.quick and name.startswith("CsPbBr3")) else full
            with_expm = not (args.no_expm or (args.quick and name.startswith("CsPbBr3")))
            r = run_case(name, spec, samples, 2 if args.quick else args.repeats, with_expm)
            if FLOAT32:
                r["case"] += " (complex64)"
            r["full_samples"] = full
            rows.append(r)
    scale = lambda r: r["full_samples"] / r["samples"]  # noqa: E731
    lines = ["# Per-frame benchmark (experiments/bench_frame.py)", "",
             f"CPU x86_64, {os.cpu_count()} cores, 1 BLAS thread, jax {jax.__version__}, float64 unless the case says "
             f"complex64; PJRT_NPROC {os.environ.get('PJRT_NPROC', 'unset')}; rows re-run on "
             f"{time.strftime('%Y-%m-%d')} at load average {os.getloadavg()[0]:.1f} (rows kept by --merge keep their "
             "earlier conditions; see the notes below the table). ms per frame with all its rocking samples; minimum over "
             "interleaved repeats in one process; a case over all 99 frames is one batched call divided by 99 (how a "
             "refinement evaluates them). '×': measured with fewer samples and scaled linearly to the full "
             "count (the work is linear in the samples). Ratios are within one process, so they are robust to the "
             "shared load; the absolute times are not.", "",
             "| case | N (real) | samples | jaxed fwd | jaxed fwd+grad | expm fwd+grad | eigh limit | fwd/eigh "
             "| (fwd+grad)/fwd | expm/jaxed (fwd+grad) |", "|" + "---|" * 10]
    lines += kept
    for r in rows:
        s = scale(r)
        mark = " ×" if s != 1 else ""
        expm = r.get("expm_fwd_grad")
        expm_ms = "—" if expm is None else f"{1e3 * s * expm:.0f}{mark}"
        expm_ratio = "—" if expm is None else f"{expm / r['fwd_grad']:.1f}"
        runs = f" ({r['samples']} run)" if s != 1 else ""
        lines.append(
            f"| {r['case']} | {r['N']} ({r['N_real']}) | {r['full_samples']}{runs} "
            f"| {1e3 * s * r['fwd']:.0f}{mark} | {1e3 * s * r['fwd_grad']:.0f}{mark} "
            f"| {expm_ms} | {1e3 * s * r['eigh']:.0f}{mark} "
            f"| {r['fwd'] / r['eigh']:.2f} | {r['fwd_grad'] / r['fwd']:.2f} | {expm_ratio} |")
    checks = kept_checks + [f"{r['case']}: expm vs eigh intensities max |ΔI|/I_max = {r['expm_vs_eigh_maxrel']:.1e}"
                            for r in rows if "expm_vs_eigh_maxrel" in r]
    text = "\n".join(lines) + "\n\n" + "; ".join(checks) + "\n"
    (ROOT / "experiments" / "results" / "bench_frame.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
