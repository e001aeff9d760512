"""`analysis.core.padding`: lists to fixed (rows, N) arrays with a mask, worked out by hand and against a loop."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from analysis.core.padding import pad_into, pad_lists, padded_columns


def test_pad_and_truncate_by_hand():
    x, mask = pad_lists(pa.array([[3.0, 2.0, 1.0], [], [5.0]], type=pa.list_(pa.float32())), 2, fill=-1.0)
    assert x.tolist() == [[3.0, 2.0], [-1.0, -1.0], [5.0, -1.0]]
    assert mask.tolist() == [[True, True], [False, False], [True, False]]
    assert x.dtype == np.float32


def test_sliced_arrow_array_starts_at_its_own_offset():
    whole = pa.array([[9.0], [1.0, 2.0], [3.0]], type=pa.list_(pa.float32()))
    x, mask = pad_lists(whole.slice(1), 3)
    assert x.tolist() == [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    assert mask.sum() == 3


@pytest.mark.parametrize("n", [1, 4, 30])
def test_random_lists_equal_a_python_loop(n):
    rng = np.random.default_rng(n)
    lists = [rng.normal(size=k).astype(np.float32) for k in rng.integers(0, 12, 200)]
    other = [2 * v for v in lists]
    x, mask = padded_columns({"a": lists, "b": other}, ["a", "b"], n)
    assert x.shape == (200, n, 2)
    for i, values in enumerate(lists):
        k = min(len(values), n)
        np.testing.assert_array_equal(x[i, :k, 0], values[:k])
        np.testing.assert_array_equal(x[i, :k, 1], 2 * values[:k])
        assert not x[i, k:].any() and mask[i, :k].all() and not mask[i, k:].any()


def test_columns_of_other_lengths_are_an_error():
    with pytest.raises(ValueError, match="b has other list lengths than a"):
        padded_columns({"a": [[1.0, 2.0]], "b": [[1.0]]}, ["a", "b"], 3)
    with pytest.raises(ValueError, match="at least 1"):
        pad_lists([[1.0]], 0)


def test_lists_of_other_dtypes_and_all_empty_lists_pad_into_float32():
    columns = {"a": pa.array([[1.5, 2.5, 3.5], [], [4.5]], pa.list_(pa.float64())),
               "b": pa.array([[1, 2, 3], [], [4]], pa.list_(pa.int32()))}
    out, mask = padded_columns(columns, ["a", "b"], 2, fill=-9.0)
    assert out.dtype == np.float32
    assert out.tolist() == [[[1.5, 1.0], [2.5, 2.0]], [[-9.0, -9.0], [-9.0, -9.0]], [[4.5, 4.0], [-9.0, -9.0]]]
    assert mask.tolist() == [[True, True], [False, False], [True, False]]
    empty = {"a": pa.array([[], []], pa.list_(pa.float32()))}
    out, mask = padded_columns(empty, ["a"], 3)
    assert out.tolist() == [[[0.0]] * 3] * 2 and not mask.any()


def test_lists_go_to_the_rows_named_in_a_strided_block_and_nothing_else_is_touched():
    # The loader pads a read's jets straight into a shuffle buffer's free slots: rows of a
    # wider float32 block, the constituents a strided (rows, n, F) view of it.
    rng = np.random.default_rng(3)
    lists = [rng.normal(size=k).astype(np.float32) for k in rng.integers(0, 9, 40)]
    columns = {"a": pa.array(lists, type=pa.list_(pa.float32())),
               "b": pa.array([np.arange(len(v)) for v in lists], type=pa.list_(pa.int64()))}
    n, width = 5, 5 * 2 + 3
    block = np.full((100, width), 7.0, dtype=np.float32)
    at = rng.permutation(100)[:40]
    kept = pad_into(columns, ["a", "b"], block[:, :n * 2].reshape(100, n, 2), fill=-1.0, at=at)
    alone, _ = padded_columns(columns, ["a", "b"], n, fill=-1.0)
    np.testing.assert_array_equal(block[at, :n * 2].reshape(40, n, 2), alone)
    assert kept.tolist() == [min(len(v), n) for v in lists]
    untouched = np.setdiff1d(np.arange(100), at)
    assert (block[untouched] == 7.0).all() and (block[:, n * 2:] == 7.0).all()
    with pytest.raises(ValueError, match="40 lists into 40 rows"):
        pad_into(columns, ["a", "b"], block[:, :n * 2].reshape(100, n, 2), at=at + 100)
