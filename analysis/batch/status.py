"""Batch submission (skim on Slurm or HTCondor): the state of each job, and merging their manifests.

A job of `analysis.batch.submit` leaves ``jobs/<k>/started`` when it begins, ``jobs/<k>/exit_code``
and ``jobs/<k>/skim.log`` when it ends, and ``manifests/job-<k>.json`` from the skim. From
those, `job_states` tells which jobs are done, failed (with the error), running, or
missing (not started). A job killed without a trace (SIGKILL, node failure) leaves no exit
code and would look running or missing for ever, so the batch system is asked too
(``squeue``, ``condor_q``; `queued_tasks`): a job that it no longer holds and that left no
exit code failed.

`merge_job_manifests` turns the per-job manifests of a finished run into the
``manifest.json`` and ``cutflow.json`` a single ``hepprep skim`` would have written: the
cutflow is summed from the parts themselves in the same order, so it is identical.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.batch.record import JOBS_DIR, read_submit_record
from analysis.config import load_config
from analysis.core.io import write_json_atomic
from analysis.core.names import dataset_folder
from analysis.core.provenance import build_provenance
from analysis.errors import StageInputError
from analysis.skim.inputs import DatasetInfo, InputFile
from analysis.skim.manifest import (
    build_cutflow,
    build_manifest,
    job_manifest_path,
    keep_provenance,
    skim_inputs,
)
from processors.parts import read_part_summary

__all__ = ["JOB_STATES", "JobState", "format_job_states", "job_states", "merge_job_manifests",
           "queued_tasks"]

JOB_STATES = ("done", "failed", "running", "missing")


@dataclass(frozen=True)
class JobState:
    """One batch job of a submission.

    ``state`` is one of `JOB_STATES`; ``error`` says why a job failed; ``skipped`` lists the
    bad input files a done job skipped (``--skip-bad-files``) as ``"<path>: <cause>"``.
    """

    job: int
    state: str
    files: int
    error: str | None = None
    skipped: tuple[str, ...] = field(default_factory=tuple)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _log_error(log: Path) -> str | None:
    """The error a job's skim printed: its ``hepprep: error:`` line, else its last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    errors = [line for line in lines if line.startswith("hepprep: error:")]
    return (errors or lines or [None])[-1]


def _job_state(out: Path, job: dict[str, Any]) -> JobState:
    k = job["job"]
    folder = out / JOBS_DIR / str(k)
    manifest = _read_json(job_manifest_path(out, k))
    # Written by job.sh when the skim ends; anything but "0" is a failure.
    rc = (folder / "exit_code").read_text().strip() if (folder / "exit_code").is_file() else None
    skipped = tuple(f"{f['path']}: {f['error']}" for f in (manifest or {}).get("files", [])
                    if f["status"] == "skipped")
    if rc is not None and rc != "0":
        error = _log_error(folder / "skim.log") or f"no log in {folder}"
        return JobState(k, "failed", job["files"], f"exit code {rc}: {error}")
    if manifest is not None and manifest.get("complete"):
        return JobState(k, "done", job["files"], None, skipped)
    if rc == "0":
        why = "its manifest is missing" if manifest is None else "its manifest lists unfinished files"
        return JobState(k, "failed", job["files"], f"exit code 0 but {why} ({job_manifest_path(out, k)})")
    if (folder / "started").is_file():
        return JobState(k, "running", job["files"])
    return JobState(k, "missing", job["files"])


def queued_tasks(system: str, batch_id: str) -> set[int] | None:
    """Slices of the batch submission ``batch_id`` that the batch system still holds.

    Slurm: the array task ids (the slice numbers) that ``squeue`` lists, pending or
    running. HTCondor: the ``ProcId`` of the jobs ``condor_q`` lists (idle, running or
    held), counted in the submission's order. None when the batch system cannot be asked
    (command not found, controller down): then nothing is concluded from the queue.
    """
    if system == "slurm":
        command = ["squeue", "--noheader", "--array", "--format=%i", f"--jobs={batch_id}"]
    else:
        command = ["condor_q", batch_id, "-af", "ProcId"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        # A job that left the controller's memory is unknown to it: that is an answer.
        return set() if "Invalid job id" in done.stderr else None
    if system == "slurm":
        return {int(m.group(1)) for m in re.finditer(rf"^{re.escape(batch_id)}_(\d+)$",
                                                     done.stdout, re.MULTILINE)}
    return {int(v) for v in done.stdout.split() if v.isdigit()}


def _lost_jobs(record: dict[str, Any], candidates: set[int]) -> dict[int, str]:
    """Job -> its batch task, for each of ``candidates`` whose latest submission the batch system no longer holds.

    Jobs whose latest submission was a dry run (submitted by hand) or whose batch system
    could not be asked are left out. Only the submissions of candidates are asked about.
    """
    latest: dict[int, tuple[dict[str, Any], int]] = {}
    for submission in record.get("submissions", []):
        for i, k in enumerate(submission["jobs"]):
            latest[k] = (submission, i)
    answers: dict[str, set[int] | None] = {}
    gone = {}
    for k, (submission, i) in latest.items():
        if k not in candidates:
            continue
        batch_id = submission.get("batch_id")
        if submission.get("dry_run") or not batch_id:
            continue
        if batch_id not in answers:
            answers[batch_id] = queued_tasks(record["system"], batch_id)
        held = answers[batch_id]
        task = k if record["system"] == "slurm" else i  # HTCondor numbers procs in queue order
        if held is not None and task not in held:
            gone[k] = f"{batch_id}_{task}" if record["system"] == "slurm" else f"{batch_id}.{task}"
    return gone


def job_states(out_dir: str | Path) -> list[JobState]:
    """The state of every job of the submission in ``out_dir``, in job order.

    A job that left no exit code but that the batch system no longer holds (killed
    without a trace: SIGKILL, node failure) is ``failed``; its batch log is
    ``jobs/<k>/batch.out``.
    """
    out = Path(out_dir).resolve()
    record = read_submit_record(out)
    states = [_job_state(out, job) for job in record["jobs"]]
    # The batch system is asked only about the jobs left without an exit code, and their
    # files are read again after its answer: a job that leaves the queue has written its
    # exit code already, so a job finishing in between is never taken for a lost one.
    unfinished = {s.job for s in states if s.state in ("running", "missing")}
    gone = _lost_jobs(record, unfinished) if unfinished else {}
    for n, job in enumerate(record["jobs"]):
        if job["job"] not in gone:
            continue
        state = _job_state(out, job)  # read again: it may have ended since the first read
        if state.state in ("running", "missing"):
            what = "started" if state.state == "running" else "never started"
            state = JobState(job["job"], "failed", job["files"],
                             f"{what}, left no exit code and is no longer in the "
                             f"{record['system']} queue (batch job {gone[job['job']]}): killed "
                             f"without a trace (node failure, time or memory limit?); see "
                             f"{out / JOBS_DIR / str(job['job']) / 'batch.out'}")
        states[n] = state
    return states


def format_job_states(out_dir: str | Path, states: list[JobState]) -> str:
    """Text for ``hepprep skim --status``: counts, then every job that is not done."""
    counts = {s: sum(1 for j in states if j.state == s) for s in JOB_STATES}
    n_skipped = sum(len(j.skipped) for j in states)
    lines = [f"{out_dir}: {len(states)} jobs: " + ", ".join(f"{counts[s]} {s}" for s in JOB_STATES)
             + (f"; {n_skipped} bad input file(s) skipped" if n_skipped else "")]
    hints = {"running": "started, not finished", "missing": "not started: queued, or never submitted"}
    for job in states:
        if job.state != "done":
            lines.append(f"  job {job.job} {job.state} ({job.files} file(s)): "
                         f"{job.error or hints[job.state]}")
        lines += [f"  job {job.job} skipped {s}" for s in job.skipped]
    if counts["failed"]:
        lines.append(f"resubmit the failed jobs alone with: hepprep submit --resubmit-failed {out_dir}")
    if counts["done"] == len(states):
        lines.append(f"all jobs done; write manifest.json and cutflow.json with: "
                     f"hepprep skim --merge-manifests {out_dir}")
    return "\n".join(lines)


def _merged_provenance(out: Path, record: dict[str, Any], job_records: list[tuple[int, Any]],
                       datasets: dict[str, DatasetInfo]) -> dict[str, Any]:
    """The provenance of the merged manifest, as one `hepprep skim` of the whole fileset records it.

    Its configuration is the one the jobs recorded (when they all agree; else the
    ``jobs/config.toml`` they were given). When a job ran other code or another
    configuration than this record says, ``jobs`` lists every job's version, commit and
    configuration hash.
    """
    recorded = {k: p for k, p in job_records if isinstance(p, dict) and isinstance(p.get("config"), dict)}
    hashes = {p.get("config_hash") for p in recorded.values()}
    if len(recorded) == len(job_records) and len(hashes) == 1:
        config = next(iter(recorded.values()))["config"]
    else:
        config = load_config(out / JOBS_DIR / "config.toml").model_dump(mode="json")
    fileset = record.get("fileset_path") or record["fileset"]
    merged = build_provenance("skim", config=config, inputs=skim_inputs(fileset, datasets), seeds={})
    keys = ("hepprep_version", "git_commit", "config_hash")
    jobs = [{"job": k, **{key: (p or {}).get(key) for key in keys}} for k, p in job_records]
    if any(job[key] != merged[key] for job in jobs for key in keys):
        merged["jobs"] = jobs
    return merged


def merge_job_manifests(out_dir: str | Path) -> dict[str, Any]:
    """Write ``manifest.json`` and ``cutflow.json`` of a finished batch run from its jobs'.

    Parameters
    ----------
    out_dir : str or Path
        The shared skim folder of a `analysis.batch.submit.submit_skim` run.

    Returns
    -------
    dict
        The merged manifest, in the format of a single ``hepprep skim`` run.

    Raises
    ------
    StageInputError
        A job is not done (named, with the fix); a part on disk that no job wrote, or a
        part a job wrote that is gone.
    """
    out = Path(out_dir).resolve()
    record = read_submit_record(out)
    states = job_states(out)
    unfinished = [s for s in states if s.state != "done"]
    if unfinished:
        named = "; ".join(f"job {s.job} {s.state}" for s in unfinished[:5])
        more = f" and {len(unfinished) - 5} more" if len(unfinished) > 5 else ""
        raise StageInputError(f"{out}: cannot merge the job manifests, {len(unfinished)} of "
                              f"{len(states)} jobs are not done ({named}{more}); see `hepprep skim "
                              f"--status {out_dir}` and resubmit the failed ones with `hepprep "
                              f"submit --resubmit-failed {out_dir}`")
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    job_records, processors = [], []
    for state in states:
        job_manifest = json.loads(job_manifest_path(out, state.job).read_text())
        job_records.append((state.job, job_manifest.get("provenance")))
        processors.append(job_manifest.get("processor"))
        for entry in job_manifest["files"]:
            entries[(entry["dataset"], entry["path"])] = entry
    listed = {c["part"] for e in entries.values() for c in e["chunks"]}
    on_disk = {f"{dataset_folder(name)}/{p.name}" for name in record["datasets"]
               for p in (out / dataset_folder(name)).glob("part-*.parquet")}
    for parts, why in ((sorted(on_disk - listed), "is on disk but no job's manifest lists it (left by "
                        "another run?); delete it, or skim into a fresh --out"),
                       (sorted(listed - on_disk), "is listed by a job's manifest but missing from "
                        "disk; resubmit that job, or skim into a fresh --out")):
        if parts:
            raise StageInputError(f"{out / parts[0]} {why} ({len(parts)} part(s) like it)")

    datasets = {name: DatasetInfo.from_record(name, d) for name, d in record["datasets"].items()}
    plan, errors = {}, []
    for name, path, tree in record["files"]:
        entry = entries.get((name, path))
        if entry is None:
            raise StageInputError(f"{path}: in the submitted fileset but in no job's manifest; "
                                  f"the job slices under {out / JOBS_DIR} were changed after submission")
        datasets[name].files.append(InputFile(dataset=name, path=path, treename=tree,
                                              entries=entry["entries"], uuid=entry["uuid"] or "",
                                              profile=entry["profile"] or "", error=entry["error"]))
        plan[path] = [c["part"] for c in entry["chunks"]]
        if entry["error"] is not None:
            errors.append({"dataset": name, "path": path, "cause": entry["error"]})
    summaries = {rel: read_part_summary(out / rel) for rel in sorted(listed)}
    manifest = build_manifest(out_dir=out, fileset=record["fileset"], chunksize=record["chunksize"],
                              datasets=datasets, plan=plan, summaries=summaries, errors=errors,
                              skip_bad_files=record["skip_bad_files"],
                              provenance=_merged_provenance(out, record, job_records, datasets),
                              processor=next((p for p in processors if p is not None), None))
    manifest = keep_provenance(out / "manifest.json", manifest)  # merged again: the same record
    write_json_atomic(out / "cutflow.json", build_cutflow(summaries, datasets))
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
