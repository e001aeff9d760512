"""Prepare stage: the tagger reweighting — train_weight flat in (pt, eta) per class, by weights, never by dropping.

A jet tagger should not learn a class from its spectrum: b jets harder than light jets
would make pt a b-tag. The standard cure is to give each class the same shape in the
binned (pt, eta) plane. Dropping jets from the populated bins would throw statistics
away; `FlatBinWeights` instead scales them. For a jet of class c in split s and bin b::

    factor = W_s,c / (B_s,c * W_s,c,b)

with W_s,c,b the policy-weighted total of the class in the bin, W_s,c that of the class and
B_s,c its number of occupied bins: every occupied bin of a class then carries the same
total, and the class keeps its total, so the class balance of `TrainWeightBalancer` (which
multiplies in) is untouched: ``train_weight = policy(w) * class scale * factor``.
The totals come from a first pass over the input (`analysis.prepare.shuffle.bin_unit`),
so both passes of the shuffle know each row's factor.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis.errors import ConfigError, StageInputError
from analysis.prepare.split import SPLIT_NAMES
from analysis.prepare.weights import NegativeWeightPolicy, apply_negative_weight_policy

__all__ = ["FlatBinWeights"]


class FlatBinWeights:
    """Per split, class and bin totals, and the factors that make each class flat in the bins.

    Parameters
    ----------
    negative_weights : {"keep", "abs", "zero"}, keyword-only
    class_names : sequence of str, keyword-only
    n_bins : int, keyword-only, the cells of the binning (`FlattenConfig.n_bins`)

    Attributes
    ----------
    sum_weights_ : numpy.ndarray, shape (3 splits, C classes, n_bins), policy-weighted totals
    sum_abs_ : numpy.ndarray, same shape, totals of |policy weight|
    counts_ : numpy.ndarray of int64, same shape, rows
    factor_ : numpy.ndarray, same shape, set by `finalize` (0 for a bin without weight)
    """

    def __init__(self, *, negative_weights: NegativeWeightPolicy = "keep", class_names: Sequence[str], n_bins: int):
        self.negative_weights = negative_weights
        self.class_names = tuple(class_names)
        self.n_bins = n_bins

    def _reset(self) -> None:
        shape = (len(SPLIT_NAMES), len(self.class_names), self.n_bins)
        self.sum_weights_, self.sum_abs_ = np.zeros(shape), np.zeros(shape)
        self.counts_ = np.zeros(shape, dtype=np.int64)
        self.factor_ = None

    def _cells(self, split: np.ndarray, cls: np.ndarray, bins: np.ndarray) -> np.ndarray:
        return (np.asarray(split, np.int64) * len(self.class_names) + np.asarray(cls, np.int64)) * self.n_bins \
            + np.asarray(bins, np.int64)

    def partial_fit(self, split: np.ndarray, cls: np.ndarray, bins: np.ndarray,
                    weight: np.ndarray) -> FlatBinWeights:
        """Accumulate labelled rows: split 0-2, class 0..C-1, bin 0..n_bins-1, physics weight."""
        if not hasattr(self, "sum_weights_"):
            self._reset()
        w = apply_negative_weight_policy(weight, policy=self.negative_weights)
        cells, size = self._cells(split, cls, bins), self.sum_weights_.size
        shape = self.sum_weights_.shape
        self.sum_weights_ += np.bincount(cells, weights=w, minlength=size).reshape(shape)
        self.sum_abs_ += np.bincount(cells, weights=np.abs(w), minlength=size).reshape(shape)
        self.counts_ += np.bincount(cells, minlength=size).reshape(shape)
        self.factor_ = None
        return self

    def merge(self, other: FlatBinWeights) -> FlatBinWeights:
        """A new object holding the totals of both (dask partitions, merged in a fixed order)."""
        if (other.class_names, other.n_bins, other.negative_weights) != \
                (self.class_names, self.n_bins, self.negative_weights):
            raise ConfigError("cannot merge flat-bin totals of other classes, bins or negative-weight policies")
        out = copy.deepcopy(self)
        if not hasattr(out, "sum_weights_"):
            out._reset()
        if hasattr(other, "sum_weights_"):
            out.sum_weights_ = out.sum_weights_ + other.sum_weights_
            out.sum_abs_ = out.sum_abs_ + other.sum_abs_
            out.counts_ = out.counts_ + other.counts_
        out.factor_ = None
        return out

    def finalize(self) -> np.ndarray:
        """`factor_`; a bin whose rows carry weight must have a positive total."""
        if not hasattr(self, "sum_weights_"):
            self._reset()
        total, carried = self.sum_weights_, self.sum_abs_ > 0
        bad = carried & ~(total > 0)
        if bad.any():
            s, c, b = (int(i[0]) for i in np.nonzero(bad))
            raise StageInputError(
                f"prepare.objects.flatten: bin {b} of class {self.class_names[c]!r} in split {SPLIT_NAMES[s]!r} has "
                f"{self.counts_[s, c, b]} rows with total weight {total[s, c, b]:g} (negative-weight policy "
                f"{self.negative_weights!r}): it cannot be flattened; use wider bins or "
                "prepare.negative_weights = 'abs' or 'zero'")
        occupied = total > 0
        n_occupied = occupied.sum(axis=2, keepdims=True)
        class_total = np.where(occupied, total, 0.0).sum(axis=2, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(occupied, class_total / (np.maximum(n_occupied, 1) * total), 0.0)
        self.factor_ = factor
        return factor

    def transform(self, split: np.ndarray, cls: np.ndarray, bins: np.ndarray) -> np.ndarray:
        """The flattening factor (float64) of labelled rows of known split, class and bin."""
        if getattr(self, "factor_", None) is None:
            self.finalize()
        return self.factor_.reshape(-1)[self._cells(split, cls, bins)]

    def summary(self) -> dict[str, dict[str, Any]]:
        """{split: {class: {"occupied_bins", "rows", "sum_weight"}}} for stats.json and the manifest."""
        if getattr(self, "factor_", None) is None:
            self.finalize()
        return {split: {cls: {"occupied_bins": int((self.sum_weights_[s, c] > 0).sum()),
                              "rows": int(self.counts_[s, c].sum()),
                              "sum_weight": float(self.sum_weights_[s, c].sum())}
                        for c, cls in enumerate(self.class_names)}
                for s, split in enumerate(SPLIT_NAMES)}
