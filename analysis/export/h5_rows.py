"""Export stage: HDF5 datasets that grow by appended rows, chunked and compressed, for the jet exports.

Both jet exports (`export.hdf5`, `export.images`) write row by row group into resizable
datasets, so a split of any size is written with the memory of one row group. Chunks hold
about a megabyte of rows (h5py and PyTables read a chunk whole); gzip with the byte shuffle,
because every HDF5 reader has it (lzf is h5py's own filter, which PyTables, and so
weaver-core, cannot read).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from analysis.core.optional import optional_import
from analysis.errors import ConfigError

__all__ = ["CHUNK_BYTES", "append_rows", "create_rows", "h5py_module", "is_ours", "mark", "refuse_foreign_file"]

CHUNK_BYTES = 1 << 20  # about 1 MiB of rows per HDF5 chunk
_MARK = "hepprep_export"  # the root attribute that makes a file one of ours (its value: what it holds)


def h5py_module() -> Any:
    return optional_import("h5py", purpose="the HDF5 export of jets")


def create_rows(h5: Any, name: str, like: np.ndarray) -> Any:
    """An empty dataset ``name`` of ``like``'s dtype and row shape, resizable along its rows."""
    row_shape = like.shape[1:]
    row_bytes = max(1, like.dtype.itemsize * int(np.prod(row_shape, dtype=np.int64)))
    chunk = max(1, min(65536, CHUNK_BYTES // row_bytes))
    return h5.create_dataset(name, shape=(0, *row_shape), maxshape=(None, *row_shape), dtype=like.dtype,
                             chunks=(chunk, *row_shape), compression="gzip", compression_opts=4, shuffle=True)


def append_rows(h5: Any, name: str, rows: np.ndarray) -> None:
    """Append ``rows`` to dataset ``name`` (created by `create_rows` on first use)."""
    dataset = h5[name] if name in h5 else create_rows(h5, name, rows)
    start = dataset.shape[0]
    dataset.resize(start + len(rows), axis=0)
    dataset[start:] = rows


def mark(h5: Any, kind: str, attributes: dict[str, Any]) -> None:
    """The file's attributes: dicts, lists and None as JSON text, booleans as 0 / 1.

    Any HDF5 reader reads a string or an integer; h5py's boolean is an HDF5 enum that
    PyTables (weaver-core's reader) does not read.
    """
    h5.attrs[_MARK] = kind
    for key, value in attributes.items():
        if isinstance(value, bool):
            value = np.int8(value)
        h5.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) or value is None else value


def is_ours(path: Path, kind: str) -> bool:
    """True when ``path`` is an HDF5 file a hepprep export of ``kind`` wrote."""
    h5py = h5py_module()
    try:
        with h5py.File(path, "r") as h5:
            value = h5.attrs.get(_MARK)
    except OSError:
        return False
    return (value.decode() if isinstance(value, bytes) else value) == kind


def refuse_foreign_file(path: Path, option: str, ours: bool) -> None:
    """A file or folder at ``path`` that hepprep did not write is never overwritten."""
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give the file to write")
    if path.exists() and not ours:
        raise ConfigError(f"{option} {path}: exists and is not a file of this hepprep export; "
                          "remove it or choose another name")
