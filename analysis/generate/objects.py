"""Sample generator (generate stage): turning generated particles into reconstructed objects.

The physics generators (analysis.generate.processes) produce generator-level "truth" batches:
parton jets, visible tau decay products, jets chosen to fake taus, generator records and
the neutrino momentum. `reconstruct` runs the detector model on them through
`EventContext`: jet smearing and b-tagging, tau reconstruction and ID, fake taus,
pile-up jets, soft leptons and photons, MET with its resolution, vertices and triggers.
Every method works on all events of the batch at once.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from analysis.generate.detector import btag_discriminant, sample_npv, smear_jet_pt, smear_met
from analysis.generate.events import EventBatch, EventBuilder
from analysis.generate.kinematics import pt_eta_phi_mass
from analysis.generate.leptons import (ELECTRON_ID_EFFICIENCY, ELECTRON_PT_RESOLUTION, MASS_ELECTRON, MASS_MUON,
                                       MUON_PT_RESOLUTION, MUON_TIGHT_ID_EFFICIENCY, PDG_MUON,
                                       prompt_lepton_isolation)
from analysis.generate.taus import MASS_PION, fake_decay_modes, reconstructed_tau_charge, tau_identification

__all__ = ["EventContext", "pick_one_per_event", "reconstruct", "truncated_normal"]

# Jets inside the tracker that are also reconstructed as (mostly non-isolated) tau candidates.
ISR_FAKE_RATE = 0.08


def truncated_normal(rng: np.random.Generator, n: int, *, sigma: float, abs_max: float,
                     mean: float = 0.0) -> np.ndarray:
    """Gaussian values restricted to [mean - abs_max, mean + abs_max] by inverting the CDF."""
    lo, hi = ndtr(-abs_max / sigma), ndtr(abs_max / sigma)
    return mean + sigma * ndtri(rng.uniform(lo, hi, n))


def pick_one_per_event(rng: np.random.Generator, event: np.ndarray, eligible: np.ndarray, n_events: int) -> np.ndarray:
    """For each event, the row of one uniformly chosen eligible object (-1 if it has none)."""
    rows = np.flatnonzero(eligible)
    # Group the eligible rows by event (a stable integer sort, fast on the already grouped
    # input), then take the k-th of each group with k uniform in 0..count-1.
    rows = rows[np.argsort(event[rows], kind="stable")]
    counts = np.bincount(event[rows], minlength=n_events)
    starts = np.cumsum(counts) - counts
    chosen = np.full(n_events, -1, dtype=np.int64)
    has = counts > 0
    k = (rng.random(int(has.sum())) * counts[has]).astype(np.int64)
    chosen[has] = rows[starts[has] + k]
    return chosen


class EventContext:
    """Collects reconstructed objects and invisible momentum for ``n`` events."""

    def __init__(self, rng: np.random.Generator, n: int):
        self.rng, self.n = rng, n
        self.builder = EventBuilder(n)
        self.npv = sample_npv(rng, n)
        self.invisible = np.zeros((n, 2))  # neutrinos (px, py)
        self.mismeasured = np.zeros((n, 2))  # sum over jets of (true - reconstructed) (px, py)
        self.sumet = 120.0 + 9.0 * self.npv + rng.exponential(40.0, n)
        self.iso_muon_pt = np.zeros(n)  # leading isolated muon (triggers)
        self.iso_muon_eta = np.zeros(n)
        self.loose_tau_pt = np.zeros(n)  # leading loosely isolated tau (cross trigger)

    def _per_event_sum(self, event, values):
        return np.bincount(event, weights=values, minlength=self.n)

    def add_jets(self, event: np.ndarray, true_pt, eta, phi, true_mass, flavour, *, pileup: bool = False):
        """Reconstruct parton jets (true pt, eta, phi, mass): smeared pt, b-tag, pile-up ID.

        Returns (rows, pt, eta, phi) of the reconstructed jets (before storage cuts).
        """
        rng = self.rng
        pt = smear_jet_pt(rng, true_pt)
        eta = eta + 0.01 * rng.standard_normal(len(eta))
        phi = phi + 0.01 * rng.standard_normal(len(phi))
        mass = np.maximum(true_mass, pt * rng.uniform(0.04, 0.15, len(pt)))
        # Hard jets pass the pile-up ID almost always, pile-up jets rarely.
        puid = rng.random(len(pt)) < (0.15 if pileup else 0.98)
        rows = self.builder.add("Jet", event, pt=pt, eta=eta, phi=phi, mass=mass, puId=puid,
                                btag=btag_discriminant(rng, np.broadcast_to(flavour, pt.shape)))
        if not pileup:
            dpt = true_pt - pt
            self.mismeasured[:, 0] += self._per_event_sum(event, dpt * np.cos(phi))
            self.mismeasured[:, 1] += self._per_event_sum(event, dpt * np.sin(phi))
        self.sumet += self._per_event_sum(event, pt)
        return rows, pt, eta, phi

    def add_pileup_jets(self) -> None:
        """Soft jets from pile-up interactions: more with more vertices, anywhere in eta."""
        rng = self.rng
        event = np.repeat(np.arange(self.n), rng.poisson(0.03 * self.npv))
        m = len(event)
        self.add_jets(event, 15.0 + rng.exponential(7.0, m), rng.uniform(-4.7, 4.7, m),
                      rng.uniform(-np.pi, np.pi, m), np.zeros(m), 0, pileup=True)

    def add_real_taus(self, event: np.ndarray, vis_pt, eta, phi, vis_mass, decay_mode: np.ndarray,
                      charge: np.ndarray, gen_rows: np.ndarray) -> None:
        """Reconstruct the visible hadronic systems (pt, eta, phi, mass) of tau decays as
        taus (3 % energy resolution) and as the jets clustered around them."""
        rng = self.rng
        pt = vis_pt * (1.0 + 0.03 * rng.standard_normal(len(vis_pt)))
        mass = np.where(decay_mode == 0, MASS_PION, vis_mass * (1.0 + 0.05 * rng.standard_normal(len(pt))))
        # The jet clustered around the tau: the visible hadrons plus some underlying event.
        jet_pt = vis_pt * rng.normal(1.08, 0.08, len(pt))
        jet_rows = self.builder.add("Jet", event, pt=jet_pt, eta=eta + 0.01 * rng.standard_normal(len(pt)),
                                    phi=phi, mass=np.maximum(vis_mass, 0.08 * jet_pt), puId=True,
                                    btag=btag_discriminant(rng, np.zeros(len(pt))))
        self.sumet += self._per_event_sum(event, jet_pt)
        self._add_tau(event, pt, eta, phi, mass, decay_mode,
                      reconstructed_tau_charge(rng, charge, decay_mode), jet_rows, gen_rows, fake=False)

    def add_fake_taus(self, event: np.ndarray, jet_rows: np.ndarray, jet_pt, jet_eta, jet_phi, fraction) -> None:
        """Jets reconstructed as taus whose leading hadrons carry ``fraction`` of the jet pt."""
        rng = self.rng
        m = len(event)
        pt = jet_pt * fraction
        decay_mode = fake_decay_modes(rng, m)
        mass = np.where(decay_mode == 0, MASS_PION, rng.uniform(0.3, 1.6, m))
        charge = rng.choice(np.array([-1, 1]), m) * np.where((decay_mode >= 10) & (rng.random(m) < 0.1), 3, 1)
        self._add_tau(event, pt, jet_eta + 0.01 * rng.standard_normal(m), jet_phi, mass, decay_mode,
                      charge, jet_rows, np.full(m, -1), fake=True)

    def _add_tau(self, event, pt, eta, phi, mass, decay_mode, charge, jet_rows, gen_rows, *, fake: bool) -> None:
        ids = tau_identification(self.rng, pt, decay_mode, fake=np.full(len(pt), fake), npv=self.npv[event])
        self.builder.add("Tau", event, pt=pt, eta=eta, phi=phi, mass=mass, charge=charge,
                         decayMode=decay_mode, jetIdx=jet_rows, genPartIdx=gen_rows, **ids)
        loose = ids["idIsoLoose"] & (np.abs(eta) < 2.1)
        np.maximum.at(self.loose_tau_pt, event[loose], pt[loose])

    def add_soft_objects(self) -> None:
        """Soft, mostly non-isolated muons and electrons (heavy-flavour decays) and photons."""
        rng = self.rng
        for name, mean, pt_min, pt_scale, eta_max in (("Muon", 0.25, 3.0, 5.0, 2.4),
                                                      ("Electron", 0.15, 5.0, 6.0, 2.5),
                                                      ("Photon", 0.6, 5.0, 8.0, 2.5)):
            event = np.repeat(np.arange(self.n), rng.poisson(mean, self.n))
            m = len(event)
            fields = dict(pt=pt_min + rng.exponential(pt_scale, m), eta=rng.uniform(-eta_max, eta_max, m),
                          phi=rng.uniform(-np.pi, np.pi, m), pfRelIso03_all=rng.exponential(0.6, m))
            if name == "Photon":
                self.builder.add(name, event, mass=0.0, charge=0, **fields)
                continue
            lepton_mass = 0.10566 if name == "Muon" else 0.000511
            track = dict(charge=rng.choice(np.array([-1, 1]), m), mass=lepton_mass,
                         dxy=rng.normal(0, 0.02, m), dz=rng.normal(0, 0.05, m),
                         dxyErr=0.002 + rng.exponential(0.002, m), dzErr=0.003 + rng.exponential(0.003, m))
            if name == "Muon":
                iso04 = fields["pfRelIso03_all"] * rng.uniform(1.1, 1.6, m)
                tight = rng.random(m) < 0.6
                self.builder.add(name, event, pfRelIso04_all=iso04, tightId=tight,
                                 softId=rng.random(m) < 0.8, **track, **fields)
                # The leading isolated muon of each event: sort by (event, pt), keep each event's last.
                rows = np.flatnonzero(tight & (iso04 < 0.12))
                rows = rows[np.lexsort((fields["pt"][rows], event[rows]))]
                lead = rows[np.r_[event[rows][1:] != event[rows][:-1], True]] if len(rows) else rows
                self.iso_muon_pt[event[lead]] = fields["pt"][lead]
                self.iso_muon_eta[event[lead]] = fields["eta"][lead]
            else:
                self.builder.add(name, event, cutBasedId=rng.random(m) < 0.5, pfId=rng.random(m) < 0.7,
                                 **track, **fields)

    def add_prompt_leptons(self, event: np.ndarray, pt, eta, phi, pdg_id: np.ndarray, gen_rows: np.ndarray) -> None:
        """Reconstruct prompt electrons and muons (W, Z, leptonic tau decays) with their
        resolution, isolation and ID; isolated tight muons feed the muon triggers."""
        rng, m = self.rng, len(event)
        muon = np.abs(pdg_id) == PDG_MUON
        pt = pt * (1.0 + np.where(muon, MUON_PT_RESOLUTION, ELECTRON_PT_RESOLUTION) * rng.standard_normal(m))
        iso = prompt_lepton_isolation(rng, self.npv[event])
        passes_id = rng.random(m) < np.where(muon, MUON_TIGHT_ID_EFFICIENCY, ELECTRON_ID_EFFICIENCY)
        fields = {"pt": pt, "eta": eta, "phi": phi, "charge": -np.sign(pdg_id), "pfRelIso03_all": iso,
                  "dxy": rng.normal(0, 0.005, m), "dz": rng.normal(0, 0.01, m),
                  "dxyErr": 0.001 + rng.exponential(0.001, m), "dzErr": 0.002 + rng.exponential(0.002, m),
                  "genPartIdx": gen_rows}
        self.sumet += self._per_event_sum(event, pt)
        iso04 = iso * rng.uniform(1.1, 1.6, m)
        self.builder.add("Muon", event[muon], mass=MASS_MUON, pfRelIso04_all=iso04[muon], tightId=passes_id[muon],
                         softId=True, **{k: v[muon] for k, v in fields.items()})
        self.builder.add("Electron", event[~muon], mass=MASS_ELECTRON, cutBasedId=passes_id[~muon], pfId=True,
                         **{k: v[~muon] for k, v in fields.items()})
        # The leading isolated tight muon per event, where it beats the soft ones (triggers).
        rows = np.flatnonzero(muon & passes_id & (iso04 < 0.12))
        rows = rows[np.lexsort((pt[rows], event[rows]))]
        lead = rows[np.r_[event[rows][1:] != event[rows][:-1], True]] if len(rows) else rows
        better = lead[pt[lead] > self.iso_muon_pt[event[lead]]]
        self.iso_muon_pt[event[better]] = pt[better]
        self.iso_muon_eta[event[better]] = eta[better]

    def build(self) -> EventBatch:
        """Fill the event scalars (MET, vertices, triggers; identity set later) and finish."""
        rng, n = self.rng, self.n
        true_met = self.invisible + self.mismeasured
        met_x, met_y, sigma = smear_met(rng, true_met[:, 0], true_met[:, 1], self.sumet)
        met = np.hypot(met_x, met_y)
        var = sigma**2
        iso_mu = (self.iso_muon_pt > 24.0) & (rng.random(n) < 0.9)
        s = self.builder.scalars
        s.update(run=np.ones(n), luminosityBlock=np.ones(n), event=np.arange(n),
                 PV_npvs=self.npv, PV_x=rng.normal(0.0712, 0.002, n), PV_y=rng.normal(0.0620, 0.002, n),
                 PV_z=rng.normal(0.0, 4.5, n), MET_pt=met, MET_phi=np.arctan2(met_y, met_x),
                 MET_sumet=self.sumet, MET_significance=met**2 / var,
                 MET_CovXX=var, MET_CovXY=var * rng.normal(0.0, 0.05, n), MET_CovYY=var * rng.uniform(0.9, 1.1, n),
                 HLT_IsoMu24=iso_mu, HLT_IsoMu24_eta2p1=iso_mu & (np.abs(self.iso_muon_eta) < 2.1),
                 HLT_IsoMu17_eta2p1_LooseIsoPFTau20=(self.iso_muon_pt > 17.0) & (np.abs(self.iso_muon_eta) < 2.1)
                 & (self.loose_tau_pt > 20.0))
        return self.builder.build()


def reconstruct(rng: np.random.Generator, truth: EventBatch) -> EventBatch:
    """Reconstructed events (the NanoAOD collections) from a generator-level truth batch.

    ``truth`` holds tables ``Jet`` (parton jets: pt, eta, phi, mass, flavour), ``Tau``
    (visible decay products vis_pt, vis_eta, vis_phi, vis_mass, decayMode, charge,
    genPartIdx), ``Fake`` (jetIdx of a jet faking a tau, frac of its pt carried by the
    tau candidate), ``GenPart`` (energy, px, py, pz, pdgId, status, genPartIdxMother,
    statusFlags, appended: analysis.generate.genpart) and scalars ``nu_px``, ``nu_py`` (all
    neutrinos).
    """
    n = truth.n
    ctx = EventContext(rng, n)
    jets, taus, fakes, gen = (truth.collections[k] for k in ("Jet", "Tau", "Fake", "GenPart"))
    ctx.invisible[:, 0] += truth.scalars["nu_px"]
    ctx.invisible[:, 1] += truth.scalars["nu_py"]
    # The truth jets and generator records are added first: their rows keep their numbers.
    jet_rows, jet_pt, jet_eta, jet_phi = ctx.add_jets(jets["event"], jets["pt"], jets["eta"], jets["phi"],
                                                      jets["mass"], jets["flavour"])
    gen_p4 = np.stack([gen["energy"], gen["px"], gen["py"], gen["pz"]], axis=-1)
    gen_pt, gen_eta, gen_phi, gen_mass = pt_eta_phi_mass(gen_p4)
    ctx.builder.add("GenPart", gen["event"], pt=gen_pt, eta=gen_eta, phi=gen_phi, mass=gen_mass,
                    **{k: gen[k] for k in ("pdgId", "status", "genPartIdxMother", "statusFlags", "appended")})
    ctx.add_real_taus(taus["event"], taus["vis_pt"], taus["vis_eta"], taus["vis_phi"], taus["vis_mass"],
                      taus["decayMode"], taus["charge"], taus["genPartIdx"])
    chosen = fakes["jetIdx"]
    ctx.add_fake_taus(fakes["event"], jet_rows[chosen], jet_pt[chosen], jet_eta[chosen], jet_phi[chosen],
                      fakes["frac"])
    # Any other jet inside the tracker may also give a tau candidate, rarely isolated.
    other = np.ones(len(jet_rows), dtype=bool)
    other[chosen] = False
    extra = other & (np.abs(jet_eta) < 2.3) & (rng.random(len(jet_rows)) < ISR_FAKE_RATE)
    ctx.add_fake_taus(jets["event"][extra], jet_rows[extra], jet_pt[extra], jet_eta[extra], jet_phi[extra],
                      rng.beta(6.0, 2.0, int(extra.sum())))
    ctx.add_pileup_jets()
    ctx.add_soft_objects()
    leptons = truth.collections["Lepton"]
    if len(leptons["event"]):  # the di-tau processes have none: their random stream is unchanged
        ctx.add_prompt_leptons(leptons["event"], leptons["pt"], leptons["eta"], leptons["phi"], leptons["pdgId"],
                               leptons["genPartIdx"])
    return ctx.build()
