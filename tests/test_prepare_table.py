"""Prepare stage on flat tables: a HiggsML-format CSV, a Parquet table without ids, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.cli import main
from analysis.config import config_from_dict
from analysis.errors import StageInputError
from analysis.prepare.table import normalise_table, run_prepare_table
from tests._prepare_helpers import read_split

# The 30 features of the HiggsML challenge file (Adam-Bourdarios et al., 2014).
HIGGSML_FEATURES = [
    "DER_mass_MMC", "DER_mass_transverse_met_lep", "DER_mass_vis", "DER_pt_h", "DER_deltaeta_jet_jet",
    "DER_mass_jet_jet", "DER_prodeta_jet_jet", "DER_deltar_tau_lep", "DER_pt_tot", "DER_sum_pt",
    "DER_pt_ratio_lep_tau", "DER_met_phi_centrality", "DER_lep_eta_centrality", "PRI_tau_pt",
    "PRI_tau_eta", "PRI_tau_phi", "PRI_lep_pt", "PRI_lep_eta", "PRI_lep_phi", "PRI_met", "PRI_met_phi",
    "PRI_met_sumet", "PRI_jet_num", "PRI_jet_leading_pt", "PRI_jet_leading_eta", "PRI_jet_leading_phi",
    "PRI_jet_subleading_pt", "PRI_jet_subleading_eta", "PRI_jet_subleading_phi", "PRI_jet_all_pt",
]
DIJET = ["DER_deltaeta_jet_jet", "DER_mass_jet_jet", "DER_prodeta_jet_jet", "DER_lep_eta_centrality",
         "PRI_jet_subleading_pt", "PRI_jet_subleading_eta", "PRI_jet_subleading_phi"]


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="2GiB") as cluster:
        yield cluster.scheduler_address


def write_higgsml_csv(path: Path, n: int = 6000, seed: int = 0) -> pd.DataFrame:
    """A file in the challenge layout: EventId, 30 features, Weight, Label s/b, -999 undefined."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"EventId": np.arange(100_000, 100_000 + n)})
    signal = rng.random(n) < 0.35
    for name in HIGGSML_FEATURES:
        df[name] = np.round(rng.gamma(3.0, 20.0, n) + np.where(signal, 10.0, 0.0), 3)
    df["PRI_jet_num"] = rng.integers(0, 4, n)
    for name in DIJET:  # undefined with fewer than two jets, as in the challenge
        df.loc[df["PRI_jet_num"] < 2, name] = -999.0
    df.loc[rng.random(n) < 0.15, "DER_mass_MMC"] = -999.0
    # challenge weights: signal ~0.002, background ~0.02-5
    df["Weight"] = np.where(signal, rng.uniform(0.001, 0.003, n), rng.uniform(0.02, 5.0, n))
    df["Label"] = np.where(signal, "s", "b")
    df.to_csv(path, index=False)
    return df


def _config(**prepare):
    return config_from_dict({"prepare": {"bucket_rows": 2000, "file_rows": 1000, "row_group_rows": 300,
                                         **prepare}, "cluster": {"n_workers": 1}})


def test_higgsml_csv_goes_through_with_right_labels_weights_and_missing_values(tmp_path, scheduler):
    csv = tmp_path / "training.csv"
    raw = write_higgsml_csv(csv).set_index("EventId")
    out = tmp_path / "prep"
    # through the command line; a failure would raise SystemExit
    main(["prepare", str(csv), "--out", str(out), "--table-format", "csv", "--scheduler", scheduler,
          "--quiet", "--split", "0.5,0.25,0.25", "--seed", "7"])
    df = pd.concat([read_split(out, s).to_pandas() for s in ("train", "val", "test")]).set_index("EventId")
    assert sorted(df.index) == sorted(raw.index)  # every event exactly once
    np.testing.assert_array_equal(df["label"].to_numpy(), np.where(raw.loc[df.index, "Label"] == "s", 1, 0))
    np.testing.assert_array_equal(df["weight"].to_numpy(), raw.loc[df.index, "Weight"].to_numpy())
    assert "Label" not in df.columns and "Weight" not in df.columns
    stats = json.loads((out / "stats.json").read_text())
    assert stats["feature_order"] == HIGGSML_FEATURES  # not EventId, Weight, Label
    assert stats["split"] == {"fractions": [0.5, 0.25, 0.25], "seed": 7, "kfolds": 0, "id_columns": ["EventId"],
                              "names": ["train", "val", "test"]}
    for split in ("train", "val", "test"):
        rows = df[df["split"] == split]
        assert rows.loc[rows.label == 1, "train_weight"].sum() == pytest.approx(
            rows.loc[rows.label == 0, "train_weight"].sum(), rel=1e-9)
    # -999 is missing: NaN in the output, left out of the statistics
    for name in ("DER_mass_jet_jet", "DER_mass_MMC"):
        missing = raw.loc[df.index, name].to_numpy() == -999.0
        assert missing.sum() > 100
        np.testing.assert_array_equal(np.isnan(df[name].to_numpy()), missing)
        train = df[(df["split"] == "train") & ~np.isnan(df[name])]
        x = raw.loc[train.index, name].to_numpy()
        assert stats["features"][name]["mean"] == pytest.approx(np.average(x, weights=train["train_weight"]),
                                                                rel=1e-9)
        assert stats["features"][name]["min"] == x.min() > 0
        assert stats["features"][name]["n"] == len(x)


def test_parquet_table_without_id_column_uses_file_and_row_number(tmp_path, scheduler):
    rng = np.random.default_rng(3)
    n = 3000
    table = pa.table({"x1": rng.normal(size=n), "x2": rng.exponential(size=n), "cls": rng.integers(0, 2, n)})
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=700)
    cfg = _config(table={"format": "parquet", "label_column": "cls", "weight_column": None, "id_columns": []})
    manifest = run_prepare_table(tmp_path / "events.parquet", tmp_path / "prep", cfg, scheduler=scheduler,
                                 progress=False)
    assert manifest["id_columns"] == ["dataset", "row_index"]
    df = pd.concat([read_split(tmp_path / "prep", s).to_pandas() for s in ("train", "val", "test")])
    assert sorted(df["row_index"]) == list(range(n))
    assert (df["weight"] == 1.0).all() and set(df["dataset"]) == {"events"}
    np.testing.assert_array_equal(df.sort_values("row_index")["label"].to_numpy(), table.column("cls").to_numpy())
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # converted copy removed


def test_table_errors_name_value_and_fix(tmp_path):
    spec = _config().prepare.table
    bad = pa.table({"EventId": [1, 2], "x": [1.0, 2.0], "Weight": [1.0, 1.0], "Label": ["s", "q"]})
    with pytest.raises(StageInputError, match=r"t.csv: label values \['q'\] in column 'Label' are neither "
                                              r"signal \['s', '1'\]"):
        normalise_table(bad, spec, dataset="t", features=["x"], first_row=0, source="t.csv")
    with pytest.raises(StageInputError, match="t.csv: column 'Weight' not found; the table has EventId, x, Label"):
        normalise_table(bad.drop_columns(["Weight"]), spec, dataset="t", features=["x"], first_row=0,
                        source="t.csv")
    with pytest.raises(StageInputError, match="nope.csv: no such table file or folder"):
        run_prepare_table(tmp_path / "nope.csv", tmp_path / "prep", _config(), progress=False)


def test_cli_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(tmp_path / "skim"), "--out", str(tmp_path / "prep"), "--split", "0.6,0.4"])
    assert exc.value.code == 1
    assert "--split '0.6,0.4': give three fractions train,val,test" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(tmp_path / "skim"), "--out", str(tmp_path / "prep"), "--split", "0.6,0.3,0.3"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "prepare.split" in err and "sum to 1" in err
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(tmp_path / "skim"), "--out", str(tmp_path / "prep"), "--quiet"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("hepprep: error: ") and "skim: no such skim directory" in err and err.count("\n") == 1
