"""Prepare stage on a real skim: generate -> skim -> prepare, small, against the skim's cutflow."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from analysis.config import config_from_dict
from analysis.generate.runner import generate_samples
from analysis.prepare.runner import run_prepare
from analysis.skim.runner import run_skim
from tests._prepare_helpers import read_split


def test_generated_skim_goes_through_prepare(tmp_path):
    cfg = config_from_dict({"generate": {"events": 20_000, "files_per_sample": 1},
                            "skim": {"executor": "iterative"},
                            "prepare": {"bucket_rows": 5000, "file_rows": 3000, "row_group_rows": 1000},
                            "cluster": {"n_workers": 1}})
    fileset = generate_samples(tmp_path / "gen", cfg, progress=False)
    run_skim(fileset, tmp_path / "skim", cfg, progress=False)
    manifest = run_prepare(tmp_path / "skim", tmp_path / "prep", cfg, progress=False)

    cutflow = json.loads((tmp_path / "skim" / "cutflow.json").read_text())
    prepared = {s: read_split(tmp_path / "prep", s).to_pandas() for s in ("train", "val", "test", "data")}
    for dataset, flow in cutflow.items():
        selected = list(flow["cuts"].values())[-1]  # events and Σweight after the last cut
        rows = [df[df["dataset"].astype(str) == dataset] for df in prepared.values()]
        assert sum(len(r) for r in rows) == selected["events"], dataset
        assert sum(r["weight"].sum() for r in rows) == pytest.approx(selected["sum_weight"], rel=1e-6)
        assert manifest["datasets"][dataset]["rows"] == selected["events"]
        where = {s for s, r in zip(prepared, rows) if len(r)}
        assert where == ({"data"} if flow["label"] == -1 else {"train", "val", "test"}), dataset
    train = prepared["train"]
    for label in (0, 1):
        assert train.loc[train.label == label, "train_weight"].sum() == pytest.approx(len(train) / 2, rel=1e-9)
    stats = json.loads((tmp_path / "prep" / "stats.json").read_text())
    for name in stats["feature_order"]:  # the processor's default features
        z = train[name].to_numpy()
        assert np.average(z, weights=train["train_weight"]) == pytest.approx(0.0, abs=1e-5), name
    # the skim's per-file metadata is not copied into prepared files
    first = sorted((tmp_path / "prep" / "train").glob("part-*.parquet"))[0]
    assert pq.read_schema(first).metadata is None
    assert stats["class_totals"]["signal"]["rows"] == int((train.label == 1).sum())
