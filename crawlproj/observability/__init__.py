"""Observability: operation timings on the nodes, cluster stats on the dispatcher, and the tools
that read them (``crawlproj top``, ``logs``, ``diagnose``, ``profile``).

- :mod:`.timings`: the per-crawler registry of timed operations and the sampled timing log.
- :mod:`.extension`: the Scrapy extension and spider middleware that time a node's operations.
- :mod:`.series`, :mod:`.dispatcher`, :mod:`.http`: the dispatcher's time series, instrumentation
  and HTTP server (JSON API, Prometheus metrics, a live page).
- :mod:`.account`: where a node's time goes (download slots, reactor, machine CPU, item backlog).
- :mod:`.analysis`, :mod:`.logs`, :mod:`.diagnose`, :mod:`.causes`: reading logs and series,
  trends, causes (from the time account).
- :mod:`.top`, :mod:`.profile`: terminal views and flame graphs.
"""
