"""Trust, items 10 and 12: a full disk is one line in every stage; shared machines and credentials.

ENOSPC is injected where every file is put in place (``os.replace``/``os.rename``) for
every stage run through the CLI, and, where this machine lets the test mount a small
tmpfs (root), hit for real. The dask dashboard and cluster listen on the loopback interface only. A URL's
credentials never appear in a message or a record.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from _skim_helpers import QUIET_COFFEA, subset_fileset

from analysis.cli import main
from analysis.config import ClusterConfig

pytestmark = QUIET_COFFEA

SECRET_URL = "https://alice:s3cr3t-pw@127.0.0.1:9/store/mc/DY.root?authz=TOKEN-abc123&x=1"


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


# -- ENOSPC ------------------------------------------------------------------------------------

def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/the/disk")


def _no_temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def two_datasets(generated_sample, tmp_path_factory):
    return subset_fileset(generated_sample, ["GluGluToHToTauTau", "DYJetsToLL"],
                          tmp_path_factory.mktemp("enospc") / "fileset.json")


def test_a_full_disk_is_one_line_in_every_stage(two_datasets, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "replace", _disk_full)
    monkeypatch.setattr(os, "rename", _disk_full)
    runs = {
        "generate": ["generate", "--out", tmp_path / "gen", "--events", "300", "--files-per-sample", "1"],
        "skim": ["skim", two_datasets, "--out", tmp_path / "skim", "--executor", "iterative"],
    }
    for stage, argv in runs.items():
        code, err = _cli(capsys, *argv, "--quiet")
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1, (stage, err)
        assert lines[0].startswith("hepprep: error: ") and "no space left on device" in lines[0], (stage, err)
    assert not (tmp_path / "gen" / "fileset.json").exists()
    assert not list((tmp_path / "skim").rglob("part-*.parquet")) and not (tmp_path / "skim" / "manifest.json").exists()
    assert _no_temporaries(tmp_path) == []


def _can_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_a_really_full_disk_is_one_line(tmp_path):
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs root to mount a 2 MB tmpfs; the injected form above runs everywhere")
    try:
        done = subprocess.run([sys.executable, "-m", "analysis.cli", "generate", "--out", str(disk / "gen"),
                               "--events", "40000", "--files-per-sample", "1", "--quiet"],
                              capture_output=True, text=True, timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert "no space left on device" in lines[0] and "Traceback" not in done.stderr
        assert not (disk / "gen" / "fileset.json").exists() and _no_temporaries(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# -- the dask cluster on a shared machine ---------------------------------------------------------

def _listening(process: psutil.Process) -> list[str]:
    found = []
    for proc in [process, *process.children(recursive=True)]:
        try:
            found += [c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    return found


def test_the_local_cluster_listens_on_this_machine_only():
    from analysis.core.cluster import dask_client

    before = set(_listening(psutil.Process()))
    with dask_client(ClusterConfig(n_workers=1, memory_limit="1GiB")) as client:
        addresses = set(_listening(psutil.Process())) - before
        assert client.dashboard_link.startswith("http://127.0.0.1:")
    assert addresses and addresses <= {"127.0.0.1"}, addresses


# -- credentials in URLs -----------------------------------------------------------------------

def test_credentials_are_redacted_unit():
    from analysis.core.net import redact

    text = redact(f"cannot read {SECRET_URL}: refused")
    assert "s3cr3t-pw" not in text and "TOKEN-abc123" not in text
    assert "alice:***@127.0.0.1:9/store/mc/DY.root?authz=***&x=1" in text
    assert redact("/plain/path/file.root") == "/plain/path/file.root"


def _fileset_with_secret(good: Path, out: Path) -> Path:
    fileset = {"DYJetsToLL": {"files": {str(good): "Events", SECRET_URL: "Events"},
                              "metadata": {"process": "DY", "label": 0, "xsec_pb": 3503.7, "sumw": 1000.0}}}
    out.write_text(json.dumps(fileset))
    return out


def test_credentials_are_redacted_in_messages(tmp_path, capsys):
    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps({"DYJetsToLL": {"files": {SECRET_URL: "Events"},
                                                  "metadata": {"process": "DY", "label": 0,
                                                               "xsec_pb": 3503.7, "sumw": 1000.0}}}))
    config = tmp_path / "fast.toml"
    config.write_text("[skim]\nretries = 0\nretry_wait = 0.0\ntimeout = 5\n")
    code, err = _cli(capsys, "skim", fileset, "--out", tmp_path / "skim", "--executor", "iterative",
                     "--config", config, "--quiet")
    assert code == 1
    assert "alice:***@127.0.0.1:9/store/mc/DY.root?authz=***&x=1" in err, err
    assert "s3cr3t-pw" not in err and "TOKEN-abc123" not in err
    # a plain path is shown as it is
    plain = tmp_path / "plain" / "file.root"
    fileset.write_text(json.dumps({"DYJetsToLL": {"files": {str(plain): "Events"},
                                                  "metadata": {"process": "DY", "label": 0,
                                                               "xsec_pb": 3503.7, "sumw": 1000.0}}}))
    code, err = _cli(capsys, "skim", fileset, "--out", tmp_path / "skim", "--executor", "iterative",
                     "--config", config, "--quiet")
    assert code == 1 and str(plain) in err, err


def test_credentials_are_never_printed_nor_stored(generated_sample, tmp_path, capsys):
    raw = json.loads(generated_sample.read_text())
    good = (generated_sample.parent / next(iter(raw["DYJetsToLL"]["files"]))).resolve()
    fileset = _fileset_with_secret(good, tmp_path / "fileset.json")
    config = tmp_path / "fast.toml"
    config.write_text("[skim]\nretries = 0\nretry_wait = 0.0\ntimeout = 5\n")
    code, err = _cli(capsys, "skim", fileset, "--out", tmp_path / "stop", "--executor", "iterative",
                     "--config", config, "--quiet")
    assert code == 1 and "alice:***@127.0.0.1" in err
    code, err = _cli(capsys, "skim", fileset, "--out", tmp_path / "skim", "--executor", "iterative",
                     "--skip-bad-files", "--config", config, "--quiet")
    assert code == 0, err
    for text in [err, *(p.read_text() for p in (tmp_path / "skim").rglob("*.json"))]:
        assert "s3cr3t-pw" not in text and "TOKEN-abc123" not in text
    manifest = json.loads((tmp_path / "skim" / "manifest.json").read_text())
    assert "https://alice:***@127.0.0.1:9/store/mc/DY.root?authz=***&x=1" in [f["path"] for f in manifest["files"]]
    # the part summaries in the Parquet metadata are records too
    import pyarrow.parquet as pq
    for part in (tmp_path / "skim").rglob("part-*.parquet"):
        assert b"s3cr3t" not in b"".join(v for v in (pq.read_metadata(part).metadata or {}).values())


def test_batch_jobs_read_credentials_from_the_users_fileset_only(generated_sample, tmp_path, capsys):
    from analysis.skim.inputs import load_fileset

    raw = json.loads(generated_sample.read_text())
    good = (generated_sample.parent / next(iter(raw["DYJetsToLL"]["files"]))).resolve()
    fileset = _fileset_with_secret(good, tmp_path / "fileset.json")
    code, err = _cli(capsys, "submit", fileset, "--out", tmp_path / "skim", "--jobs", "2", "--dry-run")
    assert code == 0, err
    assert "s3cr3t-pw" not in err and "TOKEN-abc123" not in err
    jobs = tmp_path / "skim" / "jobs"
    for path in jobs.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "s3cr3t-pw" not in text and "TOKEN-abc123" not in text, path
    # ...yet the job whose slice holds the URL reads the real one, from the user's fileset
    urls = [url for k in (0, 1) for url in load_fileset(jobs / str(k) / "fileset.json")["DYJetsToLL"]["files"]]
    assert SECRET_URL in urls and str(good) in urls
