"""Evaluation stage: the metric functions against answers worked out by hand and against scikit-learn/scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from analysis.evaluate.metrics import (ams, ams_scan, signal_efficiency_at, weighted_ks_2samp, weighted_roc,
                                       weighted_roc_auc)


# AMS = sqrt(2((s + b + b_reg) ln(1 + s/(b + b_reg)) - s)), worked out by hand:
#  s=10, b=90,  b_reg=10: b+b_reg=100; 110*ln(1.1) = 110*0.0953102 = 10.484120; -10 = 0.484120;
#                         *2 = 0.968240; sqrt = 0.983992
#  s=5,  b=0,   b_reg=10: 15*ln(1.5) = 15*0.4054651 = 6.081977; -5 = 1.081977; *2 = 2.163953;
#                         sqrt = 1.471038
#  s=3,  b=8,   b_reg=10: 21*ln(7/6) = 21*0.1541507 = 3.237164; -3 = 0.237164; *2 = 0.474329;
#                         sqrt = 0.688715
#  s=10, b=100, b_reg=0 : 110*ln(1.1) as in the first row -> 0.983992 (b_reg only enters via b+b_reg)
#  s=0, any b: (b+b_reg)*ln(1) - 0 = 0 -> 0
#  s=1, b=9990: s << b+b_reg = 10000, so AMS ~ s/sqrt(b+b_reg) = 1/100 = 0.01
@pytest.mark.parametrize(("s", "b", "b_reg", "expected", "tol"), [
    (10.0, 90.0, 10.0, 0.983992, 1e-6),
    (5.0, 0.0, 10.0, 1.471038, 1e-6),
    (3.0, 8.0, 10.0, 0.688715, 1e-6),
    (10.0, 100.0, 0.0, 0.983992, 1e-6),
    (0.0, 50.0, 10.0, 0.0, 0.0),
    (1.0, 9990.0, 10.0, 0.01, 1e-5),
])
def test_ams_matches_hand_values(s, b, b_reg, expected, tol):
    assert ams(s, b, b_reg=b_reg) == pytest.approx(expected, abs=tol)


def test_ams_is_vectorised_and_default_b_reg_is_10():
    out = ams(np.array([10.0, 5.0]), np.array([90.0, 0.0]))
    np.testing.assert_allclose(out, [0.983992, 1.471038], atol=1e-6)


def test_ams_rejects_negative_total_background_with_the_fix():
    with pytest.raises(ValueError, match=r"b \+ b_reg must be > 0, got b = -20.0 with b_reg = 10.*larger b_reg"):
        ams(1.0, -20.0)


def test_ams_scan_scales_test_yields_to_full_luminosity():
    # Test split = 25 % of all events, so each yield is multiplied by 1/0.25 = 4.
    scores = [0.9, 0.7, 0.3, 0.8, 0.2]
    labels = [1, 1, 1, 0, 0]
    weights = [0.5, 0.25, 1.0, 2.0, 4.0]
    scan = ams_scan(scores, labels, weights, test_fraction=0.25, cuts=[0.0, 0.5, 0.8, 0.95])
    # cut 0.0 : s = (0.5 + 0.25 + 1.0) * 4 = 7, b = (2 + 4) * 4 = 24
    # cut 0.5 : s = (0.5 + 0.25) * 4 = 3,       b = 2 * 4 = 8      -> AMS(3, 8) = 0.688715
    # cut 0.8 : score >= cut is selected: s = 0.5 * 4 = 2, b = 2 * 4 = 8 (the 0.8 background stays)
    # cut 0.95: nothing selected
    np.testing.assert_allclose(scan.s, [7.0, 3.0, 2.0, 0.0])
    np.testing.assert_allclose(scan.b, [24.0, 8.0, 8.0, 0.0])
    assert scan.yield_scale == (4.0, 4.0)
    assert scan.ams[1] == pytest.approx(0.688715, abs=1e-6)
    # AMS(7, 24) = sqrt(2(41 ln(1 + 7/34) - 7)) = sqrt(2(41*0.187212 - 7)) = sqrt(1.351368) = 1.162484
    assert scan.ams[0] == pytest.approx(1.162484, abs=1e-5)
    assert scan.best_cut == 0.0 and scan.best_s == 7.0 and scan.best_b == 24.0
    assert scan.summary()["ams"] == pytest.approx(1.162484, abs=1e-5)


def test_ams_scan_scales_each_class_by_its_own_fraction():
    # signal: 50 % of its weight in the test split -> x2; background: 20 % -> x5
    scan = ams_scan([0.9, 0.8, 0.1], [1, 0, 0], [1.5, 2.0, 3.0], test_fraction=(0.5, 0.2), cuts=[0.5])
    # s = 1.5 * 2 = 3 ; b = 2.0 * 5 = 10 (the 0.1 background is below the cut)
    np.testing.assert_allclose(scan.s, [3.0])
    np.testing.assert_allclose(scan.b, [10.0])
    assert scan.summary()["yield_scale_background"] == 5.0


def test_ams_scan_default_grid_and_bad_fraction():
    scan = ams_scan([0.1, 0.9], [0, 1], [1.0, 1.0], n_cuts=4)
    np.testing.assert_allclose(scan.cuts, [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(scan.s, [1, 1, 1, 1])
    np.testing.assert_allclose(scan.b, [1, 0, 0, 0])
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\], got 0"):
        ams_scan([0.1], [1], [1.0], test_fraction=0)


def test_ams_scan_rejects_real_data_labels():
    with pytest.raises(ValueError, match=r"got \[-1\]; real data \(label -1\) has no truth"):
        ams_scan([0.1, 0.2], [1, -1], [1.0, 1.0])


def test_weighted_auc_by_hand():
    # Signal: 0.8 (w=2), 0.4 (w=1); background: 0.6 (w=1), 0.2 (w=3).
    # AUC = sum over (sig, bkg) pairs of w_s*w_b*[s > b] / (sum w_s * sum w_b):
    # (0.8,0.6): 2, (0.8,0.2): 6, (0.4,0.6): 0, (0.4,0.2): 3  -> 11 / (3*4) = 0.916667
    auc = weighted_roc_auc([0.8, 0.4, 0.6, 0.2], [1, 1, 0, 0], [2.0, 1.0, 1.0, 3.0])
    assert auc == pytest.approx(11 / 12)


def test_weighted_auc_matches_scikit_learn_and_differs_from_unweighted():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 2000)
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1)
    weights = rng.exponential(1.0, 2000) * np.where(labels == 1, 0.01, 5.0)
    auc = weighted_roc_auc(scores, labels, weights)
    assert auc == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights), rel=1e-12)
    # weights correlated with the score change the answer: the weights are really used
    tilted = weights * (1 + 3 * scores * (labels == 0))
    assert weighted_roc_auc(scores, labels, tilted) != pytest.approx(auc, abs=1e-3)


def test_negative_weight_policies():
    scores = [0.9, 0.8, 0.7, 0.2, 0.1]
    labels = [1, 1, 0, 0, 0]
    weights = [1.0, 1.0, -1.0, 2.0, 2.0]
    # abs: background weights 1, 2, 2 -> signal always above background -> 1.0
    assert weighted_roc_auc(scores, labels, weights) == pytest.approx(1.0)
    # zero: the -1 event is dropped, still 1.0; sklearn on the clipped weights agrees
    assert weighted_roc_auc(scores, labels, weights, negative_weights="zero") == pytest.approx(
        roc_auc_score(labels, scores, sample_weight=[1, 1, 0, 2, 2]))
    # keep: background efficiency goes 0 -> -1/3 -> ... : not a ROC curve
    with pytest.raises(ValueError, match="not monotonic with signed weights.*'abs' or 'zero'"):
        weighted_roc(scores, labels, weights, negative_weights="keep")
    with pytest.raises(ValueError, match="negative_weights must be 'abs', 'zero' or 'keep', got 'drop'"):
        weighted_roc_auc(scores, labels, weights, negative_weights="drop")


def test_signal_efficiency_at_background_efficiency_by_hand():
    # Signal: 0.9 (w=2), 0.5 (w=2) -> S = 4; background: 0.5 (w=1), 0.1 (w=3) -> B = 4.
    # ROC points (bkg eff, sig eff): (0,0) ; cut 0.9: (0, 0.5) ; cut 0.5: (0.25, 1.0) ; cut 0.1: (1, 1)
    # Linear between (0, 0.5) and (0.25, 1.0): eff_s = 0.5 + 0.5 * eff_b / 0.25
    #   eff_b = 0.01 -> 0.52 ; eff_b = 0.10 -> 0.70 ; eff_b = 0.25 -> 1.0 (exact point)
    out = signal_efficiency_at([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0], [2.0, 2.0, 1.0, 3.0],
                               background_efficiency=(0.01, 0.1, 0.25))
    assert out == pytest.approx({0.01: 0.52, 0.1: 0.70, 0.25: 1.0})


def test_signal_efficiency_takes_loosest_cut_at_a_repeated_background_efficiency():
    # Background 0.9 (w=1), 0.1 (w=1); signal 0.95 (w=1), 0.5 (w=3).
    # ROC: (0,0), (0, 0.25) at 0.95, (0.5, 0.25) at 0.9, (0.5, 1.0) at 0.5, (1, 1) at 0.1.
    # At eff_b = 0.5 the loosest cut (0.5) keeps all signal: 1.0, not 0.25.
    out = signal_efficiency_at([0.95, 0.5, 0.9, 0.1], [1, 1, 0, 0], [1.0, 3.0, 1.0, 1.0],
                               background_efficiency=(0.5, 0.1))
    assert out[0.5] == pytest.approx(1.0)
    assert out[0.1] == pytest.approx(0.25)


def test_weighted_ks_statistic_by_hand():
    # a = [1, 2] with weights [1, 3]; b = [1.5] with weight 1.
    # F_a: 0.25 on [1, 2), 1 from 2 on; F_b: 1 from 1.5 on.
    # |F_a - F_b| = 0.25 on [1, 1.5), 0.75 on [1.5, 2), 0 from 2 on -> D = 0.75
    # n_eff(a) = (1 + 3)^2 / (1 + 9) = 1.6
    res = weighted_ks_2samp([1.0, 2.0], [1.5], weights_a=[1.0, 3.0])
    assert res.statistic == pytest.approx(0.75)
    assert res.n_eff_a == pytest.approx(1.6)
    assert res.n_eff_b == pytest.approx(1.0)


def test_weighted_ks_with_unit_weights_equals_scipy_asymptotic():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 700), rng.normal(0.15, 1, 400)
    ref = stats.ks_2samp(a, b, method="asymp")
    res = weighted_ks_2samp(a, b)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-9)


def test_weighted_ks_detects_a_shift_and_accepts_same_distribution():
    rng = np.random.default_rng(4)
    w = rng.exponential(1.0, 3000)
    same = weighted_ks_2samp(rng.uniform(0, 1, 3000), rng.uniform(0, 1, 3000), weights_a=w, weights_b=w)
    shifted = weighted_ks_2samp(rng.uniform(0, 1, 3000), rng.uniform(0.1, 1.1, 3000), weights_a=w, weights_b=w)
    assert same.pvalue > 0.01
    assert shifted.pvalue < 1e-6
    # Kish size of exponential weights is about n/2
    assert 0.35 * 3000 < same.n_eff_a < 0.65 * 3000


def test_weighted_ks_errors_name_the_problem():
    with pytest.raises(ValueError, match="2 values with 3 weights"):
        weighted_ks_2samp([1.0, 2.0], [1.0], weights_a=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="positive total weight"):
        weighted_ks_2samp([1.0], [1.0], weights_a=[0.0])


def test_mismatched_lengths_are_reported():
    with pytest.raises(ValueError, match="got lengths 2, 1, 2"):
        weighted_roc_auc([0.1, 0.2], [1], [1.0, 1.0])
    assert math.isfinite(weighted_roc_auc([0.1, 0.2], [0, 1], None))
