"""Training stage (MLP): stream prepared Parquet row groups into shuffled batches, never a whole split.

A split can be far larger than memory, so the network reads it as a stream. Shuffling
happens at two levels, as in WebDataset/tf.data: the order of row groups is permuted each
epoch (seeded by ``seed`` and the epoch, so a run is reproducible and a resumed run sees
the same order), and rows pass through a bounded in-memory shuffle buffer. Each
DataLoader worker takes every n-th row group of the epoch's order, so workers never
overlap and together cover the split. Batches are built inside the dataset (one tensor
per batch, not per row): per-row tensors would cost more than reading the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from analysis._optional import optional_import
from analysis.train_inputs import LABEL, TRAIN_WEIGHT

torch = optional_import("torch", purpose="the mlp model's streaming loader")

__all__ = ["BatchLoader", "ParquetBatchStream", "RowGroupShuffleBuffer", "read_ahead",
           "row_group_units"]

# Rows read from Parquet at a time (also capped by the buffer size): bounds the memory
# taken besides the buffer. Above prepare's default row group (100k rows), so a whole
# row group is usually one read.
_READ_ROWS = 131_072


_END = object()


def read_ahead(items: Iterable) -> Iterator:
    """Yield ``items`` while a background thread already produces the next one.

    Parquet decoding releases the GIL, so reading row group k+1 overlaps with shuffling
    row group k. At most two items are alive at once: the one yielded and the next.
    """
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-read-ahead") as pool:
        pending = pool.submit(next, iterator, _END)
        while True:
            item = pending.result()
            if item is _END:
                return
            pending = pool.submit(next, iterator, _END)
            yield item


def row_group_units(files: Sequence[str | Path]) -> list[tuple[Path, int, int]]:
    """Every row group of ``files`` as ``(path, row_group_index, rows)``, in file order."""
    units = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        units += [(Path(path), i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    return units


class RowGroupShuffleBuffer:
    """A fixed-capacity shuffle buffer: rows in, random batches out, each row exactly once.

    When full, a batch is drawn uniformly from the buffer and the holes are filled from
    its end (swap-remove), so one batch costs O(batch) whatever the capacity.

    Parameters
    ----------
    capacity : int
        Rows the buffer holds at most.
    n_features : int
        Width of the feature matrix.
    rng : numpy.random.Generator
        Source of the batch draws.

    Attributes
    ----------
    peak_rows : int
        The most rows ever held (for tests and benchmarks: never above ``capacity``).
    """

    def __init__(self, capacity: int, n_features: int, rng: np.random.Generator):
        self.capacity = capacity
        self.rng = rng
        # One row-major block: features, then label, then weight. A batch is one gather and
        # one array (x, y, w are views of it), which DataLoader workers hand over as one
        # shared-memory storage instead of three.
        self.rows = np.empty((capacity, n_features + 2), dtype=np.float32)
        self.x = self.rows[:, :n_features]
        self.y = self.rows[:, n_features]
        self.w = self.rows[:, n_features + 1]
        self.n = 0
        self.peak_rows = 0

    @property
    def free(self) -> int:
        return self.capacity - self.n

    def put(self, x: np.ndarray | Sequence[np.ndarray], y: np.ndarray, w: np.ndarray) -> None:
        """Append rows; the caller passes at most ``free`` of them.

        ``x`` is a ``(rows, n_features)`` array or a sequence of ``n_features`` columns
        (as Parquet stores them): columns are written straight into the buffer, which
        saves building a row-major copy first.
        """
        k = len(y)
        if k > self.free:
            raise ValueError(f"shuffle buffer overflow: {k} rows into {self.free} free slots")
        if isinstance(x, np.ndarray):
            self.x[self.n:self.n + k] = x
        else:
            for j, column in enumerate(x):
                self.x[self.n:self.n + k, j] = column
        self.y[self.n:self.n + k] = y
        self.w[self.n:self.n + k] = w
        self.n += k
        self.peak_rows = max(self.peak_rows, self.n)

    def take(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return ``min(size, n)`` uniformly drawn rows (copies)."""
        size = min(size, self.n)
        idx = self.rng.choice(self.n, size=size, replace=False)
        # np.take is several times faster than fancy indexing for row gathers.
        block = np.take(self.rows, idx, axis=0)
        nf = self.x.shape[1]
        out = (block[:, :nf], block[:, nf], block[:, nf + 1])
        tail_start = self.n - size
        # Holes below the tail are refilled from tail rows that were not drawn.
        holes = idx[idx < tail_start]
        tail_kept = np.ones(size, dtype=bool)
        tail_kept[idx[idx >= tail_start] - tail_start] = False
        sources = tail_start + np.flatnonzero(tail_kept)
        self.rows[holes] = np.take(self.rows, sources, axis=0)
        self.n = tail_start
        return out

    def drain(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Empty the buffer in random batches of ``size`` (the end of an epoch)."""
        while self.n:
            yield self.take(size)


class ParquetBatchStream(torch.utils.data.IterableDataset):
    """A torch ``IterableDataset`` of ``(features, label, train_weight)`` batches from Parquet.

    Parameters
    ----------
    files : sequence of str or Path
        ``part-*.parquet`` files of one split (their order is the unshuffled order).
    features : list of str
        Feature columns, in the model's input order.
    batch_size : int
        Rows per batch; the last batch of an epoch (per worker) may be smaller.
    shuffle_buffer : int
        Capacity of the shuffle buffer in rows (config ``train.mlp.shuffle_buffer``);
        the stream holds at most this many rows plus two read chunks (the one being
        shuffled in and the one read ahead) of at most ``min(shuffle_buffer, 131072)`` rows.
    shuffle : bool
        False streams rows in file order without a buffer (validation, prediction).
    seed : int
        With the epoch (`set_epoch`), fixes the row-group order and the buffer draws.
    as_numpy : bool
        Yield numpy arrays instead of torch tensors.

    Yields
    ------
    (x, y, w)
        x: float32 ``(batch, n_features)``; y: float32 ``(batch,)`` of 0/1 labels;
        w: float32 ``(batch,)`` train_weight.

    Notes
    -----
    In a DataLoader use ``batch_size=None`` (the dataset already batches). Worker ``k`` of
    ``n`` takes row groups ``k, k+n, ...`` of the epoch's order, so no row is seen twice.
    """

    def __init__(self, files: Sequence[str | Path], features: list[str], *, batch_size: int,
                 shuffle_buffer: int, shuffle: bool = True, seed: int = 0,
                 as_numpy: bool = False):
        if batch_size <= 0 or shuffle_buffer <= 0:
            raise ValueError(f"batch_size ({batch_size}) and shuffle_buffer ({shuffle_buffer}) "
                             f"must be > 0")
        self.files = [Path(f) for f in files]
        self.features = list(features)
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.shuffle = shuffle
        self.seed = seed
        self.as_numpy = as_numpy
        self.epoch = 0
        self.units = row_group_units(self.files)
        self.rows = sum(u[2] for u in self.units)
        self.last_peak_rows = 0  # buffer peak of the last epoch iterated in this process

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose row-group order and buffer draws the next iteration uses."""
        self.epoch = epoch

    def _worker_units(self) -> list[tuple[Path, int, int]]:
        units = list(self.units)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(units))
            units = [units[i] for i in order]
        info = torch.utils.data.get_worker_info()
        if info is not None:
            units = units[info.id::info.num_workers]
        return units

    def _read(self, units: list[tuple[Path, int, int]], chunk: int, *, threads: bool):
        """Yield ``(feature_columns, label, train_weight)`` numpy views of <= ``chunk`` rows."""
        columns = [*self.features, LABEL, TRAIN_WEIGHT]
        nf = len(self.features)
        open_file, handle = None, None
        for path, group, rows in units:
            if path != open_file:
                handle, open_file = pq.ParquetFile(path), path
            if rows <= chunk:
                pieces = [handle.read_row_group(group, columns=columns, use_threads=threads)]
            else:
                pieces = handle.iter_batches(batch_size=chunk, row_groups=[group],
                                             columns=columns, use_threads=threads)
            for piece in pieces:
                arrays = [piece.column(j).to_numpy() for j in range(nf + 2)]
                yield arrays[:nf], arrays[nf], arrays[nf + 1]

    def _emit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray):
        if self.as_numpy:
            return x, y, w
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)

    def __iter__(self):
        units = self._worker_units()
        if not self.shuffle:
            yield from self._iter_in_order(units)
            return
        worker_rows = sum(u[2] for u in units)
        info = torch.utils.data.get_worker_info()
        worker_id = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, self.epoch, worker_id, 1])
        buffer = RowGroupShuffleBuffer(max(1, min(self.shuffle_buffer, worker_rows)),
                                       len(self.features), rng)
        chunk = min(self.shuffle_buffer, _READ_ROWS)
        # Parquet decoding may use threads in the main process; DataLoader workers already
        # run in parallel.
        for cols, y, w in read_ahead(self._read(units, chunk, threads=info is None)):
            start = 0
            while start < len(y):
                k = min(buffer.free, len(y) - start)
                buffer.put([c[start:start + k] for c in cols], y[start:start + k],
                           w[start:start + k])
                start += k
                while buffer.free == 0:
                    yield self._emit(*buffer.take(self.batch_size))
        for batch in buffer.drain(self.batch_size):
            yield self._emit(*batch)
        self.last_peak_rows = buffer.peak_rows

    def _iter_in_order(self, units):
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        held = 0
        chunk = min(self.batch_size * 16, _READ_ROWS)
        threads = torch.utils.data.get_worker_info() is None
        for cols, y, w in read_ahead(self._read(units, chunk, threads=threads)):
            x = np.empty((len(y), len(cols)), dtype=np.float32)
            for j, column in enumerate(cols):
                x[:, j] = column
            pending.append((x, y.astype(np.float32), w.astype(np.float32)))
            held += len(y)
            if held >= self.batch_size:
                xs, ys, ws = (np.concatenate(p) for p in zip(*pending))
                cut = (held // self.batch_size) * self.batch_size
                for s in range(0, cut, self.batch_size):
                    yield self._emit(xs[s:s + self.batch_size], ys[s:s + self.batch_size],
                                     ws[s:s + self.batch_size])
                pending = [(xs[cut:], ys[cut:], ws[cut:])] if cut < held else []
                held -= cut
        if held:
            yield self._emit(*(np.concatenate(p) for p in zip(*pending)))


def _keep_as_is(batch):
    # DataLoader's default would turn numpy batches into tensors inside the worker, which
    # then travel through one shared-memory segment each; pickled numpy arrays through the
    # worker pipe are several times faster for batches of ~100 kB.
    return batch


class BatchLoader:
    """Iterate a `ParquetBatchStream` as torch tensors, optionally with DataLoader workers.

    Parameters
    ----------
    stream : ParquetBatchStream
        Built with ``as_numpy=True``; `set_epoch` on it before each iteration.
    num_workers : int
        DataLoader worker processes (0: read in this process).

    Yields
    ------
    (x, y, w) torch tensors, as `ParquetBatchStream` describes.
    """

    def __init__(self, stream: ParquetBatchStream, *, num_workers: int = 0):
        if not stream.as_numpy:
            raise ValueError("BatchLoader needs a ParquetBatchStream built with as_numpy=True")
        self.stream = stream
        self.loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers,
                                                  collate_fn=_keep_as_is)

    def __iter__(self):
        for x, y, w in self.loader:
            yield torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)
