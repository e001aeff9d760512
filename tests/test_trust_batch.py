"""Trust, batch submission: every user value written into job.sh / job.sub is read back as given, or refused.

`hepprep submit` writes user values into text that a batch system parses: ``#SBATCH`` lines
(read by sbatch, then by bash as comments) and an HTCondor submit description. A newline in
a value would start a further line (a shell command every job runs, or a further directive),
a space would split a Slurm path, a ``%`` would be taken for a Slurm filename pattern and a
``$`` for an HTCondor macro. These tests read the written files the way the batch systems do.

sbatch is not installed here, so its reading of ``#SBATCH`` lines is re-implemented below,
line for line, from SchedMD/slurm (commit 284c3b95f08a, 2026-08-20):

* ``_opt_batch_script`` and ``get_argument`` in src/sbatch/opt.c: lines starting with
  ``#SBATCH`` until the first line that is neither blank nor a comment; arguments separated
  by whitespace; ``"..."`` or ``'...'`` group characters; a backslash makes the next character
  literal (inside quotes too; ``\\ `` is a space since Slurm 24.05); an unquoted ``#`` ends the
  line. Quote grouping dates from Slurm 2.1 (commit 6207bfc0fc, 2009).
* ``expand_stdio_fields`` in src/common/print_fields.c (what slurmstepd does with
  ``--output``): ``%%`` is a literal ``%``, ``%a`` the array task id, ``%A`` the array job id,
  an optional zero-padding width between; a path holding a backslash is not expanded at all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from analysis.batch.scripts import job_script
from analysis.batch.submit import resubmit_failed, submit_skim
from analysis.cli import main
from analysis.config import default_config
from analysis.errors import ConfigError

_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale


def _sbatch_get_argument(line: str) -> tuple[str | None, int]:
    """get_argument() of src/sbatch/opt.c: (the next argument or None, characters consumed)."""
    i, n = 0, len(line)
    while i < n and line[i] in _C_SPACE:
        i += 1
    if i < n and line[i] == ":":
        raise ValueError(f"sbatch: Unexpected `:` in [{line}]")
    argument: list[str] | None = None
    quoted, q_char, escape = False, "", False
    while i < n and (quoted or line[i] not in _C_SPACE) and line[i] != "\n":
        c = line[i]
        if escape:
            escape = False
        elif c == "\\":
            i += 1
            if i < n and line[i] == " ":
                argument = (argument or []) + [" "]
                i += 1
            else:
                escape = True
            continue
        elif quoted:
            if c == q_char:
                quoted = False
                i += 1
                continue
        elif c in "\"'":
            quoted, q_char = True, c
            i += 1
            continue
        elif c == "#":  # an unescaped, unquoted '#': the rest of the line is a comment
            break
        argument = (argument or []) + [c]
        i += 1
    if quoted:
        raise ValueError(f"sbatch: Unmatched `{q_char}` in [{line}]")
    return (None if argument is None else "".join(argument)), i


def sbatch_directives(script: str) -> list[str]:
    """The argv sbatch builds from a script's ``#SBATCH`` lines (_opt_batch_script, no hetjobs)."""
    args = []
    for line in script.split("\n"):
        if line.startswith("#SBATCH"):
            rest = line[len("#SBATCH"):]
        else:
            stripped = line.lstrip(_C_SPACE)
            if stripped and not stripped.startswith("#"):
                break  # the first command: no more directives
            continue
        while True:
            argument, skipped = _sbatch_get_argument(rest)
            if argument is None:
                break
            args.append(argument)
            rest = rest[skipped:]
    return args


def slurm_filename(pattern: str, *, array_task_id: int, array_job_id: int = 4242) -> str:
    """expand_stdio_fields() of src/common/print_fields.c for a batch job (%%, %a, %A, %j, padding)."""
    if "\\" in pattern:  # "the file has not been expanded in any case": no replacement at all
        return pattern.replace("\\", "")
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        i += 1
        if i < len(pattern) and pattern[i] == "%":
            out.append("%")
            i += 1
            continue
        start = i
        while i < len(pattern) and pattern[i].isdigit():
            i += 1
        padding = min(int(pattern[start:i] or 0), 10)
        letter = pattern[i] if i < len(pattern) else ""
        values = {"a": array_task_id, "A": array_job_id, "j": array_job_id + array_task_id}
        if letter in values:
            out.append(f"{values[letter]:0{padding}d}")
        elif letter in "bJrSsxNntu" and letter:
            raise NotImplementedError(f"%{letter} is not re-implemented here")
        else:  # not a pattern: written as it stands
            out.append("%" + pattern[start:i + 1])
        i += 1
    return "".join(out)


def sbatch_output_path(script: str, array_task_id: int) -> str:
    """The file a Slurm array task's output goes to, as sbatch and slurmstepd read job.sh."""
    outputs = [a.removeprefix("--output=") for a in sbatch_directives(script) if a.startswith("--output=")]
    assert len(outputs) == 1, sbatch_directives(script)
    return slurm_filename(outputs[0], array_task_id=array_task_id)


def test_the_sbatch_reimplementation_reads_known_lines():
    assert sbatch_directives('#!/bin/bash\n#SBATCH --time=1 -J "a b" # note\n#SBATCH --x=\'c"d\'\n'
                             "echo hi\n#SBATCH --never\n") == ["--time=1", "-J", "a b", "--x=c\"d"]
    assert sbatch_directives('#SBATCH --o="a\\"b\\\\c"\n') == ['--o=a"b\\c']
    assert slurm_filename("/x/%a/%%a/%3a/%q.out", array_task_id=7) == "/x/7/%a/007/%q.out"


@pytest.fixture
def fileset(tmp_path) -> Path:
    """Two files of one dataset whose sumw is given, so nothing is read while submitting."""
    path = tmp_path / "fileset.json"
    path.write_text(json.dumps({"DY": {"files": {"/nowhere/a.root": "Events", "/nowhere/b.root": "Events"},
                                       "metadata": {"label": 0, "xsec_pb": 1.0, "sumw": 2.0}}}))
    return path


def _submit(fileset: Path, out: Path, **options) -> dict:
    return submit_skim(fileset, out, default_config(), jobs=2, **{"dry_run": True, **options})


@pytest.mark.usefixtures("fake_sbatch")
def test_out_folder_with_spaces_and_quotes_gives_the_output_path_sbatch_reads(fileset, tmp_path):
    out = tmp_path / "my skims" / "run #1 it's \"final\""
    record = _submit(fileset, out, dry_run=False)
    script = out / "jobs" / "job.sh"
    text = script.read_text()
    for k in (0, 1):
        assert sbatch_output_path(text, k) == f"{out}/jobs/{k}/batch.out"
    # The job script is handed to sbatch as one argument, and its bash part finds the folder.
    assert record["submissions"][0]["command"] == ["sbatch", "--parsable", "--array=0-1", str(script)]
    assert record["submissions"][0]["batch_id"] == "4242"
    jobs = out / "jobs"
    local = jobs / "local.sh"
    local.write_text(job_script(system="slurm", jobs_dir=jobs, skim_command=["true"], cores=1, memory="1GiB"))
    env = {"PATH": os.environ["PATH"], "HEPPREP_JOB_ID": "1"}
    assert subprocess.run(["bash", str(local)], env=env, timeout=30, check=False).returncode == 0
    assert (jobs / "1" / "exit_code").read_text() == "0\n"


def test_percent_in_the_out_folder_is_escaped_for_slurm(fileset, tmp_path):
    out = tmp_path / "100%a done" / "50%"
    _submit(fileset, out)
    text = (out / "jobs" / "job.sh").read_text()
    assert sbatch_output_path(text, 3) == f"{out}/jobs/3/batch.out"


@pytest.mark.parametrize("system", ["slurm", "htcondor"])
def test_extra_with_a_newline_is_refused_and_nothing_is_written(fileset, tmp_path, system):
    out = tmp_path / "batch"
    with pytest.raises(ConfigError) as err:
        _submit(fileset, out, system=system, extra=["--time=1\nrm -rf ~"])
    message = str(err.value)
    assert message.startswith("--extra '--time=1\\nrm -rf ~': holds a newline (control characters are refused")
    assert "\n" not in message
    assert not out.exists()


@pytest.mark.parametrize("queue, why", [("a\nb", "holds a newline"), ("short\r", "holds a carriage return"),
                                        ("a b", "not a Slurm partition name"),
                                        ("short;rm", "not a Slurm partition name")])
def test_queue_that_is_not_a_partition_name_is_refused_and_nothing_is_written(fileset, tmp_path, queue, why):
    out = tmp_path / "batch"
    with pytest.raises(ConfigError, match="^" + re.escape(f"--queue {queue!r}: {why}")) as err:
        _submit(fileset, out, queue=queue)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_memory_with_a_control_character_is_refused(fileset, tmp_path):
    out = tmp_path / "batch"  # dask's parse_bytes reads '2\nGiB' as 2 GiB: the value is refused here
    with pytest.raises(ConfigError, match=r"^--memory '2\\nGiB': holds a newline"):
        _submit(fileset, out, memory="2\nGiB")
    assert not out.exists()


@pytest.mark.parametrize("folder, char", [("run $(HOME)", "'$'"), ("run $ENV(HOME)", "'$'"),
                                          ('run "1"', "'\"'")])
def test_htcondor_refuses_a_macro_or_a_quote_in_the_out_folder(fileset, tmp_path, folder, char):
    out = tmp_path / folder
    with pytest.raises(ConfigError) as err:
        _submit(fileset, out, system="htcondor")
    why = ("starts a macro in an HTCondor submit description ($(X), $ENV(X), $$(X))" if char == "'$'" else
           "has a meaning in some HTCondor submit commands, so hepprep does not write it into a "
           "submit description")
    assert str(err.value) == f"--out {str(out)!r}: holds {char}, which {why}; use an --out folder whose path has no {char}"
    assert not out.exists()
    # Slurm reads neither a $ nor a quote in #SBATCH lines: the same folder is fine there.
    _submit(fileset, out, system="slurm")
    assert sbatch_output_path((out / "jobs" / "job.sh").read_text(), 0) == f"{out}/jobs/0/batch.out"


def test_htcondor_refuses_an_extra_line_ending_in_a_backslash(fileset, tmp_path):
    out = tmp_path / "batch"  # HTCondor would join it with the next line, the queue statement
    with pytest.raises(ConfigError, match=r"^--extra '\+A = 1 \\\\': ends in a backslash"):
        _submit(fileset, out, system="htcondor", extra=["+A = 1 \\"])
    assert not out.exists()


def test_slurm_refuses_a_backslash_in_the_out_folder(fileset, tmp_path):
    out = tmp_path / "a\\b"  # Slurm would replace no %-pattern: every job's log in one file "%a"
    with pytest.raises(ConfigError, match=r"^--out '.*a\\\\b': holds a backslash"):
        _submit(fileset, out)
    assert not out.exists()


@pytest.mark.parametrize("key, value", [("extra", ["+A = 1\nqueue 100"]), ("cores", "1\nqueue 100"),
                                        ("memory", "2\nGiB")])
def test_resubmission_refuses_injected_resources_in_submit_json(fileset, tmp_path, key, value):
    out = tmp_path / "batch"
    _submit(fileset, out, system="htcondor")
    record_path = out / "jobs" / "submit.json"
    record = json.loads(record_path.read_text())
    record["resources"][key] = value
    record_path.write_text(json.dumps(record))
    (out / "jobs" / "0" / "exit_code").write_text("1\n")  # job 0 failed
    with pytest.raises(ConfigError) as err:
        resubmit_failed(out, dry_run=True)
    assert str(err.value).startswith(f"{record_path}: --{key} ")
    assert "\n" not in str(err.value)
    assert not (out / "jobs" / "resubmit-1.sub").exists()


def test_cli_bad_extra_is_one_error_line_and_writes_nothing(fileset, tmp_path, capsys):
    out = tmp_path / "batch"
    with pytest.raises(SystemExit) as exit_:
        main(["submit", str(fileset), "--out", str(out), "--jobs", "1", "--dry-run",
              "--extra=--time=1\nrm -rf ~"])
    assert exit_.value.code != 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n")
    assert captured.err.startswith("hepprep: error: --extra '--time=1\\nrm -rf ~': holds a newline")
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()
