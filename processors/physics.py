"""Skim stage: pure kinematic functions (angles, transverse mass, four-vector sums) on awkward arrays.

Every function here is a plain function of arrays: no configuration, no I/O, so the
processor, the tests and a notebook compute the same numbers. Inputs may be flat
(one value per event) or jagged (``var * float32``, one value per object); awkward
broadcasts them the usual way. Sums of four-vectors go through scikit-hep `vector` on numpy
arrays, evaluated in float64 so that float32 outputs are exact to float32 precision.
"""

from __future__ import annotations

import awkward as ak
import numpy as np
import vector

__all__ = ["delta_phi", "delta_r", "lorentz_vectors", "pair_mass_pt", "transverse_mass",
           "vector_sum_pt"]

_TWO_PI = 2.0 * np.pi


def delta_phi(phi1, phi2):
    """Azimuthal difference ``phi1 - phi2`` wrapped into (-pi, pi].

    Parameters
    ----------
    phi1, phi2 : float or array (flat or ``var * float``), radians
        Broadcast against each other.

    Returns
    -------
    Same shape as the broadcast inputs, float64. ``delta_phi(pi, -pi) == 0`` and
    ``delta_phi(-pi/2, pi/2) == pi`` (the upper edge is included, the lower one is not).
    """
    d = np.mod(_as_f64(phi1) - _as_f64(phi2), _TWO_PI)
    # np.mod lands in [0, 2pi); folding the upper half down gives (-pi, pi].
    if isinstance(d, ak.Array):
        return ak.where(d > np.pi, d - _TWO_PI, d)
    return np.where(d > np.pi, d - _TWO_PI, d)


def _as_f64(x):
    if isinstance(x, ak.Array):
        return ak.values_astype(x, np.float64)
    return np.asarray(x, dtype=np.float64)


def delta_r(eta1, phi1, eta2, phi2):
    """Angular distance sqrt(d_eta^2 + d_phi^2), with d_phi from `delta_phi`.

    Parameters
    ----------
    eta1, phi1, eta2, phi2 : float or array (flat or ``var * float``)
        Pseudorapidities and azimuths of the two objects; broadcast together.
    """
    deta = _as_f64(eta1) - _as_f64(eta2)
    return np.sqrt(deta**2 + delta_phi(phi1, phi2) ** 2)


def transverse_mass(pt, phi, met_pt, met_phi):
    """m_T = sqrt(2 pt MET (1 - cos d_phi)) of a visible object and the missing momentum.

    Parameters
    ----------
    pt, phi : float or array
        Visible object (GeV, rad).
    met_pt, met_phi : float or array
        Missing transverse momentum (GeV, rad).
    """
    mt2 = 2.0 * _as_f64(pt) * _as_f64(met_pt) * (1.0 - np.cos(delta_phi(phi, met_phi)))
    # 1 - cos is >= 0 analytically; rounding can leave -1e-17 for collinear objects.
    return np.sqrt(np.maximum(mt2, 0.0))


def _numpy_f64(values) -> np.ndarray:
    """A flat float64 numpy array; missing values (None) become NaN."""
    if isinstance(values, ak.Array):
        values = ak.to_numpy(ak.fill_none(values, np.nan))
    return np.asarray(values, dtype=np.float64)


def lorentz_vectors(pt, eta, phi, mass) -> vector.MomentumNumpy4D:
    """Four-vectors from (pt, eta, phi, mass), as scikit-hep `vector` numpy arrays in float64.

    Parameters
    ----------
    pt, eta, phi, mass : flat arrays of one length (numpy, or awkward ``?float``: None -> NaN)
    """
    return vector.array({"pt": _numpy_f64(pt), "eta": _numpy_f64(eta), "phi": _numpy_f64(phi),
                         "mass": _numpy_f64(mass)})


def pair_mass_pt(first, second) -> tuple[np.ndarray, np.ndarray]:
    """Invariant mass and pt of the sum of two objects.

    Parameters
    ----------
    first, second : records or mappings with ``pt``, ``eta``, ``phi``, ``mass``
        One object per event (awkward ``?{pt, eta, phi, mass}`` or dict of flat numpy arrays);
        a missing object (None or NaN) gives NaN.

    Returns
    -------
    (mass, pt) : two float64 numpy arrays, one value per event. A sum whose m^2 rounds below
    zero (massless collinear objects) has mass 0, not NaN.
    """
    total = (lorentz_vectors(first["pt"], first["eta"], first["phi"], first["mass"])
             + lorentz_vectors(second["pt"], second["eta"], second["phi"], second["mass"]))
    return np.sqrt(np.maximum(total.tau2, 0.0)), np.asarray(total.pt)


def vector_sum_pt(pts, phis):
    """Magnitude of the vector sum of transverse momenta, |sum_i pt_i (cos phi_i, sin phi_i)|.

    Parameters
    ----------
    pts, phis : sequences of arrays of one shape (one per object, e.g. tau1, tau2, MET)
    """
    px = sum(_as_f64(pt) * np.cos(_as_f64(phi)) for pt, phi in zip(pts, phis))
    py = sum(_as_f64(pt) * np.sin(_as_f64(phi)) for pt, phi in zip(pts, phis))
    return np.hypot(px, py)
