"""Core (training, evaluation): which files of a prepared folder are its splits.

A prepared folder can hold more than prepare wrote into it: a stray copy of training rows
in ``test/``, files of an older run. Training and evaluation read only the files that the
prepared ``manifest.json`` lists for each split, each checked to exist; and a model
records the manifest's ``fingerprint``, so that evaluation can tell a model trained on this
very prepared folder from one trained on another preparation of the same skim (another
seed puts other events in the test split).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.core.io import read_json
from analysis.errors import StageInputError

__all__ = ["PreparedListing", "read_prepared_listing", "read_prepared_stats"]

MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class PreparedListing:
    """The prepared manifest of a folder: its fingerprint and the files of each split."""

    root: Path
    manifest: dict[str, Any]

    @property
    def fingerprint(self) -> str | None:
        """What identifies this preparation (inputs, settings, seed), or None if not recorded."""
        value = self.manifest.get("fingerprint")
        return value if isinstance(value, str) and value else None

    def splits(self) -> list[str]:
        """Splits with at least one listed file, in manifest order."""
        return [s for s, info in self.manifest["splits"].items() if info.get("files")]

    def has_split(self, split: str) -> bool:
        return bool(self.manifest["splits"].get(split, {}).get("files"))

    def files(self, split: str) -> list[Path]:
        """The split's files, sorted by name (a fixed order makes training reproducible).

        Raises
        ------
        StageInputError
            A listed file is missing.
        """
        out = []
        for entry in self.manifest["splits"].get(split, {}).get("files", []):
            path = self.root / entry["path"]
            if not path.is_file():
                raise StageInputError(f"{path}: listed in {self.root / MANIFEST_FILE} but missing; "
                                      f"re-run `hepprep prepare` into {self.root}")
            out.append(path)
        return sorted(out)

    def rows(self, split: str) -> dict[Path, int]:
        """Rows of each listed file of ``split``, as the manifest records them."""
        return {self.root / e["path"]: int(e["rows"])
                for e in self.manifest["splits"].get(split, {}).get("files", [])}


def read_prepared_listing(root: str | Path) -> PreparedListing:
    """The prepared manifest of ``root``, checked to list files per split.

    Raises
    ------
    StageInputError
        No manifest, or one that is not a prepare manifest with a list of files per split.
    """
    root = Path(root)
    manifest = read_json(root / MANIFEST_FILE, "the prepare manifest")
    splits = manifest.get("splits") if isinstance(manifest, dict) else None
    ok = (isinstance(manifest, dict) and manifest.get("stage") == "prepare" and isinstance(splits, dict)
          and all(isinstance(s, dict) and isinstance(s.get("files", []), list)
                  and all(isinstance(f, dict) and isinstance(f.get("path"), str) and "rows" in f
                          and not Path(f["path"]).is_absolute() and ".." not in Path(f["path"]).parts
                          for f in s.get("files", []))
                  for s in splits.values()))
    if not ok:
        raise StageInputError(f"{root / MANIFEST_FILE}: not a prepare manifest (\"stage\": \"prepare\" with "
                              "the files of each split); re-run `hepprep prepare` into this folder")
    return PreparedListing(root=root, manifest=manifest)


def read_prepared_stats(root: str | Path) -> dict[str, Any]:
    """The prepared ``stats.json`` of ``root`` as a mapping (its sections are checked by their readers).

    Raises
    ------
    StageInputError
        No stats.json, or one that is not a JSON object.
    """
    return read_json(Path(root) / STATS_FILE, "the prepared statistics", expect=dict,
                     fix="re-run `hepprep prepare`")
