"""Second-order refinement: Gauss–Newton and Levenberg–Marquardt on the weighted residual vector, dense or matrix-free,
and a hybrid schedule (Adam for the thickness network, LM for the structure).

The residual vector r(p) is :func:`jaxed.refine.objective.residual_vector` of the closed-form-scaled intensities with
``normalize=True``, so that Σ r² = wR_all² (PHYSICS.md §7.1; the per-frame scales are eliminated at every evaluation,
i.e. variable projection: r depends on p also through k(p)). With the cost C = ½ Σ r², the Jacobian J = ∂r/∂p and
g = Jᵀr, one iteration solves

    (JᵀJ + λ D) δ = −g,      D = diag(JᵀJ) (Marquardt's scaling),

with λ = 0 for Gauss–Newton (then a pseudo-inverse, eigenvalues below ``rcond`` of the largest dropped, and a
backtracking line search along δ) and λ > 0 adapted by the gain ratio ρ = ΔC_actual / ΔC_predicted for LM
(Nielsen's rule, with a faster fall: accepted, λ ← λ·max(1/10, 1 − (2ρ − 1)³); rejected, λ ← λ·ν, ν ← 2ν; a
rejection costs one cost evaluation, the eigendecomposition being reused). The dense solve works in the scaled variables (D^(−½) JᵀJ D^(−½) has unit diagonal, so λ is dimensionless)
and reuses one eigendecomposition per iteration for every λ tried.

Jacobian (``jacobian='auto'``): forward mode (one JVP per parameter) unless there are more than REV_COST_RATIO
parameters per residual, reverse mode (one VJP per residual) then; above ``matrix_free_above`` parameters the step is
found matrix-free by conjugate gradients on (JᵀJ + λ μ I) δ = −Jᵀr with products J v (``jax.linearize``) and Jᵀ u (``jax.vjp``), where μ is
a Hutchinson estimate of mean(diag JᵀJ) — J is never formed.

Convergence on relative change: an accepted step that lowers the cost by less than ``ftol`` of its value, or whose
length is below ``xtol``·(‖p‖ + xtol), ends the run; so does λ above 1e16 (no descent possible).

Observations are an argument of every jitted function, so the same compiled code serves many noise realisations.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxed.refine import objective
from jaxed.errors import JaxedInputError
from jaxed.settings import field_default
from jaxed.refine.problem import make_loss
from jaxed.refine.checkpoints import RefinementDiverged, load_checkpoint, save_checkpoint, strong as _strong

__all__ = ["LSQSettings", "LeastSquares", "make_residuals", "make_least_squares", "refined_groups", "least_squares",
           "run_least_squares", "hybrid"]

JACOBIAN_MODES = ("auto", "fwd", "rev", "cg")
REV_COST_RATIO = 4.0  # 'auto': reverse mode only above this many parameters per residual


@dataclasses.dataclass(frozen=True)
class LSQSettings:
    """Settings of a Gauss–Newton / Levenberg–Marquardt run (static).

    Attributes:
        method: 'gn' (undamped, line search) or 'lm' (adaptive damping).
        jacobian: 'auto' | 'fwd' | 'rev' | 'cg' (matrix-free conjugate gradients).
        max_iter: iterations (accepted or not).
        ftol: stop when an accepted step lowers the cost ½Σr² by less than this fraction of it.
        xtol: stop when ‖δ‖ ≤ xtol (‖p‖ + xtol).
        damping: initial λ of LM (dimensionless, relative to the unit diagonal of the scaled normal matrix).
        rcond: eigenvalues of the scaled normal matrix below rcond × the largest are treated as 0 (GN).
        matrix_free_above: 'auto' switches to CG above this many parameters.
        cg_max_iter, cg_tol: conjugate-gradient limits (relative residual).
    """

    method: str = "lm"
    jacobian: str = field_default("RefineConfig.lsq_jacobian")
    max_iter: int = 50
    ftol: float = field_default("RefineConfig.lsq_ftol")
    xtol: float = 1e-10
    damping: float = field_default("RefineConfig.lsq_damping")
    rcond: float = 1e-12
    matrix_free_above: int = 3000
    cg_max_iter: int = 100
    cg_tol: float = 1e-8

    def __post_init__(self):
        if self.method not in ("gn", "lm"):
            raise JaxedInputError(f"least squares method '{self.method}': expected gn or lm")
        if self.jacobian not in JACOBIAN_MODES:
            raise JaxedInputError(f"jacobian '{self.jacobian}': expected one of {', '.join(JACOBIAN_MODES)}")
        if self.max_iter < 0 or not (self.ftol >= 0 and self.xtol >= 0 and self.damping > 0):
            raise JaxedInputError(f"least squares: max_iter = {self.max_iter}, ftol = {self.ftol}, xtol = {self.xtol}, "
                                  f"damping = {self.damping}: expected max_iter ≥ 0, tolerances ≥ 0, damping > 0")


def refined_groups(config, params, groups=None) -> tuple[str, ...]:
    """The parameter groups a least-squares run refines: ``groups``, or every group of ``params`` not frozen by
    ``config.lr_groups`` (rate 0)."""
    if groups is None:
        rates = dict(config.lr_groups)
        groups = tuple(g for g in params if rates.get(g, config.lr) != 0)
    unknown = set(groups) - set(params)
    if unknown:
        raise JaxedInputError(f"least squares: unknown parameter groups {sorted(unknown)} (have {sorted(params)})")
    return tuple(groups)


def make_residuals(intensities: Callable, kind: str = "paper") -> Callable:
    """``residuals(params, obs) -> (n_frames · n_refl,)``: the weighted residual vector of ``kind`` ('paper' or
    'jana') of the intensities ``intensities(params) -> (n_frames, n_refl)`` at their closed-form frame scales,
    normalised so that Σ r² = wR_all² (PHYSICS.md §7.1); masked entries are 0."""
    def residuals(params, obs: objective.Observations) -> jax.Array:
        i_calc = intensities(params)
        k = objective.frame_scales(i_calc, obs, kind=kind)
        return objective.residual_vector(k[:, None] * i_calc, obs, kind, normalize=True)

    return residuals


def model_tangent_bytes(model) -> Callable:
    """``bytes(mode, dtype)``: memory of one JVP ('fwd') or VJP ('rev') of a refinement model's forward, all frames
    (jaxed.model.batching.bytes_per_frame: a tangent carries about a forward's intermediates, a cotangent a
    gradient's)."""
    from jaxed.model import batching

    exp = model.experiment

    def size(mode: str, dtype) -> float:
        complex_bytes = 16 if dtype == jnp.float64 else 8  # the parameters' precision is the model's
        return exp.n_frames * batching.bytes_per_frame(exp.matrix_size, int(np.shape(exp.sample_rotations)[1]),
                                                       gradient=mode == "rev", complex_bytes=complex_bytes,
                                                       absorption=model.bloch.absorbing)

    return size


def make_least_squares(model, obs: objective.Observations, config, groups=None, *, jacobian: str | None = None,
                       matrix_free_above: int = 3000) -> LeastSquares:
    """The :class:`LeastSquares` of a refinement model (jaxed.refine.problem.make_model) on ``obs``: residuals of
    ``config.residual``, the groups not frozen by ``config.lr_groups`` (or ``groups``), memory per tangent from the
    model. ``jacobian`` defaults to ``config.lsq_jacobian``."""
    if config.per_frame_mean or config.minibatch or config.thickness_samples > 1:
        raise JaxedInputError("Gauss-Newton / LM need the plain wR_all of all frames: no per_frame_mean, "
                              "minibatch or thickness_samples")
    params = model.init(jax.random.PRNGKey(config.seed))
    return LeastSquares(make_residuals(model.intensities, config.residual), params, obs,
                        refined_groups(config, params, groups), kind=config.residual,
                        jacobian=config.lsq_jacobian if jacobian is None else jacobian,
                        matrix_free_above=matrix_free_above, tangent_bytes=model_tangent_bytes(model))


class LeastSquares:
    """A residual function over a flat vector of the refined parameter groups, with its Jacobian.

    Args:
        residuals: ``residuals(params, obs) -> (n_residuals,)`` (e.g. :func:`make_residuals`), pure.
        params: a parameter pytree ``{group: subtree}`` (its layout; the values are not used).
        obs: the observations (shape of the residual vector; the default of :func:`least_squares`).
        groups: top-level groups refined; the others are held fixed at the values passed to each call.
        jacobian: 'auto' | 'fwd' | 'rev' | 'cg' (matrix-free conjugate gradients).
        matrix_free_above: 'auto' picks 'cg' above this many parameters.
        tangent_bytes: ``bytes(mode, dtype)`` of one JVP / VJP (:func:`model_tangent_bytes`), to form J in chunks
            that fit the memory; None: all at once.
        kind: the residual kind of ``residuals`` when they are :func:`make_residuals`' ('paper' | 'jana'): fixes
            the normalisation Σ r² = wR² that the covariance's χ² undoes (jaxed.refine.uncertainty).
    """

    def __init__(self, residuals: Callable, params: dict, obs: objective.Observations, groups, *,
                 jacobian: str = "auto", matrix_free_above: int = 3000, tangent_bytes: Callable | None = None,
                 kind: str = "paper"):
        if jacobian not in JACOBIAN_MODES:
            raise JaxedInputError(f"jacobian '{jacobian}': expected one of {', '.join(JACOBIAN_MODES)}")
        self.residual_fn, self.obs, self.tangent_bytes, self.kind = residuals, obs, tangent_bytes, kind
        self._template = params
        self.groups = tuple(groups)
        if not self.groups:
            raise JaxedInputError("least squares: every parameter group is frozen")
        x0, self._unravel = ravel_pytree({g: params[g] for g in self.groups})
        self.n_params = int(x0.size)
        self.n_residuals = int(np.prod(obs.shape))
        self.matrix_free_above = matrix_free_above
        if jacobian == "auto":
            if self.n_params > matrix_free_above:
                jacobian = "cg"
            else:
                # a reverse-mode row costs several forward-mode columns here (docs/OPTIMIZERS.md), so forward mode
                # is kept until P > REV_COST_RATIO · N_residuals
                jacobian = "fwd" if self.n_params <= REV_COST_RATIO * self.n_residuals else "rev"
        self.jacobian_mode = jacobian
        self.jacobian_chunk = self._chunk(jacobian, x0.dtype)
        self.residuals = jax.jit(self._residuals)
        self.cost = jax.jit(lambda x, fixed, obs: 0.5 * jnp.sum(self._residuals(x, fixed, obs) ** 2))
        self.jacobian = jax.jit(self._fwd_jacobian if jacobian == "fwd" else self._rev_jacobian)
        self._cg_solve = jax.jit(self._cg_solve_impl, static_argnames=("max_iter", "tol"))

    def dense(self) -> LeastSquares:
        """This residual function with a formed Jacobian ('fwd' or 'rev' by size, never 'cg'): itself when it has
        one (for the covariance, which needs JᵀJ)."""
        if self.jacobian_mode != "cg":
            return self
        return LeastSquares(self.residual_fn, self._template, self.obs, self.groups, jacobian="auto",
                            matrix_free_above=10**9, tangent_bytes=self.tangent_bytes, kind=self.kind)

    # One forward pass serves both r and J: the Bloch-wave eigh appears once in the program (two independent
    # batched eigh calls in one program can deadlock the CPU intra-op pool: docs/OPTIMIZERS.md)
    def _fwd_jacobian(self, x, fixed, obs):
        r, jvp = jax.linearize(lambda y: self._residuals(y, fixed, obs), x)
        eye = jnp.eye(x.size, dtype=x.dtype)
        if self.jacobian_chunk < x.size:  # columns in chunks: each tangent carries a forward's working set
            return r, jax.lax.map(jvp, eye, batch_size=self.jacobian_chunk).T
        return r, jax.vmap(jvp, out_axes=1)(eye)

    def _rev_jacobian(self, x, fixed, obs):
        r, vjp = jax.vjp(lambda y: self._residuals(y, fixed, obs), x)
        eye = jnp.eye(r.size, dtype=r.dtype)
        if self.jacobian_chunk < r.size:
            return r, jax.lax.map(lambda u: vjp(u)[0], eye, batch_size=self.jacobian_chunk)
        return r, jax.vmap(lambda u: vjp(u)[0])(eye)

    def _chunk(self, mode: str, dtype) -> int:
        """JVPs (or VJPs) evaluated at once when J is formed: all of them when their working sets fit in
        batching.MEMORY_FRACTION of the device memory, else chunks (``lax.map``; docs/OPTIMIZERS.md)."""
        count = self.n_params if mode == "fwd" else self.n_residuals
        if self.tangent_bytes is None:
            return count
        from jaxed.model import batching

        per = self.tangent_bytes(mode, dtype)
        budget = batching.MEMORY_FRACTION * batching.available_memory()
        return int(max(1, min(count, budget // max(per, 1))))

    # -------------------------------------------------------------------------------------------- pytree <-> flat
    def split(self, params: dict) -> tuple[jax.Array, dict]:
        """(flat vector of the refined groups, dict of the fixed groups)."""
        x, _ = ravel_pytree({g: params[g] for g in self.groups})
        return x, {g: v for g, v in params.items() if g not in self.groups}

    def merge(self, x: jax.Array, fixed: dict) -> dict:
        """The full parameter dict of a flat vector and the fixed groups."""
        return {**fixed, **self._unravel(x)}

    def parameter_labels(self) -> list[str]:
        """A label per entry of the flat vector: 'group/path[i]'."""
        template = self._unravel(jnp.arange(self.n_params, dtype=jnp.float64 if jax.config.jax_enable_x64
                                            else jnp.float32))
        labels = [""] * self.n_params
        for path, leaf in jax.tree_util.tree_leaves_with_path(template):
            name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            flat = np.asarray(leaf).reshape(-1)
            for j, pos in enumerate(flat):
                labels[int(pos)] = f"{name}[{j}]" if flat.size > 1 or np.ndim(leaf) else name
        return labels

    # ------------------------------------------------------------------------------------------------ residuals
    def _residuals(self, x: jax.Array, fixed: dict, obs: objective.Observations) -> jax.Array:
        """The residual vector at the flat vector ``x`` with the fixed groups ``fixed``."""
        return self.residual_fn(self.merge(x, fixed), obs)

    # ------------------------------------------------------------------------------------------ matrix-free step
    def _cg_solve_impl(self, x, fixed, obs, lam, key, max_iter: int, tol: float):
        """δ solving (JᵀJ + λμI) δ = −Jᵀr by CG with J v / Jᵀ u products; returns (δ, r, predicted decrease, μ)."""
        r, jvp = jax.linearize(lambda y: self._residuals(y, fixed, obs), x)
        vjp = jax.linear_transpose(jvp, x)  # Jᵀu from the same linearisation: one eigh in the program (see above)
        g = vjp(r)[0]
        probes = jax.random.rademacher(key, (4, x.size), dtype=x.dtype)
        mu = jnp.mean(jax.vmap(lambda v: jnp.sum(jvp(v) ** 2))(probes)) / x.size  # Hutchinson: tr(JᵀJ)/n
        mu = jnp.maximum(mu, jnp.finfo(x.dtype).tiny)
        shift = lam * mu
        normal = lambda v: vjp(jvp(v))[0] + shift * v  # noqa: E731
        delta, _ = jax.scipy.sparse.linalg.cg(normal, -g, tol=tol, maxiter=max_iter)
        jd = jvp(delta)
        predicted = -(jnp.dot(g, delta) + 0.5 * jnp.dot(jd, jd))
        return delta, r, predicted, mu


@dataclasses.dataclass
class LSQResult:
    """Outcome of :func:`least_squares`: x, the history, the reason it stopped and the evaluations used."""

    x: np.ndarray
    history: list
    reason: str
    n_jacobians: int
    n_evaluations: int


def _scaled_eigen(jtj: np.ndarray):
    d = np.diag(jtj).copy()
    dmax = d.max(initial=0.0)
    floor = max(dmax * 1e-14, np.finfo(float).tiny)
    scale = 1.0 / np.sqrt(np.maximum(d, floor))
    w, v = np.linalg.eigh(jtj * scale[:, None] * scale[None, :])
    return scale, np.maximum(w, 0.0), v


def _dense_step(scale, w, v, g, lam, rcond):
    """δ of (JᵀJ + λD)δ = −g through the scaled eigendecomposition, eigenvalues < rcond·max dropped (λ = 0: the
    pseudo-inverse). The drop matters for LM too: a direction of (numerically) zero curvature has no gradient either,
    but rounding leaves a component that 1/λ would turn into a huge step along a parameter the data do not see."""
    gs = v.T @ (scale * g)
    keep = w > rcond * w.max(initial=0.0)
    coef = np.where(keep, gs / np.where(keep, w + lam, 1.0), 0.0)
    return -scale * (v @ coef)


def least_squares(lsq: LeastSquares, x0, fixed: dict, obs: objective.Observations | None = None,
                  settings: LSQSettings = LSQSettings(), *, callback: Callable | None = None,
                  seed: int = 0) -> LSQResult:
    """Minimise ½‖r(x)‖² from ``x0`` with Gauss–Newton or Levenberg–Marquardt (see the module docstring).

    Args:
        lsq: the residual function and its Jacobian.
        x0: flat starting vector (``lsq.split(params)[0]``); fixed: the fixed groups.
        obs: observations (default: ``lsq.obs``).
        callback: called as ``callback(iteration, x, entry)`` after each accepted step (entry: its history dict).

    Returns:
        :class:`LSQResult`; each history entry has the iteration, wR_all (= √(2C)), λ, the step length and whether
        the step was accepted.
    """
    obs = lsq.obs if obs is None else obs
    x = jnp.asarray(x0)
    cost = float(lsq.cost(x, fixed, obs))
    n_jac, n_eval = 0, 1
    if not np.isfinite(cost):
        raise JaxedInputError("least squares: the starting cost is not finite")
    lam = settings.damping if settings.method == "lm" else 0.0
    nu = 2.0
    history: list = []
    reason = "max_iter"
    key = jax.random.PRNGKey(seed)
    matrix_free = lsq.jacobian_mode == "cg"
    t0 = time.perf_counter()
    for it in range(settings.max_iter):
        if matrix_free:
            key, sub = jax.random.split(key)

            def propose(lam_try, x=x, sub=sub):
                d, _, pred, _ = lsq._cg_solve(x, fixed, obs, jnp.asarray(max(lam_try, 1e-12)), sub,
                                             max_iter=settings.cg_max_iter, tol=settings.cg_tol)
                return np.asarray(d), float(pred)
            n_jac += 1
        else:
            r, jac = lsq.jacobian(x, fixed, obs)
            n_jac += 1
            jac = np.asarray(jac)
            r = np.asarray(r)
            if not (np.all(np.isfinite(jac)) and np.all(np.isfinite(r))):
                reason = "non-finite Jacobian"
                break
            g = jac.T @ r
            scale, w, v = _scaled_eigen(jac.T @ jac)

            def propose(lam_try, g=g, jac=jac, scale=scale, w=w, v=v):
                d = _dense_step(scale, w, v, g, lam_try, settings.rcond)
                jd = jac @ d
                return d, float(-(g @ d + 0.5 * jd @ jd))
        accepted = False
        if settings.method == "gn":
            delta, predicted = propose(0.0)
            step = 1.0
            for _ in range(12):  # backtracking: halve until the cost decreases
                trial = x + step * jnp.asarray(delta)
                new_cost = float(lsq.cost(trial, fixed, obs))
                n_eval += 1
                if np.isfinite(new_cost) and new_cost < cost:
                    accepted = True
                    break
                step *= 0.5
            delta = step * delta
        else:
            for _ in range(30):
                delta, predicted = propose(lam)
                trial = x + jnp.asarray(delta)
                new_cost = float(lsq.cost(trial, fixed, obs))
                n_eval += 1
                rho = (cost - new_cost) / predicted if predicted > 0 else -1.0
                if np.isfinite(new_cost) and rho > 1e-4:
                    lam *= max(0.1, 1.0 - (2.0 * rho - 1.0) ** 3)
                    nu = 2.0
                    accepted = True
                    break
                lam *= nu
                nu *= 2.0
                if lam > 1e16:
                    break
        step_norm = float(np.linalg.norm(delta))
        if not accepted:
            history.append({"iteration": it, "loss": float(np.sqrt(2 * cost)), "damping": lam, "step": step_norm,
                            "accepted": False, "seconds": time.perf_counter() - t0,
                            "evaluations": n_eval, "jacobians": n_jac})
            reason = "no decrease"
            break
        decrease = cost - new_cost
        x, cost = trial, new_cost
        history.append({"iteration": it, "loss": float(np.sqrt(2 * cost)), "damping": lam, "step": step_norm,
                        "accepted": True, "seconds": time.perf_counter() - t0,
                        "evaluations": n_eval, "jacobians": n_jac})
        if callback is not None:
            callback(it, x, history[-1])
        if decrease <= settings.ftol * (cost + decrease):
            reason = "ftol"
            break
        if step_norm <= settings.xtol * (float(jnp.linalg.norm(x)) + settings.xtol):
            reason = "xtol"
            break
    return LSQResult(x=np.asarray(x), history=history, reason=reason, n_jacobians=n_jac, n_evaluations=n_eval)


def settings_from_config(config) -> LSQSettings:
    """The :class:`LSQSettings` of a :class:`jaxed.refine.optimize.RefineConfig` ('hybrid' uses LM for the structure)."""
    method = "gn" if config.optimizer == "gn" else "lm"
    return LSQSettings(method=method, jacobian=config.lsq_jacobian, max_iter=config.epochs, ftol=config.lsq_ftol,
                       damping=config.lsq_damping)


# ----------------------------------------------------------------------------------------------------- hybrid
def hybrid(model, obs: objective.Observations, config, params: dict, *, cycles: int, adam_steps: int = 10,
           lm_steps: int = 1, lr: float | None = None, settings: LSQSettings | None = None,
           callback: Callable | None = None):
    """Alternate Adam on the thickness model (structure fixed) and LM on everything else (thickness fixed).

    Args:
        model: the refinement model (jaxed.refine.problem.make_model); obs: the work-set observations;
            config: its RefineConfig (residual kind, lr / lr_groups); params: the starting parameters.

    Each cycle: ``adam_steps`` Adam steps on ``params['thickness']``, then ``lm_steps`` LM iterations on the other
    refined groups. The LM damping carries over between cycles. Returns (params, history, n_evaluations): cost
    evaluations of the LM trials plus Adam gradient steps; history entries carry the running counts of both and of
    the Jacobians (linearisations).
    """
    rates = dict(config.lr_groups)
    lr = rates.get("thickness", config.lr) if lr is None else lr
    settings = settings or LSQSettings(method="lm")
    others = tuple(g for g in refined_groups(config, params) if g != "thickness")
    lsq = make_least_squares(model, obs, config, others, jacobian=settings.jacobian,
                             matrix_free_above=settings.matrix_free_above)
    loss = make_loss(model, obs, config)
    opt = optax.adam(lr)

    def thickness_loss(thk, rest):
        return loss({**rest, "thickness": thk})

    @jax.jit
    def adam_step(thk, state, rest):
        value, grad = jax.value_and_grad(thickness_loss)(thk, rest)
        updates, state = opt.update(grad, state, thk)
        return optax.apply_updates(thk, updates), state, value

    thk = params["thickness"]
    state = opt.init(thk)
    history: list = []
    damping = settings.damping
    n_eval, n_grad, n_jac = 0, 0, 0
    t0 = time.perf_counter()
    for cycle in range(cycles):
        rest = {g: v for g, v in params.items() if g != "thickness"}
        if rates.get("thickness", config.lr) != 0:
            for _ in range(adam_steps):
                thk, state, _ = adam_step(thk, state, rest)
                n_grad += 1
        params = {**params, "thickness": thk}
        x, fixed = lsq.split(params)
        result = least_squares(lsq, x, fixed, None, dataclasses.replace(settings, max_iter=lm_steps, damping=damping,
                                                                         ftol=0.0))
        n_eval += result.n_evaluations
        n_jac += result.n_jacobians
        if result.history:
            damping = max(result.history[-1]["damping"], 1e-12)
        params = lsq.merge(jnp.asarray(result.x), fixed)
        loss_value = float(np.sqrt(2 * float(lsq.cost(jnp.asarray(result.x), fixed, obs))))
        history.append({"iteration": cycle, "loss": loss_value, "damping": damping,
                        "seconds": time.perf_counter() - t0,
                        "accepted": bool(result.history and result.history[-1]["accepted"]),
                        "evaluations": n_eval + n_grad, "jacobians": n_jac})
        if callback is not None:
            callback(cycle, params, loss_value)
        if len(history) > 1 and abs(history[-2]["loss"] - loss_value) <= settings.ftol * max(loss_value, 1e-300) and \
                result.reason in ("ftol", "xtol", "no decrease"):
            break
    return params, history, n_eval + n_grad


# ------------------------------------------------------------------------------------------------------ driver
def run_least_squares(model, obs: objective.Observations, config, params: dict, out: str | Path | None = None, *,
                      free: objective.Observations | None = None, resume: bool = False, progress: bool = True,
                      callback: Callable | None = None) -> tuple[dict, list]:
    """The 'gn' / 'lm' / 'hybrid' branch of :func:`jaxed.refine.optimize.run_refinement` (same outputs).

    Args:
        model: the refinement model; obs: the work set; config: its RefineConfig; params: the starting parameters;
            free: the R_free set (its R factors join each history entry).

    ``config.epochs`` caps the iterations (hybrid: the cycles); the run stops earlier on convergence. History
    entries: {epoch, loss (wR_all of the work set after the step), seconds, damping} and, with an R_free set,
    R_obs, wR_all, R_free, wR_free. A checkpoint (params; the damping as state) is written at the end.
    """
    out = None if out is None else Path(out)
    params = _strong(params)
    state = {"damping": jnp.asarray(float(config.lsq_damping))}
    history: list = []
    if resume:
        if out is None or not (out / "checkpoint.npz").exists():
            raise JaxedInputError(f"--resume: no checkpoint in {out}")
        params, state, history, _ = load_checkpoint(out, params, state)
    settings = dataclasses.replace(settings_from_config(config), damping=float(state["damping"]))
    start = len(history)
    t_prev = history[-1]["seconds"] if history else 0.0
    counted = {key: int(history[-1].get(key, 0)) if history else 0 for key in ("evaluations", "jacobians")}

    def record(i, p, loss, extra):
        entry = {"epoch": start + i, "loss": float(loss), "seconds": t_prev + extra["seconds"],
                 "damping": float(extra.get("damping", 0.0))}
        for key, before in counted.items():  # running counts, continued across --resume
            if key in extra:
                entry[key] = before + int(extra[key])
        if free is not None:
            s = objective.summary(model.intensities(p), obs, kind=config.residual, free=free)
            entry.update({k: s[k] for k in ("R_obs", "wR_all", "R_free", "wR_free")})
        history.append(entry)
        if progress:
            print(f"{config.optimizer} {start + i:4d}  wR_all {loss:.5f}" +
                  (f"  R_free {entry['R_free']:.4f}" if "R_free" in entry else ""), flush=True)
        if callback is not None:
            callback(start + i, p, float(loss))

    if config.optimizer == "hybrid":
        cycles = max(config.epochs - start, 0)
        log: list = []
        params, hist, _ = hybrid(model, obs, config, params, cycles=cycles, adam_steps=config.hybrid_adam_steps,
                                 settings=settings, callback=lambda i, p, loss: log.append((i, p, loss)))
        for (i, p, loss), h in zip(log, hist):
            record(i, p, loss, h)
        final_damping = hist[-1]["damping"] if hist else settings.damping
    else:
        lsq = make_least_squares(model, obs, config, jacobian=settings.jacobian,
                                 matrix_free_above=settings.matrix_free_above)
        x, fixed = lsq.split(params)
        settings = dataclasses.replace(settings, max_iter=max(config.epochs - start, 0))
        result = least_squares(lsq, x, fixed, None, settings, seed=config.seed,
                               callback=lambda i, xi, h: record(i, lsq.merge(xi, fixed), h["loss"], h))
        if result.reason == "non-finite Jacobian" and not result.history:
            raise RefinementDiverged("least squares: non-finite Jacobian at the start")
        params = lsq.merge(jnp.asarray(result.x), fixed)
        final_damping = result.history[-1]["damping"] if result.history else settings.damping
    params = _strong(params)
    if out is not None:
        save_checkpoint(out, params, {"damping": jnp.asarray(float(max(final_damping, 1e-12)))}, history, len(history))
    return params, history
