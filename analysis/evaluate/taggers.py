"""Evaluation stage: figures of merit of a jet tagger — a signal class against a background class.

Pure functions of (score, is-signal, weight[, pt]) arrays, one entry per test jet, returning
JSON-ready dicts for metrics.json, so they can be checked by hand and used from notebooks:

- the tagger discriminant of a multi-class model, p_s / (p_s + p_b) for signal class s
  against background class b (the other classes do not enter; a binary model's score is its
  own discriminant);
- the weighted ROC curve, its area, and the background rejection 1/eps_B at fixed signal
  efficiencies eps_S, linearly interpolated between the points of the weighted ROC;
- its statistical uncertainty: the weighted binomial variance of eps_B,
  Var(eps_B) = [(1 - eps_B)^2 Σ_pass w^2 + eps_B^2 Σ_fail w^2] / (Σ w)^2 over the background
  jets (eps_B (1 - eps_B) / N for unit weights), propagated to sigma(1/eps_B) = sigma(eps_B) / eps_B^2.
  The threshold is taken as exact: the signal jets' own fluctuation of it is left out, so
  the uncertainty is a lower bound when signal jets are few;
- the same in bins of jet pt, the threshold chosen again in every bin (a fixed eps_S per bin).

Where no background jet passes at a working point (eps_B = 0), 1/eps_B is infinite: it is
reported as None (JSON null) with a note, never as a number. Weights are shapes here, so
negative ones follow `analysis.evaluate.metrics.policy_weights` (|w| by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis.evaluate.metrics import NegativeWeights, policy_weights, weighted_roc_auc
from analysis.evaluate.regression import bin_edges

__all__ = ["TaggerROC", "discriminant", "pt_bin_edges", "reference_efficiency", "rejection_at", "tagger_metrics",
           "tagger_roc"]

DEFAULT_EFFICIENCIES = (0.3, 0.5, 0.7)


def discriminant(scores, signal: int, background: int) -> np.ndarray:
    """The tagger score of class ``signal`` against class ``background`` for every jet.

    Parameters
    ----------
    scores : np.ndarray of float, shape (n, C) or (n,)
        Class probabilities of a multi-class model, or a binary model's signal probability
        (classes 0 background, 1 signal).
    signal, background : int
        Class indices.

    Returns
    -------
    np.ndarray of float64, shape (n,)
        p_s / (p_s + p_b); 0.5 (no preference) where both are 0. Binary: the score for
        (signal 1, background 0), 1 - score the other way round.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if signal == background:
        raise ValueError(f"signal and background must be different classes, got {signal} for both")
    if scores.ndim == 1:
        if {signal, background} != {0, 1}:
            raise ValueError(f"a binary score has classes 0 and 1, got signal {signal}, background {background}")
        out = scores if signal == 1 else 1.0 - scores
    elif scores.ndim == 2 and max(signal, background) < scores.shape[1]:
        p_s, p_b = scores[:, signal], scores[:, background]
        total = p_s + p_b
        out = np.divide(p_s, total, out=np.full(len(scores), 0.5), where=total > 0)
        out[~(np.isfinite(p_s) & np.isfinite(p_b))] = np.nan  # not hidden as "no preference"
    else:
        raise ValueError(f"scores must be (n,) or (n, C) with C > {max(signal, background)}, got shape {scores.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{int((~np.isfinite(out)).sum())} jet(s) have a non-finite score; the model's "
                         "output is broken, no rejection can be quoted")
    return out


@dataclass(frozen=True)
class TaggerROC:
    """A weighted ROC curve with what the rejection's uncertainty needs.

    Point k is the cut "score >= k-th highest distinct score" (point 0: nothing passes).
    """

    tpr: np.ndarray  # signal efficiency at each point, non-decreasing from 0 to 1
    fpr: np.ndarray  # background efficiency at each point, non-decreasing from 0 to 1
    sum_w2_pass: np.ndarray  # Σ w^2 of the background jets passing at each point
    sum_w_background: float
    sum_w2_background: float

    @property
    def n_eff_background(self) -> float:
        """Kish's effective number of background jets, (Σw)^2 / Σw^2."""
        return self.sum_w_background ** 2 / self.sum_w2_background if self.sum_w2_background > 0 else 0.0


def tagger_roc(score, is_signal, weight) -> TaggerROC:
    """Weighted ROC of signal against background jets (weights >= 0, both classes weighted > 0).

    The same curve as `analysis.evaluate.metrics.weighted_roc` (scikit-learn's, without
    dropping points), with the background's cumulative Σw^2 alongside.
    """
    score = np.asarray(score, dtype=np.float64)
    is_signal = np.asarray(is_signal, dtype=bool)
    w = np.asarray(weight, dtype=np.float64)
    order = np.argsort(-score, kind="stable")
    last_of_value = np.r_[np.diff(score[order]) != 0, True]  # one point per distinct score
    w_s, w_b = np.where(is_signal[order], w[order], 0.0), np.where(is_signal[order], 0.0, w[order])
    cum_s = np.r_[0.0, np.cumsum(w_s)[last_of_value]]
    cum_b = np.r_[0.0, np.cumsum(w_b)[last_of_value]]
    cum_b2 = np.r_[0.0, np.cumsum(w_b * w_b)[last_of_value]]
    if not (cum_s[-1] > 0 and cum_b[-1] > 0):
        raise ValueError(f"a ROC needs signal and background weight, got {cum_s[-1]:g} and {cum_b[-1]:g}")
    return TaggerROC(tpr=cum_s / cum_s[-1], fpr=cum_b / cum_b[-1], sum_w2_pass=cum_b2,
                     sum_w_background=float(cum_b[-1]), sum_w2_background=float(cum_b2[-1]))


def rejection_at(roc: TaggerROC, signal_efficiency: float) -> dict:
    """Background efficiency, rejection 1/eps_B and its uncertainty at one signal efficiency.

    eps_B is interpolated linearly between the two ROC points around ``signal_efficiency``
    (at a point with exactly this eps_S, the one with the lowest eps_B), and Σ_pass w^2 with it.

    Returns
    -------
    dict
        ``signal_efficiency``, ``background_efficiency``, ``rejection`` (1/eps_B, None when
        eps_B = 0), ``rejection_uncertainty`` (None likewise), ``background_passing_effective``
        ((Σ_pass w)^2 / Σ_pass w^2, the effective background jets passing), ``note`` (None, or
        why the rejection is None).
    """
    if not 0 < signal_efficiency <= 1:
        raise ValueError(f"signal efficiency must be in (0, 1], got {signal_efficiency}")
    j = int(np.searchsorted(roc.tpr, signal_efficiency, side="left"))
    j = min(j, len(roc.tpr) - 1)  # rounding of tpr[-1] just below 1
    if roc.tpr[j] == signal_efficiency or j == 0:
        eps, w2 = float(roc.fpr[j]), float(roc.sum_w2_pass[j])
    else:
        f = (signal_efficiency - roc.tpr[j - 1]) / (roc.tpr[j] - roc.tpr[j - 1])
        eps = float(roc.fpr[j - 1] + f * (roc.fpr[j] - roc.fpr[j - 1]))
        w2 = float(roc.sum_w2_pass[j - 1] + f * (roc.sum_w2_pass[j] - roc.sum_w2_pass[j - 1]))
    out = {"signal_efficiency": float(signal_efficiency), "background_efficiency": eps, "rejection": None,
           "rejection_uncertainty": None, "background_passing_effective": 0.0, "note": None}
    if not eps > 0:
        out["note"] = (f"no background jet passes at eps_S = {signal_efficiency:g}: 1/eps_B is infinite "
                       f"(more than the {roc.n_eff_background:.4g} effective background jets can measure)")
        return out
    total, total_w2 = roc.sum_w_background, roc.sum_w2_background
    variance = ((1.0 - eps) ** 2 * w2 + eps ** 2 * max(total_w2 - w2, 0.0)) / total ** 2
    out.update(rejection=1.0 / eps, rejection_uncertainty=float(np.sqrt(variance)) / eps ** 2,
               background_passing_effective=(eps * total) ** 2 / w2 if w2 > 0 else 0.0)
    return out


def reference_efficiency(efficiencies: Sequence[float]) -> float:
    """The working point of the plot and table in pt bins: eps_S = 50 %, or the one nearest it."""
    return min(efficiencies, key=lambda e: (abs(e - 0.5), e))


def pt_bin_edges(pt, weight, bins: int | Sequence[float] = 5) -> np.ndarray:
    """pt bin edges: as given, or ``bins`` bins of equal weight over the jets with a finite pt."""
    pt, weight = np.asarray(pt, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    finite = np.isfinite(pt)
    if np.ndim(bins) == 0 and not weight[finite].sum() > 0:
        raise ValueError("no jet with a finite pt and a positive weight: no pt bins can be made")
    return bin_edges(pt[finite], weight[finite], bins)


def _summary(score, is_signal, w, efficiencies, notes: list[str], where: str) -> dict:
    """AUC and working points of one set of jets (None where a class has no weight)."""
    sw_s, sw_b = float(w[is_signal].sum()), float(w[~is_signal].sum())
    sw2_b = float((w[~is_signal] ** 2).sum())
    out = {"n_signal": int(is_signal.sum()), "n_background": int((~is_signal).sum()),
           "sum_weight_signal": sw_s, "sum_weight_background": sw_b,
           "n_eff_background": sw_b ** 2 / sw2_b if sw2_b > 0 else 0.0, "auc": None,
           "working_points": {f"{e:g}": None for e in efficiencies}}
    if not (sw_s > 0 and sw_b > 0):
        notes.append(f"{where}: signal weight {sw_s:g}, background weight {sw_b:g}: no ROC, no rejection")
        return out
    roc = tagger_roc(score, is_signal, w)
    out["auc"] = weighted_roc_auc(score, is_signal.astype(np.int8), w, negative_weights="keep")
    for e in efficiencies:
        point = rejection_at(roc, e)
        if point.pop("note"):
            notes.append(f"{where}: no background jet passes at eps_S = {e:g}, 1/eps_B is null (infinite)")
        out["working_points"][f"{e:g}"] = point
    return out


def tagger_metrics(score, is_signal, weight, *, pt=None, pt_edges: int | Sequence[float] | None = None,
                   efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES,
                   negative_weights: NegativeWeights = "abs") -> dict:
    """AUC and background rejection of a tagger, overall and in bins of jet pt (metrics.json).

    Parameters
    ----------
    score : np.ndarray of float, shape (n,)
        The discriminant of each jet (`discriminant`), higher = more signal-like.
    is_signal : np.ndarray of bool, shape (n,)
        True for a jet of the signal class, False for the background class (no other class).
    weight : np.ndarray of float, shape (n,), or None
        Jet weights (None: unit weights); negative ones follow ``negative_weights``.
    pt : np.ndarray of float, shape (n,), or None, keyword-only
        Jet pt for the binned figures; a non-finite pt leaves the jet out of the bins only.
    pt_edges : int or list of float or None, keyword-only
        Bin edges, or a number of equal-weight bins (`pt_bin_edges`) of these jets; None: 5.
        Jets outside given edges are counted in ``left_out``; the last bin is closed.
    efficiencies : sequence of float in (0, 1), keyword-only
        The signal efficiencies of the working points.

    Returns
    -------
    dict
        ``n_signal``, ``n_background``, ``sum_weight_signal``, ``sum_weight_background``,
        ``n_eff_background``, ``auc``, ``working_points`` {"0.5": `rejection_at` without its
        note, or None}; with ``pt``, ``pt_bins`` {"edges", "left_out", "bins": [the same per
        bin]}; ``negative_weights``; ``notes``: why a value is None.

    Example
    -------
    >>> m = tagger_metrics([0.9, 0.6, 0.4, 0.1], [True, False, True, False], None, efficiencies=[0.75])
    >>> m["auc"], m["working_points"]["0.75"]["rejection"]
    (0.75, 2.0)
    """
    score = np.asarray(score, dtype=np.float64).ravel()
    is_signal = np.asarray(is_signal, dtype=bool).ravel()
    weight = np.ones_like(score) if weight is None else np.asarray(weight, dtype=np.float64).ravel()
    if not (score.size == is_signal.size == weight.size) or (pt is not None and np.size(pt) != score.size):
        raise ValueError(f"score, is_signal, weight (and pt) need one entry per jet, got {score.size}, "
                         f"{is_signal.size}, {weight.size}" + ("" if pt is None else f", {np.size(pt)}"))
    if not (np.all(np.isfinite(score)) and np.all(np.isfinite(weight))):
        raise ValueError("score and weight must be finite for every jet")
    for e in efficiencies:
        if not 0 < e < 1:
            raise ValueError(f"signal efficiencies must be in (0, 1), got {e}")
    w = policy_weights(weight, negative_weights)
    if np.any(w < 0):
        raise ValueError(f"{int((w < 0).sum())} negative weight(s) with negative_weights='keep': an "
                         "efficiency needs weights >= 0; use 'abs' or 'zero'")
    notes: list[str] = []
    out = {**_summary(score, is_signal, w, efficiencies, notes, "all jets"), "negative_weights": negative_weights}
    if pt is not None:
        pt = np.asarray(pt, dtype=np.float64).ravel()
        edges = pt_bin_edges(pt, w, 5 if pt_edges is None else pt_edges)
        index = np.searchsorted(edges, pt, side="right") - 1
        index[pt == edges[-1]] = edges.size - 2
        inside = np.isfinite(pt) & (index >= 0) & (index < edges.size - 1)
        bins = []
        for b in range(edges.size - 1):
            sel = inside & (index == b)
            where = f"pt [{edges[b]:g}, {edges[b + 1]:g}]"
            bins.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                         **_summary(score[sel], is_signal[sel], w[sel], efficiencies, notes, where)})
        out["pt_bins"] = {"edges": [float(e) for e in edges], "left_out": int((~inside).sum()), "bins": bins}
    out["notes"] = notes
    return out
