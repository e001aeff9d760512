"""Skim stage: the skim Parquet part, i.e. the DESIGN.md schema, atomic writes and the chunk summary.

One part per chunk, ``skim/<dataset>/part-<fileuuid>-<start>-<stop>.parquet``. The chunk's
summary (entry range, cutflow, the settings that produced it) rides in the part's own
key-value metadata, so a part and its bookkeeping can never disagree: a part that exists
is a finished chunk, and `cutflow.json` is the sum over the parts, whichever run wrote them.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.core.features import DITAU_COLUMNS
from analysis.core.io import atomic_path
from analysis.errors import HepprepError

__all__ = ["BOOKKEEPING_SCHEMA", "ROW_EVENT", "SKIM_SCHEMA", "SUMMARY_KEY", "BackgroundParts", "arrow_type",
           "bookkeeping_fingerprint", "part_name", "read_part_summary", "rows_table", "write_part"]

# Key of the chunk summary in the Parquet key-value metadata.
SUMMARY_KEY = b"hepprep.skim"
# Bumped when the meaning of a column changes, so old parts are not silently mixed in.
SKIM_FORMAT_VERSION = 2  # 2: the processor's name, version and options in the fingerprint

_STRING_DICT = pa.dictionary(pa.int32(), pa.string())
# The reserved key of a processor's rows mapping each row to its event, for several rows per
# event (one per jet): the position of the row's event among the events the cutflow kept.
ROW_EVENT = "_event_index"

# Identity and bookkeeping columns: hepprep writes them, whichever processor skims.
BOOKKEEPING_SCHEMA = pa.schema(
    [("run", pa.int32()), ("luminosityBlock", pa.uint32()), ("event", pa.uint64()),
     ("dataset", _STRING_DICT), ("process", _STRING_DICT), ("label", pa.int8()),
     ("genWeight", pa.float32()), ("weight", pa.float64())])
# The di-tau processor's part (DESIGN.md "Skim Parquet"): bookkeeping, then the registry's features.
SKIM_SCHEMA = pa.schema(list(BOOKKEEPING_SCHEMA) + [(f.name, pa.type_for_alias(f.dtype)) for f in DITAU_COLUMNS])

# numpy dtype of every non-string column (pa.DataType.to_pandas_dtype would import pandas).
_NUMPY_TYPES = {f.name: np.dtype(str(f.type).replace("float", "float32").replace("double", "float64"))
                for f in BOOKKEEPING_SCHEMA if f.name not in ("dataset", "process")}


def part_name(fileuuid: str, start: int, stop: int) -> str:
    """``part-<fileuuid>-<start>-<stop>.parquet`` (DESIGN.md)."""
    return f"part-{fileuuid}-{start}-{stop}.parquet"


def bookkeeping_fingerprint(processor: dict[str, Any], lumi_pb: float, dataset: dict[str, Any]) -> str:
    """A short hash of everything that decides a part's rows and weights.

    Parameters
    ----------
    processor : dict
        The processor's identity: its ``name``, ``version`` and ``options`` (the cuts).
    lumi_pb : float
    dataset : dict
        Resolved dataset metadata: ``process``, ``label``, ``xsec_pb``, ``sumw`` and the
        weight's branches ``weight`` and ``weight_scale`` (None: the defaults).
    """
    keys = ("process", "label", "xsec_pb", "sumw", "weight", "weight_scale")
    blob = json.dumps({"v": SKIM_FORMAT_VERSION, "processor": processor, "lumi_pb": lumi_pb,
                       "dataset": {k: dataset.get(k) for k in keys}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type a processor declares by name: ``"float32"``, ``"int16"``, ... or ``"list<float32>"``."""
    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(pa.type_for_alias(name[5:-1]))
    return pa.type_for_alias(name)


@dataclass(frozen=True)
class _Lists:
    """A list column: one list per row, as offsets (int64, from 0, one more than rows) and flat values."""

    offsets: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1


def rows_table(rows: Any, bookkeeping: dict[str, np.ndarray], *, dataset: str, process: str, label: int,
               columns: dict[str, str], owner: str) -> pa.Table:
    """The part of one chunk: hepprep's identity and bookkeeping columns, then the processor's.

    Parameters
    ----------
    rows : dict of arrays or an awkward record array, one entry per row
        What the processor's ``select`` returned: one row per selected event, or several
        when it holds ``ROW_EVENT`` (each row's event, see `processors.base`). A column is
        1-d (numbers, bools) or awkward lists (``var * number``, a list column).
    bookkeeping : dict of numpy arrays of the selected events
        ``run``, ``luminosityBlock``, ``event``, ``genWeight``, ``weight``; repeated on
        every row of an event.
    dataset, process, label : the chunk's dataset (dictionary-encoded strings, int8 label)
    columns : dict of name -> Arrow type name
        The processor's declared columns (in this order, first; `arrow_type`); others are
        typed from their values (floats as float32, integers as int32, bools as bool,
        lists of them as lists).
    owner : str
        The processor's name, for the messages.

    Raises
    ------
    ProcessorError-like HepprepError
        A column missing, of another length than the rows, named like a bookkeeping
        column, of another shape than declared; a ``ROW_EVENT`` out of order, out of
        range or leaving a selected event without a row.
    """
    values = _as_columns(rows, owner)
    n_events = len(bookkeeping["event"])
    clash = sorted(set(values) & set(BOOKKEEPING_SCHEMA.names))
    if clash:
        raise HepprepError(f"processor {owner} returned column(s) {', '.join(clash)}, which hepprep "
                           "writes itself (identity and bookkeeping): rename them")
    missing = [c for c in columns if c not in values]
    if missing:
        raise HepprepError(f"processor {owner} declares column(s) {', '.join(missing)} but did not return them")
    if ROW_EVENT in values:
        event = _row_events(values.pop(ROW_EVENT), n_events, owner)
        bookkeeping = {k: np.asarray(v)[event] for k, v in bookkeeping.items()}
        what = "row"
    else:
        what = "selected event"
    n = len(bookkeeping["event"])
    fields, arrays = list(BOOKKEEPING_SCHEMA), []
    for field in BOOKKEEPING_SCHEMA:
        if field.name in ("dataset", "process"):
            text = dataset if field.name == "dataset" else process
            arrays.append(pa.DictionaryArray.from_arrays(_from_numpy(np.zeros(n, np.int32), pa.int32()),
                                                         _one_string(text)))
        elif field.name == "label":
            arrays.append(_from_numpy(np.full(n, label, dtype=np.int8), field.type))
        else:
            arrays.append(_from_numpy(np.asarray(bookkeeping[field.name]).astype(
                _NUMPY_TYPES[field.name], copy=False), field.type))
    for name in [*columns, *(c for c in values if c not in columns)]:
        array = values[name]
        is_list = isinstance(array, _Lists)
        if (not is_list and array.ndim != 1) or len(array) != n:
            shape = f"{len(array)} lists" if is_list else f"shape {array.shape}"
            raise HepprepError(f"processor {owner}: column {name!r} has {shape}, expected one "
                               f"value for each of the {n} {what}s")
        declared = arrow_type(columns[name]) if name in columns else None
        if declared is not None and pa.types.is_list(declared) != is_list:
            raise HepprepError(f"processor {owner}: column {name!r} is declared {columns[name]} but holds "
                               f"{'a list' if is_list else 'one value'} per row")
        if is_list:
            inner = declared.value_type if declared is not None else _inferred_type(array.values)
            fields.append(pa.field(name, pa.list_(inner)))
            arrays.append(pa.ListArray.from_arrays(_from_numpy(array.offsets.astype(np.int32), pa.int32()),
                                                   _typed(array.values, inner)))
        else:
            arrow = declared if declared is not None else _inferred_type(array)
            fields.append(pa.field(name, arrow))
            arrays.append(_typed(array, arrow))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _row_events(values: Any, n_events: int, owner: str) -> np.ndarray:
    """``ROW_EVENT`` checked: integers, non-decreasing, in range, every selected event with a row."""
    event = np.asarray(values)
    if event.ndim != 1 or not (np.issubdtype(event.dtype, np.integer) or len(event) == 0):
        raise HepprepError(f"processor {owner}: {ROW_EVENT} must be a 1-d integer array (each row's event), "
                           f"got {event.dtype} of shape {event.shape}")
    event = event.astype(np.int64, copy=False)
    if len(event) and (event[0] < 0 or event[-1] >= n_events or np.any(np.diff(event) < 0)):
        raise HepprepError(f"processor {owner}: {ROW_EVENT} must be non-decreasing positions among the "
                           f"{n_events} selected events (0 to {n_events - 1})")
    has_row = np.zeros(n_events, dtype=bool)
    has_row[event] = True
    if not has_row.all():
        first = int(np.flatnonzero(~has_row)[0])
        raise HepprepError(f"processor {owner}: {int((~has_row).sum())} selected event(s) have no row (the "
                           f"first at position {first}); record a cutflow step that drops the events "
                           "without one, e.g. cutflow.step('one_jet', n_jets > 0)")
    return event


def _as_columns(rows: Any, owner: str) -> dict[str, np.ndarray | _Lists]:
    """A processor's rows as flat numpy columns (awkward None -> NaN) or `_Lists` (awkward lists)."""
    if isinstance(rows, ak.Array):
        if not rows.fields:
            raise HepprepError(f"processor {owner} returned an awkward array without fields; return a record "
                               "array or a dict of columns")
        rows = {f: rows[f] for f in rows.fields}
    if not isinstance(rows, dict):
        raise HepprepError(f"processor {owner} returned {type(rows).__name__}; return a dict of equal-length "
                           "1-d arrays or an awkward record array")
    out: dict[str, np.ndarray | _Lists] = {}
    for name, value in rows.items():
        if isinstance(value, ak.Array):
            if value.ndim == 2:
                out[str(name)] = _lists(value, name, owner)
                continue
            if value.ndim != 1:
                raise HepprepError(f"processor {owner}: column {name!r} is {value.type}, not one value "
                                   "(or one list of numbers) per row")
            value = ak.to_numpy(ak.fill_none(value, np.nan) if ak.any(ak.is_none(value)) else value)
        out[str(name)] = np.asarray(value)
    return out


def _lists(value: ak.Array, name: str, owner: str) -> _Lists:
    """``var * number`` as offsets and values; read straight from a list-offset layout when it is one."""
    layout = ak.to_layout(value)
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(layout.content, ak.contents.NumpyArray):
        offsets = np.asarray(layout.offsets.data, dtype=np.int64)
        return _Lists(offsets - offsets[0], np.asarray(layout.content.data)[offsets[0]:offsets[-1]])
    if ak.any(ak.is_none(value, axis=0)):
        raise HepprepError(f"processor {owner}: column {name!r} has missing lists (None); give an empty list")
    counts = ak.to_numpy(ak.num(value, axis=1)).astype(np.int64)
    flat = ak.flatten(value, axis=1)
    flat = ak.to_numpy(ak.fill_none(flat, np.nan) if ak.any(ak.is_none(flat)) else flat)
    return _Lists(np.concatenate([[0], np.cumsum(counts)]), np.asarray(flat))


def _inferred_type(values: np.ndarray) -> pa.DataType:
    if values.dtype == np.bool_:
        return pa.bool_()
    if np.issubdtype(values.dtype, np.integer):
        return pa.int32()
    if np.issubdtype(values.dtype, np.floating):
        return pa.float32()
    raise HepprepError(f"a column of dtype {values.dtype} cannot go into a skim part: use numbers or bools")


def _typed(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    if pa.types.is_boolean(arrow_type):
        bits = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
        return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(bits)])
    return _from_numpy(values.astype(_NUMPY_OF[str(arrow_type)], copy=False), arrow_type)


# numpy dtype of the Arrow number types a column may declare (without pandas: see _from_numpy)
_NUMPY_OF = {"float": np.float32, "double": np.float64, "halffloat": np.float16, "int8": np.int8,
             "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
             "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64}


def _from_numpy(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """Wrap a 1-d numpy array without copying. (`pa.array(ndarray)` would import pandas:
    seconds of start-up in every fresh worker process.) NaN stays a float value, not null."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def _one_string(value: str) -> pa.Array:
    """A one-element string array, built from buffers for the same reason as `_from_numpy`."""
    data = value.encode()
    offsets = np.array([0, len(data)], dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def write_part(table: pa.Table, path: str | Path, summary: dict[str, Any]) -> None:
    """Write `table` to `path` atomically, with `summary` in the key-value metadata.

    The file is written under a hidden temporary name in the same folder (readers of
    ``part-*.parquet`` and pyarrow datasets skip names starting with a dot) and renamed
    into place: a killed writer leaves no part, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(table.schema.metadata or {})
    meta[SUMMARY_KEY] = json.dumps(summary, sort_keys=True).encode()
    with atomic_path(path) as tmp:
        # Dictionary pages only for the string columns: trying them on every float column
        # (pyarrow's default) made writing 4x slower for files of the same size.
        pq.write_table(table.replace_schema_metadata(meta), tmp, compression="snappy",
                       use_dictionary=["dataset", "process"])


class BackgroundParts:
    """`write_part` in threads of this process, each part while the next chunks are read and selected.

    For the chunks run in this process (the iterative executor): pyarrow's Parquet encoding
    and the fsync release the GIL, so the writing of a chunk's part overlaps the next one's
    work instead of adding to it (for jets, whose parts hold the constituent lists, writing
    takes as long as reading and selecting). Up to `writing` parts are written at once, each
    in its own thread (one part's fsync waits on the disk while another is encoded); a call
    blocks while that many are pending, so memory holds at most `writing` finished tables
    beside the chunk being selected. A failed write raises its error at the first call after
    it is known (at the latest once `writing` more parts wait), again at every later one, and
    at `close` (which waits for every part): a retry of a later chunk cannot hide it, and the
    skim ends with it before its manifest is written.
    """

    def __init__(self, writing: int = 2) -> None:
        self.writing = writing
        self._pool = ThreadPoolExecutor(max_workers=writing, thread_name_prefix="hepprep-part")
        self._pending: list[Future[None]] = []
        self._failed: BaseException | None = None
        self._key = (os.getpid(), id(self))
        _LIVE_WRITERS[self._key] = self

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # coffea hands each chunk a pickled copy of the processor: in this process the copy
        # finds this writer again; in another process (a worker) it has none, and writes its
        # parts itself.
        return _live_writer, (self._key,)

    def __call__(self, table: pa.Table, path: str | Path, summary: dict[str, Any]) -> None:
        self._collect(keep=self.writing - 1)
        self._pending.append(self._pool.submit(write_part, table, path, summary))

    def _collect(self, *, keep: int) -> None:
        """Wait until at most `keep` parts are pending; raise the error of any write that failed."""
        while len(self._pending) > keep or (self._pending and self._pending[0].done()):
            error = self._pending.pop(0).exception()
            self._failed = self._failed or error
        if self._failed is not None:
            raise self._failed

    def wait(self) -> None:
        """Until every part submitted is written; the error of a write that failed."""
        self._collect(keep=0)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
            _LIVE_WRITERS.pop(self._key, None)


_LIVE_WRITERS: dict[tuple[int, int], BackgroundParts] = {}  # this process's open writers


def _live_writer(key: tuple[int, int]) -> BackgroundParts | None:
    return _LIVE_WRITERS.get(key) if key[0] == os.getpid() else None


def read_part_summary(path: str | Path) -> dict[str, Any] | None:
    """The chunk summary stored in a part, or None if the file is absent or not a finished part."""
    try:
        meta = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    raw = meta.get(SUMMARY_KEY)
    return json.loads(raw) if raw else None
