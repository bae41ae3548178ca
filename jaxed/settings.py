"""Every setting of jaxed, defined once: type, default, unit, allowed values, help and concern.

The command line (options, their help and groups: :mod:`jaxed.app.cli`), the config files (validation, effective
settings, saved settings: :mod:`jaxed.app.config`) and the defaults of the settings dataclasses
(:class:`~jaxed.physics.bloch.BlochSettings`, :class:`~jaxed.model.experiment.ExperimentSettings`,
:class:`~jaxed.refine.optimize.RefineConfig`, which read theirs with :func:`field_default`) all come from
:data:`SETTINGS`. This module sits on the bottom floor (it imports only :mod:`jaxed.errors`) so that every floor may
read it.

A setting is named by its config key (``g_max``; on the command line ``--g-max``) and belongs to the commands that
have it. One name may stand for different settings in different commands (``thickness``: the one thickness of
``simulate``, the true thickness of ``synth``, the thickness every frame is evaluated at); within one command a name
is one setting. A setting with no command is Python-only (a dataclass field without an option or config key).
"""
from __future__ import annotations

import dataclasses
import math

from jaxed.errors import JaxedInputError

__all__ = ["Setting", "SETTINGS", "COMMANDS", "CONCERNS", "schema", "setting_of_field", "field_default",
           "field_values"]

#: commands whose settings come from the schema (``demo`` has only its own --epochs / --out)
COMMANDS = ("simulate", "synth", "evaluate", "refine")

#: concerns in the order ``--help`` groups them, with the title line of each group
CONCERNS = {
    "physics": "how the intensities are computed",
    "data selection": "which frames and reflections are used",
    "thickness model": "the crystal's thickness",
    "refined parameters": "what the refinement varies besides the thickness model",
    "optimiser": "the objective and the first-order optimisers (adam, lbfgs)",
    "least squares": "the second-order optimisers (gn, lm, hybrid)",
    "validation": "reflections held out for R_free",
    "synthetic data": "the intensities `jaxed synth` generates",
    "output": "what a run writes",
    "run": "precision and memory",
}

_KINDS = {float: "a number", int: "an integer", str: "a string", bool: "true or false", tuple: "a tuple"}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting.

    Attributes:
        name: config key; the command-line option is ``--`` + name with '_' → '-'.
        kind: float | int | str | bool (tuple: Python-only settings).
        default: the built-in value (None: unset, i.e. taken from the data, or no cap; see help).
        help: one line for ``--help`` and the saved config.
        concern: a key of :data:`CONCERNS`.
        commands: the commands that have it (empty: Python-only).
        unit: e.g. '1/Å', 'Å', 'deg', 'kV' ('' for none).
        choices: allowed strings.
        minimum / maximum: allowed range; ``open_min`` / ``open_max``: the bound itself excluded.
        field: the dataclass field that takes this setting's value, 'Class.field' (None: used by the command only).
        field_values: (value, field value) pairs where the field holds something else than the setting, e.g.
            geometry 'file' → ExperimentSettings.precession None.
        metavar: the option's placeholder in ``--help`` (default: the upper-cased name).
    """

    name: str
    kind: type
    default: object
    help: str
    concern: str
    commands: tuple = ()
    unit: str = ""
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False
    open_max: bool = False
    field: str | None = None
    field_values: tuple = ()
    metavar: str | None = None

    @property
    def flag(self) -> str:
        """The command-line option, e.g. '--g-max'."""
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """What a value must be: 'a positive number [1/Å]', 'an integer ≥ 1', 'one of lobato, peng'."""
        what = _KINDS[self.kind]
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.minimum == 0 and self.open_min and self.maximum is None:
            what = "a positive number" if self.kind is float else "a positive integer"
        elif self.minimum is not None:
            what += f" {'>' if self.open_min else '≥'} {self.minimum:g}"
        if self.maximum is not None:
            what += f"{' and' if self.minimum is not None else ''} {'<' if self.open_max else '≤'} {self.maximum:g}"
        return what + (f" [{self.unit}]" if self.unit else "")

    def fits(self, value) -> bool:
        """Whether ``value`` (already of a Python type: TOML, JSON or a parsed option) is allowed."""
        if value is None:
            return self.default is None  # only an optional setting may be unset
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is str:
            return isinstance(value, str) and (not self.choices or value in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int):
            return False
        if not math.isfinite(value):
            return False
        if self.minimum is not None and not (value > self.minimum if self.open_min else value >= self.minimum):
            return False
        return self.maximum is None or (value < self.maximum if self.open_max else value <= self.maximum)

    def check(self, value, where: str):
        """``value`` as ``kind`` (an int becomes a float where a number is expected); a one-line
        :class:`~jaxed.errors.JaxedInputError` '{where} = {value!r}: expected ...' if it does not fit."""
        if not self.fits(value):
            raise JaxedInputError(f"{where} = {value!r}: expected {self.describe()}")
        return float(value) if self.kind is float and value is not None else value

    def field_value(self, value):
        """The value of :attr:`field` for the setting's ``value`` (they differ only where :attr:`field_values`
        says)."""
        return dict(self.field_values)[value] if self.field_values else value


def _s(name, kind, default, help, concern, commands, **more) -> Setting:
    return Setting(name, kind, default, help, concern, commands, **more)


def _positive(name, default, help, concern, commands, unit="", **more) -> Setting:
    return Setting(name, float, default, help, concern, commands, unit=unit, minimum=0.0, open_min=True, **more)


_SIM = ("simulate",)
_SYN = ("synth",)
_EVA = ("evaluate",)
_REF = ("refine",)
_DATA = ("evaluate", "refine")  # the commands that read a .cif_pets file
_MODEL = ("synth", "evaluate", "refine")  # the commands that model a tilt series
_XS = "ExperimentSettings."
_BS = "BlochSettings."
_RC = "RefineConfig."

SETTINGS: tuple[Setting, ...] = (
    # ------------------------------------------------------------------------------------------------ physics
    _positive("energy", 200.0, "accelerating voltage", "physics", _SIM, "kV", field=_BS + "energy_kev"),
    _positive("energy_kev", None, "accelerating voltage (unset: from the data's wavelength)", "physics", (), "kV",
              field=_XS + "energy_kev"),
    _positive("g_max", 1.5, "beams in the Bloch matrix: |g| ≤ G", "physics", _SIM, "1/Å"),
    _positive("sg_max", 0.02, "beams in the Bloch matrix: |s_g| ≤ S", "physics", _SIM, "1/Å"),
    _positive("g_max", 1.6, "beams in the Bloch matrix: |g| ≤ G", "physics", _MODEL, "1/Å", field=_XS + "g_max"),
    _positive("sg_max", 0.01, "beams in the Bloch matrix: |s_g| ≤ S at some rocking sample", "physics", _MODEL,
              "1/Å", field=_XS + "sg_max"),
    _s("samples", int, 21, "rocking-curve (or precession) samples per frame", "physics", _MODEL, minimum=1,
       field=_XS + "n_samples"),
    _s("beams", str, "frame", "Bloch matrix per frame (every beam excited at any sample) or per sample (only its own "
       "|s_g| ≤ S beams: ~10× faster, diffBloch's selection)", "physics", _DATA, choices=("frame", "sample"),
       field=_XS + "beam_selection"),
    _s("max_beams", int, None, "cap on the beams of one Bloch matrix (smallest |s_g| kept; with --beams sample, "
       "diffBloch uses ≈ 40 for quartz) (unset: no cap)", "physics", _DATA, minimum=2, field=_XS + "max_beams"),
    _positive("semi_angle", None, "integration semi-angle (unset: the file's precession_angle column)", "physics",
              _DATA, "deg", field=_XS + "semi_angle_deg"),
    _positive("semi_angle", 1.0, "integration semi-angle of a generated tilt series", "physics", _SYN, "deg"),
    _s("geometry", str, "file", "how each frame's intensities were integrated: as the file's measurement details say, "
       "a continuous rotation about the tilt axis, or a precession cone (some PETS2 exports of precession data say "
       "'continuous rotation')", "physics", _DATA, choices=("file", "rotation", "precession"),
       field=_XS + "precession", field_values=(("file", None), ("rotation", False), ("precession", True))),
    _s("quadrature", str, "midpoint", "rocking-curve quadrature of continuous-rotation frames", "physics", (),
       choices=("midpoint", "gauss"), field=_XS + "quadrature"),
    _s("scattering", str, "lobato", "electron form factors: Lobato & Van Dyck 2014 or Peng / ITC C 4.3.2.2",
       "physics", ("simulate", "synth", "evaluate", "refine"), choices=("lobato", "peng")),
    _s("absorption", float, 0.0, "proportional absorption κ: U'_g = κ U_g (0: none)", "physics",
       ("simulate", "evaluate", "refine"), minimum=0.0, field=_BS + "absorption", metavar="KAPPA"),
    _s("thermal_absorption", bool, False, "thermal-diffuse-scattering absorption from the ADPs (Einstein model, no "
       "free parameter; adds to κ)", "physics", ("simulate", "evaluate", "refine"),
       field=_BS + "thermal_absorption"),
    _s("absorption_method", str, "perturbative", "absorbing propagation: first order with eigh (refinement) or the "
       "matrix exponential", "physics", (), choices=("perturbative", "exact"), field=_BS + "absorption_method"),
    _s("absorption_slices", int, 32, "perturbative absorption: equal thickness slices", "physics", (), minimum=1,
       field=_BS + "absorption_slices"),
    _s("propagator", str, "eigh", "propagator of the non-absorbing path", "physics", (), choices=("eigh", "expm"),
       field=_BS + "propagator"),
    _s("metric", bool, True, "apply the D = 1 + g_n/K_n metric (PHYSICS.md §4.3)", "physics", (),
       field=_BS + "metric"),
    _s("mean_potential", bool, True, "U₀ on the diagonal (vacuum K)", "physics", (), field=_BS + "mean_potential"),
    _positive("pad_diagonal", 1.0e3, "diagonal value of padded beams", "physics", (), "1/Å²",
              field=_BS + "pad_diagonal"),
    _s("real_if_centric", bool, True, "real eigh for a crystal with an inversion centre at the origin", "physics", (),
       field=_BS + "real_if_centric"),
    # --------------------------------------------------------------------------------------------- data selection
    _positive("g_max_refine", 1.4, "reflections used: |g| ≤ G", "data selection", _MODEL, "1/Å",
              field=_XS + "g_max_refine"),
    _s("g_min_refine", float, 0.0, "reflections used: |g| ≥ G, a low-resolution cut for reflections in the primary "
       "beam's tail (0: none)", "data selection", _DATA, unit="1/Å", minimum=0.0, field=_XS + "g_min_refine"),
    _positive("sg_max_refine", None, "reflections used: |s_g| ≤ S at the frame centre (unset: no cap)",
              "data selection", (), "1/Å", field=_XS + "sg_max_refine"),
    _positive("r_sg", 0.9, "reflections used: R_Sg ≤ R (Bragg condition crossed within the frame)",
              "data selection", _DATA, field=_XS + "r_sg_max"),
    _positive("d_sg", None, "reflections used: Δs_g − |s_g| > D, the Bragg condition crossed with a margin (Klar et "
              "al. 2023's D_Sg; 0.0015 in the reference runs; unset: no cap)", "data selection", _DATA, "1/Å",
              field=_XS + "d_sg_min"),
    _s("frames", str, None, "subset of frames: '1-20', '1,5,9-12', 'every:3', 'first:20' (unset: all)",
       "data selection", _MODEL),
    _s("cell_tolerance", float, 0.05, "refuse a structure whose cell differs from the data's by more than this "
       "fraction (0.05 = 5 %, angles: 100× this in degrees)", "data selection", _DATA, minimum=0.0, open_min=True,
       maximum=1.0),
    _s("drop_bad_sigma", bool, False, "drop reflections with σ ≤ 0 (with a warning) instead of refusing the file",
       "data selection", _DATA),
    # -------------------------------------------------------------------------------------------- thickness model
    _positive("thickness", None, "crystal thickness along the surface normal (required)", "thickness model", _SIM,
              "Å"),
    _positive("thickness", 800.0, "mean / base thickness t0 of the true profile", "thickness model", _SYN, "Å"),
    _s("profile", str, "random", "true thickness profile (random: a smooth seeded function of the tilt)",
       "thickness model", _SYN, choices=("constant", "wedge", "plate", "random")),
    _positive("thickness", 800.0, "crystal thickness of every frame", "thickness model", _EVA, "Å"),
    _s("thickness_model", str, "nn", "thickness model (nn = ThicknessNN)", "thickness model", _REF,
       choices=("nn", "single", "kinematic", "plate", "tilt", "constant"), field=_RC + "thickness_model"),
    _positive("thickness_init", 800.0, "starting thickness", "thickness model", _REF, "Å",
              field=_RC + "thickness_init"),
    _s("thickness_range", tuple, (50.0, 3000.0), "(t_min, t_max) of ThicknessNN", "thickness model", (), unit="Å",
       field=_RC + "thickness_range"),
    _s("nn_prior", bool, False, "ThicknessNN with a learnable quadratic prior in the tilt", "thickness model", _REF,
       field=_RC + "nn_prior"),
    _s("thickness_samples", int, 1, "ThicknessNN reparameterised draws per frame, intensities averaged",
       "thickness model", _REF, minimum=1, field=_RC + "thickness_samples"),
    # ----------------------------------------------------------------------------------------- refined parameters
    _s("aniso", str, "as-given", "ADPs: as in the CIF, all anisotropic, or all isotropic", "refined parameters", _REF,
       choices=("as-given", "all", "none"), field=_RC + "aniso"),
    _s("refine_occupancy", bool, False, "refine occupancies (in (0, 1))", "refined parameters", _REF,
       field=_RC + "refine_occupancy"),
    _s("refine_orientation", str, "none", "per-frame orientations: gradient = two tilts refined with everything "
       "else; hexagonal / nelder-mead = the reference paper's searches, structure fixed, before the refinement; "
       "nelder-mead+hexagonal = a coarse search then a fine one", "refined parameters", _REF,
       choices=("none", "gradient", "hexagonal", "nelder-mead", "nelder-mead+hexagonal"),
       field=_RC + "refine_orientation",
       field_values=(("none", False), ("gradient", True), ("hexagonal", False), ("nelder-mead", False),
                     ("nelder-mead+hexagonal", False))),
    _positive("nm_step", 0.5, "initial simplex step of the Nelder–Mead orientation search", "refined parameters",
              _REF, "deg"),
    _s("orientation_angles", int, 2, "angles per frame of --refine-orientation gradient: 2 tilts ⟂ beam, or 3 (also "
       "the rotation about the beam, which moves the rocking axis)", "refined parameters", _REF, minimum=2,
       maximum=3, field=_RC + "orientation_angles"),
    # ----------------------------------------------------------------------------------------------- optimiser
    _s("optimizer", str, "adam", "optimiser: Adam, L-BFGS, Gauss–Newton, Levenberg–Marquardt (gn/lm: with s.u. in "
       "the CIF), or hybrid (Adam for the thickness model + LM for the rest)", "optimiser", _REF,
       choices=("adam", "lbfgs", "gn", "lm", "hybrid"), field=_RC + "optimizer"),
    _s("epochs", int, 200, "optimiser steps (iterations for gn/lm)", "optimiser", _REF, minimum=0,
       field=_RC + "epochs"),
    _positive("lr", 1e-3, "Adam learning rate (every group)", "optimiser", _REF, field=_RC + "lr"),
    _s("lr_groups", tuple, (), "per-group learning rates, e.g. (('thickness', 0.02),); 0 freezes a group",
       "optimiser", (), field=_RC + "lr_groups"),
    _s("lbfgs_metric", str, "rates", "lbfgs: work in each group's units of its learning rate (a diagonal "
       "preconditioner; first trial step = Adam's first step) or in the raw parameters", "optimiser", _REF,
       choices=("rates", "identity"), field=_RC + "lbfgs_metric"),
    _s("lr_schedule", str, "constant", "learning-rate schedule (cosine: decay to 5 % over the epochs)", "optimiser",
       _REF, choices=("constant", "cosine"), field=_RC + "lr_schedule"),
    _s("lr_warmup", int, 0, "steps over which the learning rates ramp up linearly (0: none; for runs that start from "
       "a refined model)", "optimiser", _REF, minimum=0, field=_RC + "lr_warmup"),
    _s("residual", str, "paper", "refined residual: the reference paper's wR_all on I, or Jana's on |F|", "optimiser",
       _REF, choices=("paper", "jana"), field=_RC + "residual"),
    _s("per_frame_mean", bool, False, "minimise the rms of per-frame wR_all (every frame counts equally)",
       "optimiser", _REF, field=_RC + "per_frame_mean"),
    _s("frame_loss", str, "rms", "with per_frame_mean: the rms of per-frame wR_all, or their mean (the published "
       "aggregate)", "optimiser", _REF, choices=("rms", "mean"), field=_RC + "frame_loss"),
    _s("minibatch", int, 0, "frames per Adam step (0: full batch)", "optimiser", _REF, minimum=0,
       field=_RC + "minibatch"),
    _s("seed", int, 0, "PRNG seed (ThicknessNN initialisation, minibatches)", "optimiser", _REF, minimum=0,
       field=_RC + "seed"),
    _s("keep_best", bool, True, "return the parameters of the lowest loss met instead of the last step's (adam, "
       "lbfgs, full batch)", "optimiser", _REF, field=_RC + "keep_best"),
    # ------------------------------------------------------------------------------------------- least squares
    _s("lsq_jacobian", str, "auto", "gn/lm Jacobian: forward, reverse, matrix-free CG, or chosen by size",
       "least squares", _REF, choices=("auto", "fwd", "rev", "cg"), field=_RC + "lsq_jacobian"),
    _positive("lsq_damping", 1e-4, "initial Levenberg–Marquardt damping λ (dimensionless)", "least squares", _REF,
              field=_RC + "lsq_damping"),
    _positive("lsq_ftol", 1e-8, "gn/lm stop: relative decrease of the cost below this", "least squares", _REF,
              field=_RC + "lsq_ftol"),
    _s("hybrid_adam_steps", int, 10, "hybrid: Adam steps on the thickness model per LM step", "least squares", _REF,
       minimum=1, field=_RC + "hybrid_adam_steps"),
    # ---------------------------------------------------------------------------------------------- validation
    _s("r_free", float, 0.0, "fraction of the reflections (or frames) held out of the refinement for R_free "
       "(0: none)", "validation", _REF, minimum=0.0, maximum=0.5, open_max=True, field=_RC + "r_free",
       metavar="FRACTION"),
    _s("r_free_mode", str, "reflections", "what R_free holds out: unique reflections (with their symmetry "
       "equivalents and Friedel mates) or whole frames", "validation", _REF, choices=("reflections", "frames"),
       field=_RC + "r_free_mode"),
    _s("r_free_seed", int, 0, "seed of the R_free choice", "validation", _REF, minimum=0, field=_RC + "r_free_seed"),
    # ------------------------------------------------------------------------------------------ synthetic data
    _positive("i_max", 1e6, "counts of the brightest reflection", "synthetic data", _SYN, "counts"),
    _s("seed", int, 0, "seed of the thickness profile, the generated orientation and the Poisson noise",
       "synthetic data", _SYN, minimum=0),
    # ------------------------------------------------------------------------------------------------- output
    _s("checkpoint_every", int, 10, "steps between checkpoints (0: only at the end)", "output", _REF, minimum=0,
       field=_RC + "checkpoint_every"),
    # ---------------------------------------------------------------------------------------------------- run
    _s("float32", bool, False, "single precision (faster on GPUs; default float64)", "run",
       ("simulate", "evaluate", "refine")),
    _s("frames_per_batch", int, 0, "frames per device step, lax.map over chunks (0: chosen by jaxed.model.batching's "
       "memory model)", "run", _REF, minimum=0, field=_RC + "frames_per_batch"),
)


def _index() -> tuple[dict, dict]:
    """The settings by command and name, and by dataclass field; refuses a schema that contradicts itself."""
    by_command = {c: {} for c in COMMANDS}
    by_field = {}
    for s in SETTINGS:
        if s.concern not in CONCERNS or not set(s.commands) <= set(COMMANDS):
            raise ValueError(f"setting {s.name}: unknown concern {s.concern!r} or command in {s.commands}")
        if not (s.default is None or s.kind is tuple or s.fits(s.default)):
            raise ValueError(f"setting {s.name}: default {s.default!r} is not {s.describe()}")
        for c in s.commands:
            if s.name in by_command[c]:
                raise ValueError(f"setting {s.name}: defined twice for `jaxed {c}`")
            by_command[c][s.name] = s
        if s.field is not None:
            if s.field in by_field:
                raise ValueError(f"{s.field}: held by settings {by_field[s.field].name} and {s.name}")
            by_field[s.field] = s
    return by_command, by_field


_BY_COMMAND, _BY_FIELD = _index()


def schema(command: str) -> dict[str, Setting]:
    """The settings of ``command`` ('simulate', 'synth', 'evaluate' or 'refine'), by name, in :data:`SETTINGS`'
    order."""
    if command not in _BY_COMMAND:
        raise JaxedInputError(f"command '{command}': expected one of {', '.join(COMMANDS)}")
    return dict(_BY_COMMAND[command])


def setting_of_field(field: str) -> Setting:
    """The setting whose value dataclass field ``field`` ('RefineConfig.lsq_damping') holds."""
    try:
        return _BY_FIELD[field]
    except KeyError:
        raise KeyError(f"no setting holds {field} (jaxed.settings.SETTINGS)") from None


def field_default(field: str):
    """Default of dataclass field ``field`` ('Class.name'), from its setting: what the dataclasses write as their
    defaults, so that no module defines one of its own."""
    s = setting_of_field(field)
    return s.field_value(s.default)


def field_values(cls: str, command: str, values: dict) -> dict:
    """Keyword arguments of dataclass ``cls`` ('RefineConfig', 'ExperimentSettings', 'BlochSettings') from the
    settings of ``command`` that ``values`` (name → value, e.g. the command's effective settings) names and ``cls``
    holds, converted to the fields' values; the other fields keep their defaults."""
    out = {}
    for s in schema(command).values():
        if s.field is not None and s.field.split(".")[0] == cls and s.name in values:
            out[s.field.split(".")[1]] = s.field_value(values[s.name])
    return out
