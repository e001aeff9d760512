"""Prepare tests of jet-level skims: a synthetic skim of one row per jet, with list columns.

It follows the skim contract of a processor with several rows per event (README "Your own
analysis", `processors.jets`): the identity and bookkeeping columns repeated on each jet of
an event, ``jet_index`` numbering the jets of the event, the jet's flat features, a truth
``jet_label`` (0 light, 1 c, 2 b) and its constituents and secondary vertices as Parquet
``list<float32>`` columns. Events hold 1-4 jets, jets 5-60 constituents and 0-4 vertices
(so some vertex lists are empty); the classes have different (pt, eta) spectra, so a
flattening has something to flatten; one dataset has negative generator weights and one is
real data. The constituent columns hold a few NaN entries (missing values).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests._prepare_helpers import write_skim_manifest

CANDIDATE_COLUMNS = ("cand_pt", "cand_deta", "cand_dphi", "cand_logpt", "cand_d0")
VERTEX_COLUMNS = ("sv_mass", "sv_dxysig")
JET_CLASSES = {"light": [0], "c": [1], "b": [2]}


@dataclass(frozen=True)
class JetSample:
    name: str
    process: str
    label: int  # the sample's label: 0/1 simulation, -1 real data
    events: int
    xsec_pb: float | None = None
    negative_fraction: float = 0.0
    class_mix: tuple[float, float, float] = (0.6, 0.25, 0.15)  # light, c, b jets


def jet_samples(scale: float = 1.0) -> list[JetSample]:
    def n(k: int) -> int:
        return max(1, int(k * scale))

    return [JetSample("QCD_Pt-15to7000", "QCD", 0, n(900), 1.0e6, negative_fraction=0.08),
            JetSample("TTToHadronic", "TT", 1, n(500), 380.0, class_mix=(0.45, 0.2, 0.35)),
            JetSample("JetHT_Run2018A", "data", -1, n(150))]


def _lists(counts: np.ndarray, values: np.ndarray) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.float32)))


def jet_table(sample: JetSample, start: int, stop: int, *, seed: int = 0) -> pa.Table:
    """The jets of events [start, stop) of a sample (each range from its own seeded stream)."""
    rng = np.random.default_rng([seed, zlib.crc32(sample.name.encode()), start])
    n_events = stop - start
    n_jets = rng.integers(1, 5, n_events)  # 1-4 jets per event
    n = int(n_jets.sum())
    event_of_jet = np.repeat(np.arange(n_events), n_jets)
    event = (np.arange(start, stop, dtype=np.uint64) * 5 + 11)[event_of_jet]
    jet_index = (np.arange(n) - np.repeat(np.cumsum(n_jets) - n_jets, n_jets)).astype(np.int16)
    simulated = sample.label != -1
    label = (rng.choice(3, n, p=sample.class_mix) if simulated else np.full(n, -1)).astype(np.int8)
    # Class-dependent spectra: b jets harder and more central, light jets softer and wider.
    pt_scale = np.choose(np.maximum(label, 0), [40.0, 60.0, 90.0])
    jet_pt = 20.0 + rng.exponential(pt_scale)
    jet_eta = rng.normal(0.0, np.choose(np.maximum(label, 0), [1.3, 1.0, 0.8])).clip(-2.45, 2.45)
    if simulated:
        gen = np.where(rng.random(n_events) < sample.negative_fraction, -1.0, 1.0)[event_of_jet]
        weight = sample.xsec_pb * 1000.0 * gen / (20.0 * sample.events)
    else:
        gen, weight = np.ones(n), np.ones(n)
    ncand = rng.integers(5, 61, n)  # 5-60 constituents
    nsv = rng.integers(0, 5, n)  # 0-4 secondary vertices
    total = int(ncand.sum())
    cand_pt = rng.exponential(np.repeat(jet_pt / 15.0, ncand)) + 0.5
    d0 = rng.normal(0.0, 0.02, total) * np.repeat(1.0 + 2.0 * (label == 2), ncand)
    d0[rng.random(total) < 0.01] = np.nan  # missing track details
    cols: dict[str, pa.Array] = {
        "run": pa.array(np.full(n, 315_000 + start // 100_000, dtype=np.int32)),
        "luminosityBlock": pa.array((1 + (event // 500) % 3000).astype(np.uint32)),
        "event": pa.array(event),
        "dataset": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), [sample.name]),
        "process": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), [sample.process]),
        "label": pa.array(np.full(n, sample.label, dtype=np.int8)),
        "genWeight": pa.array(gen.astype(np.float32)),
        "weight": pa.array(weight.astype(np.float64)),
        "jet_index": pa.array(jet_index),
        "jet_pt": pa.array(jet_pt.astype(np.float32)),
        "jet_eta": pa.array(jet_eta.astype(np.float32)),
        "jet_phi": pa.array(rng.uniform(-np.pi, np.pi, n).astype(np.float32)),
        "jet_mass": pa.array((jet_pt * rng.uniform(0.05, 0.2, n)).astype(np.float32)),
        "jet_ncand": pa.array(ncand.astype(np.int16)),
        "jet_nsv": pa.array(nsv.astype(np.int16)),
        "jet_label": pa.array(label),
        "cand_pt": _lists(ncand, cand_pt),
        "cand_deta": _lists(ncand, rng.normal(0.0, 0.15, total)),
        "cand_dphi": _lists(ncand, rng.normal(0.0, 0.15, total)),
        "cand_logpt": _lists(ncand, np.log(cand_pt)),
        "cand_d0": _lists(ncand, d0),
        "sv_mass": _lists(nsv, rng.gamma(2.0, 0.8, int(nsv.sum()))),
        "sv_dxysig": _lists(nsv, rng.exponential(8.0, int(nsv.sum()))),
    }
    return pa.table(cols)


def write_jet_skim(root: str | Path, samples: list[JetSample] | None = None, *, events_per_file: int = 300,
                   row_group_rows: int = 250, seed: int = 0) -> Path:
    """``root/<dataset>/part-<k>-<start>-<stop>.parquet`` for every sample and its manifest."""
    root = Path(root)
    for sample in samples or jet_samples():
        folder = root / sample.name
        folder.mkdir(parents=True, exist_ok=True)
        for k, start in enumerate(range(0, sample.events, events_per_file)):
            stop = min(start + events_per_file, sample.events)
            pq.write_table(jet_table(sample, start, stop, seed=seed),
                           folder / f"part-{k:05d}-{start}-{stop}.parquet", row_group_size=row_group_rows)
    return write_skim_manifest(root)


def prepare_small_jets(root: Path, name: str, target: dict, features: list[str], lists,
                       scheduler: str | None = None) -> Path:
    """``root/skim`` (`write_jet_skim`) prepared into ``root/name`` in small files and row groups, one worker
    (or on ``scheduler``, an existing dask cluster: a module's several preparations share one)."""
    from analysis import config_from_dict
    from analysis.prepare.runner import run_prepare

    config = config_from_dict({
        "features": features, "target": target,
        "prepare": {"bucket_rows": 800, "file_rows": 600, "row_group_rows": 150,
                    "objects": {"constituent_features": list(lists)}},
        "cluster": {"n_workers": 1, "memory_limit": "2GiB"}})
    run_prepare(root / "skim", root / name, config, scheduler=scheduler, progress=False)
    return root / name
