"""Static membership: a fixed seed list, and health checks over the native protocol.

Each round (``interval``) the node connects to any seed address it has not yet
identified (the Hello tells who is there) and pings every known member.  A
member that misses ``threshold`` pings in a row is ``dead``; fewer missed pings
make it ``suspect``; one answer makes it ``alive`` again.  A node that connects
to us introduces itself the same way, so seed lists need not be complete.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from twisted_dhm import logs
from twisted_dhm.membership.view import ALIVE, DEAD, LEFT, SUSPECT, Member, MembershipView
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.peer.pool import PeerPool

log = logs.logger("dhashmap.membership")


def member_from_hello(hello: pb.Hello, fallback_host: str) -> Member:
    addresses = hello.addresses
    return Member(
        id=hello.node_id,
        host=addresses.host or fallback_host,
        peer_port=addresses.peer_port,
        rest_port=addresses.rest_port,
        grpc_port=addresses.grpc_port,
        state=ALIVE,
        weight=max(1, hello.weight),
        software_version=hello.software_version,
    )


class StaticMembership(Service):
    name = "membership"

    def __init__(self, view: MembershipView, pool: PeerPool, clock: IReactorTime,
                 seeds: Sequence[tuple[str, int]], interval: float = 1.0, timeout: float = 1.0,
                 threshold: int = 3) -> None:
        self.view = view
        self.pool = pool
        self.clock = clock
        self.seeds = list(seeds)
        self.interval = interval
        self.timeout = timeout
        self.threshold = threshold
        self.missed: dict[str, int] = {}
        self._in_flight: set[str] = set()
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def introduce(self, hello: pb.Hello, host: str) -> None:
        """A peer said Hello (it connected to us, or we to it): it is a member."""
        if hello.role != pb.ROLE_PEER or not hello.node_id or hello.node_id == self.view.local_id:
            return
        known = self.view.get(hello.node_id)
        member = member_from_hello(hello, host)
        if known is None:
            log.info("member {id} joined at {host}:{port}", id=member.id, host=member.host, port=member.peer_port)
        if hello.leaving:
            # Draining: still a member we talk to, no longer one that holds partitions.
            if known is None or known.state != LEFT:
                log.info("member {id} is leaving", id=member.id)
            self.view.upsert(attrs.evolve(member, state=LEFT))
            return
        self.view.upsert(attrs.evolve(member, state=ALIVE))
        self.missed.pop(member.id, None)

    def health_changed(self, member_id: str, state: str, reason: str) -> None:
        """What the pings say of a member; here it is the member's state (a registry may say more)."""
        current = self.view.get(member_id)
        if current is not None and current.state != state:
            log.info("member {id} is {state}: {reason}", id=member_id, state=state, reason=reason)
            self.view.set_state(member_id, state)

    def check(self) -> None:
        """One round: identify unknown seeds, ping known members."""
        known_addresses = {(m.host, m.peer_port) for m in self.view.members()}
        for host, port in self.seeds:
            if (host, port) not in known_addresses and ("seed", host, port) not in self._in_flight:
                self._probe(host, port)
        for member in self.view.members():
            if member.id != self.view.local_id and member.id not in self._in_flight:
                self._ping(member)

    def _probe(self, host: str, port: int) -> None:
        tag = ("seed", host, port)
        self._in_flight.add(tag)  # type: ignore[arg-type]

        def done(result: pb.Hello | Failure) -> None:
            self._in_flight.discard(tag)  # type: ignore[arg-type]
            if isinstance(result, Failure):
                log.debug("seed {host}:{port} not reachable: {e}", host=host, port=port, e=result.getErrorMessage())
            else:
                self.introduce(result, host)

        self.pool.probe(host, port).addBoth(done)

    def _ping(self, member: Member) -> Deferred:
        self._in_flight.add(member.id)
        frame = pb.Frame()
        frame.ping.sent_at_ms = int(self.clock.seconds() * 1000)

        def answered(_: object) -> None:
            self._in_flight.discard(member.id)
            self.missed.pop(member.id, None)
            self.health_changed(member.id, ALIVE, "it answered a ping")

        def missed(failure: Failure) -> None:
            self._in_flight.discard(member.id)
            count = self.missed.get(member.id, 0) + 1
            self.missed[member.id] = count
            state = DEAD if count >= self.threshold else SUSPECT
            current = self.view.get(member.id)
            if current is not None and current.state != DEAD:
                self.health_changed(member.id, state, failure.getErrorMessage())

        return self.pool.request(member.id, frame, timeout=self.timeout).addCallbacks(answered, missed)
