"""Tests of the sample generator (generate stage): kinematic and detector building blocks.

Small inputs with answers worked out by hand: two-body decays, boosts, four-vector
conversions, truncated Breit-Wigner and power-law sampling, tau decays and IDs, jet and
MET resolutions, and the flat-table bookkeeping (ordering, cross references).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.generate.detector import (btag_discriminant, jet_pt_resolution, met_resolution, sample_npv,
                                        smear_jet_pt, smear_met)
from analysis.generate.events import EventBuilder, concatenate_batches
from analysis.generate.kinematics import (MASS_TAU, boost, delta_phi, four_vector, invariant_mass,
                                          pt_eta_phi_mass, sample_breit_wigner, sample_power_law,
                                          two_body_decay)
from analysis.generate.layout import events_to_branches
from analysis.generate.objects import pick_one_per_event
from analysis.generate.taus import MASS_PION, decay_hadronic_taus, tau_identification


def rng(seed=0):
    return np.random.default_rng(seed)


def test_four_vector_round_trip_and_a_3_4_5_triangle():
    p4 = four_vector([3.0], [np.arcsinh(4.0 / 3.0)], [np.pi / 2], [0.0])
    # pt 3 along y, pz = pt sinh(eta) = 4, |p| = 5 = E for a massless particle.
    assert p4[0] == pytest.approx([5.0, 0.0, 3.0, 4.0], abs=1e-12)
    pt, eta, phi, mass = pt_eta_phi_mass(four_vector([25.0, 40.0], [-1.2, 2.0], [0.3, -2.9], [1.777, 0.14]))
    assert pt == pytest.approx([25.0, 40.0]) and eta == pytest.approx([-1.2, 2.0])
    assert phi == pytest.approx([0.3, -2.9]) and mass == pytest.approx([1.777, 0.14], rel=1e-6)


def test_delta_phi_wraps_into_minus_pi_pi():
    assert delta_phi(3.0, -3.0) == pytest.approx(6.0 - 2 * np.pi)
    assert delta_phi(-3.0, 3.0) == pytest.approx(2 * np.pi - 6.0)
    assert delta_phi(0.5, 0.2) == pytest.approx(0.3)


def test_boost_of_a_particle_at_rest_gives_gamma_m_and_gamma_beta_m():
    # beta = 0.6: gamma = 1.25, so m = 1 at rest becomes E = 1.25, p = 0.75.
    out = boost(np.array([[1.0, 0.0, 0.0, 0.0]]), np.array([[0.6, 0.0, 0.0]]))
    assert out[0] == pytest.approx([1.25, 0.75, 0.0, 0.0])
    back = boost(out, np.array([[-0.6, 0.0, 0.0]]))
    assert back[0] == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-12)
    # A boost never changes the mass.
    p = four_vector([30.0], [1.0], [0.2], [5.0])
    assert invariant_mass(boost(p, np.array([[0.1, -0.5, 0.7]])))[0] == pytest.approx(5.0)


def test_two_body_decay_conserves_four_momentum_and_gets_the_rest_frame_momentum():
    z_at_rest = np.tile([91.1876, 0.0, 0.0, 0.0], (1000, 1))
    t1, t2 = two_body_decay(rng(), z_at_rest, MASS_TAU, MASS_TAU)
    # p* = sqrt((M/2)^2 - m_tau^2) = sqrt(45.5938^2 - 1.77686^2) = 45.559 GeV, back to back.
    assert np.linalg.norm(t1[:, 1:], axis=1) == pytest.approx(np.full(1000, 45.559), abs=1e-3)
    assert t1 + t2 == pytest.approx(z_at_rest)
    moving = four_vector(np.full(1000, 60.0), np.full(1000, 1.5), np.zeros(1000), np.full(1000, 125.0))
    a, b = two_body_decay(rng(1), moving, MASS_TAU, 0.0)
    assert a + b == pytest.approx(moving)
    assert invariant_mass(a) == pytest.approx(np.full(1000, MASS_TAU))
    assert invariant_mass(b) == pytest.approx(np.zeros(1000), abs=1e-4)
    # Isotropic in the rest frame: <cos theta> ~ 0.
    assert abs(np.mean(t1[:, 3] / 45.559)) < 0.1
    with pytest.raises(ValueError, match="parent mass 3 GeV is below the daughters' 1.777 \\+ 1.777 GeV"):
        two_body_decay(rng(), np.array([[3.0, 0.0, 0.0, 0.0]]), MASS_TAU, MASS_TAU)


def test_breit_wigner_truncation_and_half_width():
    x = sample_breit_wigner(rng(), 200_000, mass=91.19, width=2.5, low=91.19 - 125, high=91.19 + 125)
    assert x.min() >= 91.19 - 125 and x.max() <= 91.19 + 125
    # Inside +-Gamma/2 a Cauchy holds atan(1)/atan(100) = 0.7854/1.5608 = 0.5032 of a +-50 Gamma window.
    assert np.mean(np.abs(x - 91.19) < 1.25) == pytest.approx(0.5032, abs=0.005)
    assert np.median(x) == pytest.approx(91.19, abs=0.05)
    assert np.all(sample_breit_wigner(rng(), 10, mass=125.0, width=0.0, low=120, high=130) == 125.0)


def test_power_law_tail_fraction():
    x = sample_power_law(rng(), 200_000, x_min=20.0, index=3.0)
    # P(x > 2 x_min) = 2^-(index - 1) = 0.25.
    assert x.min() >= 20.0 and np.mean(x > 40.0) == pytest.approx(0.25, abs=0.005)
    assert sample_power_law(rng(), 1000, x_min=20.0, index=3.0, x_max=50.0).max() <= 50.0


def test_tau_decay_at_rest_gives_the_two_body_momentum_and_the_mode_fractions():
    taus = np.tile([MASS_TAU, 0.0, 0.0, 0.0], (100_000, 1))
    visible, neutrino, mode = decay_hadronic_taus(rng(), taus)
    assert visible + neutrino == pytest.approx(taus)
    p = np.linalg.norm(visible[:, 1:], axis=1)
    # tau -> pi nu: p* = (m_tau^2 - m_pi^2) / (2 m_tau) = (3.15723 - 0.01948) / 3.55372 = 0.88294 GeV.
    assert p[mode == 0] == pytest.approx(np.full((mode == 0).sum(), 0.88294), abs=1e-4)
    fractions = {m: np.mean(mode == m) for m in (0, 1, 10)}
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert fractions[1] == pytest.approx(0.50, abs=0.01) and 0.2 < fractions[0] < 0.3 and 0.2 < fractions[10] < 0.3
    m_vis = invariant_mass(visible)
    assert m_vis[mode == 0] == pytest.approx(np.full((mode == 0).sum(), MASS_PION), abs=1e-5)
    assert np.median(m_vis[mode == 1]) == pytest.approx(0.775, abs=0.03)  # rho
    assert np.median(m_vis[mode == 10]) == pytest.approx(1.23, abs=0.08)  # a1, truncated below m_tau
    assert m_vis.max() < MASS_TAU


def test_tau_id_working_points_are_nested_and_fakes_less_isolated():
    n = 50_000
    pt = np.full(n, 40.0)
    real = tau_identification(rng(), pt, np.ones(n, int), fake=np.zeros(n, bool), npv=np.full(n, 17))
    fake = tau_identification(rng(1), pt, np.ones(n, int), fake=np.ones(n, bool), npv=np.full(n, 17))
    for ids in (real, fake):
        assert np.all(ids["idIsoTight"] <= ids["idIsoMedium"]) and np.all(ids["idIsoMedium"] <= ids["idIsoLoose"])
        assert np.all(ids["idIsoLoose"] <= ids["idIsoVLoose"])
        assert np.all(ids["idIsoMedium"] == (ids["idIsoRaw"] < 1.0))
        for kind in ("Ele", "Mu"):
            assert np.all(ids[f"idAnti{kind}Tight"] <= ids[f"idAnti{kind}Medium"])
            assert np.all(ids[f"idAnti{kind}Medium"] <= ids[f"idAnti{kind}Loose"])
    assert np.mean(fake["idIsoRaw"]) > 2 * np.mean(real["idIsoRaw"])
    assert np.mean(real["idIsoMedium"]) > 0.7 > 0.5 > np.mean(fake["idIsoMedium"])
    assert np.mean(real["idDecayMode"]) > 0.95


def test_jet_resolution_is_about_ten_percent_at_100_gev():
    # sqrt((2.5/100)^2 + 0.9^2/100 + 0.04^2) = sqrt(0.010325) = 0.1016
    assert jet_pt_resolution(100.0) == pytest.approx(0.1016, abs=1e-4)
    smeared = smear_jet_pt(rng(), np.full(200_000, 100.0))
    assert np.std(smeared / 100.0) == pytest.approx(0.1016, rel=0.02)
    assert np.mean(smeared) == pytest.approx(100.0, rel=0.002)


def test_met_resolution_from_sumet():
    # sqrt(5^2 + 0.55^2 * 400) = sqrt(25 + 121) = 12.08 GeV per component
    assert met_resolution(400.0) == pytest.approx(12.083, abs=1e-3)
    mx, my, sigma = smear_met(rng(), np.zeros(100_000), np.zeros(100_000), np.full(100_000, 400.0))
    assert np.std(mx) == pytest.approx(12.083, rel=0.02) and np.std(my) == pytest.approx(12.083, rel=0.02)
    # |MET| of a Gaussian pair is Rayleigh: mean sigma sqrt(pi/2) = 15.1 GeV, inside 10-20 GeV.
    assert np.mean(np.hypot(mx, my)) == pytest.approx(12.083 * np.sqrt(np.pi / 2), rel=0.02)


def test_pileup_and_btag():
    npv = sample_npv(rng(), 100_000)
    assert npv.min() >= 1 and 15 <= npv.mean() <= 20
    b = btag_discriminant(rng(), np.full(50_000, 5))
    light = btag_discriminant(rng(), np.zeros(50_000))
    assert 0 <= light.min() and b.max() <= 1 and np.mean(b) > 0.7 > 0.2 > np.mean(light)


def test_pick_one_per_event():
    event = np.array([0, 0, 0, 2, 2, 3])
    eligible = np.array([True, False, True, False, False, True])
    chosen = pick_one_per_event(rng(), event, eligible, 4)
    assert chosen[0] in (0, 2) and chosen[1] == -1 and chosen[2] == -1 and chosen[3] == 5


def _batch_two_events():
    b = EventBuilder(2)
    jets = b.add("Jet", np.array([0, 0, 1]), pt=np.array([20.0, 50.0, 10.0]), eta=0.0)
    b.add("Tau", np.array([0, 1, 0]), pt=np.array([30.0, 25.0, 45.0]), eta=0.0, jetIdx=np.array([jets[0], jets[2], -1]))
    b.scalars.update({k: np.zeros(2) for k in b.scalar_names})
    return b.build()


def test_layout_orders_by_pt_and_turns_rows_into_event_indices():
    out = events_to_branches(_batch_two_events().scalars, _batch_two_events().collections, 2)
    assert out["Jet"].pt.tolist() == [[50.0, 20.0], []]  # the 10 GeV jet is below the 15 GeV threshold
    assert out["Tau"].pt.tolist() == [[45.0, 30.0], [25.0]]
    # The 30 GeV tau pointed at the 20 GeV jet, now second in its event; the 25 GeV tau's jet is not stored.
    assert out["Tau"].jetIdx.tolist() == [[-1, 1], [-1]]
    assert str(out["Tau"].type.content) == str(out["Tau"].type.content)
    assert out["Tau"].jetIdx.type.content.content.primitive == "int32"


def test_concatenate_and_subset_keep_references():
    a, b = _batch_two_events(), _batch_two_events()
    both = concatenate_batches([a, b])
    assert both.n == 4 and both.collections["Tau"]["event"].tolist() == [0, 1, 0, 2, 3, 2]
    assert both.collections["Tau"]["jetIdx"].tolist() == [0, 2, -1, 3, 5, -1]
    last = both.subset(np.array([False, False, True, True]))
    assert last.n == 2 and last.collections["Jet"]["pt"].tolist() == [20.0, 50.0, 10.0]
    assert last.collections["Tau"]["jetIdx"].tolist() == [0, 2, -1]
    swapped = last.permute(np.array([1, 0]))
    assert swapped.collections["Tau"]["event"].tolist() == [1, 0, 1]


@settings(max_examples=60, deadline=None)
@given(pt=st.floats(0.0, 500.0), eta=st.floats(-4.0, 4.0), phi=st.floats(-3.14, 3.14),
       mass=st.floats(5.0, 200.0), split=st.floats(0.0, 0.99), share=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**32 - 1))
def test_two_body_decay_conserves_four_momentum_for_any_parent(pt, eta, phi, mass, split, share, seed):
    parent = four_vector([pt], [eta], [phi], [mass])
    m1 = split * mass * share
    m2 = split * mass * (1 - share)  # m1 + m2 = split * M < M
    d1, d2 = two_body_decay(np.random.default_rng(seed), parent, m1, m2)
    scale = parent[0, 0]
    assert np.allclose(d1 + d2, parent, atol=1e-9 * scale)
    assert invariant_mass(d1)[0] == pytest.approx(m1, abs=1e-5 * scale)
    assert invariant_mass(d2)[0] == pytest.approx(m2, abs=1e-5 * scale)
    # Undoing the parent's boost brings the daughters back to back.
    rest = boost(np.concatenate([d1, d2]), np.tile(-parent[:, 1:] / parent[:, :1], (2, 1)))
    assert np.allclose(rest[0, 1:], -rest[1, 1:], atol=1e-7 * scale)
