"""Core (all stages): what a model learns — a binary label, one of several classes, or regressed columns.

`TargetConfig` is the ``[target]`` section of the configuration. Prepare turns it into a
`Target` (a small frozen value, pickled to its dask tasks), writes the target columns and
records the target in stats.json; train and evaluate rebuild the `Target` from stats.json
(`Target.from_stats`), so a prepared folder says what it is for and nothing is repeated
between stages. The binary default writes no `target` section: its stats.json is what it
was before targets existed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from analysis.errors import StageInputError

__all__ = ["CLASS_COLUMN", "DEFAULT_CLASSES", "StrictModel", "Target", "TargetConfig",
           "target_column_name"]

CLASS_COLUMN = "class"  # int8 class index of a multi-class target (-1: real data)
BINARY_CLASSES = ("background", "signal")  # label 0 and 1
REGRESSION_CLASS = ("simulation",)  # regression balances nothing: one class, mean weight 1

# The categories of a real H->tautau analysis (PHYSICS.md processes): the two Higgs
# production modes, then the backgrounds, W+jets taken as one.
DEFAULT_CLASSES: dict[str, list[str]] = {"ggH": ["ggH"], "VBF": ["VBF"], "ZTT": ["DY"], "TT": ["TT"],
                                         "W": ["W1J", "W2J", "W3J"]}


class StrictModel(BaseModel):
    # Unknown keys are errors: a typo ("jet_pt_mni") must not silently keep a default.
    # NaN and inf are errors too (TOML has both): `split = [nan, 0.2, 0.2]` would otherwise
    # give an empty training split and a NaN cut a selection of nothing.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def target_column_name(column: str) -> str:
    """The prepared column holding the standardised target made from skim column `column`."""
    return f"target_{column}"


class TargetConfig(StrictModel):
    """``[target]``: what the models learn (DESIGN.md "Targets")."""

    kind: Literal["binary", "multiclass", "regression"] = "binary"
    # multiclass: class name -> the processes (the skim's `process` values) it holds, or with
    # class_column the integer values of that column (jets: light = [0], c = [1], b = [2])
    classes: dict[str, list[str] | list[int]] = DEFAULT_CLASSES  # type: ignore[assignment]
    class_column: str | None = None  # multiclass: classes from this skim column (e.g. jet_label), not `process`
    # regression: the skim columns to learn, each transformed as below
    columns: list[str] = []
    transform: Literal["none", "log", "ratio"] = "none"  # ratio: column / ratio_to
    ratio_to: str | None = None
    # regression loss of both models, on the standardised targets: squared error, or the
    # pseudo-Huber loss (quadratic within huber_delta standard deviations, then linear)
    loss: Literal["squared", "huber"] = "squared"
    huber_delta: float = Field(1.0, gt=0)
    # evaluation of a regression: an estimate to compare with (the visible mass for the
    # di-tau mass, divided by its median response) and the column of the response against η
    baseline: str | None = None
    eta_column: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TargetConfig:
        if self.kind == "multiclass":
            if len(self.classes) < 2:
                raise ValueError(f"classes: a multi-class target needs at least two classes, got {len(self.classes)}")
            what = "process" if self.class_column is None else f"{self.class_column} value"
            seen: dict[str | int, str] = {}
            for name, processes in self.classes.items():
                if not processes:
                    raise ValueError(f"classes.{name}: lists no {what}")
                if self.class_column is not None and not all(type(v) is int for v in processes):
                    raise ValueError(f"classes.{name}: with class_column = {self.class_column!r} list the integer "
                                     f"values of that column per class (light = [0], c = [1], b = [2]), got {processes}")
                if self.class_column is None and not all(isinstance(v, str) for v in processes):
                    raise ValueError(f"classes.{name}: list process names (strings), got {processes}; "
                                     "for the values of a label column set class_column")
                for process in processes:
                    if process in seen:
                        raise ValueError(f"classes.{name}: {what} {process!r} is already in class {seen[process]!r}")
                    seen[process] = name
        elif self.class_column is not None:
            raise ValueError(f"class_column: a class column is for kind = \"multiclass\", not {self.kind!r}")
        if self.kind == "regression":
            if not self.columns:
                raise ValueError("columns: a regression target names at least one skim column")
            if len(set(self.columns)) != len(self.columns):
                raise ValueError(f"columns: listed twice in {self.columns}")
            if (self.transform == "ratio") != (self.ratio_to is not None):
                raise ValueError("ratio_to: give it exactly when transform = \"ratio\"")
        return self

    def check_processes(self, processes: set[str]) -> None:
        """Every simulated process in exactly one class, every class's processes known.

        Raises ValueError naming the key (the configuration reports it as one line).
        """
        if self.kind != "multiclass" or self.class_column is not None:
            return
        for name, listed in self.classes.items():
            unknown = sorted(set(listed) - processes)
            if unknown:
                raise ValueError(f"target.classes.{name}: unknown process {', '.join(map(repr, unknown))}; "
                                 f"the samples' processes are {', '.join(sorted(processes))}")
        assigned = {p for listed in self.classes.values() for p in listed}
        orphans = sorted(processes - assigned)
        if orphans:
            raise ValueError(f"target.classes: process {', '.join(map(repr, orphans))} is in no class; "
                             "every simulated event is trained on, so give each process a class")


@dataclass(frozen=True)
class Target:
    """A resolved target, shared by prepare (which writes it) and train/evaluate (which read it).

    Attributes
    ----------
    kind : "binary" | "multiclass" | "regression"
    class_names : names of the classes train_weight balances, in index order
    class_of_process : process -> class index (multiclass only)
    class_column, class_of_value : a multiclass target from a label column: its name, value -> class index
    sources : the skim columns a regression learns
    transform, ratio_to : how a source column becomes the learnt value
    mean, std : train-split statistics of the transformed targets (regression, once known)
    """

    kind: str = "binary"
    class_names: tuple[str, ...] = BINARY_CLASSES
    class_of_process: Mapping[str, int] = field(default_factory=dict)
    class_column: str | None = None
    class_of_value: Mapping[int, int] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    transform: str = "none"
    ratio_to: str | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @classmethod
    def from_config(cls, config: TargetConfig) -> Target:
        if config.kind == "multiclass" and config.class_column is not None:
            names = tuple(config.classes)
            return cls(kind="multiclass", class_names=names, class_column=config.class_column,
                       class_of_value={int(v): i for i, name in enumerate(names) for v in config.classes[name]})
        if config.kind == "multiclass":
            names = tuple(config.classes)
            return cls(kind="multiclass", class_names=names,
                       class_of_process={p: i for i, name in enumerate(names) for p in config.classes[name]})
        if config.kind == "regression":
            return cls(kind="regression", class_names=REGRESSION_CLASS, sources=tuple(config.columns),
                       transform=config.transform, ratio_to=config.ratio_to)
        return cls()

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def columns(self) -> tuple[str, ...]:
        """The prepared columns a model learns: label, class, or the standardised targets."""
        if self.kind == "multiclass":
            return (CLASS_COLUMN,)
        if self.kind == "regression":
            return tuple(target_column_name(c) for c in self.sources)
        return ("label",)

    @property
    def n_outputs(self) -> int:
        """Network outputs: one logit (binary), one per class, one per regressed column."""
        return {"binary": 1, "multiclass": self.n_classes}.get(self.kind, len(self.sources))

    @property
    def needed_columns(self) -> tuple[str, ...]:
        """Skim columns prepare reads to build the target (besides label and weight)."""
        if self.kind == "multiclass":
            return (self.class_column or "process",)
        if self.kind == "regression":
            return (*self.sources, *([self.ratio_to] if self.ratio_to else []))
        return ()

    def class_index(self, label: np.ndarray, process_codes: np.ndarray | None = None,
                    process_names: Sequence[str] = (), *, where: str) -> np.ndarray:
        """int64 class per row (-1 for real data, label -1) for train_weight balancing.

        A multi-class target reads the `process` column as dictionary codes into
        ``process_names`` (a row's process is ``process_names[code]``); one with a
        `class_column` takes that column's integer values as ``process_codes``.
        """
        label = np.asarray(label)
        if self.kind == "binary":
            return label.astype(np.int64)
        simulated = label >= 0
        if self.kind == "regression":
            return np.where(simulated, 0, -1).astype(np.int64)
        if self.class_column is not None:
            return self._class_of_values(np.asarray(process_codes, dtype=np.int64), simulated, where=where)
        codes = np.asarray(process_codes, dtype=np.int64)
        lookup = np.full(len(process_names) + 1, -1, dtype=np.int64)
        for code in np.unique(codes[simulated]):
            name = process_names[code]
            if name not in self.class_of_process:
                raise StageInputError(f"{where}: process {name!r} is in no class of target.classes "
                                      f"({', '.join(self.class_names)}); give it one")
            lookup[code] = self.class_of_process[name]
        return np.where(simulated, lookup[codes], -1)

    def _class_of_values(self, values: np.ndarray, simulated: np.ndarray, *, where: str) -> np.ndarray:
        out = np.full(len(values), -1, dtype=np.int64)
        for value, index in self.class_of_value.items():
            out[values == value] = index
        unknown = simulated & (out < 0)
        if unknown.any():
            bad = sorted(set(values[unknown].tolist()))
            listed = ", ".join(f"{n} = {sorted(v for v, i in self.class_of_value.items() if i == c)}"
                               for c, n in enumerate(self.class_names))
            raise StageInputError(f"{where}: {self.class_column} value(s) {bad[:5]} of {int(unknown.sum())} simulated "
                                  f"row(s) are in no class of target.classes ({listed}); give them one")
        return np.where(simulated, out, -1)

    def raw_values(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """float64 ``(rows, n_targets)`` of the transformed regression targets, before standardising."""
        out = np.empty((len(next(iter(columns.values()))), len(self.sources)))
        with np.errstate(divide="ignore", invalid="ignore"):
            for j, name in enumerate(self.sources):
                values = np.asarray(columns[name], dtype=np.float64)
                if self.transform == "log":
                    values = np.log(values)
                elif self.transform == "ratio":
                    values = values / np.asarray(columns[self.ratio_to], dtype=np.float64)
                out[:, j] = values
        return out

    def to_physical(self, standardised: np.ndarray, ratio_to: np.ndarray | None = None) -> np.ndarray:
        """Model outputs ``(rows, n_targets)`` in the units of the source columns.

        Undoes the standardisation, then the transform (``ratio`` needs the `ratio_to`
        column of the same rows).
        """
        values = np.asarray(standardised, dtype=np.float64) * np.asarray(self.std) + np.asarray(self.mean)
        if self.transform == "log":
            return np.exp(values)
        if self.transform == "ratio":
            if ratio_to is None:
                raise StageInputError(f"the target is a ratio to {self.ratio_to!r}: its values are needed")
            return values * np.asarray(ratio_to, dtype=np.float64)[:, None]
        return values

    def stats_record(self) -> dict[str, Any] | None:
        """stats.json's ``target`` section (None for binary, whose stats.json has none)."""
        if self.kind == "multiclass" and self.class_column is not None:
            values: dict[str, list[int]] = {name: [] for name in self.class_names}
            for value, index in sorted(self.class_of_value.items()):
                values[self.class_names[index]].append(value)
            return {"kind": "multiclass", "column": CLASS_COLUMN, "classes": list(self.class_names),
                    "class_column": self.class_column, "values": values}
        if self.kind == "multiclass":
            inverse: dict[str, list[str]] = {name: [] for name in self.class_names}
            for process, index in sorted(self.class_of_process.items()):
                inverse[self.class_names[index]].append(process)
            return {"kind": "multiclass", "column": CLASS_COLUMN, "classes": list(self.class_names),
                    "processes": inverse}
        if self.kind == "regression":
            return {"kind": "regression", "columns": list(self.columns), "sources": list(self.sources),
                    "transform": self.transform, "ratio_to": self.ratio_to,
                    "statistics": {c: {"mean": m, "std": s} for c, m, s in zip(self.columns, self.mean, self.std)},
                    "standardised": "target column = (transformed source - mean) / std, on the train split"}
        return None

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], *, where: str = "stats.json") -> Target:
        """The target a prepared folder was made for (no ``target`` section: binary)."""
        record = stats.get("target")
        if record is None:
            return cls()
        try:
            if record["kind"] == "multiclass" and record.get("class_column") is not None:
                names = tuple(record["classes"])
                return cls(kind="multiclass", class_names=names, class_column=str(record["class_column"]),
                           class_of_value={int(v): names.index(c) for c, vs in record["values"].items() for v in vs})
            if record["kind"] == "multiclass":
                names = tuple(record["classes"])
                return cls(kind="multiclass", class_names=names,
                           class_of_process={p: names.index(c) for c, ps in record["processes"].items() for p in ps})
            if record["kind"] == "regression":
                statistics = [record["statistics"][c] for c in
                              (target_column_name(s) for s in record["sources"])]
                mean = tuple(float(s["mean"]) for s in statistics)
                std = tuple(float(s["std"]) for s in statistics)
                if not all(math.isfinite(m) and math.isfinite(s) and s > 0 for m, s in zip(mean, std)):
                    raise ValueError("non-finite or non-positive target statistics")
                return cls(kind="regression", class_names=REGRESSION_CLASS, sources=tuple(record["sources"]),
                           transform=record["transform"], ratio_to=record.get("ratio_to"), mean=mean, std=std)
        except (KeyError, TypeError, ValueError) as err:
            raise StageInputError(f"{where}: the target section is damaged ({err}); re-run `hepprep prepare`") from None
        raise StageInputError(f"{where}: unknown target kind {record.get('kind')!r}; re-run `hepprep prepare`")
