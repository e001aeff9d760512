"""Skim stage: input files kept open after their check, so the chunks run in the same process read each TTree's metadata once.

Opening a TTree with uproot deserialises every branch's metadata in Python: 20 ms for the
93 branches of a generated file, 1.4 s for the 1,500 of a real NanoAOD file. The skim
checks each file before any chunk runs (`analysis.skim.inputs.check_file`), and coffea then
opens the file again for every chunk, so a file was read two or more times. With the
iterative executor the chunks run in this very process: `OpenFiles` keeps the checked
files open, their TTrees in an uproot object cache shared with coffea's own
``uproot.open`` (passed as ``uproot_options``). uproot finds the TTree there by file UUID
and object position and reuses it, with its branches' interpretations; it discards an
entry whose file was closed, so a stale one is never used. Executors in other processes
(futures, dask) do not share memory and open files as before.
"""

from __future__ import annotations

from typing import Any

import uproot

from analysis.skim.coffea_compat import restrict_typenames

__all__ = ["LOCAL_READ_OPTIONS", "MAX_KEPT_BRANCHES", "OpenFiles"]

# Bound on what kept files hold: their TTree metadata (about 10 kB per branch: 14 MB for a
# real NanoAOD TTree of 1,500 branches) and the memory-mapped pages of the baskets the chunks
# read (clean, file-backed pages, counted in RSS though the kernel can drop them at will:
# +200 MiB for the 18 files of the 1M-event benchmark). Files checked after the bound is
# reached are closed as usual.
MAX_KEPT_BRANCHES = 10_000

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
