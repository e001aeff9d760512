"""Prepare stage: the deterministic hash split (train/val/test, k-fold) and shuffle keys.

Why a hash and not a random draw: an event's split must be a pure function of its identity
(dataset, run, luminosityBlock, event) and the seed, so it never changes when the skim is
re-partitioned, read by another number of workers, or read with fewer columns. The same
per-event hash, with other salts, gives the shuffle bucket and the order inside a bucket,
which makes the whole prepared output a function of the events and the seed alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from analysis.errors import ConfigError, StageInputError

__all__ = [
    "OBJECT_INDEX_COLUMNS",
    "SKIM_ID_COLUMNS",
    "SPLIT_NAMES",
    "assign_fold",
    "assign_split",
    "event_hash",
    "id_columns_of",
    "salted_uniform",
    "shuffle_order_key",
]

# Event identity in the skim (DESIGN.md "Skim Parquet"); the dataset name is part of it
# because run/lumi/event numbers repeat between simulated samples.
SKIM_ID_COLUMNS: tuple[str, ...] = ("dataset", "run", "luminosityBlock", "event")
# A skim of one row per object (`processors.jets`) numbers the objects of an event with one of
# these. It joins the identity of the shuffle (bucket and order), never that of the split or
# the fold: all jets of an event land in one split, so no jet is trained on beside its event's
# other jets being tested on.
OBJECT_INDEX_COLUMNS: tuple[str, ...] = ("jet_index",)
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")

# Salts make the split, fold, bucket and order draws independent functions of one hash.
SALT_SPLIT = 0x5E1D_5A17_0000_0001
SALT_FOLD = 0x5E1D_5A17_0000_0002
SALT_BUCKET = 0x5E1D_5A17_0000_0003
SALT_ORDER = 0x5E1D_5A17_0000_0004

_U64 = np.uint64
_MASK64 = (1 << 64) - 1


def _mix64(h: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective avalanche of uint64 values (wrapping arithmetic)."""
    h = h.copy()
    h ^= h >> _U64(30)
    h *= _U64(0xBF58476D1CE4E5B9)
    h ^= h >> _U64(27)
    h *= _U64(0x94D049BB133111EB)
    h ^= h >> _U64(31)
    return h


def _is_string(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _column_words(values: pa.Array | pa.ChunkedArray | np.ndarray, *, seed: int) -> np.ndarray:
    """One uint64 word per row that depends on the value only, not on its storage type.

    Integers of any width are taken as their int64 value (int32 ``run`` and int64 ``run``
    hash alike); floats that hold integers likewise (a CSV ``EventId`` read as float);
    strings and dictionary strings go through xxh64 once per distinct value.
    """
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if arr.null_count:
        raise StageInputError(f"identity column has {arr.null_count} missing values: every event "
                              "needs an identity to be split reproducibly")
    typ = arr.type
    if pa.types.is_dictionary(typ) and not _is_string(typ.value_type):
        arr = arr.dictionary_decode()
        typ = arr.type
    if pa.types.is_dictionary(typ) or _is_string(typ):
        encoded = arr if pa.types.is_dictionary(typ) else pc.dictionary_encode(arr)
        table = np.array([xxhash.xxh64_intdigest(str(v).encode(), seed=seed & _MASK64)
                          for v in encoded.dictionary.to_pylist()], dtype=np.uint64)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        return table[codes]
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        ints = arr.to_numpy(zero_copy_only=False)
        if ints.dtype == np.uint64:
            return ints.astype(np.uint64, copy=False)
        return ints.astype(np.int64).view(np.uint64)
    if pa.types.is_floating(typ):
        floats = arr.to_numpy(zero_copy_only=False).astype(np.float64)
        whole = np.isfinite(floats) & (floats == np.round(floats)) & (np.abs(floats) < 2.0**62)
        words = floats.view(np.uint64).copy()
        words[whole] = floats[whole].astype(np.int64).view(np.uint64)
        return words
    raise StageInputError(f"identity column of type {typ} cannot be hashed: use integer or string "
                          "identity columns")


def event_hash(columns: Sequence[pa.Array | pa.ChunkedArray | np.ndarray], *, seed: int) -> np.ndarray:
    """A 64-bit hash per row of the identity columns and the seed.

    Parameters
    ----------
    columns : sequence of arrays, each of length n
        The identity columns in a fixed order (`SKIM_ID_COLUMNS` for the skim).
    seed : int
        The prepare seed; another seed gives an unrelated split.

    Returns
    -------
    numpy.ndarray of uint64, shape (n,)
    """
    if not columns:
        raise ConfigError("no identity columns given: name the columns that identify an event")
    n = len(columns[0])
    h = _mix64(np.full(n, seed & _MASK64, dtype=np.uint64))
    for position, column in enumerate(columns):
        word = _column_words(column, seed=seed)
        # Position enters so that swapping two identity values gives another hash.
        h = _mix64(h ^ _mix64(word + _U64((0x9E3779B97F4A7C15 * (position + 1)) & _MASK64)))
    return h


def shuffle_order_key(hashes: np.ndarray) -> np.ndarray:
    """uint64 sort key per event: sorting a bucket by it is a seeded random permutation."""
    return _mix64(hashes ^ _U64(SALT_ORDER))


def salted_uniform(hashes: np.ndarray, *, salt: int) -> np.ndarray:
    """Uniform numbers in [0, 1) from event hashes; each salt gives an independent draw."""
    mixed = _mix64(hashes ^ _U64(salt & _MASK64))
    return (mixed >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


def assign_split(hashes: np.ndarray, *, fractions: Sequence[float]) -> np.ndarray:
    """Split index per event: 0 train, 1 val, 2 test (the order of `SPLIT_NAMES`).

    Parameters
    ----------
    hashes : numpy.ndarray of uint64, shape (n,)
        From `event_hash`.
    fractions : (train, val, test), summing to 1
    """
    edges = np.cumsum(np.asarray(fractions, dtype=np.float64))
    if len(edges) != len(SPLIT_NAMES) or abs(edges[-1] - 1.0) > 1e-6:
        raise ConfigError(f"split fractions {tuple(fractions)} must be three numbers summing to 1")
    u = salted_uniform(hashes, salt=SALT_SPLIT)
    # Comparison with the inner edges only: u < 1 always, so the last split takes the rest.
    return np.searchsorted(edges[:-1], u, side="right").astype(np.int8)


def assign_fold(hashes: np.ndarray, *, kfolds: int) -> np.ndarray:
    """Cross-validation fold per event in 0..kfolds-1 (int8), independent of the split."""
    if not 2 <= kfolds <= 127:
        raise ConfigError(f"kfolds = {kfolds}: use 0 (no folds) or 2..127")
    u = salted_uniform(hashes, salt=SALT_FOLD)
    return np.minimum((u * kfolds).astype(np.int8), kfolds - 1)


def id_columns_of(table: pa.Table, names: Sequence[str]) -> list[pa.ChunkedArray]:
    """The identity columns of a table, or an error naming the missing ones."""
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise StageInputError(f"identity column(s) {', '.join(missing)} missing; the table has "
                              f"{', '.join(table.column_names[:12])}{' ...' if table.num_columns > 12 else ''}")
    return [table.column(n) for n in names]
