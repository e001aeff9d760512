"""Remote-input test helpers (skim stage): a local HTTP(S) file server and URL filesets.

Python's `http.server` answers every GET with the whole file, but uproot reads ROOT files
through fsspec with HTTP ``Range`` requests; `RangeRequestHandler` adds single-range
``206 Partial Content`` answers, which is all a ROOT reader needs. `FileServer` runs it in
a thread on 127.0.0.1 (optionally over TLS) and can be stopped mid-run to simulate a
server that goes away.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """`SimpleHTTPRequestHandler` that honours one ``Range: bytes=a-b`` per request.

    ``server.drop_next`` (int) makes the server hang up on that many requests without an
    answer, as an overloaded or restarting server does.
    """

    def handle_one_request(self):
        with self.server.lock:
            drop = self.server.drop_next > 0
            self.server.drop_next -= drop
        if drop:
            self.raw_requestline = self.rfile.readline(65537)
            self.close_connection = True  # hang up: the client sees a dropped connection
            return
        super().handle_one_request()

    def log_message(self, format, *args):  # noqa: A002 - keep pytest output clean
        pass

    def send_head(self):
        match = _RANGE.match(self.headers.get("Range", "").strip())
        if match is None:
            return super().send_head()
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        size = os.path.getsize(path)
        start = int(match.group(1))
        stop = min(int(match.group(2)) + 1 if match.group(2) else size, size)
        if start >= size:
            self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by SimpleHTTPRequestHandler.do_GET
        f.seek(start)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = stop - start
        return f

    def copyfile(self, source, outputfile):
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(remaining))
        self._remaining = None


class FileServer:
    """Serve ``root`` over HTTP (or HTTPS with ``certfile``/``keyfile``) on 127.0.0.1.

    ``base_url`` is ``http(s)://127.0.0.1:<port>``; `stop` closes the listening socket, so
    later requests are refused, as when a real server goes down.
    """

    def __init__(self, root: str | Path, *, certfile: str | None = None, keyfile: str | None = None,
                 port: int = 0):
        handler = partial(RangeRequestHandler, directory=str(root))
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._server.lock = threading.Lock()
        self._server.drop_next = 0
        self.port = self._server.server_address[1]
        scheme = "http"
        if certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def drop_requests(self, n: int) -> None:
        """Hang up on the next ``n`` requests (each is a failed try for the client)."""
        with self._server.lock:
            self._server.drop_next = n

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def url_fileset(fileset: Path, base_url: str, out: Path, *, datasets: list[str] | None = None,
                path_of=None) -> Path:
    """A copy of a generated fileset whose files are ``<base_url>/<relative path>`` URLs.

    Parameters
    ----------
    fileset : the generated ``fileset.json`` (paths relative to its folder)
    base_url : ``http://127.0.0.1:PORT`` (joined to the relative path with ``/``), or
        ``root://host:port/`` with ``path_of``
    datasets : keep only these datasets (all when None)
    path_of : optional callable(relative path) -> the rest of the URL (XRootD: the absolute path)
    """
    raw = json.loads(Path(fileset).read_text())
    out_raw = {}
    for name, entry in raw.items():
        if datasets is not None and name not in datasets:
            continue
        files = {}
        for rel, tree in entry["files"].items():
            url = f"{base_url}{path_of(rel)}" if path_of else f"{base_url.rstrip('/')}/{rel}"
            files[url] = tree
        out_raw[name] = {"files": files, "metadata": entry["metadata"]}
    out.write_text(json.dumps(out_raw))
    return out
