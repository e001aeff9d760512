"""Batch submission tests: `hepprep submit --dry-run` job slices run locally, --status, --merge-manifests, resubmission.

No batch system is needed: the job script is run with bash exactly as a Slurm array task
(``SLURM_ARRAY_TASK_ID``) or an HTCondor job (its argument) would run it, and the merged
skim is compared row by row with a single ``run_skim`` over the whole fileset. A real
Slurm is in tests/integration/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from analysis.batch.status import job_states, merge_job_manifests
from analysis.cli import main
from analysis.config import config_from_dict
from analysis.errors import StageInputError
from analysis.skim.runner import run_skim
from tests._skim_helpers import read_skim

CHUNKSIZE = 1_500
# Datasets whose fileset metadata lacks sumw: `hepprep submit` must sum genWeight over all
# of their files once, since a job sees only some of them.
NO_SUMW = ("DYJetsToLL", "Run2012B_TauPlusX", "Run2012C_TauPlusX")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """fileset.json of a 6k-event generated sample (2 files per dataset), DY and data without sumw."""
    from analysis.generate.runner import generate_samples

    root = tmp_path_factory.mktemp("submit-sample")
    config = config_from_dict({"generate": {"events": 6_000, "files_per_sample": 2,
                                            "data_scale": 0.1, "seed": 21}})
    generated = generate_samples(root, config, progress=False)
    raw = json.loads(generated.read_text())
    for name in NO_SUMW:
        raw[name]["metadata"].pop("sumw", None)  # generated MC has it; pseudo-data has none
    fileset = root / "fileset-no-sumw.json"
    fileset.write_text(json.dumps(raw))
    return fileset


@pytest.fixture(scope="module")
def single_skim(sample, tmp_path_factory) -> Path:
    """The reference: one `run_skim` over the whole fileset."""
    out = tmp_path_factory.mktemp("submit-single") / "skim"
    run_skim(sample, out, config_from_dict({"skim": {"chunksize": CHUNKSIZE}}), executor="iterative",
             progress=False)
    return out


def _run_job(script: Path, job: int, *, condor: bool = False) -> subprocess.CompletedProcess:
    """Run one job the way the batch system would: array index in the environment, or an argument."""
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_ARRAY_TASK_ID", "HEPPREP_JOB_ID")}
    if condor:
        return subprocess.run(["bash", str(script), str(job)], env=env, capture_output=True, text=True)
    return subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(job)},
                          capture_output=True, text=True)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `hepprep` in-process; (exit code, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_slurm_dry_run_jobs_run_locally_give_the_single_skim(sample, single_skim, tmp_path, capsys):
    out = tmp_path / "batch"
    code, stdout, _ = _cli(capsys, "submit", str(sample), "--out", str(out), "--jobs", "2",
                           "--chunksize", str(CHUNKSIZE), "--dry-run")
    assert code == 0
    script = out / "jobs" / "job.sh"
    assert stdout == f"sbatch --parsable --array=0-1 {script}\n"

    # sumw computed once over the whole dataset, copied into every slice that holds it.
    single_manifest = json.loads((single_skim / "manifest.json").read_text())
    for k in range(2):
        for name, entry in json.loads((out / "jobs" / str(k) / "fileset.json").read_text()).items():
            assert entry["metadata"]["sumw"] == single_manifest["datasets"][name]["sumw"]
    assert {n for n, d in single_manifest["datasets"].items() if d["sumw_source"].startswith("computed")} == set(NO_SUMW)
    slices = [json.loads((out / "jobs" / str(k) / "fileset.json").read_text()) for k in range(2)]
    assert sorted(p for s in slices for e in s.values() for p in e["files"]) == sorted(
        str((sample.parent / p).resolve()) for e in json.loads(sample.read_text()).values() for p in e["files"])

    assert [s.state for s in job_states(out)] == ["missing"] * 2
    for k in range(2):
        done = _run_job(script, k)
        assert done.returncode == 0, (out / "jobs" / str(k) / "skim.log").read_text()
        assert (out / "manifests" / f"job-{k}.json").is_file()
        assert (out / "manifests" / f"job-{k}.cutflow.json").is_file()
    assert not (out / "manifest.json").exists()  # jobs never write the run's own manifest

    code, stdout, _ = _cli(capsys, "skim", "--status", str(out))
    assert code == 0
    assert stdout.splitlines()[0] == f"{out}: 2 jobs: 2 done, 0 failed, 0 running, 0 missing"
    assert f"hepprep skim --merge-manifests {out}" in stdout
    code, _, stderr = _cli(capsys, "skim", "--merge-manifests", str(out))
    assert code == 0, stderr

    pd.testing.assert_frame_equal(read_skim(out), read_skim(single_skim))
    assert (out / "cutflow.json").read_bytes() == (single_skim / "cutflow.json").read_bytes()
    assert json.loads((out / "manifest.json").read_text()) == single_manifest
    # provenance included: the fileset and its files, the parts' fingerprint (tests/test_provenance.py)
    assert single_manifest["provenance"]["inputs"][0]["path"] == str(sample)
    job = json.loads((out / "manifests" / "job-0.json").read_text())["provenance"]
    assert job["inputs"][0]["path"] == str(out / "jobs" / "0" / "fileset.json")
    assert job["config_hash"] == single_manifest["provenance"]["config_hash"]


def test_htcondor_failed_job_is_listed_and_resubmitted_alone(sample, single_skim, tmp_path, capsys):
    # One input is a copy that disappears before the jobs run (a flaky storage element).
    kept = ("TTbar", "DYJetsToLL", "Run2012B_TauPlusX")
    raw = {name: entry for name, entry in json.loads(sample.read_text()).items() if name in kept}
    original = (sample.parent / next(iter(raw["TTbar"]["files"]))).resolve()
    flaky = tmp_path / "flaky" / original.name
    flaky.parent.mkdir()
    shutil.copy(original, flaky)
    files = raw["TTbar"]["files"]
    raw["TTbar"]["files"] = {(str(flaky) if (sample.parent / p).resolve() == original
                              else str((sample.parent / p).resolve())): t for p, t in files.items()}
    for entry in raw.values():
        entry["files"] = {str((sample.parent / p).resolve()): t for p, t in entry["files"].items()}
    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps(raw))

    out = tmp_path / "batch"
    code, stdout, _ = _cli(capsys, "submit", str(fileset), "--out", str(out), "--jobs", "2",
                           "--system", "htcondor", "--chunksize", str(CHUNKSIZE), "--dry-run")
    assert code == 0
    description = out / "jobs" / "job.sub"
    assert stdout == f"condor_submit {description}\n"
    assert description.read_text().splitlines()[-2:] == ["job_id = $(Process)", "queue 2"]
    bad_job = next(k for k in range(2)
                   if str(flaky) in json.loads((out / "jobs" / str(k) / "fileset.json").read_text())["TTbar"]["files"])
    good_job = 1 - bad_job

    flaky.rename(flaky.with_suffix(".away"))
    assert _run_job(out / "jobs" / "job.sh", good_job, condor=True).returncode == 0
    assert _run_job(out / "jobs" / "job.sh", bad_job, condor=True).returncode == 1

    states = {s.job: s for s in job_states(out)}
    assert states[good_job].state == "done" and states[bad_job].state == "failed"
    assert states[bad_job].error == f"exit code 1: hepprep: error: {flaky}: no such file"
    code, stdout, _ = _cli(capsys, "skim", "--status", str(out))
    assert stdout.splitlines()[0] == f"{out}: 2 jobs: 1 done, 1 failed, 0 running, 0 missing"
    assert f"  job {bad_job} failed" in stdout and f"{flaky}: no such file" in stdout
    assert f"hepprep submit --resubmit-failed {out}" in stdout

    with pytest.raises(StageInputError, match=rf"1 of 2 jobs are not done \(job {bad_job} failed\).*"
                                              rf"hepprep submit --resubmit-failed"):
        merge_job_manifests(out)
    code, _, stderr = _cli(capsys, "skim", "--merge-manifests", str(out))
    assert code == 1 and stderr.startswith("hepprep: error: ")

    code, stdout, _ = _cli(capsys, "submit", "--resubmit-failed", str(out), "--dry-run")
    resubmit = out / "jobs" / "resubmit-1.sub"
    assert stdout == f"condor_submit {resubmit}\n"
    assert resubmit.read_text().splitlines()[-1] == f"queue job_id in ({bad_job})"

    flaky.with_suffix(".away").rename(flaky)  # the storage element is back
    assert _run_job(out / "jobs" / "job.sh", bad_job, condor=True).returncode == 0
    assert [s.state for s in job_states(out)] == ["done", "done"]
    merged = merge_job_manifests(out)
    assert merged["complete"] and len(merged["files"]) == 6
    reference = read_skim(single_skim)
    reference = reference[reference["dataset"].isin(kept)].reset_index(drop=True)
    pd.testing.assert_frame_equal(read_skim(out), reference)


def test_submit_runs_sbatch_and_records_the_array_job(sample, tmp_path, fake_sbatch, capsys):
    out = tmp_path / "batch"
    code, _, stderr = _cli(capsys, "submit", str(sample), "--out", str(out), "--jobs", "4",
                           "--memory", "3GiB", "--queue", "short", "--extra=--time=00:30:00")
    assert code == 0, stderr
    script = out / "jobs" / "job.sh"
    assert fake_sbatch.read_text() == f"--parsable --array=0-3 {script}\n"
    record = json.loads((out / "jobs" / "submit.json").read_text())
    assert record["submissions"] == [{"jobs": [0, 1, 2, 3], "command": [
        "sbatch", "--parsable", "--array=0-3", str(script)], "batch_id": "4242", "dry_run": False}]
    assert {"#SBATCH --mem=3072M", "#SBATCH --partition=short", "#SBATCH --time=00:30:00"} <= set(
        script.read_text().splitlines())
    assert "submitted to slurm as 4242" in stderr

    # Job 2 failed: only it is resubmitted, and its old exit code and log are cleared.
    (out / "jobs" / "2" / "exit_code").write_text("137\n")
    (out / "jobs" / "2" / "skim.log").write_text("Killed\n")
    assert [s.state for s in job_states(out)] == ["missing", "missing", "failed", "missing"]
    assert job_states(out)[2].error == "exit code 137: Killed"
    code, _, stderr = _cli(capsys, "submit", "--resubmit-failed", str(out))
    assert code == 0, stderr
    assert fake_sbatch.read_text().splitlines()[-1] == f"--parsable --array=2 {script}"
    assert json.loads((out / "jobs" / "submit.json").read_text())["submissions"][-1]["jobs"] == [2]
    assert [s.state for s in job_states(out)] == ["missing"] * 4

    code, _, stderr = _cli(capsys, "submit", str(sample), "--out", str(out), "--jobs", "2")
    assert code == 1
    assert stderr == (f"hepprep: error: {out}: already holds a batch submission (jobs/submit.json); "
                      f"follow it with `hepprep skim --status {out}`, resubmit its failed jobs with "
                      f"`hepprep submit --resubmit-failed {out}`, or use a fresh --out\n")


def test_submit_without_sbatch_names_the_fix_and_can_be_rerun(sample, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    out = tmp_path / "batch"
    code, _, stderr = _cli(capsys, "submit", str(sample), "--out", str(out), "--jobs", "2")
    assert code == 1
    assert stderr == ("hepprep: error: sbatch: command not found, so the slurm jobs cannot be submitted "
                      "from this machine; run on a slurm submit node, or use --dry-run to write the "
                      "jobs and submit them yourself\n")
    code, _, _ = _cli(capsys, "submit", str(sample), "--out", str(out), "--jobs", "2", "--dry-run")
    assert code == 0


@pytest.mark.parametrize("argv, message", [
    (["skim", "--status", "x", "fileset.json"], "--status DIR and --merge-manifests DIR take only the skim folder"),
    (["skim", "fileset.json"], "give FILESET and --out DIR (or --status DIR / --merge-manifests DIR"),
    (["submit", "fileset.json", "--out", "x"], "give FILESET, --out DIR and --jobs N (or --resubmit-failed DIR)"),
    (["submit", "--resubmit-failed", "x", "--jobs", "3"], "--resubmit-failed DIR takes only the skim folder"),
    (["skim", "--status", "nowhere"], "nowhere: no batch submission here (no jobs/submit.json)"),
])
def test_cli_usage_errors_name_the_fix(argv, message, capsys):
    code, _, stderr = _cli(capsys, *argv)
    assert code in (1, 2)
    assert stderr.startswith("hepprep: error: ") and message in stderr


def test_missing_sumw_is_summed_over_every_readable_file(nano_dy_path, tmp_path):
    import math

    import uproot

    from analysis.batch.submit import fill_missing_sumw
    from analysis.config import default_config
    from analysis.errors import InputFileError
    from analysis.skim.inputs import DatasetInfo, InputFile

    def dataset():
        return DatasetInfo(name="DY", process="DY", label=0, is_mc=True, xsec_pb=6025.2, sumw=None,
                           sumw_source="computed", files=[InputFile("DY", str(nano_dy_path), "Events"),
                                                          InputFile("DY", str(tmp_path / "gone.root"), "Events")])

    # the Runs tree's sum (the file's events before any filter), as a single skim takes it
    runs_sumw = uproot.open(nano_dy_path)["Runs"]["genEventSumw_"].array(library="np")
    info = dataset()
    errors = fill_missing_sumw({"DY": info}, default_config(), skip_bad_files=True)
    assert info.sumw == math.fsum(runs_sumw.astype(float))
    assert info.sumw_source == "computed from Runs.genEventSumw_"
    assert errors == [{"dataset": "DY", "path": str(tmp_path / "gone.root"), "cause": "no such file"}]
    with pytest.raises(InputFileError, match=rf"^{tmp_path / 'gone.root'}: no such file$"):
        fill_missing_sumw({"DY": dataset()}, default_config(), skip_bad_files=False)


@pytest.mark.parametrize("options, message", [
    (["--jobs", "99"], "--jobs 99: the fileset has 18 file(s) and a job skims whole files; give --jobs between 1 and 18"),
    (["--jobs", "2", "--system", "pbs"], "--system 'pbs': choose one of slurm, htcondor"),
    (["--jobs", "2", "--memory", "lots"], "--memory 'lots': not an amount of memory; give e.g. 2GiB or 1500MB"),
    (["--jobs", "2", "--cores", "0"], "--cores 0: give at least 1 CPU per job"),
])
def test_bad_submit_options_are_refused_before_anything_is_written(sample, tmp_path, capsys, options, message):
    out = tmp_path / "batch"
    code, _, stderr = _cli(capsys, "submit", str(sample), "--out", str(out), "--dry-run", *options)
    assert (code, stderr) == (1, f"hepprep: error: {message}\n")
    assert not out.exists()


def test_jobs_the_queue_no_longer_holds_without_exit_code_failed(sample, tmp_path, fake_sbatch, capsys):
    out = tmp_path / "batch"
    code, _, stderr = _cli(capsys, "submit", str(sample), "--out", str(out), "--jobs", "4")
    assert code == 0, stderr
    for k in (0, 2):  # started; 1 and 3 never did
        (out / "jobs" / str(k) / "started").write_text("2026-11-23T12:00:00Z node1 4242_k\n")
    # Slices 0 and 1 were killed without a trace (SIGKILL, node failure): squeue lost them.
    (tmp_path / "squeue-out.txt").write_text("4242_2\n4242_3\n")
    states = job_states(out)
    assert [s.state for s in states] == ["failed", "failed", "running", "missing"]
    assert states[0].error == (f"started, left no exit code and is no longer in the slurm queue "
                               f"(batch job 4242_0): killed without a trace (node failure, time or "
                               f"memory limit?); see {out.resolve()}/jobs/0/batch.out")
    assert states[1].error.startswith("never started, left no exit code")
    assert (tmp_path / "squeue-calls.txt").read_text() == "--noheader --array --format=%i --jobs=4242\n"
    code, _, stderr = _cli(capsys, "submit", "--resubmit-failed", str(out))
    assert code == 0, stderr
    assert fake_sbatch.read_text().splitlines()[-1].startswith("--parsable --array=0-1 ")
    # A job that finished left its exit code before leaving the queue: not a lost one.
    (out / "jobs" / "2" / "exit_code").write_text("3\n")
    (tmp_path / "squeue-out.txt").write_text("4242_0\n4242_1\n")
    assert [s.state for s in job_states(out)] == ["missing", "missing", "failed", "failed"]
    assert job_states(out)[2].error.startswith("exit code 3")
    # Once every job has left an exit code, the batch system is not asked at all.
    for k in range(4):
        (out / "jobs" / str(k) / "exit_code").write_text("3\n")
    (tmp_path / "squeue-calls.txt").unlink()
    assert [s.state for s in job_states(out)] == ["failed"] * 4
    assert not (tmp_path / "squeue-calls.txt").exists()


@pytest.mark.parametrize("stderr, states", [
    ("slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
     ["running", "missing"]),  # cannot ask: nothing concluded
    ("slurm_load_jobs error: Invalid job id specified", ["failed", "failed"]),  # aged out: gone
])
def test_queue_errors_tell_unreachable_from_gone(sample, tmp_path, fake_sbatch, capsys, stderr, states):
    out = tmp_path / "batch"
    assert _cli(capsys, "submit", str(sample), "--out", str(out), "--jobs", "2")[0] == 0
    (out / "jobs" / "0" / "started").write_text("now\n")
    squeue = tmp_path / "bin" / "squeue"
    squeue.write_text(f"#!/usr/bin/env bash\necho '{stderr}' >&2\nexit 1\n")
    assert [s.state for s in job_states(out)] == states


def test_htcondor_queue_is_read_in_submission_order(tmp_path, monkeypatch):
    from analysis.batch.status import _lost_jobs, queued_tasks

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "condor_q").write_text('#!/usr/bin/env bash\n[ "$1" = 77 ] && printf "1\\n"\n'
                                      '[ "$1" = 78 ] && printf "0\\n2\\n"\nexit 0\n')
    (bin_dir / "condor_q").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert queued_tasks("htcondor", "78") == {0, 2}
    # Cluster 77 ran slices 0-3 (ProcId = slice), then cluster 78 resubmitted 1, 3 and 2:
    # its ProcIds 0, 1, 2 are slices 1, 3, 2. Slice 4 was only written (dry run).
    record = {"system": "htcondor", "submissions": [
        {"jobs": [0, 1, 2, 3], "batch_id": "77", "dry_run": False},
        {"jobs": [1, 3, 2], "batch_id": "78", "dry_run": False},
        {"jobs": [4], "batch_id": None, "dry_run": True}]}
    every_job = {0, 1, 2, 3, 4}
    assert _lost_jobs(record, every_job) == {0: "77.0", 3: "78.1"}
    monkeypatch.setenv("PATH", str(tmp_path))  # no condor_q: nothing concluded
    assert queued_tasks("htcondor", "78") is None and _lost_jobs(record, every_job) == {}
