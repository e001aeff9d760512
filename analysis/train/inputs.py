"""Training stage: check a prepared directory before any model sees it, and describe its splits.

Training reads the files of `<prep>/{train,val,test}/` that the prepared manifest lists
(`analysis.core.prepared`), and `<prep>/stats.json` (DESIGN.md "Prepared Parquet"). A wrong or half-written directory must fail in one line that names
what is missing and how to fix it, not as a traceback from deep inside xgboost or torch.
Only Parquet metadata and the small `label` column are read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from analysis.core.features import feature_differences
from analysis.core.io import read_json
from analysis.core.prepared import PreparedListing, read_prepared_listing
from analysis.core.target import Target
from analysis.errors import StageInputError

__all__ = ["LABEL", "TRAIN_WEIGHT", "PreparedSplits", "SplitFiles", "inspect_prepared",
           "row_group_units"]

LABEL = "label"  # int8: 1 signal, 0 background (real data never reaches the splits)
TRAIN_WEIGHT = "train_weight"  # float64: class-balanced training weight, mean 1 per split
REQUIRED_SPLITS = ("train", "val")  # early stopping needs val; test is evaluation's
OPTIONAL_SPLITS = ("test",)


@dataclass
class SplitFiles:
    """One split of a prepared directory.

    Attributes
    ----------
    name : str
        ``train``, ``val`` or ``test``.
    files : list of Path
        ``part-*.parquet`` files, sorted by name (a fixed order makes training reproducible).
    rows : int
        Rows over all files (from the Parquet footers).
    row_groups : int
        Row groups over all files (the unit the streaming loader shuffles).
    signal_rows, background_rows : int
        Rows with label 1 and label 0.
    negative_weight_rows : int
        Rows with ``train_weight < 0`` (NLO samples kept signed by
        ``prepare.negative_weights = "keep"``).
    class_rows : list of int
        Rows per class of the target (binary: background, signal; a regression: all rows).
    """

    name: str
    files: list[Path]
    rows: int
    row_groups: int
    signal_rows: int
    background_rows: int
    negative_weight_rows: int = 0
    class_rows: list[int] = field(default_factory=list)


@dataclass
class PreparedSplits:
    """A checked prepared directory: its splits, statistics and the ordered training features."""

    root: Path
    stats: dict
    features: list[str]
    splits: dict[str, SplitFiles] = field(default_factory=dict)
    fingerprint: str | None = None  # the prepared manifest's: a model records what it learnt from
    target: Target = field(default_factory=Target)  # what the folder was prepared for (stats.json)

    def split(self, name: str) -> SplitFiles:
        return self.splits[name]


def row_group_units(files: Sequence[str | Path]) -> list[tuple[Path, int, int]]:
    """Every row group of ``files`` as ``(path, row_group_index, rows)``, in file order."""
    units = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        units += [(Path(path), i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    return units


def _read_stats(root: Path) -> dict:
    path = root / "stats.json"
    if not path.is_file():
        raise StageInputError(f"{path}: missing; {root} is not a complete prepared directory "
                              f"(run `hepprep prepare SKIMDIR --out {root}` first)")
    stats = read_json(path, "the prepared statistics", expect=dict, fix="re-run `hepprep prepare`")
    order = stats.get("feature_order")
    if not isinstance(order, list) or not order:
        raise StageInputError(f"{path}: no 'feature_order' list; re-run `hepprep prepare`")
    missing = [f for f in order if f not in stats.get("features", {})]
    if missing:
        raise StageInputError(f"{path}: 'features' has no statistics for {', '.join(missing)}; "
                              f"re-run `hepprep prepare`")
    for name in order:
        std = stats["features"][name].get("std")
        if not isinstance(std, (int, float)) or not std > 0:
            raise StageInputError(f"{path}: feature {name!r} has std {std!r}, must be > 0; "
                                  f"re-run `hepprep prepare`")
    return stats


def _check_features(root: Path, stats: dict, features: list[str] | None) -> list[str]:
    order = list(stats["feature_order"])
    if features is None:  # no list in the configuration: the features prepare standardised
        return order
    differences = feature_differences(features, order, missing="in the config but not in stats.json",
                                      extra="in stats.json but not in the config")
    if differences is not None:
        raise StageInputError(f"{root / 'stats.json'}: features do not match the config "
                              f"({differences}); re-run `hepprep prepare` with this config "
                              f"or train with the config it was prepared with")
    # stats.json fixes the column order: a model's inputs are the standardised columns in it.
    return order


def _inspect_split(listing: PreparedListing, name: str, features: list[str], target: Target) -> SplitFiles | None:
    files = listing.files(name)
    if not files:
        return None
    expected = listing.rows(name)
    needed = [*features, *target.columns, TRAIN_WEIGHT]
    # Classes are counted from the label (binary) or class column; a regression has one.
    counted = target.columns[0] if target.kind != "regression" else None
    rows = row_groups = negative = 0
    class_rows = np.zeros(target.n_classes, dtype=np.int64)
    for path in files:
        try:
            meta = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for a bad footer
            raise StageInputError(f"{path}: not a readable Parquet file ({err}); "
                                  f"re-run `hepprep prepare`") from None
        names = set(meta.schema_arrow.names)
        missing = [c for c in needed if c not in names]
        if missing:
            raise StageInputError(f"{path}: missing columns {', '.join(missing)} listed in "
                                  f"stats.json or needed for training; re-run `hepprep prepare`")
        if meta.metadata.num_rows != expected[path]:
            raise StageInputError(f"{path}: holds {meta.metadata.num_rows} rows but the prepared manifest "
                                  f"says {expected[path]}: not the file prepare wrote; re-run `hepprep prepare`")
        rows += meta.metadata.num_rows
        row_groups += meta.num_row_groups
        # train_weight only where the statistics allow a negative one: one read either way.
        check_weights = _may_have_negative(meta, TRAIN_WEIGHT)
        columns = [c for c in (counted, TRAIN_WEIGHT if check_weights else None) if c]
        table = meta.read(columns=columns) if columns else None
        if counted is None:
            class_rows[0] += meta.metadata.num_rows
        else:
            values = table.column(counted).to_numpy().astype(np.int64)
            class_rows += np.bincount(values[(values >= 0) & (values < target.n_classes)],
                                      minlength=target.n_classes)
        if check_weights:
            negative += int(np.count_nonzero(table.column(TRAIN_WEIGHT).to_numpy() < 0))
    binary = target.kind == "binary"
    return SplitFiles(name=name, files=files, rows=rows, row_groups=row_groups,
                      signal_rows=int(class_rows[1]) if binary else 0,
                      background_rows=int(class_rows[0]) if binary else 0,
                      negative_weight_rows=negative, class_rows=class_rows.tolist())


def _may_have_negative(handle: pq.ParquetFile, column: str) -> bool:
    """False when every row group's statistics show ``column >= 0`` (the column is then not read)."""
    meta = handle.metadata
    index = next(j for j in range(meta.num_columns)
                 if meta.schema.column(j).path == column)
    for k in range(meta.num_row_groups):
        stats = meta.row_group(k).column(index).statistics
        if stats is None or not stats.has_min_max or stats.min < 0:
            return True
    return False


def inspect_prepared(prep_dir: str | Path, features: list[str] | None) -> PreparedSplits:
    """Check a prepared directory for training and list its splits.

    Parameters
    ----------
    prep_dir : str or Path
        Output folder of `hepprep prepare`.
    features : list of str or None
        The configured feature list (``config.features``); must be the set in stats.json.
        None takes stats.json's.

    Returns
    -------
    PreparedSplits
        ``features`` in stats.json's ``feature_order``; ``splits`` has train, val and, when
        present, test.

    Raises
    ------
    StageInputError
        One line: no such directory, no stats.json, a missing train/val split, a split with
        no signal or no background rows, features not matching stats.json, missing columns.
    """
    root = Path(prep_dir)
    if not root.is_dir():
        raise StageInputError(f"{root}: no such prepared directory "
                              f"(run `hepprep prepare SKIMDIR --out {root}` first)")
    stats = _read_stats(root)
    listing = read_prepared_listing(root)
    order = _check_features(root, stats, features)
    target = Target.from_stats(stats, where=str(root / "stats.json"))
    prepared = PreparedSplits(root=root, stats=stats, features=order, fingerprint=listing.fingerprint,
                              target=target)
    for name in (*REQUIRED_SPLITS, *OPTIONAL_SPLITS):
        split = _inspect_split(listing, name, order, target)
        if split is None:
            if name in REQUIRED_SPLITS:
                present = [s for s in (*REQUIRED_SPLITS, *OPTIONAL_SPLITS) if listing.has_split(s)]
                raise StageInputError(
                    f"{root}: the {name!r} split is missing (the prepared manifest lists no {name} "
                    f"files; found splits: {', '.join(present) or 'none'}); training needs train and val: "
                    f"re-run `hepprep prepare` with a non-zero {name} fraction in --split")
            continue
        if name in REQUIRED_SPLITS and target.kind == "multiclass":
            empty = [c for c, n in zip(target.class_names, split.class_rows) if n == 0]
            if empty:
                raise StageInputError(f"{root / name}: no rows of class {', '.join(empty)} among {split.rows} "
                                      "rows; every class needs training and validation rows: check "
                                      "target.classes and that the skim selected their events")
        if name in REQUIRED_SPLITS and target.kind == "binary":
            for what, count, label in (("signal", split.signal_rows, 1),
                                       ("background", split.background_rows, 0)):
                if count == 0:
                    raise StageInputError(
                        f"{root / name}: no {what} rows (label {label}) among {split.rows} rows; "
                        f"a classifier needs both classes: check the samples' labels in the "
                        f"config and that the skim selected {what} events")
        prepared.splits[name] = split
    return prepared
