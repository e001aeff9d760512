"""Evaluation stage: report.html tables of multi-class and regression models (the binary ones are in `report`)."""

from __future__ import annotations

from typing import Any

from analysis.evaluate.html_parts import escape as _e
from analysis.evaluate.html_parts import table as _table

__all__ = ["TARGET_GUIDE", "target_tables", "target_title"]

# How to read each section of a non-binary report (replaces the binary wording).
TARGET_GUIDE = {
    "multiclass": {
        "performance": "One-vs-rest ROC curves of each class (its probability against every other class, "
                       "weighted by the physics weight of each test event); the confusion matrix of the "
                       "arg-max class, each row (true class) normalised to 1; each class probability "
                       "for the events of every true class, normalised to unit area.",
    },
    "regression": {
        "regression": "Response = prediction / truth on the test split, weighted by the physics weight. "
                      "Median response and resolution (half the 16&ndash;84 % width divided by the median) "
                      "overall and in bins of the truth and of &eta;; the baseline is divided by its own "
                      "median response first, so only its spread is compared. Pull = (prediction &minus; "
                      "truth) / (half-width &times; truth).",
    },
}


def _num(value: Any, fmt: str = ".4g") -> str:
    return "n/a" if value is None else format(value, fmt)


def target_title(metrics: dict) -> str:
    target = metrics["target"]
    if target["kind"] == "multiclass":
        return f"multi-class ({', '.join(target['classes'])})"
    return f"regression of {', '.join(target['sources'])}"


def _multiclass_tables(metrics: dict) -> list[str]:
    classes = metrics["target"]["classes"]
    parts = [_table(["model", "kind", "macro AUC", *(f"AUC {c} vs rest" for c in classes)],
                    [[name, m["kind"], _num(m["multiclass"]["macro_auc"], ".4f"),
                      *(_num(m["multiclass"]["ovr_auc"].get(c), ".4f") for c in classes)]
                     for name, m in metrics["models"].items()])]
    for name, m in metrics["models"].items():
        mc = m["multiclass"]
        matrix = mc["confusion"]["normalised"]
        parts += [f"<h3>{_e(name)}: confusion matrix (rows: true class, normalised to 1)</h3>",
                  _table(["true \\ predicted", *classes],
                         [[c, *(_num(v, ".3f") for v in row)] for c, row in zip(classes, matrix)])]
        expected = mc["yields"]["expected"]
        parts += [f"<h3>{_e(name)}: expected events per category (arg-max class, full luminosity)</h3>",
                  _table(["category", *classes, "total"],
                         [[cat, *(_num(expected[cat].get(c), ".4g") for c in classes),
                           _num(mc["yields"]["category_total"][cat], ".4g")] for cat in expected])]
        parts += [f"<p>{_e(note)}</p>" for note in mc.get("notes", [])]
    return parts


def _regression_tables(metrics: dict) -> list[str]:
    rows = []
    for name, m in metrics["models"].items():
        for column, r in m["regression"].items():
            base = r.get("baseline")
            rows.append([name, m["kind"], column, _num(r["model"]["median"], ".4f"),
                         _num(r["model"]["resolution"], ".4f"), _num(r["model"]["bias"], ".4g"),
                         _num((r["model"]["pull"] or {}).get("std"), ".3f"),
                         _num(base["resolution"], ".4f") if base else "–",
                         _num(r.get("improvement"), ".1%") if base else "–", r["n_used"]])
    return [_table(["model", "kind", "target", "median response", "resolution", "bias", "pull std",
                    "baseline resolution", "improvement over baseline", "test events used"], rows)]


def target_tables(metrics: dict) -> str:
    """The metrics tables of a multi-class or regression evaluation (HTML)."""
    kind = metrics["target"]["kind"]
    parts = _multiclass_tables(metrics) if kind == "multiclass" else _regression_tables(metrics)
    parts.append(f"<p>Test events: {_e(metrics['test_events'])}; pseudo-data events in the input plots: "
                 f"{_e(metrics['data_events'])}. Negative weights: signed in yields, absolute in AUCs, the "
                 "confusion matrix and the regression quantiles.</p>")
    return "\n".join(parts)
