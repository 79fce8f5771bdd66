"""The node side of the dispatcher: the scheduler, its session and handoff, key queues, leases."""
