"""Evaluation stage: a jet-level prepared folder — when a folder is one, and each model's tagger section.

A prepared folder is **jet-level** when its rows are objects: stats.json ``split.row_id_columns``
names an object index (``jet_index``: prepare found several rows per event), or stats.json
has ``constituents`` (the rows carry list columns). Nothing else is looked at, so an event-level
analysis is never evaluated as a tagger, whatever its columns are called.

On a jet-level folder `run_evaluate` adds, besides what the target's evaluation gives:

- for a classifier (binary or multi-class), per model and signal class, the tagger figures of
  `analysis.evaluate.taggers` (AUC, 1/eps_B at the ``[evaluate.tagger]`` signal efficiencies,
  overall and in bins of jet pt) of the discriminant p_s / (p_s + p_b) against the background
  class, on the test jets of those two classes weighted by their physics ``weight``
  (|w|); plots of 1/eps_B against eps_S and of 1/eps_B against pt, all models overlaid;
- for a regression (e.g. ``jes_target``), the response and resolution against jet pt
  besides the truth and eta (`analysis.evaluate.regression`), eta from
  ``[evaluate.tagger] eta_column`` unless ``[target] eta_column`` names one.

The pt bins are the same for every model and class: given edges, or equal-weight bins of all
test jets' pt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.config import Config
from analysis.core.objects import TaggerEvaluationConfig
from analysis.core.target import CLASS_COLUMN, Target
from analysis.errors import ConfigError, StageInputError
from analysis.evaluate.inputs import PreparedDir
from analysis.evaluate.metrics import policy_weights
from analysis.evaluate.plots import file_slug
from analysis.evaluate.tagger_plots import plot_rejection_roc, plot_rejection_vs_pt
from analysis.evaluate.taggers import (
    discriminant,
    pt_bin_edges,
    reference_efficiency,
    tagger_metrics,
    tagger_roc,
)

__all__ = ["JetLevel", "jet_level_reason", "plan_jet_level", "tagger_entries"]

DISCRIMINANT = "p_s / (p_s + p_b) of the class probabilities (binary: the signal score)"


def jet_level_reason(prepared: PreparedDir) -> str | None:
    """Why ``prepared`` is jet-level (module docstring), or None when it is not."""
    split = prepared.stats.get("split")
    rows = split.get("row_id_columns") if isinstance(split, dict) else None
    if rows:
        return f"rows are objects: stats.json split.row_id_columns = {list(rows)}"
    if prepared.stats.get("constituents"):
        return "rows carry list columns: stats.json has constituents"
    return None


@dataclass(frozen=True)
class JetLevel:
    """What a jet-level evaluation reads and how (built before the test jets are read)."""

    reason: str
    settings: TaggerEvaluationConfig
    class_names: tuple[str, ...]
    background: int | None  # None: a regression, no tagger
    signals: tuple[int, ...]
    eta_column: str | None  # a regression's eta column (None: the test jets have none)
    pt: np.ndarray | None = None  # the test jets' pt, GeV (`with_test`)
    edges: np.ndarray | None = None

    @property
    def is_tagger(self) -> bool:
        return self.background is not None

    @property
    def columns(self) -> list[str]:
        """Test columns needed besides the features and the event columns."""
        return [self.settings.pt_column, *([self.eta_column] if self.eta_column else [])]

    def with_test(self, test: pd.DataFrame, prepared: PreparedDir) -> JetLevel:
        """The plan with the test jets' pt and the shared pt bin edges."""
        pt = prepared.physical(test, self.settings.pt_column)
        w = policy_weights(test["weight"].to_numpy(np.float64), "abs")
        try:
            edges = pt_bin_edges(pt, w, self.settings.pt_bins)
        except ValueError as err:
            raise StageInputError(f"{prepared.path / 'test'}: {self.settings.pt_column}: {err}") from None
        return replace(self, pt=pt, edges=edges)

    def record(self) -> dict:
        """metrics.json's top-level ``tagger``: the rule that applied and the shared settings."""
        s = self.settings
        out = {"jet_level": self.reason, "pt_column": s.pt_column,
               "pt_edges": None if self.edges is None else [float(e) for e in self.edges],
               "pt_edges_from": ("configured (evaluate.tagger.pt_bins)" if not isinstance(s.pt_bins, int) else
                                 f"{s.pt_bins} bins of equal weight of the test jets' pt (|weight|)")}
        if not self.is_tagger:
            return {**out, "eta_column": self.eta_column}
        return {**out, "background": self.class_names[self.background],
                "signals": [self.class_names[k] for k in self.signals], "discriminant": DISCRIMINANT,
                "efficiencies": list(s.efficiencies), "weights": "physics weight, |w| (negative_weights abs)",
                "uncertainty": "weighted binomial on the background jets: Var(eps_B) = [(1 - eps_B)^2 "
                               "sum_pass w^2 + eps_B^2 sum_fail w^2] / (sum w)^2, sigma(1/eps_B) = "
                               "sigma(eps_B) / eps_B^2; the threshold is taken as exact"}


def plan_jet_level(prepared: PreparedDir, target: Target, config: Config) -> JetLevel | None:
    """The jet-level plan of ``prepared``, or None for an event-level folder.

    Raises
    ------
    ConfigError
        An ``[evaluate.tagger]`` class that the prepared folder does not have.
    StageInputError
        The test split has no ``pt_column``.
    """
    reason = jet_level_reason(prepared)
    if reason is None:
        return None
    settings = config.evaluate.tagger
    names = set(prepared.dataset("test").schema.names)
    if settings.pt_column not in names:
        raise StageInputError(f"{prepared.path / 'test'}: no column {settings.pt_column!r} "
                              f"(evaluate.tagger.pt_column) for the pt bins of this jet-level folder ({reason}); "
                              "name the jets' pt column there")
    if target.kind == "regression":
        eta = config.target.eta_column or (settings.eta_column if settings.eta_column in names else None)
        return JetLevel(reason, settings, target.class_names, None, (), eta)
    try:
        background, signals = settings.classes(target.class_names)
    except ValueError as err:
        raise ConfigError(f"{err} (of {prepared.path / 'stats.json'})") from None
    return JetLevel(reason, settings, target.class_names, background, tuple(signals), None)


def tagger_entries(plan: JetLevel, scorers: list, test: pd.DataFrame, test_scores: dict[str, np.ndarray],
                   config: Config, plot_dir: Path, add) -> dict[str, dict]:
    """Per model, metrics.json's ``tagger`` {signal class: `tagger_metrics`}; plots via ``add``.

    ``add(section, title, path)`` records a plot (`analysis.evaluate.runner`).
    """
    true_class = (test[CLASS_COLUMN] if CLASS_COLUMN in test.columns else test["label"]).to_numpy().astype(np.int64)
    weight = test["weight"].to_numpy(np.float64)
    settings, names, b = plan.settings, plan.class_names, plan.background
    entries: dict[str, dict] = {s.name: {} for s in scorers}
    background_name = names[b]
    for s in plan.signals:
        jets = (true_class == s) | (true_class == b)
        curves, binned = {}, {}
        for scorer in scorers:
            score = discriminant(test_scores[scorer.name][jets], s, b)
            metrics = tagger_metrics(score, true_class[jets] == s, weight[jets], pt=plan.pt[jets],
                                     pt_edges=plan.edges, efficiencies=settings.efficiencies)
            entries[scorer.name][names[s]] = {"background": background_name, **metrics}
            if metrics["auc"] is not None:
                curves[scorer.name] = (tagger_roc(score, true_class[jets] == s, np.abs(weight[jets])), metrics["auc"])
                binned[scorer.name] = metrics["pt_bins"]
        if not curves:
            continue
        what, slug = f"{names[s]} vs {background_name}", file_slug(f"{names[s]}_vs_{background_name}")
        add("tagger", f"Background rejection against signal efficiency, {what} (weighted, test jets)",
            plot_rejection_roc(what, curves, plot_dir / f"tagger_roc_{slug}.png",
                               efficiencies=settings.efficiencies, dpi=config.evaluate.dpi))
        add("tagger", f"Background rejection in bins of {settings.pt_column}, {what}",
            plot_rejection_vs_pt(what, binned, plot_dir / f"tagger_rejection_pt_{slug}.png",
                                 efficiency=reference_efficiency(settings.efficiencies),
                                 xlabel=settings.pt_column, dpi=config.evaluate.dpi))
    return entries

