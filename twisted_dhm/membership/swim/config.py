"""SWIM tunables, with hashicorp/memberlist's names and default numbers.

Times are seconds (floats), because the core takes ``now`` as float seconds from
whatever clock it is given.  Three profiles mirror memberlist's
``DefaultLANConfig``, ``DefaultWANConfig`` and ``DefaultLocalConfig``.

Two knobs have no memberlist counterpart:

``remember_dead_for`` (default 3600 s)
    memberlist forgets a dead member after ``GossipToTheDeadTime`` (30 s), after
    which a stale alive message still circulating (old incarnation, or a
    push-pull from a node that missed the death) brings the member straight
    back.  We keep dead and left members for an hour instead: their record costs
    a few hundred bytes, and while it exists only a strictly higher incarnation
    revives the member.  It also gives the rejoin loop addresses to try when a
    partition heals.
``rejoin_interval`` (default 30 s, scaled like push-pull for big clusters)
    How often a node that is alone, or that holds dead members, retries a
    push-pull with seeds it does not currently see alive and with a couple of
    its dead members.  That is what lets two sides of a healed partition find
    each other without an operator (memberlist leaves this to Serf's reconnect).
"""

from __future__ import annotations

from typing import Any

import attrs

PROFILES: dict[str, dict[str, Any]] = {
    "lan": {},
    "wan": {
        "tcp_timeout": 30.0,
        "suspicion_mult": 6,
        "push_pull_interval": 60.0,
        "probe_timeout": 3.0,
        "probe_interval": 5.0,
        "gossip_nodes": 4,
        "gossip_interval": 0.5,
        "gossip_to_the_dead_time": 60.0,
    },
    "local": {
        "tcp_timeout": 1.0,
        "indirect_checks": 1,
        "retransmit_mult": 2,
        "suspicion_mult": 3,
        "push_pull_interval": 15.0,
        "probe_timeout": 0.2,
        "probe_interval": 1.0,
        "gossip_interval": 0.1,
        "gossip_to_the_dead_time": 15.0,
    },
}

#: Smallest MTU that still fits the largest message we accept (an alive with 512 bytes of
#: meta and the longest name and host) plus the encryption overhead.
MIN_MTU = 1024


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"swim {attribute.name} must be > 0 (got {value!r})")


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise ValueError(f"swim {attribute.name} must be >= 0 (got {value!r})")


@attrs.frozen
class SwimConfig:
    probe_interval: float = attrs.field(default=1.0, validator=_positive)
    probe_timeout: float = attrs.field(default=0.5, validator=_positive)
    indirect_checks: int = attrs.field(default=3, validator=_non_negative)
    retransmit_mult: int = attrs.field(default=4, validator=_positive)
    suspicion_mult: int = attrs.field(default=4, validator=_positive)
    suspicion_max_timeout_mult: int = attrs.field(default=6, validator=_positive)
    gossip_interval: float = attrs.field(default=0.2, validator=_positive)
    gossip_nodes: int = attrs.field(default=3, validator=_non_negative)
    gossip_to_the_dead_time: float = attrs.field(default=30.0, validator=_non_negative)
    push_pull_interval: float = attrs.field(default=30.0, validator=_positive)
    tcp_timeout: float = attrs.field(default=10.0, validator=_positive)
    awareness_max_multiplier: int = attrs.field(default=8, validator=_positive)
    mtu: int = attrs.field(default=1400)
    # memberlist semantics: 0 means a dead member's name can never be taken over
    # by a new address (only a left member's can); > 0 allows it after that long.
    dead_node_reclaim_time: float = attrs.field(default=0.0, validator=_non_negative)
    remember_dead_for: float = attrs.field(default=3600.0, validator=_non_negative)
    rejoin_interval: float = attrs.field(default=30.0, validator=_positive)
    lifeguard: bool = True

    def __attrs_post_init__(self) -> None:
        if self.probe_timeout >= self.probe_interval:
            raise ValueError(f"swim probe_timeout ({self.probe_timeout:g}s) must be below probe_interval "
                             f"({self.probe_interval:g}s): a probe needs time for its indirect checks")

    @mtu.validator
    def _check_mtu(self, attribute: attrs.Attribute, value: int) -> None:
        if value < MIN_MTU or value > 65507:
            raise ValueError(f"swim mtu must be between {MIN_MTU} and 65507 (got {value!r})")

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> SwimConfig:
        """memberlist's LAN / WAN / local defaults, with ``overrides`` on top."""
        try:
            base = PROFILES[name]
        except KeyError:
            raise ValueError(f"unknown swim profile {name!r}; choose one of {sorted(PROFILES)}") from None
        return cls(**{**base, **overrides})
