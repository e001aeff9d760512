"""Skim stage: input profiles, i.e. which NanoAOD dialect a file speaks, detected from its branches.

The same physics selection ("medium isolation", "loose anti-electron", "pile-up ID passed")
is stored differently by each generation of CMS NanoAOD:

* ``outreach2012`` - CMS 2012 open-data outreach files (and the generated samples):
  one boolean branch per working point (``Tau_idIsoMedium``), ``Jet_puId`` bool, ``Jet_btag``.
* ``run2`` - real Run 2 NanoAOD: DeepTau 2017v2p1 bit masks (``Tau_idDeepTau2017v2p1VSjet``,
  bit k set = working point k passed), integer ``Jet_jetId`` / ``Jet_puId`` bit masks,
  ``Jet_btagDeepFlavB``.
* ``run3`` - real Run 3 NanoAOD: DeepTau 2018v2p5 working-point *indices*
  (``Tau_idDeepTau2018v2p5VSjet`` = 5 means "passes Medium and everything looser"),
  ``Jet_jetId`` bit mask, PUPPI jets without a pile-up ID.

A profile maps the working-point names of the config ("VLoose" ... "Tight") to boolean
masks. A file whose branches match no profile gets an error naming the missing branches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import awkward as ak
import numpy as np

from analysis.config import SelectionConfig
from analysis.errors import ConfigError

__all__ = ["PROFILES", "InputProfile", "ProfileError", "detect_profile", "event_branches",
           "readable_branches"]

# Branches every profile reads (NanoAOD names).
COMMON_BRANCHES = (
    "run", "luminosityBlock", "event", "PV_npvs", "MET_pt", "MET_phi",
    "Tau_pt", "Tau_eta", "Tau_phi", "Tau_mass", "Tau_charge", "Tau_decayMode",
    "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass",
)

# DeepTau 2017v2p1 (Run 2): working point -> bit of the uint8 mask.
DEEPTAU_2017_VSJET_BITS = {"VVVLoose": 1, "VVLoose": 2, "VLoose": 4, "Loose": 8, "Medium": 16,
                           "Tight": 32, "VTight": 64, "VVTight": 128}
DEEPTAU_2017_VSE_BITS = DEEPTAU_2017_VSJET_BITS
DEEPTAU_2017_VSMU_BITS = {"VLoose": 1, "Loose": 2, "Medium": 4, "Tight": 8}
# DeepTau 2018v2p5 (Run 3): working point -> smallest index that passes it.
DEEPTAU_2018_VSJET_INDEX = {"VVVLoose": 1, "VVLoose": 2, "VLoose": 3, "Loose": 4, "Medium": 5,
                            "Tight": 6, "VTight": 7, "VVTight": 8}
DEEPTAU_2018_VSE_INDEX = DEEPTAU_2018_VSJET_INDEX
DEEPTAU_2018_VSMU_INDEX = {"VLoose": 1, "Loose": 2, "Medium": 3, "Tight": 4}
# Run 2 integer jet IDs: bit 1 (value 2) = tight jet ID; pile-up ID bit 2 (value 4) = loose.
JET_ID_TIGHT_BIT = 2
JET_PUID_LOOSE_BIT = 4
# The pile-up jet ID is trained, and only applied, below this jet pt (GeV).
JET_PUID_PT_MAX = 50.0

# Decay-mode finding: the first of these branches present is used.
_RUN23_DECAY_MODE = ("Tau_idDecayModeNewDMs", "Tau_idDecayModeOldDMs", "Tau_idDecayMode")


class ProfileError(ValueError):
    """A file's branches match no input profile; ``missing`` lists what the closest one lacks."""

    def __init__(self, message: str, missing: tuple[str, ...]):
        super().__init__(message, missing)
        self.message = message
        self.missing = missing

    def __str__(self) -> str:
        return self.message


def _field(branch: str) -> str:
    return branch.split("_", 1)[1]


def _wp(table: dict[str, int], wp: str, *, what: str, profile: str) -> int:
    try:
        return table[wp]
    except KeyError:
        raise ConfigError(f"selection: {what} working point {wp!r} does not exist for input "
                          f"profile {profile!r}; use one of {', '.join(table)}") from None


@dataclass(frozen=True)
class InputProfile:
    """One NanoAOD dialect: the branches it needs and how its IDs become boolean masks.

    Attributes
    ----------
    name : str
        ``outreach2012``, ``run2`` or ``run3``.
    marker : str
        The branch whose presence identifies the dialect.
    branches : tuple of str
        Every branch the skim reads from such a file (besides the optional ``genWeight``).
    """

    name: str
    marker: str
    branches: tuple[str, ...]
    decay_mode_branch: str

    def tau_id_mask(self, taus: ak.Array, selection: SelectionConfig) -> ak.Array:
        """Decay-mode finding, isolation, anti-e and anti-mu of `selection` (``var * bool``).

        `taus` (here and in the other ID functions) is ``var * {fields}`` awkward records or
        the flat numpy `processors.flat.ObjectColumns` of the processor: the operations are
        elementwise and the result has the same layout as the input.
        """
        mask = np.ones_like(taus.pt, dtype=bool)
        if selection.tau_require_decay_mode:
            mask = mask & (taus[_field(self.decay_mode_branch)] != 0)
        mask = mask & self._tau_wp(taus, "VSjet", selection.tau_iso)
        if selection.tau_require_anti_lepton:
            mask = mask & self._tau_wp(taus, "VSe", selection.tau_anti_ele)
            mask = mask & self._tau_wp(taus, "VSmu", selection.tau_anti_mu)
        return mask

    def _tau_wp(self, taus: ak.Array, kind: str, wp: str) -> ak.Array:
        if self.name == "outreach2012":
            prefix = {"VSjet": "idIso", "VSe": "idAntiEle", "VSmu": "idAntiMu"}[kind]
            available = [b.split(prefix, 1)[1] for b in self.branches if b.startswith(f"Tau_{prefix}")]
            if wp not in available:
                raise ConfigError(f"selection: tau {kind} working point {wp!r} has no branch in "
                                  f"input profile 'outreach2012'; use one of {', '.join(available)}")
            return taus[f"{prefix}{wp}"]
        if self.name == "run2":
            table = {"VSjet": DEEPTAU_2017_VSJET_BITS, "VSe": DEEPTAU_2017_VSE_BITS,
                     "VSmu": DEEPTAU_2017_VSMU_BITS}[kind]
            bit = _wp(table, wp, what=f"tau {kind}", profile=self.name)
            return (taus[f"idDeepTau2017v2p1{kind}"] & bit) != 0
        table = {"VSjet": DEEPTAU_2018_VSJET_INDEX, "VSe": DEEPTAU_2018_VSE_INDEX,
                 "VSmu": DEEPTAU_2018_VSMU_INDEX}[kind]
        index = _wp(table, wp, what=f"tau {kind}", profile=self.name)
        return taus[f"idDeepTau2018v2p5{kind}"] >= index

    def tau_iso(self, taus: ak.Array) -> ak.Array:
        """Relative isolation (isolation pt sum / tau pt, lower = more isolated), ``var * float32``."""
        if self.name == "outreach2012":
            return taus.relIso_all
        return (taus.chargedIso + taus.neutralIso) / taus.pt

    def jet_id_mask(self, jets: ak.Array, selection: SelectionConfig) -> ak.Array:
        """Jet quality and pile-up ID of `selection` (``var * bool``)."""
        if self.name == "outreach2012":
            if selection.jet_require_puid:
                return jets.puId != 0
            return np.ones_like(jets.pt, dtype=bool)
        mask = (jets.jetId & JET_ID_TIGHT_BIT) != 0
        if selection.jet_require_puid and self.name == "run2":
            # Above JET_PUID_PT_MAX the ID is not defined, every jet passes.
            mask = mask & (((jets.puId & JET_PUID_LOOSE_BIT) != 0) | (jets.pt >= JET_PUID_PT_MAX))
        # Run 3 PUPPI jets carry no pile-up ID: PUPPI already removes pile-up particles.
        return mask

    def jet_btag(self, jets: ak.Array) -> ak.Array:
        """b-tag discriminant in [0, 1] (CSV in 2012, DeepJet in Run 2/3), ``var * float32``."""
        return jets.btag if self.name == "outreach2012" else jets.btagDeepFlavB


def _outreach() -> InputProfile:
    ids = [f"Tau_idIso{wp}" for wp in ("VLoose", "Loose", "Medium", "Tight")]
    ids += [f"Tau_idAnti{k}{wp}" for k in ("Ele", "Mu") for wp in ("Loose", "Medium", "Tight")]
    return InputProfile("outreach2012", "Tau_idIsoMedium",
                        COMMON_BRANCHES + ("Tau_idDecayMode", "Tau_relIso_all", *ids,
                                           "Jet_puId", "Jet_btag"),
                        "Tau_idDecayMode")


def _deeptau(name: str, version: str, decay_mode_branch: str) -> InputProfile:
    ids = tuple(f"Tau_idDeepTau{version}{k}" for k in ("VSjet", "VSe", "VSmu"))
    jets = ("Jet_jetId", "Jet_puId") if name == "run2" else ("Jet_jetId",)
    return InputProfile(name, ids[0],
                        COMMON_BRANCHES + (decay_mode_branch, "Tau_chargedIso", "Tau_neutralIso",
                                           *ids, *jets, "Jet_btagDeepFlavB"),
                        decay_mode_branch)


PROFILES = ("run3", "run2", "outreach2012")


def detect_profile(branches: Iterable[str]) -> InputProfile:
    """The input profile of a file from the names of its ``Events`` branches.

    Parameters
    ----------
    branches : iterable of str
        NanoAOD branch names (``Tau_pt``, ``nJet``, ...).

    Raises
    ------
    ProfileError
        No profile's marker branch is present, or the matching profile lacks branches;
        the message lists the missing branches of the closest profile.
    """
    present = set(branches)
    decay_mode = next((b for b in _RUN23_DECAY_MODE if b in present), _RUN23_DECAY_MODE[0])
    candidates = [_deeptau("run3", "2018v2p5", decay_mode), _deeptau("run2", "2017v2p1", decay_mode),
                  _outreach()]
    for profile in candidates:
        if profile.marker in present:
            missing = tuple(b for b in profile.branches if b not in present)
            if missing:
                raise ProfileError(f"missing branch{'es' if len(missing) > 1 else ''} "
                                   f"{', '.join(missing)} (input profile {profile.name!r})", missing)
            return profile
    closest = min(candidates, key=lambda p: sum(b not in present for b in p.branches))
    missing = tuple(b for b in closest.branches if b not in present)
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    raise ProfileError(f"branches match no input profile (outreach2012, run2, run3); the closest, "
                       f"{closest.name!r}, lacks {shown}", missing)


def readable_branches(triggers: Iterable[str] = ()) -> list[str]:
    """Every branch any profile may read, with counters, ``genWeight`` and `triggers` (globs).

    The runner passes this to NanoEvents as a branch filter, so the events of a chunk are
    built from these few branches instead of the file's hundreds (or 1,500 in real NanoAOD).
    """
    # PV_* and MET_* whole: NanoAODSchema's vertex and MET behaviours require their other
    # fields (PV_x, ...) to exist, though the skim never reads them.
    names = {"nTau", "nJet", "genWeight", "PV_*", "MET_*", *_RUN23_DECAY_MODE, *triggers}
    for profile in (_deeptau("run3", "2018v2p5", _RUN23_DECAY_MODE[0]),
                    _deeptau("run2", "2017v2p1", _RUN23_DECAY_MODE[0]), _outreach()):
        names.update(profile.branches)
    return sorted(names)


def event_branches(events: ak.Array) -> set[str]:
    """NanoAOD branch names behind a (virtual) NanoEvents array, without reading any data.

    ``events.Tau.pt`` is branch ``Tau_pt``; top-level fields (``run``) keep their name.
    Cross-reference fields that NanoAODSchema adds (``Tau.jetIdxG``) come out too; they are
    harmless for profile detection.
    """
    names = set()
    for field in events.fields:
        sub = events[field].fields
        if sub:
            names.update(f"{field}_{s}" for s in sub)
        else:
            names.add(field)
    return names

