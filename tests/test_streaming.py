"""Training stage: the streaming Parquet loader sees every row once per epoch with bounded memory."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from analysis.train.stream import BatchLoader, ParquetBatchStream, row_group_units  # noqa: E402
from analysis.train.stream_buffer import RowGroupShuffleBuffer, as_rows, cut_batches  # noqa: E402

N_EXTRA = 7  # feature columns besides row_id, so a row is as wide as a real one-ish


def _write_split(folder, n_rows, *, file_rows, row_group_rows):
    """Files whose `row_id` feature numbers the rows 0..n-1 (exact in float32 below 2**24)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for k, start in enumerate(range(0, n_rows, file_rows)):
        stop = min(start + file_rows, n_rows)
        ids = np.arange(start, stop, dtype=np.float32)
        cols = {"row_id": ids, **{f"x{j}": rng.standard_normal(len(ids)).astype(np.float32)
                                  for j in range(N_EXTRA)},
                "label": (ids % 2).astype(np.int8), "train_weight": np.full(len(ids), 1.0)}
        pq.write_table(pa.table(cols), folder / f"part-{k:05d}.parquet", row_group_size=row_group_rows)
    return sorted(folder.glob("part-*.parquet"))


FEATURES = ["row_id", *[f"x{j}" for j in range(N_EXTRA)]]


def _ids(batches):
    return np.concatenate([np.asarray(x[:, 0]) for x, _, _ in batches]).astype(np.int64)


def test_shuffle_buffer_hand_built():
    # Capacity 4, rows 10..13 in; two takes of 2 then nothing left: every row exactly once.
    buf = RowGroupShuffleBuffer(4, 1, np.random.default_rng(0))
    buf.put(as_rows(np.array([[10.0], [11.0], [12.0], [13.0]]), np.zeros(4), np.ones(4)))
    assert buf.free == 0
    first = buf.take(2)[0][:, 0]
    assert buf.n == 2
    # The two rows left are exactly the two not drawn, compacted to the front.
    assert sorted(buf.x[:2, 0]) == sorted(set([10.0, 11.0, 12.0, 13.0]) - set(first))
    second = buf.take(5)[0][:, 0]  # asks for more than held: gets the 2 left
    assert sorted([*first, *second]) == [10.0, 11.0, 12.0, 13.0]
    assert buf.n == 0 and buf.peak_rows == 4
    with pytest.raises(ValueError, match="shuffle buffer overflow: 5 rows into 4 free slots"):
        buf.put(np.zeros((5, 3), dtype=np.float32))


def test_rows_filled_in_the_buffers_free_rows_are_put_without_a_copy():
    buf = RowGroupShuffleBuffer(5, 1, np.random.default_rng(0))
    lent = buf.free_rows(3)
    as_rows(np.array([[10.0], [11.0], [12.0]]), np.zeros(3), np.ones(3), out=lent)
    buf.put(lent)
    assert buf.n == 3 and buf.x[:3, 0].tolist() == [10.0, 11.0, 12.0]
    lent[0, 0] = 99.0  # the buffer's own rows: put copied nothing
    assert buf.x[0, 0] == 99.0
    assert buf.free_rows(3) is None and buf.free_rows(2).shape == (2, 3)
    other = as_rows(np.array([[20.0]]), np.zeros(1), np.ones(1))
    buf.put(other)  # rows from elsewhere are copied in
    other[0, 0] = -1.0
    assert buf.x[3, 0] == 20.0 and buf.n == 4


class _RowsThatWriteThemselves:
    """Rows as a jet read hands them to the buffer: written straight into the slots named."""

    def __init__(self, values):
        self.values, self.calls = np.asarray(values, dtype=np.float32), []

    def __len__(self):
        return len(self.values)

    def write_rows(self, target, at):
        self.calls.append(np.array(at))
        target[at, 0], target[at, 1], target[at, 2] = self.values, 1.0, 2.0


def test_rows_that_write_themselves_go_straight_into_free_and_drawn_slots():
    buf = RowGroupShuffleBuffer(4, 1, np.random.default_rng(2))
    first = _RowsThatWriteThemselves([10.0, 11.0, 12.0])
    buf.put(first)
    assert first.calls[0].tolist() == [0, 1, 2] and buf.x[:3, 0].tolist() == [10.0, 11.0, 12.0]
    buf.put(as_rows(np.array([[13.0]]), np.zeros(1), np.ones(1)))
    incoming = _RowsThatWriteThemselves([20.0, 21.0])
    drawn = buf.exchange(incoming)
    # The drawn rows were taken out before the incoming rows took exactly their slots.
    slots = incoming.calls[0]
    assert sorted(drawn[:, 0]) == sorted(v for v in (10.0, 11.0, 12.0, 13.0) if v not in buf.x[:4, 0])
    assert buf.x[slots, 0].tolist() == [20.0, 21.0] and buf.y[slots].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="overflow"):
        buf.put(_RowsThatWriteThemselves([1.0]))


def test_shuffle_buffer_exchange_swaps_drawn_rows_for_incoming():
    buf = RowGroupShuffleBuffer(4, 1, np.random.default_rng(1))
    buf.put(as_rows(np.array([[10.0], [11.0], [12.0], [13.0]]), np.zeros(4), np.ones(4)))
    drawn = buf.exchange(as_rows(np.array([[20.0], [21.0]]), np.ones(2), np.full(2, 2.0)))
    out = sorted(drawn[:, 0])
    assert len(out) == 2 and set(out) <= {10.0, 11.0, 12.0, 13.0}
    assert drawn[:, 1].tolist() == [0.0, 0.0] and drawn[:, 2].tolist() == [1.0, 1.0]
    # The incoming rows took the drawn rows' slots: held = the two not drawn + 20, 21.
    held = sorted(buf.x[:4, 0])
    assert held == sorted({10.0, 11.0, 12.0, 13.0} - set(out) | {20.0, 21.0}) and buf.n == 4
    assert sorted(buf.y[:4]) == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="exchange of 5 rows with 4 held"):
        buf.exchange(np.zeros((5, 3), dtype=np.float32))


def test_cut_batches_joins_blocks_into_full_batches():
    blocks = [as_rows(np.arange(a, b, dtype=np.float32)[:, None], np.zeros(b - a), np.ones(b - a))
              for a, b in ((0, 3), (3, 8), (8, 9), (9, 11))]
    batches = list(cut_batches(blocks, 4))
    assert [len(y) for _, y, _ in batches] == [4, 4, 3]  # only the last is short
    assert np.concatenate([x[:, 0] for x, _, _ in batches]).tolist() == list(range(11))
    torch_batches = list(cut_batches([torch.from_numpy(b) for b in blocks], 4))
    assert [len(y) for _, y, _ in torch_batches] == [4, 4, 3]
    assert all(isinstance(x, torch.Tensor) for x, _, _ in torch_batches)
    assert list(cut_batches([], 4)) == []


def test_row_group_units_lists_every_group(tmp_path):
    files = _write_split(tmp_path / "train", 2500, file_rows=1000, row_group_rows=300)
    units = row_group_units(files)
    # 1000 rows in 300-row groups: 300, 300, 300, 100; last file 500 rows: 300, 200.
    assert [u[2] for u in units] == [300, 300, 300, 100] * 2 + [300, 200]
    assert sum(u[2] for u in units) == 2500


def test_stream_much_larger_than_buffer_is_bounded_and_exactly_once(tmp_path):
    n_rows, buffer_rows = 200_000, 2_000
    files = _write_split(tmp_path / "train", n_rows, file_rows=50_000, row_group_rows=5_000)
    stream = ParquetBatchStream(files, FEATURES, batch_size=256, shuffle_buffer=buffer_rows,
                                seed=11, as_numpy=True)
    split_bytes = n_rows * (len(FEATURES) + 2) * 4
    seen = np.zeros(n_rows, dtype=np.int64)  # the test's own bookkeeping, not traced
    group_order: list[int] = []
    tracemalloc.start()
    first_batch = None
    for x, y, w in stream:
        ids = x[:, 0].astype(np.int64)
        first_batch = ids if first_batch is None else first_batch
        group_order += [g for g in np.unique(ids // 5_000) if g not in group_order]
        np.add.at(seen, ids, 1)
        assert np.array_equal(y, ids % 2)  # labels travel with their rows
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (seen == 1).all(), f"rows seen {np.unique(seen)} times, expected exactly once"
    assert stream.last_peak_rows == buffer_rows  # filled, never above capacity
    # Buffer + one read chunk + a batch: far below the split held at once.
    assert peak < split_bytes / 10, f"peak {peak} bytes vs split {split_bytes} bytes"
    # Shuffled twice: row groups are visited out of file order, rows within a batch too.
    assert sorted(group_order) == list(range(40)) and group_order != list(range(40))
    assert not np.array_equal(first_batch, np.sort(first_batch))


@pytest.mark.parametrize("read_threads", [1, 2, 3])
def test_epochs_reshuffle_reproducibly(tmp_path, read_threads):
    files = _write_split(tmp_path / "train", 6_000, file_rows=2_000, row_group_rows=500)

    def order(epoch, seed=5):
        stream = ParquetBatchStream(files, FEATURES, batch_size=100, shuffle_buffer=1_000,
                                    seed=seed, as_numpy=True, read_threads=read_threads)
        stream.set_epoch(epoch)
        return _ids(stream)

    assert np.array_equal(order(0), order(0))  # same seed and epoch: same stream
    assert not np.array_equal(order(0), order(1))  # a new epoch: a new order
    assert not np.array_equal(order(0), order(0, seed=6))
    assert sorted(order(1)) == list(range(6_000))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("wrapper", ["DataLoader", "BatchLoader"])
def test_dataloader_workers_split_row_groups_without_overlap(tmp_path, num_workers, wrapper):
    n_rows = 30_000
    files = _write_split(tmp_path / "train", n_rows, file_rows=10_000, row_group_rows=1_000)
    stream = ParquetBatchStream(files, FEATURES, batch_size=512, shuffle_buffer=3_000, seed=2,
                                as_numpy=wrapper == "BatchLoader")
    if wrapper == "BatchLoader":  # the trainer's: numpy through the worker pipe, tensors out
        loader = BatchLoader(stream, num_workers=num_workers)
    else:
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers)
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        batches = list(loader)
        assert all(isinstance(x, torch.Tensor) and x.dtype == torch.float32 for x, _, _ in batches)
        assert all(len(x) <= 512 for x, _, _ in batches)
        ids = _ids(batches)
        assert len(ids) == n_rows and np.array_equal(np.sort(ids), np.arange(n_rows))


def test_in_order_stream_keeps_file_order(tmp_path):
    files = _write_split(tmp_path / "val", 2_345, file_rows=1_000, row_group_rows=200)
    stream = ParquetBatchStream(files, FEATURES, batch_size=100, shuffle_buffer=10,
                                shuffle=False, as_numpy=True)
    batches = list(stream)
    assert [len(b[0]) for b in batches] == [100] * 23 + [45]
    assert np.array_equal(_ids(batches), np.arange(2_345))
    assert stream.rows == 2_345


def test_bad_sizes_are_refused(tmp_path):
    files = _write_split(tmp_path / "train", 10, file_rows=10, row_group_rows=10)
    with pytest.raises(ValueError, match="BatchLoader needs a ParquetBatchStream built with as_numpy=True"):
        BatchLoader(ParquetBatchStream(files, FEATURES, batch_size=5, shuffle_buffer=10))
    with pytest.raises(ValueError, match=r"batch_size \(0\) and shuffle_buffer \(10\) must be > 0"):
        ParquetBatchStream(files, FEATURES, batch_size=0, shuffle_buffer=10)


def test_read_ahead_keeps_order_and_stops_early():
    from analysis.train.stream import read_ahead

    assert list(read_ahead(iter(range(5)))) == [0, 1, 2, 3, 4]
    assert list(read_ahead([])) == []
    produced = []

    def numbers():
        for i in range(100):
            produced.append(i)
            yield i

    stream = read_ahead(numbers())
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()  # the consumer stops: at most one item was read ahead, and no more after
    assert produced in ([0, 1], [0, 1, 2])
    time.sleep(0.3)
    assert len(produced) <= 3

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(read_ahead(broken()))


def test_round_robin_threads_keeps_a_fixed_order_whatever_the_speeds():
    from analysis.train.stream import round_robin_threads

    def slow(tag, n, pause):
        for i in range(n):
            time.sleep(pause)
            yield f"{tag}{i}"

    # The fast source runs ahead but its items still come in turn, then alone at the end.
    items = list(round_robin_threads([slow("a", 3, 0.02), slow("b", 5, 0.0)], ahead=2))
    assert items == ["a0", "b0", "a1", "b1", "a2", "b2", "b3", "b4"]

    def broken():
        yield "x"
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(round_robin_threads([broken(), slow("b", 3, 0.0)]))
