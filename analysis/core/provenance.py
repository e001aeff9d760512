"""Core (all stages): the provenance record each stage writes into its JSON record, and its checks.

Every stage's record (the skim's ``manifest.json`` and each batch job's, the prepared
``manifest.json``, a model's ``model_info.json``, evaluation's ``metrics.json``) holds a
``provenance`` key built by `build_provenance`:

``stage``, ``hepprep_version``, ``git_commit`` (of the checkout the code runs from,
``+dirty`` with uncommitted changes to tracked files, None outside git), ``command``,
``platform``, ``config_hash`` (`config_hash` of ``config``), ``seeds``, ``inputs``,
``libraries`` (python and the libraries' versions, "not installed" where absent) and
``config`` (the full effective configuration, ``Config.model_dump(mode="json")``).

``inputs`` lists what the stage read: files as ``{"kind": "file"|"fileset", "path", "uuid",
"size", "mtime"}`` (`file_input`), an upstream stage's folder as ``{"kind":
"skim"|"prepared"|"model", "path", "fingerprint"}`` (`folder_input`). `check_input` tells
whether such an entry still matches what is on disk now.

The record holds no wall-clock time: two runs of the same command on the same inputs
with the same code write the same record, so a re-run of a finished stage rewrites its
record byte for byte. The configuration is passed in as a plain dict: core does not import
`analysis.config`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from analysis.core.io import read_json
from analysis.core.net import is_remote, redact
from analysis.core.skimmed import skim_fingerprint
from analysis.errors import StageInputError

__all__ = ["FOLDER_KINDS", "GENERATE_SETTINGS_FILE", "LIBRARIES", "RECORD_FILES", "build_provenance",
           "check_input", "command_line", "config_hash", "current_fingerprint", "file_input",
           "file_sha256", "folder_input", "git_commit", "hepprep_version", "library_versions",
           "input_rows", "read_record", "short", "stage_view"]

LIBRARIES = ("numpy", "pandas", "pyarrow", "awkward", "uproot", "coffea", "dask", "distributed",
             "xgboost", "torch", "scikit-learn", "scipy", "matplotlib", "mplhep", "hist")
# The JSON record of each stage's output folder (the one holding its "provenance").
RECORD_FILES = {"evaluation": "metrics.json", "model": "model_info.json", "prepared": "manifest.json",
                "skim": "manifest.json"}
FOLDER_KINDS = ("skim", "prepared", "model")  # upstream folders an input entry can name
# Beside a generated sample's fileset.json: the settings it was generated with.
GENERATE_SETTINGS_FILE = "generate.json"
_REPO = Path(__file__).resolve().parents[2]  # the folder holding analysis/ and processors/


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the configuration as canonical JSON (sorted keys, no whitespace, no NaN).

    ``config`` is ``Config.model_dump(mode="json")``: equal configurations give equal
    hashes, any changed value another.
    """
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@functools.cache
def git_commit() -> str | None:
    """Commit of the checkout the code runs from, "+dirty" with uncommitted changes to tracked
    files; None outside git (an installed package). Asked once per process."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True,
                              timeout=10)

    try:
        head = git("rev-parse", "--show-toplevel", "HEAD")
        lines = head.stdout.splitlines()
        # An installed copy inside some other repository is not that repository's code.
        if head.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != _REPO:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return lines[1].strip() + ("+dirty" if dirty.returncode != 0 or dirty.stdout.strip() else "")


def hepprep_version() -> str:
    try:
        return metadata.version("hepprep")
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    out = [("python", platform.python_version())]
    for name in LIBRARIES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return tuple(out)


def library_versions() -> dict[str, str]:
    """Python's version and each of `LIBRARIES`' ("not installed" where absent)."""
    return dict(_versions())


def command_line() -> str:
    """The command line of this process (program name without its folder, secrets redacted)."""
    if not sys.argv:
        return ""
    return shlex.join([Path(sys.argv[0]).name, *(redact(a) for a in sys.argv[1:])])


def _mtime(ns: int) -> str:
    """A modification time as ISO 8601 UTC to the microsecond (exact for the same file)."""
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc)
    return stamp.replace(microsecond=(ns // 1000) % 1_000_000).isoformat()


def _stat(path: str) -> dict[str, Any]:
    if is_remote(path):
        return {"size": None, "mtime": None}
    try:
        st = os.stat(path)
    except OSError:
        return {"size": None, "mtime": None}
    return {"size": st.st_size, "mtime": _mtime(st.st_mtime_ns)}


def _where(path: str | Path) -> str:
    path = str(path)
    return redact(path) if is_remote(path) else os.path.abspath(path)


def file_input(path: str | Path, *, kind: str = "file", uuid: str | None = None) -> dict[str, Any]:
    """An input file: ``{"kind", "path", "uuid", "size", "mtime"}`` (size and mtime None for a
    remote file, which is not asked)."""
    return {"kind": kind, "path": _where(path), "uuid": uuid or None, **_stat(str(path))}


def folder_input(kind: str, path: str | Path, fingerprint: str | None) -> dict[str, Any]:
    """An upstream stage's folder (``kind`` one of `FOLDER_KINDS`) and its fingerprint."""
    return {"kind": kind, "path": _where(path), "fingerprint": fingerprint}


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a file's bytes; None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def read_record(kind: str, folder: str | Path) -> dict[str, Any] | None:
    """The JSON record of a stage's folder (`RECORD_FILES`), or None when it has none."""
    if not Path(folder).is_dir():
        return None
    try:
        data = read_json(Path(folder) / RECORD_FILES[kind], f"the {kind} record")
    except StageInputError:
        return None
    return data if isinstance(data, dict) else None


def current_fingerprint(kind: str, folder: str | Path) -> str | None:
    """The fingerprint of an upstream folder as it is on disk now.

    skim: the parts' fingerprint (`analysis.core.skimmed.parts_fingerprint`); prepared: the
    prepared manifest's ``fingerprint`` (its inputs, settings and seed); model: sha256 of
    its ``model_info.json`` (written last, once per training).
    """
    if kind == "skim":
        return skim_fingerprint(folder)
    if kind == "model":
        return file_sha256(Path(folder) / RECORD_FILES["model"])
    if kind == "prepared":
        record = read_record("prepared", folder)
        value = (record or {}).get("fingerprint")
        return value if isinstance(value, str) else None
    return None


_AGAIN = {"skim": "skimmed again, or a part added, removed or rewritten", "prepared": "prepared again",
          "model": "trained again"}


def short(value: Any, n: int = 16) -> str:
    """A hash shortened for display."""
    return str(value)[:n] if value else "none"


def check_input(entry: Mapping[str, Any]) -> str:
    """``"matches"``, ``"CHANGED since: <what>"`` or ``"not checked (<why>)"`` for an input entry."""
    kind, path = entry.get("kind"), str(entry.get("path"))
    if kind in FOLDER_KINDS:
        if not Path(path).is_dir():
            return f"CHANGED since: {path} is gone"
        now = current_fingerprint(kind, path)
        recorded = entry.get("fingerprint")
        if recorded is None:
            return "not checked (no fingerprint recorded)"
        if now == recorded:
            return "matches"
        if now is None:
            return f"CHANGED since: {path} holds no {kind} record now"
        return (f"CHANGED since: fingerprint {short(recorded)} when recorded, {short(now)} now "
                f"({_AGAIN[kind]})")
    if is_remote(path):
        return "not checked (remote file)"
    now = _stat(path)
    if now["size"] is None:
        return f"CHANGED since: {path} is gone"
    diffs = []
    if now["size"] != entry.get("size"):
        diffs.append(f"size {entry.get('size')} -> {now['size']} bytes")
    if now["mtime"] != entry.get("mtime"):
        diffs.append(f"modified {now['mtime']} (recorded {entry.get('mtime')})")
    return "matches" if not diffs else f"CHANGED since: {path}: " + ", ".join(diffs)


def input_rows(inputs: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """What a stage read, with whether it still matches: ``{"kind", "path", "recorded", "status"}``.

    Folders and the fileset get a row each; the input files of a skim (there may be
    thousands) one row together, naming the first that changed.
    """
    rows, files = [], []
    for entry in inputs:
        if entry.get("kind") == "file":
            files.append(entry)
            continue
        recorded = (f"fingerprint {short(entry.get('fingerprint'))}" if "fingerprint" in entry
                    else f"{entry.get('size')} bytes, modified {entry.get('mtime')}")
        rows.append({"kind": str(entry.get("kind")), "path": str(entry.get("path")), "recorded": recorded,
                     "status": check_input(entry)})
    if files:
        statuses = [(e, check_input(e)) for e in files]
        changed = [(e, st) for e, st in statuses if st.startswith("CHANGED")]
        unchecked = sum(1 for _, st in statuses if st.startswith("not checked"))
        status = (f"CHANGED since: {len(changed)} of {len(files)} differ; first {changed[0][1][15:]}"
                  if changed else "matches" + (f" ({unchecked} remote, not checked)" if unchecked else ""))
        if len(files) == 1:
            status = statuses[0][1]
        path = str(files[0].get("path")) if len(files) == 1 else f"all {len(files)} of the fileset"
        rows.append({"kind": "files", "path": path, "recorded": "uuid, size, mtime", "status": status})
    return rows


def stage_view(kind: str, folder: str | Path) -> dict[str, Any]:
    """One stage's output as the report and `hepprep provenance` show it.

    ``kind`` is one of `RECORD_FILES`. Returns ``{"kind", "path", "record"`` (the whole
    JSON record, or None), ``"provenance"`` (or None, for outputs of older versions),
    ``"fingerprint"`` (what downstream stages record of it: a skim's or preparation's
    ``fingerprint``, sha256 of a model's ``model_info.json``; None for an evaluation),
    ``"fingerprint_now"`` (a skim's parts as they are on disk now), ``"inputs"`` (`input_rows`)``}``.
    """
    folder = Path(folder)
    record = read_record(kind, folder)
    provenance = (record or {}).get("provenance")
    provenance = provenance if isinstance(provenance, dict) else None
    fingerprint = now = None
    if kind in ("skim", "prepared") and record is not None:
        fingerprint = record.get("fingerprint") if isinstance(record.get("fingerprint"), str) else None
        now = current_fingerprint(kind, folder) if kind == "skim" else fingerprint
    elif kind == "model":
        fingerprint = now = current_fingerprint(kind, folder)
    inputs = provenance.get("inputs") if provenance else None
    return {"kind": kind, "path": str(folder), "record": record, "provenance": provenance,
            "fingerprint": fingerprint, "fingerprint_now": now,
            "inputs": input_rows(inputs if isinstance(inputs, list) else [])}


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def build_provenance(stage: str, *, config: Mapping[str, Any], inputs: Iterable[dict[str, Any]],
                     seeds: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance record of one stage's output (module docstring).

    Parameters
    ----------
    stage : str
        ``skim``, ``prepare``, ``train`` or ``evaluate``.
    config : mapping
        The full effective configuration, ``Config.model_dump(mode="json")``; a URL's
        credentials are redacted before it is recorded and hashed.
    inputs : iterable of dict
        `file_input` and `folder_input` entries.
    seeds : mapping
        The seeds that decided the output (``{"prepare.seed": 1234}``), empty if none.
    """
    recorded = _redacted(dict(config))
    return {
        "stage": stage,
        "hepprep_version": hepprep_version(),
        "git_commit": git_commit(),
        "command": command_line(),
        "platform": platform.platform(),
        "config_hash": config_hash(recorded),
        "seeds": dict(seeds),
        "inputs": list(inputs),
        "libraries": library_versions(),
        "config": recorded,
    }
