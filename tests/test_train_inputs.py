"""Training stage: a broken prepared directory gives one line naming the problem and the fix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _train_helpers import write_prepared_dir, write_prepared_manifest

from analysis.cli import main
from analysis.config import DEFAULT_FEATURES, config_from_dict, default_config
from analysis.errors import ConfigError, StageInputError
from analysis.train.inputs import inspect_prepared
from analysis.train.model_dir import resolve_device
from analysis.train.runner import run_train

SMALL = (600, 200, 200)


@pytest.fixture
def prep(tmp_path):
    return write_prepared_dir(tmp_path / "prepared", rows=SMALL, row_group_rows=100, file_rows=300)


def _cli_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, f"expected one line, got: {err!r}"
    return exit_info.value.code, err


def test_complete_directory_is_described(prep):
    prepared = inspect_prepared(prep, DEFAULT_FEATURES)
    assert prepared.features == DEFAULT_FEATURES
    assert set(prepared.splits) == {"train", "val", "test"}
    train = prepared.split("train")
    assert train.rows == 600 and len(train.files) == 2 and train.row_groups == 6
    assert train.signal_rows + train.background_rows == 600 and train.signal_rows > 0


def test_missing_split_is_one_line(prep, tmp_path, capsys):
    shutil.rmtree(prep / "val")
    write_prepared_manifest(prep)  # a preparation without a val split
    with pytest.raises(StageInputError, match=r"the 'val' split is missing .*found splits: train, test"):
        inspect_prepared(prep, DEFAULT_FEATURES)
    code, err = _cli_error(capsys, ["train", str(prep), "--out", str(tmp_path / "m"), "--quiet"])
    assert code == 1
    assert err.startswith("hepprep: error: ") and "'val' split is missing" in err
    assert "non-zero val fraction in --split" in err


def test_missing_test_split_is_allowed(prep):
    # test/ is evaluation's input; training needs only train and val.
    shutil.rmtree(prep / "test")
    write_prepared_manifest(prep)
    assert set(inspect_prepared(prep, DEFAULT_FEATURES).splits) == {"train", "val"}


def test_no_signal_rows_is_one_line(prep, tmp_path, capsys):
    for path in (prep / "train").glob("part-*.parquet"):
        table = pq.read_table(path)
        zeros = pa.array(np.zeros(table.num_rows, dtype=np.int8))
        pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", zeros), path)
    with pytest.raises(StageInputError, match=r"train: no signal rows \(label 1\) among 600 rows"):
        inspect_prepared(prep, DEFAULT_FEATURES)
    code, err = _cli_error(capsys, ["train", str(prep), "--out", str(tmp_path / "m"), "--quiet"])
    assert code == 1 and "no signal rows (label 1) among 600 rows" in err
    assert "check the samples' labels in the config" in err


def test_features_not_matching_stats_json(prep, tmp_path, capsys):
    config_file = tmp_path / "analysis.toml"
    features = [f for f in DEFAULT_FEATURES if f != "pt_h"] + ["met_phi"]
    config_file.write_text(f"features = {json.dumps(features)}\n")
    with pytest.raises(StageInputError) as err_info:
        inspect_prepared(prep, features)
    msg = str(err_info.value)
    assert "features do not match the config" in msg
    assert "in the config but not in stats.json: met_phi" in msg
    assert "in stats.json but not in the config: pt_h" in msg
    code, err = _cli_error(capsys, ["train", str(prep), "--out", str(tmp_path / "m"),
                                    "--config", str(config_file), "--quiet"])
    assert code == 1 and "in the config but not in stats.json: met_phi" in err


def test_feature_order_comes_from_stats_json(prep):
    shuffled = list(reversed(DEFAULT_FEATURES))
    assert inspect_prepared(prep, shuffled).features == DEFAULT_FEATURES


def test_stats_json_feature_missing_from_parquet(prep):
    stats = json.loads((prep / "stats.json").read_text())
    stats["feature_order"].append("tau1_iso")
    stats["features"]["tau1_iso"] = {"mean": 0.1, "std": 0.05}
    (prep / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(StageInputError, match=r"part-00000.parquet: missing columns tau1_iso"):
        inspect_prepared(prep, [*DEFAULT_FEATURES, "tau1_iso"])


def test_missing_stats_json_and_directory(prep, tmp_path):
    (prep / "stats.json").unlink()
    with pytest.raises(StageInputError, match=r"stats.json: missing; .* \(run `hepprep prepare SKIMDIR --out "):
        inspect_prepared(prep, DEFAULT_FEATURES)
    with pytest.raises(StageInputError, match=r"nowhere: no such prepared directory"):
        inspect_prepared(tmp_path / "nowhere", DEFAULT_FEATURES)


def test_zero_std_in_stats_json(prep):
    stats = json.loads((prep / "stats.json").read_text())
    stats["features"]["njets"]["std"] = 0.0
    (prep / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(StageInputError, match=r"feature 'njets' has std 0.0, must be > 0"):
        inspect_prepared(prep, DEFAULT_FEATURES)


def test_bad_model_and_resume_flags(prep, tmp_path):
    with pytest.raises(ConfigError, match=r"--model 'bdt': unknown model; use xgboost, mlp, pfn, part or cnn"):
        run_train(prep, tmp_path / "m", default_config(), model="bdt")
    with pytest.raises(ConfigError, match=r"--resume: only the networks checkpoint"):
        run_train(prep, tmp_path / "m", default_config(), model="xgboost", resume=True)


def test_device_resolution(monkeypatch):
    import analysis.train.model_dir as common

    assert resolve_device("cpu", model="xgboost") == "cpu"
    with pytest.raises(ConfigError, match=r"--device 'tpu': unknown device; use auto, cpu or cuda"):
        resolve_device("tpu", model="mlp")
    monkeypatch.setattr(common, "_backend_has_cuda", lambda model: (True, ""))
    monkeypatch.setattr(common, "cuda_gpu_count", lambda: 0)
    assert resolve_device("auto", model="xgboost") == "cpu"
    with pytest.raises(ConfigError, match=r"--device cuda: no CUDA GPU is visible .* use --device cpu or auto"):
        resolve_device("cuda", model="xgboost")
    monkeypatch.setattr(common, "cuda_gpu_count", lambda: 2)
    assert resolve_device("auto", model="mlp") == "cuda"
    assert resolve_device("cuda", model="mlp") == "cuda"
    monkeypatch.setattr(common, "_backend_has_cuda", lambda model: (False, "this torch build (x+cpu) has no CUDA support"))
    assert resolve_device("auto", model="mlp") == "cpu"
    with pytest.raises(ConfigError, match=r"--device cuda: this torch build \(x\+cpu\) has no CUDA support"):
        resolve_device("cuda", model="mlp")


def test_cuda_visible_devices_empty_hides_gpus(monkeypatch):
    from analysis.train.model_dir import cuda_gpu_count

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cuda_gpu_count() == 0


def test_config_mlp_knobs_validate():
    cfg = config_from_dict({"train": {"mlp": {"lr_decay_factor": 0.25, "lr_decay_patience": 0}}})
    assert cfg.train.mlp.lr_decay_factor == 0.25
    with pytest.raises(ConfigError, match=r"train.mlp.lr_decay_factor"):
        config_from_dict({"train": {"mlp": {"lr_decay_factor": 1.5}}})
