"""Training stage (MLP): a PyTorch network trained from streamed Parquet, with checkpoint and resume.

The training loop is `analysis.train.fit` (shared with the taggers): weighted binary cross
entropy on `train_weight`, or soft-max cross entropy over the classes, or the weighted
squared / Huber error of the standardised regression targets; AdamW, a learning rate halved
when the validation loss stalls, early stopping on the weighted validation loss, a
checkpoint each epoch so ``--resume`` continues the same run. Mixed precision (float16
autocast + GradScaler) is used on CUDA only. Here: the streams of the flat features and
the network over them.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from analysis.config import Config
from analysis.core.optional import optional_import
from analysis.core.progress import stage_console
from analysis.train.fit import FitRun, fit, fit_info
from analysis.train.fit import run_key as fit_run_key
from analysis.train.inputs import PreparedSplits
from analysis.train.networks import build_mlp, impute_missing

__all__ = ["mlp_run_key", "train_mlp"]

_VAL_BATCH = 16_384  # validation batch: no gradients, so larger batches are cheap
# Settings that may change between a run and its resumption (they do not alter the past).
_RESUMABLE_CHANGES = ("max_epochs", "patience", "num_workers", "cpu_threads")


def mlp_run_key(config: Config, features: list[str], prepared: PreparedSplits) -> dict:
    """What an MLP checkpoint must match to be resumed (`analysis.train.fit.run_key`)."""
    return fit_run_key(config.train.mlp.model_dump(), _RESUMABLE_CHANGES, features, prepared, config.target)


def _forward(net, x):
    return net(impute_missing(x))


def train_mlp(prepared: PreparedSplits, out: Path, config: Config, *, device: str,
              resume: bool = False, progress: bool = True) -> dict:
    """Train the network, checkpointing each epoch to ``out/checkpoint.pt``; write ``out/model.pt``.

    Parameters
    ----------
    prepared : PreparedSplits
        Checked prepared directory.
    out : Path
        The model directory (already created).
    config : Config
        Uses ``train.mlp``.
    device : str
        ``cpu`` or ``cuda`` (resolved).
    resume : bool
        Continue from ``out/checkpoint.pt`` (a fresh run when there is none).

    Returns
    -------
    dict
        ``{"info": {...}, "history": {...}}``; model.pt holds the best epoch's weights.
    """
    torch = optional_import("torch", purpose="the mlp model")
    threads = torch.get_num_threads()
    if config.train.mlp.cpu_threads:
        # A small network gains little from threads and loses a lot on a shared, busy CPU.
        torch.set_num_threads(config.train.mlp.cpu_threads)
    try:
        return _train(torch, prepared, out, config, device=device, resume=resume, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _train(torch, prepared: PreparedSplits, out: Path, config: Config, *, device: str,
           resume: bool, progress: bool) -> dict:
    from analysis.train.stream import BatchLoader, ParquetBatchStream

    cfg = config.train.mlp
    console = stage_console(quiet=not progress)
    features = prepared.features
    target = prepared.target
    train, val = prepared.split("train"), prepared.split("val")
    amp = device == "cuda"
    torch.manual_seed(cfg.seed)
    train_stream = ParquetBatchStream(train.files, features, batch_size=cfg.batch_size,
                                      shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed,
                                      as_numpy=True, read_threads=cfg.read_threads, targets=target.columns)
    val_stream = ParquetBatchStream(val.files, features, batch_size=_VAL_BATCH,
                                    shuffle_buffer=_VAL_BATCH, shuffle=False, targets=target.columns)
    loader = BatchLoader(train_stream, num_workers=cfg.num_workers)
    net = build_mlp(len(features), hidden=cfg.hidden, dropout=cfg.dropout,
                    n_outputs=target.n_outputs).to(device)
    run = FitRun(name="mlp", section="train.mlp", net=net, settings=cfg, train_stream=train_stream,
                 train_loader=loader, val_stream=val_stream, forward=_forward, n_features=len(features),
                 key=mlp_run_key(config, features, prepared), device=device, amp=amp)
    console.print(f"train mlp {cfg.hidden} on {device}{' (mixed precision)' if amp else ''}: "
                  f"{train.rows} train rows streamed in {train.row_groups} row groups, "
                  f"buffer {cfg.shuffle_buffer} rows, "
                  + (f"{cfg.num_workers} loader workers" if cfg.num_workers else
                     f"{cfg.read_threads} read threads"))
    begin = time.perf_counter()
    result = fit(torch, run, prepared, out, config.target, resume=resume, console=console, progress=progress)
    shared = fit_info(torch, run, result, prepared, seconds=time.perf_counter() - begin, console=console)
    info = {key: shared.pop(key) for key in ("model", "device", "mixed_precision")}
    info |= {"params": copy.deepcopy(cfg.model_dump()), "n_features": len(features),
             "n_outputs": target.n_outputs, **shared}
    return {"info": info, "history": result["history"]}
