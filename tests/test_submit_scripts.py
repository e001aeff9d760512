"""Batch submission tests with no skim run: balancing, array specs, job scripts, HTCondor descriptions, job states."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.batch.scripts import (htcondor_description, job_script, memory_mb, slurm_array_spec,
                                    submit_command)
from analysis.batch.submit import balance_files
from analysis.errors import ConfigError, StageInputError
from analysis.skim.manifest import plan_chunks, remove_stale_temp_files


def test_balance_files_worked_example():
    # Largest first to the lightest job: 5->j0 (5), 4->j1 (4), 3#2->j1 (7), 3#3->j0 (8), 3#4->j1 (10).
    assert balance_files([5, 4, 3, 3, 3], 2) == [[0, 3], [1, 2, 4]]
    # One big file alone, the small ones together: 10->j0, 1,1,1 -> j1.
    assert balance_files([1, 10, 1, 1], 2) == [[1], [0, 2, 3]]
    # Equal sizes: lower job number wins ties, so files are dealt round-robin.
    assert balance_files([7, 7, 7, 7, 7], 3) == [[0, 3], [1, 4], [2]]


def test_balance_files_every_file_once_and_within_one_file_of_the_mean():
    sizes = [913, 17, 402, 402, 55, 780, 3, 610, 299, 120, 88, 501]
    slices = balance_files(sizes, 4)
    assert sorted(i for s in slices for i in s) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in s) for s in slices]
    assert max(loads) - sum(sizes) / 4 <= max(sizes)
    assert all(slices)


@pytest.mark.parametrize("jobs", [0, 4])
def test_balance_files_refuses_jobs_without_a_file(jobs):
    with pytest.raises(ConfigError, match=rf"--jobs {jobs}: the fileset has 3 file\(s\).*between 1 and 3"):
        balance_files([1, 2, 3], jobs)


def test_slurm_array_spec():
    assert slurm_array_spec([0, 1, 2, 3]) == "0-3"
    assert slurm_array_spec([9, 2, 5, 7, 8]) == "2,5,7-9"
    assert slurm_array_spec([4]) == "4"


def test_memory_mb_rounds_up_and_names_bad_values():
    assert memory_mb("2GiB") == 2048
    assert memory_mb("1500MB") == 1431  # 1.5e9 B = 1430.5 MiB, asked as 1431
    with pytest.raises(ConfigError, match=r"--memory 'lots': not an amount of memory; give e\.g\. 2GiB"):
        memory_mb("lots")


def test_job_script_slurm_directives_and_job_number(tmp_path):
    text = job_script(system="slurm", jobs_dir=tmp_path, skim_command=["python", "-m", "analysis.cli", "skim"],
                      cores=4, memory="3GiB", queue="short", extra=["--time=01:00:00"])
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert f"#SBATCH --output={tmp_path}/%a/batch.out" in lines
    assert {"#SBATCH --cpus-per-task=4", "#SBATCH --mem=3072M", "#SBATCH --partition=short",
            "#SBATCH --time=01:00:00"} <= set(lines)
    assert 'job="${1:-${SLURM_ARRAY_TASK_ID:-${HEPPREP_JOB_ID:-}}}"' in lines
    assert 'python -m analysis.cli skim "$dir/fileset.json" --job-id "$job" > "$dir/skim.log" 2>&1 &' in lines
    # HTCondor takes resources from the submit description, not from the script.
    condor = job_script(system="htcondor", jobs_dir=tmp_path, skim_command=["x"], cores=1, memory="1GiB")
    assert "#SBATCH" not in condor
    with pytest.raises(ConfigError, match="--system 'pbs': choose one of slurm, htcondor"):
        job_script(system="pbs", jobs_dir=tmp_path, skim_command=["x"], cores=1, memory="1GiB")


def test_htcondor_description_first_submission(tmp_path):
    text = htcondor_description(jobs_dir=tmp_path, cores=2, memory="4GiB",
                                extra=['+JobFlavour = "longlunch"'], n_jobs=12)
    lines = text.splitlines()
    assert lines[1:] == [
        "universe = vanilla",
        f"executable = {tmp_path}/job.sh",
        "arguments = $(job_id)",
        f"output = {tmp_path}/$(job_id)/batch.out",
        f"error = {tmp_path}/$(job_id)/batch.err",
        f"log = {tmp_path}/condor.log",
        "request_cpus = 2",
        "request_memory = 4096",
        "getenv = True",
        'environment = "HEPPREP_BATCH_ID=$(Cluster).$(Process)"',
        "should_transfer_files = NO",
        '+JobFlavour = "longlunch"',
        "job_id = $(Process)",
        "queue 12",
    ]


def test_htcondor_description_resubmission_queues_only_the_given_jobs(tmp_path):
    text = htcondor_description(jobs_dir=tmp_path, cores=1, memory="2GiB", job_ids=[3, 7])
    assert text.splitlines()[-1] == "queue job_id in (3, 7)"
    assert "job_id = $(Process)" not in text.splitlines()
    with pytest.raises(ValueError, match="exactly one of n_jobs"):
        htcondor_description(jobs_dir=tmp_path, cores=1, memory="2GiB", n_jobs=2, job_ids=[1])


def test_submit_command(tmp_path):
    assert submit_command("slurm", tmp_path, [1, 2, 6]) == [
        "sbatch", "--parsable", "--array=1-2,6", str(tmp_path / "job.sh")]
    assert submit_command("htcondor", tmp_path, [0], tmp_path / "job.sub") == [
        "condor_submit", str(tmp_path / "job.sub")]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_job_leaves_other_jobs_temporary_parts_alone(tmp_path):
    mine, theirs = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
    my_tmp = _touch(tmp_path / "DY" / f".part-{mine}-0-100.parquet.tmp-12-abcd")
    their_tmp = _touch(tmp_path / "DY" / f".part-{theirs}-0-100.parquet.tmp-13-ef01")
    assert remove_stale_temp_files(tmp_path, uuids={mine}) == 1
    assert not my_tmp.exists() and their_tmp.exists()
    assert remove_stale_temp_files(tmp_path) == 1  # a single run owns the whole folder
    assert not their_tmp.exists()


def test_job_ignores_other_jobs_parts_but_a_single_run_refuses_them(tmp_path):
    theirs = "22222222-2222-2222-2222-222222222222"
    _touch(tmp_path / "DY" / f"part-{theirs}-0-100.parquet")
    assert plan_chunks(tmp_path, {}, {"11111111-1111-1111-1111-111111111111"}, ["DY"], other_jobs=True) == ({}, [])
    with pytest.raises(StageInputError, match="an input file that is not in this fileset"):
        plan_chunks(tmp_path, {}, set(), ["DY"])
    # A part of one of the job's own files from another chunk size is still an error.
    with pytest.raises(StageInputError, match="another --chunksize"):
        plan_chunks(tmp_path, {}, {theirs}, ["DY"], other_jobs=True)


def test_job_script_records_a_job_the_batch_system_terminates(tmp_path):
    import signal
    import subprocess
    import time

    (tmp_path / "0").mkdir()
    script = tmp_path / "job.sh"
    script.write_text(job_script(system="slurm", jobs_dir=tmp_path, skim_command=["bash", "-c", "sleep 60"],
                                 cores=1, memory="1GiB"))
    job = subprocess.Popen(["bash", str(script)], env={"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0",
                                                       "SLURM_ARRAY_JOB_ID": "88"})
    for _ in range(100):  # until the skim (here: sleep) is running
        if (tmp_path / "0" / "started").exists():
            break
        time.sleep(0.05)
    time.sleep(0.2)
    job.send_signal(signal.SIGTERM)  # what Slurm sends at the time limit or on scancel
    assert job.wait(timeout=10) == 143
    assert (tmp_path / "0" / "exit_code").read_text() == "143\n"
    assert (tmp_path / "0" / "skim.log").read_text().endswith("job.sh: terminated by the batch system\n")
    assert (tmp_path / "0" / "started").read_text().split()[-1] == "88_0"


def test_job_states_from_the_files_jobs_leave(tmp_path):
    import json

    from analysis.batch.status import format_job_states, job_states

    jobs = tmp_path / "jobs"
    (tmp_path / "manifests").mkdir()
    record = {"jobs": [{"job": k, "files": 2} for k in range(5)]}
    for k in range(5):
        (jobs / str(k)).mkdir(parents=True)
    (jobs / "submit.json").write_text(json.dumps(record))
    # 0: done, having skipped a bad file; 1: started only; 2: nothing yet;
    # 3: exit 0 without a manifest; 4: the skim's one-line error.
    (jobs / "0" / "exit_code").write_text("0\n")
    (tmp_path / "manifests" / "job-0.json").write_text(json.dumps({"complete": True, "files": [
        {"path": "/d/a.root", "status": "done", "error": None},
        {"path": "/d/b.root", "status": "skipped", "error": "empty file (0 bytes)"}]}))
    (jobs / "1" / "started").write_text("2026-01-01T00:00:00Z node7 12_1\n")
    (jobs / "3" / "exit_code").write_text("0\n")
    (jobs / "4" / "exit_code").write_text("1\n")
    (jobs / "4" / "skim.log").write_text("reading\nhepprep: error: /d/x.root: no such file\n\n")

    states = job_states(tmp_path)
    assert [s.state for s in states] == ["done", "running", "missing", "failed", "failed"]
    assert states[0].skipped == ("/d/b.root: empty file (0 bytes)",)
    assert states[3].error == f"exit code 0 but its manifest is missing ({tmp_path}/manifests/job-3.json)"
    assert states[4].error == "exit code 1: hepprep: error: /d/x.root: no such file"
    assert format_job_states("skim", states).splitlines() == [
        "skim: 5 jobs: 1 done, 2 failed, 1 running, 1 missing; 1 bad input file(s) skipped",
        "  job 0 skipped /d/b.root: empty file (0 bytes)",
        "  job 1 running (2 file(s)): started, not finished",
        "  job 2 missing (2 file(s)): not started: queued, or never submitted",
        f"  job 3 failed (2 file(s)): exit code 0 but its manifest is missing ({tmp_path}/manifests/job-3.json)",
        "  job 4 failed (2 file(s)): exit code 1: hepprep: error: /d/x.root: no such file",
        "resubmit the failed jobs alone with: hepprep submit --resubmit-failed skim",
    ]
