"""Evaluation stage: `run_evaluate` / `hepprep evaluate` end to end on a toy prepared directory.

Two real XGBoost models are evaluated once per module (plots at a low dpi to stay fast);
the tests check every key of metrics.json, every plot file, the report's HTML, the yields
against a hand computation from the Parquet files, and the one-line errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _eval_helpers import (TOY_FEATURES, assert_report_embeds_every_plot, toy_config, write_prepared,
                           write_xgboost_model)
from _train_helpers import write_prepared_manifest

from analysis.cli import main
from analysis.config import config_from_dict
from analysis.errors import StageInputError
from analysis.evaluate.runner import run_evaluate
from analysis.train.predict import load_model
from analysis.train.runner import run_train

FAST = {"evaluate": {"dpi": 30, "n_bins": 12, "shap_rows": 300}}


def _config(**extra):
    cfg = toy_config()
    return cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update=dict(FAST["evaluate"], **extra))})


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    prep = write_prepared(root / "prepared", skim_dir=root / "skim")
    deep = write_xgboost_model(root / "models" / "xgboost", prep, rounds=30)
    stump = write_xgboost_model(root / "models" / "xgb_short", prep, rounds=3)
    # a network from the training stage itself: a model without trees (no importance plot)
    mlp_config = config_from_dict({"features": TOY_FEATURES,
                                   "train": {"mlp": {"max_epochs": 3, "hidden": [16, 16]}}})
    mlp = run_train(prep, root / "models" / "mlp", mlp_config, model="mlp", device="cpu", progress=False)
    report = run_evaluate([deep, stump, mlp], prep, root / "eval", _config(), progress=False)
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    return {"root": root, "prep": prep, "models": [deep, stump, mlp], "report": report,
            "out": root / "eval", "metrics": metrics}


def test_metrics_json_has_every_key(evaluated):
    m = evaluated["metrics"]
    assert set(m) == {"prep_dir", "test_fraction", "test_events", "test_yield", "data_events",
                      "negative_weights", "models", "plots", "warnings", "provenance"}
    assert m["warnings"] == []
    assert set(m["models"]) == {"xgboost", "xgb_short", "mlp"}
    assert set(m["test_fraction"]) == {"signal", "background", "nominal"}
    assert m["test_fraction"]["nominal"] == 0.2
    assert 0.1 < m["test_fraction"]["signal"] < 0.3 and 0.1 < m["test_fraction"]["background"] < 0.3
    assert m["data_events"] > 1000  # pseudo-data from <prep>/data was histogrammed
    for name, model in m["models"].items():
        trees = name != "mlp"
        assert set(model) == {"model_dir", "kind", "roc_auc", "signal_efficiency", "ams", "ams_val_cut", "ks",
                              "trained_on_this_prepared"} | ({"importance"} if trees else set())
        assert model["trained_on_this_prepared"] is True
        assert model["kind"] == ("xgboost" if trees else "mlp")
        assert 0.65 < model["roc_auc"] < 1.0, name
        assert set(model["signal_efficiency"]) == {"0.01", "0.1"}
        assert 0 < model["signal_efficiency"]["0.01"] <= model["signal_efficiency"]["0.1"] <= 1
        assert set(model["ams"]) == {"best_cut", "ams", "s", "b", "b_reg", "yield_scale_signal",
                                     "yield_scale_background"}
        assert model["ams"]["b_reg"] == 10.0 and model["ams"]["ams"] > 0
        assert set(model["ams_val_cut"]) == {"cut", "ams", "s", "b", "ams_on_val"}
        assert model["ams_val_cut"]["ams"] <= model["ams"]["ams"]  # the test-best cut is the maximum
        for cls in ("signal", "background"):
            assert set(model["ks"][cls]) == {"statistic", "pvalue", "n_eff_train", "n_eff_test"}
            assert 0 <= model["ks"][cls]["pvalue"] <= 1
        if trees:
            assert set(model["importance"]["mean_abs_shap"]) == set(TOY_FEATURES)
            assert set(model["importance"]["total_gain"]) <= set(TOY_FEATURES)
    # the deeper model separates better than three trees
    assert m["models"]["xgboost"]["roc_auc"] > m["models"]["xgb_short"]["roc_auc"]


def test_every_plot_file_is_written_and_listed(evaluated):
    out, m = evaluated["out"], evaluated["metrics"]
    expected = {"plots/roc.png", "plots/ams.png", "plots/cutflow.png",
                "plots/correlation_signal.png", "plots/correlation_background.png",
                "plots/scores_xgboost.png", "plots/scores_xgb_short.png", "plots/scores_mlp.png",
                "plots/importance_xgboost.png", "plots/importance_xgb_short.png"}
    expected |= {f"plots/feature_{f}.png" for f in TOY_FEATURES}
    assert set(m["plots"]) == expected
    assert {str(p.relative_to(out)) for p in (out / "plots").iterdir()} == expected
    for rel in expected:
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", rel


def _parquet_sum(folder: Path, label: int) -> float:
    frame = pd.read_parquet(folder, columns=["label", "weight"])
    return float(frame.loc[frame["label"] == label, "weight"].sum())


def test_best_cut_yields_equal_a_hand_computation_from_the_parquet_files(evaluated):
    prep, m = evaluated["prep"], evaluated["metrics"]
    ams = m["models"]["xgboost"]["ams"]
    # test fraction per class = Σweight(test) / Σweight(train + val + test)
    f_sig = _parquet_sum(prep / "test", 1) / sum(_parquet_sum(prep / s, 1) for s in ("train", "val", "test"))
    f_bkg = _parquet_sum(prep / "test", 0) / sum(_parquet_sum(prep / s, 0) for s in ("train", "val", "test"))
    assert m["test_fraction"]["signal"] == pytest.approx(f_sig)
    assert ams["yield_scale_background"] == pytest.approx(1 / f_bkg)
    test = pd.read_parquet(prep / "test")
    scores = load_model(evaluated["models"][0]).predict(test, standardised=True)
    above = scores >= ams["best_cut"]
    s = test.loc[above & (test["label"] == 1), "weight"].sum() / f_sig
    b = test.loc[above & (test["label"] == 0), "weight"].sum() / f_bkg
    assert ams["s"] == pytest.approx(s) and ams["b"] == pytest.approx(b)
    assert ams["ams"] == pytest.approx(np.sqrt(2 * ((s + b + 10) * np.log(1 + s / (b + 10)) - s)))

    # The cut chosen on the validation split: scan 200 cuts in [0, 1) on val, yields scaled by
    # the val fractions; then s and b of the test split above that cut.
    def ams_of(s, b):
        return np.sqrt(2 * ((s + b + 10) * np.log(1 + s / (b + 10)) - s))

    val = pd.read_parquet(prep / "val")
    v_scores = load_model(evaluated["models"][0]).predict(val, standardised=True)
    v_sig = _parquet_sum(prep / "val", 1) / sum(_parquet_sum(prep / s, 1) for s in ("train", "val", "test"))
    v_bkg = _parquet_sum(prep / "val", 0) / sum(_parquet_sum(prep / s, 0) for s in ("train", "val", "test"))
    cuts = np.arange(200) / 200
    val_ams = [ams_of(val.loc[(v_scores >= c) & (val["label"] == 1), "weight"].sum() / v_sig,
                      val.loc[(v_scores >= c) & (val["label"] == 0), "weight"].sum() / v_bkg) for c in cuts]
    cut = cuts[int(np.argmax(val_ams))]
    at_val = m["models"]["xgboost"]["ams_val_cut"]
    assert at_val["cut"] == pytest.approx(cut) and at_val["ams_on_val"] == pytest.approx(max(val_ams))
    s_v = test.loc[(scores >= cut) & (test["label"] == 1), "weight"].sum() / f_sig
    b_v = test.loc[(scores >= cut) & (test["label"] == 0), "weight"].sum() / f_bkg
    assert at_val["s"] == pytest.approx(s_v) and at_val["b"] == pytest.approx(b_v)
    assert at_val["ams"] == pytest.approx(ams_of(s_v, b_v))


def test_report_is_balanced_html_with_every_plot_embedded(evaluated):
    assert_report_embeds_every_plot(evaluated["out"], evaluated["metrics"])


def test_report_has_metrics_cutflow_configuration_and_provenance(evaluated):
    text = evaluated["report"].read_text()
    auc = evaluated["metrics"]["models"]["xgboost"]["roc_auc"]
    assert f"{auc:.4f}" in text
    assert "two_good_taus" in text and "GluGluToHToTauTau" in text  # cutflow table
    assert "[evaluate]" in text and "b_reg = 10.0" in text  # the configuration as TOML
    assert "split seed (prepared stats.json)" in text and "xgboost seed" in text
    assert re.search(r"git commit</td><td>[0-9a-f]{40}", text)
    for package in ("numpy", "xgboost", "mplhep", "scikit-learn"):
        assert f"<td>{package}</td>" in text


def test_model_with_other_features_is_a_one_line_error(evaluated, tmp_path):
    other = write_prepared(tmp_path / "prep_other", features=TOY_FEATURES[:5], with_data=False)
    model = evaluated["models"][0]
    with pytest.raises(StageInputError) as err:
        run_evaluate([model], other, tmp_path / "out", toy_config(), progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"model {model} was trained on 6 features but prepared directory {other} has 5 "
                       "(missing from the prepared directory: mjj); evaluate the model on the prepared "
                       "directory it was trained on, or re-train it on this one")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_cli_reports_feature_mismatch_on_one_line(evaluated, tmp_path, capsys):
    other = write_prepared(tmp_path / "prep_fewer", features=TOY_FEATURES[:5], with_data=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(evaluated["models"][0]), str(other), "--out", str(tmp_path / "o"), "--quiet"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("hepprep: error: model ") and "missing from the prepared directory: mjj" in err


def test_cli_rerun_of_one_model_gives_identical_metrics_and_plots(evaluated, tmp_path, capsys):
    """Same inputs, same numbers and bytes; a model's metrics do not depend on the others."""
    cfg = tmp_path / "fast.toml"
    cfg.write_text(f"features = {json.dumps(TOY_FEATURES)}\n[prepare]\nsplit = [0.6, 0.2, 0.2]\nseed = 11\n"
                   "[evaluate]\n" + "".join(f"{k} = {v}\n" for k, v in FAST["evaluate"].items()))
    main(["evaluate", str(evaluated["models"][1]), str(evaluated["prep"]), "--out", str(tmp_path / "e"),
          "--config", str(cfg), "--quiet"])
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'e' / 'report.html'}"
    again = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert list(again["models"]) == ["xgb_short"]
    assert again["models"]["xgb_short"] == evaluated["metrics"]["models"]["xgb_short"]
    for rel in ("plots/feature_m_vis.png", "plots/correlation_signal.png", "plots/cutflow.png"):
        assert (tmp_path / "e" / rel).read_bytes() == (evaluated["out"] / rel).read_bytes(), rel


def test_cli_needs_a_model_and_a_prepared_dir(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "got 1 path; give MODELDIR [MODELDIR ...] PREPDIR" in capsys.readouterr().err


def test_missing_inputs_name_the_folder_and_the_fix(evaluated, tmp_path):
    with pytest.raises(StageInputError, match=r"nowhere: no such prepared directory; run `hepprep prepare"):
        run_evaluate(evaluated["models"], tmp_path / "nowhere", tmp_path / "o", toy_config(), progress=False)
    with pytest.raises(StageInputError, match=r"no model_info.json \(training did not finish\)"):
        run_evaluate([tmp_path], evaluated["prep"], tmp_path / "o", toy_config(), progress=False)
    empty = tmp_path / "prep_empty"
    empty.mkdir()
    (empty / "stats.json").write_text(json.dumps({"feature_order": ["a"], "features": {}}))
    with pytest.raises(StageInputError, match=r"prep_empty/manifest.json: no such file \(the prepare manifest\)"):
        run_evaluate(evaluated["models"], empty, tmp_path / "o", toy_config(), progress=False)
    write_prepared_manifest(empty)  # a preparation that lists no test file
    with pytest.raises(StageInputError, match=r"prep_empty/test: no test split to evaluate on"):
        run_evaluate(evaluated["models"], empty, tmp_path / "o", toy_config(), progress=False)
