"""``crawlproj schedule|status|stop``: crawlproj nodes as scrapyd jobs (see crawlproj.tools.deploy)."""
from __future__ import annotations
import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from crawlproj.addons import combine
from crawlproj.addons import node_settings as node_mode_settings
from crawlproj.dispatcher.errors import DispatcherError
from crawlproj.tools.dispatcher_process import request_state
from crawlproj.tools.runner import setting_value
from crawlproj.tools.scrapyd import (
    DeployError,
    HTTP_TIMEOUT,
    JobInfo,
    NodeJob,
    Record,
    Scrapyd,
    node_order,
    check_name,
    default_record,
    parse_pairs,
    place_nodes,
)

DISPATCHER_TIMEOUT = 3.0  # seconds for the dispatcher's answer to "status"
STOP_POLL_INTERVAL = 0.5  # seconds between listjobs polls while `stop --wait` waits
# schedule.json parameters of scrapyd itself; every other parameter is a spider argument.
SCRAPYD_PARAMS = frozenset({"project", "spider", "jobid", "setting", "_version", "priority"})
ACTIVE_STATES = ("pending", "running")


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
    for name, job in sorted(record.nodes.items(), key=node_order):
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
    for name, job in sorted(chosen.items(), key=node_order):
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
