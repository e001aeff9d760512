"""Skim stage tests: kinematic functions and derived features on hand-built arrays, answers by hand."""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pytest

from processors.features import FEATURES, ditau_features
from processors.physics import delta_phi, delta_r, pair_mass_pt, transverse_mass, vector_sum_pt


@pytest.mark.parametrize(("phi1", "phi2", "expected"), [
    (3.0, -3.0, 6.0 - 2 * math.pi),      # across the +-pi seam: -0.2832, not 6.0
    (-3.0, 3.0, 2 * math.pi - 6.0),      # the other way round: +0.2832
    (math.pi, -math.pi, 0.0),            # the same direction
    (-math.pi / 2, math.pi / 2, math.pi),  # exactly opposite: the upper edge pi, never -pi
    (math.pi / 2, -math.pi / 2, math.pi),
    (0.5, 0.25, 0.25),
])
def test_delta_phi_wraps_into_half_open_interval(phi1, phi2, expected):
    assert delta_phi(phi1, phi2) == pytest.approx(expected, abs=1e-12)
    assert -math.pi < delta_phi(phi1, phi2) <= math.pi


def test_delta_phi_broadcasts_jagged_against_flat():
    jets_phi = ak.Array([[3.0, 0.0], [], [-3.0]])
    tau_phi = ak.Array([-3.0, 1.0, 3.0])
    out = delta_phi(jets_phi, tau_phi)
    assert ak.num(out).tolist() == [2, 0, 1]
    assert ak.flatten(out).to_numpy() == pytest.approx([6 - 2 * math.pi, 3.0, 2 * math.pi - 6])


def test_delta_r():
    # 0.3-0.4-0.5 triangle, and a pair separated only across the phi seam.
    assert delta_r(0.3, 0.0, 0.0, 0.4) == pytest.approx(0.5)
    assert delta_r(1.0, 3.1, 1.0, -3.1) == pytest.approx(2 * math.pi - 6.2)


@pytest.mark.parametrize(("dphi", "expected"), [
    (math.pi, math.sqrt(2 * 40 * 30 * 2)),      # back to back: 69.28
    (math.pi / 2, math.sqrt(2 * 40 * 30 * 1)),  # perpendicular: 48.99
    (0.0, 0.0),                                  # collinear: no transverse mass
])
def test_transverse_mass(dphi, expected):
    assert transverse_mass(40.0, 0.3, 30.0, 0.3 + dphi) == pytest.approx(expected)


def _objects(rows):
    return ak.Array([None if r is None else dict(zip(("pt", "eta", "phi", "mass"), r)) for r in rows])


def test_pair_mass_pt_hand_worked():
    first = _objects([(10, 0, 0, 0), (3, 0, 0, 0), (5, 0.7, 1.0, 1.0), (1, 1, 0.5, 0), None])
    second = _objects([(10, 0, math.pi, 0), (4, 0, math.pi / 2, 0), (5, 0.7, 1.0, 1.0),
                       (1, -1, 0.5, 0), (1, 0, 0, 0)])
    mass, pt = pair_mass_pt(first, second)
    # back-to-back massless: m = 2 x 10, pt 0; perpendicular 3 and 4: m^2 = 2*3*4 = 24, pt 5;
    # identical massive objects: m = 2 x 1 (E1 E2 - p1.p2 = m^2), pt 10;
    # massless at eta +-1: m^2 = 2 pt1 pt2 (cosh 2 - cos 0), pt 2.
    assert mass.tolist()[:4] == pytest.approx([20.0, math.sqrt(24), 2.0, math.sqrt(2 * (math.cosh(2) - 1))])
    assert pt.tolist()[:4] == pytest.approx([0.0, 5.0, 10.0, 2.0], abs=1e-9)
    assert np.isnan(mass[4]) and np.isnan(pt[4])  # a missing object


def test_pair_mass_of_collinear_massless_pair_is_zero_not_nan():
    a = _objects([(50, 1.3, 0.2, 0)])
    mass, _ = pair_mass_pt(a, a)
    assert mass.tolist() == [0.0]


def test_vector_sum_pt_cancels():
    # taus (30, 0) + (0, 40) = (30, 40); a MET of 50 in the opposite direction cancels it.
    met_phi = math.atan2(-40, -30)
    pts = [ak.Array([30.0]), ak.Array([40.0]), ak.Array([50.0])]
    phis = [ak.Array([0.0]), ak.Array([math.pi / 2]), ak.Array([met_phi])]
    assert vector_sum_pt(pts, phis).tolist() == pytest.approx([0.0], abs=1e-9)
    assert vector_sum_pt(pts[:2], phis[:2]).tolist() == pytest.approx([50.0])


def test_pair_mass_pt_takes_flat_numpy_mappings():
    a = {"pt": np.array([3.0]), "eta": np.array([0.0]), "phi": np.array([0.0]), "mass": np.array([0.0])}
    b = {"pt": np.array([4.0]), "eta": np.array([0.0]), "phi": np.array([math.pi / 2]), "mass": np.array([0.0])}
    mass, pt = pair_mass_pt(a, b)
    assert mass.tolist() == pytest.approx([math.sqrt(24)]) and pt.tolist() == pytest.approx([5.0])


def test_ditau_features_hand_worked_event_and_missing_jet():
    tau1 = _objects([(40, 0, 0, 0), (40, 0, 0, 0)])
    tau2 = _objects([(30, 0, math.pi / 2, 0), (30, 0, math.pi / 2, 0)])
    jet1 = _objects([(60, 2.5, 0, 0), (60, 2.5, 0, 0)])
    jet2 = _objects([(60, -1.0, 0, 0), None])
    met_pt = ak.Array([50.0, 50.0])
    met_phi = ak.Array([math.pi, math.pi])
    out = ditau_features(tau1, tau2, jet1, jet2, met_pt, met_phi)
    assert tuple(out) == FEATURES
    assert out["m_vis"][0] == pytest.approx(math.sqrt(2 * 40 * 30))  # perpendicular massless
    assert out["pt_vis"][0] == pytest.approx(50.0)
    assert out["dr_tautau"][0] == pytest.approx(math.pi / 2)
    assert out["mt_tau1"][0] == pytest.approx(math.sqrt(2 * 40 * 50 * 2))  # back to back with MET
    assert out["mt_tau2"][0] == pytest.approx(math.sqrt(2 * 30 * 50 * 1))  # perpendicular to MET
    # collinear massless jets at eta 2.5 and -1: m^2 = 2 * 60 * 60 * (cosh 3.5 - 1)
    assert out["mjj"][0] == pytest.approx(math.sqrt(2 * 3600 * (math.cosh(3.5) - 1)))
    assert out["ptjj"][0] == pytest.approx(120.0)
    assert out["jdeta"][0] == pytest.approx(3.5)
    # (40, 0) + (0, 30) + (-50, 0) = (-10, 30)
    assert out["pt_h"][0] == pytest.approx(math.hypot(10, 30))
    for name in ("mjj", "ptjj", "jdeta"):
        assert np.isnan(out[name][1])
    assert out["m_vis"][1] == out["m_vis"][0]
