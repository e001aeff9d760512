"""Evaluation stage: figures of merit of a multi-class classifier (``[target] kind = "multiclass"``).

Pure functions of (true class, class probabilities, weights) arrays, one row per test event,
returning JSON-ready dicts for metrics.json: the one-vs-rest weighted ROC AUC of every class
and their macro average, the weighted confusion matrix normalised per true class, and the
expected yields of each category when every event is assigned to its arg-max class.

The ROC/AUC code is `analysis.evaluate.metrics`' (a class against the rest is a binary
problem), and so is the negative-weight policy: AUCs and the confusion matrix compare
normalised distributions and use `policy_weights` (|w| by default), the yields are expected
event counts and always use the signed physics weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from analysis.evaluate.metrics import NegativeWeights, policy_weights, weighted_roc, weighted_roc_auc

__all__ = ["multiclass_metrics", "ovr_roc_curves", "predicted_class"]


def _as_multiclass(true_class, proba, weight, class_names):
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = len(class_names)
    if proba.ndim != 2 or proba.shape[1] != n_classes:
        raise ValueError(f"proba must have shape (n, {n_classes}) (one column per class of "
                         f"{list(class_names)}), got shape {proba.shape}")
    true_class = np.asarray(true_class).ravel()
    weight = (np.ones(len(proba)) if weight is None else np.asarray(weight, dtype=np.float64).ravel())
    if not (true_class.size == weight.size == len(proba)):
        raise ValueError(f"true_class, proba and weight must have one entry per event, got lengths "
                         f"{true_class.size}, {len(proba)}, {weight.size}")
    if true_class.size and not np.issubdtype(true_class.dtype, np.integer):
        raise ValueError(f"true_class must hold integer class indices, got dtype {true_class.dtype}")
    bad = sorted(set(np.unique(true_class).tolist()) - set(range(n_classes)))
    if bad:
        raise ValueError(f"true_class values must be class indices 0..{n_classes - 1} of {list(class_names)}, "
                         f"got {bad}; real data (class -1) has no truth and cannot enter a metric")
    if not np.all(np.isfinite(proba)):
        raise ValueError(f"proba has {int((~np.isfinite(proba)).any(axis=1).sum())} row(s) with a non-finite "
                         "probability; the model's output is broken, no metric can be quoted")
    if not np.all(np.isfinite(weight)):
        raise ValueError(f"weight has {int((~np.isfinite(weight)).sum())} non-finite value(s)")
    return true_class.astype(np.int64), proba, weight


def predicted_class(proba) -> np.ndarray:
    """Arg-max category of each event (int64, shape (n,)); a tie goes to the lower class index."""
    return np.argmax(np.asarray(proba, dtype=np.float64), axis=1)


def _ovr_defined(is_class: np.ndarray, w: np.ndarray) -> bool:
    """A one-vs-rest ROC needs weight in the class and in the rest."""
    return bool(w[is_class].sum() > 0 and w[~is_class].sum() > 0)


def ovr_roc_curves(true_class, proba, weight, class_names: Sequence[str], *,
                   negative_weights: NegativeWeights = "abs") -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest weighted ROC curve of every class, for plotting.

    Parameters
    ----------
    true_class : np.ndarray of int, shape (n,)
        True class index of each event, in 0..C-1.
    proba : np.ndarray of float, shape (n, C)
        Class probabilities (column k is the score of class k against the rest).
    weight : np.ndarray of float, shape (n,), or None
        Event weights (None: unit weights); negative ones follow ``negative_weights``.
    class_names : list of str, length C

    Returns
    -------
    dict
        ``{class name: (fpr, tpr, auc)}``: efficiency of the other classes, efficiency of
        the class, area (the tuple `analysis.evaluate.plots.plot_roc` draws). A class with no
        weight in it or in the rest has no curve and is left out.
    """
    true_class, proba, weight = _as_multiclass(true_class, proba, weight, class_names)
    w = policy_weights(weight, negative_weights)
    curves = {}
    for k, name in enumerate(class_names):
        is_class = true_class == k
        if not _ovr_defined(is_class, w):
            continue
        fpr, tpr, _ = weighted_roc(proba[:, k], is_class.astype(np.int8), weight,
                                   negative_weights=negative_weights)
        auc = weighted_roc_auc(proba[:, k], is_class.astype(np.int8), weight, negative_weights=negative_weights)
        curves[name] = (fpr, tpr, auc)
    return curves


def _test_fraction_per_class(test_fraction, n_classes: int) -> np.ndarray:
    fractions = np.atleast_1d(np.asarray(test_fraction, dtype=np.float64))
    if np.ndim(test_fraction) == 0:
        fractions = np.full(n_classes, fractions[0])
    if fractions.shape != (n_classes,):
        raise ValueError(f"test_fraction must be one float or one per class ({n_classes}), "
                         f"got {len(fractions)} values")
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"test_fraction must be in (0, 1], got {f}")
    return fractions


def _confusion(true_class, predicted, w, class_names, policy, notes):
    n_classes = len(class_names)
    weighted = np.zeros((n_classes, n_classes))
    np.add.at(weighted, (true_class, predicted), w)
    totals = weighted.sum(axis=1)
    normalised: list[list[float] | list[None]] = []
    for k, name in enumerate(class_names):
        if totals[k] > 0:
            normalised.append([float(v) for v in weighted[k] / totals[k]])
        else:
            # 0/0: no fraction exists; null (JSON has no NaN) and a note saying why.
            normalised.append([None] * n_classes)
            notes.append(f"confusion: class {name!r} has total weight {totals[k]:g} in the test events, "
                         "its normalised row is null")
    if policy == "keep":
        rows = np.array([r for r in normalised if r[0] is not None], dtype=np.float64)
        if rows.size and (rows.min() < 0 or rows.max() > 1):
            raise ValueError("weighted confusion matrix has fractions outside [0, 1] with signed weights "
                             "(negative-weight events dominate a cell): use negative_weights='abs' or 'zero'")
    return {"normalised": normalised, "weighted": [[float(v) for v in row] for row in weighted]}


def _yields(true_class, predicted, physics, class_names, test_fraction):
    n_classes = len(class_names)
    scale = 1.0 / _test_fraction_per_class(test_fraction, n_classes)
    expected = np.zeros((n_classes, n_classes))  # rows: arg-max category, columns: true class
    np.add.at(expected, (predicted, true_class), physics)
    expected *= scale[np.newaxis, :]
    events = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(events, (predicted, true_class), 1)
    return {
        "scale": {name: float(s) for name, s in zip(class_names, scale)},
        "expected": {cat: {t: float(expected[i, j]) for j, t in enumerate(class_names)}
                     for i, cat in enumerate(class_names)},
        "category_total": {cat: float(expected[i].sum()) for i, cat in enumerate(class_names)},
        "events": {cat: {t: int(events[i, j]) for j, t in enumerate(class_names)}
                   for i, cat in enumerate(class_names)},
        "total": float(expected.sum()),
    }


def multiclass_metrics(true_class, proba, weight, class_names: Sequence[str], *, physics_weight=None,
                       test_fraction: float | Sequence[float] = 1.0,
                       negative_weights: NegativeWeights = "abs") -> dict:
    """AUCs, confusion matrix and category yields of a multi-class classifier (metrics.json).

    Parameters
    ----------
    true_class : np.ndarray of int, shape (n,)
        True class index of each test event, in 0..C-1 (the prepared ``class`` column).
    proba : np.ndarray of float, shape (n, C)
        Class probabilities from the model, column k for ``class_names[k]``.
    weight : np.ndarray of float, shape (n,), or None
        Weights of the AUCs and the confusion matrix: the physics ``weight`` for the
        fractions expected in the analysis, or a class-balanced training weight for
        per-event separation (None: unit weights). Negative ones follow ``negative_weights``.
    class_names : list of str, length C
        Class names (stats.json), in the column order of ``proba``.
    physics_weight : np.ndarray of float, shape (n,), or None, keyword-only
        Expected events of each test event at the full luminosity (the prepared ``weight``),
        signed; used for the yields only. None: ``weight`` (signed) is the physics weight.
    test_fraction : float or sequence of C floats, keyword-only
        Fraction of all events (by weight) that the test split holds, one for all or one per
        true class, as in `analysis.evaluate.metrics.ams_scan`; yields are divided by it.
    negative_weights : "abs", "zero" or "keep", keyword-only
        Policy for the AUCs and the confusion matrix (`analysis.evaluate.metrics`).

    Returns
    -------
    dict
        ``class_names``; ``negative_weights`` ({"yields": "signed", "auc_confusion": policy});
        ``ovr_auc`` {class: AUC or None}, one-vs-rest with the class's probability as score;
        ``macro_auc`` (unweighted mean over the classes with an AUC, None if none has one);
        ``confusion`` {"normalised": C x C rows true class, columns arg-max class, each row
        summing to 1 (None entries for a class without weight), "weighted": the raw weighted
        sums}; ``yields`` {"scale": {true class: 1/test_fraction}, "expected": {category:
        {true class: events}}, "category_total": {category: events}, "events": {category:
        {true class: raw event count}}, "total": events}; ``notes``: why a value is None.

    Example
    -------
    >>> m = multiclass_metrics([0, 1, 2], np.eye(3), None, ["a", "b", "c"])
    >>> m["macro_auc"], m["confusion"]["normalised"][1]
    (1.0, [0.0, 1.0, 0.0])
    """
    class_names = [str(c) for c in class_names]
    true_class, proba, weight = _as_multiclass(true_class, proba, weight, class_names)
    physics = weight if physics_weight is None else np.asarray(physics_weight, dtype=np.float64).ravel()
    if physics.shape != weight.shape or not np.all(np.isfinite(physics)):
        raise ValueError(f"physics_weight must be finite with one entry per event ({weight.size}), "
                         f"got {physics.size} entries, {int((~np.isfinite(physics)).sum())} non-finite")
    w = policy_weights(weight, negative_weights)
    notes: list[str] = []
    curves = ovr_roc_curves(true_class, proba, weight, class_names, negative_weights=negative_weights)
    ovr_auc = {name: (curves[name][2] if name in curves else None) for name in class_names}
    for name in class_names:
        if name not in curves:
            notes.append(f"ovr_auc: class {name!r} or the rest has no weight in the test events, "
                         "no ROC curve; left out of macro_auc")
    defined = [a for a in ovr_auc.values() if a is not None]
    predicted = predicted_class(proba)
    return {
        "class_names": class_names,
        "negative_weights": {"yields": "signed", "auc_confusion": negative_weights},
        "ovr_auc": ovr_auc,
        "macro_auc": float(np.mean(defined)) if defined else None,
        "confusion": _confusion(true_class, predicted, w, class_names, negative_weights, notes),
        "yields": _yields(true_class, predicted, physics, class_names, test_fraction),
        "notes": notes,
    }
