"""Sample generator (generate stage): relativistic kinematics on numpy arrays of four-vectors.

The synthetic samples are built from physics (resonances, two-body decays, boosts), one
array operation for all events at once: no per-event Python loop, so a few hundred
thousand events take well under a second. A four-vector array has shape ``(n, 4)`` and
holds ``(E, px, py, pz)`` in GeV, float64 until the layout writes float32.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MASS_TAU",
    "boost",
    "delta_phi",
    "four_vector",
    "invariant_mass",
    "pt_eta_phi_mass",
    "sample_breit_wigner",
    "sample_power_law",
    "two_body_decay",
    "wrap_phi",
]

MASS_TAU = 1.77686  # GeV, PDG


def four_vector(pt, eta, phi, mass) -> np.ndarray:
    """Four-vectors ``(n, 4)`` = (E, px, py, pz) from arrays of pt, eta, phi, mass (GeV, rad)."""
    pt, eta, phi, mass = (np.asarray(x, dtype=np.float64) for x in (pt, eta, phi, mass))
    px = pt * np.cos(phi)
    py = pt * np.sin(phi)
    pz = pt * np.sinh(eta)
    energy = np.sqrt(px * px + py * py + pz * pz + mass * mass)
    return np.stack([energy, px, py, pz], axis=-1)


def pt_eta_phi_mass(p4: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pt, eta, phi, mass) of four-vectors ``(n, 4)``; mass is 0 for (numerically) light-like."""
    energy, px, py, pz = p4[..., 0], p4[..., 1], p4[..., 2], p4[..., 3]
    pt = np.hypot(px, py)
    # arcsinh(pz/pt) is eta without the log(0) of the (p+pz)/(p-pz) form along the beam.
    eta = np.arcsinh(pz / np.maximum(pt, 1e-300))
    phi = np.arctan2(py, px)
    m2 = energy * energy - pt * pt - pz * pz
    return pt, eta, phi, np.sqrt(np.maximum(m2, 0.0))


def invariant_mass(*p4s: np.ndarray) -> np.ndarray:
    """Mass of the sum of any number of four-vector arrays of the same shape."""
    total = p4s[0] if len(p4s) == 1 else np.add.reduce(p4s)
    e, px, py, pz = total[..., 0], total[..., 1], total[..., 2], total[..., 3]
    return np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0))


def wrap_phi(phi):
    """Angle wrapped to (-pi, pi]."""
    return np.pi - np.mod(np.pi - np.asarray(phi), 2 * np.pi)


def delta_phi(phi1, phi2):
    """phi1 - phi2 wrapped to (-pi, pi]."""
    return wrap_phi(np.asarray(phi1) - np.asarray(phi2))


def _boost_components(energy, px, py, pz, bx, by, bz):
    # Component arrays (contiguous) are several times faster than columns of an (n, 4) array.
    gamma = 1.0 / np.sqrt(1.0 - (bx * bx + by * by + bz * bz))
    bp = bx * px + by * py + bz * pz
    # (gamma - 1) / beta^2 written as gamma^2 / (gamma + 1): finite at beta = 0.
    shift = gamma * gamma / (gamma + 1.0) * bp + gamma * energy
    return gamma * (energy + bp), px + shift * bx, py + shift * by, pz + shift * bz


def boost(p4: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Lorentz-boost four-vectors ``(n, 4)`` by velocities ``beta`` ``(n, 3)`` (|beta| < 1).

    A particle at rest in a frame moving with ``beta`` gets momentum ``gamma * m * beta``.
    """
    p4 = np.asarray(p4, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    return np.stack(_boost_components(p4[..., 0], p4[..., 1], p4[..., 2], p4[..., 3],
                                      beta[..., 0], beta[..., 1], beta[..., 2]), axis=-1)


def two_body_decay(rng: np.random.Generator, parent: np.ndarray, m1, m2) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic decay of each parent ``(n, 4)`` into daughters of masses m1, m2 (scalars or (n,)).

    In the parent rest frame both daughters get |p*| = sqrt((M^2-(m1+m2)^2)(M^2-(m1-m2)^2))/2M,
    back to back in a uniformly random direction; both are then boosted with the parent.
    Four-momentum is conserved exactly (up to rounding).
    """
    n = parent.shape[0]
    energy, px, py, pz = (np.ascontiguousarray(parent[:, i]) for i in range(4))
    mass = np.sqrt(np.maximum(energy * energy - px * px - py * py - pz * pz, 0.0))
    m1 = np.broadcast_to(np.asarray(m1, dtype=np.float64), (n,))
    m2 = np.broadcast_to(np.asarray(m2, dtype=np.float64), (n,))
    if np.any(m1 + m2 > mass * (1 + 1e-12)):
        bad = int(np.argmax(m1 + m2 > mass))
        raise ValueError(f"two_body_decay: parent mass {mass[bad]:.4g} GeV is below the daughters' "
                         f"{m1[bad]:.4g} + {m2[bad]:.4g} GeV")
    pstar2 = (mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2)
    pstar = np.sqrt(np.maximum(pstar2, 0.0)) / (2.0 * mass)
    cos_theta = rng.uniform(-1.0, 1.0, n)
    sin_theta = np.sqrt(1.0 - cos_theta * cos_theta)
    phi = rng.uniform(-np.pi, np.pi, n)
    qx, qy, qz = pstar * sin_theta * np.cos(phi), pstar * sin_theta * np.sin(phi), pstar * cos_theta
    bx, by, bz = px / energy, py / energy, pz / energy
    d1 = _boost_components(np.sqrt(pstar**2 + m1**2), qx, qy, qz, bx, by, bz)
    d2 = _boost_components(np.sqrt(pstar**2 + m2**2), -qx, -qy, -qz, bx, by, bz)
    return np.stack(d1, axis=-1), np.stack(d2, axis=-1)


def sample_breit_wigner(rng: np.random.Generator, n: int, *, mass: float, width: float,
                        low: float, high: float) -> np.ndarray:
    """Masses from a (non-relativistic) Breit-Wigner of pole ``mass`` and full ``width``,
    truncated to [low, high] by inverting its CDF (exact, no rejection loop)."""
    if width <= 0:
        return np.full(n, float(mass))
    lo = np.arctan(2 * (low - mass) / width)
    hi = np.arctan(2 * (high - mass) / width)
    return mass + 0.5 * width * np.tan(rng.uniform(lo, hi, n))


def sample_power_law(rng: np.random.Generator, n: int, *, x_min: float, index: float,
                     x_max: float = np.inf) -> np.ndarray:
    """Values with density ~ x^-index on [x_min, x_max] (index > 1): a falling pt spectrum."""
    a = index - 1.0
    u_max = 1.0 - (x_min / x_max) ** a if np.isfinite(x_max) else 1.0
    u = rng.uniform(0.0, u_max, n)
    return x_min * (1.0 - u) ** (-1.0 / a)
