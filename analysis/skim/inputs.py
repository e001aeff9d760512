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
from analysis.core.settings import parse_weight_product
from analysis.errors import InputFileError, StageInputError
from analysis.skim.fileset import load_fileset
from analysis.skim.open_files import OpenFiles

__all__ = ["SUMW_SOURCES", "DatasetInfo", "InputFile", "check_file", "dataset_sumw", "load_fileset",
           "resolve_datasets"]

_ROOT_MAGIC = b"root"
# Where a file's sum of generator weights is read, in order of preference: CMS NanoAOD's
# Runs tree counts every event before any filter (genEventSumw_ in NanoAOD before v6);
# without it, the events of the file itself (their number when there is no genWeight).
_RUNS_SUMW = ("genEventSumw", "genEventSumw_")
# NanoAOD events as a TTree, or as an RNTuple (where CMS is heading): same branch names.
_EVENT_CLASSES = ("TTree", "ROOT::RNTuple")
SUMW_SOURCES = ("Runs.genEventSumw", "Runs.genEventSumw_", "Events.genWeight", "Events.count")
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
    sum_genweight: float = 0.0  # the file's sum of generator weights; 0 if not computed
    sumw_from: str = ""  # where that sum came from (SUMW_SOURCES)
    events_class: str = ""  # "TTree" or "ROOT::RNTuple"
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
    sumw_source: str  # "metadata", or where the skim summed it (SUMW_SOURCES), once checked
    files: list[InputFile] = field(default_factory=list)
    # The event weight's branches (None: genWeight where the files have it) and constant factor.
    weight: tuple[str, ...] | None = None
    weight_scale: float = 1.0

    @property
    def folder(self) -> str:
        """The dataset's folder under the skim folder (`analysis.core.names.dataset_folder`)."""
        return dataset_folder(self.name)

    def metadata(self) -> dict[str, Any]:
        """What the processor reads from ``events.metadata``."""
        # weight and weight_scale only when given: the settings fingerprint of a dataset with
        # the default weight stays what it was before they existed (no re-skim of old parts).
        return {"process": self.process, "label": self.label, "is_mc": self.is_mc,
                "xsec_pb": self.xsec_pb, "sumw": self.sumw,
                **({"weight": list(self.weight)} if self.weight is not None else {}),
                **({"weight_scale": self.weight_scale} if self.weight_scale != 1.0 else {})}

    def record(self) -> dict[str, Any]:
        """The dataset as the skim's and the batch submission's records list it."""
        return {"process": self.process, "label": self.label, "is_mc": self.is_mc,
                "xsec_pb": self.xsec_pb, "sumw": self.sumw, "sumw_source": self.sumw_source,
                "weight": None if self.weight is None else list(self.weight),
                "weight_scale": self.weight_scale}

    @classmethod
    def from_record(cls, name: str, record: dict[str, Any]) -> DatasetInfo:
        """The inverse of `record` (a record written before weights were recorded has none)."""
        weight = record.get("weight")
        return cls(name=name, process=record["process"], label=record["label"], is_mc=record["is_mc"],
                   xsec_pb=record["xsec_pb"], sumw=record["sumw"], sumw_source=record["sumw_source"],
                   weight=None if weight is None else tuple(weight),
                   weight_scale=float(record.get("weight_scale", 1.0)))


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
        # The fileset's word first, then the sample's in the config, then [skim] weight.
        weight = next((w for w in (meta.get("weight"), sample.weight if sample else None,
                                   config.skim.weight) if w is not None), None)
        scale = next((s for s in (meta.get("weight_scale"), sample.weight_scale if sample else None)
                      if s is not None), 1.0)
        out[name] = DatasetInfo(name=name, process=str(process), label=int(label), is_mc=is_mc,
                                xsec_pb=None if xsec is None else float(xsec),
                                sumw=None if sumw is None else float(sumw),
                                sumw_source="metadata" if sumw is not None else "computed",
                                weight=None if weight is None else parse_weight_product(weight),
                                weight_scale=float(scale),
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
               weight: tuple[str, ...] | None = None, timeout: int | None = None,
               open_files: OpenFiles | None = None) -> InputFile:
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
        Sum the file's generator weights (the dataset's metadata lacks ``sumw``): the Runs
        tree's ``genEventSumw`` where the file has it, else ``genWeight`` over its events.
    weight : tuple of str or None
        The dataset's weight branches, each checked to be one number per event (simulation).
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
    except Exception as err:
        if remote and is_transient(err):
            raise
        raise InputFileError(path, f"cannot open as a ROOT file ({type(err).__name__}: "
                                   f"{' '.join(str(err).split())})") from None
    with contextlib.nullcontext(file) if kept else file:  # a kept file is closed by open_files
        classes = {k.split(";")[0]: c for k, c in file.classnames(recursive=False).items()}
        if item.treename not in classes:
            held = ", ".join(f"{k} ({c})" for k, c in sorted(classes.items())) or "nothing"
            raise InputFileError(path, f"no {item.treename!r} tree (the file holds: {held})")
        if classes[item.treename] not in _EVENT_CLASSES:
            raise InputFileError(path, f"{item.treename!r} is a {classes[item.treename]}, not a TTree or "
                                       f"an RNTuple (the skim reads NanoAOD events)")
        # The TTree's metadata is read here, not at open: a damaged TKey or compressed record
        # fails deep in uproot (zlib.error, DeserializationError...), a traceback otherwise.
        try:
            tree = file[item.treename]
        except Exception as err:
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
        item.events_class = classes[item.treename]
        item.uuid_bytes = file.file.fUUID
        item.uuid = str(uuid.UUID(bytes=item.uuid_bytes))
        item.profile = profile or ""
        if is_mc and weight is not None:
            _check_weight_branches(tree, branches, weight, path)
        if need_sumw:
            item.sum_genweight, item.sumw_from = _file_sumw(file, tree, branches, path, remote)
    return item


def _check_weight_branches(tree: Any, branches: set[str], weight: tuple[str, ...], path: str) -> None:
    missing = [b for b in weight if b not in branches]
    if missing:
        raise InputFileError(path, f"missing weight branch{'es' if len(missing) > 1 else ''} "
                                   f"{', '.join(missing)} (the dataset's weight {' * '.join(weight)})")
    for name in weight:
        if isinstance(tree, uproot.behaviors.TTree.TTree):
            interpretation = getattr(tree[name], "interpretation", None)
            scalar = isinstance(interpretation, uproot.AsDtype) and not interpretation.inner_shape
            kind = tree[name].typename
        else:  # an RNTuple field: its type, from one entry
            first = tree[name].array(entry_stop=1)
            scalar, kind = first.ndim == 1 and first.fields == [], str(first.type.content)
        if not scalar:
            raise InputFileError(path, f"weight branch {name} is not one number per event "
                                       f"({kind}); a weight factor must be")


def _file_sumw(file: Any, tree: Any, branches: set[str], path: str, remote: bool) -> tuple[float, str]:
    """(sum of generator weights, where it came from) of one file (`SUMW_SOURCES`)."""
    def read(what: str, read_values):
        try:
            return math.fsum(np.asarray(read_values(), dtype=np.float64).ravel().tolist())
        except Exception as err:
            if remote and is_transient(err):
                raise
            raise InputFileError(path, f"cannot read {what} ({type(err).__name__}: "
                                       f"{' '.join(str(err).split())})") from None

    runs = _runs_tree(file)
    if runs is not None:
        name = next((n for n in _RUNS_SUMW if n in runs), None)
        if name is not None:
            return read(f"Runs/{name}", lambda: runs[name].array(library="np")), f"Runs.{name}"
    if "genWeight" in branches:
        return read("genWeight", lambda: tree["genWeight"].array(library="np")), "Events.genWeight"
    return float(tree.num_entries), "Events.count"


def _runs_tree(file: Any) -> Any:
    classes = {k.split(";")[0]: c for k, c in file.classnames(recursive=False).items()}
    if classes.get("Runs") not in _EVENT_CLASSES:
        return None
    return file["Runs"]


def dataset_sumw(info: DatasetInfo) -> None:
    """Fill a dataset's ``sumw`` from its checked files (those that could be read).

    Raises `StageInputError` when the files disagree on where the sum comes from (a Runs
    tree in some, not in others: the sums would not be of the same thing), or for
    simulation whose sum is 0.
    """
    good = [f for f in info.files if f.error is None]
    if info.sumw is not None or not good:
        if info.sumw is None:
            info.sumw = 0.0
        return
    sources = sorted({f.sumw_from for f in good})
    if len(sources) > 1:
        first = {s: next(f.path for f in good if f.sumw_from == s) for s in sources}
        raise StageInputError(f"dataset {info.name!r}: its files' sums of generator weights come from "
                              + " and ".join(f"{s} ({first[s]})" for s in sources)
                              + "; give 'sumw' in the fileset metadata")
    info.sumw = math.fsum(f.sum_genweight for f in good)
    info.sumw_source = f"computed from {sources[0]}"
    if info.is_mc and info.sumw == 0:
        raise StageInputError(f"dataset {info.name!r}: the sum of generator weights is 0, "
                              f"so no MC weight can be formed; give 'sumw' in the fileset metadata")
