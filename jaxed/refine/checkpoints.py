"""Checkpoints of every optimiser (Adam, L-BFGS, Gauss–Newton / LM, hybrid): plain ``.npz`` + ``.json``, no pickle.

A checkpoint folder holds ``checkpoint.npz`` — the parameters (``p_*``), the optimiser state (``s_*``), optionally the
lowest-loss parameters met (``b_*``) and a ``meta`` JSON string (epoch, history, best) — written by one atomic rename,
and ``checkpoint.json`` (epoch, history) beside it for a reader. Arrays are stored by leaf order of the pytree, so a
template of the same structure (the starting parameters, a fresh optimiser state) is needed to read them back.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxed.errors import JaxedInputError

__all__ = ["RefinementDiverged", "strong", "save_checkpoint", "load_checkpoint", "load_best", "save_params",
           "load_params", "has_checkpoint"]


class RefinementDiverged(RuntimeError):
    """A non-finite loss or gradient: the run stopped; the last good checkpoint is kept."""


def strong(tree):
    """Leaves as JAX arrays with explicit (not weak) dtypes, so that a jitted step sees the same types every call."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


def has_checkpoint(folder: str | Path | None) -> bool:
    """Whether ``folder`` holds a checkpoint to resume from."""
    return folder is not None and (Path(folder) / "checkpoint.npz").exists()


def _flatten(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves(tree)
    return {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}


def _unflatten(template, flat: dict) -> object:
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(flat) != len(leaves):
        raise JaxedInputError(f"checkpoint has {len(flat)} arrays, the model needs {len(leaves)}: different settings?")
    new = []
    for i, ref in enumerate(leaves):
        arr = flat[f"leaf_{i:05d}"]
        if np.shape(arr) != np.shape(ref):
            raise JaxedInputError(f"checkpoint array {i} has shape {np.shape(arr)}, expected {np.shape(ref)}")
        new.append(jnp.asarray(arr, dtype=jnp.asarray(ref).dtype))
    return jax.tree_util.tree_unflatten(treedef, new)


def _save_npz(path: Path, **arrays) -> None:
    """``np.savez`` to a temporary name, then one atomic rename: a kill mid-write leaves the old file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _prefix(prefix: str, tree) -> dict[str, np.ndarray]:
    return {f"{prefix}{k}": v for k, v in _flatten(tree).items()}


def save_checkpoint(folder: Path, params, state, history: list, epoch: int, best: tuple | None = None) -> None:
    """Write ``checkpoint.npz`` (params, optimiser state) and ``checkpoint.json`` (epoch, history) atomically.

    ``best``: (loss, epoch, params) of the lowest loss met so far (``RefineConfig.keep_best``), kept beside the last
    parameters so that a resumed run returns what an uninterrupted one would; :func:`load_params` prefers them."""
    folder.mkdir(parents=True, exist_ok=True)
    # the epoch and history travel inside the .npz too (a unicode array, no pickle): one atomic rename makes the
    # checkpoint, so a kill between the two renames below cannot pair arrays with another epoch's history
    info = {"epoch": epoch, "history": history}
    if best is not None:
        info["best"] = {"loss": float(best[0]), "epoch": int(best[1])}
    _save_npz(folder / "checkpoint.npz", meta=np.array(json.dumps(info)), **_prefix("p_", params),
              **_prefix("s_", state), **(_prefix("b_", best[2]) if best is not None else {}))
    tmp_json = folder / "checkpoint.tmp.json"
    tmp_json.write_text(json.dumps({"epoch": epoch, "history": history}))
    tmp_json.replace(folder / "checkpoint.json")


def save_params(path: str | Path, params) -> Path:
    """The parameters alone as one ``.npz`` (a few kB; written atomically, no pickle), readable by
    :func:`load_params` like a checkpoint folder: a small file to keep with a run's results, so that a later
    session can continue from them after the checkpoint folder is gone."""
    path = Path(path)
    if path.suffix != ".npz":
        raise JaxedInputError(f"{path}: a parameter file must end in .npz")
    _save_npz(path, **_prefix("p_", params))
    return path


def _read_checkpoint(folder: str | Path, read, hint: str = ""):
    """(path, read(npz)) of ``folder/checkpoint.npz`` (or of ``folder`` itself when it is an ``.npz`` file, as
    :func:`save_params` writes); any zip, npy, JSON or key error is one JaxedInputError line (with ``hint``
    appended); nothing is unpickled."""
    path = Path(folder) if str(folder).endswith(".npz") else Path(folder) / "checkpoint.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            return path, read(data)
    except Exception as exc:  # noqa: BLE001 - zip, npy, JSON and key errors alike: one line for the user
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JaxedInputError(f"{path}: cannot read the checkpoint ({detail}){hint}") from None


def _prefixed(data, prefix: str) -> dict:
    return {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}


def _meta(data, folder) -> dict:
    """A checkpoint's epoch, history (and best): inside the .npz, or beside it in older checkpoints."""
    return json.loads(str(data["meta"]) if "meta" in data.files else (Path(folder) / "checkpoint.json").read_text())


def load_checkpoint(folder: Path, params_template, state_template):
    """Inverse of :func:`save_checkpoint`: (params, state, history, epoch).

    A damaged or foreign checkpoint is a one-line JaxedInputError; nothing is unpickled."""
    def read(data):
        meta = _meta(data, folder)
        return _prefixed(data, "p_"), _prefixed(data, "s_"), list(meta["history"]), int(meta["epoch"])

    path, (p, s, history, epoch) = _read_checkpoint(folder, read, "; delete it or run without --resume")
    _check_finite(path, p)
    return _unflatten(params_template, p), _unflatten(state_template, s), history, epoch


def _check_finite(path: Path, flat: dict) -> None:
    bad = [k for k, v in flat.items() if np.issubdtype(v.dtype, np.inexact) and not np.all(np.isfinite(v))]
    if bad:  # (optimiser states may hold ±inf legitimately, e.g. a line search's initial value)
        raise JaxedInputError(f"{path}: non-finite parameter array {bad[0]}; the checkpoint is damaged")


def load_best(folder: Path, params_template) -> tuple | None:
    """(loss, epoch, params) of the lowest loss a checkpoint's run met (:func:`save_checkpoint`'s ``best``), or None
    when it holds none (``keep_best`` off, an older checkpoint, Gauss–Newton / LM)."""
    def read(data):
        return _meta(data, folder).get("best"), _prefixed(data, "b_")

    path, (info, b) = _read_checkpoint(folder, read, "; delete it or run without --resume")
    if info is None or not b:
        return None
    _check_finite(path, b)
    return float(info["loss"]), int(info["epoch"]), _unflatten(params_template, b)


def load_params(folder: str | Path, params_template):
    """The parameters alone of a checkpoint folder (any optimiser) or of a :func:`save_params` file, shaped like
    ``params_template``: to start a new refinement (other optimiser, learning rates or extra parameter groups) from
    where an earlier one ended. A checkpoint written with ``keep_best`` gives the parameters of the lowest loss its
    run met (what run_refinement returned), not its last step's.

    A missing, damaged or mismatched checkpoint is a one-line JaxedInputError."""
    path, p = _read_checkpoint(folder, lambda data: _prefixed(data, "b_") or _prefixed(data, "p_"))
    _check_finite(path, p)
    return _unflatten(params_template, p)
