"""Training stage (XGBoost): gradient-boosted trees with xgboost.dask, on CPU or GPU workers.

No split is ever loaded into one process: dask reads the prepared Parquet partitions on the
workers (only the feature, label and train_weight columns), `DaskQuantileDMatrix` builds
the histogram bins there, and the validation matrix reuses the training quantiles
(``ref=``) so both are binned alike. Early stopping watches the weighted validation
log-loss and keeps the best iteration only (``save_best``), so every consumer of
`model.json` gets the early-stopped model without knowing the best round. The objective and the metric follow
the prepared target: binary log-loss, multi-class soft-max log-loss, or a regression's
squared or pseudo-Huber error on the standardised targets.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path

from analysis.config import ClusterConfig, Config, XGBoostConfig
from analysis.core.cluster import dask_client, describe_cluster, resolve_scheduler
from analysis.core.io import write_bytes_atomic
from analysis.core.progress import stage_console
from analysis.core.target import Target, TargetConfig
from analysis.errors import StageInputError
from analysis.train.inputs import TRAIN_WEIGHT, PreparedSplits, row_group_units
from analysis.train.model_dir import cuda_gpu_count

__all__ = ["EARLY_STOPPING_METRIC", "early_stopping_metric", "local_gpu_workers", "plan_partitions",
           "read_split_dask", "train_xgboost", "training_client", "xgboost_params"]

# Last in eval_metric, so it is the one early stopping watches (xgboost's rule).
EARLY_STOPPING_METRIC = "logloss"


def _objective(target: Target, loss: TargetConfig) -> dict:
    """Objective and metrics (the early-stopping one last) of a target."""
    if target.kind == "multiclass":
        return {"objective": "multi:softprob", "num_class": target.n_classes, "eval_metric": ["merror", "mlogloss"]}
    if target.kind == "regression":
        if loss.loss == "huber":
            return {"objective": "reg:pseudohubererror", "huber_slope": loss.huber_delta,
                    "eval_metric": ["rmse", "mphe"]}
        return {"objective": "reg:squarederror", "eval_metric": ["rmse"]}
    return {"objective": "binary:logistic", "eval_metric": ["auc", EARLY_STOPPING_METRIC]}


def early_stopping_metric(params: dict) -> str:
    """The metric early stopping watches: the last of ``eval_metric``."""
    return params["eval_metric"][-1]


def xgboost_params(cfg: XGBoostConfig, *, device: str, target: Target | None = None,
                   loss: TargetConfig | None = None) -> dict:
    """Booster parameters for ``xgboost.train`` / ``xgboost.dask.train`` from the config.

    Parameters
    ----------
    cfg : XGBoostConfig
        ``config.train.xgboost``.
    device : str
        ``cpu`` or ``cuda`` (already resolved).
    target : Target or None
        What the prepared folder holds (None: the binary label).
    loss : TargetConfig or None
        ``config.target``: the regression loss.
    """
    return {
        **_objective(target or Target(), loss or TargetConfig()),
        "tree_method": cfg.tree_method,
        "device": device,
        "max_depth": cfg.max_depth,
        "eta": cfg.eta,
        "subsample": cfg.subsample,
        "colsample_bytree": cfg.colsample_bytree,
        "min_child_weight": cfg.min_child_weight,
        "seed": cfg.seed,
    }


# Rows per dask partition at most (about 100 MB of float32 features): bounds the memory
# of one read task.
MAX_PARTITION_ROWS = 1_000_000


def plan_partitions(files: list[Path], n_workers: int, *,
                    max_rows: int = MAX_PARTITION_ROWS) -> list[list[tuple[Path, int, int, int]]]:
    """Cut a split into a multiple of ``n_workers`` partitions of equal rows (to one row).

    xgboost.dask trains each worker on the partitions it holds and every boosting round
    waits for the slowest worker, so partitions are balanced whatever the row groups:
    the split's rows in file order are cut into equal ranges, and a row group across a
    cut is read by both partitions (each keeps its own rows).

    Returns
    -------
    list of partitions, each a list of ``(path, row_group, first_row, stop_row)`` with
    rows counted within the row group; none empty.
    """
    units = row_group_units(files)
    total = sum(u[2] for u in units)
    target = max(1, n_workers) * max(1, math.ceil(total / (max(1, n_workers) * max_rows)))
    target = max(1, min(target, total))
    cuts = [total * k // target for k in range(target + 1)]
    partitions = []
    for lo, hi in zip(cuts, cuts[1:]):
        part, seen = [], 0
        for path, group, rows in units:
            a, b = max(lo - seen, 0), min(hi - seen, rows)
            if a < b:
                part.append((path, group, a, b))
            seen += rows
        partitions.append(part)
    return partitions


def _read_partition(slices: list[tuple[Path, int, int, int]], features: list[str],
                    negative_weights: str, targets: tuple[str, ...] = ("label",)):
    """``(X, y, w)`` of the row-group slices: X a C-contiguous float32 matrix, as xgboost takes it.

    ``y`` is the one target column ``(rows,)``, or ``(rows, K)`` for K regressed columns.

    ``negative_weights`` ``abs`` or ``zero`` makes ``w >= 0`` (xgboost refuses negative
    weights); anything else leaves w as read.
    """
    import numpy as np
    import pyarrow.parquet as pq

    rows = sum(stop - first for _, _, first, stop in slices)
    x = np.empty((rows, len(features)), dtype=np.float32)
    y = np.empty((rows, len(targets)), dtype=np.float32)
    w = np.empty(rows, dtype=np.float32)
    files: dict[Path, pq.ParquetFile] = {}
    at = 0
    for path, group, first, stop in slices:
        handle = files.setdefault(path, pq.ParquetFile(path))
        table = handle.read_row_group(group, columns=[*features, *targets, TRAIN_WEIGHT])
        table = table.slice(first, stop - first)
        # Each column goes straight into its rows: one copy, no concatenated table first.
        rows_here = slice(at, at + table.num_rows)
        for j, name in enumerate(features):
            x[rows_here, j] = table.column(name).to_numpy()
        for k, name in enumerate(targets):
            y[rows_here, k] = table.column(name).to_numpy()
        w[rows_here] = table.column(TRAIN_WEIGHT).to_numpy()
        at += table.num_rows
    # Prepare writes non-finite inputs as NaN (missing); a hand-made file may hold ±inf,
    # which xgboost refuses: missing too.
    infinite = np.isinf(x)
    if infinite.any():
        x[infinite] = np.nan
    if negative_weights == "abs":
        np.abs(w, out=w)
    elif negative_weights == "zero":
        np.maximum(w, 0, out=w)
    return x, (y[:, 0] if len(targets) == 1 else y), w


def read_split_dask(files: list[Path], features: list[str], *, n_workers: int = 1,
                    negative_weights: str = "keep", targets: tuple[str, ...] = ("label",)):
    """One split as dask arrays with only the columns training reads.

    Each partition is a task that reads its row groups (`plan_partitions`) on a worker,
    so no split passes through the client; X, y and w are the three outputs of the same
    tasks, so they have the same partitions by construction, and the row counts come
    from the Parquet metadata, so the chunks are known. (A dask DataFrame would fuse the
    projected partitions into fewer than there are workers, which leaves workers idle or
    is rejected by xgboost.dask.)

    ``negative_weights``: ``abs`` or ``zero`` turns negative train weights into |w| or 0
    (``train.xgboost.negative_weights``); ``keep`` leaves them.

    Returns
    -------
    (X, y, w)
        X: float32 ``(rows, len(features))`` standardised features in ``features`` order;
        y: float32 ``(rows,)`` of the target column (label 0/1, class index, standardised
        regression target) or ``(rows, K)`` for K regressed columns; w: float32 ``(rows,)``
        train_weight.
    """
    import dask
    import dask.array as da
    import numpy as np

    n = len(features)
    read = dask.delayed(_read_partition, pure=True, nout=3)
    parts = [(read(part, features, negative_weights, tuple(targets)), sum(stop - first for _, _, first, stop in part))
             for part in plan_partitions(files, n_workers)]
    shapes = ((lambda rows: (rows, n)), (lambda rows: (rows,) if len(targets) == 1 else (rows, len(targets))),
              (lambda rows: (rows,)))
    return tuple(da.concatenate([da.from_delayed(arrays[k], shape=shape(rows), dtype=np.float32)
                                 for arrays, rows in parts])
                 for k, shape in enumerate(shapes))


def local_gpu_workers(cluster: ClusterConfig, scheduler: str | None, device: str) -> str | None:
    """How a local CUDA run gets its workers: ``"dask_cuda"``, ``"one worker"``, or None when not local CUDA.

    dask_cuda pins one worker to each GPU. Without it (not installed), one plain worker
    trains on the first visible GPU: enough for a single-GPU machine, and still a GPU
    run where there are several.
    """
    if device != "cuda" or resolve_scheduler(cluster, scheduler) is not None or cluster.kind != "local":
        return None
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        return "one worker"
    return "dask_cuda"


@contextlib.contextmanager
def training_client(cluster: ClusterConfig, scheduler: str | None, device: str) -> Iterator:
    """The dask client to train on: one worker per GPU for a local CUDA run, else `dask_client`."""
    plan = local_gpu_workers(cluster, scheduler, device)
    if plan == "dask_cuda":
        import dask_cuda
        from distributed import Client

        with dask_cuda.LocalCUDACluster(n_workers=max(1, cuda_gpu_count()), threads_per_worker=
                                        cluster.threads_per_worker,
                                        dashboard_address=cluster.dashboard_address) as gpu_cluster, \
                Client(gpu_cluster) as client:
            yield client
        return
    with dask_client(cluster, scheduler, n_workers=1 if plan == "one worker" else None) as client:
        yield client


def train_xgboost(prepared: PreparedSplits, out: Path, config: Config, *, device: str,
                  scheduler: str | None = None, progress: bool = True) -> dict:
    """Train the xgboost.dask classifier and write ``out/model.json``.

    Parameters
    ----------
    prepared : PreparedSplits
        Checked prepared directory (`analysis.train.inputs.inspect_prepared`).
    out : Path
        The model directory (already created).
    config : Config
        Uses ``train.xgboost`` and ``cluster``.
    device : str
        ``cpu`` or ``cuda``.
    scheduler : str or None
        ``--scheduler ADDR`` of an existing dask cluster.

    Returns
    -------
    dict
        ``{"info": {...}, "history": {...}}`` for model_info.json and history.json.
    """
    import xgboost as xgb
    import xgboost.dask  # noqa: F401 - registers xgb.dask

    cfg = config.train.xgboost
    target = prepared.target
    params = xgboost_params(cfg, device=device, target=target, loss=config.target)
    metric = early_stopping_metric(params)
    console = stage_console(quiet=not progress)
    plan = local_gpu_workers(config.cluster, scheduler, device)
    where = {"dask_cuda": "local GPU workers (dask_cuda, one per GPU)",
             "one worker": "one local worker on the first GPU (pip install dask-cuda for one "
                           "worker per GPU)"}.get(plan) or describe_cluster(config.cluster, scheduler)
    train, val = prepared.split("train"), prepared.split("val")
    negative = {"train": train.negative_weight_rows, "val": val.negative_weight_rows}
    if any(negative.values()):
        counts = f"{negative['train']} train and {negative['val']} val rows have train_weight < 0"
        if cfg.negative_weights == "error":
            raise StageInputError(f"{prepared.root}: {counts}, which xgboost cannot train on; set "
                                  f"train.xgboost.negative_weights to \"abs\" or \"zero\", or "
                                  f"prepare with prepare.negative_weights = \"abs\" or \"zero\"")
        console.print(f"xgboost: {counts}: trained as "
                      f"{'|train_weight|' if cfg.negative_weights == 'abs' else 'weight 0'} "
                      f"(train.xgboost.negative_weights = {cfg.negative_weights!r})")
    console.print(f"train xgboost.dask on {device}: {train.rows} train rows, {val.rows} val rows, "
                  f"{where}")
    start = time.perf_counter()
    with training_client(config.cluster, scheduler, device) as client:
        n_workers = len(client.nthreads())
        x, y, w = read_split_dask(train.files, prepared.features, n_workers=n_workers,
                                  negative_weights=cfg.negative_weights, targets=target.columns)
        xv, yv, wv = read_split_dask(val.files, prepared.features, n_workers=n_workers,
                                     negative_weights=cfg.negative_weights, targets=target.columns)
        dtrain = xgb.dask.DaskQuantileDMatrix(client, x, y, weight=w,
                                              feature_names=prepared.features)
        dval = xgb.dask.DaskQuantileDMatrix(client, xv, yv, weight=wv, ref=dtrain,
                                            feature_names=prepared.features)
        # The per-round training curve comes from every k-th training row, about as many
        # rows as the validation split (prepared files are shuffled, so a fair sample):
        # evaluating the whole split each round costs as much as boosting it.
        step = max(1, math.ceil(train.rows / max(val.rows, 1)))
        x_curve = x[::step]
        dcurve = dtrain if step == 1 else xgb.dask.DaskQuantileDMatrix(
            client, x_curve, y[::step], weight=w[::step], ref=dtrain,
            feature_names=prepared.features)
        stopper = xgb.callback.EarlyStopping(rounds=cfg.early_stopping_rounds,
                                             metric_name=metric,
                                             data_name="val", save_best=True)
        with console.status(f"boosting up to {cfg.num_boost_round} rounds "
                            f"(early stopping after {cfg.early_stopping_rounds} on val {metric})"):
            result = xgb.dask.train(client, params, dtrain, num_boost_round=cfg.num_boost_round,
                                    evals=[(dcurve, "train"), (dval, "val")],
                                    callbacks=[stopper], verbose_eval=False)
    seconds = time.perf_counter() - start
    booster = result["booster"]
    history = {split: {metric: [float(v) for v in values] for metric, values in metrics.items()}
               for split, metrics in result["history"].items()}
    val_loss = history["val"][metric]
    best = min(range(len(val_loss)), key=val_loss.__getitem__)
    # save_raw gives the bytes save_model would write; written through the one atomic write.
    write_bytes_atomic(out / "model.json", bytes(booster.save_raw("json")))
    info = {
        "model": "xgboost",
        "device": device,
        "params": {**params, "num_boost_round": cfg.num_boost_round,
                   "early_stopping_rounds": cfg.early_stopping_rounds},
        "best_iteration": best,
        "rounds_run": len(val_loss),
        "n_trees": booster.num_boosted_rounds(),
        f"best_val_{metric}": val_loss[best],
        **({"best_val_auc": history["val"]["auc"][best]} if target.kind == "binary" else {}),
        "train_seconds": round(seconds, 3),
        "train_rows": train.rows,
        "val_rows": val.rows,
        "train_curve_rows": int(x_curve.shape[0]),  # the rows behind history["train"]
        "negative_weight_rows": negative,
        "negative_weights": cfg.negative_weights,
        "dask_workers": n_workers,
        "train_partitions": int(x.numblocks[0]),
        "cluster": where,
        "xgboost_version": xgb.__version__,
    }
    auc = f"val AUC (train_weight) {info['best_val_auc']:.4f}, " if target.kind == "binary" else ""
    console.print(f"xgboost: best round {best} of {len(val_loss)}, val {metric} {val_loss[best]:.4f}, "
                  f"{auc}{seconds:.1f} s")
    return {"info": info, "history": history}
