"""Skim stage tests: iterative, futures and dask executors (local cluster and an external scheduler) give the same rows."""

from __future__ import annotations

import json

import pytest
from _skim_helpers import EXECUTOR_CHUNKSIZE, QUIET_COFFEA, assert_same_skim, default_config

from analysis.errors import ConfigError
from analysis.skim.runner import run_skim

pytestmark = QUIET_COFFEA

CHUNKSIZE = EXECUTOR_CHUNKSIZE


def _same_output(out, reference):
    ref_out, ref_summary = reference
    assert ref_summary["rows"] > 100 and ref_summary["chunks"] >= 8
    assert_same_skim(out, ref_out)


def test_futures_executor_matches_iterative(executor_fileset, iterative_reference, tmp_path):
    summary = run_skim(executor_fileset, tmp_path, default_config(), executor="futures", workers=2,
                       chunksize=CHUNKSIZE, progress=False)
    assert summary["chunks_run"] == iterative_reference[1]["chunks"]
    _same_output(tmp_path, iterative_reference)


def test_dask_local_cluster_matches_iterative(executor_fileset, iterative_reference, tmp_path, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    summary = run_skim(executor_fileset, tmp_path, default_config(), executor="dask", workers=2,
                       chunksize=CHUNKSIZE, progress=False)
    assert summary["chunks_run"] == iterative_reference[1]["chunks"]
    _same_output(tmp_path, iterative_reference)


def test_dask_external_scheduler_matches_iterative(executor_fileset, iterative_reference, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster:
        # No executor named: a scheduler address means dask (config default is futures).
        summary = run_skim(executor_fileset, tmp_path, default_config(),
                           scheduler=cluster.scheduler_address, chunksize=CHUNKSIZE, progress=False)
        with Client(cluster.scheduler_address) as client:
            # The work ran on the test's own scheduler: its workers executed the chunks.
            assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter) > 0
    assert summary["chunks_run"] == iterative_reference[1]["chunks"] and summary["executor"] == "dask"
    _same_output(tmp_path, iterative_reference)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"]


def test_scheduler_with_another_executor_is_refused(executor_fileset, tmp_path):
    with pytest.raises(ConfigError, match="'tcp://127.0.0.1:1' is a dask scheduler: use executor 'dask', not 'futures'"):
        run_skim(executor_fileset, tmp_path, default_config(), executor="futures",
                 scheduler="tcp://127.0.0.1:1", progress=False)
