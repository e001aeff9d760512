"""Prepare stage: what the passes read from a table — float columns, classes, targets, list columns.

Shared by the two passes of `analysis.prepare.shuffle` and the constituent statistics
(`analysis.prepare.constituents`), so every one of them reads a column, a class or a
list the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis.core.standardise import Standardisation
from analysis.core.target import Target
from analysis.errors import StageInputError

__all__ = ["check_columns", "class_of_rows", "dataset_totals", "feature_matrix", "float64_column",
           "is_list_type", "regression_values", "standardise_list_column"]


def is_list_type(typ: pa.DataType) -> bool:
    """A Parquet list column (``list<float32>``, one variable-length list per row)."""
    return pa.types.is_list(typ) or pa.types.is_large_list(typ)


def check_columns(table: pa.Table, path: str, *, needed: Sequence[str], flat: Sequence[str],
                  lists: Sequence[str]) -> None:
    """Every needed column present; the ``flat`` features plain numbers, the ``lists`` list columns."""
    missing = [c for c in dict.fromkeys([*needed, *flat, *lists]) if c not in table.column_names]
    if missing:
        raise StageInputError(f"{path}: column(s) {', '.join(missing)} missing; the file has "
                              f"{', '.join(table.column_names)}")
    listed = [c for c in flat if is_list_type(table.schema.field(c).type)]
    if listed:
        raise StageInputError(f"{path}: feature(s) {', '.join(listed)} are list columns (one list per row): "
                              "name them in prepare.objects.constituent_features, not in `features`")
    plain = [c for c in lists if not is_list_type(table.schema.field(c).type)]
    if plain:
        raise StageInputError(f"{path}: prepare.objects.constituent_features {', '.join(plain)} are not list "
                              "columns: name them in `features`")


def float64_column(table: pa.Table, name: str) -> np.ndarray:
    """A flat column as float64 (nulls become NaN)."""
    column = table.column(name).cast(pa.float64())
    if column.null_count:
        column = pc.fill_null(column, np.nan)
    return column.to_numpy()


def feature_matrix(table: pa.Table, features: Sequence[str]) -> np.ndarray:
    """(n, d) float64 matrix of the feature columns (nulls become NaN), column-major."""
    out = np.empty((table.num_rows, len(features)), order="F")
    for j, name in enumerate(features):
        out[:, j] = float64_column(table, name)
    return out


def dataset_totals(table: pa.Table, weight: np.ndarray) -> dict[str, list[float]]:
    """{dataset: [rows, Σweight]} of a table."""
    if "dataset" not in table.column_names:
        return {"": [float(table.num_rows), float(weight.sum())]}
    encoded = pc.dictionary_encode(table.column("dataset").cast(pa.string())).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    names = encoded.dictionary.to_pylist()
    rows = np.bincount(codes, minlength=len(names))
    sums = np.bincount(codes, weights=weight, minlength=len(names))
    return {name: [float(rows[i]), float(sums[i])] for i, name in enumerate(names)}


def class_of_rows(table: pa.Table, label: np.ndarray, target: Target, where: str) -> np.ndarray:
    """The class index `train_weight` balances per row (the label itself for binary)."""
    if target.kind != "multiclass":
        return target.class_index(label, where=where)
    if target.class_column is not None:  # e.g. jet_label; a null is no value of any class
        values = pc.fill_null(table.column(target.class_column).cast(pa.int64()), -(2**62))
        return target.class_index(label, values.to_numpy(), where=where)
    encoded = pc.dictionary_encode(table.column("process").cast(pa.string())).combine_chunks()
    return target.class_index(label, encoded.indices.to_numpy(zero_copy_only=False),
                              encoded.dictionary.to_pylist(), where=where)


def regression_values(table: pa.Table, label: np.ndarray, target: Target, where: str) -> np.ndarray:
    """Transformed regression targets ``(rows, K)``; every simulated row needs finite ones."""
    values = target.raw_values({c: float64_column(table, c) for c in target.needed_columns})
    bad = ~np.isfinite(values) & (label >= 0)[:, None]
    if bad.any():
        row, j = np.argwhere(bad)[0]
        dataset = table.column("dataset")[int(row)].as_py() if "dataset" in table.column_names else "?"
        raise StageInputError(
            f"{where}: target column {target.sources[j]!r}{f' ({target.transform})' if target.transform != 'none' else ''}"
            f" is not finite in {int(bad[:, j].sum())} simulated row(s) (first: {float(values[row, j])!r}, dataset "
            f"{dataset}); a regression trains on every simulated event: keep only the samples that carry it")
    return values


def standardise_list_column(column: pa.ChunkedArray | pa.Array, standardisation: Standardisation,
                            j: int) -> pa.Array:
    """A list column with every entry standardised as feature ``j``: ``list<float32>``, same lists.

    Entries that are not finite become NaN (missing), as for a flat feature; a null list
    stays null.
    """
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64 if pa.types.is_large_list(lists.type)
                                                               else np.int32)
    values = pc.list_flatten(lists).cast(pa.float64())
    raw = pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False)
    standardised = pa.array(standardisation.transform_column(j, raw), pa.float32())
    field = pa.field(lists.type.value_field.name, pa.float32())
    typ = pa.large_list(field) if pa.types.is_large_list(lists.type) else pa.list_(field)
    mask = lists.is_null() if lists.null_count else None
    builder = pa.LargeListArray if pa.types.is_large_list(lists.type) else pa.ListArray
    return builder.from_arrays(pa.array(offsets), standardised, type=typ, mask=mask)
