"""Batch submission (skim on Slurm or HTCondor): the job script, the submit description and the submit command.

Every job of a submission runs the same script, ``<out>/jobs/job.sh``; only the slice number
differs. It comes from the Slurm array index (``SLURM_ARRAY_TASK_ID``), from HTCondor's
``arguments = $(job_id)``, or from ``HEPPREP_JOB_ID`` when the script is run by hand. The
script writes ``jobs/<k>/started`` (time, host, batch job id) when it begins and
``jobs/<k>/exit_code`` when it ends (also when the batch system terminates it), which is
what ``hepprep skim --status`` reads.
Everything here is text; nothing talks to a batch system.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from dask.utils import parse_bytes

from analysis.errors import ConfigError

__all__ = ["JOB_SCRIPT", "SYSTEMS", "htcondor_description", "job_script", "memory_mb",
           "slurm_array_spec", "submit_command"]

SYSTEMS = ("slurm", "htcondor")
JOB_SCRIPT = "job.sh"


def memory_mb(memory: str) -> int:
    """Memory per job in MB (1024² bytes), as ``sbatch --mem`` and ``request_memory`` take it.

    >>> memory_mb("2GiB"), memory_mb("1500MB")
    (2048, 1431)
    """
    try:
        n_bytes = parse_bytes(memory)
    except ValueError:
        raise ConfigError(f"--memory {memory!r}: not an amount of memory; give e.g. 2GiB or 1500MB") from None
    if n_bytes < 2**20:
        raise ConfigError(f"--memory {memory!r}: less than 1 MiB per job; give e.g. 2GiB")
    return -(-n_bytes // 2**20)  # rounded up: never ask for less than was given


def job_script(*, system: str, jobs_dir: Path, skim_command: Sequence[str], cores: int,
               memory: str, queue: str | None = None, extra: Sequence[str] = ()) -> str:
    """The bash script every job runs: skim slice ``k`` into the shared output folder.

    Parameters
    ----------
    system : {"slurm", "htcondor"}
        Slurm reads ``#SBATCH`` lines from the script; HTCondor takes its resources from
        the submit description (`htcondor_description`) instead.
    jobs_dir : Path
        ``<out>/jobs``, absolute; holds ``<k>/fileset.json`` and receives the job's logs.
    skim_command : sequence of str
        ``python -m analysis.cli skim`` with the options common to every job; the script
        adds the slice's fileset and ``--job-id k``.
    cores, memory, queue, extra
        Resources: CPUs per job, memory per job (``2GiB``), Slurm partition, and further
        ``#SBATCH`` options (``--time=02:00:00``), one per item.
    """
    if system not in SYSTEMS:
        raise ConfigError(f"--system {system!r}: choose one of {', '.join(SYSTEMS)}")
    lines = ["#!/usr/bin/env bash"]
    if system == "slurm":
        lines += ["#SBATCH --job-name=hepprep-skim",
                  f"#SBATCH --output={jobs_dir}/%a/batch.out",
                  f"#SBATCH --cpus-per-task={cores}",
                  f"#SBATCH --mem={memory_mb(memory)}M"]
        if queue:
            lines.append(f"#SBATCH --partition={queue}")
        lines += [f"#SBATCH {option}" for option in extra]
    command = " ".join(shlex.quote(c) for c in skim_command)
    lines += [
        "# hepprep batch job, written by `hepprep submit`: skims slice <k> of the fileset into",
        "# the shared skim folder, with its own manifest (manifests/job-<k>.json).",
        "set -uo pipefail",
        'job="${1:-${SLURM_ARRAY_TASK_ID:-${HEPPREP_JOB_ID:-}}}"',
        'if [ -z "$job" ]; then',
        '    echo "job.sh: no job number: pass it as the first argument or set HEPPREP_JOB_ID" >&2',
        "    exit 2",
        "fi",
        f"dir={shlex.quote(str(jobs_dir))}/$job",
        'rm -f "$dir/exit_code"',
        # Which batch job this is (Slurm array job_task, HTCondor cluster.process), for --status.
        'batch_id="${HEPPREP_BATCH_ID:-${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID:-}}}"',
        'echo "$(date -u +%FT%TZ) $(hostname) ${batch_id:-local}" > "$dir/started"',
        # The skim runs in the background so that a SIGTERM from the batch system (time
        # limit, scancel, condor_rm) reaches the trap and the job is recorded as failed.
        'trap \'echo "job.sh: terminated by the batch system" >> "$dir/skim.log"; '
        'kill "$child" 2>/dev/null; wait "$child"; echo 143 > "$dir/exit_code"; exit 143\' TERM INT',
        f'{command} "$dir/fileset.json" --job-id "$job" > "$dir/skim.log" 2>&1 &',
        "child=$!",
        'wait "$child"',
        "rc=$?",
        'echo "$rc" > "$dir/exit_code"',
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


def htcondor_description(*, jobs_dir: Path, cores: int, memory: str, extra: Sequence[str] = (),
                         n_jobs: int | None = None, job_ids: Sequence[int] | None = None) -> str:
    """An HTCondor submit description running ``job.sh`` once per slice.

    Give ``n_jobs`` for the first submission (``queue N``, slice = ``$(Process)``) or
    ``job_ids`` to resubmit some slices (``queue job_id in (...)``). The jobs read and write
    the shared filesystem in place (no file transfer) and inherit the submitting
    environment (the Python environment with hepprep).

    Parameters
    ----------
    jobs_dir : Path
        ``<out>/jobs``, absolute.
    cores, memory : CPUs and memory per job (``request_cpus``, ``request_memory`` in MB).
    extra : sequence of str
        Further submit-description lines (``+JobFlavour = "longlunch"``), one per item.
    """
    if (n_jobs is None) == (job_ids is None):
        raise ValueError("give exactly one of n_jobs (first submission) or job_ids (resubmission)")
    lines = [
        "# hepprep batch jobs, written by `hepprep submit`: one job per fileset slice.",
        "universe = vanilla",
        f"executable = {jobs_dir / JOB_SCRIPT}",
        "arguments = $(job_id)",
        f"output = {jobs_dir}/$(job_id)/batch.out",
        f"error = {jobs_dir}/$(job_id)/batch.err",
        f"log = {jobs_dir}/condor.log",
        f"request_cpus = {cores}",
        f"request_memory = {memory_mb(memory)}",
        "getenv = True",
        'environment = "HEPPREP_BATCH_ID=$(Cluster).$(Process)"',
        "should_transfer_files = NO",
        *extra,
    ]
    if n_jobs is not None:
        lines += ["job_id = $(Process)", f"queue {n_jobs}"]
    else:
        lines.append(f"queue job_id in ({', '.join(str(k) for k in job_ids)})")
    return "\n".join(lines) + "\n"


def slurm_array_spec(job_ids: Sequence[int]) -> str:
    """``--array`` value: ``0-99`` for a contiguous run of slices, ``2,5,7-9`` otherwise.

    >>> slurm_array_spec([0, 1, 2, 3]), slurm_array_spec([2, 5, 7, 8, 9])
    ('0-3', '2,5,7-9')
    """
    ids = sorted(set(job_ids))
    if not ids:
        raise ValueError("no job to submit")
    runs = [[ids[0], ids[0]]]
    for k in ids[1:]:
        if k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def submit_command(system: str, jobs_dir: Path, job_ids: Sequence[int],
                   description: Path | None = None) -> list[str]:
    """The command that submits ``job_ids``: ``sbatch --array=...`` or ``condor_submit FILE``."""
    if system == "slurm":
        return ["sbatch", "--parsable", f"--array={slurm_array_spec(job_ids)}",
                str(jobs_dir / JOB_SCRIPT)]
    if description is None:
        raise ValueError("HTCondor needs the submit description file")
    return ["condor_submit", str(description)]
