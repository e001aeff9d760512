"""Prepare stage on jet-level skims: one row per jet, list columns, class balance over jet_label, flat (pt, eta).

A synthetic skim (`tests._jet_prepare_helpers`: events of 1-4 jets, 5-60 constituents,
0-4 secondary vertices, three jet classes with different spectra, negative weights, real
data) and the real ``pfnano.root`` skimmed with `processors.jets.JetProcessor` are
prepared with ``[target] class_column = "jet_label"``, ``[prepare.objects]
constituent_features`` and a flat (pt, eta) reweighting. The checks: every jet exactly
once, all jets of an event in one split (the split hashes the event, not the jet), but
not side by side after the shuffle; Σweight per dataset kept; every class the same total
in every split, and flat in the (pt, eta) bins, with no jet dropped; the constituent
statistics equal an independent numpy computation over the training jets' constituents
(and only those); the standardised constituents have weighted mean 0 and std 1 over the
real training constituents; the lists come out of the shuffle with their lengths and
values (list<float32>); a re-run gives the same bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from _skim_helpers import QUIET_COFFEA

from analysis import config_from_dict, run_skim
from analysis.core.objects import FlattenConfig
from analysis.errors import ConfigError, StageInputError
from analysis.prepare.flatten import FlatBinWeights
from analysis.prepare.runner import run_prepare
from analysis.prepare.split import SKIM_ID_COLUMNS, assign_split, event_hash
from tests._jet_prepare_helpers import CANDIDATE_COLUMNS, JET_CLASSES, VERTEX_COLUMNS, write_jet_skim

SPLITS = ("train", "val", "test")
LISTS = [*CANDIDATE_COLUMNS, *VERTEX_COLUMNS]
FEATURES = ["jet_pt", "jet_eta", "jet_mass", "jet_ncand", "jet_nsv"]
BINS = [[20.0, 40.0, 60.0, 100.0, 200.0, 400.0], [-2.5, -1.0, 0.0, 1.0, 2.5]]
KEY = ["dataset", "run", "luminosityBlock", "event", "jet_index"]


def _config(*, flatten: bool = True, lists=LISTS, features=FEATURES, classes=JET_CLASSES,
            variables=("jet_pt", "jet_eta"), **prepare) -> object:
    objects = {"constituent_features": list(lists)}
    if flatten:
        objects["flatten"] = {"variables": list(variables), "bins": BINS}
    return config_from_dict({"features": features,
                             "target": {"kind": "multiclass", "class_column": "jet_label", "classes": classes},
                             "prepare": {"bucket_rows": 800, "file_rows": 600, "row_group_rows": 200,
                                         "objects": objects, **prepare},
                             "cluster": {"n_workers": 1, "memory_limit": "2GiB"}})


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def skim(tmp_path_factory) -> Path:
    return write_jet_skim(tmp_path_factory.mktemp("jets") / "skim")


@pytest.fixture(scope="module")
def prepared(skim, scheduler, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "prepared"
    run_prepare(skim, out, _config(), scheduler=scheduler, progress=False)
    return out


@pytest.fixture(scope="module")
def balanced_only(skim, scheduler, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "balanced"
    run_prepare(skim, out, _config(flatten=False), scheduler=scheduler, progress=False)
    return out


def _table(files) -> pa.Table:
    tables = [pq.read_table(f).replace_schema_metadata(None) for f in files]
    tables = [t.set_column(t.schema.get_field_index("dataset"), "dataset", t.column("dataset").cast(pa.string()))
              for t in tables]
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def skim_jets(skim: Path) -> pa.Table:
    return _table(sorted(skim.glob("*/part-*.parquet")))


def prepared_jets(prep: Path, splits=(*SPLITS, "data")) -> pa.Table:
    return _table([f for s in splits for f in sorted((prep / s).glob("part-*.parquet"))])


def _frame(table: pa.Table, extra=()) -> pd.DataFrame:
    return table.select([*KEY, *extra]).to_pandas()


def _skim_rows_of(skim_table: pa.Table, prepared_table: pa.Table) -> np.ndarray:
    """For each prepared row, the index of the same jet in the skim table."""
    left = _frame(prepared_table).reset_index(names="prepared")
    right = _frame(skim_table).reset_index(names="skim")
    merged = left.merge(right, on=KEY, how="left", validate="one_to_one").sort_values("prepared")
    assert merged["skim"].notna().all()
    return merged["skim"].to_numpy().astype(np.int64)


def _entries(lists: pa.Array, row_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every entry of a list column (float64) and its row's weight."""
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(lists).cast(pa.float64()).to_numpy(zero_copy_only=False)
    return values, np.repeat(row_weight, lengths)


def _bins(pt: np.ndarray, eta: np.ndarray) -> np.ndarray:
    return np.searchsorted(BINS[0][1:-1], pt, side="right") * (len(BINS[1]) - 1) \
        + np.searchsorted(BINS[1][1:-1], eta, side="right")


def test_every_jet_once_and_weight_per_dataset_kept(skim, prepared):
    raw, out = skim_jets(skim), prepared_jets(prepared)
    a, b = _frame(raw), _frame(out)
    assert len(b) == len(a) and not b.duplicated(KEY).any()
    assert set(map(tuple, a.to_numpy())) == set(map(tuple, b.to_numpy()))
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["row_id_columns"] == ["jet_index"]
    for name in set(a["dataset"]):
        expected = raw.filter(pc.equal(raw.column("dataset"), name)).column("weight").to_numpy().sum()
        got = out.filter(pc.equal(out.column("dataset"), name)).column("weight").to_numpy().sum()
        assert got == pytest.approx(expected, rel=1e-12)
        assert manifest["datasets"][name]["prepared_sum_weight"] == pytest.approx(expected, rel=1e-12)


def test_all_jets_of_an_event_share_the_split_its_hash_names_but_not_a_neighbourhood(skim, prepared):
    out = prepared_jets(prepared)
    frame = _frame(out, ["split"])
    per_event = frame.groupby(["dataset", "run", "luminosityBlock", "event"])["split"].nunique()
    assert (per_event == 1).all()
    assert (frame.groupby(["dataset", "event"]).size() > 1).mean() > 0.5  # most events have several jets
    simulated = out.filter(pc.not_equal(out.column("split"), "data"))
    # the split is the event's: the hash of (dataset, run, luminosityBlock, event), no jet_index
    expected = assign_split(event_hash([simulated.column(c) for c in SKIM_ID_COLUMNS], seed=1234),
                            fractions=(0.6, 0.2, 0.2))
    np.testing.assert_array_equal(np.asarray(SPLITS)[expected], simulated.column("split").to_numpy(zero_copy_only=False))
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["split"]["id_columns"] == list(SKIM_ID_COLUMNS) and stats["split"]["row_id_columns"] == ["jet_index"]
    # the order draws from the jet too: neighbours in a file are seldom jets of one event
    for path in sorted((prepared / "train").glob("part-*.parquet")):
        rows = pq.read_table(path, columns=["dataset", "event"]).to_pandas()
        same = (rows["event"].to_numpy()[1:] == rows["event"].to_numpy()[:-1]) & \
            (rows["dataset"].to_numpy()[1:] == rows["dataset"].to_numpy()[:-1])
        assert same.mean() < 0.05, path


def test_train_weight_balances_the_jet_classes_and_is_flat_in_pt_eta_per_class(skim, prepared, balanced_only):
    raw = skim_jets(skim)
    for folder, flat in ((prepared, True), (balanced_only, False)):
        for split in SPLITS:
            table = prepared_jets(folder, (split,))
            rows = _skim_rows_of(raw, table)
            pt = raw.column("jet_pt").to_numpy()[rows].astype(np.float64)
            eta = raw.column("jet_eta").to_numpy()[rows].astype(np.float64)
            label = raw.column("jet_label").to_numpy()[rows]
            cls = table.column("class").to_numpy()
            np.testing.assert_array_equal(cls, label)  # light 0, c 1, b 2 as [target.classes] says
            tw = table.column("train_weight").to_numpy()
            assert np.all(tw[table.column("weight").to_numpy() != 0] != 0)  # no jet dropped
            assert tw.mean() == pytest.approx(1.0, rel=1e-9)
            bins = _bins(pt, eta)
            spread = []
            for c in range(3):
                assert tw[cls == c].sum() == pytest.approx(len(tw) / 3, rel=1e-9)
                per_bin = np.bincount(bins[cls == c], weights=tw[cls == c], minlength=20)
                occupied = per_bin[np.bincount(bins[cls == c], minlength=20) > 0]
                spread.append(occupied.max() / occupied.min())
                if flat:  # every occupied bin of the class carries the same total
                    np.testing.assert_allclose(occupied, len(tw) / 3 / len(occupied), rtol=1e-9)
            if not flat:  # the classes' own spectra: far from flat
                assert max(spread) > 3.0
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["flatten"]["variables"] == ["jet_pt", "jet_eta"] and stats["flatten"]["bins"] == BINS
    assert set(stats["flatten"]["classes"]["train"]) == {"light", "c", "b"}
    assert stats["target"]["class_column"] == "jet_label"
    assert stats["target"]["values"] == {"light": [0], "c": [1], "b": [2]}
    assert "flatten" not in json.loads((balanced_only / "stats.json").read_text())


def _reference_statistics(raw: pa.Table, train: pa.Table, name: str) -> dict:
    """Weighted mean and std of a list column over the real entries of the training jets (numpy, two passes)."""
    rows = _skim_rows_of(raw, train)
    values, weights = _entries(raw.column(name).take(pa.array(rows)), train.column("train_weight").to_numpy())
    finite = np.isfinite(values)
    x, w = values[finite], weights[finite]
    mean = (w * x).sum() / w.sum()
    return {"mean": mean, "std": np.sqrt((w * (x - mean) ** 2).sum() / w.sum()), "count": int(finite.sum()),
            "n_nan": int(np.isnan(values).sum()), "sum_weight": w.sum()}


@pytest.mark.parametrize("folder", ["prepared", "balanced_only"])
def test_constituent_statistics_are_those_of_the_training_constituents(skim, folder, request):
    prep = request.getfixturevalue(folder)
    raw, train = skim_jets(skim), prepared_jets(prep, ("train",))
    stats = json.loads((prep / "stats.json").read_text())["constituents"]
    assert stats["feature_order"] == LISTS and stats["computed_on"] == "train"
    simulated = raw.filter(pc.greater_equal(raw.column("label"), 0))
    for name in LISTS:
        want, got = _reference_statistics(raw, train, name), stats["features"][name]
        assert got["count"] == want["count"] and got["n_nan"] == want["n_nan"]
        assert abs(got["mean"] - want["mean"]) <= 1e-9 * want["std"]
        assert got["std"] == pytest.approx(want["std"], rel=1e-9)
        assert got["sum_weight"] == pytest.approx(want["sum_weight"], rel=1e-9)
        # only the training jets: all simulated jets have many more entries
        assert got["count"] < 0.8 * int(pc.sum(pc.list_value_length(simulated.column(name))).as_py())
    assert stats["features"]["cand_d0"]["n_nan"] > 0  # the helper's missing track details are left out


def test_standardised_constituents_have_weighted_mean_0_and_std_1_on_train(prepared):
    train = prepared_jets(prepared, ("train",))
    tw = train.column("train_weight").to_numpy()
    for name in LISTS:
        assert train.schema.field(name).type == pa.list_(pa.field("element", pa.float32()))
        values, weights = _entries(train.column(name), tw)
        finite = np.isfinite(values)
        x, w = values[finite], weights[finite]
        mean = (w * x).sum() / w.sum()
        assert abs(mean) < 1e-6, name
        assert np.sqrt((w * (x - mean) ** 2).sum() / w.sum()) == pytest.approx(1.0, abs=1e-6), name
    # and the flat features as before, with the flattened train_weight
    for name in FEATURES:
        x = train.column(name).to_numpy()
        assert abs((tw * x).sum() / tw.sum()) < 1e-6


def test_list_columns_survive_the_shuffle_entry_for_entry(skim, prepared):
    raw, out = skim_jets(skim), prepared_jets(prepared)
    stats = json.loads((prepared / "stats.json").read_text())["constituents"]["features"]
    rows = _skim_rows_of(raw, out)
    for name in LISTS:
        before = raw.column(name).take(pa.array(rows))
        after = out.column(name)
        np.testing.assert_array_equal(pc.list_value_length(before).to_numpy(), pc.list_value_length(after).to_numpy())
        x = pc.list_flatten(before).to_numpy(zero_copy_only=False).astype(np.float64)
        z = pc.list_flatten(after).to_numpy(zero_copy_only=False).astype(np.float64)
        np.testing.assert_array_equal(np.isnan(x), np.isnan(z))
        ok = np.isfinite(x)
        np.testing.assert_allclose(z[ok] * stats[name]["std"] + stats[name]["mean"], x[ok],
                                   rtol=2e-6, atol=2e-6 * stats[name]["std"])
    # the list lengths are the jets' own
    np.testing.assert_array_equal(pc.list_value_length(out.column("cand_pt")).to_numpy(),
                                  raw.column("jet_ncand").to_numpy()[rows])


def test_the_same_inputs_give_the_same_bytes_with_another_worker_count(skim, prepared, tmp_path):
    # a one-worker LocalCluster started by prepare itself, against the module's scheduler
    run_prepare(skim, tmp_path / "again", _config(), progress=False)
    ours = sorted(p.relative_to(prepared) for p in prepared.rglob("*.parquet"))
    theirs = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*.parquet"))
    assert ours == theirs and len(ours) >= 4
    for rel in [*ours, Path("stats.json")]:
        assert (prepared / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_dask_awkward_still_needs_one_partition_per_file(skim):
    # analysis/prepare/constituents.py reads one partition per file because split_row_groups=True
    # on several files covers the first file's row groups only. When this fails, dask-awkward
    # splits row groups right: partitions may then be row groups (a smaller memory bound).
    import dask_awkward as dak

    files = sorted(str(p) for p in skim.glob("*/part-*.parquet"))
    row_groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)
    assert row_groups > len(files) > 1
    assert dak.from_parquet(files, columns=["weight"], split_row_groups=False).npartitions == len(files)
    assert dak.from_parquet(files, columns=["weight"], split_row_groups=True).npartitions != row_groups


def test_flat_bin_weights_by_hand_and_chunked_like_one_fit():
    # one split, one class; bins 0, 0, 1, 2 with weights 1, 3, 2, -1 (keep) -> bin 2 cannot be flattened
    split, cls = np.zeros(3, dtype=int), np.zeros(3, dtype=int)
    flat = FlatBinWeights(class_names=("a",), n_bins=3).partial_fit(split, cls, np.array([0, 0, 1]),
                                                                     np.array([1.0, 3.0, 2.0]))
    # W_class = 6, two occupied bins: factor = 6 / (2 * W_bin) -> bin 0: 0.75, bin 1: 1.5, bin 2 (empty): 0
    np.testing.assert_allclose(flat.finalize()[0, 0], [0.75, 1.5, 0.0])
    np.testing.assert_allclose(flat.transform(split, cls, np.array([0, 0, 1])) * [1.0, 3.0, 2.0], [0.75, 2.25, 3.0])
    rng = np.random.default_rng(3)
    s, c, b, w = rng.integers(0, 3, 500), rng.integers(0, 2, 500), rng.integers(0, 6, 500), rng.exponential(1, 500)
    whole = FlatBinWeights(class_names=("a", "b"), n_bins=6).partial_fit(s, c, b, w)
    pieces = FlatBinWeights(class_names=("a", "b"), n_bins=6)
    for lo in range(0, 500, 70):
        pieces = pieces.merge(FlatBinWeights(class_names=("a", "b"), n_bins=6)
                              .partial_fit(s[lo:lo + 70], c[lo:lo + 70], b[lo:lo + 70], w[lo:lo + 70]))
    np.testing.assert_allclose(pieces.finalize(), whole.finalize(), rtol=1e-12)
    bad = FlatBinWeights(class_names=("a",), n_bins=2).partial_fit(np.zeros(2, int), np.zeros(2, int),
                                                                    np.array([0, 1]), np.array([1.0, -1.0]))
    with pytest.raises(StageInputError, match="bin 1 of class 'a' in split 'train'.*wider bins"):
        bad.finalize()


def test_bins_clip_outside_values_and_refuse_nan():
    spec = FlattenConfig(variables=["pt", "eta"], bins=[[20, 50, 100], [-1, 0, 1]])
    got = spec.bin_of({"pt": np.array([5.0, 20.0, 60.0, 1e4]), "eta": np.array([-3.0, 0.5, 0.0, 9.0])}, where="x")
    np.testing.assert_array_equal(got, [0, 1, 3, 3])
    with pytest.raises(StageInputError, match="'eta' is NaN in 1 row"):
        spec.bin_of({"pt": np.array([30.0]), "eta": np.array([np.nan])}, where="x")


@pytest.mark.parametrize(("section", "message"), [
    ({"target": {"kind": "multiclass", "class_column": "jet_label"}}, "list the integer values of that column"),
    ({"target": {"kind": "binary", "class_column": "jet_label"}}, "class_column: a class column is for kind"),
    ({"target": {"kind": "multiclass", "class_column": "jet_label", "classes": {"a": [0], "b": [0, 1]}}},
     "jet_label value 0 is already in class 'a'"),
    ({"prepare": {"objects": {"flatten": {"variables": ["jet_pt"], "bins": [[20, 10]]}}}}, "increasing"),
    ({"prepare": {"objects": {"flatten": {"variables": ["jet_pt", "jet_eta"], "bins": [[20, 30]]}}}},
     "1 lists of edges for 2 variables"),
    ({"prepare": {"objects": {"constituent_features": ["cand_pt", "cand_pt"]}}}, "listed twice: cand_pt"),
])
def test_bad_settings_are_one_line_naming_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(section)


@pytest.mark.parametrize(("config", "message"), [
    (lambda: _config(features=["jet_pt", "cand_pt"], lists=["cand_deta"]),
     "cand_pt are list columns .*name them in prepare.objects.constituent_features"),
    (lambda: _config(lists=["cand_deta", "jet_mass"], features=["jet_pt"]),
     "constituent_features jet_mass are not list columns"),
    (lambda: _config(classes={"light": [0], "c": [1]}), r"jet_label value\(s\) \[2\] of \d+ simulated row"),
    (lambda: _config(features=["jet_pt", "jet_label"]), "target.class_column: 'jet_label' is also a training feature"),
    (lambda: _config(variables=("jet_pt", "jet_rapidity")), "column.s. jet_rapidity missing; the file has"),
])
def test_bad_inputs_are_one_line(skim, scheduler, tmp_path, config, message):
    with pytest.raises(StageInputError, match=message):
        run_prepare(skim, tmp_path / "prep", config(), scheduler=scheduler, progress=False)


# -- the real PFNano file through the jet processor ------------------------------------------------

REAL_LISTS = ["cand_pt", "cand_deta", "cand_dphi", "cand_logpt", "cand_loge", "cand_ptrel", "cand_erel", "cand_dr",
              "cand_charge", "cand_class", "cand_d0", "cand_d0sig", "cand_dz", "cand_dzsig", "cand_puppiw",
              "sv_pt", "sv_mass", "sv_ntracks", "sv_dxysig", "sv_costhetasvpv"]
REAL_CLASSES = {"light": [0], "c": [1]}  # the fixture's 10 QCD events hold c jets (in one event) and no b jet


@pytest.fixture(scope="module")
def real_skim(cms_fixtures, tmp_path_factory) -> Path:
    """pfnano.root skimmed with JetProcessor (AK4), as two datasets, so that both splits can hold a c jet.

    The second dataset reads a copy: one path listed under two datasets makes the skim
    manifest list both datasets' parts under each (and prepare would read every jet twice).
    """
    root = tmp_path_factory.mktemp("pfnano")
    shutil.copy(cms_fixtures.pfnano, root / "pfnano_copy.root")
    meta = {"process": "QCD", "label": 0, "is_mc": True, "xsec_pb": 1.0, "sumw": 10.0}
    fileset = root / "fileset.json"
    fileset.write_text(json.dumps({name: {"files": {str(path): "Events"}, "metadata": meta}
                                   for name, path in (("QCD_a", cms_fixtures.pfnano),
                                                      ("QCD_b", root / "pfnano_copy.root"))}))
    config = config_from_dict({"skim": {"processor": "processors.jets:JetProcessor", "executor": "iterative"}})
    run_skim(fileset, root / "skim", config, progress=False)
    return root / "skim"


def _real_seed(raw: pa.Table) -> int:
    """The first seed putting a c jet in both splits of a half/half split (the c jets are in one event per dataset)."""
    c_jets = raw.filter(pc.equal(raw.column("jet_label"), 1))
    for seed in range(1, 1000):
        split = assign_split(event_hash([c_jets.column(c) for c in SKIM_ID_COLUMNS], seed=seed), fractions=(0.5, 0.5, 0))
        if set(split.tolist()) == {0, 1}:
            return seed
    raise AssertionError("no seed puts c jets in both splits")


@QUIET_COFFEA[0]
@QUIET_COFFEA[1]
def test_the_real_pfnano_skim_prepares_with_its_constituents(real_skim, scheduler, tmp_path):
    raw = skim_jets(real_skim)
    assert raw.num_rows == 84 and set(raw.column("jet_label").to_pylist()) == {0, 1}
    config = config_from_dict({
        "features": ["jet_pt", "jet_eta", "jet_mass", "jet_area", "jet_ncand", "jet_nsv"],
        "target": {"kind": "multiclass", "class_column": "jet_label", "classes": REAL_CLASSES},
        "prepare": {"split": [0.5, 0.5, 0.0], "seed": _real_seed(raw), "bucket_rows": 30, "file_rows": 20,
                    "row_group_rows": 10,
                    "objects": {"constituent_features": REAL_LISTS,
                                "flatten": {"variables": ["jet_pt", "jet_eta"], "bins": [[20, 40, 5000], [-2.5, 0, 2.5]]}}},
        "cluster": {"n_workers": 1}})
    out = tmp_path / "prep"
    run_prepare(real_skim, out, config, scheduler=scheduler, progress=False)
    prepared = prepared_jets(out, SPLITS)
    frame = _frame(prepared, ["split"])
    assert len(frame) == raw.num_rows and not frame.duplicated(KEY).any()
    assert (frame.groupby(["dataset", "run", "luminosityBlock", "event"])["split"].nunique() == 1).all()
    for name in ("QCD_a", "QCD_b"):
        want = raw.filter(pc.equal(raw.column("dataset"), name)).column("weight").to_numpy().sum()
        got = prepared.filter(pc.equal(prepared.column("dataset"), name)).column("weight").to_numpy().sum()
        assert got == pytest.approx(want, rel=1e-12)
    rows = _skim_rows_of(raw, prepared)
    for split in ("train", "val"):  # balanced and flat, every jet kept
        part = prepared.filter(pc.equal(prepared.column("split"), split))
        idx = _skim_rows_of(raw, part)
        tw, cls = part.column("train_weight").to_numpy(), part.column("class").to_numpy()
        assert np.all(tw > 0)
        bins = (raw.column("jet_pt").to_numpy()[idx] >= 40) * 2 + (raw.column("jet_eta").to_numpy()[idx] >= 0)
        for c in range(2):
            assert tw[cls == c].sum() == pytest.approx(len(tw) / 2, rel=1e-9)
            per_bin = np.bincount(bins[cls == c], weights=tw[cls == c], minlength=4)
            occupied = per_bin[np.bincount(bins[cls == c], minlength=4) > 0]
            np.testing.assert_allclose(occupied, len(tw) / 2 / len(occupied), rtol=1e-9)
    stats = json.loads((out / "stats.json").read_text())["constituents"]["features"]
    train = prepared.filter(pc.equal(prepared.column("split"), "train"))
    for name in REAL_LISTS:
        want, got = _reference_statistics(raw, train, name), stats[name]
        assert got["count"] == want["count"] > 0
        assert abs(got["mean"] - want["mean"]) <= 1e-9 * max(want["std"], 1e-12)
        values, weights = _entries(train.column(name), train.column("train_weight").to_numpy())
        if want["std"] > 0:
            assert got["std"] == pytest.approx(want["std"], rel=1e-9)
            mean = (weights * values).sum() / weights.sum()
            assert abs(mean) < 1e-6 and np.sqrt((weights * (values - mean) ** 2).sum() / weights.sum()) == \
                pytest.approx(1.0, abs=1e-6), name
        else:  # constant (the CHS jets' PUPPI weights): std stored as 1, every entry 0
            assert got["std"] == 1.0 and np.all(values == 0.0)
        np.testing.assert_array_equal(pc.list_value_length(train.column(name)).to_numpy(),
                                      pc.list_value_length(raw.column(name).take(pa.array(_skim_rows_of(raw, train))))
                                      .to_numpy())
    assert len(rows) == raw.num_rows
