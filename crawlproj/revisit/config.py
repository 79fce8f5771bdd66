"""The node's revisit settings, and the outcome it acks with each lease (docs/revisits.md).

A node whose policy is ``none`` (the default, per key too) sends no outcome: its acks are
exactly today's. Otherwise each ack carries, per lease, :meth:`Outcome.to_wire` plus ``rp``, the
policy ``[kind, interval, min interval, max interval]``: the dispatcher applies the policy the
node names, so it is a spider setting (and per key), and a dispatcher needs no option for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crawlproj.setting_checks import check_setting, dict_setting, positive_float, str_setting

from .policy import POLICIES, Outcome, Policy

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings


@dataclass(frozen=True)
class RevisitConfig:
    policy: Policy = Policy()
    by_key: dict[str, Policy] = field(default_factory=dict)

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
        base = Policy(kind, interval, low, high)
        keys = dict_setting(settings, "REVISIT_KEY_POLICIES", "a dict {politeness key: " + expect + "}")
        by_key = {}
        for key, value in keys.items():
            check_setting(value in POLICIES, "REVISIT_KEY_POLICIES", {key: value}, f"policies {expect}")
            by_key[key] = Policy(value, interval, min(low, interval), max(high, interval))
        return cls(base, by_key)

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
        wire["rp"] = [policy.kind, policy.interval, policy.min_interval, policy.max_interval]
        return wire
