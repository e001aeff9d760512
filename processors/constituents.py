"""Skim stage (processors): jet constituents and secondary vertices on flat numpy columns — links, ordering, features.

PFNano stores a jet's constituents as a link table (``JetPFCands``: ``jetIdx`` into
``Jet``, ``pFCandsIdx`` into ``PFCands``, both counted from 0 within the event), and its
secondary vertices likewise (``JetSVs``: ``jetIdx``). Everything here is a plain function of
flat numpy arrays (events back to back, as `processors.flat`): `link_rows` checks a link
table's indices and groups its entries by the selected jet they belong to,
`constituent_features` computes the per-constituent features of `processors.jets`.
"""

from __future__ import annotations

import numpy as np

from analysis.core.jet_images import PARTICLE_CLASSES
from processors.physics import delta_phi

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


def _starts(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.int64)
    return np.cumsum(counts) - counts


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
    event = np.repeat(np.arange(len(link_counts)), np.asarray(link_counts, dtype=np.int64))
    local = np.asarray(local, dtype=np.int64)
    bad = (local < 0) | (local >= np.asarray(target_counts, dtype=np.int64)[event])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        where = (f"entry {first_entry + int(event[k])}" if first_entry is not None
                 else f"event {int(event[k])} of the chunk")
        raise LinkError(f"{branch} = {int(local[k])} at {where} is out of range "
                        f"(the entry has {int(target_counts[event[k]])} {target}); {int(bad.sum())} such "
                        "index(es) in the chunk")
    return _starts(target_counts)[event] + local


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
    kept = np.flatnonzero(row >= 0)
    if sort_key is None:
        order = np.argsort(row[kept], kind="stable")
    else:
        order = _order_by_row_then_decreasing_key(row[kept], np.asarray(sort_key, dtype=np.float64)[kept], n_rows)
    entries = kept[order]
    counts = np.bincount(row[entries], minlength=n_rows)
    return entries, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _decreasing_order_bits(key: np.ndarray) -> np.ndarray:
    """uint64 codes that sort as the keys by decreasing value, NaN last (-0.0 and 0.0 equal)."""
    descending = np.where(np.isnan(key), np.inf, -key) + 0.0  # + 0.0: -0.0 becomes 0.0
    bits = descending.view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    # IEEE 754 as an unsigned integer: flip every bit of a negative number, only the sign of a positive
    return np.where(negative, ~bits, bits | np.uint64(1 << 63))


def _order_by_row_then_decreasing_key(row: np.ndarray, key: np.ndarray, n_rows: int) -> np.ndarray:
    """The stable order of entries by row, then by decreasing key (NaN last): `np.lexsort`'s, faster.

    One stable sort of one uint64 per entry, the row in its high bits and the key's leading
    bits below: a link table lists a jet's entries together, so the codes come in short
    unsorted runs, which timsort orders in a fraction of lexsort's time (its two passes are
    over the whole table). Two keys of a row differing only in the dropped low bits (by less
    than 2^-(52 - bits of the row) relative) would come out tied: where a chunk has such a
    pair, lexsort decides the whole order.
    """
    bits = _decreasing_order_bits(key)
    shift = np.uint64(max(1, int(n_rows).bit_length()))
    code = (row.astype(np.uint64) << (np.uint64(64) - shift)) | (bits >> shift)
    order = np.argsort(code, kind="stable")
    sorted_code, sorted_bits = code[order], bits[order]
    if np.any((sorted_code[1:] == sorted_code[:-1]) & (sorted_bits[1:] != sorted_bits[:-1])):
        return np.lexsort((bits, row))
    return order


def constituent_features(*, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, mass: np.ndarray,
                         charge: np.ndarray, pdg_id: np.ndarray, d0: np.ndarray, d0_err: np.ndarray,
                         dz: np.ndarray, dz_err: np.ndarray, puppi_weight: np.ndarray, jet_pt: np.ndarray,
                         jet_eta: np.ndarray, jet_phi: np.ndarray, jet_energy: np.ndarray,
                         weighted: bool) -> dict[str, np.ndarray]:
    """Per-constituent features (flat float32 arrays, one entry per constituent).

    Each is computed in float64 and rounded once to float32 (the skim writes float32 lists):
    the same values as float64 arrays cast afterwards, without holding them.

    Parameters
    ----------
    pt, eta, phi, mass, charge, pdg_id, d0, d0_err, dz, dz_err, puppi_weight : arrays
        The constituent's ``PFCands_*`` values.
    jet_pt, jet_eta, jet_phi, jet_energy : arrays, one per constituent
        Its jet's pt, axis and energy (the jet's as written: ``jet_pt``).
    weighted : bool
        Scale the four-momentum by the PUPPI weight (PUPPI jets: AK8 in Run 2 PFNano).

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
    n = len(pt)

    def f32() -> np.ndarray:
        return np.empty(n, dtype=np.float32)

    pt64 = np.array(pt, dtype=np.float64)  # a copy: scaled in place below
    energy = np.cosh(np.asarray(eta, dtype=np.float64))
    energy *= pt64
    np.square(energy, out=energy)
    energy += np.square(np.asarray(mass, dtype=np.float64))
    np.sqrt(energy, out=energy)
    if weighted:
        w = np.asarray(puppi_weight, dtype=np.float64)
        pt64 *= w
        energy *= w
    deta = np.subtract(eta, jet_eta, dtype=np.float64)
    dphi = delta_phi(phi, jet_phi)
    out = {"cand_pt": pt64.astype(np.float32), "cand_deta": deta.astype(np.float32),
           "cand_dphi": dphi.astype(np.float32)}
    with np.errstate(divide="ignore"):
        out["cand_logpt"] = np.log(pt64, out=f32())
        out["cand_loge"] = np.log(energy, out=f32())
    out["cand_ptrel"] = np.divide(pt64, jet_pt, out=f32(), dtype=np.float64)
    out["cand_erel"] = np.divide(energy, jet_energy, out=f32(), dtype=np.float64)
    np.square(deta, out=deta)
    deta += np.square(dphi, out=dphi)
    out["cand_dr"] = np.sqrt(deta, out=f32())
    out["cand_charge"] = np.asarray(charge).astype(np.float32)
    out["cand_class"] = particle_class(pdg_id).astype(np.float32)
    for name, value, err in (("d0", d0, d0_err), ("dz", dz, dz_err)):
        track = np.asarray(err) > 0
        out[f"cand_{name}"] = np.zeros(n, dtype=np.float32)
        np.copyto(out[f"cand_{name}"], value, where=track, casting="same_kind")
        out[f"cand_{name}sig"] = np.zeros(n, dtype=np.float32)
        np.divide(value, err, out=out[f"cand_{name}sig"], where=track, dtype=np.float64)
    out["cand_puppiw"] = np.asarray(puppi_weight).astype(np.float32)
    return out
