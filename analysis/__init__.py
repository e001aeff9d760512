"""hepprep: the pipeline package (config, generator, stage runners, training, evaluation, CLI)."""

from analysis.config import Config, default_config, load_config
from analysis.errors import ConfigError, HepprepError, InputFileError, StageInputError

__all__ = ["Config", "ConfigError", "HepprepError", "InputFileError", "StageInputError",
           "default_config", "load_config"]
