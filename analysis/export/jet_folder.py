"""Export stage: a prepared jet-level folder as the HDF5 and image exports read it, one row group at a time.

The exports read the files the prepared manifest lists for each split (`analysis.core.prepared`),
never a glob, and one Parquet row group at a time, so that memory stays that of a row group
whatever the size of the split. A jet-level folder is told apart from an event-level one by
its list columns: the constituents (``cand_*``) and secondary vertices (``sv_*``) of
`processors.jets`. Columns prepare standardised (the flat ``features`` and the
``constituent_features``) can be turned back into physical units with the folder's own
stats.json, through the one `Standardisation`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.core.jet_tables import StandardisedColumns, mapped_lists
from analysis.core.prepared import PreparedListing, read_prepared_listing, read_prepared_stats
from analysis.core.standardise import Standardisation
from analysis.errors import ConfigError, StageInputError

__all__ = ["CANDIDATE_PREFIX", "VERTEX_PREFIX", "JetFolder", "mapped_lists", "read_jet_folder", "text_codes"]

CANDIDATE_PREFIX = "cand_"  # a jet's particle-flow candidates, by decreasing pt
VERTEX_PREFIX = "sv_"  # its secondary vertices, by decreasing dxy significance
# Constant within a split's files: the split is the exported file's name, not a column.
SPLIT_COLUMN = "split"


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_dictionary(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)


@dataclass(frozen=True)
class JetFolder:
    """A checked jet-level prepared folder: its listing, stats.json and the schema of its files."""

    root: Path
    listing: PreparedListing
    stats: dict[str, Any]
    schema: pa.Schema

    @property
    def candidates(self) -> list[str]:
        """The constituent list columns (``cand_*``), in file order."""
        return [f.name for f in self.schema if _is_list(f.type) and f.name.startswith(CANDIDATE_PREFIX)]

    @property
    def vertices(self) -> list[str]:
        """The secondary-vertex list columns (``sv_*``), in file order."""
        return [f.name for f in self.schema if _is_list(f.type) and f.name.startswith(VERTEX_PREFIX)]

    @property
    def other_lists(self) -> list[str]:
        """List columns of neither kind: their lengths follow no jet's constituents, so they are left out."""
        return [f.name for f in self.schema if _is_list(f.type)
                and not f.name.startswith((CANDIDATE_PREFIX, VERTEX_PREFIX))]

    @property
    def flat(self) -> list[str]:
        """One value per jet: features, identity, class, weights, targets (not the constant ``split``)."""
        return [f.name for f in self.schema if not _is_list(f.type) and f.name != SPLIT_COLUMN]

    @property
    def text(self) -> list[str]:
        """Flat columns of strings (``dataset``, ``process``): exported as integer codes."""
        return [f.name for f in self.schema if f.name in self.flat and _is_text(f.type)]

    def check_splits(self, splits: Sequence[str], option: str = "--splits") -> list[str]:
        """``splits`` checked to be splits of this folder with files; one-line `ConfigError` otherwise."""
        have = self.listing.splits()
        for name in splits:
            if name not in have:
                raise ConfigError(f"{option} {name}: no such split in {self.root / 'manifest.json'} "
                                  f"(it lists {', '.join(have) or 'none'})")
        if not splits:
            raise ConfigError(f"{option}: name at least one split ({', '.join(have)})")
        return list(splits)

    def rows(self, split: str) -> int:
        return sum(self.listing.rows(split).values())

    def batches(self, split: str, columns: Sequence[str]) -> Iterator[pa.Table]:
        """``columns`` of the split's rows, one Parquet row group at a time, in file order."""
        for path in self.listing.files(split):
            handle = pq.ParquetFile(path)
            missing = sorted(set(columns) - set(handle.schema_arrow.names))
            if missing:
                raise StageInputError(f"{path}: no column {', '.join(missing)}, which the other files of "
                                      f"{self.root} have; re-run `hepprep prepare` into {self.root}")
            for group in range(handle.metadata.num_row_groups):
                yield handle.read_row_group(group, columns=list(columns))

    def names(self, splits: Sequence[str], column: str) -> list[str]:
        """Every value of a text column over ``splits``, sorted: the codes' meaning (reads that column only)."""
        values: set[str] = set()
        for split in splits:
            for path in self.listing.files(split):
                chunk = pq.read_table(path, columns=[column]).column(column)
                values.update(v for v in chunk.cast(pa.string()).unique().to_pylist() if v is not None)
        return sorted(values)

    @cached_property
    def columns(self) -> StandardisedColumns:
        """The columns prepare standardised, and a table's values back in physical units (`analysis.core.jet_tables`)."""
        return StandardisedColumns(self.stats, source=str(self.root / "stats.json"))

    @property
    def standardised(self) -> dict[str, tuple[Standardisation, int]]:
        return self.columns.standardised

    def flat_values(self, table: pa.Table, name: str, *, raw: bool) -> np.ndarray:
        return self.columns.flat_values(table, name, raw=raw)

    def list_values(self, table: pa.Table, name: str, *, raw: bool) -> pa.Array:
        return self.columns.list_values(table, name, raw=raw)


def text_codes(table: pa.Table, name: str, names: Sequence[str]) -> np.ndarray:
    """A text column as int32 codes: the position of each value in ``names`` (a null is -1)."""
    values = table.column(name).cast(pa.string()).to_numpy(zero_copy_only=False)
    lookup = {value: code for code, value in enumerate(names)}
    unique, inverse = np.unique(values.astype(object).astype(str), return_inverse=True)
    codes = np.array([lookup.get(v, -1) for v in unique.tolist()], dtype=np.int32)
    out = codes[inverse]
    out[np.asarray(table.column(name).is_null())] = -1
    return out


def read_jet_folder(root: str | Path) -> JetFolder:
    """A prepared folder of a jet-level skim, checked to be one.

    Raises
    ------
    StageInputError
        No such folder, no prepare manifest or stats.json, or a folder without constituent
        list columns (an event-level preparation).
    """
    root = Path(root)
    if not root.is_dir():
        raise StageInputError(f"{root}: no such folder (give the --out folder of `hepprep prepare`)")
    if not (root / "manifest.json").is_file():
        raise StageInputError(f"{root}: not a prepared folder (no manifest.json); give the --out folder "
                              "of `hepprep prepare`")
    listing = read_prepared_listing(root)
    stats = read_prepared_stats(root)
    files = [f for split in listing.splits() for f in listing.files(split)]
    if not files:
        raise StageInputError(f"{root / 'manifest.json'}: lists no file in any split; re-run `hepprep prepare`")
    try:
        schema = pq.read_schema(files[0])
    except (OSError, pa.ArrowInvalid) as err:
        raise StageInputError(f"{files[0]}: not a readable Parquet file ({' '.join(str(err).split())}); "
                              f"re-run `hepprep prepare` into {root}") from None
    folder = JetFolder(root=root, listing=listing, stats=stats, schema=schema)
    if not folder.candidates and not folder.vertices:
        raise StageInputError(f"{root}: no constituent list columns ({CANDIDATE_PREFIX}*, {VERTEX_PREFIX}*): "
                              "an event-level prepared folder; the jet exports need a jet-level skim "
                              "(processors.jets:JetProcessor, README \"Jet-level datasets\")")
    return folder
