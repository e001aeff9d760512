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

import numba
import numpy as np
import pyarrow as pa

from analysis.core.jet_images import list_offsets

__all__ = ["compile_padding", "pad_into", "pad_lists", "padded_columns"]


@numba.njit(nogil=True, cache=True)
def _pad_jets(flats, offsets, out, at, fill):
    # List r into row at[r] of ``out``, each value written once, straight into its place:
    # numpy can only gather every feature into a (rows, n) block and copy that to the strided
    # slots (several passes over the padded array, the GIL held); this is ~10x faster, and
    # read threads pad at once. (numba comes with coffea; compiled once, cached on disk.)
    n = out.shape[1]
    for r in range(len(at)):
        row = at[r]
        start = offsets[r]
        kept = min(offsets[r + 1] - start, n)
        for j in range(kept):
            k = 0
            for flat in flats:  # a tuple of arrays: unrolled by numba
                out[row, j, k] = flat[start + j]
                k += 1
        out[row, kept:, :] = fill


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


def pad_into(columns: Mapping[str, Any], names: Sequence[str], out: np.ndarray, *, fill: float = 0.0,
             at: np.ndarray | None = None) -> np.ndarray:
    """Write several list columns of the same lengths into ``out`` (rows, n, len(names)); the kept counts.

    ``out`` may be a strided view (a loader's row block, reused): writing in place spares a
    fresh (rows, n, F) array per block, whose first touch of each page costs more than the
    padding itself on a virtual machine. ``at``, if given, names the row of ``out`` each list
    goes to (the free slots of a shuffle buffer); by default list ``r`` goes to row ``r``.
    Returns the entries kept per list, ``min(len, n)``
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
    lists = len(first_offsets) - 1
    at = np.arange(lists) if at is None else np.asarray(at, dtype=np.int64)
    if len(at) != lists or (lists and not 0 <= at.min() <= at.max() < rows):
        raise ValueError(f"padded_columns: {lists} lists into {len(at)} rows (numbered "
                         f"{at.min() if len(at) else '-'}..{at.max() if len(at) else '-'}) of an array of {rows}")
    flats = []
    for name in names:
        offsets, flat = list_offsets(columns[name])
        if not np.array_equal(offsets, first_offsets):
            raise ValueError(f"padded_columns: {name} has other list lengths than {names[0]}")
        flat = np.ascontiguousarray(flat, dtype=out.dtype).view()  # (its own dtype: no copy)
        flat.flags.writeable = False  # as arrow's buffers are: one numba type for the whole tuple
        flats.append(flat)
    _pad_jets(tuple(flats), first_offsets, out, at, out.dtype.type(fill))
    return np.minimum(np.diff(first_offsets), n)


def compile_padding(n_features: int, dtype: Any = np.float32) -> None:
    """Compile (or load from numba's cache) `pad_into` for ``n_features`` lists into a strided block.

    numba's first call in a process takes a second or two; a loader calls this before it
    forks DataLoader workers, which then inherit the compiled kernel instead of each
    paying for it every epoch.
    """
    block = np.empty((2, 2 * n_features + 1), dtype=dtype)
    lists = {f"f{k}": pa.array([[1.0], []], type=pa.list_(pa.float32())) for k in range(n_features)}
    pad_into(lists, list(lists), block[:, :2 * n_features].reshape(2, 2, n_features))


def padded_columns(columns: Mapping[str, Any], names: Sequence[str], n: int, *,
                   fill: float = 0.0, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Several list columns of the same lengths as one (rows, n, len(names)) array and the mask (`pad_into`)."""
    if not names:
        raise ValueError("padded_columns: name at least one list column")
    rows = len(list_offsets(columns[names[0]])[0]) - 1
    out = np.empty((rows, n, len(names)), dtype=dtype)
    counts = pad_into(columns, names, out, fill=fill)
    return out, np.arange(n)[None, :] < counts[:, None]
