"""Benchmarks (all stages): timing and peak-memory helpers shared by every bench_*.py.

Absolute times on shared machines are noise; every benchmark reports a ratio against a
floor measured in the same run, and the peak resident memory of the whole process tree
(this process and every child, e.g. dask workers), sampled while the work runs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = ["Measurement", "measure", "paired", "write_result"]


@dataclass
class Measurement:
    seconds: float
    peak_rss_mib: float  # max over samples of the summed RSS of this process and its children
    result: Any = None


class _TreeRSSSampler(threading.Thread):
    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = 0
        self._stop_event = threading.Event()
        self._root = psutil.Process(os.getpid())

    def sample(self) -> None:
        procs = [self._root]
        try:
            procs += self._root.children(recursive=True)
        except psutil.Error:
            pass
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.sample()
        return self.peak


def measure(fn: Callable[[], Any], *, interval: float = 0.05, sample_rss: bool = True) -> Measurement:
    """Run ``fn()`` once; wall time and peak RSS of the whole process tree meanwhile.

    ``sample_rss=False`` times without the sampling thread (``peak_rss_mib`` is then NaN):
    for multi-threaded Python work of a fraction of a second, the sampler's own share of
    the interpreter shows in the time.
    """
    sampler = _TreeRSSSampler(interval) if sample_rss else None
    if sampler is not None:
        sampler.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        peak = sampler.stop() if sampler is not None else float("nan")
    return Measurement(seconds=seconds, peak_rss_mib=peak / 2**20, result=result)


def paired(floor: Callable[[], Any], run: Callable[[], Any], pairs: int):
    """``pairs`` runs of ``floor`` and ``run`` in turn; their measurements and the ratio of each pair.

    The machine is shared and its speed drifts from second to second: a floor and a run taken
    back to back see the same machine, so the median of the pairs' ratios is steadier than the
    ratio of two best-ofs taken apart. No memory sampler runs meanwhile (its thread would take
    a share of these sub-second multi-threaded runs).
    """
    floors, runs = [], []
    for _ in range(pairs):
        floors.append(measure(floor, sample_rss=False))
        runs.append(measure(run, sample_rss=False))
    return floors, runs, [f.seconds / r.seconds for f, r in zip(floors, runs)]


def write_result(name: str, figures: dict[str, Any], out_dir: str | Path = "bench-output") -> Path:
    """Write one benchmark's figures to ``bench-output/<name>.json`` and print them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    clean = {k: (asdict(v) if isinstance(v, Measurement) else v) for k, v in figures.items()}
    for v in clean.values():
        if isinstance(v, dict):
            v.pop("result", None)
    path.write_text(json.dumps(clean, indent=2, default=str) + "\n")
    print(f"[{name}]")
    for key, value in clean.items():
        print(f"  {key}: {value}")
    return path
