"""Remote input against real servers (skim stage, `make test-integration`): XRootD and HTTPS.

A generated sample (~20,000 events) is served by Debian's ``xrootd`` (started by
``start_xrootd.sh``, installed by it when missing) and by an HTTPS server (http.server with
Range support and a self-signed certificate made here with openssl). `hepprep skim` runs
as a user would run it, a subprocess with the futures executor, over ``root://`` and
``https://`` filesets and must give the same rows as the skim of the local files. Then each
server is stopped mid-run: the skim tries again and ends with one clear line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from _remote_helpers import FileServer, url_fileset
from _skim_helpers import read_skim

from analysis.config import config_from_dict
from analysis.skim.runner import run_skim

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
HEPPREP = Path(sys.executable).with_name("hepprep")
EVENTS = 20_000
CHUNKSIZE = 2_000
XROOTD_PORT = 21094 + os.getpid() % 1000  # beside the standard 1094, per test session
CONFIG_TOML = f"""
[skim]
chunksize = {CHUNKSIZE}
retries = 2
retry_wait = 0.5
timeout = 5
"""


@pytest.fixture(scope="module")
def served_sample():
    """A generated sample in a folder that the (non-root) xrootd user can read."""
    # Imported here, not at module level: `make test` collects this file without the extra.
    import fsspec_xrootd  # noqa: F401 - root:// support; `make test-integration` installs hepprep[xrootd]

    from analysis.generate.runner import generate_samples

    root = Path(tempfile.mkdtemp(prefix="hepprep-remote-"))
    root.chmod(0o755)
    try:
        config = config_from_dict({"generate": {"events": EVENTS, "files_per_sample": 2, "seed": 5,
                                                "data_scale": 0.1}})
        fileset = generate_samples(root / "sample", config, progress=False)
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        yield fileset
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_rows(served_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("remote-local") / "skim"
    run_skim(served_sample, out, config_from_dict({"skim": {"chunksize": CHUNKSIZE}}),
             executor="iterative", progress=False)
    rows = read_skim(out)
    assert len(rows) > 1000
    return rows


def _start_xrootd(export: Path, port: int, run_dir: Path) -> int:
    done = subprocess.run([str(HERE / "start_xrootd.sh"), str(export), str(port), str(run_dir)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _run_dir(served_sample: Path, name: str) -> Path:
    """Log and pid folder of a server: beside the sample, where the xrootd user can write."""
    return served_sample.parent.parent / name


@pytest.fixture(scope="module")
def xrootd_server(served_sample):
    pid = _start_xrootd(served_sample.parent, XROOTD_PORT, _run_dir(served_sample, "xrootd-run"))
    yield f"root://localhost:{XROOTD_PORT}/"
    _stop(pid)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _xrootd_fileset(fileset: Path, base: str, out: Path) -> Path:
    return url_fileset(fileset, base, out, path_of=lambda rel: str((fileset.parent / rel).resolve()))


def _skim_cli(fileset: Path, out: Path, config: Path, *, env: dict[str, str] | None = None,
              ) -> subprocess.Popen:
    return subprocess.Popen([str(HEPPREP), "skim", str(fileset), "--out", str(out), "--executor", "futures",
                             "--workers", "2", "--config", str(config), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _config_file(folder: Path) -> Path:
    path = folder / "remote.toml"
    path.write_text(CONFIG_TOML)
    return path


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _kill_at_first_part(proc: subprocess.Popen, out: Path, stop) -> None:
    deadline = time.monotonic() + 300
    while not any(out.glob("*/part-*.parquet")):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the skim wrote no part"
        time.sleep(0.01)
    stop()


def test_skim_over_root_urls_equals_local_skim(served_sample, local_rows, xrootd_server, tmp_path):
    fileset = _xrootd_fileset(served_sample, xrootd_server, tmp_path / "fileset.json")
    assert next(iter(json.loads(fileset.read_text()).values()))["files"]
    rc, err = _finish(_skim_cli(fileset, tmp_path / "skim", _config_file(tmp_path)))
    assert rc == 0, err
    manifest = json.loads((tmp_path / "skim" / "manifest.json").read_text())
    assert manifest["complete"] and all(f["path"].startswith("root://localhost:") for f in manifest["files"])
    assert read_skim(tmp_path / "skim").equals(local_rows)


def test_skim_over_https_urls_equals_local_skim(served_sample, local_rows, tls_files, tmp_path):
    cert, key = tls_files
    with FileServer(served_sample.parent, certfile=str(cert), keyfile=str(key)) as server:
        assert server.base_url.startswith("https://")
        fileset = url_fileset(served_sample, server.base_url, tmp_path / "fileset.json")
        # The client trusts the self-signed certificate through SSL_CERT_FILE, as a user would.
        rc, err = _finish(_skim_cli(fileset, tmp_path / "skim", _config_file(tmp_path),
                                    env={"SSL_CERT_FILE": str(cert)}))
        assert rc == 0, err
        assert read_skim(tmp_path / "skim").equals(local_rows)

        # Without the CA the certificate cannot be verified: one clear line, no retries.
        rc, err = _finish(_skim_cli(fileset, tmp_path / "untrusted", _config_file(tmp_path)))
        assert rc != 0
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"hepprep: error: {server.base_url}/") and "certificate verify failed" in last
        assert "tries" not in last


def _gave_up_on_a_stopped_server(line: str, cause: str) -> bool:
    """The skim's last line names a file of the stopped server after its tries (skim.retries = 2).

    The first read that meets the stopped server uses all 3 tries; the later reads of each
    worker process get one (`analysis.skim.remote.UnreachableServers`), and either may be named.
    """
    return (f".root: cannot read after 3 tries: {cause}" in line
            or (".root: cannot read: its server failed 3 tries of an earlier read in this skim, "
                f"and this read's one try: {cause}") in line)


def test_xrootd_server_stopped_mid_skim_retries_then_fails_clearly(served_sample, tmp_path):
    export = served_sample.parent
    port = XROOTD_PORT + 1
    pid = _start_xrootd(export, port, _run_dir(served_sample, "xrootd-stopped-run"))
    try:
        fileset = _xrootd_fileset(served_sample, f"root://localhost:{port}/", tmp_path / "fileset.json")
        # The XRootD client retries a refused connection by itself for ~15 s (its timeout
        # resolution) before reporting it; with one connection try per read, the retries
        # under test are hepprep's (skim.retries), and the test takes seconds, not minutes.
        proc = _skim_cli(fileset, tmp_path / "skim", _config_file(tmp_path), env={"XRD_CONNECTIONRETRY": "1"})
        _kill_at_first_part(proc, tmp_path / "skim", lambda: _stop(pid))
        rc, err = _finish(proc)
    finally:
        _stop(pid)
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"hepprep: error: root://localhost:{port}//")
    assert _gave_up_on_a_stopped_server(last, "OSError: ")
    manifest = json.loads((tmp_path / "skim" / "manifest.json").read_text())
    assert not manifest["complete"]


def test_https_server_stopped_mid_skim_retries_then_fails_clearly(served_sample, tls_files, tmp_path):
    cert, key = tls_files
    server = FileServer(served_sample.parent, certfile=str(cert), keyfile=str(key))
    try:
        fileset = url_fileset(served_sample, server.base_url, tmp_path / "fileset.json")
        proc = _skim_cli(fileset, tmp_path / "skim", _config_file(tmp_path), env={"SSL_CERT_FILE": str(cert)})
        _kill_at_first_part(proc, tmp_path / "skim", server.stop)
        rc, err = _finish(proc)
    finally:
        server.stop()
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"hepprep: error: {server.base_url}/")
    assert _gave_up_on_a_stopped_server(last, "ClientConnectorError: Cannot connect to host 127.0.0.1")
