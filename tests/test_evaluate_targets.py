"""Evaluation stage: multi-class and regression metrics against answers worked out by hand, and their plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from analysis.evaluate import target_plots
from analysis.evaluate.multiclass import _confusion, multiclass_metrics, ovr_roc_curves
from analysis.evaluate.regression import regression_metrics, regression_metrics_columns

NAMES = ["ggH", "VBF", "DY"]

# Eight events: (true class, weight, probabilities) -> arg-max class
#  e0  0   1  (0.7, 0.2, 0.1) -> 0      e4  1   3  (0.2, 0.7, 0.1) -> 1
#  e1  0   1  (0.6, 0.3, 0.1) -> 0      e5  1   1  (0.1, 0.3, 0.6) -> 2
#  e2  0   1  (0.5, 0.4, 0.1) -> 0      e6  2   2  (0.1, 0.1, 0.8) -> 2
#  e3  0   1  (0.3, 0.6, 0.1) -> 1      e7  2  -2  (0.4, 0.1, 0.5) -> 2   (|w| = 2 for AUC/confusion)
TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2])
WEIGHT = np.array([1.0, 1.0, 1.0, 1.0, 3.0, 1.0, 2.0, -2.0])
PROBA = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.3, 0.6, 0.1],
                  [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.1, 0.1, 0.8], [0.4, 0.1, 0.5]])
# AUC_k = sum over (k event i, other event j) of |w_i||w_j| [s_i > s_j] (ties 1/2) / (W_k W_rest), W = 4 and 8:
#  ggH: 0.7, 0.6, 0.5 beat every other (max 0.4): 3 * 8 = 24; 0.3 beats 0.2 (3), 0.1 (1), 0.1 (2): 6
#       -> 30 / 32 = 0.9375
#  VBF: 0.7 (w 3) beats all: 24; 0.3 (w 1) beats 0.2 (1), ties 0.3 (1/2), beats 0.1, 0.1 (2 + 2): 5.5
#       -> 29.5 / 32 = 0.921875
#  DY:  0.8 (w 2) beats all: 16; 0.5 (w 2) beats the five 0.1 (1+1+1+1+3 = 7), not 0.6: 14
#       -> 30 / 32 = 0.9375
HAND_AUC = {"ggH": 0.9375, "VBF": 0.921875, "DY": 0.9375}


def test_perfect_classifier_has_auc_one_and_identity_confusion():
    true = np.array([0, 0, 1, 1, 2, 2])
    m = multiclass_metrics(true, np.eye(3)[true] * 0.8 + 0.2 / 3, None, NAMES)
    assert m["ovr_auc"] == {"ggH": 1.0, "VBF": 1.0, "DY": 1.0}
    assert m["macro_auc"] == 1.0
    assert m["confusion"]["normalised"] == np.eye(3).tolist()
    assert m["confusion"]["weighted"] == (2 * np.eye(3)).tolist()
    for fpr, tpr, auc in ovr_roc_curves(true, np.eye(3)[true], None, NAMES).values():
        assert auc == 1.0 and tpr[np.searchsorted(fpr, 0.0, side="right") - 1] == 1.0


def test_hand_worked_aucs_confusion_and_yields():
    m = multiclass_metrics(TRUE, PROBA, WEIGHT, NAMES)
    assert m["ovr_auc"] == pytest.approx(HAND_AUC)
    assert m["macro_auc"] == pytest.approx((0.9375 + 0.921875 + 0.9375) / 3)
    # |w| per (true, arg-max): ggH 3 -> ggH, 1 -> VBF; VBF 3 -> VBF, 1 -> DY; DY 2 + 2 -> DY
    assert m["confusion"]["weighted"] == [[3.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 4.0]]
    assert m["confusion"]["normalised"] == [[0.75, 0.25, 0.0], [0.0, 0.75, 0.25], [0.0, 0.0, 1.0]]
    np.testing.assert_allclose(np.sum(m["confusion"]["normalised"], axis=1), 1.0)
    # Yields are signed: the DY category gets VBF 1 and DY 2 - 2 = 0.
    assert m["yields"]["expected"] == {"ggH": {"ggH": 3.0, "VBF": 0.0, "DY": 0.0},
                                       "VBF": {"ggH": 1.0, "VBF": 3.0, "DY": 0.0},
                                       "DY": {"ggH": 0.0, "VBF": 1.0, "DY": 0.0}}
    assert m["yields"]["category_total"] == {"ggH": 3.0, "VBF": 4.0, "DY": 1.0}
    assert m["yields"]["events"]["DY"] == {"ggH": 0, "VBF": 1, "DY": 2}
    assert m["yields"]["total"] == pytest.approx(WEIGHT.sum()) == 8.0
    assert m["negative_weights"] == {"yields": "signed", "auc_confusion": "abs"}
    assert m["notes"] == []
    json.dumps(m, allow_nan=False)


def test_macro_auc_matches_scikit_learn_ovr_on_random_events():
    rng = np.random.default_rng(3)
    true = rng.integers(0, 3, 400)
    proba = rng.dirichlet((1, 1, 1), 400) + 0.5 * np.eye(3)[true]
    proba /= proba.sum(axis=1, keepdims=True)
    w = rng.uniform(-0.2, 2.0, 400)
    m = multiclass_metrics(true, proba, w, NAMES)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(true, proba, multi_class="ovr", average="macro",
                                                         sample_weight=np.abs(w)))
    yields = m["yields"]["category_total"]
    assert sum(yields.values()) == pytest.approx(w.sum())  # every event lands in one category


def test_auc_and_confusion_weight_is_separate_from_the_yield_weight():
    m = multiclass_metrics(TRUE, PROBA, None, NAMES, physics_weight=WEIGHT, test_fraction=[0.5, 0.25, 1.0])
    # unit weights: VBF has one event to VBF and one to DY
    assert m["confusion"]["normalised"][1] == [0.0, 0.5, 0.5]
    # physics weights divided by the test fraction of the true class (scale 2, 4, 1)
    assert m["yields"]["scale"] == {"ggH": 2.0, "VBF": 4.0, "DY": 1.0}
    assert m["yields"]["expected"]["VBF"] == {"ggH": 2.0, "VBF": 12.0, "DY": 0.0}
    assert m["yields"]["total"] == pytest.approx(2 * 4 + 4 * 4 + 1 * 0)


def test_a_class_without_events_has_a_null_row_and_no_auc():
    proba = np.hstack([PROBA * 0.9, np.full((len(PROBA), 1), 0.1)])
    m = multiclass_metrics(TRUE, proba, WEIGHT, NAMES + ["W"])
    assert m["confusion"]["normalised"][3] == [None, None, None, None]
    assert m["ovr_auc"]["W"] is None
    assert m["macro_auc"] == pytest.approx(np.mean(list(HAND_AUC.values())))
    assert any("'W' has total weight 0" in n for n in m["notes"]) and any("'W' or the rest" in n for n in m["notes"])
    json.dumps(m, allow_nan=False)  # null, not NaN


def test_multiclass_inputs_are_checked_with_the_fix():
    with pytest.raises(ValueError, match=r"shape \(n, 3\).*got shape \(8, 2\)"):
        multiclass_metrics(TRUE, PROBA[:, :2], WEIGHT, NAMES)
    with pytest.raises(ValueError, match=r"class indices 0..2 .* got \[-1\]; real data"):
        multiclass_metrics(np.r_[TRUE[:-1], -1], PROBA, WEIGHT, NAMES)
    # signed weights that make a fraction meaningless: the ROC check or the confusion check refuses them
    with pytest.raises(ValueError, match="with signed weights .*use negative_weights='abs' or 'zero'"):
        multiclass_metrics([0, 0, 1], np.eye(2)[[0, 1, 1]], [2.0, -1.0, 1.0], ["a", "b"], negative_weights="keep")
    with pytest.raises(ValueError, match=r"confusion matrix has fractions outside \[0, 1\] with signed weights"):
        _confusion(np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([2.0, -1.0, 1.0]), ["a", "b"], "keep", [])


# Five events at truth 100 with predictions 80, 90, 100, 110, 120: response 0.8 ... 1.2.
# Inverted-CDF quantiles of five unit weights: q16 -> cum >= 0.8: 0.8; median -> >= 2.5: 1.0; q84 -> >= 4.2: 1.2
# half-width 0.2, resolution 0.2; pulls (r - 1) / 0.2 = -1, -0.5, 0, 0.5, 1: mean 0, std sqrt(2.5 / 5)
TRUTH5 = np.full(5, 100.0)
PRED5 = np.array([80.0, 90.0, 100.0, 110.0, 120.0])


def test_hand_worked_response_resolution_bias_and_pulls():
    m = regression_metrics(PRED5, TRUTH5, None)
    model = m["model"]
    assert (model["q16"], model["median"], model["q84"]) == pytest.approx((0.8, 1.0, 1.2))
    assert model["resolution"] == pytest.approx(0.2)
    assert model["bias"] == pytest.approx(0.0) and model["relative_bias"] == pytest.approx(0.0)
    assert model["pull"] == pytest.approx({"mean": 0.0, "std": np.sqrt(0.5), "half_width": 0.2})
    assert (m["n_events"], m["n_used"], m["left_out"]["total"]) == (5, 5, 0)
    assert m["baseline"] is None and m["improvement"] is None
    json.dumps(m, allow_nan=False)


def test_weights_move_the_quantiles():
    # weight 4 on 110: cumulative 1, 2, 3, 7, 8 of 8 -> q16 (>= 1.28) 0.9, median (>= 4) 1.1, q84 (>= 6.72) 1.1
    m = regression_metrics(PRED5, TRUTH5, [1.0, 1.0, 1.0, 4.0, 1.0])["model"]
    assert (m["q16"], m["median"], m["q84"]) == pytest.approx((0.9, 1.1, 1.1))
    assert m["resolution"] == pytest.approx(0.1 / 1.1)
    assert m["bias"] == pytest.approx((-20 - 10 + 0 + 4 * 10 + 20) / 8)  # 3.75
    # negative weights count as |w| (a shape), unless "keep" is asked for, which cannot make a quantile
    assert regression_metrics(PRED5, TRUTH5, [1.0, 1.0, 1.0, -4.0, 1.0])["model"]["median"] == pytest.approx(1.1)
    with pytest.raises(ValueError, match="non-negative weights, got 1 negative.*'abs' or 'zero'"):
        regression_metrics(PRED5, TRUTH5, [1.0, 1.0, 1.0, -4.0, 1.0], negative_weights="keep")


def test_a_constant_scale_error_has_its_median_and_no_spread():
    truth = np.linspace(50.0, 200.0, 101)
    m = regression_metrics(truth * 1.1, truth, None)
    assert m["model"]["median"] == pytest.approx(1.1, abs=1e-12)
    assert m["model"]["resolution"] == pytest.approx(0.0, abs=1e-12)
    assert m["model"]["relative_bias"] == pytest.approx(0.1, abs=1e-12)
    assert m["model"]["bias"] == pytest.approx(0.1 * truth.mean())
    assert m["model"]["pull"]["mean"] is None and any("no spread" in n for n in m["notes"])


def test_gaussian_smearing_gives_its_sigma_as_resolution():
    rng = np.random.default_rng(7)
    truth = rng.uniform(50.0, 200.0, 100_000)
    sigma = 0.12
    m = regression_metrics(truth * rng.normal(1.0, sigma, truth.size), truth, None, bins_truth=4)["model"]
    # the 16-84 % half-width of a Gaussian is 0.9945 sigma (z = 0.9945 at 84 %)
    assert m["resolution"] == pytest.approx(0.9945 * sigma, rel=0.02)
    assert m["median"] == pytest.approx(1.0, abs=0.003)
    assert m["pull"]["mean"] == pytest.approx(0.0, abs=0.02)
    assert m["pull"]["std"] == pytest.approx(sigma / (0.9945 * sigma), rel=0.03)
    assert sum(m["vs_truth"]["n"]) == truth.size
    assert m["vs_truth"]["n"] == pytest.approx([truth.size / 4] * 4, abs=2)  # equal-weight bins
    np.testing.assert_allclose(m["vs_truth"]["resolution"], 0.9945 * sigma, rtol=0.04)


def test_baseline_is_divided_by_its_median_response():
    # m_vis-like baseline 40 ... 80 at truth 100: raw median response 0.6 (the scale), scaled response
    # 2/3, 5/6, 1, 7/6, 4/3: median 1, half-width (4/3 - 2/3) / 2 = 1/3, resolution 1/3 (as unscaled:
    # (0.8 - 0.4) / 2 / 0.6); improvement of the model (0.2) = 1 - 0.2 / (1/3) = 0.4
    m = regression_metrics(PRED5, TRUTH5, None, baseline=[40.0, 50.0, 60.0, 70.0, 80.0])
    base = m["baseline"]
    assert base["scale"] == pytest.approx(0.6)
    assert base["median"] == pytest.approx(1.0) and base["relative_bias"] == pytest.approx(0.0, abs=1e-12)
    assert base["resolution"] == pytest.approx(1 / 3)
    assert base["bias"] == pytest.approx(0.0, abs=1e-9)
    assert m["improvement"] == pytest.approx(0.4)


def test_non_finite_rows_are_left_out_and_counted():
    pred = np.r_[PRED5, np.nan, 100.0, 100.0, np.nan]
    truth = np.r_[TRUTH5, 100.0, np.inf, 0.0, np.nan]
    baseline = np.r_[40.0, 50.0, 60.0, 70.0, np.nan, 1.0, 1.0, 1.0, 1.0]
    m = regression_metrics(pred, truth, None, baseline=baseline)
    assert m["left_out"] == {"non_finite_pred": 2, "non_finite_truth": 2, "zero_truth": 1, "total": 4}
    assert m["n_used"] == 5
    assert m["model"] == regression_metrics(PRED5, TRUTH5, None)["model"]
    assert (m["baseline"]["n_used"], m["baseline"]["left_out"]) == (4, 1)  # and its own bad row


def test_response_in_bins_of_truth_and_eta():
    # truth 100: response 0.8 ... 1.2 (resolution 0.2); truth 200: 0.9 ... 1.1 (resolution 0.1)
    truth = np.r_[TRUTH5, np.full(5, 200.0)]
    pred = np.r_[PRED5, 200.0 * np.array([0.9, 0.95, 1.0, 1.05, 1.1])]
    eta = np.r_[np.full(5, -1.0), np.full(4, 1.0), np.nan]
    m = regression_metrics(pred, truth, None, eta=eta, bins_truth=[50.0, 150.0, 250.0, 300.0], bins_eta=[-2, 0, 2])
    vs = m["model"]["vs_truth"]
    assert vs["n"] == [5, 5, 0] and vs["left_out"] == 0
    assert vs["median"][:2] == pytest.approx([1.0, 1.0]) and vs["median"][2] is None
    assert vs["resolution"][:2] == pytest.approx([0.2, 0.1]) and vs["resolution"][2] is None
    assert m["model"]["vs_eta"]["n"] == [5, 4] and m["model"]["vs_eta"]["left_out"] == 1
    json.dumps(m, allow_nan=False)


def test_several_targets_are_described_column_by_column():
    pred = np.column_stack([PRED5, PRED5 / 2])
    truth = np.column_stack([TRUTH5, TRUTH5 / 4])
    out = regression_metrics_columns(pred, truth, None, ["m_H", "pt_H"], baseline={"m_H": PRED5 * 0.5})
    assert list(out) == ["m_H", "pt_H"]
    assert out["m_H"] == regression_metrics(PRED5, TRUTH5, None, baseline=PRED5 * 0.5)
    assert out["pt_H"]["model"]["median"] == pytest.approx(2.0) and out["pt_H"]["baseline"] is None
    with pytest.raises(ValueError, match=r"baseline for unknown target\(s\) \['m'\]; the targets are"):
        regression_metrics_columns(pred, truth, None, ["m_H", "pt_H"], baseline={"m": PRED5})


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_target_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(5)
    n = 300
    true = rng.integers(0, 3, n)
    proba = rng.dirichlet((1, 1, 1), n) + np.eye(3)[true]
    proba /= proba.sum(axis=1, keepdims=True)
    w = rng.uniform(0.5, 1.5, n)
    m = multiclass_metrics(true, proba, w, NAMES)
    truth = rng.uniform(60.0, 180.0, n)
    pred, m_vis = truth * rng.normal(1.0, 0.1, n), 0.6 * truth * rng.normal(1.0, 0.2, n)
    r = regression_metrics(pred, truth, w, eta=rng.uniform(-2.3, 2.3, n), baseline=m_vis, bins_truth=4, bins_eta=4)
    paths = [
        target_plots.plot_ovr_roc("xgb", ovr_roc_curves(true, proba, w, NAMES), tmp_path / "roc.png", dpi=30),
        target_plots.plot_confusion("xgb", m["confusion"]["normalised"], NAMES, tmp_path / "confusion.png", dpi=30),
        target_plots.plot_class_scores("xgb", true, proba, w, NAMES, tmp_path / "scores.png", bins=10, dpi=30),
        target_plots.plot_response("m_H", pred, truth, w, r, tmp_path / "response.png", baseline=m_vis, dpi=30),
        target_plots.plot_response_vs("m_H", r, tmp_path / "vs_truth.png", dpi=30),
        target_plots.plot_response_vs("m_H", r, tmp_path / "vs_eta.png", variable="eta", dpi=30),
        target_plots.plot_pulls("m_H", pred, truth, w, r, tmp_path / "pulls.png", baseline=m_vis, dpi=30),
    ]
    assert all(_is_png(p) for p in paths), paths
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp file left


def test_target_plots_refuse_what_the_metrics_lack(tmp_path):
    r = regression_metrics(PRED5, TRUTH5, None)
    with pytest.raises(ValueError, match=r"no vs_eta bins, only \['truth'\]; for 'eta' pass eta="):
        target_plots.plot_response_vs("m_H", r, tmp_path / "x.png", variable="eta")
    flat = regression_metrics(TRUTH5 * 1.1, TRUTH5, None)
    with pytest.raises(ValueError, match="pulls are undefined"):
        target_plots.plot_pulls("m_H", TRUTH5 * 1.1, TRUTH5, None, flat, tmp_path / "p.png")
