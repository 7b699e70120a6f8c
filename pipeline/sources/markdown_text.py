"""Markdown structure: the headings of a Markdown text as sections, with markdown-it-py.

The text itself is kept as written (its content hash, its character offsets and what is
embedded are the file's own); only the headings are found, by a CommonMark parser, so a
``#`` line inside a code block is not a heading and setext headings (underlined with
``===`` or ``---``) are. A YAML front matter block is not read as a heading.
"""

from __future__ import annotations

import re
from functools import cache

from markdown_it import MarkdownIt

from pipeline.models import Section
from pipeline.sources.formats import HeadingPath


@cache
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark")


_FRONT_MATTER = re.compile(r"\A---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)


def _without_front_matter(text: str) -> str:
    """``text`` with a YAML front matter block (``---`` ... ``---`` at the very start, as
    static site generators and model cards have) blanked, its lines kept: CommonMark
    would read its closing ``---`` as the underline of a heading."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return text
    return "\n" * match.group().count("\n") + text[match.end() :]


def markdown_sections(text: str) -> tuple[Section, ...]:
    """One section per heading of ``text``: it starts at the heading's first line, its
    body after the heading's last line."""
    tokens = _parser().parse(_without_front_matter(text))
    headings = [
        (int(tok.tag[1]), tokens[i + 1].content, tok.map)
        for i, tok in enumerate(tokens)
        if tok.type == "heading_open" and tok.map is not None and i + 1 < len(tokens)
    ]
    if not headings:
        return ()
    line_starts = [0]
    at = text.find("\n")
    while at >= 0:
        line_starts.append(at + 1)
        at = text.find("\n", at + 1)
    line_starts.append(len(text) + 1)  # the end, as if a newline followed the last line
    path = HeadingPath()
    sections: list[Section] = []
    for level, title, (first, after) in headings:
        start = line_starts[min(first, len(line_starts) - 1)]
        body = line_starts[min(after, len(line_starts) - 1)] - 1
        sections.append(Section(start, path.enter(level, title), None, max(start, body)))
    return tuple(sections)
