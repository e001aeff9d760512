"""Sample generator (generate stage): the hard process of the jet samples — boosted resonances and QCD partons.

Every event of a jet sample holds two AK8 objects back to back in phi (the "fat jets") and
one to three AK4 objects elsewhere (the event's other jets, `extra_jets`). An object is the
direction and momentum of what makes the jet; its partons are what the shower
(`analysis.generate.jet_shower`) turns into particles:

* QCD: one parton, a gluon with probability `gluon_fraction` (0.6 at 300 GeV falling to
  0.35 at 1.5 TeV, as in dijet events), else a u, d or s quark; a few per cent are c or b
  quarks (heavy flavour from gluon splitting, one prong here).
* W -> qq': the W (Breit-Wigner, 80.4 +- 2.1 GeV) decays isotropically in its rest frame to
  u d-bar or c s-bar (half each); H -> bb (125 GeV) to two b quarks (4.8 GeV); t -> bW (172.5
  +- 1.4 GeV) and W -> qq' again: three prongs.
* Merged decays only: a decay with a quark farther than `MERGED_DR` = 0.8 from its
  resonance's direction is drawn again (decay angles and mass, not the momentum), so every
  resonance is one AK8 jet; a quark near the edge loses the part of its shower outside the
  jet (the low mass tail), and a few per cent of the jets, whose axis moved, fail the
  label's 0.8. The samples stand for the merged phase space; its cross section is the
  configuration's.
* The resonance pt follows a power law pt^-n above `pt_min` (300 GeV; tops 400 GeV, where
  they start to merge) up to 2 TeV, QCD n = 3, steeper than the signals' n = 2.5 (prepare's
  flat (pt, eta) reweighting is there for that); the recoiling object takes pt x (1 + 0.08
  N(0,1)), eta independent, phi opposite.

Every decay and QCD parton is also a generator record (`GenRecords`) with its mother's
position, as NanoAOD's GenPart: t -> b W -> q q', H -> b b, W -> q q', the QCD parton alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analysis.generate.kinematics import (
    delta_phi,
    four_vector,
    pt_eta_phi_mass,
    sample_breit_wigner,
    sample_power_law,
    two_body_decay,
)

__all__ = ["FAT_PROCESSES", "MERGED_DR", "GenRecords", "HardObjects", "extra_jets", "gluon_fraction",
           "hard_process"]

MERGED_DR = 0.8
M_W, W_WIDTH, M_H, M_TOP, TOP_WIDTH, M_B, M_C = 80.4, 2.1, 125.0, 172.5, 1.4, 4.8, 1.5
PT_MAX = 2000.0  # GeV: the spectra end here (a few jets in 10^4 would pass it otherwise)
_MAX_REDRAWS = 200  # merged-decay redraws; at pt_min 40 % of tops (80 % of Ws) merge: 0.6^200 never binds
# process -> (its fat objects, the resonance pt_min in GeV, the power-law index)
FAT_PROCESSES = {"QCD": ("qcd", 300.0, 3.0), "Wqq": ("w", 300.0, 2.5), "Hbb": ("h", 300.0, 2.5),
                 "Tbqq": ("top", 400.0, 2.5)}
# Status flags of the records (CMSSW GenStatusFlags): isPrompt, isHardProcess, fromHardProcess, isFirstCopy, isLastCopy.
_FLAGS = (1 << 0) | (1 << 7) | (1 << 8) | (1 << 12) | (1 << 13)


@dataclass
class GenRecords:
    """Generator records, flat: one row per particle, ``mother`` a row of the same table (-1: none)."""

    event: list = field(default_factory=list)
    p4: list = field(default_factory=list)
    pdg: list = field(default_factory=list)
    mother: list = field(default_factory=list)
    status: list = field(default_factory=list)
    _n: int = 0

    def add(self, event: np.ndarray, p4: np.ndarray, pdg: np.ndarray, mother: np.ndarray | None, status: int) -> np.ndarray:
        rows = self._n + np.arange(len(event))
        self._n += len(event)
        self.event.append(np.asarray(event, np.int64))
        self.p4.append(p4)
        self.pdg.append(np.broadcast_to(np.asarray(pdg, np.int64), (len(event),)))
        self.mother.append(np.full(len(event), -1, np.int64) if mother is None else np.asarray(mother, np.int64))
        self.status.append(np.full(len(event), status, np.int64))
        return rows

    def table(self) -> dict[str, np.ndarray]:
        """The records as columns: event, pt, eta, phi, mass, pdgId, status, statusFlags, mother (a row)."""
        if not self.event:
            empty = np.zeros(0)
            return {k: empty for k in ("event", "pt", "eta", "phi", "mass", "pdgId", "status", "statusFlags",
                                       "mother")}
        p4 = np.concatenate(self.p4)
        pt, eta, phi, mass = pt_eta_phi_mass(p4)
        return {"event": np.concatenate(self.event), "pt": pt, "eta": eta, "phi": phi, "mass": mass,
                "pdgId": np.concatenate(self.pdg), "status": np.concatenate(self.status),
                "statusFlags": np.full(len(pt), _FLAGS, np.int64), "mother": np.concatenate(self.mother)}


@dataclass
class HardObjects:
    """The objects of a block of events (one row each) and their partons (one row each).

    ``obj_*``: event, pt, eta, phi and whether it is an AK8 object; ``parton_*``: its object,
    four-vector (E, px, py, pz) and signed pdgId (21 gluon).
    """

    obj_event: np.ndarray
    obj_fat: np.ndarray
    obj_p4: np.ndarray
    parton_obj: np.ndarray
    parton_p4: np.ndarray
    parton_pdg: np.ndarray
    records: GenRecords


def gluon_fraction(pt: np.ndarray) -> np.ndarray:
    """Fraction of QCD jets from gluons: 0.6 at 300 GeV, falling linearly in log pt to 0.35 at 1.5 TeV."""
    return np.clip(0.6 - 0.25 * np.log(np.asarray(pt) / 300.0) / np.log(5.0), 0.3, 0.7)


def _qcd_pdg(rng: np.random.Generator, pt: np.ndarray) -> np.ndarray:
    n = len(pt)
    quark = rng.choice([1, 2, 3, 4, 5], n, p=[0.34, 0.40, 0.16, 0.06, 0.04])
    pdg = np.where(rng.random(n) < gluon_fraction(pt), 21, quark * rng.choice([-1, 1], n))
    return pdg.astype(np.int64)


def _object_p4(rng, n, pt, mass) -> np.ndarray:
    eta = np.clip(rng.normal(0.0, 1.0, n), -2.3, 2.3)  # within the tracker with the jet's radius to spare
    return four_vector(pt, eta, rng.uniform(-np.pi, np.pi, n), mass)


def _dr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _, ea, pa, _ = pt_eta_phi_mass(a)
    _, eb, pb, _ = pt_eta_phi_mass(b)
    return np.hypot(ea - eb, delta_phi(pa, pb))


def _merged_decay(rng, parent_pt, parent_dir, decay):
    """``decay(rng, pt, direction) -> (resonance, quarks, extras)``, redrawn (mass and angles) until every
    quark is within `MERGED_DR` of the resonance; ``extras`` (more arrays) follow their decay."""
    n = len(parent_pt)
    todo = np.arange(n)
    out: list[np.ndarray] = []
    for _ in range(_MAX_REDRAWS):
        res, quarks, extras = decay(rng, parent_pt[todo], parent_dir[todo])
        drawn = [res, *quarks, *extras]
        if not out:
            out = [np.zeros((n, *a.shape[1:]), a.dtype) for a in drawn]
        merged = np.all([_dr(q, res) < MERGED_DR for q in quarks], axis=0)
        for o, a in zip(out, drawn):
            o[todo[merged]] = a[merged]
        todo = todo[~merged]
        if not len(todo):
            return out
    raise RuntimeError(f"{len(todo)} decays not merged after {_MAX_REDRAWS} draws")  # a broken decay model


def _with_mass(pt, direction, mass):
    _, eta, phi, _ = pt_eta_phi_mass(direction)
    return four_vector(pt, eta, phi, mass)


def _w_mass(rng, n):
    return sample_breit_wigner(rng, n, mass=M_W, width=W_WIDTH, low=65.0, high=95.0)


def _w_decay(rng, pt, direction):
    w = _with_mass(pt, direction, _w_mass(rng, len(pt)))
    charm = rng.random(len(pt)) < 0.5  # W -> c s-bar or u d-bar (Cabibbo-suppressed modes neglected)
    q1, q2 = two_body_decay(rng, w, np.where(charm, M_C, 0.0), 0.0)
    return w, [q1, q2], [charm]


def _h_decay(rng, pt, direction):
    h = _with_mass(pt, direction, np.full(len(pt), M_H))  # Gamma_H = 4 MeV: no line shape to draw
    return h, list(two_body_decay(rng, h, M_B, M_B)), []


def _top_decay(rng, pt, direction):
    top = _with_mass(pt, direction, sample_breit_wigner(rng, len(pt), mass=M_TOP, width=TOP_WIDTH,
                                                        low=160.0, high=185.0))
    b, w = two_body_decay(rng, top, M_B, _w_mass(rng, len(pt)))
    charm = rng.random(len(pt)) < 0.5
    q1, q2 = two_body_decay(rng, w, np.where(charm, M_C, 0.0), 0.0)
    return top, [b, q1, q2], [w, charm]


def _add_resonance(rng, records: GenRecords, event, kind, pt, direction):
    """Resonances of one kind (``w``, ``h``, ``top``) merged: their records, and (p4, pdg) of their quarks."""
    n = len(pt)
    sign = rng.choice([-1, 1], n)
    if kind == "h":
        res, b1, b2 = _merged_decay(rng, pt, direction, _h_decay)
        row = records.add(event, res, 25, None, 22)
        quarks, pdgs, mothers = [b1, b2], [np.full(n, 5), np.full(n, -5)], [row, row]
    elif kind == "w":
        res, q1, q2, charm = _merged_decay(rng, pt, direction, _w_decay)
        row = records.add(event, res, 24 * sign, None, 22)
        quarks, mothers = [q1, q2], [row, row]
        pdgs = [np.where(charm, 4, 2) * sign, np.where(charm, -3, -1) * sign]
    else:
        res, b, q1, q2, w, charm = _merged_decay(rng, pt, direction, _top_decay)
        row = records.add(event, res, 6 * sign, None, 22)
        w_row = records.add(event, w, 24 * sign, row, 22)
        quarks, mothers = [b, q1, q2], [row, w_row, w_row]
        pdgs = [5 * sign, np.where(charm, 4, 2) * sign, np.where(charm, -3, -1) * sign]
    for q, p, m in zip(quarks, pdgs, mothers):
        records.add(event, q, p, m, 23)
    return res, np.stack(quarks), np.stack(pdgs)


def hard_process(rng: np.random.Generator, process: str, n_events: int) -> HardObjects:
    """The two AK8 objects of each of ``n_events`` events of ``process`` (`FAT_PROCESSES`) and their partons.

    Object 2k and 2k+1 are event k's; the first is the resonance (QCD: the first parton).
    """
    kind, pt_min, index = FAT_PROCESSES[process]
    event = np.arange(n_events)
    pt = sample_power_law(rng, n_events, x_min=pt_min, index=index, x_max=PT_MAX)
    recoil_pt = np.clip(pt * (1.0 + 0.08 * rng.normal(size=n_events)), 0.8 * pt_min, PT_MAX)
    first = _object_p4(rng, n_events, pt, 0.0)
    _, _, phi, _ = pt_eta_phi_mass(first)
    recoil_eta = np.clip(rng.normal(0.0, 1.0, n_events), -2.3, 2.3)
    recoil_phi = phi + np.pi + 0.05 * rng.normal(size=n_events)
    recoil = four_vector(recoil_pt, recoil_eta, recoil_phi, 0.0)
    records = GenRecords()
    objects, partons = [], []
    for slot, (opt, direction) in enumerate(((pt, first), (recoil_pt, recoil))):
        slot_kind = kind if (slot == 0 or kind == "top") else "qcd"
        if slot_kind == "qcd":
            pdg = _qcd_pdg(rng, opt)
            mass = np.where(np.abs(pdg) == 5, M_B, np.where(np.abs(pdg) == 4, M_C, 0.0))
            p4 = _with_mass(opt, direction, mass)
            records.add(event, p4, pdg, None, 23)
            objects.append(p4)
            partons.append((p4[None], pdg[None], 2 * event + slot))
        else:
            res, quarks, pdgs = _add_resonance(rng, records, event, slot_kind, opt, direction)
            objects.append(res)
            partons.append((quarks, pdgs, 2 * event + slot))
    parton_p4 = np.concatenate([p.reshape(-1, 4) for p, _, _ in partons])
    parton_pdg = np.concatenate([d.reshape(-1) for _, d, _ in partons])
    parton_obj = np.concatenate([np.broadcast_to(o, d.shape).reshape(-1) for _, d, o in partons])
    obj_p4 = np.empty((2 * n_events, 4))
    obj_p4[0::2], obj_p4[1::2] = objects
    return HardObjects(obj_event=np.repeat(event, 2), obj_fat=np.ones(2 * n_events, bool), obj_p4=obj_p4,
                       parton_obj=parton_obj, parton_p4=parton_p4, parton_pdg=parton_pdg, records=records)


# AK4 jets: hadron flavour mix (light, c, b) of the event's other jets, by process.
AK4_FLAVOURS = {"QCD": (0.85, 0.09, 0.06), "Wqq": (0.82, 0.10, 0.08), "Hbb": (0.80, 0.10, 0.10),
                "Tbqq": (0.62, 0.10, 0.28)}


def extra_jets(rng: np.random.Generator, process: str, n_events: int) -> HardObjects:
    """The AK4 objects of each event: 1 + Binomial(2, 0.4) jets, pt ~ pt^-3 above 20 GeV (to 400),
    |eta| < 2.4, each one parton of the process's flavour mix (`AK4_FLAVOURS`; light: half gluons)."""
    count = 1 + rng.binomial(2, 0.4, n_events)
    event = np.repeat(np.arange(n_events), count)
    n = len(event)
    pt = sample_power_law(rng, n, x_min=20.0, index=3.0, x_max=400.0)
    flavour = rng.choice([0, 4, 5], n, p=AK4_FLAVOURS[process])
    light = np.where(rng.random(n) < 0.5, 21, rng.choice([1, 2, 3], n))
    pdg = np.where(flavour == 0, light, flavour) * np.where(light == 21, 1, rng.choice([-1, 1], n))
    mass = np.where(flavour == 5, M_B, np.where(flavour == 4, M_C, 0.0))
    eta = rng.uniform(-2.4, 2.4, n)
    p4 = four_vector(pt, eta, rng.uniform(-np.pi, np.pi, n), mass)
    return HardObjects(obj_event=event, obj_fat=np.zeros(n, bool), obj_p4=p4, parton_obj=np.arange(n),
                       parton_p4=p4, parton_pdg=pdg.astype(np.int64), records=GenRecords())
