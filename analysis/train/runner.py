"""Training stage: `hepprep train` — check the prepared directory, pick the device, train, save.

One entry point for both models: the XGBoost trees (`analysis.train.xgb`, xgboost.dask)
and the PyTorch network (`analysis.train.mlp`, streaming from Parquet). Whatever the
model, the output is one model directory that `analysis.train.predict.load_model` reads.
"""

from __future__ import annotations

from pathlib import Path

from analysis.config import Config, with_overrides
from analysis.core.provenance import build_provenance, folder_input
from analysis.errors import ConfigError
from analysis.train.inputs import inspect_prepared
from analysis.train.model_dir import finish_model_dir, resolve_device, start_model_dir

__all__ = ["MODELS", "run_train"]

MODELS = ("xgboost", "mlp")


def run_train(prep_dir: str | Path, out_dir: str | Path, config: Config, *,
              model: str = "xgboost", device: str | None = None, scheduler: str | None = None,
              resume: bool = False, progress: bool = True) -> Path:
    """Train one classifier on a prepared directory and write its model directory.

    Parameters
    ----------
    prep_dir : str or Path
        Output of `hepprep prepare` (train/, val/, optional test/, stats.json).
    out_dir : str or Path
        The model directory itself (e.g. ``out/models/xgboost``); created if needed.
    config : Config
        Uses ``features``, ``train`` and ``cluster``.
    model : str
        ``xgboost`` or ``mlp``.
    device : str or None
        ``auto``, ``cpu`` or ``cuda``; None takes ``config.train.device``.
    scheduler : str or None
        Address of an existing dask scheduler (xgboost only).
    resume : bool
        mlp only: continue the run whose checkpoint is in ``out_dir``.
    progress : bool
        Progress bars and summaries on stderr.

    Returns
    -------
    Path
        The model directory: model file, features.json, stats.json, history.json,
        model_info.json (written last).

    Raises
    ------
    StageInputError
        The prepared directory is incomplete or does not match the configured features.
    ConfigError
        Unknown model, ``--resume`` for xgboost, or ``--device cuda`` without a usable GPU.
    """
    if model not in MODELS:
        raise ConfigError(f"--model {model!r}: unknown model; use {' or '.join(MODELS)}")
    if resume and model != "mlp":
        raise ConfigError("--resume: only the mlp model checkpoints; xgboost trains in one go "
                          "(drop --resume)")
    prepared = inspect_prepared(prep_dir, config.features)
    config = with_overrides(config, {"train": {"device": device}}, source="--device")
    resolved = resolve_device(config.train.device, model=model)
    if resume and model == "mlp":
        # Validate first, then touch: a checkpoint that cannot continue this run must not
        # cost the model directory its model_info.json.
        from analysis.train.mlp import CHECKPOINT, load_checkpoint, run_key

        checkpoint = Path(out_dir) / CHECKPOINT
        if checkpoint.is_file():
            load_checkpoint(checkpoint, run_key(config, prepared.features, prepared))
    out = start_model_dir(out_dir)
    if model == "xgboost":
        from analysis.train.xgb import train_xgboost

        result = train_xgboost(prepared, out, config, device=resolved, scheduler=scheduler,
                               progress=progress)
    else:
        from analysis.train.mlp import train_mlp

        result = train_mlp(prepared, out, config, device=resolved, resume=resume,
                           progress=progress)
    prepared_dir = Path(prep_dir).resolve()
    provenance = build_provenance("train", config=config.model_dump(mode="json"),
                                  inputs=[folder_input("prepared", prepared_dir, prepared.fingerprint)],
                                  seeds={f"train.{model}.seed": getattr(config.train, model).seed})
    info = {**result["info"], "prepared_dir": str(prepared_dir),
            "prepared_fingerprint": prepared.fingerprint, "features": prepared.features,
            "provenance": provenance}
    if prepared.target.kind != "binary":  # absent: the binary label (model folders before targets)
        info["target"] = prepared.target.stats_record()
        if prepared.target.kind == "regression":
            info["target"]["loss"] = config.target.loss
    return finish_model_dir(out, features=prepared.features, stats=prepared.stats,
                            history=result["history"], info=info)
