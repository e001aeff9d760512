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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.core.features import DITAU_COLUMNS
from analysis.core.io import atomic_path

__all__ = ["SKIM_SCHEMA", "SUMMARY_KEY", "chunk_fingerprint", "part_name", "read_part_summary",
           "skim_table", "write_part"]

# Key of the chunk summary in the Parquet key-value metadata.
SUMMARY_KEY = b"hepprep.skim"
# Bumped when the meaning of a column changes, so old parts are not silently mixed in.
SKIM_FORMAT_VERSION = 1

_STRING_DICT = pa.dictionary(pa.int32(), pa.string())

# Identity and bookkeeping columns (hepprep's), then the feature columns (the registry's).
SKIM_SCHEMA = pa.schema(
    [("run", pa.int32()), ("luminosityBlock", pa.uint32()), ("event", pa.uint64()),
     ("dataset", _STRING_DICT), ("process", _STRING_DICT), ("label", pa.int8()),
     ("genWeight", pa.float32()), ("weight", pa.float64())]
    + [(f.name, pa.type_for_alias(f.dtype)) for f in DITAU_COLUMNS]
)

# numpy dtype of every non-string column (pa.DataType.to_pandas_dtype would import pandas).
_NUMPY_TYPES = {f.name: np.dtype(str(f.type).replace("float", "float32").replace("double", "float64"))
                for f in SKIM_SCHEMA if f.name not in ("dataset", "process")}


def part_name(fileuuid: str, start: int, stop: int) -> str:
    """``part-<fileuuid>-<start>-<stop>.parquet`` (DESIGN.md)."""
    return f"part-{fileuuid}-{start}-{stop}.parquet"


def chunk_fingerprint(selection: dict[str, Any], lumi_pb: float, dataset: dict[str, Any]) -> str:
    """A short hash of everything that decides a part's rows and weights.

    Parameters
    ----------
    selection : dict
        ``config.selection.model_dump()``.
    lumi_pb : float
    dataset : dict
        Resolved dataset metadata: ``process``, ``label``, ``xsec_pb``, ``sumw``.
    """
    keys = ("process", "label", "xsec_pb", "sumw")
    blob = json.dumps({"v": SKIM_FORMAT_VERSION, "selection": selection, "lumi_pb": lumi_pb,
                       "dataset": {k: dataset.get(k) for k in keys}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def skim_table(columns: dict[str, np.ndarray], *, dataset: str, process: str) -> pa.Table:
    """The skim rows as an Arrow table with the exact DESIGN.md types.

    Parameters
    ----------
    columns : dict of column name -> numpy array (one entry per selected event)
        Every column of `SKIM_SCHEMA` except ``dataset`` and ``process``; values are cast.
    dataset, process : str
        Written as dictionary-encoded strings (one dictionary entry per part).
    """
    n = len(columns["event"])
    arrays = []
    for field in SKIM_SCHEMA:
        if field.name in ("dataset", "process"):
            value = dataset if field.name == "dataset" else process
            arrays.append(pa.DictionaryArray.from_arrays(_from_numpy(np.zeros(n, np.int32), pa.int32()),
                                                         _one_string(value)))
        else:
            arrays.append(_from_numpy(np.asarray(columns[field.name]).astype(
                _NUMPY_TYPES[field.name], copy=False), field.type))
    return pa.Table.from_arrays(arrays, schema=SKIM_SCHEMA)


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
