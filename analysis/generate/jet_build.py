"""Sample generator (generate stage): reconstructed jets from their candidates — energy response, corrections, vertices.

For each object (`analysis.generate.jet_physics`) with its candidates (`jet_shower`):

* **Generator jet**: the four-vector sum of its candidates of the hard process (no pile-up),
  before any detector effect: ``GenJet`` / ``GenJetAK8``.
* **Response**: the reconstructed (corrected) jet pt is gen pt x r, with
  r = mu(pt, eta) (1 + KAPPA (f_nh - F_NH)) (1 + sigma(pt) N(0, 1)), pt and eta the
  generator jet's, `median_response` mu = 1 - B/pt - C_ETA eta^2 (B = 2.5 GeV for AK4,
  8 GeV for AK8; C_ETA = 0.005) and `resolution` sigma = sqrt(S^2/pt + C^2) (S = 0.9
  GeV^1/2, C = 0.05). f_nh is the jet's neutral-hadron energy fraction (of its weighted
  candidates): the calorimeter's lower response to hadrons makes jets rich in them low
  (KAPPA = -0.5, around F_NH = 0.10), so a regression from the constituents can do better
  than one from (pt, eta) alone. The response lands on the candidates: their momenta are
  scaled so that they add up to the uncorrected jet.
* **Correction**: ``rawFactor`` = `raw_factor` = 0.04 + A/pt (A = 2 GeV AK4, 6 GeV AK8): the
  candidates (AK8: PUPPI-weighted) add up to pt x (1 - rawFactor) and mass x (1 - rawFactor)
  exactly as computed (float32 rounding aside), the processor's closure.
* **Secondary vertices**: a heavy hadron with at least two charged decay tracks is found
  with probability 0.75 (b) or 0.5 (c) if its measured dxy significance exceeds 3, dxy
  measured with sigma = sqrt(150 um^2 + (0.05 dxy)^2); its pt, mass and energy are those
  of its (scaled) tracks, cos(theta_SV,PV) the angle between their momentum and the
  measured flight. A jet also gets a fake vertex of its two hardest charged tracks with
  probability 0.15 (AK8) or 0.08 (AK4): dxy ~ Exp(200 um), so a significance of about 1.
"""

from __future__ import annotations

import numpy as np

from analysis.generate.jet_physics import HardObjects
from analysis.generate.jet_shower import HeavyHadrons, Particles
from analysis.generate.jet_substructure import substructure
from analysis.generate.kinematics import pt_eta_phi_mass, wrap_phi

__all__ = ["F_NH", "KAPPA", "build_jets", "median_response", "raw_factor", "resolution"]

KAPPA, F_NH = -0.5, 0.10
_B = {True: 8.0, False: 2.5}  # GeV: the offset term of the response, AK8 / AK4
_C_ETA, _S, _C = 0.005, 0.9, 0.05
_A = {True: 6.0, False: 2.0}  # GeV: the correction's offset term
_SV_EFF = {5: 0.75, 4: 0.5}
_FAKE_SV = {True: 0.15, False: 0.08}


def median_response(pt: np.ndarray, eta: np.ndarray, fat: np.ndarray | bool) -> np.ndarray:
    """mu(pt, eta): the median reco/gen pt at f_nh = F_NH (pt, eta of the generator jet)."""
    b = np.where(fat, _B[True], _B[False])
    return 1.0 - b / np.asarray(pt) - _C_ETA * np.asarray(eta) ** 2


def resolution(pt: np.ndarray) -> np.ndarray:
    """sigma(pt) = sqrt(S^2/pt + C^2): the relative spread of the response's stochastic part."""
    return np.sqrt(_S**2 / np.asarray(pt) + _C**2)


def raw_factor(pt: np.ndarray, fat: np.ndarray | bool) -> np.ndarray:
    """NanoAOD's rawFactor of a corrected jet of this pt: 1 - raw pt / corrected pt."""
    return 0.04 + np.where(fat, _A[True], _A[False]) / np.asarray(pt)


def _sums(group, n, weight, pt, eta, phi, mass):
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    energy = np.sqrt(px * px + py * py + pz * pz + mass * mass)
    return np.stack([np.bincount(group, weights=weight * v, minlength=n) for v in (energy, px, py, pz)], axis=-1)


def build_jets(rng: np.random.Generator, hard: HardObjects, parts: Particles, hadrons: HeavyHadrons) -> dict:
    """Jets, generator jets, candidates (scaled, grouped by object), subjets and vertices of the objects."""
    order = np.argsort(parts.obj, kind="stable")
    p = {k: v[order] for k, v in vars(parts).items()}
    n = len(hard.obj_fat)
    fat = hard.obj_fat
    obj = p["obj"]
    weight = np.where(fat[obj], p["puppi"], 1.0)
    gen = _sums(obj, n, (~p["pileup"]).astype(float), p["pt"], p["eta"], p["phi"], p["mass"])
    g_pt, g_eta, g_phi, g_mass = pt_eta_phi_mass(gen)
    reco = _sums(obj, n, weight, p["pt"], p["eta"], p["phi"], p["mass"])
    nh = _sums(obj, n, weight * (np.abs(p["pdg"]) == 130), p["pt"], p["eta"], p["phi"], p["mass"])
    f_nh = nh[:, 0] / reco[:, 0]
    response = median_response(g_pt, g_eta, fat) * (1 + KAPPA * (f_nh - F_NH)) * (1 + resolution(g_pt) * rng.normal(size=n))
    target = g_pt * np.maximum(response, 0.05)
    factor = raw_factor(target, fat)
    scale = target * (1 - factor) / np.hypot(reco[:, 1], reco[:, 2])
    p["pt"] = p["pt"] * scale[obj]
    raw = _sums(obj, n, weight, p["pt"], p["eta"], p["phi"], p["mass"])
    r_pt, r_eta, r_phi, r_mass = pt_eta_phi_mass(raw)
    jets = {"obj_event": hard.obj_event, "fat": fat, "pt": r_pt / (1 - factor), "eta": r_eta, "phi": r_phi,
            "mass": r_mass / (1 - factor), "rawFactor": factor, "n_cand": np.bincount(obj, minlength=n),
            "gen_pt": g_pt, "gen_eta": g_eta, "gen_phi": g_phi, "gen_mass": g_mass,
            "area": np.where(fat, 2.01, 0.503) + rng.normal(0.0, np.where(fat, 0.03, 0.02), n)}
    # hadron flavour as CMS defines it: from the b and c hadrons in the jet (a gluon's g -> bb included)
    jets["nBHadrons"], jets["nCHadrons"] = (np.bincount(hadrons.obj[hadrons.flavour == f], minlength=n) for f in (5, 4))
    jets["hadronFlavour"] = np.where(jets["nBHadrons"] > 0, 5, np.where(jets["nCHadrons"] > 0, 4, 0))
    by_obj = np.argsort(hard.parton_obj, kind="stable")  # the first parton of an object: its flavour (AK4: the only one)
    jets["partonFlavour"] = hard.parton_pdg[by_obj[np.searchsorted(hard.parton_obj[by_obj], np.arange(n))]]
    sub = {}
    if fat.any():
        on_fat = fat[obj]
        fat_rows = np.flatnonzero(fat)
        local = np.full(n, -1)
        local[fat_rows] = np.arange(len(fat_rows))
        w = weight[on_fat]
        px, py, pz = (p["pt"] * np.cos(p["phi"]), p["pt"] * np.sin(p["phi"]), p["pt"] * np.sinh(p["eta"]))
        energy = np.sqrt(px**2 + py**2 + pz**2 + p["mass"] ** 2)
        sub = substructure(local[obj[on_fat]], w * p["pt"][on_fat], p["eta"][on_fat], p["phi"][on_fat],
                           w * energy[on_fat], r_eta[fat_rows], r_phi[fat_rows])
        sub["rows"] = fat_rows
        sub["correction"] = 1 / (1 - factor[fat_rows])
    return {"jets": jets, "cands": p, "sub": sub, "svs": _vertices(rng, jets, p, hadrons)}


def _vertices(rng, jets, p, hadrons: HeavyHadrons) -> dict:
    """Secondary vertices (true and fake) with their jet (object) and the PFNano fields."""
    n_h = len(hadrons.obj)
    track = p["hadron"] >= 0
    h = p["hadron"][track]
    t = {k: p[k][track] for k in ("pt", "eta", "phi", "mass")}
    sums = _sums(h, n_h, np.ones(len(h)), t["pt"], t["eta"], t["phi"], t["mass"])
    ntracks = np.bincount(h, minlength=n_h)
    flight_t = np.hypot(hadrons.vertex[:, 0], hadrons.vertex[:, 1])
    sigma = np.sqrt(0.015**2 + (0.05 * flight_t) ** 2)
    measured = hadrons.vertex + sigma[:, None] * rng.normal(size=(n_h, 3))
    dxy = np.hypot(measured[:, 0], measured[:, 1])
    found = (ntracks >= 2) & (dxy / sigma > 3) & (rng.random(n_h) < np.where(hadrons.flavour == 5, _SV_EFF[5], _SV_EFF[4]))
    real = {"obj": hadrons.obj[found], "p4": sums[found], "ntracks": ntracks[found], "dxy": dxy[found],
            "sigma": sigma[found], "flight": measured[found]}
    # fakes: the two hardest charged tracks of a jet
    charged = np.flatnonzero(p["charge"] != 0)
    c_obj = p["obj"][charged]
    n_obj = len(jets["fat"])
    n_charged = np.bincount(c_obj, minlength=n_obj)
    fake_jet = np.flatnonzero((n_charged >= 2) & (rng.random(n_obj) < np.where(jets["fat"], _FAKE_SV[True], _FAKE_SV[False])))
    # by object, then decreasing pt: one integer key (a positive float32's bits grow with it)
    pt_bits = p["pt"][charged].astype(np.float32).view(np.uint32).astype(np.int64)
    order = charged[np.argsort((c_obj.astype(np.int64) << 32) | (0xFFFFFFFF - pt_bits), kind="stable")]
    start = np.searchsorted(p["obj"][order], fake_jet)
    pair = np.concatenate([order[start], order[start + 1]])
    pair_sv = np.concatenate([np.arange(len(fake_jet))] * 2)
    f_sums = _sums(pair_sv, len(fake_jet), np.ones(len(pair)), p["pt"][pair], p["eta"][pair], p["phi"][pair],
                   p["mass"][pair])
    f_dxy = rng.exponential(0.02, len(fake_jet))
    f_sigma = np.full(len(fake_jet), 0.015)
    _, f_eta, f_phi, _ = pt_eta_phi_mass(f_sums)
    f_dir = np.stack([np.cos(f_phi), np.sin(f_phi), np.sinh(f_eta)], axis=-1)
    f_flight = f_dxy[:, None] * f_dir + 0.01 * rng.normal(size=(len(fake_jet), 3))
    sv = {k: np.concatenate([real[k], v]) for k, v in
          {"obj": fake_jet, "p4": f_sums, "ntracks": np.full(len(fake_jet), 2), "dxy": f_dxy, "sigma": f_sigma,
           "flight": f_flight}.items()}
    pt, eta, phi, mass = pt_eta_phi_mass(sv["p4"])
    d3d = np.linalg.norm(sv["flight"], axis=1)
    momentum = np.linalg.norm(sv["p4"][:, 1:], axis=1)
    cos = np.einsum("ij,ij->i", sv["p4"][:, 1:], sv["flight"]) / np.maximum(momentum * d3d, 1e-12)
    ndof = 2.0 * sv["ntracks"] - 3.0
    chi2 = rng.chisquare(ndof)
    o = sv["obj"]
    jet_e = jets["pt"][o] * np.cosh(jets["eta"][o])
    return {"obj": o, "pt": pt, "eta": eta, "phi": phi, "mass": mass, "ntracks": sv["ntracks"].astype(float),
            "chi2": chi2, "ndof": ndof, "normchi2": chi2 / ndof, "dxy": sv["dxy"], "dxysig": sv["dxy"] / sv["sigma"],
            "d3d": d3d, "d3dsig": d3d / (1.3 * sv["sigma"]), "costhetasvpv": cos,
            "phirel": wrap_phi(phi - jets["phi"][o]), "ptrel": pt / jets["pt"][o], "enration": sv["p4"][:, 0] / jet_e,
            "deltaR": np.hypot(eta - jets["eta"][o], wrap_phi(phi - jets["phi"][o]))}
