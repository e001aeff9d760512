"""Skim stage: which executor runs the chunks, and the futures executor's worker processes.

Where the time of the futures executor went (`hepprep skim`, 1M generated events, 18 chunks,
2 workers on 2 cores; `benchmarks/bench_skim.py`): coffea's default pool, loky, starts its
workers when the chunks are submitted, after the input checks, and each worker is a new
interpreter that imports coffea, awkward, uproot and the processor before its first chunk
(2.5-4 s, on the critical path); every chunk then opened its file again (80 ms of CPU per
chunk, nearly 40% of it); and loky replaces a worker whose memory grew 300 MB beyond its
size after its first chunk ("a worker was restarted ... memory leak"), which a worker going
from a small chunk to large ones does without leaking, and each replacement pays the
imports again.

So the futures executor gets a standard-library ``ProcessPoolExecutor`` on the forkserver
start method (`worker_pool`): one server process imports the libraries once (its preload)
and every worker is a fork of it. With ``--executor futures``, `start_worker_server` launches
the server before the skim's own imports (`hepprep skim`) or its input checks (`run_skim`),
so it imports beside them; ``auto`` starts it once it has chosen the workers. It serves
every later pool of this process at once. A worker lives for the whole
skim: no task limit, no memory check; it keeps its chunks' files open between chunks
(`analysis.skim.open_files.WorkerFiles`). With two workers or more they also check the input
files (`analysis.skim.checks`), and each takes the chunks of the files it checked
(`_FilePool`), so that no file's TTree is read twice. Workers re-run the main script (as
``__mp_main__``) like any forkserver or spawn child, so a script that calls `run_skim`
needs ``if __name__ == "__main__":``.

`choose_executor` decides ``"auto"``, the default: the chunks run in this process when a
pool cannot pay back its start (one worker, one CPU, one chunk, or fewer events than
``skim.parallel_min_events``), in worker processes otherwise.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.machinery
import importlib.util
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

__all__ = ["PRELOAD", "choose_executor", "order_for_workers", "start_worker_server", "starts_workers",
           "usable_cpus", "worker_pool"]

# What every chunk needs imported: coffea's work function, NanoEvents, the chunk retry and
# the processor base (the processor's own module is added when it is importable by name).
PRELOAD = ("coffea.processor", "coffea.nanoevents", "analysis.skim.remote", "processors.base")
# Imported after them: freezes the preload's objects for the workers (and the server's exit).
_PRELOAD_END = "analysis.skim.preload_end"


def _context() -> multiprocessing.context.BaseContext:
    # forkserver is POSIX-only; elsewhere each worker is spawned and imports for itself.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def starts_workers(executor: str, workers: int) -> bool:
    """Whether a skim so configured runs its chunks in worker processes whatever its size.

    Only then is the worker server started ahead (`start_worker_server`): for ``"auto"`` it
    starts once the work is known to be large enough (`worker_pool`). A server started for
    nothing would import beside a small skim, and hold its standard output and error open
    until its imports end, so that a caller reading them would wait that long.
    """
    return executor == "futures" and workers > 1


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def start_worker_server(processor: str = "") -> None:
    """Launch the forkserver (preloading `PRELOAD` and the processor's module) and return at once.

    ``processor`` is the ``[skim] processor`` setting (``module:Class``; a file's processor
    is pickled to the workers instead). The server imports in the background; the first
    worker forked from it waits for the imports to end. `hepprep skim --executor futures`
    calls this before it imports the skim itself, so that both import side by side. A server
    already running (an earlier skim in this process) is kept, with what it imported. Where
    there is no forkserver this does nothing.
    """
    context = _context()
    if context.get_start_method() != "forkserver":
        return
    module = processor.rpartition(":")[0]
    from_file = module.endswith(".py") or "/" in module or "\\" in module
    wanted = [m for m in (*PRELOAD, *([module] if module and not from_file else []), _PRELOAD_END)
              if _importable(m)]
    context.set_forkserver_preload(list(dict.fromkeys(wanted)))
    multiprocessing.forkserver.ensure_running()


def _importable(module: str) -> bool:
    """Whether ``module`` can be found, without importing it or its parent packages.

    The server ignores a preload that fails to import; this leaves out what is not there at
    all. ``importlib.util.find_spec("coffea.processor")`` would import ``coffea`` (2 s), and
    ``processors`` with the processors, here in the skim's process before the server starts:
    the server's own imports, the workers' wait, would begin that much later.
    """
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: nothing is imported
        for depth in range(1, len(parts)):
            if spec is None or spec.submodule_search_locations is None:
                return False
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth + 1]),
                                                             spec.submodule_search_locations)
    except (ImportError, ValueError):
        return False
    return spec is not None


class _Pool(concurrent.futures.ProcessPoolExecutor):
    """A ``ProcessPoolExecutor`` that pickles each new task function once in the submitting thread.

    The standard pool pickles a task in a feeder thread; one that cannot be pickled is lost
    there and the pool then waits for it forever (CPython 3.11). coffea submits one function
    for every chunk, so checking it once per function costs one pickling per skim.
    """

    _checked: Any = None

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        if fn is not self._checked:
            pickle.dumps(fn)  # raises here, in the caller, for a task that cannot reach a worker
            self._checked = fn
        return super().submit(fn, *args, **kwargs)


def _exit_with(parent: int) -> None:
    """Worker initializer: end this worker when the skim that started it is gone.

    A skim killed with SIGKILL (or by a batch system) cannot shut its pool down; its
    workers would finish the chunks queued to them and then wait for work for ever.
    """
    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # alive, under another user: cannot be, but not gone
                pass

    threading.Thread(target=watch, name="hepprep-parent-watch", daemon=True).start()


class _FilePool(concurrent.futures.Executor):
    """``workers`` one-process `_Pool` s, each fed the tasks of the files its process has open.

    Each worker keeps the files of its chunks open (`analysis.skim.open_files.WorkerFiles`),
    and the checks run in the workers keep theirs (`analysis.skim.checks`). From one shared
    queue two workers took alternate chunks of the same file, so that each opened most files
    and read their TTree metadata itself (28 opens for the 18 files of the 10M-event
    benchmark, 0.1-0.2 s of CPU each). Here a task goes to the worker that asks for one (it
    holds fewer than `QUEUED`), chosen in this order: the next task of the file it is on; the
    first of a file it had before (a file it checked); the first of a file no worker had; the
    first (`_feed`). Tasks keep their submission order otherwise: the largest chunks first
    (`order_for_workers`), and a worker whose files are done takes what is left, so all
    finish close together. A task's file is its first argument's ``filename`` (coffea's
    ``WorkItem``) or ``path`` (``InputFile``); tasks without one go to any worker.
    """

    # A worker holds the task it runs and the next, so it never waits for this dispatcher.
    QUEUED = 2

    def __init__(self, workers: int, **pool_options: Any):
        self._pools = [_Pool(max_workers=1, **pool_options) for _ in range(workers)]
        self._lock = threading.RLock()  # a finished task's callback may run in the feeding thread
        self._pending: OrderedDict[Any, deque] = OrderedDict()  # file -> its tasks; files in order
        self._held = [0] * workers  # tasks handed to each worker and not done
        self._current: list[Any] = [None] * workers  # the file of each worker's latest task
        self._had: dict[Any, int] = {}  # file -> the worker that took its latest task
        self._checked: Any = None
        self._shut = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        if fn is not self._checked:  # as _Pool: a task that cannot be pickled fails here, not later
            pickle.dumps(fn)
            self._checked = fn
        future: concurrent.futures.Future = concurrent.futures.Future()
        first = args[0] if args else None
        file = getattr(first, "filename", None) or getattr(first, "path", None)
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._pending.setdefault(file, deque()).append((future, fn, args, kwargs))
            self._feed(steal=False)
        return future

    def _take(self, worker: int, steal: bool) -> tuple | None:
        """The next task for ``worker``, taken off the pending ones, or None."""
        current = self._current[worker]
        if current not in self._pending:
            current = next((f for f in self._pending if self._had.get(f) == worker),  # a file it had
                           next((f for f in self._pending if f is None or f not in self._had),  # a new one
                                next(iter(self._pending)) if steal and self._pending else None))
            if current is None and None not in self._pending:
                return None
        tasks = self._pending[current]
        task = tasks.popleft()
        if not tasks:
            del self._pending[current]
        self._current[worker] = current
        if current is not None:
            self._had[current] = worker
        return task

    def _feed(self, steal: bool) -> None:
        """Hand tasks to the workers holding fewer than `QUEUED`.

        On `submit` (``steal=False``) a worker takes only its own files' tasks or a new file's:
        coffea submits the chunks one by one, and an idle worker would otherwise take the
        second chunk of the first file before the other files' were submitted. Once a task
        is done (``steal=True``), a worker with nothing of its own takes the first task left.
        """
        for worker, pool in enumerate(self._pools):
            while not self._shut and self._held[worker] < self.QUEUED:
                task = self._take(worker, steal)
                if task is None:
                    break
                future, fn, args, kwargs = task
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited here
                self._held[worker] += 1
                try:
                    inner = pool.submit(fn, *args, **kwargs)
                except BaseException as err:  # noqa: BLE001 - a broken or shut pool: the task's error
                    self._held[worker] -= 1
                    future.set_exception(err)
                    continue
                inner.add_done_callback(partial(self._done, worker, future))

    def _done(self, worker: int, future: concurrent.futures.Future, inner: concurrent.futures.Future) -> None:
        with self._lock:
            self._held[worker] -= 1
        if inner.cancelled():
            future.set_exception(concurrent.futures.CancelledError())
        elif inner.exception() is not None:
            future.set_exception(inner.exception())
        else:
            future.set_result(inner.result())
        with self._lock:
            self._feed(steal=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            if cancel_futures:
                for tasks in self._pending.values():
                    for future, *_ in tasks:
                        future.cancel()
                self._pending.clear()
        for pool in self._pools:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)


@contextlib.contextmanager
def worker_pool(workers: int, processor: str = "") -> Iterator[concurrent.futures.Executor]:
    """``workers`` processes forked from the worker server (started here if need be), shut down on exit.

    Pass it to coffea's ``FuturesExecutor(pool=...)``: an instance is used as given (coffea
    neither starts nor stops it). ``processor`` as for `start_worker_server`. Two or more
    workers are fed by file (`_FilePool`).
    """
    start_worker_server(processor)
    options = {"mp_context": _context(), "initializer": _exit_with, "initargs": (os.getpid(),)}
    pool = _Pool(max_workers=1, **options) if workers == 1 else _FilePool(workers, **options)
    try:
        yield pool
    finally:
        # A failed chunk ends the skim: the chunks not yet started are dropped, not run.
        pool.shutdown(wait=True, cancel_futures=True)


def choose_executor(configured: str, *, workers: int, chunks: int, events: int,
                    parallel_min_events: int) -> tuple[str, str]:
    """The executor that runs the chunks, and why: ``(kind, reason)``.

    ``configured`` other than ``"auto"`` is taken as it is. ``"auto"`` runs in this process
    (``"iterative"``) when a pool of worker processes cannot be faster: one worker, one
    usable CPU, at most one chunk to run, or fewer events to run than ``parallel_min_events``
    (the pool's start, the libraries imported in a new process, costs about what the chunks
    of that many events take); ``"futures"`` otherwise.
    """
    if configured != "auto":
        return configured, "configured"
    if workers < 2:
        return "iterative", "one worker"
    if usable_cpus() < 2:
        return "iterative", "one usable CPU"
    if chunks < 2:
        return "iterative", f"{chunks} chunk{'' if chunks == 1 else 's'} to run"
    if events < parallel_min_events:
        return "iterative", f"{events:,} events to run, fewer than skim.parallel_min_events"
    return "futures", f"{chunks} chunks of {events:,} events"


def order_for_workers(items: Sequence[Any]) -> list[Any]:
    """Chunks largest first (ties in their given order), for a pool of workers.

    Workers take chunks in submission order: a large chunk left to the end runs alone while
    the other workers idle. Largest first keeps the last chunks small, so all workers finish
    close together. The results are keyed by part, so the order changes no output.
    """
    return sorted(items, key=lambda wi: -(wi.entrystop - wi.entrystart))
