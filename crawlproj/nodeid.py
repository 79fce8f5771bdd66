"""The one name of a node: its dispatcher identity and the directory of its local state."""

from __future__ import annotations

import os
import socket
from typing import Any


def node_name(settings: Any, spider: Any = None) -> str:
    """``DISPATCHER_NODE_NAME``, else ``<host>-<scrapyd job id>``, else ``<host>-<pid>``.

    scrapyd passes the job id as the spider argument ``_job`` (1.6; older ones also set the
    ``SCRAPY_JOB`` environment variable); pass the spider to use it.

    Give nodes a stable name (scrapyd job ids are, when the job id is chosen): a node restarted
    under its name takes over its leases' partitions and finds its robots/politeness state.
    """
    name = str(settings.get("DISPATCHER_NODE_NAME") or "").strip()
    if name:
        if os.sep in name or name in (".", ".."):
            raise ValueError(f"DISPATCHER_NODE_NAME: expected a name usable as a directory name, got {name!r}")
        return name
    job = getattr(spider, "_job", None) or os.environ.get("SCRAPY_JOB")
    return f"{socket.gethostname()}-{job or os.getpid()}"
