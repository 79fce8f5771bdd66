"""Hardening: CURVE keys for the ZeroMQ links, the SSRF guard, crawler-trap and hostile-page limits.

- :mod:`crawlproj.security.curve` — ``crawlproj keys``, the dispatcher's authenticator, the
  clients' (nodes, monitors) key loading.
- :mod:`crawlproj.security.ssrf` — refuse fetches of private, loopback, link-local and metadata
  addresses, before the connection and again on the connected peer.
- :mod:`crawlproj.security.traps` — URL length, depth, repeated path segments and per-host page
  caps; counted outcomes of oversized and decompression-bomb responses.
"""
