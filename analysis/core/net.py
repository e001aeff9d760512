"""Core (all stages): URLs of remote inputs, which of their failures may pass on another try, and the credentials they may carry.

Which failures are transient (a refused connection, a timeout, a dropped stream) and which
are not (a missing file, a refused permission, the output disk full) is decided here, once,
for the skim's retries (`analysis.skim.remote`) and the processors that must tell a
network hiccup from a damaged file.

A fileset may name ``root://user:password@host//store/...`` or a URL with a token in its
query (``?authz=...``, ``?access_token=...``, signed S3 URLs). hepprep reads those files
with the URL as given, but never repeats the secret: every message it prints and every
record it writes (manifests, part summaries, the batch submission) carries the URL through
`redact`, which keeps the scheme, user, host and path and replaces the secret by ``***``.
"""

from __future__ import annotations

import errno
import re
import ssl

from analysis.core.optional import optional_import

__all__ = ["REDACTED", "has_credentials", "is_remote", "is_transient", "output_failure", "redact",
           "require_backend", "transient_cause"]

REDACTED = "***"

# scheme://user:secret@host  ->  scheme://user:***@host
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@?#]*):(?P<secret>[^/\s@?#]*)@")
# Query parameters that carry a secret (XRootD authz tokens, OAuth bearer tokens, S3/GCS/Azure
# signatures and keys).
_SECRET_KEYS = ("authz", "access_token", "bearer_token", "token", "auth", "password", "passwd",
                "pass", "pwd", "secret", "api_key", "apikey", "key", "sig", "signature",
                "x-amz-signature", "x-amz-credential", "x-amz-security-token",
                "x-goog-signature", "x-goog-credential", "sv", "se", "sp", "sr", "skoid", "sktid")
_QUERY = re.compile(r"(?P<head>[?&;](?:" + "|".join(re.escape(k) for k in _SECRET_KEYS) + r")=)"
                    r"(?P<secret>[^&;#\s'\"]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``.

    >>> redact("root://cms:hunter2@eos.cern.ch//store/a.root?authz=abc&x=1")
    'root://cms:***@eos.cern.ch//store/a.root?authz=***&x=1'
    """
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{REDACTED}", text)


def has_credentials(url: str) -> bool:
    """True when `redact` would change ``url``."""
    return redact(url) != url


# Failures that say the file is not there, not ours to read, or its server not to be trusted
# (a certificate the client cannot verify): another try cannot help.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
              ssl.SSLCertVerificationError)
# Failures of the disk the skim writes to: neither the input's fault nor worth another try.
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def output_failure(err: BaseException) -> OSError | None:
    """The failure of the output disk (full, over quota, read-only) behind ``err``, or None.

    Such a chunk must stop the skim with that error, not count as a bad input file (with
    --skip-bad-files every file would be "skipped"), and is not retried.
    """
    for link in _chain(err):
        if isinstance(link, OSError) and (link.errno in _OUTPUT_ERRNOS
                                          or "No space left on device" in str(link)):
            return link
    return None


def is_remote(path: str) -> bool:
    """True for a URL read over the network (``root://``, ``https://`` ...), not ``file://``."""
    return "://" in path and not path.startswith("file://")


def require_backend(url: str) -> None:
    """Fail early, with the install command, when ``root://`` is asked without fsspec-xrootd."""
    if url.startswith(("root://", "xroot://")):
        optional_import("fsspec_xrootd", purpose=f"reading {url.split('/', 3)[2]!r} over XRootD")


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def transient_cause(err: BaseException) -> BaseException | None:
    """The network failure behind ``err`` (searched along its cause chain), or None.

    Connection refused or reset, timeouts and dropped streams count (OSError and its
    subclasses, which include fsspec-xrootd's errors, ``TimeoutError`` and aiohttp's
    connection errors, plus aiohttp's other client errors such as
    ``ServerDisconnectedError``, and HTTP 5xx answers); a missing file, a refused
    permission, an HTTP 4xx answer or an unverifiable TLS certificate does not.
    """
    try:
        from aiohttp import (
            ClientConnectorCertificateError,
            ClientError,
            ClientResponseError,
        )
    except ImportError:  # aiohttp only comes with fsspec's HTTP support
        ClientConnectorCertificateError = ClientError = ClientResponseError = ()  # noqa: N806
    for link in _chain(err):
        if isinstance(link, (_PERMANENT, ClientConnectorCertificateError)) or output_failure(link):
            return None
        if isinstance(link, ClientResponseError) and link.status < 500:
            return None  # 404, 403...: the server answered, the file is not to be had
        if isinstance(link, (OSError, ClientError)):
            return link
    return None


def is_transient(err: BaseException) -> bool:
    """True when another try of the same read may succeed (see `transient_cause`)."""
    return transient_cause(err) is not None
