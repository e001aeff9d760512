"""Prepare stage: the two passes of the out-of-core global shuffle, run as dask tasks.

Pass 1 (`scatter_unit`) reads one bounded piece of the input, decides each event's split
and shuffle bucket from its identity hash, accumulates the training statistics and class
totals, and writes the rows grouped by (split, bucket), one Parquet row group per bucket.
Pass 2 (`shuffle_bucket`) gathers one bucket's row groups from every scatter file, puts
them in the order of a second hash, adds `train_weight`/`split`/`fold`, standardises the
features and writes files of bounded size with several row groups. A task never holds
more than one input piece or one bucket, so peak memory is set by ``bucket_rows``, not by
the dataset; and because bucket and order are hashes of the event, the output does not
depend on how the input was partitioned or on the number of workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analysis.core.standardise import Standardisation
from analysis.core.target import CLASS_COLUMN, Target
from analysis.errors import StageInputError
from analysis.prepare.split import (SALT_BUCKET, SPLIT_NAMES, assign_fold, assign_split, event_hash,
                                    id_columns_of, salted_uniform, shuffle_order_key)
from analysis.prepare.stats import WeightedFeatureStats
from analysis.prepare.weights import TrainWeightBalancer, apply_negative_weight_policy

__all__ = ["DATA_SPLIT", "InputUnit", "ShufflePlan", "scatter_unit", "shuffle_bucket", "split_names"]

# Real data (label -1) is never trained on; it goes through the same shuffle into its own
# folder so evaluation can compare data with simulation, standardised the same way.
DATA_SPLIT = "data"
# Scratch files between the passes: lz4 is the cheapest codec to write and read back.
_SCATTER_COMPRESSION = "lz4"
# Output codec: snappy, pyarrow's default, read by every Parquet reader.
_OUTPUT_COMPRESSION = "snappy"


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth Parquet dictionary encoding: the strings (dataset, process, split).

    Dictionary-encoding float columns costs more than half of the write time and, for
    continuous values, falls back to plain encoding anyway.
    """
    return [f.name for f in schema if pa.types.is_dictionary(f.type) or pa.types.is_string(f.type)
            or pa.types.is_large_string(f.type)]


def split_names() -> tuple[str, ...]:
    """Output folders in split-index order: train, val, test, data."""
    return (*SPLIT_NAMES, DATA_SPLIT)


@dataclasses.dataclass(frozen=True)
class InputUnit:
    """One bounded piece of input: some row groups of one Parquet file."""

    index: int
    path: str
    row_groups: tuple[int, ...]
    rows: int
    data_rows: int | None = None  # label -1 rows, when the Parquet statistics tell (else counted)


@dataclasses.dataclass(frozen=True)
class ShufflePlan:
    """Everything a task needs; pickled to the workers (no globals, no config object)."""

    scratch_dir: str  # where pass 1 writes its scatter files
    out_dir: str  # where pass 2 writes <split>/part-*.parquet
    id_columns: tuple[str, ...]
    features: tuple[str, ...]
    fractions: tuple[float, float, float]
    seed: int
    kfolds: int
    negative_weights: str
    buckets: tuple[int, int, int, int]  # buckets per split: train, val, test, data
    file_rows: int
    row_group_rows: int
    # Filled in between the passes:
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    balancer: TrainWeightBalancer | None = None  # finalised class totals -> train_weight
    target: Target = dataclasses.field(default_factory=Target)  # regression: with its statistics

    @property
    def offsets(self) -> np.ndarray:
        """First global bucket index of each split."""
        return np.concatenate([[0], np.cumsum(self.buckets)[:-1]]).astype(np.int64)

    def locate(self, group: int) -> tuple[int, int]:
        """(split index, bucket within the split) of a global bucket index."""
        split = int(np.searchsorted(np.cumsum(self.buckets), group, side="right"))
        return split, group - int(self.offsets[split])


def _read_unit(unit: InputUnit) -> pa.Table:
    try:
        return pq.ParquetFile(unit.path).read_row_groups(list(unit.row_groups))
    except (OSError, pa.ArrowInvalid) as err:
        raise StageInputError(f"{unit.path}: cannot read Parquet ({err})") from None


def _check_columns(table: pa.Table, plan: ShufflePlan, path: str) -> None:
    needed = [*plan.id_columns, "label", "weight", *plan.features, *plan.target.needed_columns]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise StageInputError(f"{path}: column(s) {', '.join(missing)} missing; the file has "
                              f"{', '.join(table.column_names)}")


def feature_matrix(table: pa.Table, features: Sequence[str]) -> np.ndarray:
    """(n, d) float64 matrix of the feature columns (nulls become NaN), column-major."""
    out = np.empty((table.num_rows, len(features)), order="F")
    for j, name in enumerate(features):
        out[:, j] = _float64_column(table, name)
    return out


def _float64_column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name).cast(pa.float64())
    if column.null_count:
        column = pc.fill_null(column, np.nan)
    return column.to_numpy()


def _dataset_totals(table: pa.Table, weight: np.ndarray) -> dict[str, list[float]]:
    """{dataset: [rows, Σweight]} of a table."""
    if "dataset" not in table.column_names:
        return {"": [float(table.num_rows), float(weight.sum())]}
    encoded = pc.dictionary_encode(table.column("dataset").cast(pa.string())).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    names = encoded.dictionary.to_pylist()
    rows = np.bincount(codes, minlength=len(names))
    sums = np.bincount(codes, weights=weight, minlength=len(names))
    return {name: [float(rows[i]), float(sums[i])] for i, name in enumerate(names)}


def _classes(table: pa.Table, label: np.ndarray, target: Target, where: str) -> np.ndarray:
    """The class index `train_weight` balances per row (the label itself for binary)."""
    if target.kind != "multiclass":
        return target.class_index(label, where=where)
    encoded = pc.dictionary_encode(table.column("process").cast(pa.string())).combine_chunks()
    return target.class_index(label, encoded.indices.to_numpy(zero_copy_only=False),
                              encoded.dictionary.to_pylist(), where=where)


def _regression_values(table: pa.Table, label: np.ndarray, target: Target, where: str) -> np.ndarray:
    """Transformed regression targets ``(rows, K)``; every simulated row needs finite ones."""
    values = target.raw_values({c: _float64_column(table, c) for c in target.needed_columns})
    bad = ~np.isfinite(values) & (label >= 0)[:, None]
    if bad.any():
        row, j = np.argwhere(bad)[0]
        dataset = table.column("dataset")[int(row)].as_py() if "dataset" in table.column_names else "?"
        raise StageInputError(
            f"{where}: target column {target.sources[j]!r}{f' ({target.transform})' if target.transform != 'none' else ''}"
            f" is not finite in {int(bad[:, j].sum())} simulated row(s) (first: {float(values[row, j])!r}, dataset "
            f"{dataset}); a regression trains on every simulated event: keep only the samples that carry it")
    return values


def scatter_unit(unit: InputUnit, plan: ShufflePlan) -> dict[str, Any]:
    """Pass 1 on one input piece: split, statistics, class totals, rows written by bucket.

    Returns
    -------
    dict with ``unit`` (index), ``path`` (scatter file or None), ``groups`` ({global bucket:
    (row group, rows)}), ``datasets`` ({dataset: [rows, Σweight]}), ``balancer``
    (`TrainWeightBalancer` of the labelled rows), ``stats`` (per class, `WeightedFeatureStats`
    of the training rows weighted by the policy-applied weight), ``target_stats`` (the same
    of a regression's transformed targets, else None).
    """
    table = _read_unit(unit)
    _check_columns(table, plan, unit.path)
    label = table.column("label").to_numpy().astype(np.int8)
    bad = ~np.isin(label, (-1, 0, 1))
    if bad.any():
        raise StageInputError(f"{unit.path}: labels {sorted(set(np.unique(label[bad]).tolist()))} found; "
                              "use 1 signal, 0 background, -1 real data")
    weight = table.column("weight").to_numpy().astype(np.float64)
    bad_weight = ~np.isfinite(weight)
    if bad_weight.any():
        raise StageInputError(f"{unit.path}: {int(bad_weight.sum())} row(s) have a weight that is not a "
                              f"finite number ({weight[bad_weight][0]!r}); every event needs a finite "
                              "yield: check the cross section, luminosity and genWeight of its dataset")
    hashes = event_hash(id_columns_of(table, plan.id_columns), seed=plan.seed)
    split = assign_split(hashes, fractions=plan.fractions).astype(np.int64)
    split[label == -1] = len(SPLIT_NAMES)
    buckets = np.asarray(plan.buckets, dtype=np.int64)
    within = (salted_uniform(hashes, salt=SALT_BUCKET) * buckets[split]).astype(np.int64)
    group = plan.offsets[split] + np.minimum(within, buckets[split] - 1)

    mc = label >= 0
    classes = _classes(table, label, plan.target, unit.path)
    balancer = TrainWeightBalancer(negative_weights=plan.negative_weights, class_names=plan.target.class_names)
    balancer.partial_fit(split[mc], classes[mc], weight[mc])
    policy_weight = apply_negative_weight_policy(weight, policy=plan.negative_weights)
    features = feature_matrix(table, plan.features)
    class_stats = []
    for cls in range(plan.target.n_classes):
        rows = (split == 0) & (classes == cls)
        stats = WeightedFeatureStats(feature_names=plan.features)
        if rows.any():
            stats.partial_fit(features[rows], policy_weight[rows])
        class_stats.append(stats)
    del features
    target_stats = None
    if plan.target.kind == "regression":
        values = _regression_values(table, label, plan.target, unit.path)
        target_stats = WeightedFeatureStats(feature_names=plan.target.columns)
        if (split == 0).any():
            target_stats.partial_fit(values[split == 0], policy_weight[split == 0])

    order = np.argsort(group, kind="stable")
    ordered = table.take(pa.array(order))
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]]) if len(order) else []
    groups: dict[int, tuple[int, int]] = {}
    path = None
    if len(order):
        path = str(Path(plan.scratch_dir) / f"unit-{unit.index:06d}.parquet")
        with pq.ParquetWriter(path, ordered.schema, compression=_SCATTER_COMPRESSION,
                              use_dictionary=_dictionary_columns(ordered.schema)) as writer:
            for rg, (start, stop) in enumerate(zip(starts, [*starts[1:], len(order)])):
                writer.write_table(ordered.slice(start, stop - start), row_group_size=stop - start)
                groups[int(sorted_group[start])] = (rg, int(stop - start))
    return {"unit": unit.index, "path": path, "groups": groups, "datasets": _dataset_totals(table, weight),
            "balancer": balancer, "stats": class_stats, "target_stats": target_stats}


def _plain_strings(table: pa.Table) -> tuple[pa.Table, list[str]]:
    """Decode dictionary columns (pieces carry different dictionaries); remember which."""
    names = []
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            names.append(field.name)
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    return table, names


def shuffle_bucket(group: int, pieces: Sequence[tuple[str, int]], plan: ShufflePlan) -> list[dict[str, Any]]:
    """Pass 2 for one bucket: gather, permute, add training columns, standardise, write.

    Parameters
    ----------
    group : int, global bucket index (see `ShufflePlan.locate`)
    pieces : [(scatter file, row group)] holding this bucket's rows, in unit order

    Returns
    -------
    list of {"path" (relative to out_dir), "rows", "datasets": {dataset: [rows, Σweight]}}
    """
    split_index, bucket = plan.locate(group)
    split_name = split_names()[split_index]
    dictionary_columns: set[str] = set()
    parts = []
    for path, rg in pieces:
        # The skim's per-file schema metadata (its chunk's cutflow) describes no prepared file.
        part, names = _plain_strings(pq.ParquetFile(path).read_row_group(rg).replace_schema_metadata(None))
        dictionary_columns.update(names)
        parts.append(part)
    # Skim parts written by other versions may differ in integer width: promote, don't fail.
    table = pa.concat_tables(parts, promote_options="permissive").combine_chunks()
    del parts
    hashes = event_hash(id_columns_of(table, plan.id_columns), seed=plan.seed)
    order = np.argsort(shuffle_order_key(hashes), kind="stable")
    table = table.take(pa.array(order))
    hashes = hashes[order]

    label = table.column("label").to_numpy().astype(np.int64)
    weight = table.column("weight").to_numpy().astype(np.float64)
    classes = _classes(table, label, plan.target, split_name)
    if split_name == DATA_SPLIT:
        train_weight = np.zeros(len(weight))  # real data is never trained on
    else:
        train_weight = plan.balancer.transform(np.full(len(label), split_index), classes, weight)

    if plan.target.kind == "regression":  # from the raw columns (`ratio_to` may be a feature)
        values = plan.target.raw_values({c: _float64_column(table, c) for c in plan.target.needed_columns})
        values[label < 0] = np.nan  # real data gets no target, whatever its columns hold
    standardisation = Standardisation(plan.features, plan.mean, plan.std)
    for j, name in enumerate(plan.features):  # column by column: no (n, d) copy in memory
        standardised = standardisation.transform_column(j, _float64_column(table, name))
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(standardised))
    for name in sorted(dictionary_columns):
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pc.dictionary_encode(table.column(name)))
    table = table.append_column("train_weight", pa.array(train_weight))
    table = table.append_column("split", pa.array(np.full(table.num_rows, split_name), pa.string()))
    if plan.kfolds >= 2:
        table = table.append_column("fold", pa.array(assign_fold(hashes, kfolds=plan.kfolds)))
    if plan.target.kind == "multiclass":
        table = table.append_column(CLASS_COLUMN, pa.array(classes.astype(np.int8)))
    elif plan.target.kind == "regression":
        targets = Standardisation(plan.target.columns, plan.target.mean, plan.target.std)
        for j, name in enumerate(plan.target.columns):
            table = table.append_column(name, pa.array(targets.transform_column(j, values[:, j])))

    out = Path(plan.out_dir) / split_name
    out.mkdir(parents=True, exist_ok=True)
    written = []
    # Equal-sized files of at most file_rows rows (no small remainder file).
    n_files = max(1, -(-table.num_rows // plan.file_rows))
    per_file = -(-table.num_rows // n_files)
    for k in range(n_files):
        part = table.slice(k * per_file, per_file)
        name = f"part-{bucket:05d}-{k:03d}.parquet"
        pq.write_table(part, out / name, row_group_size=plan.row_group_rows, compression=_OUTPUT_COMPRESSION,
                       use_dictionary=_dictionary_columns(part.schema))
        written.append({"path": f"{split_name}/{name}", "rows": part.num_rows,
                        "datasets": _dataset_totals(part, part.column("weight").to_numpy())})
    return written
