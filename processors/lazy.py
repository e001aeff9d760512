"""Skim stage (processors): a processor on coffea's dask-awkward events (``--executor dask-awkward``).

`DaskAwkwardSkim` wraps a `SkimProcessor` for ``coffea.dataset_tools.apply_to_fileset``,
which calls its ``process`` with the lazy events of a whole dataset. The dataset's metadata carries the chunks the
runner planned (``hepprep_chunks``: file, tree, UUID, entry range, one dask partition each,
in order), so the result is one JSON summary per chunk, and computing it writes the chunk's
part with the same `rows_table` and summary as the other executors.

Two ways, by the processor's ``dask_mode``:

* ``"lazy"``: ``select`` runs once, on the dask-awkward events (code of plain ``ak.``
  functions dispatches to dask-awkward); `LazyCutflow` narrows the lazy bookkeeping with
  each step's mask, partition by partition, so every chunk's cutflow is known;
* ``"chunks"``: ``select`` is numpy code (the di-tau processor); each partition's events
  go through `SkimProcessor.process_chunk` inside the graph, as on the other executors.

Functions given to ``dask_awkward.map_partitions`` are also called on typetracers (dask-
awkward's column optimisation): they then touch the branches they will read and return
the output's type, and write nothing.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import awkward as ak
import dask_awkward as dak
import numpy as np
from coffea.processor import ProcessorABC

from analysis.errors import HepprepError
from processors.base import SkimProcessor, weight_factors
from processors.failures import InputFailure, ProcessorError, _one_line, _raised_while_reading, _where_raised
from processors.parts import ROW_EVENT, rows_table

__all__ = ["CHUNKS_KEY", "DaskAwkwardSkim", "LazyCutflow", "compute_error", "lazy_bookkeeping", "lazy_process", "merge_outputs"]

# Key of the dataset metadata holding the planned chunks (`analysis.skim.dask_awkward`).
CHUNKS_KEY = "hepprep_chunks"

# uproot computes, for each partition, NanoAODSchema's cross-references whose branches are
# read (GenPart's parents and children once genPartIdxMother is: the truth), with coffea's
# numba kernels on awkward arrays. awkward registers its numba types on first use; two task
# threads doing that at once leave one with an untyped array (numba's "non-precise type
# pyobject"). Registering here, when a worker imports this module to unpickle its tasks,
# does it once, before any task thread runs.
ak.numba.register_and_check()
_BOOKKEEPING = ("run", "luminosityBlock", "event", "genWeight", "weight")
_DASK_MODES = ("lazy", "chunks")


class LazyCutflow:
    """`processors.base.Cutflow` for dask-awkward events: the same ``step(name, mask)``.

    ``kept`` is the lazy bookkeeping record (one entry per event still selected), which
    each step narrows; the weights after each step are kept, lazily, for the chunk's counts
    and exact sums (computed per partition, i.e. per chunk, when the parts are written).
    """

    def __init__(self, bookkeeping: Any):
        self.kept = bookkeeping
        self.weights: dict[str, Any] = {"all": bookkeeping.weight}
        self.notes: dict[str, Any] = {}

    @property
    def steps(self) -> list[str]:
        return list(self.weights)

    def step(self, name: str, passed: Any) -> None:
        """Keep the selected events that pass: ``passed`` has one bool per event still selected."""
        if name in self.weights:
            raise ProcessorError(f"cutflow step {name!r} recorded twice; give each step its own name")
        if not isinstance(passed, dak.Array):
            raise ProcessorError(f"cutflow step {name!r}: expected a dask-awkward array of bools (one per "
                                 f"event still selected), got {type(passed).__name__}")
        form = passed.form
        content = form.content if form.is_option else form
        if not (content.is_numpy and content.primitive == "bool" and not content.inner_shape):
            raise ProcessorError(f"cutflow step {name!r}: expected one bool per event, got {form.type}")
        mask = ak.fill_none(passed, False) if form.is_option else passed
        self.kept = self.kept[mask]
        self.weights[name] = self.kept.weight


class DaskAwkwardSkim(ProcessorABC):
    """A skim processor as coffea's dask mode calls it: `lazy_process` of each dataset's events."""

    def __init__(self, proc: SkimProcessor):
        self.proc = proc

    def process(self, events: Any) -> Any:
        return lazy_process(self.proc, events)

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


def lazy_bookkeeping(events: Any, meta: Mapping[str, Any], lumi_pb: float) -> Any:
    """`processors.base.read_bookkeeping` on dask-awkward events: a lazy record, the same formula."""
    fields = set(events.fields)
    factors = weight_factors(fields, meta)
    genweight = (ak.values_astype(events.genWeight, np.float32) if "genWeight" in fields
                 else ak.ones_like(events.event, dtype=np.float32))
    if meta.get("is_mc"):
        product = None
        for branch in factors:
            values = genweight if branch == "genWeight" else _branch(events, branch)
            values = ak.values_astype(values, np.float64)
            product = values if product is None else product * values
        if product is None:
            product = ak.ones_like(events.event, dtype=np.float64)
        # the same operations in the same order as the eager formula: the same bits
        weight = (float(meta["xsec_pb"]) * float(lumi_pb) * float(meta.get("weight_scale") or 1.0)
                  * product / float(meta["sumw"]))
    else:
        weight = ak.ones_like(events.event, dtype=np.float64)
    return dak.zip({"run": events.run, "luminosityBlock": events.luminosityBlock, "event": events.event,
                    "genWeight": genweight, "weight": weight}, depth_limit=1)


def _branch(events: Any, branch: str) -> Any:
    head, _, tail = branch.partition("_")
    if tail and head in events.fields and tail in events[head].fields:
        return events[head][tail]
    return events[branch]


def lazy_process(proc: SkimProcessor, events: Any) -> Any:
    """One JSON summary per chunk of the dataset (a dask-awkward array); computing it writes the parts."""
    meta = dict(events.metadata)
    chunks = meta.pop(CHUNKS_KEY, None)
    if chunks is None:
        raise HepprepError(f"processor {proc.processor_name()}: dask-awkward events without hepprep's chunk "
                           "plan: run it with hepprep skim --executor dask-awkward")
    widths = [c["entrystop"] - c["entrystart"] for c in chunks]
    if events.npartitions != len(chunks) or list(np.diff(events.divisions)) != widths:
        raise HepprepError(f"dataset {meta['dataset']}: coffea made partitions {events.divisions} of the "
                           f"chunks {[(c['entrystart'], c['entrystop']) for c in chunks]}")
    chunk_array = dak.from_awkward(ak.Array(chunks), npartitions=len(chunks))
    chunk_array.clear_divisions()  # its one-record partitions pair with the events' by position
    mode = proc.dask_mode
    if mode not in _DASK_MODES:
        raise ProcessorError(f"processor {proc.processor_name()}: dask_mode {mode!r} is not one of "
                             f"{', '.join(_DASK_MODES)}")
    if mode == "chunks":
        touch = partial(_touch_branches, wanted=_wanted(proc, meta))
        return dak.map_partitions(_ChunkTask(proc, meta, touch), chunk_array, events, meta=_SUMMARY_META,
                                  label="hepprep-chunk")
    try:
        bookkeeping = lazy_bookkeeping(events, meta, proc.lumi_pb)
        cutflow = LazyCutflow(bookkeeping)
        rows = proc.select(events, cutflow)
    except HepprepError:
        raise
    except InputFailure as err:
        raise HepprepError(f"dataset {meta['dataset']}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a bug of the processor's, told where it raised
        raise ProcessorError(
            f"processor {proc.processor_name()} raised {_one_line(err)} on the dask-awkward events of "
            f"dataset {meta['dataset']} (at {_where_raised(err)}; a processor of numpy code sets "
            "dask_mode = \"chunks\")") from err
    columns = _lazy_columns(rows, proc.processor_name())
    finish = _FinishTask(proc, meta, list(columns), cutflow.steps, dict(cutflow.notes))
    return dak.map_partitions(finish, chunk_array, cutflow.kept, *columns.values(),
                              *cutflow.weights.values(), meta=_SUMMARY_META, label="hepprep-part")


def _lazy_columns(rows: Any, owner: str) -> dict[str, Any]:
    if isinstance(rows, dak.Array):
        if not rows.fields:
            raise ProcessorError(f"processor {owner} returned a dask-awkward array without fields; return "
                                 "a record array or a dict of columns")
        rows = {f: rows[f] for f in rows.fields}
    if not isinstance(rows, Mapping) or not all(isinstance(v, dak.Array) for v in rows.values()):
        raise ProcessorError(f"processor {owner} returned {type(rows).__name__} on dask-awkward events; "
                             "return a dict of dask-awkward arrays (one value per selected event) or a record array")
    if ROW_EVENT in rows:
        raise ProcessorError(f"processor {owner} returns several rows per event ({ROW_EVENT}), which needs "
                             "numpy code on each chunk's events: set dask_mode = \"chunks\"")
    return {str(k): v for k, v in rows.items()}


# What a task returns: one JSON string, the chunk's `process` output (its summary or error).
_SUMMARY_META = ak.Array(ak.Array(["{}"]).layout.to_typetracer(forget_length=True))


def _is_typetracer(array: Any) -> bool:
    return ak.backend(array) == "typetracer"


def _chunk_meta(dataset_meta: Mapping[str, Any], chunk: Any) -> dict[str, Any]:
    (record,) = ak.to_list(chunk)
    return {**dataset_meta, **record}


class _FinishTask:
    """A chunk of a ``"lazy"`` processor: its selected rows and cutflow weights into its part."""

    def __init__(self, proc: SkimProcessor, meta: dict[str, Any], columns: list[str], steps: list[str],
                 notes: dict[str, Any]):
        self.proc, self.meta, self.columns, self.steps, self.notes = proc, meta, columns, steps, notes

    def __call__(self, chunk: Any, kept: Any, *arrays: Any) -> ak.Array:
        if _is_typetracer(kept):
            for array in (kept, *arrays):
                ak.typetracer.touch_data(array)
            return _SUMMARY_META
        meta = _chunk_meta(self.meta, chunk)
        columns, weights = arrays[:len(self.columns)], arrays[len(self.columns):]
        # fsum over a list, as `Cutflow`: the same exact sums as the other executors
        steps = {name: {"events": len(w), "sum_weight": math.fsum(ak.to_numpy(w).tolist())}
                 for name, w in zip(self.steps, weights)}
        bookkeeping = {f: ak.to_numpy(kept[f]) for f in _BOOKKEEPING}
        table = rows_table(dict(zip(self.columns, columns)), bookkeeping, dataset=meta["dataset"],
                           process=str(meta["process"]), label=int(meta["label"]), columns=self.proc.columns,
                           owner=self.proc.processor_name())
        return ak.Array([json.dumps(self.proc.write_chunk(meta, table, steps, self.notes))])


class _ChunkTask:
    """A chunk of a ``"chunks"`` processor: `SkimProcessor.process_chunk` on the partition's events."""

    def __init__(self, proc: SkimProcessor, meta: dict[str, Any], touch: Any):
        self.proc, self.meta, self.touch = proc, meta, touch

    def __call__(self, chunk: Any, events: Any) -> ak.Array:
        if _is_typetracer(events):
            self.touch(events)
            return _SUMMARY_META
        return ak.Array([json.dumps(self.proc.process_chunk(events, _chunk_meta(self.meta, chunk)))])


def _wanted(proc: SkimProcessor, meta: Mapping[str, Any]) -> list[str] | None:
    """The branches (globs) a ``"chunks"`` processor reads, as the runner's branch filter: None, all."""
    wanted = proc.input_branches()
    if wanted is None:
        return None
    return sorted({*wanted, *(meta.get("weight") or ())})


def _touch_branches(events: Any, *, wanted: list[str] | None) -> None:
    """Touch the typetracer events' branches matching ``wanted``: what dask-awkward then reads."""
    if wanted is None:
        ak.typetracer.touch_data(events)
        return
    for field in events.fields:
        sub = events[field].fields
        names = {f"{field}_{s}": events[field][s] for s in sub} if sub else {field: events[field]}
        for name, array in names.items():
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in wanted):
                ak.typetracer.touch_data(array)


def merge_outputs(outputs: list[str]) -> dict[str, Any]:
    """The chunks' JSON summaries merged as coffea's Runner merges ``process`` outputs."""
    merged: dict[str, Any] = {"chunks": {}, "errors": {}}
    for text in outputs:
        out = json.loads(text)
        merged["chunks"].update(out.get("chunks", {}))
        for path, causes in out.get("errors", {}).items():
            merged["errors"].setdefault(path, []).extend(causes)
    return merged



def compute_error(proc: SkimProcessor, err: Exception, datasets: list[str]) -> HepprepError:
    """One line for what ``dask.compute`` of the chunks raised: as it was, a bad input, or a bug.

    The dask-awkward operations of ``select`` run then, far from its lines: the message
    names the processor and the datasets, and how to find the line.
    """
    if isinstance(err, HepprepError):
        return err
    names = ", ".join(datasets)
    if _raised_while_reading(err):
        return HepprepError(f"dataset {names}: a file failed while its chunks were read ({_one_line(err)}); "
                            "--executor dask-awkward cannot skip it: the parts written so far are kept")
    return ProcessorError(f"processor {proc.processor_name()} raised {_one_line(err)} computing the "
                          f"dask-awkward events of dataset {names} (run --executor iterative to find the line)")
