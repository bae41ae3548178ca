"""Settings of the `jaxed` commands: one schema, one TOML (or JSON) file format, validated on load.

A config file holds the settings of any of the commands ``simulate``, ``synth``, ``refine`` and ``evaluate``::

    # settings shared by every command that has them
    g_max = 1.6            # [1/Å]
    scattering = "lobato"

    [refine]               # only for `jaxed refine`
    epochs = 300
    thickness_model = "nn"

    [evaluate]
    thickness = 750.0      # [Å]

Precedence: built-in defaults < top-level keys < the command's table < command-line options. Every key is checked
when the file is read: an unknown key, a wrong type or a value out of range is a one-line
:class:`~jaxed.errors.JaxedInputError` naming the file and the key. Each run saves its effective settings with
:func:`write_config` (``DIR/config.toml``), which :func:`read_config` reads back to the same settings.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from jaxed.errors import JaxedInputError

__all__ = ["Setting", "COMMANDS", "schema", "read_config", "validate", "effective_settings", "write_config",
           "format_help"]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its type, default, unit and allowed values.

    Attributes:
        kind: float | int | str | bool.  default: the built-in value (None: unset / taken from the data).
        help: one line for ``--help``.  unit: e.g. '1/Å', 'Å', 'deg' ('' for none).
        choices: allowed strings.  minimum / maximum: allowed range (``open_min``: the minimum itself excluded).
    """

    kind: type
    default: object
    help: str
    unit: str = ""
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False

    def describe(self) -> str:
        """'expected ...' text of an error."""
        what = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}[self.kind]
        if self.choices:
            what = "one of " + ", ".join(self.choices)
        if self.minimum is not None:
            what += f" {'>' if self.open_min else '≥'} {self.minimum:g}"
        if self.maximum is not None:
            what += f"{' and' if self.minimum is not None else ''} ≤ {self.maximum:g}"
        return what + (f" [{self.unit}]" if self.unit else "")

    def check(self, value, where: str):
        """``value`` converted to ``kind``; a JaxedInputError naming ``where`` if it does not fit."""
        if value is None:
            return None
        ok = (isinstance(value, bool) if self.kind is bool else
              isinstance(value, str) if self.kind is str else
              isinstance(value, int) and not isinstance(value, bool) if self.kind is int else
              isinstance(value, (int, float)) and not isinstance(value, bool))
        if ok and self.kind is float:
            value = float(value)
            ok = math.isfinite(value)
        if ok and self.choices:
            ok = value in self.choices
        if ok and self.minimum is not None:
            ok = value > self.minimum if self.open_min else value >= self.minimum
        if ok and self.maximum is not None:
            ok = value <= self.maximum
        if not ok:
            raise JaxedInputError(f"{where} = {value!r}: expected {self.describe()}")
        return value


def _f(default, help, unit="", minimum=0.0, open_min=True, maximum=None):
    return Setting(float, default, help, unit, minimum=minimum, open_min=open_min, maximum=maximum)


def _i(default, help, minimum=0, maximum=None):
    return Setting(int, default, help, minimum=minimum, maximum=maximum)


_SCATTERING = Setting(str, "lobato", "electron form factors: Lobato & Van Dyck 2014 or Peng / ITC C 4.3.2.2",
                      choices=("lobato", "peng"))
_ABSORPTION = _f(0.0, "proportional absorption κ: U'_g = κ U_g (0: none)", open_min=False)
_THERMAL = Setting(bool, False, "thermal-diffuse-scattering absorption from the ADPs (Einstein model, no free "
                   "parameter; adds to κ)")
_FLOAT32 = Setting(bool, False, "single precision (faster on GPUs; default float64)")

_DATA = {
    "g_max": _f(1.6, "beams in the Bloch matrix: |g| ≤ G", "1/Å"),
    "sg_max": _f(0.01, "beams in the Bloch matrix: |s_g| ≤ S at some rocking sample", "1/Å"),
    "g_max_refine": _f(1.4, "reflections used: |g| ≤ G", "1/Å"),
    "g_min_refine": _f(0.0, "reflections used: |g| ≥ G, a low-resolution cut for reflections in the primary "
                       "beam's tail (0: none)", "1/Å", open_min=False),
    "r_sg": _f(0.9, "reflections used: R_Sg ≤ R (Bragg condition crossed within the frame)"),
    "d_sg": _f(None, "reflections used: Δs_g − |s_g| > D [1/Å], the Bragg condition crossed with a margin "
                     "(Klar et al. 2023's D_Sg; 0.0015 in the reference runs; unset: no cap)"),
    "samples": _i(21, "rocking-curve (or precession) samples per frame", minimum=1),
    "beams": Setting(str, "frame", "Bloch matrix per frame (every beam excited at any sample) or per sample (only "
                     "its own |s_g| ≤ S beams: ~10× faster, diffBloch's selection)", choices=("frame", "sample")),
    "max_beams": _i(None, "cap on the beams of one Bloch matrix (smallest |s_g| kept; with --beams sample, "
                    "diffBloch uses ≈ 40 for quartz) (unset: no cap)", minimum=2),
    "semi_angle": _f(None, "integration semi-angle (unset: the file's precession_angle column)", "deg"),
    "geometry": Setting(str, "file", "how each frame's intensities were integrated: as the file's measurement details "
                        "say, a continuous rotation about the tilt axis, or a precession cone (some PETS2 exports of "
                        "precession data say 'continuous rotation')", choices=("file", "rotation", "precession")),
    "scattering": _SCATTERING,
    "absorption": _ABSORPTION,
    "thermal_absorption": _THERMAL,
    "frames": Setting(str, None, "subset of frames: '1-20', '1,5,9-12', 'every:3', 'first:20' (unset: all)"),
    "cell_tolerance": _f(0.05, "refuse a structure whose cell differs from the data's by more than this fraction "
                         "(0.05 = 5 %, angles: 100× this in degrees)", maximum=1.0),
    "drop_bad_sigma": Setting(bool, False, "drop reflections with σ ≤ 0 (with a warning) instead of refusing the file"),
    "float32": _FLOAT32,
}

_REFINE = {
    "thickness_model": Setting(str, "nn", "thickness model (nn = ThicknessNN)",
                               choices=("nn", "single", "kinematic", "plate", "tilt", "constant")),
    "thickness_init": _f(800.0, "starting thickness", "Å"),
    "optimizer": Setting(str, "adam", "optimiser", choices=("adam", "lbfgs", "gn", "lm", "hybrid")),
    "epochs": _i(200, "optimiser steps (iterations for gn/lm)"),
    "lr": _f(1e-3, "Adam learning rate"),
    "seed": _i(0, "PRNG seed (ThicknessNN initialisation, minibatches)"),
    "aniso": Setting(str, "as-given", "ADPs: as in the CIF, all anisotropic, or all isotropic",
                     choices=("as-given", "all", "none")),
    "refine_orientation": Setting(str, "none", "per-frame orientations: gradient = two tilts refined with everything "
                                  "else; hexagonal / nelder-mead = the reference paper's searches, structure fixed, "
                                  "before the refinement; nelder-mead+hexagonal = a coarse search then a fine one",
                                  choices=("none", "gradient", "hexagonal", "nelder-mead", "nelder-mead+hexagonal")),
    "nm_step": _f(0.5, "initial simplex step of the Nelder–Mead orientation search", "deg"),
    "orientation_angles": _i(2, "angles per frame of --refine-orientation gradient: 2 tilts ⟂ beam, or 3 (also the "
                             "rotation about the beam, which moves the rocking axis)", minimum=2, maximum=3),
    "minibatch": _i(0, "frames per Adam step (0: full batch)"),
    "thickness_samples": _i(1, "ThicknessNN reparameterised draws per frame, intensities averaged", minimum=1),
    "lr_schedule": Setting(str, "constant", "learning-rate schedule (cosine: decay to 5 % over the epochs)",
                           choices=("constant", "cosine")),
    "lr_warmup": _i(0, "steps over which the learning rates ramp up linearly (0: none; for runs that start from "
                    "a refined model)", minimum=0),
    "checkpoint_every": _i(10, "steps between checkpoints (0: only at the end)"),
    "r_free": _f(0.0, "fraction of the reflections (or frames) held out of the refinement for R_free (0: none)",
                 open_min=False, maximum=0.5),
    "r_free_mode": Setting(str, "reflections", "what R_free holds out: unique reflections (with their symmetry "
                           "equivalents and Friedel mates) or whole frames", choices=("reflections", "frames")),
    "r_free_seed": _i(0, "seed of the R_free choice"),
    "lsq_jacobian": Setting(str, "auto", "gn/lm Jacobian: forward, reverse, matrix-free CG, or chosen by size",
                            choices=("auto", "fwd", "rev", "cg")),
    "lsq_damping": _f(1e-3, "initial Levenberg-Marquardt damping λ (dimensionless)"),
    "lsq_ftol": _f(1e-8, "gn/lm stop: relative decrease of the cost below this"),
    "hybrid_adam_steps": _i(10, "hybrid: Adam steps on the thickness model per LM step", minimum=1),
    # config-file only (no command-line option)
    "lbfgs_metric": Setting(str, "rates", "lbfgs: work in each group's units of its learning rate (a diagonal "
                            "preconditioner; first trial step = Adam's first step) or in the raw parameters",
                            choices=("rates", "identity")),
    "nn_prior": Setting(bool, False, "ThicknessNN with a learnable quadratic prior in the tilt"),
    "refine_occupancy": Setting(bool, False, "refine occupancies (in (0, 1))"),
    "residual": Setting(str, "paper", "refined residual: the reference paper's wR_all on I, or Jana's on |F|",
                        choices=("paper", "jana")),
    "per_frame_mean": Setting(bool, False, "minimise the rms of per-frame wR_all (every frame counts equally)"),
    "frame_loss": Setting(str, "rms", "with per_frame_mean: the rms of per-frame wR_all, or their mean (the published "
                          "aggregate)", choices=("rms", "mean")),
}

_SCHEMA = {
    "simulate": {
        "thickness": _f(None, "crystal thickness along the surface normal (required)", "Å"),
        "energy": _f(200.0, "accelerating voltage", "kV"),
        "g_max": _f(1.5, "beams in the Bloch matrix: |g| ≤ G", "1/Å"),
        "sg_max": _f(0.02, "beams in the Bloch matrix: |s_g| ≤ S", "1/Å"),
        "scattering": _SCATTERING,
        "absorption": _ABSORPTION,
        "thermal_absorption": _THERMAL,
        "float32": _FLOAT32,
    },
    "synth": {
        "frames": _DATA["frames"],
        "profile": Setting(str, "random", "true thickness profile (random: a smooth seeded function of the tilt)",
                           choices=("constant", "wedge", "plate", "random")),
        "thickness": _f(800.0, "mean / base thickness t0", "Å"),
        "i_max": _f(1e6, "counts of the brightest reflection", "counts"),
        "semi_angle": _f(1.0, "integration semi-angle of a generated tilt series", "deg"),
        "seed": _i(0, "seed of the thickness profile and the Poisson noise"),
        "g_max": _DATA["g_max"],
        "sg_max": _DATA["sg_max"],
        "g_max_refine": _DATA["g_max_refine"],
        "samples": _DATA["samples"],
        "scattering": _SCATTERING,
    },
    "evaluate": {**_DATA, "thickness": _f(800.0, "crystal thickness of every frame", "Å")},
    "refine": {**_DATA, **_REFINE},
}

COMMANDS = tuple(_SCHEMA)


def _refine_extras() -> dict:
    """RefineConfig fields with a scalar default that the schema does not list (e.g. newer optimiser options):
    type-checked here, range-checked by RefineConfig itself."""
    from jaxed.refine.optimize import RefineConfig

    out = {}
    for field in dataclasses.fields(RefineConfig):
        if field.name in _SCHEMA["refine"] or field.default is dataclasses.MISSING:
            continue
        kind = type(field.default)
        if kind in (float, int, str, bool):
            out[field.name] = Setting(kind, field.default, f"RefineConfig.{field.name}")
    return out


def schema(command: str) -> dict[str, Setting]:
    """The settings of ``command`` ('simulate', 'synth', 'refine' or 'evaluate')."""
    if command not in _SCHEMA:
        raise JaxedInputError(f"command '{command}': expected one of {', '.join(COMMANDS)}")
    return {**_refine_extras(), **_SCHEMA["refine"]} if command == "refine" else dict(_SCHEMA[command])


def validate(data: dict, where: str) -> dict:
    """Check a parsed config (top-level keys and per-command tables); returns it with '-' in keys turned into '_'.

    Raises:
        JaxedInputError naming ``where`` and the key: unknown key or table, wrong type, value out of range.
    """
    if not isinstance(data, dict):
        raise JaxedInputError(f"{where}: expected a table of settings, got {type(data).__name__}")
    schemas = {c: schema(c) for c in COMMANDS}
    every = {}
    for c in COMMANDS:
        every.update(schemas[c])
    out: dict = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in COMMANDS:
            if not isinstance(value, dict):
                raise JaxedInputError(f"{where}: [{name}] must be a table of settings, got {value!r}")
            table = {}
            for sub_key, sub_value in value.items():
                sub_name = str(sub_key).replace("-", "_")
                if sub_name not in schemas[name]:
                    raise JaxedInputError(f"{where}: [{name}] {sub_key}: unknown setting of `jaxed {name}` "
                                          f"(known: {', '.join(sorted(schemas[name]))})")
                table[sub_name] = schemas[name][sub_name].check(sub_value, f"{where}: [{name}] {sub_key}")
            out[name] = table
        elif name in every:
            owners = [c for c in COMMANDS if name in schemas[c]]
            # a shared key must fit every command that has it (e.g. thickness: [Å] in each)
            for c in owners:
                out[name] = schemas[c][name].check(value, f"{where}: {key}")
        else:
            raise JaxedInputError(f"{where}: unknown setting '{key}' (known: {', '.join(sorted(every))}; "
                                  f"tables: {', '.join(COMMANDS)})")
    return out


def read_config(path: str | Path) -> dict:
    """Read and validate a TOML (``.toml``) or JSON file of settings (see :func:`validate`)."""
    path = Path(path)
    if not path.is_file():
        raise JaxedInputError(f"{path}: no such config file")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JaxedInputError(f"{path}: cannot parse config ({detail})") from None
    return validate(data, str(path))


def effective_settings(command: str, config: dict | None, cli: dict) -> dict:
    """Defaults < config top level < config [command] table < command line (``cli``: values not None).

    Command-line values are checked against the schema too (errors name the option, e.g. '--samples')."""
    settings = schema(command)
    merged = {k: s.default for k, s in settings.items()}
    if config:
        merged.update({k: v for k, v in config.items() if k in settings})
        merged.update(config.get(command, {}))
    for key, value in cli.items():
        if value is not None and key in settings:
            merged[key] = settings[key].check(value, f"--{key.replace('_', '-')}")
    return merged


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def write_config(path: str | Path, command: str, settings: dict, header: dict | None = None) -> None:
    """Write the effective ``settings`` of ``command`` as TOML (unset values as comments); ``header``: extra
    lines of context (inputs, version) written as comments."""
    known = schema(command)
    lines = [f"# effective settings of `jaxed {command}`; rerun with --config {Path(path).name}"]
    for key, value in (header or {}).items():
        lines.append(f"# {key}: {value}")
    lines.append(f"[{command}]")
    for key in sorted(settings):
        if key not in known:
            continue
        value = settings[key]
        unit = f"  # [{known[key].unit}]" if known[key].unit else ""
        if value is None:
            lines.append(f"# {key}: unset ({known[key].help}){unit}")
        else:
            lines.append(f"{key} = {_toml_value(value)}{unit}")
    Path(path).write_text("\n".join(lines) + "\n")


def format_help(setting: Setting) -> str:
    """Help text with unit and default, e.g. 'beams in the Bloch matrix: |g| ≤ G [1/Å] (default: 1.6)'."""
    text = setting.help + (f" [{setting.unit}]" if setting.unit else "")
    default = "unset" if setting.default is None else setting.default
    if setting.kind is bool:
        return text
    return f"{text} (default: {default})".replace("%", "%%")
