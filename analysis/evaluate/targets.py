"""Evaluation stage: the metrics and plots of multi-class and regression models on the test split.

`run_evaluate` calls `evaluate_target` instead of the binary ROC/AMS/overtraining block
when the prepared folder was made for another target (stats.json ``target``). Multi-class:
one-vs-rest AUCs, the confusion matrix, per-class score distributions and the yields per
arg-max category (`analysis.evaluate.multiclass`). Regression: response, resolution, bias
and pulls against the truth and η, beside a baseline estimate such as the visible mass
(`analysis.evaluate.regression`). Input-feature plots are drawn as for a binary model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.config import Config
from analysis.core.target import CLASS_COLUMN, Target
from analysis.errors import StageInputError
from analysis.evaluate.inputs import SPLITS, PreparedDir
from analysis.evaluate.multiclass import multiclass_metrics, ovr_roc_curves
from analysis.evaluate.plots import file_slug as _slug
from analysis.evaluate.regression import regression_metrics
from analysis.evaluate.target_plots import (plot_class_scores, plot_confusion, plot_ovr_roc, plot_pulls,
                                            plot_response, plot_response_vs)

__all__ = ["evaluate_target", "target_test_columns"]

AddPlot = Callable[[str, str, Path], None]  # (section, title, file)


def target_test_columns(target: Target, config: Config) -> list[str]:
    """The test-split columns the target's metrics need besides features and EVENT_COLUMNS."""
    if target.kind == "multiclass":
        return [CLASS_COLUMN]
    extra = [config.target.baseline, config.target.eta_column, target.ratio_to]
    return list(dict.fromkeys([*target.sources, *(c for c in extra if c)]))


def _raw(frame: pd.DataFrame, prepared: PreparedDir, column: str | None) -> np.ndarray | None:
    """A test column in physical units (a feature is stored standardised)."""
    if column is None:
        return None
    if column not in frame.columns:
        raise StageInputError(f"{prepared.path / 'test'}: no column {column!r} (named in [target]); "
                              f"the prepared files have the skim's columns")
    return prepared.physical(frame, column)


def _class_test_fractions(prepared: PreparedDir, n_classes: int) -> list[float]:
    """Per true class, the test split's share of the class's whole yield (Σweight)."""
    sums = np.zeros((len(SPLITS), n_classes))
    for s, split in enumerate(SPLITS):
        if prepared.has_split(split):
            frame = prepared.read(split, [CLASS_COLUMN, "weight"])
            cls = frame[CLASS_COLUMN].to_numpy().astype(np.int64)
            sums[s] = np.bincount(cls[cls >= 0], weights=frame["weight"].to_numpy()[cls >= 0],
                                  minlength=n_classes)
    total = sums.sum(axis=0)
    return [float(min(1.0, t / a)) if a > 0 and t > 0 else 1.0 for t, a in zip(sums[SPLITS.index("test")], total)]


def _multiclass(target: Target, name: str, proba: np.ndarray, test: pd.DataFrame, fractions: list[float],
                config: Config, plot_dir: Path, add: AddPlot) -> dict:
    true_class = test[CLASS_COLUMN].to_numpy().astype(np.int64)
    weight = test["weight"].to_numpy(np.float64)
    names = list(target.class_names)
    metrics = multiclass_metrics(true_class, proba, weight, names, physics_weight=weight, test_fraction=fractions)
    dpi, slug = config.evaluate.dpi, _slug(name)
    add("performance", f"{name}: one-vs-rest ROC curves (weighted, test split)",
        plot_ovr_roc(name, ovr_roc_curves(true_class, proba, weight, names), plot_dir / f"roc_ovr_{slug}.png",
                     lumi_fb=config.lumi_pb / 1000.0, dpi=dpi))
    add("performance", f"{name}: confusion matrix (weighted, rows normalised per true class)",
        plot_confusion(name, metrics["confusion"]["normalised"], names, plot_dir / f"confusion_{slug}.png", dpi=dpi))
    add("performance", f"{name}: class probabilities per true class",
        plot_class_scores(name, true_class, proba, weight, names, plot_dir / f"class_scores_{slug}.png", dpi=dpi))
    return metrics


def _regression(target: Target, name: str, prediction: np.ndarray, test: pd.DataFrame, prepared: PreparedDir,
                config: Config, plot_dir: Path, add: AddPlot, jets=None) -> dict:
    weight = test["weight"].to_numpy(np.float64)
    eta_column = config.target.eta_column or (jets.eta_column if jets else None)
    eta = _raw(test, prepared, eta_column)
    by_pt = {} if jets is None else {"pt": jets.pt, "bins_pt": [float(e) for e in jets.edges]}
    baseline = _raw(test, prepared, config.target.baseline)
    prediction = prediction.reshape(len(test), -1)
    out, dpi = {}, config.evaluate.dpi
    for k, column in enumerate(target.sources):
        truth = _raw(test, prepared, column)
        # The baseline estimates the first regressed column (the visible mass for m_tautau).
        base = baseline if k == 0 else None
        metrics = regression_metrics(prediction[:, k], truth, weight, eta=eta, baseline=base, **by_pt)
        label = config.target.baseline or "baseline"
        slug = _slug(f"{name}_{column}")
        add("regression", f"{name}: response of {column} (prediction / truth)",
            plot_response(f"{name}: {column}", prediction[:, k], truth, weight, metrics,
                          plot_dir / f"response_{slug}.png", baseline=base, baseline_label=label, dpi=dpi))
        add("regression", f"{name}: median response and resolution of {column} against the truth",
            plot_response_vs(f"{name}: {column}", metrics, plot_dir / f"response_vs_truth_{slug}.png",
                             variable="truth", xlabel=f"true {column}", baseline_label=label, dpi=dpi))
        if eta is not None and "vs_eta" in metrics["model"]:
            add("regression", f"{name}: median response and resolution of {column} against {eta_column}",
                plot_response_vs(f"{name}: {column}", metrics, plot_dir / f"response_vs_eta_{slug}.png",
                                 variable="eta", xlabel=eta_column, baseline_label=label, dpi=dpi))
        if by_pt:
            add("regression", f"{name}: median response and resolution of {column} against {jets.settings.pt_column}",
                plot_response_vs(f"{name}: {column}", metrics, plot_dir / f"response_vs_pt_{slug}.png",
                                 variable="pt", xlabel=f"{jets.settings.pt_column} [GeV]", baseline_label=label,
                                 dpi=dpi))
        if metrics["model"]["pull"] is not None:
            add("regression", f"{name}: pulls of {column}",
                plot_pulls(f"{name}: {column}", prediction[:, k], truth, weight, metrics,
                           plot_dir / f"pulls_{slug}.png", baseline=base, baseline_label=label, dpi=dpi))
        out[column] = metrics
    return out


def evaluate_target(target: Target, scorers: list, test: pd.DataFrame, test_scores: dict[str, np.ndarray],
                    prepared: PreparedDir, config: Config, plot_dir: Path, add: AddPlot, *,
                    jets=None) -> dict[str, dict]:
    """metrics.json ``models`` entries of multi-class or regression models; plots via ``add``.

    ``jets``: the `analysis.evaluate.jets.JetLevel` plan of a jet-level folder (a regression
    is then also binned in jet pt, and against its eta column), or None.
    """
    fractions = _class_test_fractions(prepared, target.n_classes) if target.kind == "multiclass" else []
    models = {}
    for scorer in scorers:
        name, scores = scorer.name, test_scores[scorer.name]
        entry = {"model_dir": str(scorer.model_dir), "kind": scorer.model.kind}
        if target.kind == "multiclass":
            entry["multiclass"] = _multiclass(target, name, scores, test, fractions, config, plot_dir, add)
        else:
            entry["regression"] = _regression(target, name, scores, test, prepared, config, plot_dir, add, jets)
        models[name] = entry
    return models
