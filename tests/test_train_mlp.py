"""Training stage (MLP): the streamed network learns, and a resumed run is the same run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xgboost as xgb
from sklearn.metrics import roc_auc_score

torch = pytest.importorskip("torch")

from _train_helpers import read_split, write_prepared_dir  # noqa: E402

import analysis.train.fit as train_fit  # noqa: E402
from analysis.cli import main  # noqa: E402
from analysis.config import DEFAULT_FEATURES, config_from_dict  # noqa: E402
from analysis.errors import StageInputError  # noqa: E402
from analysis.train.predict import load_model  # noqa: E402
from analysis.train.runner import run_train  # noqa: E402


def _config(**mlp):
    # Dropout on, so resuming must restore the RNG state, not only the weights.
    base = {"hidden": [32, 32], "dropout": 0.1, "batch_size": 128, "shuffle_buffer": 1_000,
            "max_epochs": 4, "patience": 10, "lr": 3e-3}
    return config_from_dict({"train": {"mlp": {**base, **mlp}}})


@pytest.fixture(scope="module")
def small_prep(tmp_path_factory):
    return write_prepared_dir(tmp_path_factory.mktemp("mlp") / "prepared",
                              rows=(3_000, 1_000, 1_000), row_group_rows=250, file_rows=1_000)


def _state(model_dir):
    return torch.load(model_dir / "model.pt", weights_only=True)


def test_resume_continues_the_same_run(small_prep, tmp_path, monkeypatch):
    whole = run_train(small_prep, tmp_path / "whole", _config(), model="mlp", device="cpu",
                      progress=False)

    real_save, saves = train_fit.save_checkpoint, []

    def save_then_die(path, state):  # the process dies right after epoch 1's checkpoint
        real_save(path, state)
        saves.append(state["epoch"])
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_fit, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_train(small_prep, tmp_path / "cut", _config(), model="mlp", device="cpu", progress=False)
    assert saves == [0, 1]
    assert not (tmp_path / "cut" / "model_info.json").exists()  # not mistaken for a finished model
    with pytest.raises(StageInputError, match="training did not finish"):
        load_model(tmp_path / "cut")

    monkeypatch.setattr(train_fit, "save_checkpoint", real_save)
    resumed = run_train(small_prep, tmp_path / "cut", _config(), model="mlp", device="cpu",
                        resume=True, progress=False)
    a, b = _state(whole), _state(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    ha = json.loads((whole / "history.json").read_text())
    hb = json.loads((resumed / "history.json").read_text())
    assert ha["epoch"] == hb["epoch"] == [0, 1, 2, 3]
    assert ha["val_loss"] == hb["val_loss"] and ha["train_loss"] == hb["train_loss"]
    # A fresh run without the restored RNG/data order would differ: the check has teeth.
    other = run_train(small_prep, tmp_path / "other", _config(seed=8), model="mlp", device="cpu",
                      progress=False)
    assert not torch.equal(_state(other)["0.weight"], a["0.weight"])


def test_resume_with_changed_settings_is_refused(small_prep, tmp_path):
    run_train(small_prep, tmp_path / "m", _config(max_epochs=1), model="mlp", device="cpu",
              progress=False)
    # More epochs is a continuation; another learning rate is another run.
    run_train(small_prep, tmp_path / "m", _config(max_epochs=2), model="mlp", device="cpu",
              resume=True, progress=False)
    assert json.loads((tmp_path / "m" / "history.json").read_text())["epoch"] == [0, 1]
    with pytest.raises(StageInputError, match=r"checkpoint.pt: cannot resume: settings lr differ "
                                               r"from the checkpointed run; train without --resume"):
        run_train(small_prep, tmp_path / "m", _config(max_epochs=3, lr=1e-2), model="mlp",
                  device="cpu", resume=True, progress=False)


def test_early_stopping_and_model_directory(small_prep, tmp_path):
    # lr so large the validation loss cannot keep improving: patience 2 must stop the run.
    out = run_train(small_prep, tmp_path / "mlp", _config(max_epochs=30, patience=2, lr=0.5,
                                                          lr_decay_patience=10),
                    model="mlp", device="cpu", progress=False)
    info = json.loads((out / "model_info.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert info["model"] == "mlp" and info["device"] == "cpu" and info["mixed_precision"] is False
    assert info["stopped_early"] and info["epochs_run"] < 30
    assert info["epochs_run"] == info["best_epoch"] + 1 + 2  # patience epochs after the best
    assert info["best_epoch"] == int(np.argmin(history["val_loss"]))
    assert info["params"]["hidden"] == [32, 32]
    assert {"model.pt", "checkpoint.pt", "features.json", "stats.json"} <= {p.name for p in out.iterdir()}


def test_mlp_auc_close_to_xgboost_and_predict_raw(tmp_path):
    prep = write_prepared_dir(tmp_path / "prepared", rows=(20_000, 5_000, 5_000),
                              row_group_rows=1_000, file_rows=5_000)
    config = config_from_dict({"train": {"mlp": {"batch_size": 256, "shuffle_buffer": 5_000,
                                                  "max_epochs": 12, "patience": 4}}})
    model = load_model(run_train(prep, tmp_path / "mlp", config, model="mlp", device="cpu",
                                 progress=False))
    train, test = read_split(prep, "train"), read_split(prep, "test")
    mlp_auc = roc_auc_score(test.label, model.predict(test, standardised=True), sample_weight=test.weight)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "eta": 0.1},
                        xgb.DMatrix(train[DEFAULT_FEATURES], train.label, weight=train.train_weight), 150)
    xgb_auc = roc_auc_score(test.label, booster.predict(xgb.DMatrix(test[DEFAULT_FEATURES])),
                            sample_weight=test.weight)
    assert mlp_auc >= xgb_auc - 0.03, (mlp_auc, xgb_auc)
    raw = test.copy()
    for f in DEFAULT_FEATURES:
        raw[f] = test[f].astype(np.float64) * model.stats["features"][f]["std"] + model.stats["features"][f]["mean"]
    np.testing.assert_allclose(model.predict(raw, standardised=False),
                               model.predict(test, standardised=True), atol=1e-6)


def test_cli_mlp_with_loader_workers(small_prep, tmp_path, capsys):
    config_file = tmp_path / "analysis.toml"
    config_file.write_text("[train.mlp]\nhidden = [16]\nmax_epochs = 2\nnum_workers = 2\n"
                           "batch_size = 256\nshuffle_buffer = 500\n")
    out = tmp_path / "models" / "mlp"
    main(["train", str(small_prep), "--model", "mlp", "--out", str(out), "--config", str(config_file),
          "--device", "auto", "--quiet"])
    info = json.loads((out / "model_info.json").read_text())
    assert info["device"] == "cpu" and info["params"]["num_workers"] == 2
    assert info["epochs_run"] == 2
    scores = load_model(out).predict(read_split(small_prep, "val"), standardised=True)
    assert scores.shape == (1_000,) and np.isfinite(scores).all()
    # A finished run resumed: nothing more to train, the same model comes back.
    before = _state(out)
    main(["train", str(small_prep), "--model", "mlp", "--out", str(out), "--config", str(config_file),
          "--resume", "--quiet"])
    after = _state(out)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_nan_features_are_imputed_not_propagated(tmp_path):
    # Prepare leaves non-finite raw values NaN; the network must still learn and score.
    prep = write_prepared_dir(tmp_path / "prepared", rows=(2_000, 500, 500), row_group_rows=250)
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in [*(prep / "train").glob("part-*.parquet"), *(prep / "val").glob("part-*.parquet")]:
        table = pq.read_table(path)
        col = table.column("mjj")
        holed = pc.if_else(pc.equal(pc.bit_wise_and(table.column("event"), 7), 0), None, col)
        holed = pc.fill_null(holed, float("nan")).cast("float32")
        pq.write_table(table.set_column(table.schema.get_field_index("mjj"), "mjj", holed), path,
                       row_group_size=250)
    assert read_split(prep, "train")["mjj"].isna().mean() > 0.1
    out = run_train(prep, tmp_path / "mlp", _config(max_epochs=2), model="mlp", device="cpu",
                    progress=False)
    history = json.loads((out / "history.json").read_text())
    assert np.isfinite(history["train_loss"]).all() and np.isfinite(history["val_loss"]).all()
    scores = load_model(out).predict(read_split(prep, "val"), standardised=True)
    assert np.isfinite(scores).all()
