"""Training stage (taggers): stream a jet-level prepared split as padded (B, N, F) batches with a mask.

The prepared files keep each jet's constituents as variable-length lists (by decreasing pt).
N is a training option (``[train.tagger] constituents``), applied here at load time: a
row group's jets are padded or truncated to N with `analysis.core.padding` (the one
padding implementation, the HDF5 export's too) as they go into the shuffle buffer, each
straight into its slot, and from then on a jet is one fixed-width float32 row. So the whole
machinery of the MLP's stream serves the taggers unchanged: the per-epoch row-group order,
the bounded shuffle buffer, the read threads and DataLoader workers
(`analysis.train.stream.ParquetBatchStream`). A jet's row is::

    [ N x F constituent features | n_valid | J jet features | targets | label | weight ]

or, for the CNN, ``[ C x 40 x 40 image pixels | J jet features | ... ]``, the image made from
the constituents in physical units by `analysis.core.jet_tables.table_images`.
`JetRowLayout.unpack` turns a batch's rows back into views: ``constituents`` (B, N, F),
``mask`` (B, N) bool (True: a real constituent), ``jets`` (B, J), ``images`` (B, C, 40, 40).
Missing values (NaN) pass through as they are: the networks impute them, in training and
in an exported graph alike; padded slots hold 0 and are False in the mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.core.jet_images import DEFAULT_CHANNELS, IMAGE_PIXELS
from analysis.core.jet_tables import ROTATE_COLUMNS, StandardisedColumns, table_images, weight_column
from analysis.core.padding import compile_padding, pad_into
from analysis.train.inputs import LABEL, TRAIN_WEIGHT
from analysis.train.stream import ParquetBatchStream

__all__ = ["JetBatchStream", "JetRowLayout", "fill_jet_rows", "image_columns"]

# Bytes of one read block at most: a padded jet is a few kB, so a block of the MLP's
# 131k rows would be ~1 GB; reads (and the ring of blocks reused) stay at this size instead.
_READ_BYTES = 32 << 20


def image_columns(candidates: Sequence[str], *, rotate: bool, source: str) -> list[str]:
    """The list (and, rotating, flat) columns an image is made of (`analysis.core.jet_tables.table_images`)."""
    columns = ["cand_deta", "cand_dphi", weight_column(candidates, source=source)]
    if "cand_class" in candidates:
        columns.append("cand_class")
    return columns + (list(ROTATE_COLUMNS) if rotate else [])


@dataclass(frozen=True)
class JetRowLayout:
    """What a jet's fixed-width row holds, and how a batch of rows is taken apart.

    Attributes
    ----------
    n_constituents : N (0 for image rows)
    constituent_features : the F list columns, in the network's input order
    jet_features : the J flat (standardised) columns, in order (may be empty)
    channels : image channel names (`analysis.core.jet_images.DEFAULT_CHANNELS`); empty: no image
    """

    n_constituents: int
    constituent_features: tuple[str, ...]
    jet_features: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()

    @property
    def images(self) -> bool:
        return bool(self.channels)

    @property
    def n_pixels(self) -> int:
        return len(self.channels) * IMAGE_PIXELS * IMAGE_PIXELS

    @property
    def width(self) -> int:
        """Float32 values of a row before the targets, label and weight."""
        if self.images:
            return self.n_pixels + len(self.jet_features)
        return self.n_constituents * len(self.constituent_features) + 1 + len(self.jet_features)

    def unpack(self, x: Any) -> dict[str, Any]:
        """Views of a batch's rows (numpy array or torch tensor ``(B, >= width)``) by what they hold."""
        batch = x.shape[0]
        j = len(self.jet_features)
        if self.images:
            p = self.n_pixels
            return {"images": x[:, :p].reshape(batch, len(self.channels), IMAGE_PIXELS, IMAGE_PIXELS),
                    "jets": x[:, p:p + j]}
        n, f = self.n_constituents, len(self.constituent_features)
        counts = x[:, n * f]
        slots = (np.arange(n) if isinstance(x, np.ndarray) else _torch_arange(x, n))
        return {"constituents": x[:, :n * f].reshape(batch, n, f),
                "mask": slots[None, :] < counts[:, None],
                "jets": x[:, n * f + 1:n * f + 1 + j]}


def _torch_arange(x: Any, n: int) -> Any:
    import torch

    return torch.arange(n, device=x.device, dtype=x.dtype)


class JetBatchStream(ParquetBatchStream):
    """A `ParquetBatchStream` of jets: each row group's lists padded to N (or made images) when read.

    Parameters
    ----------
    files : the split's Parquet files
    layout : `JetRowLayout`
    stats : the prepared stats.json (images need the constituents in physical units)
    rotate_images : rotate each image so the leading subjet points up
    batch_size, shuffle_buffer, shuffle, seed, as_numpy, read_threads, targets :
        as `ParquetBatchStream`; ``shuffle_buffer`` counts jets.

    Yields
    ------
    (x, y, w) batches like `ParquetBatchStream`; ``layout.unpack(x)`` gives the constituents,
    mask, jet features or images. With K > 1 targets the first K - 1 follow the row's
    ``layout.width`` values (`analysis.train.stream.split_targets` with ``n_features=layout.width``).
    """

    def __init__(self, files: Sequence[str | Path], layout: JetRowLayout, *, stats: Mapping[str, Any],
                 rotate_images: bool = False, batch_size: int, shuffle_buffer: int, shuffle: bool = True,
                 seed: int = 0, as_numpy: bool = False, read_threads: int = 2,
                 targets: Sequence[str] = (LABEL,)):
        super().__init__(files, list(layout.jet_features), batch_size=batch_size, shuffle_buffer=shuffle_buffer,
                         shuffle=shuffle, seed=seed, as_numpy=as_numpy, read_threads=read_threads,
                         targets=targets)
        self.layout = layout
        self.rotate_images = rotate_images
        self._width = layout.width + len(self.targets) - 1
        self._columns = StandardisedColumns(stats, source="stats.json")
        source = str(self.files[0]) if self.files else "the split"
        if layout.images:
            present = pq.read_schema(self.files[0]).names if self.files else []
            self._lists = image_columns([c for c in present if c.startswith("cand_")], rotate=rotate_images,
                                        source=source)
        else:
            self._lists = list(layout.constituent_features)

    def before_workers(self) -> None:
        """Compile the padding kernel here: forked workers inherit it (`analysis.core.padding.compile_padding`)."""
        if not self.layout.images:
            compile_padding(len(self.layout.constituent_features))

    def _pieces(self, units: list[tuple[Path, int, int]], chunk: int, *, threads: bool):
        """Record batches of <= ``chunk`` jets (fewer if their padded rows would pass ``_READ_BYTES``)."""
        chunk = max(1, min(chunk, _READ_BYTES // (4 * (self._width + 2))))
        columns = list(dict.fromkeys([*self._lists, *self.layout.jet_features, *self.targets, TRAIN_WEIGHT]))
        open_file, handle = None, None
        for path, group, _rows in units:
            if path != open_file:
                handle, open_file = pq.ParquetFile(path, memory_map=True), path
            yield from handle.iter_batches(batch_size=chunk, row_groups=[group], columns=columns,
                                           use_threads=threads)

    def _read(self, units: list[tuple[Path, int, int]], chunk: int, *, threads: bool, reuse: int = 0,
              into: Any = None):
        """Blocks of <= ``chunk`` jets as fixed-width rows (module docstring), reusing a ring of ``reuse`` blocks."""
        chunk = max(1, min(chunk, _READ_BYTES // (4 * (self._width + 2))))
        ring = [np.empty((chunk, self._width + 2), dtype=np.float32) for _ in range(reuse)]
        for count, piece in enumerate(self._pieces(units, chunk, threads=threads)):
            rows = self._block_to_fill(piece.num_rows, ring, count, into)
            if rows is None:
                rows = np.empty((piece.num_rows, self._width + 2), dtype=np.float32)
            self._fill(rows, piece)
            yield rows

    def _buffer_reads(self, units, chunk: int, *, threads: bool, ahead: bool, buffer: Any):
        """The shuffle buffer's reads as `_JetsToPad`: each jet padded once, straight into its slot."""
        for piece in self._pieces(units, chunk, threads=threads):
            yield _JetsToPad(piece, self._fill)

    def _fill(self, rows: np.ndarray, piece: Any, at: np.ndarray | None = None) -> None:
        fill_jet_rows(rows, piece, self.layout, self._columns, rotate=self.rotate_images,
                      extra=[*self.targets, TRAIN_WEIGHT], at=at)


class _JetsToPad:
    """Jets as read (a record batch), padded only when written: into the shuffle buffer's slots.

    A padded jet is kilobytes: padding it into a block of its own and copying that into
    the buffer would write it twice (`RowGroupShuffleBuffer.put` and ``exchange`` take
    rows that write themselves).
    """

    __slots__ = ("piece", "fill")

    def __init__(self, piece: Any, fill: Any):
        self.piece, self.fill = piece, fill

    def __len__(self) -> int:
        return self.piece.num_rows

    def __getitem__(self, rows: slice) -> _JetsToPad:
        start, stop, _ = rows.indices(self.piece.num_rows)
        return _JetsToPad(self.piece.slice(start, max(0, stop - start)), self.fill)

    def write_rows(self, target: np.ndarray, at: np.ndarray) -> None:
        self.fill(target, self.piece, at)


def fill_jet_rows(rows: np.ndarray, piece: Any, layout: JetRowLayout, columns: StandardisedColumns, *,
                  rotate: bool = False, extra: Sequence[str] = (), at: np.ndarray | None = None) -> None:
    """Lay the jets of a prepared table out as ``layout`` rows (module docstring), the loader's and predict's way.

    Parameters
    ----------
    rows : float32 ``(jets, >= layout.width + len(extra))``, written in place
    piece : pyarrow Table or RecordBatch of prepared (standardised) columns
    columns : the prepared statistics (images are made in physical units)
    rotate : images rotated so the leading subjet points up
    extra : flat columns written after the layout's values (targets, train_weight)
    at : the row of ``rows`` each jet goes to (a shuffle buffer's free slots); default jet i to row i
    """
    where = slice(None) if at is None else at
    if layout.images:
        table = piece if isinstance(piece, pa.Table) else pa.Table.from_batches([piece])
        channels = {c: DEFAULT_CHANNELS[c] for c in layout.channels}
        images = table_images(columns, table, channels=channels, rotate=rotate)
        rows[where, :layout.n_pixels] = images.reshape(len(images), -1)
        start = layout.n_pixels
    else:
        n, f = layout.n_constituents, len(layout.constituent_features)
        lists = {name: piece.column(name) for name in layout.constituent_features}
        # In place, into the (reused) row block or the buffer's slots: no (rows, N, F) array per read.
        constituents = rows[:, :n * f].reshape(len(rows), n, f)
        if not np.may_share_memory(constituents, rows):
            raise AssertionError("fill_jet_rows: the constituents' view of the rows is a copy")
        rows[where, n * f] = pad_into(lists, layout.constituent_features, constituents, at=at)
        start = n * f + 1
    for k, name in enumerate([*layout.jet_features, *extra]):
        rows[where, start + k] = piece.column(name).to_numpy(zero_copy_only=False)
