"""The node's revisit settings, and the outcome it acks with each lease (docs/revisits.md).

A node whose policy is ``none`` (the default, per key too) sends no outcome: its acks are
exactly today's. Otherwise each ack carries, per lease, :meth:`Outcome.to_wire` plus ``rp``, the
policy ``[kind, interval, min interval, max interval, retry base, retire after]``: the dispatcher
applies the policy the node names, so it is a spider setting (and per key), and a dispatcher
needs no option for it. ``share`` (REVISIT_SHARE) is the most of a key's fetches that are
revisits while new URLs of the key wait (the node's per-key queues keep it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crawlproj.setting_checks import (
    check_setting,
    dict_setting,
    float_at_least,
    int_at_least,
    positive_float,
    str_setting,
)

from .policy import POLICIES, Outcome, Policy

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings


@dataclass(frozen=True)
class RevisitConfig:
    policy: Policy = Policy()
    by_key: dict[str, Policy] = field(default_factory=dict)
    share: float = 0.5

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> RevisitConfig:
        expect = " or ".join(POLICIES)
        kind = str_setting(settings, "REVISIT_POLICY", expect)
        check_setting(kind in POLICIES, "REVISIT_POLICY", kind, expect)
        interval = positive_float(settings, "REVISIT_INTERVAL", "seconds > 0")
        low = positive_float(settings, "REVISIT_MIN_INTERVAL", "seconds > 0")
        high = positive_float(settings, "REVISIT_MAX_INTERVAL", "seconds > 0")
        if kind == "fixed":
            low, high = min(low, interval), max(high, interval)  # fixed uses the interval alone
        check_setting(low <= interval <= high, "REVISIT_INTERVAL", interval,
                      f"seconds between REVISIT_MIN_INTERVAL ({low:g}) and REVISIT_MAX_INTERVAL ({high:g})")
        retry_base = positive_float(settings, "REVISIT_RETRY_BASE", "seconds > 0")
        retire_after = int_at_least(settings, "REVISIT_RETIRE_AFTER", 1)
        share = float_at_least(settings, "REVISIT_SHARE", 0.0, "a share between 0 and 1")
        check_setting(share <= 1, "REVISIT_SHARE", share, "a share between 0 and 1")
        base = Policy(kind, interval, low, high, gone_after=retire_after, retry_base=retry_base)
        keys = dict_setting(settings, "REVISIT_KEY_POLICIES", "a dict {politeness key: " + expect + "}")
        by_key = {}
        for key, value in keys.items():
            check_setting(value in POLICIES, "REVISIT_KEY_POLICIES", {key: value}, f"policies {expect}")
            by_key[key] = Policy(value, interval, min(low, interval), max(high, interval),
                                 gone_after=retire_after, retry_base=retry_base)
        return cls(base, by_key, share)

    @property
    def enabled(self) -> bool:
        """Some key has a policy other than ``none``: outcomes are worth building."""
        return self.policy.kind != "none" or any(p.kind != "none" for p in self.by_key.values())

    def policy_of(self, key: str | None) -> Policy:
        return self.by_key.get(key, self.policy) if key is not None else self.policy

    def wire_outcome(self, key: str | None, outcome: Outcome) -> dict[str, Any] | None:
        """The ack outcome of a lease of ``key`` (docs/protocol.md); None under ``none``."""
        policy = self.policy_of(key)
        if policy.kind == "none":
            return None
        wire = outcome.to_wire()
        wire["rp"] = [policy.kind, policy.interval, policy.min_interval, policy.max_interval, policy.retry_base,
                      policy.gone_after]
        return wire
