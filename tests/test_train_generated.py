"""Training stage on the real upstream output: generate -> skim -> prepare -> train (acceptance 1, 2).

CI runs acceptance 1 on a reduced generated sample; the default size (config
generate.events) is marked slow and also run by benchmarks/bench_train.py. The MLP
comparison (acceptance 2) is made at the default size only: on the reduced sample the
network sees a few thousand training rows, too few for the comparison to mean anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xgboost as xgb
from _train_helpers import generated_prepared_dir, read_split
from sklearn.metrics import roc_auc_score

from analysis.config import default_config
from analysis.train.predict import load_model
from analysis.train.runner import run_train
from analysis.train.xgb import EARLY_STOPPING_METRIC, xgboost_params

CI_EVENTS = 40_000
DEFAULT_EVENTS = default_config().generate.events
SIZES = [pytest.param(CI_EVENTS, id="ci-40k"),
         pytest.param(DEFAULT_EVENTS, id="default", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="2GiB", processes=True,
                      dashboard_address=":0") as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def sample(request, cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"generated-{request.param}")
    prep = generated_prepared_dir(work, events=request.param, scheduler=cluster)
    return {"prep": prep, "work": work, "scheduler": cluster, "test": read_split(prep, "test")}


def _weighted_auc(model_dir, test):
    scores = load_model(model_dir).predict(test, standardised=True)
    return roc_auc_score(test.label, scores, sample_weight=test.weight)


def _single_process_auc(prep, config, test):
    """Plain xgboost.train in this process on the same rows and parameters."""
    cfg = config.train.xgboost
    features = json.loads((Path(prep) / "stats.json").read_text())["feature_order"]
    train, val = read_split(prep, "train"), read_split(prep, "val")
    dtrain = xgb.QuantileDMatrix(train[features], train.label, weight=train.train_weight)
    dval = xgb.QuantileDMatrix(val[features], val.label, weight=val.train_weight, ref=dtrain)
    booster = xgb.train(xgboost_params(cfg, device="cpu"), dtrain, num_boost_round=cfg.num_boost_round,
                        evals=[(dtrain, "train"), (dval, "val")], verbose_eval=False,
                        callbacks=[xgb.callback.EarlyStopping(rounds=cfg.early_stopping_rounds,
                                                              metric_name=EARLY_STOPPING_METRIC,
                                                              data_name="val", save_best=True)])
    return roc_auc_score(test.label, booster.predict(xgb.DMatrix(test[features])),
                         sample_weight=test.weight)


@pytest.fixture(scope="module")
def xgb_auc(sample):
    config = default_config()
    model_dir = run_train(sample["prep"], sample["work"] / "models" / "xgboost", config,
                          model="xgboost", device="cpu", scheduler=sample["scheduler"], progress=False)
    info = json.loads((model_dir / "model_info.json").read_text())
    # The prepared split may be a single file: it is still spread over both workers.
    assert info["dask_workers"] == 2 and info["train_partitions"] >= 2
    return _weighted_auc(model_dir, sample["test"])


@pytest.mark.parametrize("sample", SIZES, indirect=True)
def test_xgboost_dask_matches_single_process_and_physics_range(sample, xgb_auc):
    single = _single_process_auc(sample["prep"], default_config(), sample["test"])
    assert abs(xgb_auc - single) < 0.01, (xgb_auc, single)
    assert 0.80 <= xgb_auc <= 0.97, xgb_auc  # PHYSICS.md range for the default pipeline


@pytest.mark.slow
@pytest.mark.parametrize("sample", [pytest.param(DEFAULT_EVENTS, id="default")], indirect=True)
def test_mlp_close_to_xgboost(sample, xgb_auc):
    config = default_config()
    model_dir = run_train(sample["prep"], sample["work"] / "models" / "mlp", config, model="mlp",
                          device="cpu", progress=False)
    mlp_auc = _weighted_auc(model_dir, sample["test"])
    assert mlp_auc >= xgb_auc - 0.03, (mlp_auc, xgb_auc)
