"""Training stage (networks): the one training loop of the MLP and the taggers, with checkpoint and resume.

Weighted losses on `train_weight` (each row's loss times its weight, so the classes count
equally and background is scaled, never dropped): binary cross entropy, soft-max cross
entropy over the classes, or the squared / Huber error of the standardised regression
targets. AdamW, a learning rate lowered when the validation loss stalls, early stopping on
the weighted validation loss. Every epoch ends with a checkpoint holding everything the
next epoch depends on — network, optimiser, scheduler, gradient scaler, RNG state, history,
best weights — so ``--resume`` continues the same run: the data order is a function of
(seed, epoch) and the RNG state is restored, so a resumed run ends with the same weights as
one that was never interrupted. Mixed precision (float16 autocast + GradScaler) only on CUDA.

What differs between the networks is how a batch's rows become the network's inputs: the
caller's ``forward(net, x)``.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.core.io import atomic_file
from analysis.core.progress import progress_bar
from analysis.core.target import Target, TargetConfig
from analysis.errors import StageInputError
from analysis.train.inputs import PreparedSplits

__all__ = ["CHECKPOINT", "VAL_METRIC", "FitRun", "fit", "fit_info", "load_checkpoint", "run_key",
           "save_checkpoint"]

CHECKPOINT = "checkpoint.pt"
VAL_METRIC = {"binary": "val_auc", "multiclass": "val_accuracy", "regression": "val_rmse"}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint atomically (temp file + rename): an interrupted save leaves the old one."""
    import torch

    with atomic_file(path) as handle:
        torch.save(state, handle)


def run_key(params: dict, resumable: tuple[str, ...], inputs: list[str], prepared: PreparedSplits,
            target: TargetConfig) -> dict:
    """What a checkpoint must match to be resumed: the settings that shape the run and its data.

    ``params`` are the model's settings; the ``resumable`` ones may change between a run and
    its resumption (they do not alter the past: epochs, patience, workers, threads).
    """
    params = {k: v for k, v in params.items() if k not in resumable}
    key = {"params": params, "features": inputs,
           "train_files": [p.name for p in prepared.split("train").files],
           "train_rows": prepared.split("train").rows}
    if prepared.target.kind != "binary":  # binary checkpoints keep the key they always had
        key["target"] = {**prepared.target.stats_record(), "loss": target.model_dump()}
    return key


def load_checkpoint(path: Path, key: dict) -> dict:
    """Read ``checkpoint.pt`` and check it continues the run ``key`` describes.

    Only tensors and plain containers are read (``weights_only=True``): a checkpoint is data,
    and a file carrying a pickled object (code that would run when unpickled) is refused.

    Raises
    ------
    StageInputError
        One line: the file is not a readable checkpoint, or it is of another run.
    """
    import torch

    # On the CPU: the RNG state must stay a CPU tensor; load_state_dict moves the weights and
    # the optimiser state to the parameters' device.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StageInputError(f"{path}: cannot resume: the checkpoint holds more than tensors and plain "
                              f"values, and is not loaded ({first}); train without --resume") from None
    except Exception as err:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise StageInputError(f"{path}: cannot resume: not a readable checkpoint ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:200]}); train without --resume") from None
    needed = ("run_key", "epoch", "stopped", "bad_epochs", "model", "optimiser", "scheduler",
              "scaler", "rng_cpu", "history", "best")
    if not isinstance(state, dict) or any(k not in state for k in needed):
        missing = [k for k in needed if not isinstance(state, dict) or k not in state]
        raise StageInputError(f"{path}: cannot resume: not a hepprep checkpoint (no {', '.join(missing)}); "
                              "train without --resume")
    if state.get("run_key") != key:
        old, new = state.get("run_key", {}), key
        diff = sorted(k for k in set(old.get("params", {})) | set(new["params"])
                      if old.get("params", {}).get(k) != new["params"].get(k))
        what = (f"settings {', '.join(diff)} differ" if diff else
                "the features or the prepared training files differ")
        raise StageInputError(f"{path}: cannot resume: {what} from the checkpointed run; "
                              f"train without --resume to start a new run")
    return state


def _loss_function(target: Target, loss: TargetConfig):
    """Per-row loss of (network outputs, targets), and the scores kept for validation."""
    import torch

    if target.kind == "multiclass":
        cross_entropy = torch.nn.CrossEntropyLoss(reduction="none")
        return (lambda out, y: cross_entropy(out, y.long())), (lambda out: torch.softmax(out, dim=1))
    if target.kind == "regression":
        per_value = (torch.nn.HuberLoss(reduction="none", delta=loss.huber_delta) if loss.loss == "huber"
                     else torch.nn.MSELoss(reduction="none"))
        return (lambda out, y: per_value(out, y.reshape(out.shape)).sum(dim=1)), (lambda out: out)
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")
    return (lambda out, y: bce(out[:, 0], y)), (lambda out: torch.sigmoid(out[:, 0]))


def _epoch_loss(net, loader, device, *, forward, target: Target, loss: TargetConfig, n_features: int,
                optimiser=None, scaler=None, amp=False, on_batch=None):
    """One pass: the weighted loss summed over rows; trains when an optimiser is given.

    Returns (sum of w*loss, sum of w, scores, labels, weights) with scores only when evaluating.
    """
    import torch

    from analysis.train.stream import split_targets

    per_row_loss, score = _loss_function(target, loss)
    # Accumulated on the device: reading a GPU scalar every batch would stall the pipeline.
    total = torch.zeros((), dtype=torch.float64, device=device)
    total_w = torch.zeros((), dtype=torch.float64, device=device)
    keep = optimiser is None
    scores, labels, weights = [], [], []
    for x, y, w in loader:
        x, y = split_targets(x, y, n_features)
        x, y, w = (t.to(device, non_blocking=True) for t in (x, y, w))
        with torch.autocast(device_type=device, dtype=torch.float16, enabled=amp):
            logits = forward(net, x)
        per_row = per_row_loss(logits.float(), y) * w
        if optimiser is not None:
            # mean(w * loss) estimates the weighted mean loss: train_weight has mean 1.
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(per_row.mean()).backward()
            scaler.step(optimiser)
            scaler.update()
        total += per_row.detach().sum().double()
        total_w += w.sum().double()
        if keep:
            scores.append(score(logits.float()).cpu().numpy())
            labels.append(y.cpu().numpy())
            weights.append(w.cpu().numpy())
        if on_batch is not None:
            on_batch(len(y))
    return float(total), float(total_w), scores, labels, weights


def _val_metric(target: Target, labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """The validation curve beside the loss: AUC, accuracy, or RMSE of the standardised targets.

    Weighted by |train_weight|, as evaluation's ROC takes signed NLO weights: with negative
    weights the weighted ROC need not be monotonic and has no area.
    """
    w = np.abs(weights)
    if target.kind == "multiclass":
        return float(np.sum(w * (scores.argmax(axis=1) == labels)) / np.sum(w))
    if target.kind == "regression":
        squared = ((scores - labels.reshape(scores.shape)) ** 2).sum(axis=1)
        return float(np.sqrt(np.sum(w * squared) / np.sum(w)))
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores, sample_weight=w))


@dataclass
class FitRun:
    """One network's run: what to train, on what, and where its checkpoint goes.

    Attributes
    ----------
    name : the model's name in messages and settings (``mlp``, ``pfn``, ...)
    section : its settings' key (``train.mlp``, ``train.tagger``)
    net : the freshly built network, on ``device``
    settings : the model's settings (lr, weight_decay, lr_decay_factor, lr_decay_patience,
        max_epochs, patience: `MLPConfig` or `TaggerConfig`)
    train_stream, train_loader, val_stream : the split streams (the loader iterates train_stream)
    forward : ``forward(net, x)``, the outputs of a batch's input rows
    n_features : input values of a row before the targets (`split_targets`)
    key : `run_key` of this run
    """

    name: str
    section: str
    net: Any
    settings: Any
    train_stream: Any
    train_loader: Any
    val_stream: Any
    forward: Callable[[Any, Any], Any]
    n_features: int
    key: dict
    device: str
    amp: bool


def fit(torch, run: FitRun, prepared: PreparedSplits, out: Path, loss: TargetConfig, *, resume: bool,
        console: Any, progress: bool) -> dict:
    """Train ``run.net`` epoch by epoch, checkpointing each to ``out/checkpoint.pt``; write ``out/model.pt``.

    Returns
    -------
    dict
        ``history``, ``best`` (loss, epoch), ``stopped`` (early stopping triggered), ``metric``.
    """
    cfg, net, device, amp = run.settings, run.net, run.device, run.amp
    target = prepared.target
    train = prepared.split("train")
    passes = {"forward": run.forward, "target": target, "loss": loss, "n_features": run.n_features}
    metric = VAL_METRIC[target.kind]
    optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, factor=cfg.lr_decay_factor, patience=cfg.lr_decay_patience)
    scaler = torch.amp.GradScaler(device, enabled=amp)
    history = {"epoch": [], "train_loss": [], "val_loss": [], metric: [], "lr": [], "seconds": []}
    best = {"loss": math.inf, "epoch": -1, "state": None}
    start_epoch, bad_epochs, stopped = 0, 0, False
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, run.key)
        net.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if amp and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        history, best, bad_epochs = state["history"], state["best"], state["bad_epochs"]
        start_epoch, stopped = state["epoch"] + 1, state["stopped"]
        console.print(f"{run.name}: resuming {ckpt_path} after epoch {state['epoch']}"
                      + (" (already finished)" if stopped else ""))
    elif resume:
        console.print(f"{run.name}: --resume but no {ckpt_path}: starting a new run")
    with progress_bar(quiet=not progress) as bars:
        epoch = start_epoch
        while epoch < cfg.max_epochs and not stopped:
            t0 = time.perf_counter()
            task = bars.add_task(f"{run.name} epoch {epoch}", total=train.rows)
            run.train_stream.set_epoch(epoch)
            net.train()
            loss_sum, w_sum, *_ = _epoch_loss(net, run.train_loader, device, optimiser=optimiser,
                                              scaler=scaler, amp=amp,
                                              on_batch=lambda n, task=task: bars.advance(task, n), **passes)
            net.eval()
            with torch.no_grad():
                vloss_sum, vw_sum, scores, labels, weights = _epoch_loss(net, run.val_stream, device, amp=amp,
                                                                         **passes)
            val_loss = vloss_sum / vw_sum
            val_metric = _val_metric(target, np.concatenate(labels), np.concatenate(scores),
                                     np.concatenate(weights))
            scheduler.step(val_loss)
            if val_loss < best["loss"]:
                best = {"loss": val_loss, "epoch": epoch,
                        "state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}
                bad_epochs = 0
            else:
                bad_epochs += 1
            stopped = bad_epochs >= cfg.patience
            for name, value in (("epoch", epoch), ("train_loss", loss_sum / w_sum),
                                ("val_loss", val_loss), (metric, val_metric),
                                ("lr", optimiser.param_groups[0]["lr"]),
                                ("seconds", time.perf_counter() - t0)):
                history[name].append(value)
            bars.update(task, description=f"{run.name} epoch {epoch}: val loss {val_loss:.4f} "
                                          f"{metric} {val_metric:.4f}")
            save_checkpoint(ckpt_path, {
                "run_key": run.key, "epoch": epoch, "stopped": stopped, "bad_epochs": bad_epochs,
                "model": net.state_dict(), "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if amp else None,
                "history": history, "best": best})
            epoch += 1
    if best["state"] is None:
        raise StageInputError(f"{ckpt_path}: the run has no finished epoch to save "
                              f"(max_epochs {cfg.max_epochs}); raise {run.section}.max_epochs")
    with atomic_file(out / "model.pt") as handle:
        torch.save(best["state"], handle)
    return {"history": history, "best": best, "stopped": stopped, "metric": metric}


def fit_info(torch, run: FitRun, result: dict, prepared: PreparedSplits, *, seconds: float,
             console: Any) -> dict:
    """The model_info.json entries every network shares (the caller adds its shape and settings)."""
    history, best, metric = result["history"], result["best"], result["metric"]
    console.print(f"{run.name}: best epoch {best['epoch']} of {len(history['epoch'])}, "
                  f"val loss {best['loss']:.4f}, {seconds:.1f} s")
    return {
        "model": run.name,
        "device": run.device,
        "mixed_precision": run.amp,
        "best_epoch": best["epoch"],
        "epochs_run": len(history["epoch"]),
        "stopped_early": bool(result["stopped"]),
        "best_val_loss": best["loss"],
        f"best_{metric}": history[metric][history["epoch"].index(best["epoch"])],
        "train_seconds": round(sum(history["seconds"]), 3),
        "train_rows": prepared.split("train").rows,
        "val_rows": prepared.split("val").rows,
        "torch_version": torch.__version__,
    }
