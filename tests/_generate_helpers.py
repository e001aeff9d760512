"""Tests of the sample generator (generate stage): an independent reading of the default selection.

The generator tests check the physics targets on *selected* events, so they need the
default selection of PHYSICS.md. This is a deliberately plain re-implementation with
uproot and awkward (not the skim's processor, which another stage owns and tests): if
the two ever disagree, one of them is wrong.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot


def _delta_r(eta1, phi1, eta2, phi2):
    dphi = (phi1 - phi2 + np.pi) % (2 * np.pi) - np.pi
    return np.sqrt((eta1 - eta2) ** 2 + dphi**2)


def _p4_sum_mass_pt(pt1, eta1, phi1, m1, pt2, eta2, phi2, m2):
    px = pt1 * np.cos(phi1) + pt2 * np.cos(phi2)
    py = pt1 * np.sin(phi1) + pt2 * np.sin(phi2)
    pz = pt1 * np.sinh(eta1) + pt2 * np.sinh(eta2)
    e = np.sqrt((pt1 * np.cosh(eta1)) ** 2 + m1**2) + np.sqrt((pt2 * np.cosh(eta2)) ** 2 + m2**2)
    return np.sqrt(np.clip(e**2 - px**2 - py**2 - pz**2, 0, None)), np.hypot(px, py)


def read_events(files: list[str | Path]) -> ak.Array:
    """All branches of the `Events` trees of ``files``, concatenated."""
    return ak.concatenate([uproot.open(f)["Events"].arrays() for f in files])


def select(events: ak.Array, *, require_iso: bool = True) -> dict[str, np.ndarray]:
    """Default selection (PHYSICS.md "Selection") and a few features, one entry per selected event.

    ``require_iso=False`` drops the medium isolation requirement (to look at isolation itself).
    """
    tau = ak.zip({k[4:]: events[k] for k in events.fields if k.startswith("Tau_")})
    jet = ak.zip({k[4:]: events[k] for k in events.fields if k.startswith("Jet_")})
    good = ((tau.pt > 20) & (abs(tau.eta) < 2.3) & (abs(tau.charge) == 1) & tau.idDecayMode
            & (tau.idIsoMedium | (not require_iso)) & tau.idAntiEleLoose & tau.idAntiMuLoose)
    taus = tau[good]
    pairs = ak.combinations(taus, 2, fields=["t1", "t2"])  # (0,1), (0,2), (1,2): PHYSICS.md order
    pairs = pairs[_delta_r(pairs.t1.eta, pairs.t1.phi, pairs.t2.eta, pairs.t2.phi) > 0.5]
    has_pair = ak.num(pairs) > 0
    pair = ak.firsts(pairs[has_pair])
    ev = events[has_pair]
    jet = jet[has_pair]
    t1, t2 = pair.t1, pair.t2
    jet_ok = ((jet.pt > 30) & (abs(jet.eta) < 4.7) & jet.puId
              & (_delta_r(jet.eta, jet.phi, t1.eta, t1.phi) > 0.5)
              & (_delta_r(jet.eta, jet.phi, t2.eta, t2.phi) > 0.5))
    jets = jet[jet_ok]
    two = ak.num(jets) >= 2
    t1, t2, jets, ev = t1[two], t2[two], jets[two], ev[two]
    j1, j2 = jets[:, 0], jets[:, 1]
    a = lambda x: ak.to_numpy(ak.fill_none(x, np.nan)).astype(np.float64)  # noqa: E731  (no None left here)
    m_vis, pt_vis = _p4_sum_mass_pt(a(t1.pt), a(t1.eta), a(t1.phi), a(t1.mass),
                                    a(t2.pt), a(t2.eta), a(t2.phi), a(t2.mass))
    mjj, ptjj = _p4_sum_mass_pt(a(j1.pt), a(j1.eta), a(j1.phi), a(j1.mass), a(j2.pt), a(j2.eta), a(j2.phi), a(j2.mass))
    met, met_phi = a(ev.MET_pt), a(ev.MET_phi)
    mt = lambda t: np.sqrt(2 * a(t.pt) * met * (1 - np.cos(a(t.phi) - met_phi)))  # noqa: E731
    return {
        "n_input": len(events), "tau1_pt": a(t1.pt), "tau2_pt": a(t2.pt), "tau1_iso": a(t1.idIsoRaw),
        "tau2_iso": a(t2.idIsoRaw), "tau1_dm": a(t1.decayMode), "tau2_dm": a(t2.decayMode),
        "tau1_mass": a(t1.mass), "tau2_mass": a(t2.mass), "tau1_eta": a(t1.eta), "tau2_eta": a(t2.eta),
        "jet1_pt": a(j1.pt), "jet2_pt": a(j2.pt), "jet1_eta": a(j1.eta), "jet2_eta": a(j2.eta),
        "jet1_btag": a(j1.btag), "jet2_btag": a(j2.btag), "njets": ak.to_numpy(ak.num(jets)).astype(float),
        "met_pt": met, "npv": a(ev.PV_npvs), "m_vis": m_vis, "pt_vis": pt_vis, "mjj": mjj, "ptjj": ptjj,
        "jdeta": np.abs(a(j1.eta) - a(j2.eta)), "mt_tau1": mt(t1), "mt_tau2": mt(t2),
        "dr_tautau": _delta_r(a(t1.eta), a(t1.phi), a(t2.eta), a(t2.phi)),
    }


def histogram_peak(values: np.ndarray, *, low: float, high: float, width: float) -> float:
    """Centre of the most populated bin of ``values`` in [low, high)."""
    counts, edges = np.histogram(values, bins=np.arange(low, high + width, width))
    i = int(np.argmax(counts))
    return 0.5 * (edges[i] + edges[i + 1])
