"""Skim stage tests: the generator truth (processors.truth) on hand-built GenPart, a real Run 2
NanoAOD file and generated samples.

Hand-built events have their answers worked out by hand; on the real DY file an event-by-event
plain-Python reading (the Z's last copy, its daughters) is the reference.
"""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pytest
import uproot

from processors.truth import TRUTH_BRANCHES, gen_truth, truth_branches, truth_columns

M_TAU = 1.77686
LAST, FIRST = 1 << 13, 1 << 12  # statusFlags isLastCopy, isFirstCopy


def _event(*records):
    """One event's GenPart from (pdgId, pt, eta, phi, mass, statusFlags, mother) records."""
    names = ("pdgId", "pt", "eta", "phi", "mass", "statusFlags", "genPartIdxMother")
    return [dict(zip(names, r)) for r in records]


def _back_to_back_mass(pt):
    """Two taus of ``pt`` at eta 0, opposite in phi: E = 2 sqrt(pt^2 + m^2), p = 0."""
    return 2.0 * math.sqrt(pt * pt + M_TAU * M_TAU)


def _opposite_eta_mass(pt, eta):
    """Two taus of ``pt`` at phi 0 and eta +-eta: p = (2 pt, 0, 0), E = 2 sqrt((pt cosh eta)^2 + m^2)."""
    energy = 2.0 * math.sqrt((pt * math.cosh(eta)) ** 2 + M_TAU * M_TAU)
    return math.sqrt(energy**2 - (2.0 * pt) ** 2)


EVENTS = [
    # 0: Z -> tau tau as real NanoAOD writes it: a first copy, the last copy (mother of the taus),
    #    the taus at rest in the Z frame at eta 0 and back to back; a later tau copy after a
    #    photon (FSR) is not the pair (the pair is the Z's decay).
    _event((23, 10.0, 1.0, 0.0, 91.0, FIRST, -1), (23, 30.0, 1.0, 0.0, 91.0, LAST, 0),
           (15, 40.0, 0.0, 0.0, 0.0, FIRST, 1), (-15, 40.0, 0.0, math.pi, 0.0, FIRST | LAST, 1),
           (15, 20.0, 0.0, 0.0, 0.0, LAST, 2), (22, 20.0, 0.0, 0.0, 0.0, LAST, 2)),
    # 1: Z -> mu mu: the boson's pt, no tau pair
    _event((23, 12.5, 0.3, 1.0, 90.0, FIRST | LAST, -1), (13, 40.0, 0.0, 0.0, 0.1, LAST, 0),
           (-13, 40.0, 0.0, 3.0, 0.1, LAST, 0)),
    # 2: W -> tau nu: neither (no H or Z)
    _event((24, 20.0, 0.0, 0.0, 80.0, LAST, -1), (15, 30.0, 0.0, 0.0, 1.8, LAST, 0), (-16, 30.0, 0.0, 2.0, 0.0, LAST, 0)),
    # 3: no generator records
    _event(),
    # 4: Z and H (ZH): the H is the boson, its taus the pair (pt 30, eta +-1), not the Z's
    _event((23, 99.0, 0.0, 0.0, 91.0, LAST, -1), (15, 60.0, 0.0, 0.0, 0.0, LAST, 0), (-15, 60.0, 0.0, 1.0, 0.0, LAST, 0),
           (25, 50.0, 0.0, 0.0, 125.0, LAST, -1), (15, 30.0, 1.0, 0.0, 0.0, LAST, 3), (-15, 30.0, -1.0, 0.0, 0.0, LAST, 3)),
    # 5: mothers after their daughters (the generated files' pt order): the same answer as 0's pair
    _event((-15, 40.0, 0.0, math.pi, 1.77686, LAST, 2), (15, 40.0, 0.0, 0.0, 1.77686, LAST, 2),
           (23, 7.0, 0.0, 0.0, 80.0, LAST, -1)),
    # 6: only a tau- from the boson (the tau+ lost): no pair
    _event((25, 5.0, 0.0, 0.0, 125.0, LAST, -1), (15, 60.0, 0.0, 0.0, 0.0, LAST, 0), (15, 10.0, 0.0, 0.0, 0.0, LAST, 0)),
    # 7: a mother index beyond the event, and a boson without its last copy: nothing found
    _event((23, 9.0, 0.0, 0.0, 91.0, FIRST, -1), (15, 40.0, 0.0, 0.0, 0.0, LAST, 7), (-15, 40.0, 0.0, 3.0, 0.0, LAST, 0)),
]
EXPECTED_M = [_back_to_back_mass(40.0), np.nan, np.nan, np.nan, _opposite_eta_mass(30.0, 1.0),
              _back_to_back_mass(40.0), np.nan, np.nan]
EXPECTED_PT = [30.0, 12.5, np.nan, np.nan, 50.0, 7.0, 5.0, np.nan]


def _genpart(events, *, flags_type="int32", mother_type="int32"):
    array = ak.Array(events)
    fields = {f: array[f] for f in array.fields}
    fields["statusFlags"] = ak.values_astype(fields["statusFlags"], flags_type)
    fields["genPartIdxMother"] = ak.values_astype(fields["genPartIdxMother"], mother_type)
    fields["pdgId"] = ak.values_astype(fields["pdgId"], "int32")
    return ak.zip(fields)


def test_hand_built_events():
    out = gen_truth(_genpart(EVENTS))
    # by hand: 2 sqrt(40^2 + 1.777^2) = 80.079; sqrt((2 sqrt((30 cosh 1)^2 + 1.777^2))^2 - 60^2) = 70.602
    # (massless taus: sqrt(2 30^2 (cosh 2 - 1)) = 70.51)
    assert EXPECTED_M[0] == pytest.approx(80.0789, abs=1e-4) and EXPECTED_M[4] == pytest.approx(70.6016, abs=1e-4)
    np.testing.assert_allclose(out["gen_m_tautau"], EXPECTED_M, rtol=1e-12)
    np.testing.assert_allclose(out["gen_pt_h"], EXPECTED_PT, rtol=1e-12)
    assert out["gen_m_tautau"].dtype == np.float64 and len(out["gen_pt_h"]) == len(EVENTS)


def test_run3_types_and_a_mapping_of_fields_give_the_same():
    # Run 3 NanoAOD: statusFlags uint16, genPartIdxMother int16
    genpart = _genpart(EVENTS, flags_type="uint16", mother_type="int16")
    out = gen_truth({f: genpart[f] for f in genpart.fields})
    np.testing.assert_allclose(out["gen_m_tautau"], EXPECTED_M, rtol=1e-12)
    np.testing.assert_allclose(out["gen_pt_h"], EXPECTED_PT, rtol=1e-12)


def test_truth_columns_for_chosen_rows_and_nan_without_the_branches():
    genpart = _genpart(EVENTS)
    arrays = {f"GenPart_{f}": genpart[f] for f in genpart.fields}
    rows = np.array([4, 0, 1])
    out = truth_columns(arrays, rows)
    np.testing.assert_allclose(out["gen_m_tautau"], np.take(EXPECTED_M, rows), rtol=1e-12)
    np.testing.assert_allclose(out["gen_pt_h"], np.take(EXPECTED_PT, rows), rtol=1e-12)
    del arrays["GenPart_statusFlags"]
    out = truth_columns(arrays, rows)
    assert set(out) == {"gen_m_tautau", "gen_pt_h"} and all(np.isnan(v).all() and len(v) == 3 for v in out.values())
    assert truth_columns({}, np.arange(0))["gen_pt_h"].shape == (0,)


def test_truth_branches_only_for_simulation_that_has_them():
    present = {*TRUTH_BRANCHES, "Tau_pt"}
    assert truth_branches(present, is_mc=True) == list(TRUTH_BRANCHES)
    assert truth_branches(present, is_mc=False) == []
    assert truth_branches(present - {"GenPart_genPartIdxMother"}, is_mc=True) == []  # 2012 outreach files


def _plain_truth(tree):
    """Event by event: the Z's last copy (pdgId 23, statusFlags bit 13), its pt, and the mass of
    its tau daughters (PDG tau mass) when it decays to a tau pair."""
    a = tree.arrays([b for b in TRUTH_BRANCHES], library="np")
    masses, pts, decays = [], [], []
    for i in range(tree.num_entries):
        pdg, flags, mother = a["GenPart_pdgId"][i], a["GenPart_statusFlags"][i], a["GenPart_genPartIdxMother"][i]
        z = next(k for k in range(len(pdg)) if pdg[k] == 23 and flags[k] >> 13 & 1)
        daughters = [k for k in range(len(pdg)) if mother[k] == z]
        decays.append(sorted({abs(int(pdg[k])) for k in daughters}))
        pts.append(float(a["GenPart_pt"][i][z]))
        taus = [k for k in daughters if abs(pdg[k]) == 15]
        if len(taus) != 2:
            masses.append(math.nan)
            continue
        e = px = py = pz = 0.0
        for k in taus:
            pt, eta, phi = (float(a[f"GenPart_{f}"][i][k]) for f in ("pt", "eta", "phi"))
            x, y, zz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
            e, px, py, pz = e + math.sqrt(x * x + y * y + zz * zz + M_TAU**2), px + x, py + y, pz + zz
        masses.append(math.sqrt(e * e - px * px - py * py - pz * pz))
    return np.array(masses), np.array(pts), decays, a


def test_real_run2_drell_yan_file(nano_dy_path):
    tree = uproot.open(nano_dy_path)["Events"]
    masses, pts, decays, a = _plain_truth(tree)
    arrays = tree.arrays(list(TRUTH_BRANCHES))
    out = truth_columns({b: arrays[b] for b in TRUTH_BRANCHES}, np.arange(tree.num_entries))
    # Every event has a Z: its last copy's pt; the Z -> tau tau events (18 of 40) a mass.
    np.testing.assert_allclose(out["gen_pt_h"], pts, rtol=1e-12)
    tautau = np.array([d == [15] for d in decays])
    assert tautau.sum() == 18 and {tuple(d) for d in decays} == {(11,), (13,), (15,)}
    assert np.array_equal(np.isfinite(out["gen_m_tautau"]), tautau)
    np.testing.assert_allclose(out["gen_m_tautau"][tautau], masses[tautau], rtol=1e-12)
    # the taus the Z decayed to carry its mass (NanoAOD stores it with a few bits of mantissa)
    z_mass = [float(a["GenPart_mass"][i][(a["GenPart_pdgId"][i] == 23) & (a["GenPart_statusFlags"][i] >> 13 & 1 == 1)][0])
              for i in range(tree.num_entries)]
    np.testing.assert_allclose(out["gen_m_tautau"][tautau], np.array(z_mass)[tautau], rtol=4e-3)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    import json

    from analysis.config import config_from_dict
    from analysis.generate.runner import generate_samples

    out = tmp_path_factory.mktemp("truth_sample")
    config = config_from_dict({"generate": {"events": 6000, "files_per_sample": 1, "seed": 8, "data_scale": 0.05}})
    fileset = json.loads(generate_samples(out, config, progress=False).read_text())
    return {name: uproot.open(out / next(iter(e["files"])))["Events"] for name, e in fileset.items()}


@pytest.mark.parametrize(("dataset", "pdg"), [("GluGluToHToTauTau", 25), ("VBF_HToTauTau", 25), ("DYJetsToLL", 23),
                                              ("W1JetsToLNu", None), ("TTbar", None), ("Run2012C_TauPlusX", None)])
def test_generated_samples(generated, dataset, pdg):
    tree = generated[dataset]
    arrays = tree.arrays(list(TRUTH_BRANCHES))
    out = gen_truth({b.split("_", 1)[1]: arrays[b] for b in TRUTH_BRANCHES})
    if pdg is None:  # W+jets, ttbar: no H or Z; pseudo-data: no GenPart
        assert np.isnan(out["gen_m_tautau"]).all() and np.isnan(out["gen_pt_h"]).all()
        return
    boson = arrays[arrays.GenPart_pdgId == pdg]
    # the generator decays the boson to exactly its mass: the tau pair's mass is the boson's
    np.testing.assert_allclose(out["gen_m_tautau"], ak.to_numpy(ak.firsts(boson.GenPart_mass)), rtol=1e-4)
    np.testing.assert_allclose(out["gen_pt_h"], ak.to_numpy(ak.firsts(boson.GenPart_pt)), rtol=1e-12)
    if pdg == 25:
        assert np.all(np.abs(out["gen_m_tautau"] - 125.0) < 1.0)
    else:
        assert 88.0 < np.median(out["gen_m_tautau"]) < 94.0
