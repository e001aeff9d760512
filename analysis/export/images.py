"""Export stage: `hepprep export-images PREPDIR --out FILE`, jet images as arrays for those who want files.

The images are made from the prepared constituent lists by `analysis.core.jet_images.jet_images`
(the one image function, which the loader and the plots call too), in physical units: the
coordinates and the weight are taken back out of prepare's standardisation with stats.json
when prepare standardised them. The weight is ``cand_ptrel`` (normalised images), else
``cand_pt``, else exp(``cand_logpt``). ``FILE.h5`` is written a row group at a time
(chunked, any size); ``FILE.npz`` is one numpy archive, which holds the whole array in memory
by nature, so it is refused above `NPZ_MAX_BYTES` (``--max-jets``, or a ``.h5`` name).
Either is written to a temporary name and renamed into place (`analysis.core.io`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from analysis.core.io import atomic_file, atomic_path
from analysis.core.jet_images import DEFAULT_CHANNELS, IMAGE_PIXELS, PIXEL_SIZE
from analysis.core.jet_tables import ROTATE_COLUMNS, WEIGHT_COLUMNS, table_images, weight_column
from analysis.core.progress import progress_bar, stage_console
from analysis.core.provenance import hepprep_version
from analysis.errors import ConfigError, StageInputError
from analysis.export.h5_rows import append_rows, create_rows, h5py_module, is_ours, mark, refuse_foreign_file
from analysis.export.jet_folder import JetFolder, read_jet_folder, text_codes

__all__ = ["KIND", "NPZ_MAX_BYTES", "WEIGHT_COLUMNS", "image_arrays", "run_export_images"]

KIND = "jet-images"
NPZ_MAX_BYTES = 2 << 30  # images held in memory for one .npz; beyond it, write .h5 (row group by row group)
IDENTITY = ("run", "luminosityBlock", "event", "jet_index")
SUFFIXES = (".npz", ".h5", ".hdf5")


def _weight_column(folder: JetFolder) -> str:
    return weight_column(folder.candidates, source=str(folder.root))


def _label_column(folder: JetFolder) -> str:
    return "class" if "class" in folder.flat else "label"


def image_arrays(folder: JetFolder, table: pa.Table, *, channels: dict[str, tuple[int, ...]], rotate: bool,
                 codes: list[str]) -> dict[str, np.ndarray]:
    """One row group's images and their per-jet columns (``images`` float32 (rows, C, 40, 40))."""
    out = {"images": table_images(folder.columns, table, channels=channels, rotate=rotate),
           "labels": folder.flat_values(table, _label_column(folder), raw=False).astype(np.int32),
           "weights": folder.flat_values(table, "train_weight", raw=False).astype(np.float32),
           "jet_pt": folder.flat_values(table, "jet_pt", raw=True).astype(np.float32),
           "jet_eta": folder.flat_values(table, "jet_eta", raw=True).astype(np.float32),
           "dataset": text_codes(table, "dataset", codes)}
    out.update({c: folder.flat_values(table, c, raw=False) for c in IDENTITY if c in folder.flat})
    return out


def _channels(names: Sequence[str] | None, folder: JetFolder) -> dict[str, tuple[int, ...]]:
    chosen = list(names) if names else list(DEFAULT_CHANNELS)
    unknown = [c for c in chosen if c not in DEFAULT_CHANNELS]
    if unknown or not chosen:
        raise ConfigError(f"--channels {','.join(unknown) or '(none)'}: unknown channel; choose from "
                          f"{', '.join(DEFAULT_CHANNELS)}")
    if "cand_class" not in folder.candidates and chosen != ["all"]:
        raise StageInputError(f"{folder.root}: no cand_class column, so only the channel 'all' can be made "
                              "(--channels all)")
    return {c: DEFAULT_CHANNELS[c] for c in dict.fromkeys(chosen)}


def _check_inputs(folder: JetFolder, rotate: bool) -> None:
    needed = ["cand_deta", "cand_dphi", "train_weight", "jet_pt", "jet_eta", "dataset", _label_column(folder)]
    needed += list(ROTATE_COLUMNS) if rotate else []
    have = set(folder.candidates) | set(folder.flat)
    missing = [c for c in needed if c not in have]
    if missing:
        raise StageInputError(f"{folder.root}: no column {', '.join(missing)}, which the images need"
                              + (" (--rotate: an AK8 skim's subjet direction)" if rotate else ""))
    _weight_column(folder)


def _check_out(out_file: Path) -> None:
    if out_file.suffix not in SUFFIXES:
        raise ConfigError(f"--out {out_file}: the file name must end in .npz or .h5")
    ours = False
    if out_file.is_file():
        if out_file.suffix == ".npz":
            try:
                with np.load(out_file) as archive:
                    ours = "hepprep_export" in archive.files and str(archive["hepprep_export"]) == KIND
            except (OSError, ValueError):
                ours = False
        else:
            ours = is_ours(out_file, KIND)
    refuse_foreign_file(out_file, "--out", ours)


def run_export_images(prep_dir: str | Path, out_file: str | Path, *, split: str = "test",
                      channels: Sequence[str] | None = None, rotate: bool = False, max_jets: int | None = None,
                      progress: bool = True, npz_max_bytes: int = NPZ_MAX_BYTES) -> Path:
    """Write the jet images of one split of a jet-level prepared folder to ``out_file`` (.npz or .h5).

    Parameters
    ----------
    prep_dir : the --out folder of `hepprep prepare` on a jet-level skim
    out_file : ``*.npz`` (numpy, in memory) or ``*.h5`` (HDF5, chunked)
    split : the split whose jets are imaged, in file order
    channels : channel names of `DEFAULT_CHANNELS` (default: all of them, in that order)
    rotate : turn each jet so that its leading subjet points up (AK8 skims)
    max_jets : at most this many jets, the first of the split
    npz_max_bytes : the largest image array a ``.npz`` is written with

    Returns
    -------
    ``out_file``: ``images`` float32 (jets, C, 40, 40), ``labels`` int32 (the class), ``weights``
    (train_weight), ``jet_pt``, ``jet_eta`` (physical units), identity (``dataset`` code,
    ``run``, ``luminosityBlock``, ``event``, ``jet_index``), and the record (channels, codes).
    """
    out_file = Path(out_file)
    _check_out(out_file)
    if max_jets is not None and max_jets < 1:
        raise ConfigError(f"--max-jets {max_jets}: must be at least 1")
    folder = read_jet_folder(prep_dir)
    (split,) = folder.check_splits([split], option="--split")
    chosen = _channels(channels, folder)
    _check_inputs(folder, rotate)
    jets = min(folder.rows(split), max_jets) if max_jets else folder.rows(split)
    size = jets * len(chosen) * IMAGE_PIXELS * IMAGE_PIXELS * 4
    if out_file.suffix == ".npz" and size > npz_max_bytes:
        raise ConfigError(f"--out {out_file}: {jets} jets of {len(chosen)} channels are {size / 2**30:.2f} GiB "
                          f"of images, held in memory for a .npz (at most {npz_max_bytes / 2**30:.2f} GiB): "
                          "give --max-jets, or a .h5 name (written a row group at a time)")
    h5py = h5py_module() if out_file.suffix != ".npz" else None
    codes = folder.names([split], "dataset")
    record = {"split": split, "channels": {c: list(v) for c, v in chosen.items()}, "rotated": rotate,
              "weight": _weight_column(folder), "pixels": IMAGE_PIXELS, "pixel_size": PIXEL_SIZE,
              "axes": "images[jet, channel, row (delta phi), column (delta eta)]", "codes": {"dataset": codes},
              "classes": folder.stats.get("target", {}).get("classes"), "hepprep_version": hepprep_version(),
              "prepared_dir": str(folder.root.resolve()), "prepared_fingerprint": folder.listing.fingerprint}
    columns = list(dict.fromkeys([*folder.candidates, *folder.flat]))
    arguments = dict(channels=chosen, rotate=rotate, codes=codes)
    empty = image_arrays(folder, folder.schema.empty_table().select(columns), **arguments)
    with progress_bar(quiet=not progress) as bar:
        task = bar.add_task(f"export-images {split}", total=jets)
        parts = _row_groups(folder, split, columns, jets, arguments, lambda n: bar.advance(task, n))
        if h5py is None:  # the whole archive in memory (checked above), written in one go
            batches = [empty, *parts]
            arrays = {name: np.concatenate([b[name] for b in batches]) for name in empty}
            with atomic_file(out_file, "wb") as handle:
                np.savez(handle, **arrays, hepprep_export=np.array(KIND), record=np.array(json.dumps(record)))
        else:
            with atomic_path(out_file) as tmp, h5py.File(tmp, "w") as h5:
                for name, like in empty.items():  # every dataset, even for no jets
                    create_rows(h5, name, like)
                for arrays in parts:
                    for name, array in arrays.items():
                        append_rows(h5, name, array)
                mark(h5, KIND, record)
    stage_console(quiet=not progress).print(f"export-images: {jets} jets x {len(chosen)} channels in {out_file}")
    return out_file


def _row_groups(folder: JetFolder, split: str, columns: list[str], jets: int, arguments: dict[str, Any],
                advance: Any) -> Iterator[dict[str, np.ndarray]]:
    """The image arrays of the split's first ``jets`` jets, one row group at a time."""
    done = 0
    for table in folder.batches(split, columns):
        table = table.slice(0, jets - done)
        yield image_arrays(folder, table, **arguments)
        done += table.num_rows
        advance(table.num_rows)
        if done >= jets:
            return
