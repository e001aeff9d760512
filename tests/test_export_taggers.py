"""Export stage (taggers): `hepprep export --onnx` of pfn, part and cnn, checked with onnxruntime.

The synthetic jet skim of `tests._jet_prepare_helpers` is prepared once (multi-class light,
c, b, and a regression of the jet mass), tiny networks train one epoch, and each folder is
exported through the CLI once per module. onnxruntime has to give what
`load_model(dir).predict(table, standardised=False)` gives for the same raw jets (lists of
0 to N + 5 constituents, NaN and ±inf among them, garbage in the padded slots): probabilities
to 1e-5, the regressed mass to 1e-4 relative.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("torch")

from _jet_prepare_helpers import (  # noqa: E402
    CANDIDATE_COLUMNS,
    JET_CLASSES,
    jet_samples,
    prepare_small_jets,
    write_jet_skim,
)

from analysis import config_from_dict  # noqa: E402
from analysis.cli import main  # noqa: E402
from analysis.export.runner import features_file, max_difference  # noqa: E402
from analysis.export.tagger import tagger_check_inputs  # noqa: E402
from analysis.train.predict import load_model  # noqa: E402
from analysis.train.runner import run_train  # noqa: E402

JETS = ["jet_pt", "jet_eta", "jet_mass"]
N = 16
TINY = {"pfn": {"phi": [8, 8], "f": [8]},
        "part": {"embed_dim": 8, "heads": 2, "blocks": 1, "class_blocks": 1, "pair_embed": [4]},
        "cnn": {"channels": [2, 4], "dense": [8]}}
MULTICLASS = {"kind": "multiclass", "class_column": "jet_label", "classes": JET_CLASSES}
REGRESSION = {"kind": "regression", "columns": ["jet_mass"]}
# (name, model, target, tagger settings): the cnn without jet features (no "raw" input)
CASES = [("pfn", "pfn", "multiclass", {}), ("part", "part", "multiclass", {}),
         ("cnn", "cnn", "multiclass", {"jet_features": False}), ("pfn_mass", "pfn", "regression", {})]


def _config(target: str, **tagger):
    train = {"constituents": N, "max_epochs": 1, "batch_size": 64, "shuffle_buffer": 300, "cpu_threads": 1,
             **TINY, **tagger}
    if target == "regression":
        return config_from_dict({"features": ["jet_pt", "jet_eta"], "target": REGRESSION,
                                 "train": {"tagger": train}})
    return config_from_dict({"features": JETS, "target": MULTICLASS, "train": {"tagger": train}})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{case name: model folder}, trained from two prepared folders of one small skim (prepared on one
    in-process dask cluster: worker processes cost more than the work)."""
    from distributed import LocalCluster

    root = tmp_path_factory.mktemp("tagger_export")
    write_jet_skim(root / "skim", jet_samples(0.1))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        at = cluster.scheduler_address
        prepared = {"multiclass": prepare_small_jets(root, "multi", MULTICLASS, JETS, CANDIDATE_COLUMNS, at),
                    "regression": prepare_small_jets(root, "mass", REGRESSION, ["jet_pt", "jet_eta"],
                                                     ("cand_pt", "cand_logpt", "cand_d0"), at)}
    return {name: run_train(prepared[target], root / name, _config(target, **tagger), model=model,
                            device="cpu", progress=False)
            for name, model, target, tagger in CASES}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """Each model exported through the CLI: {case name: the .onnx file}."""
    root = tmp_path_factory.mktemp("tagger_onnx")
    out = {}
    for name, folder in models.items():
        out[name] = root / f"{name}.onnx"
        main(["export", str(folder), "--onnx", str(out[name]), "--quiet"])
    return out


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_onnx_round_trip_matches_predict_on_raw_jets(models, exported, name):
    model = load_model(models[name])
    target = model.target
    # Other jets than the export's own self-check (seed 0).
    feeds, table = tagger_check_inputs(model, target, 300, seed=7)
    got = _session(exported[name]).run(None, feeds)[0]
    expected = model.predict(table, standardised=False)
    assert got.shape == expected.shape and np.isfinite(expected).all()
    worst = max_difference(target, got, expected)
    tolerance = 1e-4 if target.kind == "regression" else 1e-5
    print(f"{name}: max {'relative' if target.kind == 'regression' else 'absolute'} difference {worst:.2e}")
    assert worst <= tolerance
    if target.kind == "multiclass":
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
        assert got.std(axis=0).max() > 1e-4  # the jets get different scores: the check has teeth


@pytest.mark.parametrize("name", ["pfn", "part"])
def test_permuted_constituents_and_padding_give_the_same_onnx_output(models, exported, name):
    model = load_model(models[name])
    feeds, _ = tagger_check_inputs(model, model.target, 64, seed=3)
    session = _session(exported[name])
    out = session.run(None, feeds)[0]
    rng = np.random.default_rng(5)
    moved = {k: v.copy() for k, v in feeds.items()}
    for i in range(len(out)):  # each jet's slots shuffled: real constituents land among the padding
        order = rng.permutation(N)
        moved["constituents"][i] = feeds["constituents"][i, order]
        moved["mask"][i] = feeds["mask"][i, order]
    assert not np.array_equal(moved["mask"], feeds["mask"])
    np.testing.assert_allclose(session.run(None, moved)[0], out, rtol=0, atol=1e-5)
    # The mask does its work: a real constituent left out changes the answer.
    fewer = {k: v.copy() for k, v in feeds.items()}
    full = int(np.nonzero(feeds["mask"].sum(axis=1) == N)[0][0])
    fewer["mask"][full, 0] = False
    assert np.abs(session.run(None, fewer)[0][full] - out[full]).max() > 1e-5


def test_features_json_records_the_inputs_outputs_and_opset(models, exported):
    pfn = json.loads(features_file(exported["pfn"]).read_text())
    assert pfn["model"] == "pfn" and pfn["features"] == JETS
    constituents, mask, raw = pfn["inputs"]
    assert constituents["name"] == "constituents" and constituents["dtype"] == "float32"
    assert constituents["shape"] == [None, N, len(CANDIDATE_COLUMNS)]
    assert constituents["features"] == list(CANDIDATE_COLUMNS) and constituents["constituents"] == N
    assert (mask["name"], mask["dtype"], mask["shape"]) == ("mask", "bool", [None, N])
    assert (raw["name"], raw["dtype"], raw["features"]) == ("raw", "float64", JETS)
    assert pfn["outputs"][0]["name"] == "probabilities" and pfn["outputs"][0]["classes"] == list(JET_CLASSES)
    assert pfn["opset"]["ai.onnx"] == 18
    for name in ("pfn", "part", "cnn"):  # no data-dependent control flow (trim_padding stays out)
        proto = onnx.load(str(exported[name]))
        ops = {node.op_type for node in proto.graph.node}
        ops |= {node.op_type for function in proto.functions for node in function.node}
        assert not ops & {"If", "Loop", "Scan"}, name
    session = _session(exported["pfn"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("constituents", "tensor(float)"), ("mask", "tensor(bool)"), ("raw", "tensor(double)")]
    assert session.get_inputs()[0].shape[1:] == [N, len(CANDIDATE_COLUMNS)]
    cnn = json.loads(features_file(exported["cnn"]).read_text())
    (images,) = cnn["inputs"]  # no jet features: no raw input
    assert images["name"] == "images" and images["shape"] == [None, 1, 40, 40]
    assert images["channels"] == ["all"] and images["pixel_size"] == 0.02 and images["rotated"] is False
    assert [i.name for i in _session(exported["cnn"]).get_inputs()] == ["images"]
    mass = json.loads(features_file(exported["pfn_mass"]).read_text())
    assert mass["outputs"][0]["name"] == "prediction" and mass["outputs"][0]["columns"] == ["jet_mass"]
    assert mass["inputs"][0]["features"] == ["cand_pt", "cand_logpt", "cand_d0"]


def test_a_damaged_tagger_model_is_one_line_and_nothing_is_written(models, tmp_path, capsys):
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(models["part"], folder)
    weights = folder / "model.pt"
    weights.write_bytes(weights.read_bytes()[:200])  # a truncated copy
    target = tmp_path / "out" / "part.onnx"
    with pytest.raises(SystemExit) as exit_code:
        main(["export", str(folder), "--onnx", str(target), "--quiet"])
    assert exit_code.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"hepprep: error: {folder / 'model.pt'}: not a readable torch state dict")
    assert not target.exists() and not features_file(target).exists()
