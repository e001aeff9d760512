"""Whole pipeline on jets: `hepprep run --kind jets` generates the PFNano jet sample, skims it with the
jet processor, prepares it, trains a tree and a tagger and evaluates both as taggers; a re-run may reuse
the sample only with the settings it was made with; a model or kind it does not know is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis import load_config
from analysis.cli import main
from analysis.errors import StageInputError
from analysis.pipeline import _check_reusable_sample, run_pipeline

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "jets.toml"
SMALL = {"generate": {"events": 1200}, "cluster": {"n_workers": 1, "memory_limit": "2GiB"},
         "prepare": {"bucket_rows": 5000},
         "train": {"device": "cpu", "xgboost": {"num_boost_round": 10},
                   "tagger": {"constituents": 16, "max_epochs": 1, "batch_size": 64, "shuffle_buffer": 500,
                              "cpu_threads": 1, "pfn": {"phi": [8, 8], "f": [8]}}},
         "evaluate": {"dpi": 30, "n_bins": 10, "shap_rows": 100}}


def test_run_on_generated_jets_trains_and_evaluates_a_tagger_beside_the_trees(tmp_path):
    pytest.importorskip("torch")
    config = load_config(EXAMPLE, SMALL)
    result = run_pipeline(config, tmp_path, models=("xgboost", "pfn"), kind="jets", progress=False)
    settings = json.loads((tmp_path / "samples" / "generate.json").read_text())
    assert settings["kind"] == "jets"
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["tagger"]["background"] == "QCD" and metrics["tagger"]["signals"] == ["Hbb", "Wqq", "Tbqq"]
    for model in ("xgboost", "pfn"):
        tagger = metrics["models"][model]["tagger"]
        assert set(tagger) == {"Hbb", "Wqq", "Tbqq"}
        assert all(entry["auc"] is not None and 0.0 < entry["auc"] <= 1.0 for entry in tagger.values())
    assert json.loads((tmp_path / "models" / "pfn" / "model_info.json").read_text())["model"] == "pfn"
    assert result.report.is_file()
    # A re-run may reuse the sample with these settings, not with others, nor as the event sample
    _check_reusable_sample(tmp_path / "samples", config, "jets")
    other = load_config(EXAMPLE, SMALL | {"generate": {"events": 1300}})
    for cfg, kind in ((other, "jets"), (config, "events")):
        with pytest.raises(StageInputError, match="cannot reuse this generated sample"):
            _check_reusable_sample(tmp_path / "samples", cfg, kind)


@pytest.mark.parametrize("argv", [["--models", "xgboost,bdt"], ["--kind", "muons"], ["--models", ","]])
def test_an_unknown_model_or_kind_is_one_line_and_nothing_is_written(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as stop:
        main(["run", "--out", str(tmp_path / "out"), "--quiet", *argv])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hepprep: error: --kind ")
    assert "pfn" in err[0] and "jets" in err[0]
    assert not (tmp_path / "out").exists()
