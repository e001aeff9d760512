"""Prepare stage: WeightedFeatureStats against numpy, chunked == one fit, merge, quantile sketch."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from analysis.errors import StageInputError
from analysis.prepare.stats import WeightedFeatureStats, weighted_quantile

NAMES = ["tau1_pt", "tau1_eta", "m_vis"]


def _sample(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack([20 + rng.exponential(30, n), rng.uniform(-2.3, 2.3, n), rng.normal(80, 20, n)])
    w = rng.uniform(0.1, 3.0, n) * np.where(rng.random(n) < 0.05, -1, 1)  # some negative weights
    return X, w


def test_hand_computed_moments():
    # values 1, 2, 4 with weights 1, 1, 2: Σw = 4, mean = (1 + 2 + 8)/4 = 2.75,
    # var = (1*1.75² + 1*0.75² + 2*1.25²)/4 = (3.0625 + 0.5625 + 3.125)/4 = 1.6875
    stats = WeightedFeatureStats().fit(np.array([[1.0], [2.0], [4.0]]), np.array([1.0, 1.0, 2.0]))
    assert stats.mean_[0] == pytest.approx(2.75, rel=1e-15)
    assert stats.var_[0] == pytest.approx(1.6875, rel=1e-14)
    assert stats.min_[0] == 1.0 and stats.max_[0] == 4.0
    # weighted median: cumulative weights 1, 2, 4 of total 4 -> first value reaching 2 is 2
    assert stats.quantile(0.5)[0] == pytest.approx(2.0, rel=2**-7)


def test_matches_numpy_weighted_computation():
    X, w = _sample()
    stats = WeightedFeatureStats(feature_names=NAMES).fit(X, w)
    mean = np.array([np.average(X[:, j], weights=w) for j in range(3)])
    std = np.sqrt([np.average((X[:, j] - mean[j]) ** 2, weights=w) for j in range(3)])
    np.testing.assert_allclose(stats.mean_, mean, rtol=1e-12)
    np.testing.assert_allclose(stats.scale_, std, rtol=1e-10)
    np.testing.assert_array_equal(stats.min_, X.min(axis=0))
    np.testing.assert_array_equal(stats.max_, X.max(axis=0))
    for q in (0.16, 0.5, 0.84):
        expected = [weighted_quantile(X[:, j], w, q) for j in range(3)]
        # the sketch is exact to one bin: 2^-7 of the value
        np.testing.assert_allclose(stats.quantile(q), expected, rtol=2**-6, atol=1e-3)


def test_numpy_reference_quantile_agrees_with_numpy():
    X, w = _sample(3000, seed=5)
    w = np.abs(w)
    for q in (0.16, 0.5, 0.84):
        assert weighted_quantile(X[:, 0], w, q) == np.quantile(X[:, 0], q, weights=w, method="inverted_cdf")


@pytest.mark.parametrize("chunk", [1, 7, 1000, 6_999, 20_000])
def test_chunked_partial_fit_and_merge_equal_one_fit(chunk):
    X, w = _sample({1: 400, 7: 1_400}.get(chunk, 20_000))
    one = WeightedFeatureStats(feature_names=NAMES).fit(X, w)
    chunked = WeightedFeatureStats(feature_names=NAMES)
    merged = WeightedFeatureStats(feature_names=NAMES)
    for a in range(0, len(X), chunk):
        chunked.partial_fit(X[a:a + chunk], w[a:a + chunk])
        merged = merged.merge(WeightedFeatureStats(feature_names=NAMES).fit(X[a:a + chunk], w[a:a + chunk]))
    for other in (chunked, merged):
        np.testing.assert_allclose(other.mean_, one.mean_, rtol=1e-11)
        np.testing.assert_allclose(other.var_, one.var_, rtol=1e-9)
        np.testing.assert_array_equal(other.min_, one.min_)
        np.testing.assert_array_equal(other.max_, one.max_)
        np.testing.assert_array_equal(other.n_samples_seen_, one.n_samples_seen_)
        np.testing.assert_allclose(other.quantile(0.5), one.quantile(0.5), rtol=1e-9)


def test_scaled_and_merged_classes_equal_a_fit_with_the_class_weights():
    # the prepare stage fits each class with the policy weight, then applies the class scale
    X, w = _sample()
    label = (np.arange(len(X)) % 3 == 0).astype(int)
    scale = np.where(label == 1, 4.0, 0.25)
    direct = WeightedFeatureStats().fit(X, w * scale)
    parts = [WeightedFeatureStats().fit(X[label == c], w[label == c]) for c in (0, 1)]
    combined = parts[0].scaled(0.25).merge(parts[1].scaled(4.0))
    np.testing.assert_allclose(combined.mean_, direct.mean_, rtol=1e-11)
    np.testing.assert_allclose(combined.var_, direct.var_, rtol=1e-9)
    np.testing.assert_allclose(combined.quantile(0.84), direct.quantile(0.84), rtol=1e-9)


def test_nan_is_ignored_and_stays_nan_after_transform():
    X = np.array([[1.0, np.nan], [3.0, 2.0], [np.nan, 4.0]])
    stats = WeightedFeatureStats().fit(X, np.ones(3))
    np.testing.assert_allclose(stats.mean_, [2.0, 3.0])
    np.testing.assert_array_equal(stats.n_samples_seen_, [2, 2])
    Z = stats.transform(X)
    assert np.isnan(Z[2, 0]) and np.isnan(Z[0, 1])
    np.testing.assert_allclose(Z[1], [1.0, -1.0])
    np.testing.assert_allclose(stats.inverse_transform(Z)[1], X[1])


def test_constant_feature_gets_std_one_and_is_reported():
    X = np.column_stack([np.full(10, 2.0), np.arange(10.0)])
    stats = WeightedFeatureStats(feature_names=["njets", "m_vis"]).fit(X, np.ones(10))
    assert stats.scale_[0] == 1.0 and stats.constant_features_ == ["njets"]
    np.testing.assert_array_equal(stats.transform(X)[:, 0], 0.0)
    assert stats.to_dict()["njets"] == {"mean": 2.0, "std": 1.0, "min": 2.0, "max": 2.0, "median": 2.0,
                                        "q16": 2.0, "q84": 2.0, "sum_weight": 10.0, "n": 10,
                                        "n_nan": 0, "n_inf": 0}


def test_dataframe_names_pickling_and_errors():
    X, w = _sample(500)
    stats = WeightedFeatureStats().fit(pd.DataFrame(X, columns=NAMES), w)
    assert list(stats.to_dict()) == NAMES
    clone = pickle.loads(pickle.dumps(stats))  # dask ships it between processes (sparse sketch)
    np.testing.assert_array_equal(clone.quantile(0.5), stats.quantile(0.5))
    with pytest.raises(StageInputError, match="not fitted: call fit or partial_fit first"):
        WeightedFeatureStats().mean_
    with pytest.raises(ValueError, match="X has 2 features, the statistics were fitted with 3"):
        stats.partial_fit(X[:, :2], w)
    with pytest.raises(StageInputError, match="feature\\(s\\) x1 have no finite value"):
        WeightedFeatureStats().fit(np.array([[1.0, np.nan]]), np.ones(1)).mean_
