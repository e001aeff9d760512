"""Batch submission (skim on Slurm or HTCondor, no dask scheduler): `submit_skim` and `resubmit_failed`.

`submit_skim` splits a fileset into N slices of whole files, balanced by file size, and
writes under ``<out>/jobs/``:

    submit.json        what was submitted: datasets (with sumw), file order, slices, submissions
    config.toml        the effective configuration every job runs with
    job.sh             the job script (Slurm array job; HTCondor executable)
    job.sub            HTCondor only: the submit description
    <k>/fileset.json   slice k, a coffea fileset with the full dataset metadata

then submits the slices as one Slurm array (``sbatch --array=0-(N-1)``) or one HTCondor
cluster (``queue N``). Each job runs ``hepprep skim <slice> --out <out> --job-id k``: its
parts land in the shared skim folder (written atomically, named by file and entry range)
and its bookkeeping in ``manifests/job-<k>.json``. ``hepprep skim --status`` and
``--merge-manifests`` (`analysis.batch.status`) follow and finish the run.

A job sees only its slice, so the sum of generator weights of a dataset without ``sumw``
could not be formed inside a job: it is computed here, once, over every file of the
dataset, and written into every slice's metadata.
"""

from __future__ import annotations

import heapq
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.batch.record import JOBS_DIR, SUBMIT_RECORD, read_submit_record
from analysis.batch.scripts import (JOB_SCRIPT, SYSTEMS, check_submission, htcondor_description, job_script,
                                    memory_mb, submit_command)
from analysis.config import Config, config_to_toml, with_overrides
from analysis.core.io import write_json_atomic, write_text_atomic
from analysis.core.net import has_credentials, redact
from analysis.core.progress import stage_console
from analysis.errors import ConfigError, HepprepError, InputFileError, StageInputError
from analysis.skim.inputs import DatasetInfo, check_file, dataset_sumw, load_fileset, resolve_datasets
from analysis.skim.manifest import job_cutflow_path, job_manifest_path
from analysis.skim.plugins import load_processor, portable_spec

__all__ = ["JOBS_DIR", "SUBMIT_RECORD", "balance_files", "fill_missing_sumw", "read_submit_record",
           "resubmit_failed", "submit_skim"]

_JOB_FILES = ("exit_code", "started", "skim.log", "batch.out", "batch.err")


def balance_files(sizes: Sequence[int], n_jobs: int) -> list[list[int]]:
    """Deal files to ``n_jobs`` jobs so that the jobs' total sizes are close.

    Largest file first, each to the job with the smallest total so far (ties: the lower job
    number), which keeps the largest job within one file of the mean. Deterministic.

    Parameters
    ----------
    sizes : sequence of int
        One size per file (bytes, or any measure of work).
    n_jobs : int
        At least 1 and at most ``len(sizes)``: every job gets at least one file.

    Returns
    -------
    list of list of int
        For each job, the indexes of its files in increasing order.

    >>> balance_files([5, 4, 3, 3, 3], 2)
    [[0, 3], [1, 2, 4]]
    """
    if not 1 <= n_jobs <= len(sizes):
        raise ConfigError(f"--jobs {n_jobs}: the fileset has {len(sizes)} file(s) and a job skims "
                          f"whole files; give --jobs between 1 and {len(sizes)}")
    loads = [(0, k) for k in range(n_jobs)]
    slices: list[list[int]] = [[] for _ in range(n_jobs)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, k = heapq.heappop(loads)
        slices[k].append(index)
        heapq.heappush(loads, (load + sizes[index], k))
    return [sorted(s) for s in slices]


def _file_size(path: str) -> int | None:
    """Bytes of a local file or a URL (fsspec); None when it cannot be found out."""
    if "://" not in path:
        try:
            return os.path.getsize(path)
        except OSError:
            return None
    try:
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        return int(fs.size(inner))
    except Exception:  # noqa: BLE001 - any protocol failure only costs balance, not correctness
        return None


def fill_missing_sumw(datasets: dict[str, DatasetInfo], config: Config, *,
                      skip_bad_files: bool, processor: Any = None) -> list[dict[str, str]]:
    """Sum the generator weights of every dataset whose metadata lacks ``sumw``.

    The same rule as a single skim (`analysis.skim.inputs.dataset_sumw`): the Runs trees'
    ``genEventSumw`` of the files that can be read, else ``genWeight`` over their events.

    Returns
    -------
    list of {"dataset", "path", "cause"}
        Files that could not be read (only with ``skip_bad_files``; otherwise the first one
        raises `InputFileError`). Their jobs will record them as skipped too.
    """
    errors = []
    processor = processor if processor is not None else load_processor(config, out_dir=".")
    for info in datasets.values():
        if info.sumw is not None:
            continue
        for item in info.files:
            try:
                check_file(item, processor=processor, is_mc=info.is_mc, need_sumw=True, weight=info.weight)
            except InputFileError as err:
                if not skip_bad_files:
                    raise
                item.error = err.cause
                errors.append({"dataset": info.name, "path": item.path, "cause": err.cause})
        dataset_sumw(info)
    return errors


def _dataset_record(info: DatasetInfo) -> dict[str, Any]:
    """A dataset as the skim's manifest.json lists it."""
    return info.record()


def _clear_job_files(jobs_dir: Path, out: Path, job_ids: Sequence[int]) -> None:
    """Forget earlier attempts of these jobs, so --status shows only the new one."""
    for k in job_ids:
        for name in _JOB_FILES:
            (jobs_dir / str(k) / name).unlink(missing_ok=True)
        job_manifest_path(out, k).unlink(missing_ok=True)
        job_cutflow_path(out, k).unlink(missing_ok=True)


def _submit(record: dict[str, Any], jobs_dir: Path, job_ids: list[int], *, dry_run: bool,
            description: Path | None) -> dict[str, Any]:
    """Run (or, for a dry run, only print) the submit command; record the submission."""
    command = submit_command(record["system"], jobs_dir, job_ids, description)
    console = stage_console()
    if dry_run:
        console.print(f"submit: dry run, {len(job_ids)} job(s) written; submit them with:", soft_wrap=True)
        print(shlex.join(command))
        return {"jobs": job_ids, "command": command, "batch_id": None, "dry_run": True}
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise HepprepError(f"{command[0]}: command not found, so the {record['system']} jobs cannot be "
                           f"submitted from this machine; run on a {record['system']} submit node, or "
                           f"use --dry-run to write the jobs and submit them yourself") from None
    if done.returncode != 0:
        why = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise HepprepError(f"{shlex.join(command)} failed: {why}")
    if record["system"] == "slurm":
        batch_id = done.stdout.strip().split(";")[0]
    else:
        found = re.search(r"submitted to cluster (\d+)", done.stdout)
        batch_id = found.group(1) if found else done.stdout.strip()
    submission = {"jobs": job_ids, "command": command, "batch_id": batch_id, "dry_run": False}
    record["submissions"].append(submission)
    write_json_atomic(jobs_dir / SUBMIT_RECORD, record)
    console.print(f"submit: {len(job_ids)} job(s) submitted to {record['system']} as {batch_id}; "
                  f"follow them with `hepprep skim --status {record['out']}`", soft_wrap=True)
    return submission


def submit_skim(fileset: str | Path, out_dir: str | Path, config: Config, *, jobs: int,
                system: str = "slurm", dry_run: bool = False, cores: int = 1, memory: str = "2GiB",
                queue: str | None = None, extra: Sequence[str] = (),
                skip_bad_files: bool | None = None) -> dict[str, Any]:
    """Split a fileset into ``jobs`` slices and submit one skim job per slice.

    Parameters
    ----------
    fileset : str or Path
        coffea fileset JSON (DESIGN.md "Fileset").
    out_dir : str or Path
        The shared skim folder every job writes into; must be reachable from the batch nodes
        (a shared filesystem), as must the inputs and this Python environment.
    config : Config
        Written to ``jobs/config.toml`` for the jobs (selection, lumi, samples, skim).
    jobs : int
        Number of jobs, 1 to the number of files (a job skims whole files).
    system : {"slurm", "htcondor"}
    dry_run : bool
        Write the job files and print the submit command without running it.
    cores : int
        CPUs per job: 1 runs the iterative executor, more the futures executor with that
        many processes.
    memory, queue, extra
        Memory per job (``2GiB``), Slurm partition, further ``#SBATCH`` options or HTCondor
        submit-description lines.
    skip_bad_files : bool or None
        None takes ``config.skim.skip_bad_files``.

    Returns
    -------
    dict
        The submission record (also ``jobs/submit.json``).

    Raises
    ------
    ConfigError
        Unknown system, ``jobs`` out of range, bad memory; a control character in any value
        written into the job script or submit description, a queue that is not a partition
        name, a folder the batch system would misread (`analysis.batch.scripts.check_submission`).
    StageInputError
        ``out_dir`` already holds a submission.
    InputFileError
        An unreadable file while computing a missing ``sumw`` (unless skipping bad files).
    """
    if system not in SYSTEMS:
        raise ConfigError(f"--system {system!r}: choose one of {', '.join(SYSTEMS)}")
    if cores < 1:
        raise ConfigError(f"--cores {cores}: give at least 1 CPU per job")
    memory_mb(memory)  # a bad value is refused before anything is written
    out = Path(out_dir).resolve()
    jobs_dir = out / JOBS_DIR
    # Every value that goes into job.sh or job.sub, refused before anything is written.
    check_submission(system=system, folder=out, memory=memory, queue=queue, extra=extra,
                     cores=cores, python=sys.executable)
    if (jobs_dir / SUBMIT_RECORD).exists():
        raise StageInputError(f"{out}: already holds a batch submission ({JOBS_DIR}/{SUBMIT_RECORD}); "
                              f"follow it with `hepprep skim --status {out}`, resubmit its failed "
                              f"jobs with `hepprep submit --resubmit-failed {out}`, or use a fresh --out")
    config = with_overrides(config, {"skim": {"skip_bad_files": skip_bad_files}}, source="--skip-bad-files")
    skip = config.skim.skip_bad_files

    # The jobs run the same processor, named so that a batch node finds it (a file's absolute path).
    config = with_overrides(config, {"skim": {"processor": portable_spec(config.skim.processor)}},
                            source="skim.processor")
    processor = load_processor(config, out_dir=str(out))  # its options checked before anything is written
    raw = load_fileset(fileset)
    datasets = resolve_datasets(raw, config)
    fill_missing_sumw(datasets, config, skip_bad_files=skip, processor=processor)
    files = [(info.name, item.path, item.treename) for info in datasets.values() for item in info.files]
    sizes = [_file_size(path) for _, path, _ in files]
    known = sorted(s for s in sizes if s is not None)
    # A file whose size is unknown (missing, or a server that does not say) counts as a
    # typical one; the job itself reports a file that cannot be read.
    typical = known[len(known) // 2] if known else 1
    sizes = [typical if s is None else s for s in sizes]
    slices = balance_files(sizes, jobs)

    jobs_dir.mkdir(parents=True, exist_ok=True)
    user_fileset = str(Path(fileset).resolve())
    for k, indexes in enumerate(slices):
        sliced: dict[str, Any] = {}
        for i in indexes:
            name, path, tree = files[i]
            entry = sliced.setdefault(name, {"files": {}, "metadata": {
                **raw[name]["metadata"], **datasets[name].metadata()}})
            # A URL's credentials stay in the user's fileset: the slice lists the URL without
            # them, and the job reads it back from there (analysis.skim.fileset).
            if has_credentials(path):
                entry["files"][redact(path)] = {"object_path": tree, "credentials_from": user_fileset}
            else:
                entry["files"][path] = tree
        (jobs_dir / str(k)).mkdir(exist_ok=True)
        write_json_atomic(jobs_dir / str(k) / "fileset.json", sliced)
    _clear_job_files(jobs_dir, out, range(jobs))
    write_text_atomic(jobs_dir / "config.toml", config_to_toml(config))
    executor = ["--executor", "iterative"] if cores == 1 else ["--executor", "futures", "--workers", str(cores)]
    command = [sys.executable, "-m", "analysis.cli", "skim", "--out", str(out),
               "--config", str(jobs_dir / "config.toml"), *executor, "--quiet"]
    script = jobs_dir / JOB_SCRIPT
    write_text_atomic(script, job_script(system=system, jobs_dir=jobs_dir, skim_command=command,
                                         cores=cores, memory=memory, queue=queue, extra=extra))
    script.chmod(0o755)
    description = None
    if system == "htcondor":
        description = jobs_dir / "job.sub"
        write_text_atomic(description, htcondor_description(jobs_dir=jobs_dir, cores=cores, memory=memory,
                                                            extra=extra, n_jobs=jobs))
    record = {
        "system": system, "fileset": redact(str(fileset)), "out": str(out), "n_jobs": jobs,
        "fileset_path": redact(os.path.abspath(fileset)),  # for the merged manifest's provenance
        "chunksize": config.skim.chunksize, "skip_bad_files": skip,
        "resources": {"cores": cores, "memory": memory, "queue": queue, "extra": list(extra)},
        "datasets": {n: _dataset_record(d) for n, d in datasets.items()},
        "files": [[name, redact(path), tree] for name, path, tree in files],
        "jobs": [{"job": k, "files": len(ix), "bytes": sum(sizes[i] for i in ix)}
                 for k, ix in enumerate(slices)],
        "submissions": [],
    }
    write_json_atomic(jobs_dir / SUBMIT_RECORD, record)
    try:
        _submit(record, jobs_dir, list(range(jobs)), dry_run=dry_run, description=description)
    except HepprepError:
        # Nothing was submitted: the same command may be run again once the cause is fixed.
        (jobs_dir / SUBMIT_RECORD).unlink()
        raise
    return record


def _check_record(record: dict[str, Any], out: Path) -> None:
    """What a resubmission reads back from ``submit.json``, checked as `submit_skim` checks it.

    The resources go into a new HTCondor description, so a record changed by hand (or
    written before these checks) must not inject a line either; a bad value is a
    `ConfigError` naming the file.
    """
    path = out / JOBS_DIR / SUBMIT_RECORD
    try:
        res = record.get("resources")
        if not isinstance(res, dict):
            raise ConfigError(f"resources {res!r}: not a mapping of cores, memory, queue, extra")
        check_submission(system=record.get("system"), folder=out, memory=res.get("memory"),
                         queue=res.get("queue"), extra=res.get("extra", ()), cores=res.get("cores"))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}; fix the file, or submit again into a fresh --out") from None


def resubmit_failed(out_dir: str | Path, *, dry_run: bool = False) -> dict[str, Any]:
    """Submit again, alone, the jobs of a submission that failed (``hepprep skim --status``).

    Each failed job's earlier exit code, logs and manifest are removed first, so its new
    attempt is reported on its own; its parts stay (the rerun skips the chunks done).

    Returns
    -------
    dict
        The submission (``jobs``, ``command``, ``batch_id``), or ``jobs`` empty when
        nothing failed.
    """
    from analysis.batch.status import job_states

    record = read_submit_record(out_dir)
    out = Path(out_dir).resolve()
    jobs_dir = out / JOBS_DIR
    _check_record(record, out)
    failed = [s.job for s in job_states(out) if s.state == "failed"]
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in failed):
        raise ConfigError(f"{jobs_dir / SUBMIT_RECORD}: job numbers {failed!r} are not all whole "
                          f"numbers; fix the file, or submit again into a fresh --out")
    if not failed:
        stage_console().print("submit: no failed job to resubmit", soft_wrap=True)
        return {"jobs": [], "command": None, "batch_id": None, "dry_run": dry_run}
    description = None
    if record["system"] == "htcondor":
        n = len(record["submissions"]) + 1
        description = jobs_dir / f"resubmit-{n}.sub"
        res = record["resources"]
        write_text_atomic(description, htcondor_description(jobs_dir=jobs_dir, cores=res["cores"],
                                                            memory=res["memory"], extra=res["extra"],
                                                            job_ids=failed))
    if not dry_run:
        _clear_job_files(jobs_dir, out, failed)
    return _submit(record, jobs_dir, failed, dry_run=dry_run, description=description)
