"""The synthetic web: a deterministic model of many hosts, their pages, links and robots.txt.

Everything is a pure function of a :class:`WebSpec` (seed and size parameters), so the server
that serves the web and the tests that compute its ground truth agree without sharing state.
Randomness comes from ``random.Random(str)``, which seeds through SHA-512: the same in every
process, unlike ``hash()``.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Iterator

from crawlproj.politeness.robots import ALLOW, DISALLOW, RULES

# robots.txt variants served by hosts. The first hosts get one of each, in this order, so even a
# small web exercises all of them; the rest draw from COMMON_ROBOTS.
ROBOTS_VARIANTS = (
    "allow",  # 200, empty Disallow
    "disallow",  # 200, Disallow: /private/ with an Allow exception and a foreign group
    "crawl_delay",  # 200, allow all with a Crawl-delay
    "not_found",  # 404: allow all
    "server_error",  # 500: disallow all
    "unavailable",  # 503: disallow all
    "timeout",  # never answered: network error, disallow all
    "redirect",  # 301 -> 302 -> 200 with the "disallow" rules
    "oversized",  # 200, > 500 KiB: the rules at the top, padding after
    "garbage",  # 200, binary noise: no rules, allow all
)
COMMON_ROBOTS = ("allow", "allow", "disallow", "disallow", "not_found", "crawl_delay")

# Page kinds. "html" pages carry links; the others are leaves that test error handling.
PAGE_KINDS = ("html", "not_found", "server_error", "redirect", "loop", "binary", "huge", "latin1")
#: Sections of html pages no page links to (sitemaps list them): orphans of every sitemap host,
#: and the pages the over-limit sitemaps list within their limits ("kept") and past them ("cut").
SITEMAP_SECTIONS = ("orphan", "kept", "cut")
SITEMAP_INDEX_PATH = "/sitemap_index.xml"  # named by robots.txt
SITEMAP_PATH = "/sitemap.xml"  # the conventional place, for hosts whose robots.txt names none

#: RFC 9309 outcome (crawlproj.politeness.robots) of each robots variant: parse the rules, allow
#: or disallow all.
RFC9309_OUTCOME = {
    "allow": RULES,
    "disallow": RULES,
    "crawl_delay": RULES,
    "not_found": ALLOW,
    "server_error": DISALLOW,
    "unavailable": DISALLOW,
    "timeout": DISALLOW,
    "redirect": RULES,
    "oversized": RULES,
    "garbage": ALLOW,
}

#: What Scrapy's built-in RobotsTxtMiddleware does with each variant: it parses the body of an
#: error response (no rules: allow all) and allows everything when the fetch fails.
SCRAPY_DEFAULT_OUTCOME = {**RFC9309_OUTCOME, "server_error": ALLOW, "unavailable": ALLOW, "timeout": ALLOW}

ROBOTS_PATHS = ("/robots.txt", "/robots-hop1.txt", "/robots-hop2.txt")
OVERSIZED_ROBOTS_BYTES = 600 * 1024
HUGE_PAGE_BYTES = 2 * 1024 * 1024
CRAWL_DELAY_HOST_PAGES = 8


@dataclass(frozen=True)
class WebSpec:
    """Size and shape of a synthetic web; equal specs give byte-identical webs."""

    seed: int = 1
    hosts: int = 50
    min_pages: int = 20  # smallest host
    max_pages: int = 20000  # cap of the heavy tail
    pareto_alpha: float = 1.2  # page counts ~ min_pages * Pareto(alpha)
    links_per_page: int = 20
    cross_host_share: float = 0.1  # share of links that leave the host
    private_share: float = 0.1  # share of pages under /private/
    special_share: float = 0.05  # share of pages that are errors, redirects, binaries...
    page_bytes: int = 9000  # approximate size of an html page
    slow_host_share: float = 0.1  # share of hosts with extra latency
    slow_latency_ms: int = 100
    base_latency_ms: int = 0
    subdomain_share: float = 0.1  # share of hosts that are "blog." of the previous domain
    crawl_delay: float = 0.5  # Crawl-delay served by "crawl_delay" hosts
    robots_variants: bool = True  # False: every host allows everything (throughput benchmarks)
    # -- a changing web (crawlproj_testing.synthweb.changes); the defaults keep the web static --
    #: (share of pages, mean seconds between changes) per class; the other pages never change
    change_classes: tuple[tuple[float, float], ...] = ()
    change_process: str = "poisson"  # "poisson" (random, memoryless) or "periodic" (random phase)
    # -- sitemaps (crawlproj_testing.synthweb.sitemaps) --
    sitemaps: bool = False  # robots.txt names a sitemap index (gzip + plain children); /sitemap.xml
    orphan_pages: int = 0  # pages per host no page links to: only the sitemaps list them
    sitemap_over_limits: bool = False  # the first host's index also lists two over-limit children

    def __post_init__(self) -> None:
        # JSON (the server's --spec) gives lists: keep the spec hashable and equal to the original
        object.__setattr__(self, "change_classes", tuple(tuple(c) for c in self.change_classes))


@dataclass(frozen=True)
class Host:
    index: int
    name: str
    pages: int
    robots: str
    latency_ms: int


@dataclass(frozen=True)
class Page:
    host: str
    index: int
    path: str
    kind: str
    links: tuple[tuple[str, str], ...] = field(default=())  # (host, path) pairs
    redirect_to: str | None = None  # path on the same host


@dataclass(frozen=True)
class Rule:
    allow: bool
    prefix: str


class Web:
    """The model of one synthetic web. Cheap to build; pages are generated on demand."""

    def __init__(self, spec: WebSpec = WebSpec()):
        self.spec = spec
        self.hosts: list[Host] = []
        self.by_name: dict[str, Host] = {}
        rng = random.Random(f"web:{spec.seed}")
        domain = 0
        for i in range(spec.hosts):
            if i > 0 and rng.random() < spec.subdomain_share and not self.hosts[-1].name.startswith("blog."):
                name = "blog." + self.hosts[-1].name
            else:
                domain += 1
                name = f"site{domain:04d}.test"
            pages = min(spec.max_pages, int(spec.min_pages * rng.paretovariate(spec.pareto_alpha)))
            if not spec.robots_variants:
                robots = "allow"
            elif i < len(ROBOTS_VARIANTS):
                robots = ROBOTS_VARIANTS[i]
            else:
                robots = rng.choice(COMMON_ROBOTS)
            if robots == "crawl_delay":
                # a Crawl-delay host is crawled slowly by design: keep it small
                pages = min(pages, CRAWL_DELAY_HOST_PAGES)
            latency = spec.base_latency_ms
            if rng.random() < spec.slow_host_share:
                latency += spec.slow_latency_ms
            host = Host(i, name, max(pages, 1), robots, latency)
            self.hosts.append(host)
            self.by_name[name] = host
        self._page = lru_cache(maxsize=200_000)(self._make_page)

    # -- pages ---------------------------------------------------------------------------------

    def page_path(self, host: Host, index: int) -> str:
        if index == 0:
            return "/"
        rng = random.Random(f"path:{self.spec.seed}:{host.name}:{index}")
        section = "private" if rng.random() < self.spec.private_share else "p"
        return f"/{section}/{index}"

    def page_kind(self, host: Host, index: int) -> str:
        if index == 0:
            return "html"
        rng = random.Random(f"kind:{self.spec.seed}:{host.name}:{index}")
        if rng.random() >= self.spec.special_share:
            return "html"
        return rng.choice(PAGE_KINDS[1:])

    def _make_page(self, host_name: str, index: int) -> Page:
        host = self.by_name[host_name]
        path = self.page_path(host, index)
        kind = self.page_kind(host, index)
        if kind == "redirect":
            target = (index * 7 + 1) % host.pages
            return Page(host_name, index, path, kind, redirect_to=self.page_path(host, target))
        if kind == "loop":
            return Page(host_name, index, path, kind, redirect_to=f"/loop/{index}")
        if kind not in ("html", "latin1"):
            return Page(host_name, index, path, kind)
        return Page(host_name, index, path, kind, links=tuple(self._links(host, index)))

    def _links(self, host: Host, index: int) -> Iterator[tuple[str, str]]:
        spec = self.spec
        rng = random.Random(f"links:{spec.seed}:{host.name}:{index}")
        if host.pages > 1:
            # A chain through the host keeps every page reachable from the root.
            nxt = (index + 1) % host.pages
            yield host.name, self.page_path(host, nxt)
        for _ in range(spec.links_per_page - 1):
            if rng.random() < spec.cross_host_share:
                other = self.hosts[rng.randrange(len(self.hosts))]
                target = 0 if rng.random() < 0.5 else rng.randrange(other.pages)
                yield other.name, self.page_path(other, target)
            else:
                yield host.name, self.page_path(host, rng.randrange(host.pages))

    def page(self, host_name: str, index: int) -> Page:
        return self._page(host_name, index)

    def resolve(self, host_name: str, path: str) -> Page | None:
        """The page served at ``path``, or None (404). ``/loop/N`` is a loop's second hop."""
        host = self.by_name.get(host_name)
        if host is None:
            return None
        if path == "/":
            return self.page(host_name, 0)
        parts = path.split("/")
        if len(parts) != 3 or not parts[2].isdigit():
            return None
        index = int(parts[2])
        if parts[1] in SITEMAP_SECTIONS:
            return self._sitemap_page(host, parts[1], index, path)
        if not 0 < index < host.pages:
            return None
        if parts[1] == "loop":
            if self.page_kind(host, index) != "loop":
                return None
            return Page(host_name, index, path, "loop", redirect_to=self.page_path(host, index))
        if self.page_path(host, index) != path:
            return None
        return self.page(host_name, index)

    def _sitemap_page(self, host: Host, section: str, index: int, path: str) -> Page | None:
        from .sitemaps import sitemap_section_size

        if not 0 < index <= sitemap_section_size(self, host, section):
            return None
        return Page(host.name, -index, path, "html", links=((host.name, "/"),))

    # -- robots.txt ------------------------------------------------------------------------------

    def robots_rules(self, host: Host) -> tuple[Rule, ...]:
        """Rules of the ``*`` group as served (empty: allow all)."""
        if host.robots in ("disallow", "redirect", "oversized"):
            return (Rule(False, "/private/"), Rule(True, "/private/7"))
        return ()

    def crawl_delay(self, host: Host) -> float | None:
        return self.spec.crawl_delay if host.robots == "crawl_delay" else None

    def robots_allowed(self, host: Host, path: str, outcome: dict[str, str] = RFC9309_OUTCOME) -> bool:
        verdict = outcome[host.robots]
        if verdict != RULES:
            return verdict == ALLOW
        # RFC 9309 2.2.2: the longest matching rule wins; allow wins a tie.
        best: Rule | None = None
        for rule in self.robots_rules(host):
            if path.startswith(rule.prefix):
                if best is None or len(rule.prefix) > len(best.prefix) or (
                    len(rule.prefix) == len(best.prefix) and rule.allow
                ):
                    best = rule
        return best is None or best.allow

    # -- ground truth ----------------------------------------------------------------------------

    def seeds(self) -> list[tuple[str, str]]:
        """Default seeds: the root page of every host."""
        return [(h.name, "/") for h in self.hosts]

    def ground_truth(
        self,
        seeds: Iterable[tuple[str, str]] | None = None,
        outcome: dict[str, str] = RFC9309_OUTCOME,
    ) -> set[tuple[str, str]]:
        """Every (host, path) a correct crawler fetches from ``seeds``, robots.txt excluded.

        Links are followed from html pages answered 200; redirects are followed on the same host;
        a URL already seen is not fetched again (so a redirect loop ends after its two hops);
        a URL its host's robots.txt disallows is never fetched.
        """
        fetched: set[tuple[str, str]] = set()
        seen: set[tuple[str, str]] = set()
        todo: deque[tuple[str, str]] = deque()
        for seed in self.seeds() if seeds is None else seeds:
            if seed not in seen:
                seen.add(seed)
                todo.append(seed)
        while todo:
            host_name, path = todo.popleft()
            host = self.by_name.get(host_name)
            if host is None or not self.robots_allowed(host, path, outcome):
                continue
            fetched.add((host_name, path))
            page = self.resolve(host_name, path)
            if page is None:
                continue
            nexts: Iterable[tuple[str, str]]
            if page.redirect_to is not None:
                nexts = ((host_name, page.redirect_to),)
            else:
                nexts = page.links
            for nxt in nexts:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return fetched
