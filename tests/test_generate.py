"""Tests of the sample generator (generate stage): file layout, fileset, reproducibility, CLI.

Acceptance 2 (every branch name, type and counter against PHYSICS.md's outreach layout,
plus GenPart's genPartIdxMother and statusFlags, written out here independently of the
generator's own table) and 4 (same seed, same
arrays; different seed, different arrays).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from analysis.cli import main
from analysis.config import config_from_dict
from analysis.errors import ConfigError
from analysis.generate.runner import dataset_event_counts, generate_samples

# PHYSICS.md "Input layout: CMS 2012 outreach NanoAOD": branch -> ROOT type as uproot names it.
F, I, U, B = "float", "int32_t", "uint32_t", "bool"
EXPECTED_SCALARS = {
    "run": I, "luminosityBlock": U, "event": "uint64_t", "PV_npvs": I, "PV_x": F, "PV_y": F, "PV_z": F,
    "MET_pt": F, "MET_phi": F, "MET_sumet": F, "MET_significance": F, "MET_CovXX": F, "MET_CovXY": F,
    "MET_CovYY": F, "HLT_IsoMu24_eta2p1": B, "HLT_IsoMu24": B, "HLT_IsoMu17_eta2p1_LooseIsoPFTau20": B,
}
_KIN = {"pt": F, "eta": F, "phi": F, "mass": F}
EXPECTED_COLLECTIONS = {
    "Tau": {**_KIN, "charge": I, "decayMode": I, "relIso_all": F, "jetIdx": I, "genPartIdx": I,
            "idDecayMode": B, "idIsoRaw": F, "idIsoVLoose": B, "idIsoLoose": B, "idIsoMedium": B,
            "idIsoTight": B, "idAntiEleLoose": B, "idAntiEleMedium": B, "idAntiEleTight": B,
            "idAntiMuLoose": B, "idAntiMuMedium": B, "idAntiMuTight": B},
    "Jet": {**_KIN, "puId": B, "btag": F},
    "Muon": {**_KIN, "charge": I, "pfRelIso03_all": F, "pfRelIso04_all": F, "tightId": B, "softId": B,
             "dxy": F, "dz": F, "dxyErr": F, "dzErr": F, "jetIdx": I, "genPartIdx": I},
    "Electron": {**_KIN, "charge": I, "pfRelIso03_all": F, "cutBasedId": B, "pfId": B, "dxy": F, "dz": F,
                 "dxyErr": F, "dzErr": F, "jetIdx": I, "genPartIdx": I},
    "Photon": {**_KIN, "charge": I, "pfRelIso03_all": F, "jetIdx": I, "genPartIdx": I},
    # PHYSICS.md's pdgId and status, and Run 2 NanoAOD's mother index and status flags
    # (analysis/generate/genpart.py: the decay chain of the generator truth).
    "GenPart": {**_KIN, "pdgId": I, "status": I, "genPartIdxMother": I, "statusFlags": I},
}


def _small_config(**generate):
    # A twentieth of the pseudo-data keeps these tests fast; the data path is still exercised.
    return config_from_dict({"generate": {"events": 3000, "files_per_sample": 1, "data_scale": 0.05, **generate}})


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen_small")
    generate_samples(out, config_from_dict({"generate": {"events": 4000, "files_per_sample": 2, "data_scale": 0.2}}),
                     progress=False)
    return out


@pytest.mark.parametrize("dataset", ["DYJetsToLL", "Run2012B_TauPlusX"])
def test_every_branch_name_type_and_counter_matches_the_outreach_layout(small_sample, dataset):
    tree = uproot.open(small_sample / dataset / f"{dataset}_0.root")["Events"]
    expected = dict(EXPECTED_SCALARS)
    for coll, fields in EXPECTED_COLLECTIONS.items():
        expected[f"n{coll}"] = "counter"
        expected.update({f"{coll}_{f}": f"{t}[]" for f, t in fields.items()})
    assert sorted(tree.keys()) == sorted(expected), "branch set differs from PHYSICS.md"
    assert "genWeight" not in tree.keys()  # outreach files carry no generator weight
    for name, typename in expected.items():
        branch = tree[name]
        if typename == "counter":
            # Real files have uint32 counters; uproot writes int32 (PHYSICS.md accepts both).
            assert branch.typename in ("int32_t", "uint32_t"), name
        else:
            assert branch.typename == typename, f"{name}: {branch.typename} != {typename}"
        if name.count("_") and name.split("_")[0] in EXPECTED_COLLECTIONS:
            assert branch.count_branch is not None and branch.count_branch.name == "n" + name.split("_")[0], name
    arrays = tree.arrays(["nTau", "Tau_pt", "nJet", "Jet_pt"], library="ak")
    assert np.array_equal(np.asarray(arrays.nTau), [len(x) for x in arrays.Tau_pt.tolist()])


def test_nanoevents_reads_a_generated_file(small_sample):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # outreach layout lacks Run 2 cross references
        events = NanoEventsFactory.from_root({str(small_sample / "VBF_HToTauTau" / "VBF_HToTauTau_0.root"): "Events"},
                                             schemaclass=NanoAODSchema, mode="virtual").events()
        pt = events.Tau.pt.compute() if hasattr(events.Tau.pt, "compute") else events.Tau.pt
        matched = events.Tau.matched_gen.pdgId
        matched = matched.compute() if hasattr(matched, "compute") else matched
        jet = events.Tau.matched_jet.pt
        jet = jet.compute() if hasattr(jet, "compute") else jet
    assert len(events) > 0 and len(pt) == len(events)
    # Real taus point at a generator tau (|pdgId| 15) and at the jet clustered around them.
    pdg = np.abs(np.asarray([x for row in matched.tolist() for x in row if x is not None]))
    assert len(pdg) > 0 and np.all(pdg == 15)
    assert np.mean([x is not None for row in jet.tolist() for x in row]) > 0.8
    assert float(np.mean(events.PV.npvs)) > 10
    assert events.MET.pt.ndim == 1


def test_cross_references_point_at_the_right_objects(small_sample):
    events = uproot.open(small_sample / "W2JetsToLNu" / "W2JetsToLNu_0.root")["Events"].arrays(library="ak")
    has_jet = events.Tau_jetIdx >= 0
    jet_eta = events.Jet_eta[ak.where(has_jet, events.Tau_jetIdx, 0)][has_jet]
    jet_phi = events.Jet_phi[ak.where(has_jet, events.Tau_jetIdx, 0)][has_jet]
    dphi = (events.Tau_phi[has_jet] - jet_phi + np.pi) % (2 * np.pi) - np.pi
    dr = np.sqrt((events.Tau_eta[has_jet] - jet_eta) ** 2 + dphi**2)
    # Every tau sits inside the jet it points at (the jet it was reconstructed from).
    assert ak.all(dr < 0.1) and ak.mean(has_jet) > 0.9
    fake = has_jet & (events.Tau_genPartIdx < 0)
    assert ak.all(events.Tau_pt[fake] <= events.Jet_pt[ak.where(fake, events.Tau_jetIdx, 0)][fake] + 1e-3)
    real = events.Tau_genPartIdx >= 0
    gen_pdg = events.GenPart_pdgId[ak.where(real, events.Tau_genPartIdx, 0)][real]
    assert ak.all(abs(gen_pdg) == 15)
    # Opposite sign: a tau- (pdgId 15) is reconstructed with charge -1 (up to 1 % flips).
    assert ak.mean(np.sign(gen_pdg) == -np.sign(events.Tau_charge[real])) > 0.95


def test_muon_triggers_follow_the_isolated_muons():
    from analysis.generate.layout import events_to_branches
    from analysis.generate.objects import EventContext

    # Isolated muons above 24 GeV are rare in tau_h tau_h events: look at many events.
    ctx = EventContext(np.random.default_rng(3), 300_000)
    ctx.add_soft_objects()
    batch = ctx.build()
    events = events_to_branches(batch.scalars, batch.collections, batch.n)
    muon = events["Muon"]
    good = muon.tightId & (muon.pfRelIso04_all < 0.12)
    leading = ak.fill_none(ak.max(ak.where(good, muon.pt, 0.0), axis=1), 0.0)
    fired = events["HLT_IsoMu24"]
    assert ak.sum(leading > 24.0) > 30
    # A trigger fires only with an isolated muon above its threshold, with ~90 % efficiency.
    assert ak.all(leading[fired] > 24.0) and ak.all(leading[events["HLT_IsoMu17_eta2p1_LooseIsoPFTau20"]] > 17.0)
    assert ak.all(fired[events["HLT_IsoMu24_eta2p1"]])
    assert 0.75 < ak.sum(fired) / ak.sum(leading > 24.0) <= 1.0


def test_fileset_is_coffea_format_with_relative_paths_and_weights_metadata(small_sample):
    fileset = json.loads((small_sample / "fileset.json").read_text())
    assert list(fileset) == list(config_from_dict({}).samples)
    for name, entry in fileset.items():
        assert len(entry["files"]) == 2
        for path, tree in entry["files"].items():
            assert not Path(path).is_absolute() and (small_sample / path).is_file() and tree == "Events"
            assert path == f"{name}/{Path(path).name}"
        meta = entry["metadata"]
        if meta["is_mc"]:
            assert set(meta) == {"process", "xsec_pb", "is_mc", "label", "sumw", "n_events"}
            # The filtered sample stands for more events than it holds.
            assert meta["sumw"] > 10 * meta["n_events"]
        else:
            assert meta == {"process": "data", "is_mc": False, "label": -1, "n_events": meta["n_events"]}
    assert not list(small_sample.rglob("*.tmp")), "temporary files left behind"


def test_mc_and_data_event_identity(small_sample):
    mc = uproot.open(small_sample / "TTbar" / "TTbar_1.root")["Events"].arrays(["run", "event"], library="np")
    mc0 = uproot.open(small_sample / "TTbar" / "TTbar_0.root")["Events"].arrays(["event"], library="np")
    assert np.all(mc["run"] == 1)
    assert len(np.intersect1d(mc["event"], mc0["event"])) == 0  # unique across the dataset's files
    for era, (low, high) in {"Run2012B": (193833, 196531), "Run2012C": (198022, 203742)}.items():
        events = [uproot.open(small_sample / f"{era}_TauPlusX" / f"{era}_TauPlusX_{i}.root")["Events"]
                  .arrays(["run", "luminosityBlock", "event"], library="np") for i in (0, 1)]
        runs = np.concatenate([e["run"] for e in events])
        numbers = np.concatenate([e["event"] for e in events])
        assert runs.min() >= low and runs.max() <= high
        assert len(np.unique(numbers)) == len(numbers)
        assert np.all(np.concatenate([e["luminosityBlock"] for e in events]) >= 1)


def _all_arrays(out: Path, dataset: str) -> dict[str, np.ndarray]:
    tree = uproot.open(out / dataset / f"{dataset}_0.root")["Events"]
    arrays = tree.arrays(library="ak")
    # Jagged branches flattened; their counters nX are branches of their own.
    return {k: ak.to_numpy(arrays[k] if arrays[k].ndim == 1 else ak.flatten(arrays[k])) for k in arrays.fields}


def test_same_seed_identical_arrays_different_seed_different(tmp_path):
    for label, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate_samples(tmp_path / label, _small_config(seed=seed), progress=False)
    for dataset in ("GluGluToHToTauTau", "W2JetsToLNu", "Run2012C_TauPlusX"):
        a, b, c = (_all_arrays(tmp_path / x, dataset) for x in "abc")
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key]), f"{dataset}:{key} differs for the same seed"
        assert not np.array_equal(a["Tau_pt"], c["Tau_pt"]) and not np.array_equal(a["MET_pt"], c["MET_pt"])
    filesets = [json.loads((tmp_path / x / "fileset.json").read_text()) for x in "ab"]
    assert filesets[0] == filesets[1]


def test_a_dataset_does_not_depend_on_the_other_datasets(tmp_path):
    cfg = _small_config(seed=3)
    generate_samples(tmp_path / "all", cfg, progress=False)
    # The same samples in reverse order: every MC file must be the same.
    reordered = config_from_dict({"generate": cfg.generate.model_dump(),
                                  "samples": {k: v.model_dump() for k, v in reversed(cfg.samples.items())}})
    generate_samples(tmp_path / "rev", reordered, progress=False)
    a, b = _all_arrays(tmp_path / "all", "TTbar"), _all_arrays(tmp_path / "rev", "TTbar")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_more_files_than_events_writes_no_empty_mc_file(tmp_path):
    config = config_from_dict({"generate": {"events": 7, "files_per_sample": 3, "data_scale": 0.001}})
    fileset = json.loads(generate_samples(tmp_path, config, progress=False).read_text())
    for name, entry in fileset.items():
        entries = [uproot.open(tmp_path / f)["Events"].num_entries for f in entry["files"]]
        assert sum(entries) == entry["metadata"]["n_events"]
        if entry["metadata"]["is_mc"]:
            assert entries == [1], name  # one event per MC dataset, in one file
        else:
            assert len(entries) >= 1 and all(entries[1:]), name


def test_event_counts_keep_the_real_imbalance_and_sum_to_the_total():
    cfg = config_from_dict({})
    counts = dataset_event_counts(cfg)
    assert sum(counts.values()) == cfg.generate.events == 300_000
    signal = max(counts["GluGluToHToTauTau"], counts["VBF_HToTauTau"])
    for big in ("DYJetsToLL", "W1JetsToLNu", "W2JetsToLNu"):
        assert counts[big] > 5 * signal  # sqrt(30.5M / 0.49M) = 7.9
    assert counts["TTbar"] > 3 * signal and counts["W3JetsToLNu"] > 5 * signal
    # sqrt rule, worked by hand: DY / ggH = sqrt(30458871 / 476963) = 7.99
    assert counts["DYJetsToLL"] / counts["GluGluToHToTauTau"] == pytest.approx(7.99, rel=0.01)


def test_config_errors_name_the_value_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"generate.events: 3 is fewer than the 7 simulated datasets"):
        generate_samples(tmp_path, _small_config(events=3), progress=False)
    bad = config_from_dict({"samples": {"Sig": {"process": "ZprimeToTauTau", "label": 1, "xsec_pb": 1.0},
                                        "Bkg": {"process": "DY", "label": 0, "xsec_pb": 10.0}}})
    with pytest.raises(ConfigError,
                       match=r"samples.Sig.process: no generator for process 'ZprimeToTauTau'; known: ggH, VBF, DY"):
        generate_samples(tmp_path, bad, progress=False)
    no_era = config_from_dict({"samples": {"Sig": {"process": "ggH", "label": 1, "xsec_pb": 1.0},
                                           "Bkg": {"process": "DY", "label": 0, "xsec_pb": 10.0},
                                           "MyData": {"process": "data", "label": -1, "data_lumi_pb": 100.0}},
                               "generate": {"events": 200, "files_per_sample": 1}})
    (tmp_path / "fileset.json").write_text("{}")  # from an earlier run
    with pytest.raises(ConfigError, match=r"samples.MyData: a data dataset name must contain its era \(Run2012A, "):
        generate_samples(tmp_path, no_era, progress=False)
    no_lumi = config_from_dict({"samples": {**{k: v.model_dump() for k, v in no_era.samples.items() if k != "MyData"},
                                            "Run2012B_Mine": {"process": "data", "label": -1}},
                                "generate": {"events": 200, "files_per_sample": 1}})
    with pytest.raises(ConfigError, match=r"samples.Run2012B_Mine.data_lumi_pb: a data sample \(label -1\) needs its "
                                          r"integrated luminosity"):
        generate_samples(tmp_path, no_lumi, progress=False)
    # Checked before any work: nothing written, an earlier fileset left as it was.
    assert (tmp_path / "fileset.json").read_text() == "{}" and not list(tmp_path.rglob("*.root"))


def test_cli_generate_quiet_and_compression(tmp_path, capsys):
    main(["generate", "--out", str(tmp_path), "--events", "700", "--files-per-sample", "1",
          "--compression", "ZSTD:3", "--quiet"])  # the default data_scale: full pseudo-data
    err = capsys.readouterr().err
    assert err.strip() == f"fileset: {tmp_path / 'fileset.json'}"  # no progress bar, no summary
    with uproot.open(tmp_path / "DYJetsToLL" / "DYJetsToLL_0.root") as f:
        assert f.file.fCompress == 503  # ROOT code: 100 * algorithm (ZSTD = 5) + level
    main(["generate", "--out", str(tmp_path / "loud"), "--events", "700", "--files-per-sample", "1"])
    assert "generated 700 simulated" in capsys.readouterr().err.replace("\n", " ")
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--out", str(tmp_path), "--compression", "BROTLI:1"])
    assert exit_info.value.code == 1
    assert "unknown compression 'BROTLI:1'" in capsys.readouterr().err
