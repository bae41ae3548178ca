"""Joint refinement: one pytree of structure, thickness-model and orientation parameters, optax Adam or L-BFGS.

The objective is wR_all with the per-frame scales eliminated in closed form at every evaluation (jaxed.refine.objective).
Each parameter group can be frozen or given its own learning rate (``optax.multi_transform`` over the top-level
groups). Work is never lost: checkpoints (plain ``.npz`` + ``.json``, no pickle) every N steps and at the end,
``resume=True`` continues a killed run, and a non-finite loss or gradient stops the run with a message while the
last good checkpoint stays on disk.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxed.model import batching
from jaxed.refine import objective
from jaxed.physics.bloch import BlochSettings
from jaxed.physics.crystal import AtomParams, Crystal
from jaxed.errors import JaxedInputError
from jaxed.settings import field_default
from jaxed.model.experiment import Experiment, integrated_intensities, take_frames
from jaxed.model.parameters import StructureModel, make_structure_model
from jaxed.model.thickness import make_thickness_model

__all__ = ["RefineConfig", "Refinement", "RefinementDiverged", "run_refinement", "load_params", "save_params"]


def _strong(tree):
    """Leaves as JAX arrays with explicit (not weak) dtypes, so that a jitted step sees the same types every call."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


OPTIMIZERS = ("adam", "lbfgs", "gn", "lm", "hybrid")


class RefinementDiverged(RuntimeError):
    """A non-finite loss or gradient: the run stopped; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Settings of a refinement (static).

    Attributes:
        thickness_model: 'nn' | 'single' | 'kinematic' | 'plate' | 'tilt' | 'constant'.
        thickness_init: starting thickness [Å]; thickness_range: (t_min, t_max) for ThicknessNN [Å].
        nn_prior: ThicknessNN with the learnable quadratic prior.
        optimizer: 'adam' or 'lbfgs'.  epochs: optimiser steps.  lr: Adam learning rate (all groups).
        lr_groups: per-group learning rates, e.g. (("thickness", 0.02),); 0 freezes a group.
        lbfgs_metric: 'rates' — L-BFGS works in each group's units of its rate (lr_groups / lr: x = p / rate, a
            fixed diagonal preconditioner, so tilts in rad and shifts in Å are no longer one Euclidean ball), and
            its first trial step has the length of Adam's first step, √(free parameters) in those units; a 0 rate
            freezes the group. 'identity' — optax's L-BFGS as it is (the first trial step has unit length in the
            raw parameters, which costs a converged CsPbBr₃ polish 9 line-search evaluations).
        lr_schedule: 'constant' or 'cosine' (cosine decay to 5 % of each rate over ``epochs``; damps Adam's
            end-of-run oscillations).
        lr_warmup: Adam steps over which every rate ramps up linearly from 1/lr_warmup of itself (0: none). Its first
            steps move every parameter by about its full rate whatever the gradient's size; a run that starts from
            a refined model (``load_params``) otherwise climbs above its start before it descends again.
        refine_orientation: per-frame tilt corrections (two angles ⟂ beam) refined by gradient.
        orientation_angles: 2 (the tilts ⟂ beam) or 3 (also the rotation about the beam, which moves the rocking
            axis relative to the crystal and so changes the rocking-curve integration; PETS.md β errors).
        aniso: 'as-given' | 'all' | 'none'.  refine_occupancy.
        residual: 'paper' (the reference paper's wR_all) or 'jana' (|F|-based wR_all).
        per_frame_mean: minimise the root mean square of per-frame wR_all (every frame counts equally) instead of
            the wR_all of all reflections together.
        frame_loss: with per_frame_mean, 'rms' (sqrt of the mean of wR_f²) or 'mean' (the mean of wR_f: the
            published aggregate, which is what diffBloch minimises).
        minibatch: frames per Adam step, drawn without replacement each step (0: full batch).
        thickness_samples: ThicknessNN reparameterised draws per frame whose intensities are averaged (1: the mean).
        checkpoint_every: steps between checkpoints (0: only at the end).  seed: PRNG seed.
        keep_best: return the parameters of the lowest loss met — the start of any step, or the end (one more
            forward evaluation) — instead of the last step's (Adam and L-BFGS with a full-batch loss; a minibatch or
            thickness draws make the loss noisy, and the last step is returned). A rate too high for the end of a
            run (a continuation restarted without warm-up) then cannot leave the result above a point it passed.
        optimizer 'gn' / 'lm': Gauss–Newton / Levenberg–Marquardt on the weighted residual vector (jaxed.refine.lsq),
            ``epochs`` = the most iterations (stops earlier on relative change < lsq_ftol); 'hybrid': cycles of
            ``hybrid_adam_steps`` Adam steps on the thickness model and one LM step on everything else.
        lsq_jacobian: 'auto' | 'fwd' | 'rev' | 'cg' (matrix-free).  lsq_damping: initial LM λ.  lsq_ftol.
        r_free: fraction of the reflections (unique hkl, symmetry equivalents and Friedel mates together) or, with
            r_free_mode='frames', of the frames held out of the optimiser; R_free is reported beside R_obs/wR_all.
        r_free_seed: seed of that (reproducible) choice.
    """

    thickness_model: str = field_default("RefineConfig.thickness_model")
    thickness_init: float = field_default("RefineConfig.thickness_init")
    thickness_range: tuple = field_default("RefineConfig.thickness_range")
    nn_prior: bool = field_default("RefineConfig.nn_prior")
    optimizer: str = field_default("RefineConfig.optimizer")
    epochs: int = field_default("RefineConfig.epochs")
    lr: float = field_default("RefineConfig.lr")
    lr_groups: tuple = field_default("RefineConfig.lr_groups")
    lbfgs_metric: str = field_default("RefineConfig.lbfgs_metric")
    lr_schedule: str = field_default("RefineConfig.lr_schedule")
    lr_warmup: int = field_default("RefineConfig.lr_warmup")
    refine_orientation: bool = field_default("RefineConfig.refine_orientation")
    orientation_angles: int = field_default("RefineConfig.orientation_angles")
    aniso: str = field_default("RefineConfig.aniso")
    refine_occupancy: bool = field_default("RefineConfig.refine_occupancy")
    residual: str = field_default("RefineConfig.residual")
    per_frame_mean: bool = field_default("RefineConfig.per_frame_mean")
    frame_loss: str = field_default("RefineConfig.frame_loss")
    minibatch: int = field_default("RefineConfig.minibatch")
    thickness_samples: int = field_default("RefineConfig.thickness_samples")
    frames_per_batch: int = field_default("RefineConfig.frames_per_batch")  # frames per device step; 0: auto
    checkpoint_every: int = field_default("RefineConfig.checkpoint_every")
    seed: int = field_default("RefineConfig.seed")
    keep_best: bool = field_default("RefineConfig.keep_best")
    lsq_jacobian: str = field_default("RefineConfig.lsq_jacobian")
    lsq_damping: float = field_default("RefineConfig.lsq_damping")
    lsq_ftol: float = field_default("RefineConfig.lsq_ftol")
    hybrid_adam_steps: int = field_default("RefineConfig.hybrid_adam_steps")
    r_free: float = field_default("RefineConfig.r_free")
    r_free_mode: str = field_default("RefineConfig.r_free_mode")
    r_free_seed: int = field_default("RefineConfig.r_free_seed")

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise JaxedInputError(f"optimizer '{self.optimizer}': expected one of {', '.join(OPTIMIZERS)}")
        if not 0.0 <= self.r_free < 0.5 or self.r_free_mode not in ("reflections", "frames"):
            raise JaxedInputError(f"r_free = {self.r_free} ({self.r_free_mode}): expected a fraction in [0, 0.5) "
                                  "of 'reflections' or 'frames'")
        if self.optimizer in ("gn", "lm", "hybrid") and (self.minibatch or self.thickness_samples > 1
                                                         or self.per_frame_mean):
            raise JaxedInputError(f"{self.optimizer} needs the full-batch wR_all: no minibatch, thickness_samples "
                                  "or per_frame_mean")
        if self.lbfgs_metric not in ("rates", "identity"):
            raise JaxedInputError(f"lbfgs_metric '{self.lbfgs_metric}': expected 'rates' or 'identity'")
        if self.frame_loss not in ("rms", "mean"):
            raise JaxedInputError(f"frame_loss '{self.frame_loss}': expected 'rms' or 'mean'")
        if self.epochs < 0:
            raise JaxedInputError(f"epochs = {self.epochs}: expected ≥ 0")
        if not self.lr > 0:
            raise JaxedInputError(f"lr = {self.lr}: expected > 0")
        if self.optimizer == "lbfgs" and (self.minibatch or self.thickness_samples > 1):
            raise JaxedInputError("L-BFGS needs a deterministic loss: use adam with minibatch / thickness_samples")
        if self.minibatch < 0 or self.thickness_samples < 1:
            raise JaxedInputError(f"minibatch = {self.minibatch}, thickness_samples = {self.thickness_samples}: "
                                  "expected minibatch ≥ 0 and thickness_samples ≥ 1")
        if self.lr_schedule not in ("constant", "cosine"):
            raise JaxedInputError(f"lr_schedule '{self.lr_schedule}': expected constant or cosine")
        if self.lr_warmup < 0:
            raise JaxedInputError(f"lr_warmup = {self.lr_warmup}: expected ≥ 0 steps")


def _thickness_options(config: RefineConfig) -> dict:
    name = config.thickness_model
    if name == "kinematic":
        return {}
    if name == "nn":
        t_min, t_max = config.thickness_range
        return {"t_init": config.thickness_init, "t_min": t_min, "t_max": t_max, "prior": config.nn_prior}
    return {"t0": config.thickness_init}


class Refinement:
    """A refinement problem: the model, its parameters, the objective and the optimiser.

    Args:
        crystal, atoms: the starting structure.
        experiment: prepared data (jaxed.model.experiment.prepare_experiment).
        bloch: physics settings.
        config: refinement settings.
    """

    def __init__(self, crystal: Crystal, atoms: AtomParams, experiment: Experiment, bloch: BlochSettings,
                 config: RefineConfig):
        self.crystal, self.experiment, self.bloch, self.config = crystal, experiment, bloch, config
        self.structure: StructureModel
        self.structure, p_struct = make_structure_model(crystal, atoms, aniso=config.aniso,
                                                        refine_occupancy=config.refine_occupancy)
        self.thickness = make_thickness_model(config.thickness_model, **_thickness_options(config))
        key = jax.random.PRNGKey(config.seed)
        self.params0 = {"structure": p_struct, "thickness": self.thickness.init(key)}
        if config.refine_orientation:
            if config.orientation_angles not in (2, 3):
                raise JaxedInputError(f"orientation_angles = {config.orientation_angles}: expected 2 or 3")
            self.params0["orientation"] = jnp.zeros((experiment.n_frames, config.orientation_angles))
        self.params0 = _strong(self.params0)
        self.obs = objective.prepare_observations(jnp.asarray(experiment.i_obs), jnp.asarray(experiment.sigma),
                                                  jnp.asarray(experiment.refl_mask))
        self.obs_free = None  # R_free: the held-out set, never seen by the optimiser (self.obs is the work set)
        if config.r_free > 0:
            free = objective.free_set_mask(np.asarray(experiment.refl_hkl), np.asarray(experiment.refl_mask),
                                           config.r_free, seed=config.r_free_seed, by=config.r_free_mode,
                                           rotations=np.asarray(crystal.rotations))
            mask = np.asarray(experiment.refl_mask)
            self.obs = objective.prepare_observations(jnp.asarray(experiment.i_obs), jnp.asarray(experiment.sigma),
                                                      jnp.asarray(mask & ~free))
            self.obs_free = objective.prepare_observations(jnp.asarray(experiment.i_obs),
                                                           jnp.asarray(experiment.sigma), jnp.asarray(mask & free))
        self.optimizer = self._make_optimizer()
        # frames per device step: all of them when the memory model says they fit (one vmapped call), else chunks
        self.frames_per_batch = config.frames_per_batch or batching.experiment_frames_per_batch(
            experiment, float64=jnp.asarray(atoms.frac).dtype == jnp.float64, absorption=bloch.absorbing,
            n_thickness=config.thickness_samples)
        self._intensities_jit = jax.jit(self._intensities)  # traced on first use

    # ----------------------------------------------------------------------------------------------- model
    def atoms(self, params) -> AtomParams:
        return self.structure.atoms(params["structure"])

    def frame_thickness(self, params) -> jax.Array:
        """Thickness of every frame [Å], (n_frames,) (the model's mean)."""
        return self.thickness.apply(params["thickness"], jnp.asarray(self.experiment.theta))

    def intensities(self, params) -> jax.Array:
        """Unscaled calculated intensities, (n_frames, n_refl): one compiled program (op-by-op dispatch of the vmapped
        forward compiled hundreds of small programs, ≈ 3× slower for a one-off evaluation)."""
        return self._intensities_jit(params)

    def _intensities(self, params) -> jax.Array:
        return integrated_intensities(self.atoms(params), self.crystal, self.experiment, self.frame_thickness(params),
                                      self.bloch, params.get("orientation"), frames_per_batch=self.frames_per_batch)

    def loss(self, params, key: jax.Array | None = None) -> jax.Array:
        """wR_all with closed-form per-frame scales (the refinement objective).

        With ``key`` and ``config.minibatch`` the loss is over a random minibatch of frames; with ``key`` and
        ``config.thickness_samples`` > 1, each frame's intensities are averaged over reparameterised thickness draws.
        """
        return self.loss_and_intensities(params, key)[0]

    def loss_and_intensities(self, params, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        """(loss, intensities): as :meth:`loss`, plus the unscaled intensities of all frames at ``params`` that the
        loss was computed from — equal to :meth:`intensities` when the loss is full batch at the mean thickness,
        None otherwise (a minibatch or thickness draws)."""
        exp, obs, tilts = self.experiment, self.obs, params.get("orientation")
        config = self.config
        if key is not None and config.minibatch and config.minibatch < exp.n_frames:
            key, sub = jax.random.split(key)
            idx = jax.random.choice(sub, exp.n_frames, (config.minibatch,), replace=False)
            exp, obs = take_frames(exp, idx), obs.select_frames(idx)
            tilts = None if tilts is None else tilts[idx]
        theta = jnp.asarray(exp.theta)
        if key is not None and config.thickness_samples > 1:
            thickness = self.thickness.apply(params["thickness"], theta, key=key,
                                             n_samples=config.thickness_samples).T  # (n_frames, n_samples)
        else:
            thickness = self.thickness.apply(params["thickness"], theta)
        i_calc = integrated_intensities(self.atoms(params), self.crystal, exp, thickness, self.bloch, tilts,
                                        frames_per_batch=self.frames_per_batch)
        return self._objective(i_calc, obs), (i_calc if exp is self.experiment and thickness.ndim == 1 else None)

    def _objective(self, i_calc: jax.Array, obs) -> jax.Array:
        """The refinement objective of intensities against observations, as the config sets it."""
        config = self.config
        return objective.loss(i_calc, obs, kind=config.residual, per_frame_mean=config.per_frame_mean,
                              frame_loss=config.frame_loss)

    def full_loss(self, params) -> jax.Array:
        """The full-batch loss at the mean thickness (what :meth:`loss` is without a key), from the compiled
        :meth:`intensities` that R-factor summaries use too."""
        return self._objective(self.intensities(params), self.obs)

    def summary(self, params) -> dict:
        """R factors and counts of ``params`` (python floats); with an R_free set, R_obs etc. are of the work set
        and R_free, wR_free, N_free are added."""
        return self.summarize(self.intensities(params))

    def summarize(self, i_calc: jax.Array, n_params: int = 0) -> dict:
        """As :meth:`summary`, from calculated intensities (``n_params`` for the GoF)."""
        out = objective.summary(i_calc, self.obs, n_params, kind=self.config.residual)
        if self.obs_free is not None:
            out |= objective.free_summary(i_calc, self.obs, self.obs_free, kind=self.config.residual)
        return out

    def epoch_metrics(self, params) -> dict:
        """R_obs and wR_all of the work set and R_free, wR_free of the held-out set (python floats, one forward)."""
        if not hasattr(self, "_epoch_metrics"):
            def metrics(p):
                i_calc = self.intensities(p)
                scaled = objective.frame_scales(i_calc, self.obs, kind="paper")[:, None] * i_calc
                free = objective.free_values(i_calc, self.obs, self.obs_free, kind="paper")
                return {"R_obs": objective.r_obs(scaled, self.obs), "wR_all": objective.wr_all_paper(scaled, self.obs),
                        **free}
            self._epoch_metrics = jax.jit(metrics)
        return {k: float(v) for k, v in self._epoch_metrics(params).items()}

    # ------------------------------------------------------------------------------------------ optimiser
    def _make_optimizer(self) -> optax.GradientTransformation:
        rates = dict(self.config.lr_groups)
        unknown = set(rates) - set(self.params0)
        if unknown:
            raise JaxedInputError(f"lr_groups: unknown parameter groups {sorted(unknown)} (have {sorted(self.params0)})")
        if self.config.optimizer == "lbfgs":
            if self.config.lbfgs_metric == "identity":
                return optax.lbfgs()
            # in rate units Adam's first step moves every free parameter by 1: a trial step of that length
            free = sum(int(np.size(x)) for g, u in self._lbfgs_units().items() if u > 0
                       for x in jax.tree_util.tree_leaves(self.params0[g]))
            first = float(np.sqrt(max(free, 1)))
            return optax.lbfgs(learning_rate=lambda count: jnp.where(count == 0, first, 1.0))
        def rate(value):
            if self.config.lr_schedule == "cosine":
                value = optax.cosine_decay_schedule(value, max(self.config.epochs, 1), alpha=0.05)
            warmup = self.config.lr_warmup
            if warmup > 0:  # step k (from 0) at (k + 1) / warmup of the scheduled rate, then the schedule itself
                scheduled = value if callable(value) else optax.constant_schedule(value)
                return lambda step: scheduled(step) * jnp.minimum(1.0, (step + 1.0) / warmup)
            return value

        transforms = {g: (optax.set_to_zero() if rates.get(g, self.config.lr) == 0 else
                          optax.adam(rate(rates.get(g, self.config.lr)))) for g in self.params0}
        labels = {g: jax.tree_util.tree_map(lambda _, g=g: g, sub) for g, sub in self.params0.items()}
        return optax.multi_transform(transforms, labels)

    def _lbfgs_units(self) -> dict[str, float]:
        """Scale of L-BFGS's variables per parameter group: the group's rate with lbfgs_metric 'rates' (0: frozen),
        1 with 'identity'."""
        rates = dict(self.config.lr_groups)
        return {g: 1.0 if self.config.lbfgs_metric == "identity" else float(rates.get(g, self.config.lr))
                for g in self.params0}

    def init_state(self, params=None):
        """Optimiser state for ``params`` (default: the starting parameters), with explicit dtypes."""
        return _strong(self.optimizer.init(self.params0 if params is None else params))

    def make_step(self, intensities: bool = False) -> Callable:
        """The jitted optimiser step ``(params, state, key) -> (params, state, loss, finite)``; compiles once.
        ``key`` drives minibatches and thickness draws (ignored by a deterministic loss).

        With ``intensities=True`` (Adam) the step also returns, as a fifth output, the intensities at the incoming
        ``params`` that its loss was computed from (None for a minibatch or thickness draws, and for L-BFGS):
        progress monitors read R factors from them instead of running a forward model of their own."""
        opt = self.optimizer
        loss_fn = self.loss

        if self.config.optimizer == "adam":
            stochastic = bool(self.config.minibatch) or self.config.thickness_samples > 1

            def step(params, state, key):
                if intensities:
                    (value, i_calc), grads = jax.value_and_grad(self.loss_and_intensities, has_aux=True)(
                        params, key if stochastic else None)
                else:
                    value, grads = jax.value_and_grad(loss_fn)(params, key if stochastic else None)
                finite = jnp.isfinite(value) & jnp.all(jnp.array(
                    [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
                updates, new_state = opt.update(grads, state, params)
                new_params = optax.apply_updates(params, updates)
                if intensities:
                    return new_params, new_state, value, finite, i_calc
                return new_params, new_state, value, finite
        else:
            unit = self._lbfgs_units()  # the optimiser sees x = p / unit; a group at unit 0 is frozen (x = p)

            def to_params(x):  # frozen groups stay where they are: no gradient reaches them
                return {g: jax.tree_util.tree_map(lambda v, u=unit[g]: v * u if u > 0 else jax.lax.stop_gradient(v),
                                                  sub) for g, sub in x.items()}

            def loss_x(x):
                return loss_fn(to_params(x))

            def step(params, state, key):
                del key  # L-BFGS: deterministic loss
                x = {g: jax.tree_util.tree_map(lambda v, u=unit[g]: v / u if u > 0 else v, sub)
                     for g, sub in params.items()}
                value, grads = optax.value_and_grad_from_state(loss_x)(x, state=state)
                finite = jnp.isfinite(value) & jnp.all(jnp.array(
                    [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
                updates, new_state = opt.update(grads, state, x, value=value, grad=grads, value_fn=loss_x)
                new_params = to_params(optax.apply_updates(x, updates))
                if intensities:
                    return new_params, new_state, value, finite, None
                return new_params, new_state, value, finite

        return jax.jit(step)


# ------------------------------------------------------------------------------------------------- checkpoints
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


# ----------------------------------------------------------------------------------------------------- driver
def _evaluations_in_step(optimizer: str, state, *, first: bool) -> int:
    """Loss + gradient evaluations made by one optimiser step: 1 for Adam; for L-BFGS the zoom line search's
    trial points (each a value and gradient; the accepted one is reused by the next step), plus the starting point at
    epoch 0 (a resumed run's state holds the last value and gradient, so its first step evaluates nothing new)."""
    if optimizer != "lbfgs":
        return 1
    steps = optax.tree_utils.tree_get(state, "num_linesearch_steps")
    return int(steps) + (1 if first else 0)


@batching.with_blas_threads  # one LAPACK thread per eigh: see jaxed.model.batching (8–18× faster on shared cores)
def run_refinement(problem: Refinement, out: str | Path | None = None, *, resume: bool = False,
                   progress: bool = True, callback: Callable | None = None) -> tuple[dict, list]:
    """Optimise ``problem`` for ``config.epochs`` steps.

    Returns:
        (params, history) — history is a list of dicts {epoch, loss (wR_all), seconds}.
    Raises:
        RefinementDiverged on a non-finite loss or gradient (the last good checkpoint is kept in ``out``).
    """
    config = problem.config
    if config.optimizer in ("gn", "lm", "hybrid"):
        from jaxed.refine.lsq import run_least_squares

        return run_least_squares(problem, out, resume=resume, progress=progress, callback=callback)
    out = None if out is None else Path(out)
    params = _strong(problem.params0)
    state = problem.init_state(params)
    history: list = []
    start_epoch = 0
    # keep_best: (loss, epoch, params) of the lowest full-batch loss met; a step's loss is that of its incoming params
    keep_best = config.keep_best and not config.minibatch and config.thickness_samples == 1
    best = None
    if resume:
        if out is None or not (out / "checkpoint.npz").exists():
            raise JaxedInputError(f"--resume: no checkpoint in {out}")
        template = params
        params, state, history, start_epoch = load_checkpoint(out, params, state)
        best = load_best(out, template) if keep_best else None
    # a callback marked ``from_intensities`` gets the intensities the step's own loss computed (Adam)
    with_intensities = bool(getattr(callback, "from_intensities", False)) and config.optimizer == "adam"
    step = problem.make_step(intensities=with_intensities)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, initial=start_epoch, desc="refine", unit="epoch", dynamic_ncols=True)
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    last_good = (params, state)
    evaluations = int(history[-1].get("evaluations", len(history))) if history else 0
    for epoch in range(start_epoch, config.epochs):
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch)  # reproducible across --resume
        i_before = None
        if with_intensities:
            new_params, new_state, value, finite, i_before = step(params, state, key)
        else:
            new_params, new_state, value, finite = step(params, state, key)
        value = float(value)
        if not bool(finite):
            if out is not None:
                save_checkpoint(out, *last_good, history, epoch, best)
            if bar is not None:
                bar.close()
            raise RefinementDiverged(
                f"epoch {epoch}: non-finite loss or gradient (loss = {value}); stopped, last good state kept"
                + (f" in {out / 'checkpoint.npz'}" if out is not None else ""))
        evaluations += _evaluations_in_step(config.optimizer, new_state, first=epoch == 0)
        history.append({"epoch": epoch, "loss": value, "seconds": time.perf_counter() - t0,
                        "evaluations": evaluations})
        if keep_best and (best is None or value < best[0]):
            best = (value, epoch, params)
        last_good = (params, state) = (new_params, new_state)
        if problem.obs_free is not None:  # R_obs, wR_all (work set) and R_free after this step
            history[-1].update(problem.epoch_metrics(params))
        if bar is not None:
            bar.set_postfix_str(f"wR_all {value:.4f}")
            bar.update(1)
        if callback is not None:
            if with_intensities:  # i_before: intensities at the parameters this epoch's step started from
                callback(epoch, params, value, i_before)
            else:
                callback(epoch, params, value)
        if out is not None and config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0:
            save_checkpoint(out, params, state, history, epoch + 1, best)
    if bar is not None:
        bar.close()
    if keep_best and history and history[-1].get("final_loss") is None:
        # the last step's result has no loss yet: evaluate it once, and keep whichever is lower
        final = float(problem.full_loss(params))
        if not np.isfinite(final):
            final = np.inf  # a last step into NaN leaves the best earlier point
        history[-1]["final_loss"] = final
        if best is None or final <= best[0]:
            best = (final, config.epochs, params)
        history[-1]["kept_epoch"] = best[1]  # config.epochs: the last step's result; k: the start of epoch k
    if out is not None:
        save_checkpoint(out, params, state, history, config.epochs, best)
    return (best[2] if keep_best and best is not None else params), history
