"""Export stage: `hepprep export-hdf5 PREPDIR --out DIR`, a jet-level prepared folder as fixed-size HDF5 arrays.

Tagger tools train on fixed-size arrays: ATLAS's salt (and umami's training-dataset-dumper
files it reads) on a structured ``jets`` dataset of shape (rows,) beside structured
constituent datasets of shape (rows, N) whose ``valid`` field marks the real entries;
weaver-core reads one dataset per branch from the file's root (``_read_hdf5``: PyTables,
``getattr(f.root, name)[:]``), so the same arrays are written per column for it
(``--layout weaver``, the masks as float ``cand_mask`` / ``sv_mask``). One ``DIR/<split>.h5``
per split. The lists are padded and truncated by `analysis.core.padding` (the first N by
decreasing pt, the one padding of hepprep); the text columns (``dataset``, ``process``)
become int32 codes whose names are the ``codes`` attribute, the same in every split's file.

The folder is built aside and renamed into place whole (`analysis.core.io.atomic_dir`):
an error leaves no file half-written, and an existing ``DIR`` that is no export of this
kind is never replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.core.io import atomic_dir, read_json, write_json_atomic
from analysis.core.padding import padded_columns
from analysis.core.progress import progress_bar, stage_console
from analysis.core.provenance import hepprep_version
from analysis.errors import ConfigError
from analysis.export.h5_rows import append_rows, create_rows, h5py_module, mark
from analysis.export.jet_folder import JetFolder, read_jet_folder, text_codes

__all__ = ["KIND", "LAYOUTS", "RECORD", "column_meanings", "run_export_hdf5", "split_arrays"]

KIND = "jets-hdf5"  # the mark of these files and of export.json
LAYOUTS = ("salt", "weaver")
RECORD = "export.json"  # beside the files: what was exported, and the mark of an export folder
GROUPS = {"consts": "cand", "vertices": "sv"}  # structured dataset -> the prefix of its columns


def split_arrays(folder: JetFolder, table: Any, *, codes: dict[str, list[str]], constituents: int,
                 vertices: int, raw: bool) -> dict[str, dict[str, np.ndarray]]:
    """One row group as ``{"jets": {column: (rows,)}, "consts" / "vertices": {column: (rows, N)}, "valid"}``."""
    jets = {name: text_codes(table, name, codes[name]) if name in codes else folder.flat_values(table, name, raw=raw)
            for name in folder.flat}
    out = {"jets": jets}
    for group, columns, n in (("consts", folder.candidates, constituents), ("vertices", folder.vertices, vertices)):
        if columns:
            lists = {c: folder.list_values(table, c, raw=raw) for c in columns}
            values, valid = padded_columns(lists, columns, n)
            out[group] = {**{c: values[:, :, k] for k, c in enumerate(columns)}, "valid": valid}
    return out


def _structured(fields: dict[str, np.ndarray]) -> np.ndarray:
    first = next(iter(fields.values()))
    out = np.empty(first.shape, dtype=np.dtype([(name, a.dtype) for name, a in fields.items()]))
    for name, array in fields.items():
        out[name] = array
    return out


def _datasets(groups: dict[str, dict[str, np.ndarray]], layout: str) -> dict[str, np.ndarray]:
    """The datasets of one row group in ``layout``: structured groups (salt) or one per column (weaver)."""
    if layout == "salt":
        return {group: _structured(fields) for group, fields in groups.items()}
    out: dict[str, np.ndarray] = {}
    for group, fields in groups.items():
        for name, array in fields.items():
            if name == "valid":  # weaver multiplies its inputs by a float mask
                out[f"{GROUPS[group]}_mask"] = array.astype(np.float32)
            else:
                out[name] = array
    return out


def column_meanings(folder: JetFolder, *, raw: bool, codes: dict[str, list[str]]) -> dict[str, str]:
    """What each exported column holds (the ``columns`` attribute)."""
    target = folder.stats.get("target", {})
    out: dict[str, str] = {}
    for name in [*folder.flat, *folder.candidates, *folder.vertices]:
        if name in codes:
            out[name] = f"int32 code: the position of the value in the attribute codes[{name!r}]"
        elif name == "class":
            out[name] = f"the class, an index into {target.get('classes')} (stats.json target.classes); -1 real data"
        elif name == "train_weight":
            out[name] = "the training weight of prepare (classes balanced, mean 1 in the split)"
        elif name in folder.standardised:
            section = "constituents" if name in folder.candidates + folder.vertices else "features"
            out[name] = ("in physical units: prepare's standardisation undone with stats.json " if raw
                         else "standardised by prepare: (raw - mean) / std with stats.json ") + section
        else:
            out[name] = "as skimmed"
    out["valid"] = ("True for a real list entry (the first N by decreasing pt, or for vertices dxy significance), "
                    "False for padding, whose fields are 0")
    return out


def _check_out(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file; give the folder to write the <split>.h5 files into")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        record = out_dir / RECORD
        ours = record.is_file() and read_json(record, "an HDF5 export record").get("stage") == KIND
        if not ours:
            raise ConfigError(f"--out {out_dir}: exists and is not a folder of `hepprep export-hdf5` (no {RECORD}); "
                              "remove it or choose another folder")


def _write_split(h5: Any, folder: JetFolder, split: str, settings: dict[str, Any], codes: dict[str, list[str]],
                 advance: Any) -> int:
    columns = [*folder.flat, *folder.candidates, *folder.vertices]
    arguments = dict(codes=codes, constituents=settings["constituents"], vertices=settings["vertices"],
                     raw=settings["unstandardised"])
    empty = split_arrays(folder, folder.schema.empty_table().select(columns), **arguments)
    for name, like in _datasets(empty, settings["layout"]).items():  # every dataset, even for no rows
        create_rows(h5, name, like)
    rows = 0
    for table in folder.batches(split, columns):
        for name, array in _datasets(split_arrays(folder, table, **arguments), settings["layout"]).items():
            append_rows(h5, name, array)
        rows += table.num_rows
        advance(table.num_rows)
    return rows


def run_export_hdf5(prep_dir: str | Path, out_dir: str | Path, *, splits: Sequence[str] = ("train", "val", "test"),
                    constituents: int = 100, vertices: int = 5, unstandardised: bool = False,
                    layout: str = "salt", progress: bool = True) -> list[Path]:
    """Write ``out_dir/<split>.h5`` for each of ``splits`` of a jet-level prepared folder.

    Parameters
    ----------
    prep_dir : the --out folder of `hepprep prepare` on a jet-level skim
    out_dir : the folder to write (replaced whole if it is an earlier export of this kind)
    splits : the splits to export, each a file
    constituents, vertices : N and M, the entries kept per jet (the first by decreasing pt
        or dxy significance); shorter lists are padded with 0 and ``valid`` False
    unstandardised : undo prepare's standardisation (stats.json) of the standardised columns
    layout : ``"salt"`` (structured ``jets``, ``consts``, ``vertices``) or ``"weaver"`` (a dataset per column)

    Returns
    -------
    The files written, one per split, in the order of ``splits``.

    Raises
    ------
    StageInputError
        ``prep_dir`` is no prepared folder, or an event-level one (no list columns).
    ConfigError
        An unknown split or layout, N or M below 1, or an ``out_dir`` that is not an export folder.
    """
    for option, value in (("--constituents", constituents), ("--vertices", vertices)):
        if value < 1:
            raise ConfigError(f"{option} {value}: must be at least 1 (entries kept per jet)")
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout}: unknown; choose from {', '.join(LAYOUTS)}")
    h5py = h5py_module()
    folder = read_jet_folder(prep_dir)
    splits = folder.check_splits(list(dict.fromkeys(splits)))
    out_dir = Path(out_dir)
    _check_out(out_dir)
    codes = {name: folder.names(splits, name) for name in folder.text}
    settings = {"layout": layout, "constituents": constituents, "vertices": vertices,
                "unstandardised": unstandardised}
    attributes = {**settings, "hepprep_version": hepprep_version(), "prepared_dir": str(folder.root.resolve()),
                  "prepared_fingerprint": folder.listing.fingerprint, "codes": codes,
                  "columns": column_meanings(folder, raw=unstandardised, codes=codes),
                  "left_out": folder.other_lists, "stats": folder.stats}
    written: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp, progress_bar(quiet=not progress) as bar:
        for split in splits:
            task = bar.add_task(f"export-hdf5 {split}", total=folder.rows(split))
            with h5py.File(tmp / f"{split}.h5", "w") as h5:
                written[split] = _write_split(h5, folder, split, settings, codes,
                                              lambda n, task=task: bar.advance(task, n))
                mark(h5, KIND, {**attributes, "split": split})
        write_json_atomic(tmp / RECORD, {"stage": KIND, **{k: v for k, v in attributes.items() if k != "stats"},
                                         "files": {f"{s}.h5": {"split": s, "rows": n} for s, n in written.items()}})
    stage_console(quiet=not progress).print(
        f"export-hdf5: {sum(written.values())} jets in {len(written)} files ({layout} layout) in {out_dir}")
    return [out_dir / f"{split}.h5" for split in splits]
