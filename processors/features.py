"""Skim stage: the derived features of PHYSICS.md ("Features") from the selected objects.

One function, `ditau_features`, so the processor and a notebook get the same definitions.
Inputs are one object per event (``?{pt, eta, phi, mass}``); a missing object (an event
with fewer than two good jets when ``min_jets`` < 2) gives NaN for the features using it.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from analysis.core.features import DERIVED_FEATURES
from processors.physics import delta_r, pair_mass_pt, transverse_mass, vector_sum_pt

__all__ = ["FEATURES", "ditau_features"]

# Column names, in the order of DESIGN.md "Skim Parquet" (the feature registry's).
FEATURES = tuple(f.name for f in DERIVED_FEATURES)


def _numpy(x) -> np.ndarray:
    """float64 numpy array, None -> NaN."""
    if isinstance(x, ak.Array):
        x = ak.to_numpy(ak.fill_none(x, np.nan), allow_missing=False)
    return np.asarray(x, dtype=np.float64)


def ditau_features(tau1: ak.Array, tau2: ak.Array, jet1: ak.Array, jet2: ak.Array,
                   met_pt: ak.Array, met_phi: ak.Array) -> dict[str, np.ndarray]:
    """Every derived feature of the di-tau analysis.

    Parameters
    ----------
    tau1, tau2 : ``?{pt, eta, phi, mass}`` or dict of flat numpy arrays, one per event
        The selected tau pair, tau1 the higher-pt member.
    jet1, jet2 : ``?{pt, eta, phi, mass}`` or dict of flat numpy arrays, one per event
        The two leading good jets (None or NaN where missing).
    met_pt, met_phi : flat arrays, one per event
        Missing transverse momentum.

    Returns
    -------
    dict of feature name -> float64 numpy array (one value per event):

    - ``m_vis``, ``pt_vis``: mass and pt of tau1 + tau2;
    - ``dr_tautau``: Delta R(tau1, tau2);
    - ``mt_tau1``, ``mt_tau2``: transverse mass of each tau with the MET;
    - ``mjj``, ``ptjj``: mass and pt of jet1 + jet2; ``jdeta``: |eta_j1 - eta_j2|;
    - ``pt_h``: pt of tau1 + tau2 + MET, the MET taken as massless with eta = 0.
    """
    m_vis, pt_vis = pair_mass_pt(tau1, tau2)
    mjj, ptjj = pair_mass_pt(jet1, jet2)
    out = {
        "m_vis": m_vis,
        "pt_vis": pt_vis,
        "dr_tautau": delta_r(tau1["eta"], tau1["phi"], tau2["eta"], tau2["phi"]),
        "mt_tau1": transverse_mass(tau1["pt"], tau1["phi"], met_pt, met_phi),
        "mt_tau2": transverse_mass(tau2["pt"], tau2["phi"], met_pt, met_phi),
        "mjj": mjj,
        "ptjj": ptjj,
        "jdeta": abs(_numpy(jet1["eta"]) - _numpy(jet2["eta"])),
        # Only transverse components enter pt, so the MET's (unknown) eta does not matter.
        "pt_h": vector_sum_pt([tau1["pt"], tau2["pt"], met_pt], [tau1["phi"], tau2["phi"], met_phi]),
    }
    return {name: _numpy(out[name]) for name in FEATURES}
