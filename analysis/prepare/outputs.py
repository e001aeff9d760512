"""Prepare stage: the output folder — what prepare may replace, and whether its files are intact.

``--out`` is replaced as a whole, so prepare refuses a folder that holds anything but its
own outputs; and its "nothing to do" answer checks the files it wrote, not only its
manifest. (What prepare reads of a skim is `analysis.core.skimmed`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from analysis.core.io import read_json
from analysis.errors import StageInputError

__all__ = ["OUTPUT_ENTRIES", "check_out_dir", "outputs_intact"]

MANIFEST_FILE = "manifest.json"
# Everything prepare writes into its --out folder.
OUTPUT_ENTRIES = frozenset({"train", "val", "test", "data", "stats.json", "manifest.json"})


def check_out_dir(out_dir: Path) -> None:
    """Refuse an ``--out`` that prepare would replace but that holds more than prepare's outputs.

    An empty or absent folder is fine, as is an earlier prepare output (its manifest says
    ``"stage": "prepare"``) holding only what prepare writes. Anything else (``--out ~``,
    a prepared folder someone put ``models/`` or notes into) would be deleted.
    """
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise StageInputError(f"{out_dir}: exists and is not a folder; choose another --out")
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    try:
        stage = read_json(out_dir / MANIFEST_FILE, "the prepare manifest").get("stage")
    except (StageInputError, AttributeError):
        stage = None
    if stage != "prepare":
        raise StageInputError(f"{out_dir}: exists and is not the output of `hepprep prepare` (no prepare "
                              "manifest.json); it would be replaced: choose another --out or remove it")
    foreign = [name for name in entries if name not in OUTPUT_ENTRIES]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise StageInputError(f"{out_dir}: holds {shown}, which `hepprep prepare` did not write and would "
                              "delete when it replaces the folder; move them out or choose another --out")


def outputs_intact(out_dir: Path, manifest: dict[str, Any]) -> str | None:
    """Why the prepared files that ``manifest`` lists are not all there, or None when they are."""
    if not (out_dir / "stats.json").is_file():
        return "stats.json is missing"
    for split, info in (manifest.get("splits") or {}).items():
        for entry in info.get("files", []):
            path = out_dir / entry["path"]
            if not path.is_file():
                return f"{entry['path']} is missing"
            try:
                rows = pq.read_metadata(path).num_rows
            except Exception:  # noqa: BLE001 - unreadable means not intact
                return f"{entry['path']} is not readable"
            if rows != entry["rows"]:
                return f"{entry['path']} has {rows} rows, not {entry['rows']}"
    return None
