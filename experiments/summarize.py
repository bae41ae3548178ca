"""Regenerate every results table from the records in experiments/results/.

The records are the JSON files the experiment scripts write (``table1/<tag>.json``, ``table2/<tag>.json``,
``quartz_parity_*.json``, ``bench_refine.jsonl``) and the table ``bench_frame.py`` writes (``bench_frame.md``); the
published numbers they are compared with are in ``published.json``. Which records stand behind the current tables
is decided here, once (``TABLE1``, ``TABLE2``, ``TABLE3``, ``PARITY``, ``SPEED_*``): each row is the current best of
its kind, with the command that reproduces it (from its record).

The tables are written between marker lines ``<!-- results:NAME:start -->`` / ``<!-- results:NAME:end -->`` in
docs/RESULTS.md, docs/SPEED.md and experiments/results/table{1,2}.md, and between ``<!-- results:start -->`` /
``<!-- results:end -->`` in README.md; text outside the markers is left alone.

    python experiments/summarize.py            # rewrite the generated blocks
    python experiments/summarize.py --check    # exit 1 (and name the block) if a committed block differs

Standard library only (no JAX): tests/test_records.py runs ``--check``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"

# ---------------------------------------------------------------------------------------------------------------
# The records behind the current tables
# ---------------------------------------------------------------------------------------------------------------

#: Table 1 (synthetic data made by `jaxed synth`): (tag in results/table1/, label of the optimiser).
TABLE1 = [
    ("quartz_jaxed_kinematic_d0.2_imax1e+06", "Adam 200"),
    ("quartz_jaxed_single_d0.2_imax1e+06", "Adam 200"),
    ("quartz_jaxed_nn_d0.2_imax1e+06_persample", "Adam 200"),
    ("quartz_jaxed_nn_d0.2_imax1e+06_persample_lm20", "Adam 200 + LM 20"),
    ("cspbbr3_jaxed_kinematic_d0.2_imax1e+06_step2_g1.0_persample", "Adam 200"),
    ("cspbbr3_jaxed_single_d0.2_imax1e+06_step2_g1.0_persample", "Adam 200"),
    ("cspbbr3_jaxed_nn_d0.2_imax1e+06_step2_g1.0_persample", "Adam 200"),
    ("cspbbr3_jaxed_nn_d0.2_imax1e+06_step2_g1.0_persample_lm20", "Adam 200 + LM 20"),
    ("paracetamol_jaxed_kinematic_d0.2_imax1e+06_step2_g0.9_persample", "Adam 200"),
    ("paracetamol_jaxed_single_d0.2_imax1e+06_step2_g0.9_persample", "Adam 200"),
    ("paracetamol_jaxed_nn_d0.2_imax1e+06_step2_g0.9_persample", "Adam 200"),
    ("paracetamol_jaxed_nn_d0.2_imax1e+06_step1_g1.2_persample_lm20", "Adam 200 + LM 40"),
]
#: Table 1 robustness (quartz ThicknessNN, per-sample beams): other starts and a low dose.
TABLE1_ROBUST = ["quartz_jaxed_nn_d0.1_imax1e+06_persample", "quartz_jaxed_nn_d0.2_imax1e+06_persample",
                 "quartz_jaxed_nn_d0.3_imax1e+06_persample", "quartz_jaxed_nn_d0.2_imax100_persample"]
#: The reference paper's own synthetic quartz set (its start model 1): not reproduced (README, known gaps).
TABLE1_PAPER_DATA = ["quartz_paper_nn_start1_persample", "quartz_paper_single_start1_persample"]

#: Table 2 (measured data): (tag in results/table2/, label).
TABLE2 = [
    ("quartz_P3221_v3ref_shared_tds_nm", "TDS absorption, Nelder–Mead cycle, from the authors' orientations"),
    ("quartz_P3221_v3ref_shared_tds_nm_r", "the same, rerun from the recorded commands"),
    ("quartz_P3221_v3ref_shared_tds_nmb0.5", "the same, rotation about the beam ≤ 0.5° per search"),
    ("quartz_P3221_v3", "elastic, from the file's orientations (Nelder–Mead + hexagonal scan)"),
    ("cspbbr3_full_g2.0_dsg_c3_gmin0.1", "elastic, without 0 0 ±1"),
    ("cspbbr3_c16_lbfgs_s60_rates", "TDS absorption, searches + L-BFGS (best R_obs)"),
    ("cspbbr3_c17_nm15", "the same + 15 frames searched (best wR_all)"),
    ("cspbbr3_c18_folded", "the same, tilts folded in and beams reselected"),
    ("paracetamol_prec_b160_r", "precession, elastic, ≤ 160 beams"),
    ("paracetamol_prec_b160_tds_r", "precession, TDS absorption, ≤ 160 beams"),
]
#: Table 3 (absolute structure, quartz): (protocol, P3₂21 tag, P3₁21 tag).
TABLE3 = [
    ("each hand: authors' orientations + its own hexagonal scan, elastic", "quartz_P3221_v3ref",
     "quartz_P3121_v3ref"),
    ("each hand: the file's orientations + its own searches, elastic", "quartz_P3221_v3", "quartz_P3121_v3"),
    ("shared geometry, TDS, then each hand's Nelder–Mead cycle", "quartz_P3221_v3ref_shared_tds_nm",
     "quartz_P3121_v3ref_shared_tds_nm"),
    ("the same, rerun from the recorded commands", "quartz_P3221_v3ref_shared_tds_nm_r",
     "quartz_P3121_v3ref_shared_tds_nm_r"),
    ("the same, rotation about the beam ≤ 0.5° per search", "quartz_P3221_v3ref_shared_tds_nmb0.5",
     "quartz_P3121_v3ref_shared_tds_nmb0.5"),
    ("one geometry for both, searched with P3₂21, no tilts (biased)", "quartz_P3221_v3ref_shared_notilt",
     "quartz_P3121_v3ref_shared_notilt"),
    ("one geometry for both, searched with P3₁21, no tilts (biased)", "quartz_P3221_v3ref_shared3121_notilt",
     "quartz_P3121_v3ref_shared3121_notilt"),
]
#: Forward parity on quartz at the published structure: (record file, 'before' or 'after', label).
PARITY = [
    ("quartz_parity_hexagonal_sample40_reforient_dsg0.0015.json", "before", "P3₂21, the authors' orientations"),
    ("quartz_parity_hexagonal_sample40_reforient_dsg0.0015.json", "after", "P3₂21, the authors' + hexagonal scan"),
    ("quartz_parity_nelder-mead+hexagonal_sample40_dsg0.0015.json", "after",
     "P3₂21, the file's + Nelder–Mead + hexagonal"),
    ("quartz_parity_hexagonal_sample40_reforient_quartz_P3121_enantiomorph_dsg0.0015.json", "before",
     "P3₁21, the authors' orientations"),
    ("quartz_parity_hexagonal_sample40_reforient_quartz_P3121_enantiomorph_dsg0.0015.json", "after",
     "P3₁21, the authors' + its own hexagonal scan"),
]
#: Speed: bench_frame.md cases (its rows are the record) and bench_refine.jsonl rows (the current conditions).
SPEED_FRAME = ["quartz per-sample N≤40", "quartz per-sample N≤40 (complex64)", "quartz per-sample N≤40, 99 frames",
               "quartz per-sample N≤40, 99 frames (complex64)", "quartz", "CsPbBr3 per-sample",
               "CsPbBr3 per-sample, complex path", "CsPbBr3"]
SPEED_REFINE = dict(frames=99, beams="sample", max_beams=40, samples=42, devices=1, pjrt_nproc="4")

SAMPLE_NAMES = {"quartz": "quartz", "cspbbr3": "CsPbBr₃", "paracetamol": "paracetamol"}
MODEL_NAMES = {"kinematic": "kinematical (10 Å)", "single": "single thickness", "nn": "ThicknessNN"}


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------

def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"{path.relative_to(ROOT)}: record missing (named in experiments/summarize.py)") from None


def published() -> dict:
    return _json(RESULTS / "published.json")


def table1_record(tag: str) -> dict:
    return _json(RESULTS / "table1" / f"{tag}.json")


def table2_record(tag: str) -> dict:
    return _json(RESULTS / "table2" / f"{tag}.json")


def bench_frame_rows() -> dict:
    """The table bench_frame.py writes, keyed by case: {case: [cells]}."""
    rows = {}
    for line in (RESULTS / "bench_frame.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| case") and len(cells) == 10:
            rows[cells[0]] = cells
    return rows


def bench_refine_rows() -> list[dict]:
    lines = (RESULTS / "bench_refine.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for x in lines if x.strip()]
    keep = [r for r in rows if all(str(r.get(k)) == str(v) for k, v in SPEED_REFINE.items())]
    latest = {}
    for r in keep:  # the latest row of each (precision, model)
        latest[(r.get("precision", "float64"), r["model"])] = r
    return [latest[k] for k in sorted(latest)]


# ---------------------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------------------

def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def _pair(a, b, digits=2) -> str:
    return f"{100 * a:.{digits}f} / {100 * b:.{digits}f} %"


def _pub(a, b) -> str:
    """A published pair of fractions as printed in its source (4.2, 10.15, 5.31)."""
    return f"{round(100 * a, 3):g} / {round(100 * b, 3):g} %"


CKPT_NOTE = (" — the `.ckpt` folder it starts from was not kept (checkpoint folders are not committed); "
             "the rows marked 'rerun' repeat that chain from kept files")


def _signed(x: float) -> str:
    return f"{x:.2f}".replace("-", "−")


class Commands:
    """Numbers the commands of a table's rows; rendered as a list under the table."""

    def __init__(self):
        self.items: list[str] = []

    def ref(self, command: str | None) -> str:
        if not command:
            return "–"
        if command not in self.items:
            self.items.append(command)
        return f"[{self.items.index(command) + 1}]"

    def render(self) -> list[str]:
        out = ["", "Commands:", ""] + [f"{i + 1}. `{c}`" + (CKPT_NOTE if ".ckpt" in c else "")
                                       for i, c in enumerate(self.items)]
        return out


def table1_block() -> str:
    pub = published()["table1"]
    cmd = Commands()
    out = ["| sample | thickness model | optimiser | frames step / samples / g_max [Å⁻¹] | N_obs / N_all | wR_all | "
           "ASU RMSD [Å] (non-H) | ‖ΔU‖_F [Å²] | thickness error (rms) | paper wR_all / RMSD / ‖ΔU‖ | cmd |",
           "|" + "---|" * 11]
    for tag, optimiser in TABLE1:
        r = table1_record(tag)
        p = pub[r["sample"]][r["model"]]
        rmsd = f"{r['rmsd_A']:.5f}"
        if r.get("rmsd_non_h_A") is not None and abs(r["rmsd_non_h_A"] - r["rmsd_A"]) > 1e-12:
            rmsd += f" ({r['rmsd_non_h_A']:.5f})"
        dU = f"{r['adp_frobenius']:.5f}"
        if r.get("adp_frobenius_non_h") is not None and abs(r["adp_frobenius_non_h"] - r["adp_frobenius"]) > 1e-12:
            dU += f" ({r['adp_frobenius_non_h']:.5f})"
        te = r.get("thickness_error", {}).get("rms_relative")
        size = f"{r.get('frame_step', 1)} / {r['n_samples']} / {r.get('g_max', 2.0)}"
        out.append(f"| {SAMPLE_NAMES[r['sample']]} | {MODEL_NAMES[r['model']]} | {optimiser} | {size} | "
                   f"{r['N_obs']} / {r['N_all']} | {r['wR_all']:.4f} | {rmsd} | {dU} | {_pct(te)} | "
                   f"{p[0]} / {p[1]} / {p[2]} | {cmd.ref(r.get('command'))} |")
    out += cmd.render()
    return "\n".join(out)


def table1_robust_block() -> str:
    cmd = Commands()
    out = ["| start Δ [Å] | I_max | N_obs / N_all | wR_all | ASU RMSD [Å] | ‖ΔU‖_F [Å²] | thickness error (rms) | cmd |",
           "|" + "---|" * 8]
    for tag in TABLE1_ROBUST:
        r = table1_record(tag)
        out.append(f"| {r['delta']} | {r['imax']:.0e} | {r['N_obs']} / {r['N_all']} | {r['wR_all']:.4f} | "
                   f"{r['rmsd_A']:.5f} | {r['adp_frobenius']:.4f} | {_pct(r['thickness_error']['rms_relative'])} | "
                   f"{cmd.ref(r.get('command'))} |")
    out += ["", "The paper's own synthetic quartz set (its start model 1, ASU RMSD 0.085 Å at the start; "
            "not reproduced by jaxed's forward model with the stated truth):", "",
            "| thickness model | N_obs / N_all | wR_all | R_obs | ASU RMSD [Å] | ‖ΔU‖_F [Å²] | mean t [nm] | cmd |",
            "|" + "---|" * 8]
    for tag in TABLE1_PAPER_DATA:
        r = table1_record(tag)
        out.append(f"| {MODEL_NAMES[r['model']]} | {r['N_obs']} / {r['N_all']} | {r['wR_all']:.3f} | "
                   f"{r['R_obs']:.3f} | {r['rmsd_A']:.4f} | {r['adp_frobenius']:.4f} | "
                   f"{r['mean_thickness_A'] / 10:.0f} | {cmd.ref(r.get('command'))} |")
    out += cmd.render()
    return "\n".join(out)


def table2_block() -> str:
    pub = published()["table2"]
    cmd = Commands()
    out = ["| sample | run | R_obs / wR_all, frame mean | pooled | N_obs, N_all | mean t [nm] | cmd |",
           "|" + "---|" * 7]
    last = None
    for tag, label in TABLE2:
        r = table2_record(tag)
        f, sample = r["final"], r["sample"]
        if last is not None and sample != last:
            out += _published_rows(pub[last])
        last = sample
        name = SAMPLE_NAMES[sample] + (f" {_hand(r['hand'])}" if sample == "quartz" else "")
        out.append(f"| {name} | {label} (`{tag}`) | **{_pair(f['R_obs_frame_mean'], f['wR_all_frame_mean'])}** | "
                   f"{_pair(f['R_obs'], f['wR_all'])} | {f['N_obs']}, {f['N_all']} | "
                   f"{r['mean_thickness_A'] / 10:.1f} | {cmd.ref(r['command'])} |")
    out += _published_rows(pub[last])
    out += cmd.render()
    return "\n".join(out)


def _hand(h: str) -> str:
    return {"P3221": "P3₂21", "P3121": "P3₁21"}.get(h, h)


def _published_rows(p: dict) -> list[str]:
    rows = [f"| | reference paper (hybrid) | {_pub(*p['paper'])} | | {p['paper_n'][0]}, "
            f"{p['paper_n'][1]} | {p['paper_t_nm']} | |",
            f"| | Jana2020 (Dyngo) | {_pub(*p['jana'])} | | | | |"]
    if "diffbloch_elastic" in p:
        rows.append(f"| | diffBloch: elastic; with absorption; its repository's rerun with absorption | "
                    f"{_pair(*p['diffbloch_elastic'])}; {_pair(*p['diffbloch_absorption'])}; "
                    f"{_pair(*p['diffbloch_repository_absorption'])} | | | | |")
    return rows


def table3_block() -> str:
    pub = published()["table3"]
    cmd = Commands()
    out = ["| protocol (frame means, R_obs / wR_all) | P3₂21 | P3₁21 | margin (P3₁21 − P3₂21) | cmd |",
           "|" + "---|" * 5]
    for label, right, wrong in TABLE3:
        a, b = table2_record(right)["final"], table2_record(wrong)["final"]
        ra, wa, rb, wb = a["R_obs_frame_mean"], a["wR_all_frame_mean"], b["R_obs_frame_mean"], b["wR_all_frame_mean"]
        refs = f"{cmd.ref(table2_record(right)['command'])} {cmd.ref(table2_record(wrong)['command'])}"
        out.append(f"| {label} | {_pair(ra, wa)} | {_pair(rb, wb)} | {_signed(100 * (rb - ra))} / {_signed(100 * (wb - wa))} "
                   f"| {refs} |")
    pa, pb = pub["P3221"], pub["P3121"]
    out.append(f"| reference paper | {_pub(*pa)} | {_pub(*pb)} | "
               f"{100 * (pb[0] - pa[0]):.1f} / {100 * (pb[1] - pa[1]):.1f} | |")
    out += cmd.render()
    return "\n".join(out)


def parity_block() -> str:
    peer = published()["peer_reference"]
    out = ["| structure, orientations (820 Å, structure fixed) | R_obs / wR_all, frame mean | pooled | N_obs, N_all |"
           " cmd |", "|" + "---|" * 5]
    cmd = Commands()
    for name, which, label in PARITY:
        r = _json(RESULTS / name)
        s = r[which]
        out.append(f"| {label} | {_pair(s['R_obs_frame_mean'], s['wR_all_frame_mean'])} | "
                   f"{_pair(s['R_obs'], s['wR_all'])} | {s['N_obs']}, {s['N_all']} | {cmd.ref(r.get('command'))} |")
    out.append(f"| P3₂21, diffBloch's reference evaluation | "
               f"{_pair(peer['R_obs_frame_mean'], peer['wR_all_frame_mean'])} | | {peer['N_obs']}, {peer['N_all']} | |")
    out += cmd.render()
    return "\n".join(out)


def speed_block() -> str:
    rows = bench_frame_rows()
    out = ["Per real frame, all its rocking samples (`experiments/bench_frame.py`; ms; 2 CPU cores, 1 BLAS thread; "
           "'×' scaled from fewer samples):", "",
           "| case | N (real) | samples | jaxed fwd | jaxed fwd+grad | expm fwd+grad | eigh limit | fwd / eigh | "
           "(fwd+grad) / fwd | expm / jaxed | cmd |", "|" + "---|" * 11]
    cmd = Commands()
    for case in SPEED_FRAME:
        cells = rows.get(case)
        if cells is None:
            raise SystemExit(f"experiments/results/bench_frame.md: no row '{case}' (named in experiments/summarize.py)")
        name = case.replace(" (complex64)", "")
        flags = (" --float32" if "complex64" in case else "") + (" --quick" if "×" in cells[3] else "")
        out.append("| " + " | ".join(cells) + f" | {cmd.ref(f'python experiments/bench_frame.py --merge --cases {chr(34)}{name}{chr(34)}' + flags)} |")
    out += ["", "The rows 'quartz' and 'CsPbBr3' (one beam list per frame) predate two intra-op threads per core and, "
            "for CsPbBr3, the real path for crystals centric at the origin (docs/SPEED.md §2, §8).",
            "", "One refinement step on all 99 measured quartz frames (`experiments/bench_refine.py`: forward + gradient "
            "+ Adam, per-sample beams ≤ 40, 42 samples):", "",
            "| precision | thickness model | step [s] (min / median) | 200 epochs [s] | compile [s] | R_obs at the start | cmd |",
            "|" + "---|" * 7]
    for r in bench_refine_rows():
        precision = r.get("precision", "float64")
        command = ("python experiments/bench_refine.py --beams sample --max-beams 40 --samples 42"
                   + (" --float32" if precision == "float32" else ""))
        out.append(f"| {'complex64' if precision == 'float32' else 'complex128'} | {MODEL_NAMES[r['model']]} | "
                   f"{r['step_min_s']:.2f} / {r['step_median_s']:.2f} | {r['epochs200_s']:.0f} | {r['compile_s']:.0f} | "
                   f"{_pct(r.get('R_obs_start'))} | {cmd.ref(command)} |")
    out += cmd.render()
    return "\n".join(out)


def readme_block() -> str:
    pub = published()
    t1 = {tag: table1_record(tag) for tag, _ in TABLE1}
    t2 = {tag: table2_record(tag)["final"] for tag, _ in TABLE2}
    frame_rows = bench_frame_rows()
    refine = {(r.get("precision", "float64"), r["model"]): r for r in bench_refine_rows()}

    def t1row(sample, tag):
        r, p = t1[tag], pub["table1"][sample]["nn"]
        return (f"| Table 1, {SAMPLE_NAMES[sample]} (synthetic; ThicknessNN, Adam + LM) | wR_all {r['wR_all']:.4f}, "
                f"RMSD {r.get('rmsd_non_h_A') or r['rmsd_A']:.5f} Å{' (non-H)' if sample == 'paracetamol' else ''} "
                f"| {p[0]}, {p[1]} Å |")

    def t2row(sample, tag, note="", rerun=None):
        f, p = t2[tag], pub["table2"][sample]
        again = "" if rerun is None else (
            f" (rerun {_pair(rerun['R_obs_frame_mean'], rerun['wR_all_frame_mean'])})")
        db = (f"; diffBloch {_pair(*p['diffbloch_absorption'])} (absorption)" if "diffbloch_absorption" in p else "")
        return (f"| Table 2, {SAMPLE_NAMES[sample]}{note} (measured; R_obs / wR_all, frame mean) | "
                f"{_pair(f['R_obs_frame_mean'], f['wR_all_frame_mean'])}{again} | paper {_pub(*p['paper'])}; "
                f"Jana {_pub(*p['jana'])}{db} |")

    right, wrong = (table2_record(t)["final"] for t in TABLE3[2][1:])
    m = (100 * (wrong["R_obs_frame_mean"] - right["R_obs_frame_mean"]),
         100 * (wrong["wR_all_frame_mean"] - right["wR_all_frame_mean"]))
    pa, pb = pub["table3"]["P3221"], pub["table3"]["P3121"]
    q32, q64 = refine[("float64", "nn")], refine[("float32", "nn")]
    cs = frame_rows["CsPbBr3 per-sample"]
    lines = ["| result | jaxed | published |", "|---|---|---|",
             t1row("quartz", "quartz_jaxed_nn_d0.2_imax1e+06_persample_lm20"),
             t1row("cspbbr3", "cspbbr3_jaxed_nn_d0.2_imax1e+06_step2_g1.0_persample_lm20"),
             t1row("paracetamol", "paracetamol_jaxed_nn_d0.2_imax1e+06_step1_g1.2_persample_lm20"),
             t2row("quartz", "quartz_P3221_v3ref_shared_tds_nm", " P3₂21",
                   rerun=t2["quartz_P3221_v3ref_shared_tds_nm_r"]),
             t2row("cspbbr3", "cspbbr3_c16_lbfgs_s60_rates"),
             t2row("paracetamol", "paracetamol_prec_b160_tds_r"),
             f"| Table 3, quartz: P3₁21 − P3₂21, R_obs / wR_all (each hand its own search) | {m[0]:.2f} / {m[1]:.2f} "
             f"points | paper {100 * (pb[0] - pa[0]):.1f} / {100 * (pb[1] - pa[1]):.1f} |",
             f"| refinement step, 99 quartz frames, CPU (2 cores) | {q64['step_min_s']:.2f} s (complex64), "
             f"{q32['step_min_s']:.2f} s (complex128) | diffBloch GPU: "
             f"{pub['speed']['diffbloch_gpu_ms_per_rotation_epoch']['quartz'] * 99 / 1000:.1f} s per epoch |",
             f"| CsPbBr₃ frame, fwd + grad, CPU (2 cores) | {int(cs[4]) / 1000:.1f} s | diffBloch CPU "
             f"{pub['speed']['diffbloch_cpu_s_per_cspbbr3_frame']['expm']} s (expm) |",
             "", "Every number, with the command that reproduces it: [docs/RESULTS.md](docs/RESULTS.md) "
             "(generated by `python experiments/summarize.py` from the records in `experiments/results/`)."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Blocks in files
# ---------------------------------------------------------------------------------------------------------------

BLOCKS = {"table1": table1_block, "table1-robustness": table1_robust_block, "table2": table2_block,
          "table3": table3_block, "parity": parity_block, "speed": speed_block}
FILES = {
    "docs/RESULTS.md": ["table1", "table2", "table3", "parity", "speed"],
    "docs/SPEED.md": ["speed"],
    "experiments/results/table1.md": ["table1", "table1-robustness"],
    "experiments/results/table2.md": ["table2", "table3", "parity"],
}


def _replace(text: str, start: str, end: str, body: str, where: str) -> str:
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"{where}: expected one '{start}' … '{end}' block")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


def regenerate() -> dict[str, tuple[str, str]]:
    """{file: (committed text, regenerated text)}."""
    made = {name: fn() for name, fn in BLOCKS.items()}
    out = {}
    for rel, names in FILES.items():
        old = (ROOT / rel).read_text(encoding="utf-8")
        new = old
        for name in names:
            new = _replace(new, f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->", made[name], rel)
        out[rel] = (old, new)
    old = (ROOT / "README.md").read_text(encoding="utf-8")
    out["README.md"] = (old, _replace(old, "<!-- results:start -->", "<!-- results:end -->", readme_block(),
                                      "README.md"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 if a committed table differs")
    args = ap.parse_args(argv)
    stale = []
    for rel, (old, new) in regenerate().items():
        if old != new:
            stale.append(rel)
            if not args.check:
                (ROOT / rel).write_text(new, encoding="utf-8")
    if args.check:
        if stale:
            print("stale tables (run python experiments/summarize.py): " + ", ".join(stale))
            return 1
        print("tables up to date")
        return 0
    print("rewrote: " + (", ".join(stale) if stale else "nothing (up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
