"""Benchmarks (skim stage): skim throughput against plain uproot reading the same branches.

Floor: `uproot.TTree.arrays` of exactly the branches the skim reads (the input profile's
branches and the jagged counters), over the same files in the same chunks, in this run.
Measured: `run_skim` with the iterative executor against that floor in one process, and
with the futures executor (``--workers`` processes) against the same floor run in as many
processes (a `ProcessPoolExecutor`, one file per task, pool start-up included as for the
skim). Each floor and its skim alternate `--repeat` times and the best of each counts (load
from other processes only slows a run). Printed: events/s of each, the ratios skim / floor
(goal >= 0.5 at >= 1M events, for the iterative ratio), the peak RSS of the whole process
tree and of the largest single process (per worker, for the futures runs).

    python benchmarks/bench_skim.py            # 1M generated events (sample cached in /tmp)
    python benchmarks/bench_skim.py --quick    # 60k events, a smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import uproot

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.config import config_from_dict  # noqa: E402
from analysis.generate.runner import generate_samples  # noqa: E402
from analysis.skim.runner import run_skim  # noqa: E402
from benchmarks._common import write_result  # noqa: E402
from processors.profiles import detect_profile  # noqa: E402

GOAL_RATIO = 0.5


class _RSSSampler(threading.Thread):
    """Peak RSS of this process tree, summed and of its largest single process (bytes).

    (`benchmarks._common.measure` would give the summed figure, but its sampler thread
    overrides `Thread._stop`, so its `join()` raises on Python 3.11; reported to the lead.)
    """

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.tree_peak, self.process_peak = interval, 0, 0
        self._halt = threading.Event()
        self._root = psutil.Process(os.getpid())

    def sample(self) -> None:
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return
        sizes = []
        for proc in procs:
            try:
                sizes.append(proc.memory_info().rss)
            except psutil.Error:
                pass
        self.tree_peak = max(self.tree_peak, sum(sizes))
        self.process_peak = max(self.process_peak, max(sizes, default=0))

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


def _sample(events: int, root: Path) -> Path:
    """A generated sample of about `events` simulated events (cached between runs)."""
    fileset = root / "fileset.json"
    stamp = root / "events.txt"
    if fileset.exists() and stamp.exists() and stamp.read_text() == str(events):
        return fileset
    shutil.rmtree(root, ignore_errors=True)
    config = config_from_dict({"generate": {"events": events, "files_per_sample": 2,
                                            "data_scale": 0.02, "seed": 5}})
    generate_samples(root, config, progress=False)
    stamp.write_text(str(events))
    return fileset


def _chunks(n: int, chunksize: int) -> list[tuple[int, int]]:
    """coffea's chunking of one file (Runner: n chunks of ceil(entries / n))."""
    parts = max(round(n / chunksize), 1)
    size = math.ceil(n / parts)
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _read_file(path: Path, tree: str, chunksize: int) -> int:
    """Read the skim's branches of one file, chunk by chunk, with plain uproot; entries read."""
    events = 0
    with uproot.open(path) as file:
        t = file[tree]
        branches = sorted(set(detect_profile(t.keys()).branches) | {"nTau", "nJet"}
                          | ({"genWeight"} & set(t.keys())))
        for start, stop in _chunks(t.num_entries, chunksize):
            arrays = t.arrays(branches, entry_start=start, entry_stop=stop)
            events += len(arrays)
    return events


def _files(fileset: Path) -> list[tuple[Path, str]]:
    return [(fileset.parent / name, tree) for entry in json.loads(fileset.read_text()).values()
            for name, tree in entry["files"].items()]


def _uproot_floor(fileset: Path, chunksize: int) -> int:
    """Read the skim's branches of every file, chunk by chunk, with plain uproot."""
    return sum(_read_file(path, tree, chunksize) for path, tree in _files(fileset))


def _uproot_floor_parallel(fileset: Path, chunksize: int, workers: int) -> int:
    """`_uproot_floor` in `workers` processes, one file per task (the futures executor's floor)."""
    files = _files(fileset)
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(_read_file, *zip(*files), [chunksize] * len(files)))


def _run(label: str, fn, events: int, repeat: int) -> dict:
    """Best of `repeat` timed calls of ``fn(i)`` (load from other processes only slows a run
    down, so the fastest is the least disturbed); peak RSS over all of them."""
    best, tree_peak, process_peak = math.inf, 0, 0
    for i in range(repeat):
        sampler = _RSSSampler()
        sampler.start()
        start = time.perf_counter()
        try:
            fn(i)
        finally:
            best = min(best, time.perf_counter() - start)
            sampler.stop()
        tree_peak, process_peak = max(tree_peak, sampler.tree_peak), max(process_peak, sampler.process_peak)
    figures = {"seconds": round(best, 3), "events_per_s": round(events / best), "repeats": repeat,
               "peak_rss_tree_mib": round(tree_peak / 2**20, 1),
               "peak_rss_largest_process_mib": round(process_peak / 2**20, 1)}
    print(f"  {label}: {figures}", flush=True)
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60k events: a smoke run")
    parser.add_argument("--events", type=int, default=None, help="simulated events (default 1M)")
    parser.add_argument("--chunksize", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="alternating floor/skim runs; best of each")
    parser.add_argument("--sample-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "hepprep-bench-skim")
    args = parser.parse_args(argv)
    n = args.events or (60_000 if args.quick else 1_000_000)
    chunksize = min(args.chunksize, 20_000) if args.quick else args.chunksize

    t0 = time.perf_counter()
    fileset = _sample(n, args.sample_dir / f"events-{n}")
    print(f"sample ready in {time.perf_counter() - t0:.0f} s: {fileset}", flush=True)
    config = config_from_dict({})
    total = sum(uproot.open(fileset.parent / f)["Events"].num_entries
                for e in json.loads(fileset.read_text()).values() for f in e["files"])

    figures: dict = {"events": total, "chunksize": chunksize, "goal_ratio": GOAL_RATIO}
    w = args.workers

    def skim(executor: str, **options):
        return lambda i: run_skim(fileset, Path(tmp) / f"{executor}-{time.monotonic_ns()}", config,
                                  executor=executor, chunksize=chunksize, progress=False, **options)

    with tempfile.TemporaryDirectory(prefix="bench-skim-") as tmp:
        # Floor and skim alternate, so a burst of load from elsewhere hits both alike.
        pairs = {"iterative": ("uproot floor", lambda i: _uproot_floor(fileset, chunksize),
                               "skim iterative", skim("iterative")),
                 "futures": (f"uproot floor x{w} processes",
                             lambda i: _uproot_floor_parallel(fileset, chunksize, w),
                             f"skim futures x{w}", skim("futures", workers=w))}
        best: dict = {}
        for kind, (floor_label, floor, skim_label, run) in pairs.items():
            for _ in range(args.repeat):
                for label, fn in ((floor_label, floor), (skim_label, run)):
                    r = _run(label, fn, total, 1)
                    if label not in best or r["seconds"] < best[label]["seconds"]:
                        best[label] = r
        rows = sum(1 for _ in Path(tmp).glob("futures-*/*/part-*.parquet")) // args.repeat
    for r in best.values():
        r["repeats"] = args.repeat
    read, it = best["uproot floor"], best["skim iterative"]
    read_w, fu = best[f"uproot floor x{w} processes"], best[f"skim futures x{w}"]
    figures["uproot_floor"] = read
    figures["skim_iterative"] = it
    figures[f"uproot_floor_{w}_processes"] = read_w
    figures[f"skim_futures_{w}_workers"] = fu
    figures["parts"] = rows
    figures["ratio_iterative_vs_uproot"] = round(it["events_per_s"] / read["events_per_s"], 3)
    figures[f"ratio_futures_{w}_vs_uproot_{w}_processes"] = round(fu["events_per_s"] / read_w["events_per_s"], 3)
    figures[f"ratio_futures_{w}_vs_uproot"] = round(fu["events_per_s"] / read["events_per_s"], 3)
    figures["peak_rss_per_worker_mib"] = fu["peak_rss_largest_process_mib"]
    figures["meets_goal"] = figures["ratio_iterative_vs_uproot"] >= GOAL_RATIO and total >= 1_000_000
    write_result("skim_quick" if args.quick else "skim", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
