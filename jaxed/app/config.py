"""Config files of the `jaxed` commands: one TOML (or JSON) format, validated on load against jaxed.settings.

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
:func:`write_config` (``DIR/config.toml``, grouped by concern), which :func:`read_config` reads back to the same
settings. The settings themselves (type, default, unit, range, help) are defined once, in :mod:`jaxed.settings`.
"""
from __future__ import annotations

import json
from pathlib import Path

from jaxed.errors import JaxedInputError
from jaxed.settings import COMMANDS, CONCERNS, Setting, schema

__all__ = ["Setting", "COMMANDS", "schema", "read_config", "validate", "effective_settings", "write_config"]


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
    """Write the effective ``settings`` of ``command`` as TOML, grouped by concern (unset values as comments);
    ``header``: extra lines of context (inputs, version) written as comments."""
    known = schema(command)
    lines = [f"# effective settings of `jaxed {command}`; rerun with --config {Path(path).name}"]
    for key, value in (header or {}).items():
        lines.append(f"# {key}: {value}")
    lines.append(f"[{command}]")
    for concern in CONCERNS:
        group = [s for s in known.values() if s.concern == concern and s.name in settings]
        if group:
            lines.append(f"# {concern}")
        for s in group:
            value = settings[s.name]
            unit = f"  # [{s.unit}]" if s.unit else ""
            if value is None:
                lines.append(f"# {s.name}: unset ({s.help}){unit}")
            else:
                lines.append(f"{s.name} = {_toml_value(value)}{unit}")
    Path(path).write_text("\n".join(lines) + "\n")
