"""Evaluation stage: figures of merit of a regression (``[target] kind = "regression"``).

Pure functions of (prediction, truth, weight) arrays, one row per test event, returning
JSON-ready dicts for metrics.json. They describe the response r = prediction / truth, which
suits positive targets such as masses and momenta: its median (the scale), its resolution
(half the 16-84 % width over the median), the bias, the pulls, the same median and
resolution in bins of the truth and of η, and the same for a baseline estimate (the visible
mass for m_H) after dividing it by its own median response, so the comparison is between
calibrated estimates.

All quantities are weighted averages or quantiles of a distribution, a shape, so negative
weights follow `analysis.evaluate.metrics.policy_weights` (|w| by default). Quantiles are
inverted-CDF weighted quantiles (``numpy.quantile(..., weights=, method="inverted_cdf")``),
the definition the prepare stage's statistics use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from analysis.evaluate.metrics import NegativeWeights, policy_weights

__all__ = ["PULL_DEFINITION", "bin_edges", "pulls", "regression_metrics", "regression_metrics_columns",
           "response_summary", "weighted_quantiles"]

PULL_DEFINITION = ("(pred - truth) / (half_width * truth), half_width = (q84 - q16) / 2 of the response "
                   "pred / truth")
#: A half-width below this fraction of the median is no spread (rounding of pred / truth):
#: pulls would divide by rounding noise, so they are left undefined.
NO_SPREAD = 1e-12


def weighted_quantiles(values, weights, qs) -> np.ndarray:
    """Inverted-CDF weighted quantiles: for each q, the smallest x with cumulative weight >= q * total.

    Parameters
    ----------
    values, weights : np.ndarray of float, shape (n,)
        Finite values and non-negative weights with a positive sum.
    qs : sequence of float in [0, 1]
    """
    return np.quantile(np.asarray(values, dtype=np.float64), np.asarray(qs, dtype=np.float64),
                       weights=np.asarray(weights, dtype=np.float64), method="inverted_cdf")


def response_summary(r, w) -> dict:
    """Median, 16 % and 84 % quantiles, half-width and resolution of a weighted response.

    ``resolution = (q84 - q16) / 2 / median``; every entry is None when the weights sum to
    zero, and the resolution is None when the median is not positive (no scale to divide by).
    """
    r, w = np.asarray(r, dtype=np.float64), np.asarray(w, dtype=np.float64)
    if not r.size or not w.sum() > 0:
        return {"median": None, "q16": None, "q84": None, "half_width": None, "resolution": None}
    q16, median, q84 = (float(v) for v in weighted_quantiles(r, w, (0.16, 0.5, 0.84)))
    half_width = 0.5 * (q84 - q16)
    return {"median": median, "q16": q16, "q84": q84, "half_width": half_width,
            "resolution": half_width / median if median > 0 else None}


def pulls(pred, truth, half_width: float) -> np.ndarray:
    """Pull of each event, ``(pred - truth) / (half_width * truth)`` (`PULL_DEFINITION`).

    ``half_width * truth`` is the spread of the prediction at this truth (the response's
    68 % half-width times the scale of the event), so a Gaussian response gives pulls of
    standard deviation 1, tails make it larger, and their mean is the bias in units of the
    spread.
    """
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    return (pred - truth) / (half_width * truth)


def bin_edges(x, w, bins: int | Sequence[float]) -> np.ndarray:
    """Bin edges: ``bins`` edges as given (increasing), or an int for that many equal-weight bins.

    Equal-weight edges are weighted quantiles of ``x``, so every bin holds about the same
    weight whatever the distribution (a falling mass spectrum gets no empty tail bins);
    repeated edges (a discrete ``x``) are merged.
    """
    if np.ndim(bins) == 0:
        if int(bins) < 1:
            raise ValueError(f"bins must be a positive number of bins or a list of edges, got {bins}")
        edges = np.unique(weighted_quantiles(x, w, np.linspace(0.0, 1.0, int(bins) + 1)))
        return edges if edges.size > 1 else np.repeat(edges, 2)  # a constant x: one bin [x, x]
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
        raise ValueError(f"bin edges must be at least two finite, increasing values, got {edges.tolist()}")
    return edges


def _binned(x, r, w, edges: np.ndarray) -> dict:
    """Median and resolution of the response in bins of x (last bin closed on the right)."""
    n_bins = edges.size - 1
    index = np.searchsorted(edges, x, side="right") - 1
    index[x == edges[-1]] = n_bins - 1
    inside = np.isfinite(x) & (index >= 0) & (index < n_bins)
    out: dict = {"edges": [float(e) for e in edges], "n": [], "sum_weight": [], "median": [], "resolution": [],
                 "left_out": int((~inside).sum())}
    for b in range(n_bins):
        sel = inside & (index == b)
        summary = response_summary(r[sel], w[sel])
        out["n"].append(int(sel.sum()))
        out["sum_weight"].append(float(w[sel].sum()))
        out["median"].append(summary["median"])
        out["resolution"].append(summary["resolution"])
    return out


def _weighted_mean_std(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    mean = float(np.sum(w * x) / np.sum(w))
    return mean, float(np.sqrt(np.sum(w * (x - mean) ** 2) / np.sum(w)))


def _estimate(pred, truth, w, binnings: Mapping[str, tuple[np.ndarray, np.ndarray]], notes: list[str],
              what: str) -> dict:
    """Response summary, bias, pulls and binned response of one estimate of the truth."""
    r = pred / truth
    summary = response_summary(r, w)
    median, half_width = summary["median"], summary["half_width"]
    out = {**summary, "bias": float(np.sum(w * (pred - truth)) / np.sum(w)),
           "relative_bias": median - 1.0, "pull": {"mean": None, "std": None, "half_width": half_width}}
    if half_width > NO_SPREAD * abs(median):
        mean, std = _weighted_mean_std(pulls(pred, truth, half_width), w)
        out["pull"].update(mean=mean, std=std)
    else:
        notes.append(f"{what}: the response has no spread (half-width {half_width:g}), the pulls are null")
    if summary["resolution"] is None:
        notes.append(f"{what}: the median response {median:g} is not positive, the resolution is null")
    for name, (x, edges) in binnings.items():
        out[f"vs_{name}"] = _binned(x, r, w, edges)
    return out


def _check_weights(w: np.ndarray, policy: NegativeWeights) -> None:
    if np.any(w < 0):  # only possible with "keep"
        raise ValueError(f"weighted quantiles need non-negative weights, got {int((w < 0).sum())} negative "
                         f"with negative_weights={policy!r}: use negative_weights='abs' or 'zero'")
    if not w.sum() > 0:
        raise ValueError(f"the events left have total weight {w.sum():g}; a response needs a positive total")


def regression_metrics(pred, truth, weight, *, eta=None, baseline=None, bins_truth: int | Sequence[float] = 10,
                       bins_eta: int | Sequence[float] = 10, pt=None, bins_pt: int | Sequence[float] = 5,
                       negative_weights: NegativeWeights = "abs") -> dict:
    """Response, resolution, bias and pulls of a regression, overall and in bins (metrics.json).

    Parameters
    ----------
    pred, truth : np.ndarray of float, shape (n,)
        Prediction (physical units, de-standardised) and true value of each test event.
    weight : np.ndarray of float, shape (n,), or None
        Event weights (None: unit weights); negative ones follow ``negative_weights``.
    eta : np.ndarray of float, shape (n,), or None, keyword-only
        η of each event (e.g. of the leading tau) for the response against η; a non-finite
        η leaves the event out of those bins only.
    baseline : np.ndarray of float, shape (n,), or None, keyword-only
        An alternative estimate of the truth (the visible mass for m_H). It is divided by its
        median response first, then described like the prediction, on the events where both
        it and the prediction are usable.
    pt : np.ndarray of float, shape (n,), or None, keyword-only
        The reconstructed pt of each object (a jet's, for a jet energy-scale regression) for
        the response against pt, ``vs_pt``; a non-finite pt leaves the event out of those bins only.
    bins_truth, bins_eta, bins_pt : int or list of float, keyword-only
        Bin edges, or a number of equal-weight bins (`bin_edges`) built on the model's
        events; the baseline uses the same bins.
    negative_weights : "abs", "zero" or "keep", keyword-only
        `analysis.evaluate.metrics` policy ("keep" raises on a negative weight: a weighted
        quantile needs a monotonic cumulative weight).

    Returns
    -------
    dict
        ``n_events``; ``n_used``; ``left_out`` {"non_finite_pred", "non_finite_truth",
        "zero_truth", "total"} (one event may count for several reasons, once in total);
        ``negative_weights``; ``pull_definition``; ``model`` and ``baseline`` (None without
        one) each with ``median``, ``q16``, ``q84``, ``half_width``, ``resolution``, ``bias``
        (weighted mean of estimate - truth), ``relative_bias`` (median - 1), ``pull``
        {"mean", "std", "half_width"}, ``vs_truth`` and, with ``eta``, ``vs_eta`` {"edges",
        "n", "sum_weight", "median", "resolution" (lists, one entry per bin, None in an empty
        bin), "left_out" (events outside the edges)}, and with ``pt`` ``vs_pt`` alike; the baseline adds ``scale`` (its raw
        median response, the divisor), ``n_used`` and ``left_out``; ``improvement``
        (1 - resolution_model / resolution_baseline, None without a baseline); ``notes``:
        why a value is None.

    Example
    -------
    >>> m = regression_metrics([110.0, 220.0], [100.0, 200.0], None)
    >>> round(m["model"]["median"], 6), round(m["model"]["bias"], 6)
    (1.1, 15.0)
    """
    pred = np.asarray(pred, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=np.float64).ravel()
    weight = np.ones_like(pred) if weight is None else np.asarray(weight, dtype=np.float64).ravel()
    extra = {"eta": eta, "baseline": baseline, "pt": pt}
    extra = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in extra.items() if v is not None}
    lengths = {"pred": pred.size, "truth": truth.size, "weight": weight.size} | {k: v.size for k, v in extra.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"every array must have one entry per event, got lengths {lengths}")
    if not np.all(np.isfinite(weight)):
        raise ValueError(f"weight has {int((~np.isfinite(weight)).sum())} non-finite value(s)")
    bad_pred, bad_truth, zero_truth = ~np.isfinite(pred), ~np.isfinite(truth), truth == 0
    used = ~(bad_pred | bad_truth | zero_truth)
    if not used.any():
        raise ValueError(f"no event has a finite prediction and a finite, non-zero truth (of {pred.size}); "
                         "check the model output and the target column")
    w_all = policy_weights(weight, negative_weights)
    w = w_all[used]
    _check_weights(w, negative_weights)
    binnings = {"truth": (truth[used], bin_edges(truth[used], w, bins_truth))}
    notes: list[str] = []
    for name, bins in (("eta", bins_eta), ("pt", bins_pt)):
        if name not in extra:
            continue
        finite = np.isfinite(extra[name][used])
        if w[finite].sum() > 0:
            binnings[name] = (extra[name][used], bin_edges(extra[name][used][finite], w[finite], bins))
        else:
            notes.append(f"{name}: no used event has a finite {name} and weight, no vs_{name} bins")
    out = {
        "n_events": int(pred.size), "n_used": int(used.sum()),
        "left_out": {"non_finite_pred": int(bad_pred.sum()), "non_finite_truth": int(bad_truth.sum()),
                     "zero_truth": int(zero_truth.sum()), "total": int((~used).sum())},
        "negative_weights": negative_weights, "pull_definition": PULL_DEFINITION,
        "model": _estimate(pred[used], truth[used], w, binnings, notes, "model"),
        "baseline": None, "improvement": None, "notes": notes,
    }
    if "baseline" in extra:
        out["baseline"] = _baseline(extra["baseline"], truth, w_all, used, binnings, notes)
        res_model = out["model"]["resolution"]
        res_base = (out["baseline"] or {}).get("resolution")
        if res_model is not None and res_base:
            out["improvement"] = 1.0 - res_model / res_base
    return out


def _baseline(baseline, truth, w_all, used, binnings, notes) -> dict | None:
    """The baseline block: divided by its own median response, on the events usable for both."""
    ok = used & np.isfinite(baseline)
    if not w_all[ok].sum() > 0:
        notes.append("baseline: no event with a finite baseline and weight, no baseline block")
        return None
    scale = response_summary(baseline[ok] / truth[ok], w_all[ok])["median"]
    if not scale > 0:
        notes.append(f"baseline: its median response {scale:g} is not positive, it cannot be calibrated")
        return None
    keep = ok[used]  # the baseline's events among the model's, for the shared bins
    bins = {name: (x[keep], edges) for name, (x, edges) in binnings.items()}
    block = _estimate(baseline[ok] / scale, truth[ok], w_all[ok], bins, notes, "baseline")
    return {"scale": scale, "n_used": int(ok.sum()), "left_out": int((used & ~ok).sum()), **block}


def regression_metrics_columns(pred, truth, weight, names: Sequence[str], *, eta=None,
                               baseline: Mapping[str, np.ndarray] | None = None, **options) -> dict[str, dict]:
    """`regression_metrics` of each of K regression targets.

    Parameters
    ----------
    pred, truth : np.ndarray of float, shape (n, K)
        Column k is target ``names[k]``.
    weight, eta : shape (n,) or None; shared by every target.
    names : list of str, length K
    baseline : mapping of target name to np.ndarray (n,), or None, keyword-only
        A baseline for some targets (``{"m_H": m_vis}``).
    options
        Passed on to `regression_metrics` (bins, negative_weights).

    Returns
    -------
    dict
        ``{name: regression_metrics(...)}`` in the order of ``names``.
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    truth = np.asarray(truth, dtype=np.float64).reshape(len(truth), -1)
    names = [str(n) for n in names]
    if pred.shape != truth.shape or pred.shape[1] != len(names):
        raise ValueError(f"pred and truth must both have shape (n, {len(names)}) for targets {names}, "
                         f"got {pred.shape} and {truth.shape}")
    baseline = dict(baseline or {})
    unknown = sorted(set(baseline) - set(names))
    if unknown:
        raise ValueError(f"baseline for unknown target(s) {unknown}; the targets are {names}")
    return {name: regression_metrics(pred[:, k], truth[:, k], weight, eta=eta, baseline=baseline.get(name),
                                     **options)
            for k, name in enumerate(names)}
