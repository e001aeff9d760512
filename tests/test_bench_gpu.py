"""Benchmarks (training): benchmarks/bench_gpu.py, the CPU-against-GPU check, runs end to end.

CI has no GPU, so these runs train on the CPU with a few thousand rows: the cuda entries
must then carry the trainer's one-line reason (on a GPU machine they run). The device-tool
session that times >= 5M rows relies on this script working the first time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_gpu  # noqa: E402

from analysis.errors import ConfigError  # noqa: E402

TINY = ["--rows", "4000", "--rounds", "20", "--epochs", "2", "--quiet"]


def _result(out: Path) -> dict:
    return json.loads((out / "gpu.json").read_text())


def test_cpu_runs_and_cuda_runs_or_says_why(tmp_path):
    rc = bench_gpu.main([*TINY, "--models", "xgboost,mlp", "--devices", "cpu,cuda", "--out", str(tmp_path)])
    assert rc == 0
    result = _result(tmp_path)
    runs = result["runs"]
    assert set(runs) == {"xgboost-cpu", "xgboost-cuda", "mlp-cpu", "mlp-cuda"}
    assert result["failed"] == []
    for model, work in (("xgboost", "rounds"), ("mlp", "epochs")):
        cpu = runs[f"{model}-cpu"]
        assert cpu["status"] == "ran", cpu
        assert cpu["device"] == "cpu"
        assert cpu["train_seconds"] > 0 and cpu["run_train_wall_seconds"] > 0
        assert cpu["train_rows"] == 4000 and cpu["val_rows"] == 1000
        # Fixed work: early stopping is off, so every requested round / epoch runs.
        assert cpu[work] == {"rounds": 20, "epochs": 2}[work]
        assert cpu["val_auc"] > 0.6, cpu  # the toy classes are separable (AUC ~0.85)
        gpu = runs[f"{model}-cuda"]
        if gpu["status"] == "ran":
            assert gpu["device"] == "cuda" and gpu["train_seconds"] > 0
            assert result["cpu_over_cuda_train_seconds"][model] > 0
        else:
            assert gpu["status"] == "unavailable", gpu
            assert gpu["reason"].startswith("--device cuda: ") and len(gpu["reason"]) > 30
    assert result["settings"]["xgboost"]["num_boost_round"] == 20
    assert result["settings"]["mlp"]["max_epochs"] == 2
    assert result["machine"]["cpu_cores_usable"] >= 1
    assert result["versions"]["xgboost"] and result["versions"]["torch"]


def test_a_crashed_run_is_recorded_and_exits_1(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("trainer broke")

    monkeypatch.setattr(bench_gpu, "run_train", broken)
    rc = bench_gpu.main([*TINY, "--models", "mlp", "--devices", "cpu", "--out", str(tmp_path)])
    assert rc == 1
    result = _result(tmp_path)
    assert result["runs"]["mlp-cpu"] == {"status": "failed", "error": "RuntimeError: trainer broke"}
    assert result["failed"] == ["mlp-cpu"]


def test_default_devices_without_usable_cuda_skip_everything(tmp_path, monkeypatch):
    # As under `make bench` on a machine without a GPU (forced here, whatever this machine has).
    def no_cuda(requested, *, model):
        if requested == "cuda":
            raise ConfigError("--device cuda: no CUDA GPU is visible to this process")
        return requested

    def must_not_train(*args, **kwargs):
        raise AssertionError("nothing must be trained when every run is skipped")

    monkeypatch.setattr(bench_gpu, "resolve_device", no_cuda)
    monkeypatch.setattr(bench_gpu, "run_train", must_not_train)
    rc = bench_gpu.main(["--quiet", "--out", str(tmp_path)])
    assert rc == 0
    runs = _result(tmp_path)["runs"]
    assert set(runs) == {"xgboost-cpu", "xgboost-cuda", "mlp-cpu", "mlp-cuda", "part-cpu", "part-cuda"}
    for entry in runs.values():
        assert entry["status"] == "skipped"
        assert "no CUDA GPU is visible" in entry["reason"] and "--devices cpu" in entry["reason"]


def test_a_tagger_epoch_runs_on_a_prepared_jet_folder(tmp_path):
    # The GPU check's tagger: one epoch of the default ParT on jets prepared by prepare's code;
    # on CUDA with mixed precision (on a GPU machine), the reason otherwise.
    rc = bench_gpu.main(["--rows", "1000", "--jets", "2000", "--models", "part", "--devices", "cpu,cuda",
                         "--quiet", "--out", str(tmp_path)])
    assert rc == 0
    result = _result(tmp_path)
    cpu, gpu = result["runs"]["part-cpu"], result["runs"]["part-cuda"]
    assert cpu["status"] == "ran" and cpu["epochs"] == 1 and cpu["mixed_precision"] is False, cpu
    assert cpu["rows_per_second"] > 0 and cpu["n_parameters"] > 0
    assert 1000 < cpu["train_rows"] < 3000 and 0 < cpu["val_auc"] <= 1
    if gpu["status"] == "ran":
        assert gpu["mixed_precision"] is True and gpu["cuda_peak_allocated_mib"] > 0
    else:
        assert gpu["status"] == "unavailable" and gpu["reason"].startswith("--device cuda: ")
    assert result["settings"]["tagger"]["constituents"] == bench_gpu.TAGGER_N
    assert result["jets"] == 2000


@pytest.mark.parametrize("argv", [["--devices", "gpu"], ["--models", "xgboost,svm"],
                                  ["--quick", "--rows", "5000"]])
def test_bad_arguments_are_refused(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_gpu.main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert not (tmp_path / "gpu.json").exists()
