"""Name the bottleneck of a crawl, with its evidence, from its logs or the dispatcher's series.

    crawlproj diagnose cluster-dir/                 # node logs, dispatcher log, timing files
    crawlproj diagnose --http http://127.0.0.1:8080  # live: the dispatcher's series

One module of about 450 lines: its rules read one another's findings (what was named first makes
the rest knock-ons), so they stay in one function; the figures they read are in
:mod:`crawlproj.observability.causes`.

The first third of the windows (without a ramp-up at the start) is compared with the last
third, each figure a mean weighted by the windows' length (latencies by their counts). When the
crawl rate fell, the cause is the resource whose share of the time grew most (the remote sites,
this machine's CPU, the dispatcher, robots.txt, the item store, politeness, lack of work), from
the nodes' time account (:mod:`crawlproj.observability.causes`); saturations seen directly
come first, and before them a crawl that ended by dropping its requests:

- dropped: the nodes ended a large share of their requests without a fetch (robots.txt
  unreachable or forbidding, the trap or SSRF guards), named with the setting that would allow
  them, from their refusal stats (crawlproj.refusals) against the pages fetched;
- this machine's CPU: the reactor thread waited for a CPU much more than before (another
  process took it), told apart from a heavy parse by the CPU each page took, and from a node
  left without work (its slots emptied for lack of work more) whose waits do not explain the rate;
- dispatcher saturated: its loop busy most of the time (or, without its log, nodes' round trips
  to it long and growing while the nodes are idle);
- node CPU-bound: callbacks (parse and link handling) take most of a node's time and its
  reactor thread was runnable as much (a busy interpreter slows every timing in the process, so
  this goes before the stores; a reactor blocked in a sleep or a slow read is not CPU-bound);
- item store: item write latency grew more than parse's and its writes cost: ITEMS_WAITING
  items or more in a node's pipelines (Little's law on their write times), growing while the
  rate holds;
- politeness store (robots.txt cache, last-fetch state): its lookups block the reactor, or its
  lookups or writes grew (or are slow) and take a larger share of their thread's time;
- item store falling behind while the rate holds: its buffer and spill grow, its oldest item
  ages (with the time left before the spill budget is full);
- the account's grown shares: remote sites, the dispatcher's stalls, robots.txt, the engine
  holding back, then the empty slots (politeness delays, lack of work);
- politeness-bound: one politeness key takes most fetches, or only a few keys are left; or
  draining: the keys and the frontier run out. Neither is a fault of the crawler.

Growth alone, while the rate holds, is no fault: a grown latency is a cause when the rate fell
and it costs (its thread's time, for the stores), or when a backlog grows (the item store). A
crawl rate that fell with none of these is reported as unexplained. A crawl without any of
this is healthy: no finding.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import causes
from .analysis import Observations, Window, from_series, read_logs, windows

RATE_FALL = 0.25  # a rate this much lower late than early is an alarm
ACCOUNT_FALL = 0.2  # a rate this much lower: the account names the resource whose share grew
GROWTH = 3.0  # an operation this many times slower late than early has grown ...
MIN_GROWTH_MS = 5.0  # ... by at least this much (sub-millisecond noise is no growth)
BIG_GROWTH_MS = 500.0  # or by this much and causes.GROWTH_RATIO (a slow-by-design one grew)
FLOOR_MS = 1.0  # early latencies below this count as this (ratios of tiny numbers mean nothing)
BUSY = 0.7  # dispatcher loop busy share that means saturated
STALLED = 0.2  # dispatcher loop stalled this share of the time: a fault even while the rate holds
SLOW_RTT_MS = 250.0  # node -> dispatcher round trip that means the dispatcher lags
NODE_IDLE_CPU = 0.8
SLOW_LOOKUP_MS = 50.0  # a primary-key read of the politeness store should take well under 1 ms
REACTOR_SHARE = 0.25  # store lookups taking this share of a node's time block its reactor
STORE_COST = 0.05  # a store operation taking this much more of its thread's time costs the crawl
ITEMS_WAITING = 5.0  # items in a node's item pipelines that cost (and 2x early, while the rate holds)
PARSE_SHARE = 0.5  # share of a node's wall time in callbacks that makes it CPU-bound
HOT_KEY_SHARE = 0.5  # one key with this share of fetches ...
FEW_KEYS = 3  # ... or this few keys fetched: politeness-bound
MIN_FETCHES = 5  # fetches in a window for its key figures to count (one key at its delay is few)

ITEM_OPS = ("item_write",)
STORE_OPS = ("robots_lookup", "robots_store_write")


@dataclass
class Finding:
    cause: str  # dropped, machine_cpu, dispatcher, cpu, robots_store, item_store, remote_sites,
    # robots, held, lack_of_work, politeness, drain, rate
    summary: str
    evidence: list[str] = field(default_factory=list)
    fault: bool = True  # False: the crawl is bound by its own shape (politeness, draining)


@dataclass
class Diagnosis:
    windows: int
    span_seconds: float
    rate_early: float | None
    rate_late: float | None
    rate_change: float | None  # (late - early) / early
    findings: list[Finding] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.findings

    @property
    def cause(self) -> str | None:
        return self.findings[0].cause if self.findings else None

    @property
    def faults(self) -> list[Finding]:
        return [f for f in self.findings if f.fault]

    def headline(self) -> str:
        parts = []
        if self.rate_change is not None and self.rate_change <= -RATE_FALL:
            parts.append(f"rate fell {-100 * self.rate_change:.0f}% in {causes.duration(self.span_seconds)} "
                         f"({self.rate_early:.1f} -> {self.rate_late:.1f} pages/s)")
        if self.findings:
            first = self.findings[0]
            parts.append(first.summary if first.fault or self.faults else
                         f"no fault of the crawler: {first.summary}")
        else:
            change = "" if self.rate_change is None else f" (rate {100 * self.rate_change:+.0f}%)"
            parts.append(f"no bottleneck found{change}: operations flat, dispatcher not saturated, "
                         "no node CPU-bound, politeness keys spread")
        return "; ".join(parts)

    def text(self) -> str:
        lines = [self.headline()]
        for i, f in enumerate(self.findings):
            kind = "cause" if i == 0 else "also"
            lines.append(f"{kind}: [{f.cause}]{'' if f.fault else ' (not a fault)'} {f.summary}")
            lines += [f"  - {e}" for e in f.evidence]
        return "\n".join(lines)


def _lead(diag: Diagnosis) -> Finding:
    """The first finding of the account's rules (after a "dropped" one; or that one, whose
    knock-ons are the emptied slots): knock-ons go there."""
    return next((f for f in diag.findings if f.cause != "dropped"), diag.findings[0])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _rate(bins: list[Window]) -> float | None:
    return causes.span_mean(bins, lambda b: b.rate)


def _runnable(b: Window) -> float | None:
    """The largest share of a node's wall time its reactor thread was on a CPU or waiting for one."""
    shares = [a["reactor"]["cpu"] + a["reactor"].get("starved", 0.0)
              for a in b.account.values() if "cpu" in a.get("reactor", {})]
    return max(shares) if shares else None


def _phases(bins: list[Window]) -> tuple[list[Window], list[Window]]:
    """The first and last third of the windows; the ramp-up (leading windows below half the
    highest rate: the crawl was starting, its frontier growing from the seeds; at most a third
    of the windows) is left out of the early ones."""
    k = max(1, len(bins) // 3)
    skip = 0
    top = max((b.rate for b in bins if b.rate is not None), default=0.0)
    if len(bins) >= 4:
        while skip < k and (bins[skip].rate or 0.0) < top / 2:
            skip += 1
    return bins[skip:skip + k], bins[-k:]


def _op(bins: list[Window], op: str, q: str) -> float | None:
    return causes.op_mean(bins, op, q)


@dataclass
class _Growth:
    op: str
    early: float
    late: float
    early_p99: float | None
    late_p99: float | None

    @property
    def ratio(self) -> float:
        return self.late / max(self.early, FLOOR_MS)

    @property
    def grown(self) -> bool:
        rise = self.late - self.early
        return rise >= MIN_GROWTH_MS and (self.ratio >= GROWTH or (
            rise >= BIG_GROWTH_MS and self.ratio >= causes.GROWTH_RATIO))

    def describe(self) -> str:
        p99 = ""
        if self.early_p99 is not None and self.late_p99 is not None:
            p99 = f", p99 {self.early_p99:.1f} -> {self.late_p99:.1f} ms"
        return f"{self.op} p50 {self.early:.1f} -> {self.late:.1f} ms ({self.ratio:.1f}x{p99})"


def _growths(early: list[Window], late: list[Window]) -> dict[str, _Growth]:
    result = {}
    for op in sorted({op for b in early + late for op in b.ops}):
        e, l_ = _op(early, op, "p50"), _op(late, op, "p50")
        if e is not None and l_ is not None:
            result[op] = _Growth(op, e, l_, _op(early, op, "p99"), _op(late, op, "p99"))
    return result


def diagnose(obs: Observations, window: float | None = None) -> Diagnosis:
    bins = windows(obs, window)
    span = obs.span()
    length = span[1] - span[0] if span else 0.0
    # a crawl that "ends" by dropping what it was given is no normal end, whatever its rate did
    drops = causes.dropped(obs)
    ended = [] if drops is None else [Finding("dropped", drops.summary(), drops.evidence())]
    if not bins:
        return Diagnosis(0, length, None, None, None, ended)
    early, late = _phases(bins)
    r_early, r_late = _rate(early), _rate(late)
    change = (r_late - r_early) / r_early if r_early and r_late is not None else None
    diag = Diagnosis(len(bins), length, r_early, r_late, change, ended)
    growths = _growths(early, late)
    grown = sorted((g for g in growths.values() if g.grown), key=lambda g: -g.ratio)
    flat = [g for g in growths.values() if not g.grown]

    def others(exclude: tuple[str, ...]) -> str:
        rest = [g for g in grown if g.op not in exclude]
        text = "other operations stayed flat" if not rest else \
            "others grew less: " + ", ".join(f"{g.op} {g.ratio:.1f}x" for g in rest)
        return text

    fell = change is not None and change <= -ACCOUNT_FALL
    found = causes.shares(early, late)
    account_grown = sorted((s for s in found.values() if s.grown), key=lambda s: -s.rise)
    named: set[str] = set()

    def add(cause: str, summary: str, evidence: list[str], fault: bool = True) -> None:
        named.add(cause)
        diag.findings.append(Finding(cause, summary, evidence, fault))

    # this machine's CPU or the dispatcher's stalls, whichever grew more, come first: either
    # slows every timing of the nodes (the knock-ons the rules below would see)
    environment = [s_ for s_ in account_grown if s_.resource in ("machine_cpu", "dispatcher")]
    lack = found.get("lack_of_work")
    if lack is not None and lack.grown and "machine_cpu" in found and lack.rise > found["machine_cpu"].rise:
        # the slots emptied for lack of work more than the node waited for a CPU: it had less to
        # do (its work held up elsewhere), so its waits for a CPU do not explain the rate
        environment = [s_ for s_ in environment if s_.resource != "machine_cpu"]
    if fell and environment:
        top = environment[0].resource
        add(top, ACCOUNT_SUMMARIES[top], causes.evidence(top, early, late, found))
    # dispatcher saturated
    busy = _mean([b.busy for b in late if b.busy is not None])
    rtt = growths.get("dispatcher_rtt")
    cpu = _mean([b.cpu for b in late if b.cpu is not None])
    store_grew = any(g.op in STORE_OPS for g in grown)
    rtt_lags = rtt is not None and rtt.late >= SLOW_RTT_MS and rtt.grown and (cpu or 0) < NODE_IDLE_CPU \
        and not store_grew
    if ((busy is not None and busy >= BUSY) or (busy is None and rtt_lags)) and "dispatcher" not in named:
        evidence = []
        if busy is not None:
            evidence.append(f"dispatcher loop busy {100 * busy:.0f}% of the time (late windows)")
        msg = _op(late, "dispatcher_message", "p99")
        if msg is not None:
            evidence.append(f"dispatcher_message p99 {msg:.1f} ms per message")
        if rtt is not None:
            evidence.append(f"node round trip to the dispatcher: {rtt.describe()}")
        add("dispatcher", "the dispatcher is saturated: nodes wait for leases and acks; check its "
            "store (frontier_commit), its CPU and disk, send fewer messages (larger "
            "DISPATCHER_PUSH_BATCH / DISPATCHER_FLUSH_INTERVAL) or split the crawl", evidence)
    stalled = causes.span_mean(late, lambda b: b.stalled)
    if stalled is not None and stalled >= STALLED and "dispatcher" not in named:
        add("dispatcher", ACCOUNT_SUMMARIES["dispatcher"] + (
            "" if fell else " (the crawl rate holds so far: the nodes' queues bridge the stalls)"),
            causes.evidence("dispatcher", early, late, found))
    # node CPU-bound
    share = _mean([b.parse_share for b in late if b.parse_share is not None])
    # a callback's time runs from its first output to its last, so it also holds whatever ran on
    # the reactor between them (lookups that block it, a sleep): only a reactor thread that was
    # runnable (on a CPU or waiting for one) that much of the time is CPU-bound
    runnable = causes.span_mean(late, _runnable)
    if share is not None and share >= PARSE_SHARE and "machine_cpu" not in named and (
            runnable is None or runnable >= PARSE_SHARE):
        parse = _op(late, "parse", "p50")
        evidence = [f"callbacks take {100 * share:.0f}% of the busiest node's wall time"]
        if runnable is not None:
            evidence.append(f"its reactor thread on a CPU or waiting for one {100 * runnable:.0f}% of the time")
        if parse is not None:
            evidence.append(f"parse p50 {parse:.1f} ms per response")
        if cpu is not None:
            evidence.append(f"node CPU {100 * cpu:.0f}% of a core")
        if grown:
            # a busy interpreter (its GIL) slows every thread's timings, the store writers' too
            evidence.append("grown with it, likely knock-on: "
                            + ", ".join(f"{g.op} {g.ratio:.1f}x" for g in grown))
        add("cpu", "a node is CPU-bound in its callbacks (parse and link handling): profile it "
            "(crawlproj profile PID --no-idle), make the callback cheaper or run more nodes",
            evidence)
    # politeness store; its lookups run on the reactor thread: when they take much of it, they
    # stall everything else there (item completions, downloads, heartbeats) and come first.
    # Otherwise a grown or slow store operation is a cause only when the rate fell and it costs:
    # it took STORE_COST more of its thread's time (a few ms more on a write every half second
    # costs nothing)
    cost = {op: (causes.in_progress(early, op) or 0.0, causes.in_progress(late, op) or 0.0)
            for op in STORE_OPS}
    costly = {op for op, (e, l_) in cost.items() if fell and l_ - e >= STORE_COST}
    store = [g for g in grown if g.op in costly]
    lookup_late = _op(late, "robots_lookup", "p99")
    blocked = cost["robots_lookup"][1]
    slow = lookup_late is not None and lookup_late >= SLOW_LOOKUP_MS and "robots_lookup" in costly
    store_finding = None
    if store or slow or blocked >= REACTOR_SHARE:
        evidence = [g.describe() for g in store]
        if not store and lookup_late is not None:
            evidence.append(f"robots_lookup p99 {lookup_late:.1f} ms (a primary-key read takes < 1 ms)")
        if blocked:
            evidence.append(f"store lookups take {100 * cost['robots_lookup'][0]:.0f}% -> "
                            f"{100 * blocked:.0f}% of the node's time (reactor thread)")
        if "robots_store_write" in costly:
            writes = cost["robots_store_write"]
            evidence.append(f"store writes take {100 * writes[0]:.0f}% -> {100 * writes[1]:.0f}% "
                            "of the writer thread's time")
        knock_on = [g for g in grown if g.op not in STORE_OPS]
        if knock_on and blocked >= REACTOR_SHARE:
            evidence.append("knock-on (the reactor waits for the lookups): "
                            + ", ".join(f"{g.op} {g.ratio:.1f}x" for g in knock_on))
        ratio = f" grew {store[0].ratio:.0f}x" if store else " is slow"
        store_finding = Finding(
            "robots_store", f"politeness store latency{ratio}: the robots.txt / politeness store "
            "is the bottleneck, check its indexes and disk, and keep ROBOTS_CACHE_MEMORY / "
            "ROBOTS_THROTTLE_MEMORY above the number of active keys", evidence)
        if blocked >= REACTOR_SHARE:
            diag.findings.append(store_finding)
            named.add("robots_store")
            store_finding = None
    # item store
    behind = causes.backlog(bins, early, late)
    # parse is CPU only: when it grew as much, a starved interpreter slowed the writes too
    parse_growth = growths["parse"].ratio if "parse" in growths else 0.0
    write = next((g for g in grown if g.op in ITEM_OPS
                  and (behind is not None or g.ratio > parse_growth)), None)
    # items in the item pipelines per node (Little's law: the writes' time over the wall clock):
    # the store's queue, which tells a store falling behind from a slower write that costs nothing
    queue = [causes.in_progress(phase, "item_write") for phase in (early, late)]
    # a few items waiting cost nothing (a slower write at 4 pages/s); while the rate holds, the
    # queue must grow too
    queued = queue[0] is not None and queue[1] is not None and queue[1] >= ITEMS_WAITING and (
        fell or queue[1] >= causes.BACKLOG_GROWTH * queue[0])
    # lookups that block the reactor thread delay everything else on it (said in their evidence)
    reactor_blocked = blocked >= REACTOR_SHARE
    if write is not None and behind is None and (reactor_blocked or environment and fell):
        # so do a starved machine and a stalled dispatcher, the item pipelines' too
        if not reactor_blocked:  # (the lookups' knock-on line has it)
            _lead(diag).evidence.append(f"grown with it, likely knock-on: {write.describe()}")
    elif write is not None and queued:
        evidence = [write.describe(), f"items in the item pipelines (Little's law) {queue[0]:.1f} -> "
                    f"{queue[1]:.1f}" + ("" if fell else " (the crawl rate holds so far)")]
        add("item_store", f"item write latency grew {write.ratio:.0f}x while "
            f"{others(ITEM_OPS + ('download', 'dispatcher_rtt', 'download_total'))}: the item "
            "store is the bottleneck, check its indexes (an upsert that scans), its disk and "
            "its load", evidence + (behind or []))
    if behind is not None and "item_store" not in named:
        # the rate holds so far (the buffer takes the difference): a warning with the time left
        add("item_store", "the item store falls behind: items wait longer and longer for it "
            f"(the crawl rate {'fell' if fell else 'holds'}); check its load, indexes and disk "
            "before the spill budget is full (MONGO_SPILL_MAX_BYTES)",
            ([] if write is None else [write.describe()]) + behind)
    if store_finding is not None:
        diag.findings.append(store_finding)
        named.add("robots_store")
    # the account: the resource whose share grew most (the empty slots' reasons last)
    if fell:
        direct = [s for s in account_grown if s.resource in ("remote_sites", "machine_cpu", "dispatcher", "robots", "held")]
        empty = [s for s in account_grown if s.resource in ("politeness", "lack_of_work")]
        knock_on = []
        for s_ in direct + empty:
            if s_.resource in named or (s_.resource == "held" and "item_store" in named):
                continue
            if environment or reactor_blocked or (
                    diag.faults and s_.resource in ("politeness", "lack_of_work", "held")):
                # slowed by the cause named first: the starved machine, the stalled dispatcher,
                # the reactor blocked in store lookups (transfers end late), or (empty slots) a
                # store that holds the leases and the engine back
                knock_on.append(f"{s_.resource} {100 * s_.early:.0f}% -> {100 * s_.late:.0f}%")
                continue
            if s_.resource in ("politeness", "lack_of_work") and (
                    named & {"dispatcher", "machine_cpu", "cpu"} or causes.draining(early, late)):
                continue  # the empty slots are a knock-on, or the crawl drains (below)
            if s_.resource == "robots" and not any(
                    g.op in ("robots_wait", "robots_fetch") for g in grown):
                continue  # slots held a little longer while the waits for robots.txt did not grow
            add(s_.resource, ACCOUNT_SUMMARIES[s_.resource],
                causes.evidence(s_.resource, early, late, found))
        if knock_on:
            _lead(diag).evidence.append("grown with it, likely knock-on: " + ", ".join(knock_on))
    # politeness-bound
    keyed = [b for b in late if b.fetches >= MIN_FETCHES]
    hot = _mean([b.top_share for b in keyed if b.top_share is not None])
    distinct = _mean([float(b.distinct_keys) for b in keyed])
    if keyed and ((hot is not None and hot >= HOT_KEY_SHARE) or (distinct is not None and distinct <= FEW_KEYS)):
        top = keyed[-1].top_key
        evidence = []
        if hot is not None:
            evidence.append(f"busiest key {top}: {100 * hot:.0f}% of fetches in the late windows")
        if distinct is not None:
            evidence.append(f"{distinct:.0f} politeness keys fetched per window")
        if "politeness" in named:  # named by the account already: one finding of it
            diag.findings = [f for f in diag.findings if f.cause != "politeness"]
        add("politeness", f"politeness-bound: {'one key (' + str(top) + ') holds most pages' if hot and hot >= HOT_KEY_SHARE else 'few politeness keys left'}; "
            "each key is fetched once per its delay, so the crawl waits on it: add other domains "
            "(seeds), or allow that key a shorter delay (ROBOTS_THROTTLE_KEY_DELAYS)", evidence,
            fault=False)
    elif (change is not None and change <= -ACCOUNT_FALL and not diag.faults
          and (drain := causes.draining(early, late)) is not None):
        add("drain", "the crawl is draining: its politeness keys and frontier run out, so fewer "
            "keys are fetched at their delays", [drain], fault=False)
    if change is not None and change <= -RATE_FALL and not diag.findings:
        available = late[-1].available if late else None
        frontier = ("the frontier is nearly empty" if available is not None and available <= causes.DRAIN_FRONTIER
                    else f"the frontier holds {available:.0f} requests" if available is not None
                    else "look at the frontier and the nodes' queues")
        add("rate", f"the crawl rate fell {-100 * change:.0f}% but no share of the nodes' time and no "
            f"operation's latency grew ({', '.join(g.op for g in flat) or 'no timings in the logs'}); "
            f"{frontier}", [f"{s_.resource} {100 * s_.early:.0f}% -> {100 * s_.late:.0f}%"
                            for s_ in found.values()])
    return diag


ACCOUNT_SUMMARIES = {
    "machine_cpu": "this machine's CPU: the node waited for a CPU far more than before (another "
                   "process takes it, or too many processes per core): look at top, move the "
                   "other load or run fewer nodes per machine",
    "remote_sites": "the remote sites answer slower: the download slots spend more of their time "
                    "transferring, at the same politeness (one fetch per key), so fewer pages per "
                    "second; nothing to fix here but more keys in parallel (seeds) or a larger "
                    "CONCURRENT_REQUESTS when the slots are full",
    "dispatcher": "the dispatcher: its loop stalls or is busy far more than before, and the nodes "
                  "wait for it (leases, acks); look at its process (stopped, swapped, starved of "
                  "CPU) and its store",
    "robots": "robots.txt: requests wait longer for their hosts' robots.txt (its fetches got "
              "slow), holding download slots meanwhile; check ROBOTS_HOLD_TIME and the sites' answers",
    "held": "the engine backs out: requests are ready but not taken (its scraper or an item store "
            "brake is full); look at the callbacks and the item pipelines",
    "politeness": "politeness delays: the download slots stand empty while every queued key waits "
                  "out its delay; more keys (seeds) or shorter delays would help",
    "lack_of_work": "lack of work: the download slots stand empty with nothing queued while the "
                    "frontier still holds requests; look at the dispatcher's leases and the "
                    "nodes' credit (DISPATCHER_QUEUE_TARGET)",
}


def _fetch_series(url: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url.rstrip("/") + "/api/series", timeout=timeout) as resp:
        points: list[dict[str, Any]] = json.load(resp)["points"]
    return points


def command(args: argparse.Namespace) -> int:
    """Name the bottleneck of a crawl from its logs and/or the dispatcher's live series."""
    obs = Observations()
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"crawlproj diagnose: no such file or directory: {missing[0]}", file=sys.stderr)
        return 2
    if args.paths:
        obs = read_logs(args.paths)
    if args.http:
        live = from_series(_fetch_series(args.http))
        for name, src in live.sources.items():
            obs.sources.setdefault(name, src)
    if not obs.sources:
        print("crawlproj diagnose: nothing to read (give log files or --http)", file=sys.stderr)
        return 2
    diag = diagnose(obs, args.window)
    if args.json:
        print(json.dumps({**asdict(diag), "healthy": diag.healthy, "cause": diag.cause,
                          "headline": diag.headline()}, indent=2))
    else:
        print(diag.text())
    return 0


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("diagnose", help=command.__doc__, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="node logs, dispatcher log, TIMINGS_LOG_FILE files, or directories")
    p.add_argument("--http", default=None, help="the dispatcher's HTTP address (its --http-port)")
    p.add_argument("--window", type=float, default=None, help="window length in seconds (default: about 10 windows)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=command)
