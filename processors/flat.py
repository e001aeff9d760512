"""Skim stage: the core of the object selection on flat numpy columns, shared by the processor and `processors.selection`.

A jagged collection ``var * {pt, eta, ...}`` is held here as one flat numpy array per field
(the objects of every event back to back, event 0 first) and one count per event. Each
step of the PHYSICS.md selection is then a few numpy calls per chunk, whatever the number
of events. The same steps written as jagged awkward operations cost a fixed overhead per
call that, over the dozens of calls of a chunk, took longer than reading the branches.

`processors.selection` and `processors.mutau_selection` wrap these functions for jagged
awkward arrays, so the processors (`processors.ditau`, `processors.mutau`) and the public,
unit-tested functions share one implementation; the float64 arithmetic
(`processors.physics.delta_r`) and the ordering of ties are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import awkward as ak
import numpy as np

from processors.physics import delta_r

__all__ = ["FlatObjects", "ObjectColumns", "best_cross_pair", "clean_jet_mask", "first_separated_pair",
           "leading_two", "object_event", "objects_of_events", "pt_order"]


class ObjectColumns(dict):
    """Flat numpy columns of objects, one entry per object, read as ``objects.pt`` or
    ``objects["pt"]`` like an awkward record array.

    The ID functions of `processors.profiles` are elementwise and use only that access
    and numpy-compatible operators, so they take either this or jagged awkward records.
    """

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no object field {name!r}; the fields are {', '.join(self)}") from None

    def take(self, index: np.ndarray) -> ObjectColumns:
        """Every field at the objects `index` (flat positions or a boolean mask)."""
        return ObjectColumns({f: v[index] for f, v in self.items()})


@dataclass(frozen=True)
class FlatObjects:
    """One collection of a chunk (taus or jets) as flat columns.

    Attributes
    ----------
    counts : int64 numpy array, one entry per event
        Number of objects of each event.
    columns : ObjectColumns, one entry per object
        Each field of the objects, events back to back in event order.
    """

    counts: np.ndarray
    columns: ObjectColumns

    @classmethod
    def from_jagged(cls, objects: ak.Array, fields: Sequence[str]) -> FlatObjects:
        """Flatten `fields` of ``var * {fields...}`` (one list per event)."""
        counts, _ = _counts_and_content(objects[fields[0]])
        return cls(counts, ObjectColumns({f: _counts_and_content(objects[f])[1] for f in fields}))


def _counts_and_content(values: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """Counts per event and flat content of ``var * number``.

    A NanoAOD branch is a list-offset array over a numpy buffer: its offsets and buffer are
    read directly (one array access instead of the several awkward calls of `ak.flatten`,
    which cost more than reading the branch). Any other layout goes through awkward.
    """
    layout = ak.to_layout(values)
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(layout.content, ak.contents.NumpyArray):
        offsets = np.asarray(layout.offsets.data, dtype=np.int64)
        return np.diff(offsets), np.asarray(layout.content.data)[offsets[0]:offsets[-1]]
    return (ak.to_numpy(ak.num(values, axis=1)).astype(np.int64),
            ak.to_numpy(ak.flatten(values, axis=1)))


def object_event(counts: np.ndarray) -> np.ndarray:
    """The event (0-based position in the chunk) of each object, from the counts per event.

    ``object_event([2, 0, 1]) == [0, 0, 2]``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    return np.repeat(np.arange(len(counts)), counts)


def objects_of_events(counts: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Flat positions of the objects of `events` (increasing event positions), in order.

    ``objects_of_events([2, 0, 1], [0, 2]) == [0, 1, 2]``; ``objects_of_events([2, 0, 1], [2]) == [2]``.
    """
    kept = np.zeros(len(counts), dtype=bool)
    kept[events] = True
    return np.flatnonzero(kept[object_event(counts)])


def pt_order(event: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """Permutation ordering objects by event, then by decreasing pt; equal pts keep input order.

    Parameters
    ----------
    event : int array, one per object
        `object_event` of the objects (any order).
    pt : float array, one per object (no NaN: the selection keeps only pt > pt_min)

    The order of `processors.selection.sort_by_pt` (a stable descending argsort within each
    event): ``np.lexsort`` is stable, and negating a float is exact.
    """
    event, pt = np.asarray(event), np.asarray(pt)
    # NanoAOD stores objects by event and decreasing pt already: then the stable order is the
    # identity, found in one pass instead of a sort (NaN fails the test and is sorted).
    if np.all((event[1:] > event[:-1]) | ((event[1:] == event[:-1]) & (pt[1:] <= pt[:-1]))):
        return np.arange(len(pt))
    return np.lexsort((-pt, event))


def first_separated_pair(counts: np.ndarray, eta: np.ndarray, phi: np.ndarray, *,
                         dr_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Per event, the first pair of its objects separated by Delta R > dr_min.

    Pairs are taken in the order (0,1), (0,2), ..., (1,2), ... of the objects' positions in
    their event; with objects sorted by decreasing pt that is the PHYSICS.md tau pair (the
    two leading taus, or if they overlap the leading one with the next that does not).

    Parameters
    ----------
    counts : int array, one per event
    eta, phi : float arrays, one per object (flat, events back to back)
    dr_min : float
        Minimal Delta R (strict) between the two members.

    Returns
    -------
    (first, second) : int64 arrays, one per event
        Positions *within the event* of the pair's members (first < second); -1 for both
        where the event has fewer than two objects or every pair overlaps.
    """
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    first = np.full(len(counts), -1, dtype=np.int64)
    second = np.full(len(counts), -1, dtype=np.int64)
    searching = counts >= 2
    largest = int(counts.max()) if len(counts) else 0
    # One numpy pass per pair of positions (a handful: events hold few taus), in pair
    # order, over the events still without a pair that have that many objects.
    for a in range(largest - 1):
        for b in range(a + 1, largest):
            events = np.flatnonzero(searching & (counts > b))
            if not len(events):
                continue
            ia, ib = starts[events] + a, starts[events] + b
            found = events[delta_r(eta[ia], phi[ia], eta[ib], phi[ib]) > dr_min]
            first[found], second[found] = a, b
            searching[found] = False
    return first, second


def clean_jet_mask(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, tau_eta: Sequence[np.ndarray],
                   tau_phi: Sequence[np.ndarray], *, pt_min: float, abs_eta_max: float,
                   dr_min: float, id_mask: np.ndarray | None = None) -> np.ndarray:
    """Which jets are good: pt > pt_min, |eta| < abs_eta_max, `id_mask`, Delta R > dr_min to every tau.

    Parameters
    ----------
    pt, eta, phi : float arrays, one per jet (flat)
    tau_eta, tau_phi : sequences of float arrays, one array per tau (tau1, tau2), each with
        one entry per jet: the coordinates of that jet's event's tau. NaN (no tau) fails
        every comparison, so the jets of an event without a tau pair are not good.
    id_mask : bool array, one per jet, or None

    Returns
    -------
    bool numpy array, one per jet.
    """
    mask = (pt > pt_min) & (np.abs(eta) < abs_eta_max)
    if id_mask is not None:
        mask &= id_mask
    for t_eta, t_phi in zip(tau_eta, tau_phi):
        # Delta R (the costly part) only for the jets still good.
        alive = np.flatnonzero(mask)
        mask[alive] = delta_r(eta[alive], phi[alive], t_eta[alive], t_phi[alive]) > dr_min
    return mask


def leading_two(counts: np.ndarray, fields: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Fields of the first and second object of each event, as float64, NaN where missing.

    Parameters
    ----------
    counts : int array, one per event
    fields : dict of str -> array, one entry per object (flat, ordered within each event)

    Returns
    -------
    (first, second) : dicts of str -> float64 numpy array, one entry per event.
    """
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    out: tuple[dict, dict] = ({}, {})
    for rank, values in enumerate(out):
        present = counts > rank
        at = starts[present] + rank
        for field, content in fields.items():
            column = np.full(len(counts), np.nan)
            column[present] = content[at]
            values[field] = column
    return out


def best_cross_pair(counts_a: np.ndarray, counts_b: np.ndarray, good_a: np.ndarray, good_b: np.ndarray,
                    eta_a: np.ndarray, phi_a: np.ndarray, eta_b: np.ndarray, phi_b: np.ndarray,
                    score_a: np.ndarray, score_b: np.ndarray, *, dr_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Per event, the pair of one object of collection a and one of collection b that skim.cxx's
    ``build_pair`` chooses (the mu-tau_h muon and tau).

    Of the pairs (a good a, a good b) at Delta R > dr_min, the a of highest `score_a` (the
    muon's pt), then among that a's pairs the b of lowest `score_b` (the tau's isolation).

    Parameters
    ----------
    counts_a, counts_b : int arrays, one per event
    good_a, eta_a, phi_a, score_a : arrays, one per object of a (flat, events back to back)
    good_b, eta_b, phi_b, score_b : the same for b
    dr_min : float
        Minimal Delta R (strict) between the two members.

    Returns
    -------
    (a, b) : int64 arrays, one per event
        Positions *within the event* of the pair's members; -1 for both where no pair is valid.
        Equal scores keep the first pair in a-major order (a0 b0, a0 b1, ..., a1 b0, ...), as
        skim.cxx's strict comparisons do. Scores are compared as awkward's ``argmax`` /
        ``argmin`` over every pair of the event compare them, where invalid pairs score -inf /
        +inf (the jagged version of this choice, kept for its NaN cases: a NaN score on the
        event's first pair wins, any other NaN loses).
    """
    counts_a, counts_b = np.asarray(counts_a, dtype=np.int64), np.asarray(counts_b, dtype=np.int64)
    n_events = len(counts_a)
    n_pairs = counts_a * counts_b
    pair_event = object_event(n_pairs)
    pair_start = np.cumsum(n_pairs) - n_pairs
    within = np.arange(len(pair_event)) - pair_start[pair_event]
    pos_a, pos_b = np.divmod(within, counts_b[pair_event])
    at_a = (np.cumsum(counts_a) - counts_a)[pair_event] + pos_a
    at_b = (np.cumsum(counts_b) - counts_b)[pair_event] + pos_b
    valid = np.asarray(good_a)[at_a] & np.asarray(good_b)[at_b]
    # Delta R (the costly part) only for the pairs of good objects.
    alive = np.flatnonzero(valid)
    valid[alive] = delta_r(eta_a[at_a[alive]], phi_a[at_a[alive]], eta_b[at_b[alive]], phi_b[at_b[alive]]) > dr_min
    has_pair = np.bincount(pair_event[valid], minlength=n_events) > 0
    best = _first_extreme(np.where(valid, score_a[at_a], -np.inf), pair_event, pair_start, n_pairs, np.fmax)
    chosen_a = np.full(n_events, -1, dtype=np.int64)
    chosen_a[n_pairs > 0] = pos_a[best]
    of_chosen = valid & (pos_a == chosen_a[pair_event])
    best = _first_extreme(np.where(of_chosen, score_b[at_b], np.inf), pair_event, pair_start, n_pairs, np.fmin)
    chosen_b = np.full(n_events, -1, dtype=np.int64)
    chosen_b[n_pairs > 0] = pos_b[best]
    return np.where(has_pair, chosen_a, -1), np.where(has_pair, chosen_b, -1)


def _first_extreme(values: np.ndarray, event: np.ndarray, start: np.ndarray, size: np.ndarray,
                   extreme: np.ufunc) -> np.ndarray:
    """Per event with values, the flat position of its first extreme value, as awkward's
    ``argmax`` (`extreme` = ``np.fmax``) or ``argmin`` (``np.fmin``) on each event's list.

    Awkward keeps the first value and takes a later one only if it compares strictly greater
    (smaller): NaN in first place stays, elsewhere it is never taken. fmax / fmin skip NaN.
    """
    present = size > 0
    first = start[present]
    if not len(first):
        return first
    top = np.full(len(size), np.nan, dtype=values.dtype)
    top[present] = extreme.reduceat(values, first)
    hits = np.flatnonzero(values == top[event])
    hit_event = event[hits]
    leading = np.ones(len(hits), dtype=bool)
    leading[1:] = hit_event[1:] != hit_event[:-1]
    best = start.copy()
    best[hit_event[leading]] = hits[leading]
    return np.where(np.isnan(values[start[present]]), first, best[present])
