"""Skim stage: every input file checked before any chunk runs, in this process or in the worker processes.

`check_inputs` runs `analysis.skim.inputs.check_file` on each file of the fileset, fills in
each dataset's ``sumw`` and returns the errors of the files it skipped (``skip_bad_files``),
or raises the first file's error in the fileset's order.

With a pool of worker processes (``pool``: the futures executor's, two workers or more, every
file local) the files are checked in the workers, side by side. In this process the checks
took 1.25 s for the 18 files of the 10M-event benchmark (reading each TTree's metadata is
most of a check), after this process's own imports, while the workers, whose libraries
import beside those, waited for the first chunk. And a worker keeps each file it checked
open (`analysis.skim.open_files.CheckedInWorker`), the pool hands the file's chunks to that
worker (`analysis.skim.pool`), and so its chunks find the TTree already read. The results
come back and are taken in the fileset's order, as in this process: the same first error,
the same files skipped, the same copies refused, the same sums of weights.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import cloudpickle

from analysis.config import Config
from analysis.core.net import is_remote
from analysis.errors import InputFileError
from analysis.skim.inputs import DatasetInfo, InputFile, check_file, dataset_sumw
from analysis.skim.open_files import OpenFiles, worker_files
from analysis.skim.remote import UnreachableServers, call_with_retries
from processors.base import SkimProcessor

__all__ = ["check_inputs", "checks_in_workers"]


def checks_in_workers(datasets: dict[str, DatasetInfo]) -> bool:
    """Whether the files can be checked in worker processes: all local (a remote file's check
    is tried again with the memory of unreachable servers that this process keeps)."""
    return not any(is_remote(f.path) for d in datasets.values() for f in d.files)


def _check_in_worker(item: InputFile, is_mc: bool, need_sumw: bool, weight: tuple[str, ...] | None, *,
                     processor: bytes, filter_name: Any) -> tuple[InputFile, str | None]:
    """`check_file` in a worker: ``(item, None)``, or ``(item, cause)`` for a bad file.

    ``processor`` comes cloudpickled, as coffea sends it to the chunks: a processor from a
    file is pickled by value (`analysis.skim.plugins`). The cause comes back as text:
    `InputFileError` is not rebuilt by unpickling.
    """
    opener = worker_files().checking(filter_name)
    try:
        check_file(item, processor=cloudpickle.loads(processor), is_mc=is_mc, need_sumw=need_sumw, weight=weight,
                   open_files=opener)
    except InputFileError as err:
        opener.discard(item.path)
        return item, err.cause
    except BaseException:
        opener.discard(item.path)
        raise
    return item, None


def _submit_checks(datasets: dict[str, DatasetInfo], proc: SkimProcessor, pool: Any,
                   filter_name: Any) -> dict[int, Any]:
    """The checks of every file, submitted to the pool: ``{id(item): future}``."""
    task = partial(_check_in_worker, processor=cloudpickle.dumps(proc), filter_name=filter_name)
    items = [(info, item) for info in datasets.values() for item in info.files]

    def size(pair: tuple[DatasetInfo, InputFile]) -> int:
        try:
            return os.path.getsize(pair[1].path)
        except OSError:
            return 0

    # Largest files first: the workers take them in turn, and each then runs the chunks of the
    # files it checked, so that their shares of the work come out close.
    return {id(item): pool.submit(task, item, info.is_mc, info.sumw is None, info.weight)
            for info, item in sorted(items, key=lambda pair: -size(pair))}


def check_inputs(datasets: dict[str, DatasetInfo], config: Config, proc: SkimProcessor, *,
                 skip_bad_files: bool, open_files: OpenFiles | None = None, pool: Any = None,
                 filter_name: Any = None) -> list[dict[str, str]]:
    """Check every file; fill in each dataset's sumw. Returns the errors of skipped files.

    With `open_files`, local files stay open there for the chunks run in this process. With
    `pool` (see `checks_in_workers`), the checks run in its workers, which keep the files
    open for their chunks, their TTrees' type names narrowed to `filter_name`
    (`analysis.skim.open_files.restrict_typenames`).
    """
    errors = []
    unreachable = UnreachableServers()  # with skip_bad_files, a dead server's other files get one try
    futures = _submit_checks(datasets, proc, pool, filter_name) if pool is not None else {}
    for info in datasets.values():
        seen: dict[str, str] = {}
        for item in info.files:
            try:
                if pool is not None:
                    checked, cause = futures.pop(id(item)).result()
                    vars(item).update(vars(checked))  # what the check filled in, there
                    if cause is not None:
                        raise InputFileError(item.path, cause)
                else:
                    check = partial(check_file, item, processor=proc, is_mc=info.is_mc,
                                    need_sumw=info.sumw is None, weight=info.weight,
                                    timeout=config.skim.timeout, open_files=open_files)
                    if is_remote(item.path):  # a network hiccup is tried again (analysis.skim.remote)
                        call_with_retries(check, url=item.path, retries=config.skim.retries,
                                          wait=config.skim.retry_wait, unreachable=unreachable)
                    else:
                        check()
                # Parts are named by file UUID: a copy of a file would share them, and its
                # events would be counted twice anyway.
                if item.uuid in seen:
                    raise InputFileError(item.path, f"same ROOT file UUID {item.uuid} as "
                                                    f"{seen[item.uuid]}: a copy of the same events; "
                                                    f"list only one of them in the fileset")
                seen[item.uuid] = item.path
            except InputFileError as err:
                if not skip_bad_files:
                    raise
                item.error = err.cause
                errors.append({"dataset": info.name, "path": item.path, "cause": err.cause})
        dataset_sumw(info)  # before any selection, over the files that could be read
    return errors
