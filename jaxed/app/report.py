"""Refinement outputs: report.json, report.md (for a crystallographer), the refined CIF and plots (matplotlib, no
screen needed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxed.physics.crystal import AtomParams, Crystal, format_su, write_structure_cif

__all__ = ["write_report", "write_plots", "write_refined_cif", "write_frame_plot", "write_markdown_report",
           "frame_statistics", "largest_residuals"]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_report(path: str | Path, report: dict) -> None:
    """``report.json`` (NaN/inf written as null)."""
    Path(path).write_text(json.dumps(_jsonable(report), indent=1))


def write_refined_cif(path: str | Path, crystal: Crystal, atoms: AtomParams, summary: dict, thickness: np.ndarray,
                      frame_ids, sigmas: dict | None = None) -> None:
    """The refined structure with R factors, per-frame thicknesses and (with ``sigmas``) standard uncertainties of
    coordinates, ADPs, U_eq and bonds, as one CIF written once (readable by gemmi).

    Args:
        summary: R factors and counts (jaxed.refine.objective.summary), optionally GoF, n_params, wavelength [Å],
            d_min [Å], R_free / wR_free / N_free and the effective settings.
        thickness: (n_frames,) [Å] with ``frame_ids``.
        sigmas: {'frac', 'u_cif', 'u_eq', 'bonds'} (jaxed.refine.uncertainty.Uncertainties.cif_sigmas).
    """
    from jaxed import __version__

    def number(x, fmt):
        return "?" if x is None or not np.isfinite(x) else format(x, fmt)

    gof = summary.get("GoF")
    extra = {
        # CIF core names (R on |F| of reflections with I > 3σ; wR on I, the reference paper's form)
        "_refine_ls_R_factor_gt": number(summary["R_obs"], ".5f"),
        "_refine_ls_R_factor_all": number(summary.get("R_all"), ".5f"),
        "_refine_ls_wR_factor_ref": number(summary["wR_all"], ".5f"),
        "_refine_ls_goodness_of_fit_ref": number(gof, ".4f"),
        "_refine_ls_number_reflns": str(summary["N_all"]),
        "_reflns_number_total": str(summary["N_all"]),
        "_reflns_number_gt": str(summary["N_obs"]),
        "_reflns_threshold_expression": "'I > 3u(I)'",
        "_refine_ls_structure_factor_coef": "Inet",
        "_refine_ls_weighting_scheme": "calc",
        "_refine_ls_weighting_details": "'w = [s(sqrt(Io))^2 + (0.01 sqrt(Io))^2]^-1/2 on I (reference paper form)'",
        # the same values under the older names other programs still read
        "_refine_ls_R_factor_obs": number(summary["R_obs"], ".5f"),
        "_refine_ls_wR_factor_all": number(summary["wR_all"], ".5f"),
        "_refine_ls_number_reflns_obs": str(summary["N_obs"]),
        "_refine_ls_number_reflns_all": str(summary["N_all"]),
        "_refine_ls_goodness_of_fit_all": number(gof, ".4f"),
        "_computing_structure_refinement": f"'jaxed {__version__} (Bloch-wave dynamical refinement)'",
    }
    if summary.get("n_params") is not None:
        extra["_refine_ls_number_parameters"] = str(int(summary["n_params"]))
    if summary.get("wavelength") is not None:
        extra["_diffrn_radiation_wavelength"] = f"{float(summary['wavelength']):.6f}"
        extra["_diffrn_radiation_probe"] = "electron"
    if summary.get("d_min") is not None:
        extra["_reflns_d_resolution_high"] = f"{float(summary['d_min']):.4f}"
    if summary.get("R_free") is not None:
        extra["_refine_ls_R_factor_R_free"] = number(summary["R_free"], ".5f")
        if summary.get("wR_free") is not None:
            extra["_refine_ls_wR_factor_R_free"] = number(summary["wR_free"], ".5f")
        if summary.get("N_free") is not None:
            extra["_refine_ls_number_reflns_R_free"] = str(int(summary["N_free"]))
    if summary.get("settings"):
        lines = [f"{k} = {v}".replace("\n", " ") for k, v in sorted(summary["settings"].items()) if v is not None]
        extra["_refine_special_details"] = "\n;\njaxed settings:\n" + "\n".join(lines) + "\n;"
    loops = []
    bonds = (sigmas or {}).get("bonds") or []
    if bonds:  # from jaxed.refine.uncertainty: distances with their s.u., e.g. 1.6093(4)
        loops.append((["_geom_bond_atom_site_label_1", "_geom_bond_atom_site_label_2", "_geom_bond_distance",
                       "_geom_bond_site_symmetry_2"],
                      [[b["atom_1"], b["atom_2"], b["text"], b["symmetry"]] for b in bonds]))
    loops.append((["_jaxed_frame_id", "_jaxed_frame_thickness_A"],
                  [[f, f"{t:.2f}"] for f, t in zip(frame_ids, np.asarray(thickness))]))
    write_structure_cif(path, crystal, atoms, extra=extra, sigmas=sigmas, loops=loops)


def write_plots(folder: str | Path, history: list, theta_deg: np.ndarray, thickness: np.ndarray,
                i_obs: np.ndarray, i_calc: np.ndarray, mask: np.ndarray, true_thickness: np.ndarray | None = None) -> list:
    """R factor vs epoch, thickness vs tilt, I_calc vs I_obs (PNG files); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    paths = []

    def save(fig, ax, name, xlabel, ylabel):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        paths.append(folder / name)

    if history:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([h["epoch"] + 1 for h in history], [h["loss"] for h in history])
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        save(fig, ax, "r_factors.png", "epoch", "wR_all")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    order = np.argsort(theta_deg)
    ax.plot(theta_deg[order], thickness[order], "o-", ms=3, label="refined")
    if true_thickness is not None:
        ax.plot(theta_deg[order], np.asarray(true_thickness)[order], "k--", label="true")
        ax.legend()
    ax.grid(alpha=0.3)
    save(fig, ax, "thickness.png", "tilt α [deg]", "thickness [Å]")
    fig, ax = plt.subplots(figsize=(4.2, 4))
    o, c = i_obs[mask], i_calc[mask]
    ax.loglog(np.maximum(o, 1e-1), np.maximum(c, 1e-1), ".", ms=2, alpha=0.5)
    hi = max(o.max(initial=1.0), c.max(initial=1.0))
    ax.plot([1e-1, hi], [1e-1, hi], "k-", lw=0.8)
    save(fig, ax, "icalc_vs_iobs.png", "I_obs", "I_calc (scaled)")
    return paths


# ------------------------------------------------------------------------------------------------------ report.md
def frame_statistics(i_obs: np.ndarray, sigma: np.ndarray, i_calc_scaled: np.ndarray, mask: np.ndarray) -> dict:
    """Per-frame R_obs (on |F|, I > 3σ) and wR (on I, the paper's weights w = (σ(√I)² + (0.01√I)²)^-1/2) of scaled
    model intensities; arrays (n_frames,). NaN where a frame has nothing to compare."""
    i_obs, sigma, calc, mask = (np.asarray(x) for x in (i_obs, sigma, i_calc_scaled, mask))
    io = np.where(mask, i_obs, 0.0)
    ic = np.where(mask, np.maximum(calc, 0.0), 0.0)
    observed = mask & (io > 3 * np.where(mask, sigma, 1.0))
    fo, fc = np.sqrt(np.maximum(io, 0.0)), np.sqrt(ic)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sum(np.where(observed, np.abs(fo - fc), 0.0), 1) / np.sum(np.where(observed, fo, 0.0), 1)
        sig_f = np.where(fo > 0, np.where(mask, sigma, 1.0) / (2 * np.where(fo > 0, fo, 1.0)), 1.0)
        w2 = np.where(mask, 1.0 / (sig_f**2 + (0.01 * fo) ** 2), 0.0)
        wr = np.sqrt(np.sum(w2 * (io - ic) ** 2, 1) / np.sum(w2 * io**2, 1))
    return {"R_obs": r, "wR": wr, "n_refl": mask.sum(1), "n_obs": observed.sum(1)}


def largest_residuals(hkl: np.ndarray, i_obs: np.ndarray, sigma: np.ndarray, i_calc_scaled: np.ndarray,
                      mask: np.ndarray, frame_ids, count: int = 10) -> list[dict]:
    """The ``count`` reflections with the largest |I_obs − I_calc| / σ: frame, hkl, I_obs, I_calc, σ, Δ/σ."""
    hkl, i_obs, sigma, calc, mask = (np.asarray(x) for x in (hkl, i_obs, sigma, i_calc_scaled, mask))
    z = np.where(mask, np.abs(i_obs - calc) / np.where(mask, sigma, 1.0), -np.inf)
    flat = np.argsort(z, axis=None)[::-1][:count]
    out = []
    for f, j in zip(*np.unravel_index(flat, z.shape)):
        if not np.isfinite(z[f, j]):
            break
        out.append({"frame": frame_ids[f], "hkl": tuple(int(v) for v in hkl[f, j]), "I_obs": float(i_obs[f, j]),
                    "I_calc": float(calc[f, j]), "sigma": float(sigma[f, j]),
                    "delta_over_sigma": float((i_obs[f, j] - calc[f, j]) / sigma[f, j])})
    return out


def write_frame_plot(folder: str | Path, theta_deg: np.ndarray, r_frame: np.ndarray, name: str = "frame_r.png") -> Path:
    """Per-frame wR vs tilt (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    order = np.argsort(theta_deg)
    ax.plot(np.asarray(theta_deg)[order], np.asarray(r_frame)[order], "o-", ms=3)
    ax.set_xlabel("tilt α [deg]")
    ax.set_ylabel("wR per frame")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(folder) / name
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _num(x, fmt: str = ".4f") -> str:
    if x is None:
        return "–"
    try:
        value = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "–" if not np.isfinite(value) else format(value, fmt)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def write_markdown_report(path: str | Path, report: dict, *, settings: dict | None = None, data: dict | None = None,
                          frames: dict | None = None, parameters: list[dict] | None = None,
                          residuals: list[dict] | None = None, epochs: list[dict] | None = None,
                          plots: list | None = None, title: str = "jaxed refinement") -> None:
    """``report.md``: what a crystallographer reads after a run.

    Args:
        report: R factors and counts (R_obs, wR_all, wR_all_jana, GoF, N_obs, N_all; R_free, wR_free, N_free when
            present), epochs, wall_seconds.
        settings: the effective settings.  data: statistics of the data (files, frames, resolution, wavelength).
        frames: per-frame arrays: frame_id, alpha_deg, thickness_A, scale, R_obs, wR, n_refl.
        parameters: rows {label, element, x, y, z, U_eq, occupancy; su_x, ... when known}.
        residuals: :func:`largest_residuals`.  epochs: rows {epoch, wR_all, R_obs, GoF, R_free}.
        plots: image files (names relative to the report's folder).
    """
    lines = [f"# {title}", ""]
    if report.get("finished"):
        lines += [f"Finished {report['finished']}.", ""]
    lines += ["## Result", ""]
    rows = [["R_obs (on F, I > 3σ)", _num(report.get("R_obs"))], ["R_all (on F)", _num(report.get("R_all"))],
            ["wR_all (on I, reference paper)", _num(report.get("wR_all"))],
            ["wR_all (on F, Jana)", _num(report.get("wR_all_jana"))], ["GoF", _num(report.get("GoF"), ".3f")],
            ["N_obs / N_all", f"{report.get('N_obs', '–')} / {report.get('N_all', '–')}"]]
    if report.get("R_free") is not None:
        rows += [["R_free", _num(report.get("R_free"))], ["wR_free", _num(report.get("wR_free"))],
                 ["N_free", report.get("N_free", "–")]]
    if report.get("n_params") is not None:
        rows.append(["refined parameters", report["n_params"]])
    rows += [["epochs", report.get("epochs", 0)], ["wall time [s]", _num(report.get("wall_seconds"), ".1f")]]
    lines += _table(["", "value"], rows) + [""]
    if data:
        lines += ["## Data", ""] + _table(["", "value"], [[k, v if not isinstance(v, float) else _num(v, ".4g")]
                                                          for k, v in data.items()]) + [""]
    if epochs:
        keys = [k for k in ("wR_all", "R_obs", "GoF", "R_free", "wR_free") if any(k in e for e in epochs)]
        lines += ["## R factors per epoch", ""]
        lines += _table(["epoch", *keys], [[e["epoch"], *(_num(e.get(k)) for k in keys)] for e in epochs]) + [""]
    if parameters:
        lines += ["## Refined parameters", "",
                  "Fractional coordinates, U_eq [Å²] and occupancies; standard uncertainties in parentheses where the "
                  "refinement gives them.", ""]
        cols = ["label", "element", "x", "y", "z", "U_eq", "occupancy"]

        def cell(row, key):
            value = row.get(key)
            if isinstance(value, str) or value is None:
                return value if value is not None else "–"
            su = row.get(f"su_{key}")
            if su is not None and np.isfinite(su) and su > 0 and np.isfinite(value):
                return format_su(float(value), float(su))  # e.g. 0.4697(3)
            return _num(value, ".5f")

        lines += _table(cols, [[cell(r, c) for c in cols] for r in parameters]) + [""]
    if frames:
        lines += ["## Frames", "", "Per-frame scale, thickness and R factors (scaled model).", ""]
        n = len(frames["frame_id"])
        lines += _table(["frame", "α [deg]", "thickness [Å]", "scale", "R_obs", "wR", "N"],
                        [[frames["frame_id"][i], _num(frames["alpha_deg"][i], ".2f"),
                          _num(frames["thickness_A"][i], ".1f"), _num(frames["scale"][i], ".4g"),
                          _num(frames["R_obs"][i]), _num(frames["wR"][i]), int(frames["n_refl"][i])]
                         for i in range(n)]) + [""]
    if residuals:
        lines += ["## Largest residuals", "", "Reflections with the largest |I_obs − I_calc| / σ (scaled model).", ""]
        lines += _table(["frame", "h k l", "I_obs", "I_calc", "σ", "Δ/σ"],
                        [[r["frame"], " ".join(map(str, r["hkl"])), _num(r["I_obs"], ".1f"), _num(r["I_calc"], ".1f"),
                          _num(r["sigma"], ".1f"), _num(r["delta_over_sigma"], "+.1f")] for r in residuals]) + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    if settings:
        lines += ["## Settings", "", "The effective settings (also in `config.toml`, which `--config` reads back).", ""]
        lines += _table(["setting", "value"], [[k, "unset" if v is None else v] for k, v in sorted(settings.items())])
        lines.append("")
    Path(path).write_text("\n".join(lines))
