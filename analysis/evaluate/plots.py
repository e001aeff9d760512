"""Evaluation stage: classifier plots (ROC, train/test scores, AMS vs cut, feature importance).

Each ``plot_*`` function draws one PNG in the HEP style of mplhep and returns its path. They
build `matplotlib.figure.Figure` objects directly (Agg canvas, no pyplot state), so they run
headless, in threads, and inside notebooks without touching the user's backend.
Feature axis labels with units come from `feature_label`; `plots_inputs` uses them too.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import matplotlib.style
import mplhep as hep
import numpy as np
from matplotlib.figure import Figure

from analysis.core.features import feature
from analysis.core.io import atomic_path
from analysis.evaluate.metrics import AMSScan, KSResult

__all__ = ["EXPERIMENT_LABEL", "axis_label", "feature_label", "file_slug", "hep_label", "plot_ams",
           "plot_importance", "plot_roc", "plot_scores", "save", "style"]

EXPERIMENT_LABEL = "hepprep"  # not "CMS": these are synthetic samples, not a CMS result
CENTRE_OF_MASS_TEV = 8

def file_slug(name: str) -> str:
    """``name`` (a model, a class pair) as a piece of a plot's file name: ``b vs light`` -> ``b_vs_light``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def feature_label(name: str, analysis: str | None = None) -> tuple[str, str]:
    """(label, unit) of a feature, from the feature registry (`analysis.core.features`).

    ``analysis``: the skim processor that wrote the column (its own meaning of a shared name).
    """
    found = feature(name, analysis)
    return found.label, found.unit


def axis_label(name: str, analysis: str | None = None) -> str:
    """Axis title of a feature with its unit in brackets: ``$m_{jj}$ [GeV]``."""
    label, unit = feature_label(name, analysis)
    return f"{label} [{unit}]" if unit else label


@contextlib.contextmanager
def style() -> Iterator[None]:
    """mplhep's CMS-like style for the duration of one plot (no global rcParams change)."""
    with matplotlib.style.context(hep.style.CMS):
        yield


def hep_label(ax, *, lumi_fb: float | None = None, data: bool = False, text: str = "Simulation") -> None:
    """The experiment/luminosity header above an axes, in the usual HEP layout.

    Drawn with two annotations instead of `mplhep.label.exp_label`, which re-draws the
    figure to place its texts (about 1 s per plot).
    """
    head = ax.text(0.0, 1.01, EXPERIMENT_LABEL, transform=ax.transAxes, ha="left", va="bottom",
                   fontsize=20, fontweight="bold")
    ax.annotate("Pseudo-data" if data else text, xy=(1.0, 0.0), xycoords=head, xytext=(6, 0),
                textcoords="offset points", ha="left", va="bottom", fontsize=17, fontstyle="italic")
    right = f"{lumi_fb:.1f} fb$^{{-1}}$ ({CENTRE_OF_MASS_TEV} TeV)" if lumi_fb else f"({CENTRE_OF_MASS_TEV} TeV)"
    ax.text(1.0, 1.01, right, transform=ax.transAxes, ha="right", va="bottom", fontsize=17)


def save(fig: Figure, path: str | Path, *, dpi: int) -> Path:
    """Write a figure as PNG (no timestamps in the metadata: re-runs give the same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return path


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, *,
             working_points=(0.01, 0.1), lumi_fb: float | None = None, dpi: int = 100,
             xlabel: str = "Background efficiency (weighted)",
             ylabel: str = "Signal efficiency (weighted)") -> Path:
    """ROC curves of several models on one plot (background efficiency on a log axis).

    Parameters
    ----------
    curves : mapping of model name to (background efficiency, signal efficiency, AUC)
        From `analysis.evaluate.metrics.weighted_roc` and `weighted_roc_auc`.
    working_points : background efficiencies marked with dotted vertical lines.
    xlabel, ylabel : axis titles (the one-vs-rest curves of `target_plots` name the classes).
    """
    with style():
        fig = Figure(figsize=(10, 9))
        ax = fig.add_subplot()
        floor = 1e-4
        for name, (fpr, tpr, auc) in curves.items():
            keep = fpr >= floor
            ax.plot(fpr[keep], tpr[keep], lw=2.5, label=f"{name} (weighted AUC = {auc:.3f})")
        x = np.logspace(np.log10(floor), 0, 200)
        ax.plot(x, x, ls="--", color="grey", lw=1.5, label="random classifier")
        for wp in working_points:
            ax.axvline(wp, ls=":", color="black", lw=1.2)
            ax.text(wp * 1.08, 0.03, f"{wp:.0%}", fontsize=14, rotation=90, va="bottom")
        ax.set_xscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper left", fontsize=16)
        hep_label(ax, lumi_fb=lumi_fb)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)


def _density(values, weights, bins):
    """Normalised weighted histogram and its statistical error (sqrt(sum w^2))."""
    counts, _ = np.histogram(values, bins=bins, weights=weights)
    sumw2, _ = np.histogram(values, bins=bins, weights=weights ** 2)
    norm = counts.sum() * np.diff(bins)
    norm = np.where(norm > 0, norm, 1.0)
    return counts / norm, np.sqrt(sumw2) / norm


def plot_scores(name: str, train: tuple, test: tuple, ks: Mapping[str, KSResult], path: str | Path, *,
                bins: int = 40, dpi: int = 100) -> Path:
    """Score distributions of train (points) and test (filled) per class, with KS p-values.

    Parameters
    ----------
    train, test : (scores, labels, weights) tuples of 1-d arrays
        Physics weights; |weight| is used, as for every shape comparison (metrics docstring).
    ks : {"signal": KSResult, "background": KSResult}
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    colours = {1: "#d62728", 0: "#1f77b4"}
    with style():
        fig = Figure(figsize=(10, 9))
        ax = fig.add_subplot()
        for label, cls in ((1, "signal"), (0, "background")):
            s_te, y_te, w_te = (np.asarray(a) for a in test)
            s_tr, y_tr, w_tr = (np.asarray(a) for a in train)
            dens_te, _ = _density(s_te[y_te == label], np.abs(w_te[y_te == label]), edges)
            dens_tr, err_tr = _density(s_tr[y_tr == label], np.abs(w_tr[y_tr == label]), edges)
            ax.stairs(dens_te, edges, fill=True, alpha=0.3, color=colours[label])
            ax.stairs(dens_te, edges, lw=2, color=colours[label], label=f"{cls} (test)")
            ax.errorbar(centres, dens_tr, yerr=err_tr, fmt="o", ms=5, color=colours[label],
                        label=f"{cls} (train), KS p = {ks[cls].pvalue:.3g}")
        ax.set_yscale("log")
        ymax = ax.get_ylim()[1]
        ax.set_ylim(top=ymax * 30)  # headroom for the legend above the peaks
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"{name} signal score")
        ax.set_ylabel("Normalised to unit area")
        ax.legend(loc="upper center", fontsize=15, ncol=1)
        hep_label(ax)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)


def plot_ams(scans: Mapping[str, AMSScan], path: str | Path, *, lumi_fb: float | None = None,
             dpi: int = 100) -> Path:
    """AMS (b_reg from the scan) against the score cut for every model; the best cut marked."""
    with style():
        fig = Figure(figsize=(10, 9))
        ax = fig.add_subplot()
        b_reg = None
        for name, scan in scans.items():
            line, = ax.plot(scan.cuts, scan.ams, lw=2.5,
                            label=f"{name}: max AMS = {scan.best_ams:.2f} at cut {scan.best_cut:.3f}")
            ax.plot([scan.best_cut], [scan.best_ams], marker="*", ms=18, color=line.get_color())
            b_reg = scan.b_reg
        ax.set_xlim(0, 1)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
        ax.set_xlabel("Cut on the signal score (events with score $\\geq$ cut)")
        ax.set_ylabel(f"AMS ($b_{{reg}}$ = {b_reg:g}, yields at full luminosity)")
        ax.legend(loc="upper left", fontsize=15)
        hep_label(ax, lumi_fb=lumi_fb)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)


def plot_importance(name: str, gain: Mapping[str, float], mean_abs_shap: Mapping[str, float],
                    path: str | Path, *, dpi: int = 100, analysis: str | None = None) -> Path:
    """XGBoost feature importance: normalised total gain and mean |SHAP| side by side.

    Features are sorted by mean |SHAP| (the most important at the top); a feature the trees
    never split on has gain 0.
    """
    features = sorted(mean_abs_shap, key=lambda f: mean_abs_shap[f])
    total_gain = sum(gain.values()) or 1.0
    labels = [feature_label(f, analysis)[0] for f in features]
    y = np.arange(len(features))
    with style():
        fig = Figure(figsize=(14, max(6.0, 0.45 * len(features) + 2.5)))
        ax_gain, ax_shap = fig.subplots(1, 2, sharey=True)
        ax_gain.barh(y, [gain.get(f, 0.0) / total_gain for f in features], color="#1f77b4")
        ax_shap.barh(y, [mean_abs_shap[f] for f in features], color="#ff7f0e")
        ax_gain.set_yticks(y, labels, fontsize=15)
        ax_gain.set_xlabel("Fraction of total gain")
        ax_shap.set_xlabel("Mean |SHAP| [log-odds]")
        for ax in (ax_gain, ax_shap):
            ax.tick_params(axis="y", which="minor", left=False, right=False)
        ax_gain.set_title(f"{name}: split gain", fontsize=18)
        ax_shap.set_title(f"{name}: mean |SHAP| on test", fontsize=18)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)
