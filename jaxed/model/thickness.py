"""Thickness models: each frame's tilt angle θ [rad] → crystal thickness t [Å] along the surface normal.

Every model is a small frozen dataclass (hashable, static configuration, safe as a ``jit`` static argument) with

* ``init(key=None, *, dtype=None) -> params``: a plain pytree (nested ``dict`` of arrays) holding every learnable
  number, so that the refinement can put it in one pytree beside the structural parameters and update, freeze or
  partition it with optax;
* ``apply(params, theta, *, key=None, n_samples=1) -> t`` [Å]: pure, jit/vmap/grad friendly. Without ``key`` the
  result has the shape of ``theta`` (normally ``(n_frames,)``); with ``key`` it has shape ``(n_samples, n_frames)``
  (the stochastic model draws samples, the deterministic ones repeat their value so that callers need no branch);
* ``predict(params, theta) -> (mean, std)`` [Å], the std being zero for the deterministic models.

Models (build them with :func:`make_thickness_model`):

====================  =============================================================  ===========================
name                  t(θ) [Å]                                                       params
====================  =============================================================  ===========================
``"kinematic"``       t₀ = 10 Å, fixed (the reference paper's kinematical baseline)  ``{}``
``"single"``          t₀ for all frames                                              ``log_t0``
``"constant"``        same model as ``"single"``
``"plate"``           t₀ / cos(θ − θ₀)  (flat plate)                                 ``log_t0``, ``theta0``
``"tilt"``            t₀ · [(1 − w) + w / cos(θ − θ₀)],  w = sigmoid(logit_w)        ``log_t0``, ``theta0``,
                                                                                     ``logit_w``
``"nn"``              ThicknessNN (below)                                            ``mlp`` [, ``prior``]
====================  =============================================================  ===========================

Positive thicknesses are stored as logarithms (t₀ = exp(log_t0)): Adam moves a raw parameter by about the learning
rate per step, so a log parameter changes t₀ by a *relative* amount per step whatever its size in Å.
``1/cos`` is capped at ``1/cos(max_tilt_deg)`` (80° by default) so the plate stays finite at any angle; θ₀ is
learnable unless ``learn_theta0=False`` (then it is a fixed configuration value).

ThicknessNN (after Malik et al., Nat. Commun. 2026, see docs/TARGETS.md): an MLP (1 → 64 → 64 → 2, Tanh) of the
normalised angle x = θ / ``theta_scale`` (π/2 by default) with two outputs (z_r, ℓ):

* mean:  z(θ) = q(x) + z_r(x),   μ(θ) = t_min + (t_max − t_min) · sigmoid(z(θ)),
  with the optional quadratic prior q(x) = a x² + b x + c, a = exp(log_a) > 0 (q ≡ 0 without the prior).
  Prior and residual are added in the *logit* space of the range mapping, so μ lies in (t_min, t_max) for any
  parameters. A change δz moves μ by (t_max − t_min)·s(1 − s)·δz with s = sigmoid(z), at most (t_max − t_min)/4·δz
  (reached at the middle of the range): the prior is, to first order about its value, a quadratic thickness profile
  with curvature ∝ a > 0 (thicker at high tilt, as for a plate) and the MLP adds a learned residual on the same
  logit scale. All prior coefficients are dimensionless and O(1), which suits Adam.
* spread: log σ² = log σ_min² + (log σ_max² − log σ_min²) · sigmoid(ℓ), so σ ∈ [σ_min, σ_max] (log-uniform scale).
* sampling (``key`` given): t = μ + σ·ε, ε ~ N(0, 1) (reparameterised, so gradients reach μ and σ). Samples are not
  clipped: keep σ_max well below t_min. Without ``key`` the mean μ is used, as in the paper's refinements.
* initialisation: the μ column of the output layer's kernel is zero and the logit of t_init is put in the output
  bias (no prior) or in the prior's c (with prior, where the output bias is zero and a starts at
  ``prior_curvature_init``), so μ(θ) = t_init exactly at the start without the prior and to within
  (t_max − t_min)/4 · a₀ · x² with it. The ℓ bias is zero, so σ starts near √(σ_min σ_max).

The MLP is a ``flax.nnx`` module used functionally: its state is kept as a pure nested dict
(``nnx.to_pure_dict``) under ``params["mlp"]`` and merged back into the module inside ``apply``.

Dtypes: ``init`` creates parameters in JAX's default float dtype (float64 when ``jax_enable_x64`` is on, float32
otherwise) unless ``dtype`` is given; ``apply`` follows normal JAX promotion of θ and the parameters. This module never
changes ``jax_enable_x64``.

Checkpoints: :func:`params_to_flat` / :func:`params_from_flat` convert params to and from a flat
``{"a/b/c": np.ndarray}`` dict for ``np.savez`` (no pickle).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxed.errors import JaxedInputError

if TYPE_CHECKING:  # shape annotations only (this module has `from __future__ import annotations`)
    from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

__all__ = [
    "THICKNESS_MODELS",
    "ThicknessModel",
    "KinematicThickness",
    "SingleThickness",
    "PlateThickness",
    "TiltThickness",
    "ThicknessNN",
    "make_thickness_model",
    "fit_to_profile",
    "params_to_flat",
    "params_from_flat",
]

THICKNESS_MODELS = ("kinematic", "single", "constant", "plate", "tilt", "nn")

Params = dict[str, Any]
"""A thickness model's parameters: a nested dict of arrays (possibly empty)."""


class ThicknessModel(Protocol):
    """What every thickness model provides (see the module docstring)."""

    def init(self, key: PRNGKeyArray | None = None, *, dtype: Any = None) -> Params: ...

    def predict(self, params: Params, theta: Float[ArrayLike, "n_frames"]) -> tuple[Array, Array]: ...

    def apply(
        self,
        params: Params,
        theta: Float[ArrayLike, "n_frames"],
        *,
        key: PRNGKeyArray | None = None,
        n_samples: int = 1,
    ) -> Float[Array, "n_frames"] | Float[Array, "n_samples n_frames"]: ...


# --------------------------------------------------------------------------------------------------------------------
# shared helpers


def _float_dtype(dtype: Any = None) -> np.dtype:
    """``dtype`` if given, else JAX's default float dtype (float64 under x64, float32 otherwise)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64 if dtype is None else dtype)


def _as_angles(theta: ArrayLike) -> Array:
    """θ [rad] as a float JAX array (integers become the default float dtype)."""
    theta = jnp.asarray(theta)
    if not jnp.issubdtype(theta.dtype, jnp.inexact):
        theta = theta.astype(_float_dtype())
    return theta


def _sample_or_mean(mean: Array, std: Array, key: PRNGKeyArray | None, n_samples: int) -> Array:
    """The mean (shape of θ) when ``key`` is None, else ``n_samples`` draws mean + std·ε, (n_samples, *θ.shape)."""
    if key is None:
        return mean
    eps = jax.random.normal(key, (n_samples, *mean.shape), dtype=mean.dtype)
    return mean[None] + std[None] * eps


def _capped_secant(delta: Array, max_tilt_deg: float) -> Array:
    """1/cos(δ) with cos(δ) floored at cos(max_tilt_deg), so the result is finite for any δ [rad]."""
    return 1.0 / jnp.maximum(jnp.cos(delta), math.cos(math.radians(max_tilt_deg)))


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0.0):
        raise JaxedInputError(f"thickness option {name}={value!r}: expected a finite value > 0")


def _check_max_tilt(max_tilt_deg: float) -> None:
    if not 0.0 < max_tilt_deg < 90.0:
        raise JaxedInputError(f"thickness option max_tilt_deg={max_tilt_deg!r}: expected 0 < max_tilt_deg < 90")


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


# --------------------------------------------------------------------------------------------------------------------
# geometric models


@dataclasses.dataclass(frozen=True)
class KinematicThickness:
    """Fixed thickness ``t0`` [Å] for every frame, no parameters (the paper's kinematical baseline, 10 Å)."""

    t0: float = 10.0

    def __post_init__(self):
        _check_positive("t0", self.t0)

    def init(self, key: PRNGKeyArray | None = None, *, dtype: Any = None) -> Params:
        """Empty params ``{}`` (``key`` and ``dtype`` are ignored)."""
        return {}

    def predict(self, params: Params, theta: Float[ArrayLike, "n_frames"]) -> tuple[Array, Array]:
        """(t [Å], std = 0 [Å]), each with the shape of ``theta``; the dtype follows ``theta``."""
        theta = _as_angles(theta)
        return jnp.full(theta.shape, self.t0, dtype=theta.dtype), jnp.zeros_like(theta)

    def apply(self, params, theta, *, key=None, n_samples=1):
        """t = t0 [Å], shape of ``theta`` (or (n_samples, n_frames) when ``key`` is given)."""
        return _sample_or_mean(*self.predict(params, theta), key, n_samples)


@dataclasses.dataclass(frozen=True)
class SingleThickness:
    """One learnable thickness t₀ = exp(log_t0) [Å] for all frames (``"single"`` / ``"constant"``).

    Attributes:
        t0: initial thickness [Å].
    """

    t0: float = 500.0

    def __post_init__(self):
        _check_positive("t0", self.t0)

    def init(self, key: PRNGKeyArray | None = None, *, dtype: Any = None) -> Params:
        """``{"log_t0": log(t0)}`` (scalar); ``key`` is ignored."""
        return {"log_t0": jnp.asarray(math.log(self.t0), dtype=_float_dtype(dtype))}

    def predict(self, params: Params, theta: Float[ArrayLike, "n_frames"]) -> tuple[Array, Array]:
        """(t [Å], std = 0 [Å]), each with the shape of ``theta``."""
        theta = _as_angles(theta)
        t = jnp.exp(params["log_t0"]) * jnp.ones_like(theta)
        return t, jnp.zeros_like(t)

    def apply(self, params, theta, *, key=None, n_samples=1):
        """t = t₀ [Å], shape of ``theta`` (or (n_samples, n_frames) when ``key`` is given)."""
        return _sample_or_mean(*self.predict(params, theta), key, n_samples)


@dataclasses.dataclass(frozen=True)
class PlateThickness:
    """Flat plate: t(θ) = t₀ / cos(θ − θ₀) [Å], with 1/cos capped at 1/cos(``max_tilt_deg``).

    Attributes:
        t0: initial thickness along the plate normal [Å] (learnable, stored as log_t0).
        theta0: initial (or fixed) tilt at which the beam is along the plate normal [rad].
        learn_theta0: θ₀ is a parameter (``params["theta0"]``) when True, the fixed ``theta0`` otherwise.
        max_tilt_deg: cap on |θ − θ₀| in the secant [deg], 0 < max_tilt_deg < 90.
    """

    t0: float = 500.0
    theta0: float = 0.0
    learn_theta0: bool = True
    max_tilt_deg: float = 80.0

    def __post_init__(self):
        _check_positive("t0", self.t0)
        _check_max_tilt(self.max_tilt_deg)

    def init(self, key: PRNGKeyArray | None = None, *, dtype: Any = None) -> Params:
        """``{"log_t0", ["theta0"]}`` (scalars); ``key`` is ignored."""
        dtype = _float_dtype(dtype)
        params = {"log_t0": jnp.asarray(math.log(self.t0), dtype=dtype)}
        if self.learn_theta0:
            params["theta0"] = jnp.asarray(self.theta0, dtype=dtype)
        return params

    def _secant(self, params: Params, theta: Array) -> Array:
        theta0 = params["theta0"] if self.learn_theta0 else self.theta0
        return _capped_secant(theta - theta0, self.max_tilt_deg)

    def predict(self, params: Params, theta: Float[ArrayLike, "n_frames"]) -> tuple[Array, Array]:
        """(t [Å], std = 0 [Å]), each with the shape of ``theta``."""
        theta = _as_angles(theta)
        t = jnp.exp(params["log_t0"]) * self._secant(params, theta)
        return t, jnp.zeros_like(t)

    def apply(self, params, theta, *, key=None, n_samples=1):
        """t = t₀/cos(θ − θ₀) [Å], shape of ``theta`` (or (n_samples, n_frames) when ``key`` is given)."""
        return _sample_or_mean(*self.predict(params, theta), key, n_samples)


@dataclasses.dataclass(frozen=True)
class TiltThickness:
    """Tilt correction between constant and flat plate: t(θ) = t₀ · [(1 − w) + w / cos(θ − θ₀)] [Å].

    w = sigmoid(logit_w) ∈ (0, 1): w → 0 gives a constant thickness t₀, w → 1 the flat plate.

    Attributes:
        t0: initial thickness at θ = θ₀ [Å] (learnable, stored as log_t0).
        theta0: initial (or fixed) tilt of the plate normal [rad].
        w_init: initial mixing weight, 0 < w_init < 1.
        learn_theta0: θ₀ is a parameter when True, the fixed ``theta0`` otherwise.
        max_tilt_deg: cap on |θ − θ₀| in the secant [deg].
    """

    t0: float = 500.0
    theta0: float = 0.0
    w_init: float = 0.5
    learn_theta0: bool = True
    max_tilt_deg: float = 80.0

    def __post_init__(self):
        _check_positive("t0", self.t0)
        _check_max_tilt(self.max_tilt_deg)
        if not 0.0 < self.w_init < 1.0:
            raise JaxedInputError(f"thickness option w_init={self.w_init!r}: expected 0 < w_init < 1")

    def init(self, key: PRNGKeyArray | None = None, *, dtype: Any = None) -> Params:
        """``{"log_t0", ["theta0"], "logit_w"}`` (scalars); ``key`` is ignored."""
        dtype = _float_dtype(dtype)
        params = {
            "log_t0": jnp.asarray(math.log(self.t0), dtype=dtype),
            "logit_w": jnp.asarray(_logit(self.w_init), dtype=dtype),
        }
        if self.learn_theta0:
            params["theta0"] = jnp.asarray(self.theta0, dtype=dtype)
        return params

    def predict(self, params: Params, theta: Float[ArrayLike, "n_frames"]) -> tuple[Array, Array]:
        """(t [Å], std = 0 [Å]), each with the shape of ``theta``."""
        theta = _as_angles(theta)
        theta0 = params["theta0"] if self.learn_theta0 else self.theta0
        w = jax.nn.sigmoid(params["logit_w"])
        secant = _capped_secant(theta - theta0, self.max_tilt_deg)
        t = jnp.exp(params["log_t0"]) * ((1.0 - w) + w * secant)
        return t, jnp.zeros_like(t)

    def apply(self, params, theta, *, key=None, n_samples=1):
        """t(θ) [Å], shape of ``theta`` (or (n_samples, n_frames) when ``key`` is given)."""
        return _sample_or_mean(*self.predict(params, theta), key, n_samples)


# --------------------------------------------------------------------------------------------------------------------
# ThicknessNN


class _ThicknessMLP(nnx.Module):
    """x (n, 1) → (n, 2): Linear layers with Tanh between them, a linear output (z_r, ℓ)."""

    def __init__(self, hidden: tuple[int, ...], *, param_dtype: Any, rngs: nnx.Rngs):
        self.n_hidden = len(hidden)
        sizes = (1, *hidden)
        for i in range(self.n_hidden):  # named attributes: string keys hidden_0, hidden_1, ... in the params
            setattr(self, f"hidden_{i}", nnx.Linear(sizes[i], sizes[i + 1], param_dtype=param_dtype, rngs=rngs))
        self.head = nnx.Linear(sizes[-1], 2, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        for i in range(self.n_hidden):
            x = jnp.tanh(getattr(self, f"hidden_{i}")(x))
        return self.head(x)


@functools.lru_cache(maxsize=16)
def _mlp_graphdef(hidden: tuple[int, ...]) -> nnx.GraphDef:
    """The static structure of the MLP (no arrays are allocated); parameters are merged into it in ``predict``."""
    abstract = nnx.eval_shape(lambda: _ThicknessMLP(hidden, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    return graphdef


@dataclasses.dataclass(frozen=True)
class ThicknessNN:
    """ThicknessNN: an MLP θ → (μ, log σ²) with μ mapped into [t_min, t_max] (formulas in the module docstring).

    Attributes:
        t_init: initial mean thickness μ(θ) [Å], t_min < t_init < t_max.
        t_min, t_max: range of the mean thickness [Å].
        sigma_min, sigma_max: range of the thickness spread σ [Å], 0 < sigma_min ≤ sigma_max.
        hidden: hidden-layer widths (the paper: two layers of 64).
        prior: add the quadratic prior q(x) = a x² + b x + c (a = exp(log_a) > 0) to the mean logit.
        prior_curvature_init: initial a (dimensionless, logit per unit x²) when ``prior`` is on.
        theta_scale: the MLP sees x = θ / theta_scale [rad].
    """

    t_init: float = 500.0
    t_min: float = 10.0
    t_max: float = 3000.0
    sigma_min: float = 1.0
    sigma_max: float = 100.0
    hidden: tuple[int, ...] = (64, 64)
    prior: bool = False
    prior_curvature_init: float = 1e-3
    theta_scale: float = math.pi / 2

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(n) for n in self.hidden))
        if not 0.0 <= self.t_min < self.t_init < self.t_max < math.inf:
            raise JaxedInputError(
                f"ThicknessNN: need 0 <= t_min < t_init < t_max < inf, got t_min={self.t_min}, "
                f"t_init={self.t_init}, t_max={self.t_max}"
            )
        if not 0.0 < self.sigma_min <= self.sigma_max < math.inf:
            raise JaxedInputError(
                f"ThicknessNN: need 0 < sigma_min <= sigma_max < inf, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )
        if not self.hidden or min(self.hidden) < 1:
            raise JaxedInputError(f"ThicknessNN: hidden={self.hidden!r}: expected one or more positive widths")
        _check_positive("prior_curvature_init", self.prior_curvature_init)
        _check_positive("theta_scale", self.theta_scale)

    def init(self, key: PRNGKeyArray | None = None, *, dtype: Any = None) -> Params:
        """Random MLP weights from ``key`` (required), initialised so that μ(θ) ≈ t_init.

        Returns:
            ``{"mlp": nested dict of kernels/biases, ["prior": {"log_a", "b", "c"}]}``.
        """
        if key is None:
            raise JaxedInputError("ThicknessNN.init needs a PRNG key (jax.random.key(seed))")
        dtype = _float_dtype(dtype)
        module = _ThicknessMLP(self.hidden, param_dtype=dtype, rngs=nnx.Rngs(params=key))
        mlp = nnx.to_pure_dict(nnx.state(module))
        z_init = _logit((self.t_init - self.t_min) / (self.t_max - self.t_min))
        head = mlp["head"]
        head["kernel"] = head["kernel"].at[:, 0].set(0.0)
        head["bias"] = head["bias"].at[0].set(0.0 if self.prior else z_init)
        params = {"mlp": mlp}
        if self.prior:
            params["prior"] = {
                "log_a": jnp.asarray(math.log(self.prior_curvature_init), dtype=dtype),
                "b": jnp.asarray(0.0, dtype=dtype),
                "c": jnp.asarray(z_init, dtype=dtype),
            }
        return params

    def logits(self, params: Params, theta: Float[ArrayLike, "n_frames"]) -> tuple[Array, Array]:
        """The unbounded outputs (z, ℓ) with the shape of ``theta``: mean logit (prior + residual) and spread logit."""
        theta = _as_angles(theta)
        x = theta / self.theta_scale
        mlp = nnx.merge(_mlp_graphdef(self.hidden), params["mlp"])
        out = mlp(x.reshape(-1, 1))
        z = out[:, 0].reshape(theta.shape)
        ell = out[:, 1].reshape(theta.shape)
        if self.prior:
            prior = params["prior"]
            z = z + jnp.exp(prior["log_a"]) * x**2 + prior["b"] * x + prior["c"]
        return z, ell

    def predict(self, params: Params, theta: Float[ArrayLike, "n_frames"]) -> tuple[Array, Array]:
        """(μ [Å] in (t_min, t_max), σ [Å] in [σ_min, σ_max]), each with the shape of ``theta`` [rad]."""
        z, ell = self.logits(params, theta)
        mu = self.t_min + (self.t_max - self.t_min) * jax.nn.sigmoid(z)
        log_var_min, log_var_max = 2.0 * math.log(self.sigma_min), 2.0 * math.log(self.sigma_max)
        log_var = log_var_min + (log_var_max - log_var_min) * jax.nn.sigmoid(ell)
        return mu, jnp.exp(0.5 * log_var)

    def apply(self, params, theta, *, key=None, n_samples=1):
        """μ(θ) [Å] (shape of ``theta``), or with ``key`` ``n_samples`` draws μ + σ·ε, (n_samples, n_frames)."""
        return _sample_or_mean(*self.predict(params, theta), key, n_samples)


# --------------------------------------------------------------------------------------------------------------------
# factory, warm start, checkpoints

_MODEL_CLASSES = {
    "kinematic": KinematicThickness,
    "single": SingleThickness,
    "constant": SingleThickness,
    "plate": PlateThickness,
    "tilt": TiltThickness,
    "nn": ThicknessNN,
}


def make_thickness_model(name: str, **options: Any) -> ThicknessModel:
    """The thickness model called ``name`` (one of :data:`THICKNESS_MODELS`) configured with ``options``.

    Options are the fields of the model's dataclass, e.g. ``make_thickness_model("single", t0=820.0)``,
    ``make_thickness_model("plate", t0=600.0, learn_theta0=False)``,
    ``make_thickness_model("nn", t_init=800.0, t_min=100.0, t_max=3000.0, prior=True)``.
    """
    cls = _MODEL_CLASSES.get(name)
    if cls is None:
        raise JaxedInputError(f"thickness model '{name}': expected one of {', '.join(THICKNESS_MODELS)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise JaxedInputError(
            f"thickness model '{name}': unknown option(s) {', '.join(unknown)}; "
            f"expected {', '.join(sorted(fields))}"
        )
    return cls(**options)


@functools.partial(jax.jit, static_argnames=("model", "steps"))
def _fit(model: ThicknessModel, params: Params, theta: Array, t_target: Array, steps: int, lr: Array) -> Params:
    optimizer = optax.adam(lr)

    def loss_fn(p):
        return jnp.mean((model.apply(p, theta) / t_target - 1.0) ** 2)

    def step(carry, _):
        p, opt_state = carry
        grads = jax.grad(loss_fn)(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    return params


def fit_to_profile(
    model: ThicknessModel,
    params: Params,
    theta: Float[ArrayLike, "n_frames"],
    t_target: Float[ArrayLike, "n_frames"],
    steps: int = 2000,
    lr: float = 1e-2,
) -> Params:
    """Pre-train ``model`` to a thickness profile (warm start) with ``steps`` full-batch Adam steps.

    The loss is the mean squared relative error mean((t(θ)/t_target − 1)²), using the mean thickness.

    Args:
        model: any thickness model.
        params: starting parameters (``model.init(key)``).
        theta: tilt angles [rad], (n_frames,).
        t_target: target thicknesses [Å], (n_frames,), all > 0.
        steps: number of Adam steps (static: one compilation per value).
        lr: Adam learning rate.

    Returns:
        The fitted params (same structure as ``params``).
    """
    theta = _as_angles(theta)
    t_target = jnp.asarray(t_target, dtype=theta.dtype)
    if t_target.shape != theta.shape:
        raise JaxedInputError(f"fit_to_profile: t_target shape {t_target.shape} != theta shape {theta.shape}")
    if steps < 0:
        raise JaxedInputError(f"fit_to_profile: steps={steps}: expected >= 0")
    if not bool(jnp.all(t_target > 0)):
        raise JaxedInputError("fit_to_profile: t_target must be > 0 everywhere [Å]")
    return _fit(model, params, theta, t_target, int(steps), jnp.asarray(lr, dtype=theta.dtype))


def _path_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def params_to_flat(params: Params) -> dict[str, np.ndarray]:
    """Flat ``{"mlp/head/kernel": array, ...}`` copy of ``params`` as numpy arrays, for ``np.savez(file, **flat)``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    return {_path_name(path): np.asarray(leaf) for path, leaf in leaves}


def params_from_flat(model: ThicknessModel, flat: dict[str, np.ndarray]) -> Params:
    """Params of ``model`` rebuilt from :func:`params_to_flat` output (e.g. ``dict(np.load(file))``).

    The structure comes from ``model.init`` (traced abstractly, nothing is computed); keys and shapes must match
    exactly, values and dtypes are taken from ``flat`` unchanged.
    """
    template = jax.eval_shape(lambda: model.init(jax.random.key(0)))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [_path_name(path) for path, _ in leaves]
    missing, extra = sorted(set(names) - set(flat)), sorted(set(flat) - set(names))
    if missing or extra:
        raise JaxedInputError(
            f"thickness checkpoint does not match {type(model).__name__}: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}"
        )
    values = []
    for name, (_, abstract) in zip(names, leaves):
        value = np.asarray(flat[name])
        if value.shape != abstract.shape:
            raise JaxedInputError(
                f"thickness checkpoint entry '{name}': shape {value.shape}, expected {abstract.shape}"
            )
        values.append(jnp.asarray(value))
    return jax.tree_util.tree_unflatten(treedef, values)
