"""Training stage (MLP): the rows a streaming loader holds, shuffles and cuts into batches.

Rows travel as float32 blocks of shape ``(rows, n_features + 2)``: the features, then the
label, then the weight, row by row as a batch needs them. `RowGroupShuffleBuffer` holds a
bounded number of them and hands rows out uniformly at random; `cut_batches` turns any
stream of blocks into batches of a fixed size. Both work on numpy arrays; `cut_batches`
on torch tensors too (blocks sent by DataLoader workers).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["RowGroupShuffleBuffer", "as_rows", "cut_batches", "split_block"]


def as_rows(x: np.ndarray | Sequence[np.ndarray], y: np.ndarray, w: np.ndarray,
            out: np.ndarray | None = None) -> np.ndarray:
    """One float32 ``(rows, n_features + 2)`` block: features, then label, then weight.

    ``x`` is a ``(rows, n_features)`` array or a sequence of feature columns (as Parquet
    stores them: each column goes straight into its place in the rows). ``out``, if
    given, is an array of at least that many rows to fill (its first rows are returned).
    """
    nf = x.shape[1] if isinstance(x, np.ndarray) else len(x)
    rows = (np.empty((len(y), nf + 2), dtype=np.float32) if out is None else out[:len(y)])
    if isinstance(x, np.ndarray):
        rows[:, :nf] = x
    else:
        for j, column in enumerate(x):
            rows[:, j] = column
    rows[:, nf] = y
    rows[:, nf + 1] = w
    return rows


class RowGroupShuffleBuffer:
    """A fixed-capacity shuffle buffer: rows in, uniformly drawn rows out, each row exactly once.

    Rows are blocks of ``(rows, n_features + 2)`` float32 (`as_rows`). The buffer fills
    with `put`. Once full, `exchange` takes incoming rows and returns as many rows drawn
    uniformly from those held, whose slots the incoming rows take: one gather and one
    scatter per row, whatever the capacity. `take_block` draws without refilling (the end
    of an epoch).

    Parameters
    ----------
    capacity : int
        Rows the buffer holds at most.
    n_features : int
        Width of the feature matrix.
    rng : numpy.random.Generator
        Source of the draws.

    Attributes
    ----------
    x, y, w : numpy.ndarray
        Views of the stored ``(capacity, n_features)`` features, labels and weights (the
        first ``n`` rows are filled).
    peak_rows : int
        The most rows ever held (for tests and benchmarks: never above ``capacity``).
    """

    def __init__(self, capacity: int, n_features: int, rng: np.random.Generator):
        self.capacity = capacity
        self.rng = rng
        # Row-major, as the batches: a draw is one gather of whole rows (several times
        # faster than gathering each column), and x, y, w are views of it.
        self.rows = np.empty((capacity, n_features + 2), dtype=np.float32)
        self.x = self.rows[:, :n_features]
        self.y = self.rows[:, n_features]
        self.w = self.rows[:, n_features + 1]
        self.n = 0
        self.peak_rows = 0

    @property
    def free(self) -> int:
        return self.capacity - self.n

    def free_rows(self, k: int) -> np.ndarray | None:
        """The next ``k`` free rows themselves, for a reader to fill in place and `put`; None if fewer are free.

        A block filled there is appended without a copy (for jets, a row is kilobytes).
        """
        return self.rows[self.n:self.n + k] if k <= self.free else None

    def put(self, rows: np.ndarray | Any) -> None:
        """Append rows (a copy, unless they are `free_rows`); the caller passes at most ``free`` of them.

        ``rows`` is a block, or rows that write themselves: ``rows.write_rows(target, at)``
        writes its row ``i`` into ``target[at[i]]`` (a jet read, padded as it is put).
        """
        k = len(rows)
        if k > self.free:
            raise ValueError(f"shuffle buffer overflow: {k} rows into {self.free} free slots")
        if not isinstance(rows, np.ndarray):
            rows.write_rows(self.rows, np.arange(self.n, self.n + k))
        elif k and rows.ctypes.data != self.rows[self.n:].ctypes.data:
            self.rows[self.n:self.n + k] = rows
        self.n += k
        self.peak_rows = max(self.peak_rows, self.n)

    def exchange(self, rows: np.ndarray | Any) -> np.ndarray:
        """Draw ``len(rows)`` held rows uniformly and put the incoming ``rows`` in their slots.

        Needs at least ``len(rows)`` rows held. Returns the drawn rows as a new block.
        ``rows`` as for `put`: rows that write themselves go straight into the slots.
        """
        k = len(rows)
        if k > self.n:
            raise ValueError(f"shuffle buffer exchange of {k} rows with {self.n} held")
        idx = self.rng.choice(self.n, size=k, replace=False)
        # np.take is several times faster than fancy indexing for row gathers, and a
        # scatter of whole rows as single opaque items faster than of 2-D rows.
        drawn = np.take(self.rows, idx, axis=0)
        if not isinstance(rows, np.ndarray):
            rows.write_rows(self.rows, idx)
            return drawn
        as_items = np.dtype((np.void, self.rows.strides[0]))
        self.rows.view(as_items)[idx, 0] = np.ascontiguousarray(rows).view(as_items)[:, 0]
        return drawn

    def take_block(self, size: int) -> np.ndarray:
        """Remove ``min(size, n)`` uniformly drawn rows; returns them as ``(rows, n_features + 2)``."""
        size = min(size, self.n)
        if size == self.n:  # all of them: a permutation, nothing left to move
            block = np.take(self.rows[:self.n], self.rng.permutation(self.n), axis=0)
            self.n = 0
            return block
        idx = self.rng.choice(self.n, size=size, replace=False)
        block = np.take(self.rows, idx, axis=0)
        # The rows left move to the front (a gather and a contiguous copy: faster than
        # filling the holes with a scattered assignment).
        kept = np.ones(self.n, dtype=bool)
        kept[idx] = False
        left = self.n - size
        self.rows[:left] = np.take(self.rows, np.flatnonzero(kept), axis=0)
        self.n = left
        return block

    def take(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return ``min(size, n)`` uniformly drawn rows as ``(x, y, w)``."""
        return split_block(self.take_block(size))


def split_block(block):
    """``(x, y, w)`` views of a ``(rows, n_features + 2)`` block (numpy array or tensor)."""
    return block[:, :-2], block[:, -2], block[:, -1]


def cut_batches(blocks: Iterable, size: int) -> Iterator:
    """Cut a stream of row blocks into ``(x, y, w)`` batches of ``size`` rows (the last may be short).

    Batches are views of the blocks, except one per block boundary that joins the rows
    left over from one block with the start of the next: a stream of blocks of any sizes
    gives full batches until its end.
    """
    left = None
    for block in blocks:
        start = 0
        if left is not None:
            start = size - len(left)
            joined = _concatenate([left, block[:start]])
            if len(joined) < size:
                left = joined
                continue
            left = None
            yield split_block(joined)
        stop = start + (len(block) - start) // size * size
        for s in range(start, stop, size):
            yield split_block(block[s:s + size])
        if stop < len(block):
            left = block[stop:]
    if left is not None and len(left):
        yield split_block(left)


def _concatenate(parts):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch  # only torch tensors get here, so torch is installed

    return torch.cat(parts)

