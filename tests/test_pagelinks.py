"""The links and title of a page (crawlproj.pagelinks) against what lxml, through Scrapy, gives.

tests/data/realhtml_pages.jsonl.gz holds 26 real pages of the real-HTML corpus (Debian
documentation; ``python bench/realhtml_corpus.py pages PATH`` writes it): of each site the page
with the most links (of at most 250,000 characters) and two at random, and every page of the
corpus whose hrefs Lexbor lists otherwise than lxml. The spider follows what this module gives.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
from scrapy.http import HtmlResponse

from crawlproj.pagelinks import lexbor_bounded, links_and_title

SAMPLE = Path(__file__).parent / "data" / "realhtml_pages.jsonl.gz"


def lxml_links_and_title(text: str) -> tuple[list[str], str | None]:
    """What the spider took before: ``response.xpath`` on lxml's tree."""
    response = HtmlResponse("http://x.test/", body=text.encode("utf-8"), encoding="utf-8")
    return response.xpath("//a/@href").getall(), response.xpath("//title/text()").get() or None


def real_pages() -> list[tuple[str, str]]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        return [tuple(json.loads(line)) for line in f]  # type: ignore[misc]


def test_real_pages_give_lxmls_links_and_titles() -> None:
    pages = real_pages()
    assert sum(lexbor_bounded(text) for _file, text in pages) >= 20  # most through Lexbor
    same = links = 0
    for file, text in pages:
        hrefs, title = links_and_title(text)
        old_hrefs, old_title = lxml_links_and_title(text)
        assert title == old_title, file
        links += len(hrefs)
        if hrefs == old_hrefs:
            same += 1
            continue
        # A misnested <a> reopened by the HTML5 rules lists its href again: the same URLs, more often.
        extra = Counter(hrefs) - Counter(old_hrefs)
        assert not Counter(old_hrefs) - Counter(hrefs), file
        assert set(extra) <= set(old_hrefs), file
    assert same >= len(pages) - 2 and links > 10_000


@pytest.mark.parametrize(("html", "hrefs", "title"), [
    ('<title>T1</title><title>T2</title><a href="/a">x</a>', ["/a"], "T1"),
    ('<title>  a\n b </title>', [], "  a\n b "),
    ("<title></title>", [], None),
    ("", [], None),
    ('<A HREF="/up">x</A>', ["/up"], None),
    ('<a href="">x</a><a href>y</a><a>z</a>', ["", ""], None),  # as lxml: an href without value is ""
    ('<a href="/1">one<a href="/2">two</a></a>', ["/1", "/2"], None),
    ('<html><head><a href="/head"></a></head></html>', ["/head"], None),
    ('</html><a href="/after">x</a>', ["/after"], None),
    ('<noscript><a href="/ns">x</a></noscript>', ["/ns"], None),
    ('<svg><a href="/svg">x</a></svg>', ["/svg"], None),
    ('<textarea><a href="/ta">x</a></textarea>', [], None),
    ('<!-- <a href="/c"> -->', [], None),
    ('<a href="/a?b=1&amp;c=2&copy=3">x</a>', ["/a?b=1&c=2&copy=3"], None),
    ('<a href="/n\x00ul">x</a>', ["/nul"], None),  # NUL dropped, as parsel does
    ('<a href="/caf\u00e9">x</a>', ["/caf\u00e9"], None),
])
def test_same_as_lxml(html: str, hrefs: list[str], title: str | None) -> None:
    assert links_and_title(html) == (hrefs, title)
    assert lxml_links_and_title(html) == (hrefs, title)


@pytest.mark.parametrize(("html", "hrefs", "lxml_hrefs"), [
    ('<template><a href="/tpl">x</a></template><a href="/b">y</a>', ["/b"], ["/tpl", "/b"]),
    ('<frameset><a href="/fs"></a></frameset>', [], ["/fs"]),
])
def test_where_browsers_and_lxml_differ(html: str, hrefs: list[str], lxml_hrefs: list[str]) -> None:
    """As a browser's tree: a template's content is inert; a frameset holds no <a>."""
    assert links_and_title(html)[0] == hrefs
    assert lxml_links_and_title(html)[0] == lxml_hrefs


def test_hostile_text_parses() -> None:
    """Garbage and a huge attribute go through Lexbor; deep nesting, on which Lexbor's work grows
    with the square of the depth, goes to lxml, which answers as the spider did before."""
    garbage = bytes(range(256)).decode("latin-1") * 400
    assert lexbor_bounded(garbage) and links_and_title(garbage)[0] == []
    huge = '<a href="/' + "x" * 5_000_000 + '">x</a>'
    assert lexbor_bounded(huge) and len(links_and_title(huge)[0][0]) == 5_000_001
    for deep in ("<div>" * 100_000 + '<a href="/deep">x</a>', "<span>" * 20_000 + "</x>" * 20_000,
                 "<b>" * 20_000 + "</i>" * 20_000 + '<a href="/b">x</a>'):
        assert not lexbor_bounded(deep)
        assert links_and_title(deep) == lxml_links_and_title(deep)
    shallow = '<div><a href="/x">x</a></div>' * 2_000
    assert lexbor_bounded(shallow) and links_and_title(shallow)[0] == ["/x"] * 2_000
