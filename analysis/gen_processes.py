"""Sample generator (generate stage): the physics processes of the H->tautau analysis.

One function per process turns a random generator and an event count into an
`EventBatch` of reconstructed events. Each simulates the *filtered* final state the
analysis looks at — two hadronic tau candidates and jets:

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
and counts the events tried (analysis.generate turns both into the weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from analysis.gen_events import EventBatch, concatenate_batches
from analysis.gen_kinematics import MASS_TAU, four_vector, sample_breit_wigner, two_body_decay
from analysis.gen_objects import EventContext, pick_one_per_event, truncated_normal

__all__ = ["FILTER_TAU_ABS_ETA_MAX", "FILTER_TAU_PT_MIN", "PROCESSES", "ProcessModel", "generate_process",
           "passes_tau_filter"]

MASS_Z, WIDTH_Z = 91.1876, 2.4952
MASS_H, WIDTH_H = 125.0, 0.0041
MASS_W, WIDTH_W = 80.385, 2.085
MASS_TOP, WIDTH_TOP = 172.5, 1.4
MASS_B = 4.8
PDG = {"tau": 15, "nu_tau": 16, "Z": 23, "W": 24, "H": 25, "t": 6, "b": 5}
_GEN_STATUS_HARD, _GEN_STATUS_DECAYED, _GEN_STATUS_FINAL = 62, 2, 1


def _boson_recoiling(rng, n, jet_event, jet_p4, mass, *, rapidity_sigma: float, kt: float = 5.0) -> np.ndarray:
    """Boson four-vectors ``(n, 4)`` balancing the transverse momentum of the jets."""
    px = -np.bincount(jet_event, weights=jet_p4[:, 1], minlength=n) + kt * rng.standard_normal(n)
    py = -np.bincount(jet_event, weights=jet_p4[:, 2], minlength=n) + kt * rng.standard_normal(n)
    y = truncated_normal(rng, n, sigma=rapidity_sigma, abs_max=4.0)
    mt = np.sqrt(mass**2 + px**2 + py**2)
    return np.stack([mt * np.cosh(y), px, py, mt * np.sinh(y)], axis=-1)


def _tau_pair(ctx: EventContext, boson: np.ndarray, boson_pdg: int) -> None:
    """Boson -> tau- tau+ in its rest frame, both taus decaying hadronically."""
    n = ctx.n
    event = np.arange(n)
    ctx.add_gen(event, boson, boson_pdg, _GEN_STATUS_HARD)
    tau_minus, tau_plus = two_body_decay(ctx.rng, boson, MASS_TAU, MASS_TAU)
    taus = np.concatenate([tau_minus, tau_plus])
    events2 = np.concatenate([event, event])
    pdg = np.repeat([PDG["tau"], -PDG["tau"]], n)
    gen_rows = ctx.add_gen(events2, taus, pdg, _GEN_STATUS_DECAYED)
    ctx.add_real_taus(events2, taus, -np.sign(pdg), gen_rows)


def _finish(ctx: EventContext) -> EventBatch:
    ctx.add_pileup_jets()
    ctx.add_soft_objects()
    return ctx.build()


def _add_isr_fakes(ctx: EventContext, event, reco, *, rate: float = 0.08) -> None:
    """Some ISR jets are also reconstructed as (mostly non-isolated) tau candidates."""
    rows, pt, eta, phi = reco
    fake = (ctx.rng.random(len(rows)) < rate) & (np.abs(eta) < 2.3)
    ctx.add_fake_taus(event[fake], rows[fake], pt[fake], eta[fake], phi[fake])


def _resonance_with_isr(rng, n, *, mass, width, low, high, pdg, isr_index, extra_isr, rapidity_sigma):
    ctx = EventContext(rng, n)
    counts = 2 + rng.poisson(extra_isr, n)  # the generator filter asks for two jets
    event, p4, reco = ctx.add_isr_jets(counts, pt_min=25.0, index=isr_index, eta_sigma=1.6)
    _add_isr_fakes(ctx, event, reco)
    boson = _boson_recoiling(rng, n, event, p4, sample_breit_wigner(rng, n, mass=mass, width=width, low=low, high=high),
                             rapidity_sigma=rapidity_sigma)
    _tau_pair(ctx, boson, pdg)
    return _finish(ctx)


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
    ctx = EventContext(rng, n)
    deta = 1.0 + rng.gamma(3.0, 0.9, n)
    center = rng.normal(0.0, 0.7, n)
    eta = np.concatenate([center + deta / 2, center - deta / 2])
    pt = 20.0 + rng.gamma(2.0, 25.0, 2 * n)
    tag_event = np.concatenate([np.arange(n), np.arange(n)])
    tag_p4 = four_vector(pt, eta, rng.uniform(-np.pi, np.pi, 2 * n), 0.0)
    ctx.add_jets(tag_event, tag_p4, 0)
    isr_event, isr_p4, reco = ctx.add_isr_jets(rng.poisson(0.3, n), pt_min=20.0, index=3.0, eta_sigma=1.6)
    _add_isr_fakes(ctx, isr_event, reco)
    event = np.concatenate([tag_event, isr_event])
    p4 = np.concatenate([tag_p4, isr_p4])
    boson = _boson_recoiling(rng, n, event, p4, sample_breit_wigner(rng, n, mass=MASS_H, width=WIDTH_H,
                                                                  low=MASS_H - 1, high=MASS_H + 1),
                             rapidity_sigma=1.2)
    _tau_pair(ctx, boson, PDG["H"])
    return _finish(ctx)


def _w_to_tau_nu(ctx: EventContext, event, w: np.ndarray, w_charge: np.ndarray) -> None:
    """W -> tau nu (tau hadronic); generator records for W and tau."""
    rng = ctx.rng
    ctx.add_gen(event, w, PDG["W"] * w_charge, _GEN_STATUS_HARD)
    tau, nu = two_body_decay(rng, w, MASS_TAU, 0.0)
    gen_rows = ctx.add_gen(event, tau, -PDG["tau"] * w_charge, _GEN_STATUS_DECAYED)
    ctx.add_gen(event, nu, PDG["nu_tau"] * w_charge, _GEN_STATUS_FINAL)
    ctx.add_invisible(event, nu)
    ctx.add_real_taus(event, tau, w_charge, gen_rows)


def _make_wjets(parton_jets: int) -> Callable[[np.random.Generator, int], EventBatch]:
    def generate_wjets(rng: np.random.Generator, n: int) -> EventBatch:
        ctx = EventContext(rng, n)
        # W + k partons; the filter asks for three jets (one to fake a tau, two to tag).
        hard_event, hard_p4, hard_reco = ctx.add_isr_jets(np.full(n, parton_jets), pt_min=25.0, index=2.6,
                                                          eta_sigma=1.5)
        extra = np.maximum(3 - parton_jets, 0) + rng.poisson(0.3, n)
        isr_event, isr_p4, isr_reco = ctx.add_isr_jets(extra, pt_min=25.0, index=3.2, eta_sigma=1.6)
        event = np.concatenate([hard_event, isr_event])
        p4 = np.concatenate([hard_p4, isr_p4])
        mass = sample_breit_wigner(rng, n, mass=MASS_W, width=WIDTH_W, low=50.0, high=150.0)
        w = _boson_recoiling(rng, n, event, p4, mass, rapidity_sigma=1.8)
        w_charge = np.where(rng.random(n) < 0.6, 1, -1)  # W+ / W- ~ 3/2 at the LHC
        _w_to_tau_nu(ctx, np.arange(n), w, w_charge)
        _fake_from_jets(ctx, event, *(np.concatenate([h, i]) for h, i in zip(hard_reco, isr_reco)))
        return _finish(ctx)

    generate_wjets.__doc__ = f"W + {parton_jets} parton(s), W -> tau nu, one jet faking a tau."
    return generate_wjets


def _fake_from_jets(ctx: EventContext, event, jet_rows, pt, eta, phi) -> None:
    """One jet per event (among those inside the tracker) is also reconstructed as a tau."""
    chosen = pick_one_per_event(ctx.rng, event, (np.abs(eta) < 2.3) & (pt > 20.0), ctx.n)
    chosen = chosen[chosen >= 0]
    ctx.add_fake_taus(event[chosen], jet_rows[chosen], pt[chosen], eta[chosen], phi[chosen])


def generate_ttbar(rng: np.random.Generator, n: int) -> EventBatch:
    """tt -> bW bW: two b jets; one or both W -> tau nu, otherwise W -> qq' with a fake tau."""
    ctx = EventContext(rng, n)
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
    ctx.add_gen(top_event, tops, PDG["t"] * sign, _GEN_STATUS_HARD)
    m_w = sample_breit_wigner(rng, 2 * n, mass=MASS_W, width=WIDTH_W, low=60.0, high=100.0)
    b, w = two_body_decay(rng, tops, MASS_B, m_w)
    ctx.add_gen(top_event, b, PDG["b"] * sign, 23)
    ctx.add_jets(top_event, b, 5)
    # Which W decays to tau nu: both (30 %), else exactly one, at random.
    both = rng.random(n) < 0.3
    first = rng.random(n) < 0.5
    tau_w = np.concatenate([both | first, both | ~first])
    _w_to_tau_nu(ctx, top_event[tau_w], w[tau_w], sign[tau_w])
    had = ~tau_w
    q1, q2 = two_body_decay(rng, w[had], 0.0, 0.0)
    charm = rng.random(had.sum()) < 0.5  # W -> cs about half of hadronic decays
    q_event = np.concatenate([top_event[had], top_event[had]])
    reco = ctx.add_jets(q_event, np.concatenate([q1, q2]),
                        np.concatenate([np.where(charm, 4, 1), np.ones(had.sum(), int)]))
    _fake_from_jets(ctx, q_event, *reco)
    ctx.add_isr_jets(rng.poisson(0.5, n), pt_min=20.0, index=3.0, eta_sigma=1.6)
    return _finish(ctx)


@dataclass(frozen=True)
class ProcessModel:
    """A simulated process: its generator and the fraction of its events it stands for.

    ``fraction`` is the part of all events of the process (cross section x luminosity)
    that the generator simulates before the tau filter: branching fractions times a
    production-level factor (jets present, a jet faking a tau). For the signal the factor
    is the physics one; for the backgrounds it is chosen so that after the default
    selection the signal is a few per cent of the background, as in the signal-enriched
    categories of the real analysis. The tau filter acceptance (`generate_process`) is
    measured, not assumed.
    """

    generate: Callable[[np.random.Generator, int], EventBatch]
    fraction: float
    why: str


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


def passes_tau_filter(batch: EventBatch) -> np.ndarray:
    """Per event: at least two reconstructed tau candidates with pt > 18 GeV, |eta| < 2.3."""
    tau = batch.collections["Tau"]
    ok = (tau["pt"] > FILTER_TAU_PT_MIN) & (np.abs(tau["eta"]) < FILTER_TAU_ABS_ETA_MAX)
    return np.bincount(tau["event"][ok], minlength=batch.n) >= 2


def generate_process(process: str, rng: np.random.Generator, n: int) -> tuple[EventBatch, int]:
    """``n`` events of `process` (a key of `PROCESSES`) that pass the tau filter.

    Returns the batch and the number of events tried: the filter acceptance is
    ``n / tried``. Events are generated in vectorised rounds sized by the acceptance seen
    so far; the last round is cut right after the n-th accepted event, so ``tried`` counts
    exactly the events examined.
    """
    try:
        model = PROCESSES[process]
    except KeyError:
        raise ValueError(f"no generator for process {process!r}; the generator knows "
                         f"{', '.join(PROCESSES)} (set `process` of the sample to one of them)") from None
    parts: list[EventBatch] = []
    have = tried = 0
    acceptance = 0.5
    while have < n:
        size = int((n - have) / acceptance * 1.05) + 32
        batch = model.generate(rng, size)
        keep = passes_tau_filter(batch)
        accepted = np.flatnonzero(keep)
        if len(accepted) > n - have:
            last = accepted[n - have - 1]
            keep[last + 1:] = False
            size = int(last) + 1
        parts.append(batch.subset(keep))
        have += int(keep.sum())
        tried += size
        acceptance = max(have / tried, 0.02)
    if not parts:
        return model.generate(rng, 0), 0
    return (parts[0] if len(parts) == 1 else concatenate_batches(parts)), tried
