"""Training stage (taggers): pfn, part and cnn — masks, training through `run_train`, resume, one-line errors.

Small synthetic jet skims (`tests._jet_prepare_helpers`) are prepared once per module: a
multi-class folder (light, c, b from ``jet_label``), a binary one (the samples' labels) and a
regression of the jet mass whose constituent lists lack cand_deta and cand_dphi (what ParT's
pairwise features and the images need). The networks are tiny and train for two epochs: the
tests check the machinery, not the physics.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from _jet_prepare_helpers import (  # noqa: E402
    CANDIDATE_COLUMNS,
    JET_CLASSES,
    jet_samples,
    prepare_small_jets,
    write_jet_skim,
)
from _train_helpers import write_prepared_dir  # noqa: E402

import analysis.train.fit as train_fit  # noqa: E402
from analysis import config_from_dict  # noqa: E402
from analysis.cli import main  # noqa: E402
from analysis.core.jet_tables import StandardisedColumns  # noqa: E402
from analysis.core.tagger_config import TaggerConfig  # noqa: E402
from analysis.errors import ConfigError, StageInputError  # noqa: E402
from analysis.train.jet_stream import JetBatchStream, JetRowLayout  # noqa: E402
from analysis.train.predict import load_model  # noqa: E402
from analysis.train.runner import run_train  # noqa: E402
from analysis.train.taggers import build_tagger  # noqa: E402

JETS = ["jet_pt", "jet_eta", "jet_mass"]
TINY = {"pfn": {"phi": [16, 16], "f": [16]},
        "part": {"embed_dim": 16, "heads": 2, "blocks": 1, "class_blocks": 1, "pair_embed": [8]},
        "cnn": {"channels": [4, 8], "dense": [16]}}
TRAIN = {"constituents": 24, "max_epochs": 2, "batch_size": 64, "shuffle_buffer": 500, "cpu_threads": 1,
         **TINY}


def _network(model):
    """The model's full settings (`TaggerConfig` defaults where TINY says nothing)."""
    return getattr(TaggerConfig(**{model: TINY[model]}), model).model_dump()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three preparations of one skim, on one in-process dask cluster (worker processes cost more than the work)."""
    from distributed import LocalCluster

    root = tmp_path_factory.mktemp("taggers")
    write_jet_skim(root / "skim", jet_samples(0.25))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        at = cluster.scheduler_address
        return {
            "multiclass": prepare_small_jets(root, "multi", {"kind": "multiclass", "class_column": "jet_label",
                                                             "classes": JET_CLASSES}, JETS, CANDIDATE_COLUMNS, at),
            "binary": prepare_small_jets(root, "binary", {"kind": "binary"}, JETS, CANDIDATE_COLUMNS, at),
            "regression": prepare_small_jets(root, "regression", {"kind": "regression", "columns": ["jet_mass"]},
                                             ["jet_pt", "jet_eta"], ("cand_pt", "cand_logpt", "cand_d0"), at),
        }


def _config(folder_target="multiclass", **tagger):
    target = {"multiclass": {"kind": "multiclass", "class_column": "jet_label", "classes": JET_CLASSES},
              "binary": {"kind": "binary"},
              "regression": {"kind": "regression", "columns": ["jet_mass"]}}[folder_target]
    features = ["jet_pt", "jet_eta"] if folder_target == "regression" else JETS
    return config_from_dict({"features": features, "target": target, "train": {"tagger": TRAIN | tagger}})


def _state(model_dir):
    return torch.load(model_dir / "model.pt", weights_only=True)


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _batch(folder, n):
    """One batch of real training jets from the loader: (constituents, mask, jets), and the stats."""
    stats = json.loads((folder / "stats.json").read_text())
    layout = JetRowLayout(n, CANDIDATE_COLUMNS, tuple(JETS))
    stream = JetBatchStream(sorted((folder / "train").glob("*.parquet")), layout, stats=stats, batch_size=48,
                            shuffle_buffer=48, shuffle=False, targets=("class",))
    x, _, _ = next(iter(stream))
    parts = layout.unpack(x)
    return parts["constituents"], parts["mask"], parts["jets"], stats, layout


@pytest.mark.parametrize("model", ["pfn", "part"])
def test_permuted_constituents_and_more_padding_give_the_same_outputs(folders, model):
    constituents, mask, jets, stats, layout = _batch(folders["multiclass"], 40)
    assert (mask.sum(1) < 40).any() and (mask.sum(1) == 40).any()  # padded jets and full ones
    torch.manual_seed(0)
    net = build_tagger(model, layout, _network(model), 3, stats["constituents"]).eval()
    generator = torch.Generator().manual_seed(1)
    wide = torch.randn(len(mask), 64, constituents.shape[2], generator=generator)  # garbage in padded slots
    wide_mask = torch.zeros(len(mask), 64, dtype=torch.bool)
    for i in range(len(mask)):  # each jet's real constituents shuffled into random slots of 64
        real = constituents[i, mask[i]]
        slots = torch.randperm(64, generator=generator)[:len(real)]
        wide[i, slots], wide_mask[i, slots] = real, True
    with torch.no_grad():
        out, moved = net(constituents, mask, jets), net(wide, wide_mask, jets)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(moved, out, rtol=0, atol=1e-5)
    # The check has teeth: dropping one real constituent of a full jet changes its outputs.
    full = int(torch.nonzero(mask.sum(1) == 40)[0])
    fewer = mask.clone()
    fewer[full, 0] = False
    with torch.no_grad():
        assert (net(constituents, fewer, jets)[full] - out[full]).abs().max() > 1e-4


@pytest.mark.parametrize("model", ["pfn", "part"])
def test_jets_without_or_with_one_constituent_give_finite_outputs(folders, model):
    constituents, mask, jets, stats, layout = _batch(folders["multiclass"], 16)
    net = build_tagger(model, layout, _network(model), 3, stats["constituents"]).eval()
    mask = mask.clone()
    mask[0] = False  # no constituent
    mask[1] = False
    mask[1, 0] = True  # one
    constituents = constituents.clone()
    constituents[0] = float("nan")  # missing values everywhere: imputed, and padded anyway
    constituents[1, 0, 1] = float("nan")
    with torch.no_grad():
        out = net(constituents, mask, jets)
    assert torch.isfinite(out).all()
    assert (out[0] != out[2]).any()


def test_cnn_on_empty_images_is_finite():
    layout = JetRowLayout(0, (), ("jet_pt",), channels=("all", "photon"))
    net = build_tagger("cnn", layout, _network("cnn"), 1).eval()
    images = torch.zeros(3, 2, 40, 40)
    images[1, 0, 20, 20] = 150.0
    images[2, 1, 3, 3] = float("nan")
    with torch.no_grad():
        assert torch.isfinite(net(images, torch.zeros(3, 1))).all()


@pytest.mark.parametrize("model", ["pfn", "part", "cnn"])
def test_each_tagger_trains_and_its_model_directory_predicts(folders, tmp_path, model):
    folder = folders["multiclass"]
    out = run_train(folder, tmp_path / model, _config(), model=model, device="cpu", progress=False)
    info = json.loads((out / "model_info.json").read_text())
    assert info["model"] == model and info["epochs_run"] == 2 and info["n_outputs"] == 3
    assert info["layout"]["jet_features"] == JETS and info["n_parameters"] > 0
    assert info["params"]["network"] == _network(model)
    assert info["mixed_precision"] is False  # never on the CPU
    history = json.loads((out / "history.json").read_text())
    assert len(history["val_accuracy"]) == 2 and all(np.isfinite(history["val_loss"]))
    loaded = load_model(out)
    test = pq.read_table(sorted((folder / "test").glob("*.parquet")))
    probabilities = loaded.predict(test, standardised=True)
    assert probabilities.shape == (test.num_rows, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    expected = (["cand_deta", "cand_dphi", "cand_pt"] if model == "cnn" else list(CANDIDATE_COLUMNS)) + JETS
    assert loaded.input_columns == expected
    # Raw values (standardisation undone) scored with standardised=False: the same answer.
    columns = StandardisedColumns(loaded.stats, source="stats.json")
    raw = test.select(expected)
    for name in expected:
        undone = (columns.list_values(raw, name, raw=True) if name.startswith("cand_")
                  else pa.array(columns.flat_values(raw, name, raw=True)))
        raw = raw.set_column(raw.column_names.index(name), name, undone)
    np.testing.assert_allclose(loaded.predict(raw, standardised=False), probabilities, atol=1e-5)


def test_binary_and_regression_targets(folders, tmp_path):
    binary = run_train(folders["binary"], tmp_path / "b", _config("binary"), model="part", device="cpu",
                       progress=False)
    test = pq.read_table(sorted((folders["binary"] / "test").glob("*.parquet")))
    scores = load_model(binary).predict(test, standardised=True)
    assert scores.shape == (test.num_rows,) and ((scores > 0) & (scores < 1)).all()
    assert "val_auc" in json.loads((binary / "history.json").read_text())
    regression = run_train(folders["regression"], tmp_path / "r", _config("regression"), model="pfn",
                           device="cpu", progress=False)
    test = pq.read_table(sorted((folders["regression"] / "test").glob("*.parquet")))
    mass = load_model(regression).predict(test, standardised=True)
    assert mass.shape == (test.num_rows,) and np.isfinite(mass).all()
    assert 0 < np.median(mass) < 100  # GeV: the standardisation of the target undone
    assert "val_rmse" in json.loads((regression / "history.json").read_text())


@pytest.mark.parametrize("model", ["pfn", "part"])
def test_a_resumed_run_equals_the_uninterrupted_one_and_the_seed_fixes_the_model(folders, tmp_path, monkeypatch,
                                                                                 model):
    folder, config = folders["multiclass"], _config(max_epochs=3)
    whole = run_train(folder, tmp_path / "whole", config, model=model, device="cpu", progress=False)
    real_save = train_fit.save_checkpoint

    def save_then_die(path, state):  # the process dies right after epoch 0's checkpoint
        real_save(path, state)
        if state["epoch"] == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_fit, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_train(folder, tmp_path / "cut", config, model=model, device="cpu", progress=False)
    monkeypatch.setattr(train_fit, "save_checkpoint", real_save)
    assert not (tmp_path / "cut" / "model_info.json").exists()
    resumed = run_train(folder, tmp_path / "cut", config, model=model, device="cpu", resume=True,
                        progress=False)
    assert _same_state(_state(whole), _state(resumed))
    history = [json.loads((d / "history.json").read_text()) for d in (whole, resumed)]
    assert history[0]["epoch"] == history[1]["epoch"] == [0, 1, 2]
    assert history[0]["val_loss"] == history[1]["val_loss"]
    # A stopped run (max_epochs 1) continued to 3 epochs with --resume: the same run too.
    run_train(folder, tmp_path / "short", _config(max_epochs=1), model=model, device="cpu", progress=False)
    longer = run_train(folder, tmp_path / "short", config, model=model, device="cpu", resume=True, progress=False)
    assert _same_state(_state(whole), _state(longer))
    again = run_train(folder, tmp_path / "again", config, model=model, device="cpu", progress=False)
    assert _same_state(_state(whole), _state(again))
    other = run_train(folder, tmp_path / "other", _config(max_epochs=3, seed=12), model=model, device="cpu",
                      progress=False)
    assert not _same_state(_state(whole), _state(other))
    with pytest.raises(StageInputError, match="cannot resume: settings network differ"):
        run_train(folder, tmp_path / "whole", _config(max_epochs=3, **{model: {**TINY[model], "dropout": 0.1}}),
                  model=model, device="cpu", resume=True, progress=False)
    assert (tmp_path / "whole" / "model_info.json").exists()  # refused before anything was touched


def test_one_line_errors_and_nothing_written(folders, tmp_path, capsys):
    events = write_prepared_dir(tmp_path / "events", rows=(300, 100, 100), row_group_rows=100)
    with pytest.raises(StageInputError, match=r"stats.json: no constituent lists \(cand_\*\): --model pfn trains"):
        run_train(events, tmp_path / "m", config_from_dict({}), model="pfn", device="cpu", progress=False)
    no_direction = folders["regression"]  # lists cand_pt, cand_logpt, cand_d0 only
    with pytest.raises(StageInputError, match=r"--model part computes its pairwise features .*: missing "
                                              r"cand_deta, cand_dphi \(add them"):
        run_train(no_direction, tmp_path / "m", _config("regression"), model="part", device="cpu", progress=False)
    with pytest.raises(StageInputError, match=r"no cand_deta list: --model cnn makes its images"):
        run_train(no_direction, tmp_path / "m", _config("regression"), model="cnn", device="cpu", progress=False)
    left_out = _config(constituent_features=["cand_deta", "cand_logpt"])
    with pytest.raises(ConfigError, match=r"train.tagger.constituent_features: --model part .*: missing cand_dphi$"):
        run_train(folders["multiclass"], tmp_path / "m", left_out, model="part", device="cpu", progress=False)
    with pytest.raises(ConfigError, match=r"train.tagger.constituent_features: cand_e not among"):
        run_train(folders["multiclass"], tmp_path / "m", _config(constituent_features=["cand_e"]), model="pfn",
                  device="cpu", progress=False)
    with pytest.raises(ConfigError, match=r"image_channels: photon need the cand_class list"):
        run_train(folders["multiclass"], tmp_path / "m", _config(image_channels=["photon"]), model="cnn",
                  device="cpu", progress=False)
    assert not (tmp_path / "m").exists()
    with pytest.raises(SystemExit) as exit_code:
        main(["train", str(events), "--model", "part", "--out", str(tmp_path / "m"), "--quiet"])
    assert exit_code.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hepprep: error: {events / 'stats.json'}: no constituent lists")
    assert not (tmp_path / "m").exists()
