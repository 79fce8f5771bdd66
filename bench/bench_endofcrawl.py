"""The end of a crawl: wall time against the per-key lower bound, on the synthetic web and on real HTML.

    .venv/bin/python bench/bench_endofcrawl.py                          # both webs (~6 min)
    .venv/bin/python bench/bench_endofcrawl.py --webs synthetic --hosts 300
    .venv/bin/python bench/bench_endofcrawl.py --webs realhtml --nodes 2
    .venv/bin/python bench/bench_suite.py --only endofcrawl              # the same, as a suite section

A crawl ends when its slowest key is done: one fetch at a time per key, then the key's delay.
Per key, from the web server's access log (robots.txt fetches included: they hold the key too):
its fetches, first and last fetch, mean answer time (as the server saw it) and delay; its lower
bound is the sum of its answer times plus one delay between two fetches, what it takes if it is
never idle; the crawl's bound is the largest. Wall time is from the crawl's first fetch to its
last answer. For the key that finished last: when its first URL was known (a seed: the crawl's
first fetch) and when it was first fetched, its idle time (no fetch in flight, no delay running)
and, where the links are known (the synthetic web's model), the part of it during which one of
its URLs was known and not fetched: the wait a scheduler can remove. A key's ``cycle bound``
(fetches x its median start-to-start interval) counts what the crawler itself takes between two
fetches of a busy key (its answer, its parse while the reactor is busy) and no wait. The ``CPU
bound`` is the CPU time of every process of the run (crawler, web server, MongoDB) over this
machine's cores: no schedule ends a crawl sooner on this machine.

Webs: ``synthetic`` is ``crawlproj demo --hosts N`` itself (the heavy-tailed synthetic web,
2 nodes, items into the embedded MongoDB); ``realhtml`` is the Debian documentation corpus of
bench/bench_realhtml.py on nginx (sets itself up with apt-get), crawlproj with ``--nodes``
nodes and its defaults but for ``--realhtml-delay`` (ROBOTS_THROTTLE_DELAY, 0.02 s): nginx answers
in no time and the corpus has no Crawl-delay, so without a delay every key's bound is ~0 and the
crawl is CPU-bound; when a URL became known comes from the corpus's files (a page's links are
known at its answer). Writes bench/results/endofcrawl.json.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import child_cpu, names_arg, run_and_save  # noqa: E402

from crawlproj.wire.urls import registered_domain  # noqa: E402

CRAWL_TIMEOUT = 3600
WEBS = ("synthetic", "realhtml")
TOP_KEYS = 8  # keys listed per web (the largest bounds)
REALHTML_DELAY = 0.02  # s between fetches on a key of the real-HTML crawl (with none it is CPU-bound)


@dataclass(frozen=True)
class Fetch:
    start: float  # epoch seconds, as the server saw it
    end: float
    host: str
    path: str
    robots: bool
    node: str = ""


# -- analysis -------------------------------------------------------------------------------------


def key_table(fetches: list[Fetch], delay_of: Callable[[str], float],
              known: dict[tuple[str, str], float] | None = None) -> dict[str, Any]:
    """Per key: fetches, times (seconds from the crawl's first fetch), bound, idle, waits.

    ``known``: when each (host, path) became known (epoch seconds), for the waits with work.
    """
    t0 = min(f.start for f in fetches)
    by_key: dict[str, list[Fetch]] = defaultdict(list)
    for f in fetches:
        by_key[registered_domain(f.host)].append(f)
    keys = {}
    for key, fs in by_key.items():
        fs.sort(key=lambda f: f.start)
        delay = delay_of(key)
        answers = [f.end - f.start for f in fs]
        gaps = [b.start - a.end - delay for a, b in zip(fs, fs[1:])]
        cycles = [b.start - a.start for a, b in zip(fs, fs[1:])]
        row: dict[str, Any] = {
            "fetches": len(fs), "robots_fetches": sum(f.robots for f in fs), "delay_s": delay,
            "mean_answer_ms": 1000 * statistics.fmean(answers),
            "bound_s": sum(answers) + delay * (len(fs) - 1),
            "first_fetch_s": fs[0].start - t0, "last_end_s": fs[-1].end - t0,
            "span_s": fs[-1].end - fs[0].start,
            "idle_s": sum(max(0.0, g) for g in gaps),
            "gap_p50_ms": 1000 * statistics.median(gaps) if gaps else 0.0,
            "gap_p90_ms": 1000 * _quantile(gaps, 0.9) if gaps else 0.0,
            "cycle_bound_s": len(fs) * statistics.median(cycles) if cycles else sum(answers),
            "nodes": sorted({f.node for f in fs if f.node}),
        }
        if known is not None:
            row.update(_waits(fs, delay, known, t0))
        keys[key] = row
    wall = max(f.end for f in fetches) - t0
    last = max(keys, key=lambda k: keys[k]["last_end_s"])
    bound_key = max(keys, key=lambda k: keys[k]["bound_s"])
    cycle_key = max(keys, key=lambda k: keys[k]["cycle_bound_s"])
    top = sorted(keys, key=lambda k: -keys[k]["bound_s"])[:TOP_KEYS]
    return {
        "fetches": len(fetches), "keys": len(keys), "wall_s": wall,
        "bound_s": keys[bound_key]["bound_s"], "bound_key": bound_key,
        "wall_over_bound": wall / max(keys[bound_key]["bound_s"], 1e-9),
        "cycle_bound_s": keys[cycle_key]["cycle_bound_s"], "cycle_bound_key": cycle_key,
        "wall_over_cycle_bound": wall / max(keys[cycle_key]["cycle_bound_s"], 1e-9),
        "last_key": last, "last": keys[last],
        "top_keys": {k: keys[k] for k in dict.fromkeys([*top, last, cycle_key])},
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _waits(fs: list[Fetch], delay: float, known: dict[tuple[str, str], float], t0: float) -> dict[str, Any]:
    """When the key's first URL was known, and its idle time while one of its URLs was known
    and not fetched (a repeated fetch of a URL, a retry, is known from its previous answer)."""
    avail: list[float] = []
    last_answer: dict[str, float] = {}
    first_known = min((known.get((f.host, f.path), t0) for f in fs if not f.robots), default=t0)
    for f in fs:
        if f.robots:
            avail.append(first_known)  # fetched for the key's first URL
        elif f.path in last_answer:
            avail.append(last_answer[f.path])
        else:
            avail.append(known.get((f.host, f.path), t0))
        last_answer[f.path] = f.end
    # the earliest known time among the fetches still to come, from each position on
    later = [float("inf")] * (len(fs) + 1)
    for i in range(len(fs) - 1, -1, -1):
        later[i] = min(avail[i], later[i + 1])
    waited = 0.0
    for i in range(len(fs) - 1):
        free = fs[i].end + delay  # the key may be fetched again from here
        ready = max(free, later[i + 1])  # ... and it has a known URL from here
        waited += max(0.0, fs[i + 1].start - ready)
    first_wait = max(0.0, fs[0].start - max(first_known, t0))
    return {"first_known_s": first_known - t0, "first_fetch_wait_s": first_wait,
            "idle_with_work_s": waited + first_wait}


def synthetic_known(web: Any, fetches: list[Fetch], t0: float) -> dict[tuple[str, str], float]:
    """When each URL became known: a seed at the crawl's start, a link at its page's answer."""
    known = {seed: t0 for seed in web.seeds()}
    for f in sorted(fetches, key=lambda f: f.end):
        if f.robots:
            continue
        page = web.resolve(f.host, f.path)
        if page is None:
            continue
        nexts: Iterable[tuple[str, str]] = ((f.host, page.redirect_to),) if page.redirect_to else page.links
        for nxt in nexts:
            known.setdefault(nxt, f.end)
    return known


def realhtml_known(corpus: Any, port: int, fetches: list[Fetch], t0: float) -> dict[tuple[str, str], float]:
    """As :func:`synthetic_known`, from the corpus's files: a page's links (crawlproj's, from
    bench/realhtml_corpus.py) and a redirect's target are known at its answer."""
    from urllib.parse import urlsplit

    from realhtml_corpus import SITES, crawlproj_links

    known = {(s.host, s.seed): t0 for s in SITES}
    for f in sorted(fetches, key=lambda f: f.end):
        if f.robots or f.host not in corpus.sites:
            continue
        parts = urlsplit(f.path)
        answer = corpus.answer(f.host, parts.path or "/")
        if answer.location is not None:
            nexts = [answer.location + (f"?{parts.query}" if parts.query else "")]
        elif answer.html and answer.file is not None:
            with open(answer.file, "rb") as fh:
                nexts = []
                for url in crawlproj_links(f"http://{f.host}:{port}{f.path}", fh.read()):
                    link = urlsplit(url)
                    if link.hostname == f.host:
                        nexts.append(link.path + (f"?{link.query}" if link.query else ""))
        else:
            continue
        for nxt in nexts:
            known.setdefault((f.host, nxt), f.end)
    return known


# -- the synthetic web: crawlproj demo --------------------------------------------------------------


def synthetic(workdir: Path, hosts: int, nodes: int) -> dict[str, Any]:
    from crawlproj.tools.cluster import DEMO_MAX_PAGES, DEMO_MIN_PAGES, DEMO_SEED
    from crawlproj_testing.synthweb.model import Web, WebSpec
    from crawlproj_testing.synthweb.process import read_access_log

    argv = [sys.executable, "-m", "crawlproj.tools.cli", "demo", "--hosts", str(hosts),
            "--nodes", str(nodes), "--workdir", str(workdir)]
    print(f"  command: {shlex.join(argv)}", flush=True)
    cpu0, t0 = child_cpu(), time.monotonic()
    out = subprocess.run(argv, timeout=CRAWL_TIMEOUT, capture_output=True, text=True)
    run_wall, cpu = time.monotonic() - t0, child_cpu() - cpu0
    (workdir / "demo.out").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"demo exited {out.returncode}: {(out.stdout + out.stderr)[-2000:]}")
    spec = WebSpec(seed=DEMO_SEED, hosts=hosts, min_pages=DEMO_MIN_PAGES, max_pages=DEMO_MAX_PAGES)
    web = Web(spec)
    fetches = [Fetch(a.start_ms / 1000, a.end_ms / 1000, a.host, a.path, a.is_robots, a.node)
               for a in read_access_log(workdir / "access.log") if a.status != 0]  # 0: never answered
    delays: dict[str, float] = defaultdict(float)
    for h in web.hosts:
        key = registered_domain(h.name)
        delays[key] = max(delays[key], web.crawl_delay(h) or 0.0)
    start = min(f.start for f in fetches)
    table = key_table(fetches, delays.__getitem__, synthetic_known(web, fetches, start))
    return {"web": f"synthetic, {hosts} hosts (seed {spec.seed}, {spec.min_pages}-{spec.max_pages} pages)",
            "nodes": nodes, "command": shlex.join(argv), "run_wall_s": run_wall, "cpu_s": cpu, **table}


# -- real HTML: the Debian documentation corpus on nginx ---------------------------------------------


def realhtml(workdir: Path, nodes: int, delay: float = REALHTML_DELAY) -> dict[str, Any]:
    from realhtml_corpus import ROBOTS_PATHS, Nginx, ensure_installed
    from urllib.parse import urlsplit

    from crawlproj.tools.cluster import Cluster
    from crawlproj.tools.runner import SYNTHWEB_SETTINGS

    class TimedNginx(Nginx):
        """The corpus's nginx, its access log with when each answer ended and how long it took."""

        FORMAT = "log_format tsv '$host\\t$request_uri\\t$status';"

        def config(self) -> str:
            conf = super().config()
            if self.FORMAT not in conf:
                raise RuntimeError("bench/realhtml_corpus.py changed its log_format: update TimedNginx")
            return conf.replace(self.FORMAT, "log_format tsv '$host\\t$request_uri\\t$status"
                                             "\\t$msec\\t$request_time';")

    ensure_installed()
    cpu0 = child_cpu()
    with TimedNginx(workdir) as nginx:
        seeds = workdir / "seeds.txt"
        seeds.write_text("\n".join(nginx.seeds()) + "\n")
        t0 = time.monotonic()
        settings = {**SYNTHWEB_SETTINGS, "LOG_LEVEL": "INFO", "ROBOTS_THROTTLE_DELAY": str(delay)}
        with Cluster(workdir / "cluster", seeds, settings=settings) as cluster:
            for i in range(nodes):
                cluster.start_node(f"n{i + 1}")
            if not cluster.wait(CRAWL_TIMEOUT):
                raise RuntimeError("crawl did not finish")
        run_wall = time.monotonic() - t0
    cpu = child_cpu() - cpu0
    fetches = []
    for line in nginx.access_log.read_text(encoding="utf-8", errors="replace").splitlines():
        host, uri, _status, msec, took = line.split("\t")
        end = float(msec)
        fetches.append(Fetch(end - float(took), end, host, uri, urlsplit(uri).path in ROBOTS_PATHS))
    from realhtml_corpus import Corpus

    known = realhtml_known(Corpus(nginx.port), nginx.port, fetches, min(f.start for f in fetches))
    table = key_table(fetches, lambda key: delay, known)  # the corpus has no Crawl-delay
    return {"web": f"real HTML (Debian documentation, bench/realhtml_corpus.py), delay {delay} s", "nodes": nodes,
            "run_wall_s": run_wall, "cpu_s": cpu,
            **table}


# -- report ---------------------------------------------------------------------------------------


def with_cpu_bound(result: dict[str, Any]) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    result["cpu_bound_s"] = result["cpu_s"] / cores
    result["wall_over_cpu_bound"] = result["wall_s"] / max(result["cpu_bound_s"], 1e-9)
    return result


def lines(name: str, r: dict[str, Any]) -> list[str]:
    last = r["last"]
    out = [f"{name}: {r['web']}, {r['nodes']} nodes, {r['fetches']} fetches on {r['keys']} keys",
           f"  wall {r['wall_s']:.1f} s (first fetch to last answer; the run {r['run_wall_s']:.1f} s, "
           f"CPU {r['cpu_s']:.1f} s)",
           f"  CPU bound {r['cpu_bound_s']:.1f} s ({os.cpu_count()} cores): wall / CPU bound "
           f"{r['wall_over_cpu_bound']:.3f}",
           f"  bound {r['bound_s']:.1f} s ({r['bound_key']}): wall / bound {r['wall_over_bound']:.3f}; "
           f"cycle bound {r['cycle_bound_s']:.1f} s ({r['cycle_bound_key']}): wall / cycle bound "
           f"{r['wall_over_cycle_bound']:.3f}",
           f"  last key {r['last_key']}: {last['fetches']} fetches, bound {last['bound_s']:.1f} s, first "
           f"fetch at {last['first_fetch_s']:.2f} s, done at {last['last_end_s']:.1f} s, idle "
           f"{last['idle_s']:.1f} s" + (f" ({last['idle_with_work_s']:.1f} s of it with a URL known; its "
                                         f"first URL known at {last['first_known_s']:.2f} s)"
                                         if "idle_with_work_s" in last else ""),
           "  key                          fetches delay  answer ms  bound s  cycle s  first s   done s   "
           "idle s  waited s  gap p50/p90 ms"]
    for key, k in r["top_keys"].items():
        waited = f"{k['idle_with_work_s']:8.1f}" if "idle_with_work_s" in k else "       -"
        out.append(f"  {key:28s} {k['fetches']:7d} {k['delay_s']:5.2f} {k['mean_answer_ms']:10.1f} "
                   f"{k['bound_s']:8.1f} {k['cycle_bound_s']:8.1f} {k['first_fetch_s']:7.2f} "
                   f"{k['last_end_s']:8.1f} {k['idle_s']:8.1f}  {waited}  "
                   f"{k['gap_p50_ms']:.1f}/{k['gap_p90_ms']:.1f}")
    return out


def markdown(results: dict[str, Any]) -> str:
    out = ["| web | nodes | wall s | bound s (key) | wall / bound | CPU bound s | last key | its first fetch s | "
           "its idle with work s |", "|---|---|---|---|---|---|---|---|---|"]
    for name in WEBS:
        r = results.get(name)
        if r:
            last = r["last"]
            waited = f"{last['idle_with_work_s']:.1f}" if "idle_with_work_s" in last else "- (links not walked)"
            out.append(f"| {name} | {r['nodes']} | {r['wall_s']:.1f} | {r['bound_s']:.1f} ({r['bound_key']}) | "
                       f"{r['wall_over_bound']:.3f} | {r['cpu_bound_s']:.1f} | {r['last_key']} | "
                       f"{last['first_fetch_s']:.2f} | {waited} |")
    return "\n".join(out) + "\n"


def endofcrawl(workdir: Path, webs: tuple[str, ...] = WEBS, hosts: int = 300, nodes: int = 2,
               realhtml_delay: float = REALHTML_DELAY) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in webs:
        run_dir = workdir / name
        run_dir.mkdir(parents=True)
        results[name] = with_cpu_bound(synthetic(run_dir, hosts, nodes) if name == "synthetic"
                                       else realhtml(run_dir, nodes, realhtml_delay))
        for line in lines(name, results[name]):
            print(line, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--webs", default=",".join(WEBS), help=f"comma-separated, of {', '.join(WEBS)}")
    parser.add_argument("--hosts", type=int, default=300, help="hosts of the synthetic web")
    parser.add_argument("--nodes", type=int, default=2, help="nodes of each crawl")
    parser.add_argument("--realhtml-delay", type=float, default=REALHTML_DELAY,
                        help="seconds between fetches on a key of the real-HTML crawl (ROBOTS_THROTTLE_DELAY; "
                             "with 0 the crawl is CPU-bound and the per-key bound is ~0)")
    parser.add_argument("--keep", type=Path, help="keep each run's files (access logs, node logs) here")
    args = parser.parse_args()
    webs = names_arg(parser, "--webs", args.webs, WEBS)
    run_and_save("endofcrawl", lambda d: endofcrawl(d, webs, args.hosts, args.nodes, args.realhtml_delay),
                 args.keep, markdown)

if __name__ == "__main__":
    main()
