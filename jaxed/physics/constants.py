"""Physical constants and relativistic electron kinematics.

Conventions (docs/PHYSICS.md §0, §1), stated once for the whole package:

* reciprocal vectors g = h a* + k b* + l c* in [Å⁻¹] with |g| = 1/d (no 2π); wave number K = 1/λ [Å⁻¹];
* U_g = 2 mₑ γ e V_g / h² [Å⁻²] = γ F_g / (π Ω), with F_g the electron structure factor [Å] and Ω the cell volume [Å³];
* tabulated electron form factors are rest-mass values: the relativistic factor γ is applied exactly once, on U_g.

Constants are CODATA 2022 (as in scipy 1.17).
"""
from __future__ import annotations

import math

PLANCK = 6.62607015e-34  # h [J s]
ELECTRON_MASS = 9.1093837139e-31  # mₑ [kg]
ELEMENTARY_CHARGE = 1.602176634e-19  # e [C]
SPEED_OF_LIGHT = 299792458.0  # c [m/s]
BOHR_RADIUS = 0.529177210544  # a₀ [Å]
ELECTRON_REST_ENERGY_EV = ELECTRON_MASS * SPEED_OF_LIGHT**2 / ELEMENTARY_CHARGE  # mₑc² [eV] ≈ 510998.95

#: 2 mₑ e / h² [Å⁻² V⁻¹]: U_g = γ · this · V_g (PHYSICS.md §1).
U_PER_VOLT = 2.0 * ELECTRON_MASS * ELEMENTARY_CHARGE / PLANCK**2 * 1e-20
#: h² / (2π mₑ e) [V Å²]: V_g = this · F_g / Ω (PHYSICS.md §1).
VOLT_ANGSTROM2_PER_F = PLANCK**2 / (2.0 * math.pi * ELECTRON_MASS * ELEMENTARY_CHARGE) * 1e20


def relativistic_gamma(energy_kev: float) -> float:
    """Relativistic mass factor γ = 1 + eE/(mₑc²) for accelerating voltage ``energy_kev`` [kV]."""
    return 1.0 + energy_kev * 1e3 / ELECTRON_REST_ENERGY_EV


def wavelength(energy_kev: float) -> float:
    """Relativistic electron wavelength λ [Å] for accelerating voltage ``energy_kev`` [kV] (PHYSICS.md §1)."""
    e_volt = energy_kev * 1e3
    e_star = e_volt * (1.0 + e_volt / (2.0 * ELECTRON_REST_ENERGY_EV))
    momentum = math.sqrt(2.0 * ELECTRON_MASS * ELEMENTARY_CHARGE * e_star)
    return PLANCK / momentum * 1e10


def energy_from_wavelength(wavelength_a: float) -> float:
    """Accelerating voltage [kV] that gives electron wavelength ``wavelength_a`` [Å] (inverse of :func:`wavelength`)."""
    p = PLANCK / (wavelength_a * 1e-10)
    # p² = 2 m e E (1 + eE/(2mc²))  →  quadratic in E: (e/(2mc²)) E² + E − p²/(2 m e) = 0
    a = 1.0 / (2.0 * ELECTRON_REST_ENERGY_EV)
    c = -(p**2) / (2.0 * ELECTRON_MASS * ELEMENTARY_CHARGE)
    e_volt = (-1.0 + math.sqrt(1.0 - 4.0 * a * c)) / (2.0 * a)
    return e_volt * 1e-3


def interaction_constant(energy_kev: float) -> float:
    """Interaction constant σ = 2π γ mₑ e λ / h² [rad V⁻¹ Å⁻¹] (PHYSICS.md §1)."""
    lam_m = wavelength(energy_kev) * 1e-10
    gamma = relativistic_gamma(energy_kev)
    return 2.0 * math.pi * gamma * ELECTRON_MASS * ELEMENTARY_CHARGE * lam_m / PLANCK**2 * 1e-10
