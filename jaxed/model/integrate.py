"""Traced side of the forward model: calculated integrated intensities of a prepared experiment.

The orientations of all frames × rocking samples go through one vmapped Bloch-wave call (frames outer, samples
inner), and each frame's calculated intensity is the quadrature over its samples (PHYSICS.md §5.3): the plain mean
(midpoint rule, precession azimuths) or the experiment's ``sample_weights`` (Gauss–Legendre). Nothing here decides a
shape; the experiment comes from :func:`jaxed.model.selection.prepare_experiment` (host).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxed.errors import JaxedInputError
from jaxed.model.selection import Experiment
from jaxed.physics.bloch import BlochSettings, frame_wavefunction, potential_table
from jaxed.physics.crystal import AtomParams, Crystal
from jaxed.physics.geometry import rotation_x_jax, rotation_y_jax, rotation_z_jax

__all__ = ["integrated_intensities", "intensities_from_table", "frame_orientations", "tilt_matrices"]


def tilt_matrices(tilt_corrections) -> jax.Array:
    """Lab correction rotations of per-frame tilt corrections (n_frames, 2 or 3) [rad] → (n_frames, 3, 3):
    R_x(δ₁) R_y(δ₂), times R_z(δ₃) with a third angle (see :func:`frame_orientations`)."""
    d = jnp.asarray(tilt_corrections)
    if d.shape[-1] not in (2, 3):
        raise JaxedInputError(f"tilt corrections of shape {d.shape}: expected (n_frames, 2) or (n_frames, 3)")
    if d.shape[-1] == 3:
        return jax.vmap(lambda a: rotation_x_jax(a[0]) @ rotation_y_jax(a[1]) @ rotation_z_jax(a[2]))(d)
    return jax.vmap(lambda a: rotation_x_jax(a[0]) @ rotation_y_jax(a[1]))(d)


def frame_orientations(experiment: Experiment, tilt_corrections: jax.Array | None = None) -> jax.Array:
    """Orientation matrices of every frame and sample, (n_frames, n_samples, 3, 3).

    ``tilt_corrections`` (n_frames, 2) [rad]: small lab rotations R_x(δ₁) R_y(δ₂) applied to each frame — the two
    tilts perpendicular to the beam, the only ones that change the excitation errors of a still frame (PHYSICS.md
    §8.1). (n_frames, 3): R_x(δ₁) R_y(δ₂) R_z(δ₃), δ₃ a rotation about the beam; it leaves a still frame's excitation
    errors alone but turns the crystal relative to the rocking axis (lab x), so it changes which part of each
    reflection's rocking curve a continuous-rotation frame integrates.
    """
    base = jnp.asarray(experiment.base_orientation)
    if tilt_corrections is not None:
        base = tilt_matrices(tilt_corrections) @ base
    return jnp.einsum("fsij,fjk->fsik", jnp.asarray(experiment.sample_rotations, base.dtype), base)


def integrated_intensities(atoms: AtomParams, crystal: Crystal, experiment: Experiment, thickness: jax.Array,
                           settings: BlochSettings, tilt_corrections: jax.Array | None = None,
                           normal: jax.Array | None = None, frames_per_batch: int | None = None) -> jax.Array:
    """Calculated integrated intensities of the observed reflections, (n_frames, n_refl), unscaled.

    Args:
        thickness: per frame, (n_frames,) [Å] — or (n_frames, n_t) to average over several thickness samples
            (e.g. ThicknessNN's reparameterised draws).
        tilt_corrections: optional (n_frames, 2) or (n_frames, 3) [rad] (:func:`frame_orientations`).
        frames_per_batch: frames evaluated at once (static); None: all frames in one vmapped call. Smaller values
            run ``lax.map`` over chunks of a vmapped kernel, bounding memory (jaxed.model.batching.frames_per_batch).
    """
    u_ext = potential_table(atoms, crystal, experiment.beams, settings)
    return intensities_from_table(u_ext, crystal, experiment, thickness, settings, tilt_corrections, normal,
                                  frames_per_batch)


def intensities_from_table(u_ext: jax.Array, crystal: Crystal, experiment: Experiment, thickness: jax.Array,
                           settings: BlochSettings, tilt_corrections: jax.Array | None = None,
                           normal: jax.Array | None = None, frames_per_batch: int | None = None) -> jax.Array:
    """As :func:`integrated_intensities`, from a precomputed potential table ``u_ext`` (jaxed.physics.bloch.potential_table):
    searches that keep the structure fixed (orientations, thickness) compute the Fourier coefficients once.

    U_{g−h} is gathered once per frame and shared by the frame's rocking samples (the gather is outside the
    samples' ``vmap``: its operands do not depend on the sample)."""
    dtype = jnp.real(u_ext).dtype
    orient = frame_orientations(experiment, tilt_corrections).astype(dtype)
    reciprocal = jnp.asarray(crystal.reciprocal, dtype)
    thickness = jnp.asarray(thickness, dtype)
    if thickness.ndim == 1:
        thickness = thickness[:, None]
    beams = experiment.beams

    def per_sample(hkl, mask, coupling, rot, t):
        psi = frame_wavefunction(u_ext, hkl, mask, coupling, rot, t, reciprocal, settings, normal)
        return jnp.mean(jnp.real(psi * jnp.conj(psi)), axis=0)  # average over thickness draws

    n_unique = u_ext.shape[-1] - 1

    def per_subset(hkl, mask, coupling, rot, t, sub, sub_mask):
        # the sample's own matrix: rows/columns ``sub`` of the frame's; padded pairs couple through U = 0
        m = mask[sub] & sub_mask
        c = jnp.where(m[:, None] & m[None, :], coupling[sub[:, None], sub[None, :]], n_unique)
        i_sub = per_sample(hkl[sub], m, c, rot, t)  # 0 on padding (frame_wavefunction masks ψ)
        return jnp.zeros(hkl.shape[0], i_sub.dtype).at[sub].add(i_sub)  # back to the frame's beam list

    def per_frame(hkl, mask, coupling, rots, t, refl_beam, weights, subs, sub_masks):
        if subs is None:
            i = jax.vmap(per_sample, in_axes=(None, None, None, 0, None))(hkl, mask, coupling, rots, t)
        else:
            i = jax.vmap(per_subset, in_axes=(None, None, None, 0, None, 0, 0))(hkl, mask, coupling, rots, t, subs,
                                                                                  sub_masks)
        i = jnp.mean(i, axis=0) if weights is None else weights @ i
        return i[refl_beam]

    weights = None if experiment.sample_weights is None else jnp.asarray(experiment.sample_weights, dtype)
    subs = sub_masks = None
    if experiment.sample_beams is not None:
        subs, sub_masks = jnp.asarray(experiment.sample_beams), jnp.asarray(experiment.sample_beam_mask)
    args = (beams.hkl, beams.mask, beams.coupling, orient, thickness, jnp.asarray(experiment.refl_beam), weights,
            subs, sub_masks)
    n_frames = experiment.n_frames
    if frames_per_batch is None or frames_per_batch >= n_frames:
        return jax.vmap(per_frame)(*args)
    # rematerialised: reverse mode through lax.map would otherwise keep every chunk's residuals for the backward pass,
    # and the gradient's memory would not shrink with the chunk size (tests/test_memory.py checks that it does)
    return jax.lax.map(jax.checkpoint(lambda a: per_frame(*a)), args, batch_size=int(frames_per_batch))
