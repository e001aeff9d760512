"""Skim stage: the mu-tau_h selection of the CMS 2012 outreach analysis (skim.cxx) as pure awkward functions.

The object masks, the muon-tau pair, the jets and the derived features of the second
analysis (PHYSICS.md "The mu-tau_h channel"), each a plain function of awkward arrays with
keyword thresholds (the processor, `processors.mutau`, passes its options), so a notebook
and the tests compute what the skim computes. The pair follows skim.cxx's ``build_pair``:
of all (good muon, good tau) pairs with Delta R > dr_min, the highest-pt muon, then among
its taus the most isolated one; ties keep the first in collection order.

The processor runs on flat numpy columns (`processors.flat`), not jagged arrays: the masks
are elementwise and take its `processors.flat.ObjectColumns` as they are, and the pair
wraps `processors.flat.best_cross_pair`, which the processor calls directly, so both run
one implementation.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from analysis.core.features import MUTAU_DERIVED_FEATURES
from processors.flat import best_cross_pair
from processors.physics import delta_r, pair_mass_pt, transverse_mass

__all__ = ["first_two_jets", "good_jet_mask", "good_muon_mask", "good_tau_mask", "mutau_features",
           "select_mutau_pair"]


def good_muon_mask(muons: ak.Array, *, pt_min: float = 17.0, abs_eta_max: float = 2.1,
                   require_tight_id: bool = True) -> ak.Array:
    """Good muons: pt > pt_min, |eta| < abs_eta_max and the tight ID (no isolation cut: the
    analysis cuts on it later). ``muons``: ``var * {pt, eta, tightId}``; returns ``var * bool``."""
    mask = (muons.pt > pt_min) & (abs(muons.eta) < abs_eta_max)
    return mask & (muons.tightId != 0) if require_tight_id else mask


def good_tau_mask(taus: ak.Array, *, pt_min: float = 20.0, abs_eta_max: float = 2.3,
                  id_mask: ak.Array | None = None) -> ak.Array:
    """Good taus: charge != 0, pt > pt_min, |eta| < abs_eta_max and ``id_mask`` (decay-mode
    finding, isolation, anti-electron and anti-muon of the input profile), ``var * bool``."""
    mask = (taus.charge != 0) & (taus.pt > pt_min) & (abs(taus.eta) < abs_eta_max)
    return mask if id_mask is None else mask & id_mask


def good_jet_mask(jets: ak.Array, *, pt_min: float = 30.0, abs_eta_max: float = 4.7,
                  id_mask: ak.Array | None = None) -> ak.Array:
    """Good jets: pt > pt_min, |eta| < abs_eta_max and the jet ID; not cleaned against the
    muon or the tau (skim.cxx does not), ``var * bool``."""
    mask = (jets.pt > pt_min) & (abs(jets.eta) < abs_eta_max)
    return mask if id_mask is None else mask & id_mask


def select_mutau_pair(muons: ak.Array, taus: ak.Array, good_muon: ak.Array, good_tau: ak.Array,
                      tau_iso: ak.Array, *, dr_min: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The muon and the tau of each event: skim.cxx's ``build_pair``.

    Parameters
    ----------
    muons, taus : ``var * {eta, phi, pt, ...}``
    good_muon, good_tau : ``var * bool``, the masks of `good_muon_mask` and `good_tau_mask`
    tau_iso : ``var * float``, one per tau: relative isolation (lower = more isolated)
    dr_min : float
        Minimal Delta R (strict) between the muon and the tau.

    Returns
    -------
    (muon, tau) : two int64 numpy arrays, one per event: positions in the event's
    collections, -1 for both where no pair is valid. The muon is the highest-pt muon of
    the valid pairs, the tau the lowest ``tau_iso`` among the taus paired with it; equal
    values keep the first in collection order.
    """
    def flat(values) -> np.ndarray:
        return ak.to_numpy(ak.flatten(values, axis=1))

    counts_mu, counts_tau = ak.to_numpy(ak.num(muons.pt, axis=1)), ak.to_numpy(ak.num(taus.pt, axis=1))
    return best_cross_pair(counts_mu, counts_tau, flat(good_muon), flat(good_tau), flat(muons.eta), flat(muons.phi),
                           flat(taus.eta), flat(taus.phi), flat(muons.pt), flat(tau_iso), dr_min=dr_min)


def first_two_jets(jets: ak.Array, good_jet: ak.Array) -> tuple[ak.Array, ak.Array]:
    """The first two good jets of each event in collection order (NanoAOD: by decreasing pt),
    ``?{jet fields}`` each, None where the event has fewer."""
    good = ak.pad_none(jets[good_jet], 2, axis=1)
    return good[:, 0], good[:, 1]


def _numpy(values) -> np.ndarray:
    if isinstance(values, ak.Array):
        values = ak.to_numpy(ak.fill_none(values, np.nan))
    return np.asarray(values, dtype=np.float64)


def mutau_features(muon, tau, jet1, jet2, met_pt, met_phi) -> dict[str, np.ndarray]:
    """The derived features of the mu-tau_h analysis, one float64 value per event.

    Parameters
    ----------
    muon, tau : ``?{pt, eta, phi, mass}`` or dict of flat arrays, one per event
    jet1, jet2 : the same, None or NaN where the event has fewer good jets
    met_pt, met_phi : flat arrays, one per event

    Returns
    -------
    ``m_vis``, ``pt_vis`` (mass and pt of muon + tau), ``dr_mutau``, ``mt_mu``, ``mt_tau``
    (sqrt(2 pt MET (1 - cos dphi))), ``mjj``, ``ptjj`` (of jet1 + jet2) and ``jdeta``
    (eta_j1 - eta_j2, signed as in skim.cxx); NaN where an object is missing.
    """
    m_vis, pt_vis = pair_mass_pt(muon, tau)
    mjj, ptjj = pair_mass_pt(jet1, jet2)
    met_pt, met_phi = _numpy(met_pt), _numpy(met_phi)
    out = {
        "m_vis": m_vis,
        "pt_vis": pt_vis,
        "dr_mutau": delta_r(_numpy(muon["eta"]), _numpy(muon["phi"]), _numpy(tau["eta"]), _numpy(tau["phi"])),
        "mt_mu": transverse_mass(_numpy(muon["pt"]), _numpy(muon["phi"]), met_pt, met_phi),
        "mt_tau": transverse_mass(_numpy(tau["pt"]), _numpy(tau["phi"]), met_pt, met_phi),
        "mjj": mjj,
        "ptjj": ptjj,
        "jdeta": _numpy(jet1["eta"]) - _numpy(jet2["eta"]),
    }
    return {f.name: _numpy(out[f.name]) for f in MUTAU_DERIVED_FEATURES}
