"""Benchmarks (training): streaming-loader throughput and xgboost.dask against single-process xgboost.

Two ratios against floors measured in the same run, on the same prepared files:

1. loader: rows/s of one epoch of `ParquetBatchStream` (row-group shuffle + shuffle
   buffer, float32 batches as torch tensors; as many read threads as pyarrow's CPU pool,
   which the floor's read uses) / rows/s of a plain ``pyarrow.parquet``
   read of the same files and columns: the median ratio over 9 back-to-back pairs of
   runs (quartiles and the best-of ratio reported beside it), timed without the memory
   sampler, which gets a run of its own; imports excluded. The stream is built once and
   each run is one epoch, as in training. Goal >= 0.5.
2. xgboost: wall time of xgboost.dask on a 2-worker LocalCluster (1 thread each) /
   single-process ``xgboost.train`` with 2 threads, same rows, parameters and number of
   rounds (the trainer's default ``num_boost_round``, no early stopping), both timed from
   the Parquet files to the trained booster (cluster start-up excluded, reported apart).
   Goal <= 1.3. One-round runs of both split the time into the fixed part (reading,
   quantile matrices) and the time per boosting round.

3. physics (acceptance 1 and 2): generate -> skim -> prepare on the default generated
   sample (config generate.events; 20k events with --quick), then the weighted test AUC
   (sklearn, sample_weight = weight) of xgboost.dask, of single-process xgboost.train on
   the same rows and parameters, and of the MLP (default config, CPU).

The throughput data are a toy prepared directory (tests/_train_helpers.py) of 21 float32
features. ``--quick`` runs a small smoke version. Figures go to bench-output/train.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from _common import measure, paired, write_result  # noqa: E402
from _train_helpers import write_prepared_dir  # noqa: E402

from analysis.config import DEFAULT_FEATURES, config_from_dict  # noqa: E402


def _pyarrow_read(files, columns):
    rows = 0
    for path in files:
        rows += pq.read_table(path, columns=columns).num_rows
    return rows


def _pyarrow_read_numpy(files, columns):
    # The same read, then the float32 matrix any trainer needs (reported, not the floor).
    rows = 0
    for path in files:
        table = pq.read_table(path, columns=columns)
        x = np.column_stack([table.column(c).to_numpy() for c in columns[:-2]]).astype(np.float32)
        rows += len(x)
    return rows


def _read_threads() -> int:
    # As many read threads as the floor's pyarrow read uses (its CPU pool: one per core).
    return pa.cpu_count()


def _loader(files, *, num_workers, buffer_rows, batch_size):
    from analysis.train.stream import BatchLoader, ParquetBatchStream

    # As the MLP trainer reads it: one stream, a new epoch (row-group order and buffer
    # draws) per iteration, torch tensors, optionally from DataLoader workers.
    stream = ParquetBatchStream(files, DEFAULT_FEATURES, batch_size=batch_size,
                                shuffle_buffer=buffer_rows, seed=1, as_numpy=True,
                                read_threads=_read_threads())
    loader = BatchLoader(stream, num_workers=num_workers)

    def epoch():
        stream.set_epoch(stream.epoch + 1)
        rows = 0
        for x, _, _ in loader:
            rows += len(x)
        return rows

    return epoch


def bench_loader(prep: Path, *, buffer_rows: int, batch_size: int, pairs: int = 9) -> dict:
    import statistics

    import torch  # noqa: F401 - imported before timing: the import is not loader time

    files = sorted((prep / "train").glob("part-*.parquet"))
    columns = [*DEFAULT_FEATURES, "label", "train_weight"]

    def floor():
        return _pyarrow_read(files, columns)

    loader0 = _loader(files, num_workers=0, buffer_rows=buffer_rows, batch_size=batch_size)
    loader2 = _loader(files, num_workers=2, buffer_rows=buffer_rows, batch_size=batch_size)
    rows = floor()  # also warms the page cache for all of them
    assert loader0() == loader2() == rows, rows
    # Memory first, before the timed runs have grown the allocators' caches.
    peak_rss = {"loader": measure(loader0).peak_rss_mib, "pyarrow": measure(floor).peak_rss_mib}
    floors, runs0, ratios0 = paired(floor, loader0, pairs)
    floors2, runs2, ratios2 = paired(floor, loader2, max(3, pairs // 3))
    floor_np = min((measure(lambda: _pyarrow_read_numpy(files, columns), sample_rss=False)
                    for _ in range(3)), key=lambda m: m.seconds)

    def best_rate(ms):
        return round(rows / min(m.seconds for m in ms))

    return {
        "loader_rows": rows,
        "loader_buffer_rows": buffer_rows,
        "loader_batch_size": batch_size,
        "loader_read_threads": _read_threads(),
        "loader_pairs": pairs,
        "pyarrow_read_rows_per_s": best_rate(floors),
        "pyarrow_read_numpy_rows_per_s": round(rows / floor_np.seconds),
        "loader_rows_per_s": best_rate(runs0),
        "loader_2workers_rows_per_s": best_rate(runs2),
        # The headline: median over back-to-back (floor, loader) pairs; the quartiles
        # show the spread, the best-of ratio what the fastest runs of each gave.
        "loader_ratio_vs_pyarrow": round(statistics.median(ratios0), 3),
        "loader_ratio_quartiles": [round(q, 3) for q in statistics.quantiles(ratios0, n=4)],
        "loader_ratio_best_of": round(min(f.seconds for f in floors)
                                      / min(r.seconds for r in runs0), 3),
        "loader_2workers_ratio_vs_pyarrow": round(statistics.median(ratios2), 3),
        "loader_goal_ratio": ">= 0.5",
        "loader_peak_rss_mib": round(peak_rss["loader"], 1),
        "pyarrow_peak_rss_mib": round(peak_rss["pyarrow"], 1),
    }


def _single_process(prep: Path, params: dict, rounds: int):
    import xgboost as xgb

    def read(split):
        files = sorted((prep / split).glob("part-*.parquet"))
        table = pa.concat_tables(pq.read_table(f, columns=[*DEFAULT_FEATURES, "label", "train_weight"])
                                 for f in files)
        x = np.column_stack([table.column(c).to_numpy() for c in DEFAULT_FEATURES])
        return x, table.column("label").to_numpy(), table.column("train_weight").to_numpy()

    x, y, w = read("train")
    xv, yv, wv = read("val")
    dtrain = xgb.QuantileDMatrix(x, y, weight=w, feature_names=DEFAULT_FEATURES)
    dval = xgb.QuantileDMatrix(xv, yv, weight=wv, ref=dtrain, feature_names=DEFAULT_FEATURES)
    return xgb.train({**params, "nthread": 2}, dtrain, num_boost_round=rounds,
                     evals=[(dval, "val")], verbose_eval=False)


def _dask(client, prep: Path, params: dict, rounds: int):
    import xgboost as xgb
    import xgboost.dask  # noqa: F401

    from analysis.train.xgb import read_split_dask

    # As the trainer reads them: balanced partitions, a multiple of the workers.
    n_workers = len(client.nthreads())
    x, y, w = read_split_dask(sorted((prep / "train").glob("part-*.parquet")), DEFAULT_FEATURES,
                              n_workers=n_workers)
    xv, yv, wv = read_split_dask(sorted((prep / "val").glob("part-*.parquet")), DEFAULT_FEATURES,
                                 n_workers=n_workers)
    dtrain = xgb.dask.DaskQuantileDMatrix(client, x, y, weight=w, feature_names=DEFAULT_FEATURES)
    dval = xgb.dask.DaskQuantileDMatrix(client, xv, yv, weight=wv, ref=dtrain,
                                        feature_names=DEFAULT_FEATURES)
    return xgb.dask.train(client, params, dtrain, num_boost_round=rounds,
                          evals=[(dval, "val")], verbose_eval=False)["booster"]


def bench_xgboost(prep: Path, *, rounds: int) -> dict:
    import dask.array  # noqa: F401 - imported before timing: imports are not training time
    import xgboost.dask  # noqa: F401

    from analysis.core.cluster import dask_client
    from analysis.train.xgb import xgboost_params

    config = config_from_dict({"cluster": {"n_workers": 2, "threads_per_worker": 1,
                                           "memory_limit": "4GiB"}})
    params = xgboost_params(config.train.xgboost, device="cpu")
    # One round first: the fixed part (read the Parquet, build the quantile matrices)
    # apart from the boosting rounds. Single-process runs before the cluster starts, so
    # their peak memory is theirs alone.
    single_1 = measure(lambda: _single_process(prep, params, 1))
    single = measure(lambda: _single_process(prep, params, rounds))
    start = time.perf_counter()
    with dask_client(config.cluster) as client:
        client.wait_for_workers(2)
        startup = time.perf_counter() - start
        dask_1 = measure(lambda: _dask(client, prep, params, 1))
        distributed = measure(lambda: _dask(client, prep, params, rounds))
    ratio = distributed.seconds / single.seconds

    def per_round_ms(full, one):
        return round(1e3 * (full.seconds - one.seconds) / max(rounds - 1, 1), 1)

    return {
        "xgb_rounds": rounds,
        "xgb_single_seconds": round(single.seconds, 2),
        "xgb_dask_2workers_seconds": round(distributed.seconds, 2),
        "xgb_dask_cluster_startup_seconds": round(startup, 2),
        "xgb_dask_ratio_vs_single": round(ratio, 3),
        "xgb_goal_ratio": "<= 1.3",
        "xgb_single_fixed_seconds": round(single_1.seconds, 2),
        "xgb_dask_fixed_seconds": round(dask_1.seconds, 2),
        "xgb_single_ms_per_round": per_round_ms(single, single_1),
        "xgb_dask_ms_per_round": per_round_ms(distributed, dask_1),
        "xgb_single_peak_rss_mib": round(single.peak_rss_mib, 1),
        "xgb_dask_peak_rss_mib": round(distributed.peak_rss_mib, 1),
    }


def bench_generated(work: Path, *, events: int) -> dict:
    from _train_helpers import generated_prepared_dir, read_split
    from distributed import LocalCluster
    from sklearn.metrics import roc_auc_score
    from test_train_generated import _single_process_auc

    from analysis.config import default_config
    from analysis.train.predict import load_model
    from analysis.train.runner import run_train

    config = default_config()
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="4GiB", processes=True,
                      dashboard_address=":0") as cluster:
        t0 = time.perf_counter()
        prep = generated_prepared_dir(work / "generated", events=events,
                                      scheduler=cluster.scheduler_address)
        upstream = time.perf_counter() - t0
        test = read_split(prep, "test")
        figures = {"physics_events": events, "physics_upstream_seconds": round(upstream, 1),
                   "physics_test_rows": len(test)}
        for model in ("xgboost", "mlp"):
            model_dir = run_train(prep, work / "models" / model, config, model=model, device="cpu",
                                  scheduler=cluster.scheduler_address, progress=False)
            scores = load_model(model_dir).predict(test, standardised=True)
            figures[f"physics_{model}_test_auc"] = round(roc_auc_score(test.label, scores,
                                                                       sample_weight=test.weight), 4)
            info = json.loads((model_dir / "model_info.json").read_text())
            figures[f"physics_{model}_train_seconds"] = info["train_seconds"]
            figures[f"physics_{model}_train_rows"] = info["train_rows"]
    figures["physics_xgboost_single_test_auc"] = round(_single_process_auc(prep, config, test), 4)
    xgb_auc = figures["physics_xgboost_test_auc"]
    figures["physics_dask_minus_single_auc"] = round(xgb_auc - figures["physics_xgboost_single_test_auc"], 4)
    figures["physics_mlp_minus_xgboost_auc"] = round(figures["physics_mlp_test_auc"] - xgb_auc, 4)
    figures["physics_goals_met"] = bool(abs(figures["physics_dask_minus_single_auc"]) < 0.01
                                        and 0.80 <= xgb_auc <= 0.97
                                        and figures["physics_mlp_minus_xgboost_auc"] >= -0.03)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--out", default="bench-output", help="folder for train.json")
    parser.add_argument("--only", choices=["loader", "xgboost", "physics"], action="append",
                        help="run only these parts (repeatable; default: all)")
    args = parser.parse_args(argv)
    parts = args.only or ["loader", "xgboost", "physics"]
    from analysis.config import default_config

    train_rows = 200_000 if args.quick else 2_000_000
    rows = (train_rows, train_rows // 4, train_rows // 4)
    figures: dict = {"mode": "quick" if args.quick else "full", "train_rows": train_rows}
    failed = []
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        if {"loader", "xgboost"} & set(parts):
            t0 = time.perf_counter()
            # Prepare's defaults: files of up to 1M rows with 100k-row groups.
            prep = write_prepared_dir(work / "prepared", rows=rows, row_group_rows=100_000,
                                      file_rows=1_000_000, seed=3)
            figures["write_seconds"] = round(time.perf_counter() - t0, 1)
        sections = {
            "loader": lambda: bench_loader(prep, buffer_rows=100_000, batch_size=1024),
            # The trainer's default number of rounds (train.xgboost.num_boost_round).
            "xgboost": lambda: bench_xgboost(prep, rounds=20 if args.quick else
                                             default_config().train.xgboost.num_boost_round),
            "physics": lambda: bench_generated(work, events=20_000 if args.quick
                                               else default_config().generate.events),
        }
        for name in parts:
            # One failing part (e.g. an upstream stage under repair) must not hide the others.
            try:
                figures.update(sections[name]())
            except Exception as err:  # noqa: BLE001 - recorded in the result and the exit code
                figures[f"{name}_error"] = f"{type(err).__name__}: {err}"
                failed.append(name)
            print(f"bench_train: {name} done", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "loader_ratio_vs_pyarrow" in figures:
        figures["loader_goal_met"] = figures["loader_ratio_vs_pyarrow"] >= 0.5
    if "xgb_dask_ratio_vs_single" in figures:
        figures["xgb_goal_met"] = figures["xgb_dask_ratio_vs_single"] <= 1.3
    write_result("train", figures, args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
