"""Parts written in a thread while the next chunk runs (`processors.parts.BackgroundParts`).

What must hold: every part of a finished skim is in place, whole, when `run_skim` returns;
a part that fails to be written ends the skim with its error, and no retry of a later chunk
hides it; a copy of the processor sent to another process writes its own parts.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import pickle
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _skim_helpers import QUIET_COFFEA, default_config, subset_fileset

import processors.parts
from analysis.skim.runner import run_skim
from processors.ditau import DiTauProcessor
from processors.parts import BackgroundParts, read_part_summary

pytestmark = QUIET_COFFEA


def _failing_once(monkeypatch) -> list:
    """`write_part` failing with EIO (an error coffea would retry) on its first call only."""
    calls, write = [], processors.parts.write_part

    def flaky(table, path, summary):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error", str(path))
        write(table, path, summary)

    monkeypatch.setattr(processors.parts, "write_part", flaky)
    return calls


def test_a_failed_write_is_raised_by_a_later_call_and_by_every_call_after_it(tmp_path, monkeypatch):
    calls = _failing_once(monkeypatch)
    table = pa.table({"x": np.arange(3, dtype=np.float32)})
    writer = BackgroundParts(writing=2)
    writer(table, tmp_path / "a.parquet", {"n": 1})
    with pytest.raises(OSError, match="Input/output error"):  # at the latest once 2 more wait
        for k in range(writer.writing + 1):
            writer(table, tmp_path / f"b{k}.parquet", {"n": 2})
    submitted = len(calls)
    for _ in range(2):
        with pytest.raises(OSError, match="Input/output error"):
            writer(table, tmp_path / "c.parquet", {"n": 3})
    with pytest.raises(OSError, match="Input/output error"):
        writer.close()
    assert len(calls) == submitted <= writer.writing + 1  # nothing submitted once the failure is known
    assert not (tmp_path / "a.parquet").exists() and not (tmp_path / "c.parquet").exists()


def test_each_part_is_written_whole_before_close_returns(tmp_path):
    writer = BackgroundParts()
    tables = [pa.table({"x": np.full(50_000, k, dtype=np.float32)}) for k in range(3)]
    for k, table in enumerate(tables):
        writer(table, tmp_path / f"part-{k}.parquet", {"k": k})
    writer.close()
    for k, table in enumerate(tables):
        assert pq.read_table(tmp_path / f"part-{k}.parquet").column("x").equals(table.column("x"))
        assert read_part_summary(tmp_path / f"part-{k}.parquet") == {"k": k}


@pytest.fixture(scope="module")
def fileset(generated_sample, tmp_path_factory):
    return subset_fileset(generated_sample, ["GluGluToHToTauTau", "DYJetsToLL"],
                          tmp_path_factory.mktemp("writer") / "fileset.json")


def test_an_iterative_skim_has_every_part_in_place_when_it_returns(fileset, tmp_path):
    summary = run_skim(fileset, tmp_path / "skim", default_config(), executor="iterative", chunksize=1500,
                       progress=False)
    assert summary["executor"] == "iterative" and summary["chunks_run"] > 4
    manifest = json.loads((tmp_path / "skim" / "manifest.json").read_text())
    listed = sorted(tmp_path / "skim" / c["part"] for f in manifest["files"] for c in f["chunks"])
    parts = sorted((tmp_path / "skim").glob("*/part-*.parquet"))
    assert parts == listed and len(parts) == summary["chunks_run"]
    assert sum(pq.read_metadata(p).num_rows for p in parts) == summary["rows"]
    assert not [t for t in threading.enumerate() if t.name.startswith("hepprep-part")]


def test_a_part_that_fails_to_be_written_ends_the_skim_without_a_manifest(fileset, tmp_path, monkeypatch):
    calls = _failing_once(monkeypatch)
    with pytest.raises(OSError, match="Input/output error"):
        run_skim(fileset, tmp_path / "skim", default_config(), executor="iterative", chunksize=1500, progress=False)
    assert not (tmp_path / "skim" / "manifest.json").exists()
    written = len(list((tmp_path / "skim").glob("*/part-*.parquet")))
    assert written == len(calls) - 1  # the later chunks' retries wrote nothing more once it was known
    # resumed, the skim writes the missing part: nothing was recorded as done that is not there
    monkeypatch.undo()
    summary = run_skim(fileset, tmp_path / "skim", default_config(), executor="iterative", chunksize=1500,
                       progress=False)
    assert summary["chunks_skipped"] == written and summary["chunks_run"] > 0
    assert len(list((tmp_path / "skim").glob("*/part-*.parquet"))) == summary["chunks"]


def test_a_copy_of_the_processor_in_this_process_shares_the_writer_and_one_elsewhere_has_none():
    proc = DiTauProcessor(lumi_pb=1.0, out_dir=".")
    proc.part_writer = writer = BackgroundParts()
    try:
        blob = pickle.dumps(proc)  # as coffea hands each chunk its copy
        assert pickle.loads(blob).part_writer is writer
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            assert pool.apply(_writer_of_a_copy, (blob,)) is None
    finally:
        writer.close()
    assert pickle.loads(pickle.dumps(proc)).part_writer is None  # closed: copies write their own parts


def _writer_of_a_copy(blob: bytes):
    return pickle.loads(blob).part_writer
