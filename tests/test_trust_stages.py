"""Trust, items 1, 3, 4, 5, 8, 10, 11: prepare, train and evaluate read exactly what they should.

Prepare reads the parts the skim manifest lists and refuses an incomplete skim; its
outputs are checked, never replaced when they hold foreign files; training and evaluation
read the files the prepared manifest lists, evaluation refuses a model of another
preparation; ±inf never reaches a trainer; a checkpoint is data, not code; damaged model
files are one line; a failing resume leaves a good model alone.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w
from _prepare_helpers import default_samples, write_skim

from analysis import config_from_dict, run_evaluate, run_prepare, run_train
from analysis.cli import main

FEATURES = ["tau1_pt", "tau2_pt", "jet1_btag", "m_vis", "mjj", "jdeta", "met_pt"]


def _config(**sections):
    base = {"features": FEATURES,
            "prepare": {"bucket_rows": 3000, "file_rows": 1500, "row_group_rows": 400},
            "cluster": {"n_workers": 1, "memory_limit": "2GiB"},
            "train": {"xgboost": {"num_boost_round": 15, "early_stopping_rounds": 5},
                      "mlp": {"hidden": [16], "max_epochs": 2, "shuffle_buffer": 2000,
                              "read_threads": 1}},
            "evaluate": {"n_bins": 10, "shap_rows": 200, "dpi": 40}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return config_from_dict(base)


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      memory_limit="2GiB") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def skim(tmp_path_factory) -> Path:
    return write_skim(tmp_path_factory.mktemp("skim") / "skim", default_samples(scale=0.5),
                      rows_per_file=1500, row_group_rows=500)


@pytest.fixture(scope="module")
def prepared(skim, scheduler, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "prepared"
    run_prepare(skim, out, _config(), scheduler=scheduler, progress=False)
    return out


@pytest.fixture(scope="module")
def models(prepared, scheduler, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: run_train(prepared, root / kind, _config(), model=kind, device="cpu",
                            scheduler=scheduler, progress=False) for kind in ("xgboost", "mlp")}


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def _one_line_error(capsys, *argv) -> str:
    code, err = _cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("hepprep: error: "), err
    return lines[0]


def _split_rows(prep: Path) -> dict[str, int]:
    manifest = json.loads((prep / "manifest.json").read_text())
    return {s: info["rows"] for s, info in manifest["splits"].items()}


# -- item 3: prepare reads exactly the parts the skim manifest lists --------------------------

def test_backup_copies_and_foreign_parquet_are_not_read(skim, prepared, scheduler, tmp_path):
    cluttered = tmp_path / "skim"
    shutil.copytree(skim, cluttered)
    shutil.copytree(cluttered / "DYJetsToLL", cluttered / "DYJetsToLL.bak")
    (cluttered / "notes").mkdir()
    pq.write_table(pa.table({"x": [1.0, 2.0]}), cluttered / "notes" / "part-0.parquet")
    run_prepare(cluttered, tmp_path / "prep", _config(), scheduler=scheduler, progress=False)
    assert _split_rows(tmp_path / "prep") == _split_rows(prepared)


def _edit_manifest(skim_dir: Path, edit) -> None:
    path = skim_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_an_incomplete_skim_is_refused_unless_asked(skim, scheduler, tmp_path, capsys):
    partial = tmp_path / "skim"
    shutil.copytree(skim, partial)

    def interrupt(manifest):
        manifest["complete"] = False
        manifest["files"][0]["status"] = "incomplete"
        manifest["files"][0]["chunks"] = []
    _edit_manifest(partial, interrupt)
    line = _one_line_error(capsys, "prepare", partial, "--out", tmp_path / "prep", "--quiet")
    assert "the skim is incomplete (1 input file(s) not done" in line and "--allow-incomplete" in line
    assert not (tmp_path / "prep").exists()
    manifest = run_prepare(partial, tmp_path / "prep", _config(), allow_incomplete=True,
                           scheduler=scheduler, progress=False)
    assert manifest["skim"]["allow_incomplete"] is True and manifest["skim"]["complete"] is False
    assert len(manifest["skim"]["files_not_done"]) == 1
    assert manifest["prepare"]["allow_incomplete"] is True


def test_a_dataset_without_parts_is_refused_unless_asked(skim, scheduler, tmp_path, capsys):
    partial = tmp_path / "skim"
    shutil.copytree(skim, partial)

    def all_skipped(manifest):
        manifest["datasets"]["W1JetsToLNu"] = {"process": "W1J", "label": 0}
        manifest["files"].append({"dataset": "W1JetsToLNu", "path": "/data/w1.root", "status": "skipped",
                                  "chunks": [], "error": "not a ROOT file"})
    _edit_manifest(partial, all_skipped)
    line = _one_line_error(capsys, "prepare", partial, "--out", tmp_path / "prep", "--quiet")
    assert "dataset(s) 'W1JetsToLNu' have no skim parts" in line
    manifest = run_prepare(partial, tmp_path / "prep", _config(), allow_incomplete=True,
                           scheduler=scheduler, progress=False)
    assert manifest["skim"]["datasets_without_parts"] == ["W1JetsToLNu"]


def test_listed_parts_must_be_there_with_their_rows(skim, tmp_path, capsys):
    broken = tmp_path / "skim"
    shutil.copytree(skim, broken)
    victim = sorted((broken / "TTbar").glob("part-*.parquet"))[0]
    table = pq.read_table(victim)
    pq.write_table(table.slice(0, 10), victim)
    line = _one_line_error(capsys, "prepare", broken, "--out", tmp_path / "prep", "--quiet")
    assert f"{victim}: holds 10 rows but manifest.json says {table.num_rows}" in line
    victim.unlink()
    line = _one_line_error(capsys, "prepare", broken, "--out", tmp_path / "prep", "--quiet")
    assert f"{victim}: listed in manifest.json" in line and "but missing" in line
    (broken / "manifest.json").unlink()
    line = _one_line_error(capsys, "prepare", broken, "--out", tmp_path / "prep", "--quiet")
    assert "no skim manifest" in line


# -- item 8: prepare's outputs ------------------------------------------------------------------

def test_a_damaged_prepared_folder_is_prepared_again(skim, prepared, scheduler, tmp_path):
    out = tmp_path / "prep"
    shutil.copytree(prepared, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    shutil.rmtree(out / "val")
    run_prepare(skim, out, _config(), scheduler=scheduler, progress=False)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # val is back, byte for byte


def test_an_out_folder_with_foreign_files_is_not_replaced(skim, prepared, scheduler, tmp_path, capsys):
    out = tmp_path / "prep"
    shutil.copytree(prepared, out)
    (out / "NOTES.txt").write_text("my notes")
    (out / "models").mkdir()
    (out / "models" / "model.json").write_text("{}")
    line = _one_line_error(capsys, "prepare", skim, "--out", out, "--quiet", "--seed", "99")
    assert "holds NOTES.txt, models, which `hepprep prepare` did not write" in line
    assert (out / "NOTES.txt").read_text() == "my notes" and (out / "models" / "model.json").exists()


# -- item 4: evaluation reads what the prepared manifest lists, of the model's own preparation ---

def _test_auc(out: Path, name: str) -> float:
    return json.loads((out / "metrics.json").read_text())["models"][name]["roc_auc"]


def test_a_stray_copy_of_training_rows_in_test_is_not_scored(prepared, models, tmp_path):
    reference = run_evaluate([models["xgboost"]], prepared, tmp_path / "ref", _config(), progress=False)
    stray = tmp_path / "prep"
    shutil.copytree(prepared, stray)
    # (the model records its preparation's fingerprint, which a copy of the folder keeps)
    for k, part in enumerate(sorted((stray / "train").glob("*.parquet"))):
        shutil.copy(part, stray / "test" / f"part-99999-{k:03d}.parquet")
    run_evaluate([models["xgboost"]], stray, tmp_path / "stray", _config(), progress=False)
    assert _test_auc(tmp_path / "stray", "xgboost") == _test_auc(reference.parent, "xgboost")


def test_a_model_of_another_preparation_is_refused_unless_asked(skim, models, scheduler, tmp_path, capsys):
    other = tmp_path / "prep-seed-99"
    run_prepare(skim, other, _config(prepare={"seed": 99}), scheduler=scheduler, progress=False)
    line = _one_line_error(capsys, "evaluate", models["xgboost"], other, "--out", tmp_path / "eval",
                           "--quiet")
    assert f"model {models['xgboost']} was trained on another preparation" in line
    assert "--allow-other-prepared" in line
    assert not (tmp_path / "eval").exists()
    report = run_evaluate([models["xgboost"]], other, tmp_path / "eval", _config(),
                          allow_other_prepared=True, progress=False)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["models"]["xgboost"]["trained_on_this_prepared"] is False
    assert len(metrics["warnings"]) == 1 and "trained on another preparation" in metrics["warnings"][0]
    assert "Warning:" in report.read_text() and "another preparation" in report.read_text()


# -- item 5: inf in an input branch ------------------------------------------------------------

def test_infinities_are_missing_values_and_never_reach_a_trainer(skim, scheduler, tmp_path):
    src = tmp_path / "skim"
    shutil.copytree(skim, src)
    n_inf = 0
    for part in sorted((src / "DYJetsToLL").glob("part-*.parquet")):
        table = pq.read_table(part)
        m_vis = table.column("m_vis").to_numpy().copy()
        m_vis[::7] = np.inf
        m_vis[3::11] = -np.inf
        n_inf += int(np.isinf(m_vis).sum())
        table = table.set_column(table.schema.get_field_index("m_vis"), "m_vis", pa.array(m_vis))
        pq.write_table(table, part)
    prep = tmp_path / "prep"
    run_prepare(src, prep, _config(), scheduler=scheduler, progress=False)
    stats = json.loads((prep / "stats.json").read_text())
    assert 0 < stats["features"]["m_vis"]["n_inf"] < n_inf  # the training rows' share of them
    assert stats["features"]["m_vis"]["n_nan"] == 0 and stats["features"]["tau1_pt"]["n_inf"] == 0
    assert np.isfinite(stats["features"]["m_vis"]["mean"]) and np.isfinite(stats["features"]["m_vis"]["max"])
    written = pa.concat_tables([pq.read_table(p, columns=["m_vis"]) for s in ("train", "val", "test")
                                for p in (prep / s).glob("*.parquet")]).column("m_vis").to_numpy()
    assert not np.isinf(written).any() and np.isnan(written).sum() == n_inf
    for kind in ("xgboost", "mlp"):
        model = run_train(prep, tmp_path / kind, _config(), model=kind, device="cpu", scheduler=scheduler,
                          progress=False)
        info = json.loads((model / "model_info.json").read_text())
        assert np.isfinite(info.get("best_val_logloss", info.get("best_val_loss")))


# -- items 1, 10, 11: checkpoints and model files ---------------------------------------------

class _Payload:
    """Unpickling this runs code: it touches a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_checkpoint_carrying_code_is_refused_and_the_model_kept(prepared, models, tmp_path, capsys):
    import torch

    model = _copy_model(models["mlp"], tmp_path / "mlp")
    info = (model / "model_info.json").read_bytes()
    state = torch.load(model / "checkpoint.pt", weights_only=True)
    marker = tmp_path / "code-ran"
    state["history"]["note"] = _Payload(marker)
    torch.save(state, model / "checkpoint.pt")
    line = _one_line_error(capsys, "train", prepared, "--model", "mlp", "--out", model, "--resume",
                           "--quiet", "--config", _write_config(tmp_path))
    assert "cannot resume: the checkpoint holds more than tensors" in line
    assert not marker.exists()
    assert (model / "model_info.json").read_bytes() == info  # validated first, nothing touched


def test_a_damaged_checkpoint_is_one_line_and_the_model_kept(prepared, models, tmp_path, capsys):
    model = _copy_model(models["mlp"], tmp_path / "mlp")
    info = (model / "model_info.json").read_bytes()
    data = (model / "checkpoint.pt").read_bytes()
    (model / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    line = _one_line_error(capsys, "train", prepared, "--model", "mlp", "--out", model, "--resume",
                           "--quiet", "--config", _write_config(tmp_path))
    assert "checkpoint.pt: cannot resume: not a readable checkpoint" in line
    assert (model / "model_info.json").read_bytes() == info


def _write_config(tmp_path: Path) -> Path:
    import tomli_w

    path = tmp_path / "analysis.toml"
    path.write_text(tomli_w.dumps(_config().model_dump(mode="json", exclude_none=True)))
    return path


@pytest.mark.parametrize("kind, file, damage, message", [
    ("xgboost", "model.json", b'{"learner": ', "model.json: not a readable XGBoost model"),
    ("xgboost", "model_info.json", b"{not json", "model_info.json: the model record is not valid JSON"),
    ("xgboost", "features.json", b'{"a": 1}', "features.json: not a list of feature names"),
    ("mlp", "model.pt", b"PK\x03\x04 truncated", "model.pt: not a readable torch state dict"),
    ("mlp", "model_info.json", b'["a list"]', "model_info.json: not a model record"),
])
def test_damaged_model_files_are_one_line(prepared, models, tmp_path, capsys, kind, file, damage, message):
    model = _copy_model(models[kind], tmp_path / kind)
    (model / file).write_bytes(damage)
    line = _one_line_error(capsys, "evaluate", model, prepared, "--out", tmp_path / "eval", "--quiet",
                           "--config", _write_config(tmp_path))
    assert message in line, line


def test_a_model_file_carrying_code_is_refused(prepared, models, tmp_path, capsys):
    import torch

    model = _copy_model(models["mlp"], tmp_path / "mlp")
    state = torch.load(model / "model.pt", weights_only=True)
    marker = tmp_path / "code-ran"
    torch.save({**state, "extra": _Payload(marker)}, model / "model.pt")
    line = _one_line_error(capsys, "evaluate", model, prepared, "--out", tmp_path / "eval", "--quiet",
                           "--config", _write_config(tmp_path))
    assert "model.pt: holds more than tensors" in line and not marker.exists()


def test_a_model_trained_here_records_the_preparation(prepared, models):
    manifest = json.loads((prepared / "manifest.json").read_text())
    for model in models.values():
        info = json.loads((model / "model_info.json").read_text())
        assert info["prepared_fingerprint"] == manifest["fingerprint"]


def test_a_refused_resume_leaves_the_model_alone(prepared, models, tmp_path, capsys):
    model = _copy_model(models["mlp"], tmp_path / "mlp")
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    other = _config(train={"mlp": {"hidden": [32], "max_epochs": 2, "shuffle_buffer": 2000, "read_threads": 1}})
    config = tmp_path / "other.toml"
    config.write_text(tomli_w.dumps(other.model_dump(mode="json", exclude_none=True)))
    line = _one_line_error(capsys, "train", prepared, "--model", "mlp", "--out", model, "--resume",
                           "--quiet", "--config", config)
    assert "checkpoint" in line and "settings hidden differ" in line, line
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == before


def test_the_mlp_trains_on_signed_nlo_weights(prepared, tmp_path):
    # the validation AUC with negative weights has no area unless taken with |w|, as evaluation does
    weights = np.concatenate([pq.read_table(p, columns=["train_weight"]).column(0).to_numpy()
                              for p in (prepared / "val").glob("*.parquet")])
    assert (weights < 0).any()  # the sample's NLO (DY-like) weights: some are negative
    model = run_train(prepared, tmp_path / "mlp", _config(), model="mlp", device="cpu", progress=False)
    history = json.loads((model / "history.json").read_text())
    assert history["val_auc"] and np.isfinite(history["val_auc"]).all()


# -- item 10: a full disk in prepare, train and evaluate -----------------------------------------

def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_one_line_in_prepare_train_and_evaluate(skim, prepared, models, scheduler, tmp_path,
                                                               capsys, monkeypatch):
    # every stage puts its files in place with os.replace / os.rename: the disk fills up there
    config = _write_config(tmp_path)
    monkeypatch.setattr(os, "replace", _disk_full)
    monkeypatch.setattr(os, "rename", _disk_full)
    runs = {
        "prepare": ["prepare", skim, "--out", tmp_path / "prep", "--scheduler", scheduler],
        "xgboost": ["train", prepared, "--model", "xgboost", "--out", tmp_path / "xgb", "--scheduler", scheduler],
        "mlp": ["train", prepared, "--model", "mlp", "--out", tmp_path / "mlp"],
        "evaluate": ["evaluate", models["xgboost"], prepared, "--out", tmp_path / "eval"],
    }
    for stage, argv in runs.items():
        line = _one_line_error(capsys, *argv, "--quiet", "--config", config)
        assert "no space left on device" in line, (stage, line)
    assert not (tmp_path / "prep").exists()
    for model in ("xgb", "mlp"):
        assert not (tmp_path / model / "model_info.json").exists()
    assert not (tmp_path / "eval" / "metrics.json").exists() and not (tmp_path / "eval" / "report.html").exists()
    assert [str(p) for p in tmp_path.rglob(".*") if ".tmp" in p.name] == []
