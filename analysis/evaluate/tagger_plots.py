"""Evaluation stage: plots of jet taggers — 1/eps_B against eps_S, and 1/eps_B in bins of jet pt.

Like `analysis.evaluate.plots` (whose style, header and `save` they use), each function draws
one PNG on a `matplotlib.figure.Figure` (no pyplot state) with every model overlaid, and
returns its path. The numbers come from `analysis.evaluate.taggers`, so a plot and
metrics.json cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.evaluate.plots import hep_label, save, style
from analysis.evaluate.taggers import TaggerROC

__all__ = ["plot_rejection_roc", "plot_rejection_vs_pt"]


def plot_rejection_roc(what: str, curves: Mapping[str, tuple[TaggerROC, float]], path: str | Path, *,
                       efficiencies: Sequence[float] = (0.3, 0.5, 0.7), dpi: int = 100) -> Path:
    """Background rejection 1/eps_B against signal efficiency eps_S (log y), one curve per model.

    Parameters
    ----------
    what : "<signal> vs <background>", the legend's title
    curves : mapping of model name to (`TaggerROC`, AUC)
    efficiencies : the working points, marked with dotted vertical lines
    """
    with style():
        fig = Figure(figsize=(10, 9))
        ax = fig.add_subplot()
        for name, (roc, auc) in curves.items():
            keep = roc.fpr > 0  # 1/eps_B is infinite before the first background jet passes
            ax.plot(roc.tpr[keep], 1.0 / roc.fpr[keep], lw=2.5, label=f"{name} (AUC = {auc:.3f})")
        x = np.linspace(0.01, 1.0, 200)
        ax.plot(x, 1.0 / x, ls="--", color="grey", lw=1.5, label=r"no separation ($1/\varepsilon_S$)")
        for e in efficiencies:
            ax.axvline(e, ls=":", color="black", lw=1.2)
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=1.0)
        ax.set_xlabel(r"Signal efficiency $\varepsilon_S$ (weighted)")
        ax.set_ylabel(r"Background rejection $1/\varepsilon_B$")
        ax.legend(loc="upper right", fontsize=16, title=what, title_fontsize=16)
        hep_label(ax)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)


def plot_rejection_vs_pt(what: str, binned: Mapping[str, Mapping], path: str | Path, *, efficiency: float = 0.5,
                         xlabel: str = "jet_pt", dpi: int = 100) -> Path:
    """1/eps_B at one eps_S in each pt bin, with its uncertainty, one series per model.

    Parameters
    ----------
    binned : mapping of model name to the ``pt_bins`` block of `tagger_metrics`
    efficiency : the working point drawn (one of the metrics' efficiencies)

    A bin where no background jet passes (1/eps_B infinite) or without jets has no point.
    """
    key = f"{efficiency:g}"
    n = max(len(binned), 1)
    with style():
        fig = Figure(figsize=(10, 9))
        ax = fig.add_subplot()
        for k, (name, block) in enumerate(binned.items()):
            edges = np.asarray(block["edges"], dtype=np.float64)
            centres, half = 0.5 * (edges[1:] + edges[:-1]), 0.5 * np.diff(edges)
            points = [(b["working_points"] or {}).get(key) for b in block["bins"]]
            value = np.array([np.nan if p is None or p["rejection"] is None else p["rejection"] for p in points])
            error = np.array([np.nan if p is None or p["rejection"] is None else p["rejection_uncertainty"]
                              for p in points])
            shift = (k - (n - 1) / 2) * 0.15 * half  # side by side within the bin
            ax.errorbar(centres + shift, value, xerr=half, yerr=error, fmt="o", ms=7, capsize=3, label=name)
        ax.set_yscale("log")
        # 2, 5, 10 rather than 2x10^0 on a short log axis; unlabelled minor ticks (labels cost a second a plot)
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{xlabel} [GeV]")
        ax.set_ylabel(rf"$1/\varepsilon_B$ at $\varepsilon_S$ = {efficiency:.0%}")
        ax.legend(loc="best", fontsize=16, title=what, title_fontsize=16)
        hep_label(ax)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)
