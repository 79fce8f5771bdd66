"""Scrapy's RobotsTxtMiddleware with its concurrent-waiter bug fixed.

Scrapy 2.19 keeps one Deferred per host while robots.txt downloads, and every request that
arrives meanwhile awaits it through ``Deferred.asFuture``. ``asFuture`` adds a callback that
returns None, so the second and later waiters receive None ("no robots.txt") and are let
through even when robots.txt disallows them. On the synthetic web this fetched disallowed
pages of hosts whose first requests arrived together. Here each waiter gets a Deferred of its
own, relayed from the shared one, and the shared result is passed on unchanged.

The add-on crawlproj.addons.Politeness installs it in Scrapy's place when crawlproj's own
RobotsThrottleMiddleware is off (ROBOTS_THROTTLE_ENABLED); it keeps Scrapy's behaviour
otherwise (error responses parsed as robots.txt, fetch failures allow everything).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from scrapy.http import Request
    from scrapy.robotstxt import RobotParser


class FixedRobotsTxtMiddleware(RobotsTxtMiddleware):
    async def robot_parser(self, request: Request) -> RobotParser | None:
        pending = self._parsers.get(urlparse_cached(request).netloc)
        if isinstance(pending, Deferred):
            waiter: Deferred[Any] = Deferred()

            def relay(result: Any) -> Any:
                waiter.callback(result)
                return result

            pending.addBoth(relay)
            return await maybe_deferred_to_future(waiter)
        return await super().robot_parser(request)
