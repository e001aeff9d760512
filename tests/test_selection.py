"""Skim stage tests: object selection and input profiles on hand-built arrays."""

from __future__ import annotations

import awkward as ak
import pytest

from analysis.config import SelectionConfig
from analysis.errors import ConfigError
from processors.profiles import COMMON_BRANCHES, ProfileError, detect_profile
from processors.selection import good_tau_mask, select_jets, select_tau_pair, select_taus


def _taus(events):
    """events: list of lists of (pt, eta, phi, charge, idx)."""
    return ak.Array([[dict(zip(("pt", "eta", "phi", "charge", "idx"), t)) for t in ev] for ev in events])


def test_good_tau_mask_cuts_are_strict_and_need_unit_charge():
    taus = _taus([[(20.0, 0, 0, 1, 0), (20.5, 0, 0, 1, 1), (25, 2.3, 0, -1, 2), (25, -2.29, 0, -1, 3),
                   (25, 0, 0, 0, 4), (25, 0, 0, 3, 5), (25, 0, 0, -1, 6)]])
    ids = ak.Array([[True, True, True, True, True, True, False]])
    mask = good_tau_mask(taus, pt_min=20.0, abs_eta_max=2.3, id_mask=ids)
    assert mask.tolist() == [[False, True, False, True, False, False, False]]


def test_select_taus_orders_by_pt_and_keeps_input_order_on_ties():
    good = select_taus(_taus([[(30, 0, 0, 1, 0), (50, 0, 0, 1, 1), (30, 0, 0, 1, 2)]]), pt_min=20.0)
    assert good.idx.tolist() == [[1, 0, 2]]


def _pair_idx(events, dr_min=0.5):
    t1, t2 = select_tau_pair(select_taus(_taus(events), pt_min=20.0), dr_min=dr_min)
    return [None if a is None else (a, b) for a, b in zip(t1.idx.tolist(), t2.idx.tolist())]


def test_tau_pair_choice():
    events = [
        [(50, 0, 0, 1, 0), (40, 0, 3, -1, 1), (30, 0, 0.2, 1, 2)],      # leading two separated
        [(50, 0, 0, 1, 0), (40, 0, 0.3, -1, 1), (30, 0, 2.0, 1, 2)],    # leading overlap: A with C
        [(50, 0, 0, 1, 0), (40, 0, 0.3, -1, 1), (30, 0, -0.3, 1, 2)],   # A overlaps both: B with C
        [(50, 0, 0, 1, 0), (40, 0, 0.1, -1, 1), (30, 0, 0.2, 1, 2)],    # all overlap: none
        [(50, 0, 0, 1, 0)],                                               # one tau: none
        [],                                                               # no tau: none
        [(30, 0, 2.0, 1, 0), (40, 0, 0.3, -1, 1), (50, 0, 0, 1, 2)],    # unsorted input
    ]
    assert _pair_idx(events) == [(0, 1), (0, 2), (1, 2), None, None, None, (2, 0)]


def test_tau_pair_ties_keep_input_order():
    assert _pair_idx([[(40, 0, 0, 1, 0), (40, 0, 2, -1, 1)]]) == [(0, 1)]
    assert _pair_idx([[(40, 0, 2, -1, 1), (40, 0, 0, 1, 0)]]) == [(1, 0)]


def test_tau_pair_dr_threshold_is_strict():
    # dR = 0.5 exactly is not "separated by more than 0.5".
    assert _pair_idx([[(40, 0, 0, 1, 0), (30, 0.5, 0, -1, 1)]], dr_min=0.5) == [None]
    assert _pair_idx([[(40, 0, 0, 1, 0), (30, 0.5, 0, -1, 1)]], dr_min=0.49) == [(0, 1)]


def test_select_jets_cleans_against_both_taus_and_orders_by_pt():
    jets = ak.Array([[dict(pt=p, eta=e, phi=f, idx=i) for p, e, f, i in ev] for ev in [
        [(35, 0, 0.2, 0),      # 0.2 from tau1: dropped
         (80, 0, 2.0, 1),      # 0.3 from tau2: dropped
         (30, 1.0, -2, 2),     # pt not above 30: dropped
         (45, 4.8, -2, 3),     # |eta| beyond 4.7: dropped
         (40, 1.0, -2, 4),     # good
         (90, -1.0, -1, 5),    # good, leading
         (60, 0, -1, 6)],      # fails the ID mask
        [(100, 0, 0, 0)],      # event without a tau pair keeps no jet
    ]])
    ids = ak.Array([[True] * 6 + [False], [True]])
    tau1 = ak.Array([dict(eta=0.0, phi=0.0), None])
    tau2 = ak.Array([dict(eta=0.0, phi=2.3), None])
    good = select_jets(jets, tau1, tau2, pt_min=30.0, abs_eta_max=4.7, dr_min=0.5, id_mask=ids)
    assert good.idx.tolist() == [[5, 4], []]
    assert str(good.type).startswith("2 * var *")


RUN2 = set(COMMON_BRANCHES) | {"MET_pt", "MET_phi", "Tau_idDecayModeNewDMs", "Tau_chargedIso", "Tau_neutralIso",
                               "Tau_idDeepTau2017v2p1VSjet", "Tau_idDeepTau2017v2p1VSe",
                               "Tau_idDeepTau2017v2p1VSmu", "Jet_jetId", "Jet_puId",
                               "Jet_btagDeepFlavB", "genWeight"}

JME_FRACTIONS = {"Jet_neHEF", "Jet_neEmEF", "Jet_chHEF", "Jet_chEmEF", "Jet_muEF", "Jet_chMultiplicity",
                 "Jet_neMultiplicity"}


def test_detect_profiles():
    assert detect_profile(RUN2).name == "run2"
    run3 = {b.replace("2017v2p1", "2018v2p5") for b in RUN2} - {"Jet_puId"} | JME_FRACTIONS
    assert detect_profile(run3).name == "run3"
    # v15: no Jet_jetId, no MET_* (PFMET_* and PuppiMET_* instead)
    v15 = run3 - {"Jet_jetId", "MET_pt", "MET_phi"} | {"PFMET_pt", "PFMET_phi", "PuppiMET_pt", "PuppiMET_phi"}
    assert detect_profile(v15).name == "run3v15"
    assert detect_profile(v15).met == "PFMET"
    outreach = set(COMMON_BRANCHES) | {"MET_pt", "MET_phi", "Tau_idDecayMode", "Tau_relIso_all", "Jet_puId", "Jet_btag"}
    outreach |= {f"Tau_idIso{w}" for w in ("VLoose", "Loose", "Medium", "Tight")}
    outreach |= {f"Tau_idAnti{k}{w}" for k in ("Ele", "Mu") for w in ("Loose", "Medium", "Tight")}
    assert detect_profile(outreach).name == "outreach2012"


def test_profile_errors_name_missing_branches():
    with pytest.raises(ProfileError, match=r"missing branch Jet_btagDeepFlavB \(input profile 'run2'\)"):
        detect_profile(RUN2 - {"Jet_btagDeepFlavB"})
    with pytest.raises(ProfileError, match="match no input profile.*closest, 'run2', lacks Tau_idDeepTau2017v2p1VSjet"):
        detect_profile(RUN2 - {"Tau_idDeepTau2017v2p1VSjet"})


def test_run2_deeptau_bits_and_jet_ids():
    profile = detect_profile(RUN2)
    # VSjet 31 = bits VVVLoose..Medium; 63 adds Tight. VSe 0 fails all; VSmu 2 = Loose only.
    taus = ak.Array([[dict(pt=30.0, idDecayModeNewDMs=True, idDeepTau2017v2p1VSjet=31,
                           idDeepTau2017v2p1VSe=255, idDeepTau2017v2p1VSmu=2),
                      dict(pt=30.0, idDecayModeNewDMs=True, idDeepTau2017v2p1VSjet=63,
                           idDeepTau2017v2p1VSe=0, idDeepTau2017v2p1VSmu=2)]])
    medium = SelectionConfig(tau_iso="Medium")
    assert profile.tau_id_mask(taus, medium).tolist() == [[True, False]]
    assert profile.tau_id_mask(taus, SelectionConfig(tau_iso="Tight")).tolist() == [[False, False]]
    no_lepton = SelectionConfig(tau_iso="Tight", tau_require_anti_lepton=False)
    assert profile.tau_id_mask(taus, no_lepton).tolist() == [[False, True]]
    # jetId bit 2 = tight; puId bit 4 = loose, ignored from 50 GeV on.
    jets = ak.Array([[dict(pt=40.0, jetId=6, puId=4), dict(pt=40.0, jetId=6, puId=3),
                      dict(pt=60.0, jetId=6, puId=0), dict(pt=60.0, jetId=1, puId=7)]])
    assert profile.jet_id_mask(jets, SelectionConfig()).tolist() == [[True, False, True, False]]


def test_run3_deeptau_indices():
    run3 = {b.replace("2017v2p1", "2018v2p5") for b in RUN2} - {"Jet_puId"} | JME_FRACTIONS
    profile = detect_profile(run3)
    taus = ak.Array([[dict(pt=30.0, idDecayModeNewDMs=True, idDeepTau2018v2p5VSjet=v,
                           idDeepTau2018v2p5VSe=3, idDeepTau2018v2p5VSmu=1) for v in (4, 5, 6)]])
    sel = SelectionConfig(tau_iso="Medium", tau_anti_ele="VLoose", tau_anti_mu="VLoose")
    assert profile.tau_id_mask(taus, sel).tolist() == [[False, True, True]]
    sel = SelectionConfig(tau_iso="Medium", tau_anti_ele="Loose", tau_anti_mu="VLoose")
    assert profile.tau_id_mask(taus, sel).tolist() == [[False, False, False]]


def test_outreach_working_point_without_branch_names_the_choices():
    outreach = set(COMMON_BRANCHES) | {"MET_pt", "MET_phi", "Tau_idDecayMode", "Tau_relIso_all", "Jet_puId", "Jet_btag"}
    outreach |= {f"Tau_idIso{w}" for w in ("VLoose", "Loose", "Medium", "Tight")}
    outreach |= {f"Tau_idAnti{k}{w}" for k in ("Ele", "Mu") for w in ("Loose", "Medium", "Tight")}
    profile = detect_profile(outreach)
    taus = ak.Array([[dict(pt=30.0, idDecayMode=True, idIsoMedium=True, idAntiEleLoose=True,
                           idAntiMuLoose=False)]])
    assert profile.tau_id_mask(taus, SelectionConfig()).tolist() == [[False]]
    with pytest.raises(ConfigError, match="'VLoose' has no branch .* use one of Loose, Medium, Tight"):
        profile.tau_id_mask(taus, SelectionConfig(tau_anti_ele="VLoose"))
