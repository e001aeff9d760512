"""Errors (all stages): the exceptions a user sees as one line and an exit code.

The CLI prints ``hepprep: <message>`` for any `HepprepError` and exits with its
`exit_code`; the message must name the bad value (file, key, branch) and, where there is
one, the fix. Tests assert these messages.
"""

from __future__ import annotations

__all__ = ["ConfigError", "HepprepError", "InputFileError", "StageInputError"]


class HepprepError(Exception):
    """Base of every error meant for the user rather than for a traceback."""

    exit_code = 1


class ConfigError(HepprepError, ValueError):
    """Bad configuration, fileset or command-line value (`skim.chunksize: unknown key`)."""


class InputFileError(HepprepError):
    """An input ROOT file that cannot be used: ``<path>: <cause>``."""

    def __init__(self, path: str, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class StageInputError(HepprepError):
    """A stage's input directory is missing, incomplete or inconsistent with its config."""
