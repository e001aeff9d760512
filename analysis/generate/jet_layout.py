"""Sample generator (generate stage): the PFNano layout of the jet samples and its ROOT writer.

The ``Events`` tree of a generated jet file has the branches (names and dtypes) of real
Run 2 PFNano (``../shared/fixtures/pfnano.root``) that a jet analysis reads: ``Jet`` (AK4),
``FatJet`` (AK8) with ``SubJet``, ``PFCands``, the link tables ``JetPFCands`` /
``FatJetPFCands`` (``jetIdx``, ``pFCandsIdx``), ``JetSVs`` / ``FatJetSVs`` (``jetIdx``,
``sVIdx``) and ``SV``, ``GenJet``, ``GenJetAK8`` and ``GenPart`` (with ``genPartIdxMother``
and ``statusFlags``), each a counter ``nX`` and ``X_field`` branches; the ``Runs`` tree
has ``genEventCount``, ``genEventSumw`` and ``genEventSumw2``. Within an event jets, generator
jets and candidates are ordered by decreasing pt, as NanoAOD does; every index is one within
the event, -1 for none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import awkward as ak
import numpy as np
import uproot

from analysis.core.io import atomic_path
from analysis.core.settings import parse_compression
from analysis.generate.kinematics import pt_eta_phi_mass

__all__ = ["COLLECTIONS", "SCALARS", "JetFileWriter", "jet_branches"]

F32, I32, U8 = np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.uint8)
SCALARS = {"run": np.dtype(np.uint32), "luminosityBlock": np.dtype(np.uint32), "event": np.dtype(np.uint64),
           "genWeight": F32}
_P4 = {"pt": F32, "eta": F32, "phi": F32, "mass": F32}
_SV_JET = {f: F32 for f in ("mass", "pt", "ntracks", "chi2", "normchi2", "dxy", "dxysig", "d3d", "d3dsig",
                            "costhetasvpv", "phirel", "ptrel", "deltaR", "enration")}
COLLECTIONS: dict[str, dict[str, np.dtype]] = {
    "Jet": {**_P4, "area": F32, "rawFactor": F32, "jetId": I32, "nConstituents": I32, "genJetIdx": I32,
            "hadronFlavour": I32, "partonFlavour": I32},
    "FatJet": {**_P4, "area": F32, "msoftdrop": F32, "rawFactor": F32, "tau1": F32, "tau2": F32, "tau3": F32,
               "jetId": I32, "subJetIdx1": I32, "subJetIdx2": I32, "genJetAK8Idx": I32, "hadronFlavour": I32,
               "nBHadrons": U8, "nCHadrons": U8},
    "SubJet": {**_P4, "rawFactor": F32},
    "GenJet": {**_P4, "partonFlavour": I32, "hadronFlavour": U8},
    "GenJetAK8": {**_P4, "partonFlavour": I32, "hadronFlavour": U8},
    "PFCands": {"d0": F32, "d0Err": F32, "dz": F32, "dzErr": F32, "eta": F32, "mass": F32, "phi": F32, "pt": F32,
                "puppiWeight": F32, "charge": I32, "pdgId": I32},
    "JetPFCands": {"pt": F32, "pFCandsIdx": I32, "jetIdx": I32},
    "FatJetPFCands": {"pt": F32, "pFCandsIdx": I32, "jetIdx": I32},
    "JetSVs": {**_SV_JET, "jetIdx": I32, "sVIdx": I32},
    "FatJetSVs": {**_SV_JET, "jetIdx": I32, "sVIdx": I32},
    "SV": {"dlen": F32, "dlenSig": F32, "dxy": F32, "dxySig": F32, "pAngle": F32, "chi2": F32, "eta": F32,
           "mass": F32, "ndof": F32, "phi": F32, "pt": F32, "ntracks": U8},
    "GenPart": {**_P4, "genPartIdxMother": I32, "pdgId": I32, "status": I32, "statusFlags": I32},
}
_JET_ID = 6  # tight and tight-lepton-veto, as most jets of a real file


def _arrange(event: np.ndarray, n_events: int, descending: np.ndarray | None = None,
             within: np.ndarray | None = None):
    """Rows ordered by event, then ``within`` (a small non-negative int), then decreasing ``descending`` (a
    positive float, compared as the float32 it is written as); offsets; each row's index within its event.

    One integer key instead of a lexsort: the bits of a positive float32 grow with its value.
    """
    key = np.asarray(event, np.int64) << 40
    if within is not None:
        key |= np.asarray(within, np.int64) << 32
    if descending is not None:
        key |= 0xFFFFFFFF - np.asarray(descending, np.float32).view(np.uint32).astype(np.int64)
    order = np.argsort(key, kind="stable")
    counts = np.bincount(event, minlength=n_events)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    local = np.empty(len(event), np.int64)
    local[order] = np.arange(len(order)) - offsets[event[order]]
    return order, offsets, local


def _collection(fields: dict[str, np.dtype], columns: dict[str, np.ndarray], order, offsets) -> ak.Array:
    contents = [ak.contents.NumpyArray(np.ascontiguousarray(np.asarray(columns[f])[order], dtype=dt))
                for f, dt in fields.items()]
    record = ak.contents.RecordArray(contents, list(fields), length=len(order))
    return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), record))


def jet_branches(built: dict, records: dict, n_events: int, first_event: int) -> dict:
    """The ``Events`` branches of a block: the output of `analysis.generate.jet_build.build_jets` and the
    generator records (`analysis.generate.jet_physics.GenRecords.table`), events numbered from ``first_event``."""
    jets, cands, sub, svs = built["jets"], built["cands"], built["sub"], built["svs"]
    out: dict = {"run": np.ones(n_events, np.uint32),
                 "luminosityBlock": (1 + (first_event + np.arange(n_events)) // 1000).astype(np.uint32),
                 "event": (first_event + 1 + np.arange(n_events)).astype(np.uint64),
                 "genWeight": np.ones(n_events, np.float32)}
    fat, ev = jets["fat"], jets["obj_event"]
    local = np.full(len(fat), -1)
    gen_local = np.full(len(fat), -1)
    for name, gen_name, is_fat in (("Jet", "GenJet", False), ("FatJet", "GenJetAK8", True)):
        rows = np.flatnonzero(fat == is_fat)
        order, offsets, loc = _arrange(ev[rows], n_events, jets["pt"][rows])
        local[rows] = loc
        g_order, g_offsets, g_loc = _arrange(ev[rows], n_events, jets["gen_pt"][rows])
        gen_local[rows] = g_loc
        cols = {k: jets[k][rows] for k in ("pt", "eta", "phi", "mass", "area", "rawFactor", "hadronFlavour",
                                           "nBHadrons", "nCHadrons")}
        cols.update(jetId=np.full(len(rows), _JET_ID), nConstituents=jets["n_cand"][rows],
                    partonFlavour=jets["partonFlavour"][rows])
        cols["genJetAK8Idx" if is_fat else "genJetIdx"] = g_loc
        gen = {k: jets[f"gen_{k}"][rows] for k in ("pt", "eta", "phi", "mass")}
        gen.update(partonFlavour=jets["partonFlavour"][rows], hadronFlavour=jets["hadronFlavour"][rows])
        if is_fat:
            _fat_columns(cols, sub, rows, ev, loc, n_events, out)
        out[name] = _collection(COLLECTIONS[name], cols, order, offsets)
        out[gen_name] = _collection(COLLECTIONS[gen_name], gen, g_order, g_offsets)
    c_event = ev[cands["obj"]]
    c_order, c_offsets, c_local = _arrange(c_event, n_events, cands["pt"])
    pf = {"d0Err": cands["d0_err"], "dzErr": cands["dz_err"], "puppiWeight": cands["puppi"], "pdgId": cands["pdg"],
          **{k: cands[k] for k in ("d0", "dz", "eta", "mass", "phi", "pt", "charge")}}
    out["PFCands"] = _collection(COLLECTIONS["PFCands"], pf, c_order, c_offsets)
    s_event = ev[svs["obj"]]
    s_order, s_offsets, s_local = _arrange(s_event, n_events, svs["dxysig"])
    sv = {"dlen": svs["d3d"], "dlenSig": svs["d3dsig"], "dxySig": svs["dxysig"],
          "pAngle": np.arccos(np.clip(svs["costhetasvpv"], -1, 1)),
          **{k: svs[k] for k in ("dxy", "chi2", "eta", "mass", "ndof", "phi", "pt", "ntracks")}}
    out["SV"] = _collection(COLLECTIONS["SV"], sv, s_order, s_offsets)
    for name, is_fat in (("JetPFCands", False), ("FatJetPFCands", True)):
        rows = np.flatnonzero(fat[cands["obj"]] == is_fat)
        jet_idx = local[cands["obj"][rows]]
        order, offsets, _ = _arrange(c_event[rows], n_events, cands["pt"][rows], jet_idx)
        out[name] = _collection(COLLECTIONS[name], {"pt": cands["pt"][rows], "pFCandsIdx": c_local[rows],
                                                    "jetIdx": jet_idx}, order, offsets)
    for name, is_fat in (("JetSVs", False), ("FatJetSVs", True)):
        rows = np.flatnonzero(fat[svs["obj"]] == is_fat)
        jet_idx = local[svs["obj"][rows]]
        order, offsets, _ = _arrange(s_event[rows], n_events, svs["dxysig"][rows], jet_idx)
        cols = {k: svs[k][rows] for k in _SV_JET}
        cols.update(jetIdx=jet_idx, sVIdx=s_local[rows])
        out[name] = _collection(COLLECTIONS[name], cols, order, offsets)
    g_order, g_offsets, g_local = _arrange(records["event"], n_events)
    mother = records["mother"]
    gen = {k: records[k] for k in ("pt", "eta", "phi", "mass", "pdgId", "status", "statusFlags")}
    gen["genPartIdxMother"] = np.where(mother >= 0, g_local[np.maximum(mother, 0)], -1)
    out["GenPart"] = _collection(COLLECTIONS["GenPart"], gen, g_order, g_offsets)
    return out


def _fat_columns(cols: dict, sub: dict, rows: np.ndarray, ev: np.ndarray, jet_local: np.ndarray, n_events: int,
                 out: dict) -> None:
    """Substructure columns of the AK8 jets (``rows``: their objects; ``jet_local``: their index in the event)
    and the ``SubJet`` collection (by jet, the harder subjet first)."""
    assert np.array_equal(sub["rows"], rows)  # both in object order
    corr = sub["correction"]
    cols.update(msoftdrop=sub["msoftdrop"] * corr, tau1=sub["tau1"], tau2=sub["tau2"], tau3=sub["tau3"])
    two = sub["two_prong"]
    owner = np.concatenate([np.arange(len(rows)), np.flatnonzero(two)])
    rank = np.concatenate([np.zeros(len(rows), np.int64), np.ones(int(two.sum()), np.int64)])
    p4 = np.concatenate([sub["sub1"], sub["sub2"][two]])
    pt, eta, phi, mass = pt_eta_phi_mass(p4)
    scale = corr[owner]
    order, offsets, loc = _arrange(ev[rows][owner], n_events, within=2 * jet_local[owner] + rank)
    idx = np.full((len(rows), 2), -1)
    idx[owner, rank] = loc
    cols.update(subJetIdx1=idx[:, 0], subJetIdx2=idx[:, 1])
    out["SubJet"] = _collection(COLLECTIONS["SubJet"], {"pt": pt * scale, "eta": eta, "phi": phi,
                                                        "mass": mass * scale, "rawFactor": 1 - 1 / scale},
                                order, offsets)


def _compression(spec: str):
    alg, level = parse_compression(spec)
    return {"ZLIB": uproot.ZLIB, "LZ4": uproot.LZ4, "ZSTD": uproot.ZSTD, "LZMA": uproot.LZMA}[alg](level)


class JetFileWriter:
    """A PFNano file written block by block, atomically: it appears at ``path`` complete, with its ``Runs`` tree."""

    def __init__(self, path: str | Path, *, compression: str) -> None:
        self.path, self._compression = Path(path), _compression(compression)
        self._tree = None
        self._events = 0

    def __enter__(self) -> Self:
        self._atomic = atomic_path(self.path)
        self._file = uproot.recreate(self._atomic.__enter__(), compression=self._compression)
        return self

    def extend(self, branches: dict) -> None:
        if self._tree is None:
            types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in branches.items()}
            self._tree = self._file.mktree("Events", types, counter_name=lambda c: "n" + c,
                                           field_name=lambda c, f: f"{c}_{f}")
        self._tree.extend(branches)
        self._events += len(branches["event"])

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            n = self._events
            self._file.mktree("Runs", {"run": np.uint32, "genEventCount": np.int64, "genEventSumw": np.float64,
                                       "genEventSumw2": np.float64})
            self._file["Runs"].extend({"run": np.ones(1, np.uint32), "genEventCount": np.array([n], np.int64),
                                       "genEventSumw": np.array([float(n)]), "genEventSumw2": np.array([float(n)])})
        self._file.close()
        self._atomic.__exit__(kind, value, tb)
