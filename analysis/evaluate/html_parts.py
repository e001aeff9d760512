"""Evaluation stage: the HTML cells and tables report.html is built of, shared by the binary and the target reports."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["escape", "table"]


def escape(value: Any) -> str:
    """``value`` as text safe inside HTML (quotes escaped too)."""
    return html.escape(str(value), quote=True)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain HTML table of escaped cells."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
