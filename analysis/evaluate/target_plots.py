"""Evaluation stage: plots of multi-class and regression models (ROC per class, confusion, response).

Like `analysis.evaluate.plots` (whose style, header and `save` they use), each ``plot_*``
function draws one PNG on a `matplotlib.figure.Figure` (no pyplot state) and returns its
path. Histograms are `hist.Hist` objects with Weight storage drawn by mplhep, normalised to
unit area; values beyond the axis range go into the edge bins, so every event is shown.
The numbers in legends come from the metrics dicts of `analysis.evaluate.multiclass` and
`analysis.evaluate.regression`, so a plot and metrics.json cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import hist
import mplhep as hep
import numpy as np
from matplotlib.figure import Figure

from analysis.evaluate.metrics import NegativeWeights, policy_weights
from analysis.evaluate.plots import hep_label, plot_roc, save, style
from analysis.evaluate.regression import pulls

__all__ = ["plot_class_scores", "plot_confusion", "plot_ovr_roc", "plot_pulls", "plot_response",
           "plot_response_vs"]

_MODEL_COLOUR, _BASELINE_COLOUR = "#1f77b4", "#ff7f0e"


def _nan(values) -> np.ndarray:
    """metrics.json lists (None where undefined) as float arrays (NaN where undefined)."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _filled(values, weights, edges: np.ndarray) -> hist.Hist:
    """A weighted 1-d histogram with values outside the edges put into the edge bins."""
    h = hist.Hist(hist.axis.Variable(edges, flow=False), storage=hist.storage.Weight())
    # nextafter keeps the top edge value inside the last bin
    h.fill(np.clip(values, edges[0], np.nextafter(edges[-1], -np.inf)), weight=weights)
    return h


def plot_ovr_roc(name: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, *,
                 lumi_fb: float | None = None, dpi: int = 100) -> Path:
    """One-vs-rest ROC curve of every class of one model on one plot.

    Parameters
    ----------
    curves : mapping of class name to (fpr, tpr, AUC)
        From `analysis.evaluate.multiclass.ovr_roc_curves`.
    """
    return plot_roc({f"{name}: {cls} vs rest": curve for cls, curve in curves.items()}, path,
                    working_points=(), lumi_fb=lumi_fb, dpi=dpi,
                    xlabel="Efficiency of the other classes (weighted)",
                    ylabel="Efficiency of the class (weighted)")


def plot_confusion(name: str, matrix, class_names: Sequence[str], path: str | Path, *, dpi: int = 100) -> Path:
    """The confusion matrix normalised per true class as an annotated heat map.

    Parameters
    ----------
    matrix : C x C nested lists or array
        ``multiclass_metrics(...)["confusion"]["normalised"]``: rows true class, columns
        arg-max class; a None row (a class without weight) is drawn blank and marked n/a.
    """
    values = np.array([_nan(row) for row in matrix], dtype=np.float64)
    n = len(class_names)
    if values.shape != (n, n):
        raise ValueError(f"matrix must be {n} x {n} for classes {list(class_names)}, got shape {values.shape}")
    with style():
        fig = Figure(figsize=(max(8.0, 1.6 * n + 4), max(7.0, 1.4 * n + 3)))
        ax = fig.add_subplot()
        image = ax.imshow(np.ma.masked_invalid(values), cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, label="Fraction of the true class (weighted)")
        for i in range(n):
            for j in range(n):
                v = values[i, j]
                text, colour = ("n/a", "grey") if np.isnan(v) else (f"{v:.2f}", "white" if v > 0.5 else "black")
                ax.text(j, i, text, ha="center", va="center", fontsize=16, color=colour)
        ax.set_xticks(range(n), list(class_names), rotation=30 if n > 3 else 0)
        ax.set_yticks(range(n), list(class_names))
        ax.tick_params(which="minor", left=False, right=False, top=False, bottom=False)
        ax.set_xlabel("Predicted class (arg-max)")
        ax.set_ylabel("True class")
        ax.set_title(name, fontsize=18, pad=30)
        hep_label(ax)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)


def plot_class_scores(name: str, true_class, proba, weight, class_names: Sequence[str], path: str | Path, *,
                      bins: int = 40, negative_weights: NegativeWeights = "abs", dpi: int = 100) -> Path:
    """For each class's probability, its distribution in every true class (one panel per class).

    Parameters
    ----------
    true_class : np.ndarray of int, shape (n,)
    proba : np.ndarray of float, shape (n, C)
    weight : np.ndarray of float, shape (n,), or None
        Weights; negative ones follow ``negative_weights`` (a shape comparison).
    """
    true_class, proba = np.asarray(true_class), np.asarray(proba, dtype=np.float64)
    w = policy_weights(np.ones(len(proba)) if weight is None else np.asarray(weight, np.float64), negative_weights)
    n = len(class_names)
    edges = np.linspace(0.0, 1.0, bins + 1)
    colours = [f"C{j}" for j in range(n)]
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    with style():
        fig = Figure(figsize=(7.5 * ncols, 6.5 * nrows))
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for k, ax in enumerate(axes):
            if k >= n:
                ax.set_visible(False)
                continue
            for j, cls in enumerate(class_names):
                sel = true_class == j
                if not w[sel].sum() > 0:
                    continue  # no events of this class: nothing to normalise
                hep.histplot(_filled(proba[sel, k], w[sel], edges), density=True, ax=ax, color=colours[j],
                             lw=2, label=f"true {cls}", flow="none")
            ax.set_yscale("log")
            ax.set_ylim(top=ax.get_ylim()[1] * 30)  # headroom for the legend above the peaks
            ax.set_xlim(0, 1)
            ax.set_xlabel(f"P({class_names[k]})")
            ax.set_ylabel("Normalised to unit area")
            ax.legend(loc="upper center", fontsize=13, ncol=2)
            hep_label(ax)
        fig.suptitle(f"{name}: class probabilities per true class", fontsize=20)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)


def _estimates(pred, truth, weight, metrics: Mapping, baseline, baseline_label: str):
    """[(label, colour, estimate, truth, weights, metrics block)] of the model and the baseline,
    on the events the metrics used (finite response)."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    w = policy_weights(np.ones_like(pred) if weight is None else np.asarray(weight, np.float64),
                       metrics["negative_weights"])
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.isfinite(pred / truth)
    out = [("model", _MODEL_COLOUR, pred[ok], truth[ok], w[ok], metrics["model"])]
    block = metrics.get("baseline")
    if baseline is not None and block is not None:
        scaled = np.asarray(baseline, np.float64) / block["scale"]
        both = ok & np.isfinite(scaled)
        out.append((baseline_label, _BASELINE_COLOUR, scaled[both], truth[both], w[both], block))
    return out


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def plot_response(name: str, pred, truth, weight, metrics: Mapping, path: str | Path, *, baseline=None,
                  baseline_label: str = "baseline", bins: int = 60, dpi: int = 100) -> Path:
    """Response distribution (prediction / truth) of the model and of the calibrated baseline.

    Parameters
    ----------
    pred, truth, weight : np.ndarray of float, shape (n,)
        The arrays given to `analysis.evaluate.regression.regression_metrics`.
    metrics : dict
        Its result: the median and resolution in the legend, the baseline's scale.
    baseline : np.ndarray of float, shape (n,), or None
        The raw baseline (e.g. m_vis); divided here by ``metrics["baseline"]["scale"]``.
    """
    estimates = _estimates(pred, truth, weight, metrics, baseline, baseline_label)
    lo = min(b["q16"] - 4 * b["half_width"] for *_, b in estimates)
    hi = max(b["q84"] + 4 * b["half_width"] for *_, b in estimates)
    if not hi > lo:  # no spread at all: a window around the median
        lo, hi = lo - 0.05 * abs(lo) - 0.05, hi + 0.05 * abs(hi) + 0.05
    edges = np.linspace(lo, hi, bins + 1)
    with style():
        fig = Figure(figsize=(10, 9))
        ax = fig.add_subplot()
        for label, colour, estimate, t, w, block in estimates:
            hep.histplot(_filled(estimate / t, w, edges), density=True, ax=ax, color=colour, lw=2.5, flow="none",
                         label=f"{label}: median {_fmt(block['median'], '.3f')}, "
                               f"resolution {_fmt(block['resolution'], '.1%')}")
        ax.axvline(1.0, ls="--", color="grey", lw=1.5)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
        ax.set_xlim(lo, hi)
        ax.set_xlabel("Response (estimate / truth)")
        ax.set_ylabel("Normalised to unit area")
        ax.legend(loc="upper left", fontsize=15, title=name, title_fontsize=16)
        hep_label(ax)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)


def plot_response_vs(name: str, metrics: Mapping, path: str | Path, *, variable: str = "truth",
                     xlabel: str | None = None, baseline_label: str = "baseline", dpi: int = 100) -> Path:
    """Median response (top) and resolution (bottom) in bins of the truth or of η.

    Parameters
    ----------
    metrics : dict
        `analysis.evaluate.regression.regression_metrics` result with ``vs_<variable>``.
    variable : "truth" or "eta"
    xlabel : axis title (default: the variable's name).
    """
    if f"vs_{variable}" not in metrics["model"]:
        found = sorted(k[3:] for k in metrics["model"] if k.startswith("vs_"))
        raise ValueError(f"metrics have no vs_{variable} bins, only {found}; for 'eta' pass eta= to "
                         "regression_metrics")
    blocks = [("model", _MODEL_COLOUR, metrics["model"])]
    if metrics.get("baseline") is not None:
        blocks.append((baseline_label, _BASELINE_COLOUR, metrics["baseline"]))
    with style():
        fig = Figure(figsize=(10, 10))
        ax_med, ax_res = fig.subplots(2, 1, sharex=True)
        for label, colour, block in blocks:
            binned = block[f"vs_{variable}"]
            edges = np.asarray(binned["edges"], np.float64)
            centres, half = 0.5 * (edges[1:] + edges[:-1]), 0.5 * np.diff(edges)
            for ax, key in ((ax_med, "median"), (ax_res, "resolution")):
                ax.errorbar(centres, _nan(binned[key]), xerr=half, fmt="o", ms=6, color=colour, label=label)
        ax_med.axhline(1.0, ls="--", color="grey", lw=1.5)
        ax_med.set_ylabel("Median response")
        ax_res.set_ylabel("Resolution")
        ax_res.set_ylim(bottom=0)
        ax_res.set_xlabel(xlabel or {"truth": "Truth", "eta": r"$\eta$"}.get(variable, variable))
        ax_med.legend(loc="best", fontsize=15, title=name, title_fontsize=16)
        hep_label(ax_med)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)


def plot_pulls(name: str, pred, truth, weight, metrics: Mapping, path: str | Path, *, baseline=None,
               baseline_label: str = "baseline", bins: int = 50, limit: float = 5.0, dpi: int = 100) -> Path:
    """Pull distribution (`analysis.evaluate.regression.PULL_DEFINITION`) with a unit Gaussian.

    Arguments as for `plot_response`; pulls beyond ±``limit`` go into the edge bins.

    Raises
    ------
    ValueError
        The model's pulls are undefined (a response without spread, see the metrics' notes).
    """
    if metrics["model"]["pull"]["mean"] is None:
        raise ValueError(f"{name}: the pulls are undefined (response half-width "
                         f"{metrics['model']['half_width']}); see metrics['notes']")
    edges = np.linspace(-limit, limit, bins + 1)
    x = np.linspace(-limit, limit, 400)
    with style():
        fig = Figure(figsize=(10, 9))
        ax = fig.add_subplot()
        for label, colour, estimate, t, w, block in _estimates(pred, truth, weight, metrics, baseline,
                                                               baseline_label):
            pull = block["pull"]
            if pull["mean"] is None:
                continue
            hep.histplot(_filled(pulls(estimate, t, pull["half_width"]), w, edges), density=True, ax=ax,
                         color=colour, lw=2.5, flow="none",
                         label=f"{label}: mean {pull['mean']:.2f}, std {pull['std']:.2f}")
        ax.plot(x, np.exp(-0.5 * x ** 2) / np.sqrt(2 * np.pi), ls="--", color="grey", lw=1.5,
                label="unit Gaussian")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
        ax.set_xlim(-limit, limit)
        ax.set_xlabel(r"Pull (estimate $-$ truth) / ($w_{68}\cdot$truth)")
        ax.set_ylabel("Normalised to unit area")
        ax.legend(loc="upper left", fontsize=15, title=name, title_fontsize=16)
        hep_label(ax)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)
