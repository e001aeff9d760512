"""Evaluation stage on the real chain: a small generated default sample -> skim -> prepare ->
XGBoost and MLP -> `hepprep evaluate`. Slow (dask clusters for prepare and training), so it
is marked `slow`; the toy-directory tests in test_evaluate.py cover the same checks in CI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _eval_helpers import assert_report_embeds_every_plot

from analysis.cli import main
from analysis.config import DEFAULT_FEATURES, config_from_dict
from analysis.train.predict import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from analysis.generate.runner import generate_samples
    from analysis.prepare.runner import run_prepare
    from analysis.skim.runner import run_skim
    from analysis.train.runner import run_train

    root = tmp_path_factory.mktemp("default_sample")
    cfg = config_from_dict({"generate": {"events": 20_000, "files_per_sample": 1},
                            "skim": {"executor": "iterative"}, "cluster": {"n_workers": 1},
                            "train": {"xgboost": {"num_boost_round": 80}, "mlp": {"max_epochs": 3}}})
    fileset = generate_samples(root / "samples", cfg, progress=False)
    run_skim(fileset, root / "skim", cfg, progress=False)
    run_prepare(root / "skim", root / "prepared", cfg, progress=False)
    models = [run_train(root / "prepared", root / "models" / kind, cfg, model=kind, device="cpu",
                        progress=False) for kind in ("xgboost", "mlp")]
    toml = root / "eval.toml"
    toml.write_text("[evaluate]\ndpi = 40\nshap_rows = 1000\n")
    # The DESIGN.md form `hepprep evaluate MODELDIR PREPDIR --out DIR`, with two models.
    main(["evaluate", *map(str, models), str(root / "prepared"), "--out", str(root / "eval"),
          "--config", str(toml), "--quiet"])
    return {"root": root, "models": models, "out": root / "eval",
            "metrics": json.loads((root / "eval" / "metrics.json").read_text())}


def test_every_metric_and_plot_of_the_default_sample(chain):
    m, out = chain["metrics"], chain["out"]
    assert set(m["models"]) == {"xgboost", "mlp"}
    assert m["data_events"] > 0  # the generated sample has pseudo-data
    for name, model in m["models"].items():
        assert 0.6 < model["roc_auc"] < 0.99, name
        assert set(model["signal_efficiency"]) == {"0.01", "0.1"}
        assert model["ams"]["ams"] > 0 and model["ams"]["s"] > 0
        assert {0 <= model["ks"][c]["pvalue"] <= 1 for c in ("signal", "background")} == {True}
    assert set(m["models"]["xgboost"]["importance"]["mean_abs_shap"]) == set(DEFAULT_FEATURES)
    expected = {"plots/roc.png", "plots/ams.png", "plots/cutflow.png", "plots/correlation_signal.png",
                "plots/correlation_background.png", "plots/scores_xgboost.png", "plots/scores_mlp.png",
                "plots/importance_xgboost.png"} | {f"plots/feature_{f}.png" for f in DEFAULT_FEATURES}
    assert set(m["plots"]) == expected
    assert {str(p.relative_to(out)) for p in (out / "plots").iterdir()} == expected
    assert_report_embeds_every_plot(out, m)
    report = (out / "report.html").read_text()
    for cut in ("two_good_taus", "tau_pair", "good_jets"):  # the skim's own cutflow
        assert cut in report


def test_default_sample_yields_match_a_hand_computation(chain):
    prep = chain["root"] / "prepared"
    ams = chain["metrics"]["models"]["xgboost"]["ams"]
    frames = {s: pd.read_parquet(prep / s) for s in ("train", "val", "test")}
    fraction = {label: frames["test"].loc[frames["test"]["label"] == label, "weight"].sum()
                / sum(f.loc[f["label"] == label, "weight"].sum() for f in frames.values()) for label in (0, 1)}
    test = frames["test"]
    above = load_model(chain["models"][0]).predict(test, standardised=True) >= ams["best_cut"]
    s = test.loc[above & (test["label"] == 1), "weight"].sum() / fraction[1]
    b = test.loc[above & (test["label"] == 0), "weight"].sum() / fraction[0]
    assert ams["s"] == pytest.approx(s) and ams["b"] == pytest.approx(b)
    assert ams["ams"] == pytest.approx(np.sqrt(2 * ((s + b + 10) * np.log(1 + s / (b + 10)) - s)))
