"""Prepare stage: training weights that balance signal and background by scaling, never dropping.

Physics yields (`weight`) differ by orders of magnitude between samples, and background
totals dwarf signal. A classifier trained on yields learns "always background"; one trained
on a background subsample throws statistics away. `train_weight` instead rescales each
class within each split so every class carries the same total weight and the mean training
weight is 1, keeping every event (two classes for signal vs background, one per class of a
multi-class target, a single one for a regression). Negative generator weights follow a configurable policy.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from analysis.errors import ConfigError, StageInputError
from analysis.prepare.split import SPLIT_NAMES

__all__ = ["CLASS_NAMES", "NEGATIVE_WEIGHT_POLICIES", "TrainWeightBalancer", "apply_negative_weight_policy"]

NegativeWeightPolicy = Literal["keep", "abs", "zero"]
NEGATIVE_WEIGHT_POLICIES: tuple[str, ...] = ("keep", "abs", "zero")
CLASS_NAMES: dict[int, str] = {0: "background", 1: "signal"}


def apply_negative_weight_policy(weight: np.ndarray, *, policy: NegativeWeightPolicy) -> np.ndarray:
    """Weights used for training under a negative-weight policy (float64, same shape).

    ``keep`` leaves them (NLO interference is physical, and the class totals stay unbiased),
    ``abs`` flips their sign (positive-only losses, biased totals), ``zero`` ignores them
    (events stay in the file with weight 0).
    """
    w = np.asarray(weight, dtype=np.float64)
    if policy == "keep":
        return w.copy()
    if policy == "abs":
        return np.abs(w)
    if policy == "zero":
        return np.where(w < 0, 0.0, w)
    raise ConfigError(f"negative-weight policy {policy!r} unknown: use one of "
                      f"{', '.join(NEGATIVE_WEIGHT_POLICIES)}")


class TrainWeightBalancer:
    """Per-split, per-class totals and the scale factors that turn them into `train_weight`.

    After fitting, for an event of class c in split s with physics weight w::

        train_weight = policy(w) * scale_[s][c],   scale_[s][c] = (N_s / C) / W_s,c

    with N_s the number of labelled events in split s, C the number of classes and W_s,c
    the policy-weighted total of class c there. So in every split each class sums to
    N_s / C and the mean train_weight is 1.

    Parameters
    ----------
    negative_weights : {"keep", "abs", "zero"}, keyword-only
    class_names : sequence of str, keyword-only
        The classes in index order (default: background, signal — the binary label).

    Attributes
    ----------
    sum_weights_ : numpy.ndarray, shape (3 splits, C classes)
        Policy-weighted totals W_s,c (index [split, label]).
    counts_ : numpy.ndarray of int64, shape (3, C)
        Events per split and class.
    scale_ : numpy.ndarray, shape (3, C)
        Scale factors, set by `finalize` (or the first `transform`).
    """

    def __init__(self, *, negative_weights: NegativeWeightPolicy = "keep",
                 class_names: Sequence[str] = tuple(CLASS_NAMES.values())):
        self.negative_weights = negative_weights
        self.class_names = tuple(class_names)

    def _reset(self) -> None:
        n = len(self.class_names)
        self.sum_weights_ = np.zeros((len(SPLIT_NAMES), n))
        self.counts_ = np.zeros((len(SPLIT_NAMES), n), dtype=np.int64)
        self.scale_ = None

    def partial_fit(self, split: np.ndarray, label: np.ndarray, weight: np.ndarray) -> TrainWeightBalancer:
        """Accumulate one chunk.

        Parameters
        ----------
        split : int array (n,), split index 0 train, 1 val, 2 test
        label : int array (n,), the class index: 0 background or 1 signal for the binary
            label, else 0 .. C-1 (real data must be removed before)
        weight : float array (n,), physics weights
        """
        if not hasattr(self, "sum_weights_"):
            self._reset()
        label = np.asarray(label)
        n = len(self.class_names)
        bad = ~np.isin(label, np.arange(n))
        if bad.any():
            raise StageInputError(f"labels {sorted(set(np.unique(label[bad]).tolist()))} cannot be "
                                  f"balanced: only classes 0..{n - 1} ({', '.join(self.class_names)}) get train_weight")
        w = apply_negative_weight_policy(weight, policy=self.negative_weights)
        cell = np.asarray(split, dtype=np.int64) * n + label.astype(np.int64)
        size = len(SPLIT_NAMES) * n
        self.sum_weights_ += np.bincount(cell, weights=w, minlength=size).reshape(-1, n)
        self.counts_ += np.bincount(cell, minlength=size).reshape(-1, n)
        self.scale_ = None
        return self

    def fit(self, split: np.ndarray, label: np.ndarray, weight: np.ndarray) -> TrainWeightBalancer:
        self._reset()
        return self.partial_fit(split, label, weight)

    def merge(self, other: TrainWeightBalancer) -> TrainWeightBalancer:
        """A new balancer holding the totals of both (for combining dask partitions)."""
        if other.class_names != self.class_names:
            raise ConfigError(f"cannot merge balancers of classes {self.class_names} and {other.class_names}")
        if other.negative_weights != self.negative_weights:
            raise ConfigError(f"cannot merge balancers with policies {self.negative_weights!r} and "
                              f"{other.negative_weights!r}")
        out = copy.deepcopy(self)
        if not hasattr(out, "sum_weights_"):
            out._reset()
        if hasattr(other, "sum_weights_"):
            out.sum_weights_ = out.sum_weights_ + other.sum_weights_
            out.counts_ = out.counts_ + other.counts_
        out.scale_ = None
        return out

    def finalize(self) -> np.ndarray:
        """Compute `scale_`; every split with events needs every class with a positive total."""
        if not hasattr(self, "sum_weights_"):
            raise StageInputError("TrainWeightBalancer is not fitted: call partial_fit first")
        scale = np.zeros_like(self.sum_weights_)
        for s, split in enumerate(SPLIT_NAMES):
            n_split = self.counts_[s].sum()
            if n_split == 0:
                continue
            for c, cls in enumerate(self.class_names):
                total = self.sum_weights_[s, c]
                if self.counts_[s, c] == 0 or not total > 0:
                    raise StageInputError(
                        f"split {split!r} has {self.counts_[s, c]} {cls} events with total weight "
                        f"{total:g} (negative-weight policy {self.negative_weights!r}): the classes "
                        "cannot be balanced; give more events, other split fractions, or "
                        "prepare.negative_weights = 'abs' or 'zero'")
                scale[s, c] = (n_split / float(len(self.class_names))) / total
        self.scale_ = scale
        return scale

    def transform(self, split: np.ndarray, label: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """`train_weight` (float64) for rows of known split and label."""
        if getattr(self, "scale_", None) is None:
            self.finalize()
        w = apply_negative_weight_policy(weight, policy=self.negative_weights)
        return w * self.scale_[np.asarray(split, dtype=np.int64), np.asarray(label, dtype=np.int64)]

    def summary(self) -> Mapping[str, Mapping[str, Mapping[str, float]]]:
        """{split: {class: {"rows", "sum_weight", "scale"}}} for manifest.json."""
        if getattr(self, "scale_", None) is None:
            self.finalize()
        return {split: {cls: {"rows": int(self.counts_[s, c]), "sum_weight": float(self.sum_weights_[s, c]),
                              "scale": float(self.scale_[s, c])}
                        for c, cls in enumerate(self.class_names)}
                for s, split in enumerate(SPLIT_NAMES)}
