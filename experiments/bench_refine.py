"""Refinement step time on measured quartz: ThicknessNN vs single thickness, BLAS threads, devices, quadrature.

The real-data job of the speed issue: quartz_suresh2024.cif_pets with quartz_P3221.cif, g_max 2.25 / sg_max 0.01,
R_Sg 0.9, 42 rocking samples, 99 frames, Adam. One process measures, interleaved and repeated (minimum taken):

* the jitted optimiser step (value_and_grad + Adam) for ThicknessNN and for a single thickness (same data);
* each with the BLAS/LAPACK pool limited to 1 thread (jaxed.model.batching.blas_threads, the refinement default) and with
  OpenBLAS's default pool (the behaviour before the fix);

and extrapolates 200 epochs from the step time (compile time reported separately). ``--devices K`` shards the
frames over K host devices (jaxed.model.distributed; the flag is applied before JAX is imported).

    python experiments/bench_refine.py --quick                  # 33 frames, 2 repeats
    python experiments/bench_refine.py --devices 2 --samples 42
Results are appended to experiments/results/bench_refine.jsonl and the table is rewritten in bench_refine.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _early_devices(argv) -> int:
    for i, a in enumerate(argv):
        if a == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
    return 1


DEVICES = _early_devices(sys.argv[1:])
FLOAT32 = "--float32" in sys.argv[1:]
if DEVICES > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={DEVICES}").strip()
    os.environ.setdefault("PJRT_NPROC", str(max(2 * DEVICES, os.cpu_count() or 1)))  # see jaxed.model.distributed

import jax  # noqa: E402

import jaxed  # noqa: E402

jax.config.update("jax_enable_x64", not FLOAT32)
jaxed.configure_cpu()  # CPU thread settings (docs/SPEED.md), before the backend starts
jax.config.update("jax_platforms", "cpu")

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from jaxed.physics.bloch import BlochSettings  # noqa: E402
from jaxed.physics.crystal import load_structure  # noqa: E402
from jaxed.model.distributed import frame_mesh, replicate, shard_experiment  # noqa: E402
from jaxed.model.experiment import ExperimentSettings, prepare_experiment  # noqa: E402
from jaxed.data.pets import read_pets  # noqa: E402
from jaxed.refine.optimize import RefineConfig, Refinement  # noqa: E402
from jaxed.app.workflow import parse_frames  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "experiments" / "results"


def build(args):
    crystal, atoms = load_structure(SHARED / "structures" / "quartz_P3221.cif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = read_pets(SHARED / "pets" / "quartz_suresh2024.cif_pets")
    chosen = parse_frames(args.frames, len(data.alpha))
    if chosen is not None:
        data = data.subset_frames(chosen)
    settings = ExperimentSettings(g_max=2.25, sg_max=0.01, g_max_refine=2.25, r_sg_max=0.9, n_samples=args.samples,
                                  quadrature=args.quadrature, beam_selection=args.beams, max_beams=args.max_beams)
    exp = prepare_experiment(data, crystal, settings)
    return crystal, atoms, exp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", default="all", help="frame selection (jaxed refine --frames syntax)")
    ap.add_argument("--samples", type=int, default=42)
    ap.add_argument("--quadrature", choices=("midpoint", "gauss"), default="midpoint")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--beams", choices=("frame", "sample"), default="frame", help="Bloch matrix per frame or per sample")
    ap.add_argument("--max-beams", type=int, default=None, help="cap on the beams of a matrix")
    ap.add_argument("--float32", action="store_true", help="complex64 (read before JAX starts)")
    ap.add_argument("--models", nargs="+", default=["nn", "single"], choices=("nn", "single"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-default-blas", action="store_true", help="skip the (slow) default-BLAS-pool measurement")
    ap.add_argument("--quick", action="store_true", help="every 3rd frame (33), 2 repeats")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.repeats = ("every:3" if args.frames == "all" else args.frames), 2
    crystal, atoms, exp = build(args)
    bloch = BlochSettings(exp.energy_kev)
    mesh = frame_mesh() if args.devices > 1 else None
    if mesh is not None:
        exp = shard_experiment(exp, mesh)
    n_real = int(np.asarray(exp.beams.mask).sum(1).mean())
    print(f"{exp.n_frames} frames, N = {exp.matrix_size} (mean real {n_real}), {args.samples} samples, "
          f"{len(jax.devices())} device(s)", flush=True)
    steps, r_start = {}, {}
    for model in args.models:
        config = RefineConfig(thickness_model=model, thickness_init=820.0, epochs=200, lr=1e-3, checkpoint_every=0,
                              thickness_range=(50.0, 3000.0))
        problem = Refinement(crystal, atoms, exp, bloch, config)
        params = problem.params0 if mesh is None else replicate(problem.params0, mesh)
        state = problem.init_state(params)
        step = problem.make_step()
        key = jax.random.PRNGKey(0)
        t0 = time.perf_counter()
        with threadpool_limits(1, user_api="blas"):
            jax.block_until_ready(step(state))
        compile_s = time.perf_counter() - t0
        steps[model] = (step, params, state, key, compile_s)
        summ = problem.summary(params)  # R factors at the start (structure of the CIF, 820 Å, PETS orientations)
        r_start[model] = (float(summ["R_obs"]), float(summ["wR_all"]))
        print(f"  {model}: compile + first step {compile_s:.1f} s; R_obs {100 * r_start[model][0]:.3f} %, "
              f"wR_all {100 * r_start[model][1]:.3f} %", flush=True)
    blas_modes = ("1",) if args.no_default_blas else ("1", "default")
    times = {(m, b): [] for m in steps for b in blas_modes}
    for _ in range(args.repeats):
        for (model, blas) in times:
            step, params, state, key, _ = steps[model]
            limit = 1 if blas == "1" else None
            with threadpool_limits(limit, user_api="blas"):
                t0 = time.perf_counter()
                jax.block_until_ready(step(state))
                times[(model, blas)].append(time.perf_counter() - t0)
            print(f"  {model} blas={blas}: {times[(model, blas)][-1]:.2f} s", flush=True)
    load = os.getloadavg()[0]
    rows = []
    for (model, blas), ts in times.items():
        rows.append({"frames": exp.n_frames, "n_beams": exp.matrix_size, "samples": args.samples,
                     "quadrature": args.quadrature, "devices": args.devices, "model": model, "blas_threads": blas,
                     "step_min_s": min(ts), "step_median_s": float(np.median(ts)), "compile_s": steps[model][4],
                     "epochs200_s": 200 * min(ts), "load_avg": load, "beams": args.beams,
                     "max_beams": args.max_beams, "precision": "float32" if FLOAT32 else "float64",
                     "R_obs_start": r_start[model][0], "wR_all_start": r_start[model][1],
                     "pjrt_nproc": os.environ.get("PJRT_NPROC", "unset")})
    base = {r["model"]: r["step_min_s"] for r in rows if r["blas_threads"] == "1"}
    for r in rows:
        r["ratio_to_single_blas1"] = r["step_min_s"] / base.get("single", np.nan)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "bench_refine.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    write_table()
    for r in rows:
        print(json.dumps(r))
    return 0


def write_table() -> None:
    rows = [json.loads(line) for line in (RESULTS / "bench_refine.jsonl").read_text().splitlines() if line.strip()]
    lines = ["# Refinement step benchmark (experiments/bench_refine.py)", "",
             f"CPU: {platform.machine()}, {os.cpu_count()} cores; the rows up to the first with load ≈ 1.5 were measured "
             "while other jobs shared the CPU (load average in the table), later ones on an otherwise idle machine; "
             "PJRT_NPROC = the CPU client's thread count ('—': not recorded, the default of one per core, or 2× devices "
             "with --devices; jaxed sets 2× cores since 2026-12-01); jax " + jax.__version__ + ". Measured quartz "
             "(quartz_suresh2024 + quartz_P3221.cif, g_max 2.25, sg_max 0.01, R_Sg 0.9). One jitted Adam step = "
             "forward + gradient of wR_all over all frames × samples. Minimum over interleaved repeats; "
             "'ratio' = step time / single-thickness step with 1 BLAS thread, same process. "
             "200-epoch time = 200 × step (compile excluded, reported separately).", "",
             "| frames | beams | N | samples | quadrature | precision | devices | model | BLAS threads | step min [s] "
             "| step median [s] | ratio | compile [s] | 200 epochs [s] | R_obs start [%] | load avg | PJRT_NPROC |",
             "|" + "---|" * 17]
    for r in rows:
        beams = r.get("beams", "frame") + (f" ≤{r['max_beams']}" if r.get("max_beams") else "")
        r_obs = f"{100 * r['R_obs_start']:.3f}" if "R_obs_start" in r else "—"
        lines.append(f"| {r['frames']} | {beams} | {r['n_beams']} | {r['samples']} | {r['quadrature']} "
                     f"| {r.get('precision', 'float64')} | {r['devices']} "
                     f"| {r['model']} | {r['blas_threads']} | {r['step_min_s']:.2f} | {r['step_median_s']:.2f} "
                     f"| {r['ratio_to_single_blas1']:.2f} | {r['compile_s']:.0f} | {r['epochs200_s']:.0f} "
                     f"| {r_obs} | {r['load_avg']:.1f} | {r.get('pjrt_nproc', '—')} |")
    (RESULTS / "bench_refine.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
