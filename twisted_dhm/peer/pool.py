"""Outbound connections to peers: one pipelined connection per peer, reconnected with backoff.

A connection attempt that fails (refused, timed out, wrong handshake) puts the
peer in backoff: exponential from ``backoff_base`` up to ``backoff_max``, times a
jitter factor in [0.5, 1.5) from the injected random source so a cluster does
not reconnect in lockstep.  Requests to a peer in backoff fail at once instead
of queueing, so a coordinator waiting for a quorum is not held up by a node it
already knows is unreachable.
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from twisted_dhm import logs
from twisted_dhm.network import INetwork
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.peer.protocol import DEFAULT_MAX_FRAME, Handler, HandshakeFailed, LocalIdentity, PeerProtocol

log = logs.logger("dhashmap.peer")

AddressOf = Callable[[str], "tuple[str, int] | None"]


class PeerUnreachable(ConnectionError):
    """No connection to the peer now; the message says when the next attempt is."""


class _OneShotFactory(Factory):
    noisy = False  # one per outbound connection: "Starting factory" lines would drown the log

    def __init__(self, build: Callable[[], PeerProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: object) -> PeerProtocol:
        return self._build()


class PeerPool:
    def __init__(
        self,
        network: INetwork,
        clock: IReactorTime,
        rng: Random,
        identity: LocalIdentity,
        address_of: AddressOf,
        handler: Handler | None = None,
        connect_timeout: float = 2.0,
        request_timeout: float = 2.0,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.network = network
        self.clock = clock
        self.rng = rng
        self.identity = identity
        self.address_of = address_of
        self.handler = handler
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_frame = max_frame
        self._sessions: dict[str, PeerProtocol] = {}
        self._waiting: dict[str, list[Deferred]] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._closed = False

    # -- requests ----------------------------------------------------------------------

    def request(self, node_id: str, frame: pb.Frame, timeout: float | None = None) -> Deferred:
        """Send a request to ``node_id``; fires with the answer frame."""
        session = self._sessions.get(node_id)
        if session is not None:
            return session.request(frame, timeout)
        return self.session(node_id).addCallback(lambda s: s.request(frame, timeout))

    def session(self, node_id: str) -> Deferred:
        """A ready connection to ``node_id``: the open one, or a new one."""
        session = self._sessions.get(node_id)
        if session is not None:
            return succeed(session)
        if self._closed:
            return fail(PeerUnreachable("the peer pool is closed"))
        waiters = self._waiting.get(node_id)
        if waiters is not None:
            d: Deferred = Deferred()
            waiters.append(d)
            return d
        wait = self._retry_at.get(node_id, 0.0) - self.clock.seconds()
        if wait > 0:
            return fail(PeerUnreachable(f"{node_id} is unreachable; next attempt in {wait:.2f}s"))
        address = self.address_of(node_id)
        if address is None:
            return fail(PeerUnreachable(f"no address known for {node_id}"))
        d = Deferred()
        self._waiting[node_id] = [d]
        self._connect(address[0], address[1], expected=node_id).addBoth(self._attempt_done, node_id)
        return d

    def probe(self, host: str, port: int) -> Deferred:
        """Connect to an address whose node is not known yet (a seed); fires with its Hello."""

        def adopt(session: PeerProtocol) -> object:
            assert session.remote is not None
            if self._closed:
                session.transport.loseConnection()
                raise PeerUnreachable("the peer pool is closed")
            node_id = session.remote.node_id
            if node_id and node_id != self.identity.node_id and node_id not in self._sessions:
                self._register(node_id, session)
            elif node_id == self.identity.node_id or node_id in self._sessions:
                session.transport.loseConnection()
            return session.remote

        return self._connect(host, port, expected=None).addCallback(adopt)

    # -- connections ---------------------------------------------------------------------

    def _connect(self, host: str, port: int, expected: str | None) -> Deferred:
        """Connect and handshake; fires with the ready PeerProtocol."""

        def build() -> PeerProtocol:
            return PeerProtocol(self.identity, self.clock, self.handler, self.max_frame, self.request_timeout)

        connecting = self.network.connect(host, port, _OneShotFactory(build), timeout=self.connect_timeout)

        def handshake(session: PeerProtocol) -> Deferred:
            timer = self.clock.callLater(
                self.connect_timeout, lambda: session.transport.loseConnection()
            )

            def check(hello: pb.Hello) -> PeerProtocol:
                if timer.active():
                    timer.cancel()
                if expected is not None and hello.node_id != expected:
                    session.transport.loseConnection()
                    raise HandshakeFailed(f"{host}:{port} is {hello.node_id!r}, not {expected!r}")
                return session

            def failed(failure: Failure) -> Failure:
                if timer.active():
                    timer.cancel()
                return failure

            return session.when_ready().addCallbacks(check, failed)

        return connecting.addCallback(handshake)

    def _attempt_done(self, result: PeerProtocol | Failure, node_id: str) -> None:
        waiters = self._waiting.pop(node_id, [])
        if isinstance(result, Failure):
            failures = self._failures.get(node_id, 0) + 1
            self._failures[node_id] = failures
            delay = min(self.backoff_max, self.backoff_base * 2 ** (failures - 1)) * (0.5 + self.rng.random())
            self._retry_at[node_id] = self.clock.seconds() + delay
            if result.check(HandshakeFailed):
                log.warn("cannot join {node}: {error}", node=node_id, error=result.getErrorMessage())
            error = PeerUnreachable(f"cannot reach {node_id}: {result.getErrorMessage()}")
            for d in waiters:
                d.errback(error)
            return
        if self._closed:
            result.transport.loseConnection()
            for d in waiters:
                d.errback(PeerUnreachable("the peer pool is closed"))
            return
        self._register(node_id, result)
        for d in waiters:
            d.callback(result)

    def _register(self, node_id: str, session: PeerProtocol) -> None:
        self._sessions[node_id] = session
        self._failures.pop(node_id, None)
        self._retry_at.pop(node_id, None)

        def forget(_: object) -> None:
            if self._sessions.get(node_id) is session:
                del self._sessions[node_id]

        session.when_closed().addCallback(forget)

    def connected(self, node_id: str) -> bool:
        return node_id in self._sessions

    def close(self) -> None:
        self._closed = True
        for session in list(self._sessions.values()):
            session.transport.loseConnection()
        self._sessions.clear()
