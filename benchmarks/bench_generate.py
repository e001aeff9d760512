"""Benchmarks (generate stage): synthetic-sample generation speed in events per second per core.

Runs `generate_samples` in this one process (so events per CPU-second = events per second
per core, whatever else loads the machine) on the default sample (300k simulated events plus the pseudo-data) with LZ4,
then ZLIB, ZSTD and LZMA, and reports throughput, file sizes and peak RSS. Two references:

- the issue's goal, 100k events/s/core with LZ4;
- a floor measured in the same run: uproot writing the same, already generated events
  (the writer alone), which no generator can beat.

Usage: ``python benchmarks/bench_generate.py [--quick]`` (``--quick``: 30k events).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.config import config_from_dict  # noqa: E402
from analysis.generate.layout import events_to_branches, write_events  # noqa: E402
from analysis.generate.runner import generate_dataset_file, generate_samples  # noqa: E402
from benchmarks._common import write_result  # noqa: E402

GOAL_EVENTS_PER_S_PER_CORE = 100_000
COMPRESSIONS = ["LZ4:1", "ZLIB:1", "ZSTD:5", "LZMA:6"]


def _peak_rss_mib() -> float:
    # Generation runs in this one process (no workers), so the kernel's high-water mark of
    # this process is the peak RSS. (KiB on Linux.)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(out: Path, events: int, compression: str) -> dict:
    config = config_from_dict({"generate": {"events": events, "compression": compression}})
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fileset_path = generate_samples(out, config, progress=False)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    fileset = json.loads(Path(fileset_path).read_text())
    n = sum(e["metadata"]["n_events"] for e in fileset.values())
    size = sum(p.stat().st_size for p in out.rglob("*.root"))
    return {"compression": compression, "events": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "events_per_s_per_core": round(n / cpu), "events_per_s_wall": round(n / wall),
            "bytes": size, "bytes_per_event": round(size / n, 1), "peak_rss_mib_so_far": round(_peak_rss_mib(), 1)}


def _writer_floor(out: Path, events: int) -> dict:
    """uproot alone: write already generated events (the DY dataset) with LZ4."""
    config = config_from_dict({"generate": {"events": events, "files_per_sample": 1}})
    batch, _ = generate_dataset_file(config, "DYJetsToLL", 0, events)
    branches = events_to_branches(batch.scalars, batch.collections, batch.n)
    cpu0 = time.process_time()
    write_events(out / "floor.root", branches, compression="LZ4:1")
    cpu = time.process_time() - cpu0
    return {"events": batch.n, "cpu_s": round(cpu, 3), "events_per_s_per_core": round(batch.n / cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30k events instead of the default 300k")
    args = parser.parse_args()
    events = 30_000 if args.quick else 300_000
    tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    try:
        # Warm-up (imports, first-call overheads) so the timed runs measure generation.
        generate_samples(tmp / "warm", config_from_dict({"generate": {"events": 2000, "data_scale": 0.1}}),
                         progress=False)
        runs = {c.split(":")[0]: _run(tmp / c.replace(":", "_"), events, c) for c in COMPRESSIONS}
        floor = _writer_floor(tmp, events // 3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lz4 = runs["LZ4"]
    figures = {
        "events_per_s_per_core_lz4": lz4["events_per_s_per_core"],
        "ratio_to_goal_100k": round(lz4["events_per_s_per_core"] / GOAL_EVENTS_PER_S_PER_CORE, 2),
        "writer_floor_events_per_s_per_core": floor["events_per_s_per_core"],
        "ratio_to_writer_floor": round(lz4["events_per_s_per_core"] / floor["events_per_s_per_core"], 2),
        "peak_rss_mib_lz4": lz4["peak_rss_mib_so_far"],  # LZ4 runs first: its peak is this
        **{f"run_{k}": v for k, v in runs.items()},
        "writer_floor": floor,
        "quick": args.quick,
    }
    write_result("generate", figures)


if __name__ == "__main__":
    main()
