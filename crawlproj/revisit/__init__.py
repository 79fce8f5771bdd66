"""Revisits: what a fetch's outcome does to a URL's schedule (the policies, pure functions).

The frontier's per-URL schedule (docs/revisits.md, designed) stores a :class:`ScheduleRow` per
URL and asks a :class:`Policy` what to do with each ack's :class:`Outcome`.
"""
