"""Skim stage: remote input files (``root://`` through fsspec-xrootd, ``http(s)://`` through fsspec).

uproot reads any URL through fsspec; this module adds what a skim over a network needs on
top: another try after a failure that may pass (`analysis.core.net.transient_cause`: a
refused connection, a timeout, a dropped stream, but not a missing file), a pause between tries so that a restarting server can come
back, and one readable `InputFileError` after the last try. A server that failed every try
of one read is remembered for the rest of the skim (`UnreachableServers`): its other files
and chunks get one try each, so a server that dies under a skim of a thousand chunks costs
one round of retries per process, not a thousand.

The same policy covers the two places a file is read: the input check in the main process
(`call_with_retries`) and every chunk on the executor workers (`RetryingRunner`, a coffea
`Runner` whose per-chunk retry reopens the file, as coffea's own retry does, but only for
remote files, after ``retry_wait`` seconds, and turns the last failure into the skim's usual
per-file error). Local files keep coffea's behaviour unchanged.

The transports retry a little by themselves: aiohttp resends an idempotent request once
when a kept-alive connection drops, and the XRootD client retries a refused connection
(``XRD_CONNECTIONRETRY``, default 5) and checks its timeouts every ``XRD_TIMEOUTRESOLUTION``
(15) seconds, so one try against a stopped XRootD server takes about 15 s whatever
``skim.timeout`` says; ``XRD_CONNECTIONRETRY=1`` leaves the retrying to ``skim.retries``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

from coffea import processor
from coffea.processor.executor import WorkItem

from analysis.core.net import is_remote, is_transient, output_failure, transient_cause
from analysis.errors import HepprepError, InputFileError
from analysis.skim.coffea_compat import coffea_retries, input_failure_kind, install_chunk_retry
from analysis.skim.open_files import worker_files

__all__ = ["RetryingRunner", "UnreachableServers", "call_with_retries"]

T = TypeVar("T")

def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _server(url: str) -> str:
    return urlsplit(url).netloc


class UnreachableServers:
    """The servers (``host:port``) that failed every try of one read, and how many tries that was.

    `call_with_retries` gives a read from such a server one try instead of
    ``retries + 1``; a server that answers is forgotten. One instance serves one skim in
    one process (the input check, or the chunks of one worker process), so a server that
    comes back is tried in full again by the next skim.
    """

    def __init__(self) -> None:
        self._failed_tries: dict[str, int] = {}

    def failed_tries(self, url: str) -> int:
        """Tries of an earlier read that the server of ``url`` failed (0: not known to be down)."""
        return self._failed_tries.get(_server(url), 0)

    def mark_down(self, url: str, tries: int) -> None:
        self._failed_tries[_server(url)] = tries

    def mark_up(self, url: str) -> None:
        self._failed_tries.pop(_server(url), None)


def call_with_retries(read: Callable[[], T], *, url: str, retries: int, wait: float,
                      unreachable: UnreachableServers | None = None) -> T:
    """``read()``, tried again after transient network errors; other errors pass through.

    Parameters
    ----------
    read : callable without arguments
        Opens and reads the remote file (each try opens it afresh).
    url : str
        Named in the error.
    retries : int
        Tries after the first one (``config.skim.retries``).
    wait : float
        Seconds between tries (``config.skim.retry_wait``).
    unreachable : UnreachableServers, optional
        The skim's memory of servers that failed every try of a read: a read from one of
        them gets a single try, and this read's outcome updates it.

    Raises
    ------
    InputFileError
        ``<url>: cannot read after <retries + 1> tries: <ErrorType>: <message>`` once the
        last try failed with a transient error; for a server already known to be down,
        ``<url>: cannot read: its server failed <n> tries of an earlier read in this skim,
        and this read's one try: <ErrorType>: <message>``.
    """
    known_down = unreachable.failed_tries(url) if unreachable is not None else 0
    if known_down:
        retries = 0
    for attempt in range(retries + 1):
        try:
            result = read()
        except Exception as err:  # noqa: BLE001 - sorted by transient_cause just below
            cause = transient_cause(err)
            if cause is None:
                raise
            if attempt == retries:
                if unreachable is not None and not known_down:
                    unreachable.mark_down(url, retries + 1)
                raise _gave_up(url, cause, retries, known_down) from None
            time.sleep(wait)
        else:
            if unreachable is not None:
                unreachable.mark_up(url)
            return result
    raise AssertionError("unreachable")  # pragma: no cover


def _gave_up(url: str, cause: BaseException, retries: int, known_down: int) -> InputFileError:
    """The one-line error of a read whose last try failed with ``cause``."""
    advice = "(a server down or unreachable; raise skim.retries / skim.timeout for a slow one)"
    if known_down:
        return InputFileError(url, f"cannot read: its server failed {_tries(known_down)} of an "
                                   f"earlier read in this skim, and this read's one try: "
                                   f"{_one_line(cause)} {advice}")
    return InputFileError(url, f"cannot read after {_tries(retries + 1)}: {_one_line(cause)} {advice}")


def _tries(n: int) -> str:
    return "1 try" if n == 1 else f"{n} tries"


# Per process, per skim (`RetryingRunner.skim_id`): the servers its chunks found down.
_UNREACHABLE_BY_SKIM: dict[str, UnreachableServers] = {}


def _retry_chunk(skim_id: str, retries: int, wait: float, coffea_retries_n: int, skipbadfiles: Any,
                 func: Callable[..., Any], *args: Any, use_result_type: bool = False,
                 keep_files: tuple[Any] | None = None, **kwargs: Any) -> Any:
    """Stands in for coffea's ``Runner.automatic_retries`` (same arguments after the first three).

    A chunk of a remote file gets `call_with_retries`, with the memory of unreachable
    servers that this process keeps for skim ``skim_id``; its last failure becomes the
    output ``{"errors": {url: [cause]}}`` that `DiTauProcessor` returns for an unreadable
    chunk, so the skim records or raises it like any bad file. A chunk, local or remote,
    that coffea cannot open or build events from (for another reason than the network)
    becomes that output too (`_chunk_input_failure`); coffea retries a local chunk only
    after a failure that another try may cure (`_local_chunk`). With ``keep_files``
    (``(filter_name,)``, futures workers), a local chunk's file stays open in this worker
    for its next chunks (`analysis.skim.open_files.WorkerFiles`).
    """
    item = args[0][0] if args and isinstance(args[0], tuple) else (args[0] if args else None)
    if not isinstance(item, WorkItem):
        return coffea_retries(coffea_retries_n, skipbadfiles, func, *args,
                              use_result_type=use_result_type, **kwargs)
    if keep_files is not None and not is_remote(item.filename):
        worker_files().keep(item.filename, item.treename, keep_files[0])
    if is_remote(item.filename):
        unreachable = _UNREACHABLE_BY_SKIM.setdefault(skim_id, UnreachableServers())
        run = partial(call_with_retries, partial(func, *args, **kwargs), url=item.filename,
                      retries=retries, wait=wait, unreachable=unreachable)
    else:
        run = partial(_local_chunk, coffea_retries_n, skipbadfiles, func, *args,
                      use_result_type=use_result_type, **kwargs)
    try:
        return run()
    except InputFileError as err:
        return {"out": {"errors": {item.filename: [err.cause]}}, "processed": {item}}
    except Exception as err:  # noqa: BLE001 - only coffea's input failures are kept, below
        disk = output_failure(err)
        if disk is not None:
            raise disk from None  # the output disk, as itself: the CLI says it in one line
        ours = next((link for link in _causes(err) if isinstance(link, HepprepError)), None)
        if ours is not None:
            raise ours from None  # a processor's bug (ProcessorError): its one line, not coffea's wrapping
        cause = _chunk_input_failure(item, err)
        if cause is None:
            raise
        return {"out": {"errors": {item.filename: [cause]}}, "processed": {item}}


def _local_chunk(coffea_retries_n: int, skipbadfiles: Any, func: Callable[..., Any], *args: Any,
                 use_result_type: bool = False, **kwargs: Any) -> Any:
    """A local chunk: one try, then coffea's retries only where another try may pass.

    A damaged file fails the same way every time: coffea's retries (3 by default) would
    cost three more reads and print three warnings before the skim's one-line error. An
    OSError (a network file system's hiccup, say) still gets them.
    """
    try:
        return func(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - sorted by is_transient just below
        if not coffea_retries_n or not is_transient(err) or output_failure(err):
            raise
    return coffea_retries(coffea_retries_n - 1, skipbadfiles, func, *args,
                          use_result_type=use_result_type, **kwargs)


def _chunk_input_failure(item: WorkItem, err: BaseException) -> str | None:
    """The one-line cause for a chunk that coffea could not open or build events from, else None.

    For a file that passed `check_file`, such a failure is the file's fault; left to coffea
    it would end the skim with a traceback, even with --skip-bad-files. A failure inside the
    processor is not: the processor returns unreadable input as an error itself, so what it
    raises is a bug or the output disk, and stays an exception.
    """
    what = input_failure_kind(err)
    if what is None:
        return None
    return (f"cannot read entries {item.entrystart}-{item.entrystop} of {item.treename}: "
            f"{what} ({_one_line(err.__cause__ or err)})")


@dataclass
class RetryingRunner(processor.Runner):
    """coffea `Runner` with the remote-file retry policy (``retries``/``retry_wait`` of ``config.skim``).

    Extra fields
    ------------
    remote_retries : int
        Tries after the first for a chunk of a remote file that fails with a transient error.
    retry_wait : float
        Seconds between those tries.
    skim_id : str
        Names this skim in each worker process's memory of unreachable servers (a new
        one per runner), so that a later skim in the same worker tries a server afresh.
    keep_files : tuple or None
        ``(filter_name,)``: each worker keeps its chunks' local files open for its next
        chunks (`analysis.skim.open_files.WorkerFiles`; give ``uproot_options`` the
        `WorkerObjectCache`). Only for workers that end with the skim (futures).

    The Runner's ``xrootdtimeout`` is the per-request timeout handed to ``uproot.open``.
    """

    remote_retries: int = 3
    retry_wait: float = 1.0
    skim_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    keep_files: tuple[Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.install_retry()

    def install_retry(self) -> None:
        """Install the per-chunk retry, with the fields as they are now (call again after a change)."""
        # A module-level partial: it pickles small to the executor's workers.
        install_chunk_retry(self, partial(_retry_chunk, self.skim_id, self.remote_retries, self.retry_wait,
                                          keep_files=self.keep_files))


def _causes(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from (coffea wraps a chunk's failure in its own)."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen
