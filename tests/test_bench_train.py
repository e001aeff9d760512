"""Benchmarks (training): benchmarks/bench_train.py's loader part runs end to end.

`make bench` is not run in CI; this keeps the loader benchmark (acceptance 4 of the
training issue) from breaking unnoticed. Its figures on CI's machine mean nothing and
are not checked, only that every run streamed the whole split and the ratios are there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_train  # noqa: E402


def test_loader_benchmark_reports_paired_ratios(tmp_path):
    assert bench_train.main(["--quick", "--only", "loader", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "train.json").read_text())
    assert "loader_error" not in result
    assert result["loader_rows"] == result["train_rows"] == 200_000
    q1, median, q3 = result["loader_ratio_quartiles"]
    assert q1 <= median <= q3
    assert result["loader_ratio_vs_pyarrow"] > 0 and result["loader_2workers_ratio_vs_pyarrow"] > 0
    assert isinstance(result["loader_goal_met"], bool)
