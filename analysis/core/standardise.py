"""Core (prepare, training, prediction, evaluation): the one standardisation, built from stats.json.

Prepare writes every feature column as ``(raw - mean) / std`` with the training split's
statistics; a model applies the same to raw rows; evaluation turns prepared columns back
into physical units. All of them use `Standardisation`, so the formula and its treatment
of missing values exist once: a raw value that is not finite (NaN for "missing", or ±inf
from a broken input) is missing, and stays NaN, never ±inf (XGBoost takes NaN as missing;
the network imputes the training mean, 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from analysis.errors import StageInputError

__all__ = ["Standardisation"]


class Standardisation:
    """``standardised = (raw - mean) / std`` per feature; ``raw = standardised * std + mean``.

    Parameters
    ----------
    features : sequence of str
        Column names, in the order of the matrices given to `transform` / `inverse`.
    mean, std : sequences of float, one per feature (std > 0)
    """

    def __init__(self, features: Sequence[str], mean: Sequence[float], std: Sequence[float]):
        self.features = list(features)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        if self.mean.shape != (len(self.features),) or self.std.shape != self.mean.shape:
            raise ValueError(f"{len(self.features)} features but {self.mean.shape} means and "
                             f"{self.std.shape} standard deviations")

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], features: Sequence[str] | None = None,
                   *, source: str = "stats.json") -> Standardisation:
        """From a stats.json mapping, for ``features`` (default: its ``feature_order``)."""
        names = list(features if features is not None else stats.get("feature_order", []))
        try:
            mean = [float(stats["features"][f]["mean"]) for f in names]
            std = [float(stats["features"][f]["std"]) for f in names]
        except (KeyError, TypeError, ValueError) as err:
            raise StageInputError(f"{source}: no usable mean/std for feature {err}; re-run "
                                  "`hepprep prepare`") from None
        bad = [f for f, m, s in zip(names, mean, std) if not (np.isfinite(m) and np.isfinite(s) and s > 0)]
        if bad:
            raise StageInputError(f"{source}: feature(s) {', '.join(bad)} have a mean or std that is "
                                  "not a finite number (std must be > 0); re-run `hepprep prepare`")
        return cls(names, mean, std)

    @staticmethod
    def standardised(raw: Any, mean: Any, std: Any) -> Any:
        """``(raw - mean) / std``, the formula itself, for any array type with arithmetic (numpy
        arrays, torch tensors of an exported graph); no treatment of missing values."""
        return (raw - mean) / std

    def index(self, name: str) -> int:
        return self.features.index(name)

    def transform_column(self, j: int, raw: np.ndarray) -> np.ndarray:
        """Feature ``j`` standardised, float32; non-finite raw values become NaN."""
        raw = np.asarray(raw, dtype=np.float64)
        z = self.standardised(raw, self.mean[j], self.std[j])
        if not np.isfinite(raw).all():
            z[~np.isfinite(raw)] = np.nan
        return z.astype(np.float32)

    def transform(self, raw: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """``(rows, features)`` raw values -> standardised (float32), non-finite -> NaN."""
        raw = np.asarray(raw, dtype=np.float64)
        z = self.standardised(raw, self.mean, self.std)
        bad = ~np.isfinite(raw)
        if bad.any():
            z[bad] = np.nan
        return z.astype(dtype, copy=False)

    def inverse(self, standardised: np.ndarray) -> np.ndarray:
        """``(rows, features)`` standardised values -> physical units, float64."""
        return np.asarray(standardised, dtype=np.float64) * self.std + self.mean

    def inverse_column(self, j: int, standardised: np.ndarray) -> np.ndarray:
        """Feature ``j`` back in physical units, float64 (NaN stays NaN)."""
        return np.asarray(standardised, dtype=np.float64) * self.std[j] + self.mean[j]

    def inverse_affine(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift), float64 per name: ``raw = standardised * scale + shift``.

        For a graph that undoes the standardisation itself (a torch network computing
        physical quantities from its standardised inputs, and its ONNX export).
        """
        index = [self.index(name) for name in names]
        return self.std[index].copy(), self.mean[index].copy()

    def matches(self, other: Standardisation, *, rtol: float = 1e-9) -> bool:
        """True when ``other`` standardises each of this object's features alike."""
        for j, name in enumerate(self.features):
            if name not in other.features:
                return False
            k = other.index(name)
            if not (np.isclose(self.mean[j], other.mean[k], rtol=rtol, atol=0)
                    and np.isclose(self.std[j], other.std[k], rtol=rtol, atol=0)):
                return False
        return True
