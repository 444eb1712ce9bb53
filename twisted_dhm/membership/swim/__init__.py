"""SWIM + Lifeguard gossip membership as a pure state machine (after hashicorp/memberlist).

``core.Swim`` takes bytes and ``now`` and returns packets and streams to send;
the Twisted adapter and the in-process simulator carry them.  Layout:

- ``config``: :class:`SwimConfig` and memberlist's LAN / WAN / local profiles
- ``keyring``: AES-GCM keys with install / use / remove rotation
- ``codec``: framing, encryption hook and protobuf messages (``gossip_pb2``)
- ``broadcasts``: the transmit-limited queue piggy-backed on every packet
- ``suspicion`` and ``awareness``: Lifeguard's timer and health maths
- ``core``: the protocol itself
"""

from twisted_dhm.membership.swim.config import SwimConfig
from twisted_dhm.membership.swim.core import (
    Address,
    MemberView,
    NodeInfo,
    OpenStream,
    Output,
    SendPacket,
    Swim,
)
from twisted_dhm.membership.swim.keyring import AuthenticationFailed, Keyring

__all__ = [
    "Address",
    "AuthenticationFailed",
    "Keyring",
    "MemberView",
    "NodeInfo",
    "OpenStream",
    "Output",
    "SendPacket",
    "Swim",
    "SwimConfig",
]
