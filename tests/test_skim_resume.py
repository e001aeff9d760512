"""Skim stage tests: a SIGKILLed skim resumes to every event exactly once; a finished skim re-runs as a no-op."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from _skim_helpers import (
    QUIET_COFFEA,
    default_config,
    read_skim,
    subset_fileset,
)

from analysis.config import config_from_dict
from analysis.errors import StageInputError
from analysis.skim.runner import run_skim

pytestmark = QUIET_COFFEA

DATASETS = ["DYJetsToLL"]
CHUNKSIZE = 250  # ~18 chunks, so a kill lands part-way


@pytest.fixture(scope="module")
def fileset(generated_sample, tmp_path_factory):
    return subset_fileset(generated_sample, DATASETS, tmp_path_factory.mktemp("fs") / "fileset.json")


@pytest.fixture(scope="module")
def reference(fileset, tmp_path_factory):
    out = tmp_path_factory.mktemp("skim-reference")
    summary = run_skim(fileset, out, default_config(), executor="iterative", chunksize=CHUNKSIZE,
                       progress=False)
    return out, summary


def _skim_cmd(fileset, out):
    return [sys.executable, "-m", "analysis.cli", "skim", str(fileset), "--out", str(out),
            "--executor", "iterative", "--chunksize", str(CHUNKSIZE), "--quiet"]


def test_sigkill_then_resume_gives_every_event_exactly_once(fileset, reference, tmp_path):
    ref_out, ref_summary = reference
    out = tmp_path / "skim"
    proc = subprocess.Popen(_skim_cmd(fileset, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(list(out.glob("*/part-*.parquet"))) < 3:
            assert proc.poll() is None, f"skim ended before it could be killed: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "no parts written within 120 s"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = len(list(out.glob("*/part-*.parquet")))
    assert 3 <= written < ref_summary["chunks"], "the kill must land part-way"
    assert not (out / "manifest.json").exists()  # the bookkeeping of a finished run only

    summary = run_skim(fileset, out, default_config(), executor="iterative", chunksize=CHUNKSIZE,
                       progress=False)
    assert summary["chunks_skipped"] >= written - 1 >= 2  # a part racing the kill may be redone
    assert summary["chunks_run"] + summary["chunks_skipped"] == ref_summary["chunks"]
    assert summary["chunks_run"] > 0 and summary["complete"]
    assert not list(out.glob("*/.part-*"))  # no temporary file left behind
    got, want = read_skim(out), read_skim(ref_out)
    assert not got.duplicated(["dataset", "run", "luminosityBlock", "event"]).any()
    assert got.equals(want)
    cutflow = json.loads((out / "cutflow.json").read_text())
    assert cutflow == json.loads((ref_out / "cutflow.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(d["cuts"]["all"]["events"] for d in cutflow.values()) == sum(f["entries"] for f in manifest["files"])


def test_rerun_of_finished_skim_does_no_work(fileset, reference, tmp_path):
    out = tmp_path / "skim"
    first = run_skim(fileset, out, default_config(), executor="iterative", chunksize=CHUNKSIZE,
                     progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    before = {n: (out / n).read_bytes() for n in ("cutflow.json", "manifest.json")}
    # Through the command line, as a user re-runs it.
    result = subprocess.run(_skim_cmd(fileset, out), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"0 chunks run, {first['chunks']} already done" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == stamps
    assert {n: (out / n).read_bytes() for n in before} == before


def test_resume_with_other_chunksize_or_selection_is_refused(fileset, tmp_path):
    out = tmp_path / "skim"
    run_skim(fileset, out, default_config(), executor="iterative", chunksize=CHUNKSIZE, progress=False)
    with pytest.raises(StageInputError, match=r"part-.*\.parquet: a part from another --chunksize.*fresh --out"):
        run_skim(fileset, out, default_config(), executor="iterative", chunksize=CHUNKSIZE * 2,
                 progress=False)
    # Other cuts: every chunk is skimmed again and its part replaced, as a fresh skim would.
    tighter = config_from_dict({"selection": {"tau_pt_min": 25.0}})
    again = run_skim(fileset, out, tighter, executor="iterative", chunksize=CHUNKSIZE, progress=False)
    assert again["chunks_run"] == again["chunks"] and again["chunks_skipped"] == 0
    fresh = tmp_path / "fresh"
    run_skim(fileset, fresh, tighter, executor="iterative", chunksize=CHUNKSIZE, progress=False)
    assert read_skim(out).equals(read_skim(fresh))
