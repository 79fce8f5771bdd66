"""The deployment story end to end: real scrapyd servers run crawlproj from its egg.

Two scrapyd servers ("machines") on free loopback ports run in a virtualenv that has the
project's dependencies but not crawlproj itself, so every node job imports crawlproj from the
egg that `crawlproj deploy` built with scrapyd-client and uploaded. A real dispatcher and the
synthetic web complete the cluster; the access log is the ground truth.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import ROOT, free_port, machine_python, wait_until

from crawlproj.tools.cluster import NODE_HEADER
from crawlproj.tools.deploy import Target, deploy_targets
from crawlproj.tools.jobs import node_settings
from crawlproj.tools.scrapyd import DeployError, NodeJob, Record, Scrapyd, place_nodes, public_url
from crawlproj.tools.dispatcher_process import DispatcherProcess
from crawlproj.politeness.store import StateStore
from crawlproj.tools.runner import SYNTHWEB_ADDON, SYNTHWEB_SETTINGS
from crawlproj_testing.synthweb.model import RFC9309_OUTCOME, WebSpec
from crawlproj_testing.synthweb.process import SynthWebProcess

PROJECT = "crawlproj"
CRAWL = "t"
PARTITIONS = 64
# Small and quick; every host allows everything (robots.txt variants have their own tests).
SPEC = WebSpec(seed=5, hosts=20, min_pages=4, max_pages=25, page_bytes=2000,
               slow_host_share=0.0, robots_variants=False)
NODE_SETTINGS: dict[str, Any] = {
    **SYNTHWEB_SETTINGS, "BROAD_SCOPE": "any", "DISPATCHER_NODE_HEADER": NODE_HEADER,
    "DOWNLOAD_TIMEOUT": 5, "DISPATCHER_HEARTBEAT_INTERVAL": 0.5, "DISPATCHER_STATS_INTERVAL": 0.5,
}
SCRAPYD_START_TIMEOUT = 30
CRAWL_TIMEOUT = 90
CLI_TIMEOUT = 120
STOP_TIMEOUT = 15
POLL = 0.25  # seconds between polls of scrapyd, the dispatcher and the access log
SCRAPYD_CONF = """\
[scrapyd]
bind_address = 127.0.0.1
http_port = {port}
eggs_dir = {dir}/eggs
logs_dir = {dir}/logs
dbs_dir = {dir}/dbs
items_dir =
max_proc = 4
poll_interval = 0.2
username = {user}
password = {password}
"""
AUTH = ("operator", "s3cret")  # scrapyd's basic auth; the crawlproj commands get it from the environment


def crawlproj(*args: str) -> str:
    """Run the `crawlproj` command from the checkout (as an operator would); its stdout."""
    env = {**os.environ, "SCRAPYD_USERNAME": AUTH[0], "SCRAPYD_PASSWORD": AUTH[1]}
    proc = subprocess.run([sys.executable, "-m", "crawlproj.tools.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, f"crawlproj {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}\n{proc.stdout}"
    return proc.stdout


@pytest.fixture(scope="module")
def node_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scrapyd machine's Python: the dependencies, not crawlproj (only the egg provides it).

    The test harness is installed beside it, as on a test machine, for the synthetic web's
    add-on and resolver the nodes are scheduled with; the egg never holds it (test_layout.py).
    """
    harness = tmp_path_factory.mktemp("harness")
    (harness / "crawlproj_testing").symlink_to(ROOT / "crawlproj_testing", target_is_directory=True)
    return machine_python(tmp_path_factory.mktemp("node-venv") / "venv", harness)


def scrapyd_env() -> dict[str, str]:
    drop = {"PYTHONPATH", "SCRAPY_SETTINGS_MODULE", "VIRTUAL_ENV", "SCRAPYD_USERNAME", "SCRAPYD_PASSWORD"}
    return {k: v for k, v in os.environ.items() if k not in drop}


class ScrapydServer:
    """``python -m scrapyd`` in its own directory (its scrapyd.conf, eggs, logs, dbs) on a free port."""

    def __init__(self, workdir: Path, python: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True)
        self.port = free_port()
        (workdir / "scrapyd.conf").write_text(SCRAPYD_CONF.format(port=self.port, dir=workdir, user=AUTH[0],
                                                                  password=AUTH[1]))
        self.url = f"http://127.0.0.1:{self.port}/"
        self._log = open(workdir / "scrapyd.out", "wb")
        # its own process group: the crawl jobs it spawns are stopped with it
        self.proc = subprocess.Popen([str(python), "-m", "scrapyd"], cwd=workdir, env=scrapyd_env(),
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.api = Scrapyd(f"http://{AUTH[0]}:{AUTH[1]}@127.0.0.1:{self.port}/")

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"scrapyd exited:\n{self.output()}"
            return self.api.call("daemonstatus")["status"] == "ok"

        wait_until(ready, SCRAPYD_START_TIMEOUT, f"scrapyd at {self.url}")

    def output(self) -> str:
        return (self.workdir / "scrapyd.out").read_text(errors="replace")[-3000:]

    def job_log(self, job: str) -> str:
        return (self.workdir / "logs" / PROJECT / "broad" / f"{job}.log").read_text(errors="replace")

    def state_of(self, job: str) -> str:
        info = self.api.jobs(PROJECT).get(job)
        return info.state if info else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture
def scrapyds(tmp_path: Path, node_python: Path) -> Iterator[tuple[ScrapydServer, ScrapydServer]]:
    servers = [ScrapydServer(tmp_path / name, node_python) for name in ("scrapyd-a", "scrapyd-b")]
    try:
        for server in servers:
            server.wait_ready()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.close()


def cached_robots_hosts(state_file: Path) -> set[str]:
    """Hosts whose robots.txt the node's state file holds (read with the store's own API)."""
    store = StateStore(str(state_file), flush_interval=1.0)
    try:
        robots, _keys = store.scan_partitions({0}, 1)  # with one partition, every row is in partition 0
    finally:
        store.close()
    return {urlsplit(row.authority).hostname or "" for row in robots}


def page_set(web: SynthWebProcess, start: int = 0) -> set[tuple[str, str]]:
    return {(a.host, a.path) for a in web.accesses()[start:] if not a.is_robots}


def schedule_args(dispatcher: DispatcherProcess, nodes: int, hosts: list[str], tmp_path: Path) -> list[str]:
    # ADDONS as JSON: `crawlproj schedule` merges it with settings.py's ADDONS
    settings = [arg for name, value in NODE_SETTINGS.items()
                for arg in ("-s", f"{name}={json.dumps(value) if isinstance(value, dict) else value}")]
    return ["schedule", "--crawl", CRAWL, "--nodes", str(nodes), "--scrapyd", *hosts,
            "--dispatcher", dispatcher.endpoint, "--state-dir", str(tmp_path / "state"),
            "--record", str(tmp_path / "jobs.json"), *settings]


def test_deploy_schedule_crawl_reschedule_stop(tmp_path, synthweb, node_python, scrapyds):
    web = synthweb(SPEC, hold_seconds=4)
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(web.seed_urls()) + "\n")
    truth = web.web.ground_truth(outcome=RFC9309_OUTCOME)
    a, b = scrapyds
    hosts = [a.url, b.url]
    record_path = tmp_path / "jobs.json"

    with pytest.raises(DeployError, match="401"):
        Scrapyd(a.url).call("listprojects")  # no credentials, no API

    # -- deploy: scrapyd-client builds the egg and uploads it to both hosts --------------------
    out = crawlproj("deploy", "--url", a.url, "--url", b.url, "--version", "1")
    assert out.count("version 1") == 2, out
    for server in (a, b):
        assert "broad" in server.api.call("listspiders", [("project", PROJECT)])["spiders"]
    assert not (ROOT / "setup.py").exists() and not (ROOT / "build").exists()  # built from a staging copy
    probe = subprocess.run([str(node_python), "-c", "import crawlproj"], env=scrapyd_env(), cwd=a.workdir,
                           capture_output=True, text=True)
    assert probe.returncode != 0, "crawlproj is importable without the egg: the test would not test the egg"

    # -- crawl 1: two node jobs, one per scrapyd host -------------------------------------------
    # --min-nodes 2: scrapyd starts the two jobs seconds apart (more under load); without it the
    # first node could crawl this small web alone before the second registers (and ack nothing)
    with DispatcherProcess(tmp_path / "store-1", "--partitions", str(PARTITIONS), "--seeds-file", str(seeds),
                           "--min-nodes", "2", log_path=tmp_path / "dispatcher-1.log") as dispatcher:
        out = crawlproj(*schedule_args(dispatcher, 2, hosts, tmp_path))
        assert out.count("scheduled as job") == 2, out
        record = Record.load(record_path)
        assert {n: j.scrapyd for n, j in record.nodes.items()} == {"t-node1": a.url, "t-node2": b.url}

        wait_until(lambda: a.state_of("t-node1") == "finished" and b.state_of("t-node2") == "finished",
                   CRAWL_TIMEOUT, "both node jobs finished in listjobs.json", interval=POLL)
        state = dispatcher.status()
        assert state["finished"] and state["frontier"] == 0 and state["leases"] == 0
        status = json.loads(crawlproj("status", "--record", str(record_path), "--json"))
    assert status["dispatcher"]["reachable"] and status["dispatcher"]["finished"]
    assert [(n["name"], n["state"]) for n in status["nodes"]] == [("t-node1", "finished"), ("t-node2", "finished")]
    assert all(n["dispatcher"] and n["dispatcher"]["acked"] > 0 for n in status["nodes"])
    assert "'finish_reason': 'finished'" in a.job_log("t-node1")
    assert "'finish_reason': 'finished'" in b.job_log("t-node2")

    crawl1 = web.accesses()
    assert page_set(web) == truth
    assert {x.node for x in crawl1 if not x.is_robots} == {"t-node1", "t-node2"}

    # node state lives under CRAWLPROJ_STATE_DIR/<node name>/
    state_dir = tmp_path / "state"
    assert sorted(p.name for p in state_dir.iterdir()) == ["t-node1", "t-node2"]
    state_file = state_dir / "t-node1" / "politeness.sqlite3"
    inode = state_file.stat().st_ino
    cached = cached_robots_hosts(state_file)
    all_hosts = {x.host for x in crawl1 if x.is_robots}
    assert cached and cached <= all_hosts, (cached, all_hosts)

    # -- crawl 2: t-node1 scheduled again under its name, alone, on a fresh crawl of the web -------
    mark = len(crawl1)
    with DispatcherProcess(tmp_path / "store-2", "--partitions", str(PARTITIONS), "--seeds-file", str(seeds),
                           "--keep-alive", log_path=tmp_path / "dispatcher-2.log") as dispatcher:
        out = crawlproj(*schedule_args(dispatcher, 1, hosts, tmp_path))
        assert "scheduled as job t-node1" in out, out
        # the same command again starts nothing while the node is pending or running (a keep-alive
        # dispatcher never lets it finish on its own)
        again = crawlproj(*schedule_args(dispatcher, 1, hosts, tmp_path))
        assert "already pending" in again or "already running" in again, again
        wait_until(lambda: page_set(web, mark) == truth, CRAWL_TIMEOUT, "the second crawl to reach the ground truth",
                   interval=POLL)
        wait_until(lambda: (s := dispatcher.status())["frontier"] == 0 and s["leases"] == 0,
                   CRAWL_TIMEOUT, "the second crawl's last acks", interval=POLL)
        text = crawlproj("status", "--record", str(record_path))
        line = next(x for x in text.splitlines() if x.startswith("t-node1 "))
        assert "running" in line and "alive" in line, text
        # t-node2 still shows its finished run of crawl 1, unknown to this dispatcher
        assert "not registered" in next(x for x in text.splitlines() if x.startswith("t-node2 ")), text

        out = crawlproj("stop", "--record", str(record_path), "--node", "t-node1", "--wait", "60")
        assert "cancelled (was running)" in out, out
        assert a.state_of("t-node1") == "finished"
        gone = wait_until(lambda: not (n := dispatcher.status()["nodes"]["t-node1"])["alive"] and n,
                          STOP_TIMEOUT, "t-node1 to say bye", interval=POLL)
        assert gone["owned"] == 0
    assert "'finish_reason': 'shutdown'" in a.job_log("t-node1")

    jobs_a = a.api.call("listjobs", [("project", PROJECT)])
    # two runs of one job id on host a, none started twice, nothing left running
    assert [j["id"] for j in jobs_a["finished"]] == ["t-node1", "t-node1"]
    assert not jobs_a["pending"] and not jobs_a["running"]
    crawl2 = web.accesses()[mark:]
    assert {x.node for x in crawl2 if not x.is_robots} == {"t-node1"}
    # The rescheduled job used the same state file: robots.txt it had cached was not fetched again.
    assert state_file.stat().st_ino == inode
    assert sorted(p.name for p in state_dir.iterdir()) == ["t-node1", "t-node2"]
    assert {x.host for x in crawl2 if x.is_robots} == all_hosts - cached


def test_place_nodes_is_stable_round_robin():
    hosts = ["http://a:6800", "http://u:p@b:6800/"]
    assert place_nodes("news", 3, hosts) == [("news-node1", "http://a:6800/"), ("news-node2", "http://b:6800/"),
                                             ("news-node3", "http://a:6800/")]
    assert public_url("http://u:p@b:6800") == "http://b:6800/"  # credentials never reach the record


def test_node_settings_merge_addons_and_keep_the_node_name(monkeypatch):
    import crawlproj.settings as project

    monkeypatch.setattr(project, "ADDONS", {"crawlproj.addons.Example": 10}, raising=False)
    addons = json.dumps(SYNTHWEB_SETTINGS["ADDONS"])
    settings = node_settings("c-node1", "tcp://d:5570", None, {"ADDONS": addons, "LOG_LEVEL": "INFO"})
    assert json.loads(settings["ADDONS"]) == {"crawlproj.addons.Example": 10, SYNTHWEB_ADDON: 900,
                                              "crawlproj.addons.DispatcherNode": 500}
    assert settings["DISPATCHER_NODE_NAME"] == "c-node1" and settings["LOG_LEVEL"] == "INFO"
    # settings.py's own add-ons apply, with the node mode on top
    assert json.loads(node_settings("c-node1", "tcp://d:5570", None, {})["ADDONS"]) == {
        "crawlproj.addons.Example": 10, "crawlproj.addons.DispatcherNode": 500}
    with pytest.raises(DeployError, match="-s ADDONS: expected a mapping"):
        node_settings("c-node1", "tcp://d:5570", None, {"ADDONS": "[1]"})
    with pytest.raises(DeployError, match="-s DISPATCHER_NODE_NAME: node names are the job ids"):
        node_settings("c-node1", "tcp://d:5570", None, {"DISPATCHER_NODE_NAME": "x"})


def test_record_round_trip(tmp_path):
    record = Record(crawl="c", dispatcher="tcp://d:5570",
                    nodes={f"c-node{i}": NodeJob(scrapyd="http://a:6800/", job=f"c-node{i}", scheduled_at="t")
                           for i in (10, 2, 1)})
    path = tmp_path / "r.json"
    record.save(path)
    assert Record.load(path) == record
    assert list(json.loads(path.read_text())["nodes"]) == ["c-node1", "c-node2", "c-node10"]


def test_deploy_targets_from_scrapy_cfg(tmp_path, monkeypatch):
    (tmp_path / "scrapy.cfg").write_text("[deploy]\nurl = http://a:6800/\nproject = p\n\n"
                                         "[deploy:b]\nurl = http://b:6800\nusername = u\npassword = $PW\n")
    monkeypatch.setenv("PW", "secret")
    monkeypatch.delenv("SCRAPYD_USERNAME", raising=False)
    assert deploy_targets(tmp_path, [], [], True, None) == [
        Target("default", "http://a:6800/", "p", None), Target("b", "http://b:6800/", "p", ("u", "secret"))]
    assert [t.name for t in deploy_targets(tmp_path, [], ["b"], False, None)] == ["b"]
    with pytest.raises(DeployError, match="no deploy target c"):
        deploy_targets(tmp_path, [], ["c"], False, None)


def test_unit_files_pass_systemd_analyze_verify():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "check.sh"), "systemd"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_passes_compose_config():
    if shutil.which("docker-compose") is None and (shutil.which("docker") is None or subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode != 0):
        pytest.skip("no compose client (docker compose / docker-compose) is installed")
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "check.sh"), "compose"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
