"""Skim stage (processors): the plug-in contract — a processor selects rows, hepprep does the rest.

A physicist's analysis is a subclass of `SkimProcessor` that implements one method,
``select(events, cutflow)``: it receives a chunk's NanoEvents, records each step of its
selection on ``cutflow`` (``cutflow.step("two_muons", mask)``: the events still selected
that pass), and returns the selected rows — a dict of equal-length arrays, or an
awkward record array — one row per event that passed every step. hepprep adds the
identity and bookkeeping columns (``run``, ``luminosityBlock``, ``event``, ``dataset``,
``process``, ``label``, ``genWeight``, ``weight``) and does everything else: the part file
of each chunk, its summary and fingerprint, resume, the cutflow, weights, bad input.

Rows may be objects (a jet-level dataset): the rows then carry the reserved column
``ROW_EVENT`` (``"_event_index"``, `processors.parts`), one int per row, the position of
the row's event among the events the cutflow kept (``0 .. len(cutflow.selected) - 1``),
non-decreasing, every kept event with at least one row (record a step that drops the
events without one). hepprep repeats the identity and bookkeeping columns on each row
of an event, and does not write ``ROW_EVENT``; the processor writes its own object index
(``jet_index``). The cutflow still counts events; a row's ``weight`` is its event's
weight, so a sum over the rows of a part counts each event once per object. A column of
awkward lists (``var * float32``, one list per row) is written as a Parquet list column
(declared ``"list<float32>"``): variable-length, never padded. ``cutflow.count(name, n)``
records objects handled in a documented way (a jet without constituents): the part's
summary keeps them and the manifest sums them per dataset.

Options come from a pydantic model the processor declares (``Options``), validated from
the configuration's ``[skim.options]`` (unknown keys are errors); ``name`` and ``version``
enter every chunk's fingerprint, so a new version re-runs its chunks instead of reusing
parts. ``columns`` declares the output columns and their Arrow types (``"float32"``,
``"int16"``, ``"list<float32>"``, ...; undeclared columns are typed from their values),
``default_features`` the training inputs when the configuration names none, ``branches``
the NanoAOD branches (glob patterns) it reads, so that a chunk's events are built from those alone.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import awkward as ak
import numpy as np
from coffea import processor
from pydantic import BaseModel, ConfigDict, ValidationError

from analysis.core.names import dataset_folder
from analysis.core.net import is_remote, is_transient, redact
from analysis.core.settings import format_validation_error
from analysis.errors import ConfigError, HepprepError
from processors.failures import (InputFailure, ProcessorError, _input_failures, _one_line,
                                 _raised_while_reading, _where_raised)
from processors.parts import bookkeeping_fingerprint, part_name, read_part_summary, rows_table, write_part
from processors.profiles import ProfileTable

__all__ = ["Cutflow", "InputFailure", "NoOptions", "ProcessorError", "SkimProcessor"]


class NoOptions(BaseModel):
    """A processor without options: ``[skim.options]`` must be empty."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Cutflow:
    """The named steps of one chunk's selection: events and sum of weights after each.

    Parameters
    ----------
    weight : float array, one per event of the chunk
        The events' weights (the sums use them).

    ``selected`` holds the chunk's event indices still selected; `step` narrows it.
    ``notes`` are extra fields for the part's summary (the input profile a chunk was read with);
    `count` adds to its ``counts``.
    """

    def __init__(self, weight: np.ndarray):
        self._weight = np.asarray(weight, dtype=np.float64)
        self.selected = np.arange(len(self._weight))
        self.steps: dict[str, dict[str, float]] = {}
        self.notes: dict[str, Any] = {}
        self._record("all")

    def _record(self, name: str) -> None:
        # fsum over a list: the same exact sum on every executor and re-run, whatever the order
        self.steps[name] = {"events": len(self.selected),
                            "sum_weight": math.fsum(self._weight[self.selected].tolist())}

    def step(self, name: str, passed: Any) -> None:
        """Keep the selected events that pass: ``passed`` has one bool per event still selected."""
        if name in self.steps:
            raise ProcessorError(f"cutflow step {name!r} recorded twice; give each step its own name")
        mask = _bool_array(passed, what=f"cutflow step {name!r}")
        if len(mask) != len(self.selected):
            raise ProcessorError(f"cutflow step {name!r}: the mask has {len(mask)} entries but "
                                 f"{len(self.selected)} events are still selected (apply each step's mask "
                                 "to the events before the next step)")
        self.selected = self.selected[mask]
        self._record(name)

    def count(self, name: str, n: int) -> None:
        """Add ``n`` to the chunk's count ``name`` (``notes["counts"]``, summed per dataset in the manifest)."""
        counts = self.notes.setdefault("counts", {})
        counts[name] = counts.get(name, 0) + int(n)


def _bool_array(values: Any, *, what: str) -> np.ndarray:
    if isinstance(values, ak.Array):
        if values.ndim != 1:
            raise ProcessorError(f"{what}: expected one bool per event, got {values.type}")
        values = ak.to_numpy(ak.fill_none(values, False))
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype != np.bool_:
        raise ProcessorError(f"{what}: expected a 1-d bool array, got {array.dtype} of shape {array.shape}")
    return array


class SkimProcessor(processor.ProcessorABC):
    """Base of every skim processor (see the module docstring).

    Parameters
    ----------
    options : mapping or pydantic model or None
        ``[skim.options]``, validated with ``Options``.
    lumi_pb : float
        Integrated luminosity for the MC weights.
    out_dir : str
        The skim folder; parts go to ``<out_dir>/<dataset folder>/``.
    chunk_tree : callable or None
        Given by the skim: the chunk's open TTree (one read of many branches) where it can
        be found, for `read_branches`.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Options: ClassVar[type[BaseModel]] = NoOptions
    columns: ClassVar[Mapping[str, str]] = {}
    default_features: ClassVar[tuple[str, ...]] = ()
    branches: ClassVar[tuple[str, ...]] = ()
    # --executor dask-awkward: "lazy", select gets the dataset's dask-awkward events (code of
    # plain awkward functions); "chunks", each chunk's events inside the graph (numpy code).
    dask_mode: ClassVar[str] = "lazy"

    def __init__(self, options: Any = None, *, lumi_pb: float, out_dir: str,
                 chunk_tree: Callable[[ak.Array], Any] | None = None,
                 input_profiles: Mapping[str, Mapping[str, Any]] | None = None):
        self.options = self.validate_options(options)
        self.lumi_pb = float(lumi_pb)
        self.out_dir = str(out_dir)
        self.chunk_tree = chunk_tree
        # Set by the skim for chunks run in this process (`processors.parts.BackgroundParts`);
        # None: each part is written before `process` returns (worker processes, dask).
        self.part_writer: Callable[..., None] | None = None
        self.input_profiles = dict(input_profiles or {})
        # NanoAOD dialects (processors.profiles), with [skim.input_profiles] of the config
        self.profiles = ProfileTable(self.input_profiles)

    # -- what a processor implements ------------------------------------------------------------
    def select(self, events: ak.Array, cutflow: Cutflow) -> Mapping[str, Any] | ak.Array:
        """The selected rows of one chunk, recording each step on ``cutflow``."""
        raise NotImplementedError(f"{type(self).__name__} must implement select(events, cutflow)")

    # -- what hepprep does --------------------------------------------------------------------------
    @classmethod
    def processor_name(cls) -> str:
        return cls.name or cls.__name__

    @classmethod
    def validate_options(cls, options: Any) -> BaseModel:
        """``[skim.options]`` as the processor's ``Options`` model, or a one-line `ConfigError`."""
        if isinstance(options, cls.Options):
            return options
        given = dict(options or {})
        # Unknown keys are errors whatever the model's own `extra` setting: a typo must not
        # silently keep a default (the rule of every hepprep configuration).
        known = {name for name, f in cls.Options.model_fields.items()} | {
            f.alias for f in cls.Options.model_fields.values() if f.alias}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(f"skim.options ({cls.processor_name()}): {unknown[0]}: unknown key "
                              f"(the options are {', '.join(sorted(cls.Options.model_fields)) or 'none'})")
        try:
            return cls.Options.model_validate(given)
        except ValidationError as err:
            raise ConfigError(f"skim.options ({cls.processor_name()}): {format_validation_error(err)}") from None

    @classmethod
    def options_from(cls, config: Any) -> Any:
        """The processor's options in a configuration: ``[skim.options]``."""
        return config.skim.options

    def identity(self) -> dict[str, Any]:
        """What of the processor decides a part's rows: name, version, options (in every fingerprint)."""
        # the configuration's input profiles only when given: default fingerprints stay as they were
        return {"name": self.processor_name(), "version": str(self.version),
                "options": self.options.model_dump(mode="json"),
                **({"input_profiles": self.input_profiles} if self.input_profiles else {})}

    def record(self) -> dict[str, Any]:
        """The processor as the skim manifest records it (what later stages read of it)."""
        return {**self.identity(), "class": f"{type(self).__module__}:{type(self).__qualname__}",
                "default_features": list(self.default_features)}

    def fingerprint(self, dataset: Mapping[str, Any]) -> str:
        """The settings fingerprint of a part of this dataset (processor, luminosity, dataset metadata)."""
        return bookkeeping_fingerprint(self.identity(), self.lumi_pb, dict(dataset))

    def input_branches(self) -> list[str] | None:
        """Branches (glob patterns) NanoEvents builds a chunk from: ``branches``, or every one (None).

        The identity and weight branches are added; so are the counters (``nMuon``) of the
        collections named, which NanoEvents needs to build them.
        """
        if not self.branches:
            return None
        counters = {f"n{b.split('_', 1)[0]}" for b in self.branches if "_" in b}
        return sorted({*self.branches, *counters, "run", "luminosityBlock", "event", "genWeight"})

    def check_branches(self, branches: set[str], *, is_mc: bool) -> str | None:
        """Check a file's branches before any chunk runs; the input profile's name, if it has one.

        Raises a ``ValueError`` (its message one line naming what lacks) for a file without
        a branch the processor needs. The default checks the plain names of ``branches``.
        """
        missing = [b for b in self.branches if not any(c in b for c in "*?[") and b not in branches]
        if missing:
            raise ValueError(f"missing branch{'es' if len(missing) > 1 else ''} {', '.join(missing)} "
                             f"(read by processor {self.processor_name()})")
        return None

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator

    def process(self, events: ak.Array) -> dict[str, Any]:
        """One chunk: its part (written or already there) or its input error, as coffea output.

        (coffea's dask mode calls `processors.lazy.DaskAwkwardSkim`, which wraps the processor.)
        """
        return self.process_chunk(events, dict(events.metadata))

    def process_chunk(self, events: ak.Array, meta: dict[str, Any]) -> dict[str, Any]:
        """`process` of one chunk's events, ``meta`` the dataset's metadata and the chunk's."""
        dataset = meta["dataset"]
        relpath = f"{dataset_folder(dataset)}/{part_name(meta['fileuuid'], meta['entrystart'], meta['entrystop'])}"
        path = Path(self.out_dir) / relpath
        fingerprint = self.fingerprint(meta)
        done = read_part_summary(path) if path.exists() else None
        if done is not None and done.get("fingerprint") == fingerprint:
            return {"chunks": {relpath: done}}  # a retried or resumed chunk: touch no branch
        try:
            table, cutflow = self.run_chunk(events, meta)
        except InputFailure as err:
            return {"errors": {meta["filename"]: [_one_line(err)]}}
        return self.write_chunk(meta, table, cutflow.steps, cutflow.notes)

    def write_chunk(self, meta: Mapping[str, Any], table: Any, steps: dict[str, dict[str, float]],
                    notes: Mapping[str, Any]) -> dict[str, Any]:
        """Write a chunk's part with its summary; the summary as coffea output (every executor)."""
        dataset = meta["dataset"]
        name = part_name(meta["fileuuid"], meta["entrystart"], meta["entrystop"])
        relpath = f"{dataset_folder(dataset)}/{name}"
        summary = {"dataset": dataset, "file": redact(meta["filename"]), "fileuuid": meta["fileuuid"],
                   "start": int(meta["entrystart"]), "stop": int(meta["entrystop"]),
                   "rows": table.num_rows, **notes, "fingerprint": self.fingerprint(meta),
                   "sumw": meta["sumw"], "cutflow": steps,
                   # the steps' order (the summary is stored with its keys sorted)
                   "steps": list(steps)}
        writer = getattr(self, "part_writer", None) or write_part  # (a plug-in's __init__ may skip ours)
        writer(table, Path(self.out_dir) / relpath, summary)
        return {"chunks": {relpath: summary}}

    def run_chunk(self, events: ak.Array, meta: dict[str, Any]) -> tuple[Any, Cutflow]:
        """(part table, cutflow) of one chunk.

        Reading failures (inside `select` too) become `InputFailure`; other exceptions of
        ``select`` a `ProcessorError` naming the processor, the chunk and where it raised.
        """
        where = f"entries {meta['entrystart']}-{meta['entrystop']} of {meta.get('treename', 'Events')}"
        with _input_failures(meta, where):
            bookkeeping = read_bookkeeping(events, meta, self.lumi_pb, reader=self.read_branches)
        cutflow = Cutflow(bookkeeping["weight"])
        try:
            rows = self.select(events, cutflow)
        except (InputFailure, ProcessorError, HepprepError):
            raise
        except Exception as err:  # noqa: BLE001 - a reading failure or a bug: told apart here
            if is_remote(meta["filename"]) and is_transient(err):
                raise  # the network's fault, not the file's: RetryingRunner tries the chunk again
            if _raised_while_reading(err):
                raise InputFailure(f"cannot read {where} ({_one_line(err)})") from None
            raise ProcessorError(f"processor {self.processor_name()} raised {_one_line(err)} on {where} "
                                 f"of {redact(meta['filename'])} (at {_where_raised(err)})") from err
        selected = cutflow.selected
        table = rows_table(rows, {k: v[selected] for k, v in bookkeeping.items()}, dataset=meta["dataset"],
                           process=str(meta["process"]), label=int(meta["label"]), columns=self.columns,
                           owner=self.processor_name())
        return table, cutflow

    def read_branches(self, events: ak.Array, names: list[str]) -> dict[str, ak.Array]:
        """Branches of the chunk by NanoAOD name, in one read of the chunk's TTree where it is at hand."""
        tree = self.chunk_tree(events) if self.chunk_tree is not None else None
        meta = events.metadata
        if tree is not None:
            return tree.arrays(names, entry_start=meta["entrystart"], entry_stop=meta["entrystop"], how=dict)
        out = {}
        for branch in names:
            head, _, tail = branch.partition("_")
            if tail and head in events.fields and tail in events[head].fields:
                out[branch] = ak.materialize(events[head][tail])
            else:
                out[branch] = ak.materialize(events[branch])
        return out


def weight_factors(fields: set[str], meta: Mapping[str, Any]) -> list[str]:
    """The event branches whose product is a chunk's weight: the dataset's list, or genWeight where present.

    Data has none. A listed branch the events lack is the file's error (`InputFailure`).
    """
    listed = meta.get("weight") if meta.get("is_mc") else []
    factors = list(listed) if listed is not None else (["genWeight"] if "genWeight" in fields else [])
    missing = [b for b in factors if b not in fields and b.split("_", 1)[0] not in fields]
    if missing:
        raise InputFailure(f"missing weight branch {', '.join(missing)} (the dataset's weight)")
    return factors


def read_bookkeeping(events: ak.Array, meta: Mapping[str, Any], lumi_pb: float, *,
                     reader: Callable[[ak.Array, list[str]], dict[str, ak.Array]]) -> dict[str, np.ndarray]:
    """The identity and weight columns of every event of a chunk (numpy, one per event).

    ``weight`` is xsec_pb x lumi_pb x weight_scale x (the product of the dataset's weight
    branches, ``genWeight`` by default) / sumw for simulation, 1 for data; ``genWeight`` is
    1 where the input has none.
    """
    fields = set(events.fields)
    factors = weight_factors(fields, meta)
    names = list(dict.fromkeys(["run", "luminosityBlock", "event",
                                *(["genWeight"] if "genWeight" in fields else []), *factors]))
    arrays = reader(events, names)
    n = len(arrays["event"])
    genweight = (np.asarray(ak.to_numpy(arrays["genWeight"]), dtype=np.float32) if "genWeight" in arrays
                 else np.ones(n, dtype=np.float32))
    if meta.get("is_mc"):
        product = np.ones(n, dtype=np.float64)
        for i, branch in enumerate(factors):
            values = genweight if branch == "genWeight" else np.asarray(ak.to_numpy(arrays[branch]))
            # the first factor as float64 (not 1.0 * it): the same bits as xsec*lumi*genWeight/sumw
            product = values.astype(np.float64) if i == 0 else product * values.astype(np.float64)
        weight = (float(meta["xsec_pb"]) * float(lumi_pb) * float(meta.get("weight_scale") or 1.0)
                  * product / float(meta["sumw"]))
    else:
        weight = np.ones(n, dtype=np.float64)
    return {"run": ak.to_numpy(arrays["run"]), "luminosityBlock": ak.to_numpy(arrays["luminosityBlock"]),
            "event": ak.to_numpy(arrays["event"]), "genWeight": genweight, "weight": weight}
