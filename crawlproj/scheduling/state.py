"""What the parts of a DispatcherScheduler share: the state its ``__init__`` sets, for the type checker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

    from crawlproj.politeness.gate import PolitenessGate
    from crawlproj.scheduling.config import NodeConfig
    from crawlproj.scheduling.keyqueue import KeyQueues
    from crawlproj.scheduling.leases import LeaseBook
    from crawlproj.scheduling.link import DispatcherLink


class NodeState:
    """Annotations only: DispatcherScheduler.__init__ sets every one of these."""

    crawler: Crawler
    stats: Any
    config: NodeConfig
    node: str
    book: LeaseBook
    gate: PolitenessGate | None
    queues: KeyQueues[Request]
    partitions: int
    owned: set[int]
    revoking: dict[int, float]
    inflight: dict[int, tuple[str, int]]
    busy_by: dict[str, int]
    held: set[int]
    link: DispatcherLink | None
