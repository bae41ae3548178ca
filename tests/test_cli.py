"""The `jaxed simulate` command-line contract (issue: stable interface other tools call)."""
import csv
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from jaxed.app.cli import main

QUARTZ = str(ROOT / "jaxed" / "data" / "quartz_P3221.cif")
SIMPLE = str(ROOT / "jaxed" / "data" / "simple_crystals.cif")


def _read(path):
    with open(path) as fh:
        rows = list(csv.reader(fh))
    return rows[0], np.array(rows[1:], dtype=float)


def test_simulate_writes_the_documented_csv(tmp_path):
    out = tmp_path / "q.csv"
    assert main(["simulate", QUARTZ, "--beam", "1", "0.13", "2.4", "--thickness", "500", "--out", str(out)]) == 0
    header, data = _read(out)
    assert header == ["frame", "h", "k", "l", "sg", "intensity"]
    assert np.all(data[:, 0] == 0) and np.all(data[0, 1:4] == 0)  # one frame, direct beam first
    assert np.all(np.abs(data[:, 4]) <= 0.02 + 1e-12)  # |s_g| ≤ sg_max
    # flux: Σ I = 1 up to the D-metric correction O(|g|²/2K²) ≲ 1e-3
    assert abs(data[:, 5].sum() - 1) < 1e-3


def test_simulate_many_beams_file_and_options(tmp_path):
    beams = tmp_path / "beams.txt"
    beams.write_text("# zone axes\n0 0 1\n1 1 0\n\n1 0.13 2.4\n")
    out = tmp_path / "g.csv"
    code = main(["simulate", SIMPLE, "--block", "GaAs", "--beams", str(beams), "--thickness", "300",
                 "--energy", "300", "--g-max", "1.2", "--sg-max", "0.03", "--scattering", "peng",
                 "--absorption", "0.05", "--out", str(out)])
    assert code == 0
    _, data = _read(out)
    assert sorted(set(data[:, 0].astype(int))) == [0, 1, 2]
    for f in range(3):
        total = data[data[:, 0] == f, 5].sum()
        assert 0.5 < total < 1.0  # absorption removes intensity


def test_simulate_thermal_absorption_option(tmp_path):
    # --thermal-absorption (κ = 0): the TDS potential alone removes intensity (GaAs at 300 Å: about 14 %), and a
    # config file's thermal_absorption = true does the same as the flag (identical output).
    outs = []
    for extra in (["--thermal-absorption"], ["--config", str(tmp_path / "c.toml")]):
        (tmp_path / "c.toml").write_text("[simulate]\nthermal_absorption = true\n")
        out = tmp_path / f"t{len(outs)}.csv"
        assert main(["simulate", SIMPLE, "--block", "GaAs", "--beam", "1", "0.13", "2.4", "--thickness", "300",
                     *extra, "--out", str(out)]) == 0
        outs.append(_read(out)[1])
    assert 0.8 < outs[0][:, 5].sum() < 0.95  # measured 0.857 (U'₀/U₀ = 2.1 % for GaAs)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("args, message", [
    (["simulate", "/nonexistent.cif", "--beam", "0", "0", "1", "--thickness", "10"], "no such file"),
    (["simulate", QUARTZ, "--beam", "0", "0", "0", "--thickness", "10"], "non-zero"),
    (["simulate", QUARTZ, "--beam", "0", "0", "1", "--thickness", "-3"], "positive"),
    (["simulate", QUARTZ, "--beam", "0", "0", "1", "--thickness", "0"], "positive"),
    (["simulate", SIMPLE, "--beam", "0", "0", "1", "--thickness", "10"], "--block"),
])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(args + ["--out", str(tmp_path / "x.csv")]))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_element_and_bad_beams_file(tmp_path, capsys):
    cif = tmp_path / "x.cif"
    cif.write_text(open(QUARTZ).read().replace("O1 O ", "O1 Xq "))
    assert main(["simulate", str(cif), "--beam", "0", "0", "1", "--thickness", "10", "--out", str(tmp_path / "o.csv")]) == 2
    assert "unknown element" in capsys.readouterr().err
    beams = tmp_path / "b.txt"
    beams.write_text("0 0 1\n1 x 2\n")
    assert main(["simulate", QUARTZ, "--beams", str(beams), "--thickness", "10", "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{beams}:2" in err and len(err.strip().splitlines()) == 1


def test_console_script_bad_input_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jaxed.app.cli", "simulate", "/nonexistent.cif", "--beam", "0", "0", "1",
                           "--thickness", "10", "--out", str(tmp_path / "o.csv")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
