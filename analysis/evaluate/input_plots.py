"""Evaluation stage: input-feature plots (data vs stacked simulation, correlations, cutflow table).

The histograms and correlation sums are filled batch by batch (`partial_fit`, the
scikit-learn shape), so the plots cover every prepared event with memory bounded by the
batch size, not by the data set. Histograms are `hist.Hist` objects with a process
category axis and Weight storage (sum of weights and of squared weights per bin).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import hist
import mplhep as hep
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.evaluate.plots import axis_label, feature_label, hep_label, save, style

__all__ = ["FeatureHistograms", "WeightedCorrelation", "feature_edges", "format_yield", "plot_correlation",
           "plot_cutflow_table", "plot_feature"]

# Integer-valued features get one bin per value.
_COUNTING = ("njets", "ntaus", "npv", "tau1_charge", "tau2_charge", "tau1_decayMode", "tau2_decayMode")
# Display names and colours of the default processes (PHYSICS.md "Samples").
PROCESS_STYLE = {
    "DY": (r"Z$\to\tau\tau$ (DY)", "#ffcc66"),
    "TT": (r"$t\bar{t}$", "#6699cc"),
    "W1J": ("W + 1 jet", "#88cc88"),
    "W2J": ("W + 2 jets", "#55aa55"),
    "W3J": ("W + 3 jets", "#338833"),
    "ggH": (r"ggH$\to\tau\tau$", "#d62728"),
    "VBF": (r"VBF H$\to\tau\tau$", "#9467bd"),
}


def feature_edges(name: str, stat: Mapping[str, float], *, n_bins: int = 40) -> np.ndarray:
    """Bin edges for a feature from its training-split statistics (raw units).

    Counting features get unit bins; b-tags span [0, 1]; others span the core of the
    distribution, median -/+ 4 times its 68 % half-widths, clipped to [min, max], so long
    tails do not squeeze the peak into a few bins (the tails go to the edge bins).
    """
    lo, hi = float(stat["min"]), float(stat["max"])
    if name in _COUNTING:
        top = min(hi, lo + 12)
        return np.arange(np.floor(lo) - 0.5, np.floor(top) + 1.0)
    if name.endswith("_btag"):
        return np.linspace(0.0, 1.0, n_bins // 2 + 1)
    med, q16, q84 = float(stat["median"]), float(stat["q16"]), float(stat["q84"])
    core_lo = max(lo, med - 4.0 * (med - q16))
    core_hi = min(hi, med + 4.0 * (q84 - med))
    if not core_hi > core_lo:
        core_lo, core_hi = lo, (hi if hi > lo else lo + 1.0)
    # A round bin width (1, 2, 2.5 or 5 x 10^k) so the axis reads "Events / 5 GeV".
    raw_width = (core_hi - core_lo) / n_bins
    power = 10.0 ** np.floor(np.log10(raw_width))
    width = min(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw_width * (1 - 1e-9))
    start = np.floor(core_lo / width) * width
    n = int(np.ceil((core_hi - start) / width - 1e-9))
    return start + width * np.arange(n + 1)


class FeatureHistograms:
    """Weighted histograms of every feature per process, filled batch by batch.

    Parameters
    ----------
    features : list of str
        Feature columns to histogram (raw physical units in the batches).
    stats : dict
        stats.json ``"features"`` mapping (raw-unit min/max/median/q16/q84) for the binning.

    Attributes (after `partial_fit`)
    ----------
    hists_ : dict of str to hist.Hist
        Axes (feature, process); Weight storage. Values outside the binning are put into
        the first/last bin, so every event is counted; NaN (missing) values are not filled.
    """

    def __init__(self, features: list[str], stats: Mapping[str, Mapping[str, float]], *, n_bins: int = 40,
                 analysis: str | None = None):
        self.features = list(features)
        self.stats = stats
        self.n_bins = n_bins
        self.analysis = analysis  # the skim processor: the axis labels of its columns

    def partial_fit(self, frame: pd.DataFrame, *, process: str | None = None) -> FeatureHistograms:
        """Fill one batch. ``frame`` has the feature columns, ``weight`` and ``process``
        (or pass ``process`` for a batch of one process, e.g. "data")."""
        if not hasattr(self, "hists_"):
            self.hists_ = {}
            for name in self.features:
                edges = feature_edges(name, self.stats[name], n_bins=self.n_bins)
                self.hists_[name] = hist.Hist(
                    hist.axis.Variable(edges, name=name, label=axis_label(name, self.analysis), flow=False),
                    hist.axis.StrCategory([], name="process", growth=True),
                    storage=hist.storage.Weight())
        procs = (np.full(len(frame), process, dtype=object) if process is not None
                 else frame["process"].astype(str).to_numpy())
        weight = frame["weight"].to_numpy(np.float64)
        for name, h in self.hists_.items():
            edges = h.axes[0].edges
            # nextafter keeps the top edge value inside the last bin
            x = np.clip(frame[name].to_numpy(np.float64), edges[0], np.nextafter(edges[-1], -np.inf))
            h.fill(x, procs, weight=weight)
        return self


class WeightedCorrelation:
    """Weighted Pearson correlation matrix from running sums (Σw, Σwx, Σwxxᵀ).

    Uses |weight| (a correlation is a shape property; see `analysis.evaluate.metrics`) and skips
    rows with a NaN feature. It is invariant under the standardisation, so standardised
    columns can be fed directly.

    Attributes (after `partial_fit`)
    ----------
    sum_weights_ : float
    mean_ : np.ndarray, shape (n_features,)
    correlation_ : np.ndarray, shape (n_features, n_features)
    """

    def partial_fit(self, x: np.ndarray, weights: np.ndarray) -> WeightedCorrelation:
        x = np.asarray(x, dtype=np.float64)
        w = np.abs(np.asarray(weights, dtype=np.float64))
        # Rows with a missing (NaN) feature are left out, as prepare leaves them out of stats.json.
        finite = np.isfinite(x).all(axis=1)
        x, w = x[finite], w[finite]
        if not hasattr(self, "sum_weights_"):
            self.n_features_in_ = x.shape[1]
            self.sum_weights_ = 0.0
            self._sum_wx = np.zeros(x.shape[1])
            self._sum_wxx = np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} feature columns, got {x.shape[1]}")
        self.sum_weights_ += float(w.sum())
        self._sum_wx += w @ x
        self._sum_wxx += (x * w[:, None]).T @ x
        return self

    @property
    def mean_(self) -> np.ndarray:
        return self._sum_wx / self.sum_weights_

    @property
    def correlation_(self) -> np.ndarray:
        if not getattr(self, "sum_weights_", 0.0) > 0:
            raise ValueError("WeightedCorrelation: no events with non-zero weight were given to partial_fit")
        second = self._sum_wxx / self.sum_weights_
        cov = second - np.outer(self.mean_, self.mean_)
        var = np.diag(cov).copy()
        # E[x^2] - E[x]^2 leaves rounding noise for a constant column: call that zero variance
        var[var <= 1e-12 * np.diag(second)] = 0.0
        sd = np.sqrt(var)
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = cov / np.outer(sd, sd)
        corr[~np.isfinite(corr)] = 0.0  # a constant feature correlates with nothing
        np.fill_diagonal(corr, 1.0)
        return np.clip(corr, -1.0, 1.0)


def _nice_scale(ratio: float) -> int:
    """Signal magnification 1, 2, 5, 10, 20, 50, ... at most ``ratio``."""
    if ratio <= 1:
        return 1
    exp = 10 ** np.floor(np.log10(ratio))
    return int(max(m for m in (1, 2, 5) if m * exp <= ratio) * exp)


def plot_feature(h: hist.Hist, *, signal_processes: list[str], path: str | Path,
                 lumi_fb: float | None = None, dpi: int = 100) -> Path:
    """Stacked backgrounds, the summed signal overlaid (magnified, factor in the legend),
    the simulation's statistical uncertainty, and pseudo-data with a data/simulation ratio
    panel when the histogram has a "data" process."""
    name = h.axes[0].name
    processes = list(h.axes["process"])
    edges = h.axes[0].edges
    widths = np.diff(edges)
    bkg = [p for p in processes if p not in signal_processes and p != "data"]
    sig = [p for p in processes if p in signal_processes]
    has_data = "data" in processes
    values = {p: h[:, p].values() for p in processes}
    variances = {p: h[:, p].variances() for p in processes}
    # Smallest yields at the bottom of the stack, where thin layers stay visible.
    bkg.sort(key=lambda p: values[p].sum())
    mc_total = sum((values[p] for p in bkg), np.zeros(len(widths)))
    mc_err = np.sqrt(sum((variances[p] for p in bkg), np.zeros(len(widths))))
    unit = feature_label(name)[1]
    if name in _COUNTING:
        y_title = "Events"
    elif np.allclose(widths, widths[0]):
        y_title = f"Events / {widths[0]:.3g} {unit}".strip()
    else:
        y_title = "Events / bin"
    with style():
        fig = Figure(figsize=(10, 10) if has_data else (10, 8.5))
        if has_data:
            ax, rax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1), "hspace": 0.06})
        else:
            ax, rax = fig.add_subplot(), None
        if bkg:
            hep.histplot([values[p] for p in bkg], edges, stack=True, histtype="fill", ax=ax,
                         label=[PROCESS_STYLE.get(p, (p, None))[0] for p in bkg],
                         color=[PROCESS_STYLE.get(p, (None, f"C{i}"))[1] for i, p in enumerate(bkg)],
                         edgecolor="black", linewidth=0.5)
            ax.stairs(mc_total + mc_err, edges, baseline=np.clip(mc_total - mc_err, 0, None),
                      fill=True, hatch="////", alpha=0.0, color="grey", label="Sim. stat. unc.")
        if sig:
            signal = sum(values[p] for p in sig)
            peak = signal.max()
            scale = _nice_scale(0.3 * mc_total.max() / peak) if peak > 0 and mc_total.max() > 0 else 1
            names = "+".join(sig)
            hep.histplot(signal * scale, edges, histtype="step", color="#d62728", lw=2.5, ax=ax,
                         label=f"H$\\to\\tau\\tau$ ({names})" + (f" $\\times${scale}" if scale > 1 else ""))
        if has_data:
            data = values["data"]
            centres = 0.5 * (edges[1:] + edges[:-1])
            ax.errorbar(centres, data, yerr=np.sqrt(data), fmt="o", color="black", ms=5, label="Pseudo-data")
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(mc_total > 0, data / mc_total, np.nan)
                ratio_err = np.where(mc_total > 0, np.sqrt(data) / mc_total, np.nan)
                band = np.where(mc_total > 0, mc_err / mc_total, 0.0)
            rax.stairs(1 + band, edges, baseline=1 - band, fill=True, color="grey", alpha=0.35)
            rax.errorbar(centres, ratio, yerr=ratio_err, fmt="o", color="black", ms=5)
            rax.axhline(1.0, color="black", ls="--", lw=1)
            rax.set_ylim(0.5, 1.5)
            rax.set_ylabel("Data / Sim.", fontsize=18)
            rax.set_xlabel(h.axes[0].label)  # the feature's, set where the histogram was made
        else:
            ax.set_xlabel(h.axes[0].label)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(0, ax.get_ylim()[1] * 1.45)  # headroom for the legend
        if name not in _COUNTING and not name.endswith("_btag"):
            ax.text(0.02, 0.97, "under/overflow in the\nfirst/last bin", transform=ax.transAxes,
                    ha="left", va="top", fontsize=12, color="dimgrey")
        ax.set_ylabel(y_title)
        ax.legend(loc="upper right", fontsize=14, ncol=2)
        hep_label(ax, lumi_fb=lumi_fb, data=has_data)
        if has_data:  # tight_layout cannot handle the shared-x ratio panel: fixed margins
            fig.subplots_adjust(left=0.15, right=0.96, top=0.93, bottom=0.1)
        else:
            fig.tight_layout()
        return save(fig, path, dpi=dpi)


def plot_correlation(matrix: np.ndarray, features: list[str], *, title: str, path: str | Path,
                     dpi: int = 100, analysis: str | None = None) -> Path:
    """Correlation matrix as a colour map in [-1, 1], with the coefficients written in."""
    n = len(features)
    labels = [feature_label(f, analysis)[0] for f in features]
    with style():
        size = max(8.0, 0.6 * n + 4)
        fig = Figure(figsize=(size + 1.5, size))
        ax = fig.add_subplot()
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Pearson correlation (weighted)")
        ax.set_xticks(range(n), labels, rotation=90, fontsize=13)
        ax.set_yticks(range(n), labels, fontsize=13)
        ax.tick_params(which="minor", bottom=False, top=False, left=False, right=False)
        font = 11 if n <= 12 else 9
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=font,
                        color="white" if abs(matrix[i, j]) > 0.6 else "black")
        ax.set_title(title, fontsize=20, pad=12)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)


def format_yield(value: float) -> str:
    """A sum of weights for a table: thousands separated above 1000, 4 significant digits below."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def plot_cutflow_table(cutflow: pd.DataFrame, *, path: str | Path, dpi: int = 100) -> Path:
    """The skim cutflow as a table figure: one row per dataset, one column per cut,
    each cell "events" over "sum of weights" (expected yield at the full luminosity)."""
    cuts = list(dict.fromkeys(cutflow["cut"]))
    datasets = list(dict.fromkeys(cutflow["dataset"]))
    cells = []
    for dataset in datasets:
        rows = cutflow[cutflow["dataset"] == dataset].set_index("cut")
        line = []
        for cut in cuts:
            if cut not in rows.index:
                line.append("")
                continue
            ev, sw = rows.loc[cut, "events"], rows.loc[cut, "sumw"]
            text = f"{int(ev):,}" if pd.notna(ev) else "–"
            if pd.notna(sw):
                text += "\n" + format_yield(float(sw))
            line.append(text)
        cells.append(line)
    with style():
        fig = Figure(figsize=(max(10.0, 2.3 * len(cuts) + 4), 1.2 + 0.6 * (len(datasets) + 1)))
        ax = fig.add_subplot()
        ax.axis("off")
        table = ax.table(cellText=cells, rowLabels=datasets, colLabels=cuts, loc="center",
                         cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(12)
        table.scale(1.0, 2.6)
        ax.set_title("Cutflow: events (top) and sum of weights (bottom) after each cut", fontsize=16)
        fig.tight_layout()
        return save(fig, path, dpi=dpi)
