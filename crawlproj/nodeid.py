"""The one name of a node: its dispatcher identity and the directory of its local state."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

logger = logging.getLogger(__name__)

_told: set[str] = set()  # names whose log line was written (once per process)


def standalone(settings: Any) -> bool:
    """The crawl runs on Scrapy's own scheduler (not as a dispatcher node)."""
    from scrapy.core.scheduler import Scheduler
    from scrapy.utils.misc import load_object

    scheduler = settings.get("SCHEDULER")
    try:
        cls = load_object(scheduler) if isinstance(scheduler, str) else scheduler
    except (ImportError, NameError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, Scheduler)


def node_name(settings: Any, spider: Any = None) -> str:
    """``DISPATCHER_NODE_NAME``, else ``<host>-<scrapyd job id>``, else ``<host>`` for a
    standalone crawl (Scrapy's scheduler), else ``<host>-<pid>``.

    scrapyd passes the job id as the spider argument ``_job`` (1.6; older ones also set the
    ``SCRAPY_JOB`` environment variable); pass the spider to use it.

    Give nodes a stable name (scrapyd job ids are, when the job id is chosen): a node restarted
    under its name takes over its leases' partitions and finds its robots/politeness state. A
    standalone crawl is alone with its state, so it keeps one directory from run to run; a node
    named after its pid says so once in its log, with where its state goes.
    """
    name = str(settings.get("DISPATCHER_NODE_NAME") or "").strip()
    if name:
        if os.sep in name or name in (".", ".."):
            raise ValueError(f"DISPATCHER_NODE_NAME: expected a name usable as a directory name, got {name!r}")
        return name
    host = socket.gethostname()
    job = getattr(spider, "_job", None) or os.environ.get("SCRAPY_JOB")
    if job:
        return f"{host}-{job}"
    if standalone(settings):
        return host
    name = f"{host}-{os.getpid()}"
    if name not in _told:
        _told.add(name)
        state = os.path.join(str(settings.get("CRAWLPROJ_STATE_DIR") or "state"), name)
        logger.warning("DISPATCHER_NODE_NAME is empty: this node is %r (its process id) and keeps its state "
                       "in %s; a restart will not find it. Set DISPATCHER_NODE_NAME to a stable name", name, state)
    return name
