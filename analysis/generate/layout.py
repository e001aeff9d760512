"""Sample generator (generate stage): the CMS 2012 outreach NanoAOD layout and the ROOT writer.

The `Events` tree of the reduced NanoAOD files of the CMS open-data H->tautau outreach
analysis (PHYSICS.md "Input layout"): event scalars, triggers, and the collections Tau,
Jet, Muon, Electron, Photon, GenPart, each written as a counter ``nX`` plus ``X_field``
branches; GenPart also has Run 2 NanoAOD's ``genPartIdxMother`` and ``statusFlags``
(analysis.generate.genpart). Generated events arrive as flat object tables (one row per
object with its event index); this module keeps the stored objects (PHYSICS.md thresholds),
orders them by decreasing pt inside each event (GenPart records marked ``appended`` after
the others), turns cross references into per-event indices, and writes the tree with uproot.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from analysis.core.io import atomic_path
from analysis.core.settings import parse_compression

__all__ = ["COLLECTIONS", "ORDER_FIELDS", "SCALARS", "STORE_ABS_ETA_MAX", "STORE_PT_MIN", "TABLES", "events_to_branches",
           "write_events"]

F32, I32, BOOL = np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.bool_)

# Event-level branches: name -> dtype.
SCALARS: dict[str, np.dtype] = {
    "run": I32, "luminosityBlock": np.dtype(np.uint32), "event": np.dtype(np.uint64),
    "PV_npvs": I32, "PV_x": F32, "PV_y": F32, "PV_z": F32,
    "MET_pt": F32, "MET_phi": F32, "MET_sumet": F32, "MET_significance": F32,
    "MET_CovXX": F32, "MET_CovXY": F32, "MET_CovYY": F32,
    "HLT_IsoMu24_eta2p1": BOOL, "HLT_IsoMu24": BOOL, "HLT_IsoMu17_eta2p1_LooseIsoPFTau20": BOOL,
}

_P4 = {"pt": F32, "eta": F32, "phi": F32, "mass": F32}

# Collections: name -> {field: dtype}. Fields named jetIdx / genPartIdx are cross references.
COLLECTIONS: dict[str, dict[str, np.dtype]] = {
    "Tau": {**_P4, "charge": I32, "decayMode": I32, "relIso_all": F32, "jetIdx": I32,
            "genPartIdx": I32, "idDecayMode": BOOL, "idIsoRaw": F32,
            "idIsoVLoose": BOOL, "idIsoLoose": BOOL, "idIsoMedium": BOOL, "idIsoTight": BOOL,
            "idAntiEleLoose": BOOL, "idAntiEleMedium": BOOL, "idAntiEleTight": BOOL,
            "idAntiMuLoose": BOOL, "idAntiMuMedium": BOOL, "idAntiMuTight": BOOL},
    "Jet": {**_P4, "puId": BOOL, "btag": F32},
    "Muon": {**_P4, "charge": I32, "pfRelIso03_all": F32, "pfRelIso04_all": F32,
             "tightId": BOOL, "softId": BOOL, "dxy": F32, "dxyErr": F32, "dz": F32,
             "dzErr": F32, "jetIdx": I32, "genPartIdx": I32},
    "Electron": {**_P4, "charge": I32, "pfRelIso03_all": F32, "dxy": F32, "dxyErr": F32,
                 "dz": F32, "dzErr": F32, "cutBasedId": BOOL, "pfId": BOOL, "jetIdx": I32,
                 "genPartIdx": I32},
    "Photon": {**_P4, "charge": I32, "pfRelIso03_all": F32, "jetIdx": I32, "genPartIdx": I32},
    # genPartIdxMother and statusFlags: Run 2 NanoAOD's (int32), after the outreach fields.
    "GenPart": {**_P4, "pdgId": I32, "status": I32, "genPartIdxMother": I32, "statusFlags": I32},
}
# Fields of the object tables that order the rows but are not written: the GenPart records
# added to the outreach layout's (the tau decay products) follow the others of their event,
# so the indices pointing at those (Tau_genPartIdx, ...) are the same with or without them.
ORDER_FIELDS: dict[str, dict[str, np.dtype]] = {"GenPart": {"appended": BOOL}}
# What the generator's object tables hold (analysis.generate.events.EventBuilder).
TABLES = {name: {**fields, **ORDER_FIELDS.get(name, {})} for name, fields in COLLECTIONS.items()}

# Which collection a cross-reference field points into.
_REFERENCES = {"jetIdx": "Jet", "genPartIdx": "GenPart", "genPartIdxMother": "GenPart"}

# Objects below these pt (GeV) are not stored (PHYSICS.md; electrons/photons: reco thresholds).
STORE_PT_MIN = {"Tau": 15.0, "Jet": 15.0, "Muon": 3.0, "Electron": 5.0, "Photon": 5.0, "GenPart": 0.0}
# Detector acceptance: tracker-based objects within |eta| < 2.5 (muons 2.4), calorimeter jets 4.7.
STORE_ABS_ETA_MAX = {"Tau": 2.5, "Jet": 4.7, "Muon": 2.4, "Electron": 2.5, "Photon": 2.5, "GenPart": np.inf}


def _local_order(event: np.ndarray, pt: np.ndarray, keep: np.ndarray, n_events: int, later: np.ndarray | None = None):
    """Stored rows ordered by (event, ``later``, decreasing pt; ties keep input order), and
    per-row position inside its event (-1 for rows not stored)."""
    rows = np.flatnonzero(keep)
    # One integer key instead of a three-key lexsort: the bit pattern of a positive float32
    # grows with its value, so (event << 33) | (later << 32) | ~bits(pt) sorts by event, then
    # puts the `later` rows last, then sorts by pt downwards.
    pt_bits = pt[rows].astype(np.float32).view(np.uint32).astype(np.int64)
    group = later[rows].astype(np.int64) << 32 if later is not None else 0
    key = (event[rows] << 33) | group | (0xFFFFFFFF - pt_bits)
    order = rows[np.argsort(key, kind="stable")]
    counts = np.bincount(event[order], minlength=n_events)
    offsets = np.zeros(n_events + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    local = np.full(len(event), -1, dtype=np.int64)
    local[order] = np.arange(len(order)) - offsets[event[order]]
    return order, offsets, local


def events_to_branches(scalars: dict[str, np.ndarray], collections: dict[str, dict[str, np.ndarray]],
                       n_events: int) -> dict[str, np.ndarray | ak.Array]:
    """The tree content to write: numpy scalars and one jagged record array per collection.

    Parameters
    ----------
    scalars : dict of str -> ndarray (n_events,)
        Every branch of `SCALARS`.
    collections : dict of str -> dict of str -> ndarray (n_rows,)
        Flat object tables: ``"event"`` (int64 event index), every field of `COLLECTIONS`
        (and optionally those of `ORDER_FIELDS`, which order the rows but are not written);
        ``jetIdx`` / ``genPartIdx`` hold row numbers of the referenced table (or -1).

    Returns
    -------
    dict
        ``{"run": ndarray, ..., "Tau": ak.Array (n_events * var * {pt, eta, ...}), ...}``
        with the dtypes of the layout; references are per-event indices (-1 when the target
        is not stored).
    """
    out: dict[str, np.ndarray | ak.Array] = {}
    for name, dtype in SCALARS.items():
        out[name] = np.ascontiguousarray(scalars[name], dtype=dtype)
    ordered = {}
    for name, table in collections.items():
        keep = (table["pt"] > STORE_PT_MIN[name]) & (np.abs(table["eta"]) < STORE_ABS_ETA_MAX[name])
        later = next((table[f] for f in ORDER_FIELDS.get(name, {}) if f in table), None)
        ordered[name] = _local_order(table["event"], table["pt"], keep, n_events, later)
    for name, fields in COLLECTIONS.items():
        table = collections[name]
        order, offsets, _ = ordered[name]
        contents = []
        for field, dtype in fields.items():
            values = table[field][order]
            if field in _REFERENCES:
                target_local = ordered[_REFERENCES[field]][2]
                matched = values >= 0
                values = np.full(len(values), -1, dtype=np.int64)
                values[matched] = target_local[table[field][order][matched]]
            contents.append(ak.contents.NumpyArray(np.ascontiguousarray(values, dtype=dtype)))
        record = ak.contents.RecordArray(contents, list(fields), length=len(order))
        out[name] = ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), record))
    return out


def _compression(spec: str):
    alg, level = parse_compression(spec)
    return {"ZLIB": uproot.ZLIB, "LZ4": uproot.LZ4, "ZSTD": uproot.ZSTD, "LZMA": uproot.LZMA}[alg](level)


def write_events(path: str | Path, branches: dict[str, np.ndarray | ak.Array], *, compression: str) -> Path:
    """Write `branches` as the TTree ``Events`` of a new ROOT file, atomically.

    The file appears at ``path`` only once complete (written to a temporary name in the
    same folder, then renamed), so an interrupted run never leaves a truncated file.
    Collections become a counter ``nX`` and branches ``X_field`` (NanoAOD naming).
    """
    path = Path(path)
    types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in branches.items()}
    with atomic_path(path) as tmp:
        with uproot.recreate(tmp, compression=_compression(compression)) as file:
            tree = file.mktree("Events", types, counter_name=lambda c: "n" + c,
                               field_name=lambda c, f: f"{c}_{f}")
            tree.extend(branches)
    return path
