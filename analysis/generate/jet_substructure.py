"""Sample generator (generate stage): N-subjettiness and the soft-drop mass of AK8 jets, from their constituents.

Computed on the jet's PUPPI-weighted candidates (what NanoAOD computes them on), all jets
at once on flat arrays grouped by jet:

* **Axes**: N axes per jet by a pt-weighted k-means in (eta, phi) (three Lloyd steps), seeded
  with the hardest candidate and then, one by one, the candidate farthest from the axes
  found so far weighted by pt x Delta R^2 — the minimisation fastjet's one-pass axes do,
  started from kt-like seeds.
* **N-subjettiness**: tau_N = sum_i pt_i min_k Delta R(i, axis_k) / (sum_i pt_i R0), R0 = 0.8
  (beta = 1).
* **Soft drop** (z_cut = 0.1, beta = 0) on the 2-axis split: the two subjets are the
  candidates of each axis within Delta R_12 (the axes' distance) of it — what C/A
  declustering reaches the two-prong split with — and the groomed jet is both subjets if
  the softer has z = pt_soft / (pt_1 + pt_2) > 0.1, else the harder alone (a one-prong jet:
  small groomed mass). ``msoftdrop`` is the groomed mass.
"""

from __future__ import annotations

import numpy as np

from analysis.generate.kinematics import wrap_phi

__all__ = ["Substructure", "first_of_group", "substructure"]

R0 = 0.8
Z_CUT = 0.1
_LLOYD_STEPS = 3


def first_of_group(group: np.ndarray, key: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group (``group`` non-decreasing, every group non-empty), the position of its largest ``key`` (the first
    of equal ones)."""
    starts = np.searchsorted(group, np.arange(n_groups))
    best = np.maximum.reduceat(key, starts)
    hit = np.flatnonzero(key == best[group])
    return hit[np.searchsorted(group[hit], np.arange(n_groups))]


def _axes(jet, x, y, w, n_jets, n_axes):
    """k-means axes (n_jets, n_axes) in the (x, y) = (deta, dphi) plane."""
    ax = np.zeros((n_jets, n_axes))
    ay = np.zeros((n_jets, n_axes))
    lead = first_of_group(jet, w, n_jets)
    ax[:, 0], ay[:, 0] = x[lead], y[lead]
    for k in range(1, n_axes):
        d2 = np.min((x[:, None] - ax[jet, :k]) ** 2 + (y[:, None] - ay[jet, :k]) ** 2, axis=1)
        far = first_of_group(jet, w * d2, n_jets)
        ax[:, k], ay[:, k] = x[far], y[far]
    for _ in range(_LLOYD_STEPS):
        nearest = np.argmin((x[:, None] - ax[jet]) ** 2 + (y[:, None] - ay[jet]) ** 2, axis=1)
        cell = jet * n_axes + nearest
        sw = np.bincount(cell, weights=w, minlength=n_jets * n_axes)
        sx = np.bincount(cell, weights=w * x, minlength=n_jets * n_axes)
        sy = np.bincount(cell, weights=w * y, minlength=n_jets * n_axes)
        has = sw > 0
        flat_x, flat_y = ax.reshape(-1), ay.reshape(-1)
        flat_x[has], flat_y[has] = sx[has] / sw[has], sy[has] / sw[has]
    return ax, ay


class Substructure(dict):
    """``tau1``, ``tau2``, ``tau3``, ``msoftdrop`` (raw GeV), and the subjets' four-vectors ``sub1``,
    ``sub2`` (n, 4: E, px, py, pz; ``sub2`` of a one-prong jet is zero) with ``two_prong``."""


def substructure(jet: np.ndarray, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, energy: np.ndarray,
                 jet_eta: np.ndarray, jet_phi: np.ndarray) -> Substructure:
    """N-subjettiness and soft drop of ``len(jet_eta)`` jets from their weighted candidates (flat, grouped by ``jet``)."""
    n_jets = len(jet_eta)
    x, y = eta - jet_eta[jet], wrap_phi(phi - jet_phi[jet])
    total = np.bincount(jet, weights=pt, minlength=n_jets)
    out = Substructure()
    axes2 = None
    for n_axes in (1, 2, 3):
        ax, ay = _axes(jet, x, y, pt, n_jets, n_axes)
        dr = np.sqrt(np.min((x[:, None] - ax[jet]) ** 2 + (y[:, None] - ay[jet]) ** 2, axis=1))
        out[f"tau{n_axes}"] = np.bincount(jet, weights=pt * dr, minlength=n_jets) / (total * R0)
        if n_axes == 2:
            axes2 = (ax, ay)
    ax, ay = axes2
    d = (x[:, None] - ax[jet]) ** 2 + (y[:, None] - ay[jet]) ** 2
    nearest = np.argmin(d, axis=1)
    dr12 = np.hypot(ax[:, 0] - ax[:, 1], ay[:, 0] - ay[:, 1])
    close = np.sqrt(d[np.arange(len(jet)), nearest]) < np.maximum(dr12[jet], 1e-6)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    subs = []
    for k in (0, 1):
        sel = close & (nearest == k)
        subs.append(np.stack([np.bincount(jet[sel], weights=v[sel], minlength=n_jets)
                              for v in (energy, px, py, pz)], axis=-1))
    sub_pt = [np.hypot(s[:, 1], s[:, 2]) for s in subs]
    hard_first = sub_pt[0] >= sub_pt[1]
    first = np.where(hard_first[:, None], subs[0], subs[1])
    second = np.where(hard_first[:, None], subs[1], subs[0])
    soft_pt = np.minimum(sub_pt[0], sub_pt[1])
    two = soft_pt / np.maximum(sub_pt[0] + sub_pt[1], 1e-12) > Z_CUT
    second = np.where(two[:, None], second, 0.0)
    groomed = first + second
    m2 = groomed[:, 0] ** 2 - groomed[:, 1] ** 2 - groomed[:, 2] ** 2 - groomed[:, 3] ** 2
    out.update(msoftdrop=np.sqrt(np.maximum(m2, 0.0)), sub1=first, sub2=second, two_prong=two)
    return out
