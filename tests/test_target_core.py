"""Core: the target description shared by prepare, train and evaluate (analysis/core/target.py)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.core.target import Target, TargetConfig
from analysis.errors import StageInputError


def test_a_regression_target_round_trips_through_stats_json_and_undoes_its_transform():
    config = TargetConfig(kind="regression", columns=["genjet_pt"], transform="ratio", ratio_to="jet_pt")
    target = Target.from_config(config)
    assert target.columns == ("target_genjet_pt",) and target.needed_columns == ("genjet_pt", "jet_pt")
    raw = target.raw_values({"genjet_pt": np.array([90.0, 60.0]), "jet_pt": np.array([100.0, 50.0])})
    np.testing.assert_allclose(raw[:, 0], [0.9, 1.2])
    fitted = Target(**{**target.__dict__, "mean": (1.0,), "std": (0.2,)})
    again = Target.from_stats({"target": fitted.stats_record()})
    assert again == fitted
    # standardised (0.9 - 1) / 0.2 = -0.5 and (1.2 - 1) / 0.2 = 1 -> ratios -> times jet pt
    np.testing.assert_allclose(again.to_physical(np.array([[-0.5], [1.0]]), np.array([100.0, 50.0]))[:, 0],
                               [90.0, 60.0])
    log = Target(kind="regression", class_names=("simulation",), sources=("m",), transform="log",
                 mean=(4.0,), std=(0.5,))
    np.testing.assert_allclose(log.to_physical(np.array([[2.0]])), [[np.exp(5.0)]])


def test_multiclass_classes_from_processes_and_data():
    target = Target.from_config(TargetConfig(kind="multiclass", classes={"H": ["ggH", "VBF"], "Z": ["DY"]}))
    names = ["DY", "ggH", "data", "VBF"]
    cls = target.class_index(np.array([0, 1, -1, 1, 0]), np.array([0, 1, 2, 3, 0]), names, where="f.parquet")
    assert cls.tolist() == [1, 0, -1, 0, 1]
    assert Target.from_stats({"target": target.stats_record()}) == target
    with pytest.raises(StageInputError, match=r"f.parquet: process 'TT' is in no class of target.classes \(H, Z\)"):
        target.class_index(np.array([0]), np.array([0]), ["TT"], where="f.parquet")


def test_a_damaged_target_section_is_one_line():
    with pytest.raises(StageInputError, match="stats.json: the target section is damaged"):
        Target.from_stats({"target": {"kind": "regression", "sources": ["m"]}})
    with pytest.raises(StageInputError, match="unknown target kind 'ranking'"):
        Target.from_stats({"target": {"kind": "ranking"}})
    assert Target.from_stats({}) == Target()
