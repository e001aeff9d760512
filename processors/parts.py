"""Skim stage: the skim Parquet part, i.e. the DESIGN.md schema, atomic writes and the chunk summary.

One part per chunk, ``skim/<dataset>/part-<fileuuid>-<start>-<stop>.parquet``. The chunk's
summary (entry range, cutflow, the settings that produced it) rides in the part's own
key-value metadata, so a part and its bookkeeping can never disagree: a part that exists
is a finished chunk, and `cutflow.json` is the sum over the parts, whichever run wrote them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.core.features import DITAU_COLUMNS
from analysis.core.io import atomic_path
from analysis.errors import HepprepError

__all__ = ["BOOKKEEPING_SCHEMA", "SKIM_SCHEMA", "SUMMARY_KEY", "bookkeeping_fingerprint", "part_name",
           "read_part_summary", "rows_table", "write_part"]

# Key of the chunk summary in the Parquet key-value metadata.
SUMMARY_KEY = b"hepprep.skim"
# Bumped when the meaning of a column changes, so old parts are not silently mixed in.
SKIM_FORMAT_VERSION = 2  # 2: the processor's name, version and options in the fingerprint

_STRING_DICT = pa.dictionary(pa.int32(), pa.string())

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


def rows_table(rows: Any, bookkeeping: dict[str, np.ndarray], *, dataset: str, process: str, label: int,
               columns: dict[str, str], owner: str) -> pa.Table:
    """The part of one chunk: hepprep's identity and bookkeeping columns, then the processor's.

    Parameters
    ----------
    rows : dict of 1-d arrays or an awkward record array, one entry per selected event
        What the processor's ``select`` returned.
    bookkeeping : dict of numpy arrays of the selected events
        ``run``, ``luminosityBlock``, ``event``, ``genWeight``, ``weight``.
    dataset, process, label : the chunk's dataset (dictionary-encoded strings, int8 label)
    columns : dict of name -> Arrow type name
        The processor's declared columns (in this order, first); others are typed from
        their values (floats as float32, integers as int32, bools as bool).
    owner : str
        The processor's name, for the messages.

    Raises
    ------
    ProcessorError-like HepprepError
        A column missing, of another length than the selected events, named like a
        bookkeeping column, or not 1-d.
    """
    values = _as_columns(rows, owner)
    n = len(bookkeeping["event"])
    clash = sorted(set(values) & set(BOOKKEEPING_SCHEMA.names))
    if clash:
        raise HepprepError(f"processor {owner} returned column(s) {', '.join(clash)}, which hepprep "
                           "writes itself (identity and bookkeeping): rename them")
    missing = [c for c in columns if c not in values]
    if missing:
        raise HepprepError(f"processor {owner} declares column(s) {', '.join(missing)} but did not return them")
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
        if array.ndim != 1 or len(array) != n:
            raise HepprepError(f"processor {owner}: column {name!r} has shape {array.shape}, expected one "
                               f"value for each of the {n} selected events")
        arrow_type = pa.type_for_alias(columns[name]) if name in columns else _inferred_type(array)
        fields.append(pa.field(name, arrow_type))
        arrays.append(_typed(array, arrow_type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _as_columns(rows: Any, owner: str) -> dict[str, np.ndarray]:
    """A processor's rows as flat numpy columns (awkward None -> NaN)."""
    if isinstance(rows, ak.Array):
        if not rows.fields:
            raise HepprepError(f"processor {owner} returned an awkward array without fields; return a record "
                               "array or a dict of columns")
        rows = {f: rows[f] for f in rows.fields}
    if not isinstance(rows, dict):
        raise HepprepError(f"processor {owner} returned {type(rows).__name__}; return a dict of equal-length "
                           "1-d arrays or an awkward record array")
    out = {}
    for name, value in rows.items():
        if isinstance(value, ak.Array):
            if value.ndim != 1:
                raise HepprepError(f"processor {owner}: column {name!r} is {value.type}, not one value per event")
            value = ak.to_numpy(ak.fill_none(value, np.nan) if ak.any(ak.is_none(value)) else value)
        out[str(name)] = np.asarray(value)
    return out


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


def read_part_summary(path: str | Path) -> dict[str, Any] | None:
    """The chunk summary stored in a part, or None if the file is absent or not a finished part."""
    try:
        meta = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    raw = meta.get(SUMMARY_KEY)
    return json.loads(raw) if raw else None
