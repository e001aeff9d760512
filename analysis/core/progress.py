"""Progress reporting (all stages): one rich progress bar style, silenced by ``--quiet``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

__all__ = ["progress_bar", "stage_console"]


def stage_console(quiet: bool = False) -> Console:
    """Where stages print their summaries: stderr, so stdout stays for data (`config show`)."""
    return Console(file=sys.stderr, quiet=quiet, highlight=False)


@contextlib.contextmanager
def progress_bar(quiet: bool = False) -> Iterator[Progress]:
    """A rich `Progress` on stderr; with ``quiet`` it is disabled but keeps the same API.

    Example
    -------
    >>> with progress_bar(quiet=True) as progress:
    ...     task = progress.add_task("generate DYJetsToLL", total=10)
    ...     progress.advance(task, 10)
    """
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=stage_console(quiet),
                  disable=quiet, transient=False) as progress:
        yield progress
