"""Evaluation stage: the pieces under `run_evaluate` — binning, histogram and correlation
accumulators, cutflow reading, model/prepared consistency — on hand-built inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _eval_helpers import TOY_FEATURES, toy_config, write_prepared, write_xgboost_model
from _prepare_helpers import write_skim_manifest

from analysis.errors import StageInputError
from analysis.evaluate.input_plots import FeatureHistograms, WeightedCorrelation, _nice_scale, feature_edges
from analysis.evaluate.inputs import (EVENT_COLUMNS, check_model_features, model_names, open_prepared,
                                      read_cutflow, standardisation_matches)
from analysis.evaluate.scoring import Scorer as _Scorer
from analysis.evaluate.scoring import data_frames as _data_frames
from analysis.train.predict import load_model


def test_feature_edges_by_hand():
    # counting feature: one bin per value, centred on the integers 2..5
    np.testing.assert_allclose(feature_edges("njets", {"min": 2, "max": 5}), [1.5, 2.5, 3.5, 4.5, 5.5])
    np.testing.assert_allclose(feature_edges("jet1_btag", {"min": 0.01, "max": 0.99}, n_bins=10),
                               np.linspace(0, 1, 6))
    # m_vis: core = median -/+ 4 half-widths = 65 - 4*13 = 13 .. 65 + 4*15 = 125 (inside min/max);
    # raw width 112/40 = 2.8 -> round width 5; start floor(13/5)*5 = 10; ceil(115/5) = 23 bins
    edges = feature_edges("m_vis", {"min": 5, "max": 300, "median": 65, "q16": 52, "q84": 80})
    np.testing.assert_allclose(edges, np.arange(10, 126, 5))
    # core clipped to [min, max]: 0.5 - 4*0.4 < 0 -> 0.1 (min); raw width 1.4/40 = 0.035 -> 0.05
    edges = feature_edges("dr_tautau", {"min": 0.1, "max": 1.5, "median": 0.5, "q16": 0.1, "q84": 1.0})
    assert edges[0] == pytest.approx(0.1) and edges[-1] == pytest.approx(1.5)
    np.testing.assert_allclose(np.diff(edges), 0.05)


def test_nice_signal_scale():
    assert [_nice_scale(r) for r in (0.5, 1.0, 3.0, 7.9, 12.0, 260.0)] == [1, 1, 2, 5, 10, 200]


def _events():
    return pd.DataFrame({"m_vis": [50.0, 70.0, 500.0, -3.0, np.nan, 60.0],
                         "njets": [2.0, 3.0, 2.0, 2.0, 2.0, 40.0],
                         "weight": [1.0, 2.0, 0.5, 0.25, 4.0, -1.0],
                         "process": ["DY", "DY", "TT", "TT", "DY", "ggH"]})


STATS = {"m_vis": {"min": 10, "max": 90, "median": 50, "q16": 40, "q84": 60},
         "njets": {"min": 2, "max": 4}}


def test_feature_histograms_count_every_weighted_event_in_range():
    h = FeatureHistograms(["m_vis", "njets"], STATS, n_bins=10).partial_fit(_events()).hists_
    mvis = h["m_vis"]
    # DY: 1 + 2 (the NaN one is not filled); TT: 500 -> last bin, -3 -> first bin
    assert mvis[:, "DY"].values().sum() == pytest.approx(3.0)
    assert mvis[:, "TT"].values()[-1] == pytest.approx(0.5)
    assert mvis[:, "TT"].values()[0] == pytest.approx(0.25)
    assert mvis[:, "ggH"].values().sum() == pytest.approx(-1.0)  # yields keep the sign
    # sum of weights squared: DY 1^2 + 2^2 = 5
    assert mvis[:, "DY"].variances().sum() == pytest.approx(5.0)
    # njets = 40 lands in the last unit bin (4)
    assert h["njets"][:, "ggH"].values()[-1] == pytest.approx(-1.0)


def test_feature_histograms_chunked_equal_one_go_and_data_is_its_own_process():
    events = _events()
    whole = FeatureHistograms(["m_vis"], STATS).partial_fit(events)
    chunked = FeatureHistograms(["m_vis"], STATS)
    for start in range(0, len(events), 4):
        chunked.partial_fit(events.iloc[start:start + 4])
    chunked.partial_fit(events.drop(columns="process"), process="data")
    for proc in ("DY", "TT", "ggH"):
        np.testing.assert_allclose(chunked.hists_["m_vis"][:, proc].values(),
                                   whole.hists_["m_vis"][:, proc].values())
    assert chunked.hists_["m_vis"][:, "data"].values().sum() == pytest.approx(1 + 2 + 0.5 + 0.25 - 1)


def test_weighted_correlation_by_hand():
    # x1 = [0, 1, 2], x2 = [0, 0, 1], w = [1, 1, 2]; sum w = 4
    # means 5/4 = 1.25 and 2/4 = 0.5; var1 = (1.5625 + 0.0625 + 2*0.5625)/4 = 0.6875;
    # var2 = (0.25 + 0.25 + 2*0.25)/4 = 0.25; cov = (0.625 + 0.125 + 2*0.375)/4 = 0.375
    # corr = 0.375 / sqrt(0.6875 * 0.25) = 0.904534
    x = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 1.0]])
    corr = WeightedCorrelation().partial_fit(x, [1.0, 1.0, 2.0]).correlation_
    np.testing.assert_allclose(corr, [[1.0, 0.904534], [0.904534, 1.0]], atol=1e-6)
    # negative weight counts as |w|; a NaN row is skipped
    with_nan = np.vstack([x, [[np.nan, 5.0]]])
    corr2 = WeightedCorrelation().partial_fit(with_nan, [1.0, 1.0, -2.0, 7.0]).correlation_
    np.testing.assert_allclose(corr2, corr)


def test_weighted_correlation_chunked_equals_numpy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1000, 3))
    x[:, 1] += 0.7 * x[:, 0]
    w = rng.exponential(size=1000)
    acc = WeightedCorrelation()
    for start in range(0, 1000, 137):
        acc.partial_fit(x[start:start + 137], w[start:start + 137])
    ref = np.cov(x.T, aweights=w)
    ref = ref / np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
    np.testing.assert_allclose(acc.correlation_, ref, atol=1e-12)
    # a constant column correlates with nothing
    const = WeightedCorrelation().partial_fit(np.c_[x[:, 0], np.ones(1000)], w).correlation_
    np.testing.assert_allclose(const, np.eye(2))
    with pytest.raises(ValueError, match="expected 3 feature columns, got 2"):
        acc.partial_fit(x[:, :2], w)


@pytest.mark.parametrize("layout", ["skim", "flat", "columns", "list"])
def test_read_cutflow_layouts(tmp_path, layout):
    cuts = [("all", 100, 50.0), ("tau_pair", 40, 20.0)]
    entry = {
        "skim": {"process": "DY", "label": 0, "cuts": {c: {"events": n, "sum_weight": w} for c, n, w in cuts}},
        "flat": {c: {"events": n, "sumw": w} for c, n, w in cuts},
        "columns": {"cuts": [c for c, _, _ in cuts], "events": [n for _, n, _ in cuts],
                    "sumw": [w for _, _, w in cuts]},
        "list": [{"cut": c, "events": n, "sumw": w} for c, n, w in cuts],
    }[layout]
    path = tmp_path / "cutflow.json"
    path.write_text(json.dumps({"datasets": {"DYJetsToLL": entry}} if layout == "list" else {"DYJetsToLL": entry}))
    table = read_cutflow(path)
    assert table.to_dict("records") == [
        {"dataset": "DYJetsToLL", "cut": "all", "events": 100, "sumw": 50.0},
        {"dataset": "DYJetsToLL", "cut": "tau_pair", "events": 40, "sumw": 20.0}]


def test_read_cutflow_errors_name_the_file(tmp_path):
    path = tmp_path / "cutflow.json"
    path.write_text("[1, 2]")
    with pytest.raises(StageInputError, match=r"cutflow.json: expected an object with one entry per dataset, got list"):
        read_cutflow(path)
    path.write_text('{"DY": "nothing"}')
    with pytest.raises(StageInputError, match=r"cutflow.json: no cuts found"):
        read_cutflow(path)
    path.write_text("{oops")
    with pytest.raises(StageInputError, match=r"cutflow.json: cutflow.json is not valid JSON"):
        read_cutflow(path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    prep = write_prepared(root / "prep", with_data=False)
    return {"root": root, "prep": prep, "model": write_xgboost_model(root / "xgb", prep, rounds=5)}


def test_model_using_fewer_features_is_named_in_the_error(toy):
    fewer = write_xgboost_model(toy["root"] / "xgb_fewer", toy["prep"], rounds=2, features=TOY_FEATURES[:4])
    with pytest.raises(StageInputError, match=r"trained on 4 features but prepared directory .* has 6 "
                                              r"\(not used by the model: m_vis, mjj\)"):
        check_model_features(load_model(fewer), fewer, open_prepared(toy["prep"]))


def test_model_names_are_made_unique_by_parent_folder(toy, tmp_path):
    copy = tmp_path / "other" / "xgb"
    shutil.copytree(toy["model"], copy)
    models = [load_model(toy["model"]), load_model(copy)]
    assert model_names([toy["model"], copy], models) == [f"{toy['model'].parent.name}/xgb", "other/xgb"]
    assert model_names([toy["model"]], models[:1]) == ["xgb"]


def test_other_standardisation_is_undone_before_scoring(toy, tmp_path):
    """A prepared dir standardised with other mean/std: same raw events, same scores."""
    shifted = tmp_path / "prep_shifted"
    shutil.copytree(toy["prep"], shifted)
    stats = json.loads((shifted / "stats.json").read_text())
    old = dict(stats["features"]["m_vis"])
    stats["features"]["m_vis"].update(mean=old["mean"] + 7.0, std=old["std"] * 2.0)
    (shifted / "stats.json").write_text(json.dumps(stats))
    for part in sorted((shifted / "test").glob("*.parquet")):
        frame = pd.read_parquet(part)
        raw = frame["m_vis"].astype(np.float64) * old["std"] + old["mean"]
        frame["m_vis"] = ((raw - old["mean"] - 7.0) / (old["std"] * 2.0)).astype(np.float32)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), part)
    model = load_model(toy["model"])
    same, other = open_prepared(toy["prep"]), open_prepared(shifted)
    assert standardisation_matches(model, same) and not standardisation_matches(model, other)
    reference = _Scorer("xgb", model, toy["model"], same).predict(same.read("test", TOY_FEATURES))
    scores = _Scorer("xgb", model, toy["model"], other).predict(other.read("test", TOY_FEATURES))
    np.testing.assert_allclose(scores, reference, atol=1e-5)
    # feeding the shifted columns as if standardised would give other scores
    naive = model.predict(other.read("test", TOY_FEATURES), standardised=True)
    assert np.abs(naive - reference).max() > 1e-3


def test_pseudo_data_is_read_from_the_skim_when_prepare_wrote_none(toy, tmp_path):
    skim = tmp_path / "skim"
    (skim / "Run2012B_TauPlusX").mkdir(parents=True)
    raw = pd.DataFrame({f: np.linspace(1, 2, 7) for f in TOY_FEATURES} | {"weight": np.ones(7), "label": -1})
    pq.write_table(pa.Table.from_pandas(raw), skim / "Run2012B_TauPlusX" / "part-a-0-7.parquet")
    prepared = open_prepared(toy["prep"])
    assert list(_data_frames(prepared, skim, toy_config(), TOY_FEATURES)) == []  # no skim manifest
    write_skim_manifest(skim)  # only the parts it lists are read
    frames = list(_data_frames(prepared, skim, toy_config(), TOY_FEATURES))
    assert sum(len(f) for f in frames) == 7
    np.testing.assert_allclose(frames[0]["m_vis"], np.linspace(1, 2, 7))  # raw units, untouched
    assert list(_data_frames(prepared, None, toy_config(), TOY_FEATURES)) == []
    (skim / "Run2012B_TauPlusX" / "part-a-0-7.parquet").unlink()
    pq.write_table(pa.Table.from_pandas(raw.drop(columns="mjj")), skim / "Run2012B_TauPlusX" / "part-p.parquet")
    write_skim_manifest(skim)
    with pytest.raises(StageInputError, match=r"skim: data skim has no column\(s\) mjj; re-run the skim"):
        list(_data_frames(prepared, skim, toy_config(), TOY_FEATURES))


def test_prepared_table_without_process_column_gets_it_from_the_label(toy, tmp_path):
    """A prepared flat table (HiggsML CSV) has `dataset` but no `process` column."""
    table = tmp_path / "prep_table"
    shutil.copytree(toy["prep"], table)
    for part in sorted((table / "test").glob("*.parquet")):
        frame = pd.read_parquet(part).drop(columns=["process"])
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), part)
    test = open_prepared(table).read("test", TOY_FEATURES + EVENT_COLUMNS)
    assert set(test.loc[test["label"] == 1, "process"]) == {"signal"}
    assert set(test.loc[test["label"] == 0, "process"]) == {"background"}
    for part in sorted((table / "test").glob("*.parquet")):
        frame = pd.read_parquet(part).drop(columns=["weight"])
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), part)
    with pytest.raises(StageInputError, match=r"prep_table: prepared Parquet has no column\(s\) weight; "
                                              r"it holds .*; re-run `hepprep prepare`"):
        open_prepared(table).read("test", TOY_FEATURES + EVENT_COLUMNS)
