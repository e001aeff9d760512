"""Skim stage (processors): what a failure inside a chunk is — the file's (bad input) or the processor's (a bug).

`InputFailure` is the file's: the chunk's input is recorded as bad (``--skip-bad-files``)
or stops the run with one line naming it; `ProcessorError` is the processor's. The helpers
tell the two apart from where an exception was raised (uproot or a codec: reading), and
word it in one line naming the processor's own line that raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.core.net import is_remote, is_transient
from analysis.errors import HepprepError

__all__ = ["InputFailure", "ProcessorError"]


class ProcessorError(HepprepError):
    """A processor broke its contract or raised on input it could read: a bug to fix, not a bad file."""


class InputFailure(Exception):
    """Raised inside ``select`` (or by the reading helpers) for input that cannot be read.

    The chunk's file is then the skim's bad input, recorded (``--skip-bad-files``) or
    stopping the run with one line naming it; anything else a processor raises is a bug.
    """


class _input_failures:
    """Turn a failure to read the chunk into `InputFailure` (a network hiccup passes through)."""

    def __init__(self, meta: Mapping[str, Any], where: str):
        self.meta, self.where = meta, where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        if value is None or isinstance(value, (InputFailure, HepprepError)) or not isinstance(value, Exception):
            return False
        if is_remote(self.meta["filename"]) and is_transient(value):
            return False
        raise InputFailure(f"cannot read {self.where} ({_one_line(value)})") from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if isinstance(err, (InputFailure, HepprepError)) else f"{type(err).__name__}: {text}"


# Packages whose frames in a traceback mean the failure happened while reading the file.
_READING_PACKAGES = (f"{Path('uproot')}", "zlib", "lz4", "zstandard", "cramjam", "fsspec", "awkward_cpp")


def _raised_while_reading(err: BaseException) -> bool:
    """True when ``err`` came from uproot (or a codec) reading the chunk: the file's fault."""
    tb = err.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if any(f"{package}/" in filename or f"{package}\\" in filename for package in _READING_PACKAGES):
            return True
        tb = tb.tb_next
    return False


def _where_raised(err: BaseException) -> str:
    """``file.py:line in function`` of the innermost frame of the processor's own code.

    Frames of installed packages (numpy, awkward...) and of this module are passed over:
    the place to look is the line of ``select`` (or what it calls) that raised.
    """
    tb, last = err.__traceback__, None
    while tb is not None:
        code = tb.tb_frame.f_code
        if "site-packages" not in code.co_filename and not code.co_filename.endswith("processors/base.py"):
            # A processor pickled by value to the executor has lost its file name ("<dynamic-code>").
            where = "" if code.co_filename.startswith("<") else f"{Path(code.co_filename).name}:"
            last = f"{where}line {tb.tb_lineno} in {code.co_name}" if not where else \
                f"{where}{tb.tb_lineno} in {code.co_name}"
        tb = tb.tb_next
    return last or "an unknown place"
