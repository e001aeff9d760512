"""Skim stage tests: the executor `auto` chooses by the work, and the futures executor's workers.

The default (`auto`) runs a small skim in this process and a large one in worker processes
with the same parts and cutflow; the workers are forked from one server, live for the whole
skim (no restart when a chunk's memory stays allocated: loky, coffea's default pool, restarts
a worker that grew 300 MB), keep their chunks' files open between chunks (and the files they
checked), take the tasks of one file in one worker, and a task that cannot be pickled fails
at once instead of hanging the pool.
"""

from __future__ import annotations

import concurrent.futures
import json
import pickle
import threading
import time
import warnings
from types import SimpleNamespace

import pytest
import uproot
from _skim_helpers import EXECUTOR_CHUNKSIZE, QUIET_COFFEA, assert_same_skim, default_config, subset_fileset

from analysis.config import config_from_dict
from analysis.skim import pool as skim_pool
from analysis.errors import InputFileError
from analysis.skim.inputs import InputFile, check_file
from analysis.skim.open_files import WorkerFiles
from analysis.skim.pool import choose_executor, order_for_workers, worker_pool
from analysis.skim.runner import run_skim
from processors.ditau import DiTauProcessor
from processors.parts import read_part_summary

pytestmark = QUIET_COFFEA

CHUNKSIZE = EXECUTOR_CHUNKSIZE


def test_the_default_executor_is_auto():
    assert default_config().skim.executor == "auto"


def test_auto_runs_a_small_skim_in_this_process(executor_fileset, iterative_reference, tmp_path, capsys):
    summary = run_skim(executor_fileset, tmp_path, default_config(), chunksize=CHUNKSIZE, progress=False)
    assert summary["executor"] == "iterative"
    assert "fewer than skim.parallel_min_events" in summary["executor_reason"]
    assert "chunks run in this process" in capsys.readouterr().err
    assert_same_skim(tmp_path, iterative_reference[0])


def test_auto_runs_a_large_skim_in_worker_processes(executor_fileset, iterative_reference, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(skim_pool, "usable_cpus", lambda: 2)  # as on any machine of 2 CPUs or more
    config = config_from_dict({"skim": {"parallel_min_events": 0, "workers": 2}})
    summary = run_skim(executor_fileset, tmp_path, config, chunksize=CHUNKSIZE, progress=False)
    assert summary["executor"] == "futures" and summary["chunks_run"] >= 8
    assert f"{summary['chunks_run']} chunks run in 2 worker processes" in capsys.readouterr().err
    assert_same_skim(tmp_path, iterative_reference[0])


@pytest.mark.parametrize(("configured", "workers", "chunks", "events", "cpus", "expected", "why"), [
    ("auto", 2, 18, 2_000_000, 2, "futures", "18 chunks"),
    ("auto", 2, 18, 900_000, 2, "iterative", "fewer than skim.parallel_min_events"),
    ("auto", 1, 18, 2_000_000, 2, "iterative", "one worker"),
    ("auto", 2, 1, 2_000_000, 2, "iterative", "1 chunk to run"),
    ("auto", 4, 18, 2_000_000, 1, "iterative", "one usable CPU"),
    ("futures", 2, 1, 10, 1, "futures", "configured"),
    ("iterative", 2, 18, 2_000_000, 2, "iterative", "configured"),
    ("dask", 2, 18, 2_000_000, 2, "dask", "configured"),
])
def test_choose_executor(monkeypatch, configured, workers, chunks, events, cpus, expected, why):
    monkeypatch.setattr(skim_pool, "usable_cpus", lambda: cpus)
    kind, reason = choose_executor(configured, workers=workers, chunks=chunks, events=events,
                                   parallel_min_events=1_000_000)
    assert kind == expected and why in reason


def test_order_for_workers_puts_the_largest_chunks_first():
    class Item:
        def __init__(self, name, start, stop):
            self.name, self.entrystart, self.entrystop = name, start, stop

    items = [Item("a", 0, 10), Item("b", 0, 500), Item("c", 10, 20), Item("d", 0, 90)]
    assert [i.name for i in order_for_workers(items)] == ["b", "d", "a", "c"]


# Every chunk keeps 100 MB allocated in its worker (the latest five: 500 MB at most) and takes
# 0.55 s (loky checks a worker's memory at most once a second): from its fifth chunk on, a
# worker holds 400 MB more than after its first, past loky's 300 MB.
HOARDER = '''
import os
import sys
import time

import awkward as ak
import numpy as np

from processors import SkimProcessor



class Hoarder(SkimProcessor):
    name = "hoarder"
    branches = ("Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge")

    def select(self, events, cutflow):
        # The processor is pickled by value, its globals copied for every chunk: the arrays
        # are kept where the next chunk in the same process finds them.
        kept = sys.__dict__.setdefault("hepprep_test_kept", [])
        kept[:] = [*kept[-4:], np.ones(100 * 2**20 // 8)]
        time.sleep(0.55)
        cutflow.notes["pid"] = os.getpid()
        return {"n_muon": ak.to_numpy(ak.num(events.Muon)).astype("int32")}
'''


def test_workers_are_not_restarted_when_their_memory_grows(generated_sample, tmp_path):
    script = tmp_path / "hoarder.py"
    script.write_text(HOARDER)
    fileset = subset_fileset(generated_sample, ["TTbar", "DYJetsToLL"], tmp_path / "fileset.json")
    config = config_from_dict({"skim": {"processor": f"{script}:Hoarder", "executor": "futures",
                                        "workers": 2}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_skim(fileset, tmp_path / "skim", config, chunksize=500, progress=False)
    assert summary["chunks_run"] >= 12
    pids = {read_part_summary(p)["pid"] for p in (tmp_path / "skim").glob("*/part-*.parquet")}
    assert len(pids) == 2, f"{len(pids)} worker processes ran the chunks: workers were restarted"
    assert not [w for w in caught if "memory leak" in str(w.message) or "worker" in str(w.message).lower()]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_task_that_cannot_be_pickled_fails_at_once(workers):
    with worker_pool(workers) as pool:
        with pytest.raises((pickle.PicklingError, AttributeError)):
            pool.submit(lambda: 1)
        assert pool.submit(sum, [1, 2]).result(timeout=60) == 3


def _run_in(task, seconds):
    time.sleep(seconds)
    return threading.get_ident()


@pytest.fixture
def file_pool():
    """A `_FilePool` of two workers whose one-process pools are threads: the dispatch alone."""
    pool = skim_pool._FilePool(2, mp_context=skim_pool._context())
    for inner in pool._pools:
        inner.shutdown()
    pool._pools = [concurrent.futures.ThreadPoolExecutor(1) for _ in range(2)]
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def _submit_all(pool, seconds, tasks):
    """Where each task ran. Submitted as coffea does, all at once (the lock: before any is done)."""
    with pool._lock:
        futures = [pool.submit(_run_in, task, seconds) for task in tasks]
    return [f.result(timeout=30) for f in futures]


def test_the_file_pool_keeps_each_files_tasks_on_one_worker(file_pool):
    ran = _submit_all(file_pool, 0.05, [SimpleNamespace(filename=f) for f in "aaaaaabbbbbb"])
    # A worker done with its own file takes the other's last task (by design: none waits while
    # work is left), which a loaded machine makes happen; any worker at all would split each 3/3.
    assert ran[0] != ran[6] and ran[:6].count(ran[0]) >= 5 and ran[6:].count(ran[6]) >= 5, ran


def test_the_file_pool_gives_a_files_chunks_to_the_worker_that_checked_it(file_pool):
    checked = dict(zip("abcd", _submit_all(file_pool, 0.02, [SimpleNamespace(path=f) for f in "abcd"])))
    assert len(set(checked.values())) == 2
    chunks = [SimpleNamespace(filename=f) for f in "aabbccdd"]
    assert _submit_all(file_pool, 0.02, chunks) == [checked[c.filename] for c in chunks]


def test_the_file_pool_shares_out_one_large_file_and_untied_tasks(file_pool):
    # A worker whose own files are done takes the others' tasks: none waits while work is left.
    assert len(set(_submit_all(file_pool, 0.05, [SimpleNamespace(filename="a")] * 8))) == 2
    assert len(set(_submit_all(file_pool, 0.05, [None] * 8))) == 2


def test_a_file_pool_shut_down_cancels_the_waiting_tasks(file_pool):
    futures = [file_pool.submit(_run_in, SimpleNamespace(filename="a"), 0.2) for _ in range(8)]
    file_pool.shutdown(wait=True, cancel_futures=True)
    assert sum(f.cancelled() for f in futures) >= 4
    assert all(f.done() for f in futures)
    with pytest.raises(RuntimeError, match="after shutdown"):
        file_pool.submit(_run_in, None, 0)


def _tree_files(generated_sample):
    entries = json.loads(generated_sample.read_text())
    files = [(str(generated_sample.parent / f), t) for e in entries.values() for f, t in e["files"].items()]
    return files[:3]


def test_worker_files_open_each_file_once_and_close_the_least_recent(generated_sample, monkeypatch):
    (a, tree), (b, _), (c, _) = _tree_files(generated_sample)
    with uproot.open(a) as probe:
        branches = len(probe[tree].branches)
        muon_types = probe[tree].typenames(filter_name=["nMuon", "Muon_*"])
    model = uproot.models.TTree.Model_TTree_v20
    original, reads = model.read_members, []

    def counting(self, chunk, cursor, context, file):
        reads.append(file.file_path)
        return original(self, chunk, cursor, context, file)

    monkeypatch.setattr(model, "read_members", counting)
    kept = WorkerFiles(max_branches=2 * branches)
    kept.keep(a, tree, ["nMuon", "Muon_*"])
    kept.keep(a, tree)
    # A chunk's own open, given the cache, finds the kept TTree (no second read), its type
    # names narrowed to the branches NanoEvents reads.
    with uproot.open(a, object_cache=kept.object_cache) as chunk_file:
        assert chunk_file[tree].typenames() == muon_types and len(muon_types) < branches
    assert len(reads) == 1 and len(kept) == 1
    kept.keep(b, tree)
    kept.keep(c, tree)  # three files hold more than max_branches: the oldest, a, is closed
    assert len(kept) == 2 and len(reads) == 3
    assert all(obj.file.file_path != reads[0] for obj in kept.object_cache.values())
    kept.keep(str(generated_sample.parent / "no-such-file.root"), tree)  # the chunk's own open reports it
    assert len(kept) == 2
    kept.close()
    assert len(kept) == 0 and not kept.object_cache
    # However few their branches, at most max_files stay open (their mapped pages count in memory).
    few = WorkerFiles(max_files=1)
    few.keep(a, tree)
    first = next(iter(few.object_cache.values())).file
    few.keep(b, tree)
    assert len(few) == 1 and first.closed
    few.close()


def test_files_checked_in_a_worker_stay_open_unread_for_their_chunks(generated_sample, monkeypatch):
    (a, tree), (b, _), (c, _) = _tree_files(generated_sample)
    model = uproot.models.TTree.Model_TTree_v20
    original, reads = model.read_members, []

    def counting(self, chunk, cursor, context, file):
        reads.append(file.file_path)
        return original(self, chunk, cursor, context, file)

    monkeypatch.setattr(model, "read_members", counting)
    files = WorkerFiles(max_files=1)
    processor = DiTauProcessor(lumi_pb=1.0, out_dir=".")
    for path in (a, b, c):
        item = check_file(InputFile(dataset="d", path=path, treename="Events"), processor=processor,
                          is_mc=True, need_sumw=False, open_files=files.checking(["nMuon", "Muon_*"]))
        assert item.entries > 0
    # Checked, not yet read by a chunk: they do not count against max_files.
    assert len(files) == 3 and sorted(reads) == sorted([a, b, c])
    files.keep(a, tree)  # its first chunk: the TTree the check read, narrowed for NanoEvents
    with uproot.open(a, object_cache=files.object_cache) as chunk_file:
        assert chunk_file[tree].typenames() == uproot.open(a)[tree].typenames(filter_name=["nMuon", "Muon_*"])
    assert len(files) == 3 and len(reads) == 4  # (the probe's own open just above)
    files.keep(b, tree)  # two files read by chunks now: the older, a, is closed; c waits
    assert len(files) == 2 and len(reads) == 4
    files.keep(c, tree)
    assert len(files) == 1 and len(reads) == 4
    # A file that fails its check is closed again.
    opener = files.checking()
    empty = generated_sample.parent / "empty.root"
    with uproot.recreate(empty) as out:
        out.mktree("Events", {"x": "int32"})
    with pytest.raises(InputFileError, match="0 entries"):
        check_file(InputFile(dataset="d", path=str(empty), treename="Events"), processor=processor,
                   is_mc=True, need_sumw=False, open_files=opener)
    opener.discard(str(empty))
    assert len(files) == 1 and not files.object_cache.accepting
    files.close()


def test_workers_end_when_the_skim_is_killed(tmp_path):
    """kill -9 of the skim leaves no worker behind (they would wait for work for ever)."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = ("import os, time\n"
              "from analysis.skim.pool import worker_pool\n"
              "with worker_pool(2) as pool:\n"
              "    busy = [pool.submit(time.sleep, 0.5) for _ in range(2)]\n"
              "    pids = {pool.submit(os.getpid).result() for _ in range(8)}\n"
              "    print(' '.join(map(str, sorted(pids))), flush=True)\n"
              "    queued = [pool.submit(time.sleep, 120) for _ in range(4)]\n"
              "    time.sleep(120)\n")
    skim = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in skim.stdout.readline().split()]
        assert workers and skim.pid not in workers
        time.sleep(0.5)  # the workers are in their 120 s tasks
        skim.send_signal(signal.SIGKILL)
        skim.wait(timeout=10)

        def alive(pid):
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + 15
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in workers if alive(p)]
    finally:
        skim.kill()
