"""A tiny document model rendered to Markdown and to HTML.

The report is built once as blocks (headings, paragraphs, tables, images, code, lists) and
written in both formats, so no Markdown parser is needed. Inline text supports `code` spans,
**bold** and [text](http://...) links. The HTML embeds its images, so that it reads alone (in
MLflow's artifact viewer, where relative files do not load).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass
class Image:
    path: str  # relative to the report
    alt: str


@dataclass
class Code:
    text: str


@dataclass
class Bullets:
    items: Sequence[str] = field(default_factory=list)


Block = Union[Heading, Paragraph, Table, Image, Code, Bullets]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Paragraph):
            out.append(b.text)
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out[-1] += "\n|" + "|".join("---" for _ in b.header) + "|"
            for row in b.rows:
                out[-1] += "\n| " + " | ".join(_md_cell(c) for c in row) + " |"
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.path})")
        elif isinstance(b, Code):
            out.append("```\n" + b.text.rstrip("\n") + "\n```")
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items))
        else:
            raise TypeError(f"unknown block {type(b).__name__}")
    return "\n\n".join(out) + "\n"


def _bold(escaped: str) -> str:
    """**bold** and [text](http://...) links, in already escaped text."""
    linked = re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r'<a href="\2">\1</a>', escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", linked)


def _inline(text: str) -> str:
    """Escape for HTML, turning `code` spans into <code> and **bold** into <strong>."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick: keep it literal
        return _bold(html.escape(str(text)))
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else _bold(html.escape(p)) for i, p in enumerate(parts))


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
code, pre { background: #f6f6f6; font-family: ui-monospace, monospace; }
pre { padding: 0.75rem; overflow-x: auto; }
img { max-width: 100%; }
"""


def _data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}.get(path.suffix.lower(), "image/png")
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def to_html(blocks: Sequence[Block], title: str, images_root: Path | None = None) -> str:
    """``images_root``: the folder the images' paths are relative to; they are then embedded."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            level = min(max(b.level, 1), 6)
            body.append(f"<h{level}>{_inline(b.text)}</h{level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Image):
            src = _data_uri(images_root / b.path) if images_root is not None else html.escape(b.path, quote=True)
            alt = html.escape(b.alt, quote=True)
            body.append(f'<p><img src="{src}" alt="{alt}"></p>')
        elif isinstance(b, Code):
            body.append(f"<pre><code>{html.escape(b.text.rstrip())}</code></pre>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in b.items) + "</ul>")
        else:
            raise TypeError(f"unknown block {type(b).__name__}")
    head = (f'<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>')
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n{head}\n</head>\n<body>\n' + "\n".join(body)
            + "\n</body>\n</html>\n")
