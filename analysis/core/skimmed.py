"""Core (prepare, evaluation): which files of a skim folder are its parts.

A skim folder can hold more than its parts: a backup copy of a dataset folder, a Parquet
file from elsewhere, parts of an interrupted run. The skim's ``manifest.json`` lists every
part with its row count, and the stages downstream read exactly those parts, after
checking that each exists with that many rows. An incomplete skim (an input file not done,
a dataset whose files were all skipped) is refused unless the caller allows it.

The skim's ``fingerprint`` (`parts_fingerprint`) says which parts it is: a hash over the
listed parts, sorted by relative path, of each part's path, row count, size in bytes and
Parquet footer (the footer holds the chunk summary with the settings fingerprint of the
selection, luminosity and dataset metadata, and every column's statistics and byte
sizes). It does not depend on when or where the skim ran: a re-run that redoes nothing, a
batch skim and a single skim of the same fileset have the same fingerprint; a part added,
removed, skimmed with other settings or rewritten with other content changes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from analysis.core.features import DEFAULT_FEATURES
from analysis.core.io import read_json
from analysis.errors import StageInputError

__all__ = ["SkimParts", "parts_fingerprint", "skim_fingerprint", "skim_parts"]

MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class SkimParts:
    """The parts of a skim that prepare reads, and what the skim lacks.

    ``files`` are sorted absolute paths; ``not_done`` lists ``"<path>: <status>"`` for input
    files the skim did not finish, ``empty_datasets`` the datasets without any part (both
    empty for a complete skim); ``ignored`` counts Parquet files in the folder that the
    manifest does not list.
    """

    files: tuple[Path, ...]
    not_done: tuple[str, ...] = ()
    empty_datasets: tuple[str, ...] = ()
    ignored: int = 0
    complete: bool = True
    record: dict[str, Any] = field(default_factory=dict)
    by_dataset: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    # The training inputs the skim's processor declares (a skim from before processors were
    # recorded is the di-tau processor's).
    default_features: tuple[str, ...] = DEFAULT_FEATURES


def _parquet_rows(path: Path) -> int:
    try:
        return pq.read_metadata(path).num_rows
    except Exception as err:  # noqa: BLE001 - any reader failure means the part is damaged
        raise StageInputError(f"{path}: a part listed in the skim manifest is not a readable "
                              f"Parquet file ({' '.join(str(err).split())}); re-run `hepprep skim` "
                              f"after deleting it") from None


def _part_identity(path: Path) -> tuple[int | None, str | None]:
    """(size in bytes, sha256 of the Parquet footer) of a part; (None, None) when it is gone."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            if size < 12:
                return size, None
            handle.seek(size - 8)
            tail = handle.read(8)
            length = int.from_bytes(tail[:4], "little")
            if tail[4:] != b"PAR1" or length > size - 12:
                return size, None
            handle.seek(size - 8 - length)
            return size, hashlib.sha256(handle.read(length)).hexdigest()
    except OSError:
        return None, None


def parts_fingerprint(skim_dir: str | Path, files: Iterable[dict[str, Any]]) -> str:
    """The skim fingerprint (module docstring) of the parts that manifest ``files`` entries list."""
    parts = sorted((str(c["part"]), int(c["rows"])) for f in files for c in (f.get("chunks") or []))
    entries = [[rel, rows, *_part_identity(Path(skim_dir) / rel)] for rel, rows in parts]
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


def skim_fingerprint(skim_dir: str | Path) -> str | None:
    """The fingerprint of the skim in ``skim_dir`` as its parts are on disk now; None without a
    skim manifest (not a skim folder, or one hepprep cannot read)."""
    if not Path(skim_dir).is_dir():
        return None
    try:
        manifest = read_json(Path(skim_dir) / MANIFEST_FILE, "the skim manifest")
    except StageInputError:
        return None
    if not isinstance(manifest, dict) or manifest.get("stage") != "skim" or not isinstance(
            manifest.get("files"), list):
        return None
    try:
        return parts_fingerprint(skim_dir, manifest["files"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def skim_parts(skim_dir: str | Path, *, allow_incomplete: bool = False) -> SkimParts:
    """The parts the skim manifest of ``skim_dir`` lists, each checked against its row count.

    Raises
    ------
    StageInputError
        No skim manifest (or an unmerged batch run), a listed part missing or with another
        row count, or an incomplete skim without ``allow_incomplete``.
    """
    skim_dir = Path(skim_dir)
    if not skim_dir.is_dir():
        raise StageInputError(f"{skim_dir}: no such skim directory; run `hepprep skim` first or "
                              "pass the folder given to `hepprep skim --out`")
    manifest_path = skim_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        if any((skim_dir / "manifests").glob("job-*.json")):
            raise StageInputError(f"{skim_dir}: a batch skim whose job manifests are not merged yet; "
                                  f"run `hepprep skim --merge-manifests {skim_dir}` once every job is done")
        raise StageInputError(f"{manifest_path}: no skim manifest, so {skim_dir} is not the output of "
                              "`hepprep skim`; for Parquet files of your own use "
                              "`hepprep prepare --table-format parquet`")
    manifest = read_json(manifest_path, "the skim manifest")
    if not isinstance(manifest, dict) or manifest.get("stage") != "skim" or not isinstance(
            manifest.get("files"), list):
        raise StageInputError(f"{manifest_path}: not a skim manifest (no \"stage\": \"skim\" with a "
                              "list of files); re-run `hepprep skim`")
    files: list[Path] = []
    not_done: list[str] = []
    has_parts: set[str] = set()
    by_dataset: dict[str, list[Path]] = {}
    for entry in manifest["files"]:
        status = entry.get("status")
        if status not in ("done", "skipped"):
            not_done.append(f"{entry.get('path')}: {status}")
        for chunk in entry.get("chunks") or []:
            part = skim_dir / chunk["part"]
            if not part.is_file():
                raise StageInputError(f"{part}: listed in {manifest_path.name} with {chunk['rows']} rows "
                                      f"but missing; re-run the same `hepprep skim` command to redo it")
            rows = _parquet_rows(part)
            if rows != chunk["rows"]:
                raise StageInputError(f"{part}: holds {rows} rows but {manifest_path.name} says "
                                      f"{chunk['rows']}: it is not the part the skim wrote; skim again "
                                      "into a fresh --out")
            files.append(part)
            has_parts.add(entry.get("dataset"))
            by_dataset.setdefault(entry.get("dataset"), []).append(part)
    empty = sorted(name for name in (manifest.get("datasets") or {}) if name not in has_parts)
    complete = bool(manifest.get("complete")) and not not_done
    if not allow_incomplete:
        if not complete:
            shown = "; ".join(not_done[:3]) + (f"; and {len(not_done) - 3} more" if len(not_done) > 3 else "")
            raise StageInputError(f"{skim_dir}: the skim is incomplete ({len(not_done)} input file(s) not "
                                  f"done: {shown or 'manifest says complete: false'}); finish it with the same "
                                  "`hepprep skim` command, or prepare what it holds with --allow-incomplete")
        if empty:
            raise StageInputError(f"{skim_dir}: dataset(s) {', '.join(repr(n) for n in empty)} have no skim "
                                  f"parts (every file skipped as unreadable, see {manifest_path.name}); "
                                  "fix or remove them from the fileset and skim again, or prepare "
                                  "without them with --allow-incomplete")
    if not files:
        raise StageInputError(f"{skim_dir}: the skim manifest lists no parts; nothing to prepare")
    listed = {p.resolve() for p in files}
    ignored = sum(1 for p in skim_dir.glob("*/*.parquet") if p.resolve() not in listed)
    record = {"manifest": str(manifest_path.resolve()), "complete": complete,
              "allow_incomplete": allow_incomplete, "files_not_done": not_done,
              "datasets_without_parts": empty, "parts": len(files),
              # which analysis wrote the columns: their plot labels (analysis.core.features)
              "processor": (manifest.get("processor") or {}).get("name", "DiTauProcessor")}
    recorded = (manifest.get("processor") or {}).get("default_features")
    return SkimParts(files=tuple(sorted(files)), not_done=tuple(not_done), empty_datasets=tuple(empty),
                     ignored=ignored, complete=complete, record=record,
                     by_dataset={k: tuple(sorted(v)) for k, v in by_dataset.items()},
                     default_features=tuple(recorded) if isinstance(recorded, list) else DEFAULT_FEATURES)
