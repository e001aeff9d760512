"""Export stage: `hepprep export` writes ONNX that onnxruntime runs on raw rows as hepprep predicts them.

Every model is made by hepprep itself: a small synthetic skim (tests/_prepare_helpers.py,
with three truth-like columns added), `run_prepare` for each target — binary, multi-class,
a regression of one column with transform "log", of two columns at once (with the Huber
loss), and of one as a ratio to a feature — and `run_train` of xgboost and of the mlp on
each (the ratio: xgboost only). The raw rows are skim rows (float32 columns, as the skim
writes them) with NaN and ±inf put among them, and onnxruntime has to give what
`load_model(dir).predict(rows, standardised=False)` gives: probabilities to 1e-5,
regressed values to 1e-4 relative.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.cli import main
from analysis.config import config_from_dict
from analysis.errors import HepprepError
from analysis.export.graph import OPSET
from analysis.export.runner import features_file, run_export
from analysis.prepare.runner import run_prepare
from analysis.train.predict import load_model
from analysis.train.runner import run_train
from tests._prepare_helpers import default_samples, write_skim

FEATURES = ["tau1_pt", "tau2_pt", "m_vis", "mjj", "jdeta", "jet1_btag", "met_pt"]
CLASSES = {"H": ["ggH", "VBF"], "ZTT": ["DY"], "TT": ["TT"]}
TARGETS = {
    "binary": {"kind": "binary"},
    "multiclass": {"kind": "multiclass", "classes": CLASSES},
    "log": {"kind": "regression", "columns": ["gen_sum"], "transform": "log"},
    "two": {"kind": "regression", "columns": ["gen_sum", "gen_ratio"], "loss": "huber"},  # reg:pseudohubererror
    "ratio": {"kind": "regression", "columns": ["gen_m"], "transform": "ratio", "ratio_to": "m_vis"},
}
MODELS = ("xgboost", "mlp")
# The ratio head is the same nodes after either body: the trees alone (each network export
# costs seconds of torch.onnx).
MODELS_OF = {name: ("xgboost",) if name == "ratio" else MODELS for name in TARGETS}
CASES = [(name, kind) for name in TARGETS for kind in MODELS_OF[name]]
PROBABILITY_TOLERANCE, RELATIVE_TOLERANCE = 1e-5, 1e-4


def _config(target: dict):
    samples = {s.name: {"process": s.process, "label": s.label,
                        **({"xsec_pb": s.xsec_pb} if s.xsec_pb else {"data_lumi_pb": 1000.0})}
               for s in default_samples()}
    return config_from_dict({
        "samples": samples, "target": target, "features": FEATURES,
        "prepare": {"bucket_rows": 4000, "file_rows": 2000, "row_group_rows": 500},
        "train": {"device": "cpu",
                  "xgboost": {"num_boost_round": 30, "min_child_weight": 1.0},
                  "mlp": {"hidden": [16], "max_epochs": 2, "batch_size": 256, "shuffle_buffer": 2000,
                          "read_threads": 1}}})


@pytest.fixture(scope="module")
def skim(tmp_path_factory) -> Path:
    """A quarter of the default synthetic skim (~3000 rows), plus truth-like columns to regress."""
    root = write_skim(tmp_path_factory.mktemp("skim") / "skim", default_samples(0.25), rows_per_file=2000)
    for part in root.glob("*/part-*.parquet"):
        table = pq.read_table(part)
        t1, t2, m, met = (table.column(c).to_numpy().astype(np.float64)
                          for c in ("tau1_pt", "tau2_pt", "m_vis", "met_pt"))
        for name, values in (("gen_sum", t1 + t2), ("gen_ratio", t1 / t2), ("gen_m", m + 0.5 * met)):
            table = table.append_column(name, pa.array(values.astype(np.float32)))
        pq.write_table(table, part)
    return root


@pytest.fixture(scope="module")
def trained(skim, tmp_path_factory):
    """{target name: {model kind: model folder}} from `run_prepare` and `run_train`.

    Everything runs on one in-process dask cluster: starting worker processes would cost
    more than the work.
    """
    from distributed import LocalCluster

    root = tmp_path_factory.mktemp("export")
    out: dict[str, dict[str, Path]] = {}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        for name, target in TARGETS.items():
            config = _config(target)
            prep = root / name / "prepared"
            run_prepare(skim, prep, config, scheduler=cluster.scheduler_address, progress=False)
            out[name] = {kind: run_train(prep, root / name / kind, config, model=kind,
                                         scheduler=cluster.scheduler_address, progress=False)
                         for kind in MODELS_OF[name]}
    return out


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """Each model exported through the CLI: {(target name, model kind): the .onnx file}."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, models in trained.items():
        for kind, model_dir in models.items():
            out[name, kind] = root / f"{name}_{kind}.onnx"
            main(["export", str(model_dir), "--onnx", str(out[name, kind]), "--quiet"])
    return out


@pytest.fixture(scope="module")
def raw_rows(skim) -> pa.Table:
    """Every fifth skim row (~600, real data too), the features as the skim wrote them (float32),
    about 10% NaN and 2% ±inf among them and one row with nothing known."""
    table = pa.concat_tables([pq.read_table(p, columns=FEATURES) for p in sorted(skim.glob("*/part-*.parquet"))])
    raw = np.column_stack([table.column(f).to_numpy() for f in FEATURES])[::5].copy()
    rng = np.random.default_rng(3)
    pick = rng.random(raw.shape)
    raw[pick < 0.1] = np.nan
    raw[(pick >= 0.1) & (pick < 0.11)] = np.inf
    raw[(pick >= 0.11) & (pick < 0.12)] = -np.inf
    raw[0] = np.nan
    return pa.table({name: raw[:, j] for j, name in enumerate(FEATURES)})


def _onnx_run(model: str | Path | bytes, table: pa.Table, columns: list[str]) -> np.ndarray:
    """onnxruntime on the table's columns in ``columns`` order, as float64 (the documented call)."""
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                   providers=["CPUExecutionProvider"])
    x = np.column_stack([table.column(c).to_numpy() for c in columns]).astype(np.float64)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _compare(got: np.ndarray, expected: np.ndarray, target) -> tuple[float, np.ndarray]:
    """(max difference, finite mask): absolute for probabilities, relative for regressed values.

    Relative to the value, but for a column regressed as it is (transform "none") to at least
    its standard deviation: the two-epoch network predicts gen_ratio near 0 for some rows,
    where a float32 rounding of its output would be a large fraction of the value. A
    prediction that is not finite (a ratio target whose raw ratio_to is NaN or ±inf) must be
    the same NaN or infinity on both sides.
    """
    got = got.astype(np.float64)
    finite = np.isfinite(expected)
    assert np.array_equal(np.isfinite(got), finite)
    np.testing.assert_array_equal(got[~finite], expected[~finite])
    if target.kind != "regression":
        return float(np.abs(got - expected).max()), finite
    scale = np.abs(expected).reshape(len(expected), -1)
    if target.transform == "none":
        scale = np.maximum(scale, np.asarray(target.std))
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
        relative = np.abs(got - expected).reshape(scale.shape) / scale
    return float(relative[finite.reshape(scale.shape)].max()), finite


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_onnxruntime_on_raw_rows_matches_hepprep(trained, exported, raw_rows, name, kind):
    model = load_model(trained[name][kind])
    target = model.target
    record = json.loads(features_file(exported[name, kind]).read_text())
    got = _onnx_run(exported[name, kind], raw_rows, record["features"])
    expected = model.predict(raw_rows, standardised=False)
    assert got.shape == expected.shape  # (rows,) for binary and one regressed column, as predict
    regression = target.kind == "regression"
    worst, finite = _compare(got, expected, target)
    tolerance = RELATIVE_TOLERANCE if regression else PROBABILITY_TOLERANCE
    print(f"{kind} {name}: max {'relative' if regression else 'absolute'} |onnx - hepprep| = {worst:.3g} "
          f"over {finite.sum()} values of {raw_rows.num_rows} raw rows")
    assert worst <= tolerance
    # NaN/±inf rows were really among them, and scored to a number (the empty row too),
    # except for a ratio where the ratio_to column itself is missing
    raw = np.column_stack([raw_rows.column(f).to_numpy() for f in model.features])
    has_missing = ~np.isfinite(raw).all(axis=1)
    assert has_missing.sum() > raw_rows.num_rows // 3
    scored = finite.reshape(len(raw), -1).all(axis=1)
    if target.transform == "ratio":
        assert np.array_equal(scored, np.isfinite(raw_rows.column("m_vis").to_numpy()))
    else:
        assert scored.all()
    assert (has_missing & scored).sum() > raw_rows.num_rows // 4
    # what the outputs are: names and meaning from the one target description
    (spec,) = record["outputs"]
    assert record["target"] == (target.stats_record() or {"kind": "binary"})
    if target.kind == "binary":
        assert spec["name"] == "probability" and ((got >= 0) & (got <= 1)).all()
    elif target.kind == "multiclass":
        assert spec["name"] == "probabilities" and spec["classes"] == list(CLASSES)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    else:
        assert spec["name"] == "prediction" and spec["dtype"] == "float64" and got.dtype == np.float64
        assert spec["columns"] == TARGETS[name]["columns"] and spec["transform"] == target.transform
        assert spec["shape"] == ([None] if got.ndim == 1 else [None, got.shape[1]])
        sums = got if got.ndim == 1 else got[:, 0]
        assert 50 < np.nanmedian(sums) < 250  # GeV, not standardised or log units


@pytest.mark.parametrize("kind", MODELS)
def test_features_json_records_columns_names_opset_and_source(trained, exported, kind):
    model_dir = trained["binary"][kind]
    onnx_file = exported["binary", kind]
    record = json.loads(features_file(onnx_file).read_text())
    info = json.loads((model_dir / "model_info.json").read_text())
    assert features_file(onnx_file).name == f"binary_{kind}.features.json"
    assert record["features"] == json.loads((model_dir / "features.json").read_text()) == FEATURES
    proto = onnx.load(onnx_file)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert record["input"]["name"] == graph_input.name == "raw"
    assert graph_input.type == "tensor(double)" and graph_input.shape[1] == len(FEATURES)
    names = [o.name for o in session.get_outputs()]
    assert [o["name"] for o in record["outputs"]] == names == ["probability"]
    opsets = {(entry.domain or "ai.onnx"): entry.version for entry in proto.opset_import}
    assert record["opset"] == opsets and opsets["ai.onnx"] == OPSET
    assert ("ai.onnx.ml" in opsets) == (kind == "xgboost")
    assert record["target"] == {"kind": "binary"} and record["model"] == kind
    assert record["model_dir"] == str(model_dir.resolve())
    assert record["prepared_fingerprint"] == info["prepared_fingerprint"]
    # the ONNX file carries the same record, every value as JSON text
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props == {f"hepprep.{k}": v for k, v in record.items()}


def test_regression_record_names_the_columns_and_the_transform(exported):
    session = ort.InferenceSession(str(exported["two", "mlp"]), providers=["CPUExecutionProvider"])
    (output,) = session.get_outputs()
    record = json.loads(features_file(exported["two", "mlp"]).read_text())
    assert output.name == "prediction" and output.type == "tensor(double)" and output.shape[1] == 2
    assert record["target"]["sources"] == ["gen_sum", "gen_ratio"]
    assert record["target"]["statistics"].keys() == {"target_gen_sum", "target_gen_ratio"}
    ratio = json.loads(features_file(exported["ratio", "xgboost"]).read_text())["outputs"][0]
    assert ratio["ratio_to"] == "m_vis" and "times the raw m_vis input column" in ratio["meaning"]


def test_export_again_is_byte_identical(trained, exported, tmp_path):
    again = run_export(trained["binary"]["xgboost"], tmp_path / "binary_xgboost.onnx", progress=False)
    assert again.read_bytes() == exported["binary", "xgboost"].read_bytes()
    assert features_file(again).read_bytes() == features_file(exported["binary", "xgboost"]).read_bytes()


def _one_line_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hepprep: error: "), err
    return err


def _written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _with_target(model_dir: Path, folder: Path, target: dict) -> Path:
    """A copy of a model folder whose stats.json records ``target`` (the section prepare writes)."""
    shutil.copytree(model_dir, folder)
    stats = json.loads((folder / "stats.json").read_text())
    stats["target"] = target
    (folder / "stats.json").write_text(json.dumps(stats))
    return folder


def test_an_incomplete_model_folder_is_a_one_line_error(trained, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(trained["binary"]["xgboost"], broken)
    (broken / "model_info.json").unlink()
    out = tmp_path / "out"
    err = _one_line_error(capsys, ["export", str(broken), "--onnx", str(out / "m.onnx")])
    assert f"{broken}: no model_info.json (training did not finish)" in err
    assert _written(out) == []


def test_a_missing_model_folder_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "out"
    err = _one_line_error(capsys, ["export", str(tmp_path / "nowhere"), "--onnx", str(out / "m.onnx")])
    assert f"{tmp_path / 'nowhere'}: no such model directory" in err
    assert _written(out) == []


def test_the_file_must_be_an_onnx_file(trained, tmp_path, capsys):
    model_dir = str(trained["binary"]["xgboost"])
    err = _one_line_error(capsys, ["export", model_dir, "--onnx", str(tmp_path / "m.json")])
    assert "must end in .onnx" in err
    assert _written(tmp_path) == []


def test_a_target_the_booster_does_not_fit_is_refused(trained, tmp_path, capsys):
    multiclass = json.loads((trained["multiclass"]["xgboost"] / "stats.json").read_text())["target"]
    wrong = _with_target(trained["binary"]["xgboost"], tmp_path / "wrong", multiclass)
    err = _one_line_error(capsys, ["export", str(wrong), "--onnx", str(tmp_path / "out" / "m.onnx")])
    assert "a multiclass model, but the booster's objective is 'binary:logistic'" in err
    assert _written(tmp_path / "out") == []


def test_a_ratio_to_a_column_that_is_no_feature_is_refused(trained, tmp_path, capsys):
    target = json.loads((trained["ratio"]["xgboost"] / "stats.json").read_text())["target"]
    folder = _with_target(trained["ratio"]["xgboost"], tmp_path / "ratio", {**target, "ratio_to": "tau1_eta"})
    err = _one_line_error(capsys, ["export", str(folder), "--onnx", str(tmp_path / "out" / "m.onnx")])
    assert "the target is a ratio to 'tau1_eta', which is not a feature of the model" in err
    assert "add 'tau1_eta' to features and train again" in err
    assert _written(tmp_path / "out") == []


@pytest.mark.parametrize(("name", "message"), [("binary", "probabilities differ"),
                                               ("log", "predictions differ from hepprep's by up to a relative")])
def test_nothing_is_written_when_onnxruntime_disagrees(trained, tmp_path, monkeypatch, name, message):
    from analysis.export import runner

    monkeypatch.setattr(runner, "onnx_scores", lambda onnx_bytes, raw: np.full(len(raw), 0.5, np.float32))
    with pytest.raises(HepprepError, match=f"not written: onnxruntime's {message}"):
        run_export(trained[name]["xgboost"], tmp_path / "m.onnx", progress=False)
    assert _written(tmp_path) == []


def test_each_regression_tree_is_routed_to_its_own_target(trained, exported, tmp_path, monkeypatch):
    """onnxmltools 1.16 adds every tree of a multi-target booster to the first target: hepprep
    sets each tree's target from the booster's tree_info (export.xgb), and without that the
    self-check refuses the export."""
    from analysis.export import xgb

    proto = onnx.load(exported["two", "xgboost"])
    (node,) = [n for n in proto.graph.node if n.op_type == "TreeEnsembleRegressor"]
    attrs = {a.name: a for a in node.attribute}
    assert attrs["n_targets"].i == 2 and set(attrs["target_ids"].ints) == {0, 1}
    monkeypatch.setattr(xgb, "_route_trees", lambda *args: None)
    with pytest.raises(HepprepError, match="not written: onnxruntime's predictions differ"):
        run_export(trained["two"]["xgboost"], tmp_path / "m.onnx", progress=False)
    assert _written(tmp_path) == []


def test_without_onnxruntime_the_error_names_the_install_command(trained, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    model_dir = str(trained["binary"]["xgboost"])
    err = _one_line_error(capsys, ["export", model_dir, "--onnx", str(tmp_path / "m.onnx")])
    assert "pip install 'hepprep[onnx]'" in err
    assert _written(tmp_path) == []


def test_the_self_check_measures_regression_relative_to_at_least_one_standard_deviation():
    from analysis.core.target import Target
    from analysis.export.runner import max_difference

    target = Target(kind="regression", sources=("a",), mean=(0.0,), std=(2.0,))
    # near 0 the difference counts against one standard deviation (2), not against 0.001
    assert max_difference(target, np.array([0.0, 10.0]), np.array([1e-3, 10.001])) == pytest.approx(5e-4)
    assert max_difference(target, np.array([np.nan, np.inf]), np.array([np.nan, np.inf])) == 0.0
    assert not np.isfinite(max_difference(target, np.array([np.nan]), np.array([1.0])))
    log = Target(kind="regression", sources=("a", "b"), transform="log", mean=(0.0, 0.0), std=(0.5, 0.5))
    assert max_difference(log, np.array([[1e-6, 2.0]]), np.array([[2e-6, 2.0]])) == pytest.approx(0.5)
