"""Faults (skim and prepare on dask): a worker SIGKILLed mid-stage loses and duplicates no event.

Each test starts a LocalCluster of 3 worker processes; `_fault_helpers.KillWorkerOnce`
kills one worker when it starts its n-th task of the stage (a skim chunk, a prepare
scatter or shuffle task). Dask re-runs the lost tasks on the other workers (and the
nanny's restarted one), and the output must hold every event exactly once: the same rows
as an undisturbed run.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
from _fault_helpers import kill_one_worker, killed_pid
from _skim_helpers import read_skim, subset_fileset
from distributed import Client, LocalCluster

from analysis.config import config_from_dict
from analysis.prepare.runner import run_prepare
from analysis.skim.runner import run_skim

KEYS = ["dataset", "run", "luminosityBlock", "event"]
WORKERS = 3
# Signal, one background and real data: ~4,800 events, ~15 chunks, most still queued at the kill.
DATASETS = ["GluGluToHToTauTau", "VBF_HToTauTau", "TTbar", "Run2012B_TauPlusX", "Run2012C_TauPlusX"]
CHUNKSIZE = 400


def _config():
    # Small shuffle buckets: pass 2 has a dozen tasks to interrupt, not three.
    return config_from_dict({"skim": {"chunksize": CHUNKSIZE},
                             "prepare": {"bucket_rows": 150, "file_rows": 100, "row_group_rows": 50},
                             "cluster": {"n_workers": WORKERS}})


@pytest.fixture
def cluster():
    # One per test: a test never depends on the previous victim's restart (slow on a loaded machine).
    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, memory_limit="2GiB",
                      dashboard_address=":0") as local, Client(local) as client:
        yield client


@pytest.fixture(scope="module")
def fileset(generated_sample, tmp_path_factory):
    return subset_fileset(generated_sample, DATASETS, tmp_path_factory.mktemp("faults") / "fileset.json")


@pytest.fixture(scope="module")
def reference_skim(fileset, tmp_path_factory):
    """The undisturbed skim (in-process executor) of the same files and chunking."""
    out = tmp_path_factory.mktemp("faults-reference") / "skim"
    summary = run_skim(fileset, out, _config(), executor="iterative", progress=False)
    return out, summary


def _assert_killed_mid_run(client: Client, flag, pids_before: set[int]) -> None:
    pid = killed_pid(flag)
    assert pid in pids_before, "the killed process was not one of the stage's workers"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert pid not in client.run(os.getpid).values()


def _worker_pids(client: Client) -> set[int]:
    client.wait_for_workers(WORKERS, timeout=60)
    return set(client.run(os.getpid).values())


def test_worker_killed_mid_skim_loses_and_duplicates_no_event(fileset, reference_skim, cluster, tmp_path):
    ref_dir, ref_summary = reference_skim
    pids = _worker_pids(cluster)
    with kill_one_worker(cluster, tmp_path / "killed", prefix="DiTauProcessor", after=3) as flag:
        summary = run_skim(fileset, tmp_path / "skim", _config(), executor="dask",
                           scheduler=cluster.scheduler.address, progress=False)
    _assert_killed_mid_run(cluster, flag, pids)

    assert summary["complete"] is True and summary["chunks_run"] == ref_summary["chunks"] > 10
    entries = sum(d["metadata"]["n_events"] for d in json.loads(fileset.read_text()).values())
    assert summary["events"] == ref_summary["events"] == entries  # every input event skimmed once
    rows = read_skim(tmp_path / "skim")
    assert not rows.duplicated(KEYS).any()
    pd.testing.assert_frame_equal(rows, read_skim(ref_dir))
    # Only finished parts are visible: the killed writer's temp file (if any) is hidden.
    assert all(p.name.startswith("part-") for p in (tmp_path / "skim").glob("*/[!.]*"))


def _prepared_keys(prep_dir) -> pd.DataFrame:
    files = sorted(prep_dir.glob("*/part-*.parquet"))
    frame = pd.concat([pq.read_table(f, columns=KEYS).to_pandas() for f in files], ignore_index=True)
    frame["dataset"] = frame["dataset"].astype(str)
    return frame


@pytest.mark.parametrize(("prefix", "after"), [("prepare-scatter-", 3), ("prepare-shuffle-", 2)],
                         ids=["pass1-scatter", "pass2-shuffle"])
def test_worker_killed_mid_prepare_keeps_every_event_once(reference_skim, cluster, tmp_path, prefix, after):
    ref_dir, _ = reference_skim
    pids = _worker_pids(cluster)
    with kill_one_worker(cluster, tmp_path / "killed", prefix=prefix, after=after) as flag:
        manifest = run_prepare(ref_dir, tmp_path / "prep", _config(), scheduler=cluster.scheduler.address,
                               progress=False)
    _assert_killed_mid_run(cluster, flag, pids)

    skim_keys = read_skim(ref_dir)[KEYS]
    keys = _prepared_keys(tmp_path / "prep")
    assert not keys.duplicated().any()
    assert len(keys) == len(skim_keys) == sum(s["rows"] for s in manifest["splits"].values())
    pd.testing.assert_frame_equal(keys.sort_values(KEYS).reset_index(drop=True), skim_keys)
    assert not list(tmp_path.glob(".prep.tmp-*"))  # no half-written output left beside it
