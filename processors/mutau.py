"""Skim stage (processors): the mu-tau_h analysis, one muon and one hadronic tau (CMS 2012 outreach, skim.cxx).

`MuTauProcessor` is the second analysis on the `processors.base.SkimProcessor` contract:
the trigger ``HLT_IsoMu17_eta2p1_LooseIsoPFTau20`` (data and simulation), at least one
muon and one tau, good muons and taus, the muon-tau pair of skim.cxx's ``build_pair``,
jets not cleaned against the leptons, and the features of `processors.mutau_selection`.
The tau and jet IDs come from the input profile (`processors.profiles`), so the same
options select the 2012 outreach files, the generated samples and Run 2/3 NanoAOD. Cuts
are `MuTauOptions`, the configuration's ``[skim.options]``.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from analysis.config import SelectionConfig, TauWorkingPoint
from analysis.core.features import MUTAU_COLUMNS, MUTAU_DEFAULT_FEATURES
from processors.base import Cutflow, InputFailure, SkimProcessor
from processors.mutau_selection import (first_two_jets, good_jet_mask, good_muon_mask, good_tau_mask,
                                        mutau_features, select_mutau_pair)
from processors.profiles import ProfileError, event_branches

__all__ = ["MUTAU_CUTS", "MuTauOptions", "MuTauProcessor"]

# Names of the cutflow steps, in order ("trigger" only when it is required).
MUTAU_CUTS = ("all", "trigger", "muon", "tau", "good_muon", "good_tau", "mutau_pair")
# The mu + tau_h cross trigger of 2012 (muon pt > 17 GeV, |eta| < 2.1; loose isolated tau > 20 GeV).
MUTAU_TRIGGER = "HLT_IsoMu17_eta2p1_LooseIsoPFTau20"
# Muon fields read (plus tightId when the tight ID is required).
_MUON_FIELDS = ("pt", "eta", "phi", "mass", "charge", "pfRelIso03_all")


class MuTauOptions(BaseModel):
    """The cuts of skim.cxx (its values are the defaults); ``[skim.options]`` of the configuration."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    require_trigger: bool = True  # off for files without the trigger branch (most Run 2/3 NanoAOD)
    trigger: str = MUTAU_TRIGGER  # HLT path required of every event, data and simulation
    muon_pt_min: float = Field(17.0, ge=0)  # GeV
    muon_abs_eta_max: float = Field(2.1, ge=0)
    muon_require_tight_id: bool = True
    tau_pt_min: float = Field(20.0, ge=0)  # GeV
    tau_abs_eta_max: float = Field(2.3, ge=0)
    tau_iso: TauWorkingPoint = "Tight"  # isolation (outreach) / DeepTau vs-jet working point
    tau_anti_ele: TauWorkingPoint = "Tight"
    tau_anti_mu: TauWorkingPoint = "Tight"
    pair_dr_min: float = Field(0.5, ge=0)  # minimal Delta R between the muon and the tau
    jet_pt_min: float = Field(30.0, ge=0)  # GeV
    jet_abs_eta_max: float = Field(4.7, ge=0)
    jet_require_id: bool = True  # pile-up ID (outreach) / jet and pile-up IDs (Run 2) / jet ID (Run 3)

    @model_validator(mode="after")
    def _check(self) -> MuTauOptions:
        if self.require_trigger and not self.trigger.startswith("HLT_"):
            raise ValueError(f"trigger: an HLT branch name (HLT_...), got {self.trigger!r}")
        return self

    def profile_selection(self) -> SelectionConfig:
        """The tau and jet ID choices in the form the input profiles read."""
        return SelectionConfig(tau_iso=self.tau_iso, tau_anti_ele=self.tau_anti_ele, tau_anti_mu=self.tau_anti_mu,
                               tau_require_decay_mode=True, tau_require_anti_lepton=True,
                               jet_require_puid=self.jet_require_id)


class MuTauProcessor(SkimProcessor):
    """Select a muon and a hadronic tau (skim.cxx), write their kinematics, two jets and the features."""

    name = "MuTauProcessor"
    version = "1"
    dask_mode = "chunks"  # numpy on the chunk's arrays: each chunk's events, in --executor dask-awkward
    Options = MuTauOptions
    columns = {f.name: f.dtype for f in MUTAU_COLUMNS}  # noqa: RUF012 - read-only, as in every processor
    default_features = MUTAU_DEFAULT_FEATURES

    @property
    def triggers(self) -> list[str]:
        return [self.options.trigger] if self.options.require_trigger else []

    def muon_branches(self) -> list[str]:
        fields = (*_MUON_FIELDS, "tightId") if self.options.muon_require_tight_id else _MUON_FIELDS
        return [f"Muon_{f}" for f in fields]

    def input_branches(self) -> list[str]:
        """Every branch an input profile may read, the muons and the trigger (globs for NanoEvents)."""
        return sorted({*self.profiles.readable_branches(self.triggers), *self.muon_branches(), "nMuon"})

    def check_branches(self, branches: set[str], *, is_mc: bool) -> str:
        """The input profile of a file with these branches, or a one-line `ValueError` naming what lacks."""
        profile = self.profiles.detect(branches)
        missing = [b for b in self.muon_branches() if b not in branches]
        if missing:
            raise ProfileError(f"missing branch{'es' if len(missing) > 1 else ''} {', '.join(missing)} "
                               f"(read by processor {self.name})", tuple(missing))
        for trigger in self.triggers:
            if trigger not in branches:
                raise ProfileError(f"missing trigger branch {trigger} (skim.options.trigger; "
                                   "skim.options.require_trigger = false skims without it)", (trigger,))
        return profile.name

    def select(self, events: ak.Array, cutflow: Cutflow) -> dict[str, np.ndarray]:
        present = event_branches(events)
        try:
            profile = self.profiles.detect(present)
        except ProfileError as err:
            raise InputFailure(str(err)) from None
        # check_branches has refused such a file already; a chunk read some other way is the file's fault too.
        missing = [b for b in (*self.muon_branches(), *self.triggers) if b not in present]
        if missing:
            raise InputFailure(f"missing branch {', '.join(missing)} (read by processor {self.name})")
        cutflow.notes["profile"] = profile.name
        o = self.options
        ids = o.profile_selection()
        fields = {c: sorted({b.split("_", 1)[1] for b in profile.branches if b.startswith(f"{c}_")})
                  for c in ("Tau", "Jet")}
        met = (f"{profile.met}_pt", f"{profile.met}_phi")  # MET, PFMET or PuppiMET by NanoAOD version
        names = ["PV_npvs", *met, *self.triggers, *self.muon_branches(),
                 *(f"{c}_{f}" for c, fs in fields.items() for f in fs)]
        arrays = self.read_branches(events, names)

        def collection(prefix: str, names: list[str]) -> ak.Array:
            return ak.zip({f: arrays[f"{prefix}_{f}"] for f in names})

        muons = collection("Muon", [b.split("_", 1)[1] for b in self.muon_branches()])
        taus, jets = collection("Tau", fields["Tau"]), collection("Jet", fields["Jet"])
        event = {b: ak.to_numpy(arrays[b]) for b in ("PV_npvs", *met, *self.triggers)}

        # Each step narrows all the arrays to the events still selected.
        def step(name: str, passed: np.ndarray) -> None:
            nonlocal muons, taus, jets, event
            cutflow.step(name, passed)
            muons, taus, jets = muons[passed], taus[passed], jets[passed]
            event = {k: v[passed] for k, v in event.items()}

        if self.triggers:
            step("trigger", event[o.trigger].astype(bool))
        step("muon", ak.to_numpy(ak.num(muons, axis=1)) > 0)
        step("tau", ak.to_numpy(ak.num(taus, axis=1)) > 0)
        good_muon = good_muon_mask(muons, pt_min=o.muon_pt_min, abs_eta_max=o.muon_abs_eta_max,
                                   require_tight_id=o.muon_require_tight_id)
        passed = ak.to_numpy(ak.any(good_muon, axis=1))
        good_muon = good_muon[passed]
        step("good_muon", passed)
        good_tau = good_tau_mask(taus, pt_min=o.tau_pt_min, abs_eta_max=o.tau_abs_eta_max,
                                 id_mask=profile.tau_id_mask(taus, ids))
        passed = ak.to_numpy(ak.any(good_tau, axis=1))
        good_muon, good_tau = good_muon[passed], good_tau[passed]
        step("good_tau", passed)
        tau_iso = profile.tau_iso(taus)
        i_mu, i_tau = select_mutau_pair(muons, taus, good_muon, good_tau, tau_iso, dr_min=o.pair_dr_min)
        passed = i_mu >= 0
        i_mu, i_tau, tau_iso = i_mu[passed], i_tau[passed], tau_iso[passed]
        step("mutau_pair", passed)

        rows = np.arange(len(i_mu))
        muon = {f: ak.to_numpy(muons[f][rows, i_mu]) for f in ("pt", "eta", "phi", "mass", "charge")}
        muon["iso"] = ak.to_numpy(muons.pfRelIso03_all[rows, i_mu])
        tau = {f: ak.to_numpy(taus[f][rows, i_tau]) for f in ("pt", "eta", "phi", "mass", "charge", "decayMode")}
        tau["iso"] = ak.to_numpy(tau_iso[rows, i_tau])
        good_jet = good_jet_mask(jets, pt_min=o.jet_pt_min, abs_eta_max=o.jet_abs_eta_max,
                                 id_mask=profile.jet_id_mask(jets, ids) if o.jet_require_id else None)
        jet1, jet2 = first_two_jets(jets[["pt", "eta", "phi", "mass"]], good_jet)
        columns: dict[str, Any] = {f"mu_{k}": v for k, v in muon.items()}
        columns.update({f"tau_{k}": v for k, v in tau.items()})
        for prefix, jet in (("jet1", jet1), ("jet2", jet2)):
            columns.update({f"{prefix}_{f}": ak.to_numpy(ak.fill_none(jet[f], np.nan)).astype(np.float64)
                            for f in ("pt", "eta", "phi", "mass")})
        columns.update(met_pt=event[met[0]], met_phi=event[met[1]], npv=event["PV_npvs"],
                       njets=ak.to_numpy(ak.sum(good_jet, axis=1)))
        columns.update(mutau_features(muon, tau, jet1, jet2, event[met[0]], event[met[1]]))
        return columns

