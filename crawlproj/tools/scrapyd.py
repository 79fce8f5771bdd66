"""scrapyd's JSON API, and the record of which scrapyd job is which crawlproj node.

Shared by ``crawlproj deploy`` (crawlproj.tools.deploy) and ``crawlproj schedule|status|stop``
(crawlproj.tools.jobs).
"""
from __future__ import annotations
import base64
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PROJECT = "crawlproj"
DEFAULT_SPIDER = "broad"
HTTP_TIMEOUT = 10.0  # seconds for one scrapyd API call
RECORD_FORMAT = 1
# Job ids become file names (scrapyd's logs, the node's state directory) and node names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DeployError(Exception):
    """Root of the errors of ``crawlproj deploy|schedule|status|stop`` (shown without a traceback)."""


# -- scrapyd's JSON API ---------------------------------------------------------------------------


def public_url(url: str) -> str:
    """``url`` without user:password, ending in ``/`` (how hosts are shown and recorded)."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    path = parts.path if parts.path.endswith("/") else f"{parts.path}/"
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))


def credentials(url: str) -> tuple[str, str] | None:
    """user:password of ``url``, else ``SCRAPYD_USERNAME``/``SCRAPYD_PASSWORD``, else None."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.username:
        return urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
    user = os.environ.get("SCRAPYD_USERNAME", "")
    return (user, os.environ.get("SCRAPYD_PASSWORD", "")) if user else None


class Scrapyd:
    """The JSON API of one scrapyd host: every call has a time-out and fails as DeployError."""

    def __init__(self, url: str, timeout: float = HTTP_TIMEOUT):
        self.url = public_url(url)
        self.timeout = timeout
        auth = credentials(url)
        self._headers = {"Accept": "application/json"}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"

    def call(self, endpoint: str, params: Sequence[tuple[str, str]] = (), post: bool = False) -> dict[str, Any]:
        query = urllib.parse.urlencode(list(params))
        url = urllib.parse.urljoin(self.url, f"{endpoint}.json")
        if post:
            request = urllib.request.Request(url, data=query.encode(), headers=self._headers, method="POST")
        else:
            request = urllib.request.Request(f"{url}?{query}" if query else url, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise DeployError(f"{self.url}: {endpoint}.json answered HTTP {exc.code} {exc.reason}") from exc
        except (OSError, urllib.error.URLError) as exc:
            raise DeployError(f"{self.url}: {endpoint}.json failed: {exc}") from exc
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise DeployError(f"{self.url}: {endpoint}.json did not answer JSON: {body[:200]!r}") from exc
        if not isinstance(data, dict) or data.get("status") != "ok":
            message = data.get("message", data) if isinstance(data, dict) else data
            raise DeployError(f"{self.url}: {endpoint}.json: {message}")
        return data

    def jobs(self, project: str) -> dict[str, JobInfo]:
        """Every job of ``project`` by id; a pending or running job hides finished runs of its id,
        and of several finished runs (a job id scheduled again) the last one is kept."""
        data = self.call("listjobs", [("project", project)])
        found: dict[str, JobInfo] = {}
        for state in ("finished", "running", "pending"):  # later states win
            for job in data.get(state, []):
                info = JobInfo(state=state, pid=job.get("pid"), start_time=job.get("start_time"),
                               end_time=job.get("end_time"), log_url=job.get("log_url"))
                previous = found.get(job["id"])
                if (state == "finished" and previous is not None
                        and (previous.end_time or "") > (info.end_time or "")):
                    continue
                found[job["id"]] = info
        return found


@dataclass(frozen=True)
class JobInfo:
    state: str  # pending, running, finished
    pid: int | None = None
    start_time: str | None = None
    end_time: str | None = None
    log_url: str | None = None


# -- the record of what was scheduled -------------------------------------------------------------


@dataclass
class NodeJob:
    scrapyd: str  # public URL of the host it was scheduled on
    job: str  # scrapyd job id (= node name)
    scheduled_at: str
    version: str | None = None


@dataclass
class Record:
    crawl: str
    project: str = DEFAULT_PROJECT
    spider: str = DEFAULT_SPIDER
    dispatcher: str = ""
    nodes: dict[str, NodeJob] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Record:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DeployError(f"no record of scheduled jobs at {path} (run `crawlproj schedule` first, "
                              "or pass --record / --crawl)") from exc
        except (OSError, ValueError) as exc:
            raise DeployError(f"cannot read the record {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise DeployError(f"{path} is not a crawlproj job record (format {RECORD_FORMAT})")
        try:
            nodes = {name: NodeJob(**job) for name, job in data["nodes"].items()}
            return cls(crawl=data["crawl"], project=data["project"], spider=data["spider"],
                       dispatcher=data["dispatcher"], nodes=nodes)
        except (KeyError, TypeError, AttributeError) as exc:
            raise DeployError(f"{path}: malformed job record: {exc!r}") from exc

    def save(self, path: Path) -> None:
        data = {"format": RECORD_FORMAT, "crawl": self.crawl, "project": self.project,
                "spider": self.spider, "dispatcher": self.dispatcher,
                "nodes": {name: asdict(job) for name, job in sorted(self.nodes.items(), key=node_order)}}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # a crash never leaves half a record


def node_order(item: tuple[str, Any]) -> tuple[str, int]:
    name = item[0]
    prefix, _, number = name.rpartition("-node")
    return (prefix, int(number)) if number.isdigit() else (name, 0)


def default_record(crawl: str) -> Path:
    return Path(f"crawlproj-{crawl}.jobs.json")


def check_name(value: str, what: str) -> str:
    if not NAME_PATTERN.match(value):
        raise DeployError(f"{what} {value!r}: use letters, digits, '_', '.', '-' (it names files and jobs)")
    return value


def node_names(crawl: str, count: int) -> list[str]:
    check_name(crawl, "crawl name")
    return [f"{crawl}-node{i}" for i in range(1, count + 1)]


def place_nodes(crawl: str, count: int, hosts: Sequence[str]) -> list[tuple[str, str]]:
    """(node name, scrapyd URL) pairs: node i on host (i - 1) mod len(hosts), the same every time
    for the same host list, so a node comes back to the machine that holds its state."""
    if count < 1:
        raise DeployError(f"--nodes: expected at least 1, got {count}")
    if not hosts:
        raise DeployError("--scrapyd: give at least one scrapyd URL")
    urls = [public_url(h) for h in hosts]
    return [(name, urls[i % len(urls)]) for i, name in enumerate(node_names(crawl, count))]


def parse_pairs(values: Iterable[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name.strip():
            raise DeployError(f"{option} {value!r}: expected NAME=VALUE")
        pairs[name.strip()] = setting
    return pairs
