"""Skim stage (processors): the mu-tau_h analysis, one muon and one hadronic tau (CMS 2012 outreach, skim.cxx).

`MuTauProcessor` is the second analysis on the `processors.base.SkimProcessor` contract:
the trigger ``HLT_IsoMu17_eta2p1_LooseIsoPFTau20`` (data and simulation), at least one
muon and one tau, good muons and taus, the muon-tau pair of skim.cxx's ``build_pair``,
jets not cleaned against the leptons, and the features of `processors.mutau_selection`.
The tau and jet IDs come from the input profile (`processors.profiles`), so the same
options select the 2012 outreach files, the generated samples and Run 2/3 NanoAOD. Cuts
are `MuTauOptions`, the configuration's ``[skim.options]``.

As the di-tau processor, ``select`` runs on flat numpy columns (`processors.flat`): written
as jagged awkward calls, the selection's fixed cost per call made the skim three times
slower than reading its branches.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from analysis.config import SelectionConfig, TauWorkingPoint
from analysis.core.features import MUTAU_COLUMNS, MUTAU_DEFAULT_FEATURES
from processors.base import Cutflow, InputFailure, SkimProcessor
from processors.flat import FlatObjects, best_cross_pair, leading_two, object_event, objects_of_events
from processors.mutau_selection import good_jet_mask, good_muon_mask, good_tau_mask, mutau_features
from processors.profiles import InputProfile, ProfileError, event_branches
from processors.truth import TRUTH_COLUMNS, TRUTH_INPUT_BRANCHES, truth_branches, truth_columns

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
    version = "2"  # 2: the truth columns gen_m_tautau, gen_pt_h
    dask_mode = "chunks"  # numpy on the chunk's arrays: each chunk's events, in --executor dask-awkward
    Options = MuTauOptions
    columns = {f.name: f.dtype for f in (*MUTAU_COLUMNS, *TRUTH_COLUMNS)}  # noqa: RUF012 - read-only, as in every processor
    default_features = MUTAU_DEFAULT_FEATURES

    @property
    def triggers(self) -> list[str]:
        return [self.options.trigger] if self.options.require_trigger else []

    def muon_branches(self) -> list[str]:
        fields = (*_MUON_FIELDS, "tightId") if self.options.muon_require_tight_id else _MUON_FIELDS
        return [f"Muon_{f}" for f in fields]

    def input_branches(self) -> list[str]:
        """Every branch an input profile may read, the muons and the trigger (globs for NanoEvents)."""
        return sorted({*self.profiles.readable_branches(self.triggers), *self.muon_branches(), "nMuon",
                       *TRUTH_INPUT_BRANCHES})

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
        truth = truth_branches(present, is_mc=bool(events.metadata["is_mc"]))
        return self._select(self._read_inputs(events, profile, truth), profile, cutflow)

    def _read_inputs(self, events: ak.Array, profile: InputProfile, truth: list[str]) -> dict[str, Any]:
        """Every branch the selection reads, in one read: event quantities as numpy arrays,
        the muons, taus and jets as `FlatObjects` (flat columns and counts per event)."""
        fields = {"Muon": [b.split("_", 1)[1] for b in self.muon_branches()],
                  **{c: sorted({b.split("_", 1)[1] for b in profile.branches if b.startswith(f"{c}_")})
                     for c in ("Tau", "Jet")}}
        met = (f"{profile.met}_pt", f"{profile.met}_phi")  # MET, PFMET or PuppiMET by NanoAOD version
        arrays = self.read_branches(events, ["PV_npvs", *met, *self.triggers,
                                             *(f"{c}_{f}" for c, fs in fields.items() for f in fs), *truth])
        inputs: dict[str, Any] = {
            name: FlatObjects.from_jagged({f: arrays[f"{c}_{f}"] for f in fields[c]}, fields[c])
            for name, c in (("muons", "Muon"), ("taus", "Tau"), ("jets", "Jet"))}
        inputs.update(npv=ak.to_numpy(arrays["PV_npvs"]), met_pt=ak.to_numpy(arrays[met[0]]),
                      met_phi=ak.to_numpy(arrays[met[1]]), hlt={t: ak.to_numpy(arrays[t]) for t in self.triggers},
                      truth={b: arrays[b] for b in truth})
        return inputs

    def _select(self, inputs: dict[str, Any], profile: InputProfile, cutflow: Cutflow) -> dict[str, np.ndarray]:
        o = self.options
        ids = o.profile_selection()
        muons, taus, jets = inputs["muons"], inputs["taus"], inputs["jets"]
        n_events = len(inputs["met_pt"])
        # `cutflow.selected` holds the events still selected; each step narrows it. The object
        # masks are elementwise, on every object of the chunk: cheaper than selecting first.
        step = cutflow.step

        def any_good(objects: FlatObjects, good: np.ndarray) -> np.ndarray:
            n_good = np.bincount(object_event(objects.counts)[good], minlength=n_events)
            return n_good[cutflow.selected] > 0

        if self.triggers:
            step("trigger", inputs["hlt"][o.trigger][cutflow.selected].astype(bool))
        step("muon", muons.counts[cutflow.selected] > 0)
        step("tau", taus.counts[cutflow.selected] > 0)
        good_muon = good_muon_mask(muons.columns, pt_min=o.muon_pt_min, abs_eta_max=o.muon_abs_eta_max,
                                   require_tight_id=o.muon_require_tight_id)
        step("good_muon", any_good(muons, good_muon))
        good_tau = good_tau_mask(taus.columns, pt_min=o.tau_pt_min, abs_eta_max=o.tau_abs_eta_max,
                                 id_mask=profile.tau_id_mask(taus.columns, ids))
        step("good_tau", any_good(taus, good_tau))

        # The pair among the objects of the events still selected only.
        keep = cutflow.selected
        mu_at, tau_at = objects_of_events(muons.counts, keep), objects_of_events(taus.counts, keep)
        mu, tau = muons.columns.take(mu_at), taus.columns.take(tau_at)
        n_mu, n_tau = muons.counts[keep], taus.counts[keep]
        i_mu, i_tau = best_cross_pair(n_mu, n_tau, good_muon[mu_at], good_tau[tau_at], mu.eta, mu.phi, tau.eta,
                                      tau.phi, mu.pt, profile.tau_iso(tau), dr_min=o.pair_dr_min)
        passed = i_mu >= 0
        step("mutau_pair", passed)
        keep = cutflow.selected
        # From positions in the event to flat positions in `mu` and `tau`.
        i_mu = (np.cumsum(n_mu) - n_mu)[passed] + i_mu[passed]
        i_tau = (np.cumsum(n_tau) - n_tau)[passed] + i_tau[passed]
        muon = {f: mu[f][i_mu] for f in ("pt", "eta", "phi", "mass", "charge")}
        muon["iso"] = mu.pfRelIso03_all[i_mu]
        chosen_tau = tau.take(i_tau)
        tau_out = {f: chosen_tau[f] for f in ("pt", "eta", "phi", "mass", "charge", "decayMode")}
        tau_out["iso"] = np.asarray(profile.tau_iso(chosen_tau))

        # Jets (not cleaned against the leptons) of the selected events, in collection order.
        jet = jets.columns.take(objects_of_events(jets.counts, keep))
        good_jet = good_jet_mask(jet, pt_min=o.jet_pt_min, abs_eta_max=o.jet_abs_eta_max,
                                 id_mask=profile.jet_id_mask(jet, ids) if o.jet_require_id else None)
        n_jets = np.bincount(object_event(jets.counts[keep])[good_jet], minlength=len(keep))
        jet1, jet2 = leading_two(n_jets, {f: jet[f][good_jet] for f in ("pt", "eta", "phi", "mass")})
        met_pt, met_phi = inputs["met_pt"][keep], inputs["met_phi"][keep]
        columns: dict[str, Any] = {f"mu_{k}": v for k, v in muon.items()}
        columns.update({f"tau_{k}": v for k, v in tau_out.items()})
        for prefix, values in (("jet1", jet1), ("jet2", jet2)):
            columns.update({f"{prefix}_{f}": v for f, v in values.items()})
        columns.update(met_pt=met_pt, met_phi=met_phi, npv=inputs["npv"][keep], njets=n_jets)
        columns.update(mutau_features(muon, tau_out, jet1, jet2, met_pt, met_phi))
        columns.update(truth_columns(inputs["truth"], keep))
        return columns
