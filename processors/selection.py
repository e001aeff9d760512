"""Skim stage: object selection of PHYSICS.md (good taus, the tau pair, good jets cleaned against it).

Pure functions of awkward arrays with keyword-only thresholds; the processor passes the
values of ``config.selection`` explicitly and the input profile supplies the ID masks, so
the same code serves the 2012 outreach files and real Run 2/3 NanoAOD.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from processors.flat import clean_jet_mask, first_separated_pair

__all__ = ["TAU_ABS_CHARGE", "good_tau_mask", "leading", "select_jets", "select_tau_pair",
           "select_taus", "sort_by_pt"]

# A hadronic tau has one or three charged prongs: its reconstructed charge is +-1.
TAU_ABS_CHARGE = 1


def sort_by_pt(objects: ak.Array) -> ak.Array:
    """Objects of each event ordered by decreasing pt; equal pts keep their input order.

    Parameters
    ----------
    objects : ``var * {pt, ...}``
    """
    return objects[ak.argsort(objects.pt, axis=1, ascending=False, stable=True)]


def good_tau_mask(taus: ak.Array, *, pt_min: float = 20.0, abs_eta_max: float = 2.3,
                  id_mask: ak.Array | None = None) -> ak.Array:
    """Which taus are good: pt > pt_min, |eta| < abs_eta_max, |charge| = 1, and the ID mask.

    Parameters
    ----------
    taus : ``var * {pt, eta, charge, ...}``, one entry per tau
    pt_min : float, GeV
    abs_eta_max : float
    id_mask : ``var * bool`` or None
        Decay-mode finding, isolation and anti-lepton IDs from the input profile.

    Returns
    -------
    ``var * bool``, same layout as `taus`.
    """
    mask = (taus.pt > pt_min) & (abs(taus.eta) < abs_eta_max) & (abs(taus.charge) == TAU_ABS_CHARGE)
    return mask if id_mask is None else mask & id_mask


def select_taus(taus: ak.Array, *, pt_min: float = 20.0, abs_eta_max: float = 2.3,
                id_mask: ak.Array | None = None) -> ak.Array:
    """Good taus (see `good_tau_mask`) ordered by decreasing pt, ``var * {tau fields}``."""
    return sort_by_pt(taus[good_tau_mask(taus, pt_min=pt_min, abs_eta_max=abs_eta_max,
                                         id_mask=id_mask)])


def select_tau_pair(good_taus: ak.Array, *, dr_min: float = 0.5) -> tuple[ak.Array, ak.Array]:
    """The tau pair of each event: the first pair with dR > dr_min in pt order.

    Pairs are ordered by the pt of their leading member, then of the other one; with
    `good_taus` sorted by pt (ties in input order) that is the order of index pairs
    (0,1), (0,2), ..., (1,2), ... So the pair is normally the two leading taus, and if
    they overlap the leading tau with the next one that does not.

    Parameters
    ----------
    good_taus : ``var * {pt, eta, phi, ...}``, sorted by decreasing pt (`select_taus`)
    dr_min : float
        Minimal Delta R between the two members.

    Returns
    -------
    (tau1, tau2) : ``?{tau fields}`` each, one per event; None where the event has fewer
    than two good taus or every pair overlaps. tau1 has the higher pt.
    """
    counts = ak.to_numpy(ak.num(good_taus, axis=1))
    first, second = first_separated_pair(counts, ak.to_numpy(ak.flatten(good_taus.eta, axis=1)),
                                         ak.to_numpy(ak.flatten(good_taus.phi, axis=1)), dr_min=dr_min)
    return _at_position(good_taus, first), _at_position(good_taus, second)


def _at_position(objects: ak.Array, position: np.ndarray) -> ak.Array:
    """The object at `position` (one per event, -1 = none) of each event, ``?{...}``."""
    index = ak.mask(ak.Array(np.maximum(position, 0)), position >= 0)
    return ak.firsts(objects[ak.singletons(index)])


def leading(objects: ak.Array, rank: int) -> ak.Array:
    """The `rank`-th object of each event (1 = first), None where there are fewer, ``?{...}``."""
    return ak.pad_none(objects, rank, axis=1)[:, rank - 1]


def select_jets(jets: ak.Array, tau1: ak.Array, tau2: ak.Array, *, pt_min: float = 30.0,
                abs_eta_max: float = 4.7, dr_min: float = 0.5,
                id_mask: ak.Array | None = None) -> ak.Array:
    """Good jets cleaned against the tau pair, ordered by decreasing pt.

    A good jet has pt > pt_min, |eta| < abs_eta_max, passes `id_mask` (pile-up/jet ID of
    the input profile) and lies at Delta R > dr_min from both selected taus.

    Parameters
    ----------
    jets : ``var * {pt, eta, phi, ...}``, one entry per jet
    tau1, tau2 : ``?{eta, phi, ...}``, one per event; an event without a pair keeps no jet
    id_mask : ``var * bool`` or None

    Returns
    -------
    ``var * {jet fields}``
    """
    counts = ak.to_numpy(ak.num(jets, axis=1))
    flat = {f: ak.to_numpy(ak.flatten(jets[f], axis=1)) for f in ("pt", "eta", "phi")}
    # Each event's tau repeated once per jet; a missing tau becomes NaN (see `clean_jet_mask`).
    tau_eta = [_per_jet(tau.eta, counts) for tau in (tau1, tau2)]
    tau_phi = [_per_jet(tau.phi, counts) for tau in (tau1, tau2)]
    mask = clean_jet_mask(flat["pt"], flat["eta"], flat["phi"], tau_eta, tau_phi, pt_min=pt_min,
                          abs_eta_max=abs_eta_max, dr_min=dr_min,
                          id_mask=None if id_mask is None else ak.to_numpy(ak.flatten(id_mask, axis=1)))
    return sort_by_pt(jets[ak.unflatten(mask, counts)])


def _per_jet(values: ak.Array, counts: np.ndarray) -> np.ndarray:
    """One ``?float`` per event repeated `counts` times, float64, None -> NaN."""
    return np.repeat(ak.to_numpy(ak.fill_none(values, np.nan)).astype(np.float64), counts)
