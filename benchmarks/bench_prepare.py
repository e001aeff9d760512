"""Benchmark (prepare stage, issue acceptance 6): memory bounded by the bucket, time near I/O.

Writes two synthetic skims four times apart in size (default 5M and 20M rows, DESIGN.md
columns, 500k-row files with 100k-row row groups like the skim's chunks), then for each:

- the floor: one pyarrow read + write of the same files (``pq.read_table`` /
  ``pq.write_table``, file by file), measured in this run;
- ``run_prepare`` on a 2-worker LocalCluster with the default buckets (1M rows).

Prints peak RSS of the whole process tree (dask workers included) for both sizes and the
growth ratio (goal < 1.5), and prepare's wall time over the floor (goal <= 3).
``--quick`` runs 0.25M and 1M rows with 100k-row buckets as a smoke test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

import pyarrow.parquet as pq  # noqa: E402
from _common import measure, write_result  # noqa: E402
from _prepare_helpers import default_samples, write_skim  # noqa: E402

from analysis.config import config_from_dict  # noqa: E402
from analysis.prepare.runner import run_prepare  # noqa: E402

FIXTURE_ROWS = sum(s.events for s in default_samples())


def make_skim(root: Path, rows: int, *, rows_per_file: int, row_group_rows: int) -> int:
    """A synthetic skim of about `rows` rows; returns the exact count."""
    samples = default_samples(scale=rows / FIXTURE_ROWS)
    write_skim(root, samples, rows_per_file=rows_per_file, row_group_rows=row_group_rows)
    return sum(s.events for s in samples)


def pyarrow_copy(src: Path, dst: Path) -> None:
    """The floor: read every skim file with pyarrow and write it back, one file at a time."""
    for path in sorted(src.glob("*/part-*.parquet")):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pq.read_table(path), target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.25M and 1M rows (smoke test)")
    parser.add_argument("--rows", type=int, default=None, help="rows of the larger skim (default 20M)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    large = args.rows or (1_000_000 if args.quick else 20_000_000)
    small = large // 4
    bucket = 100_000 if args.quick else 1_000_000
    cfg = config_from_dict({
        "prepare": {"bucket_rows": bucket, "file_rows": bucket, "row_group_rows": bucket // 10},
        "cluster": {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "6GiB"},
    })
    work = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir=args.workdir))
    figures: dict[str, object] = {"bucket_rows": bucket, "cpu_count": os.cpu_count()}
    try:
        for tag, rows in (("small", small), ("large", large)):
            skim = work / f"skim-{tag}"
            print(f"writing a {rows:,}-row synthetic skim ...", flush=True)
            figures[f"rows_{tag}"] = make_skim(skim, rows, rows_per_file=min(500_000, bucket * 5),
                                               row_group_rows=min(100_000, bucket))
            figures[f"skim_bytes_{tag}"] = sum(p.stat().st_size for p in skim.rglob("*.parquet"))
            floor = measure(lambda: pyarrow_copy(skim, work / f"copy-{tag}"))
            shutil.rmtree(work / f"copy-{tag}")
            prep = measure(lambda: run_prepare(skim, work / f"prep-{tag}", cfg, progress=False))
            manifest = prep.result
            assert sum(s["rows"] for s in manifest["splits"].values()) == figures[f"rows_{tag}"]
            figures[f"floor_{tag}"] = floor
            figures[f"prepare_{tag}"] = prep
            figures[f"time_ratio_{tag}"] = round(prep.seconds / floor.seconds, 3)
            shutil.rmtree(work / f"prep-{tag}")
            shutil.rmtree(skim)
        growth = figures["prepare_large"].peak_rss_mib / figures["prepare_small"].peak_rss_mib
        figures["rss_growth_large_over_small"] = round(growth, 3)
        figures["rss_growth_ok (< 1.5)"] = growth < 1.5
        figures["time_ratio_ok (<= 3)"] = figures["time_ratio_large"] <= 3.0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result("prepare" + ("_quick" if args.quick else ""), figures)
    if args.quick:
        # At 1M rows the cluster start-up alone is comparable to the floor: a smoke run
        # shows that everything works, the acceptance figures need the full sizes.
        print("quick run: smoke test only, the goals apply to the default sizes")
        return 0
    return 0 if figures["rss_growth_ok (< 1.5)"] and figures["time_ratio_ok (<= 3)"] else 1


if __name__ == "__main__":
    sys.exit(main())
