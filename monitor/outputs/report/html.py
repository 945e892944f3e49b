"""Small HTML helpers for the report builders: escaping, links, the inline assets and the page shell."""

from __future__ import annotations

import json
from functools import lru_cache
from html import escape
from pathlib import Path
from urllib.parse import quote

REFRESH_S = 5  # a live page reloads itself this often


def text(value: object) -> str:
    """`value` as HTML text or attribute value: every <, >, &, and both quotes escaped."""
    return escape(str(value), quote=True)


def href(path: str) -> str:
    """A relative path (folders joined with "/") as a URL path, escaped for an attribute."""
    return text(quote(path, safe="/"))


def json_script(element_id: str, value: object) -> str:
    """`value` as JSON in a non-executed script element; "<", ">" and "&" are escaped inside the JSON
    strings, so no content can close the element or start markup."""
    return f'<script type="application/json" id="{element_id}">{script_json(value)}</script>'


def script_json(value: object) -> str:
    """JSON that is also safe inside a script element: ASCII only, and no <, > or & characters."""
    encoded = json.dumps(value, ensure_ascii=True, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return encoded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@lru_cache(maxsize=None)
def asset(name: str) -> str:
    """One of the package's inline assets (report.css, report.js)."""
    return (Path(__file__).parent / name).read_text(encoding="utf-8")


def document(title: str, body: str, *, script: str = "") -> str:
    """A whole page: the inline stylesheet, `body` and an inline `script` (no file from elsewhere)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<link rel=\"icon\" href=\"data:,\">\n"  # no favicon request: nothing but the page's own files
            f"<title>{text(title)}</title>\n<style>\n{asset('report.css')}</style>\n</head>\n<body>\n{body}\n"
            + (f"<script>\n{script}</script>\n" if script else "") + "</body>\n</html>\n")


def status_badge(status: str) -> str:
    known = status if status in ("running", "completed", "failed", "interrupted", "stale") else "other"
    return f'<span class="status status-{known}">{text(status)}</span>'


def key_value_table(rows: list[tuple[str, str]]) -> str:
    """A two-column table; `rows` hold (label, HTML of the value)."""
    body = "".join(f"<tr><th>{text(label)}</th><td>{value}</td></tr>" for label, value in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'
