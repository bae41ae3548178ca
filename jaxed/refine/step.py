"""The first-order optimisers of a refinement as optax transformations and one jitted step.

    optimizer = make_optimizer(config, params)                  # Adam per group (schedules, warm-up) or L-BFGS
    step = make_step(loss_and_intensities, optimizer, key=key, stochastic=..., units=lbfgs_units(config, params))
    state = init_state(optimizer, params)
    state, info = step(state)                                   # info: StepInfo, the same fields every call

Adam runs one ``optax.adam`` per top-level parameter group (``optax.multi_transform``), each at its own rate
(``config.lr_groups``; 0 freezes the group), optionally with a cosine schedule and a linear warm-up. L-BFGS
(``optax.lbfgs``, zoom line search) works in rate units: its variables are x = p / rate per group, a fixed diagonal
preconditioner that puts angles [rad], shifts and network weights on one scale, and its first trial step has the
length of Adam's first step in those units, √(free parameters). docs/OPTIMIZERS.md records why.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxed.errors import JaxedInputError
from jaxed.refine.checkpoints import strong

__all__ = ["StepState", "StepInfo", "make_optimizer", "lbfgs_units", "init_state", "make_step"]


class StepState(NamedTuple):
    """What a step carries to the next.

    Attributes:
        params: the parameter pytree (group → leaves).
        opt_state: the optax state of the optimiser (its own pytree).
        count: () int32, steps taken so far (the epoch); a stochastic loss draws with fold_in(key, count).
    """

    params: dict
    opt_state: object
    count: jax.Array


class StepInfo(NamedTuple):
    """What one step reports, always these fields.

    Attributes:
        loss: () the loss at the incoming parameters.
        finite: () bool, whether that loss and every gradient entry are finite (False: do not use the new state).
        intensities: (n_frames, n_refl) unscaled intensities at the incoming parameters that the loss was computed
            from; NaN when the step did not compute them so (a minibatch or thickness draws, L-BFGS).
    """

    loss: jax.Array
    finite: jax.Array
    intensities: jax.Array


def _rates(config, params) -> dict:
    rates = dict(config.lr_groups)
    unknown = set(rates) - set(params)
    if unknown:
        raise JaxedInputError(f"lr_groups: unknown parameter groups {sorted(unknown)} (have {sorted(params)})")
    return {g: float(rates.get(g, config.lr)) for g in params}


def lbfgs_units(config, params) -> dict[str, float]:
    """Scale of L-BFGS's variables per parameter group (x = p / unit): the group's rate with lbfgs_metric 'rates'
    (0: frozen), 1 with 'identity'."""
    rates = _rates(config, params)
    return {g: 1.0 if config.lbfgs_metric == "identity" else rates[g] for g in params}


def make_optimizer(config, params) -> optax.GradientTransformation:
    """The optax optimiser of ``config`` ('adam' or 'lbfgs') for a parameter pytree shaped like ``params``.

    Adam: per top-level group ``optax.adam(rate)`` (``optax.set_to_zero`` at rate 0), the rate decayed by
    ``lr_schedule='cosine'`` to 5 % over ``epochs`` and ramped over the first ``lr_warmup`` steps (step k from 0 at
    (k + 1) / lr_warmup). L-BFGS: ``optax.lbfgs``, to be stepped in the units of :func:`lbfgs_units`; with
    lbfgs_metric 'rates' its first trial step has length √(free parameters) in those units.
    """
    rates = _rates(config, params)
    if config.optimizer == "lbfgs":
        if config.lbfgs_metric == "identity":
            return optax.lbfgs()
        # in rate units Adam's first step moves every free parameter by 1: a trial step of that length
        free = sum(int(np.size(x)) for g, u in lbfgs_units(config, params).items() if u > 0
                   for x in jax.tree_util.tree_leaves(params[g]))
        first = float(np.sqrt(max(free, 1)))
        return optax.lbfgs(learning_rate=lambda count: jnp.where(count == 0, first, 1.0))

    def rate(value):
        if config.lr_schedule == "cosine":
            value = optax.cosine_decay_schedule(value, max(config.epochs, 1), alpha=0.05)
        warmup = config.lr_warmup
        if warmup > 0:  # step k (from 0) at (k + 1) / warmup of the scheduled rate, then the schedule itself
            scheduled = value if callable(value) else optax.constant_schedule(value)
            return lambda step: scheduled(step) * jnp.minimum(1.0, (step + 1.0) / warmup)
        return value

    transforms = {g: (optax.set_to_zero() if rates[g] == 0 else optax.adam(rate(rates[g]))) for g in params}
    labels = {g: jax.tree_util.tree_map(lambda _, g=g: g, sub) for g, sub in params.items()}
    return optax.multi_transform(transforms, labels)


def init_state(optimizer: optax.GradientTransformation, params, count: int = 0) -> StepState:
    """The step state at ``params`` (explicit dtypes, so that the jitted step compiles once)."""
    return StepState(strong(params), strong(optimizer.init(params)), jnp.asarray(count, jnp.int32))


def _all_finite(value, grads) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(grads)
    return jnp.isfinite(value) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in leaves]))


def make_step(loss: Callable, optimizer: optax.GradientTransformation, *, key: jax.Array, stochastic: bool = False,
              units: dict | None = None) -> Callable:
    """The jitted step ``step(state: StepState) -> (StepState, StepInfo)``; compiles once.

    Args:
        loss: ``loss(params, key) -> (value, intensities)`` (jaxed.refine.problem.make_loss_and_intensities).
        optimizer: from :func:`make_optimizer`.
        key: PRNG key; a stochastic loss gets ``fold_in(key, state.count)`` (reproducible across a resume).
        stochastic: whether the loss takes the key (minibatch or thickness draws); otherwise it gets None.
        units: None for a first-order optimiser (Adam: one value and gradient per step); for L-BFGS the per-group
            units of its variables (:func:`lbfgs_units`) — the step then runs optax's line search in x = p / unit,
            and a group at unit 0 is frozen (x = p, no gradient reaches it).
    """
    if units is None:
        def step(state):
            sub = jax.random.fold_in(key, state.count) if stochastic else None
            (value, i_calc), grads = jax.value_and_grad(loss, has_aux=True)(state.params, sub)
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            new = StepState(optax.apply_updates(state.params, updates), opt_state, state.count + 1)
            return new, StepInfo(value, _all_finite(value, grads), i_calc)

        return jax.jit(step)

    def to_params(x):  # frozen groups stay where they are: no gradient reaches them
        return {g: jax.tree_util.tree_map(lambda v, u=units[g]: v * u if u > 0 else jax.lax.stop_gradient(v), sub)
                for g, sub in x.items()}

    def loss_x(x):
        return loss(to_params(x), None)[0]

    def step(state):
        x = {g: jax.tree_util.tree_map(lambda v, u=units[g]: v / u if u > 0 else v, sub)
             for g, sub in state.params.items()}
        value, grads = optax.value_and_grad_from_state(loss_x)(x, state=state.opt_state)
        updates, opt_state = optimizer.update(grads, state.opt_state, x, value=value, grad=grads, value_fn=loss_x)
        shape = jax.eval_shape(lambda p: loss(p, None)[1], state.params)
        info = StepInfo(value, _all_finite(value, grads), jnp.full(shape.shape, jnp.nan, shape.dtype))
        return StepState(to_params(optax.apply_updates(x, updates)), opt_state, state.count + 1), info

    return jax.jit(step)
