"""Batch integration test (issue 7, acceptance 1): the skim on a real single-node Slurm, through dask-jobqueue and `hepprep submit`.

The fixture installs (Debian ``slurm-wlm``, ``munge``) and starts Slurm on this host with
tests/integration/start_slurm.sh, and stops it afterwards with stop_slurm.sh. Needs root.
Both ways of running on Slurm must give the same rows as a local iterative skim of the
same generated sample:

* ``cluster.kind = "slurm"``: `run_skim` with the dask executor on a `SLURMCluster`, whose
  workers are Slurm jobs;
* ``hepprep submit --system slurm``: one ``sbatch`` array, no dask scheduler, then
  ``hepprep skim --status`` and ``--merge-manifests``; a job that failed is resubmitted
  alone (``sbatch --array=K``) with ``hepprep submit --resubmit-failed``, and so is one
  that left the queue without a trace (cancelled before it started: only ``squeue`` can
  tell).

Run with ``make test-integration`` (not part of ``make test``).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis.batch.status import job_states, queued_tasks
from analysis.cli import main
from analysis.config import config_from_dict
from analysis.skim.runner import run_skim
from tests._skim_helpers import read_skim

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
EVENTS = 20_000
CHUNKSIZE = 2_000
PARTITION = "hepprep"
JOB_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm (started here, stopped at the end of the module)."""
    state = tmp_path_factory.mktemp("slurm-state")
    env = {"SLURM_ROOT": str(state), "SLURM_PARTITION": PARTITION, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    started = subprocess.run(["bash", str(HERE / "start_slurm.sh")], env=env, capture_output=True, text=True)
    assert started.returncode == 0, f"start_slurm.sh failed:\n{started.stdout}\n{started.stderr}"
    yield state
    subprocess.run(["bash", str(HERE / "stop_slurm.sh")], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    from analysis.generate.runner import generate_samples

    root = tmp_path_factory.mktemp("slurm-sample")
    config = config_from_dict({"generate": {"events": EVENTS, "files_per_sample": 2,
                                            "data_scale": 0.1, "seed": 7}})
    return generate_samples(root, config, progress=False)


@pytest.fixture(scope="module")
def local_skim(sample, tmp_path_factory) -> Path:
    """The reference: a local iterative skim of the same sample."""
    out = tmp_path_factory.mktemp("slurm-local") / "skim"
    run_skim(sample, out, config_from_dict({"skim": {"chunksize": CHUNKSIZE}}), executor="iterative",
             progress=False)
    return out


def _squeue() -> list[str]:
    done = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def _wait_for_jobs(out: Path) -> list:
    """Poll `job_states` until no job is running or missing; the final states."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while any(s.state in ("running", "missing") for s in job_states(out)):
        assert time.monotonic() < deadline, f"jobs not finished after {JOB_TIMEOUT_S} s: {_squeue()}"
        time.sleep(2)
    return job_states(out)


def test_skim_through_slurmcluster_gives_the_local_rows(slurm, sample, local_skim, tmp_path):
    start = time.perf_counter()
    logs = tmp_path / "worker-logs"
    config = config_from_dict({
        "skim": {"chunksize": CHUNKSIZE},
        "cluster": {"kind": "slurm", "n_workers": 2, "threads_per_worker": 1, "memory_limit": "3GiB",
                    "jobqueue": {"queue": PARTITION, "walltime": "00:15:00",
                                 "log_directory": str(logs),
                                 "local_directory": str(tmp_path / "worker-space")}},
    })
    out = tmp_path / "skim"
    summary = run_skim(sample, out, config, executor="dask", progress=False)
    assert summary["complete"]
    pd.testing.assert_frame_equal(read_skim(out), read_skim(local_skim))
    assert (out / "cutflow.json").read_bytes() == (local_skim / "cutflow.json").read_bytes()
    # The workers were Slurm jobs: dask-jobqueue's sbatch scripts wrote their logs here.
    worker_logs = sorted(logs.glob("dask-worker-*.err"))
    assert worker_logs and any("Starting Worker" in p.read_text() for p in worker_logs)
    print(f"\nSLURMCluster skim: {time.perf_counter() - start:.1f} s")


def test_skim_through_hepprep_submit_gives_the_local_rows(slurm, sample, local_skim, tmp_path, capsys):
    start = time.perf_counter()
    out = tmp_path / "batch"
    main(["submit", str(sample), "--out", str(out), "--jobs", "3", "--system", "slurm",
          "--chunksize", str(CHUNKSIZE), "--memory", "2GiB", "--queue", PARTITION])
    record = json.loads((out / "jobs" / "submit.json").read_text())
    batch_id = record["submissions"][0]["batch_id"]
    assert batch_id.isdigit()

    states = _wait_for_jobs(out)
    logs = {s.job: (out / "jobs" / str(s.job) / "skim.log").read_text() for s in states}
    assert [s.state for s in states] == ["done"] * 3, (states, logs)
    # Each array task ran under Slurm (its --output file) and wrote its own manifest.
    for k in range(3):
        assert (out / "jobs" / str(k) / "batch.out").is_file()
        assert batch_id in (out / "jobs" / str(k) / "started").read_text()
        assert (out / "manifests" / f"job-{k}.json").is_file()

    capsys.readouterr()
    main(["skim", "--status", str(out)])
    assert capsys.readouterr().out.splitlines()[0] == f"{out}: 3 jobs: 3 done, 0 failed, 0 running, 0 missing"
    main(["skim", "--merge-manifests", str(out)])
    pd.testing.assert_frame_equal(read_skim(out), read_skim(local_skim))
    assert (out / "cutflow.json").read_bytes() == (local_skim / "cutflow.json").read_bytes()
    local_manifest = json.loads((local_skim / "manifest.json").read_text())
    assert json.loads((out / "manifest.json").read_text()) == local_manifest
    print(f"\nhepprep submit skim: {time.perf_counter() - start:.1f} s")


def test_failed_slurm_job_is_resubmitted_alone(slurm, sample, local_skim, tmp_path, capsys):
    # Two datasets; one TTbar file is a copy that is missing when the jobs first run.
    kept = ("TTbar", "GluGluToHToTauTau")
    raw = {n: e for n, e in json.loads(sample.read_text()).items() if n in kept}
    for entry in raw.values():
        entry["files"] = {str((sample.parent / p).resolve()): t for p, t in entry["files"].items()}
    original = Path(next(iter(raw["TTbar"]["files"])))
    flaky = tmp_path / "flaky" / original.name
    flaky.parent.mkdir()
    flaky.write_bytes(original.read_bytes())
    raw["TTbar"]["files"] = {(str(flaky) if p == str(original) else p): t
                             for p, t in raw["TTbar"]["files"].items()}
    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps(raw))
    flaky.rename(flaky.with_suffix(".away"))

    out = tmp_path / "batch"
    main(["submit", str(fileset), "--out", str(out), "--jobs", "2", "--chunksize", str(CHUNKSIZE),
          "--queue", PARTITION])
    states = _wait_for_jobs(out)
    failed = [s.job for s in states if s.state == "failed"]
    assert len(failed) == 1 and states[failed[0]].error.endswith(f"{flaky}: no such file")

    flaky.with_suffix(".away").rename(flaky)
    main(["submit", "--resubmit-failed", str(out)])
    record = json.loads((out / "jobs" / "submit.json").read_text())
    assert record["submissions"][-1]["jobs"] == failed
    assert record["submissions"][-1]["command"][2] == f"--array={failed[0]}"
    assert [s.state for s in _wait_for_jobs(out)] == ["done", "done"]
    assert record["submissions"][-1]["batch_id"] in (out / "jobs" / str(failed[0]) / "started").read_text()

    main(["skim", "--merge-manifests", str(out)])
    reference = read_skim(local_skim)
    reference = reference[reference["dataset"].isin(kept)].reset_index(drop=True)
    pd.testing.assert_frame_equal(read_skim(out), reference)


def test_slice_gone_from_the_queue_without_a_trace_is_failed_and_resubmitted(slurm, sample, local_skim,
                                                                             tmp_path):
    # Held at submission, so slice 1 can be cancelled before it ever starts: it leaves the
    # queue and no file behind, which only the queue can tell.
    out = tmp_path / "batch"
    main(["submit", str(sample), "--out", str(out), "--jobs", "2", "--chunksize", str(CHUNKSIZE),
          "--queue", PARTITION, "--extra=--hold"])
    batch_id = json.loads((out / "jobs" / "submit.json").read_text())["submissions"][0]["batch_id"]
    subprocess.run(["scancel", f"{batch_id}_1"], check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        held = queued_tasks("slurm", batch_id)
        if held is not None and 1 not in held:
            break
        time.sleep(1)
    states = job_states(out)
    assert [s.state for s in states] == ["missing", "failed"], states
    assert states[1].error.startswith(f"never started, left no exit code and is no longer in the "
                                      f"slurm queue (batch job {batch_id}_1)")
    subprocess.run(["scontrol", "release", batch_id], check=True)
    main(["submit", "--resubmit-failed", str(out)])
    record = json.loads((out / "jobs" / "submit.json").read_text())
    assert record["submissions"][-1]["jobs"] == [1]
    subprocess.run(["scontrol", "release", record["submissions"][-1]["batch_id"]], check=True)
    assert [s.state for s in _wait_for_jobs(out)] == ["done", "done"]
    main(["skim", "--merge-manifests", str(out)])
    pd.testing.assert_frame_equal(read_skim(out), read_skim(local_skim))
