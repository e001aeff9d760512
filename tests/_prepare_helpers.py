"""Prepare tests and benchmark: a synthetic skim that follows DESIGN.md "Skim Parquet".

The prepare stage is tested without running generate -> skim: this writes
``skim/<dataset>/part-*.parquet`` with the DESIGN.md columns and dtypes, several datasets
of different sizes and weights, labels 1/0/-1, a fraction of negative generator weights,
and feature distributions of roughly the right shape (falling pt spectra, central eta,
class-dependent visible mass), fast enough for the 20M-row benchmark.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LUMI_PB = 11_467.0


@dataclass(frozen=True)
class SkimSample:
    name: str
    process: str
    label: int
    events: int
    xsec_pb: float | None = None  # None for real data
    negative_fraction: float = 0.0  # share of events with genWeight -1 (NLO samples)


def default_samples(scale: float = 1.0) -> list[SkimSample]:
    """Signal small, background large, plus real data, like PHYSICS.md (sizes times `scale`)."""
    def n(k: int) -> int:
        return max(1, int(k * scale))

    return [
        SkimSample("GluGluToHToTauTau", "ggH", 1, n(1500), 19.6),
        SkimSample("VBF_HToTauTau", "VBF", 1, n(1000), 1.55),
        SkimSample("DYJetsToLL", "DY", 0, n(6000), 3503.7, negative_fraction=0.1),
        SkimSample("TTbar", "TT", 0, n(2500), 225.2, negative_fraction=0.05),
        SkimSample("Run2012B_TauPlusX", "data", -1, n(800)),
    ]


def skim_table(sample: SkimSample, start: int, stop: int, *, seed: int = 0) -> pa.Table:
    """Rows [start, stop) of a sample (each range draws from its own seeded stream)."""
    n = stop - start
    rng = np.random.default_rng([seed, zlib.crc32(sample.name.encode()), start])
    sig = sample.label == 1
    f32 = np.float32

    def pt(scale: float, low: float) -> np.ndarray:
        return (low + rng.exponential(scale, n)).astype(f32)

    cols: dict[str, pa.Array] = {}
    event = np.arange(start, stop, dtype=np.uint64) * 7 + 13
    cols["run"] = pa.array((194_000 + (event // 50_000)).astype(np.int32))
    cols["luminosityBlock"] = pa.array((1 + (event // 1000) % 4000).astype(np.uint32))
    cols["event"] = pa.array(event)
    cols["dataset"] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), [sample.name])
    cols["process"] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), [sample.process])
    cols["label"] = pa.array(np.full(n, sample.label, dtype=np.int8))
    if sample.label == -1:
        gen = np.ones(n, dtype=f32)
        weight = np.ones(n)
    else:
        gen = np.where(rng.random(n) < sample.negative_fraction, -1.0, 1.0).astype(f32)
        weight = sample.xsec_pb * LUMI_PB * gen.astype(np.float64) / (50.0 * sample.events)
    cols["genWeight"] = pa.array(gen)
    cols["weight"] = pa.array(weight)
    for i, (scale, low) in enumerate([(25.0, 20.0), (15.0, 20.0)], start=1):
        cols[f"tau{i}_pt"] = pa.array(pt(scale * (1.2 if sig else 1.0), low))
        cols[f"tau{i}_eta"] = pa.array(rng.uniform(-2.3, 2.3, n).astype(f32))
        cols[f"tau{i}_phi"] = pa.array(rng.uniform(-np.pi, np.pi, n).astype(f32))
        cols[f"tau{i}_mass"] = pa.array(rng.choice(np.array([0.14, 0.77, 1.2], f32), n))
        cols[f"tau{i}_charge"] = pa.array(np.where(rng.random(n) < 0.5, -1, 1).astype(np.int8))
        cols[f"tau{i}_decayMode"] = pa.array(rng.choice(np.array([0, 1, 10], np.int8), n, p=[0.25, 0.5, 0.25]))
        cols[f"tau{i}_iso"] = pa.array(rng.exponential(0.05, n).astype(f32))
    for i, (scale, low) in enumerate([(40.0, 30.0), (25.0, 30.0)], start=1):
        cols[f"jet{i}_pt"] = pa.array(pt(scale, low))
        cols[f"jet{i}_eta"] = pa.array(rng.normal(0, 3.0 if sample.process == "VBF" else 1.8, n)
                                       .clip(-4.7, 4.7).astype(f32))
        cols[f"jet{i}_phi"] = pa.array(rng.uniform(-np.pi, np.pi, n).astype(f32))
        cols[f"jet{i}_mass"] = pa.array(rng.uniform(4, 20, n).astype(f32))
        cols[f"jet{i}_btag"] = pa.array(rng.beta(0.5, 3.0 if sample.process != "TT" else 0.8, n).astype(f32))
    cols["met_pt"] = pa.array(pt(25.0, 0.0))
    cols["met_phi"] = pa.array(rng.uniform(-np.pi, np.pi, n).astype(f32))
    cols["npv"] = pa.array(rng.poisson(17, n).astype(np.int16))
    cols["njets"] = pa.array((2 + rng.poisson(0.6, n)).astype(np.int16))
    cols["ntaus"] = pa.array((2 + rng.poisson(0.1, n)).astype(np.int16))
    m_peak = 85.0 if sig else 62.0
    cols["m_vis"] = pa.array(np.abs(rng.normal(m_peak, 18.0, n)).astype(f32))
    cols["pt_vis"] = pa.array(pt(30.0, 5.0))
    cols["dr_tautau"] = pa.array(rng.uniform(0.5, 5.0, n).astype(f32))
    cols["mt_tau1"] = pa.array(pt(30.0, 0.0))
    cols["mt_tau2"] = pa.array(pt(25.0, 0.0))
    cols["mjj"] = pa.array(pt(400.0 if sample.process == "VBF" else 150.0, 20.0))
    cols["ptjj"] = pa.array(pt(50.0, 0.0))
    cols["jdeta"] = pa.array(np.abs(rng.normal(0, 3.5 if sample.process == "VBF" else 1.5, n)).astype(f32))
    cols["pt_h"] = pa.array(pt(40.0, 0.0))
    return pa.table(cols)


def write_skim(root: str | Path, samples: list[SkimSample] | None = None, *, rows_per_file: int = 2000,
               row_group_rows: int | None = None, seed: int = 0, compression: str = "snappy") -> Path:
    """Write ``root/<dataset>/part-<k>-<start>-<stop>.parquet`` for every sample; returns root."""
    root = Path(root)
    for sample in samples or default_samples():
        folder = root / sample.name
        folder.mkdir(parents=True, exist_ok=True)
        for k, start in enumerate(range(0, sample.events, rows_per_file)):
            stop = min(start + rows_per_file, sample.events)
            table = skim_table(sample, start, stop, seed=seed)
            pq.write_table(table, folder / f"part-{k:05d}-{start}-{stop}.parquet",
                           row_group_size=row_group_rows or rows_per_file, compression=compression)
    return write_skim_manifest(root)


def write_skim_manifest(root: str | Path) -> Path:
    """The skim manifest.json of a hand-written skim: every ``<dataset>/part-*.parquet`` as a
    done chunk of its own input file, with its row count (prepare reads what it lists)."""
    root = Path(root)
    files, datasets = [], {}
    for part in sorted(root.glob("*/part-*.parquet")):
        rows = pq.read_metadata(part).num_rows
        dataset = part.parent.name
        datasets.setdefault(dataset, {"process": dataset, "label": 0})
        files.append({"dataset": dataset, "path": f"/input/{dataset}/{part.stem}.root", "status": "done",
                      "chunks": [{"start": 0, "stop": rows, "part": f"{dataset}/{part.name}", "rows": rows}],
                      "error": None})
    manifest = {"stage": "skim", "complete": True, "datasets": datasets, "files": files, "errors": []}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def repartition_skim(src: str | Path, dst: str | Path, *, rows_per_file: int, row_group_rows: int,
                     reverse: bool = False) -> Path:
    """The same events as `src` in other files and row groups (optionally in reverse order)."""
    for folder in sorted(p for p in Path(src).iterdir() if p.is_dir()):
        table = pa.concat_tables([pq.read_table(f) for f in sorted(folder.glob("part-*.parquet"))])
        if reverse:
            table = table.take(pa.array(np.arange(table.num_rows)[::-1]))
        out = Path(dst) / folder.name
        out.mkdir(parents=True)
        for k, start in enumerate(range(0, table.num_rows, rows_per_file)):
            pq.write_table(table.slice(start, rows_per_file), out / f"part-{k:05d}.parquet",
                           row_group_size=row_group_rows)
    return write_skim_manifest(dst)


def read_split(prep: str | Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """All files of one prepared split, in file order."""
    files = sorted((Path(prep) / split).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
