"""A 3D-ED experiment for the forward model — the names most callers import, in one place.

The concept lives in two modules, host and traced, kept apart:

* :mod:`jaxed.model.selection` (host, numpy, before tracing): :class:`ExperimentSettings`, :class:`Experiment`,
  :func:`prepare_experiment` (beams, padding, rocking samples, observed reflections) and
  :func:`reselect_sample_beams`;
* :mod:`jaxed.model.integrate` (traced): :func:`integrated_intensities` and :func:`intensities_from_table`, the
  rocking-curve / precession integration, with :func:`frame_orientations` and :func:`tilt_matrices`;
* :mod:`jaxed.model.frames`: :func:`take_frames`, the frame subset of any per-frame pytree.

This module only re-exports them.
"""
from jaxed.model.frames import take_frames
from jaxed.model.integrate import frame_orientations, integrated_intensities, intensities_from_table, tilt_matrices
from jaxed.model.selection import (BEAM_SELECTIONS, GEOMETRIES, QUADRATURES, Experiment, ExperimentSettings,
                                   prepare_experiment, quadrature_nodes, reselect_sample_beams, uses_precession)

__all__ = ["ExperimentSettings", "Experiment", "prepare_experiment", "integrated_intensities", "intensities_from_table",
           "frame_orientations", "take_frames", "reselect_sample_beams", "GEOMETRIES", "uses_precession",
           "tilt_matrices", "QUADRATURES", "BEAM_SELECTIONS", "quadrature_nodes"]
