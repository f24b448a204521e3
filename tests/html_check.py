"""Checking generated HTML with real parsers.

``validate`` runs html5lib (the WHATWG parsing algorithm) in strict mode, where every
parse error raises, and then a stricter check of its own with the standard library's
tokenizer: every element that is not void is closed explicitly and in order (HTML5
would silently close a forgotten ``</p>`` or ``</li>``; we want the page to say what
it means).
"""

from __future__ import annotations

from html.parser import HTMLParser
from xml.etree.ElementTree import Element

import html5lib

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class MalformedHTML(AssertionError):
    pass


class _Balance(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, tuple[int, int]]] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        names = [k for k, _v in attrs]
        if len(names) != len(set(names)):
            raise MalformedHTML(f"duplicate attribute in <{tag}> at {self.getpos()}")
        if tag not in VOID:
            self.stack.append((tag, self.getpos()))

    def handle_startendtag(self, tag: str, attrs) -> None:
        if tag not in VOID:
            raise MalformedHTML(f"self-closing <{tag}/> at {self.getpos()}")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            raise MalformedHTML(f"end tag for void element </{tag}> at {self.getpos()}")
        if not self.stack or self.stack[-1][0] != tag:
            open_tag = self.stack[-1] if self.stack else None
            raise MalformedHTML(f"</{tag}> at {self.getpos()} does not close the open element {open_tag}")
        self.stack.pop()


def parse(page: str) -> Element:
    """Lenient parse (as a browser would) into an ElementTree without namespaces."""
    return html5lib.parse(page, namespaceHTMLElements=False)


def validate(page: str) -> Element:
    """Parse strictly; raise MalformedHTML on any parse error or unclosed element."""
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    try:
        root = parser.parse(page)
    except html5lib.html5parser.ParseError as exc:
        raise MalformedHTML(f"html5lib: {exc}") from None
    balance = _Balance()
    balance.feed(page)
    balance.close()
    if balance.stack:
        raise MalformedHTML(f"elements left open: {balance.stack}")
    return root


def text_of(el: Element) -> str:
    return "".join(el.itertext())


def by_class(root: Element, tag: str, cls: str) -> list[Element]:
    return [e for e in root.iter(tag) if cls in (e.get("class") or "").split()]
