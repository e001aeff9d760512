"""Evaluation stage: the figures of merit a physicist reads before trusting a classifier.

Pure functions of (scores, labels, weights) arrays, one entry per test event, so they can be
checked by hand and reused from notebooks: the HiggsML approximate median significance
(AMS) and its scan over score cuts with yields scaled to the full luminosity, the weighted
ROC curve and its area, the signal efficiency at fixed background efficiencies, and a
weighted two-sample Kolmogorov-Smirnov test for overtraining (train vs test scores).

Negative event weights (NLO generators) are handled by one documented policy:

- **Yields** (`ams`, `ams_scan`) always use the signed weights: s and b are expected event
  counts, and negative-weight events are there to cancel positive ones.
- **Shapes** (`weighted_roc`, `weighted_roc_auc`, `signal_efficiency_at`, `weighted_ks_2samp`)
  default to ``negative_weights="abs"``: a ROC curve and an ECDF compare normalised score
  distributions, and signed weights can make them non-monotonic (an "efficiency" above 1 or
  decreasing with a looser cut). ``"zero"`` drops those events, ``"keep"`` passes the signed
  weights through and raises if the curve stops being monotonic. With no negative weights
  the three policies are identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "AMSScan",
    "KSResult",
    "ams",
    "ams_scan",
    "policy_weights",
    "signal_efficiency_at",
    "weighted_ks_2samp",
    "weighted_roc",
    "weighted_roc_auc",
]

NegativeWeights = Literal["abs", "zero", "keep"]

#: Regularisation of the background in the AMS (HiggsML challenge 2014, PHYSICS.md "Metrics").
B_REG = 10.0


def ams(s, b, *, b_reg: float = B_REG):
    """Approximate median significance, AMS = sqrt(2((s + b + b_reg) ln(1 + s/(b + b_reg)) - s)).

    Parameters
    ----------
    s, b : float or np.ndarray
        Weighted signal and background yields (expected events) above a cut; arrays
        broadcast against each other.
    b_reg : float, keyword-only
        Background regularisation (10 in the HiggsML challenge); keeps the AMS finite and
        meaningful when a tight cut leaves almost no background.

    Returns
    -------
    float or np.ndarray
        The AMS, >= 0 (rounding just below zero for s ~ 0 is clipped to 0).

    Example
    -------
    >>> round(float(ams(10.0, 90.0)), 4)   # b + b_reg = 100
    0.984
    """
    s = np.asarray(s, dtype=np.float64)
    b_tot = np.asarray(b, dtype=np.float64) + b_reg
    if np.any(b_tot <= 0):
        bad = float(np.min(b_tot - b_reg))
        raise ValueError(f"ams: b + b_reg must be > 0, got b = {bad} with b_reg = {b_reg}; "
                         "a negative background yield means the negative weights dominate: "
                         "use a looser cut or a larger b_reg")
    arg = 2.0 * ((s + b_tot) * np.log1p(s / b_tot) - s)
    out = np.sqrt(np.maximum(arg, 0.0))
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class AMSScan:
    """AMS as a function of the score cut (an event is selected when score >= cut).

    `s` and `b` are already scaled to the full luminosity (see `ams_scan`).
    """

    cuts: np.ndarray  # float64, one entry per cut
    s: np.ndarray  # scaled signal yield above each cut
    b: np.ndarray  # scaled background yield above each cut
    ams: np.ndarray  # AMS(s, b) at each cut
    b_reg: float
    yield_scale: tuple[float, float]  # (signal, background) factors 1 / test_fraction

    @property
    def best_index(self) -> int:
        return int(np.argmax(self.ams))

    @property
    def best_cut(self) -> float:
        return float(self.cuts[self.best_index])

    @property
    def best_ams(self) -> float:
        return float(self.ams[self.best_index])

    @property
    def best_s(self) -> float:
        return float(self.s[self.best_index])

    @property
    def best_b(self) -> float:
        return float(self.b[self.best_index])

    def summary(self) -> dict[str, float]:
        """The best cut and its yields as plain floats (what metrics.json stores)."""
        return {"best_cut": self.best_cut, "ams": self.best_ams, "s": self.best_s,
                "b": self.best_b, "b_reg": self.b_reg,
                "yield_scale_signal": self.yield_scale[0], "yield_scale_background": self.yield_scale[1]}


def _as_arrays(scores, labels, weights):
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    weights = (np.ones_like(scores) if weights is None
               else np.asarray(weights, dtype=np.float64).ravel())
    if not (scores.shape == labels.shape == weights.shape):
        raise ValueError(f"scores, labels and weights must have one entry per event, got lengths "
                         f"{scores.size}, {labels.size}, {weights.size}")
    unknown = set(np.unique(labels).tolist()) - {0, 1}
    if unknown:
        raise ValueError(f"labels must be 1 (signal) or 0 (background), got {sorted(unknown)}; "
                         "real data (label -1) has no truth and cannot enter a metric")
    return scores, labels.astype(np.int8), weights


def ams_scan(scores, labels, weights, *, test_fraction: float | tuple[float, float] = 1.0,
             cuts=None, n_cuts: int = 200, b_reg: float = B_REG) -> AMSScan:
    """Scan the AMS over score cuts, with yields scaled to the full luminosity.

    The physics ``weight`` of an event is its expected yield at the full luminosity, but the
    test split holds only a fraction of the events (``test_fraction``, about 0.2 for the
    default 0.6/0.2/0.2 split). The test-split sums are therefore multiplied by
    ``1 / test_fraction`` so s and b are the yields the whole data set would give:
    ``s(cut) = sum(weight[label == 1 and score >= cut]) / test_fraction``, same for b.

    Parameters
    ----------
    scores : np.ndarray of float, shape (n,)
        Signal scores in [0, 1].
    labels : np.ndarray of int, shape (n,)
        1 signal, 0 background.
    weights : np.ndarray of float, shape (n,)
        Physics ``weight`` (signed, see the module docstring).
    test_fraction : float or (float, float), keyword-only
        Fraction of all events (by weight) that the scored sample holds, in (0, 1]; a pair
        gives it per class, (signal, background), e.g. measured as
        sum(weight in test) / sum(weight in all splits) for each class.
    cuts : array-like or None, keyword-only
        Score thresholds; None gives ``n_cuts`` evenly spaced cuts in [0, 1).
    b_reg : float, keyword-only
        AMS background regularisation.
    """
    scores, labels, weights = _as_arrays(scores, labels, weights)
    f_sig, f_bkg = (test_fraction, test_fraction) if np.isscalar(test_fraction) else test_fraction
    for f in (f_sig, f_bkg):
        if not 0 < f <= 1:
            raise ValueError(f"test_fraction must be in (0, 1], got {f}")
    cuts = (np.linspace(0.0, 1.0, n_cuts, endpoint=False) if cuts is None
            else np.asarray(cuts, dtype=np.float64))
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    w_sig = np.where(labels[order] == 1, weights[order], 0.0)
    w_bkg = np.where(labels[order] == 0, weights[order], 0.0)
    # cum[i] = weight of the i lowest-score events; "above cut" = total - weight below it.
    cum_sig = np.concatenate([[0.0], np.cumsum(w_sig)])
    cum_bkg = np.concatenate([[0.0], np.cumsum(w_bkg)])
    below = np.searchsorted(sorted_scores, cuts, side="left")
    scale = (1.0 / f_sig, 1.0 / f_bkg)
    s = (cum_sig[-1] - cum_sig[below]) * scale[0]
    b = (cum_bkg[-1] - cum_bkg[below]) * scale[1]
    return AMSScan(cuts=cuts, s=s, b=b, ams=np.asarray(ams(s, b, b_reg=b_reg)).reshape(cuts.shape),
                   b_reg=b_reg, yield_scale=scale)


def policy_weights(weights: np.ndarray, policy: NegativeWeights) -> np.ndarray:
    """The weights a shape metric uses under ``policy`` (module docstring): |w|, w >= 0 or w.

    The one home of the negative-weight policy: the multi-class and regression metrics
    (`analysis.evaluate.multiclass`, `analysis.evaluate.regression`) call it too.
    """
    if policy == "abs":
        return np.abs(weights)
    if policy == "zero":
        return np.where(weights < 0, 0.0, weights)
    if policy == "keep":
        return weights
    raise ValueError(f"negative_weights must be 'abs', 'zero' or 'keep', got {policy!r}")


def weighted_roc(scores, labels, weights, *, negative_weights: NegativeWeights = "abs"):
    """Weighted ROC curve: (background efficiency, signal efficiency, thresholds).

    Efficiencies are fractions of the weighted class totals with score >= threshold
    (scikit-learn's ``roc_curve`` with ``sample_weight``), so fpr and tpr run from 0 to 1.
    Negative weights follow ``negative_weights`` (module docstring).
    """
    scores, labels, weights = _as_arrays(scores, labels, weights)
    w = policy_weights(weights, negative_weights)
    fpr, tpr, thresholds = roc_curve(labels, scores, sample_weight=w, drop_intermediate=False)
    if negative_weights == "keep" and (np.any(np.diff(fpr) < 0) or np.any(np.diff(tpr) < 0)):
        raise ValueError("weighted ROC is not monotonic with signed weights (negative-weight "
                         "events dominate some score range): use negative_weights='abs' or 'zero'")
    return fpr, tpr, thresholds


def weighted_roc_auc(scores, labels, weights, *, negative_weights: NegativeWeights = "abs") -> float:
    """Area under the weighted ROC curve (scikit-learn ``roc_auc_score(sample_weight=)``).

    Equals the weighted probability that a signal event scores above a background event
    (ties count one half). Negative weights follow ``negative_weights`` (module docstring).
    """
    scores, labels, weights = _as_arrays(scores, labels, weights)
    if negative_weights == "keep":
        weighted_roc(scores, labels, weights, negative_weights="keep")  # raises if non-monotonic
    w = policy_weights(weights, negative_weights)
    return float(roc_auc_score(labels, scores, sample_weight=w))


def signal_efficiency_at(scores, labels, weights, *, background_efficiency=(0.01, 0.1),
                         negative_weights: NegativeWeights = "abs") -> dict[float, float]:
    """Signal efficiency at fixed background efficiencies, by linear interpolation of the ROC.

    Parameters
    ----------
    background_efficiency : sequence of float, keyword-only
        Working points in [0, 1] (1 % and 10 % by default).

    Returns
    -------
    dict
        ``{background_efficiency: signal_efficiency}``.
    """
    fpr, tpr, _ = weighted_roc(scores, labels, weights, negative_weights=negative_weights)
    out = {}
    for eff in background_efficiency:
        if not 0 <= eff <= 1:
            raise ValueError(f"background_efficiency must be within [0, 1], got {eff}")
        # At a repeated fpr (signal-only score range) take the highest tpr: the loosest cut
        # that still has this background efficiency.
        upper = np.searchsorted(fpr, eff, side="right")
        if upper > 0 and fpr[upper - 1] == eff:
            out[float(eff)] = float(tpr[upper - 1])
        else:
            out[float(eff)] = float(np.interp(eff, fpr, tpr))
    return out


@dataclass(frozen=True)
class KSResult:
    """Weighted two-sample Kolmogorov-Smirnov test."""

    statistic: float  # sup |F_a - F_b| of the weighted ECDFs
    pvalue: float  # asymptotic two-sided p-value with effective sample sizes
    n_eff_a: float  # (sum w)^2 / sum w^2 of sample a
    n_eff_b: float


def _effective_size(w: np.ndarray) -> float:
    sw2 = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / sw2 if sw2 > 0 else 0.0


def weighted_ks_2samp(a, b, *, weights_a=None, weights_b=None,
                      negative_weights: NegativeWeights = "abs") -> KSResult:
    """Two-sample KS test on weighted samples (overtraining check: train vs test scores).

    The statistic is the largest distance between the two weighted empirical CDFs,
    ``F(x) = sum(w[x_i <= x]) / sum(w)``. The p-value is Smirnov's two-sided distribution
    (``scipy.stats.kstwo``, as ``scipy.stats.ks_2samp(method="asymp")`` uses) with the sample
    sizes replaced by Kish's effective sizes ``n_eff = (sum w)^2 / sum w^2``; with unit
    weights it equals scipy's asymptotic result. A small p-value (< 0.05) means train and
    test scores differ more than statistics allow: a sign of overtraining.

    Parameters
    ----------
    a, b : np.ndarray of float
        The two samples (e.g. scores of training and of test signal events).
    weights_a, weights_b : np.ndarray of float or None, keyword-only
        Event weights (None: unit weights); negative ones follow ``negative_weights``.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    wa = np.ones_like(a) if weights_a is None else policy_weights(np.asarray(weights_a, np.float64).ravel(), negative_weights)
    wb = np.ones_like(b) if weights_b is None else policy_weights(np.asarray(weights_b, np.float64).ravel(), negative_weights)
    if a.size != wa.size or b.size != wb.size:
        raise ValueError(f"weights must match their samples: {a.size} values with {wa.size} weights, "
                         f"{b.size} values with {wb.size} weights")
    if wa.sum() <= 0 or wb.sum() <= 0:
        raise ValueError(f"each sample needs a positive total weight, got {wa.sum()} and {wb.sum()}")
    grid = np.union1d(a, b)

    def ecdf(x, w):
        order = np.argsort(x, kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(w[order])]) / w.sum()
        return cum[np.searchsorted(x[order], grid, side="right")]

    statistic = float(np.max(np.abs(ecdf(a, wa) - ecdf(b, wb))))
    n_a, n_b = _effective_size(wa), _effective_size(wb)
    en = max(1.0, round(n_a * n_b / (n_a + n_b)))
    pvalue = float(np.clip(stats.kstwo.sf(statistic, en), 0.0, 1.0))
    return KSResult(statistic=statistic, pvalue=pvalue, n_eff_a=n_a, n_eff_b=n_b)
