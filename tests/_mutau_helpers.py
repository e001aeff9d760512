"""Tests of the mu-tau_h analysis: an independent reading of skim.cxx's selection with uproot and numpy.

Deliberately plain: event by event, one Python loop, no hepprep import, so that if it and
`processors.mutau` ever disagree one of them is wrong. It knows two dialects: the outreach
one (the generated samples: boolean ID branches) and Run 2 NanoAOD (DeepTau bit masks,
integer jet IDs), with the working points of skim.cxx (tight isolation, tight anti-e and
anti-mu) unless told otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import uproot

TRIGGER = "HLT_IsoMu17_eta2p1_LooseIsoPFTau20"
# Run 2 DeepTau 2017v2p1: working point -> bit of the mask (VSjet and VSe; VSmu has its own).
_DEEPTAU_BITS = {"VLoose": 4, "Loose": 8, "Medium": 16, "Tight": 32}
_DEEPTAU_MU_BITS = {"VLoose": 1, "Loose": 2, "Medium": 4, "Tight": 8}


def _dphi(a: float, b: float) -> float:
    d = math.fmod(a - b, 2 * math.pi)
    if d > math.pi:
        d -= 2 * math.pi
    elif d <= -math.pi:
        d += 2 * math.pi
    return d


def _p4(pt, eta, phi, m):
    pt, eta, phi, m = (float(x) for x in (pt, eta, phi, m))
    px, py, pz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
    return px, py, pz, math.sqrt(px * px + py * py + pz * pz + m * m)


def _mass_pt(a, b):
    px, py, pz, e = (x + y for x, y in zip(a, b))
    return math.sqrt(max(e * e - px * px - py * py - pz * pz, 0.0)), math.hypot(px, py)


def _mt(pt, phi, met, met_phi):
    return math.sqrt(max(2 * float(pt) * float(met) * (1 - math.cos(_dphi(float(phi), float(met_phi)))), 0.0))


def independent_mutau(path, *, dialect: str, trigger: bool = True, tau_iso: str = "Tight",
                      muon_pt_min: float = 17.0) -> tuple[list[dict], dict[str, int]]:
    """(rows, cutflow counts) of skim.cxx's mu-tau_h selection on one file."""
    tree = uproot.open(path)["Events"]
    a = tree.arrays(library="np")
    n = tree.num_entries
    steps = ("trigger",) * trigger + ("muon", "tau", "good_muon", "good_tau", "mutau_pair")
    rows, counts = [], {"all": n, **dict.fromkeys(steps, 0)}

    def count(step, alive):
        if step in counts:
            counts[step] += int(alive)

    for i in range(n):
        if trigger and not a[TRIGGER][i]:
            continue
        count("trigger", True)
        n_mu, n_tau = len(a["Muon_pt"][i]), len(a["Tau_pt"][i])
        if n_mu == 0:
            continue
        count("muon", True)
        if n_tau == 0:
            continue
        count("tau", True)
        good_mu = [a["Muon_pt"][i][k] > muon_pt_min and abs(a["Muon_eta"][i][k]) < 2.1 and bool(a["Muon_tightId"][i][k])
                   for k in range(n_mu)]
        if not any(good_mu):
            continue
        count("good_muon", True)
        good_tau, iso = [], []
        for k in range(n_tau):
            kin = a["Tau_charge"][i][k] != 0 and abs(a["Tau_eta"][i][k]) < 2.3 and a["Tau_pt"][i][k] > 20
            if dialect == "outreach":
                ids = (a["Tau_idDecayMode"][i][k] and a[f"Tau_idIso{tau_iso}"][i][k] and a["Tau_idAntiEleTight"][i][k]
                       and a["Tau_idAntiMuTight"][i][k])
                iso.append(float(a["Tau_relIso_all"][i][k]))
            else:
                ids = (a["Tau_idDecayModeNewDMs"][i][k]
                       and a["Tau_idDeepTau2017v2p1VSjet"][i][k] & _DEEPTAU_BITS[tau_iso]
                       and a["Tau_idDeepTau2017v2p1VSe"][i][k] & _DEEPTAU_BITS["Tight"]
                       and a["Tau_idDeepTau2017v2p1VSmu"][i][k] & _DEEPTAU_MU_BITS["Tight"])
                iso.append(float((a["Tau_chargedIso"][i][k] + a["Tau_neutralIso"][i][k]) / a["Tau_pt"][i][k]))
            good_tau.append(bool(kin and ids))
        if not any(good_tau):
            continue
        count("good_tau", True)
        # build_pair of skim.cxx: valid pairs, then the highest-pt muon, then its most isolated tau
        valid = [(m, t) for m in range(n_mu) for t in range(n_tau)
                 if good_mu[m] and good_tau[t]
                 and math.hypot(float(a["Muon_eta"][i][m] - a["Tau_eta"][i][t]),
                                _dphi(float(a["Muon_phi"][i][m]), float(a["Tau_phi"][i][t]))) > 0.5]
        if not valid:
            continue
        count("mutau_pair", True)
        mu, max_pt = -1, -1.0
        for m, _ in valid:
            if max_pt < a["Muon_pt"][i][m]:
                mu, max_pt = m, a["Muon_pt"][i][m]
        tau, min_iso = -1, math.inf
        for m, t in valid:
            if m == mu and min_iso > iso[t]:
                tau, min_iso = t, iso[t]
        if dialect == "outreach":
            good_jet = [bool(a["Jet_puId"][i][k]) for k in range(len(a["Jet_pt"][i]))]
        else:
            good_jet = [bool(a["Jet_jetId"][i][k] & 2) and (bool(a["Jet_puId"][i][k] & 4) or a["Jet_pt"][i][k] >= 50)
                        for k in range(len(a["Jet_pt"][i]))]
        jets = [k for k, ok in enumerate(good_jet) if ok and abs(a["Jet_eta"][i][k]) < 4.7 and a["Jet_pt"][i][k] > 30]
        row = {"run": int(a["run"][i]), "event": int(a["event"][i]), "njets": len(jets),
               "met_pt": float(a["MET_pt"][i]),
               "met_phi": float(a["MET_phi"][i]), "npv": int(a["PV_npvs"][i])}
        for f in ("pt", "eta", "phi", "mass", "charge"):
            row[f"mu_{f}"] = float(a[f"Muon_{f}"][i][mu])
            row[f"tau_{f}"] = float(a[f"Tau_{f}"][i][tau])
        row["mu_iso"] = float(a["Muon_pfRelIso03_all"][i][mu])
        row["tau_iso"], row["tau_decayMode"] = iso[tau], int(a["Tau_decayMode"][i][tau])
        for rank, name in ((0, "jet1"), (1, "jet2")):
            for f in ("pt", "eta", "phi", "mass"):
                row[f"{name}_{f}"] = float(a[f"Jet_{f}"][i][jets[rank]]) if len(jets) > rank else math.nan
        p_mu = _p4(row["mu_pt"], row["mu_eta"], row["mu_phi"], row["mu_mass"])
        p_tau = _p4(row["tau_pt"], row["tau_eta"], row["tau_phi"], row["tau_mass"])
        row["m_vis"], row["pt_vis"] = _mass_pt(p_mu, p_tau)
        row["dr_mutau"] = math.hypot(row["mu_eta"] - row["tau_eta"], _dphi(row["mu_phi"], row["tau_phi"]))
        row["mt_mu"] = _mt(row["mu_pt"], row["mu_phi"], a["MET_pt"][i], a["MET_phi"][i])
        row["mt_tau"] = _mt(row["tau_pt"], row["tau_phi"], a["MET_pt"][i], a["MET_phi"][i])
        if len(jets) >= 2:
            row["mjj"], row["ptjj"] = _mass_pt(*(_p4(row[f"{j}_pt"], row[f"{j}_eta"], row[f"{j}_phi"], row[f"{j}_mass"])
                                                 for j in ("jet1", "jet2")))
            row["jdeta"] = row["jet1_eta"] - row["jet2_eta"]
        else:
            row["mjj"] = row["ptjj"] = row["jdeta"] = math.nan
        rows.append(row)
    return rows, counts


def assert_rows_match(skim, reference: list[dict]) -> None:
    """The skim's rows (a pandas frame of one file, any order) equal ``reference``, row for row."""
    skim = skim.sort_values("event").reset_index(drop=True)
    reference = sorted(reference, key=lambda r: r["event"])
    assert len(skim) == len(reference)
    assert skim["event"].tolist() == [r["event"] for r in reference]
    for column in reference[0] if reference else ():
        want = np.array([r[column] for r in reference], dtype=np.float64)
        got = skim[column].to_numpy(np.float64)
        # float32 storage; derived features from float32 inputs in float64 on both sides
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5, equal_nan=True, err_msg=column)
