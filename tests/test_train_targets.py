"""Training stage: both models on multi-class and regression targets, from a real prepare of a synthetic skim."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.config import config_from_dict
from analysis.core.io import read_json
from analysis.prepare.runner import run_prepare
from analysis.train.predict import load_model
from analysis.train.runner import run_train
from tests._prepare_helpers import default_samples, read_split, write_skim

FEATURES = ["tau1_pt", "tau2_pt", "m_vis", "mjj", "jdeta", "jet1_btag", "met_pt"]
CLASSES = {"H": ["ggH", "VBF"], "ZTT": ["DY"], "TT": ["TT"]}


def _config(target: dict):
    samples = {s.name: {"process": s.process, "label": s.label,
                        **({"xsec_pb": s.xsec_pb} if s.xsec_pb else {"data_lumi_pb": 1000.0})}
               for s in default_samples()}
    return config_from_dict({
        "samples": samples, "target": target, "features": FEATURES,
        "prepare": {"bucket_rows": 4000, "file_rows": 2000, "row_group_rows": 500},
        "cluster": {"n_workers": 1, "memory_limit": "2GiB"},
        "train": {"device": "cpu", "xgboost": {"num_boost_round": 40, "eta": 0.2, "min_child_weight": 1.0},
                  "mlp": {"hidden": [32, 32], "max_epochs": 4, "patience": 2, "batch_size": 256,
                          "shuffle_buffer": 4000}}})


@pytest.fixture(scope="module")
def skim(tmp_path_factory):
    """The synthetic skim with two truth-like columns that are functions of the features."""
    root = write_skim(tmp_path_factory.mktemp("skim") / "skim", rows_per_file=1500)
    for part in root.glob("*/part-*.parquet"):
        table = pq.read_table(part)
        t1, t2 = (table.column(c).to_numpy().astype(np.float64) for c in ("tau1_pt", "tau2_pt"))
        table = table.append_column("gen_sum", pa.array((t1 + t2).astype(np.float32)))
        table = table.append_column("gen_ratio", pa.array((t1 / t2).astype(np.float32)))
        pq.write_table(table, part)
    return root


@pytest.fixture(scope="module")
def multiclass_dir(skim, tmp_path_factory):
    out = tmp_path_factory.mktemp("mc")
    config = _config({"kind": "multiclass", "classes": CLASSES})
    run_prepare(skim, out / "prep", config, progress=False)
    return out, config


@pytest.mark.parametrize("model", ["xgboost", "mlp"])
def test_multiclass_models_give_class_probabilities(multiclass_dir, model):
    out, config = multiclass_dir
    model_dir = run_train(out / "prep", out / model, config, model=model, progress=False)
    info = read_json(model_dir / "model_info.json", "info")
    assert info["target"]["classes"] == ["H", "ZTT", "TT"]
    history = read_json(model_dir / "history.json", "history")
    if model == "xgboost":
        assert info["params"]["objective"] == "multi:softprob" and "best_val_mlogloss" in info
        assert len(history["val"]["mlogloss"]) == info["rounds_run"]
    else:
        assert info["n_outputs"] == 3 and len(history["val_accuracy"]) == info["epochs_run"]
    test = read_split(out / "prep", "test")
    proba = load_model(model_dir).predict(test, standardised=True)
    assert proba.shape == (test.num_rows, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    cls = test.column("class").to_numpy()
    # Better than chance: the true class gets the highest mean probability.
    for c in range(3):
        assert proba[cls == c, c].mean() > proba[cls != c, c].mean()


@pytest.fixture(scope="module")
def regression_dir(skim, tmp_path_factory):
    out = tmp_path_factory.mktemp("reg")
    config = _config({"kind": "regression", "columns": ["gen_sum"], "transform": "log", "baseline": "m_vis",
                      "eta_column": "tau1_eta"})
    run_prepare(skim, out / "prep", config, progress=False)
    return out, config


@pytest.mark.parametrize("model", ["xgboost", "mlp"])
def test_regression_models_predict_in_the_units_of_the_column(regression_dir, model):
    out, config = regression_dir
    model_dir = run_train(out / "prep", out / model, config, model=model, progress=False)
    test = read_split(out / "prep", "test")
    prediction = load_model(model_dir).predict(test, standardised=True)
    truth = test.column("gen_sum").to_numpy()
    assert prediction.shape == truth.shape
    response = prediction / truth
    # gen_sum is a function of two inputs: the response is close to 1 for most events.
    assert np.median(response) == pytest.approx(1.0, abs=0.05)
    assert np.percentile(np.abs(response - 1), 68) < 0.15


def test_mlp_learns_two_regressed_columns_at_once(skim, tmp_path):
    config = _config({"kind": "regression", "columns": ["gen_sum", "gen_ratio"], "loss": "huber"})
    run_prepare(skim, tmp_path / "prep", config, progress=False)
    for model in ("mlp", "xgboost"):
        model_dir = run_train(tmp_path / "prep", tmp_path / model, config, model=model, progress=False)
        test = read_split(tmp_path / "prep", "test")
        prediction = load_model(model_dir).predict(test, standardised=True)
        assert prediction.shape == (test.num_rows, 2)
        for k, column in enumerate(("gen_sum", "gen_ratio")):
            truth = test.column(column).to_numpy()
            assert np.corrcoef(prediction[:, k], truth)[0, 1] > 0.8, (model, column)


def test_evaluate_multiclass_and_regression_models(multiclass_dir, regression_dir, tmp_path):
    from analysis.evaluate.runner import run_evaluate

    out, config = multiclass_dir
    models = [out / m for m in ("xgboost", "mlp") if (out / m / "model_info.json").is_file()]
    if not models:  # run alone: train one here
        models = [run_train(out / "prep", out / "xgboost", config, model="xgboost", progress=False)]
    report = run_evaluate(models, out / "prep", tmp_path / "eval_mc", config, progress=False)
    metrics = read_json(tmp_path / "eval_mc" / "metrics.json", "metrics")
    assert metrics["target"]["kind"] == "multiclass"
    for entry in metrics["models"].values():
        mc = entry["multiclass"]
        assert set(mc["ovr_auc"]) == {"H", "ZTT", "TT"} and 0.5 < mc["macro_auc"] <= 1.0
        np.testing.assert_allclose([sum(row) for row in mc["confusion"]["normalised"]], 1.0, rtol=1e-9)
    page = report.read_text()
    assert "confusion matrix" in page and "AUC TT vs rest" in page

    out, reg = regression_dir
    model = out / "xgboost"
    if not (model / "model_info.json").is_file():
        model = run_train(out / "prep", model, reg, model="xgboost", progress=False)
    report = run_evaluate([model], out / "prep", tmp_path / "eval_reg", reg, progress=False)
    metrics = read_json(tmp_path / "eval_reg" / "metrics.json", "metrics")
    r = metrics["models"]["xgboost"]["regression"]["gen_sum"]
    assert r["model"]["median"] == pytest.approx(1.0, abs=0.05)
    # gen_sum = tau1_pt + tau2_pt is learnt from its inputs; m_vis only loosely follows it.
    assert r["model"]["resolution"] < r["baseline"]["resolution"] and r["improvement"] > 0.2
    assert len(r["model"]["vs_eta"]["median"]) > 1
    assert "Regression performance" in report.read_text()
