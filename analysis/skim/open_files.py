"""Skim stage: input files kept open after their check, so the chunks run in the same process read each TTree's metadata once.

Opening a TTree with uproot deserialises every branch's metadata in Python: 20 ms for the
93 branches of a generated file, 1.4 s for the 1,500 of a real NanoAOD file. The skim
checks each file before any chunk runs (`analysis.skim.inputs.check_file`), and coffea then
opens the file again for every chunk, so a file was read two or more times. With the
iterative executor the chunks run in this very process: `OpenFiles` keeps the checked
files open, their TTrees in an uproot object cache shared with coffea's own
``uproot.open`` (passed as ``uproot_options``). uproot finds the TTree there by file UUID
and object position and reuses it, with its branches' interpretations; it discards an
entry whose file was closed, so a stale one is never used.

The futures executor's workers do the same for the chunks they run (`WorkerFiles`): a
worker keeps the files of its recent chunks open, so its next chunk of the same file reuses
the TTree (opening it again cost 80 ms of CPU per chunk of the 1M-event benchmark, where a
chunk of a kept file took 130 ms). Dask workers outlive the skim and open files as before.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import uproot

from analysis.skim.coffea_compat import restrict_typenames

__all__ = ["LOCAL_READ_OPTIONS", "MAX_KEPT_BRANCHES", "WORKER_KEPT_FILES", "CheckedInWorker", "OpenFiles",
           "WorkerFiles", "WorkerObjectCache", "worker_files"]

# Bound on what kept files hold: their TTree metadata (about 10 kB per branch: 14 MB for a
# real NanoAOD TTree of 1,500 branches) and the memory-mapped pages of the baskets the chunks
# read (clean, file-backed pages, counted in RSS though the kernel can drop them at will:
# +200 MiB for the 18 files of the 1M-event benchmark). Files checked after the bound is
# reached are closed as usual.
MAX_KEPT_BRANCHES = 10_000

# Files a futures worker keeps open between its chunks (WorkerFiles): the current one and
# the one before, for the chunks two workers take from the same file in turn.
WORKER_KEPT_FILES = 2

# uproot options for reading local files: memory-mapped, so that each of a chunk's
# per-branch reads is a slice of the mapping instead of a request handed to fsspec's
# I/O thread (a third less CPU for the skim's reads).
LOCAL_READ_OPTIONS = {"handler": uproot.source.file.MemmapSource}


class _CheckedObjects(dict):
    """uproot object cache that takes new objects only while the files are being checked.

    Afterwards the chunks' own opens of files that were not kept would add their TTrees,
    held for the whole run; those writes are dropped (uproot only reads the cache back).
    """

    accepting = True

    def __setitem__(self, key: str, value: Any) -> None:
        if self.accepting:
            super().__setitem__(key, value)


class OpenFiles:
    """Checked local input files held open, their objects cached for later ``uproot.open`` calls.

    Parameters
    ----------
    max_branches : int
        Stop keeping files once their TTrees hold this many branches in total.

    Use `open` in place of ``uproot.open`` when checking, pass `chunk_options()` to the
    coffea Runner once every file is checked, and `close` when the run is over.
    """

    def __init__(self, *, max_branches: int = MAX_KEPT_BRANCHES):
        self.max_branches = max_branches
        # uproot's object cache: key = file UUID + object position, value = the TTree etc.
        self.object_cache = _CheckedObjects()
        self._files: list[Any] = []
        self._branches = 0

    def chunk_options(self, filter_name: Any = None) -> dict[str, Any]:
        """Options for coffea's ``uproot.open`` of a chunk: look objects up in the shared cache.

        Ends the checks: the cache takes no new objects from then on. With `filter_name`
        (the branch filter NanoEvents gets as ``iteritems_options``), the kept TTrees'
        ``typenames()`` lists only those branches: coffea's ``from_root`` calls it for
        every chunk to decorate the form, which identifies the interpretation of every
        branch of the file (a third of building the events, for branches the filter then
        leaves out). NanoAODSchema does not use the type names.
        """
        self.object_cache.accepting = False
        if filter_name is not None:
            for obj in self.object_cache.values():
                if isinstance(obj, uproot.behaviors.TTree.TTree):
                    restrict_typenames(obj, filter_name)
        return {"object_cache": self.object_cache}

    def open(self, path: str, **options: Any) -> tuple[Any, bool]:
        """``uproot.open(path, **options)``; returns ``(file, kept)``.

        A kept file must not be closed by the caller: it stays open until `close`. Its
        arrays are not cached (``array_cache=None``): chunks read each branch once, and an
        open file's cache would otherwise hold their arrays for the whole run.
        """
        if self._branches >= self.max_branches:
            return uproot.open(path, **options), False
        file = uproot.open(path, object_cache=self.object_cache, array_cache=None,
                           **LOCAL_READ_OPTIONS, **options)
        self._files.append(file)
        return file, True

    def count_branches(self, tree: Any) -> None:
        """Record the branches of a TTree (or fields of an RNTuple) read from a kept file, against `max_branches`."""
        self._branches += len(tree.branches if hasattr(tree, "branches") else tree.keys(recursive=False))

    def close(self) -> None:
        """Close every kept file and forget the cached objects."""
        files, self._files = self._files, []
        self.object_cache.clear()
        for file in files:
            file.close()

    def __len__(self) -> int:
        return len(self._files)


class WorkerFiles:
    """In a worker process: the files of its latest chunks, kept open, least recently used closed first.

    `keep` opens a chunk's file (once) with `object_cache`, reads its TTree into it and
    restricts the TTree's type names as `OpenFiles.chunk_options` does; coffea's own open of
    the chunk, given the same cache (``uproot_options``), then finds that TTree. The kept
    TTrees hold at most `max_branches` branches together; the cache takes objects only
    during `keep` (as `_CheckedObjects`), so the files coffea opens and closes leave none.

    At most `max_files` that chunks have read stay open: a kept file is memory-mapped, and
    the pages its chunks read count in the worker's resident memory until it is closed (the
    10M-event benchmark, every file kept: 2.9 GB per worker, its whole input). A worker takes
    the chunks file by file (`analysis.skim.pool`), so the file of its next chunk is mostly
    its latest. Files the worker checked (`checking`) wait for their chunks unread, holding
    only their TTree metadata: they count against `max_branches` only.
    """

    def __init__(self, *, max_branches: int = MAX_KEPT_BRANCHES, max_files: int = WORKER_KEPT_FILES):
        self.max_branches = max_branches
        self.max_files = max_files
        self.object_cache = _CheckedObjects()
        self.object_cache.accepting = False
        self._files: OrderedDict[str, tuple[Any, int]] = OrderedDict()  # path -> (file, branches)
        self._unread: set[str] = set()  # checked here, no chunk yet

    def keep(self, path: str, treename: str, filter_name: Any = None) -> None:
        """Have ``path`` open with its TTree ``treename`` cached, for the chunk about to run.

        A file that cannot be opened or has no such TTree is left alone: coffea's own open
        of the chunk then fails as it would have, with the skim's usual error.
        """
        if path in self._files:
            self._files.move_to_end(path)
            if path in self._unread:  # its first chunk: it counts against max_files from now on
                self._unread.discard(path)
                self._evict()
            return
        self.object_cache.accepting = True
        try:
            file = uproot.open(path, object_cache=self.object_cache, array_cache=None, **LOCAL_READ_OPTIONS)
            try:
                tree = file[treename]
            except Exception:
                file.close()
                raise
        except Exception:  # noqa: BLE001 - reported by the chunk's own open, as without this
            return
        finally:
            self.object_cache.accepting = False
        if filter_name is not None:
            restrict_typenames(tree, filter_name)
        self._add(path, file, len(tree.branches))

    def checking(self, filter_name: Any = None) -> CheckedInWorker:
        """``open_files`` for `analysis.skim.inputs.check_file` in this worker (`CheckedInWorker`)."""
        return CheckedInWorker(self, filter_name)

    def _add(self, path: str, file: Any, branches: int, *, unread: bool = False) -> None:
        self._files[path] = (file, branches)
        if unread:
            self._unread.add(path)
        self._evict()

    def _evict(self) -> None:
        while len(self._files) > 1:
            read = [p for p in self._files if p not in self._unread]
            if len(read) > self.max_files:
                self._close(read[0])
            elif sum(n for _, n in self._files.values()) > self.max_branches:
                self._close(next(iter(self._files)))
            else:
                break

    def _close(self, path: str) -> None:
        directory, _ = self._files.pop(path)
        self._unread.discard(path)
        directory.close()
        # Its objects go too (uproot would drop them only when asked for one again).
        for key, obj in list(self.object_cache.items()):
            if getattr(obj, "file", None) is directory.file:
                del self.object_cache[key]

    def close(self) -> None:
        for path in list(self._files):
            self._close(path)

    def __len__(self) -> int:
        return len(self._files)


class CheckedInWorker:
    """What `check_file` opens through in a worker: the file stays open in `WorkerFiles`, for its chunks.

    The check reads the TTree (its branches' metadata: most of a check's time) into the
    worker's object cache, and the worker's chunks of that file, which the pool hands to the
    same worker (`analysis.skim.pool`), find it there instead of reading it again. Call
    `discard` for a file that failed its check: it has no chunks.
    """

    def __init__(self, files: WorkerFiles, filter_name: Any = None):
        self.files, self.filter_name = files, filter_name
        self._opened: tuple[str, Any] | None = None

    def open(self, path: str, **options: Any) -> tuple[Any, bool]:
        """As `OpenFiles.open`: ``(file, kept)``; a kept file is not closed by the caller."""
        if path in self.files._files:  # the same file listed in two datasets
            return self.files._files[path][0], True
        self.files.object_cache.accepting = True  # until count_branches: the check reads the TTree
        file = uproot.open(path, object_cache=self.files.object_cache, array_cache=None,
                           **LOCAL_READ_OPTIONS, **options)
        self._opened = (path, file)
        return file, True

    def count_branches(self, tree: Any) -> None:
        """Called by `check_file` once the TTree is read: the file is kept from now on."""
        self.files.object_cache.accepting = False
        if self._opened is None:
            return
        (path, file), self._opened = self._opened, None
        if self.filter_name is not None and isinstance(tree, uproot.behaviors.TTree.TTree):
            restrict_typenames(tree, self.filter_name)
        self.files._add(path, file, len(tree.branches if hasattr(tree, "branches") else tree.keys(recursive=False)),
                        unread=True)

    def discard(self, path: str) -> None:
        """Close ``path`` after a failed check."""
        self.files.object_cache.accepting = False
        if self._opened is not None:
            self._opened[1].close()
            self._opened = None
        if path in self.files._files:
            self.files._close(path)


_WORKER_FILES: WorkerFiles | None = None


def worker_files() -> WorkerFiles:
    """This process's `WorkerFiles` (made on first use; a worker process lives for one skim)."""
    global _WORKER_FILES
    if _WORKER_FILES is None:
        _WORKER_FILES = WorkerFiles()
    return _WORKER_FILES


def _worker_object_cache() -> dict[str, Any]:
    return worker_files().object_cache


class WorkerObjectCache:
    """Stands for `worker_files`'s object cache in ``uproot_options``: each process that
    unpickles it (each worker, with the chunk's options) gets its own process's cache."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _worker_object_cache, ()
