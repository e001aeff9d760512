"""Sample generator (generate stage): the physics processes of the H->tautau analysis.

One function per process turns a random generator and an event count into a
generator-level `EventBatch` (`TRUTH_LAYOUT`: parton jets, visible tau decay products,
jets faking taus, generator records, neutrino momentum); `generate_process` keeps the
events passing the tau filter and runs the detector model on them
(analysis.generate.objects.reconstruct). Each process simulates the *filtered* final state
the analysis looks at — two hadronic tau candidates and jets:

- ggH, VBF (signal) and DY: a resonance (H 125 GeV, width 4 MeV; Z 91.19 GeV, width
  2.5 GeV) recoiling against its jets, decaying to two taus in its rest frame. ggH and DY
  jets come from initial-state radiation (falling pt, central); VBF has two forward
  tagging jets in opposite hemispheres with a large rapidity gap and mass.
- W+jets (W1J, W2J, W3J): W -> tau nu with one real tau, and one jet faking a tau
  (wider isolation); the W neutrino gives a large transverse mass.
- TT: t -> b W with two b jets (high b-tag), W -> tau nu or W -> q q' with a quark jet
  faking a tau; several neutrinos give large MET.

`PROCESSES` maps the process names of the config to these functions and to the
fraction of the process's events they stand for; `generate_process` applies the tau filter
and counts the events tried (analysis.generate.runner turns both into the weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from analysis.generate.events import EventBatch, EventBuilder, concatenate_batches
from analysis.generate.genpart import (FLAGS_HARD, FLAGS_HARD_DECAYED, FLAGS_TAU_PRODUCT, STATUS_FLAG_BITS,
                                       visible_pdg_ids)
from analysis.generate.kinematics import (MASS_TAU, four_vector, pt_eta_phi_mass, sample_breit_wigner,
                                          sample_power_law, two_body_decay)
from analysis.generate.objects import pick_one_per_event, reconstruct, truncated_normal
from analysis.generate.taus import decay_hadronic_taus

__all__ = ["FILTER_TAU_ABS_ETA_MAX", "FILTER_TAU_PT_MIN", "PROCESSES", "TRUTH_LAYOUT", "ProcessModel",
           "generate_dy", "generate_filtered", "generate_ggh", "generate_process", "generate_ttbar", "generate_vbf",
           "passes_tau_filter"]

MASS_Z, WIDTH_Z = 91.1876, 2.4952
MASS_H, WIDTH_H = 125.0, 0.0041
MASS_W, WIDTH_W = 80.385, 2.085
MASS_TOP, WIDTH_TOP = 172.5, 1.4
MASS_B = 4.8
PDG = {"tau": 15, "nu_tau": 16, "Z": 23, "W": 24, "H": 25, "t": 6, "b": 5}
_GEN_STATUS_HARD, _GEN_STATUS_DECAYED, _GEN_STATUS_FINAL = 62, 2, 1
_DECAYED_BIT = 1 << STATUS_FLAG_BITS["isDecayedLeptonHadron"]

_F64, _I32, _I64 = np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int64)
_P4 = {"pt": _F64, "eta": _F64, "phi": _F64, "mass": _F64}
# Generator-level content of a batch, before the detector (analysis.generate.objects.reconstruct).
TRUTH_LAYOUT = {
    "Jet": {**_P4, "flavour": _I32},  # parton jets: ISR, VBF tags, b quarks, W -> qq'
    "Tau": {"vis_pt": _F64, "vis_eta": _F64, "vis_phi": _F64, "vis_mass": _F64,
            "decayMode": _I32, "charge": _I32, "genPartIdx": _I64},  # visible tau decay products
    "Fake": {"jetIdx": _I64, "frac": _F64},  # a jet faking a tau, with the pt fraction it keeps
    # Kept as momentum components: pt, eta, phi, mass are computed only for events passing the filter.
    # `appended`: a tau decay product, written after the other records (analysis.generate.genpart).
    "GenPart": {"energy": _F64, "px": _F64, "py": _F64, "pz": _F64, "pdgId": _I32, "status": _I32,
                "genPartIdxMother": _I64, "statusFlags": _I32, "appended": np.dtype(np.bool_)},
    # Prompt electrons and muons (W, Z and leptonic tau decays; empty in the di-tau processes).
    "Lepton": {**_P4, "pdgId": _I32, "genPartIdx": _I64},
}


class _Truth(EventBuilder):
    """Generator-level batch under construction; also sums the neutrino momentum."""

    def __init__(self, n: int):
        super().__init__(n, layout=TRUTH_LAYOUT, scalar_names=("nu_px", "nu_py"))
        self.scalars.update(nu_px=np.zeros(n), nu_py=np.zeros(n))

    def add_p4(self, collection: str, event: np.ndarray, p4: np.ndarray, **fields) -> np.ndarray:
        pt, eta, phi, mass = pt_eta_phi_mass(p4)
        return self.add(collection, event, pt=pt, eta=eta, phi=phi, mass=mass, **fields)

    def add_gen(self, event: np.ndarray, p4: np.ndarray, pdg_id, status, *, mother=-1, flags: int = FLAGS_HARD,
                appended: bool = False) -> np.ndarray:
        """Generator records (GenPart) of four-vectors ``(n, 4)``, with their mothers' rows; returns their rows."""
        return self.add("GenPart", event, energy=p4[:, 0], px=p4[:, 1], py=p4[:, 2], pz=p4[:, 3],
                        pdgId=pdg_id, status=status, genPartIdxMother=mother, statusFlags=flags, appended=appended)

    def add_tau_products(self, event: np.ndarray, tau_rows: np.ndarray, charge: np.ndarray, *,
                         visible: np.ndarray | None = None, visible_pdg: np.ndarray | None = None,
                         invisible: np.ndarray) -> None:
        """The truth of tau decays (appended records): the visible hadronic system, when
        given, and the neutrino(s) of each tau of ``tau_rows`` (of ``charge``)."""
        if visible is not None:
            # the pion is final, the rho and a1 decay further
            status = np.where(np.abs(visible_pdg) == 211, _GEN_STATUS_FINAL, _GEN_STATUS_DECAYED)
            flags = FLAGS_TAU_PRODUCT | np.where(status == _GEN_STATUS_DECAYED, _DECAYED_BIT, 0)
            self.add_gen(event, visible, visible_pdg, status, mother=tau_rows, flags=flags, appended=True)
        # tau- -> nu_tau (pdgId +16): the neutrino's pdgId has the sign of the tau's
        self.add_gen(event, invisible, -PDG["nu_tau"] * np.sign(charge), _GEN_STATUS_FINAL, mother=tau_rows,
                     flags=FLAGS_TAU_PRODUCT, appended=True)

    def add_neutrinos(self, event: np.ndarray, p4: np.ndarray) -> None:
        self.scalars["nu_px"] += np.bincount(event, weights=p4[:, 1], minlength=self.n)
        self.scalars["nu_py"] += np.bincount(event, weights=p4[:, 2], minlength=self.n)

    def add_tau_decays(self, rng, event: np.ndarray, taus: np.ndarray, charge: np.ndarray, gen_rows) -> None:
        visible, neutrino, decay_mode = decay_hadronic_taus(rng, taus)
        self.add_neutrinos(event, neutrino)
        pt, eta, phi, mass = pt_eta_phi_mass(visible)
        self.add("Tau", event, vis_pt=pt, vis_eta=eta, vis_phi=phi, vis_mass=mass, decayMode=decay_mode,
                 charge=charge, genPartIdx=gen_rows)
        self.add_tau_products(event, gen_rows, charge, visible=visible, visible_pdg=visible_pdg_ids(decay_mode, charge),
                              invisible=neutrino)

    def add_isr(self, rng, counts: np.ndarray, *, pt_min: float, index: float, eta_sigma: float):
        """ISR jets, ``counts[i]`` in event i: falling pt, central, a few per cent heavy flavour.
        Returns (event, pt, eta, phi, rows)."""
        event = np.repeat(np.arange(self.n), counts)
        m = len(event)
        pt = sample_power_law(rng, m, x_min=pt_min, index=index, x_max=1000.0)
        eta = truncated_normal(rng, m, sigma=eta_sigma, abs_max=4.7)
        phi = rng.uniform(-np.pi, np.pi, m)
        rows = self.add("Jet", event, pt=pt, eta=eta, phi=phi, mass=0.0,
                        flavour=rng.choice([0, 4, 5], size=m, p=[0.92, 0.05, 0.03]))
        return event, pt, eta, phi, rows


def _boson_recoiling(rng, n, jet_event, jet_pt, jet_phi, mass, *, rapidity_sigma: float, kt: float = 5.0) -> np.ndarray:
    """Boson four-vectors ``(n, 4)`` balancing the transverse momentum of the jets."""
    px = -np.bincount(jet_event, weights=jet_pt * np.cos(jet_phi), minlength=n) + kt * rng.standard_normal(n)
    py = -np.bincount(jet_event, weights=jet_pt * np.sin(jet_phi), minlength=n) + kt * rng.standard_normal(n)
    y = truncated_normal(rng, n, sigma=rapidity_sigma, abs_max=4.0)
    mt = np.sqrt(mass**2 + px**2 + py**2)
    return np.stack([mt * np.cosh(y), px, py, mt * np.sinh(y)], axis=-1)


def _tau_pair(rng, truth: _Truth, boson: np.ndarray, boson_pdg: int) -> None:
    """Boson -> tau- tau+ in its rest frame, both taus decaying hadronically."""
    n = truth.n
    event = np.arange(n)
    boson_rows = truth.add_gen(event, boson, boson_pdg, _GEN_STATUS_HARD)
    tau_minus, tau_plus = two_body_decay(rng, boson, MASS_TAU, MASS_TAU)
    taus = np.concatenate([tau_minus, tau_plus])
    events2 = np.concatenate([event, event])
    pdg = np.repeat([PDG["tau"], -PDG["tau"]], n)
    gen_rows = truth.add_gen(events2, taus, pdg, _GEN_STATUS_DECAYED, mother=np.concatenate([boson_rows] * 2),
                             flags=FLAGS_HARD_DECAYED)
    truth.add_tau_decays(rng, events2, taus, -np.sign(pdg), gen_rows)


def _resonance_with_isr(rng, n, *, mass, width, low, high, pdg, isr_index, extra_isr, rapidity_sigma):
    truth = _Truth(n)
    counts = 2 + rng.poisson(extra_isr, n)  # the production filter asks for two jets
    event, pt, _, phi, _ = truth.add_isr(rng, counts, pt_min=25.0, index=isr_index, eta_sigma=1.6)
    boson = _boson_recoiling(rng, n, event, pt, phi,
                             sample_breit_wigner(rng, n, mass=mass, width=width, low=low, high=high),
                             rapidity_sigma=rapidity_sigma)
    _tau_pair(rng, truth, boson, pdg)
    return truth.build()


def generate_ggh(rng: np.random.Generator, n: int) -> EventBatch:
    """gg -> H -> tautau with two or more ISR jets (gluon radiation: harder than DY's)."""
    return _resonance_with_isr(rng, n, mass=MASS_H, width=WIDTH_H, low=MASS_H - 1, high=MASS_H + 1,
                               pdg=PDG["H"], isr_index=2.7, extra_isr=0.5, rapidity_sigma=1.5)


def generate_dy(rng: np.random.Generator, n: int) -> EventBatch:
    """Z/gamma* -> tautau (m > 50 GeV) with two or more ISR jets."""
    return _resonance_with_isr(rng, n, mass=MASS_Z, width=WIDTH_Z, low=50.0, high=200.0,
                               pdg=PDG["Z"], isr_index=3.1, extra_isr=0.3, rapidity_sigma=1.8)


def generate_vbf(rng: np.random.Generator, n: int) -> EventBatch:
    """qq -> qqH, H -> tautau: two tagging jets, forward-backward, large |deta_jj| and m_jj."""
    truth = _Truth(n)
    deta = 1.0 + rng.gamma(3.0, 0.9, n)
    center = rng.normal(0.0, 0.7, n)
    eta = np.concatenate([center + deta / 2, center - deta / 2])
    pt = 20.0 + rng.gamma(2.0, 25.0, 2 * n)
    tag_event = np.concatenate([np.arange(n), np.arange(n)])
    phi = rng.uniform(-np.pi, np.pi, 2 * n)
    truth.add("Jet", tag_event, pt=pt, eta=eta, phi=phi, mass=0.0, flavour=1)
    isr_event, isr_pt, _, isr_phi, _ = truth.add_isr(rng, rng.poisson(0.3, n), pt_min=20.0, index=3.0, eta_sigma=1.6)
    boson = _boson_recoiling(rng, n, np.concatenate([tag_event, isr_event]), np.concatenate([pt, isr_pt]),
                             np.concatenate([phi, isr_phi]),
                             sample_breit_wigner(rng, n, mass=MASS_H, width=WIDTH_H, low=MASS_H - 1, high=MASS_H + 1),
                             rapidity_sigma=1.2)
    _tau_pair(rng, truth, boson, PDG["H"])
    return truth.build()


def _w_to_tau_nu(rng, truth: _Truth, event, w: np.ndarray, w_charge: np.ndarray, mother=-1) -> None:
    """W -> tau nu (tau hadronic); generator records for W (daughter of ``mother``), tau and neutrino."""
    w_rows = truth.add_gen(event, w, PDG["W"] * w_charge, _GEN_STATUS_HARD, mother=mother)
    tau, nu = two_body_decay(rng, w, MASS_TAU, 0.0)
    gen_rows = truth.add_gen(event, tau, -PDG["tau"] * w_charge, _GEN_STATUS_DECAYED, mother=w_rows,
                             flags=FLAGS_HARD_DECAYED)
    truth.add_gen(event, nu, PDG["nu_tau"] * w_charge, _GEN_STATUS_FINAL, mother=w_rows)
    truth.add_neutrinos(event, nu)
    truth.add_tau_decays(rng, event, tau, w_charge, gen_rows)


def _fake_from_jets(rng, truth: _Truth, event, rows, pt, eta) -> None:
    """One jet per event (among those inside the tracker) is also reconstructed as a tau;
    its leading hadrons carry a Beta(6, 2) fraction (mean 3/4) of the jet pt."""
    chosen = pick_one_per_event(rng, event, (np.abs(eta) < 2.3) & (pt > 20.0), truth.n)
    chosen = chosen[chosen >= 0]
    truth.add("Fake", event[chosen], jetIdx=rows[chosen], frac=rng.beta(6.0, 2.0, len(chosen)))


def _make_wjets(parton_jets: int) -> Callable[[np.random.Generator, int], EventBatch]:
    def generate_wjets(rng: np.random.Generator, n: int) -> EventBatch:
        truth = _Truth(n)
        # W + k partons; the production filter asks for three jets (one to fake a tau, two to tag).
        hard = truth.add_isr(rng, np.full(n, parton_jets), pt_min=25.0, index=2.6, eta_sigma=1.5)
        extra = np.maximum(3 - parton_jets, 0) + rng.poisson(0.3, n)
        isr = truth.add_isr(rng, extra, pt_min=25.0, index=3.2, eta_sigma=1.6)
        event, pt, eta, phi, rows = (np.concatenate([h, i]) for h, i in zip(hard, isr))
        mass = sample_breit_wigner(rng, n, mass=MASS_W, width=WIDTH_W, low=50.0, high=150.0)
        w = _boson_recoiling(rng, n, event, pt, phi, mass, rapidity_sigma=1.8)
        w_charge = np.where(rng.random(n) < 0.6, 1, -1)  # W+ / W- ~ 3/2 at the LHC
        _w_to_tau_nu(rng, truth, np.arange(n), w, w_charge)
        _fake_from_jets(rng, truth, event, rows, pt, eta)
        return truth.build()

    generate_wjets.__doc__ = f"W + {parton_jets} parton(s), W -> tau nu, one jet faking a tau."
    return generate_wjets


def _top_pair(rng: np.random.Generator, truth: _Truth, n: int) -> tuple[np.ndarray, ...]:
    """tt -> bW bW, the tops back to back in the transverse plane: (event, sign, b, W, top row) per top.

    The tops and b quarks go into the generator records; what the Ws and b quarks become
    is the caller's (each channel's decays; a W's record is a daughter of the top row).
    """
    event = np.arange(n)
    pt1 = rng.gamma(2.2, 40.0, n)
    phi1 = rng.uniform(-np.pi, np.pi, n)
    px2 = -pt1 * np.cos(phi1) + 15.0 * rng.standard_normal(n)
    py2 = -pt1 * np.sin(phi1) + 15.0 * rng.standard_normal(n)
    m_top = sample_breit_wigner(rng, 2 * n, mass=MASS_TOP, width=WIDTH_TOP, low=160.0, high=185.0)
    tops = np.concatenate([four_vector(pt1, rng.normal(0, 1.2, n), phi1, m_top[:n]),
                           four_vector(np.hypot(px2, py2), rng.normal(0, 1.2, n), np.arctan2(py2, px2), m_top[n:])])
    top_event = np.concatenate([event, event])
    sign = np.repeat([1, -1], n)  # t (W+) then tbar (W-)
    top_rows = truth.add_gen(top_event, tops, PDG["t"] * sign, _GEN_STATUS_HARD)
    m_w = sample_breit_wigner(rng, 2 * n, mass=MASS_W, width=WIDTH_W, low=60.0, high=100.0)
    b, w = two_body_decay(rng, tops, MASS_B, m_w)
    truth.add_gen(top_event, b, PDG["b"] * sign, 23, mother=top_rows)
    return top_event, sign, b, w, top_rows


def generate_ttbar(rng: np.random.Generator, n: int) -> EventBatch:
    """tt -> bW bW: two b jets; one or both W -> tau nu, otherwise W -> qq' with a fake tau."""
    truth = _Truth(n)
    top_event, sign, b, w, top_rows = _top_pair(rng, truth, n)
    truth.add_p4("Jet", top_event, b, flavour=5)
    # Which W decays to tau nu: both (30 %), else exactly one, at random.
    both = rng.random(n) < 0.3
    first = rng.random(n) < 0.5
    tau_w = np.concatenate([both | first, both | ~first])
    _w_to_tau_nu(rng, truth, top_event[tau_w], w[tau_w], sign[tau_w], mother=top_rows[tau_w])
    had = ~tau_w
    q1, q2 = two_body_decay(rng, w[had], 0.0, 0.0)
    charm = rng.random(had.sum()) < 0.5  # W -> cs about half of hadronic decays
    q_event = np.concatenate([top_event[had], top_event[had]])
    q_pt, q_eta, q_phi, _ = pt_eta_phi_mass(np.concatenate([q1, q2]))
    rows = truth.add("Jet", q_event, pt=q_pt, eta=q_eta, phi=q_phi, mass=0.0,
                     flavour=np.concatenate([np.where(charm, 4, 1), np.ones(had.sum(), int)]))
    _fake_from_jets(rng, truth, q_event, rows, q_pt, q_eta)
    truth.add_isr(rng, rng.poisson(0.5, n), pt_min=20.0, index=3.0, eta_sigma=1.6)
    return truth.build()


@dataclass(frozen=True)
class ProcessModel:
    """A simulated process: its generator, the fraction of its events it stands for, its filter.

    ``fraction`` is the part of all events of the process (cross section x luminosity)
    that the generator simulates before the tau filter: branching fractions times a
    production-level factor (jets present, a jet faking a tau). For the signal the factor
    is the physics one; for the backgrounds it is chosen so that after the default
    selection the signal is a few per cent of the background, as in the signal-enriched
    categories of the real analysis. The tau filter acceptance (`generate_process`) is
    measured, not assumed. ``accepts`` is the generator-level filter of the final state
    (None: the di-tau processes' `passes_tau_filter`; the mu-tau_h ones' is in
    `analysis.generate.mutau`).
    """

    generate: Callable[[np.random.Generator, int], EventBatch]
    fraction: float
    why: str
    accepts: Callable[[EventBatch], np.ndarray] | None = None  # None: `passes_tau_filter`


_HAD = "BR(tau_h tau_h) 0.42"
_W_TAU = "BR(W->tau nu) 0.108 x BR(tau_h) 0.65"
PROCESSES: dict[str, ProcessModel] = {
    "ggH": ProcessModel(generate_ggh, 0.063 * 0.42 * 0.10, f"BR(H->tautau) 0.063 x {_HAD} x two ISR jets 0.10"),
    "VBF": ProcessModel(generate_vbf, 0.063 * 0.42 * 0.50,
                        f"BR(H->tautau) 0.063 x {_HAD} x tagging jets in acceptance 0.50"),
    "DY": ProcessModel(generate_dy, (1 / 3) * 0.42 * 0.0021, f"tautau share of ll 1/3 x {_HAD} x jet filter 0.0021"),
    "TT": ProcessModel(generate_ttbar, 0.0022, "W -> tau_h nu twice, or once and a W -> qq jet faking a tau: 0.0022"),
    "W1J": ProcessModel(_make_wjets(1), 0.108 * 0.65 * 0.0018, f"{_W_TAU} x a jet faking a tau, 2 ISR jets 0.0018"),
    "W2J": ProcessModel(_make_wjets(2), 0.108 * 0.65 * 0.0040, f"{_W_TAU} x a jet faking a tau, 1 ISR jet 0.0040"),
    "W3J": ProcessModel(_make_wjets(3), 0.108 * 0.65 * 0.0090, f"{_W_TAU} x one of the jets faking a tau 0.0090"),
}

# The tau filter: events need two tau candidates above this pt inside the tracker (the
# final state of the analysis; like the skims the real outreach files come from).
FILTER_TAU_PT_MIN = 18.0
FILTER_TAU_ABS_ETA_MAX = 2.3


def passes_tau_filter(truth: EventBatch) -> np.ndarray:
    """Per event of a truth batch: two tau candidates — visible tau decay products, or
    jets faking a tau with the pt the candidate keeps — above 18 GeV with |eta| < 2.3."""
    taus, fakes, jets = (truth.collections[k] for k in ("Tau", "Fake", "Jet"))
    real = (taus["vis_pt"] > FILTER_TAU_PT_MIN) & (np.abs(taus["vis_eta"]) < FILTER_TAU_ABS_ETA_MAX)
    fake_pt = jets["pt"][fakes["jetIdx"]] * fakes["frac"]
    fake = (fake_pt > FILTER_TAU_PT_MIN) & (np.abs(jets["eta"][fakes["jetIdx"]]) < FILTER_TAU_ABS_ETA_MAX)
    n_candidates = (np.bincount(taus["event"][real], minlength=truth.n)
                    + np.bincount(fakes["event"][fake], minlength=truth.n))
    return n_candidates >= 2


def generate_process(process: str, rng: np.random.Generator, n: int) -> tuple[EventBatch, int]:
    """``n`` reconstructed events of `process` (a key of `PROCESSES`) passing the tau filter.

    Returns the batch and the number of events tried: the filter acceptance is
    ``n / tried``. Generator-level events are made in vectorised rounds sized by the
    acceptance seen so far and filtered before the (costlier) detector simulation; the
    last round is cut right after the n-th accepted event, so ``tried`` counts exactly
    the events examined.
    """
    try:
        model = PROCESSES[process]
    except KeyError:
        raise ValueError(f"no generator for process {process!r}; the generator knows "
                         f"{', '.join(PROCESSES)} (set `process` of the sample to one of them)") from None
    return generate_filtered(model, rng, n)


def generate_filtered(model: ProcessModel, rng: np.random.Generator, n: int) -> tuple[EventBatch, int]:
    """`generate_process` for a `ProcessModel` of any channel: ``n`` events it accepts, and the tries."""
    accepts = model.accepts or passes_tau_filter
    parts: list[EventBatch] = []
    have = tried = 0
    acceptance = 0.4
    while have < n:
        size = int((n - have) / acceptance * 1.05) + 32
        truth = model.generate(rng, size)
        keep = accepts(truth)
        accepted = np.flatnonzero(keep)
        if len(accepted) > n - have:
            last = accepted[n - have - 1]
            keep[last + 1:] = False
            size = int(last) + 1
        parts.append(truth.subset(keep))
        have += int(keep.sum())
        tried += size
        acceptance = max(have / tried, 0.02)
    truth = model.generate(rng, 0) if not parts else parts[0] if len(parts) == 1 else concatenate_batches(parts)
    return reconstruct(rng, truth), tried
