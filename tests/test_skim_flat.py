"""Skim stage tests: the flat numpy selection core (processors.flat) by hand, and the processor's flat path against the awkward functions."""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pytest

from analysis.config import SelectionConfig
from processors.base import Cutflow
from processors.ditau import DiTauProcessor
from processors.flat import (FlatObjects, ObjectColumns, clean_jet_mask, first_separated_pair, leading_two,
                             object_event, pt_order)
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

