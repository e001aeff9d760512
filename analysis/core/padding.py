"""Core (train, export): variable-length lists to fixed (rows, N) arrays with a mask, one implementation.

The prepared files keep every constituent of a jet (lists ordered by decreasing pt, never
padded): N is a choice of the consumer, not of the data. The training loader pads or
truncates to N at load time and the HDF5 export writes fixed-size arrays; both come down to
`pad_into`, so a jet's first N constituents, the fill value and the mask are the same
wherever a fixed size is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from analysis.core.jet_images import list_offsets

__all__ = ["pad_into", "pad_lists", "padded_columns"]


def pad_lists(values: Any, n: int, *, fill: float = 0.0, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """One list per row as a (rows, n) array and its (rows, n) boolean mask.

    Parameters
    ----------
    values : one list per row (`analysis.core.jet_images.list_offsets`: a pyarrow list
        array as read from Parquet, an awkward ``var * number`` array, or 1-d arrays)
    n : entries kept per row: the first ``n`` of each list (by decreasing pt in a jet skim);
        shorter lists are filled with ``fill``
    fill, dtype : the value of padded slots and the array's type

    Returns
    -------
    (array (rows, n) of ``dtype``, mask (rows, n) bool, True where a real entry is)

    Example
    -------
    >>> x, mask = pad_lists([[3.0, 2.0, 1.0], [5.0]], 2)
    >>> x.tolist(), mask.tolist()
    ([[3.0, 2.0], [5.0, 0.0]], [[True, True], [True, False]])
    """
    if n < 1:
        raise ValueError(f"pad_lists: n must be at least 1, got {n}")
    out, mask = padded_columns({"values": values}, ["values"], n, fill=fill, dtype=dtype)
    return out[:, :, 0], mask


def pad_into(columns: Mapping[str, Any], names: Sequence[str], out: np.ndarray, *, fill: float = 0.0) -> np.ndarray:
    """Write several list columns of the same lengths into ``out`` (rows, n, len(names)); the kept counts.

    ``out`` may be a strided view (a loader's row block, reused): writing in place spares a
    fresh (rows, n, F) array per block, whose first touch of each page costs more than the
    padding itself on a virtual machine. Returns the entries kept per row, ``min(len, n)``
    (int64): slot ``j`` of row ``r`` is real exactly when ``j < counts[r]``. The columns must
    hold lists of equal length row by row (the constituent features of a jet); a difference is
    an error naming the column, not a silently shifted feature.
    """
    if not names:
        raise ValueError("padded_columns: name at least one list column")
    rows, n, width = out.shape
    if width != len(names):
        raise ValueError(f"padded_columns: {len(names)} columns into an array of {width} features")
    first_offsets, _ = list_offsets(columns[names[0]])
    if len(first_offsets) - 1 != rows:
        raise ValueError(f"padded_columns: {len(first_offsets) - 1} lists into an array of {rows} rows")
    kept = np.minimum(np.diff(first_offsets), n)
    slots = np.arange(n)
    # A gather for every slot (row r, slot j reads entry offsets[r] + j; padded slots read a
    # clipped neighbour and are filled after): no (entries, F) copy in between, and no
    # scatter, which is the slower of the two in numpy. Into a contiguous (rows, n) block,
    # then copied to the feature's strided slots: 20-25 % faster than gathering into them.
    source = first_offsets[:-1, None] + slots[None, :]
    padded = slots[None, :] >= kept[:, None]
    block = None
    for k, name in enumerate(names):
        offsets, flat = list_offsets(columns[name])
        if not np.array_equal(offsets, first_offsets):
            raise ValueError(f"padded_columns: {name} has other list lengths than {names[0]}")
        if not len(flat):
            continue
        target = out[:, :, k]
        if target.flags.c_contiguous:
            into = target
        else:
            block = np.empty((rows, n), dtype=out.dtype) if block is None else block
            into = block
        np.take(flat.astype(out.dtype, copy=False), source, out=into, mode="clip")  # (its own dtype only)
        if into is not target:
            target[...] = into
    out[padded] = fill
    return kept


def padded_columns(columns: Mapping[str, Any], names: Sequence[str], n: int, *,
                   fill: float = 0.0, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Several list columns of the same lengths as one (rows, n, len(names)) array and the mask (`pad_into`)."""
    if not names:
        raise ValueError("padded_columns: name at least one list column")
    rows = len(list_offsets(columns[names[0]])[0]) - 1
    out = np.empty((rows, n, len(names)), dtype=dtype)
    counts = pad_into(columns, names, out, fill=fill)
    return out, np.arange(n)[None, :] < counts[:, None]
