"""A tiny document model rendered to Markdown and to HTML, from the Jinja2 templates in templates/.

The report is built once as blocks (headings, paragraphs, tables, images, code, lists) and written in both formats,
so no Markdown parser is needed. Inline text supports `code` spans, **bold** and [text](http://...) links. The HTML
embeds its images, so that it reads alone (in MLflow's artifact viewer, where relative files do not load)."""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import jinja2
from markupsafe import Markup, escape


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
_KINDS = (Heading, Paragraph, Table, Image, Code, Bullets)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _bold(escaped: Markup) -> Markup:
    """**bold** and [text](http://...) links, in already escaped text (as str: `re` would escape
    the tags it inserts into a Markup)."""
    linked = re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r'<a href="\2">\1</a>', str(escaped))
    return Markup(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", linked))


def _inline(text: str) -> Markup:
    """Escape for HTML, turning `code` spans into <code> and **bold** into <strong>.

    By hand: Jinja2 renders no inline Markdown, and these three forms are all the report writes."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick: keep it literal
        parts = [str(text)]
    return Markup("").join(Markup("<code>%s</code>") % p if i % 2 else _bold(escape(p)) for i, p in enumerate(parts))


def _data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}.get(path.suffix.lower(), "image/png")
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("resnet_pipeline.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html.j2"]), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters.update(cell=_md_cell, inline=_inline)
    env.tests.update({kind.__name__.lower(): functools.partial(lambda k, b: isinstance(b, k), kind) for kind in _KINDS})
    return env


def _render(template: str, blocks: Sequence[Block], **context) -> str:
    for b in blocks:
        if not isinstance(b, _KINDS):
            raise TypeError(f"unknown block {type(b).__name__}")
    return _environment().get_template(template).render(blocks=blocks, **context)


def to_markdown(blocks: Sequence[Block]) -> str:
    return _render("report.md.j2", blocks)


def to_html(blocks: Sequence[Block], title: str, images_root: Path | None = None) -> str:
    """``images_root``: the folder the images' paths are relative to; they are then embedded."""
    src = (lambda path: _data_uri(images_root / path)) if images_root is not None else str
    return _render("report.html.j2", blocks, title=title, src=src)
