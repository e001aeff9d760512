"""Skim stage (processors): jet constituents and secondary vertices on flat numpy columns — links, ordering, features.

PFNano stores a jet's constituents as a link table (``JetPFCands``: ``jetIdx`` into
``Jet``, ``pFCandsIdx`` into ``PFCands``, both counted from 0 within the event), and its
secondary vertices likewise (``JetSVs``: ``jetIdx``). Everything here is a plain function of
flat numpy arrays (events back to back, as `processors.flat`): `link_rows` checks a link
table's indices and groups its entries by the selected jet they belong to,
`constituent_features` computes the per-constituent features of `processors.jets`.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from analysis.core.jet_images import PARTICLE_CLASSES

__all__ = ["UNKNOWN_CLASS", "LinkError", "constituent_features", "global_index", "link_rows", "particle_class",
           "row_of_objects"]

# |pdgId| of a particle-flow candidate -> its class (`analysis.core.jet_images.PARTICLE_CLASSES`).
# HF candidates (pdgId 1: hadronic, 2: electromagnetic) count as neutral hadrons and photons.
_CLASS_OF_PDG = {211: "charged_hadron", 130: "neutral_hadron", 22: "photon", 11: "electron", 13: "muon",
                 1: "neutral_hadron", 2: "photon"}
UNKNOWN_CLASS = -1  # a pdgId that is none of the above
# The class of every |pdgId| up to the largest known (0 is none: larger ones are looked up there).
_CLASS_TABLE = np.full(max(_CLASS_OF_PDG) + 1, UNKNOWN_CLASS, dtype=np.int8)
for _pdg, _name in _CLASS_OF_PDG.items():
    _CLASS_TABLE[_pdg] = PARTICLE_CLASSES.index(_name)


class LinkError(ValueError):
    """A link table's index points outside its collection (the file's fault: one line names it)."""


def particle_class(pdg_id: np.ndarray) -> np.ndarray:
    """The class code of each candidate (int8; -1 for an unknown pdgId).

    ``particle_class([-211, 22, 130, 13, 1, 2, 11, 321]) == [0, 2, 1, 4, 1, 2, 3, -1]``.
    """
    pdg = np.abs(np.asarray(pdg_id, dtype=np.int64))
    pdg[pdg >= len(_CLASS_TABLE)] = 0
    return _CLASS_TABLE[pdg]


def global_index(link_counts: np.ndarray, local: np.ndarray, target_counts: np.ndarray, *, branch: str,
                 target: str, first_entry: int | None = 0) -> np.ndarray:
    """Flat positions in the target collection of a link table's per-event indices.

    Parameters
    ----------
    link_counts : int array, one per event
        Entries of the link table in each event.
    local : int array, one per link entry
        The index, counted from 0 within the event (``JetPFCands_pFCandsIdx``).
    target_counts : int array, one per event
        Objects of the target collection in each event (``nPFCands``).
    branch, target, first_entry : for the message: the index branch, the target
        collection, and the file entry of the chunk's first event (None: not known, the
        event is named by its position in the chunk).

    Raises
    ------
    LinkError
        An index below 0 or not below the event's count, named with its entry.
    """
    link_counts = np.asarray(link_counts, dtype=np.int64)
    target_counts = np.asarray(target_counts, dtype=np.int64)
    local = np.asarray(local, dtype=np.int64)
    if len(local) != link_counts.sum() or len(link_counts) != len(target_counts):
        raise ValueError(f"global_index: {len(local)} indices for {link_counts.sum()} link entries, "
                         f"{len(link_counts)} events of links for {len(target_counts)} of {target}")
    flat, first_bad, bad = _global_index(link_counts, local, target_counts)
    if bad:
        event = int(np.searchsorted(np.cumsum(link_counts), first_bad, side="right"))
        where = f"entry {first_entry + event}" if first_entry is not None else f"event {event} of the chunk"
        raise LinkError(f"{branch} = {int(local[first_bad])} at {where} is out of range "
                        f"(the entry has {int(target_counts[event])} {target}); {bad} such "
                        "index(es) in the chunk")
    return flat


@numba.njit(nogil=True, cache=True)
def _global_index(link_counts, local, target_counts):
    # One pass: each index checked against its event's count and offset by the event's start.
    flat = np.empty(len(local), dtype=np.int64)
    first_bad, bad, k, start = -1, 0, 0, 0
    for event in range(len(link_counts)):
        n = target_counts[event]
        for _ in range(link_counts[event]):
            index = local[k]
            if index < 0 or index >= n:
                bad += 1
                if first_bad < 0:
                    first_bad = k
            flat[k] = start + index
            k += 1
        start += n
    return flat, first_bad, bad


def row_of_objects(n_objects: int, selected: np.ndarray) -> np.ndarray:
    """Per object of a collection (flat), its row among the ``selected`` objects (-1: not selected)."""
    row = np.full(n_objects, -1, dtype=np.int64)
    row[np.asarray(selected, dtype=np.int64)] = np.arange(len(selected))
    return row


def link_rows(jet_of_link: np.ndarray, row_of_jet: np.ndarray, n_rows: int,
              sort_key: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The link entries of the selected jets, grouped by row, and the rows' list offsets.

    Parameters
    ----------
    jet_of_link : int array, one per link entry
        Flat position of its jet (`global_index` of ``jetIdx``).
    row_of_jet : int array, one per jet (flat)
        The jet's row, -1 if it is not selected (`row_of_objects`).
    n_rows : int
        The number of selected jets.
    sort_key : float array, one per link entry, or None
        Within a row, entries by decreasing key (equal keys, and NaN last, in link order);
        None keeps the link order.

    Returns
    -------
    (entries, offsets) : int64 arrays
        ``entries``: the link entries of row 0, then row 1, ...; ``offsets``: ``n_rows + 1``
        list offsets into ``entries`` (a row without entries has an empty list).
    """
    row = np.asarray(row_of_jet, dtype=np.int64)[np.asarray(jet_of_link, dtype=np.int64)]
    bits = (np.zeros(0, dtype=np.uint64) if sort_key is None
            else _decreasing_order_bits(np.asarray(sort_key, dtype=np.float64)))
    return _group_by_row(row, bits, int(n_rows), sort_key is not None)


def _decreasing_order_bits(key: np.ndarray) -> np.ndarray:
    """uint64 codes that sort as the keys by decreasing value, NaN last (-0.0 and 0.0 equal)."""
    descending = np.where(np.isnan(key), np.inf, -key) + 0.0  # + 0.0: -0.0 becomes 0.0
    bits = descending.view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    # IEEE 754 as an unsigned integer: flip every bit of a negative number, only the sign of a positive
    return np.where(negative, ~bits, bits | np.uint64(1 << 63))


@numba.njit(nogil=True, cache=True)
def _group_by_row(row, bits, n_rows, by_key):
    # The order of np.lexsort((bits, row)) over the entries of a row >= 0, without sorting the
    # table: a counting sort by row (stable: link order within a row), then, where there is a
    # key, a stable sort of each row's few entries by their codes. A link table lists a jet's
    # entries together, so this is a few passes over it where lexsort made two full sorts.
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    for r in row:
        if r >= 0:
            offsets[r + 1] += 1
    offsets = np.cumsum(offsets)
    entries = np.empty(offsets[-1], dtype=np.int64)
    filled = offsets[:-1].copy()
    for i in range(len(row)):
        r = row[i]
        if r >= 0:
            entries[filled[r]] = i
            filled[r] += 1
    if by_key:
        for r in range(n_rows):
            start, stop = offsets[r], offsets[r + 1]
            if stop - start > 1:
                mine = entries[start:stop].copy()
                entries[start:stop] = mine[np.argsort(bits[mine], kind="mergesort")]
    return entries, offsets


_FEATURES = ("cand_pt", "cand_deta", "cand_dphi", "cand_logpt", "cand_loge", "cand_ptrel", "cand_erel", "cand_dr",
             "cand_charge", "cand_class", "cand_d0", "cand_d0sig", "cand_dz", "cand_dzsig", "cand_puppiw")


def constituent_features(*, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, mass: np.ndarray,
                         charge: np.ndarray, pdg_id: np.ndarray, d0: np.ndarray, d0_err: np.ndarray,
                         dz: np.ndarray, dz_err: np.ndarray, puppi_weight: np.ndarray, jet_pt: np.ndarray,
                         jet_eta: np.ndarray, jet_phi: np.ndarray, jet_energy: np.ndarray,
                         weighted: bool, candidate: np.ndarray | None = None,
                         jet: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-constituent features (flat float32 arrays, one entry per constituent).

    Each is computed in float64 and rounded once to float32 (the skim writes float32 lists).

    Parameters
    ----------
    pt, eta, phi, mass, charge, pdg_id, d0, d0_err, dz, dz_err, puppi_weight : arrays
        The constituents' ``PFCands_*`` values; with ``candidate``, those of all candidates.
    jet_pt, jet_eta, jet_phi, jet_energy : arrays
        Each constituent's jet's pt, axis and energy (the jet's as written: ``jet_pt``); with
        ``jet``, those of all jets.
    weighted : bool
        Scale the four-momentum by the PUPPI weight (PUPPI jets: AK8 in Run 2 PFNano).
    candidate, jet : int arrays, optional
        Constituent ``i`` is candidate ``candidate[i]`` of jet ``jet[i]``: the values are
        looked up as they are used, instead of first gathered into 15 arrays.

    Returns
    -------
    dict with ``cand_pt`` (x weight), ``cand_deta`` (eta - jet eta), ``cand_dphi`` (wrapped
    to (-pi, pi]), ``cand_logpt``, ``cand_loge`` (log of pt and energy, GeV), ``cand_ptrel``
    (pt / jet pt), ``cand_erel`` (energy / jet energy), ``cand_dr`` (sqrt(deta^2 + dphi^2)),
    ``cand_charge``, ``cand_class`` (`particle_class`), ``cand_d0``, ``cand_d0sig`` (d0 /
    its error), ``cand_dz``, ``cand_dzsig``, ``cand_puppiw``. A candidate without track
    details (PFNano writes -1 for the error: neutrals, and charged ones below its track
    threshold) has d0, dz and both significances 0. A weighted constituent of PUPPI weight 0
    has log pt = log E = -inf (PUPPI jets do not cluster such particles).
    """
    candidate = np.arange(len(pt)) if candidate is None else np.asarray(candidate, dtype=np.int64)
    jet = np.arange(len(jet_pt)) if jet is None else np.asarray(jet, dtype=np.int64)
    if len(candidate) != len(jet):
        raise ValueError(f"constituent_features: {len(candidate)} candidates for {len(jet)} jets")
    out = np.empty((len(_FEATURES), len(candidate)), dtype=np.float32)
    arrays = [np.ascontiguousarray(a) for a in (pt, eta, phi, mass, charge, pdg_id, d0, d0_err, dz, dz_err,
                                                  puppi_weight, jet_pt, jet_eta, jet_phi, jet_energy)]
    _features_kernel(*arrays, candidate, jet, bool(weighted), _CLASS_TABLE, out)
    return dict(zip(_FEATURES, out))


@numba.njit(nogil=True, cache=True, error_model="numpy")  # x / 0 is inf or nan, as numpy's
def _features_kernel(pt, eta, phi, mass, charge, pdg_id, d0, d0_err, dz, dz_err, puppi_weight,
                     jet_pt, jet_eta, jet_phi, jet_energy, candidate, jet, weighted, class_table, out):
    # One pass over the constituents, every value looked up once and each feature rounded once
    # (numpy needed 15 gathers and a float64 temporary per feature: 2-3x the time). The same
    # float64 operations in the same order as `processors.physics` (delta_phi's fold included).
    two_pi = 2.0 * np.pi
    for i in range(len(candidate)):
        c, j = candidate[i], jet[i]
        p = np.float64(pt[c])
        e = math.cosh(np.float64(eta[c])) * p
        m = np.float64(mass[c])
        e = math.sqrt(e * e + m * m)
        w = np.float64(puppi_weight[c])
        if weighted:
            p *= w
            e *= w
        deta = np.float64(eta[c]) - np.float64(jet_eta[j])
        dphi = np.mod(np.float64(phi[c]) - np.float64(jet_phi[j]), two_pi)
        if dphi > np.pi:
            dphi -= two_pi
        out[0, i] = p
        out[1, i] = deta
        out[2, i] = dphi
        out[3, i] = math.log(p) if p > 0 else (-np.inf if p == 0 else np.nan)
        out[4, i] = math.log(e) if e > 0 else (-np.inf if e == 0 else np.nan)
        out[5, i] = p / np.float64(jet_pt[j])
        out[6, i] = e / np.float64(jet_energy[j])
        out[7, i] = math.sqrt(deta * deta + dphi * dphi)
        out[8, i] = charge[c]
        pdg = abs(np.int64(pdg_id[c]))
        out[9, i] = class_table[pdg if pdg < len(class_table) else 0]
        for k, value, err in ((10, d0[c], d0_err[c]), (12, dz[c], dz_err[c])):
            track = err > 0
            out[k, i] = value if track else 0.0
            out[k + 1, i] = np.float64(value) / np.float64(err) if track else 0.0
        out[14, i] = w
