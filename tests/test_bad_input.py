"""Inputs that must not hurt jaxed: a corpus of malformed files and settings, each made in tmp_path from the files
shipped in jaxed/data, run through the command line. Every one ends in exit status 2 and exactly one
'jaxed: error:' line (no traceback, no NaN report), or, where the data can still be used, in one-line warnings and a
finite result. A refinement killed with SIGKILL resumes from its last checkpoint without losing an epoch.

Already covered elsewhere and not repeated here: unknown element, zero beam direction, bad beams file
(tests/test_cli.py); the PETS reader's per-tag errors on a minimal file (tests/test_pets.py).
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from jaxed.app.cli import main

DATA = ROOT / "jaxed" / "data"
QUARTZ = DATA / "quartz_P3221.cif"
PETS = DATA / "quartz_demo.cif_pets"
# small and fast: two frames, three rocking samples, ~16 beams
SMALL = ["--frames", "1-2", "--samples", "3", "--g-max", "1.0", "--g-max-refine", "0.8"]


def _run(args, capsys) -> tuple[int, str]:
    """Exit status and stderr of the command line (argparse's own errors included)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _fails(args, capsys, *needles) -> str:
    """Exit status 2, one 'jaxed: error:' line containing every needle, nothing but 'jaxed:' lines, no traceback."""
    code, err = _run(args, capsys)
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("jaxed: error:")]
    assert code == 2, err
    assert len(errors) == 1 and all(line.startswith("jaxed: ") for line in lines), err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _pets_text() -> str:
    return PETS.read_text()


def _refln_rows(text: str) -> tuple[list[str], int]:
    """Lines of the file and the index of the first reflection row."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("_refln_")) + 1
    return lines, start


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _evaluate(structure, data, tmp_path, *extra):
    return ["evaluate", structure, data, "--out", tmp_path / "out", *SMALL, *extra]


# ------------------------------------------------------------------------------------------------- structure files
@pytest.mark.parametrize("cut, needle", [(900, "not a readable CIF"),  # inside the aniso loop: a row cut short
                                         ("loop_\n_atom_site_label", "no data block with _cell_length_a")])
def test_truncated_structure_cif(tmp_path, capsys, cut, needle):
    text = QUARTZ.read_text()
    cif = _write(tmp_path, "cut.cif", text[:cut if isinstance(cut, int) else text.index(cut)])
    _fails(_evaluate(cif, PETS, tmp_path), capsys, needle, str(cif))


def test_structure_without_symmetry(tmp_path, capsys):
    text = QUARTZ.read_text()
    no_sym = text[:text.index("_symmetry_space_group_name_H-M")] + text[text.index("loop_\n_atom_site_label"):]
    cif = _write(tmp_path, "nosym.cif", no_sym)
    _fails(_evaluate(cif, PETS, tmp_path), capsys, "no space group")


def test_zero_occupancy_everywhere_is_refused(tmp_path, capsys):
    text = QUARTZ.read_text().replace("_atom_site_U_iso_or_equiv\n",
                                      "_atom_site_U_iso_or_equiv\n_atom_site_occupancy\n")
    text = text.replace(" Uani\n", " 0.0 Uani\n")
    cif = _write(tmp_path, "empty.cif", text)
    _fails(_evaluate(cif, PETS, tmp_path), capsys, "occupancy 0")
    _fails(["simulate", cif, "--beam", "0", "0", "1", "--thickness", "100", "--out", tmp_path / "s.csv"], capsys,
           "occupancy 0")
    assert not (tmp_path / "out" / "report.json").exists()  # no report of R = 100 % or NaN


def test_cell_mismatch_beyond_tolerance(tmp_path, capsys):
    cif = _write(tmp_path, "big.cif", QUARTZ.read_text().replace("_cell_length_c 5.40030", "_cell_length_c 5.9"))
    _fails(_evaluate(cif, PETS, tmp_path), capsys, "--cell-tolerance", "9.25 %")


# ------------------------------------------------------------------------------------------------------ data files
def test_cif_pets_without_its_reflection_loop(tmp_path, capsys):
    text = _pets_text()
    data = _write(tmp_path, "noloop.cif_pets", text[:text.index("loop_\n_refln_index_h")])
    _fails(_evaluate(QUARTZ, data, tmp_path), capsys, "missing _refln_index_h", "_refln_zone_axis_id")


def test_cif_pets_without_its_frame_loop(tmp_path, capsys):
    text = _pets_text()
    data = _write(tmp_path, "noframes.cif_pets",
                  text[:text.index("loop_\n_diffrn_zone_axis_id")] + text[text.index("loop_\n_refln_index_h"):])
    _fails(_evaluate(QUARTZ, data, tmp_path), capsys, "missing _diffrn_zone_axis_id")


def test_frames_that_do_not_exist(tmp_path, capsys):
    _fails(["evaluate", QUARTZ, PETS, "--out", tmp_path / "o", "--frames", "30-31"], capsys, "frames must lie in 1..25")
    lines, start = _refln_rows(_pets_text())
    fields = lines[start].split()
    lines[start] = " ".join(fields[:5] + ["4242"])  # a reflection of a frame id the file does not list
    data = _write(tmp_path, "ghost.cif_pets", "\n".join(lines) + "\n")
    _fails(_evaluate(QUARTZ, data, tmp_path), capsys, "_refln_zone_axis_id 4242 has no frame")


@pytest.mark.parametrize("column, value", [(3, "nan"), (3, "inf"), (3, "-inf"), (4, "nan")])
def test_non_finite_intensity_or_sigma(tmp_path, capsys, column, value):
    lines, start = _refln_rows(_pets_text())
    fields = lines[start + 5].split()
    fields[column] = value
    lines[start + 5] = " ".join(fields)
    data = _write(tmp_path, "nan.cif_pets", "\n".join(lines) + "\n")
    tag = "_refln_intensity_meas" if column == 3 else "_refln_intensity_sigma"
    _fails(_evaluate(QUARTZ, data, tmp_path), capsys, tag, "loop row 6", "non-finite")


@pytest.mark.parametrize("sigma", ["0.0", "-3.5"])
def test_non_positive_sigma_is_refused_unless_dropped(tmp_path, capsys, sigma):
    lines, start = _refln_rows(_pets_text())
    fields = lines[start + 2].split()
    fields[4] = sigma
    lines[start + 2] = " ".join(fields)
    data = _write(tmp_path, "sigma.cif_pets", "\n".join(lines) + "\n")
    _fails(_evaluate(QUARTZ, data, tmp_path), capsys, "_refln_intensity_sigma ≤ 0", "loop row 3", "--drop-bad-sigma")


def test_empty_frame_selection_is_refused(tmp_path, capsys):
    lines, start = _refln_rows(_pets_text())
    first_frame = lines[start].split()[5]
    kept = [line for line in lines[start:] if line.split()[5] != first_frame]
    data = _write(tmp_path, "empty1.cif_pets", "\n".join(lines[:start] + kept) + "\n")
    _fails(["evaluate", QUARTZ, data, "--out", tmp_path / "o", "--frames", "1"], capsys, "no frame has reflections")


def test_usable_data_with_flaws_gives_warnings_and_a_finite_result(tmp_path, capsys):
    # one file with three flaws that leave usable data: repeated rows, an empty frame, a σ ≤ 0 row (dropped on
    # request). Each is one 'jaxed: warning:' line; the evaluation finishes with finite R factors on frames 2-3.
    lines, start = _refln_rows(_pets_text())
    first_frame = lines[start].split()[5]
    rows = [line for line in lines[start:] if line.split()[5] != first_frame]  # frame 1 empty
    rows = rows[:3] + rows[:3] + rows[3:]  # three repeated rows
    bad = rows[7].split()
    bad[4] = "0.0"
    rows[7] = " ".join(bad)
    data = _write(tmp_path, "flawed.cif_pets", "\n".join(lines[:start] + rows) + "\n")
    code, err = _run(["evaluate", QUARTZ, data, "--out", tmp_path / "o", "--frames", "1-3", "--samples", "3",
                      "--g-max", "1.0", "--g-max-refine", "0.8", "--drop-bad-sigma"], capsys)
    assert code == 0, err
    warnings = [line for line in err.strip().splitlines() if line.startswith("jaxed: warning:")]
    assert any("repeat a (frame, hkl)" in w and "3 reflection row(s)" in w for w in warnings), err
    assert any("1 frame(s) have no reflections" in w for w in warnings), err
    assert any("_refln_intensity_sigma ≤ 0 in 1 rows" in w and "dropped" in w for w in warnings), err
    assert "Traceback" not in err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert len(report["frame_id"]) == 2 and first_frame not in map(str, report["frame_id"])
    assert all(np.isfinite(report[k]) for k in ("R_obs", "wR_all", "GoF"))


# ------------------------------------------------------------------------------------------------ sizes and memory
def test_absurd_g_max_is_refused_before_allocating(tmp_path, capsys):
    # g_max 40 1/Å on quartz: ~10⁶ beams per matrix, petabytes of Bloch matrices. The estimate refuses it at once
    # (without it, the host-side beam candidates alone take minutes and tens of GB).
    t0 = time.perf_counter()
    line = _fails(["evaluate", QUARTZ, PETS, "--out", tmp_path / "o", "--g-max", "40"], capsys, "--g-max 40", "GB",
                  "more than this machine's")
    line2 = _fails(["simulate", QUARTZ, "--beam", "0", "0", "1", "--thickness", "100", "--g-max", "60",
                    "--out", tmp_path / "s.csv"], capsys, "--g-max 60", "GB")
    assert time.perf_counter() - t0 < 20.0, "refused only after real work"
    need = float(line.split("≈ ")[1].split(" GB")[0])
    assert need > 1e5 and "beams per matrix" in line and "beams per matrix" in line2  # one frame alone: ~4e5 GB


def test_memory_check_asks_for_one_frame_because_frames_run_in_chunks(monkeypatch):
    # The refinement and the evaluation run the frames in memory-sized chunks (jaxed.model.batching), so loading must
    # refuse only settings whose single frame does not fit: with room for 1.5 frames, 3 frames load; with room for
    # half a frame, loading refuses in one line.
    import warnings

    from jaxed.app import workflow
    from jaxed.data.pets import read_pets
    from jaxed.model import batching
    from jaxed.model.experiment import ExperimentSettings
    from jaxed.physics.crystal import load_structure

    settings = ExperimentSettings(g_max=1.6, sg_max=0.01, n_samples=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        semi = float(np.max(np.abs(read_pets(PETS).precession_angle)))
        one, _ = batching.estimate_bytes(load_structure(QUARTZ)[0].volume, 1.6, 0.01, 1, 5, semi)
        for room, fits in ((1.5, True), (0.5, False)):
            monkeypatch.setattr(batching, "physical_memory", lambda room=room: room * one)
            if fits:
                exp = workflow.load_problem(QUARTZ, PETS, frames="1-3", exp_settings=settings, log=lambda s: None)[3]
                assert exp.n_frames == 3
            else:
                with pytest.raises(workflow.JaxedInputError, match="1 frame"):
                    workflow.load_problem(QUARTZ, PETS, frames="1-3", exp_settings=settings, log=lambda s: None)


def test_memory_estimate_is_close_to_the_real_beam_count():
    # The estimate that guards against absurd settings must not refuse reasonable ones: on the demo data it is
    # within a factor 2 of the beams the host-side selection actually picks.
    import warnings

    from jaxed.physics.crystal import load_structure
    from jaxed.model.experiment import ExperimentSettings, prepare_experiment
    from jaxed.data.pets import read_pets
    from jaxed.model.batching import estimate_bytes

    crystal, _ = load_structure(QUARTZ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = read_pets(PETS).subset_frames([0, 1, 2])
    exp = prepare_experiment(data, crystal, ExperimentSettings(g_max=1.6, sg_max=0.01, n_samples=5))
    real = max(len(np.nonzero(np.asarray(m))[0]) for m in np.asarray(exp.beams.mask))
    _, estimate = estimate_bytes(crystal.volume, 1.6, 0.01, 3, 5, float(np.max(data.precession_angle)))
    assert 0.5 < estimate / real < 2.0, (estimate, real)


# ---------------------------------------------------------------------------------------------------- checkpoints
def _refine_args(out, *extra):
    return ["refine", QUARTZ, PETS, "--out", out, *SMALL, "--thickness-model", "single", "--no-progress", *extra]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickle", "nan"])
def test_corrupt_checkpoint_is_one_line(tmp_path, capsys, damage):
    out = tmp_path / "run"
    out.mkdir()
    path = out / "checkpoint.npz"
    if damage == "garbage":
        path.write_bytes(b"this is not a zip file")
    elif damage == "truncated":
        np.savez(path, meta=np.array(json.dumps({"epoch": 1, "history": []})), p_leaf_00000=np.ones(100))
        path.write_bytes(path.read_bytes()[:150])
    elif damage == "pickle":  # an object array: np.load(allow_pickle=False) must refuse it, never unpickle
        np.savez(path, meta=np.array(json.dumps({"epoch": 1, "history": []})),
                 p_leaf_00000=np.array([{"evil": 1}], dtype=object))
    else:
        np.savez(path, meta=np.array(json.dumps({"epoch": 1, "history": [{"epoch": 0, "loss": 1.0, "seconds": 0}]})),
                 p_leaf_00000=np.array([np.nan]))
    needle = "non-finite parameter" if damage == "nan" else "cannot read the checkpoint"
    _fails(_refine_args(out, "--resume", "--epochs", "3"), capsys, needle, str(path))


def test_resume_without_checkpoint(tmp_path, capsys):
    _fails(_refine_args(tmp_path / "none", "--resume"), capsys, "--resume: no checkpoint")


def _checkpoint_epoch(out) -> int:
    """Epoch of the checkpoint on disk (read as resume reads it; -1 while there is none or it is being replaced)."""
    try:
        with np.load(out / "checkpoint.npz", allow_pickle=False) as data:
            return int(json.loads(str(data["meta"]))["epoch"])
    except (OSError, ValueError, KeyError):
        return -1


@pytest.fixture
def compilation_cache(tmp_path):
    """A persistent XLA cache folder for `jaxed` subprocesses (the same programs are compiled once)."""
    return tmp_path / "xla-cache"


def test_sigkill_then_resume_loses_no_epoch(tmp_path, compilation_cache):
    # A refinement checkpointing every step is killed with SIGKILL after a few epochs; --resume continues from the
    # checkpoint and the result equals an uninterrupted run step for step (Adam state included), tolerance 1e-9.
    # All three runs are `jaxed` processes sharing one XLA cache, so the step is compiled once.
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(compilation_cache)}

    def command(out, *extra):
        return [sys.executable, "-m", "jaxed.app.cli", *map(str, _refine_args(out, *extra))]

    out = tmp_path / "killed"
    cmd = command(out, "--epochs", "100000", "--checkpoint-every", "1")
    cmd.remove("--no-progress")  # not a terminal: the progress bar must stay quiet on its own
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while _checkpoint_epoch(out) < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert "refine:" not in err and "epoch/s" not in err, err  # no progress bar in a pipe
    killed_at = _checkpoint_epoch(out)
    assert killed_at >= 3
    with np.load(out / "checkpoint.npz", allow_pickle=False) as data:
        saved = json.loads(str(data["meta"]))["history"]
    assert [h["epoch"] for h in saved] == list(range(killed_at))  # every completed epoch is in the checkpoint

    total = killed_at + 2
    # the resumed and the uninterrupted run are independent processes: run side by side (start-up dominates)
    runs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for args in (command(out, "--resume", "--epochs", total, "--checkpoint-every", "1"),
                         command(tmp_path / "straight", "--epochs", total))]
    try:
        for run in runs:
            _, err = run.communicate(timeout=300)
            assert run.returncode == 0, err
    finally:
        for run in runs:  # neither outlives the test
            if run.poll() is None:
                run.kill()
                run.communicate()
    resumed = json.loads((out / "report.json").read_text())
    straight = json.loads((tmp_path / "straight" / "report.json").read_text())
    assert resumed["epochs"] == total
    np.testing.assert_array_equal(resumed["history"][:killed_at], [h["loss"] for h in saved])
    np.testing.assert_allclose(resumed["history"], straight["history"], rtol=1e-9, atol=0)
    np.testing.assert_allclose(resumed["wR_all"], straight["wR_all"], rtol=1e-9)


def test_nothing_in_the_package_unpickles():
    # Every np.load in jaxed/ says allow_pickle=False, and no module imports pickle (checkpoints are plain arrays).
    import ast

    loads = 0
    for path in sorted((ROOT / "jaxed").rglob("*.py")):  # every subpackage
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names), path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and getattr(node.func.value, "id", None) in ("np", "numpy"):
                flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                assert flags.get("allow_pickle") is False, f"{path.name}:{node.lineno}: np.load without allow_pickle=False"
                loads += 1
    assert loads >= 1  # the checkpoint reader at least: the scan does see np.load calls
