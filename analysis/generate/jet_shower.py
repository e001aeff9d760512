"""Sample generator (generate stage): partons into particle-flow candidates — emission, fragmentation, heavy-hadron decays, pile-up.

A documented model, one numpy pass over all partons of a block (no per-jet loop):

1. **Emission** (`_EMISSIONS`): two hard steps, in which a parton radiates with
   probability 0.6 / 0.85 (quark / gluon; the second step 0.45 / 0.6) a gluon of momentum
   fraction z in [0.1, 0.5] (density 1/z, the soft limit of the splitting function) at an
   angle theta log-uniform in [0.05, theta_max] (the collinear 1/theta), and two soft steps
   (probability 0.6 / 0.8, z in [0.01, 0.1], theta in [0.02, theta_max]); the pt centroid
   stays on the parton. theta_max is R for a QCD parton and, by angular ordering, the
   distance to the nearest other quark of its decay for a decay product (a colour singlet
   radiates inside its dipole). In the hard steps a gluon splits to b b-bar (c c-bar) with
   probability `G_TO_BB` = 0.06 (`G_TO_CC` = 0.08) instead: the two-prong heavy-flavour QCD
   jets an H->bb tagger has to reject. This is QCD's substructure: its falling soft-drop
   mass and its tau21, tau32 towards the signals'.
2. **Fragmentation**: each (sub)parton of momentum p (pt) becomes Poisson(n(p)) particles
   (at least one above 5 GeV), n(p) = 3 ln(p / 2 GeV) for quarks, twice that for gluons
   (their larger colour charge), sharing p by Gamma(0.6) (quark) or Gamma(0.9) (gluon)
   fractions, each at a 2-D Gaussian offset of width 0.08 (p_i / GeV)^-1/2 (x 1.25 for
   gluons; 0.003-0.3) from its parton (their momentum-weighted mean offset removed, so
   they keep the parton's momentum). Particles are charged hadrons 62 %, photons 26 %,
   neutral hadrons 10 %, electrons and muons 1 % each.
3. **Heavy flavour**: a b (c) quark's hadron takes x ~ Beta(8, 2.5) (Beta(5, 3)) of its
   momentum and flies L = (p / m) c tau Exp(1) (m_B 5.28 GeV, c tau 455 um; m_D 1.87 GeV,
   c tau 250 um) before decaying to 2 + Poisson(3.5) (c: 2 + Poisson(1)) charged and
   Poisson(2.5) (c: Poisson(1.5)) neutral particles, the leading one a muon or an electron
   in 10 % (c: 7 %) each; their tracks start at the decay vertex, hence their impact
   parameters.
4. **Decays keep their mass** (`_restore_mass`): the particles of a resonance are drawn
   towards its axis until they have its mass (fragmenting massless partons would add ~10 %).
5. **Jet mass resolution**: each object's angular spread is scaled by 1 + 0.08 N(0, 1)
   (`MASS_SMEAR`), and neutral candidates are smeared by the calorimeter cells (photons
   0.01, neutral hadrons 0.03).
6. **Pile-up and underlying event** inside the jet: AK8 Poisson(15) pile-up particles (pt
   0.3 + Exp(0.7) GeV; charged ones from other vertices: dz ~ 4 cm, PUPPI weight 0; neutral
   ones weight 0 (60 %) or U(0, 0.4)) and Poisson(8) underlying-event particles (0.5 +
   Exp(1) GeV, of the primary vertex, in the generator jet); AK4 (CHS: charged pile-up
   removed) Poisson(3) neutral pile-up and Poisson(4) underlying-event particles. Both are
   uniform over the disc.
7. **Out of cone**: particles farther than R from their object's axis are dropped.
8. **Tracks and PUPPI**: charged candidates get d0, dz (cm) with errors sqrt(15 um^2 +
   (100 um GeV / pt)^2) (dz: x 1.3 cosh(eta)^1/2); neutral ones -1 for all four, as PFNano.
   PUPPI weight 1 for charged particles of the primary vertex, 1 - exp(-pt / 1.5 GeV) U for
   neutral ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.generate.jet_physics import HardObjects
from analysis.generate.kinematics import pt_eta_phi_mass, wrap_phi

__all__ = ["PDG", "Particles", "shower"]

PDG = {"charged_hadron": 211, "neutral_hadron": 130, "photon": 22, "electron": 11, "muon": 13}
_SPECIES = np.array([211, 22, 130, 11, 13])
_SPECIES_P = [0.62, 0.26, 0.10, 0.01, 0.01]
_MASS = {211: 0.13957, 130: 0.0, 22: 0.0, 11: 0.000511, 13: 0.10566}
_CHARGED = (211, 11, 13)
# Emission steps: (probability for a quark, a gluon), z range, smallest angle; two hard, two soft
_EMISSIONS = (((0.6, 0.85), 0.1, 0.5, 0.05), ((0.45, 0.6), 0.1, 0.5, 0.05),
              ((0.6, 0.8), 0.01, 0.1, 0.02), ((0.6, 0.8), 0.01, 0.1, 0.02))
G_TO_BB, G_TO_CC = 0.06, 0.08
MASS_SMEAR = 0.08
# Angular resolution of the calorimeter for neutral candidates: ECAL (photons), HCAL (neutral hadrons) cells
_NEUTRAL_SMEAR = {22: 0.01, 130: 0.03}
# b and c hadrons: mass (GeV), c tau (cm), fragmentation Beta(a, b), charged and neutral decay multiplicity, lepton fraction
_HEAVY = {5: (5.28, 0.0455, 8.0, 2.5, 3.5, 2.5, 0.10), 4: (1.87, 0.025, 5.0, 3.0, 1.0, 1.5, 0.07)}
# the same, as lookup tables indexed by |pdgId| (4, 5)
_BY_FLAVOUR = {name: np.array([_HEAVY.get(f, _HEAVY[4])[i] for f in range(6)])
               for i, name in enumerate(("mass", "ctau", "beta_a", "beta_b", "n_charged", "n_neutral", "lepton"))}


@dataclass
class Particles:
    """Flat candidates: object, kinematics, pdgId, charge, tracks, PUPPI weight; ``hadron``: the
    heavy-hadron decay a particle comes from (-1: none), ``pileup``: not of the hard process."""

    obj: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    mass: np.ndarray
    pdg: np.ndarray
    charge: np.ndarray
    d0: np.ndarray
    d0_err: np.ndarray
    dz: np.ndarray
    dz_err: np.ndarray
    puppi: np.ndarray
    hadron: np.ndarray
    pileup: np.ndarray


@dataclass
class HeavyHadrons:
    """Per heavy-hadron decay: its object, flavour (4, 5), flight vector (cm) and momentum (GeV)."""

    obj: np.ndarray
    flavour: np.ndarray
    vertex: np.ndarray  # (n, 3): x, y, z of the decay
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray


def _opening(obj, eta, phi, radius):
    """Per parton, the largest angle it radiates at: the distance to the nearest other parton of its object
    (a colour-singlet decay radiates inside its dipole: angular ordering), R for a lone QCD parton."""
    order = np.lexsort((eta, obj))
    o, e, p = obj[order], eta[order], phi[order]
    nearest = np.full(len(o), np.inf)
    for shift in (1, 2):  # an object has at most three partons (t -> bqq'), next to each other once sorted
        same = o[shift:] == o[:-shift]
        dr = np.where(same, np.hypot(e[shift:] - e[:-shift], wrap_phi(p[shift:] - p[:-shift])), np.inf)
        nearest[shift:] = np.minimum(nearest[shift:], dr)
        nearest[:-shift] = np.minimum(nearest[:-shift], dr)
    out = np.empty(len(o))
    out[order] = np.minimum(nearest, radius[o])
    return out


def _split(rng, obj, pt, eta, phi, flavour, theta_max, step):
    """One emission step: each parton radiates with probability ``p_emit`` (quark, gluon), z with density 1/z
    on [z_min, z_max], theta log-uniform on [theta_min, theta_max]; the pt centroid stays on the parton. In the
    hard steps a gluon splits to b b-bar or c c-bar with probability `G_TO_BB`, `G_TO_CC` (its hard two-prong
    heavy-flavour QCD jets are what an H->bb tagger has to reject), else it emits a gluon."""
    p_emit, z_min, z_max, theta_min = step
    n = len(pt)
    gluon = flavour == 21
    emits = np.flatnonzero(rng.random(n) < np.where(gluon, p_emit[1], p_emit[0]))
    z = z_min * (z_max / z_min) ** rng.random(len(emits))
    top = np.maximum(theta_max[emits], theta_min * 1.001)
    theta = theta_min * (top / theta_min) ** rng.random(len(emits))
    angle = rng.uniform(-np.pi, np.pi, len(emits))
    cx, cy = theta * np.cos(angle), theta * np.sin(angle)
    pt, eta, phi, flavour = pt.copy(), eta.copy(), phi.copy(), flavour.copy()
    e_pt, e_eta, e_phi = z * pt[emits], eta[emits] + (1 - z) * cx, phi[emits] + (1 - z) * cy
    e_flavour = np.full(len(emits), 21)
    if z_min >= 0.1:
        u = rng.random(len(emits))
        pair = np.where(u < G_TO_BB, 5, np.where(u < G_TO_BB + G_TO_CC, 4, 0))
        pair = np.where(gluon[emits], pair, 0)
        e_flavour = np.where(pair > 0, pair, 21)
        flavour[emits] = np.where(pair > 0, pair, flavour[emits])
    pt[emits] *= 1 - z
    eta[emits] -= z * cx
    phi[emits] -= z * cy
    return (np.concatenate([obj, obj[emits]]), np.concatenate([pt, e_pt]), np.concatenate([eta, e_eta]),
            np.concatenate([phi, e_phi]), np.concatenate([flavour, e_flavour]),
            np.concatenate([theta_max, theta_max[emits]]))


def _emit(rng, obj, pt, eta, phi, pdg, radius):
    """Step 1: the (sub)partons after the emission steps (`_EMISSIONS`): object, pt, eta, phi, |pdg|."""
    flavour = np.abs(pdg)
    theta_max = _opening(obj, eta, phi, radius)
    for step in _EMISSIONS:
        obj, pt, eta, phi, flavour, theta_max = _split(rng, obj, pt, eta, phi, flavour, theta_max, step)
    return obj, pt, eta, phi, flavour


def _multiplicity(p, gluon):
    return np.maximum(3.0 * np.log(np.maximum(p, 1e-3) / 2.0), 0.3) * np.where(gluon, 2.0, 1.0)


def _spread(rng, group, momentum, center_eta, center_phi, alpha, width):
    """Particles of each group: momentum shared by Gamma(alpha) fractions, offsets of Gaussian ``width(p_i)``."""
    share = rng.gamma(alpha[group])
    total = np.bincount(group, weights=share, minlength=len(momentum))
    p = momentum[group] * share / total[group]
    sd = width(p)
    dx, dy = sd * rng.normal(size=len(p)), sd * rng.normal(size=len(p))
    # the offsets' momentum-weighted mean removed: the particles' momenta still add up (to first order) to their
    # parton's, so a decay's particles keep its mass instead of gaining the fragmentation's kicks
    dx -= (np.bincount(group, weights=p * dx, minlength=len(momentum)) / momentum)[group]
    dy -= (np.bincount(group, weights=p * dy, minlength=len(momentum)) / momentum)[group]
    return p, center_eta[group] + dx, center_phi[group] + dy


def _species(rng, n):
    return rng.choice(_SPECIES, n, p=_SPECIES_P)


def shower(rng: np.random.Generator, hard: HardObjects, radius: np.ndarray) -> tuple[Particles, HeavyHadrons]:
    """The particle-flow candidates of every object of ``hard`` (``radius``: each object's R) and its heavy hadrons."""
    p_pt, p_eta, p_phi, _ = pt_eta_phi_mass(hard.parton_p4)
    obj, pt, eta, phi, flav = _emit(rng, hard.parton_obj, p_pt, p_eta, p_phi, hard.parton_pdg, radius)
    gluon = flav == 21
    # step 3 first: the heavy quark's hadron takes its share; the rest fragments as any parton
    heavy = np.flatnonzero(np.isin(flav, (4, 5)))
    h_flav = flav[heavy]
    x = rng.beta(_BY_FLAVOUR["beta_a"][h_flav], _BY_FLAVOUR["beta_b"][h_flav])
    frag_pt = pt.copy()
    frag_pt[heavy] *= 1.0 - x
    # a (sub)parton above 5 GeV gives at least one particle; a softer one may give none (its momentum is lost)
    count = np.maximum(rng.poisson(_multiplicity(frag_pt, gluon)), (frag_pt > 5.0).astype(np.int64))
    group = np.repeat(np.arange(len(pt)), count)

    def width(p):
        return np.clip(0.08 / np.sqrt(p), 0.003, 0.3) * np.where(gluon[group], 1.25, 1.0)
    f_pt, f_eta, f_phi = _spread(rng, group, frag_pt, eta, phi, np.where(gluon, 0.9, 0.6), width)
    f_pdg = _species(rng, len(f_pt))

    # heavy-hadron decays
    h_mass, h_ctau, n_ch_mean, n_neu_mean, lepton = (_BY_FLAVOUR[k][h_flav] for k in
                                                      ("mass", "ctau", "n_charged", "n_neutral", "lepton"))
    h_pt, h_eta, h_phi = x * pt[heavy], eta[heavy], phi[heavy]
    h_p = h_pt * np.cosh(h_eta)
    flight = h_p / h_mass * h_ctau * rng.exponential(size=len(heavy))
    sin_t, cos_t = 1.0 / np.cosh(h_eta), np.tanh(h_eta)
    vertex = np.stack([flight * sin_t * np.cos(h_phi), flight * sin_t * np.sin(h_phi), flight * cos_t], axis=-1)
    n_ch = 2 + rng.poisson(n_ch_mean)
    n_neu = rng.poisson(n_neu_mean)
    d_group = np.repeat(np.arange(len(heavy)), n_ch + n_neu)
    first = np.cumsum(n_ch + n_neu) - (n_ch + n_neu)
    position = np.arange(len(d_group)) - first[d_group]
    charged = position < n_ch[d_group]

    def decay_width(p):
        return 0.8 * h_mass[d_group] / np.maximum(h_p[d_group], 1e-3)
    d_pt, d_eta, d_phi = _spread(rng, d_group, h_pt, h_eta, h_phi, np.full(len(heavy), 1.5), decay_width)
    d_pdg = np.where(charged, 211, np.where(rng.random(len(d_group)) < 0.7, 22, 130))
    lep = rng.random(len(heavy))
    lead = position == 0
    d_pdg = np.where(lead & (lep[d_group] < lepton[d_group]), 13,
                     np.where(lead & (lep[d_group] < 2 * lepton[d_group]), 11, d_pdg))

    # pile-up and the underlying event in the jet's disc
    fat = hard.obj_fat
    _, o_eta, o_phi, _ = pt_eta_phi_mass(hard.obj_p4)
    n_pu, n_ue = rng.poisson(np.where(fat, 15.0, 3.0)), rng.poisson(np.where(fat, 8.0, 4.0))
    u_obj = np.concatenate([np.repeat(np.arange(len(fat)), n_pu), np.repeat(np.arange(len(fat)), n_ue)])
    pileup = np.arange(len(u_obj)) < n_pu.sum()
    r = radius[u_obj] * np.sqrt(rng.random(len(u_obj)))
    a = rng.uniform(-np.pi, np.pi, len(u_obj))
    u_pt = np.where(pileup, 0.3 + rng.exponential(0.7, len(u_obj)), 0.5 + rng.exponential(1.0, len(u_obj)))
    u_pdg = np.where(pileup & ~fat[u_obj], rng.choice([22, 130], len(u_obj), p=[0.6, 0.4]),
                     rng.choice([211, 22, 130], len(u_obj), p=[0.55, 0.28, 0.17]))

    parts = {"obj": np.concatenate([obj[group], obj[heavy][d_group], u_obj]),
             "pt": np.concatenate([f_pt, d_pt, u_pt]),
             "eta": np.concatenate([f_eta, d_eta, o_eta[u_obj] + r * np.cos(a)]),
             "phi": np.concatenate([f_phi, d_phi, o_phi[u_obj] + r * np.sin(a)]),
             "pdg": np.concatenate([f_pdg, d_pdg, u_pdg]),
             "hadron": np.concatenate([np.full(len(f_pt), -1), np.where(charged, d_group, -1), np.full(len(u_pt), -1)]),
             "pileup": np.concatenate([np.zeros(len(f_pt) + len(d_pt), bool), pileup]),
             "decay": np.concatenate([np.ones(len(f_pt) + len(d_pt), bool), np.zeros(len(u_pt), bool)])}
    _restore_mass(parts, hard, o_eta, o_phi)
    # the jet mass resolution beyond the energy response's: every object's spread scaled by 1 + 0.08 N(0, 1)
    spread = np.clip(1.0 + MASS_SMEAR * rng.normal(size=len(fat)), 0.7, 1.3)[parts["obj"]]
    parts["eta"] = o_eta[parts["obj"]] + spread * (parts["eta"] - o_eta[parts["obj"]])
    parts["phi"] = o_phi[parts["obj"]] + spread * wrap_phi(parts["phi"] - o_phi[parts["obj"]])
    for pdg, smear in _NEUTRAL_SMEAR.items():
        sel = parts["pdg"] == pdg
        parts["eta"][sel] += smear * rng.normal(size=int(sel.sum()))
        parts["phi"][sel] += smear * rng.normal(size=int(sel.sum()))
    parts = _inside(parts, o_eta, o_phi, radius)
    del parts["decay"]
    return _finish(rng, parts, vertex), HeavyHadrons(obj=obj[heavy], flavour=h_flav, vertex=vertex, pt=h_pt,
                                                      eta=h_eta, phi=h_phi)


def _restore_mass(parts, hard: HardObjects, o_eta, o_phi) -> None:
    """Draw the particles of each decay (an object of several partons) towards its axis until they have its mass.

    Fragmenting massless partons gives each prong a mass without taking it from the prongs' opening angle,
    as a real decay's four-momentum does: the decay products would weigh some 10 % more than the
    resonance. The mass of collinear particles grows linearly with their angular offsets, so two rescalings
    of the offsets by (resonance mass / particles' mass) restore it (to a few per mille).
    """
    n = len(hard.obj_fat)
    target = np.zeros((n, 4))
    np.add.at(target, hard.parton_obj, hard.parton_p4)
    m_target = pt_eta_phi_mass(target)[3]
    several = np.bincount(hard.parton_obj, minlength=n) > 1
    sel = np.flatnonzero(parts["decay"] & several[parts["obj"]])
    o = parts["obj"][sel]
    deta, dphi = parts["eta"][sel] - o_eta[o], wrap_phi(parts["phi"][sel] - o_phi[o])
    pt = parts["pt"][sel]
    mass = np.select([parts["pdg"][sel] == k for k in _MASS], list(_MASS.values()))
    scale = np.ones(n)
    for _ in range(2):
        eta, phi = o_eta[o] + scale[o] * deta, o_phi[o] + scale[o] * dphi
        p4 = np.stack([np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2), pt * np.cos(phi), pt * np.sin(phi),
                       pt * np.sinh(eta)], axis=-1)
        total = np.zeros((n, 4))
        np.add.at(total, o, p4)
        m_now = pt_eta_phi_mass(total)[3]
        scale = np.where(several & (m_now > 0), scale * np.clip(m_target / np.maximum(m_now, 1e-9), 0.5, 1.0), 1.0)
    parts["eta"][sel] = o_eta[o] + scale[o] * deta
    parts["phi"][sel] = wrap_phi(o_phi[o] + scale[o] * dphi)


def _inside(parts, o_eta, o_phi, radius) -> dict:
    """The particles within R of their object's axis: what falls outside (wide-angle radiation, the edge of a
    barely merged decay) is not the jet's."""
    o = parts["obj"]
    keep = np.hypot(parts["eta"] - o_eta[o], wrap_phi(parts["phi"] - o_phi[o])) < radius[o]
    return {k: v[keep] for k, v in parts.items()}


def _finish(rng, parts, vertex) -> Particles:
    """Charges, masses, tracks (impact parameters from the decay vertex) and PUPPI weights."""
    pdg_abs = parts["pdg"]
    n = len(pdg_abs)
    charged = np.isin(pdg_abs, _CHARGED)
    sign = rng.choice([-1, 1], n)
    # a positive pion is +211, a positive muon or electron -13 / -11 (PDG: the lepton is negative)
    pdg = np.where(charged, np.where(pdg_abs == 211, sign, -sign) * pdg_abs, pdg_abs)
    charge = np.where(charged, sign, 0)
    mass = np.select([pdg_abs == k for k in _MASS], list(_MASS.values()))
    pt, eta, phi = parts["pt"], parts["eta"], parts["phi"]
    d0_err = np.sqrt(0.0015**2 + (0.01 / pt) ** 2)
    dz_err = 1.3 * d0_err * np.sqrt(np.cosh(eta))
    d0_true, dz_true = np.zeros(n), np.zeros(n)
    from_hadron = parts["hadron"] >= 0
    v = vertex[parts["hadron"][from_hadron]]
    ph, sh = phi[from_hadron], np.sinh(eta[from_hadron])
    d0_true[from_hadron] = v[:, 0] * np.sin(ph) - v[:, 1] * np.cos(ph)
    dz_true[from_hadron] = v[:, 2] - (v[:, 0] * np.cos(ph) + v[:, 1] * np.sin(ph)) * sh
    pileup = parts["pileup"]
    dz_true[pileup] = rng.normal(0.0, 4.0, int(pileup.sum()))
    d0 = np.where(charged, d0_true + d0_err * rng.normal(size=n), -1.0)
    dz = np.where(charged, dz_true + dz_err * rng.normal(size=n), -1.0)
    neutral_w = np.clip(1.0 - np.exp(-pt / 1.5) * rng.random(n), 0.0, 1.0)
    pileup_w = np.where(rng.random(n) < 0.6, 0.0, rng.uniform(0.0, 0.4, n))
    puppi = np.where(pileup, np.where(charged, 0.0, pileup_w), np.where(charged, 1.0, neutral_w))
    return Particles(obj=parts["obj"], pt=pt, eta=eta, phi=phi, mass=mass, pdg=pdg, charge=charge,
                     d0=d0, d0_err=np.where(charged, d0_err, -1.0), dz=dz, dz_err=np.where(charged, dz_err, -1.0),
                     puppi=puppi, hadron=parts["hadron"], pileup=pileup)
