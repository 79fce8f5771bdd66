"""MongoDB item pipeline: batched, idempotent upserts keyed by the URL fingerprint.

Every item becomes one upsert of the document whose ``_id`` is ``crawlproj.wire.urls.fingerprint_hex``
of its ``url``: ``$set`` the item's fields, ``$setOnInsert`` ``first_seen``, ``$inc``
``fetch_count``. Upserts are collected into unordered ``bulk_write`` calls that run in one worker
thread of this pipeline, never on the reactor; a batch is written when it reaches
``MONGO_BATCH_SIZE``, when its oldest item has waited ``MONGO_FLUSH_INTERVAL``, and at close.

Durability: ``process_item`` returns only when its item is acknowledged by MongoDB (at
``MONGO_WRITE_CONCERN``) or appended and fsynced to a spill file (``crawlproj.pipelines.spill``),
so ``item_scraped`` -- and the lease ack that follows it -- never runs ahead of the data.

Idempotence: each upsert carries an op id (``_op``) and is sent as
``{"_id": fp, "_op": {"$ne": op_id}}``. Re-sending an upsert that was applied but not acknowledged
(connection lost, write concern error, a replay after a crash) matches nothing, the upsert's
insert fails with duplicate key 11000 on ``_id``, and the pipeline confirms by reading ``_op``
back: nothing is applied twice, ``fetch_count`` included. Writes leave one worker in order, and
the spill is replayed before anything newer is written, so a re-sent upsert is always the last
one its document saw.

Outage: a failed write is kept and sent again once a ``ping`` (after an exponential back-off)
succeeds; items wait in memory up to ``MONGO_SPILL_AFTER`` seconds (or until
``MONGO_BUFFER_MAX_ITEMS`` wait), then go to the spill file; when MongoDB answers again the spill
is replayed in order and removed. When the buffer is full and the spill cannot take more
(``MONGO_SPILL_MAX_BYTES``), or MongoDB is reachable but slower than the crawl, the engine is
paused until the buffer drains to half.

Modules: :mod:`.config` (the ``MONGO_*`` settings), :mod:`.pipeline` (``MongoPipeline``: the
Scrapy hooks and the reactor side), :mod:`.schedule` (what waits and what the worker does next),
:mod:`.health` (outage, back-off, fatal stop), :mod:`.brake` (engine pause), :mod:`.writer`
(pymongo and the spill files, owned by the worker thread), :mod:`.backlog` (this process's spill
files), :mod:`.messages` (what the two threads hand each other).
"""

from __future__ import annotations

from .config import IndexSpec, MongoConfig, QueryPath
from .pipeline import MongoPipeline
from .writer import IndexCheckError

__all__ = ["IndexCheckError", "IndexSpec", "MongoConfig", "MongoPipeline", "QueryPath"]
