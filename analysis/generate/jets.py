"""Sample generator (generate stage): `hepprep generate --kind jets` — synthetic PFNano jet samples.

Writes every dataset of the jet samples as PFNano ROOT files (`analysis.generate.jet_layout`)
and a coffea ``fileset.json``, so `processors.jets:JetProcessor` skims them as real PFNano
(AK4 ``Jet`` and AK8 ``FatJet``, truth labels from the GenParts, ``jes_target`` from the
generator jets). The physics is `jet_physics` (hard process), `jet_shower` (candidates),
`jet_build` (response, corrections, vertices) and `jet_substructure` (tau_N, soft drop);
README "Generated jets" lists the targets and the tests that hold them.

Samples
    A configuration's ``[samples]`` whose processes are jet processes (`JET_PROCESSES`: QCD,
    Wqq, Hbb, Tbqq); a configuration without its own samples gets `DEFAULT_JET_SAMPLES`.
    ``generate.events`` is shared equally between the datasets (largest remainder), each
    event with two AK8 and one to three AK4 jets.
Weights
    Unweighted events (genWeight 1), ``sumw`` = the events written (also the ``Runs`` tree's
    genEventSumw): the cross section is the configured one of the generated phase space.
Reproducibility
    Block b of file i of a dataset comes from ``SeedSequence(seed, spawn_key=(crc32(name), i, b))``
    (blocks of `BLOCK_EVENTS` events): the same seed gives the same bytes.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np

from analysis.config import Config, Sample
from analysis.core.io import remove_stale_temp, write_json_atomic
from analysis.core.names import dataset_folder
from analysis.core.progress import progress_bar, stage_console
from analysis.core.provenance import GENERATE_SETTINGS_FILE
from analysis.errors import ConfigError
from analysis.generate.jet_build import build_jets
from analysis.generate.jet_layout import JetFileWriter, jet_branches
from analysis.generate.jet_physics import FAT_PROCESSES, HardObjects, extra_jets, hard_process
from analysis.generate.jet_shower import shower

__all__ = ["BLOCK_EVENTS", "DEFAULT_JET_SAMPLES", "JET_PROCESSES", "block_rng", "generate_jet_block", "generate_jet_samples",
           "jet_samples"]

JET_PROCESSES = tuple(FAT_PROCESSES)
BLOCK_EVENTS = 5000  # events generated at once: bounds the memory (the process peaks below 1 GB)
# Cross sections of the generated phase space (resonance pt above 300 GeV, 400 for tops; merged decays):
# orders of magnitude of the Run 2 samples they stand for, not measured values.
DEFAULT_JET_SAMPLES = {
    "QCD_Pt-300toInf": Sample(process="QCD", label=0, xsec_pb=1.0e4),
    "WJetsToQQ_Pt-300toInf": Sample(process="Wqq", label=1, xsec_pb=50.0),
    "HToBB_Pt-300toInf": Sample(process="Hbb", label=1, xsec_pb=0.5),
    "TTToHadronic_Pt-400toInf": Sample(process="Tbqq", label=1, xsec_pb=20.0),
}


def jet_samples(config: Config) -> dict[str, Sample]:
    """The jet datasets: the configuration's, or `DEFAULT_JET_SAMPLES` when it has the default (di-tau) ones."""
    if config.samples == Config().samples:
        return dict(DEFAULT_JET_SAMPLES)
    for name, sample in config.samples.items():
        if not sample.is_mc:
            raise ConfigError(f"samples.{name}: the jet generator makes simulation only (label 0 or 1)")
        if sample.process not in JET_PROCESSES:
            raise ConfigError(f"samples.{name}.process: no jet generator for process {sample.process!r}; "
                              f"known: {', '.join(JET_PROCESSES)}")
    return dict(config.samples)


def block_rng(seed: int, name: str, *key: int) -> np.random.Generator:
    """The random stream of (dataset ``name``, file, block): `SeedSequence` spawned from the seed (module docstring)."""
    sequence = np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()), *key))
    return np.random.Generator(np.random.PCG64(sequence))


def _objects(rng: np.random.Generator, process: str, n_events: int) -> HardObjects:
    """The event's AK8 objects (first) and AK4 objects (after) as one table."""
    fat, small = hard_process(rng, process, n_events), extra_jets(rng, process, n_events)
    shift = len(fat.obj_fat)
    return HardObjects(obj_event=np.concatenate([fat.obj_event, small.obj_event]),
                       obj_fat=np.concatenate([fat.obj_fat, small.obj_fat]),
                       obj_p4=np.concatenate([fat.obj_p4, small.obj_p4]),
                       parton_obj=np.concatenate([fat.parton_obj, small.parton_obj + shift]),
                       parton_p4=np.concatenate([fat.parton_p4, small.parton_p4]),
                       parton_pdg=np.concatenate([fat.parton_pdg, small.parton_pdg]), records=fat.records)


def generate_jet_block(rng: np.random.Generator, process: str, n_events: int, first_event: int = 0) -> dict:
    """The ``Events`` branches of ``n_events`` events of ``process``, numbered from ``first_event`` + 1."""
    hard = _objects(rng, process, n_events)
    radius = np.where(hard.obj_fat, 0.8, 0.4)
    parts, hadrons = shower(rng, hard, radius)
    built = build_jets(rng, hard, parts, hadrons)
    return jet_branches(built, hard.records.table(), n_events, first_event)


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def jet_generation_settings(config: Config) -> dict:
    """What decides the generated jet files (generate.json; `hepprep run` compares it before reusing them)."""
    return {"kind": "jets", "generate": config.generate.model_dump(mode="json"),
            "samples": {name: s.model_dump(mode="json") for name, s in jet_samples(config).items()}}


def generate_jet_samples(out_dir: str | Path, config: Config, *, progress: bool = True) -> Path:
    """Generate the jet datasets (`jet_samples`) into ``out_dir``: ``<dataset>/<dataset>_<i>.root`` and
    ``fileset.json`` (and ``generate.json``, the settings). Returns the fileset's path."""
    out_dir = Path(out_dir)
    samples = jet_samples(config)
    gen = config.generate
    if gen.events < len(samples):
        raise ConfigError(f"generate.events: {gen.events} is fewer than the {len(samples)} jet datasets")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fileset.json").unlink(missing_ok=True)
    (out_dir / GENERATE_SETTINGS_FILE).unlink(missing_ok=True)
    remove_stale_temp(out_dir)
    counts = dict(zip(samples, _split(gen.events, len(samples))))
    jobs = [(name, i, n) for name in samples for i, n in enumerate(_split(counts[name], gen.files_per_sample)) if n]
    files: dict[str, list[str]] = {}
    start = time.perf_counter()
    with progress_bar(quiet=not progress) as bar:
        task = bar.add_task("generate", total=len(jobs))
        for name, index, n_events in jobs:
            bar.update(task, description=f"generate {name}_{index}")
            folder = dataset_folder(name)
            relative = f"{folder}/{folder}_{index}.root"
            (out_dir / folder).mkdir(exist_ok=True)
            remove_stale_temp(out_dir / folder)
            first = sum(_split(counts[name], gen.files_per_sample)[:index])
            with JetFileWriter(out_dir / relative, compression=gen.compression) as writer:
                for b, block_start in enumerate(range(0, n_events, BLOCK_EVENTS)):
                    n = min(BLOCK_EVENTS, n_events - block_start)
                    writer.extend(generate_jet_block(block_rng(gen.seed, name, index, b), samples[name].process, n,
                                                     first + block_start))
            files.setdefault(name, []).append(relative)
            bar.advance(task)
    fileset = {name: {"files": {f: "Events" for f in files[name]},
                      "metadata": {"process": s.process, "is_mc": True, "label": s.label, "xsec_pb": s.xsec_pb,
                                   "sumw": float(counts[name]), "n_events": counts[name]}}
               for name, s in samples.items()}
    path = out_dir / "fileset.json"
    write_json_atomic(out_dir / GENERATE_SETTINGS_FILE, jet_generation_settings(config))
    write_json_atomic(path, fileset)
    stage_console(quiet=not progress).print(
        f"generated {gen.events} jet events in {len(jobs)} files ({len(samples)} datasets) in "
        f"{time.perf_counter() - start:.1f} s -> {path}")
    return path
