"""The reactor side of the MongoDB pipeline: items in, one job at a time for the worker thread,
results back into stats, log lines and the ``process_item`` Deferreds.

Nothing here blocks: every write, spill and probe is a job of the :class:`~.writer.MongoWriter`
that owns the worker thread. See :mod:`crawlproj.pipelines.mongo` for the contract.

Kept as one module (about 400 lines): every Scrapy hook of the pipeline and the turning of the
worker's answers into stats and log lines read together; the state machine, health, brake and
messages it drives are modules of their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from pymongo.errors import ConnectionFailure, PyMongoError
from scrapy.exceptions import CloseSpider, NotConfigured
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from crawlproj.observability.extension import timings_of
from crawlproj.observability.timings import NullTimings, Timings
from crawlproj.politeness.timing import LatencySampler
from crawlproj.refusals import MONGO_INDEX_CHECK_FAILED, MONGO_START_REFUSED
from crawlproj.wire.urls import BadURL, fingerprint_hex

from .brake import EngineBrake, engine_of
from .config import MongoConfig, redact
from .health import Health
from .messages import MESSAGE_LIMIT, BatchResult, Doc, Done, ReplayOutcome, SpillResult
from .schedule import Action, Batch, Entry, Schedule
from .writer import RESERVED_FIELDS, IndexCheckError, MongoWriter

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from twisted.internet.interfaces import IDelayedCall

logger = logging.getLogger(__package__)  # one logger for the whole pipeline

Job = tuple[Callable[..., Any], tuple[Any, ...], Callable[[Any], None]]


class MongoPipeline:
    """Upsert every item into MongoDB; see :mod:`crawlproj.pipelines.mongo`."""

    def __init__(self, crawler: Crawler, config: MongoConfig):
        self.crawler = crawler
        self.stats = crawler.stats
        self.config = config
        self._writer = MongoWriter(config)  # touched only by jobs in the worker thread
        self._health = Health(config, crawler.stats, self._log_extra)
        self._schedule = Schedule(config, self._health)
        self._brake = EngineBrake(crawler, self._schedule)
        self._collection_by_type: dict[type, str] = {}
        self._pool: ThreadPool | None = None
        self._pool_trigger: Any = None
        self._busy = False
        self._drained: Deferred[None] | None = None
        self._wakeup: IDelayedCall | None = None
        self._stats_loop: LoopingCall | None = None
        self._warned_fields: set[str] = set()
        self._item_wait = LatencySampler("mongo/item_wait_ms")  # process_item until durable
        self._timings: Timings = NullTimings()  # the crawler's, from open_spider on

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> MongoPipeline:
        if not MongoConfig.enabled(crawler.settings):
            logger.info("MongoDB pipeline off: MONGO_URI is empty")
            raise NotConfigured  # no message: Scrapy would warn "Disabled" on every crawl without MongoDB
        return cls(crawler, MongoConfig.from_settings(crawler.settings))

    # -- Scrapy hooks -------------------------------------------------------------------------------

    async def open_spider(self) -> None:
        from twisted.internet import reactor

        config = self.config
        self._timings = timings_of(self.crawler)
        try:
            config.spill_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeError(f"MONGO_SPILL_DIR: expected a directory that exists or can be created, "
                               f"got {str(config.spill_dir)!r}: {exc}") from None
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="crawlproj-mongo")
        self._pool.start()
        # the thread is not a daemon: stop it with the reactor even if close_spider never runs
        self._pool_trigger = reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        logger.info("MongoDB pipeline: %s database %r collection %r%s, batches of %d or every %.2fs, "
                    "write concern %s, spill directory %s", redact(config.uri), config.database,
                    config.collection,
                    f" (+ {sorted(set(config.collections.values()) - {config.collection})})"
                    if config.collections else "",
                    config.batch_size, config.flush_interval, config.write_concern, config.spill_dir,
                    extra=self._log_extra())
        try:
            await self._call(self._writer.connect)
            await self._call(self._writer.check_indexes)
        except ConnectionFailure as exc:
            # Start anyway: items are kept and spilled; the index check runs before the first write.
            logger.warning("MongoDB at %s is unreachable at start (%s: %s); crawling on, items will be "
                           "spilled to %s until it answers", redact(config.uri), type(exc).__name__,
                           str(exc)[:MESSAGE_LIMIT], config.spill_dir, extra=self._log_extra())
            self._health.failed(exc, log=False)
        except (IndexCheckError, PyMongoError) as exc:
            # Scrapy's way for a component that cannot start: the spider closes with a reason
            # (``scrapy crawl`` exits 1, crawlproj.refusals.FAILED_REASONS), no traceback.
            await self._shutdown_worker()
            if isinstance(exc, IndexCheckError):
                logger.error("%s", exc, extra=self._log_extra())
                raise CloseSpider(MONGO_INDEX_CHECK_FAILED) from None
            logger.error("MONGO_URI: MongoDB at %s refused to start the pipeline: %s: %s", redact(config.uri),
                         type(exc).__name__, str(exc)[:MESSAGE_LIMIT], extra=self._log_extra())
            raise CloseSpider(MONGO_START_REFUSED) from None
        await self._call(self._writer.claim_backlog)
        if self._schedule.spill.files:
            logger.warning("Replaying %d spill files (%d bytes) found in %s before writing new items",
                           self._schedule.spill.files, self._schedule.spill.backlog_bytes, config.spill_dir,
                           extra=self._log_extra())
        self._stats_loop = LoopingCall(self._publish_stats)
        self._stats_loop.start(config.stats_interval, now=False)
        self._pump()

    async def process_item(self, item: Any) -> Any:
        entry = self._make_entry(item)
        if entry is None:
            return item
        self._schedule.buffer.append(entry)
        self._pump()
        await maybe_deferred_to_future(entry.done)
        return item

    async def close_spider(self) -> None:
        if self._pool is None:  # open_spider failed and has already cleaned up
            return
        self._schedule.closing = True
        self._drained = Deferred()
        try:
            self._pump()
            await maybe_deferred_to_future(self._drained)
        finally:
            if self._wakeup is not None and self._wakeup.active():
                self._wakeup.cancel()
            if self._stats_loop is not None and self._stats_loop.running:
                self._stats_loop.stop()
            self._brake.set(False)
            self._publish_stats()
            left = self._schedule.spill.bytes
            await self._shutdown_worker()
        if left:
            logger.warning("%d bytes of items stay in spill files in %s: the next node that opens with "
                           "this MONGO_SPILL_DIR replays them", left, self.config.spill_dir,
                           extra=self._log_extra())
        logger.info("MongoDB pipeline closed: %d items written in %d batches, %d spilled, %d replayed, "
                    "%d invalid", self.stats.get_value("mongo/items_written", 0),
                    self.stats.get_value("mongo/batches", 0), self.stats.get_value("mongo/spilled_items", 0),
                    self.stats.get_value("mongo/replayed_items", 0),
                    self.stats.get_value("mongo/invalid_items", 0), extra=self._log_extra())

    # -- items --------------------------------------------------------------------------------------

    def _make_entry(self, item: Any) -> Entry | None:
        adapter = ItemAdapter(item)
        url = adapter.get("url")
        try:
            if not isinstance(url, str):
                raise BadURL(f"the item has no 'url' string (got {type(url).__name__})")
            doc_id = fingerprint_hex(url)
        except BadURL as exc:
            self._count_invalid("BadURL", str(exc), repr(url)[:MESSAGE_LIMIT])
            return None
        fields = adapter.asdict()
        for name in RESERVED_FIELDS.intersection(fields):
            del fields[name]
            if name not in self._warned_fields:
                self._warned_fields.add(name)
                logger.warning("Item field %r is owned by the MongoDB pipeline and is not written",
                               name, extra=self._log_extra())
        doc = Doc(self._collection_for(item), doc_id, fields, datetime.now(timezone.utc))
        return Entry(doc, url, time.monotonic(), Deferred(), item)

    def _collection_for(self, item: Any) -> str:
        item_type = type(item)
        name = self._collection_by_type.get(item_type)
        if name is None:
            name = next((self.config.collections[c] for c in item_type.__mro__ if c in self.config.collections),
                        self.config.collection)
            self._collection_by_type[item_type] = name
        return name

    def _count_invalid(self, kind: str, message: str, url: str) -> None:
        self.stats.inc_value("mongo/invalid_items")
        self.stats.inc_value(f"mongo/errors/{kind}")
        logger.error("Item %s not written to MongoDB: %s: %s", url, kind, message[:MESSAGE_LIMIT],
                     extra=self._log_extra())

    def _resolve(self, entry: Entry, status: str) -> None:
        self._item_wait.add((time.monotonic() - entry.enqueued) * 1000)
        if not entry.done.called:  # a cancelled process_item already fired it
            entry.done.callback(status)

    def _batch_waited(self, batch: Batch) -> None:
        """Tell the timings how long each item waited for its batch to fill (the item_batch_wait
        operation), so that item_write is the write and not MONGO_FLUSH_INTERVAL."""
        now = time.monotonic()
        for entry in batch.entries:
            if entry.batch_wait is None:
                entry.batch_wait = now - entry.enqueued
                self._timings.item_waited(entry.item, entry.batch_wait * 1000)

    # -- the worker's jobs --------------------------------------------------------------------------

    def _submit(self, func: Callable[..., Any], *args: Any) -> Deferred[Done]:
        from twisted.internet import reactor

        assert self._pool is not None
        return deferToThreadPool(reactor, self._pool, self._writer.run, func, *args)

    async def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func`` in the worker and wait for it; its exception is raised here."""
        done = await maybe_deferred_to_future(self._submit(func, *args))
        self._schedule.spill = done.spill
        if done.failure is not None:
            done.failure.raiseException()
        return done.value

    def _pump(self) -> None:
        """Start the next job of the worker if it is idle; otherwise wait for the next deadline."""
        if self._busy or self._pool is None:
            return
        now = time.monotonic()
        action = self._schedule.next_action(now)
        if action is not None:
            func, args, on_done = self._job(action)
            self._busy = True
            self._submit(func, *args).addBoth(self._job_done, on_done)
        else:
            self._schedule_wakeup(now)
            if self._drained is not None and not self._drained.called and self._schedule.drained():
                self._drained.callback(None)
        self._brake.update()

    def _job(self, action: Action) -> Job:
        writer = self._writer
        if action.kind == "write":
            batch = action.batches[0]
            self._batch_waited(batch)
            return writer.write_batch, (batch.docs, batch.prepared), lambda r: self._after_write(batch, r)
        if action.kind == "replay":
            return writer.replay_chunk, (), self._after_replay
        if action.kind == "spill":
            batches, doubt = action.batches, action.doubt
            return (writer.spill_batches, ([(b.docs, b.prepared) for b in batches],),
                    lambda r: self._after_spill(batches, doubt, r))
        return writer.probe, (), self._after_probe

    def _job_done(self, done: Done | Failure, on_done: Callable[[Any], None]) -> None:
        self._busy = False
        result: Any = done
        if isinstance(done, Done):
            self._schedule.spill = done.spill
            result = done.failure if done.failure is not None else done.value
        try:
            on_done(result)
        except Exception:
            logger.exception("MongoDB pipeline bookkeeping failed", extra=self._log_extra())
        self._pump()

    def _schedule_wakeup(self, now: float) -> None:
        from twisted.internet import reactor

        deadline = self._schedule.deadline()
        if deadline is None:
            return
        delay = max(deadline - now, 0.001)
        if self._wakeup is not None and self._wakeup.active():
            if self._wakeup.getTime() <= reactor.seconds() + delay:
                return
            self._wakeup.cancel()
        self._wakeup = reactor.callLater(delay, self._pump)

    # -- results of the worker's jobs ---------------------------------------------------------------

    def _after_probe(self, result: Any) -> None:
        if isinstance(result, Failure):
            self._job_failed(result)
        else:
            self._health.answered()

    def _after_write(self, batch: Batch, result: BatchResult | Failure) -> None:
        if isinstance(result, Failure):  # failed before it was prepared (or again, as it was)
            if batch.prepared is None:  # never sent: back to the front of the queue
                self._schedule.buffer.extendleft(reversed(batch.entries))
            else:
                self._schedule.doubt = batch
            self._job_failed(result)
            return
        batch.prepared = result.prepared
        self._report_invalid(batch)
        if result.failure is not None:
            self._schedule.doubt = batch  # its upserts may have been applied: keep their op ids
            self._job_failed(result.failure)
            return
        outcome = result.outcome
        assert outcome is not None
        self._health.succeeded(outcome)
        self._schedule.doubt = None
        written = 0
        for op in batch.prepared.ops:
            bad = outcome.invalid.get(op.op_id)
            for index in op.members:
                entry = batch.entries[index]
                if bad is not None:
                    self._count_invalid(bad[0], bad[1], entry.url)
                    self._resolve(entry, "invalid")
                else:
                    written += 1
                    self._resolve(entry, "written")
        self.stats.inc_value("mongo/items_written", written)

    def _after_replay(self, result: ReplayOutcome | Failure) -> None:
        if isinstance(result, Failure):
            self._job_failed(result)
            return
        self._health.succeeded(result.write)
        self.stats.inc_value("mongo/replayed_items", result.items - result.invalid_items)
        if result.invalid_items:
            self.stats.inc_value("mongo/invalid_items", result.invalid_items)
            for kind, message in result.write.invalid.values():
                self.stats.inc_value(f"mongo/errors/{kind}")
                logger.error("Spilled item not written to MongoDB on replay: %s: %s", kind,
                             message[:MESSAGE_LIMIT], extra=self._log_extra())
        if result.torn_bytes:
            self.stats.inc_value("mongo/spill/torn_records")
            logger.warning("Spill file %s ends with a torn record (%d bytes, an append interrupted by a "
                           "crash, never acknowledged): skipped", result.path, result.torn_bytes,
                           extra=self._log_extra())
        if result.bad_lines:
            self.stats.inc_value("mongo/spill/bad_records", result.bad_lines)
        if result.eof:
            self.stats.inc_value("mongo/spill/files_replayed")
            logger.info("Replayed and removed spill file %s (%d items)", result.path, result.file_items,
                        extra=self._log_extra())

    def _after_spill(self, batches: tuple[Batch, ...], doubt: Batch | None, result: SpillResult | Failure) -> None:
        if not isinstance(result, Failure):
            for batch, prepared in zip(batches, result.prepared):
                batch.prepared = prepared
        for batch in batches:
            self._report_invalid(batch)
        failure = result if isinstance(result, Failure) else result.failure
        if failure is not None:
            kind = type(failure.value).__name__
            self.stats.inc_value(f"mongo/errors/spill/{kind}")
            self._schedule.spill_blocked_until = time.monotonic() + self.config.retry_backoff_max
            logger.error("Could not spill %d items to %s (%s: %s); keeping them in memory",
                         sum(len(b.entries) for b in batches), self.config.spill_dir, kind, failure.value,
                         extra=self._log_extra())
            for batch in reversed(batches):
                if batch is doubt:
                    self._schedule.doubt = batch  # its upserts may have been applied: keep their op ids
                else:  # never sent: its items rejoin the queue, except those already rejected
                    rejected = {bad.index for bad in batch.prepared.invalid} if batch.prepared else set()
                    self._schedule.buffer.extendleft(reversed([e for i, e in enumerate(batch.entries)
                                                               if i not in rejected]))
            return
        assert not isinstance(result, Failure)
        spilled = 0
        for position, batch in enumerate(batches):
            assert batch.prepared is not None
            for op in batch.prepared.ops:
                reason = result.unspillable.get((position, op.op_id))
                for index in op.members:
                    if reason is None:
                        spilled += 1
                        self._resolve(batch.entries[index], "spilled")
                    else:
                        self._count_invalid("SpillEncodeError", reason, batch.entries[index].url)
                        self._resolve(batch.entries[index], "invalid")
        self.stats.inc_value("mongo/spilled_items", spilled)
        self.stats.inc_value("mongo/spill_bytes", result.written)
        self._health.outage_spilled += spilled
        logger.debug("Spilled %d items (%d bytes) to %s", spilled, result.written,
                     self._schedule.spill.current_path, extra=self._log_extra())

    def _report_invalid(self, batch: Batch) -> None:
        if batch.invalid_reported or batch.prepared is None:
            return
        batch.invalid_reported = True
        for bad in batch.prepared.invalid:
            entry = batch.entries[bad.index]
            self._count_invalid(bad.kind, bad.message, entry.url)
            self._resolve(entry, "invalid")

    def _job_failed(self, failure: Failure) -> None:
        if self._health.job_failed(failure):
            engine = engine_of(self.crawler)
            if engine is not None and engine.spider is not None:
                deferred_from_coro(engine.close_spider_async(reason=MONGO_INDEX_CHECK_FAILED))

    # -- stats and shutdown -------------------------------------------------------------------------

    def _publish_stats(self) -> None:
        self._health.write_latency.publish(self.stats)
        self._item_wait.publish(self.stats)
        self.stats.set_value("mongo/spill/backlog_bytes", self._schedule.spill.bytes)
        self.stats.set_value("mongo/buffer/items", self._schedule.waiting())
        oldest = self._schedule.oldest_waiting()  # seconds the oldest waiting item has waited
        self.stats.set_value("mongo/buffer/oldest_age", 0.0 if oldest is None else round(time.monotonic() - oldest, 3))

    def _log_extra(self) -> dict[str, Any]:
        return {"spider": self.crawler.spider}

    async def _shutdown_worker(self) -> None:
        from twisted.internet import reactor

        if self._pool is None:
            return
        try:
            await maybe_deferred_to_future(deferToThreadPool(reactor, self._pool, self._writer.close))
        finally:
            try:
                reactor.removeSystemEventTrigger(self._pool_trigger)
            except ValueError:  # the reactor is shutting down and has run it already
                pass
            if self._pool.started:
                self._pool.stop()
            self._pool = None
