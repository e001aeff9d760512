"""Sample generator (generate stage): leptonic tau decays and the prompt-lepton detector model.

A tau decays to an electron or a muon and two neutrinos (tau -> l nu nu) in 17.82 % and
17.39 % of its decays (PDG), hadronically otherwise. The charged lepton's energy in the
tau rest frame follows the Michel spectrum: with x = 2 E / m_tau, an unpolarised tau gives
dN/dx = 2 x^2 (3 - 2 x) on [0, 1] (lepton mass neglected), isotropic in direction. Boosted
with the tau, the lepton keeps on average 7/20 of the tau energy (the lab spectrum of a
fast tau is (5 - 9 z^2 + 4 z^3) / 3), so leptons from taus are much softer than those of
W -> mu nu. The two neutrinos escape with the rest of the tau momentum.

Prompt leptons (W, Z, tau decays) are then reconstructed with a 1.5 % (muons) or 3 %
(electrons) pt resolution, an isolation sum small compared with that of the soft leptons
of heavy-flavour decays, and a high identification efficiency.
"""

from __future__ import annotations

import numpy as np

from analysis.generate.kinematics import MASS_TAU, boost

__all__ = ["BR_TAU_TO_E", "BR_TAU_TO_MU", "ELECTRON_ID_EFFICIENCY", "ELECTRON_PT_RESOLUTION", "MASS_ELECTRON",
           "MASS_MUON", "MUON_PT_RESOLUTION", "MUON_TIGHT_ID_EFFICIENCY", "PDG_ELECTRON", "PDG_MUON", "choose_tau_decays", "decay_leptonic_taus", "michel_density", "prompt_lepton_isolation",
           "sample_michel_fraction"]

BR_TAU_TO_E = 0.1782  # PDG: tau -> e nu nu
BR_TAU_TO_MU = 0.1739  # PDG: tau -> mu nu nu
MASS_ELECTRON, MASS_MUON = 0.000511, 0.10566  # GeV
PDG_ELECTRON, PDG_MUON = 11, 13
# Tight muon ID and electron ID efficiencies of prompt leptons (2012 tag-and-probe, ~95 %).
MUON_TIGHT_ID_EFFICIENCY = 0.95
ELECTRON_ID_EFFICIENCY = 0.90
# Relative pt resolution of prompt muons (tracker + muon chambers) and electrons (ECAL).
MUON_PT_RESOLUTION, ELECTRON_PT_RESOLUTION = 0.015, 0.03


def michel_density(x):
    """The Michel spectrum dN/dx = 2 x^2 (3 - 2 x) of x = 2 E / m_tau in the tau rest frame (normalised on [0, 1])."""
    x = np.asarray(x, dtype=np.float64)
    return 2.0 * x * x * (3.0 - 2.0 * x)


def sample_michel_fraction(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` values of x = 2 E / m_tau from `michel_density`, by inverting its CDF 2 x^3 - x^4.

    One uniform number per value (so the stream does not depend on a rejection rate); the
    CDF is monotonic on [0, 1], and 50 bisection steps pin x to 1e-15.
    """
    u = rng.uniform(0.0, 1.0, n)
    lo, hi = np.zeros(n), np.ones(n)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        below = 2.0 * mid**3 - mid**4 < u
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def choose_tau_decays(rng: np.random.Generator, n: int) -> np.ndarray:
    """The decay of each of ``n`` taus: `PDG_ELECTRON`, `PDG_MUON` or 0 (hadronic), by branching fraction."""
    u = rng.random(n)
    return np.where(u < BR_TAU_TO_E, PDG_ELECTRON, np.where(u < BR_TAU_TO_E + BR_TAU_TO_MU, PDG_MUON, 0))


def decay_leptonic_taus(rng: np.random.Generator, taus: np.ndarray, lepton_mass) -> tuple[np.ndarray, np.ndarray]:
    """Decay taus ``(n, 4)`` to a charged lepton of ``lepton_mass`` (scalar or ``(n,)``) and two neutrinos.

    Returns
    -------
    lepton : ndarray (n, 4)
        The charged lepton, its rest-frame energy from `sample_michel_fraction` (at least its
        mass: the massless spectrum is cut where it would not be), isotropic, boosted.
    neutrinos : ndarray (n, 4)
        The two neutrinos together (tau minus lepton): only their sum reaches the MET.
    """
    n = len(taus)
    mass = np.broadcast_to(np.asarray(lepton_mass, dtype=np.float64), (n,))
    e_max = (MASS_TAU**2 + mass**2) / (2.0 * MASS_TAU)  # the lepton's end point (neutrinos collinear)
    energy = np.maximum(sample_michel_fraction(rng, n) * e_max, mass)
    p = np.sqrt(np.maximum(energy**2 - mass**2, 0.0))
    cos_theta = rng.uniform(-1.0, 1.0, n)
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    phi = rng.uniform(-np.pi, np.pi, n)
    rest = np.stack([energy, p * sin_theta * np.cos(phi), p * sin_theta * np.sin(phi), p * cos_theta], axis=-1)
    lepton = boost(rest, taus[:, 1:] / taus[:, :1])
    return lepton, taus - lepton


def prompt_lepton_isolation(rng: np.random.Generator, npv: np.ndarray) -> np.ndarray:
    """Relative isolation (pfRelIso03_all) of prompt leptons: half have an empty cone, the
    rest a small exponential sum growing with pile-up (soft leptons of b decays: mean 0.6)."""
    n = len(npv)
    empty = rng.random(n) < 0.5
    return np.where(empty, 0.0, rng.exponential(1.0, n) * (0.03 + 0.002 * np.asarray(npv)))
