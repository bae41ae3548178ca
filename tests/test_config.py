"""Settings: one schema (jaxed.settings) for the dataclass defaults, the command line (options, help, groups) and the
config files (validation, effective settings); the effective settings of a run are saved and read back; report.md and
the refined CIF's standard tags."""
import argparse
import ast
import dataclasses
import json

import gemmi
import numpy as np
import pytest

from conftest import ROOT
from jaxed import __version__
from jaxed.app.config import effective_settings, read_config, schema, validate, write_config
from jaxed.app.cli import _build_parser, main
from jaxed.model.experiment import ExperimentSettings
from jaxed.physics.bloch import BlochSettings
from jaxed.refine.optimize import RefineConfig
from jaxed.settings import CONCERNS, SETTINGS, field_values, setting_of_field
from jaxed.physics.crystal import load_structure
from jaxed.errors import JaxedInputError

DATA = ROOT / "jaxed" / "data"
QUARTZ = DATA / "quartz_P3221.cif"
PETS = DATA / "quartz_demo.cif_pets"


def _one_line(tmp_path, text, suffix=".toml") -> str:
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    with pytest.raises(JaxedInputError) as info:
        read_config(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("text, needles", [
    ("epoch = 3\n", ["unknown setting 'epoch'", "epochs"]),  # a typo is named, with the known keys
    ("[refine]\nthickness_modle = 'nn'\n", ["[refine] thickness_modle", "unknown setting of `jaxed refine`"]),
    ("[simulate]\nepochs = 3\n", ["[simulate] epochs"]),  # a refine key in another command's table
    ("[refine]\nepochs = 'many'\n", ["[refine] epochs = 'many'", "an integer"]),
    ("[refine]\nepochs = 2.5\n", ["epochs = 2.5", "an integer"]),
    ("[refine]\nfloat32 = 1\n", ["float32 = 1", "true or false"]),
    ("g_max = -1.0\n", ["g_max = -1.0", "a positive number", "[1/Å]"]),
    ("samples = 0\n", ["samples = 0", "≥ 1"]),
    ("[evaluate]\nthickness = nan\n", ["thickness = nan", "[Å]"]),
    ("scattering = 'xray'\n", ["scattering = 'xray'", "lobato, peng"]),
    ("cell_tolerance = 3.0\n", ["cell_tolerance = 3.0", "≤ 1"]),
    ("[refine]\nr_free = 0.5\n", ["r_free = 0.5", "≥ 0 and < 0.5"]),  # RefineConfig's own range: [0, 0.5)
    ("refine = 3\n", ["[refine] must be a table"]),
    ("g_max = \n", ["cannot parse config"]),  # TOML syntax error
])
def test_config_errors_name_the_key(tmp_path, text, needles):
    message = _one_line(tmp_path, text)
    for needle in needles:
        assert needle in message, message


def test_json_config_and_its_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"g-max": 1.2, "refine": {"epochs": 7}}))
    assert read_config(path) == {"g_max": 1.2, "refine": {"epochs": 7}}
    assert "lr = -0.1" in _one_line(tmp_path, json.dumps({"refine": {"lr": -0.1}}), ".json")
    assert "expected a table" in _one_line(tmp_path, "[1, 2]", ".json")


def test_precedence_defaults_top_level_table_command_line():
    cfg = validate({"g_max": 1.2, "samples": 9, "epochs": 50, "refine": {"samples": 11, "lr": 0.01},
                    "evaluate": {"thickness": 650.0}}, "cfg")
    s = effective_settings("refine", cfg, {"lr": 0.02, "epochs": None})
    assert s["g_max"] == 1.2  # top level
    assert s["samples"] == 11  # [refine] over top level
    assert s["lr"] == 0.02  # command line over [refine]
    assert s["epochs"] == 50  # None on the command line = not given
    assert s["sg_max"] == schema("refine")["sg_max"].default == 0.01  # default
    e = effective_settings("evaluate", cfg, {})
    assert e["thickness"] == 650.0 and e["samples"] == 9 and "epochs" not in e
    with pytest.raises(JaxedInputError, match="--samples = 0: expected an integer ≥ 1"):
        effective_settings("refine", None, {"samples": 0})


def test_saved_settings_read_back_to_the_same(tmp_path):
    # Every command: the effective settings written as TOML (unset values as comments) read back identical.
    for command in ("simulate", "synth", "refine", "evaluate"):
        s = effective_settings(command, None, {"g_max": 1.3, "frames": "every:2" if command != "simulate" else None,
                                               "thickness": 420.0})
        path = tmp_path / f"{command}.toml"
        write_config(path, command, s, header={"structure": "x.cif"})
        assert effective_settings(command, read_config(path), {}) == s, command


# --------------------------------------------------------------------------------------------- one schema
_DATACLASSES = {"BlochSettings": ("jaxed/physics/bloch.py", BlochSettings),
                "ExperimentSettings": ("jaxed/model/selection.py", ExperimentSettings),
                "RefineConfig": ("jaxed/refine/optimize.py", RefineConfig)}


def test_every_dataclass_default_is_its_settings_default():
    # Each field of the three settings dataclasses is held by exactly one setting, and its default is that
    # setting's (converted where the field holds something else: geometry 'file' → precession None); every setting
    # that names a field names an existing one.
    named = {s.field for s in SETTINGS if s.field is not None}
    for cls_name, (_, cls) in _DATACLASSES.items():
        for f in dataclasses.fields(cls):
            s = setting_of_field(f"{cls_name}.{f.name}")
            assert f.default == s.field_value(s.default) and type(f.default) is type(s.field_value(s.default)), f
            named.discard(f"{cls_name}.{f.name}")
    assert not named, f"settings name fields that do not exist: {named}"


def test_no_dataclass_writes_a_default_of_its_own():
    # The source of each field reads `= field_default("Class.field")` with its own name: a literal default (even one
    # equal to the schema's today) would be a second definition that can drift.
    for cls_name, (path, _) in _DATACLASSES.items():
        tree = ast.parse((ROOT / path).read_text())
        body = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls_name).body
        fields = [n for n in body if isinstance(n, ast.AnnAssign)]
        assert fields, cls_name
        for node in fields:
            call = node.value
            assert (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "field_default"
                    and [a.value for a in call.args] == [f"{cls_name}.{node.target.id}"]), \
                f"{path}:{node.lineno}: {cls_name}.{node.target.id} = {ast.unparse(call)}"


def test_command_line_defaults_build_the_python_defaults():
    # With nothing given, the settings each command hands to the dataclasses are their Python defaults: the command
    # line and the library agree (they did not: lsq_damping 1e-3 vs 1e-4).
    for command in ("evaluate", "refine"):
        s = effective_settings(command, None, {})
        assert ExperimentSettings(**field_values("ExperimentSettings", command, s)) == ExperimentSettings()
        assert BlochSettings(**field_values("BlochSettings", command, s)) == BlochSettings()
    s = effective_settings("refine", None, {})
    assert RefineConfig(**field_values("RefineConfig", "refine", s)) == RefineConfig()
    assert s["lsq_damping"] == RefineConfig().lsq_damping == 1e-4 and s["nm_step"] == 0.5
    assert BlochSettings(**field_values("BlochSettings", "simulate", effective_settings("simulate", None, {}))) \
        == BlochSettings()
    # and a setting reaches its field converted: --refine-orientation gradient is RefineConfig.refine_orientation
    s = effective_settings("refine", None, {"refine_orientation": "gradient", "geometry": "precession", "samples": 5})
    assert RefineConfig(**field_values("RefineConfig", "refine", s)).refine_orientation is True
    exp = ExperimentSettings(**field_values("ExperimentSettings", "refine", s))
    assert exp.precession is True and exp.n_samples == 5


def _subparser(command) -> argparse.ArgumentParser:
    return next(a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]


def _options(command):
    """{dest: (action, group title)} of the options of `jaxed command`."""
    groups = _subparser(command)._action_groups
    return {a.dest: (a, g.title) for g in groups for a in g._group_actions if a.option_strings}


@pytest.mark.parametrize("command", ["simulate", "synth", "evaluate", "refine"])
def test_parser_options_come_from_the_schema(command):
    # One option per setting of the command, in the group of its concern, with the schema's choices and help (unit,
    # default), and default None (not given: a config file or the schema fills it); the only other options are the
    # command's files and run controls.
    options = _options(command)
    settings = schema(command)
    groups = [g for g in _subparser(command)._action_groups if g.title in CONCERNS]
    assert [g.title for g in groups] == [c for c in CONCERNS if any(s.concern == c for s in settings.values())]
    assert all(g._group_actions for g in groups)  # no empty group in --help
    others = {"help", "out", "block", "config", "beam", "beams", "frames_from", "tilt_series", "resume",
              "no_progress"}
    assert set(options) - set(settings) <= others, set(options) - set(settings)
    for name, s in settings.items():
        action, group = options[name]
        assert action.option_strings[0] == s.flag and group == s.concern, name
        assert action.default is None, name
        assert tuple(action.choices or ()) == s.choices, name
        assert action.help.startswith(s.help.replace("%", "%%")), name
        if s.default is not None and s.kind is not bool:
            assert action.help.endswith(f"(default: {s.default})"), (name, action.help)
        if s.unit:
            assert f"[{s.unit}]" in action.help, name


def test_help_lists_options_grouped_by_concern(capsys):
    with pytest.raises(SystemExit):
        main(["refine", "--help"])
    out = capsys.readouterr().out
    titles = [f"\n{c}:\n" for c in CONCERNS if c != "synthetic data"]
    positions = [out.index(t) for t in titles]
    assert positions == sorted(positions)  # the concerns in their order
    for flag, concern in (("--lsq-damping", "least squares"), ("--r-free ", "validation"), ("--g-max ", "physics"),
                          ("--checkpoint-every", "output"), ("--thickness-init", "thickness model")):
        start = out.index(f"\n{concern}:\n")
        end = min([p for p in positions if p > start] + [len(out)])
        assert flag in out[start:end], (flag, concern)


@pytest.mark.parametrize("args, needle", [
    (["--samples", "0"], "argument --samples: 0: expected an integer ≥ 1"),
    (["--lr", "abc"], "argument --lr: 'abc': expected a positive number"),
    (["--r-free", "0.5"], "argument --r-free: 0.5: expected a number ≥ 0 and < 0.5"),
    (["--thickness-init", "nan"], "argument --thickness-init: nan: expected a positive number [Å]"),
    (["--orientation-angles", "4"], "argument --orientation-angles: 4: expected an integer ≥ 2 and ≤ 3"),
    (["--lsq-jacobian", "exact"], "argument --lsq-jacobian: invalid choice: 'exact'"),
])
def test_bad_option_values_are_one_line_naming_the_option(capsys, args, needle):
    with pytest.raises(SystemExit) as info:
        main(["refine", str(QUARTZ), str(PETS), "--out", "unused", *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and needle in err, err


def test_boolean_options_can_switch_a_config_value_off(tmp_path):
    # --no-X beats a config file's x = true; not given (None) leaves it.
    cfg = validate({"refine": {"float32": True, "keep_best": False}}, "cfg")
    args = vars(_build_parser().parse_args(["refine", "s.cif", "d.cif_pets", "--out", "o", "--no-float32"]))
    assert args["float32"] is False and args["keep_best"] is None
    s = effective_settings("refine", cfg, args)
    assert s["float32"] is False and s["keep_best"] is False


def test_version_and_help_show_units_and_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"jaxed {__version__}"
    for command, needles in (("refine", ["[1/Å] (default: 1.6)", "(default: 200)", "[Å] (default: 800.0)",
                                         "--config"]),
                             ("evaluate", ["[Å] (default: 800.0)", "(default: 21)"]),
                             ("simulate", ["[kV] (default: 200.0)", "[1/Å] (default: 1.5)", "--config"]),
                             ("synth", ["[counts] (default: 1000000.0)", "[deg] (default: 1.0)"])):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert info.value.code == 0
        for needle in needles:
            assert needle in out, (command, needle)


def test_simulate_takes_its_settings_from_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "sim.toml"
    cfg.write_text("[simulate]\nthickness = 300.0\ng_max = 0.9\nenergy = 300.0\n")
    out = tmp_path / "p.csv"
    assert main(["simulate", str(QUARTZ), "--beam", "0", "0", "1", "--config", str(cfg), "--out", str(out)]) == 0
    rows = np.loadtxt(out, delimiter=",", skiprows=1)
    crystal, _ = load_structure(QUARTZ)
    g = np.linalg.norm(rows[:, 1:4] @ np.asarray(crystal.reciprocal).T, axis=1)  # [1/Å]
    assert g.max() <= 0.9 + 1e-9  # the config's g_max, not the default 1.5
    saved = read_config(tmp_path / "p.csv.config.toml")["simulate"]
    assert saved["thickness"] == 300.0 and saved["energy"] == 300.0
    # without it anywhere, the thickness is a one-line error naming both places it can come from
    assert main(["simulate", str(QUARTZ), "--beam", "0", "0", "1", "--out", str(out)]) == 2
    assert "--thickness: required (on the command line or as thickness in the --config file)" in capsys.readouterr().err


def test_refine_writes_report_md_cif_tags_and_its_settings(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('frames = "1-2"\nsamples = 3\ng_max = 1.0\ng_max_refine = 0.8\n'
                   '[refine]\nthickness_model = "single"\nepochs = 9\n')
    out = tmp_path / "r"
    assert main(["refine", str(QUARTZ), str(PETS), "--config", str(cfg), "--epochs", "3", "--no-progress",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["epochs"] == 3  # the command line beat the config's 9

    saved = read_config(out / "config.toml")["refine"]
    assert saved["epochs"] == 3 and saved["samples"] == 3 and saved["thickness_model"] == "single"
    assert saved["g_max"] == 1.0 and "semi_angle" not in saved  # unset: a comment, not a value

    block = gemmi.cif.read(str(out / "refined.cif")).sole_block()
    assert float(block.find_value("_refine_ls_R_factor_gt")) == pytest.approx(report["R_obs"], abs=1e-5)
    assert float(block.find_value("_refine_ls_wR_factor_ref")) == pytest.approx(report["wR_all"], abs=1e-5)
    assert int(block.find_value("_refine_ls_number_reflns")) == report["N_all"]
    assert int(block.find_value("_refine_ls_number_parameters")) == report["n_params"] > 0
    assert float(block.find_value("_refine_ls_goodness_of_fit_ref")) == pytest.approx(report["GoF"], rel=1e-3)
    assert f"jaxed {__version__}" in block.find_value("_computing_structure_refinement")
    assert "thickness_model = single" in block.find_value("_refine_special_details")
    assert 0.98 / 0.8 < float(block.find_value("_reflns_d_resolution_high")) < 2.0  # |g| ≤ g_max_refine 0.8 1/Å
    assert gemmi.make_small_structure_from_block(block).sites

    md = (out / "report.md").read_text()
    for section in ("## Result", "## Data", "## R factors per epoch", "## Refined parameters", "## Frames",
                    "## Largest residuals", "## Plots", "## Settings"):
        assert section in md, section
    assert f"| wR_all (on I, reference paper) | {report['wR_all']:.4f} |" in md
    epoch_rows = [line for line in md.split("## R factors per epoch")[1].split("##")[0].splitlines()
                  if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in epoch_rows] == [0, 1, 2]  # every epoch of a 3-epoch run
    assert f"| {report['wR_all']:.4f} |" in epoch_rows[-1]  # the last epoch's row is the final model
    assert "| Si1 | Si |" in md and "| O1 | O |" in md
    for image in ("r_factors.png", "thickness.png", "icalc_vs_iobs.png", "frame_r.png"):
        assert f"({image})" in md and (out / image).stat().st_size > 1000
    assert "nan" not in md.lower()


def test_report_md_shows_r_free_and_standard_uncertainties_when_given(tmp_path):
    from jaxed.app.report import write_markdown_report

    path = tmp_path / "report.md"
    row = {"label": "Si1", "element": "Si", "x": 0.47, "y": 0.1, "z": 0.2, "U_eq": 0.0123, "occupancy": 1.0,
           "su_x": 0.00031, "su_U_eq": 0.0004}
    write_markdown_report(path, {"R_obs": 0.05, "wR_all": 0.08, "R_free": 0.061, "wR_free": 0.09, "N_free": 40},
                          parameters=[row], epochs=[{"epoch": 0, "wR_all": 0.2, "R_free": 0.25}])
    md = path.read_text()
    assert "| R_free | 0.0610 |" in md and "| N_free | 40 |" in md
    assert "| Si1 | Si | 0.4700(3) | 0.10000 | 0.20000 | 0.0123(4) | 1.00000 |" in md  # s.u. in IUCr notation
    assert "| epoch | wR_all | R_free |" in md and "| 0 | 0.2000 | 0.2500 |" in md
    write_markdown_report(path, {"R_obs": 0.05, "wR_all": 0.08}, parameters=[{**row, "su_x": None}])
    assert "R_free" not in path.read_text() and "| 0.47000 |" in path.read_text()
