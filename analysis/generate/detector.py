"""Sample generator (generate stage): the detector model — resolutions, pile-up, b-tagging.

Generated particles become reconstructed objects here: jets get a calorimeter pt
resolution (about 10 % at 100 GeV), the missing transverse momentum gets a resolution that
grows with the scalar sum of transverse energy (10-20 GeV per event), pile-up adds
vertices and soft jets that mostly fail the pile-up ID, and jets get a CSV-like b-tag
discriminant that is high for b jets. The parameters are named constants so tests can
check the functions against them.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "JET_RESOLUTION",
    "MET_RESOLUTION",
    "PILEUP_MEAN_NPV",
    "btag_discriminant",
    "jet_pt_resolution",
    "met_resolution",
    "sample_npv",
    "smear_jet_pt",
    "smear_met",
]

# Relative jet pt resolution sigma/pt = sqrt((N/pt)^2 + S^2/pt + C^2): noise N (GeV),
# stochastic S (GeV^1/2) and constant C terms of a CMS-like calorimeter.
JET_RESOLUTION = {"noise": 2.5, "stochastic": 0.9, "constant": 0.04}
# MET resolution per transverse component: sigma = sqrt(floor^2 + (scale * sqrt(sumet))^2), GeV.
MET_RESOLUTION = {"floor": 5.0, "scale": 0.55}
# Reconstructed primary vertices per event: 1 + Poisson(mean - 1) (2012 run conditions).
PILEUP_MEAN_NPV = 17.0


def jet_pt_resolution(pt, *, noise: float = JET_RESOLUTION["noise"],
                      stochastic: float = JET_RESOLUTION["stochastic"],
                      constant: float = JET_RESOLUTION["constant"]) -> np.ndarray:
    """Relative resolution sigma(pt)/pt for jets of true ``pt`` (GeV, array)."""
    pt = np.asarray(pt, dtype=np.float64)
    return np.sqrt((noise / pt) ** 2 + stochastic**2 / pt + constant**2)


def smear_jet_pt(rng: np.random.Generator, pt, **resolution: float) -> np.ndarray:
    """Reconstructed jet pt: true pt times a Gaussian response of width `jet_pt_resolution`
    (response floored at 0.05 so a jet never gets a negative pt)."""
    pt = np.asarray(pt, dtype=np.float64)
    response = 1.0 + jet_pt_resolution(pt, **resolution) * rng.standard_normal(pt.shape)
    return pt * np.maximum(response, 0.05)


def met_resolution(sumet, *, floor: float = MET_RESOLUTION["floor"],
                   scale: float = MET_RESOLUTION["scale"]) -> np.ndarray:
    """Resolution (GeV) of each MET component for events of scalar transverse energy ``sumet``."""
    return np.sqrt(floor**2 + scale**2 * np.asarray(sumet, dtype=np.float64))


def smear_met(rng: np.random.Generator, met_x, met_y, sumet, **resolution: float):
    """Measured (met_x, met_y, sigma): true components plus independent Gaussian noise."""
    sigma = met_resolution(sumet, **resolution)
    met_x = np.asarray(met_x) + sigma * rng.standard_normal(sigma.shape)
    met_y = np.asarray(met_y) + sigma * rng.standard_normal(sigma.shape)
    return met_x, met_y, sigma


def sample_npv(rng: np.random.Generator, n: int, *, mean: float = PILEUP_MEAN_NPV) -> np.ndarray:
    """Reconstructed primary vertices: the hard-scatter vertex plus Poisson pile-up."""
    return 1 + rng.poisson(mean - 1.0, n)


def btag_discriminant(rng: np.random.Generator, flavour: np.ndarray) -> np.ndarray:
    """CSV-like b-tag values in [0, 1] for jets of parton ``flavour`` (5 b, 4 c, else light).

    b jets peak near 1 (Beta(4, 1.3), mean 0.75), charm in between (Beta(2, 3)), light
    and gluon jets near 0 (Beta(1.2, 6), mean 0.17): a tight cut keeps ~70 % of b jets.
    """
    flavour = np.abs(np.asarray(flavour))
    out = np.empty(flavour.shape)
    # One Beta draw per flavour class with scalar parameters (much faster than array ones).
    for mask, (a, b) in (((flavour == 5), (4.0, 1.3)), ((flavour == 4), (2.0, 3.0)),
                         (((flavour != 5) & (flavour != 4)), (1.2, 6.0))):
        out[mask] = rng.beta(a, b, int(mask.sum()))
    return out
