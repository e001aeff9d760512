"""Whole pipeline: `hepprep run` goes from generation to the report, and a re-run resumes."""

from __future__ import annotations

import json

import pytest
from _eval_helpers import assert_report_embeds_every_plot

from analysis.cli import main

MODELS = ("xgboost", "mlp")
METRICS_KEYS = {"prep_dir", "test_fraction", "test_events", "test_yield", "data_events", "negative_weights",
                "models", "warnings", "plots", "provenance"}
MODEL_METRICS_KEYS = {"model_dir", "kind", "roc_auc", "signal_efficiency", "ams", "ams_val_cut", "ks",
                      "trained_on_this_prepared"}
DATA = {"Run2012B_TauPlusX", "Run2012C_TauPlusX"}


def _run(out, config, *extra):
    with pytest.raises(SystemExit) as code:
        main(["run", "--config", str(config), "--out", str(out), "--quiet", *extra])
        raise SystemExit(0)
    assert code.value.code == 0


def _check_prepared(prepared) -> dict:
    """The prepared manifest: four splits, every row of every dataset in exactly one, ~0.6/0.2/0.2."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["stage"] == "prepare" and manifest["skim"]["complete"] is True
    assert manifest["prepare"]["split"] == [0.6, 0.2, 0.2]
    splits = manifest["splits"]
    assert set(splits) == {"train", "val", "test", "data"}
    for name, split in splits.items():
        assert split["rows"] > 0 and split["rows"] == sum(f["rows"] for f in split["files"]), name
        assert split["rows"] == sum(d["rows"] for d in split["datasets"].values()), name
        assert all((prepared / f["path"]).is_file() for f in split["files"]), name
    assert set(splits["data"]["datasets"]) == DATA
    mc = set(manifest["datasets"]) - DATA
    assert {"GluGluToHToTauTau", "VBF_HToTauTau", "DYJetsToLL", "TTbar"} <= mc
    for name in ("train", "val", "test"):
        assert set(splits[name]["datasets"]) == mc, name
    for dataset, entry in manifest["datasets"].items():
        assert sum(s["datasets"].get(dataset, {"rows": 0})["rows"] for s in splits.values()) == entry["rows"]
    mc_rows = sum(splits[name]["rows"] for name in ("train", "val", "test"))
    for name, nominal in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        assert splits[name]["rows"] / mc_rows == pytest.approx(nominal, abs=0.05), name
    assert len(manifest["fingerprint"]) == 64
    return manifest


def _check_models(out, manifest):
    """Each model folder is complete and names the preparation it was trained on."""
    for name in MODELS:
        info = json.loads((out / "models" / name / "model_info.json").read_text())
        assert info["model"] == name
        assert info["prepared_dir"] == str(out / "prepared")
        assert info["prepared_fingerprint"] == manifest["fingerprint"]
        assert info["features"] == manifest["features"]
        assert info["train_rows"] == manifest["splits"]["train"]["rows"]
        assert info["val_rows"] == manifest["splits"]["val"]["rows"]
        assert 0.5 < info["best_val_auc"] <= 1.0, name
        files = {p.name for p in (out / "models" / name).iterdir()}
        assert {"features.json", "stats.json", "history.json"} <= files, name
    xgb = json.loads((out / "models" / "xgboost" / "model_info.json").read_text())
    assert xgb["params"]["num_boost_round"] == 40 and 0 < xgb["rounds_run"] <= 40
    mlp = json.loads((out / "models" / "mlp" / "model_info.json").read_text())
    assert mlp["params"]["max_epochs"] == 3 and 0 < mlp["epochs_run"] <= 3
    assert mlp["n_features"] == len(manifest["features"])


def _check_metrics(out, manifest, models) -> dict:
    """metrics.json: every key, each model's AUC above chance, the test split it was scored on."""
    evaluation = out / "evaluation"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS
    assert metrics["prep_dir"] == str(out / "prepared")
    assert metrics["warnings"] == []
    test = manifest["splits"]["test"]
    assert metrics["test_events"]["signal"] + metrics["test_events"]["background"] == test["rows"]
    assert metrics["test_events"]["signal"] > 0 and metrics["test_events"]["background"] > 0
    assert metrics["test_yield"]["signal"] > 0 and metrics["test_yield"]["background"] > 0
    assert metrics["test_fraction"]["nominal"] == 0.2
    assert all(0.1 < metrics["test_fraction"][c] < 0.3 for c in ("signal", "background"))
    assert metrics["data_events"] == manifest["splits"]["data"]["rows"]
    assert set(metrics["models"]) == set(models)
    for name in models:
        m = metrics["models"][name]
        assert MODEL_METRICS_KEYS <= set(m), name
        assert m["kind"] == name and m["model_dir"] == str(out / "models" / name)
        assert m["trained_on_this_prepared"] is True
        assert 0.5 < m["roc_auc"] <= 1.0, (name, m["roc_auc"])
        assert set(m["signal_efficiency"]) == {"0.01", "0.1"}
        assert 0.0 <= m["signal_efficiency"]["0.01"] <= m["signal_efficiency"]["0.1"] <= 1.0
        assert m["ams"]["ams"] > 0 and m["ams"]["s"] > 0 and 0.0 <= m["ams"]["best_cut"] <= 1.0
        assert all(0.0 <= m["ks"][c]["pvalue"] <= 1.0 for c in ("signal", "background"))
    assert "importance" in metrics["models"]["xgboost"]
    assert {"plots/roc.png", "plots/ams.png", "plots/cutflow.png"} <= set(metrics["plots"])
    assert {f"plots/scores_{name}.png" for name in models} <= set(metrics["plots"])
    assert_report_embeds_every_plot(evaluation, metrics)
    return metrics


def test_run_end_to_end_then_resume(tmp_path, capsys):
    config = tmp_path / "small.toml"
    # lighter plots (the report must embed every plot, whatever its resolution and binning)
    config.write_text("[generate]\nevents = 30000\nfiles_per_sample = 1\n"
                      "[train.mlp]\nmax_epochs = 3\n[train.xgboost]\nnum_boost_round = 40\n"
                      "[evaluate]\nn_bins = 8\nshap_rows = 200\ndpi = 30\n")
    out = tmp_path / "run"
    _run(out, config)
    stdout = capsys.readouterr().out
    report = out / "evaluation" / "report.html"
    assert f"report: {report}" in stdout
    assert report.is_file() and "<title>hepprep evaluation report" in report.read_text()
    for stage_output in ("samples/fileset.json", "skim/cutflow.json", "skim/manifest.json",
                         "prepared/stats.json", "models/xgboost/model.json", "models/mlp/model.pt",
                         "evaluation/metrics.json"):
        assert (out / stage_output).is_file(), stage_output
    skim = json.loads((out / "skim" / "manifest.json").read_text())
    assert skim["complete"] is True and skim["errors"] == []
    manifest = _check_prepared(out / "prepared")
    _check_models(out, manifest)
    _check_metrics(out, manifest, MODELS)

    # A second run reuses the sample and finds the skim and the preparation done.
    parts = sorted(p.name for p in (out / "skim").rglob("part-*.parquet"))
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "skim").rglob("part-*.parquet")}
    _run(out, config, "--models", "xgboost")
    assert sorted(p.name for p in (out / "skim").rglob("part-*.parquet")) == parts
    assert {p: p.stat().st_mtime_ns for p in (out / "skim").rglob("part-*.parquet")} == mtimes
    again = json.loads((out / "prepared" / "manifest.json").read_text())
    assert again["fingerprint"] == manifest["fingerprint"]
    _check_metrics(out, manifest, ("xgboost",))
