"""Prepare stage: train_weight balances the classes by scaling, with each negative-weight policy."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.errors import ConfigError, StageInputError
from analysis.prepare.weights import TrainWeightBalancer, apply_negative_weight_policy

# Hand-made table, all rows in train (split 0): two signal, three background events.
LABEL = np.array([1, 1, 0, 0, 0])
WEIGHT = np.array([2.0, -1.0, 3.0, -1.0, 1.0])
TRAIN = np.zeros(5, dtype=np.int64)


@pytest.mark.parametrize(("policy", "expected"), [
    # keep: W_sig = 1, W_bkg = 3, N = 5 -> scales 2.5/1 and 2.5/3
    ("keep", [5.0, -2.5, 2.5, -2.5 / 3, 2.5 / 3]),
    # abs: W_sig = 3, W_bkg = 5 -> scales 2.5/3 and 0.5
    ("abs", [5.0 / 3, 2.5 / 3, 1.5, 0.5, 0.5]),
    # zero: W_sig = 2, W_bkg = 4 -> scales 1.25 and 0.625
    ("zero", [2.5, 0.0, 1.875, 0.0, 0.625]),
])
def test_negative_weight_policies_on_a_hand_made_table(policy, expected):
    balancer = TrainWeightBalancer(negative_weights=policy).fit(TRAIN, LABEL, WEIGHT)
    train_weight = balancer.transform(TRAIN, LABEL, WEIGHT)
    np.testing.assert_allclose(train_weight, expected, rtol=1e-12)
    # equal class totals, mean 1
    assert train_weight[LABEL == 1].sum() == pytest.approx(train_weight[LABEL == 0].sum(), rel=1e-12)
    assert train_weight.mean() == pytest.approx(1.0, rel=1e-12)


def test_policy_function():
    np.testing.assert_array_equal(apply_negative_weight_policy(WEIGHT, policy="keep"), WEIGHT)
    np.testing.assert_array_equal(apply_negative_weight_policy(WEIGHT, policy="abs"), [2, 1, 3, 1, 1])
    np.testing.assert_array_equal(apply_negative_weight_policy(WEIGHT, policy="zero"), [2, 0, 3, 0, 1])
    with pytest.raises(ConfigError, match="policy 'drop' unknown: use one of keep, abs, zero"):
        apply_negative_weight_policy(WEIGHT, policy="drop")


def test_each_split_is_balanced_separately_and_background_is_scaled_not_dropped():
    rng = np.random.default_rng(0)
    n = 10_000
    split = rng.choice(3, n, p=[0.6, 0.2, 0.2])
    label = (rng.random(n) < 0.1).astype(np.int64)  # 10 % signal
    weight = np.where(label == 1, 0.01, 50.0) * rng.uniform(0.5, 1.5, n)  # yields differ 5000x
    balancer = TrainWeightBalancer().fit(split, label, weight)
    tw = balancer.transform(split, label, weight)
    assert np.all(tw > 0)  # every background event keeps a weight
    for s in range(3):
        rows = split == s
        sig, bkg = tw[rows & (label == 1)].sum(), tw[rows & (label == 0)].sum()
        assert sig == pytest.approx(bkg, rel=1e-12)
        assert tw[rows].mean() == pytest.approx(1.0, rel=1e-12)
    summary = balancer.summary()
    assert summary["val"]["signal"]["rows"] == int(((split == 1) & (label == 1)).sum())


def test_merge_of_chunks_equals_one_fit():
    rng = np.random.default_rng(1)
    split, label, weight = rng.integers(0, 3, 999), rng.integers(0, 2, 999), rng.normal(1, 2, 999)
    one = TrainWeightBalancer(negative_weights="abs").fit(split, label, weight)
    merged = TrainWeightBalancer(negative_weights="abs")
    for a in range(0, 999, 100):
        part = TrainWeightBalancer(negative_weights="abs").partial_fit(split[a:a + 100], label[a:a + 100],
                                                                       weight[a:a + 100])
        merged = merged.merge(part)
    np.testing.assert_allclose(merged.sum_weights_, one.sum_weights_, rtol=1e-12)
    np.testing.assert_array_equal(merged.counts_, one.counts_)
    np.testing.assert_allclose(merged.finalize(), one.finalize(), rtol=1e-12)


def test_errors_name_split_class_and_fix():
    # keep: the signal's net weight is negative -> cannot be balanced
    label, weight = np.array([1, 1, 0]), np.array([1.0, -3.0, 1.0])
    with pytest.raises(StageInputError, match=r"split 'train' has 2 signal events with total weight -2 "
                                              r"\(negative-weight policy 'keep'\).*'abs' or 'zero'"):
        TrainWeightBalancer().fit(np.zeros(3), label, weight).finalize()
    with pytest.raises(StageInputError, match=r"labels \[-1\] cannot be balanced"):
        TrainWeightBalancer().fit(np.zeros(2), np.array([0, -1]), np.ones(2))
    with pytest.raises(StageInputError, match="split 'val' has 0 signal events"):
        TrainWeightBalancer().fit(np.array([0, 0, 1]), np.array([0, 1, 0]), np.ones(3)).finalize()
