"""Revisits: what a fetch's outcome does to a URL's schedule (the policies, pure functions).

The dispatcher's per-URL schedule (:mod:`crawlproj.dispatcher.revisits`, docs/revisits.md) keeps
a :class:`ScheduleRow` per URL and asks a :class:`Policy` what to do with each ack's
:class:`Outcome`; the node's settings and the outcome it acks are in :mod:`.config`.
"""
