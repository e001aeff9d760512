"""Whole pipeline: `hepprep run` goes from generation to the report, and a re-run resumes."""

from __future__ import annotations

import json

import pytest

from analysis.cli import main


def test_run_end_to_end_then_resume(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text("[generate]\nevents = 30000\nfiles_per_sample = 1\n"
                      "[train.mlp]\nmax_epochs = 3\n[train.xgboost]\nnum_boost_round = 40\n")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as code:
        main(["run", "--config", str(config), "--out", str(out), "--quiet"])
        raise SystemExit(0)
    assert code.value.code == 0
    stdout = capsys.readouterr().out
    report = out / "evaluation" / "report.html"
    assert f"report: {report}" in stdout
    assert report.is_file()
    for stage_output in ("samples/fileset.json", "skim/cutflow.json", "skim/manifest.json",
                         "prepared/stats.json", "models/xgboost/model.json", "models/mlp/model.pt",
                         "evaluation/metrics.json"):
        assert (out / stage_output).is_file(), stage_output
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert metrics  # every key is checked by the evaluation tests

    # A second run reuses the sample and finds the skim and the preparation done.
    parts = sorted(p.name for p in (out / "skim").rglob("part-*.parquet"))
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "skim").rglob("part-*.parquet")}
    with pytest.raises(SystemExit) as code:
        main(["run", "--config", str(config), "--out", str(out), "--quiet", "--models", "xgboost"])
        raise SystemExit(0)
    assert code.value.code == 0
    assert sorted(p.name for p in (out / "skim").rglob("part-*.parquet")) == parts
    assert {p: p.stat().st_mtime_ns for p in (out / "skim").rglob("part-*.parquet")} == mtimes
