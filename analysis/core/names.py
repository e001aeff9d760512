"""Core (all stages): dataset names as folder names, safely.

A fileset's dataset name is the user's (CMS filesets key datasets by their DAS name,
``/DYJetsToLL_M-50_.../RunIISummer20UL18NanoAODv9-.../NANOAODSIM``), but the skim stores
each dataset in a folder of its own under ``--out``. `dataset_folder` turns a name into a
folder name that stays inside that folder: a plain name (letters, digits, ``._+-``, not
starting with a dot) is its own folder, so existing skims keep their layout; any other name
becomes its characters made safe plus a short hash of the whole name, so two names never
share a folder. The real name is kept wherever the data says which dataset a row is from
(the ``dataset`` column, manifests, cutflows).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from analysis.errors import ConfigError

__all__ = ["RESERVED_FOLDERS", "dataset_folder", "dataset_folders"]

# Folders of a skim that are not datasets (batch jobs and their manifests).
RESERVED_FOLDERS = frozenset({"jobs", "manifests"})
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX_BODY = 160  # folder names stay far below the 255 bytes filesystems allow


def _refuse(name: object, why: str) -> ConfigError:
    return ConfigError(f"dataset {name!r}: {why}")


def dataset_folder(name: str) -> str:
    """The folder (one path component) that stores dataset ``name`` under a skim folder.

    Raises
    ------
    ConfigError
        A name that cannot be made safe: not a string, empty, holding a control character
        or a ``..`` path segment, or without any letter or digit.
    """
    if not isinstance(name, str):
        raise _refuse(name, "a dataset name must be a string")
    if not name.strip():
        raise _refuse(name, "a dataset name cannot be empty or blank")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise _refuse(name, "a dataset name cannot hold control characters (newline, tab, ...)")
    if any(segment == ".." for segment in re.split(r"[/\\]", name)):
        raise _refuse(name, "a dataset name cannot hold a '..' path segment")
    if _PLAIN.match(name) and name not in RESERVED_FOLDERS:
        return name
    body = "__".join(s for s in re.split(r"[/\\]+", name) if s)
    body = _UNSAFE.sub("_", body).lstrip("._-+")[:_MAX_BODY].rstrip("._-+")
    if not re.search(r"[A-Za-z0-9]", body):
        raise _refuse(name, "a dataset name needs at least one letter or digit")
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{body}-{digest}"


def dataset_folders(names: Iterable[str]) -> dict[str, str]:
    """`dataset_folder` of every name, refusing two names that would share a folder.

    Folders are compared without case too: on a case-insensitive filesystem (macOS,
    Windows) ``DY`` and ``dy`` would be one folder.
    """
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in names:
        folder = dataset_folder(name)
        other = seen.get(folder.lower())
        if other is not None and other != name:
            raise _refuse(name, f"it would be stored in the same folder {folder!r} as dataset "
                                f"{other!r} (names differing only in case or in characters that "
                                f"are not letters or digits); rename one of them")
        seen[folder.lower()] = name
        out[name] = folder
    return out
