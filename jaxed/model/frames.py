"""The frame axis: one function that takes a subset of frames from any per-frame pytree.

Every array of a prepared :class:`jaxed.model.selection.Experiment` (beams, orientations, samples, reflections) and
of :class:`jaxed.refine.objective.Observations` has the frames as its leading axis, except the coupling table's
``hkl_unique`` (:class:`jaxed.physics.geometry.BeamSet`), which all frames share. :func:`take_frames` is the one
way to select frames of such a tree, on the host (a frame subset for an orientation search) or traced (a random
minibatch inside the loss).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxed.model.selection import Experiment

__all__ = ["take_frames", "FRAME_SHARED_FIELDS"]

#: Fields whose arrays are shared by every frame (not indexed by frame).
FRAME_SHARED_FIELDS = frozenset({"hkl_unique"})


def take_frames(tree, idx):
    """The frames ``idx`` of a per-frame pytree (an Experiment, Observations, a tuple of arrays...).

    Args:
        tree: pytree whose array leaves have the frames as axis 0 (n_frames, ...), except fields named in
            :data:`FRAME_SHARED_FIELDS`, which are kept whole.
        idx: frame indices (n_sub,) int — a host sequence (list, range, numpy array; also a slice or a boolean mask
            over n_frames) or a JAX array (traced, e.g. a minibatch drawn inside ``jit``).

    Returns:
        The same structure with leaves (n_sub, ...) (JAX arrays). Static metadata stays as it is, except the
        host-side ``frame_ids`` of an :class:`Experiment`, which follow host indices; a JAX index (traced) cannot
        index static metadata, so with one they are kept (traced code never reads them).
    """
    host = not isinstance(idx, jax.Array)
    if host:
        if isinstance(idx, slice) or np.asarray(idx).dtype == bool:
            n = int(np.shape(jax.tree_util.tree_leaves(tree)[0])[0])
            idx = np.arange(n)[idx]
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))

    def take(path, x):
        if path and getattr(path[-1], "name", None) in FRAME_SHARED_FIELDS:
            return x
        return jnp.take(jnp.asarray(x), idx, axis=0)

    out = jax.tree_util.tree_map_with_path(take, tree)
    if not host:
        return out

    def renumber(node):
        if isinstance(node, Experiment):
            return dataclasses.replace(node, frame_ids=tuple(node.frame_ids[int(i)] for i in idx))
        return node

    return jax.tree_util.tree_map(renumber, out, is_leaf=lambda node: isinstance(node, Experiment))
