"""Skim stage: the coffea processor, from one chunk of NanoEvents to one skim Parquet part.

`DiTauProcessor` is stateless: the selection, luminosity and output folder are fixed in
``__init__``; every call of `process` builds a fresh output. It detects the input profile
from the branches of the chunk, reads exactly the branches that profile needs, applies the
PHYSICS.md selection on flat numpy columns (`processors.flat`, the core that the public
functions of `processors.selection` wrap), computes the features and weights, and writes
the part atomically. Input errors (unreadable baskets, missing branches) are returned in
the output, not raised, so that every executor reports them the same way and the runner
decides whether to stop or skip the file.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
from coffea import processor

from analysis.config import SelectionConfig
from analysis.core.names import dataset_folder
from analysis.core.net import is_remote, is_transient, redact
from processors.features import ditau_features
from processors.flat import (FlatObjects, ObjectColumns, clean_jet_mask, first_separated_pair, leading_two,
                             object_event, pt_order)
from processors.parts import chunk_fingerprint, part_name, read_part_summary, skim_table, write_part
from processors.profiles import InputProfile, ProfileError, detect_profile, event_branches
from processors.selection import good_tau_mask

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


class DiTauProcessor(processor.ProcessorABC):
    """Select two taus and two jets, build features and weights, write one part per chunk.

    Parameters
    ----------
    selection : SelectionConfig
        Cuts of ``config.selection``.
    lumi_pb : float
        Integrated luminosity for the MC weights.
    out_dir : str
        The skim folder; parts go to ``<out_dir>/<dataset>/``.

    The chunk's dataset metadata (``events.metadata``) must hold ``process``, ``label``,
    ``is_mc``, ``xsec_pb`` and ``sumw``, as `analysis.skim.runner.run_skim` resolves them.

    The output is ``{"chunks": {relpath: summary}}`` for a written (or already present)
    part and ``{"errors": {filename: [cause]}}`` for a chunk whose input could not be read
    (a list, so that coffea's accumulation of several bad chunks of a file concatenates).
    """

    def __init__(self, *, selection: SelectionConfig, lumi_pb: float, out_dir: str,
                 chunk_tree: Callable[[ak.Array], Any] | None = None):
        self.selection = selection
        self.lumi_pb = lumi_pb
        self.out_dir = str(out_dir)
        # Given by the skim (`analysis.skim.coffea_compat.chunk_tree`): the chunk's open TTree,
        # read in one call, where the runner can find it; None reads through NanoEvents.
        self.chunk_tree = chunk_tree

    def process(self, events: ak.Array) -> dict[str, Any]:
        meta = dict(events.metadata)
        dataset = meta["dataset"]
        relpath = f"{dataset_folder(dataset)}/{part_name(meta['fileuuid'], meta['entrystart'], meta['entrystop'])}"
        path = Path(self.out_dir) / relpath
        fingerprint = chunk_fingerprint(self.selection.model_dump(), self.lumi_pb, meta)
        done = read_part_summary(path) if path.exists() else None
        if done is not None and done.get("fingerprint") == fingerprint:
            return {"chunks": {relpath: done}}  # a retried or resumed chunk: touch no branch

        triggers = triggers_applied(self.selection, is_mc=bool(meta["is_mc"]))
        try:
            profile = detect_profile(event_branches(events))
            tree = self.chunk_tree(events) if self.chunk_tree is not None else None
            inputs = _read_inputs(events, profile, triggers, tree)
        except ProfileError as err:
            return {"errors": {meta["filename"]: [str(err)]}}
        except Exception as err:  # noqa: BLE001 - any failure to read is the file's fault
            if is_remote(meta["filename"]) and is_transient(err):
                raise  # the network's fault, not the file's: RetryingRunner tries the chunk again
            # One line: uproot's messages span several (a dump of the basket it failed on).
            return {"errors": {meta["filename"]: [f"cannot read entries {meta['entrystart']}-"
                                                  f"{meta['entrystop']} of Events ({type(err).__name__}: "
                                                  f"{' '.join(str(err).split())})"]}}

        columns, cutflow = self._select(inputs, profile, meta, triggers)
        table = skim_table(columns, dataset=dataset, process=str(meta["process"]))
        summary = {"dataset": dataset, "file": redact(meta["filename"]), "fileuuid": meta["fileuuid"],
                   "start": int(meta["entrystart"]), "stop": int(meta["entrystop"]),
                   "rows": table.num_rows, "profile": profile.name, "fingerprint": fingerprint,
                   "sumw": meta["sumw"], "cutflow": cutflow}
        write_part(table, path, summary)
        return {"chunks": {relpath: summary}}

    def _select(self, inputs: dict[str, Any], profile: InputProfile, meta: dict[str, Any],
                triggers: list[str]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
        sel = self.selection
        genweight = inputs["genWeight"]
        weight = dataset_weight(genweight, is_mc=bool(meta["is_mc"]), xsec_pb=meta.get("xsec_pb"),
                                lumi_pb=self.lumi_pb, sumw=meta.get("sumw"))
        n_events = len(weight)
        cutflow: dict[str, dict[str, float]] = {}
        # `keep` indexes the events still selected; each step narrows it, so the expensive
        # steps (tau pairs, jet cleaning) only see the events that survived the cheap ones.
        keep = np.arange(n_events)

        def step(name: str, survives: np.ndarray) -> None:
            nonlocal keep
            keep = keep[survives]
            # fsum: the same chunk gives the same bits on every executor and re-run. Over a
            # list of floats: the same exact sum, without a numpy scalar per element.
            cutflow[name] = {"events": len(keep), "sum_weight": math.fsum(weight[keep].tolist())}

        step("all", np.ones(len(keep), dtype=bool))
        if triggers:
            step("trigger", np.logical_or.reduce([inputs["hlt"][t] for t in triggers]))

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

        # The good taus of the surviving events, by event then decreasing pt.
        candidates = np.flatnonzero(good & (n_good >= 2)[tau_event])
        ordered = candidates[pt_order(tau_event[candidates], taus.pt[candidates])]
        n_good = n_good[keep]
        first, second = first_separated_pair(n_good, taus.eta[ordered], taus.phi[ordered],
                                             dr_min=sel.tau_pair_dr_min)
        has_pair = first >= 0
        step("tau_pair", has_pair)
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
        tau1, tau2, n_good, n_jets = tau1[enough], tau2[enough], n_good[enough], n_jets[enough]
        # Good jets of the selected events, renumbered to the final rows, by row then pt.
        good_jet &= enough[jet_row]
        final_row = (np.cumsum(enough) - 1)[jet_row[good_jet]]
        order = np.flatnonzero(good_jet)[pt_order(final_row, cand.pt[good_jet])]

        rows = keep
        columns = {
            "run": inputs["run"][rows], "luminosityBlock": inputs["luminosityBlock"][rows],
            "event": inputs["event"][rows], "label": np.full(len(rows), meta["label"]),
            "genWeight": genweight[rows], "weight": weight[rows],
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
        return columns, cutflow


_TAU_OUT = ("pt", "eta", "phi", "mass", "charge", "decayMode", "iso")
_JET_OUT = ("pt", "eta", "phi", "mass", "btag")


def _read_inputs(events: ak.Array, profile: InputProfile, triggers: list[str], tree: Any) -> dict[str, Any]:
    """Read (materialise) every branch the selection needs, and nothing else.

    Event quantities come out as numpy arrays, the taus and jets as `FlatObjects`. When the
    chunk's TTree is at hand (``tree``), all of them are read with one ``TTree.arrays`` call,
    as plain uproot does: the lazy per-branch reads through NanoEvents cost twice as much
    for the same bytes. Otherwise (None) the NanoEvents fields are read.
    """
    fields = set(events.fields)
    for path in triggers:
        name = path.removeprefix("HLT_")
        if "HLT" not in fields or name not in events.HLT.fields:
            raise ProfileError(f"missing trigger branch {path} (selection.triggers)", (path,))
    objects = {name: sorted({b.split("_", 1)[1] for b in profile.branches if b.startswith(f"{name}_")})
               for name in ("Tau", "Jet")}
    has_genweight = "genWeight" in fields
    if tree is not None:
        meta = events.metadata
        names = [*_EVENT_BRANCHES, *triggers, *(["genWeight"] if has_genweight else []),
                 *(f"{c}_{f}" for c, fs in objects.items() for f in fs)]
        arrays = tree.arrays(names, entry_start=meta["entrystart"], entry_stop=meta["entrystop"],
                             how=dict)

        def column(branch: str) -> np.ndarray:
            return ak.to_numpy(arrays[branch])

        def collection(name: str) -> FlatObjects:
            return FlatObjects.from_jagged({f: arrays[f"{name}_{f}"] for f in objects[name]},
                                           objects[name])
    else:
        def column(branch: str) -> np.ndarray:
            head, _, tail = branch.partition("_")
            values = events[head][tail] if tail and head in ("PV", "MET", "HLT") else events[branch]
            return ak.to_numpy(ak.materialize(values))

        def collection(name: str) -> FlatObjects:
            return FlatObjects.from_jagged(events[name], objects[name])

    return {
        "run": column("run"), "luminosityBlock": column("luminosityBlock"), "event": column("event"),
        "npv": column("PV_npvs"), "met_pt": column("MET_pt"), "met_phi": column("MET_phi"),
        "genWeight": (column("genWeight") if has_genweight
                      else np.ones(len(events), dtype=np.float32)),
        "hlt": {path: column(path) for path in triggers},
        "taus": collection("Tau"),
        "jets": collection("Jet"),
    }


# Event-level branches every profile reads.
_EVENT_BRANCHES = ("run", "luminosityBlock", "event", "PV_npvs", "MET_pt", "MET_phi")
