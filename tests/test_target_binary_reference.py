"""Tests of the prepare stage: the binary default is unchanged by the multi-class and regression targets.

The golden reference holds, for a small generated sample taken through generate -> skim ->
prepare with the default configuration, a SHA-256 of every prepared column (file by file)
and the whole stats.json, as the code before the targets work wrote them. Columns the
skim gained since (the generator truth `gen_m_tautau`, `gen_pt_h`) are new, listed in
`ADDED_COLUMNS`; every other column must be byte for byte what it was, and stats.json the
same. After an intended change of the binary path regenerate it with
``HEPPREP_UPDATE_REFERENCE=1 .venv/bin/python -m pytest tests/test_target_binary_reference.py``
and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from analysis.config import config_from_dict
from analysis.generate.runner import generate_samples
from analysis.prepare.runner import run_prepare
from analysis.skim.runner import run_skim

REFERENCE = Path(__file__).parent / "reference" / "prepare_binary_small.json"
ADDED_COLUMNS = {"gen_m_tautau", "gen_pt_h"}  # skim columns added after the reference was taken


def _column_digest(column) -> str:
    values = column.combine_chunks()
    if hasattr(values, "dictionary"):  # dictionary-encoded strings: compare the strings
        values = values.dictionary_decode()
    try:
        data = np.ascontiguousarray(values.to_numpy(zero_copy_only=False))
        blob = data.tobytes() if data.dtype != object else json.dumps(data.tolist()).encode()
    except (TypeError, ValueError):
        blob = json.dumps(values.to_pylist()).encode()
    return hashlib.sha256(str(values.type).encode() + b"|" + blob).hexdigest()


def _summary(prepared: Path) -> dict:
    files = {}
    for path in sorted(prepared.glob("*/part-*.parquet")):
        table = pq.read_table(path)
        files[str(path.relative_to(prepared))] = {name: _column_digest(table.column(name))
                                                  for name in table.column_names}
    return {"files": files, "stats": json.loads((prepared / "stats.json").read_text())}


def _prepare_default(tmp_path: Path, extra: dict | None = None) -> Path:
    config = config_from_dict({"generate": {"events": 3000, "files_per_sample": 1, "seed": 5,
                                            "data_scale": 0.05},
                               "cluster": {"n_workers": 1}, **(extra or {})})
    generate_samples(tmp_path / "gen", config, progress=False)
    run_skim(tmp_path / "gen" / "fileset.json", tmp_path / "skim", config, executor="iterative",
             progress=False)
    run_prepare(tmp_path / "skim", tmp_path / "prepared", config, progress=False)
    return tmp_path / "prepared"


def test_default_binary_prepare_matches_the_reference_column_by_column(tmp_path):
    summary = _summary(_prepare_default(tmp_path))
    if os.environ.get("HEPPREP_UPDATE_REFERENCE"):
        REFERENCE.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    reference = json.loads(REFERENCE.read_text())
    assert summary["stats"] == reference["stats"]
    assert summary["files"].keys() == reference["files"].keys()
    for path, columns in reference["files"].items():
        got = summary["files"][path]
        assert set(got) - set(columns) <= ADDED_COLUMNS, path
        for name, digest in columns.items():
            assert got.get(name) == digest, f"{path}: column {name} changed"
