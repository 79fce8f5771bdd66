"""The real-HTML corpus: Debian documentation packages served by nginx on loopback, and its truth.

Eight hosts, each the HTML of one Debian documentation package (nobody on the project wrote a
byte of it), each with a robots.txt of ours, several of them hostile (redirect chain, oversized,
binary garbage, BOM and CRLF, wildcards, a foreign group, none at all). :func:`ensure_installed`
installs what is missing with apt-get; :class:`Nginx` serves the corpus from a config in a temp
directory (nothing under /etc is changed); :func:`ground_truth` walks the files themselves.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

from crawlproj.politeness.robots import parse_robots

NGINX_PACKAGE = "nginx-light"
NGINX = "/usr/sbin/nginx"
MIME_TYPES = "/etc/nginx/mime.types"
ROBOTS_PATHS = ("/robots.txt", "/robots-hop1.txt", "/robots-hop2.txt")
PADDING_BYTES = 600 * 1024  # the oversized robots.txt: rules first, then this much comment


@dataclass(frozen=True)
class Site:
    host: str
    package: str
    root: str
    seed: str  # path of the seed page
    robots: str  # "rules", "none" (404), "redirect" (301 -> 302 -> rules), "oversized", "garbage"
    rules: str = ""


FOREIGN = "User-agent: SomeOtherBot\nDisallow: /\n\n"
SITES = (
    Site("python-docs.test", "python3.11-doc", "/usr/share/doc/python3.11/html", "/index.html", "rules",
         FOREIGN + "User-agent: *\nDisallow: /_sources/\nAllow: /_sources/library/\nDisallow: /*.txt$\n"),
    Site("postgresql-docs.test", "postgresql-doc-15", "/usr/share/doc/postgresql-doc-15/html", "/index.html",
         "none"),
    Site("cmake-docs.test", "cmake-doc", "/usr/share/doc/cmake-data/html", "/index.html", "redirect",
         "User-agent: *\nDisallow: /_sources/\nDisallow: /search.html\n"),
    Site("git-docs.test", "git-doc", "/usr/share/doc/git-doc", "/index.html", "rules",
         "\ufeffUser-Agent: *\r\ndisallow: /RelNotes/\r\nALLOW: /\r\n"),
    Site("django-docs.test", "python-django-doc", "/usr/share/doc/python-django-doc/html", "/index.html", "rules",
         "User-agent: *\nDisallow: /_modules/\nAllow: /_modules/django/db/\nDisallow: /*?*\n"),
    Site("sqlite-docs.test", "sqlite3-doc", "/usr/share/doc/sqlite3", "/index.html", "oversized",
         "User-agent: *\nDisallow: /releaselog/\n"),
    Site("debian-reference.test", "debian-reference-en", "/usr/share/debian-reference", "/index.en.html",
         "garbage"),
    Site("libstdcxx-docs.test", "libstdc++-12-doc", "/usr/share/doc/gcc-12-base/libstdc++", "/index.html",
         "rules", FOREIGN + "User-agent: *\nDisallow: /user/*_source.html$\n"),
)


def robots_body(site: Site) -> bytes | None:
    """The robots.txt body the site serves in the end (after its redirects); None: a 404."""
    if site.robots == "none":
        return None
    if site.robots == "garbage":
        return bytes((i * 7919 + 13) % 256 for i in range(4096))
    body = site.rules.encode("utf-8")
    if site.robots == "oversized":
        line = b"# " + b"x" * 98 + b"\n"
        body += line * (PADDING_BYTES // len(line))
    return body


def ensure_installed() -> None:
    """apt-get install nginx and the documentation packages that are missing (root or sudo)."""
    missing = [s.package for s in SITES if not os.path.isdir(s.root)]
    if not os.path.exists(NGINX):
        missing.append(NGINX_PACKAGE)
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"== installing Debian packages: {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    for site in SITES:
        if not os.path.isdir(site.root):
            raise RuntimeError(f"{site.package} installed but {site.root} is missing")


def packages_versions() -> dict[str, str]:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n",
                          *sorted({s.package for s in SITES})], capture_output=True, text=True)
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx (the Debian package) serving every site on one loopback port, config in ``workdir``."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.access_log = self.workdir / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # robots.txt bodies where nginx's workers (user nobody when started as root) can read
        # them: a private temp directory would answer 403, which RFC 9309 reads as "allow all"
        self.public = Path(tempfile.mkdtemp(prefix="realhtml-robots-"))
        self.public.chmod(0o755)

    def config(self) -> str:
        w = self.workdir
        servers = []
        for site in SITES:
            body = robots_body(site)
            robots_file = self.public / f"{site.host}.robots.txt"
            if body is None:
                robots = "location = /robots.txt { return 404; }"
            else:
                robots_file.write_bytes(body)
                robots_file.chmod(0o644)
                serve = f"{{ default_type text/plain; alias {robots_file}; }}"
                if site.robots == "redirect":
                    robots = ("location = /robots.txt { return 301 /robots-hop1.txt; }\n"
                              "    location = /robots-hop1.txt { return 302 /robots-hop2.txt; }\n"
                              f"    location = /robots-hop2.txt {serve}")
                else:
                    robots = f"location = /robots.txt {serve}"
            servers.append(f"  server {{\n    listen 127.0.0.1:{self.port};\n    server_name {site.host};\n"
                           f"    root {site.root};\n    {robots}\n  }}\n")
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (w / "tmp" / d).mkdir(parents=True, exist_ok=True)
        temp = "".join(f"  {d}_temp_path {w / 'tmp' / d};\n" for d in ("client_body", "proxy", "fastcgi",
                                                                         "uwsgi", "scgi"))
        return (f"worker_processes 1;\ndaemon off;\npid {w / 'nginx.pid'};\nerror_log {w / 'error.log'} warn;\n"
                "events { worker_connections 4096; }\n"
                f"http {{\n  include {MIME_TYPES};\n  default_type application/octet-stream;\n"
                "  log_format tsv '$host\\t$request_uri\\t$status';\n"
                f"  access_log {self.access_log} tsv;\n{temp}"
                "  sendfile on;\n  keepalive_requests 1000000;\n  server_tokens off;\n"
                + "".join(servers) + "}\n")

    def __enter__(self) -> Nginx:
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen([NGINX, "-p", str(self.workdir), "-e", str(self.workdir / "error.log"),
                                      "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # poll interval of a deadline-bound wait for nginx to listen

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: the access log is complete
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.public, ignore_errors=True)

    def seeds(self) -> list[str]:
        return [f"http://{s.host}:{self.port}{s.seed}" for s in SITES]

    def requested(self) -> list[tuple[str, str, int]]:
        """(host, request URI, status) of every request in the access log, robots.txt excluded."""
        out = []
        for line in self.access_log.read_text(encoding="utf-8", errors="replace").splitlines():
            host, uri, status = line.split("\t")
            if urlsplit(uri).path not in ROBOTS_PATHS:
                out.append((host, uri, int(status)))
        return out


# -- ground truth -------------------------------------------------------------------------------


def _mime_types() -> dict[str, str]:
    text = re.sub(r"#[^\n]*", "", Path(MIME_TYPES).read_text())
    body = text[text.index("{") + 1: text.rindex("}")]
    types = {}
    for stmt in body.split(";"):
        words = stmt.split()
        for ext in words[1:]:
            types[ext.lower()] = words[0]
    return types


@dataclass(frozen=True)
class Answer:
    """What nginx answers for a path: status, whether the body is HTML, the file, the redirect."""

    status: int
    html: bool = False
    file: str | None = None
    location: str | None = None


class Corpus:
    """The files behind every site, answered the way nginx (as configured above) answers them."""

    def __init__(self, port: int):
        self.port = port
        self.sites = {s.host: s for s in SITES}
        self.mime = _mime_types()
        self.links_cache: dict[tuple[Callable[[str, bytes], list[str]], str], list[str]] = {}

    def answer(self, host: str, path: str) -> Answer:
        site = self.sites[host]
        decoded = unquote(path)
        norm = posixpath.normpath(decoded) if decoded != "/" else "/"
        if decoded.endswith("/") and norm != "/":
            norm += "/"
        full = site.root + norm
        if os.path.isdir(full):
            if not norm.endswith("/"):
                return Answer(301, location=path + "/")
            index = os.path.join(full, "index.html")
            return Answer(200, True, index) if os.path.isfile(index) else Answer(403)
        if os.path.isfile(full):
            ext = norm.rsplit("/", 1)[-1].rpartition(".")[2].lower() if "." in norm.rsplit("/", 1)[-1] else ""
            ctype = self.mime.get(ext, "application/octet-stream")
            return Answer(200, "html" in ctype and ctype.startswith("text/"), full)
        return Answer(404)

    def robots(self) -> dict[str, Callable[[str], bool]]:
        from scrapy.settings import Settings

        from crawlproj.politeness.config import PolitenessConfig

        settings = Settings()
        settings.setmodule("crawlproj.settings", priority="project")
        config = PolitenessConfig.from_settings(settings)
        USER_AGENT, cap = config.user_agent, config.crawl_delay_max  # noqa: N806 - as crawlproj reads them
        checks: dict[str, Callable[[str], bool]] = {}
        for site in SITES:
            body = robots_body(site)
            if body is None:
                checks[site.host] = lambda url: True
            else:
                parsed = parse_robots(body, USER_AGENT, cap)
                checks[site.host] = lambda url, p=parsed: p.allowed(url, USER_AGENT)
        return checks


def crawlproj_links(url: str, body: bytes) -> list[str]:
    """The links crawlproj's spider follows from a page: every ``a`` href (crawlproj.pagelinks),
    joined and canonical."""
    from scrapy.http import HtmlResponse

    from crawlproj.pagelinks import links_and_title
    from crawlproj.wire.urls import BadURL, canonicalize

    response = HtmlResponse(url, body=body, headers={"Content-Type": "text/html"})
    out = []
    for href in links_and_title(response.text)[0]:
        try:
            out.append(canonicalize(response.urljoin(href)))
        except (BadURL, ValueError):
            pass
    return out


def link_extractor_links(url: str, body: bytes) -> list[str]:
    """The links plain Scrapy's default LinkExtractor yields from a page, canonical."""
    from scrapy.http import HtmlResponse
    from scrapy.linkextractors import LinkExtractor
    from w3lib.url import canonicalize_url

    response = HtmlResponse(url, body=body, headers={"Content-Type": "text/html"})
    return [canonicalize_url(link.url) for link in LinkExtractor().extract_links(response)]


def ground_truth(corpus: Corpus, seeds: Iterable[str], links: Callable[[str, bytes], list[str]],
                 obey_robots: bool) -> dict[str, int]:
    """Every canonical URL a correct crawler requests from ``seeds``, with its status.

    Links are followed from HTML pages answered 200, only to the corpus's own hosts (each host
    is its own registered domain, so this is crawlproj's "domain" scope and plain Scrapy's
    allowed_domains alike); redirects are followed; robots.txt is obeyed when ``obey_robots``.
    """
    from crawlproj.wire.urls import canonicalize

    robots = corpus.robots()
    fetched: dict[str, int] = {}
    seen: set[str] = set()
    todo: deque[str] = deque()
    for seed in seeds:
        url = canonicalize(seed)
        if url not in seen:
            seen.add(url)
            todo.append(url)
    while todo:
        url = todo.popleft()
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host not in corpus.sites or parts.port != corpus.port:
            continue
        if obey_robots and not robots[host](url):
            continue
        answer = corpus.answer(host, parts.path or "/")
        fetched[url] = answer.status
        nexts: list[str] = []
        if answer.location is not None:
            nexts = [canonicalize(f"{parts.scheme}://{parts.netloc}{answer.location}"
                                  + (f"?{parts.query}" if parts.query else ""))]
        elif answer.html and answer.file is not None:
            nexts = corpus.links_cache.get((links, url))  # type: ignore[assignment]
            if nexts is None:
                with open(answer.file, "rb") as f:
                    nexts = corpus.links_cache[(links, url)] = links(url, f.read())
        for nxt in nexts:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return fetched


def crawled_set(nginx: Nginx) -> set[str]:
    """Canonical URLs of the pages a crawl requested (from nginx's access log)."""
    from crawlproj.wire.urls import canonicalize

    return {canonicalize(f"http://{host}:{nginx.port}{uri}") for host, uri, _status in nginx.requested()}


def corpus_files() -> int:
    """HTML files in the corpus (what the packages hold, reachable or not)."""
    return sum(1 for s in SITES for _d, _s, files in os.walk(s.root) for f in files
               if f.endswith((".html", ".htm")))


# -- a sample of real links, for tests/test_urls_equivalence.py ----------------------------------

SAMPLE_PORT = 8080


def link_sample(path: Path, pages: int = 400, odd: int = 20000, seed: int = 16) -> None:
    """Write (base URL, hrefs) of ``pages`` corpus pages, all their links in page order, then the
    odd links of every page (anything not a plain relative path), as gzip'd JSON lines."""
    import gzip
    import json
    import random

    from scrapy.http import HtmlResponse
    from scrapy.utils.response import get_base_url

    corpus = Corpus(SAMPLE_PORT)
    seeds = [f"http://{s.host}:{SAMPLE_PORT}{s.seed}" for s in SITES]
    truth = ground_truth(corpus, seeds, lambda url, body: crawlproj_links(url, body), True)
    html = []
    for url, status in truth.items():
        parts = urlsplit(url)
        answer = corpus.answer(parts.hostname or "", parts.path or "/")
        if status == 200 and answer.html and answer.file:
            html.append((url, answer.file))
    html.sort()
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(html)), min(pages, len(html))))
    plain = re.compile(r"[A-Za-z0-9_./-]+(#[A-Za-z0-9_.:-]*)?").fullmatch
    rows, odd_links = [], {}
    for i, (url, file) in enumerate(html):
        with open(file, "rb") as f:
            response = HtmlResponse(url, body=f.read(), headers={"Content-Type": "text/html"})
        base = get_base_url(response)
        hrefs = response.xpath("//a/@href").getall()
        if i in chosen:
            rows.append([base, hrefs])
        for href in hrefs:
            if not plain(href) and len(odd_links) < 10 * odd:
                odd_links.setdefault(href, base)
    odd_items = sorted(odd_links.items())
    rng.shuffle(odd_items)
    by_base: dict[str, list[str]] = {}
    for href, base in sorted(odd_items[:odd], key=lambda item: item[1]):
        by_base.setdefault(base, []).append(href)
    rows += [[base, hrefs] for base, hrefs in by_base.items()]
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} pages, {sum(len(r[1]) for r in rows)} links")


def page_sample(path: Path, per_site: int = 3, max_chars: int = 250_000, seed: int = 16) -> None:
    """Write real pages for tests/test_pagelinks.py, as gzip'd JSON lines ``[file, text]``: of
    each site the page of at most ``max_chars`` with the most ``<a>`` elements and ``per_site - 1``
    drawn at random, and every page whose hrefs crawlproj.pagelinks lists otherwise than lxml's ``//a/@href``."""
    import gzip
    import json
    import random

    from scrapy.http import HtmlResponse

    from crawlproj.pagelinks import links_and_title

    rng = random.Random(seed)
    chosen: dict[str, str] = {}
    for site in SITES:
        pages = []
        for d, _s, files in sorted(os.walk(site.root)):
            for f in sorted(files):
                if f.endswith((".html", ".htm")):
                    file = os.path.join(d, f)
                    with open(file, "rb") as fh:
                        text = HtmlResponse("http://x.test/", body=fh.read()).text
                    hrefs = HtmlResponse("http://x.test/", body=text.encode("utf-8"),
                                         encoding="utf-8").xpath("//a/@href").getall()
                    if len(text) <= max_chars:
                        pages.append((len(hrefs), file, text))
                    if links_and_title(text)[0] != hrefs:
                        chosen[file] = text
        pages.sort(key=lambda p: (-p[0], p[1]))
        for _n, file, text in [pages[0], *rng.sample(pages[1:], per_site - 1)]:
            chosen[file] = text
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for file, text in sorted(chosen.items()):
            out.write(json.dumps([file, text], ensure_ascii=False) + "\n")
    print(f"{path}: {len(chosen)} pages")


if __name__ == "__main__":
    import sys

    # python bench/realhtml_corpus.py links tests/data/realhtml_links.jsonl.gz
    # python bench/realhtml_corpus.py pages tests/data/realhtml_pages.jsonl.gz
    {"links": link_sample, "pages": page_sample}[sys.argv[1]](Path(sys.argv[2]))
