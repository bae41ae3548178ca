"""Pinned check of the refinement layer: loss and gradient of the 99-frame measured quartz problem.

The published structure (P3₂21), the PETS orientations, ThicknessNN at seed 0 and three-angle joint tilts, every
parameter moved off its start by a seeded draw (``perturbed``),
21 rocking samples, the Table 2 quartz selection (g_max 2.0, g_max_refine 1.6 Å⁻¹, |s_g| ≤ 0.01 Å⁻¹, R_Sg ≤ 0.9),
float64. ``--write`` records the loss and every gradient leaf in quartz_loss_grad.json; without it the values are
recomputed and compared with the record (relative 1e-10 of each leaf's norm), printing the largest deviation.

    python experiments/pinned/quartz_loss_grad.py [--write]
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

HERE = Path(__file__).resolve().parent
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
RECORD = HERE / "quartz_loss_grad.json"


def perturbed(params, seed=1):
    """The starting parameters moved off their special values (a zero head kernel, zero tilts) by seeded normal
    draws: 0.05 on the thickness network's weights, 1e-3 rad on the tilts, 1e-3 on the structure's parameters, so
    that every gradient entry is exercised."""
    rng = np.random.default_rng(seed)
    scale = {"thickness": 0.05, "orientation": 1e-3, "structure": 1e-3}
    return {g: jax.tree_util.tree_map(lambda x, s=scale[g]: x + s * rng.normal(size=np.shape(x)), sub)
            for g, sub in params.items()}


def compute():
    from jaxed.model.experiment import ExperimentSettings
    from jaxed.refine.optimize import RefineConfig
    from jaxed.refine.problem import make_loss, make_model, make_observations
    from jaxed.app.workflow import load_problem

    settings = ExperimentSettings(g_max=2.0, sg_max=0.01, g_max_refine=1.6, r_sg_max=0.9, n_samples=21)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crystal, atoms, _, exp, bloch = load_problem(SHARED / "structures/quartz_P3221.cif",
                                                     SHARED / "pets/quartz_suresh2024.cif_pets",
                                                     exp_settings=settings, log=lambda s: None)
    config = RefineConfig(thickness_model="nn", thickness_init=800.0, refine_orientation=True, orientation_angles=3,
                          seed=0)
    model = make_model(crystal, atoms, exp, bloch, config)
    obs, _ = make_observations(exp, crystal, config)
    loss = make_loss(model, obs, config)
    params = perturbed(model.init(jax.random.PRNGKey(config.seed)))
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    return float(value), {jax.tree_util.keystr(k): np.asarray(v).ravel().tolist() for k, v in leaves}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="record the values (before a behaviour-preserving change)")
    args = ap.parse_args()
    loss, grads = compute()
    if args.write:
        RECORD.write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "loss": loss, "grad": grads}))
        print(f"loss {loss:.15g}; {sum(len(v) for v in grads.values())} gradient entries written to {RECORD}")
        return
    ref = json.loads(RECORD.read_text())
    dev = abs(loss - ref["loss"]) / abs(ref["loss"])
    print(f"loss {loss:.15g} (recorded {ref['loss']:.15g}, relative {dev:.2e})")
    worst = dev
    # leaves match by order: a redesign may rename the parameter tree's paths, not change its layout
    got = list(grads.values())
    want = list(ref["grad"].values())
    if [len(v) for v in got] != [len(v) for v in want]:
        raise SystemExit(f"gradient layout changed: {[len(v) for v in got]} vs {[len(v) for v in want]}")
    for name, g, w in zip(ref["grad"], got, want):
        g, w = np.asarray(g), np.asarray(w)
        d = float(np.max(np.abs(g - w), initial=0.0) / max(np.linalg.norm(w), 1e-300))
        worst = max(worst, d)
        print(f"  {name:40s} n={w.size:4d} |g|={np.linalg.norm(w):.6e}  max|Δ|/|g| {d:.2e}")
    print(f"largest relative deviation {worst:.2e} ({'PASS' if worst <= 1e-10 else 'FAIL'} at 1e-10)")
    raise SystemExit(0 if worst <= 1e-10 else 1)


if __name__ == "__main__":
    main()
