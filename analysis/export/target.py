"""Export stage: what a model predicts (model_info.json's ``target``), and in which units.

Every model trained so far is binary (the probability of signal), and a model_info.json
without ``"target"`` is one. Multi-class and regression models record
``"target": {"kind": "multiclass", "classes": [...]}`` or
``{"kind": "regression", "columns": [...]}``; a regression model predicts standardised
targets, turned back into raw units with the training statistics of each target column
(stats.json ``"targets"``, else ``"features"``, keyed by the column name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analysis.core.standardise import Standardisation
from analysis.errors import StageInputError

__all__ = ["KINDS", "Target", "read_target", "target_standardisation"]

KINDS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class Target:
    """The target of a model.

    Attributes
    ----------
    kind : str
        ``binary``, ``multiclass`` or ``regression``.
    classes : list of str
        Class names in output order (multiclass only).
    columns : list of str
        Target columns in output order (regression only).
    """

    kind: str = "binary"
    classes: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)

    @property
    def n_outputs(self) -> int:
        """Scores per event the model's last layer gives (1 for binary: the signal logit)."""
        return {"binary": 1, "multiclass": len(self.classes), "regression": len(self.columns)}[self.kind]

    def as_json(self) -> dict:
        out: dict = {"kind": self.kind}
        if self.kind == "multiclass":
            out["classes"] = list(self.classes)
        if self.kind == "regression":
            out["columns"] = list(self.columns)
        return out


def _names(value, key: str, source: str, *, at_least: int) -> list[str]:
    if (not isinstance(value, list) or len(value) < at_least
            or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)):
        raise StageInputError(f"{source}: target.{key} must list at least {at_least} names, got {value!r}; "
                              "train the model again")
    names = [str(v) for v in value]
    if len(set(names)) != len(names):
        raise StageInputError(f"{source}: target.{key} names a column or class twice ({names}); "
                              "train the model again")
    return names


def read_target(info: dict, source: str | Path) -> Target:
    """The `Target` of a model_info.json mapping (no ``"target"``: binary).

    Raises
    ------
    StageInputError
        An unknown kind, or a multiclass target without two or more classes, a regression
        target without columns.
    """
    source = str(source)
    target = info.get("target")
    if target is None:
        return Target()
    if not isinstance(target, dict):
        raise StageInputError(f"{source}: target must be an object such as {{\"kind\": \"binary\"}}, "
                              f"got {target!r}")
    kind = target.get("kind", "binary")
    if kind not in KINDS:
        raise StageInputError(f"{source}: target.kind {kind!r}: unknown; expected {', '.join(KINDS)}")
    if kind == "multiclass":
        return Target(kind, classes=_names(target.get("classes"), "classes", source, at_least=2))
    if kind == "regression":
        return Target(kind, columns=_names(target.get("columns"), "columns", source, at_least=1))
    return Target()


def target_standardisation(target: Target, stats: dict, source: str | Path) -> Standardisation:
    """The standardisation of a regression model's target columns (their training statistics).

    Raises
    ------
    StageInputError
        ``source`` (the model's stats.json) has no usable mean/std for a target column.
    """
    table = stats.get("targets")
    if not isinstance(table, dict) or not all(c in table for c in target.columns):
        table = stats.get("features", {})
    return Standardisation.from_stats({"features": table}, target.columns,
                                      source=f"{source} (regression targets)")
