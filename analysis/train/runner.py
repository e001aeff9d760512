"""Training stage: `hepprep train` — check the prepared directory, pick the device, train, save.

One entry point for every model: the XGBoost trees (`analysis.train.xgb`, xgboost.dask),
the PyTorch network on the flat features (`analysis.train.mlp`, streaming from Parquet) and
the constituent taggers pfn, part, cnn (`analysis.train.tagger`, jet-level folders). Whatever
the model, the output is one model directory that `analysis.train.predict.load_model` reads.
"""

from __future__ import annotations

from pathlib import Path

from analysis.config import Config, with_overrides
from analysis.core.provenance import build_provenance, folder_input
from analysis.core.tagger_config import TAGGER_MODELS
from analysis.errors import ConfigError
from analysis.train.inputs import inspect_prepared
from analysis.train.model_dir import finish_model_dir, resolve_device, start_model_dir

__all__ = ["MODELS", "run_train"]

MODELS = ("xgboost", "mlp", *TAGGER_MODELS)


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
        ``xgboost``, ``mlp``, or a tagger of a jet-level folder: ``pfn``, ``part``, ``cnn``.
    device : str or None
        ``auto``, ``cpu`` or ``cuda``; None takes ``config.train.device``.
    scheduler : str or None
        Address of an existing dask scheduler (xgboost only).
    resume : bool
        The networks (not xgboost): continue the run whose checkpoint is in ``out_dir``.
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
        raise ConfigError(f"--model {model!r}: unknown model; use {', '.join(MODELS[:-1])} or {MODELS[-1]}")
    if resume and model == "xgboost":
        raise ConfigError("--resume: only the networks checkpoint; xgboost trains in one go "
                          "(drop --resume)")
    prepared = inspect_prepared(prep_dir, config.features)
    config = with_overrides(config, {"train": {"device": device}}, source="--device")
    resolved = resolve_device(config.train.device, model=model)
    if model in TAGGER_MODELS:
        from analysis.train.tagger import tagger_layout, tagger_run_key

        tagger_layout(model, prepared, config)  # a folder or settings the tagger cannot use: before any write
    if resume:
        # Validate first, then touch: a checkpoint that cannot continue this run must not
        # cost the model directory its model_info.json.
        from analysis.train.fit import CHECKPOINT, load_checkpoint

        checkpoint = Path(out_dir) / CHECKPOINT
        if checkpoint.is_file():
            if model == "mlp":
                from analysis.train.mlp import mlp_run_key

                key = mlp_run_key(config, prepared.features, prepared)
            else:
                key = tagger_run_key(config, model, prepared)
            load_checkpoint(checkpoint, key)
    out = start_model_dir(out_dir)
    if model == "xgboost":
        from analysis.train.xgb import train_xgboost

        result = train_xgboost(prepared, out, config, device=resolved, scheduler=scheduler,
                               progress=progress)
    elif model == "mlp":
        from analysis.train.mlp import train_mlp

        result = train_mlp(prepared, out, config, device=resolved, resume=resume,
                           progress=progress)
    else:
        from analysis.train.tagger import train_tagger

        result = train_tagger(model, prepared, out, config, device=resolved, resume=resume,
                              progress=progress)
    prepared_dir = Path(prep_dir).resolve()
    section = "tagger" if model in TAGGER_MODELS else model
    provenance = build_provenance("train", config=config.model_dump(mode="json"),
                                  inputs=[folder_input("prepared", prepared_dir, prepared.fingerprint)],
                                  seeds={f"train.{section}.seed": getattr(config.train, section).seed})
    info = {**result["info"], "prepared_dir": str(prepared_dir),
            "prepared_fingerprint": prepared.fingerprint, "features": prepared.features,
            "provenance": provenance}
    if prepared.target.kind != "binary":  # absent: the binary label (model folders before targets)
        info["target"] = prepared.target.stats_record()
        if prepared.target.kind == "regression":
            info["target"]["loss"] = config.target.loss
    return finish_model_dir(out, features=prepared.features, stats=prepared.stats,
                            history=result["history"], info=info)
