"""Export stage: `hepprep export` writes ONNX that onnxruntime runs on raw rows as hepprep predicts them.

Both models come from `hepprep train` itself on a small toy prepared directory; the raw rows
are that directory's test split turned back into physical units (float32 columns, as the
skim writes them) with NaN and ±inf among them. Multi-class and regression boosters are
trained here with xgboost directly and written in the model folder's layout by hand, until
`hepprep train` makes them; the network's multi-class and regression heads are checked on a
hand-built network the same way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pytest
from _eval_helpers import TOY_FEATURES, write_prepared

from analysis.cli import main
from analysis.core.standardise import Standardisation
from analysis.errors import HepprepError, StageInputError
from analysis.export.graph import OPSET, assemble
from analysis.export.runner import features_file, run_export
from analysis.export.target import Target
from analysis.train.predict import load_model

CONFIG = f"""
features = {json.dumps(TOY_FEATURES)}
[train.xgboost]
num_boost_round = 40
early_stopping_rounds = 5
[train.mlp]
max_epochs = 2
hidden = [16, 16]
shuffle_buffer = 2000
read_threads = 1
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy prepared folder and the xgboost and mlp model folders `hepprep train` makes of it.

    xgboost trains on an in-process dask cluster (``--scheduler``): starting worker processes
    would cost more than the training.
    """
    from distributed import LocalCluster

    root = tmp_path_factory.mktemp("export")
    prep = write_prepared(root / "prepared")
    config = root / "config.toml"
    config.write_text(CONFIG)
    models = {kind: root / "models" / kind for kind in ("xgboost", "mlp")}
    train = ["train", str(prep), "--device", "cpu", "--config", str(config), "--quiet"]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        main([*train, "--model", "xgboost", "--out", str(models["xgboost"]),
              "--scheduler", cluster.scheduler_address])
    main([*train, "--model", "mlp", "--out", str(models["mlp"])])
    return {"root": root, "prep": prep, "models": models}


@pytest.fixture(scope="module")
def exported(trained):
    """Each model exported through the CLI: {kind: the .onnx file}."""
    out = {}
    for kind, model_dir in trained["models"].items():
        out[kind] = trained["root"] / "onnx" / f"{kind}.onnx"
        main(["export", str(model_dir), "--onnx", str(out[kind]), "--quiet"])
    return out


def _raw_test_rows(prep: Path, features: list[str], *, seed: int = 3) -> pa.Table:
    """The test split in raw units as float32 columns, about 10% NaN and 2% ±inf, one empty row."""
    stats = json.loads((prep / "stats.json").read_text())
    test = pd.read_parquet(prep / "test", columns=features)
    raw = Standardisation.from_stats(stats, features).inverse(test.to_numpy()).astype(np.float32)
    rng = np.random.default_rng(seed)
    pick = rng.random(raw.shape)
    raw[pick < 0.1] = np.nan
    raw[(pick >= 0.1) & (pick < 0.11)] = np.inf
    raw[(pick >= 0.11) & (pick < 0.12)] = -np.inf
    raw[0] = np.nan
    return pa.table({name: raw[:, j] for j, name in enumerate(features)})


def _onnx_run(model: str | Path | bytes, table: pa.Table, columns: list[str]) -> np.ndarray:
    """onnxruntime on the table's columns in ``columns`` order, as float64 (the documented call)."""
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                   providers=["CPUExecutionProvider"])
    x = np.column_stack([table.column(c).to_numpy() for c in columns]).astype(np.float64)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("kind", ["xgboost", "mlp"])
def test_onnxruntime_on_raw_rows_matches_hepprep(trained, exported, kind):
    model = load_model(trained["models"][kind])
    record = json.loads(features_file(exported[kind]).read_text())
    table = _raw_test_rows(trained["prep"], model.features)
    got = _onnx_run(exported[kind], table, record["features"])
    expected = model.predict(table, standardised=False)
    assert got.shape == expected.shape == (table.num_rows,)
    assert np.isfinite(got).all() and ((got >= 0) & (got <= 1)).all()
    worst = float(np.max(np.abs(got - expected)))
    print(f"{kind}: max |onnx - hepprep| = {worst:.3g} over {table.num_rows} raw rows")
    assert worst <= 1e-5
    # NaN/±inf rows were really among them, and scored (the empty row too)
    raw = np.column_stack([table.column(f).to_numpy() for f in model.features])
    has_missing = ~np.isfinite(raw).all(axis=1)
    assert has_missing.sum() > table.num_rows // 3
    assert np.max(np.abs(got[has_missing] - expected[has_missing])) <= 1e-5


@pytest.mark.parametrize("kind", ["xgboost", "mlp"])
def test_features_json_records_columns_names_opset_and_source(trained, exported, kind):
    model_dir = trained["models"][kind]
    record = json.loads(features_file(exported[kind]).read_text())
    info = json.loads((model_dir / "model_info.json").read_text())
    assert features_file(exported[kind]).name == f"{kind}.features.json"
    assert record["features"] == json.loads((model_dir / "features.json").read_text()) == TOY_FEATURES
    proto = onnx.load(exported[kind])
    session = ort.InferenceSession(str(exported[kind]), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert record["input"]["name"] == graph_input.name == "raw"
    assert graph_input.type == "tensor(double)" and graph_input.shape[1] == len(TOY_FEATURES)
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


def test_export_again_is_byte_identical(trained, exported, tmp_path):
    again = run_export(trained["models"]["xgboost"], tmp_path / "xgboost.onnx", progress=False)
    assert again.read_bytes() == exported["xgboost"].read_bytes()
    assert features_file(again).read_bytes() == features_file(exported["xgboost"]).read_bytes()


def _one_line_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hepprep: error: "), err
    return err


def _written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_an_incomplete_model_folder_is_a_one_line_error(trained, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(trained["models"]["xgboost"], broken)
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
    model_dir = str(trained["models"]["xgboost"])
    err = _one_line_error(capsys, ["export", model_dir, "--onnx", str(tmp_path / "m.json")])
    assert "must end in .onnx" in err
    assert _written(tmp_path) == []


def test_a_target_the_booster_does_not_fit_is_refused(trained, tmp_path):
    wrong = tmp_path / "wrong"
    shutil.copytree(trained["models"]["xgboost"], wrong)
    info = json.loads((wrong / "model_info.json").read_text())
    info["target"] = {"kind": "multiclass", "classes": ["ggH", "VBF", "DY"]}
    (wrong / "model_info.json").write_text(json.dumps(info))
    with pytest.raises(StageInputError, match="a multiclass model, but the booster's objective is 'binary:logistic'"):
        run_export(wrong, tmp_path / "out" / "m.onnx", progress=False)
    assert _written(tmp_path / "out") == []


def test_nothing_is_written_when_onnxruntime_disagrees(trained, tmp_path, monkeypatch):
    from analysis.export import runner

    monkeypatch.setattr(runner, "onnx_scores", lambda onnx_bytes, raw: np.full(len(raw), 0.5, np.float32))
    with pytest.raises(HepprepError, match="not written: onnxruntime's probabilities differ"):
        run_export(trained["models"]["xgboost"], tmp_path / "m.onnx", progress=False)
    assert _written(tmp_path) == []


# --- multi-class and regression boosters, in the model folder's layout by hand -------------

CLASSES = ["ggH", "VBF", "DY", "TT"]


def _regression_targets(prep_rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Toy targets in raw units, functions of the standardised features plus noise."""
    rng = np.random.default_rng(5)
    z = prep_rows[TOY_FEATURES].to_numpy(np.float64)
    return {"m_true": 91.0 + 12.0 * np.tanh(z[:, 4]) + 3.0 * z[:, 0] + rng.normal(0, 2, len(z)),
            "pt_true": 40.0 + 25.0 * np.abs(z[:, 0]) + rng.normal(0, 5, len(z))}


def _hand_made_model(folder: Path, prep: Path, target: dict, *, rounds: int = 25) -> Path:
    """Train a multi:softprob or reg:squarederror booster on the standardised training split
    and write model.json, features.json, stats.json (with the targets' statistics),
    history.json and model_info.json (with ``target``) as `hepprep train` lays them out."""
    import xgboost as xgb

    stats = json.loads((prep / "stats.json").read_text())
    train = pd.read_parquet(prep / "train")
    x = train[TOY_FEATURES].to_numpy(np.float32).copy()
    x[np.random.default_rng(1).random(x.shape) < 0.05] = np.nan  # trees learn a default branch
    params = {"max_depth": 3, "eta": 0.3, "seed": 7, "nthread": 1}
    if target["kind"] == "multiclass":
        label = train["process"].map({c: i for i, c in enumerate(target["classes"])}).to_numpy()
        params.update(objective="multi:softprob", num_class=len(target["classes"]))
    else:
        raw = _regression_targets(train)
        stats["targets"] = {c: {"mean": float(raw[c].mean()), "std": float(raw[c].std())}
                            for c in target["columns"]}
        std = Standardisation.from_stats({"features": stats["targets"]}, target["columns"])
        label = std.transform(np.column_stack([raw[c] for c in target["columns"]]))
        params.update(objective="reg:squarederror")
    booster = xgb.train(params, xgb.DMatrix(x, label=label, feature_names=TOY_FEATURES), rounds)
    folder.mkdir(parents=True)
    booster.save_model(folder / "model.json")
    (folder / "features.json").write_text(json.dumps(TOY_FEATURES))
    (folder / "stats.json").write_text(json.dumps(stats))
    (folder / "history.json").write_text("{}")
    (folder / "model_info.json").write_text(json.dumps({"model": "xgboost", "params": params,
                                                        "target": target, "features": TOY_FEATURES}))
    return folder


def _reference(model_dir: Path, table: pa.Table, target: dict) -> np.ndarray:
    """What hepprep's predict is to give for these targets: the booster on standardised rows,
    regression values back in raw units with the targets' statistics."""
    import xgboost as xgb

    model = load_model(model_dir)
    raw = np.column_stack([table.column(f).to_numpy() for f in model.features])
    x = Standardisation.from_stats(model.stats, model.features).transform(raw)
    out = model.booster.predict(xgb.DMatrix(x, feature_names=model.features))
    if target["kind"] == "multiclass":
        return out
    std = Standardisation.from_stats({"features": model.stats["targets"]}, target["columns"])
    return std.inverse(out.reshape(len(x), -1))


def test_multiclass_booster_gives_class_probabilities(trained, tmp_path):
    target = {"kind": "multiclass", "classes": CLASSES}
    model_dir = _hand_made_model(tmp_path / "multi", trained["prep"], target)
    onnx_file = run_export(model_dir, tmp_path / "multi.onnx", progress=False)
    record = json.loads(features_file(onnx_file).read_text())
    assert record["target"] == target
    assert record["outputs"][0]["name"] == "probabilities" and record["outputs"][0]["classes"] == CLASSES
    table = _raw_test_rows(trained["prep"], TOY_FEATURES)
    got = _onnx_run(onnx_file, table, record["features"])
    expected = _reference(model_dir, table, target)
    assert got.shape == expected.shape == (table.num_rows, len(CLASSES))
    worst = float(np.max(np.abs(got - expected)))
    print(f"xgboost multiclass: max |onnx - reference| = {worst:.3g}")
    assert worst <= 1e-5
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("columns", [["m_true"], ["m_true", "pt_true"]])
def test_regression_booster_gives_values_in_raw_units(trained, tmp_path, columns):
    target = {"kind": "regression", "columns": columns}
    model_dir = _hand_made_model(tmp_path / "reg", trained["prep"], target)
    onnx_file = run_export(model_dir, tmp_path / "reg.onnx", progress=False)
    record = json.loads(features_file(onnx_file).read_text())
    assert record["outputs"][0]["name"] == "prediction" and record["outputs"][0]["dtype"] == "float64"
    table = _raw_test_rows(trained["prep"], TOY_FEATURES)
    got = _onnx_run(onnx_file, table, record["features"])
    expected = _reference(model_dir, table, target)
    assert got.shape == expected.shape == (table.num_rows, len(columns))
    relative = float(np.max(np.abs(got - expected) / np.abs(expected)))
    print(f"xgboost regression {columns}: max relative |onnx - reference| = {relative:.3g}")
    assert relative <= 1e-4
    assert 80 < got[:, 0].mean() < 100  # raw units (GeV), not standardised ones


@pytest.mark.parametrize("target", [Target("multiclass", classes=["a", "b", "c"]),
                                    Target("regression", columns=["m_true", "pt_true"])],
                         ids=lambda t: t.kind)
def test_network_heads_for_more_than_one_output(trained, target):
    """The network's softmax and un-standardised outputs (for when `hepprep train` makes them)."""
    import torch

    from analysis.export.mlp import network_body
    from analysis.train.networks import impute_missing

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(len(TOY_FEATURES), 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, target.n_outputs)).eval()
    stats = json.loads((trained["prep"] / "stats.json").read_text())
    std = Standardisation.from_stats(stats, TOY_FEATURES)
    target_std = Standardisation(target.columns, [91.0, 40.0], [12.0, 25.0]) if target.columns else None
    body = network_body(net, len(TOY_FEATURES), target, source="hand-built")
    proto = assemble(body, std, target, target_std=target_std)
    table = _raw_test_rows(trained["prep"], TOY_FEATURES)
    got = _onnx_run(proto.SerializeToString(), table, TOY_FEATURES)
    raw = np.column_stack([table.column(f).to_numpy() for f in TOY_FEATURES])
    with torch.no_grad():
        logits = net(impute_missing(torch.from_numpy(std.transform(raw))))
    if target.kind == "multiclass":
        expected = torch.softmax(logits, dim=1).double().numpy()
        assert np.max(np.abs(got - expected)) <= 1e-5
    else:
        expected = target_std.inverse(logits.numpy())
        assert np.max(np.abs(got - expected) / np.abs(expected)) <= 1e-4


def test_without_onnxruntime_the_error_names_the_install_command(trained, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    model_dir = str(trained["models"]["xgboost"])
    err = _one_line_error(capsys, ["export", model_dir, "--onnx", str(tmp_path / "m.onnx")])
    assert "pip install 'hepprep[onnx]'" in err
    assert _written(tmp_path) == []
