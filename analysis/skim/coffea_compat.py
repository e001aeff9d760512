"""Skim stage: every use of a coffea or uproot internal, in one place, each checked by a test.

The skim leans on five things that are not public API; each lives here behind a small
function, and tests/test_coffea_compat.py fails loudly, naming the internal, when a new
coffea or uproot changes one of them:

* the TTree coffea opened for a chunk (``NanoEventsFactory._mapping._file_handle``), read
  in one ``TTree.arrays`` call instead of NanoEvents' lazy per-branch reads (`chunk_tree`);
  coffea 2026.9 passes no open file in the chunk's metadata, the public way that would
  replace it;
* coffea's executor progress bar (``coffea.processor.executor.rich_bar``), which draws on
  stdout and ignores ``status=False``: replaced for the run by hepprep's (`progress_bars`);
* ``Runner.automatic_retries``, coffea's per-chunk retry, which `RetryingRunner` replaces
  on the instance (`install_chunk_retry`) and calls for what it leaves to coffea
  (`coffea_retries`);
* the prefixes of the messages coffea's work function raises ("Failed to open file",
  "Failed creating nanoevents"), which tell an input failure from one in the processor
  (`input_failure_kind`);
* uproot's ``TTree.typenames``, narrowed to the branches NanoEvents reads
  (`restrict_typenames`).

coffea is pinned below the next release that has not been tested (pyproject.toml;
`TESTED_COFFEA`): a new one is adopted by running these tests against it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from coffea import processor
from coffea.processor import executor as _coffea_executor

from analysis.core.progress import progress_bar

__all__ = ["TESTED_COFFEA", "chunk_tree", "coffea_retries", "input_failure_kind", "install_chunk_retry",
           "progress_bars", "restrict_typenames"]

# The coffea releases these internals were checked against (the pin in pyproject.toml).
TESTED_COFFEA = ("2025.7", "2026.10")  # >= first, < second


def chunk_tree(events: Any) -> Any:
    """The uproot TTree coffea built a chunk's events from, or None where it cannot be found.

    coffea keeps it open in the events' factory (``NanoEventsFactory._mapping._file_handle``,
    the file it opened for this chunk, the TTree in that file's object cache); any other
    layout, or another coffea version, returns None and the caller reads through NanoEvents.
    """
    try:
        file = events.attrs["@events_factory"]._mapping._file_handle
        return file[events.metadata["treename"]]
    except Exception:  # noqa: BLE001 - an unknown layout only costs the faster path
        return None


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Route coffea's executor progress bars through `analysis.core.progress` (stderr, --quiet).

    coffea 2026.9 draws its bars with ``coffea.processor.executor.rich_bar`` on stdout and
    ignores ``status=False`` (the flag reaches rich as an unused task field), so `--quiet`
    could not silence it otherwise. The original is restored on exit.
    """
    original = _coffea_executor.rich_bar
    _coffea_executor.rich_bar = lambda: progress_bar(quiet=not enabled)
    try:
        yield
    finally:
        _coffea_executor.rich_bar = original


def install_chunk_retry(runner: processor.Runner, retry: Callable[..., Any]) -> None:
    """Make ``runner`` call ``retry(coffea_retries, skipbadfiles, func, *args, ...)`` per chunk.

    The Runner calls ``self.automatic_retries(retries, skipbadfiles, work, item)`` for every
    chunk; an instance attribute shadows the static method (``retry`` should be a
    module-level function or a partial of one: it is pickled to the executor's workers).
    """
    runner.automatic_retries = retry


def coffea_retries(retries: int, skipbadfiles: Any, func: Callable[..., Any], *args: Any,
                   use_result_type: bool = False, **kwargs: Any) -> Any:
    """coffea's own per-chunk retry (``Runner.automatic_retries``), for what hepprep leaves to it."""
    return processor.Runner.automatic_retries(retries, skipbadfiles, func, *args,
                                              use_result_type=use_result_type, **kwargs)


# coffea's work function raises a bare Exception with one of these prefixes and the original
# error as its cause: the chunk's file could not be opened, or NanoEvents not built from its
# branches (one of the wrong shape: KeyError 'content'). A failure inside the processor
# ("Failed processing file") is not an input failure.
_INPUT_FAILURES = {"Failed to open file": "cannot open it again",
                   "Failed creating nanoevents": "cannot build its events"}


def input_failure_kind(err: BaseException) -> str | None:
    """What failed when coffea could not open a chunk's file or build its events, else None."""
    return next((what for prefix, what in _INPUT_FAILURES.items() if str(err).startswith(prefix)), None)


def restrict_typenames(tree: Any, filter_name: Any) -> None:
    """Make ``tree.typenames()`` list only the branches ``filter_name`` selects.

    coffea's ``from_root`` calls it for every chunk to decorate the form, which identifies
    the interpretation of every branch of the file (a third of building the events, for
    branches the filter then leaves out). NanoAODSchema does not use the type names.
    """
    tree.typenames = partial(type(tree).typenames, tree, filter_name=filter_name)
