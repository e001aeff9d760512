"""Benchmarks (skim stage, scale-out): skim wall time with 1 and 2 futures workers on >= 10M events.

Floor: the same skim of the same files with 1 worker process, measured in this run.
Printed: the scaling ratio t(1 worker) / t(2 workers) (2.0 is perfect on two free cores),
the parallel efficiency (ratio / 2), events/s of each run, and the peak RSS of the whole
process tree (parent + worker processes). The load average before and after is recorded:
on a machine shared with other jobs the ratio measures the cores that were free.

The generated sample is cached under ``bench-output/scaling-sample-<events>/`` (10M events
are ~5 GB and a few minutes to generate); delete it to regenerate.

    python benchmarks/bench_scaling.py             # 10M generated events
    python benchmarks/bench_scaling.py --quick     # 200k events, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.config import config_from_dict  # noqa: E402
from analysis.generate.runner import generate_samples  # noqa: E402
from analysis.skim.runner import run_skim  # noqa: E402
from benchmarks._common import measure, write_result  # noqa: E402

BENCH_OUT = Path(__file__).resolve().parents[1] / "bench-output"
FILES_PER_SAMPLE = 4  # 36 files: both workers always have a file of their own to read


def cached_sample(events: int) -> Path:
    """fileset.json of a generated sample of about `events` simulated events (made once)."""
    root = BENCH_OUT / f"scaling-sample-{events}"
    fileset = root / "fileset.json"
    if fileset.exists():
        return fileset
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    config = config_from_dict({"generate": {"events": events, "files_per_sample": FILES_PER_SAMPLE,
                                            "seed": 2026}})
    generate_samples(root, config, progress=False)
    print(f"generated {events:,} events in {time.perf_counter() - start:.0f} s -> {root}", flush=True)
    return fileset


def skim_once(fileset: Path, workers: int, chunksize: int) -> dict:
    """One full skim with `workers` futures processes into a fresh folder (removed after)."""
    out = BENCH_OUT / f"scaling-skim-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    config = config_from_dict({"skim": {"executor": "futures", "workers": workers, "chunksize": chunksize}})
    run = measure(lambda: run_skim(fileset, out, config, progress=False))
    summary = run.result
    shutil.rmtree(out, ignore_errors=True)
    if not summary["complete"]:
        raise SystemExit(f"the {workers}-worker skim did not complete: {json.dumps(summary)}")
    return {"seconds": round(run.seconds, 2), "events": summary["events"], "rows": summary["rows"],
            "chunks": summary["chunks"], "events_per_s": round(summary["events"] / run.seconds),
            "peak_rss_tree_mib": round(run.peak_rss_mib, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="simulated events to skim")
    parser.add_argument("--chunksize", type=int, default=250_000, help="events per chunk")
    parser.add_argument("--quick", action="store_true", help="200k events, a smoke run")
    args = parser.parse_args()
    events = 200_000 if args.quick else args.events
    chunksize = 25_000 if args.quick else args.chunksize

    fileset = cached_sample(events)
    load_before = os.getloadavg()
    one = skim_once(fileset, 1, chunksize)
    two = skim_once(fileset, 2, chunksize)
    load_after = os.getloadavg()
    if one["rows"] != two["rows"] or one["events"] != two["events"]:
        raise SystemExit(f"1 and 2 workers disagree: {one} vs {two}")
    ratio = one["seconds"] / two["seconds"]
    write_result("scaling_quick" if args.quick else "scaling", {
        "events": one["events"], "chunksize": chunksize, "chunks": one["chunks"],
        "files": FILES_PER_SAMPLE * len(json.loads(fileset.read_text())),
        "cpu_count": os.cpu_count(),
        "load_average_1min_before": round(load_before[0], 2),
        "load_average_1min_after": round(load_after[0], 2),
        "skim_1_worker": one, "skim_2_workers": two,
        "scaling_ratio_t1_over_t2": round(ratio, 3),
        "parallel_efficiency": round(ratio / 2, 3),
    })


if __name__ == "__main__":
    main()
