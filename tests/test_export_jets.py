"""Export stage on jet-level prepared folders: `hepprep export-hdf5` (salt and weaver layouts) and `export-images`.

A synthetic jet skim (`tests._jet_prepare_helpers`: 5-60 constituents and 0-4 vertices a jet,
NaN entries) and the real ``pfnano.root`` skimmed with `processors.jets.JetProcessor` are
prepared, then exported with N and M small enough that lists are both truncated and padded.
The checks: every jet of a split once, in file order; the flat columns equal the Parquet
values (text columns through their codes); each constituent field equals the first N
entries of its list, ``valid`` exactly the real ones, padding 0; ``--unstandardised``
equals the values undone with stats.json, and the raw skim; weaver-core's own reader
reads the weaver layout back; the images' pixel sums equal the weight of the constituents
inside the window, and equal `jet_images` on the raw skim lists; every bad input is one
line, and a failing export leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _skim_helpers import QUIET_COFFEA

from analysis import config_from_dict, run_skim
from analysis.cli import main
from analysis.core.jet_images import DEFAULT_CHANNELS, jet_images
from analysis.core.prepared import read_prepared_listing
from analysis.core.standardise import Standardisation
from analysis.errors import ConfigError, StageInputError
from analysis.export.hdf5 import run_export_hdf5
from analysis.export.images import run_export_images
from analysis.prepare.runner import run_prepare
from tests._jet_prepare_helpers import JET_CLASSES, jet_samples, write_jet_skim
from tests._prepare_helpers import default_samples, write_skim

N, M = 8, 3  # the skim has 5-60 constituents and 0-4 vertices a jet: both truncated and padded
SPLITS = ("train", "val", "test")
KEY = ["dataset", "run", "luminosityBlock", "event", "jet_index"]
STANDARDISED_LISTS = ["cand_deta", "cand_dphi", "cand_logpt", "sv_dxysig"]


def _config(lists=STANDARDISED_LISTS, classes=JET_CLASSES, **prepare):
    return config_from_dict({
        "features": ["jet_pt", "jet_eta", "jet_mass", "jet_ncand", "jet_nsv"],
        "target": {"kind": "multiclass", "class_column": "jet_label", "classes": classes},
        "prepare": {"bucket_rows": 800, "file_rows": 300, "row_group_rows": 100,
                    "objects": {"constituent_features": list(lists)}, **prepare},
        "cluster": {"n_workers": 1, "memory_limit": "2GiB"}})


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def skim(tmp_path_factory) -> Path:
    return write_jet_skim(tmp_path_factory.mktemp("jets") / "skim", jet_samples(0.2))


@pytest.fixture(scope="module")
def prepared(skim, scheduler, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "prepared"
    run_prepare(skim, out, _config(), scheduler=scheduler, progress=False)
    return out


@pytest.fixture(scope="module")
def salt(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("h5") / "salt"
    run_export_hdf5(prepared, out, constituents=N, vertices=M, progress=False)
    return out


def _split_table(prep: Path, split: str) -> pa.Table:
    files = read_prepared_listing(prep).files(split)
    return pa.concat_tables([pq.read_table(f).replace_schema_metadata(None) for f in files],
                            promote_options="permissive")


def _padded(lists: pa.ChunkedArray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """An independent padding (awkward): the first n entries of each list, 0 after, and the mask."""
    array = ak.from_arrow(lists)
    clipped = ak.pad_none(array[:, :n], n, clip=True)
    return ak.to_numpy(ak.fill_none(clipped, 0.0)).astype(np.float32), ak.to_numpy(~ak.is_none(clipped, axis=1))


def _assert_lists_equal(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.nan_to_num(got), np.nan_to_num(want))


def test_every_jet_once_with_the_parquet_values_and_the_first_n_constituents(prepared, salt):
    record = json.loads((salt / "export.json").read_text())
    assert record["stage"] == "jets-hdf5" and set(record["files"]) == {f"{s}.h5" for s in SPLITS}
    truncated = padded = 0
    for split in SPLITS:
        table = _split_table(prepared, split)
        with h5py.File(salt / f"{split}.h5", "r") as h5:
            assert set(h5) == {"jets", "consts", "vertices"} and h5.attrs["split"] == split
            jets, consts, vertices = h5["jets"][:], h5["consts"][:], h5["vertices"][:]
            codes = json.loads(h5.attrs["codes"])
            assert h5["consts"].compression == "gzip" and h5["consts"].chunks[1:] == (N,)
        assert len(jets) == table.num_rows == record["files"][f"{split}.h5"]["rows"]
        assert consts.shape == (table.num_rows, N) and vertices.shape == (table.num_rows, M)
        assert "split" not in jets.dtype.names  # the file's name says it
        for name in jets.dtype.names:
            column = table.column(name)
            if name in codes:
                np.testing.assert_array_equal(np.array(codes[name])[jets[name]], column.cast(pa.string()).to_numpy())
            else:
                np.testing.assert_array_equal(jets[name], column.to_numpy())
        for data, names, n in ((consts, ["cand_pt", "cand_deta", "cand_dphi", "cand_logpt", "cand_d0"], N),
                               (vertices, ["sv_mass", "sv_dxysig"], M)):
            assert data.dtype.names == (*names, "valid")
            for name in names:
                want, valid = _padded(table.column(name), n)
                _assert_lists_equal(data[name], want)
                np.testing.assert_array_equal(data["valid"], valid)
                assert np.all(data[name][~valid] == 0)
        lengths = np.array([len(v) for v in table.column("cand_pt").to_pylist()])
        truncated += int((lengths > N).sum())
        padded += int((lengths < N).sum())
        assert np.array_equal(consts["valid"].sum(axis=1), np.minimum(lengths, N))
    assert truncated > 0 and padded > 0
    assert np.isnan(consts["cand_d0"][consts["valid"]]).any()  # a missing entry stays NaN, and valid


def test_unstandardised_values_are_those_stats_json_undoes_and_the_skim_holds(prepared, skim, tmp_path):
    out = tmp_path / "raw"
    run_export_hdf5(prepared, out, splits=["test"], constituents=N, vertices=M, unstandardised=True, progress=False)
    stats = json.loads((prepared / "stats.json").read_text())
    table = _split_table(prepared, "test")
    with h5py.File(out / "test.h5", "r") as h5:
        jets, consts, vertices = h5["jets"][:], h5["consts"][:], h5["vertices"][:]
        assert json.loads(h5.attrs["columns"])["cand_deta"].startswith("in physical units")
    flat = Standardisation.from_stats(stats)
    for j, name in enumerate(flat.features):
        want = flat.inverse_column(j, table.column(name).to_numpy()).astype(np.float32)
        np.testing.assert_array_equal(jets[name], want)
    lists = Standardisation.from_stats(stats["constituents"])
    for data, name, n in ((consts, "cand_deta", N), (consts, "cand_logpt", N), (vertices, "sv_dxysig", M)):
        values, valid = _padded(table.column(name), n)
        want = np.where(valid, lists.inverse_column(lists.index(name), values), 0.0).astype(np.float32)
        _assert_lists_equal(data[name], want)
    # ... which is the skim's own value, within float32 rounding (the same jet, by its identity)
    raw = pa.concat_tables([pq.read_table(f) for f in sorted(skim.glob("*/part-*.parquet"))],
                           promote_options="permissive")
    names = json.loads(h5py.File(out / "test.h5", "r").attrs["codes"])["dataset"]
    index = {(str(d), int(r), int(lb), int(e), int(i)): k for k, (d, r, lb, e, i) in enumerate(zip(
        raw.column("dataset").cast(pa.string()).to_pylist(), *(raw.column(c).to_pylist() for c in KEY[1:])))}
    rows = [index[(names[d], int(r), int(lb), int(e), int(i))] for d, r, lb, e, i in zip(*(jets[c] for c in KEY))]
    np.testing.assert_allclose(jets["jet_pt"], raw.column("jet_pt").to_numpy()[rows], rtol=1e-5)
    want, _ = _padded(raw.column("cand_deta").take(pa.array(rows)), N)
    np.testing.assert_allclose(consts["cand_deta"], want, rtol=1e-4, atol=1e-6)


def test_weaver_reads_its_layout_with_the_values_of_the_salt_layout(prepared, salt, tmp_path):
    from weaver.utils.data.fileio import _read_files

    out = tmp_path / "weaver"
    run_export_hdf5(prepared, out, splits=["train", "val"], constituents=N, vertices=M, layout="weaver",
                    progress=False)
    branches = ["jet_pt", "class", "train_weight", "cand_deta", "cand_d0", "cand_mask", "sv_dxysig", "sv_mask"]
    table = _read_files([str(out / "train.h5"), str(out / "val.h5")], branches)  # weaver's own reader (PyTables)
    with h5py.File(salt / "train.h5", "r") as a, h5py.File(salt / "val.h5", "r") as b:
        jets = np.concatenate([a["jets"][:], b["jets"][:]])
        consts = np.concatenate([a["consts"][:], b["consts"][:]])
        vertices = np.concatenate([a["vertices"][:], b["vertices"][:]])
    for name in ("jet_pt", "class", "train_weight"):
        np.testing.assert_array_equal(ak.to_numpy(table[name]), jets[name])
    _assert_lists_equal(ak.to_numpy(table["cand_d0"]), consts["cand_d0"])
    np.testing.assert_array_equal(ak.to_numpy(table["cand_deta"]), consts["cand_deta"])
    np.testing.assert_array_equal(ak.to_numpy(table["cand_mask"]), consts["valid"].astype(np.float32))
    np.testing.assert_array_equal(ak.to_numpy(table["sv_dxysig"]), vertices["sv_dxysig"])
    np.testing.assert_array_equal(ak.to_numpy(table["sv_mask"]), vertices["valid"].astype(np.float32))


def _window_sums(deta, dphi, weight, half=0.4) -> np.ndarray:
    """Per jet, the weight of its constituents inside the image window (an independent loop over jets)."""
    out = []
    for x, y, w in zip(deta, dphi, weight):
        x, y, w = (np.asarray(v, dtype=np.float64) for v in (x, y, w))
        out.append(w[(x >= -half) & (x < half) & (y >= -half) & (y < half)].sum())
    return np.array(out)


def test_images_sum_the_constituents_inside_the_window_with_labels_and_weights(prepared, tmp_path):
    npz, h5_file = tmp_path / "images.npz", tmp_path / "images.h5"
    run_export_images(prepared, npz, split="val", channels=["all"], max_jets=100, progress=False)
    run_export_images(prepared, h5_file, split="val", channels=["all"], max_jets=100, progress=False)
    table = _split_table(prepared, "val").slice(0, 100)
    stats = json.loads((prepared / "stats.json").read_text())
    lists = Standardisation.from_stats(stats["constituents"])
    raw = {c: [lists.inverse_column(lists.index(c), np.asarray(v, dtype=np.float64))
               for v in table.column(c).to_pylist()] for c in ("cand_deta", "cand_dphi")}
    with np.load(npz) as archive:
        images = archive["images"]
        assert images.shape == (100, 1, 40, 40) and images.dtype == np.float32
        np.testing.assert_array_equal(archive["labels"], table.column("class").to_numpy())
        np.testing.assert_array_equal(archive["weights"], table.column("train_weight").to_numpy().astype(np.float32))
        np.testing.assert_array_equal(archive["event"], table.column("event").to_numpy())
        record = json.loads(str(archive["record"]))
        assert record["weight"] == "cand_pt" and list(record["channels"]) == ["all"]
        with h5py.File(h5_file, "r") as h5:
            for name in archive.files:
                if name not in ("record", "hepprep_export"):
                    np.testing.assert_array_equal(h5[name][:], archive[name])
    weight = table.column("cand_pt").to_pylist()
    sums = _window_sums(raw["cand_deta"], raw["cand_dphi"], weight)
    np.testing.assert_allclose(images.sum(axis=(1, 2, 3)), sums, rtol=1e-5)
    assert (sums < np.array([sum(w) for w in weight])).any()  # some constituents fall outside
    direct = jet_images(raw["cand_deta"], raw["cand_dphi"], weight, [np.zeros(len(w)) for w in weight],
                        channels={"all": DEFAULT_CHANNELS["all"]})
    np.testing.assert_allclose(images, direct, rtol=1e-6, atol=1e-6)


# -- the real PFNano file through the jet processor ------------------------------------------------

REAL_LISTS = ["cand_deta", "cand_dphi", "cand_ptrel", "cand_class", "cand_d0sig", "sv_dxysig"]


@pytest.fixture(scope="module")
def real_prepared(cms_fixtures, scheduler, tmp_path_factory) -> tuple[Path, Path]:
    """pfnano.root skimmed with JetProcessor (AK4), its standardised lists cand_class among them."""
    root = tmp_path_factory.mktemp("pfnano")
    meta = {"process": "QCD", "label": 0, "is_mc": True, "xsec_pb": 1.0, "sumw": 10.0}
    (root / "fileset.json").write_text(json.dumps({"QCD": {"files": {str(cms_fixtures.pfnano): "Events"},
                                                           "metadata": meta}}))
    run_skim(root / "fileset.json", root / "skim", config_from_dict(
        {"skim": {"processor": "processors.jets:JetProcessor", "executor": "iterative"}}), progress=False)
    config = _config(REAL_LISTS, {"light": [0], "c": [1]}, split=[1.0, 0.0, 0.0], bucket_rows=40, file_rows=30,
                     row_group_rows=20)
    run_prepare(root / "skim", root / "prep", config, scheduler=scheduler, progress=False)
    return root / "skim", root / "prep"


@QUIET_COFFEA[0]
@QUIET_COFFEA[1]
def test_the_real_pfnano_jets_export_and_image_like_jet_images_on_the_skim(real_prepared, tmp_path):
    skim, prep = real_prepared
    run_export_hdf5(prep, tmp_path / "h5", splits=["train"], constituents=16, progress=False)
    table = _split_table(prep, "train")
    with h5py.File(tmp_path / "h5" / "train.h5", "r") as h5:
        consts = h5["consts"][:]
    lengths = np.array([len(v) for v in table.column("cand_ptrel").to_pylist()])
    np.testing.assert_array_equal(consts["valid"].sum(axis=1), np.minimum(lengths, 16))
    assert (lengths > 16).any()
    run_export_images(prep, tmp_path / "real.npz", split="train", progress=False)
    raw = pa.concat_tables([pq.read_table(f) for f in sorted(skim.glob("*/part-*.parquet"))])
    order = {(int(e), int(i)): k for k, (e, i) in enumerate(zip(raw.column("event").to_pylist(),
                                                              raw.column("jet_index").to_pylist()))}
    with np.load(tmp_path / "real.npz") as archive:
        images = archive["images"]
        rows = pa.array([order[(int(e), int(i))] for e, i in zip(archive["event"], archive["jet_index"])])
    assert images.shape == (table.num_rows, 5, 40, 40)
    # exactly jet_images on the lists undone with stats.json ...
    lists = Standardisation.from_stats(json.loads((prep / "stats.json").read_text())["constituents"])
    undone = {c: [lists.inverse_column(lists.index(c), np.asarray(v, dtype=np.float64)).astype(np.float32)
                  for v in table.column(c).to_pylist()] for c in ("cand_deta", "cand_dphi", "cand_ptrel", "cand_class")}
    want = jet_images(undone["cand_deta"], undone["cand_dphi"], undone["cand_ptrel"],
                      [np.rint(v) for v in undone["cand_class"]])
    np.testing.assert_array_equal(images, want)
    # ... and, per jet and channel, jet_images on the skim's raw lists: a float32 standardisation and back
    # moves an entry by ~1e-7, which can carry a constituent lying on a pixel edge to the next pixel
    cols = {c: raw.column(c).take(rows) for c in ("cand_deta", "cand_dphi", "cand_ptrel", "cand_class")}
    direct = jet_images(cols["cand_deta"], cols["cand_dphi"], cols["cand_ptrel"], cols["cand_class"])
    np.testing.assert_allclose(images.sum(axis=(2, 3)), direct.sum(axis=(2, 3)), rtol=1e-5, atol=1e-7)
    assert np.mean(~np.isclose(images, direct, rtol=1e-4, atol=1e-7)) < 1e-4  # a few edge pixels
    sums = _window_sums(cols["cand_deta"].to_pylist(), cols["cand_dphi"].to_pylist(), cols["cand_ptrel"].to_pylist())
    np.testing.assert_allclose(images[:, 0].sum(axis=(1, 2)), sums, rtol=1e-5)
    # photons + neutral hadrons + tracks (charged hadrons, electrons, muons) make up "all"
    assert list(DEFAULT_CHANNELS) == ["all", "photon", "charged_hadron", "neutral_hadron", "track"]
    np.testing.assert_allclose(images[:, 1] + images[:, 3] + images[:, 4], images[:, 0], rtol=1e-5, atol=1e-6)
    assert (images[:, 2].sum(axis=(1, 2)) > 0).all() and (images[:, 1].sum() > 0)


# -- one-line errors, nothing half-written --------------------------------------------------------


@pytest.fixture(scope="module")
def event_prepared(scheduler, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("events")
    write_skim(root / "skim", default_samples(0.02))
    run_prepare(root / "skim", root / "prep", config_from_dict({"cluster": {"n_workers": 1}}),
                scheduler=scheduler, progress=False)
    return root / "prep"


def _error_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hepprep: error: ")
    return lines[0]


def test_bad_inputs_are_one_line_each(prepared, event_prepared, tmp_path, capsys):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with h5py.File(tmp_path / "foreign.h5", "w") as h5:
        h5["x"] = np.zeros(3)
    cases = [
        (["export-hdf5", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], "no such folder"),
        (["export-hdf5", str(tmp_path), "--out", str(tmp_path / "o")], "not a prepared folder"),
        (["export-hdf5", str(event_prepared), "--out", str(tmp_path / "o")], "an event-level prepared folder"),
        (["export-hdf5", str(prepared), "--out", str(tmp_path / "o"), "--splits", "train,tset"], "--splits tset"),
        (["export-hdf5", str(prepared), "--out", str(tmp_path / "o"), "--constituents", "0"], "--constituents 0"),
        (["export-hdf5", str(prepared), "--out", str(tmp_path / "o"), "--vertices", "-1"], "--vertices -1"),
        (["export-hdf5", str(prepared), "--out", str(tmp_path / "o"), "--layout", "root"], "--layout root"),
        (["export-hdf5", str(prepared), "--out", str(tmp_path / "foreign")], "is not a folder of"),
        (["export-images", str(prepared), "--out", str(tmp_path / "x.png")], "must end in .npz or .h5"),
        (["export-images", str(prepared), "--out", str(tmp_path / "foreign.h5")], "exists and is not"),
        (["export-images", str(prepared), "--out", str(tmp_path / "i.npz"), "--split", "data2"], "--split data2"),
        (["export-images", str(prepared), "--out", str(tmp_path / "i.npz"), "--channels", "all,gluon"],
         "--channels gluon"),
        (["export-images", str(prepared), "--out", str(tmp_path / "i.npz"), "--channels", "photon"], "cand_class"),
        (["export-images", str(prepared), "--out", str(tmp_path / "i.npz"), "--channels", "all", "--rotate"],
         "jet_sj1_deta"),
        (["export-images", str(prepared), "--out", str(tmp_path / "i.npz"), "--max-jets", "0"], "--max-jets 0"),
    ]
    for argv, message in cases:
        line = _error_line(argv, capsys)
        assert message in line, (argv, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "foreign.h5"]  # nothing written
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_an_npz_too_large_for_memory_is_refused_naming_h5(prepared, tmp_path):
    with pytest.raises(ConfigError, match=r"give --max-jets, or a \.h5 name"):
        run_export_images(prepared, tmp_path / "big.npz", channels=["all"], progress=False, npz_max_bytes=1000)
    assert not (tmp_path / "big.npz").exists()


def test_a_failing_export_leaves_nothing_and_a_rerun_replaces_its_own_folder(prepared, salt, tmp_path, monkeypatch):
    out = tmp_path / "again"
    shutil.copytree(salt, out)
    before = (out / "train.h5").stat().st_mtime_ns
    import analysis.export.hdf5 as hdf5

    calls = {"n": 0}
    real = hdf5.split_arrays

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # after a few row groups of the first split
            raise StageInputError("injected: a damaged row group")
        return real(*args, **kwargs)

    monkeypatch.setattr(hdf5, "split_arrays", failing)
    with pytest.raises(StageInputError, match="injected"):
        run_export_hdf5(prepared, out, constituents=N, vertices=M, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temporary folder left
    assert (out / "train.h5").stat().st_mtime_ns == before  # the earlier export untouched
    monkeypatch.setattr(hdf5, "split_arrays", real)
    run_export_hdf5(prepared, out, splits=["test"], constituents=4, vertices=M, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "test.h5"]
    with h5py.File(out / "test.h5", "r") as h5:
        assert h5["consts"].shape[1] == 4 and h5.attrs["hepprep_export"] == "jets-hdf5"


def test_the_commands_run_through_the_cli(prepared, tmp_path, capsys):
    main(["export-hdf5", str(prepared), "--out", str(tmp_path / "h5"), "--splits", "test", "--constituents", "4",
          "-q"])
    main(["export-images", str(prepared), "--out", str(tmp_path / "im.h5"), "--channels", "all", "--max-jets", "7",
          "-q"])
    main(["export-images", str(prepared), "--out", str(tmp_path / "im.h5"), "--channels", "all", "--max-jets", "5",
          "-q"])  # its own file: replaced
    with h5py.File(tmp_path / "h5" / "test.h5", "r") as h5:
        assert h5["consts"].shape[1:] == (4,) and h5["vertices"].shape[1:] == (5,)
    with h5py.File(tmp_path / "im.h5", "r") as h5:
        assert h5["images"].shape == (5, 1, 40, 40) and h5["images"].chunks is not None


def test_a_missing_h5py_is_one_line_with_the_install_command(prepared, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    line = _error_line(["export-hdf5", str(prepared), "--out", str(tmp_path / "o")], capsys)
    assert "pip install 'hepprep[hdf5]'" in line and not (tmp_path / "o").exists()
