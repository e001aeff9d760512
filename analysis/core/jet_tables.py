"""Core (train, export): a jet-level prepared table back in physical units, and its images, one implementation.

Prepare standardises the flat ``features`` and the ``[prepare.objects] constituent_features``
(stats.json ``features`` and ``constituents``). Images (`analysis.core.jet_images`) need the
constituents' positions, pt and class in physical units, and so do the exports; the training
loader (CNN) and `hepprep export-images` both call `table_images` here, so an image is the
same wherever it is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from analysis.core.jet_images import jet_images, list_offsets
from analysis.core.standardise import Standardisation
from analysis.errors import StageInputError

__all__ = ["ROTATE_COLUMNS", "WEIGHT_COLUMNS", "StandardisedColumns", "mapped_lists", "table_images",
           "weight_column"]

WEIGHT_COLUMNS = ("cand_ptrel", "cand_pt", "cand_logpt")  # the pixel weight, first present wins (logpt: exp)
ROTATE_COLUMNS = ("jet_sj1_deta", "jet_sj1_dphi")  # the leading soft-drop subjet (AK8): points up when rotating


def mapped_lists(lists: Any, function: Callable[[np.ndarray], np.ndarray]) -> pa.Array:
    """The same lists with ``function`` applied to their entries (a numpy array of all of them at once)."""
    offsets, flat = list_offsets(lists)
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(function(flat)))


def weight_column(candidates: Sequence[str], *, source: str) -> str:
    """The constituent column the pixels are weighted with (`WEIGHT_COLUMNS`, first present)."""
    for name in WEIGHT_COLUMNS:
        if name in candidates:
            return name
    raise StageInputError(f"{source}: no constituent pt column ({', '.join(WEIGHT_COLUMNS)}) to weigh the pixels with")


class StandardisedColumns:
    """The columns prepare standardised (stats.json), and a table's values back in physical units."""

    def __init__(self, stats: Mapping[str, Any], *, source: str):
        self.stats = stats
        self.source = source

    @cached_property
    def standardised(self) -> dict[str, tuple[Standardisation, int]]:
        """Column -> (its standardisation, its index there), for every column prepare standardised."""
        out: dict[str, tuple[Standardisation, int]] = {}
        flat = (Standardisation.from_stats(self.stats, source=self.source)
                if self.stats.get("feature_order") else None)
        lists = self.stats.get("constituents")
        listed = Standardisation.from_stats(lists, source=f"{self.source} constituents") if lists else None
        for standardisation in (flat, listed):
            if standardisation is not None:
                out.update({name: (standardisation, j) for j, name in enumerate(standardisation.features)})
        return out

    def flat_values(self, table: pa.Table, name: str, *, raw: bool) -> np.ndarray:
        """A flat column as numpy; with ``raw`` a standardised one is back in physical units (float32)."""
        values = table.column(name).to_numpy()
        undo = self.standardised.get(name) if raw else None
        if undo is None:
            return values
        standardisation, j = undo
        return standardisation.inverse_column(j, values).astype(np.float32)

    def list_values(self, table: pa.Table, name: str, *, raw: bool) -> pa.Array:
        """A list column; with ``raw`` a standardised one is back in physical units, entry by entry."""
        column = table.column(name).combine_chunks()
        undo = self.standardised.get(name) if raw else None
        if undo is None:
            return column
        standardisation, j = undo
        return mapped_lists(column, lambda flat: standardisation.inverse_column(j, flat).astype(np.float32))


def table_images(columns: StandardisedColumns, table: pa.Table, *, channels: Mapping[str, Sequence[int]],
                 rotate: bool) -> np.ndarray:
    """The images (rows, C, 40, 40) of a prepared table's jets, from their constituents in physical units.

    The table needs ``cand_deta``, ``cand_dphi``, a weight column (`WEIGHT_COLUMNS`), and
    ``cand_class`` unless the only channel sums every class; with ``rotate``, `ROTATE_COLUMNS`.
    """
    names = table.column_names
    deta, dphi = (columns.list_values(table, c, raw=True) for c in ("cand_deta", "cand_dphi"))
    weight_name = weight_column(names, source=columns.source)
    weight = columns.list_values(table, weight_name, raw=True)
    if weight_name == "cand_logpt":
        weight = mapped_lists(weight, np.exp)
    if "cand_class" in names:
        # a standardised class code comes back within rounding of its integer (1.9999999): round, not truncate
        particle_class = mapped_lists(columns.list_values(table, "cand_class", raw=True), np.rint)
    else:  # only the "all" channel is asked for (the callers check), which sums every class alike
        particle_class = mapped_lists(weight, np.zeros_like)
    rotate_to = (np.stack([columns.flat_values(table, c, raw=True) for c in ROTATE_COLUMNS], axis=1)
                 if rotate else None)
    return jet_images(deta, dphi, weight, particle_class, channels=channels, rotate_to=rotate_to)
