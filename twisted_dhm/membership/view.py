"""The member view every membership source feeds and the rest of the node reads.

States are the same words for every source: ``alive``, ``suspect`` (missed a
check, still routed to), ``dead`` (routed around; writes go to fallbacks with
hints) and ``left`` (gone for good; out of the partition table).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
STATES = (ALIVE, SUSPECT, DEAD, LEFT)
MAX_WEIGHT = 100
"""A member's ring weight is 1 to this (``--weight``): its share of partitions, relative to others."""


@attrs.frozen
class Member:
    id: str
    host: str
    peer_port: int
    rest_port: int = 0
    state: str = ALIVE
    weight: int = 1
    software_version: str = ""
    # Static membership bumps it on every change of state or address; SWIM reports the
    # member's own incarnation number (raised by the member to refute suspicion).
    incarnation: int = 0
    gossip_port: int = 0  # SWIM's UDP/TCP port; 0 with other membership sources
    grpc_port: int = 0  # the gRPC API's port; 0 when the node serves no gRPC (or it is unknown)

    @property
    def routable(self) -> bool:
        return self.state in (ALIVE, SUSPECT)

    def _addresses(self) -> dict:
        addresses: dict = {"host": self.host, "peer": self.peer_port, "rest": self.rest_port}
        if self.gossip_port:
            addresses["gossip"] = self.gossip_port
        if self.grpc_port:
            addresses["grpc"] = self.grpc_port
        return addresses

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "addresses": self._addresses(),
            "weight": self.weight,
            "version": self.software_version,
            "incarnation": self.incarnation,
        }


Listener = Callable[["MembershipView", Member, Member | None], None]


class MembershipView:
    """Members by id, and listeners told of every change."""

    def __init__(self, local: Member) -> None:
        self.local_id = local.id
        self._members: dict[str, Member] = {local.id: local}
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def members(self) -> list[Member]:
        return sorted(self._members.values(), key=lambda m: m.id)

    def get(self, member_id: str) -> Member | None:
        return self._members.get(member_id)

    @property
    def local(self) -> Member:
        return self._members[self.local_id]

    def ring_weights(self) -> dict[str, int]:
        """Members that hold partitions: everyone not ``left``."""
        return {m.id: m.weight for m in self._members.values() if m.state != LEFT}

    def is_routable(self, member_id: str) -> bool:
        member = self._members.get(member_id)
        return member is not None and member.routable

    def upsert(self, member: Member, source_incarnation: bool = False) -> Member:
        """Add or update a member; listeners hear of real changes only.

        The view numbers the changes itself (``incarnation`` + 1 each), unless
        ``source_incarnation``: then the member's incarnation is the source's own (SWIM).
        """
        old = self._members.get(member.id)
        if old is not None:
            if source_incarnation:
                if member == old:
                    return old
            else:
                if attrs.evolve(member, incarnation=old.incarnation) == old:
                    return old
                member = attrs.evolve(member, incarnation=old.incarnation + 1)
        self._members[member.id] = member
        for listener in list(self._listeners):
            listener(self, member, old)
        return member

    def set_state(self, member_id: str, state: str) -> Member | None:
        """A member's state as health checks or a registry see it.

        ``left`` sticks: a member that left answers pings while it finishes, and its
        registration vanishes when it stops, but neither brings it back into the ring.
        Only news of the member itself (``upsert``: it joined again) does.
        """
        member = self._members.get(member_id)
        if member is None or member.state == state or member.state == LEFT:
            return member
        return self.upsert(attrs.evolve(member, state=state))
