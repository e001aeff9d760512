"""The generated jet sample (`hepprep generate --kind jets`): PFNano layout, truth, closure and the physics targets.

A small sample (1,600 events: 400 per dataset, two AK8 and one to three AK4 jets each) is
generated once, skimmed with `processors.jets:JetProcessor` for AK8 (pt > 250 GeV) and AK4
(the defaults), and checked against README "Generated jets":

* layout: every branch the processor reads exists, with the dtype of the real PFNano
  fixture (every branch the two files share has the fixture's type);
* truth: the AK8 labels come out of the GenPart matching for every class, the AK4 hadron
  flavours give all three labels; closure of the constituents on the uncorrected jets;
* physics: tau21 and soft-drop mass of W and H against QCD, tau32 of tops, multiplicities,
  b-hadron displacement, the JES response median and spread against pt in the documented
  form; an xgboost tagger's AUC below 1; the same seed gives the same arrays.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot

from _skim_helpers import QUIET_COFFEA
from analysis import config_from_dict, load_config, run_prepare, run_skim
from analysis.cli import main
from analysis.generate.jet_build import F_NH, KAPPA, median_response, resolution
from analysis.generate.jets import DEFAULT_JET_SAMPLES, generate_jet_samples
from processors.jets import JetProcessor

pytestmark = QUIET_COFFEA
PROCESSOR = "processors.jets:JetProcessor"
EVENTS = 1600
QCD, HBB, VQQ, TBQQ = range(4)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("jetgen")
    config = config_from_dict({"generate": {"events": EVENTS, "files_per_sample": 1, "seed": 7}})
    fileset = generate_jet_samples(root / "gen", config, progress=False)
    skims = {}
    for name, options in (("FatJet", {"collection": "FatJet", "pt_min": 250.0}), ("Jet", {})):
        cfg = config_from_dict({"skim": {"processor": PROCESSOR, "executor": "iterative", "options": options}})
        run_skim(fileset, root / name, cfg, progress=False)
        skims[name] = pq.read_table(sorted((root / name).glob("*/part-*.parquet"))).to_pandas()
    return {"root": root, "fileset": fileset, **skims}


def _tree(sample, dataset):
    meta = json.loads(sample["fileset"].read_text())[dataset]
    return uproot.open(sample["root"] / "gen" / next(iter(meta["files"])))


def test_the_layout_is_pfnanos(sample, cms_fixtures, tmp_path):
    real = uproot.open(cms_fixtures.pfnano)["Events"]
    for dataset in DEFAULT_JET_SAMPLES:
        tree = _tree(sample, dataset)["Events"]
        names = set(tree.keys())
        for collection in ("Jet", "FatJet"):
            processor = JetProcessor(options={"collection": collection}, lumi_pb=1.0, out_dir=tmp_path)
            assert not set(processor.input_branches()) - names
        shared = names & set(real.keys())
        assert len(shared) > 120
        mismatched = {b: (str(tree[b].interpretation), str(real[b].interpretation)) for b in shared
                      if str(tree[b].interpretation) != str(real[b].interpretation) and not b.startswith("n")}
        assert not mismatched
        runs = _tree(sample, dataset)["Runs"].arrays(library="np")
        assert runs["genEventSumw"].sum() == tree.num_entries == EVENTS // 4


def test_every_class_has_its_labels(sample):
    fat = sample["FatJet"]
    share = fat.groupby("process")["jet_label"].value_counts(normalize=True)
    # the first jet of a W, H event is the resonance, the second the recoiling QCD jet; both of a tt event are tops
    assert share["Wqq"][VQQ] > 0.45 and share["Hbb"][HBB] > 0.45 and share["Tbqq"][TBQQ] > 0.95
    assert share["QCD"][QCD] == 1.0 and share["Wqq"][QCD] > 0.4 and share["Hbb"][QCD] > 0.4
    ak4 = sample["Jet"]
    assert set(ak4["jet_label"]) == {0, 1, 2}
    assert (ak4.groupby("jet_label")["jet_hadron_flavour"].first().to_dict() == {0: 0, 1: 4, 2: 5})


@pytest.mark.parametrize("collection", ["Jet", "FatJet"])
def test_the_constituents_add_up_to_the_uncorrected_jet(sample, collection):
    rows = sample[collection]
    raw = {}
    for dataset in DEFAULT_JET_SAMPLES:
        a = _tree(sample, dataset)["Events"].arrays(["event", f"{collection}_rawFactor"], library="np")
        raw.update({(dataset, int(e)): f for e, f in zip(a["event"], a[f"{collection}_rawFactor"])})
    factor = np.array([raw[(d, int(e))][j] for d, e, j in zip(rows["dataset"], rows["event"], rows["jet_index"])],
                      dtype=np.float64)
    pt = np.concatenate(rows["cand_pt"].to_numpy()).astype(np.float64)
    row = np.repeat(np.arange(len(rows)), rows["jet_ncand"].to_numpy())
    eta = rows["jet_eta"].to_numpy()[row] + np.concatenate(rows["cand_deta"].to_numpy())
    phi = rows["jet_phi"].to_numpy()[row] + np.concatenate(rows["cand_dphi"].to_numpy())
    energy = np.exp(np.concatenate(rows["cand_loge"].to_numpy()).astype(np.float64))
    px, py, pz, e = (np.bincount(row, weights=v) for v in (pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), energy))
    scale = 1.0 - factor
    jet_pt, jet_m = rows["jet_pt"].to_numpy() * scale, rows["jet_mass"].to_numpy() * scale
    jet_e = np.sqrt((jet_pt * np.cosh(rows["jet_eta"].to_numpy())) ** 2 + jet_m**2)
    sum_pt = np.hypot(px, py)
    sum_m = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0))
    axis = np.hypot(np.arcsinh(pz / sum_pt) - rows["jet_eta"], np.angle(np.exp(1j * (np.arctan2(py, px) - rows["jet_phi"]))))
    assert np.max(np.abs(sum_pt / jet_pt - 1)) < 1e-3 and np.max(np.abs(e / jet_e - 1)) < 1e-3
    assert np.max(np.abs(sum_m / jet_m - 1)) < 1e-2 and np.max(axis) < 2e-3


def _by_label(fat, column, label):
    return fat.loc[fat["jet_label"] == label, column]


def test_two_prong_jets_have_low_tau21_and_a_mass_peak_and_tops_low_tau32(sample):
    fat = sample["FatJet"]
    tau21 = {k: _by_label(fat, "jet_tau21", k).median() for k in range(4)}
    msd = {k: _by_label(fat, "jet_msoftdrop", k) for k in range(4)}
    assert tau21[VQQ] < 0.55 and tau21[HBB] < 0.5 and tau21[QCD] > 0.65, tau21
    assert 75 < msd[VQQ].median() < 90 and 115 < msd[HBB].median() < 135 and 150 < msd[TBQQ].median() < 185
    # signals: a peak of about 15 % (half the 16-84 % width over the median) with a low tail
    for k in (VQQ, HBB, TBQQ):
        q16, q50, q84 = np.percentile(msd[k], [16, 50, 84])
        assert 0.08 < (q84 - q16) / 2 / q50 < 0.25 and np.mean(msd[k] < 0.6 * q50) < 0.2, k
    # QCD: falling above its Sudakov peak, with a tail under the W peak
    qcd = msd[QCD]
    per_bin = np.histogram(qcd, bins=[40, 60, 80, 100, 120, 140, 160])[0]
    assert np.all(np.diff(per_bin) < 0) and qcd.median() < 70, per_bin
    assert 0.05 < np.mean((qcd > 65) & (qcd < 95)) < 0.3
    tau32 = {k: _by_label(fat, "jet_tau32", k).median() for k in range(4)}
    assert tau32[TBQQ] < 0.65 and tau32[QCD] > 0.8 and tau32[VQQ] > 0.8, tau32


def test_constituent_multiplicities_are_those_of_real_jets(sample):
    fat, ak4 = sample["FatJet"], sample["Jet"]
    for label in range(4):
        assert 50 <= _by_label(fat, "jet_ncand", label).median() <= 150, label
    assert 20 <= ak4["jet_ncand"].median() <= 60
    light = ak4[ak4["jet_label"] == 0]
    gluon = light["jet_parton_flavour"] == 21
    assert light.loc[gluon, "jet_ncand"].median() > 1.2 * light.loc[~gluon, "jet_ncand"].median()


def test_b_hadrons_give_displaced_vertices(sample):
    def leading_sig(rows):
        return np.array([max(v) if len(v) else 0.0 for v in rows["sv_dxysig"]])
    fat, ak4 = sample["FatJet"], sample["Jet"]
    hbb, qcd = leading_sig(fat[fat["jet_label"] == HBB]), leading_sig(fat[fat["jet_label"] == QCD])
    assert np.mean(hbb > 5) > 0.6 and np.mean(qcd > 5) < 0.25
    b, light = leading_sig(ak4[ak4["jet_label"] == 2]), leading_sig(ak4[ak4["jet_label"] == 0])
    assert np.mean(b > 5) > 0.35 and np.mean(light > 5) < 0.05
    d0sig = np.abs(np.concatenate(fat.loc[fat["jet_label"] == HBB, "cand_d0sig"].to_numpy()))
    assert np.mean(d0sig > 3) > 2 * np.mean(np.abs(np.concatenate(fat.loc[fat["jet_label"] == QCD, "cand_d0sig"].to_numpy())) > 3)


@pytest.mark.parametrize("collection, edges", [("Jet", [40, 60, 120]), ("FatJet", [350, 500, 800, 2000])])
def test_the_jes_response_has_the_documented_median_and_spread(sample, collection, edges):
    rows = sample[collection]
    gen_pt = rows["jes_target"] * rows["jet_pt"]
    response = 1.0 / rows["jes_target"]
    cls = [np.asarray(c) for c in rows["cand_class"]]
    erel = [np.asarray(c) for c in rows["cand_erel"]]
    f_nh = np.array([e[c == 1].sum() / e.sum() for c, e in zip(cls, erel)])
    # the neutral-hadron term divided out: what is left is the documented mu(pt, eta) x (1 + sigma(pt) N(0, 1))
    model = median_response(gen_pt, rows["jet_eta"], collection == "FatJet") * (1 + KAPPA * (f_nh - F_NH))
    ratio = response / model
    for lo, hi in itertools.pairwise(edges):
        sel = (gen_pt >= lo) & (gen_pt < hi)
        assert sel.sum() > 100, (lo, hi)
        q16, q50, q84 = np.percentile(ratio[sel], [16, 50, 84])
        expected = resolution(np.median(gen_pt[sel]))
        # within 0.005 and three standard errors of a median (1.25 sigma / sqrt(n)) of the sample's size
        assert abs(q50 - 1) < 0.005 + 3 * 1.25 * expected / np.sqrt(sel.sum()), (lo, hi, q50)
        assert abs((q84 - q16) / 2 / q50 / expected - 1) < 0.2, (lo, hi, (q84 - q16) / 2, expected)
    low = response[(gen_pt > 40) & (gen_pt < 60)] if collection == "Jet" else response[gen_pt > 800]
    assert (np.median(low) < 0.97) if collection == "Jet" else (np.median(low) > 0.98)
    assert np.corrcoef(f_nh, ratio * (1 + KAPPA * (f_nh - F_NH)))[0, 1] < -0.1  # learnable from the constituents


def test_a_tagger_does_not_separate_the_classes_perfectly(sample):
    """xgboost on the flat features, at comparable pt (400-800 GeV: the spectra differ, as a flattening would fix)."""
    xgb = pytest.importorskip("xgboost")
    from sklearn.metrics import roc_auc_score
    fat = sample["FatJet"]
    features = ["jet_eta", "jet_mass", "jet_msoftdrop", "jet_tau21", "jet_tau32", "jet_ncand", "jet_nsv"]
    for signal in (VQQ, HBB, TBQQ):
        rows = fat[fat["jet_label"].isin([QCD, signal]) & (fat["jet_pt"] > 400) & (fat["jet_pt"] < 800)]
        x, y = rows[features].to_numpy(), (rows["jet_label"] == signal).to_numpy()
        train = (rows["event"].to_numpy() % 2) == 0
        model = xgb.XGBClassifier(n_estimators=60, max_depth=3, learning_rate=0.2, n_jobs=1)
        model.fit(x[train], y[train])
        auc = roc_auc_score(y[~train], model.predict_proba(x[~train])[:, 1])
        assert 0.8 < auc < 0.99, (signal, auc)


def test_the_same_seed_gives_the_same_arrays(tmp_path):
    """Every branch of every file, for two runs of the same seed (the files' bytes differ only by ROOT's uuid
    and timestamps); another seed gives other jets."""
    def run(folder, seed):
        config = config_from_dict({"generate": {"events": 40, "files_per_sample": 1, "seed": seed}})
        fileset = json.loads(generate_jet_samples(tmp_path / folder, config, progress=False).read_text())
        return {name: uproot.open(tmp_path / folder / next(iter(e["files"])))["Events"].arrays(library="np")
                for name, e in fileset.items()}
    one, two, other = run("a", 3), run("b", 3), run("c", 4)
    for dataset, arrays in one.items():
        assert arrays.keys() == two[dataset].keys()
        for branch, values in arrays.items():
            assert all(np.array_equal(x, y) for x, y in zip(values, two[dataset][branch], strict=True)), branch
        assert not np.array_equal(np.concatenate(arrays["FatJet_pt"]), np.concatenate(other[dataset]["FatJet_pt"]))


def test_the_cli_and_its_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--kind", "gluons", "--out", str(tmp_path / "x")])
    assert info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("hepprep: error: --kind:")
    bad = tmp_path / "bad.toml"
    bad.write_text('[samples.ggH]\nprocess = "ggH"\nlabel = 1\nxsec_pb = 1.0\n'
                   '[samples.QCD]\nprocess = "QCD"\nlabel = 0\nxsec_pb = 1.0\n')
    with pytest.raises(SystemExit) as info:
        main(["generate", "--kind", "jets", "--config", str(bad), "--out", str(tmp_path / "y"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 1 and err.startswith("hepprep: error: samples.ggH.process: no jet generator"), err
    assert not (tmp_path / "y" / "fileset.json").exists()
    example = Path(__file__).resolve().parents[1] / "examples" / "jets.toml"
    with pytest.raises(SystemExit) as info:
        main(["generate", "--kind", "jets", "--config", str(example), "--events", "80", "--files-per-sample", "2",
              "--out", str(tmp_path / "z"), "--quiet"])
        raise SystemExit(0)
    assert info.value.code == 0
    fileset = json.loads((tmp_path / "z" / "fileset.json").read_text())
    assert list(fileset) == list(load_config(example).samples)
    for entry in fileset.values():
        files = [tmp_path / "z" / f for f in entry["files"]]
        events = np.concatenate([uproot.open(f)["Events"]["event"].array(library="np") for f in files])
        assert len(files) == 2 and len(events) == entry["metadata"]["n_events"] == 20 == len(set(events.tolist()))
    assert math.isfinite(float(DEFAULT_JET_SAMPLES["QCD_Pt-300toInf"].xsec_pb))


def test_the_example_runs_from_skim_to_prepared_classes(sample, tmp_path):
    """examples/jets.toml: the AK8 skim of the generated sample prepares into the four classes by jet_label
    (on an in-process one-worker cluster, as the other prepare tests, to stay fast)."""
    from dask.distributed import LocalCluster

    example = Path(__file__).resolve().parents[1] / "examples" / "jets.toml"
    config = load_config(example)
    assert config.skim.options == {"collection": "FatJet", "pt_min": 250.0}  # what the fixture's AK8 skim used
    out = tmp_path / "prepared"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        run_prepare(sample["root"] / "FatJet", out, config, scheduler=cluster.scheduler_address, progress=False)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["target"]["classes"] == ["QCD", "Hbb", "Wqq", "Tbqq"]
    table = pq.read_table(sorted(out.glob("train/*.parquet")), columns=["class", "train_weight"]).to_pandas()
    assert set(table["class"]) == {0, 1, 2, 3}
    assert "cand_d0sig" in stats["constituents"]["feature_order"]
