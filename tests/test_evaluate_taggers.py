"""Evaluation of jet taggers: rejection 1/eps_B at fixed eps_S against answers worked out by hand, and end to end.

The functions of `analysis.evaluate.taggers` on hand-built scores (perfect separation, identical
distributions, a weighted case with ties computed by hand, the uncertainty's unit-weight limit,
pt bins), then `hepprep evaluate` on a small jet-level prepared folder (`tests._jet_prepare_helpers`)
with an xgboost model on the jet features: metrics.json's ``tagger`` sections, the report's table
with the models side by side, the plots; a one-line error for an unknown class; and a jet-level
regression of ``jes_target`` binned in jet pt and eta.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import config_from_dict
from analysis.cli import main
from analysis.core.target import Target
from analysis.errors import ConfigError, StageInputError
from analysis.evaluate.inputs import open_prepared
from analysis.evaluate.jets import plan_jet_level
from analysis.evaluate.metrics import weighted_roc, weighted_roc_auc
from analysis.evaluate.taggers import (
    discriminant,
    pt_bin_edges,
    reference_efficiency,
    rejection_at,
    tagger_metrics,
    tagger_roc,
)
from analysis.prepare.runner import run_prepare
from analysis.train.runner import run_train
from tests._jet_prepare_helpers import CANDIDATE_COLUMNS, JET_CLASSES, jet_samples, write_jet_skim

# Six jets, (score, class, weight), with a signal and a background jet tied at 0.6:
#   S 0.9 w1 | B 0.8 w1 | S 0.7 w2 | S 0.6 w1, B 0.6 w2 | B 0.2 w1      W_S = 4, W_B = 4, Σw_B^2 = 6
# ROC points (tpr, fpr, Σ_pass w_B^2): (0, 0, 0) (.25, 0, 0) (.25, .25, 1) (.75, .25, 1) (1, .75, 5) (1, 1, 6)
# eps_S = 0.5:   between (.25, .25) and (.75, .25): eps_B = 0.25, 1/eps_B = 4, Σ_pass w^2 = 1;
#                Var = (.75^2 * 1 + .25^2 * 5) / 16 = 0.875 / 16, sigma(1/eps_B) = sqrt(0.875 / 16) / .25^2 = 4 sqrt(0.875)
# eps_S = 0.875: half way from (.75, .25, 1) to (1, .75, 5): eps_B = 0.5, 1/eps_B = 2, Σ_pass w^2 = 3;
#                Var = (.5^2 * 3 + .5^2 * 3) / 16 = 1.5 / 16, sigma = sqrt(1.5 / 16) / .25 = sqrt(1.5); passing eff. (2^2)/3
# eps_S = 0.2:   at fpr 0 (the 0.9 jet alone): no background passes, 1/eps_B infinite -> None
# AUC = Σ w_s w_b [s_s > s_b] (ties 1/2) / 16 = (1*4 + 2*3 + 1*(2/2 + 1)) / 16 = 0.75
SCORE = np.array([0.9, 0.8, 0.7, 0.6, 0.6, 0.2])
SIGNAL = np.array([True, False, True, True, False, False])
WEIGHT = np.array([1.0, 1.0, 2.0, 1.0, 2.0, 1.0])


def test_hand_worked_rejection_and_uncertainty_with_weights_and_ties():
    m = tagger_metrics(SCORE, SIGNAL, WEIGHT, efficiencies=[0.2, 0.5, 0.875])
    assert m["auc"] == pytest.approx(0.75)
    assert (m["sum_weight_signal"], m["sum_weight_background"]) == (4.0, 4.0)
    assert m["n_eff_background"] == pytest.approx(16 / 6)
    wp = m["working_points"]
    assert wp["0.5"]["background_efficiency"] == pytest.approx(0.25)
    assert wp["0.5"]["rejection"] == pytest.approx(4.0)
    assert wp["0.5"]["rejection_uncertainty"] == pytest.approx(4 * np.sqrt(0.875))
    assert wp["0.875"]["rejection"] == pytest.approx(2.0)
    assert wp["0.875"]["rejection_uncertainty"] == pytest.approx(np.sqrt(1.5))
    assert wp["0.875"]["background_passing_effective"] == pytest.approx(4 / 3)
    assert wp["0.2"]["background_efficiency"] == 0.0
    assert wp["0.2"]["rejection"] is None and wp["0.2"]["rejection_uncertainty"] is None
    assert m["notes"] == ["all jets: no background jet passes at eps_S = 0.2, 1/eps_B is null (infinite)"]
    json.dumps(m, allow_nan=False)


def test_perfect_separation_has_no_finite_rejection_and_says_why():
    score = np.r_[np.linspace(0.6, 1.0, 20), np.linspace(0.0, 0.5, 30)]
    m = tagger_metrics(score, np.arange(50) < 20, None)
    assert m["auc"] == 1.0
    for e in ("0.3", "0.5", "0.7"):
        assert m["working_points"][e]["background_efficiency"] == 0.0
        assert m["working_points"][e]["rejection"] is None
    assert len(m["notes"]) == 3 and all("1/eps_B is null (infinite)" in n for n in m["notes"])
    note = rejection_at(tagger_roc(score, np.arange(50) < 20, np.ones(50)), 0.5)["note"]
    assert "no background jet passes at eps_S = 0.5" in note and "30 effective background jets" in note
    json.dumps(m, allow_nan=False)  # null, never inf


@pytest.mark.parametrize("n_values", [7, 10])
def test_identical_distributions_reject_one_over_the_signal_efficiency(n_values):
    rng = np.random.default_rng(n_values)
    values, w = rng.uniform(size=n_values), rng.uniform(0.5, 2.0, n_values)
    # The same scores with the same weights in both classes: eps_B = eps_S at every cut, and in between
    score, is_signal = np.r_[values, values], np.r_[np.ones(n_values, bool), np.zeros(n_values, bool)]
    m = tagger_metrics(score, is_signal, np.r_[w, w] * np.r_[np.ones(n_values), np.full(n_values, 3.0)])
    assert m["auc"] == pytest.approx(0.5)
    for e in (0.3, 0.5, 0.7):
        assert m["working_points"][f"{e:g}"]["rejection"] == pytest.approx(1 / e)


def test_the_roc_is_the_weighted_roc_of_the_metrics_module():
    rng = np.random.default_rng(5)
    score = np.round(rng.uniform(size=300), 2)  # ties across the classes
    is_signal, w = rng.uniform(size=300) < 0.4, rng.uniform(0.1, 3.0, 300)
    roc = tagger_roc(score, is_signal, w)
    fpr, tpr, _ = weighted_roc(score, is_signal.astype(np.int8), w)
    np.testing.assert_allclose(roc.fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(roc.tpr, tpr, atol=1e-12)
    assert tagger_metrics(score, is_signal, w)["auc"] == pytest.approx(weighted_roc_auc(score, is_signal, w))


def test_unit_weights_give_the_binomial_uncertainty():
    rng = np.random.default_rng(8)
    score = np.r_[rng.normal(1.0, 1.0, 2000), rng.normal(0.0, 1.0, 5000)]
    m = tagger_metrics(score, np.arange(7000) < 2000, None)
    for point in m["working_points"].values():
        eps = point["background_efficiency"]
        assert point["rejection_uncertainty"] == pytest.approx(np.sqrt(eps * (1 - eps) / 5000) / eps ** 2)
        assert point["background_passing_effective"] == pytest.approx(eps * 5000)
    # a signal efficiency reached by a better tagger gives a higher rejection
    better = tagger_metrics(score * np.r_[np.full(2000, 2.0), np.ones(5000)], np.arange(7000) < 2000, None)
    assert all(better["working_points"][e]["rejection"] > m["working_points"][e]["rejection"] for e in ("0.3", "0.5"))


def test_discriminant_of_multiclass_and_binary_scores():
    proba = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(discriminant(proba, 2, 0), [0.1 / 0.7, 0.6 / 0.8, 0.5])  # 0/0: no preference
    np.testing.assert_allclose(discriminant(proba, 1, 2), [0.75, 0.25, 1.0])
    np.testing.assert_allclose(discriminant(np.array([0.2, 0.9]), 1, 0), [0.2, 0.9])
    np.testing.assert_allclose(discriminant(np.array([0.2, 0.9]), 0, 1), [0.8, 0.1])
    with pytest.raises(ValueError, match="non-finite score"):
        discriminant(np.array([[np.nan, 0.5]]), 1, 0)
    with pytest.raises(ValueError, match=r"\(n, C\) with C > 3"):
        discriminant(proba, 3, 0)
    assert reference_efficiency([0.3, 0.5, 0.7]) == 0.5 and reference_efficiency([0.4, 0.9]) == 0.4


def test_pt_bins_equal_weight_by_default_and_configured_edges_count_the_rest():
    pt = np.arange(1.0, 101.0)
    np.testing.assert_array_equal(pt_bin_edges(pt, np.ones(100), 4), [1, 25, 50, 75, 100])
    # Weight 1 up to 50 GeV (50), 3 above (150): half of 200 is reached at 50 + 3 * 17 -> 67 GeV
    assert pt_bin_edges(pt, np.where(pt > 50, 3.0, 1.0), 2).tolist() == [1.0, 67.0, 100.0]
    is_signal = (np.arange(100) % 2) == 0
    score = np.where(is_signal, 0.7, 0.3) + 0.001 * pt
    m = tagger_metrics(score, is_signal, None, pt=np.r_[pt[:-1], np.nan], pt_edges=[10.0, 50.0, 90.0])
    bins = m["pt_bins"]
    assert bins["edges"] == [10.0, 50.0, 90.0]
    assert bins["left_out"] == 9 + 9 + 1  # 1-9 GeV, 91-99 GeV, and the NaN
    assert [b["n_signal"] + b["n_background"] for b in bins["bins"]] == [40, 41]  # [10, 50), [50, 90]
    inside = (pt >= 10) & (pt < 50)
    alone = tagger_metrics(score[inside], is_signal[inside], None)
    assert bins["bins"][0]["working_points"] == alone["working_points"]
    assert bins["bins"][0]["auc"] == alone["auc"]


FEATURES = ["jet_pt", "jet_eta", "jet_mass"]  # the classes differ in (pt, eta); fewer input plots
FAST = {"cluster": {"n_workers": 1, "memory_limit": "2GiB"},
        "prepare": {"bucket_rows": 1000, "file_rows": 1000, "row_group_rows": 250,
                    "objects": {"constituent_features": list(CANDIDATE_COLUMNS)}},
        "train": {"device": "cpu", "xgboost": {"num_boost_round": 25, "eta": 0.3, "min_child_weight": 1.0}},
        "evaluate": {"dpi": 30, "shap_rows": 200, "n_bins": 10}}
JET_CLASSES_INDEX = {name: k for k, name in enumerate(JET_CLASSES)}
EVALUATE_TOML = "[evaluate]\ndpi = 30\nshap_rows = 200\nn_bins = 10\n"


def _config(target: dict, **extra):
    return config_from_dict({"features": FEATURES, "target": target, **FAST, **extra})


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def skim(tmp_path_factory) -> Path:
    return write_jet_skim(tmp_path_factory.mktemp("jets") / "skim", jet_samples(0.4))


@pytest.fixture(scope="module")
def tagger_models(skim, scheduler, tmp_path_factory):
    """A light/c/b prepared folder and two xgboost models trained on it, the second of single-split trees."""
    out = tmp_path_factory.mktemp("tagger")
    config = _config({"kind": "multiclass", "class_column": "jet_label", "classes": JET_CLASSES})
    run_prepare(skim, out / "prep", config, scheduler=scheduler, progress=False)
    stumps = config.model_copy(update={"train": config.train.model_copy(update={
        "xgboost": config.train.xgboost.model_copy(update={"max_depth": 1, "num_boost_round": 5})})})
    models = [run_train(out / "prep", out / name, cfg, model="xgboost", scheduler=scheduler, progress=False)
              for name, cfg in (("xgboost", config), ("stumps", stumps))]
    return out / "prep", models


@pytest.fixture(scope="module")
def evaluated(tagger_models, tmp_path_factory):
    prep, models = tagger_models
    out = tmp_path_factory.mktemp("eval") / "eval"
    main(["evaluate", *map(str, models), str(prep), "--out", str(out), "--quiet",
          "--config", str(_toml(out.parent / "evaluate.toml", EVALUATE_TOML))])
    return out, json.loads((out / "metrics.json").read_text())


def _toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_evaluate_writes_the_tagger_section_of_every_model(evaluated, tagger_models):
    out, metrics = evaluated
    record = metrics["tagger"]
    assert record["jet_level"] == "rows are objects: stats.json split.row_id_columns = ['jet_index']"
    assert (record["background"], record["signals"]) == ("light", ["c", "b"])  # no QCD class: class 0
    assert record["efficiencies"] == [0.3, 0.5, 0.7] and record["pt_column"] == "jet_pt"
    edges = record["pt_edges"]
    assert len(edges) == 6 and edges == sorted(edges)
    test = pq.read_table(tagger_models[0] / "test").to_pandas()
    stats = json.loads((tagger_models[0] / "stats.json").read_text())["features"]["jet_pt"]
    pt = test["jet_pt"].to_numpy(np.float64) * stats["std"] + stats["mean"]  # jet_pt is a feature: standardised
    assert edges[0] == pytest.approx(pt.min()) and edges[-1] == pytest.approx(pt.max())
    for name in ("xgboost", "stumps"):
        tagger = metrics["models"][name]["tagger"]
        assert list(tagger) == ["c", "b"]
        for signal, entry in tagger.items():
            cls = test["class"].to_numpy()
            jets = (cls == JET_CLASSES_INDEX[signal]) | (cls == 0)
            assert entry["background"] == "light"
            assert entry["n_signal"] + entry["n_background"] == int(jets.sum())
            assert 0.0 < entry["auc"] < 1.0
            for e in ("0.3", "0.5", "0.7"):
                point = entry["working_points"][e]
                assert point["rejection"] >= 1.0 and point["rejection_uncertainty"] > 0
            assert entry["pt_bins"]["edges"] == edges and entry["pt_bins"]["left_out"] == 0
            assert sum(b["n_signal"] + b["n_background"] for b in entry["pt_bins"]["bins"]) == int(jets.sum())
    # b jets are harder and more central than light ones: the trees find it
    b_xgb = metrics["models"]["xgboost"]["tagger"]["b"]
    assert b_xgb["auc"] > 0.6 and b_xgb["working_points"]["0.5"]["rejection"] > 2.0
    # The multi-class figures are still there, beside the tagger's
    assert set(metrics["models"]["xgboost"]["multiclass"]["ovr_auc"]) == {"light", "c", "b"}
    for file in ("tagger_roc_b_vs_light.png", "tagger_rejection_pt_b_vs_light.png", "tagger_roc_c_vs_light.png"):
        assert f"plots/{file}" in metrics["plots"]
        assert (out / "plots" / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


TINY_TAGGERS = {"constituents": 16, "max_epochs": 1, "batch_size": 64, "shuffle_buffer": 300, "cpu_threads": 1,
                "pfn": {"phi": [8, 8], "f": [8]}, "cnn": {"channels": [2, 4], "dense": [8]}}


def test_taggers_are_scored_on_their_constituent_lists_beside_the_trees(tagger_models, tmp_path, monkeypatch):
    """pfn and cnn read the prepared lists (the cnn as images, and no jet feature): evaluate scores them as
    predict does."""
    pytest.importorskip("torch")
    from analysis.evaluate.runner import run_evaluate
    from analysis.evaluate.scoring import Scorer
    from analysis.train.predict import load_model

    prep, (trees, _) = tagger_models
    config = _config({"kind": "multiclass", "class_column": "jet_label", "classes": JET_CLASSES},
                     train={"device": "cpu", "tagger": TINY_TAGGERS})
    # the cnn sees the images alone (no jet features): a tagger that reads no flat column
    particles_only = _config(config.target.model_dump(), train={"device": "cpu",
                                                                "tagger": TINY_TAGGERS | {"jet_features": False}})
    models = [trees] + [run_train(prep, tmp_path / name, cfg, model=name, device="cpu", progress=False)
                        for name, cfg in (("pfn", config), ("cnn", particles_only))]
    # The test split's lists are scored a batch of jets at a time (here several batches), never read whole.
    import analysis.evaluate.scoring as scoring
    from analysis.evaluate.inputs import PreparedDir

    whole_reads, read_whole = [], PreparedDir.read_with_lists
    monkeypatch.setattr(scoring, "LIST_BATCH_ROWS", 97)
    monkeypatch.setattr(PreparedDir, "read_with_lists", lambda self, split, columns, lists: (
        whole_reads.append((split, list(lists))), read_whole(self, split, columns, lists))[1])
    run_evaluate(models, prep, tmp_path / "eval", config, progress=False)
    monkeypatch.setattr(PreparedDir, "read_with_lists", read_whole)
    assert [lists for _, lists in whole_reads if lists] == []
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    test = pq.read_table(prep / "test")
    assert test.num_rows > 2 * 97
    cls = test.column("class").to_numpy()
    weight = test.column("weight").to_numpy().astype(np.float64)
    opened = open_prepared(prep)
    for model_dir in models[1:]:
        model = load_model(model_dir)
        direct = model.predict(test, standardised=True)  # the model's own reading of the prepared lists
        for signal in ("c", "b"):
            jets = (cls == JET_CLASSES_INDEX[signal]) | (cls == 0)
            expected = tagger_metrics(discriminant(direct[jets], JET_CLASSES_INDEX[signal], 0),
                                      cls[jets] == JET_CLASSES_INDEX[signal], weight[jets])
            got = metrics["models"][model_dir.name]["tagger"][signal]
            assert got["auc"] == pytest.approx(expected["auc"], abs=1e-12)
            assert got["n_signal"] + got["n_background"] == int(jets.sum())
        assert set(metrics["models"][model_dir.name]["multiclass"]["ovr_auc"]) == {"light", "c", "b"}
        # A model of another standardisation gets raw values, lists included: the same scores.
        scorer = Scorer(model_dir.name, model, model_dir, opened)
        assert scorer.same_standardisation and scorer.lists
        assert (model.layout.jet_features == ()) == (model_dir.name == "cnn")
        frame, lists = opened.read_with_lists("test", list(opened.feature_order), scorer.lists)
        monkeypatch.setattr(scorer, "same_standardisation", False)
        np.testing.assert_allclose(scorer.predict(frame, lists), direct, atol=1e-5)


def test_the_report_puts_the_models_side_by_side(evaluated):
    out, metrics = evaluated
    html = (out / "report.html").read_text()
    assert "<h2>Tagger performance (jets)</h2>" in html
    header = "<tr><th>classes</th><th></th><th>xgboost</th><th>stumps</th></tr>"
    assert header in html
    b = {n: metrics["models"][n]["tagger"]["b"]["working_points"]["0.5"] for n in ("xgboost", "stumps")}
    assert b["xgboost"]["rejection"] != b["stumps"]["rejection"]  # two models, two columns
    row = ("<tr><td>b vs light</td><td>1/ε_B at ε_S = 50%</td>"
           + "".join(f"<td>{b[n]['rejection']:.4g} ± {b[n]['rejection_uncertainty']:.2g}</td>" for n in ("xgboost", "stumps"))
           + "</tr>")
    assert row in html
    assert "b vs light: 1/&epsilon;<sub>B</sub> at &epsilon;<sub>S</sub> = 50% in bins of jet_pt" in html


def test_an_unknown_class_is_one_line_and_nothing_is_written(tagger_models, tmp_path, capsys):
    prep, models = tagger_models
    config = _toml(tmp_path / "bad.toml", EVALUATE_TOML + "[evaluate.tagger]\nbackground = \"QCD\"\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(models[0]), str(prep), "--out", str(tmp_path / "o"), "--config", str(config), "--quiet"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"hepprep: error: evaluate.tagger.background: unknown class 'QCD'; the classes are light, c, b "
                   f"(of {prep / 'stats.json'})")
    assert not (tmp_path / "o").exists()


def test_chosen_signal_background_and_pt_bins(tagger_models):
    prep, _ = tagger_models
    prepared = open_prepared(prep)
    target = Target.from_stats(prepared.stats)
    config = config_from_dict({"evaluate": {"tagger": {"background": "c", "signal": ["b"], "efficiencies": [0.4],
                                                       "pt_bins": [30.0, 60.0, 1000.0]}}})
    plan = plan_jet_level(prepared, target, config).with_test(prepared.read("test", ["jet_pt", "weight"]), prepared)
    assert (plan.background, plan.signals) == (1, (2,))
    record = plan.record()
    assert (record["background"], record["signals"], record["efficiencies"]) == ("c", ["b"], [0.4])
    assert record["pt_edges"] == [30.0, 60.0, 1000.0]
    assert record["pt_edges_from"] == "configured (evaluate.tagger.pt_bins)"
    assert plan.pt.min() < 30.0  # raw GeV (the column is standardised in the folder): some jets left out
    with pytest.raises(ConfigError, match=r"^evaluate.tagger.signal: 'light' is the background class"):
        plan_jet_level(prepared, target, config_from_dict({"evaluate": {"tagger": {"signal": ["light", "b"]}}}))
    with pytest.raises(StageInputError, match=r"no column 'jet_ptt' \(evaluate.tagger.pt_column\)"):
        plan_jet_level(prepared, target, config_from_dict({"evaluate": {"tagger": {"pt_column": "jet_ptt"}}}))


@pytest.fixture(scope="module")
def jes_prepared(skim, scheduler, tmp_path_factory):
    """The jet skim with a jes_target (gen / reco pt: above 1 at low pt, spread 5 %), prepared as a regression."""
    root = tmp_path_factory.mktemp("jes") / "skim"
    shutil.copytree(skim, root)
    for part in sorted(root.glob("*/part-*.parquet")):
        table = pq.read_table(part)
        pt = table.column("jet_pt").to_numpy().astype(np.float64)
        rng = np.random.default_rng(len(pt))
        jes = (1.0 + 0.3 * np.exp(-pt / 40.0)) * rng.normal(1.0, 0.05, len(pt))
        jes[table.column("label").to_numpy() == -1] = np.nan  # real data has no truth
        pq.write_table(table.append_column("jes_target", pa.array(jes.astype(np.float32))), part)
    out = tmp_path_factory.mktemp("jesprep")
    config = _config({"kind": "regression", "columns": ["jes_target"]})
    run_prepare(root, out / "prep", config, scheduler=scheduler, progress=False)
    model = run_train(out / "prep", out / "xgboost", config, model="xgboost", scheduler=scheduler, progress=False)
    return out / "prep", model


def test_a_jet_regression_is_binned_in_pt_and_eta(jes_prepared, tmp_path):
    from analysis.evaluate.runner import run_evaluate

    prep, model = jes_prepared
    run_evaluate([model], prep, tmp_path / "e", config_from_dict(FAST), progress=False)
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["tagger"]["eta_column"] == "jet_eta" and "signals" not in metrics["tagger"]
    r = metrics["models"]["xgboost"]["regression"]["jes_target"]["model"]
    assert r["vs_pt"]["edges"] == metrics["tagger"]["pt_edges"] and len(r["vs_pt"]["edges"]) == 6
    assert len(r["vs_eta"]["edges"]) == 11
    assert sum(r["vs_pt"]["n"]) == metrics["test_events"]
    assert 0.97 < r["median"] < 1.03 and r["resolution"] < 0.1  # the pt dependence is learnt
    assert all(0.9 < m < 1.1 for m in r["vs_pt"]["median"])
    for file in ("response_vs_pt_xgboost_jes_target.png", "response_vs_eta_xgboost_jes_target.png"):
        assert f"plots/{file}" in metrics["plots"]
    assert "Tagger performance" not in (tmp_path / "e" / "report.html").read_text()


def test_a_binary_jet_classifier_is_a_tagger_of_its_signal_label(tmp_path):
    import pandas as pd

    from analysis.core.objects import TaggerEvaluationConfig
    from analysis.evaluate.jets import JetLevel, tagger_entries

    rng = np.random.default_rng(4)
    label = (rng.uniform(size=400) < 0.3).astype(np.int8)
    score = np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0, 1)  # one score per jet: P(signal)
    pt, weight = rng.exponential(50.0, 400) + 20.0, rng.uniform(0.5, 2.0, 400)
    settings = TaggerEvaluationConfig()
    background, signals = settings.classes(("background", "signal"))
    plan = JetLevel("rows are objects", settings, ("background", "signal"), background, tuple(signals), None,
                    pt=pt, edges=pt_bin_edges(pt, weight, 5))
    added = []
    scorer = SimpleNamespace(name="bdt")  # tagger_entries reads only the name; the scores are given
    entries = tagger_entries(plan, [scorer], pd.DataFrame({"label": label, "weight": weight}), {"bdt": score},
                             config_from_dict({"evaluate": {"dpi": 30}}), tmp_path,
                             lambda section, title, path: added.append(path))
    entry = entries["bdt"]["signal"]
    assert entry["background"] == "background"
    alone = tagger_metrics(score, label == 1, weight, pt=pt, pt_edges=plan.edges)
    assert entry["working_points"] == alone["working_points"] and entry["pt_bins"] == alone["pt_bins"]
    assert entry["auc"] == pytest.approx(weighted_roc_auc(score, label, weight))  # the binary evaluation's AUC
    assert [p.name for p in added] == ["tagger_roc_signal_vs_background.png",
                                       "tagger_rejection_pt_signal_vs_background.png"]
