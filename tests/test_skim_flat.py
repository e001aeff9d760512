"""Skim stage tests: the flat numpy selection core (processors.flat) by hand, and the processors' flat paths against jagged awkward selections."""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pytest

from analysis.config import SelectionConfig
from processors.base import Cutflow
from processors.ditau import DiTauProcessor
from processors.flat import (FlatObjects, ObjectColumns, best_cross_pair, clean_jet_mask, first_separated_pair,
                             leading_two, object_event, objects_of_events, pt_order)
from processors.mutau_selection import select_mutau_pair
from processors.physics import delta_r
from processors.profiles import COMMON_BRANCHES, detect_profile
from processors.selection import good_tau_mask, select_jets, select_tau_pair, sort_by_pt


def test_object_event_repeats_each_event_by_its_count():
    assert object_event(np.array([2, 0, 1, 3])).tolist() == [0, 0, 2, 3, 3, 3]
    assert object_event(np.array([], dtype=np.int64)).tolist() == []


@pytest.mark.parametrize(("event", "pt", "expected"), [
    ([0, 0, 0, 1, 1], [50, 40, 40, 30, 20], [0, 1, 2, 3, 4]),        # already ordered: identity
    ([0, 0, 0, 1, 1], [30, 50, 30, 20, 30], [1, 0, 2, 4, 3]),        # ties keep input order
    ([1, 0, 1, 0], [10, 20, 30, 40], [3, 1, 2, 0]),                   # events interleaved
])
def test_pt_order_by_event_then_decreasing_pt(event, pt, expected):
    assert pt_order(np.array(event), np.array(pt, dtype=np.float32)).tolist() == expected


def test_pt_order_equals_stable_awkward_sort_on_random_ties():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 6, size=300)
    pt = rng.integers(20, 26, size=counts.sum()).astype(np.float32)  # many equal pts
    jagged = ak.unflatten(pt, counts)
    expected = ak.flatten(ak.local_index(jagged)[ak.argsort(jagged, ascending=False, stable=True)]
                          + (np.cumsum(counts) - counts))
    assert pt_order(object_event(counts), pt).tolist() == expected.tolist()


def test_first_separated_pair_positions_by_hand():
    # Five events of objects (eta, phi), positions in pair order (0,1), (0,2), (1,2):
    events = [[(0, 0), (0, 3), (0, 0.2)],      # (0,1) separated
              [(0, 0), (0, 0.3), (0, 2.0)],    # (0,1) overlaps (dR 0.3): (0,2)
              [(0, 0), (0, 0.3), (0, -0.3)],   # 0 overlaps both: (1,2) at dR 0.6
              [(0, 0), (0, 0.1), (0, 0.2)],    # all overlap: none
              [(0, 0)], []]                    # too few: none
    counts = np.array([len(e) for e in events])
    flat = np.array([o for e in events for o in e], dtype=np.float32).reshape(-1, 2)
    first, second = first_separated_pair(counts, flat[:, 0], flat[:, 1], dr_min=0.5)
    assert list(zip(first.tolist(), second.tolist())) == [(0, 1), (0, 2), (1, 2), (-1, -1), (-1, -1), (-1, -1)]


def test_first_separated_pair_threshold_is_strict():
    eta, phi = np.array([0.0, 0.5]), np.array([0.0, 0.0])
    assert first_separated_pair(np.array([2]), eta, phi, dr_min=0.5)[0].tolist() == [-1]
    assert first_separated_pair(np.array([2]), eta, phi, dr_min=0.49)[0].tolist() == [0]


def test_clean_jet_mask_by_hand():
    pt = np.array([35, 80, 30, 45, 40, 90, 60], dtype=np.float32)
    eta = np.array([0, 0, 1, 4.8, 1, -1, 0], dtype=np.float32)
    phi = np.array([0.2, 2.0, -2, -2, -2, -1, -1], dtype=np.float32)
    ids = np.array([True] * 6 + [False])
    taus = ([np.zeros(7)], [np.zeros(7)])                       # tau at (0, 0) only
    mask = clean_jet_mask(pt, eta, phi, *taus, pt_min=30.0, abs_eta_max=4.7, dr_min=0.5, id_mask=ids)
    # dR 0.2 from the tau; good; pt not above 30; |eta| 4.8; good; good; fails the ID.
    assert mask.tolist() == [False, True, False, False, True, True, False]
    no_tau = ([np.full(7, np.nan)], [np.full(7, np.nan)])      # an event without a tau pair
    assert not clean_jet_mask(pt, eta, phi, *no_tau, pt_min=30.0, abs_eta_max=4.7, dr_min=0.5).any()


def test_leading_two_fills_missing_with_nan():
    first, second = leading_two(np.array([2, 1, 0]), {"pt": np.array([50, 40, 30], dtype=np.float32)})
    assert first["pt"][:2].tolist() == [50.0, 30.0] and math.isnan(first["pt"][2])
    assert second["pt"][0] == 40.0 and np.isnan(second["pt"][1:]).all()
    assert first["pt"].dtype == np.float64


def test_object_columns_read_like_records_and_name_missing_fields():
    cols = ObjectColumns(pt=np.array([1.0, 2.0]), eta=np.array([0.0, 1.0]))
    assert cols.pt is cols["pt"] and cols.take(np.array([1])).eta.tolist() == [1.0]
    with pytest.raises(AttributeError, match="no object field 'phi'; the fields are pt, eta"):
        _ = cols.phi


# The processor's flat path against the public awkward functions, on random events with
# ties, overlaps, failing IDs and too few objects.

_OUTREACH = detect_profile(
    set(COMMON_BRANCHES) | {"MET_pt", "MET_phi", "Tau_idDecayMode", "Tau_relIso_all", "Jet_puId", "Jet_btag"}
    | {f"Tau_idIso{w}" for w in ("VLoose", "Loose", "Medium", "Tight")}
    | {f"Tau_idAnti{k}{w}" for k in ("Ele", "Mu") for w in ("Loose", "Medium", "Tight")})


def _random_chunk(n: int, seed: int) -> tuple[ak.Array, ak.Array]:
    rng = np.random.default_rng(seed)
    n_tau, n_jet = rng.integers(0, 6, size=n), rng.integers(0, 7, size=n)

    def column(size, values):
        return rng.choice(np.asarray(values), size=size)

    t, j = n_tau.sum(), n_jet.sum()
    taus = {"pt": column(t, np.float32([18, 22, 22, 30, 45, 45])),
            "eta": column(t, np.float32([-2.4, -1, 0, 0.2, 1, 2.2])),
            "phi": column(t, np.float32([-3.1, -0.2, 0, 0.3, 3.1])),
            "mass": column(t, np.float32([0.2, 1.1])), "charge": column(t, np.int32([-1, 0, 1, 1])),
            "decayMode": column(t, np.int32([0, 1, 10])), "relIso_all": column(t, np.float32([0.05, 0.3])),
            "idDecayMode": column(t, [True, True, False])}
    for wp in ("VLoose", "Loose", "Medium", "Tight"):
        taus[f"idIso{wp}"] = column(t, [True] * 9 + [False])
    for kind in ("Ele", "Mu"):
        for wp in ("Loose", "Medium", "Tight"):
            taus[f"idAnti{kind}{wp}"] = column(t, [True] * 9 + [False])
    jets = {"pt": column(j, np.float32([25, 31, 31, 50, 80])),
            "eta": column(j, np.float32([-4.8, -2, 0, 0.1, 3])),
            "phi": column(j, np.float32([-3.0, -0.1, 0.1, 0.3, 3.0])),
            "mass": column(j, np.float32([5, 10])), "puId": column(j, [True, True, False]),
            "btag": column(j, np.float32([0.1, 0.9]))}
    return (ak.unflatten(ak.zip(taus), n_tau), ak.unflatten(ak.zip(jets), n_jet))


def _expected(taus: ak.Array, jets: ak.Array, sel: SelectionConfig) -> dict[str, list]:
    """The selection written with the jagged functions of processors.selection."""
    good = good_tau_mask(taus, pt_min=sel.tau_pt_min, abs_eta_max=sel.tau_abs_eta_max,
                         id_mask=_OUTREACH.tau_id_mask(taus, sel))
    good_taus = sort_by_pt(taus[good])
    tau1, tau2 = select_tau_pair(good_taus, dr_min=sel.tau_pair_dr_min)
    good_jets = select_jets(jets, tau1, tau2, pt_min=sel.jet_pt_min, abs_eta_max=sel.jet_abs_eta_max,
                            dr_min=sel.jet_tau_dr_min, id_mask=_OUTREACH.jet_id_mask(jets, sel))
    rows = ak.to_numpy(~ak.is_none(tau1) & (ak.num(good_jets) >= sel.min_jets))
    padded = ak.pad_none(good_jets[rows], 2, axis=1)
    out = {"ntaus": ak.num(good_taus)[rows].tolist(), "njets": ak.num(good_jets)[rows].tolist()}
    for name, objects in (("tau1", tau1[rows]), ("tau2", tau2[rows]), ("jet1", padded[:, 0]), ("jet2", padded[:, 1])):
        for field in ("pt", "eta", "phi"):
            out[f"{name}_{field}"] = ak.to_numpy(ak.fill_none(objects[field], np.nan)).astype(np.float64).tolist()
    out["tau1_iso"] = ak.to_numpy(tau1[rows].relIso_all).astype(np.float64).tolist()
    out["jet1_btag"] = ak.to_numpy(ak.fill_none(padded[:, 0].btag, np.nan)).astype(np.float64).tolist()
    out["event"] = np.flatnonzero(rows).tolist()
    return out


@pytest.mark.parametrize(("seed", "min_jets"), [(1, 2), (2, 0), (3, 1)])
def test_processor_flat_path_equals_awkward_selection(seed, min_jets, tmp_path):
    sel = SelectionConfig(min_jets=min_jets)
    n = 2000
    taus, jets = _random_chunk(n, seed)
    inputs = {"genWeight": np.ones(n, np.float32), "hlt": {}, "event": np.arange(n), "run": np.ones(n),
              "luminosityBlock": np.ones(n), "npv": np.ones(n), "met_pt": np.full(n, 20.0, np.float32),
              "met_phi": np.zeros(n, np.float32),
              "taus": FlatObjects.from_jagged(taus, taus.fields), "jets": FlatObjects.from_jagged(jets, jets.fields)}
    proc = DiTauProcessor(selection=sel, lumi_pb=1.0, out_dir=str(tmp_path))
    cutflow = Cutflow(np.ones(n))
    columns = proc._select(inputs, _OUTREACH, cutflow, [])
    columns["event"] = cutflow.selected  # the base adds the identity columns of the selected events
    expected = _expected(taus, jets, sel)
    assert len(expected["event"]) > 50, "too few selected events for the comparison to mean much"
    assert cutflow.steps["good_jets"]["events"] == len(expected["event"])
    for name, values in expected.items():
        # NaN compares equal to NaN here: a missing jet must be missing in both.
        np.testing.assert_array_equal(np.asarray(columns[name], dtype=np.float64), values, err_msg=name)



def test_objects_of_events_keeps_their_objects_in_order():
    assert objects_of_events(np.array([2, 0, 1, 3]), np.array([0, 3])).tolist() == [0, 1, 3, 4, 5]
    assert objects_of_events(np.array([2, 0, 1]), np.array([], dtype=np.int64)).tolist() == []


def test_best_cross_pair_by_hand():
    # (eta, phi, score) of a (muons: pt) and b (taus: isolation), one event per row.
    events = [([(0, 0, 40), (0, 2, 30)], [(0, 0.2, 0.1), (0, 2.1, 0.05)]),  # a0 overlaps b0: a0 with b1
              ([(0, 0, 30), (0, 3, 30)], [(0, 1.5, 0.2), (0, 1.5, 0.2)]),   # ties: a0, then b0
              ([(0, 0, 30)], [(0, 0.4, 0.1)]),                               # overlap only: none
              ([], [(0, 2, 0.1)]), ([(0, 0, 30)], [])]                       # one side empty: none
    a = [o for e, _ in events for o in e]
    b = [o for _, e in events for o in e]
    counts_a, counts_b = (np.array([len(e[i]) for e in events]) for i in (0, 1))
    a, b = np.array(a, dtype=np.float64).reshape(-1, 3), np.array(b, dtype=np.float64).reshape(-1, 3)
    first, second = best_cross_pair(counts_a, counts_b, np.ones(len(a), bool), np.ones(len(b), bool), a[:, 0],
                                    a[:, 1], b[:, 0], b[:, 1], a[:, 2], b[:, 2], dr_min=0.5)
    assert list(zip(first.tolist(), second.tolist())) == [(0, 1), (0, 0), (-1, -1), (-1, -1), (-1, -1)]


def _jagged_mutau_pair(muons, taus, good_muon, good_tau, tau_iso, dr_min):
    """The pair choice written with jagged awkward calls (the processor's before processors.flat)."""
    pairs = ak.argcartesian([muons.pt, taus.pt], axis=1)
    i_mu, i_tau = pairs["0"], pairs["1"]
    valid = (good_muon[i_mu] & good_tau[i_tau]
             & (delta_r(muons.eta[i_mu], muons.phi[i_mu], taus.eta[i_tau], taus.phi[i_tau]) > dr_min))
    has_pair = ak.to_numpy(ak.any(valid, axis=1))
    best = ak.argmax(ak.where(valid, muons.pt[i_mu], -np.inf), axis=1, keepdims=True)
    muon = ak.fill_none(ak.firsts(i_mu[best]), -1)
    best_tau = ak.argmin(ak.where(valid & (i_mu == muon), tau_iso[i_tau], np.inf), axis=1, keepdims=True)
    tau = ak.fill_none(ak.firsts(i_tau[best_tau]), -1)
    return tuple(np.where(has_pair, ak.to_numpy(x), -1) for x in (muon, tau))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_mutau_pair_equals_the_jagged_choice_with_ties_and_nan(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    n_mu, n_tau = rng.integers(0, 4, size=n), rng.integers(0, 5, size=n)

    def objects(counts, **values):
        return ak.unflatten(ak.zip({k: rng.choice(np.asarray(v), size=counts.sum()) for k, v in values.items()}),
                            counts)

    angles = np.float32([-3.1, -0.2, 0, 0.3, 3.1])
    muons = objects(n_mu, pt=np.float32([15, 25, 25, 40]), eta=angles, phi=angles, good=[True, True, False])
    # Equal isolations, and NaN (a tau whose isolation sum is not a number) first or later in its event.
    taus = objects(n_tau, pt=np.float32([30]), eta=angles, phi=angles, iso=np.float32([0.1, 0.1, 0.3, np.nan]),
                   good=[True, True, False])
    muons = ak.with_field(muons, muons.good & (muons.pt > 17), "good")
    expected = _jagged_mutau_pair(muons, taus, muons.good, taus.good, taus.iso, 0.5)
    got = select_mutau_pair(muons, taus, muons.good, taus.good, taus.iso, dr_min=0.5)
    assert (expected[0] >= 0).sum() > 500
    for want, have in zip(expected, got):
        assert have.dtype == np.int64 and have.tolist() == want.tolist()
