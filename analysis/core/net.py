"""Core (all stages): URLs of remote inputs, and the credentials they may carry.

A fileset may name ``root://user:password@host//store/...`` or a URL with a token in its
query (``?authz=...``, ``?access_token=...``, signed S3 URLs). hepprep reads those files
with the URL as given, but never repeats the secret: every message it prints and every
record it writes (manifests, part summaries, the batch submission) carries the URL through
`redact`, which keeps the scheme, user, host and path and replaces the secret by ``***``.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "has_credentials", "redact"]

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
