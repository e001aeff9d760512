"""Skim stage (processors): jet-level datasets — one row per jet, with its constituents and secondary vertices (PFNano).

`JetProcessor` writes a row for every AK4 ``Jet`` (constituents from ``JetPFCands`` ->
``PFCands``) or every AK8 ``FatJet`` (``FatJetPFCands``) passing the options' pt and eta
cuts, identified by (dataset, run, luminosityBlock, event, ``jet_index``): the jet's
features (``jet_*``), its truth (``jet_label``, flavours, `processors.jet_truth`), the
energy-scale target ``jes_target``, and its constituents (``cand_*``) and secondary
vertices (``sv_*``) as variable-length lists (`processors.constituents`). Constituents are
ordered by decreasing pt, vertices by decreasing dxy significance; no list is padded
(padding to N with a mask is the loader's job). Images are made from the lists when
wanted (`analysis.core.jet_images`).

It uses the row-per-object contract of `processors.base` (``ROW_EVENT``): an event is
selected when it has a jet passing the cuts (cutflow step ``jet``); a row's weight is its
event's. A jet without constituents is a row with empty lists, counted in the manifest
(``jets_without_constituents``); an index of a link table outside its collection is the
file's error (one line). Like the other processors it runs on flat numpy columns
(`processors.flat`): jagged awkward calls per chunk would cost more than the reading.
"""

from __future__ import annotations

from typing import Any, Literal

import awkward as ak
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from analysis.core.features import JET_COLUMNS, JET_DEFAULT_FEATURES
from processors.base import Cutflow, InputFailure, SkimProcessor
from processors.constituents import LinkError, constituent_features, global_index, link_rows, row_of_objects
from processors.flat import FlatObjects, object_event
from processors.jet_truth import NO_FLAVOUR, NO_LABEL, flavour_label, resonance_labels, response_target
from processors.parts import ROW_EVENT
from processors.physics import delta_phi
from processors.profiles import event_branches

__all__ = ["JET_CUTS", "JetOptions", "JetProcessor"]

JET_CUTS = ("all", "jet")  # cutflow steps: an event is kept when a jet passes the cuts
# Per collection: its constituent and vertex link tables, its generator jets and the index into them.
_LAYOUT = {"Jet": {"cands": "JetPFCands", "svs": "JetSVs", "gen": "GenJet", "gen_index": "genJetIdx"},
           "FatJet": {"cands": "FatJetPFCands", "svs": "FatJetSVs", "gen": "GenJetAK8", "gen_index": "genJetAK8Idx"}}
_JET_FIELDS = ("pt", "eta", "phi", "mass", "area")
_FATJET_FIELDS = ("msoftdrop", "tau1", "tau2", "tau3", "subJetIdx1", "subJetIdx2")
_CAND_FIELDS = ("pt", "eta", "phi", "mass", "charge", "pdgId", "d0", "d0Err", "dz", "dzErr", "puppiWeight")
# sv_<name> <- <svs>_<PFNano field>: PFNano's JetSVs carry every vertex of the jet (SV_* only some)
_SV_FIELDS = {"pt": "pt", "mass": "mass", "ntracks": "ntracks", "normchi2": "normchi2", "dxy": "dxy",
              "dxysig": "dxysig", "d3d": "d3d", "d3dsig": "d3dsig", "costhetasvpv": "costhetasvpv",
              "dphi": "phirel", "ptrel": "ptrel", "erel": "enration"}
_GENPART_FIELDS = ("pdgId", "genPartIdxMother", "eta", "phi")
_FOUR_VECTORS = {"GenJet", "GenJetAK8", "GenPart", "SubJet"}  # collections NanoEvents builds as four-vectors


class JetOptions(BaseModel):
    """``[skim.options]`` of the jet-level processor."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    collection: Literal["Jet", "FatJet"] = "Jet"  # AK4 jets (JetPFCands) or AK8 jets (FatJetPFCands)
    pt_min: float = Field(20.0, ge=0)  # GeV, on the jet pt as stored (energy-corrected)
    abs_eta_max: float = Field(2.5, ge=0)  # the tracker: the constituents' tracks have d0 and dz
    # Scale the constituents' four-momenta by their PUPPI weight; None: for FatJet (PUPPI jets in
    # Run 2 PFNano) yes, for Jet (CHS jets in Run 2) no. Run 3 AK4 jets are PUPPI jets: set true.
    puppi_weighted: bool | None = None
    secondary_vertices: bool = True  # read <collection>SVs (false: files without them, empty sv_ lists)
    truth_dr_max: float = Field(0.8, gt=0)  # AK8 labels: every quark of the decay within this Delta R

    @property
    def weighted(self) -> bool:
        return self.collection == "FatJet" if self.puppi_weighted is None else self.puppi_weighted


class JetProcessor(SkimProcessor):
    """One row per jet of PFNano, with its constituents and secondary vertices as lists (module docstring)."""

    name = "JetProcessor"
    version = "1"
    dask_mode = "chunks"  # numpy on the chunk's arrays (and several rows per event)
    Options = JetOptions
    columns = {f.name: f.dtype for f in JET_COLUMNS}  # noqa: RUF012 - read-only, as in every processor
    default_features = JET_DEFAULT_FEATURES

    def needed(self, *, is_mc: bool) -> dict[str, list[str]]:
        """The branches read, by what they are for: jets, constituents, vertices, truth (MC only)."""
        o, layout = self.options, _LAYOUT[self.options.collection]
        jet = o.collection
        fields = (*_JET_FIELDS, *(_FATJET_FIELDS if jet == "FatJet" else ()))
        groups = {"jets": [f"{jet}_{f}" for f in fields]
                  + (["SubJet_pt", "SubJet_eta", "SubJet_phi"] if jet == "FatJet" else []),
                  "constituents": [*(f"PFCands_{f}" for f in _CAND_FIELDS),
                                   f"{layout['cands']}_jetIdx", f"{layout['cands']}_pFCandsIdx"],
                  "vertices": ([f"{layout['svs']}_{f}" for f in (*_SV_FIELDS.values(), "jetIdx")]
                               if o.secondary_vertices else []),
                  "truth": []}
        if is_mc:
            groups["truth"] = [f"{jet}_hadronFlavour", f"{jet}_{layout['gen_index']}", f"{layout['gen']}_pt",
                               *([f"{jet}_partonFlavour"] if jet == "Jet" else
                                 [f"GenPart_{f}" for f in _GENPART_FIELDS])]
        return groups

    def input_branches(self) -> list[str]:
        """Every branch it may read (MC truth included), with the collections' counters.

        NanoEvents builds the generator jets, GenParts and subjets as four-vectors, and fails
        on one without its four coordinates: those are listed whole.
        """
        names = [b for group in self.needed(is_mc=True).values() for b in group]
        heads = {b.split("_", 1)[0] for b in names}
        names += [f"{h}_{f}" for h in heads & _FOUR_VECTORS for f in ("pt", "eta", "phi", "mass")]
        counters = {f"n{h}" for h in heads}
        return sorted({*names, *counters, "run", "luminosityBlock", "event", "genWeight"})

    def check_branches(self, branches: set[str], *, is_mc: bool) -> None:
        """A one-line `ValueError` naming the branches a file lacks (before any chunk runs)."""
        message = _missing_message(self.needed(is_mc=is_mc), branches, self.options.collection)
        if message:
            raise ValueError(message)

    def select(self, events: ak.Array, cutflow: Cutflow) -> dict[str, Any]:
        meta = events.metadata
        is_mc = bool(meta["is_mc"])
        needed = self.needed(is_mc=is_mc)
        message = _missing_message(needed, event_branches(events), self.options.collection)
        if message:
            raise InputFailure(message)
        arrays = self.read_branches(events, [b for group in needed.values() for b in group])
        try:
            # (coffea's dask mode gives a chunk's events the dataset's metadata only: no entry range)
            first = int(meta["entrystart"]) if "entrystart" in meta else None
            return self._rows(arrays, cutflow, is_mc=is_mc, first_entry=first)
        except LinkError as err:
            raise InputFailure(str(err)) from None

    def _rows(self, arrays: dict[str, Any], cutflow: Cutflow, *, is_mc: bool, first_entry: int | None) -> dict[str, Any]:
        o, layout = self.options, _LAYOUT[self.options.collection]
        name = o.collection

        def collection(prefix: str, fields: Any) -> FlatObjects:
            return FlatObjects.from_jagged({f: arrays[f"{prefix}_{f}"] for f in fields}, list(fields))

        needed = self.needed(is_mc=is_mc)
        jets = collection(name, [b.split("_", 1)[1] for b in (*needed["jets"], *needed["truth"])
                                 if b.startswith(f"{name}_")])
        n_events = len(jets.counts)
        jet_event = object_event(jets.counts)
        j = jets.columns
        good = (j.pt > o.pt_min) & (np.abs(j.eta) < o.abs_eta_max)
        n_good = np.bincount(jet_event[good], minlength=n_events)
        cutflow.step("jet", n_good[cutflow.selected] >= 1)
        row_of_event = np.full(n_events, -1)
        row_of_event[cutflow.selected] = np.arange(len(cutflow.selected))
        selected = np.flatnonzero(good & (row_of_event[jet_event] >= 0))
        n_rows, sel_event = len(selected), jet_event[selected]
        jet_start = np.cumsum(jets.counts) - jets.counts
        row_of_jet = row_of_objects(len(jet_event), selected)
        pt, eta, phi, mass = (j[f][selected].astype(np.float64) for f in ("pt", "eta", "phi", "mass"))
        energy = np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)
        out: dict[str, Any] = {ROW_EVENT: row_of_event[sel_event], "jet_index": selected - jet_start[sel_event],
                               "jet_pt": pt, "jet_eta": eta, "jet_phi": phi, "jet_mass": mass,
                               "jet_area": j.area[selected]}
        out.update(_substructure(arrays, jets, selected, eta, phi, fat=name == "FatJet", first_entry=first_entry))

        # constituents: the link table checked, grouped by row, by decreasing (weighted) pt
        cands = collection("PFCands", _CAND_FIELDS)
        links = collection(layout["cands"], ("jetIdx", "pFCandsIdx"))
        jet_of_link = global_index(links.counts, links.columns.jetIdx, jets.counts, branch=f"{layout['cands']}_jetIdx",
                                   target=f"{name}s", first_entry=first_entry)
        cand_of_link = global_index(links.counts, links.columns.pFCandsIdx, cands.counts,
                                    branch=f"{layout['cands']}_pFCandsIdx", target="PFCands", first_entry=first_entry)
        c = cands.columns
        weight = c.puppiWeight.astype(np.float64) if o.weighted else 1.0
        entries, offsets = link_rows(jet_of_link, row_of_jet, n_rows, (c.pt * weight)[cand_of_link])
        at, row = cand_of_link[entries], np.repeat(np.arange(n_rows), np.diff(offsets))
        features = constituent_features(
            pt=c.pt, eta=c.eta, phi=c.phi, mass=c.mass, charge=c.charge, pdg_id=c.pdgId, d0=c.d0, d0_err=c.d0Err,
            dz=c.dz, dz_err=c.dzErr, puppi_weight=c.puppiWeight, jet_pt=pt, jet_eta=eta, jet_phi=phi,
            jet_energy=energy, weighted=o.weighted, candidate=at, jet=row)
        out["jet_ncand"] = np.diff(offsets)
        cutflow.count("jets_without_constituents", int(np.sum(out["jet_ncand"] == 0)))
        out.update({k: _lists(offsets, v) for k, v in features.items()})

        # secondary vertices: PFNano's per-jet vertex table, by decreasing dxy significance
        if o.secondary_vertices:
            svs = collection(layout["svs"], (*_SV_FIELDS.values(), "jetIdx"))
            jet_of_sv = global_index(svs.counts, svs.columns.jetIdx, jets.counts, branch=f"{layout['svs']}_jetIdx",
                                     target=f"{name}s", first_entry=first_entry)
            sv_entries, sv_offsets = link_rows(jet_of_sv, row_of_jet, n_rows, svs.columns.dxysig)
            sv = {k: svs.columns[f][sv_entries] for k, f in _SV_FIELDS.items()}
        else:
            sv_offsets, sv = np.zeros(n_rows + 1, dtype=np.int64), {k: np.zeros(0) for k in _SV_FIELDS}
        out["jet_nsv"] = np.diff(sv_offsets)
        out.update({f"sv_{k}": _lists(sv_offsets, v) for k, v in sv.items()})
        out.update(self._truth(arrays, jets, selected, sel_event, pt, eta, phi, is_mc=is_mc, first_entry=first_entry))
        return out

    def _truth(self, arrays: dict[str, Any], jets: FlatObjects, selected: np.ndarray, sel_event: np.ndarray,
               pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, *, is_mc: bool, first_entry: int | None) -> dict[str, Any]:
        """``jet_label``, the flavours and ``jes_target`` of the selected jets (data: -1, `NO_FLAVOUR`, NaN)."""
        n = len(selected)
        if not is_mc:
            return {"jet_label": np.full(n, NO_LABEL, dtype=np.int8),
                    "jet_hadron_flavour": np.full(n, NO_FLAVOUR), "jet_parton_flavour": np.full(n, NO_FLAVOUR),
                    "jes_target": np.full(n, np.nan)}
        name, layout = self.options.collection, _LAYOUT[self.options.collection]
        j = jets.columns
        gen = FlatObjects.from_jagged({"pt": arrays[f"{layout['gen']}_pt"]}, ["pt"])
        gen_index = _optional_index(jets.counts, j[layout["gen_index"]], gen.counts,
                                    branch=f"{name}_{layout['gen_index']}", target=f"{layout['gen']}s",
                                    first_entry=first_entry)[selected]
        hadron = j.hadronFlavour[selected]
        if name == "Jet":
            label, parton = flavour_label(hadron), j.partonFlavour[selected]
        else:
            part = FlatObjects.from_jagged({f: arrays[f"GenPart_{f}"] for f in _GENPART_FIELDS}, list(_GENPART_FIELDS))
            g = part.columns
            label = resonance_labels(part.counts, g.pdgId, g.genPartIdxMother, g.eta, g.phi, sel_event, eta, phi,
                                     dr_max=self.options.truth_dr_max, first_entry=first_entry)
            parton = np.full(n, NO_FLAVOUR)
        return {"jet_label": label, "jet_hadron_flavour": hadron, "jet_parton_flavour": parton,
                "jes_target": response_target(pt, gen_index, gen.columns.pt)}


def _substructure(arrays: dict[str, Any], jets: FlatObjects, selected: np.ndarray, eta: np.ndarray,
                  phi: np.ndarray, *, fat: bool, first_entry: int | None) -> dict[str, np.ndarray]:
    """Soft-drop mass, tau21, tau32 and the leading subjet's direction (AK8; NaN for AK4 jets)."""
    n = len(selected)
    if not fat:
        return {k: np.full(n, np.nan) for k in ("jet_msoftdrop", "jet_tau21", "jet_tau32", "jet_sj1_deta",
                                                "jet_sj1_dphi")}
    j = jets.columns
    tau1, tau2, tau3 = (j[f"tau{k}"][selected].astype(np.float64) for k in (1, 2, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        tau21, tau32 = np.where(tau1 > 0, tau2 / tau1, np.nan), np.where(tau2 > 0, tau3 / tau2, np.nan)
    sub = FlatObjects.from_jagged({f: arrays[f"SubJet_{f}"] for f in ("pt", "eta", "phi")}, ["pt", "eta", "phi"])
    first, second = (_optional_index(jets.counts, j[f"subJetIdx{k}"], sub.counts, branch=f"FatJet_subJetIdx{k}",
                                     target="SubJets", first_entry=first_entry)[selected] for k in (1, 2))
    sub_pt = np.append(sub.columns.pt.astype(np.float64), -np.inf)  # index -1: no subjet
    lead = np.where(sub_pt[second] > sub_pt[first], second, first)
    has = lead >= 0
    deta, dphi = np.full(n, np.nan), np.full(n, np.nan)
    deta[has] = sub.columns.eta[lead[has]] - eta[has]
    dphi[has] = delta_phi(sub.columns.phi[lead[has]], phi[has])
    return {"jet_msoftdrop": j.msoftdrop[selected], "jet_tau21": tau21, "jet_tau32": tau32,
            "jet_sj1_deta": deta, "jet_sj1_dphi": dphi}


def _optional_index(counts: np.ndarray, local: np.ndarray, target_counts: np.ndarray, **message: Any) -> np.ndarray:
    """`global_index` of a per-object index where -1 means none (kept as -1)."""
    local = np.asarray(local, dtype=np.int64)
    has = local != -1
    out = np.full(len(local), -1, dtype=np.int64)
    out[has] = global_index(counts, np.where(has, local, 0), target_counts, **message)[has]
    return out


def _lists(offsets: np.ndarray, values: np.ndarray) -> ak.Array:
    """One float32 list per row from offsets and flat values (no copy of the layout beyond the cast)."""
    return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(np.asarray(offsets, dtype=np.int64)),
                                                ak.contents.NumpyArray(np.asarray(values, dtype=np.float32))))


def _missing_message(needed: dict[str, list[str]], branches: set[str], collection: str) -> str | None:
    """One line naming the branches a file lacks, or None."""
    for group, names in needed.items():
        missing = [b for b in names if b not in branches]
        if not missing:
            continue
        listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        if group == "constituents":
            return (f"missing constituent branches {listed}: JetProcessor reads PFNano's PFCands and "
                    f"{_LAYOUT[collection]['cands']} (is this a PFNano file?)")
        if group == "vertices":
            return (f"missing secondary-vertex branches {listed} (skim.options.secondary_vertices = false "
                    "skims without them)")
        return f"missing branch{'es' if len(missing) > 1 else ''} {listed} (read by processor JetProcessor)"
    return None
