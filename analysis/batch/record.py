"""Batch submission: the submit record, ``<out>/jobs/submit.json``, that submission writes and status reads.

It says what was submitted (system, resources, datasets with their sumw, the files and
their slices, every submission with its batch id); `analysis.batch.submit` writes it and
`analysis.batch.status` reads it, so neither needs the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.core.io import read_json
from analysis.errors import StageInputError

__all__ = ["JOBS_DIR", "SUBMIT_RECORD", "read_submit_record"]

JOBS_DIR = "jobs"
SUBMIT_RECORD = "submit.json"


def read_submit_record(out_dir: str | Path) -> dict[str, Any]:
    """``<out>/jobs/submit.json``, or a `StageInputError` naming the folder and the fix."""
    path = Path(out_dir) / JOBS_DIR / SUBMIT_RECORD
    if not path.is_file():
        raise StageInputError(f"{Path(out_dir)}: no batch submission here (no {JOBS_DIR}/{SUBMIT_RECORD}); "
                              f"submit one with `hepprep submit FILESET --out {out_dir} --jobs N`")
    return read_json(path, "the batch submission record", expect=dict, fix="submit again into a fresh --out")
