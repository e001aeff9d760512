"""Skim stage: ``--executor dask-awkward``, the planned chunks through coffea's dask mode.

For analysis-facility users whose processors are written for coffea's dask mode: the
chunks `analysis.skim.runner.run_skim` planned and has still to do (the same checks, chunk
plan and resume as the other executors) become the steps of a coffea fileset, one dask
partition per chunk; ``coffea.dataset_tools.apply_to_fileset`` calls the processor (`processors.lazy`) with
each dataset's dask-awkward events, and one
``dask.compute`` (on the configured cluster) runs every chunk and writes its part inside
the graph. What comes back is each chunk's summary, merged as coffea's Runner merges
outputs, so the manifest and cutflow are built as for the other executors.

Not in this mode: a file that fails while the chunks run stops the run (one line; the
parts written so far are kept for the next run), where the other executors can skip it
with ``--skip-bad-files`` (files failing the checks before the run are skipped as
always); a remote read is not retried per chunk; no progress bar.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import dask
from coffea.dataset_tools import apply_to_fileset
from coffea.nanoevents import NanoAODSchema

from analysis.errors import InputFileError
from analysis.skim.inputs import DatasetInfo
from processors.base import SkimProcessor
from processors.lazy import CHUNKS_KEY, DaskAwkwardSkim, compute_error, merge_outputs

__all__ = ["coffea_fileset", "refuse_rntuple", "skim_dask_awkward"]


def refuse_rntuple(datasets: Mapping[str, DatasetInfo]) -> None:
    """One line for an RNTuple input: coffea's dask mode (2026.9) cannot build events from one."""
    for info in datasets.values():
        for item in info.files:
            if item.error is None and item.events_class == "ROOT::RNTuple":
                raise InputFileError(item.path, f"{item.treename!r} is an RNTuple, which coffea's dask mode "
                                                "cannot read yet; skim it with --executor iterative or futures")


def coffea_fileset(todo: list[Any], datasets: Mapping[str, DatasetInfo]) -> dict[str, Any]:
    """The chunks (coffea WorkItems) as a coffea fileset with steps, each dataset's in its metadata.

    coffea makes one partition per step, file after file in the order given, the steps of
    a file by their stop: the chunk list each dataset's metadata carries is in that order.
    """
    by_dataset: dict[str, dict[str, list[Any]]] = {}
    for wi in todo:
        by_dataset.setdefault(wi.dataset, {}).setdefault(wi.filename, []).append(wi)
    fileset = {}
    for name, files in by_dataset.items():
        info = datasets[name]
        entries = {f.path: f.entries for f in info.files}
        spec, chunks = {}, []
        for path, items in files.items():
            items = sorted(items, key=lambda wi: wi.entrystop)
            spec[path] = {"object_path": items[0].treename, "num_entries": entries[path],
                          "uuid": str(uuid.UUID(bytes=items[0].fileuuid)),
                          "steps": [[wi.entrystart, wi.entrystop] for wi in items]}
            chunks += [{"filename": path, "treename": wi.treename, "fileuuid": spec[path]["uuid"],
                        "entrystart": int(wi.entrystart), "entrystop": int(wi.entrystop)} for wi in items]
        fileset[name] = {"files": spec, "metadata": {**info.metadata(), CHUNKS_KEY: chunks}}
    return fileset


def skim_dask_awkward(todo: list[Any], proc: SkimProcessor, datasets: Mapping[str, DatasetInfo], *,
                      uproot_options: dict[str, Any], client: Any = None) -> dict[str, Any]:
    """Run the chunks ``todo`` in coffea's dask mode; the Runner's output (``chunks``, ``errors``).

    Parameters
    ----------
    todo : list of coffea WorkItem
        The chunks still to do, from the run's chunk plan.
    proc : SkimProcessor
    datasets : dict of DatasetInfo
        The checked datasets (sumw filled in).
    uproot_options : dict
        For uproot's reads (memory-mapped local files, a remote timeout).
    client : distributed.Client or None
        The cluster to compute on; None, dask's local scheduler.
    """
    fileset = coffea_fileset(todo, datasets)
    lazy = apply_to_fileset(DaskAwkwardSkim(proc), fileset, schemaclass=NanoAODSchema, uproot_options=uproot_options)
    try:
        computed = dask.compute(*lazy.values(), **({"scheduler": client} if client is not None else {}))
    except Exception as err:  # noqa: BLE001 - a bug, or input failing as it is read: one line each
        raise compute_error(proc, err, list(lazy)) from err
    return merge_outputs([text for summaries in computed for text in summaries.tolist()])
