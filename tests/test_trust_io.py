"""Trust, item 13 (and 12's umask): one atomic write for every file hepprep writes.

Unique temporary names (two runs never write into each other's temporary), fsync before
the rename, the temporary removed on failure, files created with the user's umask, stale
temporaries of dead writers cleaned, and no second copy of the machinery anywhere. The
stage-level tests go through the command line and the public API; the unit tests of
`analysis.core.io` import it where they use it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _eval_helpers import toy_config, write_prepared, write_xgboost_model
from _prepare_helpers import default_samples, write_skim
from _train_helpers import write_prepared_dir

from analysis import run_evaluate
from analysis.cli import main

REPO = Path(__file__).resolve().parents[1]


def _cli(*argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return exit_info.value.code


# -- what a user sees --------------------------------------------------------------------------

def test_two_evaluations_never_share_a_temporary(tmp_path, monkeypatch):
    # A fixed temporary name (".metrics.json.tmp") let two runs into one folder write into
    # each other's temporary.
    prep = write_prepared(tmp_path / "prepared", skim_dir=tmp_path / "skim")
    model = write_xgboost_model(tmp_path / "model", prep, rounds=5)
    cfg = toy_config()
    cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"dpi": 30, "n_bins": 8,
                                                                             "shap_rows": 100})})
    sources, real_replace = [], os.replace

    def record(a, b):
        sources[-1].add((Path(a).name, Path(b).name))
        return real_replace(a, b)
    monkeypatch.setattr(os, "replace", record)
    for _ in range(2):
        sources.append(set())
        run_evaluate([model], prep, tmp_path / "eval", cfg, progress=False)
    first, second = ({a for a, _ in s} for s in sources)
    assert {b for _, b in sources[0]} >= {"metrics.json", "report.html"}
    assert first and not first & second, first & second


def test_generate_fsyncs_every_file_before_its_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("f"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("r"), real_replace(a, b))[1])
    assert _cli("generate", "--out", tmp_path / "gen", "--events", "300", "--files-per-sample", "1",
                "--quiet") == 0
    # every rename comes after the fsync of its file, and the folder is fsynced after it
    assert "r" in events and re.fullmatch(r"(f+r+)+f+", "".join(events)), "".join(events)


def test_model_files_honour_the_umask(tmp_path):
    # mkstemp made model files 0600: colleagues on a shared machine could not read them.
    prep = write_prepared_dir(tmp_path / "prep")
    code = "import os, sys; os.umask(int(sys.argv[1], 8)); from analysis.cli import main; main(sys.argv[2:])"
    for umask, mode in (("022", 0o644),):  # (0o077 gives 0600: the unit test below)
        out = tmp_path / f"model-{umask}"
        subprocess.run([sys.executable, "-c", code, umask, "train", str(prep), "--model", "xgboost",
                        "--device", "cpu", "--out", str(out), "--quiet"], check=True, cwd=REPO)
        modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
        assert "model.json" in modes and set(modes.values()) == {mode}, (umask, modes)


def test_a_killed_prepare_leaves_no_temporary_after_a_rerun(tmp_path):
    skim = write_skim(tmp_path / "skim", default_samples(scale=0.4), rows_per_file=1000, row_group_rows=250)
    config = tmp_path / "analysis.toml"
    config.write_text('features = ["tau1_pt", "m_vis", "mjj"]\n[prepare]\nbucket_rows = 2000\n'
                      'file_rows = 1000\nrow_group_rows = 250\n[cluster]\nn_workers = 1\nmemory_limit = "2GiB"\n')
    out = tmp_path / "out" / "prepared"
    command = [sys.executable, "-m", "analysis.cli", "prepare", str(skim), "--out", str(out),
               "--config", str(config), "--quiet"]
    proc = subprocess.Popen(command, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not [p for p in out.parent.glob(".*") if "tmp" in p.name] and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [p for p in out.parent.glob(".*") if "tmp" in p.name], "the kill came too late"
    subprocess.run(command, cwd=REPO, check=True, timeout=300, capture_output=True)
    assert (out / "manifest.json").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["prepared"]


# -- the helper itself (analysis.core.io) --------------------------------------------------------


def test_temporary_names_are_unique_per_writer(tmp_path):
    from analysis.core.io import temp_name

    names = {temp_name(tmp_path / "metrics.json") for _ in range(50)}
    assert len(names) == 50
    assert all(n.name.startswith(".metrics.json.tmp-") and n.parent == tmp_path for n in names)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from analysis.core.io import atomic_file, atomic_path

    target = tmp_path / "model.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("disk died")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_the_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    from analysis.core import io
    from analysis.core.io import atomic_path, write_text_atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_text_atomic(tmp_path / "a.txt", "x")
    # the file's data, then the rename, then the folder holding the new name
    assert events == ["fsync", "replace", "fsync"]
    events.clear()
    with atomic_path(tmp_path / "b.parquet") as tmp:
        tmp.write_bytes(b"y")
    assert events == ["fsync", "replace", "fsync"]


def test_files_honour_the_umask(tmp_path):
    # mkstemp made model files 0600: colleagues on a shared machine could not read them.
    code = ("import os, sys; os.umask(0o022); from analysis.core.io import write_json_atomic, atomic_path;"
            "write_json_atomic(sys.argv[1] + '/a.json', {});"
            "ctx = atomic_path(sys.argv[1] + '/b.parquet'); tmp = ctx.__enter__(); tmp.write_bytes(b'x');"
            "ctx.__exit__(None, None, None)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=REPO)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.parquet").stat().st_mode & 0o777 == 0o644
    code = "import os, sys; os.umask(0o077); from analysis.core.io import write_json_atomic; write_json_atomic(sys.argv[1] + '/c.json', {})"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=REPO)
    assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o600


def test_json_is_strict(tmp_path):
    from analysis.core.io import write_json_atomic

    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "m.json", {"auc": float("nan")})
    assert not list(tmp_path.iterdir())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    from analysis.core import io
    from analysis.core.io import remove_stale_temp

    live = tmp_path / f".prepared.tmp-{io._HOST}-{os.getppid()}-0123abcd"
    dead = tmp_path / f".prepared.tmp-{io._HOST}-{_dead_pid()}-0123abcd"
    dead_file = tmp_path / f".model.json.tmp-{io._HOST}-{_dead_pid()}-89abcdef"
    other_host = tmp_path / f".prepared.tmp-00000000-{_dead_pid()}-0123abcd"
    for folder in (live, dead, other_host):
        folder.mkdir()
        (folder / "part-0.parquet").write_bytes(b"x" * 1000)
    dead_file.write_text("{")
    removed = remove_stale_temp(tmp_path)
    assert sorted(removed) == sorted([dead, dead_file])
    assert live.exists() and other_host.exists()  # a live writer, and one of another machine


def test_atomic_dir_replaces_a_folder_whole_and_cleans_dead_writers(tmp_path):
    from analysis.core import io
    from analysis.core.io import atomic_dir

    out = tmp_path / "prepared"
    out.mkdir()
    (out / "old.txt").write_text("old")
    stale = tmp_path / f".prepared.tmp-{io._HOST}-{_dead_pid()}-0123abcd"
    stale.mkdir()
    with atomic_dir(out) as tmp:
        assert not stale.exists()
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # readers see the old folder until the end
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "partial.txt").write_text("x")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


# What only core/io.py may do: rename files into place, make temporary files, write a
# file in one go. Anything else writes through its helpers.
_SECOND_COPIES = re.compile(r"os\.replace\(|os\.rename\(|\.rename\(|\.replace\(tmp|mkstemp|"
                            r"NamedTemporaryFile|\.write_text\(|\.write_bytes\(|save_model\(|"
                            r"torch\.save\([^)]*,\s*(?:tmp|path|out)|savefig\((?!tmp)")


def test_the_atomic_write_exists_once():
    offenders = []
    for folder in ("analysis", "processors"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == REPO / "analysis" / "core" / "io.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                code = line.split("#", 1)[0]
                if _SECOND_COPIES.search(code):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == [], "writes outside analysis/core/io.py:\n" + "\n".join(offenders)
