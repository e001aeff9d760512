"""Prepare stage: the hash split is a function of the event identity and the seed only."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.errors import ConfigError, StageInputError
from analysis.prepare.split import (SALT_BUCKET, SALT_SPLIT, assign_fold, assign_split, event_hash,
                                    id_columns_of, salted_uniform)


def _ids(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dataset": np.array(["DYJetsToLL", "TTbar", "GluGluToHToTauTau"])[rng.integers(0, 3, n)],
        "run": rng.integers(190_000, 200_000, n).astype(np.int32),
        "luminosityBlock": rng.integers(1, 3000, n).astype(np.uint32),
        "event": (np.arange(n, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(seed)) % np.uint64(2**40),
    }


def _split_of(table: pa.Table, *, seed: int = 1, fractions=(0.6, 0.2, 0.2)) -> np.ndarray:
    cols = id_columns_of(table, ["dataset", "run", "luminosityBlock", "event"])
    return assign_split(event_hash(cols, seed=seed), fractions=fractions)


def test_split_fractions_within_one_percent_on_100k_events():
    table = pa.table(_ids(100_000))
    split = _split_of(table, fractions=(0.6, 0.2, 0.2))
    observed = np.bincount(split, minlength=3) / len(split)
    np.testing.assert_allclose(observed, [0.6, 0.2, 0.2], atol=0.01)
    # and an uneven choice
    observed = np.bincount(_split_of(table, fractions=(0.7, 0.3, 0.0)), minlength=3) / len(split)
    np.testing.assert_allclose(observed, [0.7, 0.3, 0.0], atol=0.01)


def test_seed_changes_the_split_but_not_its_fractions():
    table = pa.table(_ids(20_000))
    a, b = _split_of(table, seed=1), _split_of(table, seed=2)
    assert (a != b).mean() > 0.3  # unrelated assignments: P(differ) = 1 - Σf² = 0.56
    np.testing.assert_array_equal(a, _split_of(table, seed=1))


def test_split_does_not_depend_on_storage_types_or_dictionary_encoding():
    ids = _ids(5000)
    plain = pa.table(ids)
    wide = pa.table({"dataset": pa.array(ids["dataset"]).dictionary_encode(),
                     "run": ids["run"].astype(np.int64),
                     "luminosityBlock": ids["luminosityBlock"].astype(np.int64),
                     "event": ids["event"]})
    np.testing.assert_array_equal(_split_of(plain), _split_of(wide))


def test_identity_fields_are_not_interchangeable():
    # run and lumi swapped must not give the same hash (position enters the hash)
    a = event_hash([np.array([5], np.int64), np.array([7], np.int64)], seed=0)
    b = event_hash([np.array([7], np.int64), np.array([5], np.int64)], seed=0)
    assert a[0] != b[0]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 400), cuts=st.lists(st.integers(0, 400), max_size=6),
       permutation_seed=st.integers(0, 2**31), extra_columns=st.booleans())
def test_split_of_an_event_is_independent_of_partitioning_order_and_columns(n, cuts, permutation_seed,
                                                                           extra_columns):
    ids = _ids(n, seed=n)
    full = pa.table({**ids, "m_vis": np.arange(n, dtype=np.float32)} if extra_columns else ids)
    reference = _split_of(full)
    # any partitioning: split in pieces at arbitrary cut points, computed piece by piece
    edges = sorted({0, n, *[c for c in cuts if c < n]})
    pieces = np.concatenate([_split_of(full.slice(a, b - a)) for a, b in zip(edges[:-1], edges[1:])])
    np.testing.assert_array_equal(pieces, reference)
    # any order (a worker reading partitions in another order), only the id columns read
    perm = np.random.default_rng(permutation_seed).permutation(n)
    projected = pa.table(ids).select(["event", "run", "dataset", "luminosityBlock"]).take(pa.array(perm))
    np.testing.assert_array_equal(_split_of(projected), reference[perm])


def test_salted_draws_are_independent_uniforms():
    hashes = event_hash([np.arange(200_000, dtype=np.int64)], seed=3)
    u_split = salted_uniform(hashes, salt=SALT_SPLIT)
    u_bucket = salted_uniform(hashes, salt=SALT_BUCKET)
    assert 0.0 <= u_split.min() and u_split.max() < 1.0
    assert abs(u_split.mean() - 0.5) < 0.005 and abs(u_split.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(u_split, u_bucket)[0, 1]) < 0.01
    # consecutive event numbers do not give correlated draws
    assert abs(np.corrcoef(u_split[:-1], u_split[1:])[0, 1]) < 0.01


def test_folds_are_balanced_and_stable():
    hashes = event_hash([np.arange(50_000, dtype=np.int64)], seed=9)
    fold = assign_fold(hashes, kfolds=5)
    assert fold.dtype == np.int8
    np.testing.assert_allclose(np.bincount(fold) / len(fold), 0.2, atol=0.01)
    np.testing.assert_array_equal(fold[1000:2000], assign_fold(hashes[1000:2000], kfolds=5))
    with pytest.raises(ConfigError, match="kfolds = 1: use 0"):
        assign_fold(hashes, kfolds=1)


def test_string_ids_and_float_integers_hash_by_value():
    as_int = event_hash([np.array([100000, 100001], np.int64)], seed=4)
    as_float = event_hash([np.array([100000.0, 100001.0])], seed=4)  # EventId read from a CSV as float
    np.testing.assert_array_equal(as_int, as_float)


def test_errors_name_the_problem():
    with pytest.raises(StageInputError, match="identity column.*event.*missing; the table has dataset, run"):
        id_columns_of(pa.table({"dataset": ["a"], "run": [1]}), ["dataset", "run", "event"])
    with pytest.raises(StageInputError, match="1 missing values"):
        event_hash([pa.array([1, None])], seed=0)
    with pytest.raises(ConfigError, match="three numbers summing to 1"):
        assign_split(np.zeros(3, np.uint64), fractions=(0.5, 0.2))
