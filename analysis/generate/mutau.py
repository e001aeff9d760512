"""Sample generator (generate stage): the processes of the mu-tau_h channel (one muon, one hadronic tau).

The second analysis of PHYSICS.md selects a muon and a hadronic tau. Its sample is made of
its own processes, each filtered for that final state (`passes_mutau_filter`: a muon and
a tau candidate), named ``<process>_mutau`` in the configuration's samples:

- ``ggH_mutau``, ``VBF_mutau`` (signal) and ``ZTT_mutau``: H / Z -> tau tau with each tau
  decaying by its branching fractions (analysis.generate.leptons: tau -> e nu nu, mu nu
  nu with the Michel spectrum, or hadronically); the filter keeps mu + tau_h. Jets come
  from initial-state radiation (VBF: two forward tagging jets), none required.
- ``ZMM_mutau``: Z -> mu mu with a jet faking the tau.
- ``W1J_mutau``, ``W2J_mutau``, ``W3J_mutau``: W -> mu nu with k partons, one jet faking
  the tau; the neutrino gives a large transverse mass.
- ``TT_mutau``: tt -> bW bW with at least one W -> mu nu; the other W decays freely (a
  real tau, a lepton, or quarks), and a jet fakes the tau when no real one is found.

``fraction`` (see `analysis.generate.processes.ProcessModel`) is the branching fraction of
the simulated final state times, for the backgrounds with a jet faking the tau, a factor
for the jet -> tau_h misidentification that the detector model's isolation does not
include (the real rate is below a per cent per jet); the factors are chosen so that after
the selection Z -> tau tau is the largest background and W+jets the second, as in the
real analysis.
"""

from __future__ import annotations

import numpy as np

from analysis.generate.events import EventBatch
from analysis.generate.genpart import FLAGS_HARD, FLAGS_HARD_DECAYED, FLAGS_TAU_PRODUCT
from analysis.generate.kinematics import pt_eta_phi_mass, sample_breit_wigner, two_body_decay
from analysis.generate.leptons import MASS_ELECTRON, MASS_MUON, PDG_MUON, choose_tau_decays, decay_leptonic_taus
from analysis.generate.processes import (_GEN_STATUS_DECAYED, _GEN_STATUS_FINAL, _GEN_STATUS_HARD,
                                         FILTER_TAU_ABS_ETA_MAX, FILTER_TAU_PT_MIN, MASS_H, MASS_TAU,
                                         MASS_W, MASS_Z, PDG, WIDTH_H, WIDTH_W, WIDTH_Z, ProcessModel,
                                         _boson_recoiling, _fake_from_jets, _top_pair, _Truth)

__all__ = ["FILTER_MUON_ABS_ETA_MAX", "FILTER_MUON_PT_MIN", "MUTAU_PROCESSES", "passes_mutau_filter"]

BR_W_TO_MU = 0.108  # W -> mu nu (PDG; the same for e and tau)
# Other W decays when one W of a top pair is the muon's: quarks, e nu, tau nu (sum 1).
_OTHER_W = {"qq": 0.676 / 0.892, "e": 0.108 / 0.892, "tau": 0.108 / 0.892}


class _MuTauTruth(_Truth):
    """A truth batch whose taus decay by branching fraction, with prompt leptons."""

    def add_lepton(self, event: np.ndarray, p4: np.ndarray, pdg_id: np.ndarray, *, mother,
                   flags: int = FLAGS_HARD) -> None:
        """A prompt charged lepton (electron or muon): its generator record and its truth row."""
        rows = self.add_gen(event, p4, pdg_id, _GEN_STATUS_FINAL, mother=mother, flags=flags)
        self.add_p4("Lepton", event, p4, pdgId=pdg_id, genPartIdx=rows)

    def decay_taus(self, rng, event: np.ndarray, taus: np.ndarray, charge: np.ndarray, gen_rows: np.ndarray) -> None:
        """Taus ``(n, 4)`` of ``charge`` -> e nu nu, mu nu nu or hadrons, by branching fraction."""
        decay = choose_tau_decays(rng, len(taus))
        hadronic = decay == 0
        self.add_tau_decays(rng, event[hadronic], taus[hadronic], charge[hadronic], gen_rows[hadronic])
        lep = ~hadronic
        lepton, neutrinos = decay_leptonic_taus(rng, taus[lep], np.where(decay[lep] == PDG_MUON, MASS_MUON,
                                                                          MASS_ELECTRON))
        self.add_neutrinos(event[lep], neutrinos)
        # A lepton keeps its tau's charge; negative leptons have positive PDG ids.
        self.add_lepton(event[lep], lepton, decay[lep] * -charge[lep], mother=gen_rows[lep], flags=FLAGS_TAU_PRODUCT)
        self.add_tau_products(event[lep], gen_rows[lep], charge[lep], invisible=neutrinos)


def _tau_pair(rng, truth: _MuTauTruth, boson: np.ndarray, boson_pdg: int) -> None:
    n = truth.n
    event = np.arange(n)
    boson_rows = truth.add_gen(event, boson, boson_pdg, _GEN_STATUS_HARD)
    tau_minus, tau_plus = two_body_decay(rng, boson, MASS_TAU, MASS_TAU)
    events2 = np.concatenate([event, event])
    pdg = np.repeat([PDG["tau"], -PDG["tau"]], n)
    taus = np.concatenate([tau_minus, tau_plus])
    gen_rows = truth.add_gen(events2, taus, pdg, _GEN_STATUS_DECAYED, mother=np.concatenate([boson_rows] * 2),
                             flags=FLAGS_HARD_DECAYED)
    truth.decay_taus(rng, events2, taus, -np.sign(pdg), gen_rows)


def _resonance(rng, n, *, mass, width, low, high, isr_mean, isr_index, rapidity_sigma, isr_min=0):
    """(truth, boson four-vectors, ISR jets) of a resonance recoiling against isr_min + Poisson(isr_mean) jets.

    The ISR jets are ``(event, pt, eta, phi, rows)`` (`_Truth.add_isr`).
    """
    truth = _MuTauTruth(n)
    isr = truth.add_isr(rng, isr_min + rng.poisson(isr_mean, n), pt_min=20.0, index=isr_index, eta_sigma=1.6)
    boson = _boson_recoiling(rng, n, isr[0], isr[1], isr[3],
                             sample_breit_wigner(rng, n, mass=mass, width=width, low=low, high=high),
                             rapidity_sigma=rapidity_sigma)
    return truth, boson, isr


def generate_ggh_mutau(rng: np.random.Generator, n: int) -> EventBatch:
    """gg -> H -> tau tau with gluon radiation (harder than Drell-Yan's), taus decaying freely."""
    truth, boson, _ = _resonance(rng, n, mass=MASS_H, width=WIDTH_H, low=MASS_H - 1, high=MASS_H + 1,
                                 isr_mean=1.4, isr_index=2.5, rapidity_sigma=1.5)
    _tau_pair(rng, truth, boson, PDG["H"])
    return truth.build()


def generate_ztt_mutau(rng: np.random.Generator, n: int) -> EventBatch:
    """Z/gamma* -> tau tau (m > 50 GeV) with initial-state radiation, taus decaying freely."""
    truth, boson, _ = _resonance(rng, n, mass=MASS_Z, width=WIDTH_Z, low=50.0, high=200.0,
                                 isr_mean=0.6, isr_index=3.1, rapidity_sigma=1.8)
    _tau_pair(rng, truth, boson, PDG["Z"])
    return truth.build()


def generate_vbf_mutau(rng: np.random.Generator, n: int) -> EventBatch:
    """qq -> qqH, H -> tau tau: two forward-backward tagging jets with a large rapidity gap."""
    truth = _MuTauTruth(n)
    deta = 1.0 + rng.gamma(3.0, 0.9, n)
    center = rng.normal(0.0, 0.7, n)
    tag_event = np.concatenate([np.arange(n), np.arange(n)])
    eta = np.concatenate([center + deta / 2, center - deta / 2])
    pt = 20.0 + rng.gamma(2.0, 25.0, 2 * n)
    phi = rng.uniform(-np.pi, np.pi, 2 * n)
    truth.add("Jet", tag_event, pt=pt, eta=eta, phi=phi, mass=0.0, flavour=1)
    isr_event, isr_pt, _, isr_phi, _ = truth.add_isr(rng, rng.poisson(0.3, n), pt_min=20.0, index=3.0,
                                                     eta_sigma=1.6)
    boson = _boson_recoiling(rng, n, np.concatenate([tag_event, isr_event]), np.concatenate([pt, isr_pt]),
                             np.concatenate([phi, isr_phi]),
                             sample_breit_wigner(rng, n, mass=MASS_H, width=WIDTH_H, low=MASS_H - 1,
                                                 high=MASS_H + 1),
                             rapidity_sigma=1.2)
    _tau_pair(rng, truth, boson, PDG["H"])
    return truth.build()


def generate_zmm_mutau(rng: np.random.Generator, n: int) -> EventBatch:
    """Z/gamma* -> mu mu with one or more ISR jets, one of them faking the tau."""
    truth, boson, (event, pt, eta, _, rows) = _resonance(rng, n, mass=MASS_Z, width=WIDTH_Z, low=50.0,
                                                         high=200.0, isr_min=1, isr_mean=0.3, isr_index=3.1,
                                                         rapidity_sigma=1.8)
    both = np.concatenate([np.arange(n)] * 2)
    boson_rows = truth.add_gen(np.arange(n), boson, PDG["Z"], _GEN_STATUS_HARD)
    mu_minus, mu_plus = two_body_decay(rng, boson, MASS_MUON, MASS_MUON)
    truth.add_lepton(both, np.concatenate([mu_minus, mu_plus]), np.repeat([PDG_MUON, -PDG_MUON], n),
                     mother=np.concatenate([boson_rows] * 2))
    _fake_from_jets(rng, truth, event, rows, pt, eta)
    return truth.build()


def _w_to_mu_nu(rng, truth: _MuTauTruth, event: np.ndarray, w: np.ndarray, w_charge: np.ndarray,
                mother=-1) -> None:
    w_rows = truth.add_gen(event, w, PDG["W"] * w_charge, _GEN_STATUS_HARD, mother=mother)
    muon, nu = two_body_decay(rng, w, MASS_MUON, 0.0)
    truth.add_lepton(event, muon, -PDG_MUON * w_charge, mother=w_rows)
    truth.add_gen(event, nu, (PDG_MUON + 1) * w_charge, _GEN_STATUS_FINAL, mother=w_rows)
    truth.add_neutrinos(event, nu)


def _make_wjets(parton_jets: int):
    def generate_wjets_mutau(rng: np.random.Generator, n: int) -> EventBatch:
        truth = _MuTauTruth(n)
        hard = truth.add_isr(rng, np.full(n, parton_jets), pt_min=25.0, index=2.6, eta_sigma=1.5)
        isr = truth.add_isr(rng, rng.poisson(0.3, n), pt_min=20.0, index=3.2, eta_sigma=1.6)
        event, pt, eta, phi, rows = (np.concatenate([h, i]) for h, i in zip(hard, isr))
        mass = sample_breit_wigner(rng, n, mass=MASS_W, width=WIDTH_W, low=50.0, high=150.0)
        w = _boson_recoiling(rng, n, event, pt, phi, mass, rapidity_sigma=1.8)
        _w_to_mu_nu(rng, truth, np.arange(n), w, np.where(rng.random(n) < 0.6, 1, -1))  # W+ / W- ~ 3/2
        _fake_from_jets(rng, truth, event, rows, pt, eta)
        return truth.build()

    generate_wjets_mutau.__doc__ = f"W + {parton_jets} parton(s), W -> mu nu, one jet faking the tau."
    return generate_wjets_mutau


def generate_ttbar_mutau(rng: np.random.Generator, n: int) -> EventBatch:
    """tt -> bW bW with at least one W -> mu nu; the other W -> quarks, e nu, tau nu or mu nu."""
    truth = _MuTauTruth(n)
    top_event, sign, b, w, top_rows = _top_pair(rng, truth, n)
    b_rows = truth.add_p4("Jet", top_event, b, flavour=5)
    # Given at least one W -> mu nu: both with probability BR^2 / (1 - (1 - BR)^2), else one at
    # random, the other decaying as a W that is not a muon's.
    both = rng.random(n) < BR_W_TO_MU**2 / (1.0 - (1.0 - BR_W_TO_MU) ** 2)
    first = rng.random(n) < 0.5
    muon_w = np.concatenate([both | first, both | ~first])
    _w_to_mu_nu(rng, truth, top_event[muon_w], w[muon_w], sign[muon_w], mother=top_rows[muon_w])
    other = np.flatnonzero(~muon_w)
    kind = rng.choice(np.array(list(_OTHER_W)), size=len(other), p=np.array(list(_OTHER_W.values())))
    for name, pdg in (("e", 11), ("tau", PDG["tau"])):
        rows = other[kind == name]
        lepton, nu = two_body_decay(rng, w[rows], MASS_ELECTRON if name == "e" else MASS_TAU, 0.0)
        w_rows = truth.add_gen(top_event[rows], w[rows], PDG["W"] * sign[rows], _GEN_STATUS_HARD,
                               mother=top_rows[rows])
        truth.add_neutrinos(top_event[rows], nu)
        if name == "e":
            truth.add_lepton(top_event[rows], lepton, -pdg * sign[rows], mother=w_rows)
        else:
            gen_rows = truth.add_gen(top_event[rows], lepton, -pdg * sign[rows], _GEN_STATUS_DECAYED, mother=w_rows,
                                     flags=FLAGS_HARD_DECAYED)
            truth.decay_taus(rng, top_event[rows], lepton, sign[rows], gen_rows)
    rows = other[kind == "qq"]
    q1, q2 = two_body_decay(rng, w[rows], 0.0, 0.0)
    q_event = np.concatenate([top_event[rows]] * 2)
    q_rows = truth.add_p4("Jet", q_event, np.concatenate([q1, q2]), flavour=1)
    isr_event, isr_pt, isr_eta, _, isr_rows = truth.add_isr(rng, rng.poisson(0.5, n), pt_min=20.0, index=3.0,
                                                            eta_sigma=1.6)
    # The fake tau: any jet of the event (b, quark or radiation) inside the tracker.
    b_pt, b_eta, _, _ = pt_eta_phi_mass(b)
    q_pt, q_eta, _, _ = pt_eta_phi_mass(np.concatenate([q1, q2]))
    _fake_from_jets(rng, truth, np.concatenate([top_event, q_event, isr_event]),
                    np.concatenate([b_rows, q_rows, isr_rows]), np.concatenate([b_pt, q_pt, isr_pt]),
                    np.concatenate([b_eta, q_eta, isr_eta]))
    return truth.build()


def passes_mutau_filter(truth: EventBatch) -> np.ndarray:
    """Per event of a truth batch: a muon above 15 GeV with |eta| < 2.1 and a tau candidate
    (visible tau decay products, or a jet faking a tau with the pt it keeps) above 18 GeV
    with |eta| < 2.3 — the final state of the mu-tau_h trigger and selection, a little looser."""
    leptons, taus, fakes, jets = (truth.collections[k] for k in ("Lepton", "Tau", "Fake", "Jet"))
    muon = ((np.abs(leptons["pdgId"]) == PDG_MUON) & (leptons["pt"] > FILTER_MUON_PT_MIN)
            & (np.abs(leptons["eta"]) < FILTER_MUON_ABS_ETA_MAX))
    real = (taus["vis_pt"] > FILTER_TAU_PT_MIN) & (np.abs(taus["vis_eta"]) < FILTER_TAU_ABS_ETA_MAX)
    fake_pt = jets["pt"][fakes["jetIdx"]] * fakes["frac"]
    fake = (fake_pt > FILTER_TAU_PT_MIN) & (np.abs(jets["eta"][fakes["jetIdx"]]) < FILTER_TAU_ABS_ETA_MAX)
    n_taus = (np.bincount(taus["event"][real], minlength=truth.n)
              + np.bincount(fakes["event"][fake], minlength=truth.n))
    return (np.bincount(leptons["event"][muon], minlength=truth.n) > 0) & (n_taus > 0)


FILTER_MUON_PT_MIN = 15.0
FILTER_MUON_ABS_ETA_MAX = 2.1

_H_TAUTAU = "BR(H->tautau) 0.063"
# The backgrounds' share in the signal-enriched categories of the real analysis (as the
# di-tau processes' production factors): the signal is then a few per cent of the background.
_CATEGORY = 0.03
_BKG = f"x signal-enriched categories {_CATEGORY}"
_FAKE = "x jet->tau_h misidentification"
MUTAU_PROCESSES: dict[str, ProcessModel] = {
    "ggH_mutau": ProcessModel(generate_ggh_mutau, 0.063, _H_TAUTAU, passes_mutau_filter),
    "VBF_mutau": ProcessModel(generate_vbf_mutau, 0.063 * 0.50, f"{_H_TAUTAU} x tagging jets in acceptance 0.50",
                              passes_mutau_filter),
    "ZTT_mutau": ProcessModel(generate_ztt_mutau, (1 / 3) * _CATEGORY, f"tautau share of ll 1/3 {_BKG}",
                              passes_mutau_filter),
    "ZMM_mutau": ProcessModel(generate_zmm_mutau, (1 / 3) * _CATEGORY * 0.25 * 0.03,
                              f"mumu share of ll 1/3 {_BKG} x a jet above 20 GeV 0.25 {_FAKE} 0.03",
                              passes_mutau_filter),
    "W1J_mutau": ProcessModel(_make_wjets(1), (1 / 3) * _CATEGORY * 0.02, f"mu nu share of l nu 1/3 {_BKG} {_FAKE} 0.02",
                              passes_mutau_filter),
    "W2J_mutau": ProcessModel(_make_wjets(2), (1 / 3) * _CATEGORY * 0.04, f"mu nu share of l nu 1/3 {_BKG} {_FAKE} 0.04",
                              passes_mutau_filter),
    "W3J_mutau": ProcessModel(_make_wjets(3), (1 / 3) * _CATEGORY * 0.08, f"mu nu share of l nu 1/3 {_BKG} {_FAKE} 0.08",
                              passes_mutau_filter),
    "TT_mutau": ProcessModel(generate_ttbar_mutau, (1.0 - (1.0 - BR_W_TO_MU) ** 2) * _CATEGORY * 0.15,
                             f"at least one W -> mu nu 0.204 {_BKG} x a tau_h candidate (real or fake) 0.15",
                             passes_mutau_filter),
}
