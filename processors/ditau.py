"""Skim stage (processors): the di-tau analysis, two hadronic taus and two jets (PHYSICS.md), hepprep's default.

`DiTauProcessor` is a `processors.base.SkimProcessor`: its options are the configuration's
``[selection]``; ``select`` detects the input profile from the branches of the chunk,
reads exactly the branches that profile needs (in one read of the chunk's TTree), applies
the PHYSICS.md selection on flat numpy columns (`processors.flat`, the core that the
public functions of `processors.selection` wrap) and computes the features; for simulation
it also writes the generator truth (`processors.truth`: ``gen_m_tautau``, ``gen_pt_h``,
NaN for data). The part, its identity and weight columns, the cutflow's bookkeeping and
bad input are the base's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import awkward as ak
import numpy as np

from analysis.config import SelectionConfig
from analysis.core.features import DEFAULT_FEATURES, DITAU_COLUMNS
from analysis.errors import ConfigError
from processors.base import Cutflow, InputFailure, SkimProcessor
from processors.features import ditau_features
from processors.flat import (FlatObjects, ObjectColumns, clean_jet_mask, first_separated_pair, leading_two,
                             object_event, pt_order)
from processors.profiles import InputProfile, ProfileError, event_branches
from processors.selection import good_tau_mask
from processors.truth import TRUTH_INPUT_BRANCHES, truth_branches, truth_columns

__all__ = ["CUTS", "DiTauProcessor", "dataset_weight", "triggers_applied"]

# NanoAODSchema warns about every cross-reference a real file lacks (LowPtElectron -> ...)
# each time a chunk is opened. The skim reads none of them. Installed at import, so that
# executor workers, which import this module to unpickle the processor before they build
# the chunk's events, are quiet too.
warnings.filterwarnings("ignore", "Missing cross-reference index", RuntimeWarning, "coffea")
warnings.filterwarnings("ignore", "Branch .* already exists but its values will be replaced",
                        RuntimeWarning, "coffea")

# Names of the cutflow steps, in order ("trigger" only when triggers are applied).
CUTS = ("all", "trigger", "two_good_taus", "tau_pair", "good_jets")


def dataset_weight(genweight: np.ndarray, *, is_mc: bool, xsec_pb: float | None, lumi_pb: float,
                   sumw: float | None) -> np.ndarray:
    """Per-event expected yield: xsec_pb * lumi_pb * genWeight / sumw for MC, 1 for data.

    Parameters
    ----------
    genweight : float array, one per event (1 where the input has no ``genWeight``)
    sumw : float
        Sum of ``genWeight`` over every event of the dataset before any selection.
    """
    if not is_mc:
        return np.ones(len(genweight), dtype=np.float64)
    return float(xsec_pb) * float(lumi_pb) * np.asarray(genweight, dtype=np.float64) / float(sumw)


def triggers_applied(selection: SelectionConfig, *, is_mc: bool) -> list[str]:
    """HLT paths required for this dataset (empty: no trigger cut)."""
    if not selection.triggers or (is_mc and not selection.triggers_on_mc):
        return []
    return list(selection.triggers)


class DiTauProcessor(SkimProcessor):
    """Select two taus and two jets, build the di-tau features (the skim's default processor).

    Options are `analysis.config.SelectionConfig`, the configuration's ``[selection]``
    (`options_from`). The chunk's dataset metadata (``events.metadata``) must hold
    ``process``, ``label``, ``is_mc``, ``xsec_pb`` and ``sumw``, as
    `analysis.skim.runner.run_skim` resolves them.
    """

    name = "DiTauProcessor"
    version = "2"  # 2: the truth columns gen_m_tautau, gen_pt_h
    Options = SelectionConfig
    columns = {f.name: f.dtype for f in DITAU_COLUMNS}
    default_features = DEFAULT_FEATURES
    dask_mode = "chunks"  # numpy code on flat columns: each chunk's events, in --executor dask-awkward

    def __init__(self, options: Any = None, *, selection: SelectionConfig | None = None, **kwargs: Any):
        super().__init__(selection if selection is not None else options, **kwargs)

    @classmethod
    def options_from(cls, config: Any) -> Any:
        """The cuts: ``[selection]`` (``[skim.options]`` must stay empty for this processor)."""
        if config.skim.options:
            raise ConfigError("skim.options: the di-tau processor takes its cuts from [selection]; "
                              "move them there")
        return config.selection

    @property
    def selection(self) -> SelectionConfig:
        return self.options

    def input_branches(self) -> list[str]:
        """The branches any input profile may read (glob patterns) and the truth's, for NanoEvents' filter."""
        return sorted({*self.profiles.readable_branches(self.selection.triggers), *TRUTH_INPUT_BRANCHES})

    def check_branches(self, branches: set[str], *, is_mc: bool) -> str:
        """The input profile of a file with these branches, or a `ProfileError` naming what lacks."""
        profile = self.profiles.detect(branches)
        missing = [t for t in triggers_applied(self.selection, is_mc=is_mc) if t not in branches]
        if missing:
            raise ProfileError(f"missing trigger branch {', '.join(missing)} (selection.triggers)", tuple(missing))
        return profile.name

    def select(self, events: ak.Array, cutflow: Cutflow) -> dict[str, np.ndarray]:
        meta = events.metadata
        triggers = triggers_applied(self.selection, is_mc=bool(meta["is_mc"]))
        present = event_branches(events)
        try:
            profile = self.profiles.detect(present)
            inputs = _read_inputs(events, profile, triggers, self.read_branches,
                                  truth=truth_branches(present, is_mc=bool(meta["is_mc"])))
        except ProfileError as err:
            raise InputFailure(str(err)) from None
        cutflow.notes["profile"] = profile.name
        return self._select(inputs, profile, cutflow, triggers)

    def _select(self, inputs: dict[str, Any], profile: InputProfile, cutflow: Cutflow,
                triggers: list[str]) -> dict[str, np.ndarray]:
        sel = self.selection
        n_events = len(inputs["met_pt"])
        # `cutflow.selected` indexes the events still selected; each step narrows it, so the
        # expensive steps (tau pairs, jet cleaning) only see the events that survived the cheap ones.
        step = cutflow.step
        if triggers:
            step("trigger", np.logical_or.reduce([inputs["hlt"][t] for t in triggers]))
        keep = cutflow.selected

        # Object masks on the flat columns of every tau (processors.flat): elementwise, so the
        # same as on the jagged taus, without awkward's per-call cost.
        taus: ObjectColumns = inputs["taus"].columns
        tau_event = object_event(inputs["taus"].counts)
        alive = np.zeros(n_events, dtype=bool)
        alive[keep] = True
        good = alive[tau_event] & good_tau_mask(taus, pt_min=sel.tau_pt_min,
                                                abs_eta_max=sel.tau_abs_eta_max,
                                                id_mask=profile.tau_id_mask(taus, sel))
        n_good = np.bincount(tau_event[good], minlength=n_events)
        step("two_good_taus", n_good[keep] >= 2)
        keep = cutflow.selected

        # The good taus of the surviving events, by event then decreasing pt.
        candidates = np.flatnonzero(good & (n_good >= 2)[tau_event])
        ordered = candidates[pt_order(tau_event[candidates], taus.pt[candidates])]
        n_good = n_good[keep]
        first, second = first_separated_pair(n_good, taus.eta[ordered], taus.phi[ordered],
                                             dr_min=sel.tau_pair_dr_min)
        has_pair = first >= 0
        step("tau_pair", has_pair)
        keep = cutflow.selected
        starts = (np.cumsum(n_good) - n_good)[has_pair]
        tau1, tau2 = ordered[starts + first[has_pair]], ordered[starts + second[has_pair]]
        n_good = n_good[has_pair]

        # Jets of the events with a tau pair, each with its event's row in `keep`.
        jets: FlatObjects = inputs["jets"]
        row_of_event = np.full(n_events, -1)
        row_of_event[keep] = np.arange(len(keep))
        jet_row = row_of_event[object_event(jets.counts)]
        candidates = np.flatnonzero(jet_row >= 0)
        jet_row = jet_row[candidates]
        cand = jets.columns.take(candidates)
        cand["btag"] = profile.jet_btag(cand)
        tau_eta = [taus.eta[t].astype(np.float64)[jet_row] for t in (tau1, tau2)]
        tau_phi = [taus.phi[t].astype(np.float64)[jet_row] for t in (tau1, tau2)]
        good_jet = clean_jet_mask(cand.pt, cand.eta, cand.phi, tau_eta, tau_phi,
                                  pt_min=sel.jet_pt_min, abs_eta_max=sel.jet_abs_eta_max,
                                  dr_min=sel.jet_tau_dr_min, id_mask=profile.jet_id_mask(cand, sel))
        n_jets = np.bincount(jet_row[good_jet], minlength=len(keep))
        enough = n_jets >= sel.min_jets
        step("good_jets", enough)
        keep = cutflow.selected
        tau1, tau2, n_good, n_jets = tau1[enough], tau2[enough], n_good[enough], n_jets[enough]
        # Good jets of the selected events, renumbered to the final rows, by row then pt.
        good_jet &= enough[jet_row]
        final_row = (np.cumsum(enough) - 1)[jet_row[good_jet]]
        order = np.flatnonzero(good_jet)[pt_order(final_row, cand.pt[good_jet])]

        rows = keep
        columns = {
            "met_pt": inputs["met_pt"][rows], "met_phi": inputs["met_phi"][rows],
            "npv": inputs["npv"][rows], "njets": n_jets, "ntaus": n_good,
        }
        flat = {}
        for prefix, index in (("tau1", tau1), ("tau2", tau2)):
            flat[prefix] = {f: taus[f][index].astype(np.float64) for f in _TAU_OUT if f != "iso"}
            flat[prefix]["iso"] = np.asarray(profile.tau_iso(taus.take(index)), dtype=np.float64)
        flat["jet1"], flat["jet2"] = leading_two(n_jets, {f: cand[f][order] for f in _JET_OUT})
        for prefix, values in flat.items():
            columns.update({f"{prefix}_{field}": v for field, v in values.items()})
        # Features on flat numpy arrays: no per-operation awkward overhead on small chunks.
        columns.update(ditau_features(flat["tau1"], flat["tau2"], flat["jet1"], flat["jet2"],
                                      inputs["met_pt"][rows], inputs["met_phi"][rows]))
        columns.update(truth_columns(inputs.get("truth", {}), rows))  # none given: NaN
        return columns


_TAU_OUT = ("pt", "eta", "phi", "mass", "charge", "decayMode", "iso")
_JET_OUT = ("pt", "eta", "phi", "mass", "btag")


def _read_inputs(events: ak.Array, profile: InputProfile, triggers: list[str],
                 read: Callable[[ak.Array, list[str]], dict[str, Any]], *, truth: list[str]) -> dict[str, Any]:
    """Read (materialise) every branch the selection needs, and nothing else.

    Event quantities come out as numpy arrays, the taus and jets as `FlatObjects`, the
    ``truth`` branches (GenPart; none for data) as they were read; ``read``
    is the base's `SkimProcessor.read_branches`, which reads them all in one
    ``TTree.arrays`` call where the chunk's TTree is at hand (the lazy per-branch reads
    through NanoEvents cost twice as much for the same bytes).
    """
    fields = set(events.fields)
    for path in triggers:
        name = path.removeprefix("HLT_")
        if "HLT" not in fields or name not in events.HLT.fields:
            raise ProfileError(f"missing trigger branch {path} (selection.triggers)", (path,))
    objects = {name: sorted({b.split("_", 1)[1] for b in profile.branches if b.startswith(f"{name}_")})
               for name in ("Tau", "Jet")}
    met = (f"{profile.met}_pt", f"{profile.met}_phi")
    arrays = read(events, ["PV_npvs", *met, *triggers, *(f"{c}_{f}" for c, fs in objects.items() for f in fs),
                           *truth])

    def column(branch: str) -> np.ndarray:
        return ak.to_numpy(arrays[branch])

    def collection(name: str) -> FlatObjects:
        return FlatObjects.from_jagged({f: arrays[f"{name}_{f}"] for f in objects[name]}, objects[name])

    return {
        "npv": column("PV_npvs"), "met_pt": column(met[0]), "met_phi": column(met[1]),
        "hlt": {path: column(path) for path in triggers},
        "taus": collection("Tau"),
        "jets": collection("Jet"),
        "truth": {b: arrays[b] for b in truth},
    }

