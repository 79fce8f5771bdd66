"""SSRF guard: never fetch private, loopback, link-local or cloud-metadata addresses.

A broad crawler follows links that anyone can write. A page linking to
``http://169.254.169.254/latest/meta-data/`` or ``http://10.0.0.5:8080/admin`` would make the
crawler fetch (and store, and follow links of) what only the crawler's network can see. Two
downloader middlewares refuse such fetches (IgnoreRequest; stats ``ssrf/refused/<reason>``):

- :class:`SSRFGuardMiddleware` (early in the chain) resolves the request's host through the
  reactor's resolver (``reactor.resolve``: the configured ``TWISTED_DNS_RESOLVER`` and its cache,
  so the check costs no extra lookup and never blocks the reactor) and refuses the request
  before any connection when the address is not public. IP literals in any spelling (decimal,
  hex, IPv4-mapped IPv6...) are checked after the resolver has read them.
- :class:`SSRFPeerCheckMiddleware` (the first to see a response) checks the address the
  download was actually connected to (``response.ip_address``). A name that resolves to a public
  address for the check and to an internal one for the connection (DNS rebinding, or a cache
  entry that expired in between) is caught here, before redirects are followed, bodies
  decompressed or anything reaches the spider. Responses through a proxy are not checked here
  (the peer is the proxy; ``ssrf/unchecked/proxy``).

Refused reasons: ``metadata``, ``loopback``, ``private``, ``link_local``, ``multicast``,
``unspecified``, ``reserved``, ``not_global`` (carrier-grade NAT, documentation ranges...),
``blocked`` (``SSRF_BLOCKED_NETWORKS``). Addresses in ``SSRF_ALLOWED_NETWORKS`` are always
allowed (the test harness's synthetic-web add-on adds 127.0.0.1 there; nothing else does).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Any, cast

from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from twisted.python.failure import Failure

from crawlproj.setting_checks import bool_setting, list_setting

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Instance metadata services: AWS/GCP/Azure/OpenStack (IPv4 and AWS's IPv6), AWS ECS task
#: metadata, Alibaba Cloud, Oracle Cloud. Most are link-local anyway; named for the stats.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "192.0.0.192"))
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
HTTP_SCHEMES = ("http", "https")


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be fetched by a crawler of the public web, or None if it is public."""
    if ip in METADATA_ADDRESSES:
        return "metadata"
    inner = _embedded_ipv4(ip)
    if inner is not None:  # where the packets end up
        return refusal_reason(inner)
    for reason, hit in (("loopback", ip.is_loopback), ("link_local", ip.is_link_local),
                        ("multicast", ip.is_multicast), ("unspecified", ip.is_unspecified),
                        ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if hit:
            return reason
    if not ip.is_global:
        return "not_global"
    return None


class AddressPolicy:
    """Allowed networks first, then blocked networks, then :func:`refusal_reason`."""

    def __init__(self, allowed: list[IPNetwork], blocked: list[IPNetwork]):
        self.allowed = allowed
        self.blocked = blocked

    def verdict(self, ip: IPAddress) -> str | None:
        """The refusal reason of ``ip``, or None when it may be fetched."""
        candidates = [ip]
        inner = _embedded_ipv4(ip)
        if inner is not None:
            candidates.append(inner)
        if any(c in net for net in self.allowed for c in candidates):
            return None
        if any(c in net for net in self.blocked for c in candidates):
            return "blocked"
        return refusal_reason(ip)

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> AddressPolicy:
        return cls(network_list(settings, "SSRF_ALLOWED_NETWORKS"),
                   network_list(settings, "SSRF_BLOCKED_NETWORKS"))


def network_list(settings: BaseSettings, name: str) -> list[IPNetwork]:
    """The list setting ``name`` of CIDRs (a list, a comma list or a JSON list); ValueError naming it."""
    raw = settings.get(name)
    try:
        values: list[str] | None = list_setting(settings, name, str)
    except ValueError:
        values = None
    if values is None:
        raise ValueError(f"{name}: expected a list of networks like ['10.1.0.0/16', '::1/128'], got {raw!r}")
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{name}: expected a list of networks like ['10.1.0.0/16', '::1/128'], "
                             f"got {raw!r} ({value!r} is not a network)") from None
    return networks


class _Guard:
    def __init__(self, crawler: Crawler, policy: AddressPolicy):
        self.crawler = crawler
        self.stats = crawler.stats
        self.policy = policy

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Any:
        if not bool_setting(crawler.settings, "SSRF_ENABLED"):
            raise NotConfigured("SSRF_ENABLED is off")
        return cls(crawler, AddressPolicy.from_settings(crawler.settings))

    def _check(self, request: Request, ip: IPAddress, when: str) -> None:
        reason = self.policy.verdict(ip)
        if reason is None:
            return
        self.stats.inc_value(f"ssrf/refused/{reason}")
        host = urlparse_cached(request).hostname
        logger.info("SSRF guard refused %s (%s is %s, %s)", request.url[:300], ip, reason, when,
                    extra={"spider": self.crawler.spider})
        raise IgnoreRequest(f"SSRF guard: {host} at {ip} is {reason} ({when})")


class SSRFGuardMiddleware(_Guard):
    """Before the connection: the host's address, resolved through the reactor's resolver."""

    async def process_request(self, request: Request) -> None:
        url = urlparse_cached(request)
        host = url.hostname
        if url.scheme not in HTTP_SCHEMES or not host:
            return None
        try:
            ip: IPAddress = ipaddress.ip_address(host)
        except ValueError:
            from twisted.internet import reactor

            # DNSLookupError and time-outs propagate: the download would fail the same way.
            answer = cast(Any, reactor).resolve(host)
            got: list[Any] = []
            answer.addBoth(_kept(got))  # runs at once if Scrapy's DNS cache answered
            if not got:  # not yet: wait for the resolver
                resolved = await maybe_deferred_to_future(answer)
            elif isinstance(got[0], Failure):
                answer.addErrback(lambda _: None)  # raised here, not logged as unhandled
                got[0].raiseException()
            else:  # taken at once: no asyncio Future made for it
                resolved = got[0]
            ip = ipaddress.ip_address(resolved)
        self._check(request, ip, "before connecting")
        return None


def _kept(into: list[Any]) -> Any:
    """A Deferred callback that keeps the result in ``into`` and passes it on."""
    def keep(result: Any) -> Any:
        into.append(result)
        return result
    return keep


class SSRFPeerCheckMiddleware(_Guard):
    """After the connection: the peer address the response actually came from."""

    def process_response(self, request: Request, response: Response) -> Response:
        ip = response.ip_address
        if ip is None:  # not from the network (cache, data:, file:)
            return response
        if request.meta.get("proxy"):
            self.stats.inc_value("ssrf/unchecked/proxy")
            return response
        self._check(request, ip, "connected peer")
        return response
