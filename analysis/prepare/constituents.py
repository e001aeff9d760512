"""Prepare stage: statistics of list columns (constituents, secondary vertices) over the training rows, with dask-awkward.

Each entry of a list column (``cand_deta`` of one constituent) is standardised with the
weighted mean and standard deviation of that column over every real entry of the lists of
the training rows, each entry weighted by its row's ``train_weight`` (a jet's constituents
all weigh what the jet weighs). They are computed between the two passes of the shuffle,
once the class scales (and the flattening) are known, as dask-awkward reductions over the
skim: ``dak.from_parquet``, the training rows chosen per partition by the same code as the
shuffle (`analysis.prepare.shuffle.event_split`, `row_train_weight`), the weights
broadcast to the lists, ``dak.flatten``, and weighted sums Σw, Σwx, Σwx² (and min, max,
counts) in float64.

Why it is reproducible: the reductions are dask trees whose shape depends only on the list
of input files (one partition per file, sorted), not on the workers or task timing, so a
re-run gives the same bytes. Memory is one skim part per task, as in the first pass (a skim
part is one row group). Partitions are files, not row groups, on purpose: dask-awkward's
``split_row_groups=True`` on several files makes partitions of the first file's row groups
only (or indexes past a file's end with ``scan_files=True``), which would leave jets out
(`tests/test_prepare_jets.py` checks that this is still so). The function choosing the
training rows is also called on typetracers (the column projection): it then touches the
columns it reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import awkward as ak
import numpy as np

from analysis.errors import StageInputError
from analysis.prepare.columns import class_of_rows
from analysis.prepare.shuffle import ShufflePlan, event_split, labels_and_weights, row_train_weight

__all__ = ["ConstituentStatistics", "constituent_statistics"]

_ROWS_META = {"train": np.zeros(0, dtype=bool), "weight": np.zeros(0)}


def _needed_columns(plan: ShufflePlan) -> list[str]:
    flat = plan.flatten.variables if plan.flatten is not None else []
    return list(dict.fromkeys([*plan.id_columns, "label", "weight", *plan.target.needed_columns, *flat]))


def _training_rows(partition: ak.Array, plan: ShufflePlan) -> ak.Array:
    """Per row of one partition: ``train`` (a labelled row of the training split) and its ``train_weight``."""
    columns = _needed_columns(plan)
    if ak.backend(partition) == "typetracer":  # dask-awkward asking what this reads and returns
        for name in columns:
            ak.typetracer.touch_data(partition[name])
        return ak.Array(ak.zip(_ROWS_META).layout.to_typetracer(forget_length=True))
    table = ak.to_arrow_table(partition[columns], extensionarray=False)
    label, weight = labels_and_weights(table, "prepare: constituent statistics")
    _, split = event_split(table, plan, label)
    train = (split == 0) & (label >= 0)
    classes = class_of_rows(table, label, plan.target, "prepare: constituent statistics")
    train_weight = np.zeros(len(label))
    if train.any():
        sub = table.filter(train)
        train_weight[train] = row_train_weight(sub, plan, split[train], classes[train], weight[train], "train")
    return ak.zip({"train": train, "weight": train_weight})


class ConstituentStatistics:
    """Weighted moments of list columns from their sums (the learned attributes end in ``_``).

    Attributes
    ----------
    feature_names : list of str
    sum_weight_, sum_wx_, sum_wx2_ : numpy.ndarray (d,), Σw, Σwx, Σwx² over the finite entries
    count_, n_nan_, n_inf_ : numpy.ndarray of int64 (d,), finite, NaN and ±inf entries
    min_, max_ : numpy.ndarray (d,), over the finite entries
    """

    def __init__(self, feature_names: Sequence[str], sums: Sequence[Sequence[Any]]):
        self.feature_names = list(feature_names)
        columns = list(zip(*sums)) if sums else [()] * 8
        self.sum_weight_, self.sum_wx_, self.sum_wx2_ = (np.asarray(c, dtype=np.float64) for c in columns[:3])
        self.count_, self.n_nan_, self.n_inf_ = (np.asarray(c, dtype=np.int64) for c in columns[3:6])
        self.min_, self.max_ = (np.asarray([np.nan if v is None else float(v) for v in c]) for c in columns[6:8])
        empty = [n for n, c, w in zip(self.feature_names, self.count_, self.sum_weight_) if c == 0 or not w > 0]
        if empty:
            raise StageInputError(f"constituent feature(s) {', '.join(empty)} have no finite entry of positive total "
                                  "weight in the training rows' lists: drop them from prepare.objects.constituent_features")

    @property
    def mean_(self) -> np.ndarray:
        return self.sum_wx_ / self.sum_weight_

    @property
    def var_(self) -> np.ndarray:
        # Raw float64 moments: relative error ~1e-16 (mean/std)², small for these features.
        return np.maximum(self.sum_wx2_ / self.sum_weight_ - self.mean_**2, 0.0)

    @property
    def scale_(self) -> np.ndarray:
        std = np.sqrt(self.var_)
        return np.where((std > 0) & np.isfinite(std), std, 1.0)  # a constant column standardises to 0

    @property
    def constant_features_(self) -> list[str]:
        return [n for n, v in zip(self.feature_names, self.var_) if not (math.sqrt(v) > 0)]

    def to_dict(self) -> dict[str, dict[str, float]]:
        """{feature: {mean, std, count, sum_weight, min, max, n_nan, n_inf}} for stats.json ``constituents``."""
        mean, std = self.mean_, self.scale_
        return {name: {"mean": float(mean[j]), "std": float(std[j]), "count": int(self.count_[j]),
                       "sum_weight": float(self.sum_weight_[j]), "min": float(self.min_[j]),
                       "max": float(self.max_[j]), "n_nan": int(self.n_nan_[j]), "n_inf": int(self.n_inf_[j])}
                for j, name in enumerate(self.feature_names)}


def constituent_statistics(files: Sequence[str], plan: ShufflePlan, *, client: Any,
                           token: str) -> ConstituentStatistics:
    """Statistics of ``plan.constituent_features`` over the training rows of ``files``, on ``client``.

    ``plan`` must hold the finalised class scales (``balancer``) and flattening (``flat``);
    ``token`` makes the task keys of this run unique on a shared scheduler.
    """
    import dask
    import dask_awkward as dak

    features = list(plan.constituent_features)
    events = dak.from_parquet(list(files), columns=[*_needed_columns(plan), *features], split_row_groups=False)
    rows = dak.map_partitions(_training_rows, events, plan=plan, meta=ak.Array(ak.zip(_ROWS_META).layout
                                                                              .to_typetracer(forget_length=True)),
                              label="prepare-training-rows", token=f"prepare-training-rows-{token}")
    train = events[rows.train]
    train_weight = rows.weight[rows.train]
    sums = []
    for name in features:
        values = train[name]
        weights = dak.flatten(dak.broadcast_arrays(train_weight, values)[0])
        x = dak.values_astype(dak.fill_none(dak.flatten(values), np.nan), np.float64)
        finite = np.isfinite(x)
        xf, wf = x[finite], weights[finite]
        sums.append((dak.sum(wf, axis=None), dak.sum(wf * xf, axis=None), dak.sum(wf * xf * xf, axis=None),
                     dak.sum(finite, axis=None), dak.sum(np.isnan(x), axis=None), dak.sum(np.isinf(x), axis=None),
                     dak.min(xf, axis=None), dak.max(xf, axis=None)))
    flat = [s for feature in sums for s in feature]
    computed = dask.compute(*flat, scheduler=client.get, optimize_graph=True)
    per_feature = [computed[k:k + 8] for k in range(0, len(computed), 8)]
    return ConstituentStatistics(features, per_feature)
