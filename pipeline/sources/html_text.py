"""HTML to plain text with the standard library's parser (no new dependency).

Good enough for embedding and summarising: tags go, script/style content goes, entities
are unescaped, white space is collapsed; block elements end a line, so paragraphs stay
apart for the chunker.
"""

from __future__ import annotations

from html.parser import HTMLParser

# Content of these elements is never text a reader sees.
_SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
# These end a line of text (the rest are inline: their text runs on).
_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "details", "div", "dl",
        "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4",
        "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
        "summary", "table", "td", "th", "tr", "ul",
    }
)  # fmt: skip


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        # Lines of text; a block element starts a new one. White space inside a line,
        # newlines of the source included, collapses to one space as a browser shows it.
        self.lines: list[list[str]] = [[]]
        self.title_parts: list[str] = []
        self._skip_depth = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP:
            self._skip_depth += 1
        elif tag in _BLOCK:
            self._break()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>, <hr/>: a line break; a self-closed <script/> opens nothing.
        if tag in _BLOCK:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP:
            self._skip_depth = max(self._skip_depth - 1, 0)
        elif tag in _BLOCK:
            self._break()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif self._skip_depth == 0:
            self.lines[-1].append(data)

    def _break(self) -> None:
        if self.lines[-1]:
            self.lines.append([])

    def text(self) -> str:
        collapsed = (" ".join("".join(line).split()) for line in self.lines)
        return "\n".join(line for line in collapsed if line)


def html_to_text(html: str) -> tuple[str, str | None]:
    """``(text, title)`` of an HTML document; ``title`` is the collapsed ``<title>`` or
    ``None`` when there is none. The title is not repeated in the text."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    title = " ".join("".join(parser.title_parts).split()) or None
    return parser.text(), title
