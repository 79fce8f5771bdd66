"""Planted faults for the observability drills (tests/test_observability.py): components a node
process loads by dotted path when its settings name them. Test-only; never in crawlproj/.

- SlowItemStorePipeline: an item store whose write latency grows with its size (like an upsert
  that scans because an index is missing), written by one thread.
- SlowPolitenessStore: an extension that makes the node's politeness store (robots.txt cache,
  last-fetch times) slower with every lookup (a table scan that grows).
- CpuHeavySpider: the broad spider with a callback that burns CPU first.
- HangingSpider: the broad spider whose callback never returns for the pages of one host
  (tests/test_cluster.py: a revoked partition is handed off anyway).
- SlowDispatcher: the dispatcher service, sleeping before it handles each message but "status"
  (run by tests/slow_dispatcher.py, the drills' dispatcher module).

Faults started from the test while a crawl runs (tests/test_observability_drills.py):

- DelayProxy: a TCP proxy in front of a server (MongoDB) whose answers come later and later.
- CpuThief: processes that spin on the CPU (another process taking the machine's CPU); with
  confine() and cpu_seconds(), a node confined to one core that the spinners share.
- Staller: SIGSTOP / SIGCONT of a process on a period (a dispatcher that stalls).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from scrapy.crawler import Crawler
from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.threads import deferToThreadPool

from crawlproj.dispatcher.service import Dispatcher
from crawlproj.politeness.gate import PolitenessGate
from crawlproj.setting_checks import positive_float
from crawlproj.spiders.broad import BroadSpider


class SlowItemStorePipeline:
    """Each write takes FAULT_ITEM_MS_PER_ITEM ms per item already stored, one write at a time."""

    def __init__(self, crawler: Crawler, ms_per_item: float):
        self.crawler = crawler
        self.ms_per_item = ms_per_item
        self.written = 0
        self._lock = threading.Lock()
        self._pool: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SlowItemStorePipeline:
        return cls(crawler, positive_float(crawler.settings, "FAULT_ITEM_MS_PER_ITEM"))

    def open_spider(self) -> None:
        from twisted.internet import reactor
        from twisted.python.threadpool import ThreadPool

        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="slow-item-store")
        self._pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)

    def _write(self, item: Any) -> None:
        with self._lock:
            self.written += 1
            delay = self.ms_per_item * self.written / 1000.0
        time.sleep(delay)  # the planted fault: a store slower with every row

    async def process_item(self, item: Any) -> Any:
        from twisted.internet import reactor

        await maybe_deferred_to_future(deferToThreadPool(reactor, self._pool, self._write, item))
        return item


class _SlowReader:
    """The politeness store's SQLite reader, FAULT_LOOKUP_MS_PER_1K ms slower per 1000 reads."""

    def __init__(self, conn: Any, ms_per_1k: float):
        self.conn = conn
        self.ms_per_1k = ms_per_1k
        self.reads = 0

    def execute(self, sql: str, params: Any = ()) -> Any:
        self.reads += 1
        time.sleep(self.ms_per_1k * self.reads / 1e6)  # the planted fault, on the caller's thread
        return self.conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


class SlowPolitenessStore:
    """Extension: slows the node's politeness store reads (FAULT_LOOKUP_MS_PER_1K)."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SlowPolitenessStore:
        if not crawler.settings.get("FAULT_LOOKUP_MS_PER_1K"):
            raise NotConfigured("FAULT_LOOKUP_MS_PER_1K is not set")
        ms_per_1k = positive_float(crawler.settings, "FAULT_LOOKUP_MS_PER_1K")

        def slow_down() -> None:  # extensions find each other once all are built
            gate = crawler.get_extension(PolitenessGate)
            if gate is None:
                raise NotConfigured("FAULT_LOOKUP_MS_PER_1K needs the politeness gate")
            store = gate.state.store
            store._reader = _SlowReader(store._reader, ms_per_1k)

        ext = cls()
        ext.slow_down = slow_down  # type: ignore[attr-defined]  # kept alive: signals hold weak references
        crawler.signals.connect(slow_down, signal=signals.engine_started)
        return ext


class CpuHeavySpider(BroadSpider):
    """The broad spider, burning FAULT_PARSE_BURN_MS of CPU in every callback."""

    name = "cpuheavy"

    def parse(self, response: Any, **kwargs: Any) -> Any:
        burn = self.crawler.settings.getfloat("FAULT_PARSE_BURN_MS") / 1000.0
        until = time.process_time() + burn
        digest = response.body
        while time.process_time() < until:
            digest = hashlib.sha256(digest).digest()
        yield from super().parse(response, **kwargs)


class HangingSpider(BroadSpider):
    """The broad spider; a page of host FAULT_HANG_HOST is answered but its callback never ends."""

    name = "hangs"

    async def parse(self, response: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if response.url.split("/")[2].split(":")[0] == self.crawler.settings.get("FAULT_HANG_HOST"):
            await asyncio.get_running_loop().create_future()  # never set
        for output in super().parse(response, **kwargs):
            yield output


class SlowDispatcher(Dispatcher):
    """The dispatcher, ``message_delay`` seconds slower per message (status answers stay fast)."""

    def __init__(self, *args: Any, message_delay: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.message_delay = message_delay

    def handle_message(self, mtype: str, identity: bytes, envelope: list[bytes],
                       msg: dict[str, Any]) -> None:
        if mtype != "status":
            time.sleep(self.message_delay)  # the planted fault, inside the timed handling
        super().handle_message(mtype, identity, envelope, msg)


class DelayProxy:
    """``127.0.0.1:port`` -> ``upstream``; after :meth:`slow_down` every answer is held up to
    ``ms`` longer, the extra growing linearly over ``ramp_s`` seconds (order kept)."""

    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.ms = 0.0
        self.ramp_s = 0.0
        self.since = 0.0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True, name="delay-proxy")
        self.thread.start()
        if not started.wait(10):
            raise RuntimeError("the delay proxy did not start")

    def slow_down(self, ms: float, ramp_s: float) -> None:
        self.since, self.ramp_s, self.ms = time.monotonic(), ramp_s, ms

    def delay(self) -> float:
        if not self.ms:
            return 0.0
        grown = 1.0 if self.ramp_s <= 0 else min(1.0, (time.monotonic() - self.since) / self.ramp_s)
        return self.ms * grown / 1000.0

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()
        server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, slow: bool) -> None:
            try:
                while data := await src.read(65536):
                    if slow and (delay := self.delay()) > 0:
                        await asyncio.sleep(delay)  # the planted fault: a slower server
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    def close(self) -> None:
        """Cancel the open connections' pipes (their ``finally`` closes the streams while the loop
        still runs), then stop the loop."""
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        self.thread.join(10)


SPIN = "import time\nwhile True:\n    time.process_time()\n"


class CpuThief:
    """``count`` processes spinning on the CPU (on ``cpus`` only, when given) until :meth:`stop`."""

    def __init__(self, count: int, cpus: set[int] | None = None):
        self.procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
        if cpus:
            for proc in self.procs:
                os.sched_setaffinity(proc.pid, cpus)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()


def confine(pid: int, cpus: set[int]) -> None:
    """Run every thread of process ``pid`` on ``cpus`` only (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass  # a thread that ended meanwhile


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Staller:
    """Stops process ``pid`` for ``stall`` seconds every ``period`` seconds, until :meth:`stop`."""

    def __init__(self, pid: int, stall: float, period: float):
        self.pid, self.stall, self.period = pid, stall, period
        self.stalls = 0
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="staller")
        self.thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                os.kill(self.pid, signal.SIGSTOP)
            except ProcessLookupError:
                return
            self.stalls += 1
            self._done.wait(self.stall)  # the planted fault: the process does nothing meanwhile
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                return
            self._done.wait(self.period - self.stall)

    def stop(self) -> None:
        self._done.set()
        self.thread.join(10)
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
