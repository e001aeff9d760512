"""Skim stage: reading the fileset and checking every input file before any chunk is scheduled.

A bad file (missing, not ROOT, truncated, without an ``Events`` tree, empty, lacking a
branch) should cost the user one readable line, not a traceback from a worker half-way
through a run. `check_file` opens each file once, reads only its header and branch list
(and ``genWeight`` when the dataset's ``sumw`` must be computed), and raises
`InputFileError(path, cause)`. The results also fill coffea's metadata cache, so the
coffea Runner does not open the files a second time.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uproot

from analysis.config import Config
from analysis.core.names import dataset_folder
from analysis.core.net import is_remote, is_transient, require_backend
from analysis.errors import InputFileError, StageInputError
from analysis.skim.fileset import load_fileset
from analysis.skim.open_files import OpenFiles

__all__ = ["DatasetInfo", "InputFile", "check_file", "load_fileset", "resolve_datasets"]

_ROOT_MAGIC = b"root"
# ROOT writes 64-bit header offsets from this file-format version on.
_ROOT_BIG_FILE_VERSION = 1_000_000


@dataclass
class InputFile:
    """One input file after `check_file`: where it is and what it holds."""

    dataset: str
    path: str
    treename: str
    entries: int = 0
    uuid: str = ""
    uuid_bytes: bytes = b""
    profile: str = ""
    sum_genweight: float = 0.0  # sum of genWeight (entries when absent); 0 if not computed
    error: str | None = None  # the cause, for a file that failed the checks


@dataclass
class DatasetInfo:
    """A dataset of the fileset with its resolved physics metadata."""

    name: str
    process: str
    label: int
    is_mc: bool
    xsec_pb: float | None
    sumw: float | None
    sumw_source: str  # "metadata" or "computed"
    files: list[InputFile] = field(default_factory=list)

    @property
    def folder(self) -> str:
        """The dataset's folder under the skim folder (`analysis.core.names.dataset_folder`)."""
        return dataset_folder(self.name)

    def metadata(self) -> dict[str, Any]:
        """What the processor reads from ``events.metadata``."""
        return {"process": self.process, "label": self.label, "is_mc": self.is_mc,
                "xsec_pb": self.xsec_pb, "sumw": self.sumw}


def resolve_datasets(fileset: dict[str, Any], config: Config) -> dict[str, DatasetInfo]:
    """Dataset metadata from the fileset, falling back on ``config.samples``.

    Raises
    ------
    StageInputError
        A simulated dataset without a cross section anywhere.
    """
    out = {}
    for name, entry in fileset.items():
        meta = entry["metadata"]
        sample = config.samples.get(name)
        label = meta.get("label", sample.label if sample else None)
        if label is None:
            raise StageInputError(f"dataset {name!r}: no 'label' in the fileset metadata and no "
                                  f"sample of that name in the config; add one of them")
        is_mc = bool(meta.get("is_mc", label != -1))
        xsec = meta.get("xsec_pb", sample.xsec_pb if sample else None)
        if is_mc and xsec is None:
            raise StageInputError(f"dataset {name!r}: simulated but no 'xsec_pb' in the fileset "
                                  f"metadata nor in config samples; add the cross section in pb")
        process = meta.get("process", sample.process if sample else name)
        sumw = meta.get("sumw")
        out[name] = DatasetInfo(name=name, process=str(process), label=int(label), is_mc=is_mc,
                                xsec_pb=None if xsec is None else float(xsec),
                                sumw=None if sumw is None else float(sumw),
                                sumw_source="metadata" if sumw is not None else "computed",
                                files=[InputFile(dataset=name, path=p, treename=t)
                                       for p, t in entry["files"].items()])
    return out


def _check_header(path: str) -> None:
    """Existence, size, magic bytes and truncation, from the first bytes of a local file."""
    if not os.path.exists(path):
        raise InputFileError(path, "no such file")
    size = os.path.getsize(path)
    if size == 0:
        raise InputFileError(path, "empty file (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != _ROOT_MAGIC:
        raise InputFileError(path, f"not a ROOT file (starts with {head[:4]!r}, expected b'root')")
    if len(head) >= 16:
        version = int.from_bytes(head[4:8], "big")
        end = (int.from_bytes(head[12:20], "big") if version >= _ROOT_BIG_FILE_VERSION
               else int.from_bytes(head[12:16], "big"))
        if end > size:
            raise InputFileError(path, f"truncated ROOT file: its header says {end:,} bytes, "
                                       f"the file has {size:,}")


def check_file(item: InputFile, *, processor: Any, is_mc: bool, need_sumw: bool,
               timeout: int | None = None, open_files: OpenFiles | None = None) -> InputFile:
    """Open one input file and check it can be skimmed; fill entries, uuid, profile, sumw.

    Parameters
    ----------
    item : InputFile
        Dataset, path and tree name.
    processor : processors.base.SkimProcessor
        Checks the branches it needs (``check_branches``: the di-tau processor finds the
        input profile and the trigger branches of the selection).
    is_mc : bool
        Whether the dataset is simulation (a processor may need other branches for data).
    need_sumw : bool
        Read ``genWeight`` to sum it (the dataset's metadata lacks ``sumw``).
    timeout : int or None
        Seconds a request to a remote file (URL) may take; None keeps uproot's default.
    open_files : OpenFiles or None
        Keep a local file open there, its TTree cached for the chunks of this process.

    Raises
    ------
    InputFileError
        ``<path>: <cause>`` for a missing, non-ROOT, truncated or empty file, a file without
        the tree, or one lacking a branch (named). A network failure reading a URL is
        raised as it is, for `analysis.skim.remote.call_with_retries` to try again.
    """
    path = item.path
    remote = is_remote(path)
    if remote:
        require_backend(path)
    else:
        _check_header(path)
    kept = False
    try:
        if open_files is not None and not remote:
            file, kept = open_files.open(path)
        else:
            file = uproot.open(path, **({"timeout": timeout} if remote and timeout else {}))
    except Exception as err:  # noqa: BLE001 - uproot raises many kinds; all mean "cannot open"
        if remote and is_transient(err):
            raise
        raise InputFileError(path, f"cannot open as a ROOT file ({type(err).__name__}: "
                                   f"{' '.join(str(err).split())})") from None
    with contextlib.nullcontext(file) if kept else file:  # a kept file is closed by open_files
        classes = {k.split(";")[0]: c for k, c in file.classnames(recursive=False).items()}
        if item.treename not in classes:
            held = ", ".join(f"{k} ({c})" for k, c in sorted(classes.items())) or "nothing"
            raise InputFileError(path, f"no {item.treename!r} tree (the file holds: {held})")
        if classes[item.treename] != "TTree":
            raise InputFileError(path, f"{item.treename!r} is a {classes[item.treename]}, not a TTree "
                                       f"(the skim reads NanoAOD TTrees)")
        # The TTree's metadata is read here, not at open: a damaged TKey or compressed record
        # fails deep in uproot (zlib.error, DeserializationError...), a traceback otherwise.
        try:
            tree = file[item.treename]
        except Exception as err:  # noqa: BLE001 - uproot raises many kinds; all mean "unreadable"
            if remote and is_transient(err):
                raise
            raise InputFileError(path, f"cannot read the {item.treename!r} tree ({type(err).__name__}: "
                                       f"{' '.join(str(err).split())})") from None
        if kept:
            open_files.count_branches(tree)
        if tree.num_entries == 0:
            raise InputFileError(path, f"empty file: the {item.treename!r} tree has 0 entries")
        branches = set(tree.keys(recursive=False))
        try:
            profile = processor.check_branches(branches, is_mc=is_mc)
        except ValueError as err:  # ProfileError too: one line naming what the file lacks
            raise InputFileError(path, str(err)) from None
        item.entries = int(tree.num_entries)
        item.uuid_bytes = file.file.fUUID
        item.uuid = str(uuid.UUID(bytes=item.uuid_bytes))
        item.profile = profile or ""
        if need_sumw:
            if "genWeight" in branches:
                try:
                    genweight = tree["genWeight"].array(library="np")
                except Exception as err:  # noqa: BLE001
                    if remote and is_transient(err):
                        raise
                    raise InputFileError(path, f"cannot read genWeight ({type(err).__name__}: "
                                               f"{' '.join(str(err).split())})") from None
                item.sum_genweight = math.fsum(np.asarray(genweight, dtype=np.float64))
            else:
                item.sum_genweight = float(item.entries)
    return item
