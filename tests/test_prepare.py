"""Prepare stage end to end on a synthetic skim, on a dask scheduler the tests start themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis.config import DEFAULT_FEATURES, default_config
from analysis.errors import ConfigError, StageInputError
from analysis.prepare.runner import run_prepare
from analysis.prepare.split import SKIM_ID_COLUMNS, assign_split, event_hash
from analysis.prepare.stats import weighted_quantile
from tests._prepare_helpers import default_samples, read_split, repartition_skim, write_skim

SPLITS = ("train", "val", "test")
MC_DATASETS = {s.name for s in default_samples() if s.label != -1}


def small_config(**prepare):
    cfg = default_config()
    # Small buckets and files so that 12k rows give several buckets, files and row groups.
    for key, value in {"bucket_rows": 3000, "file_rows": 1500, "row_group_rows": 400, **prepare}.items():
        setattr(cfg.prepare, key, value)
    cfg.cluster.n_workers = 1
    cfg.cluster.memory_limit = "2GiB"
    return cfg


@pytest.fixture(scope="module")
def scheduler():
    """A two-worker dask cluster started (and stopped) by this module."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="2GiB") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def skim(tmp_path_factory) -> Path:
    return write_skim(tmp_path_factory.mktemp("skim") / "skim", rows_per_file=1500, row_group_rows=500)


@pytest.fixture(scope="module")
def prepared(skim, scheduler, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "prepared"
    run_prepare(skim, out, small_config(), scheduler=scheduler, progress=False)
    return out


def read_skim(skim: Path) -> pd.DataFrame:
    frames = [pq.read_table(p).to_pandas() for p in sorted(skim.glob("*/part-*.parquet"))]
    df = pd.concat(frames, ignore_index=True)
    df["dataset"] = df["dataset"].astype(str)
    df["input_position"] = np.arange(len(df))
    return df


def read_prepared(prep: Path, splits=(*SPLITS, "data")) -> pd.DataFrame:
    df = pd.concat([read_split(prep, s).to_pandas() for s in splits], ignore_index=True)
    df["dataset"] = df["dataset"].astype(str)
    return df


def test_every_event_once_and_weight_per_dataset_preserved(skim, prepared):
    raw, out = read_skim(skim), read_prepared(prepared)
    key = ["dataset", "event"]
    assert len(out) == len(raw)
    assert not out.duplicated(key).any()
    assert set(map(tuple, out[key].to_numpy())) == set(map(tuple, raw[key].to_numpy()))
    for name, group in raw.groupby("dataset"):
        expected = group["weight"].sum()
        got = out.loc[out["dataset"] == name, "weight"].sum()
        assert got == pytest.approx(expected, rel=1e-9)
    # real data never reaches the training sets, only data/
    assert set(out.loc[out["label"] == -1, "split"]) == {"data"}
    assert set(out.loc[out["split"] == "data", "label"]) == {-1}
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert sum(manifest["splits"][s]["rows"] for s in manifest["splits"]) == len(raw)


def test_each_event_lands_in_the_split_its_hash_names(skim, prepared):
    raw = read_skim(skim).set_index(["dataset", "event"])
    hashes = event_hash([raw.reset_index()[c].to_numpy() for c in SKIM_ID_COLUMNS], seed=1234)
    raw["expected"] = np.array(SPLITS)[assign_split(hashes, fractions=(0.6, 0.2, 0.2))]
    out = read_prepared(prepared, SPLITS).set_index(["dataset", "event"])
    np.testing.assert_array_equal(out["split"].to_numpy(), raw.loc[out.index, "expected"].to_numpy())


def test_train_weight_balances_classes_in_every_split(skim, prepared):
    out = read_prepared(prepared, SPLITS)
    assert out["train_weight"].dtype == np.float64
    for split in SPLITS:
        rows = out[out["split"] == split]
        sig = rows.loc[rows["label"] == 1, "train_weight"].sum()
        bkg = rows.loc[rows["label"] == 0, "train_weight"].sum()
        assert sig == pytest.approx(bkg, rel=1e-9)
        assert rows["train_weight"].mean() == pytest.approx(1.0, rel=1e-9)
    # the physics weight is untouched
    raw = read_skim(skim).set_index(["dataset", "event"])
    out = out.set_index(["dataset", "event"])
    np.testing.assert_array_equal(out["weight"].to_numpy(), raw.loc[out.index, "weight"].to_numpy())


def test_stats_match_numpy_on_train_rows_and_standardise_to_mean_0_std_1(skim, prepared):
    stats = json.loads((prepared / "stats.json").read_text())
    features = DEFAULT_FEATURES
    assert stats["feature_order"] == features and stats["computed_on"] == "train"
    out = read_prepared(prepared, ["train"]).set_index(["dataset", "event"])
    raw = read_skim(skim).set_index(["dataset", "event"]).loc[out.index]
    # train_weight by hand: each class scaled to N_train / 2
    w = raw["weight"].to_numpy()
    label = raw["label"].to_numpy()
    tw = np.where(label == 1, len(w) / 2 / w[label == 1].sum(), len(w) / 2 / w[label == 0].sum()) * w
    np.testing.assert_allclose(out["train_weight"].to_numpy(), tw, rtol=1e-12)
    for name in features:
        x = raw[name].to_numpy().astype(np.float64)
        mean = np.average(x, weights=tw)
        std = np.sqrt(np.average((x - mean) ** 2, weights=tw))
        got = stats["features"][name]
        assert got["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-12)
        assert got["std"] == pytest.approx(std, rel=1e-9)
        assert got["min"] == x.min() and got["max"] == x.max()
        for q, key in ((0.16, "q16"), (0.5, "median"), (0.84, "q84")):
            assert got[key] == pytest.approx(weighted_quantile(x, tw, q), rel=2**-6, abs=1e-3)
        z = out[name].to_numpy()
        assert z.dtype == np.float32
        assert np.average(z, weights=tw) == pytest.approx(0.0, abs=1e-5)
        assert np.sqrt(np.average(z.astype(np.float64) ** 2, weights=tw)) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(z * got["std"] + got["mean"], x, rtol=1e-5, atol=1e-5)


def _modify_rows(src: Path, dst: Path, which: str) -> None:
    """Copy a skim, changing feature values and weights of the val/test (or train) rows."""
    shutil.copytree(src, dst)
    for path in sorted(dst.glob("*/part-*.parquet")):
        df = pq.read_table(path).to_pandas()
        split = assign_split(event_hash([df[c].to_numpy() for c in SKIM_ID_COLUMNS], seed=1234),
                             fractions=(0.6, 0.2, 0.2))
        rows = split > 0 if which == "val/test" else np.arange(len(df)) == 0
        df.loc[rows, "m_vis"] = df.loc[rows, "m_vis"] * 3 + 100
        df.loc[rows, "tau1_pt"] = 1000.0
        df.loc[rows, "weight"] = df.loc[rows, "weight"] * 7
        pq.write_table(pq.read_table(path).from_pandas(df, preserve_index=False), path)


def test_changing_val_test_rows_leaves_stats_json_unchanged(skim, prepared, scheduler, tmp_path):
    _modify_rows(skim, tmp_path / "skim_vt", "val/test")
    run_prepare(tmp_path / "skim_vt", tmp_path / "prep_vt", small_config(), scheduler=scheduler, progress=False)
    assert (tmp_path / "prep_vt" / "stats.json").read_bytes() == (prepared / "stats.json").read_bytes()
    # ...while changing one training row per file does change it (the check can fail)
    _modify_rows(skim, tmp_path / "skim_tr", "train")
    run_prepare(tmp_path / "skim_tr", tmp_path / "prep_tr", small_config(), scheduler=scheduler, progress=False)
    assert (tmp_path / "prep_tr" / "stats.json").read_bytes() != (prepared / "stats.json").read_bytes()


def _runs_z(sequence: np.ndarray) -> float:
    """Wald-Wolfowitz runs test z-score of a two-valued sequence (0 for random order)."""
    n1, n0 = int(sequence.sum()), int((~sequence).sum())
    n = n1 + n0
    runs = 1 + int((sequence[1:] != sequence[:-1]).sum())
    mu = 2 * n1 * n0 / n + 1
    var = (mu - 1) * (mu - 2) / (n - 1)
    return (runs - mu) / np.sqrt(var)


def test_shuffle_mixes_datasets_and_input_positions(skim, prepared):
    raw = read_skim(skim).set_index(["dataset", "event"])
    for split in SPLITS:
        out = read_prepared(prepared, [split])
        position = raw.loc[list(zip(out["dataset"], out["event"])), "input_position"].to_numpy().astype(float)
        n = len(position)
        assert abs(np.corrcoef(position[:-1], position[1:])[0, 1]) < 4 / np.sqrt(n)
        assert abs(np.corrcoef(np.arange(n), position)[0, 1]) < 4 / np.sqrt(n)
        assert abs(_runs_z(out["label"].to_numpy() == 1)) < 4
        assert abs(_runs_z(out["dataset"].to_numpy() == "DYJetsToLL")) < 4
        same = (out["dataset"].to_numpy()[1:] == out["dataset"].to_numpy()[:-1]).mean()
        p = out["dataset"].value_counts(normalize=True).to_numpy()
        assert same == pytest.approx((p**2).sum(), abs=4 * np.sqrt((p**2).sum() / n))
        for path in sorted((prepared / split).glob("part-*.parquet")):
            meta = pq.ParquetFile(path).metadata
            assert meta.num_rows <= 1500 and meta.num_row_groups >= 2
            assert set(pq.read_table(path, columns=["dataset"]).column(0).to_pylist()) == MC_DATASETS


def test_same_inputs_and_seed_give_identical_bytes_with_any_worker_count(skim, prepared, tmp_path):
    # a LocalCluster of one worker started by prepare itself, against the two-worker scheduler
    run_prepare(skim, tmp_path / "again", small_config(), progress=False)
    ours = sorted(p.relative_to(prepared) for p in prepared.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert ours == theirs and len(ours) > 10
    for rel in ours:
        assert (prepared / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_repartitioned_skim_gives_the_same_splits(skim, prepared, scheduler, tmp_path):
    other = repartition_skim(skim, tmp_path / "skim", rows_per_file=700, row_group_rows=250, reverse=True)
    run_prepare(other, tmp_path / "prep", small_config(), scheduler=scheduler, progress=False)
    a = read_prepared(prepared).set_index(["dataset", "event"]).sort_index()
    b = read_prepared(tmp_path / "prep").set_index(["dataset", "event"]).sort_index()
    np.testing.assert_array_equal(a["split"].to_numpy(), b["split"].to_numpy())
    np.testing.assert_allclose(a["train_weight"].to_numpy(), b["train_weight"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(a["m_vis"].to_numpy(), b["m_vis"].to_numpy(), rtol=1e-6)


def test_progress_and_rerun_with_done_output_skips_the_work(skim, scheduler, tmp_path, capsys):
    out = tmp_path / "prep"
    run_prepare(skim, out, small_config(), scheduler=scheduler, progress=True)
    err = capsys.readouterr().err
    assert "prepare: dask dashboard http" in err and "prepare: shuffle + write" in err  # link + progress
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    run_prepare(skim, out, small_config(), scheduler=scheduler, progress=True)
    assert "is up to date" in capsys.readouterr().err
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    # another seed is other work: the folder is replaced as a whole
    manifest = run_prepare(skim, out, small_config(), seed=99, scheduler=scheduler, progress=False)
    assert manifest["prepare"]["seed"] == 99
    assert json.loads((out / "stats.json").read_text())["split"]["seed"] == 99
    assert [p.name for p in tmp_path.iterdir()] == ["prep"]  # no temp folders left


@pytest.mark.parametrize("policy", ["abs", "zero"])
def test_negative_weight_policy_is_applied_and_recorded(skim, scheduler, tmp_path, policy):
    out = tmp_path / "prep"
    run_prepare(skim, out, small_config(negative_weights=policy, kfolds=4), scheduler=scheduler, progress=False)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["negative_weights"] == policy
    df = read_prepared(out, SPLITS)
    negative = df["weight"] < 0
    assert negative.sum() > 100
    if policy == "abs":
        assert (df["train_weight"] > 0).all()
    else:
        assert (df.loc[negative, "train_weight"] == 0).all() and (df.loc[~negative, "train_weight"] > 0).all()
    for split in SPLITS:
        rows = df[df["split"] == split]
        assert rows.loc[rows.label == 1, "train_weight"].sum() == pytest.approx(
            rows.loc[rows.label == 0, "train_weight"].sum(), rel=1e-9)
    assert df["fold"].dtype == np.int8 and set(df["fold"]) == {0, 1, 2, 3}


def test_bad_inputs_fail_with_one_clear_message_and_leave_nothing(skim, scheduler, tmp_path):
    with pytest.raises(StageInputError, match="no-such-dir: no such skim directory; run `hepprep skim` first"):
        run_prepare(tmp_path / "no-such-dir", tmp_path / "prep", small_config(), progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(skim, broken)
    listed = broken / "TTbar" / "part-00000-0-1500.parquet"
    table = pq.read_table(listed)
    listed.write_bytes(b"not parquet at all")
    with pytest.raises(StageInputError, match="part-00000-0-1500.parquet: a part listed in the skim "
                                              "manifest is not a readable Parquet file"):
        run_prepare(broken, tmp_path / "prep", small_config(), scheduler=scheduler, progress=False)
    table = table.drop_columns(["m_vis"])
    pq.write_table(table, broken / "TTbar" / "part-00000-0-1500.parquet")
    with pytest.raises(StageInputError, match=r"part-00000-0-1500.parquet: column\(s\) m_vis missing"):
        run_prepare(broken, tmp_path / "prep", small_config(), scheduler=scheduler, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # nothing half-written
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...")
    with pytest.raises(StageInputError, match="thesis: exists and is not the output of `hepprep prepare`"):
        run_prepare(skim, precious, small_config(), scheduler=scheduler, progress=False)
    assert (precious / "chapter1.tex").read_text() == "..."


def test_skim_parts_with_other_integer_widths_and_plain_strings_are_combined(skim, scheduler, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(skim, mixed)
    path = sorted((mixed / "TTbar").glob("part-*.parquet"))[0]
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("run"), "run", table.column("run").cast("int64"))
    table = table.set_column(table.schema.get_field_index("dataset"), "dataset",
                             table.column("dataset").cast("string"))
    pq.write_table(table, path)
    run_prepare(mixed, tmp_path / "prep", small_config(), scheduler=scheduler, progress=False)
    out = read_prepared(tmp_path / "prep")
    assert len(out) == len(read_skim(skim)) and not out.duplicated(["dataset", "event"]).any()
    assert pq.read_schema(sorted((tmp_path / "prep" / "train").glob("*.parquet"))[0]).field("run").type == "int64"


def test_keyword_overrides_are_validated_like_the_config(skim, tmp_path):
    with pytest.raises(ConfigError, match=r"run_prepare arguments: prepare.split: fractions must sum to 1"):
        run_prepare(skim, tmp_path / "prep", small_config(), split=(0.5, 0.3, 0.3), progress=False)
    assert not (tmp_path / "prep").exists()
