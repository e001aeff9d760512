"""Prepare stage: multi-class and regression targets — the class column, balancing, target statistics, errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.config import config_from_dict
from analysis.core.io import read_json
from analysis.core.target import Target
from analysis.errors import ConfigError, StageInputError
from analysis.prepare.runner import run_prepare
from analysis.prepare.weights import TrainWeightBalancer
from tests._prepare_helpers import default_samples, read_split, write_skim

CLASSES = {"H": ["ggH", "VBF"], "ZTT": ["DY"], "TT": ["TT"]}
FEATURES = ["tau1_pt", "tau2_pt", "m_vis", "mjj", "jdeta", "met_pt"]


def _config(target: dict, *, features=FEATURES) -> object:
    samples = {s.name: {"process": s.process, "label": s.label,
                        **({"xsec_pb": s.xsec_pb} if s.xsec_pb else {"data_lumi_pb": 1000.0})}
               for s in default_samples()}
    return config_from_dict({"samples": samples, "target": target, "features": features,
                             "prepare": {"bucket_rows": 3000, "file_rows": 1500, "row_group_rows": 400},
                             "cluster": {"n_workers": 1, "memory_limit": "2GiB"}})


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def skim(tmp_path_factory):
    return write_skim(tmp_path_factory.mktemp("skim") / "skim", rows_per_file=1500, row_group_rows=500)


def test_three_class_balancing_on_a_hand_made_table():
    # All rows in train: class 0 total 4, class 1 total 1, class 2 total 10; N = 6 rows.
    split = np.zeros(6, dtype=np.int64)
    cls = np.array([0, 0, 1, 2, 2, 2])
    weight = np.array([1.0, 3.0, 1.0, 5.0, 4.0, 1.0])
    balancer = TrainWeightBalancer(class_names=("a", "b", "c")).fit(split, cls, weight)
    tw = balancer.transform(split, cls, weight)
    # scale_c = (6 / 3) / W_c: 0.5, 2, 0.2
    np.testing.assert_allclose(tw, [0.5, 1.5, 2.0, 1.0, 0.8, 0.2], rtol=1e-12)
    for c in range(3):
        assert tw[cls == c].sum() == pytest.approx(2.0, rel=1e-12)
    assert tw.mean() == pytest.approx(1.0, rel=1e-12)
    assert set(balancer.summary()["train"]) == {"a", "b", "c"}
    with pytest.raises(StageInputError, match="only classes 0..2"):
        TrainWeightBalancer(class_names=("a", "b", "c")).fit(split, np.array([0, 1, 2, 3, 0, 1]), weight)


def test_multiclass_prepare_writes_classes_balanced_per_split(skim, scheduler, tmp_path):
    out = tmp_path / "prep"
    run_prepare(skim, out, _config({"kind": "multiclass", "classes": CLASSES}), scheduler=scheduler,
                progress=False)
    stats = read_json(out / "stats.json", "stats")
    assert stats["target"]["classes"] == ["H", "ZTT", "TT"]
    assert stats["target"]["processes"] == {"H": ["VBF", "ggH"], "ZTT": ["DY"], "TT": ["TT"]}
    assert set(stats["class_totals"]) == {"H", "ZTT", "TT"}
    expected = {"ggH": 0, "VBF": 0, "DY": 1, "TT": 2}
    total_rows = 0
    for split in ("train", "val", "test"):
        table = read_split(out, split)
        assert table.schema.field("class").type == pa.int8()
        cls = table.column("class").to_numpy()
        process = np.asarray(table.column("process").to_pylist())
        np.testing.assert_array_equal(cls, [expected[p] for p in process])
        tw = table.column("train_weight").to_numpy()
        for c in range(3):  # every class the same total, N_split / 3; every event kept
            assert tw[cls == c].sum() == pytest.approx(len(tw) / 3, rel=1e-9)
        assert tw.mean() == pytest.approx(1.0, rel=1e-9)
        total_rows += len(tw)
    assert total_rows == sum(s.events for s in default_samples() if s.label >= 0)
    data = read_split(out, "data")
    assert set(data.column("class").to_numpy()) == {-1}


def test_regression_targets_are_standardised_on_the_train_split(skim, scheduler, tmp_path):
    out = tmp_path / "prep"
    run_prepare(skim, out, _config({"kind": "regression", "columns": ["pt_h"], "transform": "log"}),
                scheduler=scheduler, progress=False)
    stats = read_json(out / "stats.json", "stats")
    target = Target.from_stats(stats)
    assert target.columns == ("target_pt_h",) and target.transform == "log"
    train = read_split(out, "train")
    z = train.column("target_pt_h").to_numpy().astype(np.float64)
    w = train.column("train_weight").to_numpy()
    raw = np.log(train.column("pt_h").to_numpy().astype(np.float64))
    mean = np.average(raw, weights=w)
    assert target.mean[0] == pytest.approx(mean, rel=1e-9)
    assert target.std[0] == pytest.approx(np.sqrt(np.average((raw - mean) ** 2, weights=w)), rel=1e-6)
    assert np.average(z, weights=w) == pytest.approx(0.0, abs=1e-5)
    assert np.average(z ** 2, weights=w) == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_allclose(target.to_physical(z[:, None])[:, 0], np.exp(raw), rtol=1e-5)
    for split in ("train", "val"):  # one class: mean 1 per split
        assert read_split(out, split).column("train_weight").to_numpy().mean() == pytest.approx(1.0, rel=1e-9)
    assert np.isnan(read_split(out, "data").column("target_pt_h").to_numpy()).all()


def test_a_class_without_training_rows_is_one_line(skim, scheduler, tmp_path):
    samples = [s for s in default_samples() if s.process != "TT"]
    thin = write_skim(tmp_path / "skim", samples, rows_per_file=1500)
    with pytest.raises(StageInputError, match=r"split 'train' has 0 TT events"):
        run_prepare(thin, tmp_path / "prep", _config({"kind": "multiclass", "classes": CLASSES}),
                    scheduler=scheduler, progress=False)
    assert not (tmp_path / "prep").exists()


def test_a_process_of_the_skim_in_no_class_is_one_line(skim, scheduler, tmp_path):
    config = _config({"kind": "multiclass", "classes": CLASSES})
    config.samples.pop("TTbar")
    config.target.classes = {"H": ["ggH", "VBF"], "ZTT": ["DY"]}
    with pytest.raises(StageInputError, match=r"process 'TT' is in no class of target.classes \(H, ZTT\)"):
        run_prepare(skim, tmp_path / "prep", config, scheduler=scheduler, progress=False)


def test_unknown_process_in_classes_is_a_config_error():
    with pytest.raises(ConfigError, match=r"target.classes.ZTT: unknown process 'Ztautau'"):
        _config({"kind": "multiclass", "classes": {"H": ["ggH", "VBF"], "ZTT": ["Ztautau"], "TT": ["TT", "DY"]}})
    with pytest.raises(ConfigError, match=r"target.classes: process 'TT' is in no class"):
        _config({"kind": "multiclass", "classes": {"H": ["ggH", "VBF"], "ZTT": ["DY"]}})


def test_regression_column_missing_non_finite_or_a_feature(skim, scheduler, tmp_path):
    with pytest.raises(StageInputError, match=r"column\(s\) gen_m_tautau missing"):
        run_prepare(skim, tmp_path / "a", _config({"kind": "regression", "columns": ["gen_m_tautau"]}),
                    scheduler=scheduler, progress=False)
    with pytest.raises(StageInputError, match="target.columns: m_vis is also a training feature"):
        run_prepare(skim, tmp_path / "b", _config({"kind": "regression", "columns": ["m_vis"]}),
                    scheduler=scheduler, progress=False)
    bad = write_skim(tmp_path / "skim", rows_per_file=1500)
    part = sorted((bad / "DYJetsToLL").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    pt_h = table.column("pt_h").to_numpy().copy()
    pt_h[3] = np.nan
    pq.write_table(table.set_column(table.schema.get_field_index("pt_h"), "pt_h", pa.array(pt_h)), part)
    with pytest.raises(StageInputError, match=r"target column 'pt_h' is not finite in 1 simulated row\(s\) "
                                              r"\(first: nan, dataset DYJetsToLL\)"):
        run_prepare(bad, tmp_path / "c", _config({"kind": "regression", "columns": ["pt_h"]}),
                    scheduler=scheduler, progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")
