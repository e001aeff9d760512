"""Benchmarks (jets): the taggers' padding loader against a pyarrow read and against weaver-core's loader.

Ratios against floors measured in the same run, on the same prepared jet-level files:

0. skim: events/s of the jet dataset's skim (`hepprep skim` with `processors.jets:JetProcessor`,
   AK8 with its constituents and vertices, iterative in this process, and the command as a
   user runs it, start-up included) / events/s of a plain uproot read, chunk by chunk, of
   exactly the branches the processor reads (its ``input_branches``). Goal >= 0.4.
1. loader: jets/s of one shuffled epoch of `analysis.train.jet_stream.JetBatchStream`
   ((B, N, F) constituent batches with their mask, the jet features, class and
   train_weight, as torch tensors; N = 100, B = 256, the default buffer) / jets/s of a plain
   ``pyarrow.parquet`` read of the same files and columns (the lists decoded, nothing
   padded): median over back-to-back pairs. Goal >= 0.7.
2. weaver: the same epoch through weaver-core's own loader (PyPI ``weaver-core``:
   ``SimpleIterDataset`` over the same Parquet files, a data config asking for the same
   constituent features padded to the same N with a mask, the same jet features and the
   class as label, no standardisation or reweighting of its own, a torch DataLoader of the
   same batch size) with the same number of worker processes (0 and 2): the ratio
   hepprep jets/s / weaver jets/s. Goal > 1 (faster).

The data: ``--source generated`` (default) runs `hepprep generate --kind jets` (AK8, the
W/H/top/QCD sample), the jet processor's skim and prepare; ``--source synthetic`` the
prepared-jets test helper's skim (5-60 constituents a jet, no generator). Figures go to
bench-output/jets.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from _common import measure, paired, write_result  # noqa: E402

N_CONSTITUENTS = 100
BATCH = 256


def _synthetic_prepared(work: Path, scale: float) -> Path:
    from _jet_prepare_helpers import CANDIDATE_COLUMNS, JET_CLASSES, jet_samples, write_jet_skim

    from analysis import config_from_dict
    from analysis.prepare.runner import run_prepare

    skim = write_jet_skim(work / "skim", jet_samples(scale), events_per_file=20_000, row_group_rows=20_000)
    config = config_from_dict({
        "features": ["jet_pt", "jet_eta", "jet_mass", "jet_ncand", "jet_nsv"],
        "target": {"kind": "multiclass", "class_column": "jet_label", "classes": JET_CLASSES},
        "prepare": {"objects": {"constituent_features": list(CANDIDATE_COLUMNS)}, "bucket_rows": 50_000,
                    "file_rows": 10_000, "row_group_rows": 10_000}})  # weaver splits by files among workers
    run_prepare(skim, work / "prepared", config, progress=False)
    return work / "prepared"


def _generated_prepared(work: Path, events: int) -> Path:
    import subprocess

    from analysis import load_config
    from analysis.config import config_to_toml

    # The example, with files of at most 1/8 of the jets: weaver-core shares files, not rows,
    # among its workers.
    example = work / "jets.toml"
    example.write_text(config_to_toml(load_config(HERE.parent / "examples" / "jets.toml", {
        "prepare": {"file_rows": max(1000, events // 4), "row_group_rows": max(1000, events // 8)}})))
    hepprep = [sys.executable, "-m", "analysis.cli"]
    subprocess.run([*hepprep, "generate", "--kind", "jets", "--config", str(example), "--events", str(events),
                    "--out", str(work / "gen"), "--quiet"], check=True)
    subprocess.run([*hepprep, "skim", str(work / "gen" / "fileset.json"), "--config", str(example),
                    "--out", str(work / "skim"), "--quiet"], check=True)
    subprocess.run([*hepprep, "prepare", str(work / "skim"), "--config", str(example),
                    "--out", str(work / "prepared"), "--quiet"], check=True)
    return work / "prepared"


def bench_skim(work: Path, *, repeat: int) -> dict:
    import subprocess

    import uproot

    from analysis import load_config, run_skim
    from analysis.skim.plugins import load_processor

    example = work / "jets.toml"
    config = load_config(example, {"skim": {"executor": "iterative"}})
    fileset = work / "gen" / "fileset.json"
    entries = json.loads(fileset.read_text())
    files = [(fileset.parent / f if not Path(f).is_absolute() else Path(f), t)
             for e in entries.values() for f, t in e["files"].items()]
    processor = load_processor(config, out_dir=".")
    keys = set(uproot.open(files[0][0])[files[0][1]].keys())
    branches = sorted(set(processor.input_branches()) & keys)
    chunk = config.skim.chunksize
    events = sum(uproot.open(p)[t].num_entries for p, t in files)

    def floor():
        for path, tree in files:
            with uproot.open(path) as handle:
                t = handle[tree]
                for start in range(0, t.num_entries, chunk):
                    t.arrays(branches, entry_start=start, entry_stop=min(start + chunk, t.num_entries))

    def skim():
        run_skim(fileset, work / f"skim-{time.monotonic_ns()}", config, progress=False)

    def command():
        subprocess.run([sys.executable, "-m", "analysis.cli", "skim", str(fileset), "--config", str(example),
                        "--executor", "iterative", "--out", str(work / f"skim-{time.monotonic_ns()}"), "--quiet"],
                       check=True)

    floor()  # page cache
    times = {"floor": [], "skim": [], "command": []}
    for _ in range(repeat):
        for name, fn in (("floor", floor), ("skim", skim), ("command", command)):
            times[name].append(measure(fn, sample_rss=False).seconds)
    best = {k: min(v) for k, v in times.items()}
    jets = pq.read_metadata(next((work / "skim").rglob("part-*.parquet"))).num_rows if (work / "skim").exists() else None
    return {"skim_events": events, "skim_branches": len(branches), "skim_chunksize": chunk,
            "uproot_events_per_s": round(events / best["floor"]), "skim_events_per_s": round(events / best["skim"]),
            "skim_command_events_per_s": round(events / best["command"]),
            "skim_ratio_vs_uproot": round(best["floor"] / best["skim"], 3),
            "skim_command_ratio_vs_uproot": round(best["floor"] / best["command"], 3),
            "skim_goal": ">= 0.4", "skim_first_part_jets": jets}


def _inputs(prep: Path) -> tuple[list[Path], dict, list[str], list[str]]:
    stats = json.loads((prep / "stats.json").read_text())
    files = sorted((prep / "train").glob("part-*.parquet"))
    cands = [c for c in stats["constituents"]["feature_order"] if c.startswith("cand_")]
    return files, stats, cands, list(stats["feature_order"])


def _hepprep_epoch(files, stats, cands, jets, *, num_workers: int):
    from analysis.train.jet_stream import JetBatchStream, JetRowLayout
    from analysis.train.stream import BatchLoader

    layout = JetRowLayout(N_CONSTITUENTS, tuple(cands), tuple(jets))
    # As the tagger trainer reads it: the default [train.tagger] buffer and read threads.
    stream = JetBatchStream(files, layout, stats=stats, batch_size=BATCH, shuffle_buffer=20_000, seed=1,
                            as_numpy=True, targets=("class",))
    loader = BatchLoader(stream, num_workers=num_workers)

    def epoch():
        stream.set_epoch(stream.epoch + 1)
        n = 0
        for x, _, _ in loader:
            parts = layout.unpack(x)
            n += parts["constituents"].shape[0]
        return n

    return epoch


def _weaver_config(path: Path, cands, jets) -> Path:
    import yaml

    config = {
        "treename": None,
        "selection": None,
        "new_variables": {"cand_mask": "ak.ones_like(cand_deta)"},
        # center None: no standardisation of weaver's own (the files hold prepare's)
        "preprocess": {"method": "manual", "data_fraction": 1.0},
        "inputs": {
            "pf_features": {"length": N_CONSTITUENTS, "pad_mode": "constant",
                            "vars": [[c, None] for c in cands]},
            "pf_mask": {"length": N_CONSTITUENTS, "pad_mode": "constant", "vars": [["cand_mask", None]]},
            "jet_features": {"length": 1, "pad_mode": "constant", "vars": [[j, None] for j in jets]},
        },
        "labels": {"type": "custom", "value": {"target": "jet_label"}},  # weaver evaluates names: `class` is a keyword
        "observers": [],
        "weights": None,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _weaver_epoch(files, cands, jets, work: Path, *, num_workers: int):
    import torch
    from weaver.utils.dataset import SimpleIterDataset

    config = _weaver_config(work / "weaver_data.yaml", cands, jets)
    dataset = SimpleIterDataset({"_": [str(f) for f in files]}, str(config), for_training=True,
                                load_range_and_fraction=((0, 1), 1, 1), fetch_by_files=True,
                                fetch_step=max(1, len(files) // 4), async_load=True, name="train")
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=num_workers, drop_last=False,
                                         pin_memory=False, persistent_workers=False)

    def epoch():
        n = 0
        for x, _, _ in loader:
            n += x["pf_features"].shape[0]
        return n

    return epoch


def _pyarrow_floor(files, columns):
    def read():
        return sum(pq.read_table(path, columns=columns).num_rows for path in files)

    return read


def bench_loader(prep: Path, work: Path, *, pairs: int) -> dict:
    import torch  # noqa: F401 - imported before timing: the import is not loader time

    files, stats, cands, jets = _inputs(prep)
    floor = _pyarrow_floor(files, [*cands, *jets, "class", "train_weight"])
    rows = floor()  # warms the page cache
    ours = {w: _hepprep_epoch(files, stats, cands, jets, num_workers=w) for w in (0, 2)}
    assert ours[0]() == ours[2]() == rows
    peak = {"hepprep": measure(ours[0]).peak_rss_mib, "pyarrow": measure(floor).peak_rss_mib}
    floors, runs, ratios = paired(floor, ours[0], pairs)
    figures = {"jets": rows, "files": len(files), "constituent_features": len(cands), "jet_features": len(jets),
               "n_constituents": N_CONSTITUENTS, "batch_size": BATCH,
               "mean_constituents": round(float(np.mean(pq.read_table(files, columns=[cands[0]]).column(0)
                                                       .combine_chunks().value_lengths().to_numpy())), 1),
               "pyarrow_jets_per_s": round(rows / min(m.seconds for m in floors)),
               "loader_jets_per_s": round(rows / min(m.seconds for m in runs)),
               "loader_ratio_vs_pyarrow": round(statistics.median(ratios), 3),
               "loader_ratio_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)],
               "loader_goal": ">= 0.7",
               "loader_peak_rss_mib": round(peak["hepprep"], 1), "pyarrow_peak_rss_mib": round(peak["pyarrow"], 1)}
    two = [measure(ours[2], sample_rss=False) for _ in range(3)]
    figures["loader_2workers_jets_per_s"] = round(rows / min(m.seconds for m in two))
    return figures


def bench_weaver(prep: Path, work: Path, *, rounds: int) -> dict:
    files, stats, cands, jets = _inputs(prep)
    figures = {}
    for workers in (0, 2):
        ours = _hepprep_epoch(files, stats, cands, jets, num_workers=workers)
        theirs = _weaver_epoch(files, cands, jets, work, num_workers=workers)
        n_ours, n_theirs = ours(), theirs()
        times_ours, times_theirs = [], []
        for _ in range(rounds):
            times_ours.append(measure(ours, sample_rss=False).seconds)
            times_theirs.append(measure(theirs, sample_rss=False).seconds)
        ratio = statistics.median(t / o for o, t in zip(times_ours, times_theirs))
        figures.update({f"weaver_{workers}w_jets": n_theirs, f"hepprep_{workers}w_jets": n_ours,
                        f"weaver_{workers}w_jets_per_s": round(n_theirs / min(times_theirs)),
                        f"hepprep_{workers}w_jets_per_s": round(n_ours / min(times_ours)),
                        f"hepprep_vs_weaver_{workers}w": round(ratio * n_ours / max(n_theirs, 1), 2)})
    figures["weaver_goal"] = "> 1 (hepprep faster)"
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--source", choices=["generated", "synthetic"], default="generated")
    parser.add_argument("--out", default="bench-output", help="folder for jets.json")
    parser.add_argument("--only", choices=["skim", "loader", "weaver"], action="append",
                        help="run only these parts (repeatable; default: all)")
    args = parser.parse_args(argv)
    parts = args.only or ["skim", "loader", "weaver"]
    if args.source == "synthetic" and "skim" in parts:
        parts.remove("skim")  # the synthetic source is a skim already
    work = Path(tempfile.mkdtemp(prefix="bench-jets-"))
    figures: dict = {"mode": "quick" if args.quick else "full", "source": args.source}
    failed = []
    try:
        t0 = time.perf_counter()
        prep = (_synthetic_prepared(work, 10 if args.quick else 60) if args.source == "synthetic"
                else _generated_prepared(work, 10_000 if args.quick else 100_000))
        figures["prepare_seconds"] = round(time.perf_counter() - t0, 1)
        sections = {"skim": lambda: bench_skim(work, repeat=1 if args.quick else 3),
                    "loader": lambda: bench_loader(prep, work, pairs=3 if args.quick else 7),
                    "weaver": lambda: bench_weaver(prep, work, rounds=1 if args.quick else 3)}
        for name in parts:
            try:
                figures.update(sections[name]())
            except Exception as err:  # noqa: BLE001 - recorded in the result and the exit code
                figures[f"{name}_error"] = f"{type(err).__name__}: {err}"
                failed.append(name)
            print(f"bench_jets: {name} done", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "skim_ratio_vs_uproot" in figures:
        figures["skim_goal_met"] = figures["skim_ratio_vs_uproot"] >= 0.4
    if "loader_ratio_vs_pyarrow" in figures:
        figures["loader_goal_met"] = figures["loader_ratio_vs_pyarrow"] >= 0.7
    if "hepprep_vs_weaver_0w" in figures:
        figures["weaver_goal_met"] = min(figures["hepprep_vs_weaver_0w"], figures["hepprep_vs_weaver_2w"]) > 1
    write_result("jets", figures, args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
