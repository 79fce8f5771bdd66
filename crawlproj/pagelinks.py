"""The links and the title of an HTML page, from one parse by Lexbor (selectolax), an HTML5 parser.

One parse gives both: every ``href`` of an ``<a>`` element in document order (duplicates kept,
an ``href`` without a value as ``""``), and the first text of the first ``<title>`` (``None``
when there is none or it is empty). NUL characters are dropped before parsing, as parsel does.

Lexbor builds the tree a browser builds (HTML5 tree construction). On the 9,257 pages of the
real-HTML corpus (bench/realhtml_corpus.py) the links are those of lxml's ``//a/@href``
(``response.xpath``), in the same order, on every page but two, where a misnested ``<a>`` is
reopened by the HTML5 rules and its href listed again (the same URLs). Elsewhere browsers and
lxml differ and this follows browsers: the content of ``<template>`` is inert, and an ``<a>``
inside a ``<frameset>`` is no element at all. tests/test_pagelinks.py shows each case.
On that corpus a page costs 0.8 ms against lxml's 1.3 ms (links and title, this bound included).

Lexbor's tree construction is quadratic in the depth of the stack of open elements (each block
start tag and each stray end tag searches it; there is no depth cap such as a browser's), so
20,000 nested ``<div>`` take it a second where lxml, which stops at its depth limit, takes
milliseconds. A page goes to Lexbor only when that work is surely small: its tags (``<``) times
the most elements it can hold open (its start tags: ``<`` not followed by ``/``) at most
LEXBOR_MAX_WORK, about 0.1 s in the worst case. Other pages (2% of the corpus's pages, most of
them indexes of a megabyte or more) are parsed by lxml as before, with the same XPaths.
"""

from __future__ import annotations

from lxml import etree
from parsel import Selector
from selectolax.lexbor import LexborHTMLParser

LEXBOR_MAX_WORK = 50_000_000  # tags x open elements at most; beyond, lxml parses the page
_HREFS = etree.XPath("//a/@href", smart_strings=False)
_TITLE = etree.XPath("//title/text()", smart_strings=False)


def lexbor_bounded(text: str) -> bool:
    """Whether Lexbor's work on ``text`` is surely small (see the module docstring)."""
    tags = text.count("<")
    return tags * (tags - text.count("</")) <= LEXBOR_MAX_WORK


def links_and_title(text: str) -> tuple[list[str], str | None]:
    """``(hrefs, title)`` of the HTML page ``text``; see the module docstring."""
    if not lexbor_bounded(text):
        root = Selector(text=text, type="html").root  # what response.xpath parses
        titles = _TITLE(root)
        return list(_HREFS(root)), (titles[0] or None) if titles else None
    tree = LexborHTMLParser(text.replace("\x00", "") if "\x00" in text else text)
    hrefs = []
    append = hrefs.append
    for node in tree.css("a[href]"):
        href = node.attrs.get("href")
        append("" if href is None else href)
    node = tree.css_first("title")
    title = node.text() if node is not None else None
    return hrefs, title or None
