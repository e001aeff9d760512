"""Batch submission (skim on Slurm or HTCondor): the job script, the submit description and the submit command.

Every job of a submission runs the same script, ``<out>/jobs/job.sh``; only the slice number
differs. It comes from the Slurm array index (``SLURM_ARRAY_TASK_ID``), from HTCondor's
``arguments = $(job_id)``, or from ``HEPPREP_JOB_ID`` when the script is run by hand. The
script writes ``jobs/<k>/started`` (time, host, batch job id) when it begins and
``jobs/<k>/exit_code`` when it ends (also when the batch system terminates it), which is
what ``hepprep skim --status`` reads.
Everything here is text; nothing talks to a batch system.

Every user value that goes into the script or the description is checked first
(`check_submission`): control characters are refused everywhere (a newline would start a
further shell, ``#SBATCH`` or submit-description line), the Slurm partition is limited to
a conservative character set, and what a batch system would read wrongly is quoted or
refused (see `sbatch_output_argument` and `check_folder`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from dask.utils import parse_bytes

from analysis.errors import ConfigError

__all__ = ["JOB_SCRIPT", "SYSTEMS", "check_extra", "check_folder", "check_queue", "check_submission",
           "check_text", "htcondor_description", "job_script", "memory_mb", "sbatch_output_argument",
           "slurm_array_spec", "submit_command"]

SYSTEMS = ("slurm", "htcondor")
JOB_SCRIPT = "job.sh"


# A Slurm partition name (or several, comma-separated): conservative on purpose.
_PARTITION = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")
# Characters sbatch's #SBATCH parser (get_argument in src/sbatch/opt.c) reads as themselves
# outside quotes; a value with any other character is written in double quotes.
_SBATCH_PLAIN = re.compile(r"[A-Za-z0-9_./,:=+@%~-]*")
_CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}


def check_text(option: str, value: object, fix: str) -> str:
    """``value`` if it is text without control characters, else a one-line `ConfigError`.

    Control characters are every character below U+0020 and U+007F (DEL). ``option`` names
    the value in the message (``--extra``), ``fix`` says what to give instead.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{option} {value!r}: not text; {fix}")
    bad = next((c for c in value if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        what = _CONTROL_NAMES.get(bad, f"the control character U+{ord(bad):04X}")
        raise ConfigError(f"{option} {value!r}: holds {what} (control characters are refused: {fix})")
    return value


def check_queue(queue: object) -> None:
    """A Slurm partition: letters, digits, ``. _ -``; several separated by commas."""
    if queue is None or queue == "":
        return
    fix = "give a partition name such as short, or several separated by commas"
    check_text("--queue", queue, fix)
    if not _PARTITION.fullmatch(queue):
        raise ConfigError(f"--queue {queue!r}: not a Slurm partition name (letters, digits and . _ - "
                          f"only); {fix}")


def check_extra(system: str, extra: object) -> None:
    """Further ``#SBATCH`` options or HTCondor submit lines: one line each.

    HTCondor also joins a line ending in a backslash with the next one (``getline_implementation``
    in src/condor_utils/config.cpp), which would swallow the ``queue`` line: refused.
    """
    if isinstance(extra, str) or not isinstance(extra, Sequence):
        raise ConfigError(f"--extra {extra!r}: not a list of options; give each with its own --extra")
    where = "#SBATCH option" if system == "slurm" else "submit-description line"
    for item in extra:
        check_text("--extra", item, f"each --extra is one {where}; repeat --extra for more")
        if system == "htcondor" and item.rstrip(" ").endswith("\\"):
            raise ConfigError(f"--extra {item!r}: ends in a backslash, which HTCondor reads as a line "
                              f"continuation (it would swallow the next line of the description); "
                              f"remove the trailing backslash")


def check_folder(system: str, folder: Path, option: str = "--out") -> None:
    """Refuse a folder (the skim folder, or its ``jobs``) the batch system cannot be told about safely.

    Slurm: a ``--output`` holding a backslash is taken literally, with none of its ``%``
    patterns replaced (``expand_stdio_fields`` in src/common/print_fields.c), so the
    per-job log name (``%a``) cannot be written: refused. HTCondor: ``$`` starts a macro in
    the submit description (``$(X)``, ``$ENV(X)``, ``$$(X)`` at match time) and a ``"``
    is refused too; neither can be written as itself there with certainty.
    """
    path = str(folder)
    fix = "use an --out folder whose path has none"
    check_text(option, path, fix)
    if system == "slurm" and "\\" in path:
        raise ConfigError(f"{option} {path!r}: holds a backslash, with which Slurm replaces none of "
                          f"the %-patterns of the job log path (%a: one log per job); {fix}")
    if system == "htcondor":
        for char, why in (("$", "starts a macro in an HTCondor submit description ($(X), $ENV(X), $$(X))"),
                          ('"', "has a meaning in some HTCondor submit commands, so hepprep does not "
                                "write it into a submit description")):
            if char in path:
                raise ConfigError(f"{option} {path!r}: holds {char!r}, which {why}; "
                                  f"use an --out folder whose path has no {char!r}")


def sbatch_output_argument(jobs_dir: Path) -> str:
    """The ``#SBATCH`` argument naming each job's log: ``--output=<jobs_dir>/%a/batch.out``.

    Written as sbatch reads it: ``%`` of the folder doubled (a literal ``%`` in a Slurm
    filename pattern, sbatch(1) "FILENAME PATTERN"), and the value in double quotes, with
    ``\\`` and ``"`` escaped by a backslash, when it holds anything but plain path
    characters (a space would end the argument; get_argument in src/sbatch/opt.c groups
    quoted characters and copies the character after a backslash as itself).
    Plain paths are written as they are.
    """
    value = str(jobs_dir).replace("%", "%%") + "/%a/batch.out"
    if not _SBATCH_PLAIN.fullmatch(value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"--output={value}"


def check_submission(*, system: str, folder: Path, memory: object, queue: object = None,
                     extra: object = (), cores: object = 1, python: str | None = None,
                     folder_option: str = "--out") -> None:
    """Every user value of a submission, checked before anything is written (`ConfigError`).

    ``folder`` is the skim folder (``--out``), or the jobs folder inside it when
    ``folder_option`` says so; ``python`` the interpreter the jobs run.
    """
    if system not in SYSTEMS:
        raise ConfigError(f"--system {system!r}: choose one of {', '.join(SYSTEMS)}")
    if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
        raise ConfigError(f"--cores {cores!r}: give at least 1 CPU per job")
    check_text("--memory", memory, "give e.g. 2GiB or 1500MB")
    memory_mb(memory)
    check_queue(queue)
    check_extra(system, extra)
    check_folder(system, folder, folder_option)
    if python is not None:
        check_text("the Python executable", python,
                   "run hepprep from a Python environment whose path has none")


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

    Raises
    ------
    ConfigError
        A value `check_submission` refuses, or a control character in ``skim_command``.
    """
    check_submission(system=system, folder=jobs_dir, folder_option="the jobs folder", memory=memory,
                     queue=queue, extra=extra, cores=cores)
    for argument in skim_command:
        check_text("the job command argument", argument, "use paths without them")
    lines = ["#!/usr/bin/env bash"]
    if system == "slurm":
        lines += ["#SBATCH --job-name=hepprep-skim",
                  f"#SBATCH {sbatch_output_argument(jobs_dir)}",
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

    Raises
    ------
    ConfigError
        A value `check_submission` refuses (a ``$`` or ``"`` in ``jobs_dir``, a control
        character or a trailing backslash in ``extra``, ...).
    """
    if (n_jobs is None) == (job_ids is None):
        raise ValueError("give exactly one of n_jobs (first submission) or job_ids (resubmission)")
    check_submission(system="htcondor", folder=jobs_dir, folder_option="the jobs folder", memory=memory,
                     extra=extra, cores=cores)
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0
               for k in ([n_jobs] if n_jobs is not None else job_ids)):
        raise ValueError(f"job numbers must be non-negative integers: {n_jobs if job_ids is None else job_ids!r}")
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
