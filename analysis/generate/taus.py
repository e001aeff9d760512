"""Sample generator (generate stage): hadronic tau decays and the tau identification model.

A tau lepton decays to a visible hadronic system (one pion, a rho, or an a1 — HPS decay
modes 0, 1, 10) plus a neutrino that escapes and feeds the missing transverse momentum.
Each decay is a two-body decay in the tau rest frame, so the visible momentum fraction
comes out of the kinematics rather than being put in by hand. Reconstructed taus —
real ones and jets faking taus — then get the outreach ID booleans: an isolation sum with
nested working points (VLoose ⊇ Loose ⊇ Medium ⊇ Tight), decay-mode finding and the
anti-electron / anti-muon discriminators.
"""

from __future__ import annotations

import numpy as np

from analysis.generate.kinematics import sample_breit_wigner, two_body_decay

__all__ = [
    "DECAY_MODE_FRACTIONS",
    "ISO_WORKING_POINTS",
    "MASS_A1",
    "MASS_PION",
    "MASS_RHO",
    "decay_hadronic_taus",
    "fake_decay_modes",
    "reconstructed_tau_charge",
    "sample_visible_mass",
    "tau_identification",
]

MASS_PION = 0.13957  # GeV
MASS_RHO, WIDTH_RHO = 0.7753, 0.149
MASS_A1, WIDTH_A1 = 1.23, 0.42
# HPS decay mode -> fraction of hadronic tau decays (one prong, one prong + pi0s, three prongs).
# The visible pt spectrum is harder for heavier visible systems (E* = (m_tau^2 + m_vis^2) / 2 m_tau),
# so after pt cuts mode 10 gains on mode 0; these generated fractions give ~25/50/25 % selected.
DECAY_MODE_FRACTIONS = {0: 0.28, 1: 0.50, 10: 0.22}
# Isolation working points: the charged + neutral isolation sum (GeV, "idIsoRaw") must be
# below these (2012 combined isolation: Loose 2.0, Medium 1.0, Tight 0.8 GeV).
ISO_WORKING_POINTS = {"VLoose": 3.0, "Loose": 2.0, "Medium": 1.0, "Tight": 0.8}
# Probability that a tau candidate passes each anti-lepton working point (nested).
_ANTI_ELE_PASS = {"Loose": 0.995, "Medium": 0.98, "Tight": 0.95}
_ANTI_MU_PASS = {"Loose": 0.998, "Medium": 0.99, "Tight": 0.985}
# Decay modes reconstructed for jets faking taus, with their rates; 5, 6, 11 fail decay-mode finding.
_FAKE_DECAY_MODES = {0: 0.2, 1: 0.35, 2: 0.05, 10: 0.25, 5: 0.05, 6: 0.05, 11: 0.05}
_OLD_DECAY_MODES = (0, 1, 2, 10)


def sample_visible_mass(rng: np.random.Generator, decay_mode: np.ndarray) -> np.ndarray:
    """Mass (GeV) of the visible system: the pion mass (mode 0), a rho (1) or an a1 (10)
    Breit-Wigner, truncated below the tau mass."""
    n = len(decay_mode)
    rho = sample_breit_wigner(rng, n, mass=MASS_RHO, width=WIDTH_RHO, low=0.3, high=1.5)
    a1 = sample_breit_wigner(rng, n, mass=MASS_A1, width=WIDTH_A1, low=0.8, high=1.7)
    return np.where(decay_mode == 0, MASS_PION, np.where(decay_mode == 1, rho, a1))


def decay_hadronic_taus(rng: np.random.Generator, taus: np.ndarray):
    """Decay taus ``(n, 4)`` hadronically.

    Returns
    -------
    visible : ndarray (n, 4)
        Four-momentum of the visible hadronic system.
    neutrino : ndarray (n, 4)
        Four-momentum of the tau neutrino (escapes; part of the MET).
    decay_mode : ndarray (n,) int
        0, 1 or 10 with `DECAY_MODE_FRACTIONS`.
    """
    modes = np.array(list(DECAY_MODE_FRACTIONS))
    decay_mode = rng.choice(modes, size=len(taus), p=np.array(list(DECAY_MODE_FRACTIONS.values())))
    m_vis = sample_visible_mass(rng, decay_mode)
    visible, neutrino = two_body_decay(rng, taus, m_vis, 0.0)
    return visible, neutrino, decay_mode


def _nested_pass(u: np.ndarray, rates: dict[str, float], prefix: str) -> dict[str, np.ndarray]:
    # One uniform number per tau against increasing rates: a tau passing Tight passes all.
    return {f"{prefix}{wp}": u < rate for wp, rate in rates.items()}


def tau_identification(rng: np.random.Generator, pt: np.ndarray, decay_mode: np.ndarray, *,
                       fake: np.ndarray, npv: np.ndarray) -> dict[str, np.ndarray]:
    """Outreach tau ID fields for reconstructed taus.

    Parameters
    ----------
    pt : ndarray (n,)
        Reconstructed tau pt (GeV).
    decay_mode : ndarray (n,) int
        Reconstructed HPS decay mode.
    fake : ndarray (n,) bool
        True for jets reconstructed as taus: wider isolation sums (hadronisation around the
        leading hadrons), more failing decay-mode finding.
    npv : ndarray (n,) int
        Vertices of the tau's event: pile-up adds to the isolation sum.

    Returns
    -------
    dict
        ``idIsoRaw``, ``relIso_all``, ``idIsoVLoose..Tight``, ``idDecayMode``,
        ``idAntiEle{Loose,Medium,Tight}``, ``idAntiMu{Loose,Medium,Tight}``.
    """
    n = len(pt)
    fake = np.asarray(fake, dtype=bool)
    # Real taus are isolated: about half have no charged activity in the cone at all.
    # Jets have more activity, growing with their pt.
    zero = rng.random(n) < np.where(fake, 0.25, 0.6)
    mean = np.where(fake, 2.5 + 0.02 * pt, 1.0) + 0.03 * npv
    iso_raw = np.where(zero, 0.0, rng.exponential(1.0, n) * mean)
    neutral = rng.exponential(1.0, n) * np.where(fake, 2.0, 0.5)
    out = {"idIsoRaw": iso_raw, "relIso_all": (iso_raw + neutral) / pt}
    for wp, cut in ISO_WORKING_POINTS.items():
        out[f"idIso{wp}"] = iso_raw < cut
    real_dm = rng.random(n) < 0.98
    out["idDecayMode"] = np.where(fake, np.isin(decay_mode, _OLD_DECAY_MODES), real_dm)
    out.update(_nested_pass(rng.random(n), _ANTI_ELE_PASS, "idAntiEle"))
    out.update(_nested_pass(rng.random(n), _ANTI_MU_PASS, "idAntiMu"))
    return out


def fake_decay_modes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Reconstructed decay modes of jets faking taus (some fail decay-mode finding)."""
    modes = np.array(list(_FAKE_DECAY_MODES))
    return rng.choice(modes, size=n, p=np.array(list(_FAKE_DECAY_MODES.values())))


def reconstructed_tau_charge(rng: np.random.Generator, charge: np.ndarray, decay_mode: np.ndarray) -> np.ndarray:
    """Measured charge: the true charge, flipped for 1 % of taus; 3 % of three-prong taus
    get |charge| = 3 (all three tracks of one sign)."""
    flip = rng.random(len(charge)) < 0.01
    measured = np.where(flip, -charge, charge)
    three = (np.asarray(decay_mode) >= 10) & (rng.random(len(charge)) < 0.03)
    return np.where(three, 3 * measured, measured).astype(np.int32)
