"""Skim stage: reading and validating the fileset (coffea's JSON, with sample metadata).

A fileset is the user's input as much as the configuration is, and is checked the same
way: ``"files": 5``, ``"xsec_pb": "3503 pb"``, ``"label": 7``, a negative or non-finite
cross section, an unknown key beside ``files`` and ``metadata`` are one-line errors naming
the file, the dataset and the key. Dataset names must be storable as a folder under the
skim's ``--out`` (`analysis.core.names`).

Accepted per dataset: ``{"files": {path: treename} | [path, ...], "metadata": {...},
"treename": "Events"}``; a file's value may also be coffea's preprocessed form
``{"object_path": "Events", ...}``. Relative paths are taken from the fileset's folder.
Metadata keys other than the ones hepprep reads are the user's and kept as they are.

Batch jobs (`analysis.batch.submit`) read slices that never repeat a URL's credentials: such a
file is listed under its redacted URL with ``{"credentials_from": <the user's fileset>}``,
and the real URL is read back from there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from analysis.core.names import dataset_folders
from analysis.core.net import redact
from analysis.core.settings import WeightProduct
from analysis.errors import ConfigError, StageInputError

__all__ = ["DatasetMetadata", "load_fileset"]

_ENTRY_KEYS = ("files", "metadata", "treename", "form")


class DatasetMetadata(BaseModel):
    """The metadata keys hepprep reads (DESIGN.md "Fileset"); other keys pass through."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    process: str | None = None  # short process name written to the skim
    label: Literal[1, 0, -1] | None = None  # 1 signal, 0 background, -1 real data
    is_mc: bool | None = None
    xsec_pb: float | None = None  # cross section in pb
    sumw: float | None = None  # sum of generator weights before any selection
    n_events: int | None = Field(None, ge=0)
    # The event weight's branches, "genWeight * puWeight" or a list (analysis.config Sample.weight)
    weight: WeightProduct = None
    weight_scale: float | None = None  # a constant factor of the weight

    @field_validator("xsec_pb", "sumw", "weight_scale")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(f"must be a number > 0, got {value!r}")
        return value


def _where(path: Path, dataset: str) -> str:
    return f"{path}: dataset {redact(dataset)!r}"


def _metadata(path: Path, dataset: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{_where(path, dataset)}: metadata: must be a mapping of keys to values, "
                          f"got {type(raw).__name__}")
    try:
        checked = DatasetMetadata.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{_where(path, dataset)}: metadata.{key}: {msg} "
                          f"(got {first.get('input')!r})") from None
    if checked.is_mc and checked.label == -1:
        raise ConfigError(f"{_where(path, dataset)}: metadata: is_mc is true but label is -1 (real "
                          "data); simulation has label 0 or 1")
    return dict(raw)


def _tree_name(path: Path, dataset: str, name: str, value: Any, default: str) -> tuple[str, str | None]:
    """(tree name, credentials source) of one file entry."""
    if value is None:
        return default, None
    if isinstance(value, str) and value:
        return value, None
    if isinstance(value, dict):
        tree = value.get("object_path", default)
        source = value.get("credentials_from")
        if isinstance(tree, str) and tree and (source is None or isinstance(source, str)):
            return tree, source
    raise ConfigError(f"{_where(path, dataset)}: files: {redact(name)!r}: the value must be the tree "
                      f"name (\"Events\") or {{\"object_path\": \"Events\"}}, got {value!r}")


def _files(path: Path, dataset: str, entry: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    default = entry.get("treename", "Events")
    if not isinstance(default, str) or not default:
        raise ConfigError(f"{_where(path, dataset)}: treename: must be a tree name such as \"Events\"")
    files = entry["files"]
    if isinstance(files, list):
        files = {f: None for f in files} if all(isinstance(f, str) for f in files) else None
    if not isinstance(files, dict) or not files:
        raise ConfigError(f"{_where(path, dataset)}: files: must be a non-empty mapping "
                          f"{{path: tree name}} or list of paths, got {entry['files']!r}")
    out = {}
    for name, value in files.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{_where(path, dataset)}: files: a file path must be a non-empty string")
        out[name] = _tree_name(path, dataset, name, value, default)
    return out


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _real_url(path: Path, dataset: str, listed: str, source: str) -> str:
    """The URL with credentials that a batch slice lists as ``listed`` (redacted)."""
    try:
        origin = json.loads(Path(source).read_text())
        candidates = origin[dataset]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StageInputError(f"{path}: file {listed!r} takes its credentials from {source}, which "
                              f"cannot be read or has no dataset {redact(dataset)!r}") from None
    for url in candidates:
        if isinstance(url, str) and redact(url) == listed:
            return url
    raise StageInputError(f"{path}: file {listed!r} takes its credentials from {source}, which no "
                          "longer lists it; submit the jobs again")


def load_fileset(fileset: str | Path) -> dict[str, Any]:
    """Read and validate a coffea fileset JSON; relative file paths are resolved against its folder.

    Returns
    -------
    dict
        ``{dataset: {"files": {path: treename}, "metadata": {...}}}`` with absolute paths.

    Raises
    ------
    StageInputError
        The file is missing or not JSON.
    ConfigError
        A malformed entry, a bad metadata value, or a dataset name that cannot be a folder;
        the message names the file, the dataset and the key.
    """
    path = Path(fileset)
    if not path.is_file():
        raise StageInputError(f"{path}: no such fileset file (write one with `hepprep generate --out DIR`)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StageInputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict) or not raw:
        raise StageInputError(f"{path}: expected a mapping of dataset -> {{files, metadata}}")
    try:
        dataset_folders(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    base = path.resolve().parent
    out = {}
    for dataset, entry in raw.items():
        if isinstance(entry, list):
            entry = {"files": entry}
        if not isinstance(entry, dict) or "files" not in entry:
            raise ConfigError(f"{_where(path, dataset)}: has no 'files'")
        unknown = sorted(set(entry) - set(_ENTRY_KEYS))
        if unknown:
            raise ConfigError(f"{_where(path, dataset)}: {unknown[0]}: unknown key (a dataset has "
                              f"{', '.join(_ENTRY_KEYS)})")
        metadata = _metadata(path, dataset, entry.get("metadata"))
        resolved = {}
        for name, (tree, source) in _files(path, dataset, entry).items():
            if source is not None:
                name = _real_url(path, dataset, name, source)
            elif not _is_url(name):
                local = Path(name.removeprefix("file://"))
                name = str(local if local.is_absolute() else (base / local).resolve())
            resolved[name] = tree
        out[dataset] = {"files": resolved, "metadata": metadata}
    return out

