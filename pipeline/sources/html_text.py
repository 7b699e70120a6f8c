"""The main content of an HTML page: boilerplate removed by jusText, headings as sections.

jusText splits the page into blocks (paragraphs, list items, headings, table rows here)
and classifies each by its length and link density and by its neighbours: navigation
bars ("Prev Up Home Next"), menus, headers and footers are short, link-dense blocks and
go; scripts, styles and forms are dropped before. It runs language-independent (no stop
word list), so a page in any language is read alike; its lengths are lowered from the
defaults, which aim at news articles, so that manuals (short paragraphs, tables, code)
keep their content. A page where no block qualifies as content (a short page) keeps
every block that is not itself boilerplate-like (link-dense).

The text is one line per block, white space inside a block collapsed (a ``<pre>`` block
keeps its lines); words in separate inline elements stay apart; the cells of a table row
that are kept share one line, joined by `` | ``. Headings (``h1``–``h6``)
start sections whose path follows the heading levels. The ``<title>`` is the title and
is not repeated in the text.

Compared with trafilatura and readability-lxml on the 1,169 pages of the PostgreSQL 15
manual: trafilatura kept the text but dropped the headings of nearly every page (it
finds no main container in DocBook output), readability lost most of the text of about
a fifth of the pages (tables, definition lists); jusText with these settings keeps the
headings of 96 % of the pages, and no chunk starts with the navigation bar, where 11.7 %
did with the converter this replaced (bench/bench_documents.py).
"""

from __future__ import annotations

import re
from typing import Any

import justext
from justext.core import (
    ParagraphMaker,
    classify_paragraphs,
    html_to_dom,
    preprocessor,
    revise_paragraph_classification,
)
from justext.utils import is_blank
from lxml import etree

from pipeline.models import Section
from pipeline.sources.formats import Extracted, HeadingPath

# jusText settings (characters; share of characters in links); see the module docstring
_LENGTH_LOW = 20
_LENGTH_HIGH = 80
_MAX_LINK_DENSITY = 0.6
_HEADING = re.compile(r"\bh([1-6])\b")
_CELL_SEP = " | "


class _Blocks(ParagraphMaker):
    """jusText's paragraph maker, keeping a space for white space between inline
    elements (``<code>a</code> <code>b</code>`` is "a b", not "ab")."""

    def characters(self, content: str) -> None:
        if is_blank(content):
            if self.paragraph.text_nodes:
                self.paragraph.text_nodes.append(" ")
            return
        super().characters(content)


# the table row of a block (its xpath up to the row), when it is a table cell
_ROW = re.compile(r"^(.*/tr\[\d+\])/t[dh]\[\d+\](?:/[^/]*)?$")


def _row(block: Any) -> str | None:
    match = _ROW.match(block.xpath)
    return match.group(1) if match else None


def _title(dom: Any) -> str | None:
    title = dom.find(".//title")
    if title is None:
        return None
    return " ".join(title.text_content().split()) or None


def _block_text(paragraph: Any) -> str:
    raw = "".join(paragraph.text_nodes)
    if paragraph.dom_path.endswith(".pre") or ".pre." in paragraph.dom_path:
        lines = (" ".join(line.split()) for line in raw.strip().splitlines())
        return "\n".join(line for line in lines if line)
    return " ".join(raw.split())


def html_to_text(html: str) -> Extracted:
    """The main content of ``html`` as text with its headings; its ``<title>``."""
    try:
        dom = html_to_dom(html)
    except (etree.ParserError, ValueError):
        return Extracted("", (), None)  # no element at all: nothing to read
    title = _title(dom)
    dom = preprocessor(dom)
    blocks = _Blocks.make_paragraphs(dom)
    classify_paragraphs(
        blocks,
        frozenset(),
        length_low=_LENGTH_LOW,
        length_high=_LENGTH_HIGH,
        stopwords_low=0,
        stopwords_high=0,
        max_link_density=_MAX_LINK_DENSITY,
    )
    revise_paragraph_classification(blocks, justext.core.MAX_HEADING_DISTANCE_DEFAULT)
    kept = [b for b in blocks if b.class_type == "good"]
    if not kept:
        kept = [b for b in blocks if b.cf_class != "bad"]
    lines: list[str] = []
    sections: list[Section] = []
    path = HeadingPath()
    offset = 0
    last_row: str | None = None
    for block in kept:
        text = _block_text(block)
        if not text:
            continue
        row = _row(block)
        if row is not None and row == last_row:
            # the next cell of the same table row: on the row's line
            lines[-1] += _CELL_SEP + text
            offset += len(_CELL_SEP) + len(text)
            continue
        last_row = row
        levels = _HEADING.findall(block.dom_path)
        if levels:
            name = path.enter(int(levels[-1]), text)
            sections.append(
                Section(offset + bool(lines), name, None, offset + bool(lines) + len(text))
            )
        if lines:
            offset += 1  # the newline before this line
        lines.append(text)
        offset += len(text)
    return Extracted("\n".join(lines), tuple(sections), title)
