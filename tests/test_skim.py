"""Skim stage tests: the skim agrees with an independent re-selection, reads real Run 2 NanoAOD, reads few branches."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot
from _skim_helpers import (
    QUIET_COFFEA,
    SAMPLE_CHUNKSIZE,
    default_config,
    independent_selection,
    loosened_config,
    read_skim,
)

from analysis.skim.runner import run_skim

pytestmark = QUIET_COFFEA

# DESIGN.md "Skim Parquet", written out independently of processors/parts.py.
DESIGN_COLUMNS = (
    [("run", "int32"), ("luminosityBlock", "uint32"), ("event", "uint64"),
     ("dataset", "dictionary<values=string, indices=int32, ordered=0>"),
     ("process", "dictionary<values=string, indices=int32, ordered=0>"),
     ("label", "int8"), ("genWeight", "float"), ("weight", "double")]
    + [(f"tau{i}_{v}", "int8" if v in ("charge", "decayMode") else "float")
       for i in (1, 2) for v in ("pt", "eta", "phi", "mass", "charge", "decayMode", "iso")]
    + [(f"jet{i}_{v}", "float") for i in (1, 2) for v in ("pt", "eta", "phi", "mass", "btag")]
    + [("met_pt", "float"), ("met_phi", "float"), ("npv", "int16"), ("njets", "int16"), ("ntaus", "int16")]
    + [(f, "float") for f in ("m_vis", "pt_vis", "dr_tautau", "mt_tau1", "mt_tau2", "mjj", "ptjj", "jdeta", "pt_h")]
    # the generator truth (README "Additions to the stage contract")
    + [("gen_m_tautau", "float"), ("gen_pt_h", "float")]
)


@pytest.fixture(scope="module")
def skimmed(generated_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("skim-iterative")
    summary = run_skim(generated_sample, out, default_config(), executor="iterative",
                       chunksize=SAMPLE_CHUNKSIZE, progress=False)
    return out, summary


def test_skim_matches_independent_selection_row_by_row(generated_sample, skimmed):
    out, summary = skimmed
    assert summary["complete"] and summary["chunks_run"] == summary["chunks"] > 9
    skim = read_skim(out)
    fileset = json.loads(generated_sample.read_text())
    cutflow = json.loads((out / "cutflow.json").read_text())
    lumi = default_config().lumi_pb
    for dataset, entry in fileset.items():
        meta = entry["metadata"]
        per_event = meta["xsec_pb"] * lumi / meta["sumw"] if meta["label"] != -1 else 1.0
        rows, counts = [], {}
        for name in entry["files"]:
            file_rows, file_counts = independent_selection(str(generated_sample.parent / name),
                                                           weight_per_event=per_event)
            rows += file_rows
            counts = {k: counts.get(k, 0) + v for k, v in file_counts.items()}
        assert rows, f"{dataset}: the independent selection keeps no event; the test would prove nothing"
        expected = sorted(rows, key=lambda r: (r["run"], r["luminosityBlock"], r["event"]))
        got = skim[skim["dataset"] == dataset]
        assert len(got) == len(expected), dataset
        for col in ("run", "luminosityBlock", "event", "npv", "ntaus", "njets", "tau1_charge",
                    "tau2_decayMode"):
            assert got[col].tolist() == [r[col] for r in expected], (dataset, col)
        for col in ("tau1_pt", "tau2_eta", "jet1_pt", "jet2_phi", "tau1_iso", "jet2_btag", "m_vis",
                    "pt_vis", "dr_tautau", "mt_tau1", "mt_tau2", "mjj", "ptjj", "jdeta", "pt_h"):
            # float32 precision: within 2 ulp of the float64 answer (absolute floor for ~0 values).
            np.testing.assert_allclose(got[col].to_numpy(np.float64), [r[col] for r in expected],
                                       rtol=2.5e-7, atol=1e-5, err_msg=f"{dataset} {col}")
        np.testing.assert_allclose(got["weight"], per_event, rtol=1e-12)
        assert (got["process"] == meta["process"]).all() and (got["label"] == meta["label"]).all()
        cuts = cutflow[dataset]["cuts"]
        assert {k: v["events"] for k, v in cuts.items()} == counts, dataset
        assert cuts["good_jets"]["sum_weight"] == pytest.approx(counts["good_jets"] * per_event, rel=1e-12)


def _boson_by_event(path) -> dict[int, tuple[float, float]]:
    """event number -> (mass, pt) of the file's H (pdgId 25) or Z (23) generator record, read plainly."""
    a = uproot.open(path)["Events"].arrays(["event", "GenPart_pdgId", "GenPart_mass", "GenPart_pt"], library="np")
    out = {}
    for event, pdg, mass, pt in zip(a["event"], a["GenPart_pdgId"], a["GenPart_mass"], a["GenPart_pt"]):
        boson = np.flatnonzero((pdg == 25) | (pdg == 23))
        if len(boson):
            out[int(event)] = (float(mass[boson[0]]), float(pt[boson[0]]))
    return out


def test_truth_columns_are_the_boson_for_h_and_z_and_nan_otherwise(generated_sample, skimmed):
    out, _ = skimmed
    skim = read_skim(out)
    fileset = json.loads(generated_sample.read_text())
    for dataset, entry in fileset.items():
        got = skim[skim["dataset"] == dataset]
        bosons = {}
        for name in entry["files"]:
            bosons.update(_boson_by_event(generated_sample.parent / name))
        if entry["metadata"]["process"] in ("ggH", "VBF", "DY"):
            mass, pt = np.array([bosons[e] for e in got["event"]]).T
            # the tau pair the boson decays to has its mass (float32 momenta); the pt is the boson's
            np.testing.assert_allclose(got["gen_m_tautau"], mass, rtol=1e-4, err_msg=dataset)
            np.testing.assert_array_equal(got["gen_pt_h"].to_numpy(np.float64), pt, err_msg=dataset)
        else:  # W+jets, ttbar (no H or Z) and pseudo-data (no generator records at all)
            assert not bosons and got["gen_m_tautau"].isna().all() and got["gen_pt_h"].isna().all(), dataset


def test_skim_schema_is_the_design_contract(skimmed):
    out, _ = skimmed
    part = next(out.glob("*/part-*.parquet"))
    schema = pq.read_schema(part)
    assert [(f.name, str(f.type)) for f in schema] == DESIGN_COLUMNS


def test_cutflow_and_manifest_account_for_every_event(generated_sample, skimmed):
    out, summary = skimmed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["errors"] == []
    for item in manifest["files"]:
        entries = uproot.open(item["path"])["Events"].num_entries
        ranges = [(c["start"], c["stop"]) for c in item["chunks"]]
        # Consecutive, non-overlapping ranges covering the whole file, one part each.
        assert ranges[0][0] == 0 and ranges[-1][1] == entries == item["entries"]
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all((out / c["part"]).is_file() for c in item["chunks"])
        assert item["profile"] == "outreach2012" and item["status"] == "done"
    total = sum(d["cuts"]["all"]["events"] for d in json.loads((out / "cutflow.json").read_text()).values())
    assert total == summary["events"] == sum(i["entries"] for i in manifest["files"])


def _nano_fileset(tmp_path, nano_dy_path, **meta):
    shutil.copy(nano_dy_path, tmp_path / "nano_dy.root")
    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps({"DYJetsToLL": {
        "files": {"nano_dy.root": "Events"},
        "metadata": {"process": "DY", "xsec_pb": 3503.7, "is_mc": True, "label": 0, **meta}}}))
    return fileset


def test_real_run2_nanoaod_with_sumw_from_the_runs_tree(tmp_path, nano_dy_path):
    fileset = _nano_fileset(tmp_path, nano_dy_path)
    summary = run_skim(fileset, tmp_path / "skim", loosened_config(), executor="iterative",
                       progress=False)
    assert summary["rows"] > 0
    # the Runs tree's genEventSumw_ (older NanoAOD's name): the whole original dataset's sum
    genweight = uproot.open(nano_dy_path)["Runs"]["genEventSumw_"].array(library="np")
    sumw = math.fsum(genweight.astype(np.float64))
    manifest = json.loads((tmp_path / "skim" / "manifest.json").read_text())
    assert manifest["datasets"]["DYJetsToLL"]["sumw"] == pytest.approx(sumw, rel=1e-15)
    assert manifest["datasets"]["DYJetsToLL"]["sumw_source"] == "computed from Runs.genEventSumw_"
    assert manifest["files"][0]["profile"] == "run2"
    skim = read_skim(tmp_path / "skim")
    events = uproot.open(nano_dy_path)["Events"].arrays(["event", "genWeight"], library="np")
    by_event = dict(zip(events["event"].tolist(), events["genWeight"].tolist()))
    assert skim["genWeight"].tolist() == [by_event[e] for e in skim["event"]]
    expected = 3503.7 * 11_467.0 * skim["genWeight"].to_numpy(np.float64) / sumw
    np.testing.assert_allclose(skim["weight"], expected, rtol=1e-12)
    # Real Run 2 files store run as uint32; the skim writes DESIGN.md's int32.
    assert skim["run"].dtype == np.int32 and (skim["run"] == 1).all()


def test_real_run2_nanoaod_truth_columns_are_the_z_and_its_tau_pair(tmp_path, nano_dy_path):
    from analysis.config import config_from_dict
    from processors.truth import TRUTH_BRANCHES, gen_truth

    # loose enough to keep a few Z -> ll and Z -> tau tau events of the 40
    config = config_from_dict({"selection": {"tau_iso": "VLoose", "tau_require_anti_lepton": False, "min_jets": 0,
                                             "tau_pt_min": 15.0}})
    run_skim(_nano_fileset(tmp_path, nano_dy_path), tmp_path / "skim", config, executor="iterative", progress=False)
    skim = read_skim(tmp_path / "skim")
    events = uproot.open(nano_dy_path)["Events"].arrays(["event", *TRUTH_BRANCHES])
    truth = gen_truth({b.split("_", 1)[1]: events[b] for b in TRUTH_BRANCHES})  # tests/test_truth.py checks it
    row = {int(e): i for i, e in enumerate(events["event"])}
    picked = [row[e] for e in skim["event"]]
    assert len(picked) > 3
    for column in ("gen_m_tautau", "gen_pt_h"):
        np.testing.assert_allclose(skim[column], truth[column][picked].astype(np.float32), rtol=1e-7)
    assert skim["gen_pt_h"].notna().all() and skim["gen_m_tautau"].notna().any()  # every event has a Z


def test_real_run2_nanoaod_with_sumw_from_metadata(tmp_path, nano_dy_path):
    fileset = _nano_fileset(tmp_path, nano_dy_path, sumw=1.0e6)
    run_skim(fileset, tmp_path / "skim", loosened_config(), executor="iterative", progress=False)
    skim = read_skim(tmp_path / "skim")
    np.testing.assert_allclose(skim["weight"], 3503.7 * 11_467.0 * skim["genWeight"] / 1.0e6, rtol=1e-6)
    cutflow = json.loads((tmp_path / "skim" / "cutflow.json").read_text())["DYJetsToLL"]["cuts"]
    assert cutflow["all"]["events"] == 40
    assert cutflow["good_jets"]["events"] == len(skim)


def test_default_selection_on_real_file_keeps_an_empty_but_valid_part(tmp_path, nano_dy_path):
    fileset = _nano_fileset(tmp_path, nano_dy_path)
    summary = run_skim(fileset, tmp_path / "skim", default_config(), executor="iterative",
                       progress=False)
    parts = list((tmp_path / "skim").glob("*/part-*.parquet"))
    assert summary["rows"] == sum(pq.read_metadata(p).num_rows for p in parts)
    assert all(pq.read_schema(p).remove_metadata().equals(
        pq.read_schema(parts[0]).remove_metadata()) for p in parts)


def test_processor_reads_only_the_branches_it_needs(nano_dy_path, tmp_path):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from processors.ditau import DiTauProcessor
    from processors.profiles import detect_profile
    from processors.truth import TRUTH_BRANCHES

    accessed = []
    meta = {"dataset": "DY", "filename": str(nano_dy_path), "entrystart": 0, "entrystop": 40,
            "fileuuid": "u", "process": "DY", "label": 0, "is_mc": True, "xsec_pb": 1.0, "sumw": 1.0}
    with pytest.warns(RuntimeWarning):  # NanoAODSchema notes cross-references this file lacks
        events = NanoEventsFactory.from_root({str(nano_dy_path): "Events"}, schemaclass=NanoAODSchema,
                                             mode="virtual", metadata=meta, access_log=accessed).events()
    DiTauProcessor(selection=loosened_config().selection, lumi_pb=1.0, out_dir=str(tmp_path)).process(events)
    branches = {a.branch for a in accessed}
    profile = detect_profile(uproot.open(nano_dy_path)["Events"].keys())
    # simulation: the generator truth's GenPart branches too
    assert branches == set(profile.branches) | {"genWeight", "nTau", "nJet", "nGenPart", *TRUTH_BRANCHES}
    assert len(branches) == 36  # of the file's 1,499
