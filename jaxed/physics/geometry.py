"""Diffraction geometry: orientations, excitation errors, beam selection and padding.

Lab frame (docs/PETS.md, PHYSICS.md "Settled for jaxed"): the electrons travel along lab −z, k₀ = −K ẑ with K = 1/λ.
A crystal orientation is a proper rotation R (det +1) taking crystal-Cartesian vectors to the lab, so that
g_lab = R · B · h with B the reciprocal basis (columns a*, b*, c*, [Å⁻¹]). The excitation error is

    s_g = (K² − |k₀ + g|²)/(2K) = g_z − |g|²/(2K)     [Å⁻¹], positive inside the Ewald sphere (PHYSICS.md §4.2).

A zone axis [uvw] (direct-lattice coordinates) points from the crystal towards the source, as in the TEM and PETS2
convention, so the orientation for [uvw] maps A·uvw onto +ẑ and the electrons travel along −[uvw].

Host and traced code are separate functions: everything that decides an array shape — which beams enter each
frame's matrix, the padding, the table of couplings g − h — runs on the host in numpy (:func:`hkl_within`,
:func:`select_beams`, :func:`make_beam_set`), before tracing. The rotations exist twice, :func:`rotation_x` (numpy,
host set-up such as thousands of rocking samples without one small JAX dispatch each) and :func:`rotation_x_jax`
(jax.numpy, for differentiated angles); both take radians. :func:`excitation_errors` uses array operators only and
serves both sides. Degrees appear only at the file edge (:func:`jaxed.data.pets.frame_rotation`).
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxed.errors import JaxedInputError

__all__ = [
    "BeamSet",
    "rotation_x",
    "rotation_y",
    "rotation_z",
    "rotation_x_jax",
    "rotation_y_jax",
    "rotation_z_jax",
    "zone_axis_rotation",
    "hkl_within",
    "excitation_errors",
    "select_beams",
    "make_beam_set",
]


def _rotation(axis: int, c, s, xp):
    """(..., 3, 3) active right-handed rotation about lab ``axis`` from its cosine and sine (arrays of one shape),
    built with the array namespace ``xp`` (numpy on the host, jax.numpy in traced code)."""
    one, zero = xp.ones_like(c), xp.zeros_like(c)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == 1:
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return xp.stack([xp.stack(r, axis=-1) for r in rows], axis=-2)


def rotation_x(angle) -> np.ndarray:
    """Active right-handed rotation about lab x by ``angle`` [rad] (host, numpy): (3, 3), or (..., 3, 3) for an
    array of angles (...,). Traced code uses :func:`rotation_x_jax`."""
    t = np.asarray(angle, dtype=np.float64)
    return _rotation(0, np.cos(t), np.sin(t), np)


def rotation_y(angle) -> np.ndarray:
    """Active right-handed rotation about lab y by ``angle`` [rad] (host, numpy; z → x is the positive sense):
    (3, 3), or (..., 3, 3) for an array of angles. Traced code uses :func:`rotation_y_jax`."""
    t = np.asarray(angle, dtype=np.float64)
    return _rotation(1, np.cos(t), np.sin(t), np)


def rotation_z(angle) -> np.ndarray:
    """Active right-handed rotation about lab z (the beam axis) by ``angle`` [rad] (host, numpy): (3, 3), or
    (..., 3, 3) for an array of angles. Traced code uses :func:`rotation_z_jax`."""
    t = np.asarray(angle, dtype=np.float64)
    return _rotation(2, np.cos(t), np.sin(t), np)


def rotation_x_jax(angle: jax.Array) -> jax.Array:
    """:func:`rotation_x` in jax.numpy, for traced (differentiated) angles [rad]: (..., 3, 3)."""
    return _rotation(0, jnp.cos(angle), jnp.sin(angle), jnp)


def rotation_y_jax(angle: jax.Array) -> jax.Array:
    """:func:`rotation_y` in jax.numpy, for traced angles [rad]: (..., 3, 3)."""
    return _rotation(1, jnp.cos(angle), jnp.sin(angle), jnp)


def rotation_z_jax(angle: jax.Array) -> jax.Array:
    """:func:`rotation_z` in jax.numpy, for traced angles [rad]: (..., 3, 3)."""
    return _rotation(2, jnp.cos(angle), jnp.sin(angle), jnp)


def zone_axis_rotation(uvw: Sequence[float], direct: np.ndarray) -> np.ndarray:
    """Orientation R (crystal Cartesian → lab) that puts the zone axis [uvw] along +ẑ (towards the source).

    The rotation about the beam is fixed by putting the component of a (or of b, if a ∥ [uvw]) perpendicular to
    the zone axis along +x; it does not change excitation errors.

    Args:
        uvw: zone axis in direct-lattice coordinates, (3,) [–]; real numbers allowed.
        direct: columns a, b, c, (3, 3) [Å].

    Returns:
        (3, 3) proper rotation matrix (numpy).
    """
    uvw = np.asarray(uvw, dtype=np.float64)
    if uvw.shape != (3,) or not np.all(np.isfinite(uvw)) or np.linalg.norm(uvw) == 0:
        raise JaxedInputError(f"beam direction {uvw.tolist()}: expected three finite numbers, not all zero")
    z = direct @ uvw
    z /= np.linalg.norm(z)
    for ref in (direct[:, 0], direct[:, 1], direct[:, 2]):
        x = ref - (ref @ z) * z
        if np.linalg.norm(x) > 1e-6 * np.linalg.norm(ref):
            break
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])  # rows: lab axes in crystal coordinates → R maps crystal to lab


def excitation_errors(g_lab, k: float):
    """Excitation errors s_g = g_z − |g|²/(2K) [Å⁻¹] of lab-frame reciprocal vectors, electrons along lab −z
    (PHYSICS.md §4.2; positive inside the Ewald sphere).

    Written with array operators and methods only, so it is one function for both sides: numpy in → numpy out on
    the host (beam selection), JAX in → JAX out in traced code (the Bloch matrix).

    Args:
        g_lab: (..., 3) [Å⁻¹].  k: K = 1/λ [Å⁻¹].

    Returns:
        (...,) [Å⁻¹].
    """
    return g_lab[..., 2] - (g_lab * g_lab).sum(axis=-1) / (2.0 * k)


def hkl_within(reciprocal: np.ndarray, g_max: float) -> np.ndarray:
    """Every hkl with |g| ≤ g_max (host, numpy).

    Args:
        reciprocal: (3, 3) columns a*, b*, c* [Å⁻¹].  g_max: [Å⁻¹].

    Returns:
        (n, 3) int, in meshgrid order (000 included).
    """
    direct = np.linalg.inv(reciprocal).T
    hmax = np.floor(g_max * np.linalg.norm(direct, axis=0)).astype(int)
    axes = [np.arange(-m, m + 1) for m in hmax]
    hkl = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    g = hkl @ reciprocal.T
    return hkl[np.einsum("ij,ij->i", g, g) <= g_max**2 * (1 + 1e-12)]


def select_beams(reciprocal: np.ndarray, rotation: np.ndarray, k: float, g_max: float, sg_max: float,
                 max_beams: int | None = None, candidates: np.ndarray | None = None) -> np.ndarray:
    """Beams for one orientation: |g| ≤ g_max and |s_g| ≤ sg_max, the direct beam first (host, numpy).

    Args:
        reciprocal: (3, 3) columns a*, b*, c* [Å⁻¹].
        rotation: (3, 3) crystal → lab.
        k: K = 1/λ [Å⁻¹].  g_max [Å⁻¹].  sg_max [Å⁻¹].
        max_beams: keep at most this many (smallest |s_g| first) — a cap, not a criterion.
        candidates: precomputed :func:`hkl_within` result, to save work over many frames.

    Returns:
        hkl (n_beams, 3) int, 000 first, then by increasing |s_g|.
    """
    hkl = hkl_within(reciprocal, g_max) if candidates is None else candidates
    g_lab = hkl @ (rotation @ reciprocal).T
    sg = np.asarray(excitation_errors(g_lab, k))
    is_zero = np.all(hkl == 0, axis=1)
    keep = (np.abs(sg) <= sg_max) & ~is_zero
    order = np.argsort(np.abs(sg[keep]), kind="stable")
    chosen = hkl[keep][order]
    if max_beams is not None:
        chosen = chosen[: max(max_beams - 1, 0)]
    return np.concatenate([np.zeros((1, 3), dtype=hkl.dtype), chosen]).astype(np.int32)


@partial(jax.tree_util.register_dataclass, data_fields=["hkl", "mask", "coupling", "hkl_unique"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class BeamSet:
    """Padded beam sets of many frames and the table of couplings g − h (built on the host).

    Attributes:
        hkl: (n_frames, n_beams, 3) int, the beams of each frame, direct beam first, zero rows as padding.
        mask: (n_frames, n_beams) bool, False on padding.
        coupling: (n_frames, n_beams, n_beams) int index of h_g − h_h into ``hkl_unique``; pairs that involve a
            padded beam point one past the end (the model appends U = 0 there).
        hkl_unique: (n_unique, 3) int, every difference g − h needed by any frame (000 included).
    """

    hkl: jax.Array
    mask: jax.Array
    coupling: jax.Array
    hkl_unique: jax.Array

    @property
    def n_frames(self) -> int:
        return int(np.shape(self.hkl)[0])

    @property
    def n_beams(self) -> int:
        return int(np.shape(self.hkl)[1])

    def frame(self, i: int) -> "BeamSet":
        """The beam set of frame ``i`` alone (keeps the shared ``hkl_unique``)."""
        return BeamSet(self.hkl[i : i + 1], self.mask[i : i + 1], self.coupling[i : i + 1], self.hkl_unique)


def make_beam_set(beams: Sequence[np.ndarray], n_beams: int | None = None, pad_multiple: int = 8) -> BeamSet:
    """Pad ragged per-frame beam lists to one size and tabulate the couplings (host, numpy).

    Args:
        beams: per frame, (n_i, 3) int hkl with the direct beam 000 first.
        n_beams: padded size; default: the largest n_i rounded up to ``pad_multiple``. A frame with more beams than
            ``n_beams`` raises :class:`JaxedInputError` (lower sg_max/g_max or raise n_beams).
    """
    beams = [np.asarray(b, dtype=np.int64).reshape(-1, 3) for b in beams]
    if not beams:
        raise JaxedInputError("no frames: expected at least one beam direction")
    for i, b in enumerate(beams):
        if len(b) == 0 or np.any(b[0] != 0):
            raise JaxedInputError(f"frame {i}: the beam list must start with the direct beam 0 0 0")
    largest = max(len(b) for b in beams)
    if n_beams is None:
        n_beams = -(-largest // pad_multiple) * pad_multiple
    if largest > n_beams:
        raise JaxedInputError(f"a frame has {largest} beams but n_beams = {n_beams}: raise n_beams or lower g_max/sg_max")
    n_frames = len(beams)
    hkl = np.zeros((n_frames, n_beams, 3), dtype=np.int64)
    mask = np.zeros((n_frames, n_beams), dtype=bool)
    for i, b in enumerate(beams):
        hkl[i, : len(b)] = b
        mask[i, : len(b)] = True
    diff = hkl[:, :, None, :] - hkl[:, None, :, :]  # (f, g, h, 3): g − h (row minus column, PHYSICS.md §4.3)
    pair_ok = mask[:, :, None] & mask[:, None, :]
    lim = int(np.abs(diff).max()) + 1
    keys = ((diff[..., 0] + lim) * (2 * lim + 1) + (diff[..., 1] + lim)) * (2 * lim + 1) + (diff[..., 2] + lim)
    unique_keys, inverse = np.unique(keys[pair_ok], return_inverse=True)
    coupling = np.full(keys.shape, len(unique_keys), dtype=np.int32)
    coupling[pair_ok] = inverse.astype(np.int32)
    width = 2 * lim + 1
    hkl_unique = np.stack([unique_keys // width**2 - lim, (unique_keys // width) % width - lim, unique_keys % width - lim],
                          axis=-1).astype(np.int32)
    return BeamSet(hkl=hkl.astype(np.int32), mask=mask, coupling=coupling, hkl_unique=hkl_unique)
