"""Prepare stage on any flat table (Parquet or CSV), e.g. the HiggsML challenge CSV.

The split, weights, statistics and shuffle do not care where rows come from. This module
streams a table file in bounded chunks into the column layout `analysis.prepare.runner` reads
(``label`` int8 1/0/-1, ``weight`` float64, identity columns, float feature columns with
the "undefined" sentinel, -999 in HiggsML, turned into NaN), then runs the same stage.
Missing values are left out of the statistics and stay NaN after standardisation, which
XGBoost treats as missing.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from analysis.config import Config, PrepareTableConfig
from analysis.core.io import remove_stale_temp, temp_name
from analysis.errors import StageInputError
from analysis.prepare.outputs import check_out_dir
from analysis.prepare.runner import PrepareInputs, prepare_inputs

__all__ = ["normalise_table", "run_prepare_table", "table_files"]

ROW_INDEX = "row_index"  # identity added when a table has no id column: file + row number


def table_files(path: str | Path, *, fmt: str) -> list[Path]:
    """The table file, or every ``*.csv`` / ``*.parquet`` file of a folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.glob(f"*.{fmt}") if p.is_file())
        if files:
            return files
        raise StageInputError(f"{path}: no *.{fmt} files; pass a table file or set prepare.table.format")
    raise StageInputError(f"{path}: no such table file or folder")


def _batches(path: Path, spec: PrepareTableConfig) -> Iterator[pa.RecordBatch]:
    """Bounded batches of a table file, with numeric columns read as float64 (CSV)."""
    try:
        if spec.format == "parquet":
            yield from pq.ParquetFile(path).iter_batches(batch_size=spec.chunk_rows)
            return
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), [])
            first_row = handle.readline()
        if not header:
            raise StageInputError(f"{path}: empty CSV file (no header line)")
        # The CSV reader cuts blocks by bytes: about chunk_rows rows of the first row's length.
        block = min(max(spec.chunk_rows * max(len(first_row), 1), 1 << 20), 1 << 28)
        # Type inference per block could read "1" as int and "1.5" later as float: fix the
        # types up front, text for the label, float64 for everything else but the ids.
        types = {name: pa.float64() for name in header if name not in spec.id_columns}
        types[spec.label_column] = pa.string()
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block),
                                convert_options=pacsv.ConvertOptions(column_types=types))
        yield from reader
    except pa.ArrowInvalid as err:
        raise StageInputError(f"{path}: cannot read as {spec.format} ({err})") from None


def _feature_names(schema: pa.Schema, spec: PrepareTableConfig) -> list[str]:
    if spec.feature_columns:
        missing = [c for c in spec.feature_columns if c not in schema.names]
        if missing:
            raise StageInputError(f"feature column(s) {', '.join(missing)} not in the table; it has "
                                  f"{', '.join(schema.names)}")
        return list(spec.feature_columns)
    skip = {spec.label_column, spec.weight_column, *spec.id_columns}
    return [f.name for f in schema if f.name not in skip
            and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]


def normalise_table(batch: pa.RecordBatch | pa.Table, spec: PrepareTableConfig, *, dataset: str,
                    features: Sequence[str], first_row: int, source: str = "table") -> pa.Table:
    """One chunk in the layout prepare reads.

    Parameters
    ----------
    batch : the raw rows
    spec : column names and label values (``prepare.table``)
    dataset : str, written as the ``dataset`` column (the file's stem)
    features : feature columns, cast to float64 with ``spec.missing_value`` -> NaN
    first_row : int, row number of the chunk's first row in its file (for ``row_index``)
    source : str, the file, for error messages

    Returns
    -------
    pyarrow.Table : ``dataset``, ``label`` (int8), ``weight`` (float64), identity and feature
    columns, then the table's other columns unchanged.
    """
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    for column in [spec.label_column, *spec.id_columns] + ([spec.weight_column] if spec.weight_column else []):
        if column not in table.column_names:
            raise StageInputError(f"{source}: column {column!r} not found; the table has "
                                  f"{', '.join(table.column_names)} (set prepare.table)")
    raw_label = pc.cast(table.column(spec.label_column), pa.string()).to_numpy(zero_copy_only=False)
    label = np.full(len(raw_label), 99, dtype=np.int8)
    for values, code in ((spec.signal_values, 1), (spec.background_values, 0), (spec.data_values, -1)):
        label[np.isin(raw_label, [str(v) for v in values])] = code
    unknown = sorted(set(raw_label[label == 99].tolist()), key=str)
    if unknown:
        raise StageInputError(f"{source}: label values {unknown[:5]} in column {spec.label_column!r} are "
                              f"neither signal {spec.signal_values}, background {spec.background_values} "
                              f"nor data {spec.data_values} (set prepare.table.signal_values ...)")
    weight = (pc.cast(table.column(spec.weight_column), pa.float64()).to_numpy(zero_copy_only=False)
              if spec.weight_column else np.ones(table.num_rows))
    columns: dict[str, Any] = {
        "dataset": pa.array(np.full(table.num_rows, dataset), pa.string()),
        "label": pa.array(label),
        "weight": pa.array(weight),
    }
    if not spec.id_columns:
        columns[ROW_INDEX] = pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64))
    for name in spec.id_columns:
        columns[name] = table.column(name)
    for name in features:
        x = pc.cast(table.column(name), pa.float64())
        x = pc.fill_null(x, np.nan).to_numpy(zero_copy_only=False).copy() if x.null_count else x.to_numpy().copy()
        if spec.missing_value is not None:
            x[x == spec.missing_value] = np.nan
        columns[name] = pa.array(x)
    used = {spec.label_column, spec.weight_column, *columns}
    for name in table.column_names:
        if name not in used:
            columns[name] = table.column(name)
    return pa.table(columns)


def run_prepare_table(table: str | Path, out_dir: str | Path, config: Config, *,
                      split: Sequence[float] | None = None, seed: int | None = None,
                      scheduler: str | None = None, progress: bool = True) -> dict[str, Any]:
    """`run_prepare` for a flat table file (or a folder of them) described by ``config.prepare.table``.

    The table is first converted, ``chunk_rows`` rows at a time, into Parquet in a hidden
    folder beside ``out_dir`` (removed afterwards); then split, weights, statistics and
    shuffle run exactly as for a skim. Returns the manifest.
    """
    spec = config.prepare.table
    sources = table_files(table, fmt=spec.format)
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The converted copies live beside --out under a temporary name of this process (a
    # killed run's copies are removed by the next run, as prepare's own temporaries).
    remove_stale_temp(out_dir.parent, target=f"{out_dir.name}.ingest")
    ingest = temp_name(out_dir.with_name(f"{out_dir.name}.ingest"))
    ingest.mkdir()
    try:
        files, features = [], None
        for number, source in enumerate(sources):
            target = ingest / source.stem / f"part-{number:05d}.parquet"
            target.parent.mkdir(exist_ok=True)
            writer, first_row = None, 0
            for batch in _batches(source, spec):
                if features is None:
                    features = _feature_names(batch.schema, spec)
                chunk = normalise_table(batch, spec, dataset=source.stem, features=features,
                                        first_row=first_row, source=str(source))
                first_row += chunk.num_rows
                if writer is None:
                    writer = pq.ParquetWriter(target, chunk.schema, compression="lz4")
                writer.write_table(chunk)
            if writer is None:
                raise StageInputError(f"{source}: the table has no rows")
            writer.close()
            files.append(target)
        if not features:
            raise StageInputError(f"{sources[0]}: no numeric feature columns; set prepare.table.feature_columns")
        ids = tuple(spec.id_columns) or ("dataset", ROW_INDEX)
        inputs = PrepareInputs(files=tuple(files), id_columns=ids, features=tuple(features),
                               source=str(Path(table).resolve()), sources=tuple(sources))
        return prepare_inputs(inputs, out_dir, config, split=split, seed=seed, scheduler=scheduler,
                              progress=progress)
    finally:
        shutil.rmtree(ingest, ignore_errors=True)
