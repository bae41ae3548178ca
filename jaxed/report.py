"""Refinement outputs: report.json, the refined CIF and plots (matplotlib, no screen needed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxed.crystal import AtomParams, Crystal, write_structure_cif

__all__ = ["write_report", "write_plots", "write_refined_cif"]


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
    """The refined structure with R factors and per-frame thicknesses as CIF items (readable by gemmi)."""
    extra = {
        "_refine_ls_R_factor_obs": f"{summary['R_obs']:.5f}",
        "_refine_ls_wR_factor_all": f"{summary['wR_all']:.5f}",
        "_refine_ls_number_reflns_obs": str(summary["N_obs"]),
        "_refine_ls_number_reflns_all": str(summary["N_all"]),
        "_refine_ls_goodness_of_fit_all": f"{summary.get('GoF', float('nan')):.4f}",
        "_computing_structure_refinement": "'jaxed (Bloch-wave dynamical refinement)'",
    }
    write_structure_cif(path, crystal, atoms, extra=extra, sigmas=sigmas)
    with open(path, "a") as fh:
        fh.write("\nloop_\n_jaxed_frame_id\n_jaxed_frame_thickness_A\n")
        for f, t in zip(frame_ids, np.asarray(thickness)):
            fh.write(f"{f} {t:.2f}\n")


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
