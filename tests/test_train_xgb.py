"""Training stage (XGBoost): xgboost.dask matches single-process xgboost and writes a usable model dir."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import xgboost as xgb
from _train_helpers import read_split, write_prepared_dir
from sklearn.metrics import roc_auc_score

from analysis.cli import main
from analysis.config import DEFAULT_FEATURES, config_from_dict
from analysis.errors import StageInputError
from analysis.train.predict import load_model
from analysis.train.runner import run_train
from analysis.train.xgb import EARLY_STOPPING_METRIC, xgboost_params

XGB = {"max_depth": 4, "eta": 0.15, "num_boost_round": 120, "early_stopping_rounds": 10}


def _config(**cluster):
    return config_from_dict({"train": {"xgboost": XGB},
                             "cluster": {"n_workers": 2, "memory_limit": "1GiB", **cluster}})


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return write_prepared_dir(tmp_path_factory.mktemp("xgb") / "prepared",
                              rows=(16_000, 4_000, 4_000), row_group_rows=1_000, file_rows=4_000)


@pytest.fixture(scope="module")
def dask_model(prep, tmp_path_factory):
    """Trained through --scheduler on a cluster the test starts (and stops) itself."""
    from distributed import LocalCluster

    out = tmp_path_factory.mktemp("xgb") / "models" / "xgboost"
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1GiB", processes=True,
                      dashboard_address=":0") as cluster:
        run_train(prep, out, _config(), model="xgboost", device="cpu",
                  scheduler=cluster.scheduler_address, progress=False)
    return out


def _single_process_auc(prep, config):
    """Plain xgboost.train on the same rows and parameters, in this process."""
    params = xgboost_params(config.train.xgboost, device="cpu")
    train, val, test = (read_split(prep, s) for s in ("train", "val", "test"))
    dtrain = xgb.QuantileDMatrix(train[DEFAULT_FEATURES], train.label, weight=train.train_weight)
    dval = xgb.QuantileDMatrix(val[DEFAULT_FEATURES], val.label, weight=val.train_weight, ref=dtrain)
    booster = xgb.train(params, dtrain, num_boost_round=XGB["num_boost_round"],
                        evals=[(dtrain, "train"), (dval, "val")], verbose_eval=False,
                        callbacks=[xgb.callback.EarlyStopping(rounds=XGB["early_stopping_rounds"],
                                                              metric_name=EARLY_STOPPING_METRIC,
                                                              data_name="val", save_best=True)])
    scores = booster.predict(xgb.DMatrix(test[DEFAULT_FEATURES]))
    return roc_auc_score(test.label, scores, sample_weight=test.weight)


def test_dask_auc_matches_single_process(prep, dask_model):
    test = read_split(prep, "test")
    scores = load_model(dask_model).predict(test, standardised=True)
    auc_dask = roc_auc_score(test.label, scores, sample_weight=test.weight)
    auc_single = _single_process_auc(prep, _config())
    assert abs(auc_dask - auc_single) < 0.01, (auc_dask, auc_single)
    assert 0.80 < auc_dask < 0.95  # the toy problem is separable but not trivially


def test_model_directory_contents(prep, dask_model):
    names = {p.name for p in dask_model.iterdir()}
    assert {"model.json", "features.json", "stats.json", "history.json", "model_info.json"} <= names
    info = json.loads((dask_model / "model_info.json").read_text())
    history = json.loads((dask_model / "history.json").read_text())
    assert info["model"] == "xgboost" and info["device"] == "cpu" and info["dask_workers"] == 2
    assert info["train_partitions"] >= 2  # both workers hold training rows
    assert info["params"]["max_depth"] == 4 and info["params"]["objective"] == "binary:logistic"
    assert info["train_rows"] == 16_000 and info["train_seconds"] > 0
    # The training curve is evaluated on every 4th training row: as many as the val split.
    assert info["train_curve_rows"] == 4_000
    val_loss = history["val"]["logloss"]
    assert len(val_loss) == info["rounds_run"] == len(history["train"]["auc"])
    # Early stopping kept the best round only and stopped `early_stopping_rounds` after it.
    assert info["best_iteration"] == int(np.argmin(val_loss))
    assert info["n_trees"] == info["best_iteration"] + 1
    assert info["rounds_run"] in (info["best_iteration"] + 1 + XGB["early_stopping_rounds"],
                                  XGB["num_boost_round"])
    assert history["train"]["logloss"][-1] < history["train"]["logloss"][0]
    assert json.loads((dask_model / "features.json").read_text()) == DEFAULT_FEATURES
    assert json.loads((dask_model / "stats.json").read_text()) == json.loads((prep / "stats.json").read_text())


def test_predict_applies_the_stored_standardisation(prep, dask_model):
    model = load_model(dask_model)
    assert model.kind == "xgboost" and model.name == "xgboost" and model.features == DEFAULT_FEATURES
    test = read_split(prep, "test").head(500)
    stats = model.stats["features"]
    raw = test.copy()
    for f in DEFAULT_FEATURES:  # raw = standardised * std + mean (stats.json contract)
        raw[f] = test[f].astype(np.float64) * stats[f]["std"] + stats[f]["mean"]
    from_std = model.predict(test, standardised=True)
    np.testing.assert_allclose(model.predict(raw, standardised=False), from_std, atol=1e-6)
    table = pa.Table.from_pandas(raw[DEFAULT_FEATURES[::-1]])  # column order is irrelevant
    np.testing.assert_allclose(model.predict(table, standardised=False), from_std, atol=1e-6)
    assert from_std.shape == (500,) and ((from_std >= 0) & (from_std <= 1)).all()
    # Evaluation reads SHAP values from the booster: per-event contributions sum to the margin.
    dm = xgb.DMatrix(test[DEFAULT_FEATURES].to_numpy(np.float32), feature_names=DEFAULT_FEATURES)
    contribs = model.booster.predict(dm, pred_contribs=True)
    margin = model.booster.predict(dm, output_margin=True)
    np.testing.assert_allclose(contribs.sum(axis=1), margin, rtol=1e-4, atol=1e-4)


def test_predict_names_missing_features(dask_model):
    model = load_model(dask_model)
    table = pd.DataFrame({f: [0.0] for f in DEFAULT_FEATURES if f not in ("mjj", "pt_h")})
    with pytest.raises(StageInputError, match=r"the table lacks features mjj, pt_h that the model in"):
        model.predict(table, standardised=True)


def test_cli_trains_on_a_local_cluster(tmp_path, capsys):
    prep = write_prepared_dir(tmp_path / "prepared", rows=(3_000, 1_000, 0), row_group_rows=500)
    config_file = tmp_path / "analysis.toml"
    config_file.write_text("[train.xgboost]\nnum_boost_round = 15\nmax_depth = 3\n"
                           "[cluster]\nn_workers = 2\nmemory_limit = '1GiB'\n")
    out = tmp_path / "models" / "xgboost"
    main(["train", str(prep), "--model", "xgboost", "--device", "cpu", "--out", str(out),
          "--config", str(config_file), "--quiet"])
    assert f"model: {out}" in capsys.readouterr().err
    info = json.loads((out / "model_info.json").read_text())
    assert info["params"]["max_depth"] == 3 and info["rounds_run"] <= 15
    assert info["cluster"].startswith("dask LocalCluster: 2 worker processes")


def test_incomplete_model_directory_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(StageInputError, match=r"half: no model_info.json \(training did not finish\)"):
        load_model(tmp_path / "half")


def test_local_gpu_cluster_is_one_worker_per_gpu_or_one_without_dask_cuda(monkeypatch):
    # No GPU here: a stand-in dask_cuda records what training_client asks for.
    import sys
    import types

    from distributed import LocalCluster

    import analysis.train.xgb as train_xgb

    asked = {}

    def fake_cuda_cluster(**kwargs):
        asked.update(kwargs)
        return LocalCluster(n_workers=kwargs["n_workers"], threads_per_worker=1, processes=False,
                            dashboard_address=":0")

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=fake_cuda_cluster))
    monkeypatch.setattr(train_xgb, "cuda_gpu_count", lambda: 3)
    cluster_cfg = _config().cluster
    with train_xgb.training_client(cluster_cfg, None, "cuda") as client:
        assert len(client.scheduler_info()["workers"]) == 3
    assert asked["n_workers"] == 3
    assert train_xgb.local_gpu_workers(cluster_cfg, None, "cuda") == "dask_cuda"
    # Without dask_cuda: one plain worker (it trains on the first GPU), not an error.
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # not installed
    assert train_xgb.local_gpu_workers(cluster_cfg, None, "cuda") == "one worker"
    with train_xgb.training_client(cluster_cfg, None, "cuda") as client:
        assert len(client.scheduler_info()["workers"]) == 1
    # CPU runs and runs on a given scheduler never take the GPU path.
    assert train_xgb.local_gpu_workers(cluster_cfg, None, "cpu") is None
    assert train_xgb.local_gpu_workers(cluster_cfg, "tcp://127.0.0.1:1", "cuda") is None


@pytest.mark.parametrize("n_workers, max_rows, expected", [
    (2, 10_000, [1_750] * 2),  # cut in the middle of a 300-row group
    (3, 10_000, [1_166, 1_167, 1_167]),
    (2, 600, [583, 583, 584, 583, 583, 584]),  # a multiple of the workers, each <= max_rows
])
def test_partitions_are_balanced_whatever_the_row_groups(tmp_path, n_workers, max_rows, expected):
    from analysis.train.xgb import plan_partitions, read_split_dask

    # 3 500 rows in files of 1 000 and row groups of 300: 12 uneven groups.
    prep = write_prepared_dir(tmp_path / "p", rows=(3_500, 0, 0), row_group_rows=300,
                              file_rows=1_000)
    files = sorted((prep / "train").glob("part-*.parquet"))
    parts = plan_partitions(files, n_workers, max_rows=max_rows)
    assert [sum(b - a for _, _, a, b in p) for p in parts] == expected
    x, y, w = read_split_dask(files, DEFAULT_FEATURES, n_workers=n_workers)
    assert x.chunks[1] == (len(DEFAULT_FEATURES),) and y.chunks == w.chunks == (x.chunks[0],)
    # Every row exactly once, in file order, with its own label and weight.
    whole = read_split(prep, "train")
    xs, ys, ws = (np.asarray(a.compute(scheduler="sync")) for a in (x, y, w))
    assert np.array_equal(xs, whole[DEFAULT_FEATURES].to_numpy(np.float32))
    assert np.array_equal(ys, whole.label.to_numpy(np.float32))
    assert np.allclose(ws, whole.train_weight.to_numpy(), rtol=1e-6)


def test_one_row_group_still_feeds_every_worker(tmp_path):
    from analysis.train.xgb import plan_partitions

    prep = write_prepared_dir(tmp_path / "p", rows=(900, 0, 0), row_group_rows=1_000,
                              file_rows=1_000)
    parts = plan_partitions(sorted((prep / "train").glob("part-*.parquet")), 4)
    assert [[(g, a, b) for _, g, a, b in p] for p in parts] == [
        [(0, 0, 225)], [(0, 225, 450)], [(0, 450, 675)], [(0, 675, 900)]]


def _with_negative_weights(tmp_path):
    """A prepared directory whose first train file has train_weight < 0 on every 7th row."""
    import pyarrow.parquet as pq

    prep = write_prepared_dir(tmp_path / "p", rows=(4_000, 1_000, 0), row_group_rows=500,
                              file_rows=2_000)
    path = sorted((prep / "train").glob("part-*.parquet"))[0]
    table = pq.read_table(path)
    w = table.column("train_weight").to_numpy().copy()
    w[::7] *= -1  # as NLO generators do for a fraction of their events
    table = table.set_column(table.schema.get_field_index("train_weight"), "train_weight", pa.array(w))
    pq.write_table(table, path, row_group_size=500)
    return prep, int(np.count_nonzero(w < 0))


def test_negative_train_weights_are_counted_and_trained_as_policy(tmp_path):
    from analysis.train.inputs import inspect_prepared
    from analysis.train.xgb import _read_partition, plan_partitions

    prep, negative = _with_negative_weights(tmp_path)
    splits = inspect_prepared(prep, DEFAULT_FEATURES)
    assert splits.split("train").negative_weight_rows == negative == 286
    assert splits.split("val").negative_weight_rows == 0  # known from statistics, not read
    part = plan_partitions(splits.split("train").files, 1)[0]
    raw = read_split(prep, "train").train_weight.to_numpy().astype(np.float32)
    assert np.array_equal(_read_partition(part, DEFAULT_FEATURES, "abs")[2], np.abs(raw))
    assert np.array_equal(_read_partition(part, DEFAULT_FEATURES, "zero")[2], np.maximum(raw, 0))
    # xgboost itself refuses them; the default policy trains on |w| and says so.
    config = config_from_dict({"train": {"xgboost": {**XGB, "num_boost_round": 5}},
                               "cluster": {"n_workers": 2, "memory_limit": "1GiB"}})
    out = run_train(prep, tmp_path / "m", config, model="xgboost", device="cpu", progress=False)
    info = json.loads((out / "model_info.json").read_text())
    assert info["negative_weight_rows"] == {"train": 286, "val": 0}
    assert info["negative_weights"] == "abs"
    config.train.xgboost.negative_weights = "error"
    with pytest.raises(StageInputError, match=r"286 train and 0 val rows have train_weight < 0, "
                                              r"which xgboost cannot train on; set "
                                              r"train.xgboost.negative_weights to \"abs\" or \"zero\""):
        run_train(prep, tmp_path / "m2", config, model="xgboost", device="cpu", progress=False)
