"""Prepare stage: one-pass, mergeable weighted statistics of the feature columns.

The standardisation must come from the training split alone and from all of it, however
many dask partitions it is spread over. `WeightedFeatureStats` has the scikit-learn shape
(`partial_fit` over chunks, `merge` of partitions, learned attributes ending in ``_``):
moments from shifted sums Σw, Σw(x-K), Σw(x-K)² (shifted for numerical stability), min and
max, and quantiles from a relative-accuracy histogram (DDSketch-like) keyed on the bits
of the float32 value, which needs no first pass for bin edges and merges exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis.core.standardise import Standardisation
from analysis.errors import StageInputError

__all__ = ["WeightedFeatureStats", "weighted_quantile"]


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Reference weighted quantile: smallest x with cumulative weight >= q * total (inverted CDF).

    Parameters
    ----------
    values, weights : float arrays (n,); non-finite values are ignored
    q : float in [0, 1]
    """
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(values)
    order = np.argsort(values[keep], kind="stable")
    v, w = values[keep][order], weights[keep][order]
    cum = np.cumsum(w)
    return float(v[np.argmax(cum >= q * cum[-1])])


_Sparse = tuple[np.ndarray, np.ndarray]


def _merge_sparse(a: _Sparse, b: _Sparse) -> _Sparse:
    """Sum of two sparse histograms given as (sorted bin indices, weights)."""
    if not len(a[0]):
        return b[0].copy(), b[1].copy()
    if not len(b[0]):
        return a[0].copy(), a[1].copy()
    keys, inverse = np.unique(np.concatenate([a[0], b[0]]), return_inverse=True)
    return keys, np.bincount(inverse, weights=np.concatenate([a[1], b[1]]), minlength=len(keys))


class WeightedFeatureStats:
    """Weighted mean, standard deviation, min, max and quantiles of d features.

    Non-finite values (NaN for "missing", and ±inf, which a broken input can hold) are
    ignored feature by feature: they do not count in that feature's totals, and
    standardisation makes them NaN. They are counted (`n_nan_`, `n_inf_`).

    Parameters
    ----------
    feature_names : sequence of str or None, keyword-only
        Names for `to_dict`; taken from a DataFrame's columns when None.
    mantissa_bits : int, keyword-only
        Quantile sketch resolution: bins are 2**-mantissa_bits of the value wide, so a
        quantile is known to a relative 2**-mantissa_bits (0.8 % for the default 7).

    Attributes
    ----------
    n_features_in_ : int
    n_samples_seen_ : numpy.ndarray of int64, shape (d,)  finite values per feature
    n_nan_, n_inf_ : numpy.ndarray of int64, shape (d,)    NaN and ±inf values left out
    sum_weight_ : numpy.ndarray, shape (d,)               Σw over finite values
    mean_, var_ : numpy.ndarray, shape (d,)                weighted moments
    scale_ : numpy.ndarray, shape (d,)                     std, or 1 for a constant feature
    min_, max_ : numpy.ndarray, shape (d,)                 over finite values (unweighted)
    constant_features_ : list of str                       features whose std was 0

    Example
    -------
    >>> stats = WeightedFeatureStats(feature_names=["m_vis"])
    >>> stats.partial_fit(np.array([[1.0], [3.0]]), np.array([1.0, 1.0])).mean_
    array([2.])
    """

    def __init__(self, *, feature_names: Sequence[str] | None = None, mantissa_bits: int = 7):
        self.feature_names = feature_names
        self.mantissa_bits = mantissa_bits

    # -- fitting ---------------------------------------------------------------------
    def _reset(self, n_features: int, names: Sequence[str] | None) -> None:
        if not 1 <= self.mantissa_bits <= 12:
            raise ValueError(f"mantissa_bits = {self.mantissa_bits}: use 1..12")
        self.n_features_in_ = n_features
        self.feature_names_in_ = list(names) if names is not None else [f"x{i}" for i in range(n_features)]
        self.n_samples_seen_ = np.zeros(n_features, dtype=np.int64)
        self.n_nan_ = np.zeros(n_features, dtype=np.int64)
        self.n_inf_ = np.zeros(n_features, dtype=np.int64)
        self.sum_weight_ = np.zeros(n_features)
        self._shift = np.full(n_features, np.nan)  # K: first chunk's weighted mean
        self._s1 = np.zeros(n_features)  # Σw(x-K)
        self._s2 = np.zeros(n_features)  # Σw(x-K)^2
        self.min_ = np.full(n_features, np.inf)
        self.max_ = np.full(n_features, -np.inf)
        # Sparse sketch per feature: sorted occupied bin indices and their summed weights.
        # (A dense array would be 2**(9 + mantissa_bits) floats per feature, mostly zeros.)
        self._sketch = [(np.zeros(0, np.int64), np.zeros(0)) for _ in range(n_features)]

    @property
    def _n_bins(self) -> int:
        return 1 << (9 + self.mantissa_bits)

    def _keys(self, x: np.ndarray) -> np.ndarray:
        """Sketch bin of each float: monotone in x, 2**-mantissa_bits relative width."""
        bits = np.abs(x).astype(np.float32).view(np.int32) >> (23 - self.mantissa_bits)
        half = self._n_bins // 2
        return np.where(x < 0, half - 1 - bits, half + bits)

    def _edges(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        half = self._n_bins // 2
        shift = 23 - self.mantissa_bits
        neg = index < half
        mag = np.where(neg, half - 1 - index, index - half).astype(np.int64)
        lo = (mag << shift).astype(np.int32).view(np.float32).astype(np.float64)
        # The last finite bin's upper edge would overflow into the NaN bit patterns: stop at inf.
        hi = np.minimum((mag + 1) << shift, 0x7F800000).astype(np.int32).view(np.float32).astype(np.float64)
        return np.where(neg, -hi, lo), np.where(neg, -lo, hi)

    def partial_fit(self, X: Any, sample_weight: np.ndarray) -> WeightedFeatureStats:
        """Accumulate a chunk.

        Parameters
        ----------
        X : array-like (n, d) of floats, or a pandas DataFrame (its columns name the features)
        sample_weight : float array (n,); may be negative
        """
        names = list(X.columns) if hasattr(X, "columns") else self.feature_names
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (rows, features), got shape {X.shape}")
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (X.shape[0],):
            raise ValueError(f"sample_weight has shape {w.shape}, X has {X.shape[0]} rows")
        if not hasattr(self, "n_features_in_"):
            self._reset(X.shape[1], names)
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the statistics were fitted with "
                             f"{self.n_features_in_}")
        for j in range(X.shape[1]):
            x = np.ascontiguousarray(X[:, j])
            ok = np.isfinite(x)
            if not ok.all():
                nan = int(np.isnan(x).sum())
                self.n_nan_[j] += nan
                self.n_inf_[j] += len(x) - int(ok.sum()) - nan
                x, wj = x[ok], w[ok]
            else:
                wj = w
            if not len(x):
                continue
            sw = wj.sum()
            # Elementwise products and pairwise sums rather than BLAS dot products: exact
            # same rounding on every machine, and no BLAS thread start-up per column.
            if np.isnan(self._shift[j]):
                self._shift[j] = (wj * x).sum() / sw if sw != 0 else x[0]
            d = x - self._shift[j]
            wd = wj * d
            self.n_samples_seen_[j] += len(x)
            self.sum_weight_[j] += sw
            self._s1[j] += wd.sum()
            self._s2[j] += (wd * d).sum()
            self.min_[j] = min(self.min_[j], x.min())
            self.max_[j] = max(self.max_[j], x.max())
            counts = np.bincount(self._keys(x), weights=wj, minlength=self._n_bins)
            occupied = np.flatnonzero(counts)
            self._sketch[j] = _merge_sparse(self._sketch[j], (occupied, counts[occupied]))
        return self

    def fit(self, X: Any, sample_weight: np.ndarray) -> WeightedFeatureStats:
        """Reset, then `partial_fit` once: chunked and one-shot fitting share one code path."""
        self.__dict__.pop("n_features_in_", None)
        return self.partial_fit(X, sample_weight)

    def merge(self, other: WeightedFeatureStats) -> WeightedFeatureStats:
        """A new object holding both sets of statistics (combine dask partitions)."""
        if not hasattr(other, "n_features_in_"):
            return copy.deepcopy(self)
        if not hasattr(self, "n_features_in_"):
            return copy.deepcopy(other)
        if other.n_features_in_ != self.n_features_in_ or other.mantissa_bits != self.mantissa_bits:
            raise ValueError("cannot merge statistics of different features or sketch resolutions")
        out = copy.deepcopy(self)
        for j in range(self.n_features_in_):
            if np.isnan(other._shift[j]):
                continue
            if np.isnan(out._shift[j]):
                out._shift[j], out._s1[j], out._s2[j] = other._shift[j], other._s1[j], other._s2[j]
            else:
                # Move the other's sums to our shift: x-K = (x-K') + (K'-K).
                delta = other._shift[j] - out._shift[j]
                out._s1[j] += other._s1[j] + delta * other.sum_weight_[j]
                out._s2[j] += other._s2[j] + 2 * delta * other._s1[j] + delta**2 * other.sum_weight_[j]
        out.n_samples_seen_ = self.n_samples_seen_ + other.n_samples_seen_
        out.n_nan_ = self.n_nan_ + other.n_nan_
        out.n_inf_ = self.n_inf_ + other.n_inf_
        out.sum_weight_ = self.sum_weight_ + other.sum_weight_
        out.min_ = np.minimum(self.min_, other.min_)
        out.max_ = np.maximum(self.max_, other.max_)
        out._sketch = [_merge_sparse(a, b) for a, b in zip(self._sketch, other._sketch)]
        return out

    def scaled(self, factor: float) -> WeightedFeatureStats:
        """The same statistics with every weight multiplied by `factor` (a class scale)."""
        out = copy.deepcopy(self)
        if hasattr(out, "n_features_in_"):
            out.sum_weight_ = out.sum_weight_ * factor
            out._s1 = out._s1 * factor
            out._s2 = out._s2 * factor
            out._sketch = [(keys, weights * factor) for keys, weights in out._sketch]
        return out

    # -- learned values --------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise StageInputError("WeightedFeatureStats is not fitted: call fit or partial_fit first")
        empty = [n for n, c in zip(self.feature_names_in_, self.n_samples_seen_) if c == 0]
        if empty:
            raise StageInputError(f"feature(s) {', '.join(empty)} have no finite value in the "
                                  "training rows: drop them from the feature list")

    @property
    def mean_(self) -> np.ndarray:
        self._check_fitted()
        return self._shift + self._s1 / self.sum_weight_

    @property
    def var_(self) -> np.ndarray:
        self._check_fitted()
        m1 = self._s1 / self.sum_weight_
        return np.maximum(self._s2 / self.sum_weight_ - m1 * m1, 0.0)

    @property
    def scale_(self) -> np.ndarray:
        std = np.sqrt(self.var_)
        # A constant feature keeps its values centred (0) rather than becoming inf/NaN.
        return np.where((std > 0) & np.isfinite(std), std, 1.0)

    @property
    def constant_features_(self) -> list[str]:
        std = np.sqrt(self.var_)
        return [n for n, s in zip(self.feature_names_in_, std) if not (s > 0 and np.isfinite(s))]

    def quantile(self, q: float) -> np.ndarray:
        """Weighted q-quantile of each feature from the sketch (shape (d,)), within one bin."""
        self._check_fitted()
        out = np.empty(self.n_features_in_)
        for j in range(self.n_features_in_):
            nz, w = self._sketch[j]
            cum = np.cumsum(w)
            target = q * cum[-1]
            i = int(np.argmax(cum >= target - 1e-12 * abs(cum[-1])))
            lo, hi = self._edges(nz[i:i + 1])
            lo, hi = max(lo[0], self.min_[j]), min(hi[0], self.max_[j])
            before = cum[i - 1] if i else 0.0
            frac = np.clip((target - before) / w[i], 0.0, 1.0) if w[i] else 0.0
            out[j] = lo + frac * (hi - lo)
        return out

    def standardisation(self) -> Standardisation:
        """The standardisation these statistics define (`analysis.core.standardise`)."""
        return Standardisation(self.feature_names_in_, self.mean_, self.scale_)

    def transform(self, X: Any) -> np.ndarray:
        """(X - mean_) / scale_, float64 (n, d); a non-finite value is NaN."""
        return self.standardisation().transform(X, dtype=np.float64)

    def inverse_transform(self, Z: Any) -> np.ndarray:
        return self.standardisation().inverse(Z)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """{feature: {mean, std, min, max, median, q16, q84, sum_weight, n, n_nan, n_inf}} for stats.json.

        ``n`` counts the finite values the statistics are made of; ``n_nan`` and ``n_inf``
        the values left out as missing.
        """
        mean, std = self.mean_, self.scale_
        q16, median, q84 = self.quantile(0.16), self.quantile(0.5), self.quantile(0.84)
        return {name: {"mean": float(mean[j]), "std": float(std[j]), "min": float(self.min_[j]),
                       "max": float(self.max_[j]), "median": float(median[j]), "q16": float(q16[j]),
                       "q84": float(q84[j]), "sum_weight": float(self.sum_weight_[j]),
                       "n": int(self.n_samples_seen_[j]), "n_nan": int(self.n_nan_[j]),
                       "n_inf": int(self.n_inf_[j])}
                for j, name in enumerate(self.feature_names_in_)}
