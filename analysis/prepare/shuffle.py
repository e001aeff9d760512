"""Prepare stage: the two passes of the out-of-core global shuffle, run as dask tasks.

Pass 1 (`scatter_unit`) reads one bounded piece of the input, decides each event's split
and shuffle bucket from its identity hash, accumulates the training statistics and class
totals, and writes the rows grouped by (split, bucket), one Parquet row group per bucket.
Pass 2 (`shuffle_bucket`) gathers one bucket's row groups from every scatter file, puts
them in the order of a second hash, adds `train_weight`/`split`/`fold`, standardises the
features (and, entry by entry, the list columns) and writes files of bounded size with
several row groups. A task never holds more than one input piece or one bucket, so peak
memory is set by ``bucket_rows``, not by the dataset; and because bucket and order are
hashes of the event, the output does not depend on how the input was partitioned or on
the number of workers. Rows that are objects (jets) take their split from the event's
hash and their bucket and order from the event's and the object index's, so the jets of
an event share a split but not a neighbourhood. With a flat (pt, eta) reweighting a pass 0
(`bin_unit`) first sums the weights per split, class and bin (`analysis.prepare.flatten`).
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

from analysis.core.objects import FlattenConfig
from analysis.core.standardise import Standardisation
from analysis.core.target import CLASS_COLUMN, Target
from analysis.errors import StageInputError
from analysis.prepare.columns import (
    check_columns,
    class_of_rows,
    dataset_totals,
    feature_matrix,
    float64_column,
    regression_values,
    standardise_list_column,
)
from analysis.prepare.flatten import FlatBinWeights
from analysis.prepare.split import (
    SALT_BUCKET,
    SPLIT_NAMES,
    assign_fold,
    assign_split,
    event_hash,
    id_columns_of,
    salted_uniform,
    shuffle_order_key,
)
from analysis.prepare.stats import WeightedFeatureStats
from analysis.prepare.weights import TrainWeightBalancer, apply_negative_weight_policy

__all__ = ["DATA_SPLIT", "InputUnit", "ShufflePlan", "bin_unit", "event_split", "flat_factor", "labels_and_weights",
           "row_train_weight", "scatter_unit", "shuffle_bucket", "split_names"]

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
    target: Target = dataclasses.field(default_factory=Target)  # regression: with its statistics (pass 2)
    # Rows that are objects (jets): their index joins the shuffle's identity, not the split's.
    row_id_columns: tuple[str, ...] = ()
    constituent_features: tuple[str, ...] = ()  # list columns, standardised entry by entry
    flatten: FlattenConfig | None = None
    flat: FlatBinWeights | None = None  # finalised flattening totals (pass 0), when flattening
    # Filled in between the passes:
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    balancer: TrainWeightBalancer | None = None  # finalised class totals -> train_weight
    constituent_mean: tuple[float, ...] = ()
    constituent_std: tuple[float, ...] = ()

    @property
    def offsets(self) -> np.ndarray:
        """First global bucket index of each split."""
        return np.concatenate([[0], np.cumsum(self.buckets)[:-1]]).astype(np.int64)

    def locate(self, group: int) -> tuple[int, int]:
        """(split index, bucket within the split) of a global bucket index."""
        split = int(np.searchsorted(np.cumsum(self.buckets), group, side="right"))
        return split, group - int(self.offsets[split])


def _read_unit(unit: InputUnit, columns: list[str] | None = None) -> pa.Table:
    """The piece's rows (all columns, or ``columns``, each of which must exist)."""
    try:
        handle = pq.ParquetFile(unit.path)
        if columns is not None:
            check_columns(handle.schema_arrow.empty_table(), unit.path, needed=columns, flat=(), lists=())
        return handle.read_row_groups(list(unit.row_groups), columns=columns)
    except (OSError, pa.ArrowInvalid) as err:
        raise StageInputError(f"{unit.path}: cannot read Parquet ({err})") from None


def labels_and_weights(table: pa.Table, path: str) -> tuple[np.ndarray, np.ndarray]:
    """``label`` (int8, -1/0/1) and ``weight`` (finite float64) of a piece, or a one-line error."""
    label = table.column("label").to_numpy().astype(np.int8)
    bad = ~np.isin(label, (-1, 0, 1))
    if bad.any():
        raise StageInputError(f"{path}: labels {sorted(set(np.unique(label[bad]).tolist()))} found; "
                              "use 1 signal, 0 background, -1 real data")
    weight = table.column("weight").to_numpy().astype(np.float64)
    bad_weight = ~np.isfinite(weight)
    if bad_weight.any():
        raise StageInputError(f"{path}: {int(bad_weight.sum())} row(s) have a weight that is not a "
                              f"finite number ({weight[bad_weight][0]!r}); every event needs a finite "
                              "yield: check the cross section, luminosity and genWeight of its dataset")
    return label, weight


def event_split(table: pa.Table, plan: ShufflePlan, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(event hashes, split index per row): 0-2 from the event's hash, 3 (`DATA_SPLIT`) for real data.

    The hash is of the event's identity (`ShufflePlan.id_columns`), never of an object index:
    all jets of an event share their split (and their fold).
    """
    hashes = event_hash(id_columns_of(table, plan.id_columns), seed=plan.seed)
    split = assign_split(hashes, fractions=plan.fractions).astype(np.int64)
    split[label == -1] = len(SPLIT_NAMES)
    return hashes, split


def _row_hashes(table: pa.Table, plan: ShufflePlan, hashes: np.ndarray) -> np.ndarray:
    """The shuffle's identity: the event's, with the object index of a row-per-object skim (bucket, order)."""
    if not plan.row_id_columns:
        return hashes
    return event_hash(id_columns_of(table, (*plan.id_columns, *plan.row_id_columns)), seed=plan.seed)


def flat_factor(table: pa.Table, plan: ShufflePlan, split: np.ndarray, classes: np.ndarray,
                where: str) -> np.ndarray | None:
    """The (pt, eta) flattening factor of every row (1 for real data); None without flattening."""
    if plan.flat is None or plan.flatten is None:
        return None
    out = np.ones(table.num_rows)
    mc = (classes >= 0) & (split < len(SPLIT_NAMES))
    bins = plan.flatten.bin_of({v: float64_column(table, v)[mc] for v in plan.flatten.variables}, where=where)
    out[mc] = plan.flat.transform(split[mc], classes[mc], bins)
    return out


def bin_unit(unit: InputUnit, plan: ShufflePlan) -> FlatBinWeights:
    """Pass 0 (only with ``prepare.objects.flatten``): the per split, class and bin totals of a piece."""
    assert plan.flatten is not None  # the runner calls it only then
    columns = [*plan.id_columns, "label", "weight", *plan.target.needed_columns, *plan.flatten.variables]
    table = _read_unit(unit, columns=list(dict.fromkeys(columns)))
    label, weight = labels_and_weights(table, unit.path)
    _, split = event_split(table, plan, label)
    classes = class_of_rows(table, label, plan.target, unit.path)
    mc = label >= 0
    bins = plan.flatten.bin_of({v: float64_column(table, v)[mc] for v in plan.flatten.variables}, where=unit.path)
    flat = FlatBinWeights(negative_weights=plan.negative_weights, class_names=plan.target.class_names,
                          n_bins=plan.flatten.n_bins)
    return flat.partial_fit(split[mc], classes[mc], bins, weight[mc])


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
    check_columns(table, unit.path, needed=[*plan.id_columns, *plan.row_id_columns, "label", "weight",
                                            *plan.target.needed_columns, *(plan.flatten.variables if plan.flatten else ())],
                  flat=plan.features, lists=plan.constituent_features)
    label, weight = labels_and_weights(table, unit.path)
    hashes, split = event_split(table, plan, label)
    buckets = np.asarray(plan.buckets, dtype=np.int64)
    # Jets of one event may go to different buckets of their split: the row's identity draws.
    within = (salted_uniform(_row_hashes(table, plan, hashes), salt=SALT_BUCKET) * buckets[split]).astype(np.int64)
    group = plan.offsets[split] + np.minimum(within, buckets[split] - 1)

    mc = label >= 0
    classes = class_of_rows(table, label, plan.target, unit.path)
    balancer = TrainWeightBalancer(negative_weights=plan.negative_weights, class_names=plan.target.class_names)
    balancer.partial_fit(split[mc], classes[mc], weight[mc])
    policy_weight = apply_negative_weight_policy(weight, policy=plan.negative_weights)
    flat = flat_factor(table, plan, split, classes, unit.path)
    if flat is not None:  # statistics weighted as train_weight will be, up to the class scale
        policy_weight = policy_weight * flat
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
        values = regression_values(table, label, plan.target, unit.path)
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
    return {"unit": unit.index, "path": path, "groups": groups, "datasets": dataset_totals(table, weight),
            "balancer": balancer, "stats": class_stats, "target_stats": target_stats}


def row_train_weight(table: pa.Table, plan: ShufflePlan, split: np.ndarray, classes: np.ndarray,
                     weight: np.ndarray, where: str) -> np.ndarray:
    """``train_weight`` of labelled rows: policy weight x class scale (x the flattening factor)."""
    train_weight = plan.balancer.transform(split, classes, weight)
    flat = flat_factor(table, plan, split, classes, where)
    return train_weight if flat is None else train_weight * flat


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
    # The order draws from the row's identity: the jets of an event do not stay side by side.
    order = np.argsort(shuffle_order_key(_row_hashes(table, plan, hashes)), kind="stable")
    table = table.take(pa.array(order))
    hashes = hashes[order]

    label = table.column("label").to_numpy().astype(np.int64)
    weight = table.column("weight").to_numpy().astype(np.float64)
    classes = class_of_rows(table, label, plan.target, split_name)
    if split_name == DATA_SPLIT:
        train_weight = np.zeros(len(weight))  # real data is never trained on
    else:
        train_weight = row_train_weight(table, plan, np.full(len(label), split_index), classes, weight, split_name)

    if plan.target.kind == "regression":  # from the raw columns (`ratio_to` may be a feature)
        values = plan.target.raw_values({c: float64_column(table, c) for c in plan.target.needed_columns})
        values[label < 0] = np.nan  # real data gets no target, whatever its columns hold
    standardisation = Standardisation(plan.features, plan.mean, plan.std)
    for j, name in enumerate(plan.features):  # column by column: no (n, d) copy in memory
        standardised = standardisation.transform_column(j, float64_column(table, name))
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(standardised))
    lists = Standardisation(plan.constituent_features, plan.constituent_mean, plan.constituent_std)
    for j, name in enumerate(plan.constituent_features):  # every entry of every list, one column at a time
        table = table.set_column(table.schema.get_field_index(name), name,
                                 standardise_list_column(table.column(name), lists, j))
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
                        "datasets": dataset_totals(part, part.column("weight").to_numpy())})
    return written
