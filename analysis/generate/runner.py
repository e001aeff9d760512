"""Sample generator (generate stage): `hepprep generate` — synthetic CMS 2012 H->tautau samples.

Writes every dataset of the configuration as ROOT files in the CMS 2012 outreach NanoAOD
layout (analysis.generate.layout) plus a coffea ``fileset.json``, so the rest of the pipeline
runs on them exactly as on the real open-data files.

Event counts
    The real datasets differ in size by a factor ~60 (ggH 0.48 M events, DY 30 M). The
    generated sample keeps that imbalance in compressed form: each MC dataset gets a share
    of ``generate.events`` proportional to sqrt(real_events) (DY, W1J, W2J ~8x ggH; TT ~3.6x;
    when ``real_events`` is not set, xsec x lumi stands in for it).

Weights
    The generated events of a process stand for a *filtered* sample: only the final state
    the analysis looks at is simulated. Each process simulates a documented ``fraction``
    of its events (branching fractions x a production-level factor, listed with its
    reasoning in `analysis.generate.processes.PROCESSES`), and a tau filter (two tau candidates
    above 18 GeV) keeps ``n_generated`` of the ``tried`` events. The fileset says
    ``sumw = tried / fraction``: the skim's weight xsec x lumi / sumw then gives each
    generated event the yield it stands for. After the default selection the signal is a
    few per cent of the background, as in the signal-enriched categories of the real
    analysis.

Pseudo-data
    Each real-data dataset (label -1) gets, for every MC dataset, Poisson(xsec x
    data_lumi_pb x n_generated / sumw x data_scale) events — the yield the MC weights
    predict — from the same generators with the same filter, shuffled together, with run
    numbers of Run2012B (193833-196531) or Run2012C (198022-203742), unique event numbers
    and no generator information. MC events have run 1.

Reproducibility
    File i of a dataset is generated from ``SeedSequence(seed, spawn_key=(crc32(name), i))``:
    the same seed gives identical arrays, and an MC file does not depend on the order of
    the datasets or on the other processes' generation (pseudo-data depends on the MC
    yields by construction).

Fileset metadata
    DESIGN.md's ``process``, ``is_mc``, ``label`` and, for MC, ``xsec_pb`` and ``sumw``;
    plus ``n_events``, the number of events in the files (MC: after the tau filter).
"""

from __future__ import annotations

import math
import time
import zlib
from pathlib import Path

import numpy as np

from analysis.config import Config
from analysis.core.io import read_json, remove_stale_temp, write_json_atomic
from analysis.core.names import dataset_folder
from analysis.core.progress import progress_bar, stage_console
from analysis.core.provenance import GENERATE_SETTINGS_FILE
from analysis.errors import ConfigError, StageInputError
from analysis.generate.events import EventBatch, concatenate_batches
from analysis.generate.layout import events_to_branches, write_events
from analysis.generate.mutau import MUTAU_PROCESSES
from analysis.generate.processes import PROCESSES, generate_filtered

__all__ = ["ALL_PROCESSES", "RUN_RANGES", "SETTINGS_FILE", "dataset_event_counts", "expected_data_events",
           "generate_dataset_file", "generate_samples", "generation_settings",
           "read_generation_settings", "split_evenly"]

# Run ranges of the 2012 TauPlusX datasets; the dataset name must contain the era.
RUN_RANGES = {"Run2012A": (190456, 193621), "Run2012B": (193833, 196531),
              "Run2012C": (198022, 203742), "Run2012D": (203777, 208686)}
_LUMI_BLOCKS_PER_RUN = 1500  # luminosity sections drawn uniformly in 1..this
_MC_EVENTS_PER_LUMI_BLOCK = 1000


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` items in ``parts`` nearly equal integer parts (the first ones one larger)."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def _size_proxy(config: Config, name: str) -> float:
    sample = config.samples[name]
    return float(sample.real_events) if sample.real_events else sample.xsec_pb * config.lumi_pb


def dataset_event_counts(config: Config) -> dict[str, int]:
    """Generated events per MC dataset: one each, the rest of ``generate.events`` shared
    ~ sqrt(real_events) with largest-remainder rounding (the counts sum to it exactly)."""
    names = [n for n, s in config.samples.items() if s.is_mc]
    total = config.generate.events
    if total < len(names):
        raise ConfigError(f"generate.events: {total} is fewer than the {len(names)} simulated datasets; "
                          f"give at least one event per dataset")
    share = np.array([math.sqrt(_size_proxy(config, n)) for n in names])
    exact = (total - len(names)) * share / share.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - len(names) - counts.sum()]:
        counts[i] += 1
    return dict(zip(names, (counts + 1).tolist()))


# Every process the generator knows: the di-tau analysis's and the mu-tau_h channel's, which a
# configuration's samples name (`process`) to make a sample of that channel.
ALL_PROCESSES = {**PROCESSES, **MUTAU_PROCESSES}


def _process_model(config: Config, name: str):
    process = config.samples[name].process
    if process not in ALL_PROCESSES:
        raise ConfigError(f"samples.{name}.process: no generator for process {process!r}; "
                          f"known: {', '.join(ALL_PROCESSES)}")
    return ALL_PROCESSES[process]


def expected_data_events(config: Config, data_lumi_pb: float, sumw: dict[str, float],
                         n_generated: dict[str, int]) -> dict[str, float]:
    """Expected events per MC dataset in data of ``data_lumi_pb``, before any selection:
    xsec x lumi x n_generated / sumw — the yield the skim's weights will give the MC."""
    return {name: config.samples[name].xsec_pb * data_lumi_pb * n_generated[name] / sumw[name]
            for name in sumw if sumw[name] > 0}


def _rng(seed: int, name: str, *key: int) -> np.random.Generator:
    sequence = np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()), *key))
    return np.random.Generator(np.random.PCG64(sequence))


def _run_range(name: str) -> tuple[int, int]:
    for era, runs in RUN_RANGES.items():
        if era in name:
            return runs
    raise ConfigError(f"samples.{name}: a data dataset name must contain its era "
                      f"({', '.join(RUN_RANGES)}) to get run numbers, e.g. Run2012B_TauPlusX")


def _set_identity(batch: EventBatch, rng: np.random.Generator, *, run_range: tuple[int, int] | None,
                  first_event: int) -> None:
    n = batch.n
    s = batch.scalars
    if run_range is None:
        s["run"] = np.ones(n, np.int32)
        index = first_event + np.arange(n)
        s["luminosityBlock"] = (1 + index // _MC_EVENTS_PER_LUMI_BLOCK).astype(np.uint32)
        s["event"] = (1 + index).astype(np.uint64)
        return
    # Data: events sorted by run and lumi section as recorded; event numbers unique in the
    # dataset because each file owns a disjoint block of 2^32 numbers.
    run = np.sort(rng.integers(run_range[0], run_range[1] + 1, n))
    lumi = rng.integers(1, _LUMI_BLOCKS_PER_RUN + 1, n)
    order = np.lexsort((lumi, run))
    gaps = rng.integers(1, 2**32 // max(n, 1), n, endpoint=False) if n else np.zeros(0, np.int64)
    s["run"] = run[order].astype(np.int32)
    s["luminosityBlock"] = lumi[order].astype(np.uint32)
    s["event"] = (first_event + np.cumsum(gaps)).astype(np.uint64)


def generate_dataset_file(config: Config, name: str, index: int,
                          n_events: int | dict[str, int]) -> tuple[EventBatch, int]:
    """The events of file ``index`` of dataset ``name``, and the events tried for them.

    ``n_events`` is an event count for an MC dataset, or for pseudo-data a mapping
    MC dataset -> events of its process in this file.
    """
    seed = config.generate.seed
    sample = config.samples[name]
    if sample.is_mc:
        batch, tried = generate_filtered(_process_model(config, name), _rng(seed, name, index), n_events)
        n_before = sum(split_evenly(dataset_event_counts(config)[name], config.generate.files_per_sample)[:index])
        _set_identity(batch, _rng(seed, name, index, 1), run_range=None, first_event=n_before)
        return batch, tried
    parts = [generate_filtered(_process_model(config, mc), _rng(seed, name, index, 2, zlib.crc32(mc.encode())),
                               count)[0].drop_truth()
             for mc, count in n_events.items()]
    batch = concatenate_batches(parts)
    rng = _rng(seed, name, index, 1)
    batch = batch.permute(rng.permutation(batch.n))
    _set_identity(batch, rng, run_range=_run_range(name), first_event=index << 32)
    return batch, batch.n


def _data_lumi(config: Config, name: str) -> float:
    lumi = config.samples[name].data_lumi_pb
    if lumi is None:
        raise ConfigError(f"samples.{name}.data_lumi_pb: a data sample (label -1) needs its integrated "
                          f"luminosity to draw pseudo-data, e.g. data_lumi_pb = 4412.0")
    return lumi


def _data_counts(config: Config, name: str, sumw: dict[str, float],
                 n_generated: dict[str, int]) -> dict[str, list[int]]:
    """Pseudo-data events per MC dataset, Poisson around the expected yield, split over files."""
    expected = expected_data_events(config, _data_lumi(config, name), sumw, n_generated)
    rng = _rng(config.generate.seed, name, 2**31)
    k = config.generate.files_per_sample
    return {mc: split_evenly(int(rng.poisson(mu * config.generate.data_scale)), k) for mc, mu in expected.items()}


def _fileset_entry(config: Config, name: str, files: list[str], n_events: int, sumw: float | None) -> dict:
    sample = config.samples[name]
    meta: dict = {"process": sample.process, "is_mc": sample.is_mc, "label": sample.label}
    if sample.is_mc:
        meta["xsec_pb"] = sample.xsec_pb
        meta["sumw"] = sumw
    meta["n_events"] = n_events  # events in the files (MC: after the generator's tau filter)
    return {"files": {f: "Events" for f in files}, "metadata": meta}


SETTINGS_FILE = GENERATE_SETTINGS_FILE  # generate.json


def generation_settings(config: Config) -> dict:
    """Everything of the configuration that decides the generated files (what `hepprep run`
    compares before it reuses a generated sample)."""
    return {"generate": config.generate.model_dump(mode="json"), "lumi_pb": config.lumi_pb,
            "samples": {name: s.model_dump(mode="json") for name, s in config.samples.items()}}


def read_generation_settings(out_dir: str | Path) -> dict | None:
    """The settings a sample folder was generated with (its ``generate.json``), or None."""
    try:
        data = read_json(Path(out_dir) / SETTINGS_FILE, "the generator settings")
    except StageInputError:
        return None
    return data if isinstance(data, dict) else None


def generate_samples(out_dir: str | Path, config: Config, *, progress: bool = True) -> Path:
    """Generate every dataset of ``config.samples`` into ``out_dir`` and write its fileset.

    Parameters
    ----------
    out_dir : str or Path
        Output folder; gets ``<dataset>/<dataset>_<i>.root`` (``generate.files_per_sample``
        files each) and ``fileset.json`` with paths relative to it.
    config : Config
        Uses ``samples``, ``lumi_pb`` and ``generate`` (events, files_per_sample, seed,
        compression, data_scale).
    progress : bool
        Show a progress bar per file and a summary line on stderr.

    Returns
    -------
    Path
        ``out_dir / "fileset.json"``.

    Example
    -------
    >>> from analysis.config import config_from_dict
    >>> fileset = generate_samples("/tmp/sample", config_from_dict({"generate": {"events": 20000}}),
    ...                            progress=False)
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = config.generate
    mc_counts = dataset_event_counts(config)
    mc_jobs = []
    for name in mc_counts:
        _process_model(config, name)
        # More files than events: the empty ones are not written (a reader may reject empty files).
        mc_jobs += [(name, i, n) for i, n in enumerate(split_evenly(mc_counts[name], gen.files_per_sample)) if n]
    data_names = [name for name, s in config.samples.items() if not s.is_mc]
    for name in data_names:  # fail before any work on a data set without an era or luminosity
        _run_range(name)
        _data_lumi(config, name)
    # A fileset left from an earlier run must not describe files this run is replacing.
    (out_dir / "fileset.json").unlink(missing_ok=True)
    (out_dir / SETTINGS_FILE).unlink(missing_ok=True)
    remove_stale_temp(out_dir)
    files: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    tried: dict[str, int] = {}
    start = time.perf_counter()

    def run(bar, task, name, index, n_events):
        bar.update(task, description=f"generate {name}_{index}")
        batch, n_tried = generate_dataset_file(config, name, index, n_events)
        folder = dataset_folder(name)  # the name itself, unless it would not be a safe folder
        relative = f"{folder}/{folder}_{index}.root"
        (out_dir / folder).mkdir(exist_ok=True)
        remove_stale_temp(out_dir / folder)
        write_events(out_dir / relative, events_to_branches(batch.scalars, batch.collections, batch.n),
                     compression=gen.compression)
        files.setdefault(name, []).append(relative)
        totals[name] = totals.get(name, 0) + batch.n
        tried[name] = tried.get(name, 0) + n_tried
        bar.advance(task)

    with progress_bar(quiet=not progress) as bar:
        task = bar.add_task("generate", total=len(mc_jobs) + len(data_names) * gen.files_per_sample)
        for job in mc_jobs:
            run(bar, task, *job)
        # sumw: events the filtered sample stands for (tried / fraction of the process).
        sumw = {name: tried[name] / _process_model(config, name).fraction for name in mc_counts}
        for name in data_names:
            counts = _data_counts(config, name, sumw, totals)
            for i in range(gen.files_per_sample):
                per_file = {mc: c[i] for mc, c in counts.items()}
                if i == 0 or sum(per_file.values()):  # an empty dataset still gets its (empty) file 0
                    run(bar, task, name, i, per_file)
                else:
                    bar.advance(task)
    result = {name: _fileset_entry(config, name, files[name], totals[name], sumw.get(name))
              for name in config.samples}
    path = out_dir / "fileset.json"
    write_json_atomic(out_dir / SETTINGS_FILE, generation_settings(config))
    write_json_atomic(path, result)
    elapsed = time.perf_counter() - start
    n_mc = sum(totals[k] for k in mc_counts)
    n_data = sum(totals.values()) - n_mc
    stage_console(quiet=not progress).print(
        f"generated {n_mc} simulated + {n_data} pseudo-data events in {sum(map(len, files.values()))} files "
        f"({len(files)} datasets) in {elapsed:.1f} s -> {path}")
    return path
