"""Frames sharded over 4 CPU devices (jaxed.model.distributed): the loss and gradient equal the single-device ones.

The device count must be fixed before JAX is imported, so the check runs in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4; it prints one JSON line that the test inspects.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, warnings
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np
    from jaxed.physics.bloch import BlochSettings
    from jaxed.physics.crystal import load_structure
    from jaxed.app.demo import demo_files
    from jaxed.model.distributed import frame_mesh, replicate, shard_experiment
    from jaxed.model.experiment import ExperimentSettings, prepare_experiment
    from jaxed.data.pets import read_pets
    from jaxed.refine.optimize import RefineConfig, Refinement

    structure, data_path, _ = demo_files()
    crystal, atoms = load_structure(structure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = read_pets(data_path).subset_frames([0, 3, 6, 9, 12, 15, 18])  # 7 frames: padded to 8 on 4 devices
    exp = prepare_experiment(data, crystal, ExperimentSettings(g_max=1.2, sg_max=0.01, g_max_refine=1.2, n_samples=4,
                                                               beam_selection="sample"))  # per-sample beams padded too
    config = RefineConfig(thickness_model="nn", thickness_init=650.0, refine_orientation=False)
    bloch = BlochSettings(exp.energy_kev)
    single = Refinement(crystal, atoms, exp, bloch, config)
    mesh = frame_mesh()
    sharded = Refinement(crystal, atoms, shard_experiment(exp, mesh), bloch, config)
    p1 = single.params0
    p4 = replicate(sharded.params0, mesh)
    vg1 = jax.jit(jax.value_and_grad(single.loss))
    vg4 = jax.jit(jax.value_and_grad(sharded.loss))
    l1, g1 = vg1(p1)
    l4, g4 = vg4(p4)
    l4b, g4b = vg4(p4)
    i4 = jax.jit(sharded.intensities)(p4)
    flat1 = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g1)])
    flat4 = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g4)])
    flat4b = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g4b)])
    print(json.dumps({
        "devices": len(jax.devices()), "n_frames": exp.n_frames, "padded": sharded.experiment.n_frames,
        "i_devices": len(i4.sharding.device_set), "loss_1": float(l1), "loss_4": float(l4),
        "grad_rel": float(np.max(np.abs(flat4 - flat1)) / np.max(np.abs(flat1))),
        "grad_norm": float(np.linalg.norm(flat1)),
        "bitwise_repeat": bool(float(l4) == float(l4b) and np.array_equal(flat4, flat4b)),
        "grad_replicated": all(x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(g4))}))
""")


def test_sharded_loss_and_gradient_equal_single_device():
    # float64; 7 frames sharded over 4 forced host devices (padded to 8 with reflection-free frames):
    # loss equal to rtol 1e-12, gradient (all parameters: positions, ADPs, ThicknessNN) to 1e-10 of its largest
    # component; the result is spread over 4 devices, the gradient comes back replicated, and a repeat is bitwise
    # identical (deterministic on CPU).
    # PJRT_NPROC: enough CPU-client threads for the 4 device programs to meet in their all-reduce (with the
    # default, one per core, 4 devices on 2 busy cores sometimes deadlocked)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu", PJRT_NPROC="8",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["n_frames"] == 7 and out["padded"] == 8
    assert out["i_devices"] == 4
    assert out["grad_norm"] > 0
    assert out["loss_4"] == pytest.approx(out["loss_1"], rel=1e-12)
    assert out["grad_rel"] < 1e-10
    assert out["grad_replicated"] and out["bitwise_repeat"]
