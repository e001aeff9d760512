"""Benchmarks (skim stage): skim throughput against plain uproot, and the executors against each other.

Floor: `uproot.TTree.arrays` of exactly the branches the skim reads (the input profile's
branches, the jagged counters and, for simulation, the generator truth's GenPart branches), over the same files in the same chunks, in this run.
Measured: `run_skim` with the iterative executor against that floor in one process, and
with the futures executor (``--workers`` processes) against the same floor run in as many
processes (a `ProcessPoolExecutor`, one file per task, pool start-up included as for the
skim). Each floor and its skim alternate `--repeat` times and the best of each counts (load
from other processes only slows a run). Printed: events/s of each, the ratios skim / floor
(goal >= 0.5 at >= 1M events, for the iterative ratio), the peak RSS of the whole process
tree and of the largest single process (per worker, for the futures runs).

Executors (issue 14), each a fresh ``hepprep skim`` process as a user runs it (a process
keeps its worker server, so repeats inside one process would hide the workers' start):

* ``default / iterative`` at ``--events`` (1M): ``hepprep skim`` with its defaults against
  ``--executor iterative`` (goal <= 1.1);
* ``2 workers / 1 worker`` speed-up at ``--scale-events`` (10M): ``--executor futures``
  with 2 worker processes against 1 (goal >= 1.8), and the default against iterative there.

mu-tau_h (issue 14): `run_skim` of ``processors.mutau:MuTauProcessor`` (iterative, in one
process) on a generated mu-tau_h sample of ``--events`` simulated events (examples/mutau.toml's
processes) against the floor of plain uproot reading the branches that processor reads, in
the same chunks (goal >= 0.5).

The two of each pair alternate `--repeat` times; printed are the best of each, the median
of the pairs' ratios (the figure the goals are checked on), which executor the default
chose, the peak RSS of the process tree, and the machine (CPUs, load average).

    python benchmarks/bench_skim.py            # 1M and 10M generated events (samples cached in /tmp)
    python benchmarks/bench_skim.py --quick    # 60k and 600k events, a smoke run
    python benchmarks/bench_skim.py --only mutau
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import uproot

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.config import config_from_dict, load_config  # noqa: E402
from analysis.generate.runner import generate_samples  # noqa: E402
from analysis.skim.plugins import load_processor  # noqa: E402
from analysis.skim.runner import run_skim  # noqa: E402
from benchmarks._common import write_result  # noqa: E402
from processors.profiles import detect_profile  # noqa: E402
from processors.truth import truth_branches  # noqa: E402

GOAL_RATIO = 0.5
GOAL_DEFAULT_VS_ITERATIVE = 1.1  # at most, at 1M events
GOAL_SPEEDUP_2_WORKERS = 1.8  # at least, at 10M events
REPO = Path(__file__).resolve().parents[1]


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


def _read_file(path: Path, tree: str, is_mc: bool, chunksize: int) -> int:
    """Read the skim's branches of one file, chunk by chunk, with plain uproot; entries read."""
    events = 0
    with uproot.open(path) as file:
        t = file[tree]
        # the di-tau processor also reads the generator truth of simulation
        branches = sorted(set(detect_profile(t.keys()).branches) | {"nTau", "nJet"}
                          | ({"genWeight"} & set(t.keys())) | set(truth_branches(t.keys(), is_mc=is_mc)))
        for start, stop in _chunks(t.num_entries, chunksize):
            arrays = t.arrays(branches, entry_start=start, entry_stop=stop)
            events += len(arrays)
    return events


def _files(fileset: Path) -> list[tuple[Path, str, bool]]:
    return [(fileset.parent / name, tree, bool(entry["metadata"].get("is_mc"))) for entry in
            json.loads(fileset.read_text()).values() for name, tree in entry["files"].items()]


def _uproot_floor(fileset: Path, chunksize: int) -> int:
    """Read the skim's branches of every file, chunk by chunk, with plain uproot."""
    return sum(_read_file(path, tree, is_mc, chunksize) for path, tree, is_mc in _files(fileset))


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


def _cli_skim(fileset: Path, out: Path, flags: list[str]) -> str:
    """One ``hepprep skim`` in a new process; its summary line (it names where the chunks ran)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "analysis.cli", "skim", str(fileset), "--out", str(out),
                           "--quiet", *flags], capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if done.returncode:
        raise RuntimeError(f"hepprep skim {' '.join(flags)} failed: {done.stderr[-2000:]}")
    shutil.rmtree(out)
    return done.stderr.strip().splitlines()[-1]


def _ran_in(summary_line: str) -> str:
    if "worker processes" in summary_line:
        return "futures (" + summary_line.split(" chunks run in ")[1].split(",")[0] + ")"
    return "iterative (in this process)" if "in this process" in summary_line else summary_line


def _pair(label: str, fileset: Path, events: int, tmp: Path, a: tuple[str, list[str]],
          b: tuple[str, list[str]], repeat: int) -> dict:
    """``a`` and ``b`` (name, flags) alternating ``repeat`` times: times of ``a / b``."""
    runs: dict[str, list[dict]] = {a[0]: [], b[0]: []}
    where: dict[str, str] = {}
    for i in range(repeat):
        for name, flags in (a, b) if i % 2 == 0 else (b, a):  # each goes first as often
            lines: list[str] = []

            def once(_i: int, name: str = name, flags: list[str] = flags, lines: list[str] = lines) -> None:
                lines.append(_cli_skim(fileset, tmp / f"{name}-{time.monotonic_ns()}", flags))

            r = _run(f"{label}: {name}", once, events, 1)
            where[name] = _ran_in(lines[-1])
            runs[name].append(r)
    ratios = [x["seconds"] / y["seconds"] for x, y in zip(runs[a[0]], runs[b[0]])]
    best = {name: min(rs, key=lambda r: r["seconds"]) for name, rs in runs.items()}
    return {"events": events, "repeats": repeat,
            **{name: {**best[name], "ran": where[name], "all_seconds": [r["seconds"] for r in rs]}
               for name, rs in runs.items()},
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_of_best": round(best[a[0]]["seconds"] / best[b[0]]["seconds"], 3),
            "ratios": [round(x, 3) for x in ratios]}


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "cpu": platform.processor() or platform.machine(),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def executors(args: argparse.Namespace, n: int, scale_n: int) -> dict:
    """The executor figures of issue 14: default / iterative, and 2 workers against 1."""
    figures: dict = {"machine_before": _machine()}
    with tempfile.TemporaryDirectory(prefix="bench-skim-exec-") as tmp:
        small = _sample(n, args.sample_dir / f"events-{n}")
        figures["default_vs_iterative"] = d = _pair(
            "default vs iterative", small, n, Path(tmp), ("default", []),
            ("iterative", ["--executor", "iterative"]), args.repeat)
        d["goal_at_most"] = GOAL_DEFAULT_VS_ITERATIVE
        d["meets_goal"] = d["ratio_median"] <= GOAL_DEFAULT_VS_ITERATIVE
        print(f"default / iterative at {n:,} events: {d['ratio_median']} (median of {args.repeat} pairs; "
              f"goal <= {GOAL_DEFAULT_VS_ITERATIVE}); the default ran {d['default']['ran']}", flush=True)
        if scale_n:
            t0 = time.perf_counter()
            large = _sample(scale_n, args.sample_dir / f"events-{scale_n}")
            print(f"sample ready in {time.perf_counter() - t0:.0f} s: {large}", flush=True)
            figures["workers_1_vs_2"] = w = _pair(
                "futures 1 vs 2 workers", large, scale_n, Path(tmp),
                ("1 worker", ["--executor", "futures", "--workers", "1"]),
                ("2 workers", ["--executor", "futures", "--workers", "2"]), args.repeat)
            w["speedup_median"] = w.pop("ratio_median")
            w["speedup_of_best"] = w.pop("ratio_of_best")
            w["speedups"] = w.pop("ratios")
            w["goal_at_least"] = GOAL_SPEEDUP_2_WORKERS
            w["meets_goal"] = w["speedup_median"] >= GOAL_SPEEDUP_2_WORKERS and scale_n >= 10_000_000
            print(f"2 workers / 1 worker speed-up at {scale_n:,} events: {w['speedup_median']} (median of "
                  f"{args.repeat} pairs; goal >= {GOAL_SPEEDUP_2_WORKERS} at 10M events)", flush=True)
            figures["default_vs_iterative_at_scale"] = ds = _pair(
                "default vs iterative (scale)", large, scale_n, Path(tmp), ("default", []),
                ("iterative", ["--executor", "iterative"]), args.repeat)
            print(f"default / iterative at {scale_n:,} events: {ds['ratio_median']}; the default ran "
                  f"{ds['default']['ran']}", flush=True)
    figures["machine_after"] = _machine()
    return figures


MUTAU_EXAMPLE = REPO / "examples" / "mutau.toml"


def _mutau_read_file(path: Path, tree: str, chunksize: int, branches: list[str]) -> int:
    events = 0
    with uproot.open(path) as file:
        t = file[tree]
        for start, stop in _chunks(t.num_entries, chunksize):
            events += len(t.arrays(branches, entry_start=start, entry_stop=stop))
    return events


def mutau(args: argparse.Namespace, n: int, chunksize: int) -> dict:
    """The mu-tau_h skim (iterative, in this process) against plain uproot reading its branches."""
    root = args.sample_dir / f"mutau-{n}"
    fileset, stamp = root / "fileset.json", root / "events.txt"
    if not (fileset.exists() and stamp.exists() and stamp.read_text() == str(n)):
        shutil.rmtree(root, ignore_errors=True)
        generate_samples(root, load_config(MUTAU_EXAMPLE, {"generate": {
            "events": n, "files_per_sample": 2, "data_scale": 0.02, "seed": 5}}), progress=False)
        stamp.write_text(str(n))
    config = load_config(MUTAU_EXAMPLE, {"skim": {"executor": "iterative", "chunksize": chunksize}})
    proc = load_processor(config, out_dir=".")
    files = [(path, tree) for path, tree, _ in _files(fileset)]
    keys = set(uproot.open(files[0][0])["Events"].keys())
    # What the processor reads of such a file: its profile's branches, the muons, the trigger,
    # the identity and weight branches and the counters of the collections.
    profile = proc.profiles.detect(keys)
    branches = sorted({*profile.branches_for(keys), *proc.muon_branches(), *proc.triggers,
                       *truth_branches(keys, is_mc=True), "genWeight", "nMuon", "nTau", "nJet"} & keys)
    total = sum(uproot.open(p)[t].num_entries for p, t in files)
    figures: dict = {"events": total, "simulated_events": n, "chunksize": chunksize,
                     "branches": len(branches), "goal_ratio": GOAL_RATIO}
    best: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-skim-mutau-") as tmp:
        def floor(_i: int) -> None:
            sum(_mutau_read_file(p, t, chunksize, branches) for p, t in files)

        def skim(_i: int) -> None:
            run_skim(fileset, Path(tmp) / f"mutau-{time.monotonic_ns()}", config, progress=False)

        for _ in range(args.repeat):
            for label, fn in (("uproot floor (mu-tau_h branches)", floor), ("skim mu-tau_h iterative", skim)):
                r = _run(label, fn, total, 1)
                if label not in best or r["seconds"] < best[label]["seconds"]:
                    best[label] = r
    floor_r, skim_r = best["uproot floor (mu-tau_h branches)"], best["skim mu-tau_h iterative"]
    figures.update(uproot_floor=floor_r, skim_iterative=skim_r,
                   ratio_skim_vs_uproot=round(skim_r["events_per_s"] / floor_r["events_per_s"], 3))
    figures["meets_goal"] = figures["ratio_skim_vs_uproot"] >= GOAL_RATIO
    print(f"mu-tau_h skim / uproot floor at {total:,} events: {figures['ratio_skim_vs_uproot']} "
          f"(goal >= {GOAL_RATIO})", flush=True)
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60k events: a smoke run")
    parser.add_argument("--events", type=int, default=None, help="simulated events (default 1M)")
    parser.add_argument("--chunksize", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="alternating floor/skim runs; best of each")
    parser.add_argument("--scale-events", type=int, default=None,
                        help="events of the 2-workers-vs-1 run (default 10M; --quick 600k; 0: none)")
    parser.add_argument("--only", choices=("floor", "executors", "mutau"), default=None,
                        help="run only the floor comparisons, the executor figures or the mu-tau_h skim")
    parser.add_argument("--sample-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "hepprep-bench-skim")
    args = parser.parse_args(argv)
    n = args.events or (60_000 if args.quick else 1_000_000)
    scale_n = args.scale_events if args.scale_events is not None else (600_000 if args.quick else 10_000_000)
    chunksize = min(args.chunksize, 20_000) if args.quick else args.chunksize
    if args.only in (None, "mutau"):
        write_result("skim_mutau_quick" if args.quick else "skim_mutau", mutau(args, n, chunksize))
        if args.only == "mutau":
            return 0
    if args.only != "floor":
        # The executors run as `hepprep skim` does by default (its chunk size), also with --quick.
        write_result("skim_executors_quick" if args.quick else "skim_executors", executors(args, n, scale_n))
        if args.only == "executors":
            return 0

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
