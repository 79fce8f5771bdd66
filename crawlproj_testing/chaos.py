"""A chaos soak: a crawl of the synthetic web by a dispatcher and N nodes while a driver kills
(-9) and restarts nodes and the dispatcher, pauses a node (SIGSTOP) past the dead-node time-out
and stops MongoDB; then the checks.

    run = ChaosRun(workdir, spec, nodes=2)
    report = run.run([Step("kill_node", at_pages=500), Step("mongo_down", at_pages=900), ...])
    assert not report.violations, report.violations

A :class:`Step` fires at a page count (``at_pages``: deterministic however loaded the machine
is) or a number of seconds after the previous step (``after_s``). The checks reuse
:mod:`crawlproj_testing.politeness_checks` and the model's ground truth:

- MongoDB holds exactly one document per ground-truth URL, and no other;
- no page robots.txt disallows was fetched; no overlap and no gap below 0.95 x the delay on a key;
- every refetch (a page answered below 500 more than once) is explained by a fault between its
  two fetches, and no fault explains more refetches than the killed process held leased (the
  paused one: what it had in flight).

Robots variants that are unreachable (5xx, time-out) are served as "disallow" here: a crawl
that must end cannot wait on hosts whose robots.txt never answers.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawlproj.tools.cluster import Cluster
from crawlproj.tools.runner import SYNTHWEB_SETTINGS
from crawlproj.wire.urls import fingerprint_hex
from crawlproj_testing.mongo import NxServer
from crawlproj_testing.politeness_checks import key_of_host, politeness_violations
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, Web, WebSpec
from crawlproj_testing.synthweb.process import Access, SynthWebProcess

UNREACHABLE_ROBOTS = {v for v, outcome in RFC9309_OUTCOME.items() if outcome == "disallow"}
KINDS = ("kill_node", "kill_dispatcher", "pause", "mongo_down")
DELAY = 0.05  # DOWNLOAD_DELAY of the nodes
DEAD_TIMEOUT = 3.0  # the dispatcher's --heartbeat-timeout
#: After a fault, its leases come back within this long (dead time-out, restart hold, replay).
RECOVERY_MS = 30_000
DATABASE = "chaos"
POLL = 0.5  # seconds between two looks at the crawl while the driver waits
FRESH_STATE_WAIT = 10.0  # seconds a fault waits for the dispatcher's state of now (a kill's bound)


@dataclass
class Step:
    kind: str  # one of KINDS
    at_pages: int | None = None  # fire once this many pages were fetched ...
    after_s: float | None = None  # ... or this long after the previous step
    seconds: float = 20.0  # mongo_down: length of the outage; pause: 2 x the dead time-out by default


@dataclass
class Event:
    kind: str
    target: str
    start_ms: float  # wall clock, as in the access log
    end_ms: float  # the process is back (restarted, continued) or MongoDB answers again
    bound: int  # refetches it may explain: leases held (a kill) or in flight (a pause)
    explained: int = 0


@dataclass
class Report:
    pages: int = 0
    truth: int = 0
    wall_seconds: float = 0.0
    events: list[Event] = field(default_factory=list)
    refetches: int = 0
    violations: list[str] = field(default_factory=list)
    finished: bool = False

    def counts(self) -> dict[str, int]:
        return dict(Counter(e.kind for e in self.events))

    def summary(self) -> dict[str, Any]:
        return {"pages": self.pages, "truth": self.truth, "wall_seconds": round(self.wall_seconds, 1),
                "finished": self.finished, "faults": self.counts(), "refetches": self.refetches,
                "refetch_bounds": [(e.kind, e.target, e.explained, e.bound) for e in self.events
                                   if e.kind != "mongo_down"],
                "fault_times_ms": [(e.kind, e.target, round(e.start_ms), round(e.end_ms)) for e in self.events],
                "violations": len(self.violations)}


def _now_ms() -> float:
    return time.time() * 1000.0


class ChaosRun:
    def __init__(self, workdir: Path, spec: WebSpec, nodes: int = 2, partitions: int = 64,
                 settings: dict[str, Any] | None = None, seed: int = 1):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node_names = [f"n{i + 1}" for i in range(nodes)]
        self.rng = random.Random(seed)
        self.web = SynthWebProcess(spec, access_log=self.workdir / "access.log", hold_seconds=4)
        self.model = Web(spec)
        for host in self.model.hosts:
            if host.robots in UNREACHABLE_ROBOTS:
                self.web.set_robots(host.name, "disallow")
                served = dataclasses.replace(host, robots="disallow")
                self.model.by_name[host.name] = served
        self.truth = self.model.ground_truth()
        self.mongo = NxServer(self.workdir / "mongo")
        self.mongo.start()
        seeds = self.workdir / "seeds.txt"
        seeds.write_text("\n".join(self.web.seed_urls()) + "\n")
        node_settings = {
            **SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "DOWNLOAD_TIMEOUT": 5, "DOWNLOAD_DELAY": DELAY,
            "LOG_LEVEL": "INFO", "DISPATCHER_HEARTBEAT_INTERVAL": 0.5, "DISPATCHER_STATS_INTERVAL": 0.5,
            "MONGO_URI": self.mongo.uri, "MONGO_DATABASE": DATABASE,
            "MONGO_SPILL_DIR": str(self.workdir / "spill"), "MONGO_CONNECT_TIMEOUT": 0.5,
            "MONGO_SPILL_AFTER": 0.5, "MONGO_RETRY_BACKOFF_MAX": 1.0, **(settings or {}),
        }
        self.cluster = Cluster(self.workdir / "cluster", seeds, settings=node_settings,
                               dispatcher_args=("--partitions", str(partitions), "--heartbeat-interval", "0.5",
                                                "--heartbeat-timeout", str(DEAD_TIMEOUT)))
        self._log_offset = 0
        self._pages = 0
        self._last_state: dict[str, Any] = {}

    # -- watching -------------------------------------------------------------------------------

    def pages_fetched(self) -> int:
        """Page requests in the access log so far (read incrementally)."""
        with open(self.web.access_log, "rb") as f:  # type: ignore[arg-type]
            f.seek(self._log_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._log_offset += end
        self._pages += data[:end].count(b"\n") - data[:end].count(b"/robots.txt\t")
        return self._pages

    def state(self) -> dict[str, Any]:
        """The dispatcher's state (the last one seen if it does not answer now)."""
        self._fresh_state(0.0)
        return self._last_state

    def crawl_over(self) -> bool:
        return not self.cluster.running()

    def _wait(self, until: Callable[[], bool], seconds: float | None = None) -> None:
        """Until ``until()`` holds, or ``seconds`` pass, or the crawl ends."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not until() and not self.crawl_over():
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(POLL)  # the driver's pace, not a synchronisation: conditions decide

    # -- faults ---------------------------------------------------------------------------------

    def _fresh_state(self, seconds: float = FRESH_STATE_WAIT) -> dict[str, Any] | None:
        """The dispatcher's state now (None if it does not answer within ``seconds``)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._last_state = self.cluster.status()
                return self._last_state
            except Exception:  # busy, down or restarting
                if time.monotonic() >= deadline:
                    return None
            time.sleep(POLL)  # the driver's pace, not a synchronisation

    def _leases_of(self, name: str) -> int:
        """What a kill of ``name`` may make fetched twice: the leases it holds now; when the
        dispatcher does not say, the most it can hold (its capacity), not a stale count."""
        state = self._fresh_state()
        node = (state if state is not None else self._last_state).get("nodes", {}).get(name) or {}
        if state is None:
            return int(node.get("capacity") or 0)
        return int(node.get("leases") or 0)

    def fault(self, step: Step) -> Event:
        cluster = self.cluster
        if step.kind == "kill_node":
            name = self.rng.choice([n for n in self.node_names if n in cluster.running()])
            bound = self._leases_of(name)
            start = _now_ms()
            cluster.kill_node(name)
            cluster.start_node(name)
            return Event("kill_node", name, start, _now_ms(), bound)
        if step.kind == "kill_dispatcher":
            state = self._fresh_state()
            nodes = self._last_state.get("nodes", {}).values()
            bound = (int(state.get("leases") or 0) if state is not None
                     else sum(int(n.get("capacity") or 0) for n in nodes))  # the most they hold
            start = _now_ms()
            cluster.dispatcher.kill()
            cluster.dispatcher.restart()
            return Event("kill_dispatcher", "dispatcher", start, _now_ms(), bound)
        if step.kind == "pause":
            name = self.rng.choice([n for n in self.node_names if n in cluster.running()])
            node = self.state().get("nodes", {}).get(name) or {}
            in_flight = int((node.get("stats") or {}).get("inflight") or 0)
            proc = cluster.nodes[name]
            start = _now_ms()
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                self._wait(lambda: False, step.seconds)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            return Event("pause", name, start, _now_ms(), in_flight)
        if step.kind == "mongo_down":
            start = _now_ms()
            self.mongo.stop()
            try:
                self._wait(lambda: False, step.seconds)
            finally:
                self.mongo.start()
            return Event("mongo_down", "mongodb", start, _now_ms(), 0)
        raise ValueError(f"unknown fault {step.kind!r}; expected one of {KINDS}")

    # -- the run --------------------------------------------------------------------------------

    def run(self, steps: list[Step], timeout: float = 3600.0) -> Report:
        report = Report(truth=len(self.truth))
        started = time.monotonic()
        try:
            for name in self.node_names:
                self.cluster.start_node(name)
            for step in steps:
                if step.at_pages is not None:
                    at = step.at_pages
                    self._wait(lambda: self.pages_fetched() >= at)
                else:
                    self._wait(lambda: False, step.after_s or 0.0)
                if self.crawl_over():
                    break
                report.events.append(self.fault(step))
            report.finished = self.cluster.wait(max(1.0, timeout - (time.monotonic() - started)))
            report.wall_seconds = time.monotonic() - started
            self.check(report)
        finally:
            self.close()
        return report

    def close(self) -> None:
        for name in self.cluster.running():
            proc = self.cluster.nodes[name]
            os.kill(proc.pid, signal.SIGCONT)
        self.cluster.close()
        self.mongo.stop()
        self.web.stop()

    # -- the checks -----------------------------------------------------------------------------

    def delay_of(self, key: str) -> float:
        delay = DELAY
        for host in self.model.hosts:
            if host.robots == "crawl_delay" and key_of_host(host.name) == key:
                delay = max(delay, self.model.spec.crawl_delay)
        return delay

    def check(self, report: Report) -> None:
        problems = report.violations
        if not report.finished:
            problems.append("the crawl did not finish")
        accesses = [a for a in self.web.accesses() if not a.is_robots]
        report.pages = len(accesses)
        fetched = {(a.host, a.path) for a in accesses}
        missing, extra = self.truth - fetched, fetched - self.truth
        if missing:
            problems.append(f"{len(missing)} ground-truth pages never fetched: {sorted(missing)[:5]}")
        for host, path in sorted(extra):
            known = self.model.by_name.get(host)
            why = "disallowed by robots.txt" if known and not self.model.robots_allowed(known, path) else "not in the ground truth"
            problems.append(f"robots.txt violation or stray fetch: {host}{path} ({why})")
        polite, _ = politeness_violations(accesses, self.delay_of)
        problems.extend(polite)
        self._check_mongo(problems)
        self._check_refetches(accesses, report)

    def _check_mongo(self, problems: list[str]) -> None:
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.mongo.uri, serverSelectionTimeoutMS=5000)
        try:
            ids = [d["_id"] for d in client[DATABASE]["pages"].find({}, {"_id": 1})]
        finally:
            client.close()
        expected = {fingerprint_hex(self.web.url(h, p)) for h, p in self.truth}
        got = set(ids)
        if len(ids) != len(got):
            problems.append(f"MongoDB holds {len(ids) - len(got)} duplicate documents")
        if got != expected:
            problems.append(f"MongoDB: {len(expected - got)} ground-truth URLs missing, "
                            f"{len(got - expected)} documents of other URLs")

    def _check_refetches(self, accesses: list[Access], report: Report) -> None:
        by_url: dict[tuple[str, str], list[Access]] = {}
        for a in sorted(accesses, key=lambda a: a.start_ms):
            if a.status < 500:  # 5xx answers are retried by design
                by_url.setdefault((a.host, a.path), []).append(a)
        faults = [e for e in report.events if e.kind != "mongo_down"]
        for url, entries in by_url.items():
            for prev, cur in zip(entries, entries[1:]):
                report.refetches += 1
                # the fault that explains it: the last one between the two fetches (with the
                # time its leases take to come back), on the process that made the first
                cause = None
                for e in faults:
                    if e.start_ms <= cur.start_ms and prev.start_ms <= e.end_ms + RECOVERY_MS and (
                            e.kind == "kill_dispatcher" or e.target in (prev.node, cur.node)):
                        cause = e
                if cause is None:
                    report.violations.append(f"refetch of {url[0]}{url[1]} by {cur.node} at {cur.start_ms:.0f} "
                                             f"(first by {prev.node} at {prev.start_ms:.0f}) explained by no fault")
                else:
                    cause.explained += 1
        for e in faults:
            if e.explained > e.bound:
                held = "had in flight" if e.kind == "pause" else "held leased"
                report.violations.append(f"{e.kind} of {e.target}: {e.explained} refetches, more than the "
                                         f"{e.bound} requests it {held}")
