"""Skim stage (processors): input profiles — which NanoAOD dialect a file speaks, as data.

The same physics selection ("medium isolation", "tight jet ID") is stored differently by
each generation of CMS NanoAOD. A profile is one row of a table (`BUILTIN_PROFILES`):
the branches that identify the dialect, how its tau IDs encode working points, where the
isolation, jet ID, pile-up ID, b-tag and missing momentum live. The configuration extends
the table (``[skim.input_profiles.<name>]``: a new dialect, or keys of a built-in one
changed, such as ``met = "PuppiMET"``); no code is written per version.

* ``outreach2012`` - CMS 2012 open-data outreach files (and the generated samples): one
  boolean branch per working point (``Tau_idIsoMedium``), ``Jet_puId`` bool, ``Jet_btag``.
* ``run2`` - Run 2 NanoAOD (v9): DeepTau 2017v2p1 bit masks (bit k set = working point k
  passed), ``Jet_jetId`` / ``Jet_puId`` bit masks, ``MET_*``.
* ``run3`` - Run 3 NanoAOD v12-v14: DeepTau 2018v2p5 working-point *indices* (5 = passes
  Medium and everything looser). ``Jet_jetId`` of these versions is known to be wrong; the
  jet ID is computed with JME's Run 3 recipe from the energy fractions and multiplicities.
* ``run3v15`` - Run 3 NanoAOD v15: ``Jet_jetId`` and ``MET_*`` removed (CMSSW PR #46085);
  the same jet ID recipe, and ``PFMET_*`` (``PuppiMET_*`` by configuration).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import awkward as ak
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from analysis.core.settings import deep_merge, format_validation_error
from analysis.errors import ConfigError

__all__ = ["BUILTIN_PROFILES", "COMMON_BRANCHES", "PROFILES", "InputProfile", "ProfileError", "ProfileTable",
           "detect_profile", "event_branches", "jme_run3_jet_id", "readable_branches"]

# Branches every profile reads (NanoAOD names); the missing momentum is the profile's.
COMMON_BRANCHES = (
    "run", "luminosityBlock", "event", "PV_npvs",
    "Tau_pt", "Tau_eta", "Tau_phi", "Tau_mass", "Tau_charge", "Tau_decayMode",
    "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass",
)

_WP = ("VVVLoose", "VVLoose", "VLoose", "Loose", "Medium", "Tight", "VTight", "VVTight")
# DeepTau 2017v2p1 (Run 2): working point -> bit of the uint8 mask.
_BITS = {"VSjet": {wp: 1 << i for i, wp in enumerate(_WP)}, "VSe": {wp: 1 << i for i, wp in enumerate(_WP)},
         "VSmu": {"VLoose": 1, "Loose": 2, "Medium": 4, "Tight": 8}}
# DeepTau 2018v2p5 (Run 3): working point -> smallest index that passes it.
_INDEX = {"VSjet": {wp: i + 1 for i, wp in enumerate(_WP)}, "VSe": {wp: i + 1 for i, wp in enumerate(_WP)},
          "VSmu": {"VLoose": 1, "Loose": 2, "Medium": 3, "Tight": 4}}
_JME_FRACTIONS = ("Jet_neHEF", "Jet_neEmEF", "Jet_chHEF", "Jet_chEmEF", "Jet_muEF",
                  "Jet_chMultiplicity", "Jet_neMultiplicity")
# Decay-mode finding: the first of these branches present is used.
_DECAY_MODE = ("Tau_idDecayModeNewDMs", "Tau_idDecayModeOldDMs", "Tau_idDecayMode")

# The built-in dialects, tried in this order (the first whose `requires` are all present
# and `lacks` all absent). Keys: see `InputProfile`.
BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    "run3v15": {"requires": ["Tau_idDeepTau2018v2p5VSjet"], "lacks": ["Jet_jetId"],
                "tau_id": "index", "tau_id_branches": {k: f"Tau_idDeepTau2018v2p5{k}" for k in _INDEX},
                "tau_isolation": ["Tau_chargedIso", "Tau_neutralIso"], "jet_id": "jme_run3",
                "jet_puid": "none", "btag": "Jet_btagDeepFlavB", "met": "PFMET"},
    "run3": {"requires": ["Tau_idDeepTau2018v2p5VSjet"],
             "tau_id": "index", "tau_id_branches": {k: f"Tau_idDeepTau2018v2p5{k}" for k in _INDEX},
             "tau_isolation": ["Tau_chargedIso", "Tau_neutralIso"], "jet_id": "jme_run3",
             # PUPPI jets carry no pile-up ID: PUPPI already removes pile-up particles.
             "jet_puid": "none", "btag": "Jet_btagDeepFlavB", "met": "MET"},
    "run2": {"requires": ["Tau_idDeepTau2017v2p1VSjet"],
             "tau_id": "bits", "tau_id_branches": {k: f"Tau_idDeepTau2017v2p1{k}" for k in _BITS},
             "tau_isolation": ["Tau_chargedIso", "Tau_neutralIso"], "jet_id": "bits",
             "jet_puid": "bits", "btag": "Jet_btagDeepFlavB", "met": "MET"},
    "outreach2012": {"requires": ["Tau_idIsoMedium"], "decay_mode": ["Tau_idDecayMode"],
                     "tau_id": "branch_per_wp",
                     "tau_id_branches": {"VSjet": "Tau_idIso", "VSe": "Tau_idAntiEle", "VSmu": "Tau_idAntiMu"},
                     "tau_id_wps": {"VSjet": ["VLoose", "Loose", "Medium", "Tight"],
                                    "VSe": ["Loose", "Medium", "Tight"], "VSmu": ["Loose", "Medium", "Tight"]},
                     "tau_isolation": "Tau_relIso_all", "jet_id": "none", "jet_puid": "bool",
                     "btag": "Jet_btag", "met": "MET"},
}
PROFILES = tuple(BUILTIN_PROFILES)


class ProfileError(ValueError):
    """A file's branches match no input profile; ``missing`` lists what the closest one lacks."""

    def __init__(self, message: str, missing: tuple[str, ...]):
        super().__init__(message, missing)
        self.message = message
        self.missing = missing

    def __str__(self) -> str:
        return self.message


class InputProfile(BaseModel):
    """One NanoAOD dialect (a row of the profile table), validated.

    Attributes
    ----------
    requires, lacks : list of str
        Branches that must be present / absent in a file of this dialect.
    tau_id : ``index`` | ``bits`` | ``branch_per_wp``
        How ``tau_id_branches`` (``VSjet``, ``VSe``, ``VSmu``) encode working points: the
        number of working points passed, a bit per working point, or one bool branch per
        working point (the branch name is the prefix followed by the working point).
    tau_isolation : str or list of str
        A relative isolation branch, or absolute isolation sums divided by the tau pt.
    jet_id : ``jme_run3`` | ``bits`` | ``none``
        JME's Run 3 tight ID from fractions and multiplicities, the tight bit of
        ``Jet_jetId``, or none. ``jet_id_level``: ``tight`` or ``tightlepveto``.
    jet_puid : ``bits`` | ``bool`` | ``none``
        ``Jet_puId``'s loose bit (below 50 GeV, where it is defined), a bool, or none.
    btag : str
        The b-tag discriminant branch. ``met``: the missing momentum (``MET``, ``PFMET``,
        ``PuppiMET``: its ``_pt`` and ``_phi`` are read).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    requires: list[str]
    lacks: list[str] = []
    decay_mode: list[str] = list(_DECAY_MODE)
    tau_id: Literal["index", "bits", "branch_per_wp"]
    tau_id_branches: dict[Literal["VSjet", "VSe", "VSmu"], str]
    tau_id_wps: dict[Literal["VSjet", "VSe", "VSmu"], list[str]] = {}
    tau_isolation: str | list[str]
    jet_id: Literal["jme_run3", "bits", "none"]
    jet_id_level: Literal["tight", "tightlepveto"] = "tight"
    jet_puid: Literal["bits", "bool", "none"]
    btag: str
    met: str

    # -- the branches ---------------------------------------------------------------------------
    def decay_mode_branch(self, present: Iterable[str] | None = None) -> str:
        """The decay-mode finding branch: the first of ``decay_mode`` present (the first without a file).

        A profile `ProfileTable.detect` returns keeps only that one.
        """
        names = set(present) if present is not None else set()
        return next((b for b in self.decay_mode if b in names), self.decay_mode[0])

    def branches_for(self, present: Iterable[str] | None = None) -> tuple[str, ...]:
        """Every branch a skim reads from a file of this dialect (besides ``genWeight``)."""
        tau_ids = ([f"{prefix}{wp}" for kind, prefix in self.tau_id_branches.items()
                    for wp in self.tau_id_wps.get(kind, ())] if self.tau_id == "branch_per_wp"
                   else list(self.tau_id_branches.values()))
        iso = [self.tau_isolation] if isinstance(self.tau_isolation, str) else list(self.tau_isolation)
        jets = {"jme_run3": list(_JME_FRACTIONS), "bits": ["Jet_jetId"], "none": []}[self.jet_id]
        jets += [] if self.jet_puid == "none" else ["Jet_puId"]
        return tuple(dict.fromkeys([*COMMON_BRANCHES, f"{self.met}_pt", f"{self.met}_phi",
                                    self.decay_mode_branch(present), *iso, *tau_ids, *jets, self.btag]))

    @property
    def branches(self) -> tuple[str, ...]:
        return self.branches_for()

    # -- what the selection asks of them -------------------------------------------------------
    def tau_id_mask(self, taus: ak.Array, selection: Any) -> ak.Array:
        """Decay-mode finding, isolation, anti-e and anti-mu of `selection` (``var * bool``).

        `taus` (here and in the other ID functions) is ``var * {fields}`` awkward records or
        the flat numpy `processors.flat.ObjectColumns` of the processor: the operations are
        elementwise and the result has the same layout as the input.
        """
        mask = np.ones_like(taus.pt, dtype=bool)
        if selection.tau_require_decay_mode:
            mask = mask & (taus[_field(self.decay_mode[0])] != 0)
        mask = mask & self.tau_wp(taus, "VSjet", selection.tau_iso)
        if selection.tau_require_anti_lepton:
            mask = mask & self.tau_wp(taus, "VSe", selection.tau_anti_ele)
            mask = mask & self.tau_wp(taus, "VSmu", selection.tau_anti_mu)
        return mask

    def tau_wp(self, taus: ak.Array, kind: str, wp: str) -> ak.Array:
        """Taus passing working point ``wp`` of discriminant ``kind`` (``VSjet``, ``VSe``, ``VSmu``)."""
        branch = self.tau_id_branches[kind]
        if self.tau_id == "branch_per_wp":
            available = self.tau_id_wps.get(kind, [])
            if wp not in available:
                raise ConfigError(f"selection: tau {kind} working point {wp!r} has no branch in "
                                  f"input profile {self.name!r}; use one of {', '.join(available)}")
            return taus[_field(branch) + wp]
        table = (_BITS if self.tau_id == "bits" else _INDEX)[kind]
        if wp not in table:
            raise ConfigError(f"selection: tau {kind} working point {wp!r} does not exist for input "
                              f"profile {self.name!r}; use one of {', '.join(table)}")
        if self.tau_id == "bits":
            return (taus[_field(branch)] & table[wp]) != 0
        return taus[_field(branch)] >= table[wp]

    def tau_iso(self, taus: ak.Array) -> ak.Array:
        """Relative isolation (isolation pt sum / tau pt, lower = more isolated)."""
        if isinstance(self.tau_isolation, str):
            return taus[_field(self.tau_isolation)]
        total = taus[_field(self.tau_isolation[0])]
        for branch in self.tau_isolation[1:]:
            total = total + taus[_field(branch)]
        return total / taus.pt

    def jet_id_mask(self, jets: ak.Array, selection: Any) -> ak.Array:
        """Jet quality and pile-up ID of `selection` (``var * bool``)."""
        if self.jet_id == "jme_run3":
            mask = jme_run3_jet_id(jets, lepton_veto=self.jet_id_level == "tightlepveto")
        elif self.jet_id == "bits":
            # bit 1 (value 2): tight; bit 2 (value 4): tight with lepton veto
            mask = (jets.jetId & (4 if self.jet_id_level == "tightlepveto" else 2)) != 0
        else:
            mask = np.ones_like(jets.pt, dtype=bool)
        if selection.jet_require_puid and self.jet_puid == "bool":
            mask = mask & (jets.puId != 0)
        elif selection.jet_require_puid and self.jet_puid == "bits":
            # The loose bit (value 4); above 50 GeV the ID is not defined and every jet passes.
            mask = mask & (((jets.puId & 4) != 0) | (jets.pt >= 50.0))
        return mask

    def jet_btag(self, jets: ak.Array) -> ak.Array:
        """b-tag discriminant in [0, 1] (CSV in 2012, DeepJet in Run 2/3)."""
        return jets[_field(self.btag)]


def jme_run3_jet_id(jets: Any, *, lepton_veto: bool = False) -> Any:
    """JME's Run 3 tight (PUPPI) jet ID from energy fractions and multiplicities.

    The recipe for NanoAOD v15, where ``Jet_jetId`` is gone, and for v12-v14, whose
    ``Jet_jetId`` is wrong. By |eta|: up to 2.6, charged multiplicity > 0, charged hadron
    fraction > 0.01, more than one constituent, neutral EM fraction < 0.9 and neutral
    hadron fraction < 0.99; 2.6-2.7, neutral EM < 0.99 and neutral hadron < 0.9; 2.7-3.0,
    neutral hadron < 0.99; beyond 3.0, neutral EM < 0.4 and at least two neutral
    constituents. The lepton veto adds muon and charged EM fractions < 0.8 up to 2.7.
    """
    eta = abs(jets.eta)
    nhf, nemf, chf = jets.neHEF, jets.neEmEF, jets.chHEF
    chm, nhm = jets.chMultiplicity, jets.neMultiplicity
    central = (eta <= 2.6) & (chm > 0) & (chf > 0.01) & ((chm + nhm) > 1) & (nemf < 0.9) & (nhf < 0.99)
    edge = (eta > 2.6) & (eta <= 2.7) & (nemf < 0.99) & (nhf < 0.9)
    endcap = (eta > 2.7) & (eta <= 3.0) & (nhf < 0.99)
    forward = (eta > 3.0) & (nemf < 0.4) & (nhm >= 2)
    tight = central | edge | endcap | forward
    if lepton_veto:
        tight = tight & ((eta > 2.7) | ((jets.muEF < 0.8) & (jets.chEmEF < 0.8)))
    return tight


def _field(branch: str) -> str:
    return branch.split("_", 1)[1]


class ProfileTable:
    """The built-in profiles, extended or changed by the configuration's ``[skim.input_profiles]``.

    Parameters
    ----------
    extra : mapping of name to mapping, or None
        A new name adds a dialect (tried before the built-in ones); a built-in name changes
        the keys given. Validated: unknown keys and wrong values are `ConfigError`.
    """

    def __init__(self, extra: Mapping[str, Mapping[str, Any]] | None = None):
        extra = dict(extra or {})
        rows = {name: dict(extra[name]) for name in extra if name not in BUILTIN_PROFILES}
        for name, row in BUILTIN_PROFILES.items():
            rows[name] = deep_merge(row, dict(extra.get(name, {})), replace=("tau_id_branches", "tau_id_wps"))
        self.profiles: list[InputProfile] = []
        for name, row in rows.items():
            try:
                self.profiles.append(InputProfile.model_validate({**row, "name": name}))
            except ValidationError as err:
                raise ConfigError(f"skim.input_profiles.{name}.{format_validation_error(err)}") from None

    def detect(self, branches: Iterable[str]) -> InputProfile:
        """The input profile of a file from the names of its ``Events`` branches.

        Raises
        ------
        ProfileError
            No profile's identifying branches are present, or the matching profile lacks
            branches; the message lists the missing branches of the closest profile.
        """
        present = set(branches)
        for profile in self.profiles:
            if all(b in present for b in profile.requires) and not any(b in present for b in profile.lacks):
                missing = tuple(b for b in profile.branches_for(present) if b not in present)
                if missing:
                    raise ProfileError(f"missing branch{'es' if len(missing) > 1 else ''} "
                                       f"{', '.join(missing)} (input profile {profile.name!r})", missing)
                return profile.model_copy(update={"decay_mode": [profile.decay_mode_branch(present)]})
        names = ", ".join(p.name for p in self.profiles)
        closest = min(self.profiles, key=lambda p: sum(b not in present for b in p.branches_for(present)))
        missing = tuple(b for b in closest.branches_for(present) if b not in present)
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ProfileError(f"branches match no input profile ({names}); the closest, "
                           f"{closest.name!r}, lacks {shown}", missing)

    def readable_branches(self, triggers: Iterable[str] = ()) -> list[str]:
        """Every branch any profile may read, with counters, ``genWeight`` and `triggers` (globs).

        The runner passes this to NanoEvents as a branch filter, so the events of a chunk are
        built from these few branches instead of the file's hundreds (or 1,500 in real NanoAOD).
        """
        # PV_* and the missing momenta whole: NanoAODSchema's vertex and MET behaviours
        # require their other fields (PV_x, ...) to exist, though the skim never reads them.
        names = {"nTau", "nJet", "genWeight", "PV_*", *_DECAY_MODE, *triggers}
        for profile in self.profiles:
            names.update(profile.branches)
            names.update(profile.decay_mode)
            names.add(f"{profile.met}_*")
        return sorted(names)


_BUILTIN = ProfileTable()


def detect_profile(branches: Iterable[str], table: ProfileTable | None = None) -> InputProfile:
    """The input profile of a file's branches, from the built-in table or `table` (`ProfileTable.detect`)."""
    return (table or _BUILTIN).detect(branches)


def readable_branches(triggers: Iterable[str] = (), table: ProfileTable | None = None) -> list[str]:
    """`ProfileTable.readable_branches` of the built-in table or `table`."""
    return (table or _BUILTIN).readable_branches(triggers)


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
