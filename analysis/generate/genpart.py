"""Sample generator (generate stage): the generator records (GenPart) as real NanoAOD writes them.

Each GenPart record has, beyond the outreach layout's pt, eta, phi, mass, pdgId and status,
the two branches of Run 2/3 NanoAOD that make the decay chain readable:
``genPartIdxMother`` (the mother's index in the event's GenPart, -1 for none) and
``statusFlags`` (the bits of CMSSW's ``GenStatusFlags``, `STATUS_FLAG_BITS`). The code that
finds the true boson and tau pair (processors.truth) then reads generated and real files
alike. The generator makes every particle once, so each record is its own first and last
copy (``isFirstCopy``, ``isLastCopy``).

The records of an event, in the order written:

1. the hard process, by decreasing pt (the outreach layout's order, which ``Tau_genPartIdx``
   and ``Muon_genPartIdx`` point into): the boson (H 25, Z 23, W +-24) or the tops (+-6)
   with their b quarks (+-5) and Ws, the taus (+-15, status 2), the prompt leptons and
   neutrinos (status 1) of W, Z and leptonic tau decays;
2. then, by decreasing pt, the decay products of each hadronically decaying tau and the
   neutrinos of each leptonic one (the generator tables' ``appended`` field, not written):
   the visible hadronic system as one particle (pi+- 211 for decay mode 0, status 1; rho+-
   213 for mode 1 and a1+- 20213 for mode 10, status 2) and the tau neutrino (+-16, status
   1); a leptonic decay's two neutrinos are one record with the nu_tau's pdgId and their
   summed momentum (hence a mass). A tau's visible and invisible momenta add up to its own.

Real NanoAOD writes mothers before daughters; in group 1 a mother may come after its
daughter (pt order), so follow ``genPartIdxMother`` rather than the order. The records use
no random numbers: they hold momenta already drawn, and the rest of a sample is the same
with or without them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FLAGS_HARD", "FLAGS_HARD_DECAYED", "FLAGS_TAU_PRODUCT", "PDG_VISIBLE", "STATUS_FLAG_BITS",
           "visible_pdg_ids"]

# CMSSW DataFormats/HepMCCandidate/interface/GenStatusFlags.h: name -> bit of statusFlags.
STATUS_FLAG_BITS = {
    "isPrompt": 0, "isDecayedLeptonHadron": 1, "isTauDecayProduct": 2, "isPromptTauDecayProduct": 3,
    "isDirectTauDecayProduct": 4, "isDirectPromptTauDecayProduct": 5, "isDirectHadronDecayProduct": 6,
    "isHardProcess": 7, "fromHardProcess": 8, "isHardProcessTauDecayProduct": 9,
    "isDirectHardProcessTauDecayProduct": 10, "fromHardProcessBeforeFSR": 11, "isFirstCopy": 12,
    "isLastCopy": 13, "isLastCopyBeforeFSR": 14,
}


def _flags(*names: str) -> int:
    return sum(1 << STATUS_FLAG_BITS[name] for name in names)


_ONE_COPY = ("isFirstCopy", "isLastCopy", "isLastCopyBeforeFSR")
# Bosons, tops, b quarks, prompt leptons and neutrinos of the hard process.
FLAGS_HARD = _flags("isPrompt", "isHardProcess", "fromHardProcess", "fromHardProcessBeforeFSR", *_ONE_COPY)
# Particles of the hard process that decay further (taus).
FLAGS_HARD_DECAYED = FLAGS_HARD | _flags("isDecayedLeptonHadron")
# The direct decay products of a prompt, hard-process tau (what real NanoAOD sets for them).
FLAGS_TAU_PRODUCT = _flags("isTauDecayProduct", "isPromptTauDecayProduct", "isDirectTauDecayProduct",
                           "isDirectPromptTauDecayProduct", "isHardProcessTauDecayProduct",
                           "isDirectHardProcessTauDecayProduct", *_ONE_COPY)

# HPS decay mode -> PDG id of the positive visible system (pi+, rho+, a1(1260)+).
PDG_VISIBLE = {0: 211, 1: 213, 10: 20213}


def visible_pdg_ids(decay_mode: np.ndarray, charge: np.ndarray) -> np.ndarray:
    """PDG ids of the visible hadronic systems of taus of ``charge`` decaying in ``decay_mode``."""
    codes = np.select([decay_mode == mode for mode in PDG_VISIBLE], list(PDG_VISIBLE.values()), 0)
    return (codes * np.sign(charge)).astype(np.int32)
