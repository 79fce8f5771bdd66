"""Deploy crawlproj to scrapyd hosts and run its nodes there as scrapyd jobs.

    crawlproj deploy --url http://a:6800/ --url http://b:6800/     # build the egg, upload it
    crawlproj schedule --crawl news --nodes 8 --scrapyd http://a:6800/ http://b:6800/ \\
        --dispatcher tcp://dispatcher-host:5570 -s MONGO_URI=mongodb://db:27017/
    crawlproj status --crawl news       # which scrapyd job is which node, with the dispatcher's view
    crawlproj stop --crawl news --wait 60

``deploy`` packs the project with scrapyd-client (``scrapyd-deploy --build-egg``, then
``scrapyd-deploy TARGET --egg``) from a staging copy of the checkout, so the checkout never gets
a ``setup.py``, ``build/`` or ``*.egg-info``; metadata and packages come from ``pyproject.toml``.

``schedule`` starts node ``i`` as job ``<crawl>-node<i>`` on scrapyd host ``(i - 1) mod hosts``
with ``DISPATCHER_NODE_NAME`` set to that job id: node names are stable, so a job scheduled
again under its name finds its politeness state in ``CRAWLPROJ_STATE_DIR/<name>/`` and the
dispatcher gives it its place back. A node already pending or running anywhere is left alone,
so the same command (re)starts exactly the nodes that are missing. What was scheduled is kept in
a small JSON record (``crawlproj-<crawl>.jobs.json``) that ``status`` and ``stop`` read.

What the egg holds: the ``crawlproj`` package and nothing else. The test harness
(``crawlproj_testing``: synthetic web, simulated nodes, fuzzer, test resolver and its add-on) is
never staged, so no scrapyd node can load it (tests/test_layout.py imports every module of the egg
and checks). ``crawlproj.tools`` (this operator CLI, the local cluster, the process runners) does
go in: it is small pure Python that imports only the node's dependencies (scrapyd-client, the
harness, matplotlib and py-spy are imported lazily by the commands that use them), and leaving it
out would ship modules that cannot be imported (``crawlproj.observability.top`` uses
``crawlproj.tools.dispatcher_process``) and a ``crawlproj`` entry point that points nowhere.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from crawlproj.addons import combine
from crawlproj.addons import node_settings as node_mode_settings
from crawlproj.dispatcher.errors import DispatcherError
from crawlproj.tools.dispatcher_process import request_state
from crawlproj.tools.runner import setting_value

DEFAULT_PROJECT = "crawlproj"
DEFAULT_SPIDER = "broad"
DEFAULT_CRAWL = "crawl"
HTTP_TIMEOUT = 10.0  # seconds for one scrapyd API call
DISPATCHER_TIMEOUT = 3.0  # seconds for the dispatcher's answer to "status"
STOP_POLL_INTERVAL = 0.5  # seconds between listjobs polls while `stop --wait` waits
RECORD_FORMAT = 1
# Job ids become file names (scrapyd's logs, the node's state directory) and node names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# schedule.json parameters of scrapyd itself; every other parameter is a spider argument.
SCRAPYD_PARAMS = frozenset({"project", "spider", "jobid", "setting", "_version", "priority"})
# What the egg is built from: the Scrapy project file, the package metadata and the package.
STAGED_FILES = ("scrapy.cfg", "pyproject.toml", "README.md")
STAGED_PACKAGE = "crawlproj"  # only this package: never crawlproj_testing (see above)
# setuptools reads everything from pyproject.toml; scrapyd-deploy only needs a setup.py to run.
SETUP_PY_SHIM = "from setuptools import setup\n\nsetup()\n"
ACTIVE_STATES = ("pending", "running")


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
                "nodes": {name: asdict(job) for name, job in sorted(self.nodes.items(), key=_node_order)}}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # a crash never leaves half a record


def _node_order(item: tuple[str, Any]) -> tuple[str, int]:
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


# -- deploy ---------------------------------------------------------------------------------------


def project_root(start: Path | None = None) -> Path:
    from scrapy.utils.conf import closest_scrapy_cfg

    found = closest_scrapy_cfg(str(start or Path.cwd()))
    if not found:
        raise DeployError("no scrapy.cfg here or above: run `crawlproj deploy` from the crawlproj checkout "
                          "(or pass --project-dir)")
    return Path(found).parent


@dataclass(frozen=True)
class Target:
    """A scrapyd host to upload the egg to."""

    name: str
    url: str
    project: str
    auth: tuple[str, str] | None = None


def deploy_targets(root: Path, urls: Sequence[str], names: Sequence[str], all_targets: bool,
                   project: str | None) -> list[Target]:
    """The ``--url``s, else scrapy.cfg's [deploy] / [deploy:NAME] targets ($VARS expanded, as
    scrapyd-client does; username/password of a target, else SCRAPYD_USERNAME/SCRAPYD_PASSWORD)."""
    if urls:
        return [Target(f"host{i}", public_url(url), project or DEFAULT_PROJECT, credentials(url))
                for i, url in enumerate(urls, 1)]
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(root / "scrapy.cfg")
    base = dict(cfg.items("deploy")) if cfg.has_section("deploy") else {}
    targets: dict[str, dict[str, str]] = {"default": base} if "url" in base else {}
    for section in cfg.sections():
        if section.startswith("deploy:"):
            targets[section[len("deploy:"):]] = {**base, **dict(cfg.items(section))}
    wanted = list(targets) if all_targets else list(names or ["default"])
    missing = [name for name in wanted if name not in targets]
    if missing or not wanted:
        raise DeployError(f"no deploy target {', '.join(missing) or '(none)'} in {root / 'scrapy.cfg'} "
                          f"(targets: {', '.join(targets) or 'none'}); or pass --url")
    found = []
    for name in wanted:
        target = {key: os.path.expandvars(value) for key, value in targets[name].items()}
        user = target.get("username", "")
        auth = (user, target.get("password", "")) if user else credentials(target["url"])
        found.append(Target(name, public_url(target["url"]), project or target.get("project") or DEFAULT_PROJECT,
                            auth))
    return found


def stage_project(root: Path, staging: Path) -> None:
    """Copy what the egg is built from; scrapyd-deploy may then write its files there, not here."""
    for name in STAGED_FILES:
        if (root / name).exists():
            shutil.copy2(root / name, staging / name)
    shutil.copytree(root / STAGED_PACKAGE, staging / STAGED_PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (staging / "setup.py").write_text(SETUP_PY_SHIM, encoding="utf-8")


def _scrapyd_deploy(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run scrapyd-client's ``scrapyd-deploy`` with this interpreter; its stdout, or DeployError."""
    if importlib.util.find_spec("scrapyd_client") is None:
        raise DeployError("`crawlproj deploy` needs scrapyd-client: pip install 'crawlproj[deploy]'")
    proc = subprocess.run([sys.executable, "-m", "scrapyd_client.deploy", *args], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DeployError(f"scrapyd-deploy {' '.join(args)} failed (exit {proc.returncode}):\n"
                          f"{proc.stderr.strip()}\n{proc.stdout.strip()}".strip())
    return proc.stdout


def build_egg(root: Path, out: Path) -> Path:
    """Build the project's egg with ``scrapyd-deploy --build-egg`` from a staging copy."""
    with tempfile.TemporaryDirectory(prefix="crawlproj-egg-") as tmp:
        staging = Path(tmp)
        stage_project(root, staging)
        _scrapyd_deploy(["--build-egg", str(out.resolve())], cwd=staging)
    return out


def upload_egg(egg: Path, targets: Sequence[Target], version: str) -> list[dict[str, Any]]:
    """``scrapyd-deploy TARGET --egg EGG`` for each target; scrapyd's answers (project, version, spiders)."""
    answers = []
    with tempfile.TemporaryDirectory(prefix="crawlproj-upload-") as tmp:
        staging = Path(tmp)
        cfg = configparser.ConfigParser(interpolation=None)
        env: dict[str, str] = {}
        for i, target in enumerate(targets):
            section = {"url": target.url, "project": target.project}
            if target.auth is not None:
                # scrapyd-client expands $VARS in scrapy.cfg: the password never lands on disk
                env[f"CRAWLPROJ_DEPLOY_USER_{i}"], env[f"CRAWLPROJ_DEPLOY_PASSWORD_{i}"] = target.auth
                section["username"] = f"${{CRAWLPROJ_DEPLOY_USER_{i}}}"
                section["password"] = f"${{CRAWLPROJ_DEPLOY_PASSWORD_{i}}}"
            cfg[f"deploy:{target.name}"] = section
        with open(staging / "scrapy.cfg", "w", encoding="utf-8") as f:
            cfg.write(f)
        for target in targets:
            out = _scrapyd_deploy([target.name, "--egg", str(egg.resolve()), "--version", version],
                                  cwd=staging, env=env)
            answer = _last_json(out)
            if answer.get("status") != "ok":
                raise DeployError(f"{target.url}: addversion.json: {answer.get('message', answer)}")
            answers.append({"scrapyd": target.url, **answer})
    return answers


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise DeployError(f"scrapyd-deploy printed no JSON answer: {text.strip()[:300]!r}")


def deploy_command(args: argparse.Namespace) -> int:
    """Build the egg with scrapyd-client and upload it to scrapyd hosts."""
    root = Path(args.project_dir).resolve() if args.project_dir else project_root()
    version = args.version or str(int(time.time()))
    if args.build_egg:
        build_egg(root, Path(args.build_egg))
        print(f"egg written to {args.build_egg}")
        return 0
    targets = deploy_targets(root, args.url, args.target, args.all_targets, args.project)
    with tempfile.TemporaryDirectory(prefix="crawlproj-deploy-") as tmp:
        egg = Path(args.egg) if args.egg else build_egg(root, Path(tmp) / f"crawlproj-{version}.egg")
        for answer in upload_egg(egg, targets, version):
            print(f"{answer['scrapyd']}: project {answer['project']} version {answer['version']}, "
                  f"{answer['spiders']} spiders")
    return 0


# -- schedule / stop / status ---------------------------------------------------------------------


def node_settings(name: str, dispatcher: str, state_dir: str | None, extra: dict[str, str]) -> dict[str, str]:
    settings = {**node_mode_settings(), "DISPATCHER_ENDPOINT": dispatcher, "DISPATCHER_NODE_NAME": name}
    if state_dir:
        settings["CRAWLPROJ_STATE_DIR"] = state_dir
    if "DISPATCHER_NODE_NAME" in extra:
        raise DeployError("-s DISPATCHER_NODE_NAME: node names are the job ids <crawl>-node<i>; "
                          "set --crawl instead")
    try:
        settings = combine(settings, extra)
        # schedule.json's setting=ADDONS=... replaces settings.py's ADDONS: send the union
        settings["ADDONS"] = setting_value("ADDONS", settings["ADDONS"])
    except ValueError as exc:
        raise DeployError(f"-s {exc}") from None
    return settings


def active_jobs(apis: dict[str, Scrapyd], project: str) -> dict[str, tuple[str, JobInfo]]:
    """Pending and running jobs of ``project`` on every host: job id -> (host URL, info)."""
    found: dict[str, tuple[str, JobInfo]] = {}
    for url, api in apis.items():
        for job, info in api.jobs(project).items():
            if info.state in ACTIVE_STATES:
                found[job] = (url, info)
    return found


def schedule(record: Record, placement: Sequence[tuple[str, str]], settings_of: dict[str, dict[str, str]],
             spider_args: dict[str, str], version: str | None,
             timeout: float = HTTP_TIMEOUT) -> list[tuple[str, str, str]]:
    """Schedule every node of ``placement`` that is not pending or running anywhere already.

    Returns (node, host, what happened). ``record`` is updated in place.
    """
    reserved = SCRAPYD_PARAMS & set(spider_args)
    if reserved:
        raise DeployError(f"-a {', '.join(sorted(reserved))}: reserved by scrapyd's schedule.json")
    hosts = {url for _, url in placement} | {job.scrapyd for job in record.nodes.values()}
    apis = {url: Scrapyd(url, timeout) for url in sorted(hosts)}
    active = active_jobs(apis, record.project)
    done = []
    for name, url in placement:
        if name in active:
            where, info = active[name]
            done.append((name, where, f"already {info.state}"))
            continue
        params = [("project", record.project), ("spider", record.spider), ("jobid", name)]
        params += [("setting", f"{key}={value}") for key, value in settings_of[name].items()]
        params += list(spider_args.items())
        if version:
            params.append(("_version", version))
        job = apis[url].call("schedule", params, post=True)["jobid"]
        record.nodes[name] = NodeJob(scrapyd=url, job=job, version=version,
                                     scheduled_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        done.append((name, url, f"scheduled as job {job}"))
    return done


def schedule_command(args: argparse.Namespace) -> int:
    """Spread N node jobs over scrapyd hosts (schedule.json), named <crawl>-node<i>."""
    crawl = check_name(args.crawl, "crawl name")
    path = Path(args.record) if args.record else default_record(crawl)
    record = Record.load(path) if path.exists() else Record(crawl=crawl)
    if record.crawl != crawl:
        raise DeployError(f"{path} records crawl {record.crawl!r}, not {crawl!r}")
    record.project, record.spider, record.dispatcher = args.project, args.spider, args.dispatcher
    placement = place_nodes(crawl, args.nodes, args.scrapyd)
    extra = parse_pairs(args.set, "-s")
    settings_of = {name: node_settings(name, args.dispatcher, args.state_dir, extra) for name, _ in placement}
    before = dict(record.nodes)
    try:
        results = schedule(record, placement, settings_of, parse_pairs(args.arg, "-a"), args.version)
    except DeployError:
        if record.nodes != before:
            record.save(path)  # what was scheduled before the error is recorded
        raise
    record.save(path)
    for name, url, what in results:
        print(f"{name:24s} {url:32s} {what}")
    print(f"record: {path}")
    return 0


def gather_status(record: Record, timeout: float = HTTP_TIMEOUT) -> dict[str, Any]:
    """Each recorded node: its scrapyd job (listjobs.json) joined with the dispatcher's view of it."""
    jobs: dict[str, dict[str, JobInfo] | str] = {}
    for url in sorted({job.scrapyd for job in record.nodes.values()}):
        try:
            jobs[url] = Scrapyd(url, timeout).jobs(record.project)
        except DeployError as exc:
            jobs[url] = str(exc)
    dispatcher: dict[str, Any] = {"endpoint": record.dispatcher, "reachable": False}
    known: dict[str, Any] = {}
    if record.dispatcher:
        try:
            state = request_state(record.dispatcher, DISPATCHER_TIMEOUT)
        except DispatcherError as exc:
            dispatcher["error"] = str(exc)
        else:
            known = state.get("nodes", {})
            dispatcher.update(reachable=True, finished=state["finished"], frontier=state["frontier"],
                              leases=state["leases"], seen=state["seen"],
                              nodes_alive=sum(1 for n in known.values() if n["alive"]))
    nodes = []
    for name, job in sorted(record.nodes.items(), key=_node_order):
        host_jobs = jobs[job.scrapyd]
        row: dict[str, Any] = {"name": name, "scrapyd": job.scrapyd, "job": job.job}
        if isinstance(host_jobs, str):
            row.update(state="unreachable", error=host_jobs)
        else:
            info = host_jobs.get(job.job)
            row.update(asdict(info) if info else {"state": "unknown"})
        seen = known.get(name)
        row["dispatcher"] = None if seen is None else {
            "alive": seen["alive"], "partitions": seen["owned"], "leases": seen["leases"],
            "acked": seen["acked"], "pages": (seen.get("stats") or {}).get("response_received_count", 0)}
        nodes.append(row)
    return {"crawl": record.crawl, "project": record.project, "dispatcher": dispatcher, "nodes": nodes}


def format_status(status: dict[str, Any]) -> str:
    d = status["dispatcher"]
    if d["reachable"]:
        head = (f"dispatcher {d['endpoint']}: {d['nodes_alive']} nodes alive, frontier {d['frontier']}, "
                f"leases {d['leases']}, seen {d['seen']}{', finished' if d['finished'] else ''}")
    elif d["endpoint"]:
        head = f"dispatcher {d['endpoint']}: not reachable ({d.get('error', '')})"
    else:
        head = "dispatcher: none recorded"
    lines = [f"crawl {status['crawl']} (project {status['project']})", head,
             f"{'NODE':24s} {'SCRAPYD':32s} {'JOB':10s} {'PID':>7s}  DISPATCHER"]
    for n in status["nodes"]:
        seen = n["dispatcher"]
        view = "not registered" if seen is None else (
            f"{'alive' if seen['alive'] else 'gone'}, {seen['partitions']} partitions, "
            f"{seen['leases']} leases, {seen['acked']} acked, {seen['pages']} pages")
        lines.append(f"{n['name']:24s} {n['scrapyd']:32s} {n['state']:10s} {str(n.get('pid') or '-'):>7s}  {view}")
    lines += sorted({n["error"] for n in status["nodes"] if n.get("error")})
    return "\n".join(lines)


def status_command(args: argparse.Namespace) -> int:
    """Show which scrapyd job is which node, joined with the dispatcher's status if reachable."""
    record = Record.load(Path(args.record) if args.record else default_record(args.crawl))
    status = gather_status(record)
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


def stop(record: Record, names: Sequence[str] | None = None, signal: str = "TERM", wait: float = 0.0,
         timeout: float = HTTP_TIMEOUT) -> tuple[dict[str, str | None], list[str]]:
    """cancel.json for each recorded node (all, or ``names``); waits up to ``wait`` seconds for them
    to end. Returns (node -> scrapyd's prevstate, nodes still pending or running after the wait)."""
    unknown = sorted(set(names or ()) - set(record.nodes))
    if unknown:
        raise DeployError(f"not in the record: {', '.join(unknown)}")
    chosen = {name: job for name, job in record.nodes.items() if not names or name in names}
    apis = {url: Scrapyd(url, timeout) for url in {job.scrapyd for job in chosen.values()}}
    prev: dict[str, str | None] = {}
    for name, job in sorted(chosen.items(), key=_node_order):
        answer = apis[job.scrapyd].call("cancel", [("project", record.project), ("job", job.job),
                                                   ("signal", signal)], post=True)
        prev[name] = answer.get("prevstate")
    if wait <= 0:
        return prev, []
    deadline = time.monotonic() + wait
    while True:
        active = active_jobs(apis, record.project)
        left = [name for name, job in chosen.items() if job.job in active]
        if not left or time.monotonic() >= deadline:
            return prev, left
        time.sleep(STOP_POLL_INTERVAL)  # poll interval of a deadline-bound wait


def stop_command(args: argparse.Namespace) -> int:
    """Cancel the recorded node jobs (cancel.json); SIGTERM lets a node hand off its partitions."""
    record = Record.load(Path(args.record) if args.record else default_record(args.crawl))
    prev, left = stop(record, args.node or None, "KILL" if args.kill else "TERM", args.wait)
    for name, state in prev.items():
        print(f"{name:24s} {record.nodes[name].scrapyd:32s} "
              f"{'cancelled (was ' + state + ')' if state else 'not pending or running'}")
    if left:
        print(f"still running after {args.wait:g} s: {', '.join(left)}", file=sys.stderr)
        return 1
    return 0


# -- command line ---------------------------------------------------------------------------------


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except DeployError as exc:
            print(f"crawlproj {args.command}: {exc}", file=sys.stderr)
            return 1
    return run


def _record_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crawl", default=DEFAULT_CRAWL, help="crawl name (default %(default)s)")
    p.add_argument("--record", default=None,
                   help="JSON record of the scheduled jobs (default crawlproj-<crawl>.jobs.json)")


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("deploy", help=deploy_command.__doc__)
    p.add_argument("--url", action="append", default=[], metavar="URL",
                   help="scrapyd host (repeatable; user:password@ allowed); default: scrapy.cfg targets")
    p.add_argument("--target", action="append", default=[], help="scrapy.cfg deploy target (default: default)")
    p.add_argument("--all-targets", action="store_true", help="every [deploy] target of scrapy.cfg")
    p.add_argument("--project", default=None, help=f"scrapyd project (default: the target's, else {DEFAULT_PROJECT})")
    p.add_argument("--version", default=None, help="egg version (default: the current epoch seconds)")
    p.add_argument("--egg", default=None, help="upload this egg instead of building one")
    p.add_argument("--build-egg", default=None, metavar="FILE", help="only build the egg, into FILE")
    p.add_argument("--project-dir", default=None, help="the checkout (default: where scrapy.cfg is found)")
    p.set_defaults(func=_guarded(deploy_command))

    p = sub.add_parser("schedule", help=schedule_command.__doc__)
    _record_options(p)
    p.add_argument("--nodes", type=int, required=True, help="node jobs in all")
    p.add_argument("--scrapyd", nargs="+", required=True, metavar="URL", help="scrapyd hosts, in a fixed order")
    p.add_argument("--dispatcher", required=True, metavar="ENDPOINT", help="e.g. tcp://dispatcher-host:5570")
    p.add_argument("--state-dir", default=None,
                   help="CRAWLPROJ_STATE_DIR on the hosts (default: the project's, relative to scrapyd's directory)")
    p.add_argument("--project", default=DEFAULT_PROJECT)
    p.add_argument("--spider", default=DEFAULT_SPIDER)
    p.add_argument("--version", default=None, help="egg version to run (default: scrapyd's latest)")
    p.add_argument("-s", "--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a Scrapy setting for every node")
    p.add_argument("-a", "--arg", action="append", default=[], metavar="NAME=VALUE", help="a spider argument")
    p.set_defaults(func=_guarded(schedule_command))

    p = sub.add_parser("status", help=status_command.__doc__)
    _record_options(p)
    p.add_argument("--json", action="store_true", help="print the joined status as JSON")
    p.set_defaults(func=_guarded(status_command))

    p = sub.add_parser("stop", help=stop_command.__doc__)
    _record_options(p)
    p.add_argument("--node", action="append", default=[], help="only this node (repeatable)")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the jobs to end")
    p.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM (no handoff)")
    p.set_defaults(func=_guarded(stop_command))
