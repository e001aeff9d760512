"""Tests of the sample generator (generate stage): the generator truth in GenPart.

The true boson (H 25, Z 23, W 24) with its mass and pt, each tau's visible decay products
and neutrinos, linked by genPartIdxMother and flagged as real NanoAOD does
(analysis/generate/genpart.py), read back here with plain uproot and numpy. That the
records change nothing else of a sample (same random stream, same branches) is what
tests/test_generate_reference.py's golden numbers check (when they were added, the default
and mu-tau_h samples were also compared with the ones before them, branch by branch).
"""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from _generate_helpers import histogram_peak

from analysis.config import config_from_dict, load_config
from analysis.generate.runner import generate_samples

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mutau.toml"
_FIELDS = ("pt", "eta", "phi", "mass", "pdgId", "status", "statusFlags", "genPartIdxMother")
IS_LAST_COPY, IS_FIRST_COPY, IS_HARD_PROCESS, IS_DIRECT_HARD_TAU_PRODUCT = 1 << 13, 1 << 12, 1 << 7, 1 << 10
VISIBLE = {0: 211, 1: 213, 10: 20213}  # HPS decay mode -> |pdgId| of the visible system


def _sample(out: Path, config) -> dict[str, dict]:
    fileset = json.loads(generate_samples(out, config, progress=False).read_text())
    return {name: _flat(uproot.open(out / next(iter(entry["files"])))["Events"]) for name, entry in fileset.items()}


def _flat(tree) -> dict:
    """GenPart as flat numpy arrays with each record's event, local index and mother's flat row."""
    arrays = tree.arrays([f"GenPart_{f}" for f in _FIELDS] + ["Tau_genPartIdx", "Tau_decayMode", "Tau_pt",
                                                                 "Muon_genPartIdx"])
    counts = ak.to_numpy(ak.num(arrays.GenPart_pdgId))
    g = {f: ak.to_numpy(ak.flatten(arrays[f"GenPart_{f}"])).astype(np.float64 if f in _FIELDS[:4] else np.int64)
         for f in _FIELDS}
    starts = np.cumsum(counts) - counts
    g["event"] = np.repeat(np.arange(len(counts)), counts)
    g["local"] = np.arange(len(g["event"])) - starts[g["event"]]
    g["mother"] = np.where(g["genPartIdxMother"] >= 0, starts[g["event"]] + g["genPartIdxMother"], -1)
    g["counts"], g["starts"], g["arrays"] = counts, starts, arrays
    return g


def _p4(g, rows):
    pt, eta, phi, m = (g[f][rows] for f in ("pt", "eta", "phi", "mass"))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return np.stack([np.sqrt(px**2 + py**2 + pz**2 + m**2), px, py, pz], axis=-1)


def _mass(p4):
    return np.sqrt(np.maximum(p4[:, 0] ** 2 - np.sum(p4[:, 1:] ** 2, axis=1), 0.0))


def _daughters(g, rows):
    """Per row of ``rows``: the flat rows whose mother it is (a list each)."""
    where = {r: i for i, r in enumerate(rows)}
    out = [[] for _ in rows]
    for child in np.flatnonzero(np.isin(g["mother"], rows)):
        out[where[g["mother"][child]]].append(child)
    return out


@pytest.fixture(scope="module")
def ditau(tmp_path_factory):
    config = config_from_dict({"generate": {"events": 12_000, "files_per_sample": 1, "seed": 3, "data_scale": 0.05}})
    return _sample(tmp_path_factory.mktemp("gen_truth"), config)


@pytest.fixture(scope="module")
def mutau(tmp_path_factory):
    config = load_config(EXAMPLE, {"generate": {"events": 12_000, "files_per_sample": 1, "seed": 3, "data_scale": 0.05}})
    return _sample(tmp_path_factory.mktemp("gen_truth_mutau"), config)


@pytest.mark.parametrize(("dataset", "pdg", "low", "high"), [
    ("GluGluToHToTauTau", 25, 124.0, 126.0), ("VBF_HToTauTau", 25, 124.0, 126.0),
    ("DYJetsToLL", 23, 90.0, 92.0), ("W2JetsToLNu", 24, 79.0, 82.0)])
def test_one_boson_per_event_with_its_mass_peak_and_pt(ditau, dataset, pdg, low, high):
    g = ditau[dataset]
    boson = np.flatnonzero(np.abs(g["pdgId"]) == pdg)
    assert np.array_equal(g["event"][boson], np.arange(len(g["counts"])))  # exactly one in every event
    peak = histogram_peak(g["mass"][boson], low=low - 10, high=high + 10, width=1.0 if pdg == 23 else 0.5)
    assert low <= peak <= high
    if pdg == 25:  # a 4 MeV wide Higgs: its mass, to float32 precision
        assert np.all(np.abs(g["mass"][boson] - 125.0) < 1.0)
    assert np.all(g["status"][boson] == 62) and np.all(g["genPartIdxMother"][boson] == -1)
    flags = g["statusFlags"][boson]
    assert np.all(flags & IS_LAST_COPY) and np.all(flags & IS_FIRST_COPY) and np.all(flags & IS_HARD_PROCESS)
    # The boson's pt and mass are its decay products': the tau pair (H, Z) or the tau and neutrino (W).
    products = np.array(_daughters(g, boson))
    assert products.shape == (len(boson), 2)
    total = _p4(g, products[:, 0]) + _p4(g, products[:, 1])
    np.testing.assert_allclose(np.hypot(total[:, 1], total[:, 2]), g["pt"][boson], rtol=2e-4, atol=2e-3)
    np.testing.assert_allclose(_mass(total), g["mass"][boson], rtol=1e-3)
    assert np.median(g["pt"][boson]) > 20.0  # recoiling against the jets


def test_each_tau_decays_to_a_visible_system_and_a_neutrino_adding_up_to_it(ditau):
    for name in ("GluGluToHToTauTau", "DYJetsToLL", "TTbar", "W1JetsToLNu"):
        g = ditau[name]
        taus = np.flatnonzero(np.abs(g["pdgId"]) == 15)
        products = np.array(_daughters(g, taus))
        assert products.shape == (len(taus), 2), name
        pdg = g["pdgId"][products]
        visible = np.where(np.abs(pdg[:, 0]) == 16, products[:, 1], products[:, 0])
        nu = np.where(np.abs(pdg[:, 0]) == 16, products[:, 0], products[:, 1])
        sign = np.sign(g["pdgId"][taus])  # tau- is +15: pi- (-211) and nu_tau (+16)
        assert np.all(g["pdgId"][nu] == 16 * sign) and np.all(g["status"][nu] == 1), name
        assert np.all(np.isin(-sign * g["pdgId"][visible], list(VISIBLE.values()))), name
        assert np.all(g["status"][visible] == np.where(np.abs(g["pdgId"][visible]) == 211, 1, 2)), name
        assert np.all(g["statusFlags"][products] & IS_DIRECT_HARD_TAU_PRODUCT), name
        total = _p4(g, visible) + _p4(g, nu)
        np.testing.assert_allclose(total, _p4(g, taus), rtol=2e-4, atol=2e-3, err_msg=name)
        # A reconstructed tau's decay mode is that of the visible system of the tau it points at.
        arrays, starts = g["arrays"], g["starts"]
        real = ak.to_numpy(ak.flatten(arrays.Tau_genPartIdx)) >= 0
        tau_event = np.repeat(np.arange(len(starts)), ak.to_numpy(ak.num(arrays.Tau_genPartIdx)))
        gen_tau = (starts[tau_event] + ak.to_numpy(ak.flatten(arrays.Tau_genPartIdx)))[real]
        vis_of = dict(zip(taus, visible))
        vis_pdg = np.abs(g["pdgId"][[vis_of[t] for t in gen_tau]])
        modes = ak.to_numpy(ak.flatten(arrays.Tau_decayMode))[real]
        assert np.array_equal(vis_pdg, [VISIBLE[m] for m in modes]), name
        # ... and its pt the visible system's, with the 3 % resolution.
        ratio = ak.to_numpy(ak.flatten(arrays.Tau_pt))[real] / g["pt"][[vis_of[t] for t in gen_tau]]
        assert abs(np.median(ratio) - 1.0) < 0.01 and np.std(ratio) < 0.05, name


@pytest.mark.parametrize("dataset", ["GluGluToHToTauTau", "VBF_HToTauTau", "DYJetsToLL"])
def test_visible_plus_invisible_momenta_of_the_two_taus_give_the_boson_mass(ditau, dataset):
    g = ditau[dataset]
    boson = np.flatnonzero(np.isin(g["pdgId"], (23, 25)))
    products = np.flatnonzero(np.isin(np.abs(g["pdgId"]), (16, 211, 213, 20213)))
    total = np.zeros((len(boson), 4))
    np.add.at(total, g["event"][products], _p4(g, products))
    assert np.array_equal(np.bincount(g["event"][products]), np.full(len(boson), 4))
    np.testing.assert_allclose(_mass(total), g["mass"][boson], rtol=1e-3)


def test_appended_records_follow_the_others_each_part_by_decreasing_pt(ditau):
    for name in ("VBF_HToTauTau", "TTbar", "W3JetsToLNu"):
        g = ditau[name]
        appended = (np.abs(g["pdgId"][np.maximum(g["mother"], 0)]) == 15) & (g["mother"] >= 0)
        key = g["event"] * 2 + appended  # per event: first the hard process, then the products
        assert np.all(np.diff(key) >= 0), name
        same_part = np.diff(key) == 0
        assert np.all(np.diff(g["pt"])[same_part] <= 0), name
        # Mothers are records of the first part of the same event.
        has = g["mother"] >= 0
        assert np.all(g["event"][g["mother"][has]] == g["event"][has]) and not np.any(appended[g["mother"][has]])


def test_pseudo_data_has_no_generator_records(ditau):
    assert len(ditau["Run2012B_TauPlusX"]["pdgId"]) == 0 < len(ditau["Run2012B_TauPlusX"]["counts"])


def test_leptonic_tau_decays_keep_their_lepton_and_one_neutrino_record(mutau):
    g = mutau["DYJetsToTauTau"]
    taus = np.flatnonzero(np.abs(g["pdgId"]) == 15)
    products = np.array(_daughters(g, taus))
    assert products.shape == (len(taus), 2)
    pdg = np.abs(g["pdgId"][products])
    leptonic = np.any(np.isin(pdg, (11, 13)), axis=1)
    assert 0.3 < leptonic.mean() < 0.7  # the mu + tau_h filter: about one leptonic tau per event
    nu = np.where(pdg[:, 0] == 16, products[:, 0], products[:, 1])
    other = np.where(pdg[:, 0] == 16, products[:, 1], products[:, 0])
    assert np.all(g["pdgId"][nu] == 16 * np.sign(g["pdgId"][taus]))
    # two neutrinos (a mass), one (none, to rounding)
    assert np.all(g["mass"][nu[leptonic]] > 0.01) and np.all(g["mass"][nu[~leptonic]] < 1e-3)
    np.testing.assert_allclose(_p4(g, other) + _p4(g, nu), _p4(g, taus), rtol=2e-4, atol=2e-3)
    # The charged lepton is a first-part record: the one the reconstructed muon points at.
    lepton = other[leptonic]
    muon_gen = ak.to_numpy(ak.flatten(g["arrays"].Muon_genPartIdx))
    muon_event = np.repeat(np.arange(len(g["counts"])), ak.to_numpy(ak.num(g["arrays"].Muon_genPartIdx)))
    matched = (g["starts"][muon_event] + muon_gen)[muon_gen >= 0]
    assert np.all(np.isin(matched, lepton))
    # Z -> mumu: the muons are the Z's daughters.
    g = mutau["DYJetsToMuMu"]
    z = np.flatnonzero(g["pdgId"] == 23)
    assert all(sorted(g["pdgId"][d]) == [-13, 13] for d in _daughters(g, z))
