"""Skim stage (processors): the generator truth of an event, the targets of a regression.

`gen_truth` reads an event's generator records (GenPart) the way real Run 2/3 NanoAOD
writes them, and the generated samples too (analysis.generate.genpart):

- the boson is the first record (in GenPart order) with ``isLastCopy`` (bit 13 of
  ``statusFlags``) and pdgId 25 (H), or, in an event without one, 23 (Z); ``gen_pt_h`` is
  its pt, NaN in an event with neither;
- the tau pair is the leading-pt tau- (pdgId 15) and the leading-pt tau+ (-15) among the
  last-copy taus whose chain of mothers (``genPartIdxMother``) reaches the boson: the taus
  the boson decayed to, after their final-state radiation, i.e. what their visible and
  invisible decay products add up to. ``gen_m_tautau`` is their invariant mass, with the
  PDG tau mass (NanoAOD stores 0 for it); NaN when the event has no boson or no tau pair
  from it (Z -> ee, mumu; W+jets, ttbar: no H or Z).

So for H -> tautau and Z -> tautau ``gen_m_tautau`` is the boson's mass up to the taus'
radiation (exactly it in the generated samples), and ``gen_pt_h`` the boson's pt; Z -> ll
has ``gen_pt_h`` but no ``gen_m_tautau``; W+jets and ttbar have neither. The mother chain
is followed whatever the order of the records (real NanoAOD puts mothers first, the
generated samples not always), at most as many steps as the event has records, so a
malformed cycle ends too. `truth_columns` gives the two columns for a processor: NaN for
real data, and for simulation whose files lack any of `TRUTH_BRANCHES` (the 2012 outreach
files have no mother indices).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import awkward as ak
import numpy as np

from analysis.core.features import TRUTH_COLUMNS

__all__ = ["TRUTH_BRANCHES", "TRUTH_COLUMNS", "TRUTH_INPUT_BRANCHES", "gen_truth", "truth_branches",
           "truth_columns"]

_FIELDS = ("pt", "eta", "phi", "mass", "pdgId", "statusFlags", "genPartIdxMother")
# The GenPart branches `gen_truth` reads.
TRUTH_BRANCHES = tuple(f"GenPart_{f}" for f in _FIELDS)
# What a processor's input_branches adds for them (NanoEvents needs the counter).
TRUTH_INPUT_BRANCHES = ("nGenPart", *TRUTH_BRANCHES)

_IS_LAST_COPY = 1 << 13  # GenStatusFlags::isLastCopy
_BOSONS = (25, 23)  # H, else Z
_PDG_TAU = 15
_MASS_TAU = 1.77686  # GeV, PDG


def _flat(values: Any, dtype) -> np.ndarray:
    return np.asarray(ak.to_numpy(ak.flatten(values, axis=1)), dtype=dtype)


def gen_truth(genpart: Any) -> dict[str, np.ndarray]:
    """``gen_m_tautau`` and ``gen_pt_h`` of each event (float64, NaN where undefined; module docstring).

    Parameters
    ----------
    genpart : awkward ``n * var * {pt, eta, phi, mass, pdgId, statusFlags, genPartIdxMother}``
        One event's generator records per entry (``events.GenPart``), or a mapping of those
        field names to jagged arrays. ``genPartIdxMother`` is the index in the event (-1: none).
    """
    counts = np.asarray(ak.to_numpy(ak.num(genpart["pdgId"], axis=1)), dtype=np.int64)
    n = len(counts)
    starts = np.cumsum(counts) - counts
    event = np.repeat(np.arange(n), counts)
    pdg = _flat(genpart["pdgId"], np.int64)
    last = (_flat(genpart["statusFlags"], np.int64) & _IS_LAST_COPY) != 0
    mother = _flat(genpart["genPartIdxMother"], np.int64)
    # The mother's row in the flat arrays; -1 for none (or an index outside the event).
    parent = np.where((mother >= 0) & (mother < counts[event]), starts[event] + mother, -1)
    pt = _flat(genpart["pt"], np.float64)

    boson = np.full(n, -1, dtype=np.int64)
    for code in _BOSONS:
        rows = np.flatnonzero(last & (pdg == code))
        events, first = np.unique(event[rows], return_index=True)  # rows ascend: the first per event
        empty = boson[events] < 0
        boson[events[empty]] = rows[first[empty]]
    gen_pt_h = np.full(n, np.nan)
    gen_pt_h[boson >= 0] = pt[boson[boson >= 0]]

    # The boson's decay: the taus whose mother is its last copy (the copy that decays).
    taus = np.flatnonzero((np.abs(pdg) == _PDG_TAU) & (boson[event] >= 0) & (parent == boson[event]))
    eta, phi = _flat(genpart["eta"], np.float64), _flat(genpart["phi"], np.float64)
    lead = {}
    for sign in (1, -1):  # tau- (pdgId 15), tau+ (-15)
        rows = taus[pdg[taus] == sign * _PDG_TAU]
        rows = rows[np.lexsort((-pt[rows], event[rows]))]  # by event, then pt downwards
        events, first = np.unique(event[rows], return_index=True)
        lead[sign] = np.full(n, -1, dtype=np.int64)
        lead[sign][events] = rows[first]
    both = (lead[1] >= 0) & (lead[-1] >= 0)
    gen_m_tautau = np.full(n, np.nan)
    minus, plus = lead[1][both], lead[-1][both]
    e, px, py, pz = _four_vector(pt[minus], eta[minus], phi[minus]) + _four_vector(pt[plus], eta[plus], phi[plus])
    gen_m_tautau[both] = np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0))
    return {"gen_m_tautau": gen_m_tautau, "gen_pt_h": gen_pt_h}


def _four_vector(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """(E, px, py, pz) of taus, float64, with the PDG tau mass."""
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return np.stack([np.sqrt(px * px + py * py + pz * pz + _MASS_TAU**2), px, py, pz])


def truth_branches(present: Iterable[str], *, is_mc: bool) -> list[str]:
    """The branches to read for the truth columns: `TRUTH_BRANCHES` for simulation that has them all, else none."""
    names = set(present)
    return list(TRUTH_BRANCHES) if is_mc and all(b in names for b in TRUTH_BRANCHES) else []


def truth_columns(arrays: Mapping[str, Any], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The truth columns (`TRUTH_COLUMNS`) of the events ``rows`` of a chunk.

    ``arrays`` maps branch names to the chunk's arrays (what the processor read, with the
    `truth_branches`); without all of `TRUTH_BRANCHES` (data, files without them) the
    columns are NaN.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if not all(b in arrays for b in TRUTH_BRANCHES):
        return {f.name: np.full(len(rows), np.nan) for f in TRUTH_COLUMNS}
    return gen_truth({f: arrays[f"GenPart_{f}"][rows] for f in _FIELDS})
