"""Skim stage (processors): the generator truth of a jet — its label and its energy-scale target — on flat numpy columns.

* AK4 jets: the label is the hadron flavour (`flavour_label`: b, c or light, from
  ``Jet_hadronFlavour``); the parton flavour is written as it is.
* AK8 jets: the label comes from the generator record (`resonance_labels`): a jet is
  t->bqq, H->bb or W/Z->qq when every quark of that decay lies within Delta R < dr_max of
  its axis (t first, then H, then W/Z), QCD otherwise. The quarks of a decay are the
  GenParts of |pdgId| 1-5 whose mother is the resonance; a W's quarks belong to its top
  too when the W's first copy (going up through the copies of the same pdgId) comes from a
  top (a jet holding them but not the b is a W jet).
  A hadronic top has the b and the W's two quarks, H->bb two b quarks, W/Z->qq two quarks;
  other decays (leptonic ones, H->cc, H->WW) give no label of theirs.
* The jet energy scale target (`response_target`): matched generator jet pt / jet pt.

Data has none of this: labels -1, flavours `NO_FLAVOUR`, target NaN (`processors.jets`).
"""

from __future__ import annotations

import numpy as np

from processors.constituents import global_index
from processors.physics import delta_r

__all__ = ["AK4_CLASSES", "AK8_CLASSES", "HBB", "NO_FLAVOUR", "NO_LABEL", "QCD", "TBQQ", "VQQ", "decay_quarks",
           "flavour_label", "resonance_labels", "response_target"]

AK4_CLASSES = ("light", "c", "b")  # jet_label of AK4 jets: position = code
AK8_CLASSES = ("QCD", "Hbb", "Vqq", "Tbqq")  # jet_label of AK8 jets
QCD, HBB, VQQ, TBQQ = range(4)
NO_LABEL = -1  # data
NO_FLAVOUR = -99  # a flavour the input does not have (data; partonFlavour of AK8 jets)
_TOP, _Z, _W, _H = 6, 23, 24, 25
# A jet holding several decays takes the first of t, H, W/Z: priority by class, and back.
_PRIORITY = np.array([0, 2, 1, 3])  # QCD, HBB, VQQ, TBQQ
_CLASS_OF_PRIORITY = np.array([QCD, VQQ, HBB, TBQQ], dtype=np.int8)
_MAX_COPIES = 64  # generator copies of one particle followed at most (a loop in a broken record stops there)


def flavour_label(hadron_flavour: np.ndarray) -> np.ndarray:
    """AK4 label (int8): 2 for b (hadron flavour 5), 1 for c (4), 0 for light (anything else)."""
    flavour = np.asarray(hadron_flavour)
    return np.where(flavour == 5, 2, np.where(flavour == 4, 1, 0)).astype(np.int8)


def response_target(jet_pt: np.ndarray, gen_index: np.ndarray, gen_pt: np.ndarray) -> np.ndarray:
    """Matched generator jet pt / jet pt (float64); NaN where the jet has no generator jet.

    Parameters
    ----------
    jet_pt : float array, one per jet
    gen_index : int array, one per jet
        Flat position of the matched generator jet (`global_index`), -1 for none.
    gen_pt : float array, one per generator jet (flat)
    """
    gen_index = np.asarray(gen_index, dtype=np.int64)
    out = np.full(len(gen_index), np.nan)
    has = gen_index >= 0
    out[has] = np.asarray(gen_pt, dtype=np.float64)[gen_index[has]] / np.asarray(jet_pt, dtype=np.float64)[has]
    return out


def decay_quarks(counts: np.ndarray, pdg_id: np.ndarray, mother: np.ndarray, *,
                 first_entry: int | None = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The quarks of resonance decays in the generator record of a chunk.

    Parameters
    ----------
    counts : int array, one per event (``nGenPart``)
    pdg_id, mother : int arrays, one per GenPart (flat): ``GenPart_pdgId``,
        ``GenPart_genPartIdxMother`` (within the event, -1 for none)
    first_entry : the file entry of the chunk's first event, for the message

    Returns
    -------
    (quark, owner, kind) : int64 arrays, one per (decay quark, resonance), in GenPart order
        Flat GenPart positions of the quark and of the resonance it belongs to (the
        resonance's copy that decays), and the resonance's |pdgId| (6, 23, 24 or 25). The
        quarks of a W from a top appear twice: with their W and with their top.

    Raises
    ------
    LinkError (`processors.constituents`) for a mother index outside its event.
    """
    counts = np.asarray(counts, dtype=np.int64)
    pdg = np.abs(np.asarray(pdg_id, dtype=np.int64))
    mother = np.asarray(mother, dtype=np.int64)
    has_mother = mother >= 0
    up = np.full(len(pdg), -1, dtype=np.int64)
    up[has_mother] = global_index(counts, np.where(has_mother, mother, 0), counts,
                                  branch="GenPart_genPartIdxMother", target="GenParts",
                                  first_entry=first_entry)[has_mother]
    quark = np.flatnonzero((pdg >= 1) & (pdg <= 5) & (up >= 0))
    owner = up[quark]
    from_resonance = np.isin(pdg[owner], (_TOP, _Z, _W, _H))
    quark, owner = quark[from_resonance], owner[from_resonance]
    kind = pdg[owner].copy()
    # a W's quarks belong to its top too when the W (its first copy) comes from one
    of_w = np.flatnonzero(kind == _W)
    first = owner[of_w]
    for _ in range(_MAX_COPIES):
        parent = up[first]
        same = (parent >= 0) & (pdg[np.maximum(parent, 0)] == _W)
        if not same.any():
            break
        first = np.where(same, parent, first)
    parent = up[first]
    top = (parent >= 0) & (pdg[np.maximum(parent, 0)] == _TOP)
    # ... and to their W as well: a jet with the W's quarks but not the b is a W jet
    from_top = of_w[top]
    quark, owner, kind = (np.concatenate([quark, quark[from_top]]), np.concatenate([owner, parent[top]]),
                          np.concatenate([kind, np.full(len(from_top), _TOP)]))
    order = np.argsort(quark, kind="stable")  # event order, as the GenParts
    return quark[order], owner[order], kind[order]


def resonance_labels(gen_counts: np.ndarray, pdg_id: np.ndarray, mother: np.ndarray, gen_eta: np.ndarray,
                     gen_phi: np.ndarray, jet_event: np.ndarray, jet_eta: np.ndarray, jet_phi: np.ndarray, *,
                     dr_max: float, first_entry: int | None = 0) -> np.ndarray:
    """AK8 labels (int8, `AK8_CLASSES`) of jets from the generator record (see the module docstring).

    Parameters
    ----------
    gen_counts, pdg_id, mother, gen_eta, gen_phi : the chunk's GenParts (`decay_quarks`)
    jet_event : int array, one per jet, non-decreasing: the jet's event in the chunk
    jet_eta, jet_phi : float arrays, one per jet
    dr_max : float
        Every quark of the decay within Delta R < dr_max of the jet axis (0.8 for AK8).
    """
    jet_event = np.asarray(jet_event, dtype=np.int64)
    labels = np.full(len(jet_event), QCD, dtype=np.int8)
    quark, owner, kind = decay_quarks(gen_counts, pdg_id, mother, first_entry=first_entry)
    if not len(quark) or not len(jet_event):
        return labels
    pdg = np.abs(np.asarray(pdg_id, dtype=np.int64))
    owners, owner_of_quark = np.unique(owner, return_inverse=True)
    n_quarks = np.bincount(owner_of_quark, minlength=len(owners))
    n_b = np.bincount(owner_of_quark, weights=pdg[quark] == 5, minlength=len(owners))
    owner_kind = np.zeros(len(owners), dtype=np.int64)
    owner_kind[owner_of_quark] = kind
    decay = np.where((owner_kind == _TOP) & (n_quarks == 3), TBQQ,
                     np.where((owner_kind == _H) & (n_quarks == 2) & (n_b == 2), HBB,
                              np.where(np.isin(owner_kind, (_W, _Z)) & (n_quarks == 2), VQQ, QCD)))
    # every (jet, quark) pair of the same event (quarks are in event order)
    n_events = len(gen_counts)
    quark_event = np.repeat(np.arange(n_events), np.asarray(gen_counts, dtype=np.int64))[quark]
    quarks_per_event = np.bincount(quark_event, minlength=n_events)
    first_quark = np.cumsum(quarks_per_event) - quarks_per_event
    pairs_of_jet = quarks_per_event[jet_event]
    pair_jet = np.repeat(np.arange(len(jet_event)), pairs_of_jet)
    within = np.arange(len(pair_jet)) - np.repeat(np.cumsum(pairs_of_jet) - pairs_of_jet, pairs_of_jet)
    pair_quark = first_quark[jet_event[pair_jet]] + within
    gen_eta, gen_phi = np.asarray(gen_eta), np.asarray(gen_phi)
    inside = delta_r(gen_eta[quark[pair_quark]], gen_phi[quark[pair_quark]],
                     np.asarray(jet_eta)[pair_jet], np.asarray(jet_phi)[pair_jet]) < dr_max
    # per (jet, decay): are all of the decay's quarks inside?
    group = pair_jet * len(owners) + owner_of_quark[pair_quark]
    groups, group_of_pair = np.unique(group, return_inverse=True)
    n_inside = np.bincount(group_of_pair, weights=inside, minlength=len(groups))
    group_owner = groups % len(owners)
    contained = (n_inside == n_quarks[group_owner]) & (decay[group_owner] != QCD)
    best = np.zeros(len(jet_event), dtype=np.int64)
    np.maximum.at(best, groups[contained] // len(owners), _PRIORITY[decay[group_owner[contained]]])
    return _CLASS_OF_PRIORITY[best]
