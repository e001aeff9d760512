"""Remote input (skim stage): retry policy, URL filesets, and the skim over a local HTTP server.

The server is `tests/_remote_helpers.FileServer` (http.server with Range support) on
127.0.0.1 in a thread; the XRootD and HTTPS servers are in tests/integration/.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest
from _remote_helpers import FileServer, url_fileset
from _skim_helpers import read_skim
from aiohttp import ClientResponseError, ServerDisconnectedError
from coffea import processor

from analysis.skim import remote
from analysis.config import config_from_dict
from analysis.core.net import is_remote, require_backend, transient_cause
from analysis.errors import HepprepError, InputFileError
from analysis.skim.inputs import load_fileset
from analysis.skim.remote import UnreachableServers, call_with_retries
from analysis.skim.runner import run_skim

# One small dataset (two files, six chunks): enough chunks to stop a server between them.
DATASETS = ["GluGluToHToTauTau"]
CHUNKSIZE = 100


def _config(**skim):
    return config_from_dict({"skim": {"chunksize": CHUNKSIZE, "retries": 2, "retry_wait": 0.05,
                                      "timeout": 10, **skim}})


def _response_error(status: int) -> ClientResponseError:
    return ClientResponseError(request_info=None, history=(), status=status, message="x")


# ---------------------------------------------------------------- retry policy, by hand


@pytest.mark.parametrize(("err", "transient"), [
    (ConnectionRefusedError(111, "Connection refused"), True),
    (TimeoutError("read timed out"), True),
    (OSError("Failed to open file: [ERROR] Operation expired"), True),  # fsspec-xrootd
    (ServerDisconnectedError(), True),
    (_response_error(503), True),
    (_response_error(404), False),
    (FileNotFoundError("http://h/x.root"), False),
    (PermissionError("denied"), False),
    (ValueError("not a ROOT file"), False),
])
def test_transient_cause_separates_network_failures_from_file_faults(err, transient):
    assert (transient_cause(err) is err) == transient


def test_transient_cause_follows_the_cause_chain():
    """coffea wraps a failed open in a plain Exception `from` the real error."""
    refused = ConnectionRefusedError(111, "Connection refused")
    try:
        try:
            raise refused
        except OSError as inner:
            raise Exception("Failed to open file: WorkItem(...)") from inner
    except Exception as outer:  # noqa: BLE001
        assert transient_cause(outer) is refused
    missing = FileNotFoundError("gone")
    wrapped = Exception("Failed to open file")
    wrapped.__cause__ = missing
    assert transient_cause(wrapped) is None


class _Flaky:
    """Fails with `error` on the first `failures` calls, then returns "ok"."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_call_with_retries_tries_again_after_waiting(monkeypatch):
    waits = []
    monkeypatch.setattr(remote.time, "sleep", waits.append)
    read = _Flaky(2, ConnectionResetError(104, "Connection reset by peer"))
    assert call_with_retries(read, url="root://h//f.root", retries=2, wait=1.5) == "ok"
    assert read.calls == 3
    assert waits == [1.5, 1.5]


def test_call_with_retries_last_failure_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    read = _Flaky(5, ConnectionRefusedError(111, "Connection\nrefused"))
    with pytest.raises(InputFileError) as info:
        call_with_retries(read, url="https://h/f.root", retries=3, wait=0)
    assert read.calls == 4
    assert info.value.path == "https://h/f.root"
    assert str(info.value).startswith(
        "https://h/f.root: cannot read after 4 tries: ConnectionRefusedError: [Errno 111] Connection refused")
    assert "\n" not in str(info.value)
    assert "skim.retries" in str(info.value)
    with pytest.raises(InputFileError, match="cannot read after 1 try: "):
        call_with_retries(_Flaky(1, TimeoutError("t")), url="u://x", retries=0, wait=0)


def test_a_server_that_failed_every_try_gets_one_try_per_read_until_it_answers(monkeypatch):
    waits = []
    monkeypatch.setattr(remote.time, "sleep", waits.append)
    unreachable = UnreachableServers()
    refused = ConnectionRefusedError(111, "Connection refused")
    first = _Flaky(5, refused)
    with pytest.raises(InputFileError, match="cannot read after 3 tries: ConnectionRefusedError"):
        call_with_retries(first, url="root://eos:1094//a.root", retries=2, wait=1.0,
                          unreachable=unreachable)
    assert first.calls == 3 and waits == [1.0, 1.0]

    # Another file of the same server: one try, no pause, and the error says why.
    second = _Flaky(5, refused)
    with pytest.raises(InputFileError) as info:
        call_with_retries(second, url="root://eos:1094//b.root", retries=2, wait=1.0,
                          unreachable=unreachable)
    assert second.calls == 1 and waits == [1.0, 1.0]
    assert str(info.value).startswith(
        "root://eos:1094//b.root: cannot read: its server failed 3 tries of an earlier read in "
        "this skim, and this read's one try: ConnectionRefusedError: [Errno 111] Connection refused")

    # Another server keeps its retries; so does a missing file's error (not the server's).
    other = _Flaky(2, refused)
    assert call_with_retries(other, url="root://other:1094//a.root", retries=2, wait=1.0,
                             unreachable=unreachable) == "ok"
    assert other.calls == 3
    with pytest.raises(FileNotFoundError):
        call_with_retries(_Flaky(1, FileNotFoundError("c.root")), url="root://eos:1094//c.root",
                          retries=2, wait=0, unreachable=unreachable)

    # The server answers again: it is forgotten, and its next failure gets every try again.
    assert call_with_retries(_Flaky(0, refused), url="root://eos:1094//c.root", retries=2, wait=0,
                             unreachable=unreachable) == "ok"
    third = _Flaky(5, refused)
    with pytest.raises(InputFileError, match="cannot read after 3 tries"):
        call_with_retries(third, url="root://eos:1094//d.root", retries=2, wait=0,
                          unreachable=unreachable)
    assert third.calls == 3


def test_each_skim_keeps_its_own_memory_of_unreachable_servers():
    # Two runners (two skims) in one worker process never share what they found down.
    first, second = (remote.RetryingRunner(executor=processor.IterativeExecutor()) for _ in range(2))
    assert first.skim_id != second.skim_id
    assert first.automatic_retries.args[0] == first.skim_id


def test_call_with_retries_does_not_retry_a_missing_file():
    read = _Flaky(5, FileNotFoundError("https://h/f.root"))
    with pytest.raises(FileNotFoundError):
        call_with_retries(read, url="https://h/f.root", retries=3, wait=0)
    assert read.calls == 1


def test_urls_are_remote_and_left_untouched_by_the_fileset(tmp_path):
    assert is_remote("root://eos.cms//store/a.root") and is_remote("https://h/a.root")
    assert not is_remote("/data/a.root") and not is_remote("file:///data/a.root")
    urls = ["root://eoscms.cern.ch//eos/cms/store/x.root", "https://opendata.cern.ch/a/b.root",
            "http://127.0.0.1:8080/c.root"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "fileset.json").write_text(json.dumps(
        {"DY": {"files": {**{u: "Events" for u in urls}, "local/d.root": "Events"},
                "metadata": {"label": 0, "xsec_pb": 1.0}}}))
    files = load_fileset(tmp_path / "sub" / "fileset.json")["DY"]["files"]
    assert list(files) == [*urls, str(tmp_path / "sub" / "local" / "d.root")]


def test_root_urls_without_fsspec_xrootd_name_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec_xrootd", None)  # makes `import fsspec_xrootd` fail
    with pytest.raises(HepprepError, match=re.escape(
            "reading 'eos.cern.ch:1094' over XRootD needs the optional package 'fsspec-xrootd': "
            "pip install 'hepprep[xrootd]'")):
        require_backend("root://eos.cern.ch:1094//store/x.root")
    require_backend("https://opendata.cern.ch/x.root")  # HTTP needs no optional package


# ---------------------------------------------------------------- skim over a local HTTP server


@pytest.fixture(scope="module")
def local_skim(generated_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("remote-local-skim")
    fileset = url_fileset(generated_sample, str(generated_sample.parent), out / "fileset.json",
                          datasets=DATASETS)
    run_skim(fileset, out / "skim", _config(), executor="iterative", progress=False)
    return read_skim(out / "skim")


def _when_first_part(out: Path, action) -> threading.Thread:
    """Run `action` as soon as the skim in `out` has written its first part."""
    def watch():
        deadline = time.monotonic() + 120
        while not any(out.glob("*/part-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.005)
        action()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_skim_over_http_equals_local_skim(generated_sample, local_skim, tmp_path):
    """In-process executor here (fast); worker processes over root:// and https:// are in
    tests/integration/test_remote_servers.py."""
    with FileServer(generated_sample.parent) as server:
        fileset = url_fileset(generated_sample, server.base_url, tmp_path / "fileset.json",
                              datasets=DATASETS)
        summary = run_skim(fileset, tmp_path / "skim", _config(), executor="iterative", progress=False)
    assert summary["chunks_run"] >= 5
    manifest = json.loads((tmp_path / "skim" / "manifest.json").read_text())
    assert all(f["path"].startswith("http://127.0.0.1:") for f in manifest["files"])
    remote_rows = read_skim(tmp_path / "skim")
    assert len(remote_rows) == len(local_skim) > 0
    assert remote_rows.equals(local_skim)


def test_dropped_connections_mid_skim_are_retried(generated_sample, local_skim, tmp_path):
    """The server hangs up on 3 requests after the first part: retries recover the chunk;
    with retries = 0 the same fault is an error."""
    with FileServer(generated_sample.parent) as server:
        fileset = url_fileset(generated_sample, server.base_url, tmp_path / "fileset.json",
                              datasets=DATASETS)
        server.drop_requests(3)  # the checks of the first file meet the fault first
        _when_first_part(tmp_path / "skim", lambda: server.drop_requests(3))
        run_skim(fileset, tmp_path / "skim", _config(retries=2), executor="iterative", progress=False)
        assert server._server.drop_next == 0  # every planned fault did hit the skim
        assert read_skim(tmp_path / "skim").equals(local_skim)

        server.drop_requests(3)
        with pytest.raises(InputFileError, match=r"^http://127\.0\.0\.1:\d+/\S+\.root: cannot read after 1 try: "
                                                 r"ServerDisconnectedError"):
            run_skim(fileset, tmp_path / "skim-no-retry", _config(retries=0), executor="iterative",
                     progress=False)


def test_server_stopped_mid_skim_gives_retries_then_a_clear_error(generated_sample, local_skim,
                                                                  tmp_path, monkeypatch):
    tries = []
    real_sleep = time.sleep
    monkeypatch.setattr(remote.time, "sleep", lambda s: (tries.append(s), real_sleep(s)))
    server = FileServer(generated_sample.parent)
    fileset = url_fileset(generated_sample, server.base_url, tmp_path / "fileset.json", datasets=DATASETS)
    stopper = _when_first_part(tmp_path / "skim", server.stop)
    with pytest.raises(InputFileError) as info:
        run_skim(fileset, tmp_path / "skim", _config(retries=2), executor="iterative", progress=False)
    stopper.join()
    message = str(info.value)
    assert message.startswith(f"{server.base_url}/")
    full = "cannot read after 3 tries: ClientConnectorError: Cannot connect to host 127.0.0.1"
    known = ("cannot read: its server failed 3 tries of an earlier read in this skim, and this "
             "read's one try: ClientConnectorError: Cannot connect to host 127.0.0.1")
    assert full in message or known in message
    done = sorted((tmp_path / "skim").glob("*/part-*.parquet"))
    manifest = json.loads((tmp_path / "skim" / "manifest.json").read_text())
    assert manifest["complete"] is False and done
    planned = sum(-(-f["entries"] // CHUNKSIZE) for f in manifest["files"])
    assert planned - len(done) >= 2  # several chunks met the stopped server...
    assert tries.count(0.05) == 2  # ...but only the first paid its 2 pauses; the others one try
    errors = [f["error"] for f in manifest["files"] if f["error"]]
    assert errors and all(full in e or known in e for e in errors)

    # The server comes back on the same address: the re-run resumes and completes the skim.
    with FileServer(generated_sample.parent, port=server.port):
        summary = run_skim(fileset, tmp_path / "skim", _config(), executor="iterative", progress=False)
    assert summary["chunks_skipped"] >= len(done)
    assert read_skim(tmp_path / "skim").equals(local_skim)
