"""hepprep: the pipeline package (config, generator, stage runners, training, evaluation, CLI).

The stage functions are the same ones the `hepprep` commands call; notebooks use them
directly. They are imported on first use, so ``import analysis`` stays light (no torch,
xgboost or coffea until a stage needs them).
"""

from __future__ import annotations

import importlib
from typing import Any

from analysis.config import Config, config_from_dict, default_config, load_config
from analysis.errors import ConfigError, HepprepError, InputFileError, StageInputError

_LAZY = {
    "generate_samples": "analysis.generate.runner",
    "run_skim": "analysis.skim.runner",
    "run_prepare": "analysis.prepare.runner",
    "run_prepare_table": "analysis.prepare.table",
    "run_train": "analysis.train.runner",
    "load_model": "analysis.train.predict",
    "run_evaluate": "analysis.evaluate.runner",
    "run_export": "analysis.export.runner",
    "run_pipeline": "analysis.pipeline",
    "dask_client": "analysis.core.cluster",
    "submit_skim": "analysis.batch.submit",
    "resubmit_failed": "analysis.batch.submit",
    "job_states": "analysis.batch.status",
    "merge_job_manifests": "analysis.batch.status",
}

__all__ = ["Config", "ConfigError", "HepprepError", "InputFileError", "StageInputError",
           "config_from_dict", "default_config", "load_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
