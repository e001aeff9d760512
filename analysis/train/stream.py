"""Training stage (MLP): stream prepared Parquet row groups into shuffled batches, never a whole split.

A split can be far larger than memory, so the network reads it as a stream. Shuffling
happens at two levels, as in WebDataset/tf.data: the order of row groups is permuted each
epoch (seeded by ``seed`` and the epoch, so a run is reproducible and a resumed run sees
the same order), and rows pass through a bounded in-memory shuffle buffer
(`analysis.train.stream_buffer`). Each DataLoader worker, or each read thread in the training
process, takes every n-th row group of the epoch's order, so they never overlap and
together cover the split. Rows move in large blocks (a row group read, half a buffer
drawn) and batches are views cut from them: per-batch or per-row work would cost more
than reading the data.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from analysis.core.optional import optional_import
from analysis.train.inputs import LABEL, TRAIN_WEIGHT, row_group_units
from analysis.train.stream_buffer import RowGroupShuffleBuffer, as_rows, cut_batches

torch = optional_import("torch", purpose="the mlp model's streaming loader")

__all__ = ["BatchLoader", "ParquetBatchStream", "read_ahead", "round_robin_threads",
           "row_group_units", "split_targets"]

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
    return round_robin_threads([items], ahead=1)


def round_robin_threads(sources: Sequence[Iterable], *, ahead: int = 2) -> Iterator:
    """Yield the items of several iterables in turn, each produced by a thread of its own.

    The order is fixed (one item of each source in turn, skipping exhausted sources),
    whatever the threads' speeds, so a seeded stream stays reproducible. Each source may
    run up to ``ahead`` items ahead of the one the caller holds, so a source that is
    momentarily faster keeps working instead of waiting for its turn. An exception in a
    source is raised here; closing this generator stops the threads.
    """
    stop = threading.Event()
    queues: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in sources]
    # One slot per item not yet given back: the one the caller holds and ``ahead`` more.
    slots = [threading.Semaphore(ahead + 1) for _ in sources]

    def produce(source: Iterable, out: queue.SimpleQueue, free: threading.Semaphore) -> None:
        try:
            iterator = iter(source)
            while True:
                while not free.acquire(timeout=0.1):  # ``ahead`` items of ours are waiting
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                item = next(iterator, _END)
                out.put((item, None))
                if item is _END:
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            out.put((_END, err))

    threads = [threading.Thread(target=produce, args=(s, q, f), daemon=True,
                                name=f"parquet-read-{k}")
               for k, (s, q, f) in enumerate(zip(sources, queues, slots))]
    for thread in threads:
        thread.start()
    try:
        alive = list(range(len(sources)))
        while alive:
            for i in list(alive):
                item, err = queues[i].get()
                if err is not None:
                    raise err
                if item is _END:
                    alive.remove(i)
                    continue
                yield item
                slots[i].release()  # the caller is done with it: source i may make one more
    finally:
        stop.set()
        for thread in threads:
            thread.join()


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
        Capacity of the shuffle buffer in rows (config ``train.mlp.shuffle_buffer``),
        shared by the read threads. The stream holds at most about 2.5 times this many
        rows (the buffer, and up to three draws of half a buffer share per thread: the
        one in use and two made ahead) plus, per read thread, one read chunk of at most
        ``min(shuffle_buffer // read_threads, 131072)`` rows (three with one thread,
        which reads ahead).
    shuffle : bool
        False streams rows in file order without a buffer (validation, prediction).
    seed : int
        With the epoch (`set_epoch`), fixes the row-group order and the buffer draws.
    as_numpy : bool
        Yield numpy arrays instead of torch tensors.
    read_threads : int
        Threads that read and shuffle a shuffled stream in this process, each with its
        share of the row groups and of the buffer (``shuffle_buffer // read_threads``
        rows). In a DataLoader worker the stream uses one.
    targets : sequence of str
        The target columns (default the binary ``label``; a multi-class target's
        ``class``; a regression's standardised targets). With K > 1 columns the first
        K - 1 ride in ``x`` after the features and the last is ``y``: the rows keep one
        layout however many targets there are (`split_targets` takes them apart).

    Attributes
    ----------
    yield_blocks : bool
        When set, the stream yields blocks of rows (a shuffled stream: each draw from its
        buffer, half the buffer; in order: each read chunk) as float32 tensors of shape
        ``(rows, n_features + 2)`` (features, label, weight) instead of batches.
        `BatchLoader` sets it on its DataLoader workers' copy, so rows cross between
        processes in few large shared-memory blocks and are cut into batches
        (`cut_batches`) in the training process.

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
                 as_numpy: bool = False, read_threads: int = 2, targets: Sequence[str] = (LABEL,)):
        if batch_size <= 0 or shuffle_buffer <= 0:
            raise ValueError(f"batch_size ({batch_size}) and shuffle_buffer ({shuffle_buffer}) "
                             f"must be > 0")
        self.files = [Path(f) for f in files]
        self.features = list(features)
        self.targets = list(targets)
        self._width = len(self.features) + len(self.targets) - 1  # x columns of a row block
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.shuffle = shuffle
        self.seed = seed
        self.as_numpy = as_numpy
        self.read_threads = read_threads
        self.epoch = 0
        self.units = row_group_units(self.files)
        self.rows = sum(u[2] for u in self.units)
        self.last_peak_rows = 0  # buffer peak of the last epoch iterated in this process
        self.yield_blocks = False

    def before_workers(self) -> None:
        """Work DataLoader workers would each repeat, done once in this process before they fork (none here)."""

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

    def _read(self, units: list[tuple[Path, int, int]], chunk: int, *, threads: bool,
              reuse: int = 0, into: Any = None):
        """Yield blocks of <= ``chunk`` rows (`as_rows`: features, label, train_weight).

        ``reuse > 0`` fills a ring of that many blocks in turn, for a consumer that is done
        with each block before it asks for the ``reuse - 1``-th next: on a virtual machine
        each fresh page of a new block costs a fault, which is more than filling it.
        ``into(rows)``, where given, lends the rows to fill instead, or None (the
        shuffle buffer's `free_rows`, for a consumer in this same thread).
        """
        columns = [*self.features, *self.targets, TRAIN_WEIGHT]
        nf = self._width
        ring = [np.empty((chunk, nf + 2), dtype=np.float32) for _ in range(reuse)]
        count = 0
        open_file, handle = None, None
        for path, group, rows in units:
            if path != open_file:
                handle, open_file = pq.ParquetFile(path, memory_map=True), path
            if rows <= chunk:
                pieces = [handle.read_row_group(group, columns=columns, use_threads=threads)]
            else:
                pieces = handle.iter_batches(batch_size=chunk, row_groups=[group],
                                             columns=columns, use_threads=threads)
            for piece in pieces:
                arrays = [piece.column(j).to_numpy() for j in range(nf + 2)]
                yield as_rows(arrays[:nf], arrays[nf], arrays[nf + 1],
                              out=self._block_to_fill(piece.num_rows, ring, count, into))
                count += 1

    @staticmethod
    def _block_to_fill(rows: int, ring: list[np.ndarray], count: int, into: Any) -> np.ndarray | None:
        """The ``rows`` a read fills: lent by ``into``, else of the ring's next block; None: a fresh block."""
        lent = into(rows) if into is not None else None
        if lent is not None:
            return lent
        return ring[count % len(ring)][:rows] if ring else None

    def _emit(self, x, y, w):
        if self.as_numpy:
            return x, y, w
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)

    def __iter__(self):
        units = self._worker_units()
        blocks = self._shuffled_blocks(units) if self.shuffle else self._blocks_in_order(units)
        if self.yield_blocks:
            yield from (torch.from_numpy(block) for block in blocks)
            return
        for x, y, w in cut_batches(blocks, self.batch_size):
            yield self._emit(x, y, w)

    def _shuffled_blocks(self, units):
        info = torch.utils.data.get_worker_info()
        # In a DataLoader worker the workers already run in parallel: one buffer each. In
        # this process `read_threads` threads each read their share of the row groups
        # (every n-th of the epoch's order) into their share of the buffer, and their draws
        # are interleaved in a fixed order: decoding, transposing and shuffling keep every
        # core busy, not only the one decoding.
        n = 1 if info is not None else max(1, min(self.read_threads, len(units)))
        peaks = [0] * n
        parts = [self._shuffle_part(units[k::n], np.random.default_rng(
                     [self.seed, self.epoch, info.id if info else 0, k, 1]),
                     capacity=max(1, self.shuffle_buffer // n), peaks=peaks, slot=k)
                 for k in range(n)]
        # One part reads ahead on its own thread; several are each a thread already.
        yield from round_robin_threads(parts) if n > 1 else parts[0]
        self.last_peak_rows = sum(peaks)

    def _shuffle_part(self, units, rng: np.random.Generator, *, capacity: int,
                      peaks: list[int], slot: int):
        """Shuffled blocks of ``units`` through a buffer of ``capacity`` rows; its peak into ``peaks[slot]``."""
        buffer = RowGroupShuffleBuffer(max(1, min(capacity, sum(u[2] for u in units))),
                                       self._width, rng)
        chunk = min(buffer.capacity, _READ_ROWS)
        # Once the buffer is full, incoming rows are exchanged half a buffer at a time
        # for rows drawn uniformly from those held: one gather per half buffer, not per
        # batch, and every row still leaves uniformly from the rows held when it is drawn.
        piece = max(1, buffer.capacity // 2)
        # put and exchange copy the rows they are given: the read blocks can be reused.
        # Reading ahead, a block is refilled two reads after it was handed over.
        ahead = len(peaks) == 1
        # A lone part that was allowed several threads (fewer row groups than read_threads)
        # lets pyarrow decode its columns in parallel, as a plain read of the file would.
        threads = ahead and self.read_threads > 1 and torch.utils.data.get_worker_info() is None
        reads = self._buffer_reads(units, chunk, threads=threads, ahead=ahead, buffer=buffer)
        for rows in (read_ahead(reads) if ahead else reads):
            start = 0
            while start < len(rows):
                k = min(buffer.free or piece, len(rows) - start)
                if buffer.free:
                    buffer.put(rows[start:start + k])
                else:
                    yield buffer.exchange(rows[start:start + k])
                start += k
        if buffer.n:
            yield buffer.take_block(buffer.n)
        peaks[slot] = buffer.peak_rows

    def _buffer_reads(self, units, chunk: int, *, threads: bool, ahead: bool, buffer: RowGroupShuffleBuffer):
        """The reads `_shuffle_part` puts into ``buffer``: blocks, or rows that write themselves (`RowGroupShuffleBuffer.put`)."""
        # Without a read-ahead thread the reader fills the buffer's free rows itself, while
        # there are enough of them: no copy into the buffer.
        return self._read(units, chunk, threads=threads, reuse=3 if ahead else 1,
                          into=None if ahead else buffer.free_rows)

    def _blocks_in_order(self, units):
        chunk = min(self.batch_size * 16, _READ_ROWS)
        threads = torch.utils.data.get_worker_info() is None
        yield from read_ahead(self._read(units, chunk, threads=threads))


def split_targets(x, y, n_features: int):
    """``(features, targets)`` of a batch: targets ``(batch,)`` for one target column,
    ``(batch, K)`` when the stream carries K (`ParquetBatchStream` ``targets``)."""
    if x.shape[1] == n_features:
        return x, y
    return x[:, :n_features], torch.cat([x[:, n_features:], y[:, None]], dim=1)


def _keep_as_is(batch):
    # Workers yield whole blocks as tensors already (`ParquetBatchStream.yield_blocks`).
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
        self._worker_stream = None
        if num_workers == 0:
            # The stream is read directly: a DataLoader would only add per-batch bookkeeping.
            self.loader = stream
        else:
            stream.before_workers()
            self._worker_stream = copy.copy(stream)
            self._worker_stream.yield_blocks = True
            self.loader = torch.utils.data.DataLoader(self._worker_stream, batch_size=None,
                                                      num_workers=num_workers,
                                                      collate_fn=_keep_as_is)

    def __iter__(self):
        if self._worker_stream is None:
            for x, y, w in self.loader:
                yield torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)
            return
        # Workers send blocks of rows (tensors, so in shared memory); batches are cut here.
        self._worker_stream.set_epoch(self.stream.epoch)
        yield from cut_batches(self.loader, self.stream.batch_size)
