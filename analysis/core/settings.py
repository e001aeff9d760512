"""Core (configuration): the generic parts of reading validated settings — merging, overrides, non-finite numbers, one-line errors.

`analysis.config` declares what the settings are; this module holds what does not depend
on them, so the configuration module stays the one readable list of every knob.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationError

__all__ = ["WeightProduct", "deep_merge", "first_non_finite", "format_validation_error", "given",
           "parse_compression", "parse_weight_product"]


def format_validation_error(err: ValidationError) -> str:
    """``key.path: why`` of the first error pydantic found (``skim.chunksize: unknown key``)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    msg = msg.removeprefix("Value error, ")
    # Validators raise "key: why" for a field inside the model; join it to the location.
    where = loc
    if ": " in msg and not msg.startswith("input"):
        head, rest = msg.split(": ", 1)
        if head.replace("_", "").replace(".", "").isalnum():
            where, msg = (f"{loc}.{head}" if loc else head), rest
    return f"{where}: {msg}" if where else msg


def deep_merge(base: dict[str, Any], update: dict[str, Any], *, replace: tuple[str, ...] = ()) -> dict[str, Any]:
    """``base`` with ``update`` merged in key by key; tables named in ``replace`` are replaced whole."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in replace:
            out[key] = deep_merge(out[key], value, replace=replace)
        else:
            out[key] = value
    return out


def given(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` without the values left as None (flags or keywords not given), nor empty tables."""
    out = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = given(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def first_non_finite(value: Any, where: str = "") -> str | None:
    """The key of the first float in ``value`` that is NaN or infinite, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = first_non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def parse_compression(value: str) -> tuple[str, int]:
    """Split 'ALG:LEVEL' (e.g. 'LZ4:1', 'ZSTD:5', or 'ZLIB' for its default level)."""
    alg, _, level = value.partition(":")
    alg = alg.upper()
    if alg not in {"ZLIB", "LZ4", "ZSTD", "LZMA"}:
        raise ValueError(f"unknown compression {value!r}: use ZLIB, LZ4, ZSTD or LZMA, as ALG:LEVEL")
    try:
        lvl = int(level) if level else {"ZLIB": 1, "LZ4": 1, "ZSTD": 5, "LZMA": 9}[alg]
    except ValueError:
        raise ValueError(f"compression level in {value!r} must be an integer") from None
    if not 0 <= lvl <= 22:
        raise ValueError(f"compression level in {value!r} must be within 0..22")
    return alg, lvl


_BRANCH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_weight_product(value: Any) -> tuple[str, ...]:
    """The event branches of a weight product: ``"genWeight * puWeight"`` or a list of names.

    Only a product of branches is accepted (the factors of CMS event weights); anything
    else (``+``, ``/``, numbers, an empty product) is a ``ValueError`` saying what is allowed.
    A constant factor is the dataset's ``weight_scale``, not part of the product.
    """
    if isinstance(value, str):
        factors = [f.strip() for f in value.split("*")]
    elif isinstance(value, (list, tuple)) and all(isinstance(f, str) for f in value):
        factors = [f.strip() for f in value]
    else:
        raise ValueError(f"must be a product of event branches such as \"genWeight * puWeight\" "
                         f"or a list of branch names, got {value!r}")
    bad = [f for f in factors if not _BRANCH_NAME.fullmatch(f)]
    if not factors or bad:
        raise ValueError(f"must be a product of event branch names such as \"genWeight * puWeight\" "
                         f"(a constant factor goes in weight_scale), got {value!r}")
    twice = sorted({f for f in factors if factors.count(f) > 1})
    if twice:
        raise ValueError(f"branch {twice[0]} appears twice in the product {value!r}")
    return tuple(factors)


def _check_weight_product(value: Any) -> Any:
    if value is not None:
        parse_weight_product(value)
    return value


# A weight product setting as given (a string or a list of branch names), checked.
WeightProduct = Annotated[str | list[str] | None, AfterValidator(_check_weight_product)]
