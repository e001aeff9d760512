"""Benchmarks (all stages): `make bench` runs every benchmarks/bench_*.py in turn.

Each benchmark is a standalone script that prints its figures (ratios against a floor
measured in the same run, and peak RSS) and writes bench-output/<name>.json. Pass names
to run a subset: ``python benchmarks/run_all.py skim prepare``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv]
    failed = []
    for script in scripts:
        print(f"=== {script.stem} ===", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"=== {script.stem}: exit {rc} after {time.perf_counter() - start:.0f} s ===", flush=True)
        if rc:
            failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
